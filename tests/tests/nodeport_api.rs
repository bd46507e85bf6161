//! Bad north-south input through the agent API: a NodePort outside the range
//! or already taken, an unknown mode or algorithm, a bad source range, a
//! health check port without its policy... each gets a 4xx whose body names
//! the field, and afterwards the services, the pinned maps and the traffic
//! are exactly as before. Also: the CLI shows the new service types.

mod common;

use axon_lab::{Agent, AgentOptions, Probe};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// Everything observable about an agent's state.
fn snapshot(agent: &Agent) -> (String, String) {
    let mut list = agent.list_services().expect("list");
    list.sort_by_key(|s| s.id);
    (format!("{list:?}"), format!("{:?}", agent.lb_maps().expect("maps")))
}

#[test]
fn bad_north_south_input_is_rejected_with_the_field_named_and_changes_nothing() {
    let opts = AgentOptions { nodeport_range: Some((30000, 30999)), ..Default::default() };
    let ns = Ns::setup("np_badapi", 1, 1, opts);
    let agent = ns.cluster.agent(1);
    let backends = ns.all_backends(false);
    ns.put(1, &nodeport(30080, "TCP", false, backends.clone()));
    ns.put(
        2,
        &with(
            with(nodeport(30081, "TCP", false, backends.clone()), "externalTrafficPolicy", json!("Local")),
            "healthCheckNodePort",
            json!(30500),
        ),
    );
    let node_ip = ns.lab.node(1).ip(false);
    let lb = ns.lab.lb_ip(false, 10);
    let np = |port: u16| nodeport(port, "TCP", false, backends.clone());
    let lbs = |ranges: Value| {
        with(service("LoadBalancer", lb, 80, "TCP", backends.clone()), "loadBalancerSourceRanges", ranges)
    };

    // (what, body, expected status, field the answer must name)
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("NodePort above the range", np(31000), 400, "frontend.port"),
        ("NodePort below the range", np(29999), 400, "frontend.port"),
        ("NodePort taken on every address", np(30080), 409, "frontend"),
        (
            "NodePort taken, on one node address",
            service("NodePort", node_ip, 30080, "TCP", backends.clone()),
            409,
            "frontend.port",
        ),
        ("NodePort taken by a health check port", np(30500), 409, "frontend.port"),
        ("unknown mode", with(np(30100), "mode", json!("fast")), 400, "mode"),
        ("unknown algorithm", with(np(30100), "algorithm", json!("roundrobin")), 400, "algorithm"),
        (
            "unknown traffic policy",
            with(np(30100), "externalTrafficPolicy", json!("Nearest")),
            400,
            "externalTrafficPolicy",
        ),
        ("source range with a bad prefix", lbs(json!(["10.77.0.0/33"])), 400, "loadBalancerSourceRanges[0]"),
        (
            "source range with host bits",
            lbs(json!(["10.77.0.0/24", "10.77.0.1/16"])),
            400,
            "loadBalancerSourceRanges[1]",
        ),
        ("source range that is not a CIDR", lbs(json!(["everyone"])), 400, "loadBalancerSourceRanges[0]"),
        (
            "source ranges on a NodePort",
            with(np(30100), "loadBalancerSourceRanges", json!(["10.0.0.0/8"])),
            400,
            "loadBalancerSourceRanges",
        ),
        (
            "health check port without eTP=Local",
            with(np(30100), "healthCheckNodePort", json!(30101)),
            400,
            "healthCheckNodePort",
        ),
        (
            "health check port outside the range",
            with(with(np(30100), "externalTrafficPolicy", json!("Local")), "healthCheckNodePort", json!(32000)),
            400,
            "healthCheckNodePort",
        ),
        (
            "affinity timeout 0",
            with(np(30100), "sessionAffinity", json!({"timeoutSeconds": 0})),
            400,
            "sessionAffinity.timeoutSeconds",
        ),
        (
            "wildcard LoadBalancer",
            service("LoadBalancer", any_addr(false), 80, "TCP", backends.clone()),
            400,
            "frontend.address",
        ),
        (
            "mode on a ClusterIP",
            with(
                service("ClusterIP", "10.96.0.10".parse().expect("ip"), 80, "TCP", backends.clone()),
                "mode",
                json!("dsr"),
            ),
            400,
            "mode",
        ),
    ];

    let before = snapshot(agent);
    for (what, body, want_status, field) in cases {
        for (method, path) in [("POST", axon_api::paths::SERVICES.to_string()), ("PUT", axon_api::paths::service(1))] {
            // A PUT replaces service 1: the conflicts with itself are not conflicts there.
            if method == "PUT" && want_status == 409 {
                continue;
            }
            let (status, answer) = agent.request(method, &path, Some(&body.to_string())).expect("request");
            assert_eq!(status, want_status, "{what} ({method} {path}): {answer}");
            assert_eq!(answer["field"].as_str(), Some(field), "{what} ({method}): {answer}");
            let message = answer["error"].as_str().unwrap_or_default();
            assert!(message.contains(field), "{what}: message {message:?} does not name {field}");
            assert_eq!(snapshot(agent), before, "{what} ({method}): state changed after a rejected request");
        }
    }
    // A bulk apply with one bad service changes nothing either.
    let bulk = json!({"services": [np(30200), with(np(30201), "mode", json!("fast"))]}).to_string();
    let (status, answer) = agent.request("POST", axon_api::paths::APPLY, Some(&bulk)).expect("request");
    assert_eq!((status, answer["field"].as_str()), (400, Some("services[1].mode")), "{answer}");
    assert_eq!(snapshot(agent), before, "a rejected bulk apply changed state");

    let attempts = ns.probe_ok(&Probe::tcp(ns.lab.node(1).addr(false, 30080)).count(5), "after the rejections");
    assert_answered(&attempts, &ns.all_names(), "traffic after the rejections");
}

#[test]
fn agentctl_shows_north_south_services_and_their_types() {
    let ns = Ns::setup("np_cli", 1, 1, AgentOptions::default());
    ns.put(1, &nodeport(30080, "TCP", false, ns.all_backends(false)));
    ns.put(2, &service("LoadBalancer", ns.lab.lb_ip(false, 10), 80, "TCP", ns.all_backends(false)));
    ns.put(3, &service("ExternalIPs", ns.lab.lb_ip(false, 20), 80, "UDP", ns.all_backends(false)));
    ns.put(4, &service("HostPort", any_addr(false), 8081, "TCP", ns.all_backends(false)));
    let list = ctl(&ns, 1, &["service", "list"]);
    for want in
        ["NodePort", "LoadBalancer", "ExternalIPs", "HostPort", "0.0.0.0:30080", "10.99.0.10:80", "10.99.0.20:80"]
    {
        assert!(list.contains(want), "service list lacks {want}:\n{list}");
    }
    let lb = ctl(&ns, 1, &["bpf", "lb", "list"]);
    for want in ["0.0.0.0:30080", "10.99.0.10:80", "10.81.1.10:8080"] {
        assert!(lb.contains(want), "bpf lb list lacks {want}:\n{lb}");
    }
    let json_list: Value = serde_json::from_str(&ctl(&ns, 1, &["-o", "json", "service", "list"])).expect("json");
    let types: BTreeSet<String> =
        json_list.as_array().expect("an array").iter().filter_map(|s| s["type"].as_str().map(String::from)).collect();
    assert_eq!(types, ["ExternalIPs", "HostPort", "LoadBalancer", "NodePort"].map(String::from).into(), "{json_list}");
}
