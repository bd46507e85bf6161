//! The services every datapath is programmed with: one NodePort per
//! (route, protocol) that is measured — the backend behind node-1 (local),
//! or behind node-2 reached with SNAT or DSR — plus idle filler NodePort
//! services in front of them, so kube-proxy's chains have the length of a
//! small cluster. Axon gets them as service specs, the iptables peers as
//! kube-proxy's rules (see [`super::kubeproxy`]).

use super::topo::{BACKEND1_IP, BACKEND2_IP};
use axon_api::ServiceSpec;
use std::net::Ipv4Addr;

pub const TCP_BACKEND_PORT: u16 = 8080;
pub const UDP_BACKEND_PORT: u16 = 9000;
/// Cluster CIDR kube-proxy masquerades traffic from outside of.
pub const CLUSTER_CIDR: &str = "10.81.0.0/16";

/// Where a measured service's backend is, and how it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Route {
    /// Behind node-1, the node the client talks to.
    Local,
    /// Behind node-2; node-1 rewrites the source (replies come back through it).
    Snat,
    /// Behind node-2; the client's address is kept and node-2 replies directly.
    Dsr,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::Local, Route::Snat, Route::Dsr];

    pub fn label(self) -> &'static str {
        match self {
            Route::Local => "local",
            Route::Snat => "snat",
            Route::Dsr => "dsr",
        }
    }

    pub fn parse(s: &str) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.label() == s)
    }

    fn index(self) -> u16 {
        self as u16
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn api(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }

    pub fn iptables(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One NodePort service.
#[derive(Debug, Clone)]
pub struct Svc {
    pub name: String,
    pub node_port: u16,
    pub cluster_ip: Ipv4Addr,
    pub proto: Proto,
    pub backend: Ipv4Addr,
    pub backend_port: u16,
    pub backend_node: &'static str,
    /// Axon's per-service mode; `None` for the filler services.
    pub route: Option<Route>,
}

/// The NodePort of a measured (route, protocol): 30080.. for TCP, 30090.. for UDP.
pub fn node_port(route: Route, proto: Proto) -> u16 {
    let base = if proto == Proto::Tcp { 30080 } else { 30090 };
    base + route.index()
}

fn backend_of(route: Route) -> (Ipv4Addr, &'static str) {
    match route {
        Route::Local => (BACKEND1_IP, "node-1"),
        Route::Snat | Route::Dsr => (BACKEND2_IP, "node-2"),
    }
}

/// The measured services (DSR ones only when `with_dsr`: kube-proxy has none).
pub fn measured(with_dsr: bool) -> Vec<Svc> {
    let mut out = Vec::new();
    for (k, proto) in [Proto::Tcp, Proto::Udp].into_iter().enumerate() {
        for route in Route::ALL {
            if route == Route::Dsr && !with_dsr {
                continue;
            }
            let (backend, node) = backend_of(route);
            let backend_port = if proto == Proto::Tcp { TCP_BACKEND_PORT } else { UDP_BACKEND_PORT };
            out.push(Svc {
                name: format!("np-{}-{}", proto.iptables(), route.label()),
                node_port: node_port(route, proto),
                cluster_ip: Ipv4Addr::new(10, 96, 0, 10 + (k as u8) * 10 + route.index() as u8),
                proto,
                backend,
                backend_port,
                backend_node: node,
                route: Some(route),
            });
        }
    }
    out
}

/// Idle NodePort services on ports 31000.., backends behind node-2 that
/// never see traffic.
pub fn fillers(count: usize) -> Vec<Svc> {
    (0..count)
        .map(|i| Svc {
            name: format!("filler-{i}"),
            node_port: 31000 + i as u16,
            cluster_ip: Ipv4Addr::new(10, 96, 1 + (i / 250) as u8, 1 + (i % 250) as u8),
            proto: Proto::Tcp,
            backend: Ipv4Addr::new(10, 81, 2, 100 + (i % 100) as u8),
            backend_port: TCP_BACKEND_PORT,
            backend_node: "node-2",
            route: None,
        })
        .collect()
}

/// Most filler services the port plan holds (31000..32767).
pub const MAX_FILLERS: usize = 1700;

/// The Axon service spec of `svc`: a NodePort on every node address.
pub fn axon_spec(svc: &Svc) -> anyhow::Result<ServiceSpec> {
    let mut v = serde_json::json!({
        "name": format!("bench/{}", svc.name),
        "frontend": {"address": "0.0.0.0", "port": svc.node_port, "protocol": svc.proto.api()},
        "type": "NodePort",
        "backends": [{"address": svc.backend.to_string(), "port": svc.backend_port, "node": svc.backend_node}],
    });
    if let Some(route) = svc.route {
        v["mode"] = serde_json::json!(if route == Route::Dsr { "dsr" } else { "snat" });
    }
    Ok(serde_json::from_value(v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_do_not_collide() {
        let mut ports: Vec<u16> =
            measured(true).iter().chain(fillers(MAX_FILLERS).iter()).map(|s| s.node_port).collect();
        let n = ports.len();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), n);
        assert!(ports.iter().all(|p| (30000..=32767).contains(p)));
    }

    #[test]
    fn specs_parse() {
        for s in measured(true).iter().chain(fillers(3).iter()) {
            axon_spec(s).expect("spec");
        }
    }
}
