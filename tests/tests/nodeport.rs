//! North-south serving, end to end: a client outside the cluster reaches
//! NodePort, LoadBalancer, external IP and hostPort frontends on the nodes,
//! over TCP and UDP, IPv4 and IPv6, and is answered by backends on the
//! entry node and on other nodes. The backends report the source address
//! they saw, which tells the modes apart: SNAT (a remote backend sees the
//! entry node), DSR (every backend sees the client), hybrid (DSR for TCP,
//! SNAT for UDP); a local backend always sees the client.

mod common;

use axon_lab::check::show;
use axon_lab::{AgentOptions, LbMode, MultiNodeOptions, Probe};
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

/// What a backend is expected to see as the source of a flow that entered at `entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// SNAT: remote backends see the entry node; local ones the client.
    Snat,
    /// DSR: every backend sees the client.
    Client,
}

/// Spread over every backend from every node address, with the client
/// seeing only the node, and each backend seeing what `seen` says.
fn check_nodeport(ns: &Ns, proto: &str, port: u16, v6: bool, seen: Seen) {
    let client = ns.lab.client_ip(v6);
    for node in ns.lab.nodes() {
        let addr = node.addr(v6, port);
        let what = format!("{proto} {addr} (entering at {})", node.name());
        let attempts = ns.probe_ok(&Probe::of(proto, addr).count(SPREAD), &what);
        assert_answered(&attempts, &ns.all_names(), &what);
        for a in &attempts {
            let shown = if proto == "UDP" { a.from.as_deref() } else { a.peer.as_deref() };
            assert_eq!(
                shown,
                Some(addr.to_string().as_str()),
                "{what}: the client must see only the node:\n{}",
                show(&attempts)
            );
        }
        for (backend, sources) in seen_by_backend(&attempts) {
            let local = ns.node_of(&backend) == node.index();
            let want = if local || seen == Seen::Client { client } else { node.ip(v6) };
            assert_eq!(
                sources,
                BTreeSet::from([want]),
                "{what}: {backend} ({}) saw the wrong source under {seen:?}:\n{}",
                if local { "local" } else { "remote" },
                show(&attempts)
            );
        }
    }
}

fn nodeport_snat(v6: bool) {
    let ns = Ns::setup(if v6 { "np_snat6" } else { "np_snat4" }, 3, 1, AgentOptions::default());
    ns.put(1, &nodeport(30080, "TCP", v6, ns.all_backends(v6)));
    ns.put(2, &nodeport(30081, "UDP", v6, ns.all_backends(v6)));
    check_nodeport(&ns, "TCP", 30080, v6, Seen::Snat);
    check_nodeport(&ns, "UDP", 30081, v6, Seen::Snat);
    // What was served was counted as such.
    for (i, agent) in ns.cluster.agents().iter().enumerate() {
        assert!(counter(agent, "np_fwd") > 0, "node-{} counted no forwarded packet: {:?}", i + 1, counters(agent));
    }
}

#[test]
fn nodeport_on_every_node_reaches_local_and_remote_backends_with_snat_ipv4() {
    nodeport_snat(false);
}

#[test]
fn nodeport_on_every_node_reaches_local_and_remote_backends_with_snat_ipv6() {
    nodeport_snat(true);
}

/// Agents default to DSR; one service overrides it with SNAT.
fn dsr(v6: bool) {
    let opts = AgentOptions { lb_mode: Some(LbMode::Dsr), ..Default::default() };
    let ns = Ns::setup(if v6 { "np_dsr6" } else { "np_dsr4" }, 3, 1, opts);
    ns.put(1, &nodeport(30080, "TCP", v6, ns.all_backends(v6)));
    ns.put(2, &nodeport(30081, "UDP", v6, ns.all_backends(v6)));
    ns.put(3, &with(nodeport(30082, "TCP", v6, ns.all_backends(v6)), "mode", json!("snat")));
    check_nodeport(&ns, "TCP", 30080, v6, Seen::Client);
    check_nodeport(&ns, "UDP", 30081, v6, Seen::Client);
    check_nodeport(&ns, "TCP", 30082, v6, Seen::Snat);
}

#[test]
fn dsr_backends_see_the_client_and_reply_as_the_node_ipv4() {
    dsr(false);
}

#[test]
fn dsr_backends_see_the_client_and_reply_as_the_node_ipv6() {
    dsr(true);
}

#[test]
fn hybrid_is_dsr_for_tcp_and_snat_for_udp() {
    let ns = Ns::setup("np_hybrid", 2, 1, AgentOptions::default());
    for v6 in [false, true] {
        let base = if v6 { 30180 } else { 30080 };
        ns.put(u32::from(base), &with(nodeport(base, "TCP", v6, ns.all_backends(v6)), "mode", json!("hybrid")));
        ns.put(u32::from(base + 1), &with(nodeport(base + 1, "UDP", v6, ns.all_backends(v6)), "mode", json!("hybrid")));
        check_nodeport(&ns, "TCP", base, v6, Seen::Client);
        check_nodeport(&ns, "UDP", base + 1, v6, Seen::Snat);
    }
}

/// Multi-MB TCP echoes and many UDP datagrams through one remote backend
/// (SNAT and DSR) and the local one, with content checksums both ways.
fn large_transfers(v6: bool, offload: bool) {
    let label = format!("np_big{}{}", if v6 { 6 } else { 4 }, if offload { "o" } else { "f" });
    let shape = MultiNodeOptions { nodes: 2, backends_per_node: 1, checksum_offload: offload };
    let ns = Ns::setup_with(&label, &shape, AgentOptions::default());
    let remote = ns.lab.backends_json(&[ns.lab.backend(2)], v6, BACKEND_PORT);
    let local = ns.lab.backends_json(&[ns.lab.backend(1)], v6, BACKEND_PORT);
    ns.put(1, &with(nodeport(30090, "TCP", v6, remote.clone()), "mode", json!("snat")));
    ns.put(2, &with(nodeport(30091, "TCP", v6, remote.clone()), "mode", json!("dsr")));
    ns.put(3, &nodeport(30092, "TCP", v6, local));
    ns.put(4, &with(nodeport(30093, "UDP", v6, remote.clone()), "mode", json!("snat")));
    ns.put(5, &with(nodeport(30094, "UDP", v6, remote), "mode", json!("dsr")));
    let node1 = ns.lab.node(1);
    for port in [30090, 30091, 30092] {
        let what = format!("8 MB echo via {}", node1.addr(v6, port));
        let probe = Probe::tcp(node1.addr(v6, port)).send_bytes(8 << 20).count(2).timeout(Duration::from_secs(5));
        let attempts = ns.probe_ok(&probe, &what);
        for a in &attempts {
            assert_eq!(a.recv_bytes, Some(8 << 20), "{what}: {}", show(&attempts));
            assert_eq!(a.recv_sum, a.sent_sum, "{what}: content differs: {}", show(&attempts));
            assert_eq!(a.echo_ok, Some(true));
        }
    }
    for port in [30093, 30094] {
        let what = format!("UDP 1200-byte datagrams via {}", node1.addr(v6, port));
        let attempts = ns.probe_ok(&Probe::udp(node1.addr(v6, port)).payload_bytes(1200).count(40), &what);
        assert_answered(&attempts, &BTreeSet::from(["backend-2".to_string()]), &what);
    }
}

#[test]
fn large_transfers_keep_their_content_ipv4() {
    large_transfers(false, true);
}

#[test]
fn large_transfers_keep_their_content_ipv6() {
    large_transfers(true, true);
}

#[test]
fn large_transfers_keep_their_content_with_full_checksums_ipv4() {
    large_transfers(false, false);
}

#[test]
fn large_transfers_keep_their_content_with_full_checksums_ipv6() {
    large_transfers(true, false);
}

#[test]
fn a_nodeport_without_backends_is_rejected_fast() {
    let ns = Ns::setup("np_empty", 2, 1, AgentOptions::default());
    for v6 in [false, true] {
        let base = if v6 { 30180 } else { 30080 };
        ns.put(u32::from(base), &nodeport(base, "TCP", v6, json!([])));
        ns.put(u32::from(base + 1), &nodeport(base + 1, "UDP", v6, json!([])));
        for node in ns.lab.nodes() {
            let tcp = ns.probe(&Probe::tcp(node.addr(v6, base)).count(3));
            assert_fails_fast(&tcp, Duration::from_secs(1), &format!("TCP to an empty NodePort on {}", node.name()));
            let udp = ns.probe(&Probe::udp(node.addr(v6, base + 1)).count(3));
            assert_fails_fast(&udp, Duration::from_secs(1), &format!("UDP to an empty NodePort on {}", node.name()));
            for a in tcp.iter().chain(&udp) {
                assert_eq!(a.errno, Some(libc::ECONNREFUSED), "a reset or port unreachable: {}", show(&tcp));
            }
        }
    }
    for (i, agent) in ns.cluster.agents().iter().enumerate() {
        assert!(counter(agent, "np_no_backend") > 0, "node-{}: {:?}", i + 1, counters(agent));
    }
    // Backends arriving make the same frontend serve.
    ns.put(30080, &nodeport(30080, "TCP", false, ns.all_backends(false)));
    ns.probe_ok(&Probe::tcp(ns.lab.node(1).addr(false, 30080)).count(5), "after backends arrive");
}

#[test]
fn loadbalancer_and_external_ips_are_served_by_the_node_they_are_routed_to() {
    let ns = Ns::setup("np_lb", 3, 1, AgentOptions::default());
    let client = |v6| ns.lab.client_ip(v6);
    for v6 in [false, true] {
        let lb = ns.lab.lb_ip(v6, 10);
        let ext = ns.lab.lb_ip(v6, 20);
        let id = if v6 { 10 } else { 0 };
        ns.put(id + 1, &service("LoadBalancer", lb, 80, "TCP", ns.all_backends(v6)));
        ns.put(id + 2, &service("LoadBalancer", lb, 53, "UDP", ns.all_backends(v6)));
        ns.put(id + 3, &service("ExternalIPs", ext, 80, "TCP", ns.all_backends(v6)));
        ns.put(id + 4, &with(service("ExternalIPs", ext, 53, "UDP", ns.all_backends(v6)), "mode", json!("dsr")));
        for (addr, proto) in [(lb, "TCP"), (lb, "UDP"), (ext, "TCP"), (ext, "UDP")] {
            let port = if proto == "TCP" { 80 } else { 53 };
            let to = SocketAddr::new(addr, port);
            let what = format!("{proto} {to}");
            let attempts = ns.probe_ok(&Probe::of(proto, to).count(SPREAD), &what);
            assert_answered(&attempts, &ns.all_names(), &what);
            let dsr = addr == ext && proto == "UDP";
            for (backend, seen) in seen_by_backend(&attempts) {
                // The client routes these to node-1: it is the entry node.
                let want = if ns.node_of(&backend) == 1 || dsr { client(v6) } else { ns.lab.node(1).ip(v6) };
                assert_eq!(seen, BTreeSet::from([want]), "{what}: {backend}:\n{}", show(&attempts));
            }
        }
        // Without the service, the same address is unreachable, and says so.
        ns.cluster.delete_service(id + 1).expect("delete");
        let gone = ns.probe(&Probe::tcp(SocketAddr::new(lb, 80)));
        assert!(!gone[0].ok && gone[0].micros < 1_500_000, "deleted LoadBalancer still answers: {}", show(&gone));
    }
}

#[test]
fn hostport_serves_its_node_only() {
    let ns = Ns::setup("np_hostport", 2, 1, AgentOptions::default());
    let b1 = |v6| ns.lab.backends_json(&[ns.lab.backend(1)], v6, BACKEND_PORT);
    let node1 = ns.lab.node(1);
    // As Kubernetes does: only the pod's node gets its hostPort.
    ns.cluster.put_service_on(&[1], 1, &service("HostPort", any_addr(false), 8081, "TCP", b1(false))).expect("put");
    ns.cluster.put_service_on(&[1], 2, &service("HostPort", node1.ip(false), 8082, "UDP", b1(false))).expect("put");
    ns.cluster.put_service_on(&[1], 3, &service("HostPort", any_addr(true), 8081, "TCP", b1(true))).expect("put");
    for v6 in [false, true] {
        let attempts = ns.probe_ok(&Probe::tcp(node1.addr(v6, 8081)).count(5), "hostPort on node-1");
        assert_answered(&attempts, &BTreeSet::from(["backend-1".to_string()]), "hostPort");
        assert_eq!(seen_by_backend(&attempts)["backend-1"], BTreeSet::from([ns.lab.client_ip(v6)]));
        let other = ns.probe(&Probe::tcp(ns.lab.node(2).addr(v6, 8081)));
        assert_fails_fast(&other, Duration::from_secs(1), "node-2 has no such hostPort");
    }
    let attempts = ns.probe_ok(&Probe::udp(node1.addr(false, 8082)).count(5), "UDP hostPort on node-1's address");
    assert_answered(&attempts, &BTreeSet::from(["backend-1".to_string()]), "UDP hostPort");
}

#[test]
fn a_nodeport_cannot_be_bound_on_the_node_and_the_range_is_reserved() {
    let ns = Ns::setup("np_bind", 1, 1, AgentOptions::default());
    ns.put(1, &nodeport(30080, "TCP", false, ns.all_backends(false)));
    ns.put(2, &nodeport(30081, "UDP", false, ns.all_backends(false)));
    ns.put(3, &nodeport(30082, "TCP", true, ns.all_backends(true)));
    let node = ns.lab.node(1);
    let place = node.place();
    let denied = |addr: &str, udp: bool| {
        let a = place.try_bind(addr.parse().expect("addr"), udp).expect("bind client");
        assert!(!a.ok, "binding {addr} ({}) on the node succeeded", if udp { "UDP" } else { "TCP" });
        assert_eq!(a.stage.as_deref(), Some("bind"), "{a:?}");
        assert!(matches!(a.errno, Some(libc::EADDRINUSE) | Some(libc::EPERM)), "{a:?}");
    };
    denied("0.0.0.0:30080", false);
    denied("10.77.0.11:30080", false);
    denied("0.0.0.0:30081", true);
    denied("[::]:30082", false);
    denied("[fd77::11]:30082", false);
    // Other ports and other protocols stay free.
    for (addr, udp) in [("0.0.0.0:30099", false), ("0.0.0.0:30080", true), ("0.0.0.0:30081", false)] {
        let a = place.try_bind(addr.parse().expect("addr"), udp).expect("bind client");
        assert!(a.ok, "binding {addr} (udp: {udp}) was refused: {a:?}");
    }
    assert!(counter(ns.cluster.agent(1), "bind_denied") >= 5, "{:?}", counters(ns.cluster.agent(1)));
    let reserved = node.netns().sysctl_read("net/ipv4/ip_local_reserved_ports").expect("sysctl");
    assert!(reserved.split(',').any(|r| r.trim() == "30000-32767"), "NodePort range not reserved: {reserved:?}");
    // The service gone, the port is free again.
    ns.cluster.delete_service(1).expect("delete");
    let a = place.try_bind("0.0.0.0:30080".parse().expect("addr"), false).expect("bind client");
    assert!(a.ok, "30080 still refused after the service was deleted: {a:?}");
}
