//! Security identities end to end, against real peers:
//! - `embedded`: endpoints registered through the API get identities (one per
//!   label set, per-replica labels ignored), the pinned `axon_ipcache` holds
//!   their addresses, bad input changes nothing, a restart keeps everything;
//! - `kvstore`: two agents on a real 3-member etcd allocate concurrently
//!   (same label set → same id, different → different), one member down is
//!   invisible, all members down leaves the datapath serving and allocation
//!   resumes with no duplicate id, a dead node's references expire with its
//!   lease;
//! - `crd`: two agents watching the real kube-apiserver allocate for pods on
//!   both nodes at once, one AxonIdentity per label set.

use axon_api::identity::{Endpoint, EndpointState, Identity};
use axon_api::Protocol;
use axon_bpf::maps::ipcache::{self, IpcacheView};
use axon_lab::check::{assert_spread, spec};
use axon_lab::etcd::EtcdCluster;
use axon_lab::{Agent, AgentOptions, Cgroup, Lab};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

const BACKEND_PORT: u16 = 8080;

fn put_endpoint(agent: &Agent, ns: &str, name: &str, ips: &[&str], labels: Value) -> (u16, Value) {
    let body = json!({"ips": ips, "labels": labels}).to_string();
    agent.request("PUT", &format!("/v1/endpoints/{ns}/{name}"), Some(&body)).expect("PUT endpoint")
}

fn endpoint_of(v: &Value) -> Endpoint {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not an endpoint ({e}): {v}"))
}

fn ready_id(agent: &Agent, ns: &str, name: &str, ips: &[&str], labels: Value) -> u32 {
    let (status, body) = put_endpoint(agent, ns, name, ips, labels);
    assert_eq!(status, 200, "PUT {ns}/{name}: {body}\n{}", agent.log());
    let ep = endpoint_of(&body);
    assert_eq!(ep.state, EndpointState::Ready, "{ns}/{name}: {body}");
    ep.identity.expect("a ready endpoint has an identity")
}

fn identities(agent: &Agent) -> Vec<Identity> {
    let (status, body) = agent.request("GET", "/v1/identities", None).expect("GET identities");
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("identity list")
}

fn endpoints(agent: &Agent) -> Vec<Endpoint> {
    let (status, body) = agent.request("GET", "/v1/endpoints", None).expect("GET endpoints");
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("endpoint list")
}

fn ipcache_of(agent: &Agent) -> BTreeMap<IpAddr, (u32, u8)> {
    ipcache::read(agent.bpffs_root())
        .expect("pinned axon_ipcache")
        .into_iter()
        .map(|IpcacheView { ip, identity, flags, .. }| (ip, (identity, flags)))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn labels(set: &[(&str, &str)]) -> BTreeMap<String, String> {
    set.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn embedded_identities_fill_the_ipcache_and_survive_a_restart() {
    let lab = Lab::new("idemb", 1).expect("lab");
    let mut agent = lab.start_agent().expect("agent");

    let web1 = ready_id(
        &agent,
        "prod",
        "web-1",
        &["10.200.0.1", "fd00:200::1"],
        json!({"app": "web", "pod-template-hash": "aaa"}),
    );
    // Another replica: only the per-replica label differs, so the same identity.
    let web2 = ready_id(&agent, "prod", "web-2", &["10.200.0.2"], json!({"app": "web", "pod-template-hash": "bbb"}));
    let db = ready_id(&agent, "prod", "db-1", &["10.200.0.3"], json!({"app": "db"}));
    // The same pod labels in another namespace are another identity.
    let web_dev = ready_id(&agent, "dev", "web-1", &["10.200.1.1"], json!({"app": "web"}));
    assert_eq!(web1, web2);
    assert_eq!(web1, 256, "the lowest id of the default range first");
    let distinct: BTreeSet<u32> = [web1, db, web_dev].into();
    assert_eq!(distinct.len(), 3, "three label sets, three ids: {web1} {db} {web_dev}");

    let list = identities(&agent);
    let web = list.iter().find(|i| i.id == web1).expect("web identity listed");
    assert_eq!(web.labels, labels(&[("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "prod")]));
    assert_eq!(list.len(), 3, "{list:?}");

    let local = ipcache::flags::LOCAL;
    let want: BTreeMap<IpAddr, (u32, u8)> = [
        (ip("10.200.0.1"), (web1, local)),
        (ip("fd00:200::1"), (web1, local)),
        (ip("10.200.0.2"), (web1, local)),
        (ip("10.200.0.3"), (db, local)),
        (ip("10.200.1.1"), (web_dev, local)),
    ]
    .into();
    assert_eq!(ipcache_of(&agent), want, "the pinned ipcache");

    // Bad input: the field is named, nothing changes.
    let before = (endpoints(&agent), ipcache_of(&agent));
    let bad: &[(&str, Value, &str)] = &[
        ("prod/web-9", json!({"ips": ["10.200.0.9", "not-an-ip"], "labels": {"app": "web"}}), "ips[1]"),
        ("prod/web-9", json!({"ips": ["10.200.0.9"], "labels": {"app": "has space"}}), "labels[app]"),
        ("prod/web-9", json!({"ips": ["10.200.0.9"], "labels": {"-bad": "x"}}), "labels[-bad]"),
        ("prod/web-9", json!({"ips": ["10.200.0.9"], "labels": {"app": 7}}), "labels[app]"),
        ("prod/web-9", json!({"ipz": []}), "ipz"),
        ("Prod/web-9", json!({"ips": ["10.200.0.9"]}), "namespace"),
        ("prod/Web_9", json!({"ips": ["10.200.0.9"]}), "name"),
    ];
    for (path, body, field) in bad {
        let (status, reply) =
            agent.request("PUT", &format!("/v1/endpoints/{path}"), Some(&body.to_string())).expect("request");
        assert_eq!(status, 400, "{path} {body}: {reply}");
        assert_eq!(reply["field"], *field, "{path} {body}: {reply}");
    }
    assert_eq!((endpoints(&agent), ipcache_of(&agent)), before, "bad input changed something");

    // agentctl, Cilium's shape.
    let out = agent.agentctl(&["identity", "list"]).expect("agentctl identity list");
    assert!(out.success(), "{out}");
    assert!(out.stdout.starts_with("ID "), "{out}");
    assert!(out.stdout.contains(&format!("{web1}   k8s:app=web")), "{out}");
    let out = agent.agentctl(&["identity", "get", &db.to_string(), "-o", "json"]).expect("agentctl identity get");
    let got: Identity = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(got.labels["k8s:app"], "db");
    let out = agent.agentctl(&["identity", "get", "9999"]).expect("agentctl identity get missing");
    assert!(!out.success() && out.stderr.contains("identity 9999 not found"), "{out}");
    let out = agent.agentctl(&["endpoint", "list"]).expect("agentctl endpoint list");
    assert!(out.stdout.contains("prod/db-1") && out.stdout.contains("ready"), "{out}");

    // A restart (and a SIGKILL) keeps ids, endpoints and the map as they were.
    let snapshot = (identities(&agent), endpoints(&agent), ipcache_of(&agent));
    agent.restart().expect("restart");
    assert_eq!((identities(&agent), endpoints(&agent), ipcache_of(&agent)), snapshot, "after a restart");
    agent.restart_killed().expect("kill and start");
    assert_eq!((identities(&agent), endpoints(&agent), ipcache_of(&agent)), snapshot, "after SIGKILL");

    // The last endpoint of an identity takes it (and its addresses) away.
    let (status, body) = agent.request("DELETE", "/v1/endpoints/prod/db-1", None).expect("DELETE");
    assert_eq!(status, 200, "{body}");
    assert!(identities(&agent).iter().all(|i| i.id != db), "identity {db} freed");
    assert!(!ipcache_of(&agent).contains_key(&ip("10.200.0.3")), "db address left the ipcache");
    // One of two replicas gone: the identity stays.
    agent.request("DELETE", "/v1/endpoints/prod/web-2", None).expect("DELETE");
    assert!(identities(&agent).iter().any(|i| i.id == web1));
    let (status, _) = agent.request("DELETE", "/v1/endpoints/prod/web-2", None).expect("DELETE again");
    assert_eq!(status, 404);
}
