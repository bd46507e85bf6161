//! Kubernetes Service + its endpoints → Axon service specs, with kube-proxy's
//! semantics: one spec per frontend (ClusterIP, NodePort, LoadBalancer
//! ingress, externalIP; per IP family and port), backends from the endpoints
//! whose port matches the service port by name and protocol, ready endpoints
//! active, terminating ones draining. Pure functions: the watchers feed them.

use axon_api::{
    Backend, BackendState, Cidr, L4Addr, Protocol, ServiceOptions, ServiceSpec, ServiceType, SessionAffinity,
    TrafficPolicy,
};
use k8s_openapi::api::core::v1::{Endpoints, Service, ServicePort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// The label naming the proxy that should serve a Service (kube-proxy serves
/// only Services without it).
pub const SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One port of an endpoint set (EndpointSlice or Endpoints subset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpPort {
    /// The service port name it serves ("" for an unnamed port).
    pub name: String,
    pub port: i32,
    pub protocol: String,
}

/// One endpoint address with kube-proxy's conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ep {
    pub address: IpAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
}

/// Endpoints sharing a port list (one EndpointSlice or one Endpoints subset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EpGroup {
    pub ports: Vec<EpPort>,
    pub endpoints: Vec<Ep>,
}

/// A problem with part of a Service: that part is skipped, the rest served.
pub type Problem = String;

/// Why a Service is not served at all (and needs no Event: this is by design).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServed {
    Headless,
    ExternalName,
    /// Labelled for another proxy (the label's value).
    OtherProxy(String),
    /// No ClusterIP allocated (yet).
    NoClusterIp,
}

/// What the agent makes of one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Translated {
    pub specs: Vec<ServiceSpec>,
    /// Ports or addresses skipped, each naming the field and why.
    pub problems: Vec<Problem>,
}

/// `namespace/name`, the owner of a Service's specs.
pub fn owner(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Whether this agent serves a Service with these labels: no proxy-name label
/// (kube-proxy's rule), or the one this agent was given.
pub fn proxy_matches(svc: &Service, proxy_name: Option<&str>) -> Result<(), NotServed> {
    let label = svc.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_PROXY_NAME));
    match (label, proxy_name) {
        (None, None) => Ok(()),
        (Some(l), Some(mine)) if l == mine => Ok(()),
        (Some(l), _) => Err(NotServed::OtherProxy(l.clone())),
        (None, Some(mine)) => Err(NotServed::OtherProxy(format!("(none; this agent serves {mine})"))),
    }
}

/// The endpoint groups of core/v1 Endpoints: `addresses` are ready,
/// `notReadyAddresses` are not (this API has no terminating condition).
pub fn groups_from_endpoints(ep: &Endpoints) -> Vec<EpGroup> {
    let mut out = Vec::new();
    for subset in ep.subsets.iter().flatten() {
        let ports = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EpPort {
                name: p.name.clone().unwrap_or_default(),
                port: p.port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
            .collect();
        let mut endpoints = Vec::new();
        for (list, ready) in [(&subset.addresses, true), (&subset.not_ready_addresses, false)] {
            for a in list.iter().flatten() {
                if let Ok(address) = a.ip.parse() {
                    endpoints.push(Ep {
                        address,
                        ready,
                        serving: ready,
                        terminating: false,
                        node: a.node_name.clone(),
                    });
                }
            }
        }
        out.push(EpGroup { ports, endpoints });
    }
    out
}

/// The endpoint group of a discovery.k8s.io/v1 EndpointSlice. Conditions
/// default as the API documents: ready and serving when unknown, not
/// terminating. FQDN slices carry no addresses the datapath can use.
pub fn group_from_slice(slice: &EndpointSlice) -> Option<EpGroup> {
    if slice.address_type == "FQDN" {
        return None;
    }
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(EpPort {
                name: p.name.clone().unwrap_or_default(),
                port: p.port?,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flat_map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            let terminating = c.terminating.unwrap_or(false);
            let serving = c.serving.unwrap_or(ready);
            // Every address of an endpoint is the same pod: Kubernetes uses the first.
            e.addresses.first().and_then(|a| a.parse().ok()).map(|address| Ep {
                address,
                ready,
                serving,
                terminating,
                node: e.node_name.clone(),
            })
        })
        .collect();
    Some(EpGroup { ports, endpoints })
}

fn protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        other => Err(format!("protocol {other} is not supported (TCP and UDP are)")),
    }
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// The backends of one service port: endpoints whose group has a port of the
/// same name and protocol. Ready endpoints are active; terminating ones drain.
/// With no ready endpoint at all, serving terminating ones take connections
/// (kube-proxy's terminating fallback) rather than dropping traffic.
fn backends_for(sp: &ServicePort, proto: Protocol, groups: &[EpGroup], problems: &mut Vec<Problem>) -> Vec<Backend> {
    let name = sp.name.clone().unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut candidates: Vec<(Ep, u16)> = Vec::new();
    for g in groups {
        let Some(port) = g.ports.iter().find(|p| p.name == name && protocol(Some(&p.protocol)) == Ok(proto)) else {
            continue;
        };
        let Some(target) = port_u16(port.port) else {
            problems.push(format!("endpoint port {:?}: {} is not a port (1-65535); skipped", port.name, port.port));
            continue;
        };
        for ep in &g.endpoints {
            if seen.insert((ep.address, target)) {
                candidates.push((ep.clone(), target));
            }
        }
    }
    let any_ready = candidates.iter().any(|(e, _)| e.ready && !e.terminating);
    candidates
        .into_iter()
        .filter_map(|(e, port)| {
            let takes_new = (e.ready && !e.terminating) || (e.terminating && e.serving && !any_ready);
            let state = if takes_new {
                BackendState::Active
            } else if e.terminating {
                BackendState::Terminating
            } else {
                return None;
            };
            Some(Backend { address: e.address, port, state, node: e.node })
        })
        .collect()
}

fn parse_ips(list: Option<&Vec<String>>, field: &str, problems: &mut Vec<Problem>) -> Vec<IpAddr> {
    list.into_iter()
        .flatten()
        .filter(|s| !s.is_empty() && s.as_str() != "None")
        .filter_map(|s| match s.parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                problems.push(format!("{field}: {s:?} is not an IP address; skipped"));
                None
            }
        })
        .collect()
}

/// Translates one Service with its endpoint groups. `Err` when the Service is
/// deliberately not served; problems with single ports or addresses are
/// reported in [`Translated::problems`] and the rest is served.
pub fn translate(svc: &Service, groups: &[EpGroup], proxy_name: Option<&str>) -> Result<Translated, NotServed> {
    proxy_matches(svc, proxy_name)?;
    let spec = svc.spec.clone().unwrap_or_default();
    let svc_type = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
    if svc_type == "ExternalName" {
        return Err(NotServed::ExternalName);
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Err(NotServed::Headless);
    }
    let mut problems = Vec::new();
    let mut cluster_ips = parse_ips(spec.cluster_ips.as_ref(), "spec.clusterIPs", &mut problems);
    if cluster_ips.is_empty() {
        let single: Vec<String> = spec.cluster_ip.iter().cloned().collect();
        cluster_ips = parse_ips(Some(&single), "spec.clusterIP", &mut problems);
    }
    if cluster_ips.is_empty() {
        return Err(NotServed::NoClusterIp);
    }
    let families: Vec<bool> = cluster_ips.iter().map(|ip| ip.is_ipv4()).collect();
    let external_ips = parse_ips(spec.external_ips.as_ref(), "spec.externalIPs", &mut problems);
    let ingress: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect();
    let lb_ips = if svc_type == "LoadBalancer" {
        parse_ips(Some(&ingress), "status.loadBalancer.ingress", &mut problems)
    } else {
        vec![]
    };
    let options = options(&spec, &mut problems);
    let name = svc.metadata.name.clone().unwrap_or_default();
    let ns = svc.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let owner = owner(&ns, &name);

    let mut specs = Vec::new();
    let mut health_check_claimed = BTreeSet::new();
    for (i, sp) in spec.ports.iter().flatten().enumerate() {
        let field = format!("spec.ports[{i}]");
        let proto = match protocol(sp.protocol.as_deref()) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{field}.protocol: {e}; port skipped"));
                continue;
            }
        };
        let Some(port) = port_u16(sp.port) else {
            problems.push(format!("{field}.port: {} is not a port (1-65535); port skipped", sp.port));
            continue;
        };
        let port_name = sp.name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| port.to_string());
        let backends = backends_for(sp, proto, groups, &mut problems);
        let mut frontend = |address: IpAddr, port: u16, t: ServiceType| {
            let mut o = options.clone();
            if t == ServiceType::ClusterIP {
                // eTP and source ranges are about traffic from outside; LB ranges are for LB frontends.
                o.external_traffic_policy = TrafficPolicy::Cluster;
            }
            if t != ServiceType::LoadBalancer {
                o.source_ranges.clear();
            }
            let health = o.health_check_node_port.take();
            let claims_health = matches!(t, ServiceType::NodePort | ServiceType::LoadBalancer)
                && health.is_some()
                && health_check_claimed.insert(address.is_ipv4());
            if claims_health {
                o.health_check_node_port = health;
            }
            o.source_ranges.retain(|c: &Cidr| c.address.is_ipv4() == address.is_ipv4());
            specs.push(ServiceSpec {
                id: None,
                name: Some(format!("{owner}:{port_name}")),
                frontend: L4Addr::new(address, port, proto),
                // Each frontend is served by the endpoints of its own family.
                backends: backends.iter().filter(|b| b.address.is_ipv4() == address.is_ipv4()).cloned().collect(),
                svc_type: t,
                options: o,
            });
        };
        for ip in &cluster_ips {
            frontend(*ip, port, ServiceType::ClusterIP);
        }
        if matches!(svc_type.as_str(), "NodePort" | "LoadBalancer") {
            match sp.node_port {
                None | Some(0) if svc_type == "LoadBalancer" => {} // allocateLoadBalancerNodePorts=false
                Some(np) if port_u16(np).is_some() => {
                    for v4 in &families {
                        let any = if *v4 { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u8; 16]) };
                        frontend(any, np as u16, ServiceType::NodePort);
                    }
                }
                np => problems.push(format!("{field}.nodePort: {np:?} is not a port (1-65535); NodePort skipped")),
            }
        }
        for ip in &lb_ips {
            frontend(*ip, port, ServiceType::LoadBalancer);
        }
        for ip in &external_ips {
            frontend(*ip, port, ServiceType::ExternalIPs);
        }
    }
    Ok(Translated { specs, problems })
}

/// Session affinity, traffic policies, health check port and source ranges.
fn options(spec: &k8s_openapi::api::core::v1::ServiceSpec, problems: &mut Vec<Problem>) -> ServiceOptions {
    let session_affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(SessionAffinity::DEFAULT_TIMEOUT_SECONDS);
        SessionAffinity { timeout_seconds: timeout }
    });
    let policy = |v: Option<&String>| match v.map(String::as_str) {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let source_ranges = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .filter_map(|r| match r.trim().parse::<Cidr>() {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("spec.loadBalancerSourceRanges: {e}; range skipped"));
                None
            }
        })
        .collect();
    let external_traffic_policy = policy(spec.external_traffic_policy.as_ref());
    let health_check_node_port =
        spec.health_check_node_port.filter(|_| external_traffic_policy == TrafficPolicy::Local).and_then(|p| {
            let port = port_u16(p);
            if port.is_none() {
                problems.push(format!("spec.healthCheckNodePort: {p} is not a port (1-65535); skipped"));
            }
            port
        });
    ServiceOptions {
        mode: None,
        algorithm: None,
        session_affinity,
        external_traffic_policy,
        internal_traffic_policy: policy(spec.internal_traffic_policy.as_ref()),
        source_ranges,
        health_check_node_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(json: serde_json::Value) -> Service {
        serde_json::from_value(json).unwrap()
    }

    fn group(ports: &[(&str, i32, &str)], eps: &[(&str, bool, bool, bool, &str)]) -> EpGroup {
        EpGroup {
            ports: ports
                .iter()
                .map(|(n, p, pr)| EpPort { name: n.to_string(), port: *p, protocol: pr.to_string() })
                .collect(),
            endpoints: eps
                .iter()
                .map(|(a, ready, serving, terminating, node)| Ep {
                    address: a.parse().unwrap(),
                    ready: *ready,
                    serving: *serving,
                    terminating: *terminating,
                    node: Some(node.to_string()),
                })
                .collect(),
        }
    }

    fn web(extra: serde_json::Value) -> Service {
        let mut v = serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}
        });
        merge(&mut v, extra);
        service(v)
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        match (a, b) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    #[test]
    fn cluster_ip_with_named_target_port_and_conditions() {
        let g = group(
            &[("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
            &[
                ("10.0.0.1", true, true, false, "n1"),
                ("10.0.0.2", false, false, false, "n1"), // not ready: out
                ("10.0.0.3", false, true, true, "n2"),   // terminating: drains
            ],
        );
        let t = translate(&web(serde_json::json!({})), &[g], None).unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.specs.len(), 1);
        let s = &t.specs[0];
        assert_eq!((s.name.as_deref(), s.frontend.to_string()), (Some("shop/web:http"), "10.96.0.10:80/TCP".into()));
        let b: Vec<_> = s.backends.iter().map(|b| (b.socket_addr().to_string(), b.state)).collect();
        assert_eq!(
            b,
            vec![("10.0.0.1:8080".into(), BackendState::Active), ("10.0.0.3:8080".into(), BackendState::Terminating)]
        );
    }

    #[test]
    fn only_terminating_endpoints_left_still_serve() {
        let g = group(&[("http", 8080, "TCP")], &[("10.0.0.3", false, true, true, "n2")]);
        let t = translate(&web(serde_json::json!({})), &[g], None).unwrap();
        assert_eq!(t.specs[0].backends[0].state, BackendState::Active);
    }

    #[test]
    fn node_port_load_balancer_external_ips_and_policies() {
        let svc = web(serde_json::json!({
            "spec": {"type": "LoadBalancer", "externalIPs": ["192.0.2.7"], "externalTrafficPolicy": "Local",
                     "healthCheckNodePort": 31999, "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "loadBalancerSourceRanges": ["198.51.100.0/24"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
                               {"name": "dns", "port": 53, "nodePort": 30053, "protocol": "UDP"}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}
        }));
        let g = group(&[("http", 8080, "TCP"), ("dns", 5353, "UDP")], &[("10.0.0.1", true, true, false, "n1")]);
        let t = translate(&svc, &[g], None).unwrap();
        let fes: Vec<_> = t.specs.iter().map(|s| format!("{} {}", s.svc_type, s.frontend)).collect();
        assert_eq!(
            fes,
            vec![
                "ClusterIP 10.96.0.10:80/TCP",
                "NodePort 0.0.0.0:30080/TCP",
                "LoadBalancer 203.0.113.5:80/TCP",
                "ExternalIPs 192.0.2.7:80/TCP",
                "ClusterIP 10.96.0.10:53/UDP",
                "NodePort 0.0.0.0:30053/UDP",
                "LoadBalancer 203.0.113.5:53/UDP",
                "ExternalIPs 192.0.2.7:53/UDP",
            ]
        );
        let cip = &t.specs[0].options;
        assert_eq!(cip.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(cip.session_affinity, Some(SessionAffinity { timeout_seconds: 60 }));
        let np = &t.specs[1].options;
        assert_eq!((np.external_traffic_policy, np.health_check_node_port), (TrafficPolicy::Local, Some(31999)));
        // One health check port per family, on the first NodePort frontend only.
        assert_eq!(t.specs.iter().filter(|s| s.options.health_check_node_port.is_some()).count(), 1);
        assert_eq!(t.specs[2].options.source_ranges.len(), 1);
        assert!(t.specs[1].options.source_ranges.is_empty());
        assert_eq!(t.specs[5].backends[0].port, 5353);
    }

    #[test]
    fn headless_external_name_and_other_proxies_are_not_served() {
        let headless = web(serde_json::json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}}));
        assert_eq!(translate(&headless, &[], None), Err(NotServed::Headless));
        let ext = web(serde_json::json!({"spec": {"type": "ExternalName", "externalName": "x.example"}}));
        assert_eq!(translate(&ext, &[], None), Err(NotServed::ExternalName));
        let other = web(serde_json::json!({"metadata": {"labels": {SERVICE_PROXY_NAME: "someone-else"}}}));
        assert!(matches!(translate(&other, &[], None), Err(NotServed::OtherProxy(_))));
        assert!(translate(&other, &[], Some("someone-else")).is_ok());
        assert!(translate(&web(serde_json::json!({})), &[], Some("axon")).is_err());
    }

    #[test]
    fn bad_ports_and_sctp_are_skipped_by_name_and_the_rest_served() {
        let svc = web(serde_json::json!({"spec": {"ports": [
            {"name": "sig", "port": 3868, "protocol": "SCTP"},
            {"name": "http", "port": 80, "protocol": "TCP"}]}}));
        let g = group(&[("http", 0, "TCP")], &[("10.0.0.1", true, true, false, "n1")]);
        let t = translate(&svc, &[g], None).unwrap();
        assert_eq!(t.specs.len(), 1);
        assert!(t.specs[0].backends.is_empty());
        assert!(t.problems[0].starts_with("spec.ports[0].protocol: protocol SCTP"), "{:?}", t.problems);
        assert!(t.problems[1].contains("endpoint port \"http\": 0"), "{:?}", t.problems);
    }

    #[test]
    fn dual_stack_and_core_endpoints() {
        let svc = web(serde_json::json!({"spec": {"type": "NodePort", "clusterIPs": ["10.96.0.10", "fd00::10"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}}));
        let ep: Endpoints = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "subsets": [{"addresses": [{"ip": "10.0.0.1", "nodeName": "n1"}, {"ip": "fd00::1"}],
                         "notReadyAddresses": [{"ip": "10.0.0.9"}],
                         "ports": [{"name": "http", "port": 8080}]}]
        }))
        .unwrap();
        let t = translate(&svc, &groups_from_endpoints(&ep), None).unwrap();
        let fes: Vec<_> = t.specs.iter().map(|s| s.frontend.to_string()).collect();
        assert_eq!(fes, vec!["10.96.0.10:80/TCP", "[fd00::10]:80/TCP", "0.0.0.0:30080/TCP", "[::]:30080/TCP"]);
        // Each frontend gets the endpoints of its family; not-ready ones none.
        assert_eq!(t.specs[0].backends.len(), 1);
        assert_eq!(t.specs[0].backends[0].node.as_deref(), Some("n1"));
        assert_eq!(t.specs[3].backends[0].socket_addr().to_string(), "[fd00::1]:8080");
    }
}
