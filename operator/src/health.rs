//! The health endpoint probes use: `GET /healthz` answers 200 while the operator's loop runs, with the
//! replica's role (`leader` or `standby`) in the body; any other path is 404.

use crate::error::{OperatorError, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tracing::{debug, info};

/// Binds now (so a port in use fails the start) and serves in the background.
pub async fn serve(addr: SocketAddr, leading: Arc<AtomicBool>) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind(addr).await.map_err(|source| OperatorError::Health { addr: addr.to_string(), source })?;
    let bound = listener.local_addr().map_err(|source| OperatorError::Health { addr: addr.to_string(), source })?;
    info!(addr = %bound, "health endpoint listening");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let leading = leading.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let leading = leading.load(Ordering::Relaxed);
                    async move { Ok::<_, std::convert::Infallible>(answer(req.uri().path(), leading)) }
                });
                if let Err(e) =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
                {
                    debug!(error = %e, "health connection ended");
                }
            });
        }
    });
    Ok(bound)
}

fn answer(path: &str, leading: bool) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/healthz" => (StatusCode::OK, if leading { "ok leader\n" } else { "ok standby\n" }),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_says_the_role() {
        assert_eq!(answer("/healthz", true).status(), StatusCode::OK);
        assert_eq!(answer("/nope", false).status(), StatusCode::NOT_FOUND);
    }
}
