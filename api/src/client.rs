//! A client for the agent's API over its unix socket (one HTTP/1.1 request per
//! connection: the CLI makes a handful of calls, and the agent stays simple).

use crate::model::{Service, ServiceSpec};
use crate::status::Status;
use crate::{paths, ApplyRequest, ApplyResponse, ErrorBody};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the axon agent at {socket}: {source} (is axon-agent running?)")]
    Unreachable { socket: PathBuf, source: std::io::Error },
    #[error("talking to the axon agent at {socket}: {message}")]
    Transport { socket: PathBuf, message: String },
    /// The agent refused the request; `error` names the field when one is to blame.
    #[error("{error}")]
    Api { status: u16, error: String, field: Option<String> },
    #[error("unexpected answer from the agent ({status}): {message}")]
    Decode { status: u16, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Self { socket: socket.as_ref().to_path_buf() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn list_services(&self) -> Result<Vec<Service>, ClientError> {
        self.call(Method::GET, paths::SERVICES, None::<&()>).await
    }

    pub async fn get_service(&self, id: u32) -> Result<Service, ClientError> {
        self.call(Method::GET, &paths::service(id), None::<&()>).await
    }

    /// Creates or replaces service `id`.
    pub async fn put_service(&self, id: u32, spec: &ServiceSpec) -> Result<Service, ClientError> {
        self.call(Method::PUT, &paths::service(id), Some(spec)).await
    }

    /// Creates a service; the agent allocates the id when the spec has none.
    pub async fn create_service(&self, spec: &ServiceSpec) -> Result<Service, ClientError> {
        self.call(Method::POST, paths::SERVICES, Some(spec)).await
    }

    pub async fn delete_service(&self, id: u32) -> Result<Service, ClientError> {
        self.call(Method::DELETE, &paths::service(id), None::<&()>).await
    }

    /// Creates or replaces many services at once: all or nothing.
    pub async fn apply(&self, services: Vec<ServiceSpec>) -> Result<Vec<Service>, ClientError> {
        let resp: ApplyResponse = self.call(Method::POST, paths::APPLY, Some(&ApplyRequest { services })).await?;
        Ok(resp.services)
    }

    /// Sends an already-encoded bulk document (JSON) as it is.
    pub async fn apply_raw(&self, body: Vec<u8>) -> Result<Vec<Service>, ClientError> {
        let resp: ApplyResponse = self.send(Method::POST, paths::APPLY, Some(body)).await?;
        Ok(resp.services)
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, paths::STATUS, None::<&()>).await
    }

    /// One typed request: the body as JSON, a non-2xx answer as [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Transport { socket: self.socket.clone(), message: e.to_string() })?;
        self.send(method, path, body).await
    }

    /// One raw request; answers the status and body as they came.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let transport =
            |e: &dyn std::fmt::Display| ClientError::Transport { socket: self.socket.clone(), message: e.to_string() };
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unreachable { socket: self.socket.clone(), source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| transport(&e))?;
        let conn_task = tokio::spawn(conn);
        let has_body = body.is_some();
        let mut req = Request::builder().method(method).uri(path).header("host", "axon-agent");
        if has_body {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| transport(&e))?;
        let resp = sender.send_request(req).await.map_err(|e| transport(&e))?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(|e| transport(&e))?.to_bytes();
        conn_task.abort();
        Ok((status, bytes))
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.request(method, path, body).await?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(e) => ClientError::Api { status: status.as_u16(), error: e.error, field: e.field },
                Err(_) => ClientError::Api {
                    status: status.as_u16(),
                    error: String::from_utf8_lossy(&bytes).trim().to_string(),
                    field: None,
                },
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Decode { status: status.as_u16(), message: e.to_string() })
    }
}
