//! Mesh acceleration with real sidecars: a real Envoy (uid 1337, Istio-like
//! listeners, `original_dst`) in each of two pods; the agent captures the
//! apps' traffic without iptables and short-circuits the local socket pairs.

use axon_lab::mesh::{MeshFlavor, MeshLab, APP_PORT};
use axon_lab::Attempt;
use std::time::Duration;

fn tcp_probe(lab: &MeshLab, from: usize, v6: bool, count: u32, bytes: usize) -> Vec<Attempt> {
    let to = lab.pod(1 - from).addr(v6, APP_PORT);
    lab.probe(from, to, count, bytes).expect("mesh-app probe runs")
}

fn assert_through_sidecars(lab: &MeshLab, attempts: &[Attempt], v6: bool) {
    let b = lab.pod(1);
    for a in attempts {
        assert!(a.ok, "request failed: {a:?}");
        assert_eq!(a.answer.as_deref(), Some("pod-b"), "{a:?}");
        assert_eq!(a.echo_ok, Some(true), "echo content: {a:?}");
        // Pod b's Envoy connects to its app from the pod's own address: the
        // app sees its sidecar, not pod a.
        let want = if v6 { b.ipv6() } else { b.ipv4() };
        assert_eq!(a.seen_ip(), Some(want), "app of pod b must be reached through its sidecar: {a:?}");
    }
}

#[test]
fn envoy_to_envoy_with_capture_and_bypass() {
    let mut lab = MeshLab::new("mesh-envoy", MeshFlavor::Istio, &[]).expect("lab");
    lab.start_pods(false).expect("pods");
    // Before enabling: the plain path, app to app.
    let plain = tcp_probe(&lab, 0, false, 1, 64);
    assert_eq!(plain[0].seen_ip(), Some(lab.pod(0).ipv4()), "plain path before enabling: {plain:?}");

    lab.enable_pod(0, &[]).expect("enable pod a");
    lab.enable_pod(1, &[]).expect("enable pod b");
    // The very first connection after enabling goes through and answers.
    let first = tcp_probe(&lab, 0, false, 1, 100);
    assert_through_sidecars(&lab, &first, false);
    let more = tcp_probe(&lab, 0, false, 20, 70_000);
    assert_through_sidecars(&lab, &more, false);
    let v6 = tcp_probe(&lab, 0, true, 5, 5_000);
    assert_through_sidecars(&lab, &v6, true);

    // Each Envoy restored the original destination from SO_ORIGINAL_DST.
    let a_out = lab.sidecars[0].wait_log_lines("outbound", 26, Duration::from_secs(5));
    let b_in = lab.sidecars[1].wait_log_lines("inbound", 26, Duration::from_secs(5));
    let want_v4 = lab.pod(1).addr(false, APP_PORT).to_string();
    let want_v6 = lab.pod(1).addr(true, APP_PORT).to_string();
    for (who, lines) in [("pod a outbound", &a_out), ("pod b inbound", &b_in)] {
        assert_eq!(lines.len(), 26, "{who}: one log line per connection: {lines:?}");
        let v4 = lines.iter().filter(|l| l.split_whitespace().nth(1) == Some(want_v4.as_str())).count();
        let v6 = lines.iter().filter(|l| l.split_whitespace().nth(1) == Some(want_v6.as_str())).count();
        assert_eq!((v4, v6), (21, 5), "{who} saw the original destination: {lines:?}");
    }
    let status = lab.status().expect("status");
    assert!(status.pods.iter().all(|p| p.accelerated && p.bypass), "{status:?}");
    let c = &status.counters;
    assert!(c.captured_outbound >= 26 && c.captured_inbound >= 26, "{c:?}");
    assert!(c.original_dst_answered >= 52, "{c:?}");
    assert!(c.sockets_bypassed >= 26 * 4, "two local pairs per request, both ends: {c:?}");
    assert!(c.messages_redirected > 0 && c.bytes_redirected > 26 * 2 * 100, "{c:?}");
    assert_eq!(c.sockhash_insert_failures, 0, "{c:?}");
}
