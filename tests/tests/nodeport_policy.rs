//! Traffic policies and source ranges: externalTrafficPolicy=Local never
//! sends external traffic to another node (and the health check port says
//! how many local backends a node has), internalTrafficPolicy=Local keeps a
//! node's own processes on its backends, and loadBalancerSourceRanges give a
//! source outside them nothing at all.

mod common;

use axon_lab::check::show;
use axon_lab::{AgentOptions, HttpAnswer, Probe};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The health check answer of `addr`, once the agent's server for it is up.
fn health(ns: &Ns, addr: SocketAddr, want_status: u16) -> (HttpAnswer, Value) {
    let answer = eventually(Duration::from_secs(5), || {
        ns.lab.http(addr, "/healthz").ok().filter(|a| a.status == Some(want_status))
    });
    let answer = answer.unwrap_or_else(|| {
        panic!("{addr} never answered {want_status}: last {:?}\n{}", ns.lab.http(addr, "/healthz"), ns.diagnostics())
    });
    let body: Value =
        serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{addr}: body {:?}: {e}", answer.body));
    (answer, body)
}

#[test]
fn external_traffic_policy_local_uses_only_local_backends_and_reports_them() {
    let ns = Ns::setup("etp_local", 3, 1, AgentOptions::default());
    // Backends on node-1 and node-2; node-3 has none of this service's.
    for v6 in [false, true] {
        let backends = ns.lab.backends_json(&[ns.lab.backend(1), ns.lab.backend(2)], v6, BACKEND_PORT);
        let (id, hc) = if v6 { (10, 32002) } else { (0, 32001) };
        let tcp = with(nodeport(30080, "TCP", v6, backends.clone()), "externalTrafficPolicy", json!("Local"));
        ns.put(id + 1, &with(tcp, "healthCheckNodePort", json!(hc)));
        ns.put(id + 2, &with(nodeport(30081, "UDP", v6, backends), "externalTrafficPolicy", json!("Local")));
        for (proto, port) in [("TCP", 30080), ("UDP", 30081)] {
            for i in [1, 2] {
                let node = ns.lab.node(i);
                let what = format!("{proto} via {} (eTP=Local)", node.name());
                let attempts = ns.probe_ok(&Probe::of(proto, node.addr(v6, port)).count(30), &what);
                assert_answered(&attempts, &ns.names_of(i), &what);
                // Local: no SNAT, the client's address is kept.
                for (b, seen) in seen_by_backend(&attempts) {
                    assert_eq!(seen, BTreeSet::from([ns.lab.client_ip(v6)]), "{what}: {b}:\n{}", show(&attempts));
                }
            }
            let none = ns.probe(&Probe::of(proto, ns.lab.node(3).addr(v6, port)).count(3));
            assert_fails_fast(
                &none,
                Duration::from_secs(1),
                &format!("{proto} via node-3, which has no local backend"),
            );
        }
        for (i, status, count) in [(1, 200, 1), (2, 200, 1), (3, 503, 0)] {
            let addr = ns.lab.node(i).addr(v6, hc);
            let (_, body) = health(&ns, addr, status);
            assert_eq!(body["localEndpoints"], json!(count), "{addr}: {body}");
            assert_eq!(body["service"]["name"], json!("np-30080-tcp"), "{addr}: {body}");
        }
    }
}

#[test]
fn internal_traffic_policy_local_keeps_node_processes_on_their_node() {
    let ns = Ns::setup("itp_local", 2, 2, AgentOptions::default());
    let vip: IpAddr = "10.96.0.10".parse().expect("vip");
    let vip6: IpAddr = "fd96::10".parse().expect("vip");
    ns.put(
        1,
        &with(service("ClusterIP", vip, 80, "TCP", ns.all_backends(false)), "internalTrafficPolicy", json!("Local")),
    );
    ns.put(
        2,
        &with(service("ClusterIP", vip6, 80, "TCP", ns.all_backends(true)), "internalTrafficPolicy", json!("Local")),
    );
    ns.put(3, &with(nodeport(30080, "TCP", false, ns.all_backends(false)), "internalTrafficPolicy", json!("Local")));
    for node in ns.lab.nodes() {
        for to in [SocketAddr::new(vip, 80), SocketAddr::new(vip6, 80)] {
            let what = format!("{to} from a process on {}", node.name());
            let attempts = node.place().probe(&Probe::tcp(to).count(30)).expect("client");
            assert_answered(&attempts, &ns.names_of(node.index()), &what);
        }
        // External traffic to the same backends is not limited by the internal policy.
        let what = format!("NodePort via {} from outside", node.name());
        let attempts = ns.probe_ok(&Probe::tcp(node.addr(false, 30080)).count(SPREAD), &what);
        assert_answered(&attempts, &ns.all_names(), &what);
    }
}

#[test]
fn source_ranges_give_other_sources_nothing() {
    let ns = Ns::setup("src_ranges", 2, 1, AgentOptions::default());
    let quiet = Duration::from_millis(400);
    for v6 in [false, true] {
        let (id, alt_only) = if v6 { (10, "fd77::3/128") } else { (0, "10.77.0.3/32") };
        let lb = ns.lab.lb_ip(v6, 10);
        let ranges = json!([alt_only]);
        let tcp = with(
            service("LoadBalancer", lb, 80, "TCP", ns.all_backends(v6)),
            "loadBalancerSourceRanges",
            ranges.clone(),
        );
        let udp = with(service("LoadBalancer", lb, 53, "UDP", ns.all_backends(v6)), "loadBalancerSourceRanges", ranges);
        ns.put(id + 1, &tcp);
        ns.put(id + 2, &udp);
        ns.put(id + 3, &service("LoadBalancer", lb, 81, "TCP", ns.all_backends(v6)));
        let (main, alt) = (ns.lab.client_ip(v6), ns.lab.client_alt(v6));
        for (proto, port) in [("TCP", 80), ("UDP", 53)] {
            let to = SocketAddr::new(lb, port);
            let denied = ns.probe(&Probe::of(proto, to).bind(main).count(2).timeout(quiet));
            assert_no_answer(&denied, &format!("{proto} {to} from {main}, outside the source ranges"));
            let allowed = ns.probe_ok(&Probe::of(proto, to).bind(alt).count(10), &format!("{proto} {to} from {alt}"));
            assert_eq!(allowed.len(), 10);
        }
        let open = ns.probe_ok(&Probe::tcp(SocketAddr::new(lb, 81)).bind(main).count(5), "a service without ranges");
        assert_eq!(open.len(), 5);
        assert!(counter(ns.cluster.agent(1), "np_src_denied") > 0, "{:?}", counters(ns.cluster.agent(1)));

        // Widening the range lets the other source in.
        let segment = if v6 { "fd77::/64" } else { "10.77.0.0/24" };
        ns.put(id + 1, &with(tcp_of(&ns, lb, v6), "loadBalancerSourceRanges", json!([segment])));
        ns.probe_ok(&Probe::tcp(SocketAddr::new(lb, 80)).bind(main).count(5), "after widening the range");
    }
}

fn tcp_of(ns: &Ns, lb: IpAddr, v6: bool) -> Value {
    service("LoadBalancer", lb, 80, "TCP", ns.all_backends(v6))
}
