//! The agent's REST API on a root-only unix socket: routes requests to the
//! service manager and maps its typed errors to HTTP statuses whose JSON body
//! names the field that is wrong.

use crate::service::{ServiceError, ServiceManager};
use axon_api::{paths, ApplyResponse, ErrorBody, FieldError, Status};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, info, warn};

/// Largest request body: a bulk apply of 100k services is ~15 MB of JSON.
const MAX_BODY_BYTES: usize = 256 << 20;

/// Fills the parts of `Status` that the datapath knows.
pub trait StatusProvider: Send + Sync {
    fn fill(&self, status: &mut Status);
}

pub struct ApiState {
    pub manager: Arc<Mutex<ServiceManager>>,
    pub status_provider: Box<dyn StatusProvider>,
    /// The static part of the status (paths, version, source).
    pub status_template: Status,
    pub started: Instant,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API socket {path}: {source}")]
    Socket { path: String, source: std::io::Error },
}

/// Binds the socket (replacing a stale one), mode 0600 in a 0700 directory.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let err = |source| ApiError::Socket { path: path.display().to_string(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => debug!(path = %path.display(), "removed stale API socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves until `shutdown` resolves.
pub async fn serve(listener: UnixListener, state: Arc<ApiState>, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_connection(stream, state.clone()));
                }
                Err(e) => warn!(error = %e, "accepting an API connection failed"),
            },
        }
    }
}

/// Requests larger than this leave enough freed heap behind (body, parsed
/// specs, answer) to be worth giving back once the answer is sent.
const LARGE_REQUEST_BYTES: u64 = 1 << 20;

async fn serve_connection(stream: UnixStream, state: Arc<ApiState>) {
    let peer_uid = stream.peer_cred().map(|c| c.uid()).ok();
    let large = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen_large = large.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let size =
            hyper::body::Body::size_hint(req.body()).exact().or(hyper::body::Body::size_hint(req.body()).upper());
        if size.is_some_and(|n| n > LARGE_REQUEST_BYTES) {
            seen_large.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        async move { Ok::<_, std::convert::Infallible>(handle(req, state, peer_uid).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
        debug!(error = %e, "API connection ended with an error");
    }
    if large.load(std::sync::atomic::Ordering::Relaxed) {
        crate::memory::release_free_memory();
    }
}

/// What every route answers (the identity and mesh routes too).
pub(crate) type Reply = Response<Full<Bytes>>;

pub(crate) fn json<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    // Compact: a bulk answer for 100k services is tens of MB pretty-printed.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| format!("{{\"error\":\"encoding: {e}\"}}").into_bytes());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

pub(crate) fn error_reply(status: StatusCode, error: String, field: Option<String>) -> Reply {
    json(status, &ErrorBody { error, field: field.filter(|f| !f.is_empty()) })
}

pub(crate) fn field_error(status: StatusCode, e: FieldError) -> Reply {
    let field = e.field.clone();
    error_reply(status, e.to_string(), Some(field))
}

fn service_error(e: ServiceError) -> Reply {
    let field = e.field().map(str::to_string);
    let status = match &e {
        ServiceError::Invalid(_) => StatusCode::BAD_REQUEST,
        ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
        ServiceError::Conflict(_) => StatusCode::CONFLICT,
        ServiceError::NoRoom(_) => StatusCode::INSUFFICIENT_STORAGE,
        ServiceError::Store(_) | ServiceError::Datapath(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error_reply(status, e.to_string(), field)
}

async fn handle(req: Request<Incoming>, state: Arc<ApiState>, peer_uid: Option<u32>) -> Reply {
    if peer_uid != Some(0) {
        return error_reply(StatusCode::FORBIDDEN, "the axon API is for root only".into(), None);
    }
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_string();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let started = Instant::now();
    let reply = route(&method, &path, body, &state).await;
    info!(%method, %path, status = reply.status().as_u16(), micros = started.elapsed().as_micros() as u64, "api");
    reply
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, Reply> {
    match Limited::new(req.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(error_reply(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}"), None)),
    }
}

async fn route(method: &Method, path: &str, body: Bytes, state: &Arc<ApiState>) -> Reply {
    match (method, path) {
        (&Method::GET, paths::HEALTHZ) => json(StatusCode::OK, &serde_json::json!({"status": "ok"})),
        (&Method::GET, paths::STATUS) => status(state.clone()).await,
        (&Method::GET, paths::SERVICES) => with_manager(state, |m| m.list().map(|l| json(StatusCode::OK, &l))).await,
        (&Method::POST, paths::SERVICES) => {
            let spec = match parse_json(&body).and_then(|v| axon_api::validate::service_spec_from_json(&v, "")) {
                Ok(s) => s,
                Err(e) => return field_error(StatusCode::BAD_REQUEST, e),
            };
            with_manager(state, move |m| m.create(spec).map(|s| json(StatusCode::CREATED, &s))).await
        }
        (&Method::POST, paths::APPLY) => {
            let specs = match axon_api::validate::apply_from_slice(&body) {
                Ok(s) => s,
                Err(e) => return field_error(StatusCode::BAD_REQUEST, e),
            };
            with_manager(state, move |m| {
                m.apply(specs).map(|services| json(StatusCode::OK, &ApplyResponse { services }))
            })
            .await
        }
        _ if crate::identity::api::owns(path) => crate::identity::api::route(method, path, body).await,
        _ if path == axon_api::mesh::paths::ROOT || path.starts_with("/v1/mesh/") => {
            crate::mesh::api::route(method, path, body).await
        }
        _ => match path.strip_prefix(paths::SERVICES).and_then(|rest| rest.strip_prefix('/')) {
            Some(id) => service_by_id(method, id, body, state).await,
            None => error_reply(StatusCode::NOT_FOUND, format!("no such API path: {method} {path}"), None),
        },
    }
}

async fn service_by_id(method: &Method, id: &str, body: Bytes, state: &Arc<ApiState>) -> Reply {
    let id = match id
        .parse::<i64>()
        .map_err(|_| format!("invalid service id {id:?}"))
        .and_then(axon_api::validate::check_id)
    {
        Ok(id) => id,
        Err(message) => return field_error(StatusCode::BAD_REQUEST, FieldError::new("id", message)),
    };
    match *method {
        Method::GET => with_manager(state, move |m| m.get(id).map(|s| json(StatusCode::OK, &s))).await,
        Method::DELETE => with_manager(state, move |m| m.delete(id).map(|s| json(StatusCode::OK, &s))).await,
        Method::PUT => {
            let spec = match parse_json(&body).and_then(|v| axon_api::validate::service_spec_from_json(&v, "")) {
                Ok(s) => s,
                Err(e) => return field_error(StatusCode::BAD_REQUEST, e),
            };
            with_manager(state, move |m| m.put(id, spec).map(|s| json(StatusCode::OK, &s))).await
        }
        _ => error_reply(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on a service"), None),
    }
}

fn parse_json(body: &Bytes) -> Result<serde_json::Value, FieldError> {
    if body.is_empty() {
        return Err(FieldError::new("", "request body is empty (expected JSON)"));
    }
    serde_json::from_slice(body).map_err(|e| FieldError::new("", format!("invalid JSON: {e}")))
}

/// Runs `f` on the manager off the async threads: map writes and store
/// commits are blocking syscalls.
async fn with_manager<F>(state: &Arc<ApiState>, f: F) -> Reply
where
    F: FnOnce(&mut ServiceManager) -> Result<Reply, ServiceError> + Send + 'static,
{
    let manager = state.manager.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut guard = manager.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    })
    .await;
    match joined {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => service_error(e),
        Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, format!("request handler failed: {e}"), None),
    }
}

async fn status(state: Arc<ApiState>) -> Reply {
    let joined = tokio::task::spawn_blocking(move || {
        let mut status = state.status_template.clone();
        status.uptime_seconds = state.started.elapsed().as_secs();
        {
            let m = state.manager.lock().unwrap_or_else(|p| p.into_inner());
            status.services = m.len();
            status.backends = m.backend_count();
        }
        state.status_provider.fill(&mut status);
        status
    })
    .await;
    match joined {
        Ok(status) => json(StatusCode::OK, &status),
        Err(e) => error_reply(StatusCode::INTERNAL_SERVER_ERROR, format!("status failed: {e}"), None),
    }
}
