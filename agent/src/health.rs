//! kube-proxy-compatible service health checks: for every service with
//! `externalTrafficPolicy: Local` and a `healthCheckNodePort`, an HTTP server
//! on that port answers how many of its backends run on this node — 200 when
//! there is at least one, 503 when there is none — so an external load
//! balancer only sends traffic to nodes that can serve it locally.

use crate::service::ServiceManager;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// How often the set of health check ports is compared with the services.
const RESYNC: Duration = Duration::from_millis(500);

/// kube-proxy's answer body.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HealthAnswer {
    pub service: ServiceName,
    #[serde(rename = "localEndpoints")]
    pub local_endpoints: usize,
    #[serde(rename = "serviceProxyHealthy")]
    pub service_proxy_healthy: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    /// `ns/name` as Kubernetes names it; a bare name is in `default`.
    fn parse(name: Option<&str>, id: u32) -> Self {
        match name.and_then(|n| n.split_once('/')) {
            Some((ns, n)) => Self { namespace: ns.to_string(), name: n.to_string() },
            None => Self {
                namespace: "default".into(),
                name: name.map(str::to_string).unwrap_or_else(|| format!("service-{id}")),
            },
        }
    }
}

type Answers = Arc<Mutex<HashMap<u16, HealthAnswer>>>;

/// Keeps one listener per health check port, following the services.
pub async fn run(manager: Arc<Mutex<ServiceManager>>) {
    let answers: Answers = Arc::default();
    let mut listeners: HashMap<u16, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        tick.tick().await;
        let checks = {
            let m = manager.lock().unwrap_or_else(|p| p.into_inner());
            m.health_checks()
        };
        let wanted: HashMap<u16, HealthAnswer> = checks
            .into_iter()
            .map(|(port, svc, local)| {
                let answer = HealthAnswer {
                    service: ServiceName::parse(svc.name.as_deref(), svc.id),
                    local_endpoints: local,
                    service_proxy_healthy: true,
                };
                (port, answer)
            })
            .collect();
        listeners.retain(|port, task| {
            let keep = wanted.contains_key(port) && !task.is_finished();
            if !keep {
                info!(port, "health check server stopped");
                task.abort();
            }
            keep
        });
        for port in wanted.keys() {
            if !listeners.contains_key(port) {
                match listen(*port, answers.clone()).await {
                    Ok(task) => {
                        info!(port, "health check server listening");
                        listeners.insert(*port, task);
                    }
                    Err(e) => warn!(port, error = %e, "cannot listen for health checks; retrying"),
                }
            }
        }
        *answers.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
    }
}

async fn listen(port: u16, answers: Answers) -> std::io::Result<JoinHandle<()>> {
    // [::] with the default bindv6only=0 serves IPv4 clients too.
    let listener = match TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?,
    };
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let answers = answers.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    let answer = answers.lock().unwrap_or_else(|p| p.into_inner()).get(&port).cloned();
                    async move { Ok::<_, std::convert::Infallible>(reply(answer)) }
                });
                if let Err(e) =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await
                {
                    debug!(error = %e, "health check connection ended with an error");
                }
            });
        }
    }))
}

fn reply(answer: Option<HealthAnswer>) -> Response<Full<Bytes>> {
    let (status, body) = match answer {
        Some(a) if a.local_endpoints > 0 => (StatusCode::OK, serde_json::to_vec(&a)),
        Some(a) => (StatusCode::SERVICE_UNAVAILABLE, serde_json::to_vec(&a)),
        None => (StatusCode::NOT_FOUND, Ok(b"{}".to_vec())),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_like_kube_proxy() {
        let a = HealthAnswer {
            service: ServiceName::parse(Some("shop/web"), 3),
            local_endpoints: 2,
            service_proxy_healthy: true,
        };
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"service": {"namespace": "shop", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        assert_eq!(reply(Some(a.clone())).status(), StatusCode::OK);
        assert_eq!(reply(Some(HealthAnswer { local_endpoints: 0, ..a })).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ServiceName::parse(None, 7).name, "service-7");
    }
}
