//! The agent's REST API: the happy path (create, read, replace, delete, bulk
//! apply, status), and every kind of bad input answered with a 4xx whose body
//! names the field — after which neither the service list nor the pinned maps
//! have changed, and traffic through the existing VIP still flows.

use axon_api::{paths, Protocol};
use axon_lab::check::{assert_spread, spec};
use axon_lab::{Agent, Lab};
use serde_json::{json, Value};
use std::net::SocketAddr;

const BACKEND_PORT: u16 = 8080;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A service body with `frontend` and `backends` overridden by the caller.
fn body(frontend: Value, backends: Value) -> String {
    json!({"name": "default/bad", "frontend": frontend, "backends": backends, "type": "ClusterIP"}).to_string()
}

fn fe(address: &str, port: Value, protocol: &str) -> Value {
    json!({"address": address, "port": port, "protocol": protocol})
}

fn backends_json(n: usize) -> Value {
    let list: Vec<Value> =
        (0..n).map(|i| json!({"address": format!("10.78.{}.{}", i / 250, i % 250 + 1), "port": 8080})).collect();
    Value::Array(list)
}

/// A bad request: what it is, method, path, body, the status and field expected.
type Case = (&'static str, &'static str, String, Option<String>, u16, Option<&'static str>);

/// Everything observable about the agent's state.
fn snapshot(agent: &Agent) -> (String, String) {
    let mut list = agent.list_services().expect("list");
    list.sort_by_key(|s| s.id);
    (format!("{list:?}"), format!("{:?}", agent.lb_maps().expect("maps")))
}

#[test]
fn bad_input_is_rejected_with_the_field_named_and_changes_nothing() {
    let lab = Lab::new("badapi", 2).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let agent = lab.start_agent().expect("agent");
    let vip = addr("10.96.0.10:80");
    let existing = agent
        .create_service(&spec("default/web", vip, Protocol::Tcp, &lab.backend_addrs(false, BACKEND_PORT)))
        .expect("create");
    let good_backends = json!([{"address": "10.77.0.11", "port": 8080}]);
    let svc = paths::SERVICES;
    let this = paths::service(existing.id);
    let apply_body = json!({"services": [
        {"frontend": fe("10.96.5.5", json!(80), "TCP"), "backends": good_backends},
        {"frontend": fe("10.96.5.6", json!(0), "TCP"), "backends": good_backends},
    ]})
    .to_string();

    // (what, method, path, body, expected status, field the answer must name)
    let cases: Vec<Case> = vec![
        (
            "bad frontend IP",
            "POST",
            svc.into(),
            Some(body(fe("10.96.0.300", json!(80), "TCP"), good_backends.clone())),
            400,
            Some("frontend.address"),
        ),
        (
            "frontend port 0",
            "POST",
            svc.into(),
            Some(body(fe("10.96.0.11", json!(0), "TCP"), good_backends.clone())),
            400,
            Some("frontend.port"),
        ),
        (
            "frontend port 65536",
            "POST",
            svc.into(),
            Some(body(fe("10.96.0.11", json!(65536), "TCP"), good_backends.clone())),
            400,
            Some("frontend.port"),
        ),
        (
            "unknown protocol",
            "POST",
            svc.into(),
            Some(body(fe("10.96.0.11", json!(80), "SCTP"), good_backends.clone())),
            400,
            Some("frontend.protocol"),
        ),
        (
            "bad backend IP",
            "POST",
            svc.into(),
            Some(body(fe("10.96.0.11", json!(80), "TCP"), json!([{"address": "10.77.0", "port": 8080}]))),
            400,
            Some("backends[0].address"),
        ),
        (
            "backend port 0",
            "POST",
            svc.into(),
            Some(body(fe("10.96.0.11", json!(80), "TCP"), json!([{"address": "10.77.0.11", "port": 0}]))),
            400,
            Some("backends[0].port"),
        ),
        (
            "unknown type",
            "POST",
            svc.into(),
            Some(json!({"frontend": fe("10.96.0.11", json!(80), "TCP"), "type": "Mesh"}).to_string()),
            400,
            Some("type"),
        ),
        ("malformed JSON", "POST", svc.into(), Some("{\"frontend\":".into()), 400, None),
        (
            "duplicate frontend",
            "POST",
            svc.into(),
            Some(body(fe("10.96.0.10", json!(80), "TCP"), good_backends.clone())),
            409,
            Some("frontend"),
        ),
        (
            "too many backends",
            "POST",
            svc.into(),
            Some(body(fe("10.96.0.11", json!(80), "TCP"), backends_json(4097))),
            400,
            Some("backends"),
        ),
        (
            "invalid replacement",
            "PUT",
            this.clone(),
            Some(body(fe("10.96.0.10", json!(0), "TCP"), good_backends.clone())),
            400,
            Some("frontend.port"),
        ),
        (
            "bulk with one bad service",
            "POST",
            paths::APPLY.into(),
            Some(apply_body),
            400,
            Some("services[1].frontend.port"),
        ),
        ("get unknown id", "GET", paths::service(999), None, 404, None),
        ("delete unknown id", "DELETE", paths::service(999), None, 404, None),
        ("id that is not a number", "GET", format!("{svc}/abc"), None, 400, None),
    ];

    let before = snapshot(&agent);
    for (what, method, path, req, want_status, want_field) in cases {
        let (status, answer) = agent.request(method, &path, req.as_deref()).expect("request");
        let error = answer.get("error").and_then(Value::as_str).unwrap_or_default().to_string();
        // "too many backends" may also be answered as 507 (no room): a 4xx/5xx, never success.
        let status_ok = status == want_status || (what == "too many backends" && (400..600).contains(&status));
        assert!(status_ok, "{what}: {method} {path} answered {status}, want {want_status}: {answer}");
        assert!(!error.is_empty(), "{what}: no error message in {answer}");
        if let Some(field) = want_field {
            assert_eq!(answer.get("field").and_then(Value::as_str), Some(field), "{what}: field in {answer}");
            assert!(error.contains(field), "{what}: message {error:?} does not name {field}");
        }
        assert_eq!(snapshot(&agent), before, "{what}: state changed after a rejected request");
    }
    assert_spread(&lab.tcp(vip, 30).expect("tcp"), &lab.backend_names(), "traffic after rejected requests");
}

#[test]
fn max_backends_per_service_is_accepted_and_one_more_is_not() {
    let lab = Lab::new("maxbe", 0).expect("lab");
    let agent = lab.start_agent().expect("agent");
    let ok = body(fe("10.96.0.12", json!(80), "TCP"), backends_json(4096));
    let (status, answer) = agent.request("POST", paths::SERVICES, Some(&ok)).expect("request");
    assert!((200..300).contains(&status), "4096 backends refused: {status} {answer}");
    let id = answer["id"].as_u64().expect("id") as u32;
    assert_eq!(agent.get_service(id).expect("get").backends.len(), 4096);
    let too_many = body(fe("10.96.0.12", json!(80), "TCP"), backends_json(4097));
    let (status, answer) = agent.request("PUT", &paths::service(id), Some(&too_many)).expect("request");
    assert!((400..500).contains(&status), "4097 backends accepted: {status} {answer}");
    assert_eq!(agent.get_service(id).expect("get").backends.len(), 4096, "rejected update changed the service");
}

#[test]
fn services_can_be_created_read_replaced_listed_and_deleted() {
    let lab = Lab::new("crud", 2).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let agent = lab.start_agent().expect("agent");
    let b = lab.backend_addrs(false, BACKEND_PORT);
    let vip = addr("10.96.0.10:80");

    let (status, created) = agent
        .request("POST", paths::SERVICES, Some(&json!({"name": "default/web", "frontend": {"address": "10.96.0.10", "port": 80, "protocol": "TCP"}, "backends": [{"address": "10.77.0.11", "port": 8080}], "type": "ClusterIP"}).to_string()))
        .expect("create");
    assert!((200..300).contains(&status), "create: {status} {created}");
    let id = created["id"].as_u64().expect("allocated id") as u32;
    assert_eq!(created["frontend"], json!({"address": "10.96.0.10", "port": 80, "protocol": "TCP"}));
    assert_eq!(created["type"], "ClusterIP");
    let (status, got) = agent.request("GET", &paths::service(id), None).expect("get");
    assert_eq!((status, &got), (200, &created));
    assert_spread(&lab.tcp(vip, 10).expect("tcp"), &["backend-1"], "after create");

    let replaced = agent.put_service(id, &spec("default/web", vip, Protocol::Tcp, &b[1..])).expect("replace");
    assert_eq!(replaced.id, id);
    assert_spread(&lab.tcp(vip, 10).expect("tcp"), &["backend-2"], "after replace");

    let bulk = agent
        .apply(vec![
            spec("default/a", addr("10.96.1.1:80"), Protocol::Tcp, &b),
            spec("default/b", addr("10.96.1.2:53"), Protocol::Udp, &b),
        ])
        .expect("apply");
    assert_eq!(bulk.len(), 2);
    let mut ids: Vec<u32> = agent.list_services().expect("list").iter().map(|s| s.id).collect();
    ids.sort();
    let mut want = vec![id, bulk[0].id, bulk[1].id];
    want.sort();
    assert_eq!(ids, want);
    assert_spread(&lab.tcp(addr("10.96.1.1:80"), 30).expect("tcp"), &lab.backend_names(), "bulk-applied service");

    let (status, status_body) = agent.request("GET", paths::STATUS, None).expect("status");
    assert_eq!(status, 200, "{status_body}");
    assert!(status_body.is_object(), "status is a JSON object: {status_body}");

    let deleted = agent.delete_service(id).expect("delete");
    assert_eq!(deleted.id, id);
    let (status, _) = agent.request("GET", &paths::service(id), None).expect("get");
    assert_eq!(status, 404);
    let tcp = lab.tcp(vip, 1).expect("tcp");
    assert_eq!(tcp[0].errno, Some(libc::ENETUNREACH), "{tcp:?}");
}

#[test]
fn the_backend_limit_is_configurable() {
    let lab = Lab::new("limit", 0).expect("lab");
    let agent = lab
        .start_agent_with(axon_lab::AgentOptions { max_backends_per_service: Some(8), ..Default::default() })
        .expect("agent");
    let (status, answer) = agent
        .request("POST", paths::SERVICES, Some(&body(fe("10.96.0.13", json!(80), "TCP"), backends_json(8))))
        .expect("request");
    assert!((200..300).contains(&status), "8 backends refused with a limit of 8: {status} {answer}");
    let (status, answer) = agent
        .request("POST", paths::SERVICES, Some(&body(fe("10.96.0.14", json!(80), "TCP"), backends_json(9))))
        .expect("request");
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["field"], "backends", "{answer}");
    assert_eq!(agent.list_services().expect("list").len(), 1);
}

#[test]
fn a_full_map_is_an_error_to_the_caller_and_nothing_is_half_written() {
    let lab = Lab::new("fullmap", 0).expect("lab");
    // 16 service-map entries: a master and 15 backend slots at most.
    let agent = lab
        .start_agent_with(axon_lab::AgentOptions {
            extra_args: vec!["--lb-service-map-max".into(), "16".into()],
            ..Default::default()
        })
        .expect("agent");
    let (status, answer) = agent
        .request("POST", paths::SERVICES, Some(&body(fe("10.96.0.20", json!(80), "TCP"), backends_json(10))))
        .expect("request");
    assert!((200..300).contains(&status), "11 entries of 16 refused: {status} {answer}");
    let before = snapshot(&agent);

    let (status, answer) = agent
        .request("POST", paths::SERVICES, Some(&body(fe("10.96.0.21", json!(80), "TCP"), backends_json(5))))
        .expect("request");
    assert_eq!(status, 507, "{answer}");
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(message.contains("axon_lb4_services") && message.contains("16"), "names the map and its size: {answer}");
    assert_eq!(snapshot(&agent), before, "a refused service left entries behind");

    // A bulk apply that needs room for its second service is refused whole.
    let bulk = json!({"services": [
        {"frontend": fe("10.96.0.22", json!(80), "TCP"), "backends": backends_json(1)},
        {"frontend": fe("10.96.0.23", json!(80), "TCP"), "backends": backends_json(4)},
    ]})
    .to_string();
    let (status, answer) = agent.request("POST", paths::APPLY, Some(&bulk)).expect("request");
    assert_eq!(status, 507, "{answer}");
    assert_eq!(snapshot(&agent), before, "a refused bulk apply left entries behind");

    // Room freed is room usable: shrinking the first service lets a second in.
    let (status, answer) = agent
        .request("PUT", "/v1/services/1", Some(&body(fe("10.96.0.20", json!(80), "TCP"), backends_json(2))))
        .expect("request");
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = agent
        .request("POST", paths::SERVICES, Some(&body(fe("10.96.0.21", json!(80), "TCP"), backends_json(5))))
        .expect("request");
    assert!((200..300).contains(&status), "9 of 16 entries used, 6 more refused: {status} {answer}");
}
