//! North-south conntrack as an operator sees it: `agentctl bpf ct list`
//! shows both entries of a flow with its whole translation, `flush` empties
//! the maps without breaking new traffic, and the agent's GC removes entries
//! once their state's timeout has passed.

mod common;

use axon_lab::check::show;
use axon_lab::{AgentOptions, Probe};
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const UDP_TIMEOUT: u64 = 3;
const CLOSE_TIMEOUT: u64 = 2;

fn short_timeouts() -> AgentOptions {
    AgentOptions::default().with_args(&[
        "--ct-timeout-udp",
        &UDP_TIMEOUT.to_string(),
        "--ct-timeout-close",
        &CLOSE_TIMEOUT.to_string(),
        "--ct-timeout-syn",
        "5",
        "--ct-gc-interval",
        "1",
    ])
}

/// `agentctl bpf ct list -o json` of node `i`.
fn ct_rows(ns: &Ns, i: usize) -> Vec<Value> {
    let out = ctl(ns, i, &["-o", "json", "bpf", "ct", "list"]);
    match serde_json::from_str::<Value>(&out) {
        Ok(Value::Array(rows)) => rows,
        other => panic!("ct list -o json of node-{i} is not an array: {other:?}\n{out}"),
    }
}

/// The rows of node `i` for the client's flow from `client` (`ip:port`).
fn flow_rows(ns: &Ns, i: usize, client: &str) -> Vec<Value> {
    ct_rows(ns, i).into_iter().filter(|r| r["client"] == json!(client)).collect()
}

fn flags(row: &Value) -> Vec<String> {
    row["flags"].as_array().map(|f| f.iter().filter_map(|v| v.as_str().map(String::from)).collect()).unwrap_or_default()
}

#[test]
fn conntrack_shows_each_flow_with_its_translation_and_flush_empties_it() {
    let ns = Ns::setup("ct_list", 2, 1, short_timeouts());
    let remote = ns.lab.backends_json(&[ns.lab.backend(2)], false, BACKEND_PORT);
    ns.put(1, &nodeport(30080, "TCP", false, remote.clone()));
    ns.put(2, &nodeport(30081, "UDP", false, remote.clone()));
    ns.put(3, &with(nodeport(30082, "TCP", false, remote), "mode", json!("dsr")));
    let node1 = ns.lab.node(1);
    let client = ns.lab.client_ip(false);

    // SNAT, UDP: a service entry and a reply entry on the entry node.
    ns.probe_ok(&Probe::udp(node1.addr(false, 30081)).source_port(42000), "udp");
    let from = format!("{client}:42000");
    let rows = flow_rows(&ns, 1, &from);
    assert_eq!(rows.len(), 2, "service and reply entries of {from}: {rows:#?}");
    for r in &rows {
        assert_eq!(r["proto"], json!("UDP"), "{r}");
        assert_eq!(r["frontend"], json!(node1.addr(false, 30081).to_string()), "{r}");
        assert_eq!(r["backend"], json!(ns.lab.backend(2).addr(false, BACKEND_PORT).to_string()), "{r}");
        assert!(flags(r).contains(&"SNAT".to_string()), "{r}");
        let nat = r["nat"].as_str().unwrap_or_default();
        assert!(nat.starts_with(&format!("{}:", node1.ipv4())), "SNAT to the node's address: {r}");
        let left = r["expires_in"].as_i64().unwrap_or(-1);
        assert!((0..=UDP_TIMEOUT as i64).contains(&left), "a UDP entry lives {UDP_TIMEOUT}s: {r}");
    }
    let dirs: Vec<&str> = rows.iter().filter_map(|r| r["direction"].as_str()).collect();
    assert!(dirs.contains(&"service") && dirs.contains(&"reply"), "{rows:#?}");

    // TCP, closed: its entries are in the closing state.
    ns.probe_ok(&Probe::tcp(node1.addr(false, 30080)).source_port(42001), "tcp");
    let tcp = flow_rows(&ns, 1, &format!("{client}:42001"));
    assert!(!tcp.is_empty(), "no entry for the TCP flow: {:#?}", ct_rows(&ns, 1));
    assert!(tcp.iter().all(|r| r["state"].as_str().is_some()), "TCP entries carry a state: {tcp:#?}");

    // DSR: the backend's node keeps the entry that turns replies back into the frontend.
    ns.probe_ok(&Probe::tcp(node1.addr(false, 30082)).source_port(42002), "dsr");
    let on_backend_node = flow_rows(&ns, 2, &format!("{client}:42002"));
    assert!(
        on_backend_node.iter().any(|r| flags(r).contains(&"DSR_BACKEND".to_string())),
        "node-2 has no DSR entry for the flow: {:#?}",
        ct_rows(&ns, 2)
    );

    // Text output has a line per entry too.
    let text = ctl(&ns, 1, &["bpf", "ct", "list"]);
    assert!(text.contains(&from), "ct list does not show {from}:\n{text}");

    for i in [1, 2] {
        ctl(&ns, i, &["bpf", "ct", "flush"]);
        assert!(ct_rows(&ns, i).is_empty(), "node-{i} still has entries after flush");
    }
    // New traffic after a flush is served and tracked again.
    ns.probe_ok(&Probe::udp(node1.addr(false, 30081)).count(3), "after flush");
    assert!(!ct_rows(&ns, 1).is_empty());
}

#[test]
fn expired_entries_are_collected() {
    let ns = Ns::setup("ct_gc", 2, 1, short_timeouts());
    let remote = ns.lab.backends_json(&[ns.lab.backend(2)], false, BACKEND_PORT);
    ns.put(1, &nodeport(30081, "UDP", false, remote.clone()));
    ns.put(2, &nodeport(30080, "TCP", false, remote));
    let node1 = ns.lab.node(1);
    let client = ns.lab.client_ip(false);
    ns.probe_ok(&Probe::udp(node1.addr(false, 30081)).source_port(42010), "udp");
    ns.probe_ok(&Probe::tcp(node1.addr(false, 30080)).source_port(42011), "tcp");
    let flows = [format!("{client}:42010"), format!("{client}:42011")];
    for f in &flows {
        assert!(!flow_rows(&ns, 1, f).is_empty(), "{f} not tracked: {:#?}", ct_rows(&ns, 1));
    }
    // Gone within the timeout plus a few GC periods.
    let gone = eventually(Duration::from_secs(UDP_TIMEOUT + 10), || {
        flows.iter().all(|f| flow_rows(&ns, 1, f).is_empty()).then_some(())
    });
    assert!(gone.is_some(), "expired entries were never collected: {:#?}\n{}", ct_rows(&ns, 1), ns.diagnostics());
    // And the service goes on.
    let attempts = ns.probe_ok(&Probe::udp(node1.addr(false, 30081)).source_port(42010), "after GC");
    assert_eq!(attempts[0].answer.as_deref(), Some("backend-2"), "{}", show(&attempts));
}
