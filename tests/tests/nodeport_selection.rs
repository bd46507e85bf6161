//! Backend selection for north-south traffic: Maglev keeps each 5-tuple on
//! its backend when another backend goes (and measures how many flows move),
//! and ClientIP session affinity keeps a client on one backend within its
//! timeout — for north-south traffic and for the socket-LB.

mod common;

use axon_lab::check::show;
use axon_lab::{AgentOptions, Attempt, Probe};
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Distinct client 5-tuples the Maglev test follows.
const TUPLES: u32 = 48;
const FIRST_PORT: u16 = 41000;

/// Backend per source port, for `TUPLES` flows from known source ports.
fn backend_per_tuple(ns: &Ns, proto: &str, to: SocketAddr, what: &str) -> BTreeMap<u16, String> {
    let probe = Probe::of(proto, to).source_ports_from(FIRST_PORT).count(TUPLES);
    let attempts = ns.probe_ok(&probe, what);
    attempts
        .iter()
        .map(|a| {
            let port = a.local.as_deref().and_then(port_of).expect("the client reports its source port");
            (port, a.answer.clone().expect("a backend answered"))
        })
        .collect()
}

/// Conntrack emptied on every node: what follows is chosen afresh.
fn flush_conntrack(ns: &Ns) {
    for i in 1..=ns.lab.nodes().len() {
        ctl(ns, i, &["bpf", "ct", "flush"]);
    }
}

fn maglev(proto: &str, v6: bool) {
    let label = format!("maglev_{}{}", proto.to_ascii_lowercase(), if v6 { 6 } else { 4 });
    let ns = Ns::setup(&label, 3, 2, AgentOptions::default());
    let spec = |backends: Value| with(nodeport(30080, proto, v6, backends), "algorithm", json!("maglev"));
    ns.put(1, &spec(ns.all_backends(v6)));
    let to = ns.lab.node(1).addr(v6, 30080);

    let before = backend_per_tuple(&ns, proto, to, "first pass");
    let used: BTreeSet<&String> = before.values().collect();
    assert!(used.len() >= 4, "{TUPLES} tuples hashed onto only {used:?}: {before:?}");
    flush_conntrack(&ns);
    let again = backend_per_tuple(&ns, proto, to, "second pass");
    assert_eq!(again, before, "Maglev gave the same 5-tuples other backends with nothing changed");

    // The busiest backend goes: its flows move, nobody else's may.
    let mut load: BTreeMap<&String, usize> = BTreeMap::new();
    for b in before.values() {
        *load.entry(b).or_default() += 1;
    }
    let (gone, _) = load.iter().max_by_key(|(_, n)| **n).map(|(b, n)| ((*b).clone(), *n)).expect("some load");
    let remaining: Vec<&axon_lab::LabBackend> = ns.lab.backends().iter().filter(|b| b.name() != gone).collect();
    ns.put(1, &spec(ns.lab.backends_json(&remaining, v6, BACKEND_PORT)));
    flush_conntrack(&ns);
    let after = backend_per_tuple(&ns, proto, to, "after a backend left");
    let mut moved = Vec::new();
    for (port, was) in &before {
        let now = &after[port];
        if *was == gone {
            assert_ne!(*now, gone, "source port {port} still reaches the removed {gone}");
        } else if now != was {
            moved.push(format!("{port}: {was} -> {now}"));
        }
    }
    assert!(moved.is_empty(), "flows of backends that stayed moved when {gone} left: {moved:?}");
    eprintln!(
        "maglev {proto} v6={v6}: {} of {TUPLES} tuples were on {gone}; 0 of the other {} moved",
        load[&gone],
        TUPLES as usize - load[&gone]
    );
}

#[test]
fn maglev_keeps_each_tcp_flow_on_its_backend_when_another_goes_ipv4() {
    maglev("TCP", false);
}

#[test]
fn maglev_keeps_each_udp_flow_on_its_backend_when_another_goes_ipv4() {
    maglev("UDP", false);
}

#[test]
fn maglev_keeps_each_tcp_flow_on_its_backend_when_another_goes_ipv6() {
    maglev("TCP", true);
}

fn one_backend(attempts: &[Attempt], what: &str) -> String {
    let seen = answered(attempts);
    assert!(attempts.iter().all(|a| a.ok), "{what}: failures:\n{}", show(attempts));
    assert_eq!(seen.len(), 1, "{what}: affinity broken, answers {:?}", by_backend(attempts));
    seen.into_iter().next().expect("one")
}

#[test]
fn session_affinity_keeps_a_client_on_one_backend() {
    let ns = Ns::setup("affinity", 2, 2, AgentOptions::default());
    let affinity = json!({"timeoutSeconds": 10800});
    for v6 in [false, true] {
        let id = if v6 { 10 } else { 0 };
        ns.put(id + 1, &with(nodeport(30080, "TCP", v6, ns.all_backends(v6)), "sessionAffinity", affinity.clone()));
        ns.put(id + 2, &with(nodeport(30081, "UDP", v6, ns.all_backends(v6)), "sessionAffinity", affinity.clone()));
        // Without affinity the same client spreads: the contrast that makes the check mean something.
        ns.put(id + 3, &nodeport(30082, "TCP", v6, ns.all_backends(v6)));
        for node in ns.lab.nodes() {
            for source in [ns.lab.client_ip(v6), ns.lab.client_alt(v6)] {
                for (proto, port) in [("TCP", 30080), ("UDP", 30081)] {
                    let what = format!("{proto} from {source} via {}", node.name());
                    let probe = Probe::of(proto, node.addr(v6, port)).bind(source).count(20);
                    one_backend(&ns.probe_ok(&probe, &what), &what);
                }
            }
            let spread = ns.probe_ok(&Probe::tcp(node.addr(v6, 30082)).count(40), "no affinity");
            assert!(answered(&spread).len() > 1, "without affinity one client still spread: {:?}", by_backend(&spread));
        }
    }
}

#[test]
fn session_affinity_expires_after_its_timeout() {
    let ns = Ns::setup("affinity_exp", 3, 2, AgentOptions::default());
    ns.put(
        1,
        &with(nodeport(30080, "TCP", false, ns.all_backends(false)), "sessionAffinity", json!({"timeoutSeconds": 1})),
    );
    let to = ns.lab.node(1).addr(false, 30080);
    let mut picks = Vec::new();
    for round in 0..6 {
        let what = format!("round {round}");
        picks.push(one_backend(&ns.probe_ok(&Probe::tcp(to).count(4), &what), &what));
        std::thread::sleep(Duration::from_millis(2100));
    }
    let distinct: BTreeSet<&String> = picks.iter().collect();
    // 6 backends picked at random 6 times: all equal has probability 6^-5.
    assert!(distinct.len() > 1, "the affinity never expired: {picks:?}");
}

#[test]
fn socket_lb_session_affinity_keeps_a_node_process_on_one_backend() {
    let ns = Ns::setup("affinity_sock", 2, 2, AgentOptions::default());
    let vip: IpAddr = "10.96.0.10".parse().expect("vip");
    let spec = service("ClusterIP", vip, 80, "TCP", ns.all_backends(false));
    ns.put(1, &with(spec, "sessionAffinity", json!({"timeoutSeconds": 10800})));
    ns.put(2, &service("ClusterIP", vip, 81, "TCP", ns.all_backends(false)));
    for node in ns.lab.nodes() {
        let what = format!("ClusterIP with affinity from {}", node.name());
        let attempts = node.place().probe(&Probe::tcp(SocketAddr::new(vip, 80)).count(20)).expect("client");
        one_backend(&attempts, &what);
        let spread = node.place().probe(&Probe::tcp(SocketAddr::new(vip, 81)).count(40)).expect("client");
        assert!(answered(&spread).len() > 1, "without affinity: {:?}", by_backend(&spread));
    }
}
