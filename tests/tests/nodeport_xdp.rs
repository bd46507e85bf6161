//! North-south serving from XDP, native and generic: the same NodePort
//! traffic as under tc — local and remote backends, SNAT and DSR, TCP and
//! UDP, IPv4 and IPv6, multi-MB transfers intact. With full checksums (as
//! from a real NIC) the XDP counter shows XDP did the work; with partial
//! ones (veth's offload) XDP hands the packets to tc, and the traffic shows
//! that hand-over works. Native XDP on veth needs an XDP program on the
//! receiving peer to transmit or redirect into, so the lab attaches XDP_PASS
//! to every peer first.

mod common;

use axon_lab::check::show;
use axon_lab::{AgentOptions, MultiNodeLab, MultiNodeOptions, Probe, XdpSetting};
use common::*;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

fn xdp_cluster(label: &str, setting: XdpSetting, checksum_offload: bool) -> Ns {
    let shape = MultiNodeOptions { nodes: 2, backends_per_node: 1, checksum_offload };
    let lab = MultiNodeLab::with_options(label, &shape).expect("lab");
    // Best-effort picks native on veth too: its peers need the program as well.
    if matches!(setting, XdpSetting::Native | XdpSetting::BestEffort) {
        lab.attach_xdp_pass_to_peers().expect("XDP_PASS on the peers");
    }
    let servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let cluster = lab.start_agents(&AgentOptions { xdp_mode: Some(setting), ..Default::default() }).expect("agents");
    Ns { cluster, servers, lab }
}

/// With checksum offload off, senders compute full checksums and receivers
/// verify them: XDP's own checksum updates must be right, not just tolerated.
fn serve_from_xdp(setting: XdpSetting, checksum_offload: bool) {
    let label = format!("xdp_{}{}", setting.as_str(), if checksum_offload { "" } else { "_csum" });
    let ns = xdp_cluster(&label, setting, checksum_offload);
    let status = ns.cluster.agent(1).request("GET", axon_api::paths::STATUS, None).expect("status").1;
    assert!(
        status.to_string().to_ascii_lowercase().contains("xdp"),
        "status does not show the XDP attachment: {status:#}"
    );
    let xdp_before = counter(ns.cluster.agent(1), "xdp_fwd");
    for v6 in [false, true] {
        let id = if v6 { 10 } else { 0 };
        ns.put(id + 1, &nodeport(30080, "TCP", v6, ns.all_backends(v6)));
        ns.put(id + 2, &nodeport(30081, "UDP", v6, ns.all_backends(v6)));
        ns.put(id + 3, &with(nodeport(30082, "TCP", v6, ns.all_backends(v6)), "mode", json!("dsr")));
        let node1 = ns.lab.node(1);
        for (proto, port, dsr) in [("TCP", 30080, false), ("UDP", 30081, false), ("TCP", 30082, true)] {
            let to = node1.addr(v6, port);
            let what = format!("{proto} {to} ({}, dsr: {dsr})", setting.as_str());
            let attempts = ns.probe_ok(&Probe::of(proto, to).count(SPREAD), &what);
            assert_answered(&attempts, &ns.all_names(), &what);
            for (b, seen) in seen_by_backend(&attempts) {
                let want = if ns.node_of(&b) == 1 || dsr { ns.lab.client_ip(v6) } else { node1.ip(v6) };
                assert_eq!(seen, BTreeSet::from([want]), "{what}: {b}:\n{}", show(&attempts));
            }
        }
        let remote = ns.lab.backends_json(&[ns.lab.backend(2)], v6, BACKEND_PORT);
        ns.put(id + 4, &nodeport(30090, "TCP", v6, remote));
        let probe = Probe::tcp(node1.addr(v6, 30090)).send_bytes(8 << 20).timeout(Duration::from_secs(5));
        let big = ns.probe_ok(&probe, "8 MB echo through a remote backend");
        assert_eq!(big[0].recv_sum, big[0].sent_sum);
    }
    let xdp_after = counter(ns.cluster.agent(1), "xdp_fwd");
    // With offload on, every packet the lab's senders make carries a partial
    // checksum (CHECKSUM_PARTIAL over veth), which XDP cannot finish: it
    // leaves those to tc, and the traffic above proves the hand-over works.
    // Full checksums are what packets from a real NIC carry: XDP serves them.
    if !checksum_offload {
        assert!(xdp_after > xdp_before, "XDP translated nothing ({xdp_before} -> {xdp_after}): {}", ns.diagnostics());
    }
}

#[test]
fn nodeport_is_served_from_native_xdp() {
    serve_from_xdp(XdpSetting::Native, true);
}

#[test]
fn nodeport_is_served_from_native_xdp_with_full_checksums() {
    serve_from_xdp(XdpSetting::Native, false);
}

#[test]
fn nodeport_is_served_from_best_effort_xdp_with_full_checksums() {
    serve_from_xdp(XdpSetting::BestEffort, false);
}

#[test]
fn nodeport_is_served_from_generic_xdp() {
    serve_from_xdp(XdpSetting::Generic, true);
}

#[test]
fn nodeport_is_served_from_generic_xdp_with_full_checksums() {
    serve_from_xdp(XdpSetting::Generic, false);
}
