//! Mesh acceleration with real sidecars: a real Envoy (uid 1337, Istio-like
//! listeners, `original_dst`) in each of two pods; the agent captures the
//! apps' traffic without iptables and short-circuits the local socket pairs.

use axon_api::mesh::MeshCounters;
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
    // Small writes both ways (echo): they stay on the shortcut, in order.
    let to = lab.pod(1).addr(false, APP_PORT).to_string();
    let run = lab.spawn_app(0, &["pattern", &to, "3000", "64"]).expect("pattern");
    let out: serde_json::Value =
        serde_json::from_str(run.wait_output(Duration::from_secs(60)).expect("pattern ran").trim()).expect("json");
    assert_eq!(out["ok"], true, "small-write echo: {out}");
    // That exchange taught the datapath that pod b's app port answers request
    // by request: the app's next connections there send through the shortcut
    // too (the first ones only received through it).
    let learnt = lab.status().expect("status").counters;
    let again = tcp_probe(&lab, 0, false, 3, 5_000);
    assert_through_sidecars(&lab, &again, false);
    let c = lab.status().expect("status").counters;
    assert!(c.app_sockets_sending > learnt.app_sockets_sending, "request/response destination learnt: {c:?}");
    // A one-way stream of small writes to a destination not known for
    // request/response: the app's socket writes through plain TCP (it only
    // receives through the shortcut) while the sidecars' sockets redirect what
    // they forward; every byte arrives, in order, on every connection.
    let (before, after) = two_streams_into_sink(&lab, 9000, &[], &[]);
    assert!(
        after.app_sockets_plain >= before.app_sockets_plain + 2,
        "both streams' app sockets wrote plain TCP: {after:?}"
    );
    assert!(
        after.messages_redirected > before.messages_redirected,
        "the sidecars forwarded through the shortcut: {after:?}"
    );

    // A destination that answered request by request, whose app then streams
    // small writes: its next connection's app socket sends through the
    // shortcut from the first byte and leaves the redirect mid-connection once
    // the writes come back to back. Every byte still arrives, in order.
    let (before, after) = two_streams_into_sink(&lab, 9002, &["--answer-first", "40"], &["--rpc", "40"]);
    assert!(after.app_sockets_sending > before.app_sockets_sending, "the second one sent through it: {after:?}");
    assert!(after.streams_to_stack > before.streams_to_stack, "and left the redirect mid-stream: {after:?}");

    let status = lab.status().expect("status");
    assert!(status.pods.iter().all(|p| p.accelerated && p.bypass), "{status:?}");
    let c = &status.counters;
    assert!(c.captured_outbound >= 26 && c.captured_inbound >= 26, "{c:?}");
    assert!(c.original_dst_answered >= 52, "{c:?}");
    assert!(c.sockets_bypassed >= 26 * 4, "two local pairs per request, both ends: {c:?}");
    assert!(c.sockets_sending < c.sockets_bypassed, "an app socket on plain writes is only a target: {c:?}");
    assert!(c.messages_redirected > 0 && c.bytes_redirected > 26 * 2 * 100, "{c:?}");
    assert_eq!(c.sockhash_insert_failures, 0, "{c:?}");
}

/// Starts a reporting sink on pod b's `port` (plus `sink_args`), streams
/// 64 B writes into it twice from pod a's app (plus `stream_args`) and checks
/// that both connections arrived whole and in order. The datapath counters
/// before and after.
fn two_streams_into_sink(
    lab: &MeshLab,
    port: u16,
    sink_args: &[&str],
    stream_args: &[&str],
) -> (MeshCounters, MeshCounters) {
    let report = std::env::temp_dir().join(format!("{}-sink-{port}-report", lab.lab().id()));
    let report_s = report.display().to_string();
    let port_s = port.to_string();
    let mut args = vec!["sink", &port_s, "--report", &report_s];
    args.extend_from_slice(sink_args);
    let _sink = lab.spawn_app(1, &args).expect("sink");
    axon_lab::mesh::wait_listening(lab.netns(1), ([127, 0, 0, 1], port).into(), Duration::from_secs(10))
        .expect("sink listening");
    let sink_addr = lab.pod(1).addr(false, port).to_string();
    let before = lab.status().expect("status").counters;
    for n in 1..=2 {
        let mut args = vec!["stream", &sink_addr, "64", "300"];
        args.extend_from_slice(stream_args);
        lab.spawn_app(0, &args).expect("stream").wait_output(Duration::from_secs(30)).expect("stream ran");
        let verdicts = wait_report_lines(&report, n);
        assert!(
            verdicts.len() == n && verdicts.iter().all(|v| v.starts_with("ok ")),
            "connection {n} to :{port} arrived whole and in order: {verdicts:?}"
        );
    }
    let _ = std::fs::remove_file(&report);
    (before, lab.status().expect("status").counters)
}

/// The sink's report lines once it has `n` (or after 10 s), without the
/// readiness check's empty connection ("ok 0").
fn wait_report_lines(report: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(report).unwrap_or_default();
        let lines: Vec<String> = text.lines().filter(|l| *l != "ok 0").map(str::to_string).collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests from pod a to pod b's `port`: through which sidecars did they go?
/// Returns the address pod b's app saw.
fn seen_by_b(lab: &MeshLab, port: u16, v6: bool) -> std::net::IpAddr {
    let to = lab.pod(1).addr(v6, port);
    let attempts = lab.probe(0, to, 1, 64).expect("probe");
    let a = &attempts[0];
    assert!(a.ok && a.echo_ok == Some(true), "request to {to}: {a:?}");
    a.seen_ip().expect("the app reports its peer")
}

#[test]
fn exclusions_toggle_under_load_and_disable() {
    let mut lab = MeshLab::new("mesh-toggle", MeshFlavor::Istio, &[]).expect("lab");
    lab.start_pods(false).expect("pods");
    let _extra = [9090u16, 9191].map(|port| lab.serve(1, port, false).expect("extra app port"));
    let (a4, b4, b6) = (lab.pod(0).ipv4(), lab.pod(1).ipv4(), lab.pod(1).ipv6());
    lab.enable_pod(
        0,
        &[
            ("traffic.sidecar.istio.io/excludeOutboundPorts", "9090"),
            ("traffic.sidecar.istio.io/excludeOutboundIPRanges", "fd77::b/128"),
        ],
    )
    .expect("enable a");
    lab.enable_pod(1, &[("traffic.sidecar.istio.io/excludeInboundPorts", "9191")]).expect("enable b");

    // Both sidecars: b's app sees b's own Envoy.
    assert_eq!(seen_by_b(&lab, APP_PORT, false), b4);
    // Outbound port excluded at a: a's Envoy is skipped, b still captures inbound.
    let out_before = lab.sidecars[0].wait_log_lines("outbound", 1, Duration::from_secs(3)).len();
    assert_eq!(seen_by_b(&lab, 9090, false), b4);
    // Inbound port excluded at b: a's Envoy connects straight to b's app.
    assert_eq!(seen_by_b(&lab, 9191, false), a4);
    // Outbound range excluded at a (b's IPv6 address): b still captures.
    assert_eq!(seen_by_b(&lab, APP_PORT, true), b6);
    let out_lines = lab.sidecars[0].wait_log_lines("outbound", out_before + 1, Duration::from_secs(3));
    assert!(
        out_lines.iter().all(|l| !l.contains(":9090 ") && !l.contains("[fd77::b]")),
        "excluded destinations never reach a's Envoy: {out_lines:?}"
    );
    assert!(out_lines.iter().any(|l| l.contains(":9191 ")), "{out_lines:?}");
    let st = lab.status().expect("status");
    assert!(st.counters.excluded >= 3, "{:?}", st.counters);

    // Toggle pod a and its namespace while connections keep coming: nothing is lost.
    let to = lab.pod(1).addr(false, APP_PORT).to_string();
    let load = lab.spawn_app(0, &["probe", &to, "150", "2000"]).expect("load");
    let chat = lab.spawn_app(0, &["chat", &to, "3000"]).expect("long-lived connection");
    for round in 0..4 {
        std::thread::sleep(Duration::from_millis(150));
        let verb = if round % 2 == 0 { "disable" } else { "enable" };
        lab.agentctl_ok(&["mesh", verb, "--pod", "default/pod-a"]).expect("toggle pod");
        lab.agentctl_ok(&["mesh", verb, "--namespace", "default"]).expect("toggle namespace");
    }
    let attempts: Vec<Attempt> = load
        .wait_output(Duration::from_secs(60))
        .expect("load ran")
        .lines()
        .map(|l| serde_json::from_str(l).expect("attempt line"))
        .collect();
    assert_eq!(attempts.len(), 150);
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok || a.answer.as_deref() != Some("pod-b")).collect();
    assert!(failed.is_empty(), "requests lost while toggling: {failed:?}");
    let chat: serde_json::Value =
        serde_json::from_str(chat.wait_output(Duration::from_secs(30)).expect("chat ran").trim()).expect("chat line");
    assert_eq!(chat["failed"], 0, "the open connection survived every toggle: {chat}");
    assert!(chat["round_trips"].as_u64().unwrap_or(0) > 50, "{chat}");

    // Disabled: a is back on the plain path (b, still enabled, captures inbound);
    // both disabled: app to app, no sidecar at all.
    lab.agentctl_ok(&["mesh", "disable", "--pod", "default/pod-a"]).expect("disable a");
    let st = lab.status().expect("status");
    let a = st.pods.iter().find(|p| p.name == "pod-a").expect("pod a listed");
    assert!(!a.accelerated, "{st:?}");
    // Envoy logs a connection when it closes and flushes every 20 ms: let the
    // lines of the connections before the toggle land first.
    std::thread::sleep(Duration::from_millis(300));
    let out_now = lab.sidecars[0].wait_log_lines("outbound", 0, Duration::ZERO).len();
    assert_eq!(seen_by_b(&lab, APP_PORT, false), b4);
    lab.agentctl_ok(&["mesh", "disable", "--pod", "default/pod-b"]).expect("disable b");
    assert_eq!(seen_by_b(&lab, APP_PORT, false), a4, "plain path once both are off");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lab.sidecars[0].wait_log_lines("outbound", 0, Duration::ZERO).len(),
        out_now,
        "a disabled pod's app no longer goes through its sidecar"
    );
}

#[test]
fn agent_restart_keeps_accelerated_connections() {
    let mut lab = MeshLab::new("mesh-restart", MeshFlavor::Istio, &[]).expect("lab");
    lab.start_pods(false).expect("pods");
    lab.enable_pod(0, &[]).expect("enable a");
    lab.enable_pod(1, &[]).expect("enable b");
    let to = lab.pod(1).addr(false, APP_PORT).to_string();
    let chat = lab.spawn_app(0, &["chat", &to, "4000"]).expect("long-lived connection");
    std::thread::sleep(Duration::from_millis(500));
    let before = lab.status().expect("status").counters;
    lab.agent.restart().expect("restart the agent");
    // New connections after the restart: captured and bypassed, no EBUSY.
    assert_eq!(seen_by_b(&lab, APP_PORT, false), lab.pod(1).ipv4());
    let chat: serde_json::Value =
        serde_json::from_str(chat.wait_output(Duration::from_secs(30)).expect("chat ran").trim()).expect("chat line");
    assert_eq!(chat["failed"], 0, "the accelerated connection outlived the agent restart: {chat}");
    let after = lab.status().expect("status after restart");
    assert!(after.pods.iter().all(|p| p.accelerated), "{after:?}");
    let c = after.counters;
    assert!(c.messages_redirected > before.messages_redirected, "the bypass kept working: {before:?} → {c:?}");
    assert!(c.sockets_bypassed >= before.sockets_bypassed + 6, "{c:?}");
    assert_eq!(c.sockhash_insert_failures, 0, "{c:?}");
    let log = lab.agent.log();
    assert!(
        log.matches("already attached").count() >= 5,
        "the restarted agent reused the four pinned links and the sk_msg attachment:\n{}",
        log.lines().filter(|l| l.contains("mesh::loader")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn linkerd_mode_with_haproxy_sidecars() {
    let mut lab = MeshLab::new("mesh-linkerd", MeshFlavor::Linkerd, &[]).expect("lab");
    // Enabled before the sidecars start: the bind hooks see their listeners.
    lab.enable_pod(0, &[("config.linkerd.io/skip-outbound-ports", "9090")]).expect("enable a");
    lab.enable_pod(1, &[]).expect("enable b");
    lab.start_pods(false).expect("pods");
    let _extra = lab.serve(1, 9090, false).expect("extra port");
    let attempts = lab.probe(0, lab.pod(1).addr(false, APP_PORT), 10, 30_000).expect("probe");
    for a in &attempts {
        assert!(a.ok && a.answer.as_deref() == Some("pod-b"), "{a:?}");
        assert_eq!(a.peer.as_deref(), Some("127.0.0.1:4140"), "captured to the outbound port: {a:?}");
        assert_eq!(a.seen_ip(), Some(lab.pod(1).ipv4()), "through b's proxy: {a:?}");
    }
    let st = lab.status().expect("status");
    assert_eq!((st.mode.as_str(), st.outbound_port, st.inbound_port, st.proxy_uid), ("linkerd", 4140, 4143, 2102));
    let c = &st.counters;
    assert!(c.captured_outbound >= 10 && c.captured_inbound >= 10 && c.original_dst_answered >= 20, "{c:?}");
    // skip-outbound-ports: a's proxy is bypassed, b's still captures.
    let skip = lab.probe(0, lab.pod(1).addr(false, 9090), 1, 10).expect("probe");
    // Not captured outbound: straight to b's address, where b's inbound port takes it.
    assert_eq!(skip[0].peer.as_deref(), Some(&*lab.pod(1).addr(false, 4143).to_string()), "{skip:?}");
    assert_eq!(skip[0].seen_ip(), Some(lab.pod(1).ipv4()), "{skip:?}");

    // The proxies listen on IPv4 only (outbound 127.0.0.1:4140, inbound
    // 0.0.0.0:4143): IPv6 is left uncaptured at both ends instead of being
    // sent where nothing listens. The first request already works.
    let before = lab.status().expect("status").counters;
    let v6 = lab.probe(0, lab.pod(1).addr(true, APP_PORT), 3, 1_000).expect("probe v6");
    for a in &v6 {
        assert!(a.ok && a.answer.as_deref() == Some("pod-b"), "{a:?}");
        assert_eq!(a.peer.as_deref(), Some(&*lab.pod(1).addr(true, APP_PORT).to_string()), "not captured: {a:?}");
        assert_eq!(a.seen_ip(), Some(lab.pod(0).ipv6()), "straight from a's app: {a:?}");
    }
    let after = lab.status().expect("status").counters;
    assert!(after.no_listener >= before.no_listener + 6, "outbound and inbound, per connection: {after:?}");
    assert_eq!(after.captured_outbound, before.captured_outbound, "{after:?}");
}

#[test]
fn bad_registrations_name_the_field_and_change_nothing() {
    let lab = MeshLab::new("mesh-bad", MeshFlavor::Istio, &[]).expect("lab");
    let cgroup = lab.pod(0).cgroup.path().display().to_string();
    let put = |body: serde_json::Value| {
        lab.agent.request("PUT", "/v1/mesh/pods/default/pod-a", Some(&body.to_string())).expect("request")
    };
    let (code, body) = put(serde_json::json!({
        "cgroup": cgroup, "ips": ["10.77.0.2"],
        "annotations": {"traffic.sidecar.istio.io/excludeOutboundPorts": "80,http"}
    }));
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["field"], "annotations.traffic.sidecar.istio.io/excludeOutboundPorts", "{body}");
    let (code, body) = put(serde_json::json!({"cgroup": "/", "ips": ["10.77.0.2"]}));
    assert_eq!((code, body["field"].as_str()), (400, Some("cgroup")), "{body}");
    let (code, body) = put(serde_json::json!({"cgroup": cgroup, "ips": ["10.77.0.300"]}));
    assert_eq!((code, body["field"].as_str()), (400, Some("ips[0]")), "{body}");
    let (code, body) =
        lab.agent.request("POST", "/v1/mesh/enable", Some(r#"{"pod":"default/nobody"}"#)).expect("request");
    assert_eq!(code, 404, "{body}");
    let out = lab.agent.agentctl(&["mesh", "enable", "--pod", "Bad/Name"]).expect("agentctl runs");
    assert!(!out.success() && out.stderr.contains("namespace"), "{out:?}");
    let st = lab.status().expect("status");
    assert!(st.pods.is_empty() && st.namespaces.is_empty(), "nothing was registered: {st:?}");
}
