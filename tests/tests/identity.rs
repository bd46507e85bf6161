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
use axon_lab::check::{assert_spread, spec, wait_for};
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
    let out = agent.agentctl(&["bpf", "ipcache", "list"]).expect("agentctl bpf ipcache list");
    assert!(out.success(), "{out}");
    let line = out.stdout.lines().find(|l| l.starts_with("fd00:200::1/128")).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(line.split_whitespace().collect::<Vec<_>>(), vec!["fd00:200::1/128", &web1.to_string(), "local"]);
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

/// Everything under `axon/identities/` in etcd, read with the real `etcdctl`.
fn etcd_dump(endpoints: &[String]) -> BTreeMap<String, String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(["--command-timeout=5s", "get", "--prefix", "axon/identities/"])
        .output()
        .expect("etcdctl (Debian package etcd-client; make deps installs it)");
    assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines.chunks(2).filter(|c| c.len() == 2).map(|c| (c[0].to_string(), c[1].to_string())).collect()
}

/// The etcd content is a bijection: every id names one label set, every label set one id. Returns id → labels.
fn check_no_duplicates(dump: &BTreeMap<String, String>) -> BTreeMap<u32, String> {
    let ids: BTreeMap<u32, String> = dump
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("axon/identities/id/")?.parse().ok()?, v.clone())))
        .collect();
    let by_labels: BTreeMap<String, u32> = dump
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("axon/identities/labels/")?.to_string(), v.parse().ok()?)))
        .collect();
    assert_eq!(ids.len(), by_labels.len(), "as many ids as label sets: {dump:#?}");
    for (id, set) in &ids {
        assert_eq!(by_labels.get(set), Some(id), "id {id} and its label set agree: {dump:#?}");
    }
    let distinct: BTreeSet<&String> = ids.values().collect();
    assert_eq!(distinct.len(), ids.len(), "no label set has two ids: {dump:#?}");
    ids
}

fn refs_of(dump: &BTreeMap<String, String>, node: &str) -> BTreeSet<u32> {
    dump.keys()
        .filter_map(|k| {
            let rest = k.strip_prefix("axon/identities/refs/")?;
            let (id, n) = rest.split_once('/')?;
            (n == node).then(|| id.parse().ok()).flatten()
        })
        .collect()
}

fn kv_agent_options(node: &str, endpoints: &[String]) -> AgentOptions {
    AgentOptions { node_name: Some(node.into()), ..AgentOptions::default() }.with_args(&[
        "--identity-allocation-mode",
        "kvstore",
        "--kvstore-endpoints",
        &endpoints.join(","),
        "--kvstore-lease-ttl",
        "3",
    ])
}

#[test]
fn kvstore_allocation_is_shared_survives_member_loss_and_outages_and_expires_with_the_node() {
    let mut etcd = EtcdCluster::start(3).expect("3-member etcd");
    let eps = etcd.endpoints();
    let lab = Lab::new("idkv", 2).expect("lab");
    let _servers = lab.serve_all(BACKEND_PORT).expect("servers");
    let agent_a = lab.start_agent_with(kv_agent_options("node-a", &eps)).expect("agent a");
    let cgroup_b = Cgroup::create(&format!("{}-b", lab.id())).expect("second cgroup");
    let mut agent_b =
        Agent::start(&format!("{}-b", lab.id()), cgroup_b.path(), kv_agent_options("node-b", &eps)).expect("agent b");
    let vip: SocketAddr = "10.96.0.10:80".parse().expect("vip");
    agent_a
        .create_service(&spec("default/web", vip, Protocol::Tcp, &lab.backend_addrs(false, BACKEND_PORT)))
        .expect("svc");

    // Both agents at once: the same label sets on each, and some only B has.
    const N: usize = 6;
    let (ids_a, ids_b) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            (0..N)
                .map(|i| {
                    ready_id(
                        &agent_a,
                        "team",
                        &format!("a-{i}"),
                        &[&format!("10.201.0.{i}")],
                        json!({"app": format!("svc-{i}")}),
                    )
                })
                .collect::<Vec<u32>>()
        });
        let b = s.spawn(|| {
            (0..N)
                .map(|i| {
                    let only =
                        ready_id(&agent_b, "team", &format!("b-only-{i}"), &[], json!({"app": format!("bonly-{i}")}));
                    let shared = ready_id(
                        &agent_b,
                        "team",
                        &format!("b-{i}"),
                        &[&format!("10.201.1.{i}")],
                        json!({"app": format!("svc-{i}")}),
                    );
                    (shared, only)
                })
                .collect::<Vec<(u32, u32)>>()
        });
        (a.join().expect("thread a"), b.join().expect("thread b"))
    });
    let shared_b: Vec<u32> = ids_b.iter().map(|(s, _)| *s).collect();
    assert_eq!(ids_a, shared_b, "the same label set got the same id on both nodes");
    let all: BTreeSet<u32> = ids_a.iter().chain(ids_b.iter().map(|(_, o)| o)).copied().collect();
    assert_eq!(all.len(), 2 * N, "distinct label sets got distinct ids: a {ids_a:?} b {ids_b:?}");
    let ids = check_no_duplicates(&etcd_dump(&eps));
    assert_eq!(ids.len(), 2 * N);
    assert_eq!(identities(&agent_a), identities(&agent_b), "both agents list the cluster's identities");
    let ic = ipcache_of(&agent_a);
    assert_eq!(ic.get(&ip("10.201.0.3")), Some(&(ids_a[3], ipcache::flags::LOCAL)), "{ic:?}");

    // One member of three down: nothing visible, not even latency.
    etcd.stop_member(0).expect("stop member 0");
    let started = Instant::now();
    let after_a = ready_id(&agent_a, "team", "a-after", &["10.201.0.100"], json!({"app": "after"}));
    let after_b = ready_id(&agent_b, "team", "b-after", &["10.201.1.100"], json!({"app": "after"}));
    assert_eq!(after_a, after_b);
    assert!(identities(&agent_a).iter().any(|i| i.id == after_a));
    assert!(started.elapsed() < Duration::from_secs(4), "allocation with a member down took {:?}", started.elapsed());

    // All members down: the datapath keeps serving, allocation waits.
    let ipcache_before = ipcache_of(&agent_a);
    etcd.stop_member(1).expect("stop member 1");
    etcd.stop_member(2).expect("stop member 2");
    let (status, body) = put_endpoint(&agent_a, "team", "a-outage", &["10.201.0.200"], json!({"app": "outage"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(endpoint_of(&body).state, EndpointState::Pending, "no etcd, no new identity: {body}");
    let (status, body) = put_endpoint(&agent_b, "team", "b-outage", &[], json!({"app": "outage-b"}));
    assert_eq!((status, endpoint_of(&body).state), (200, EndpointState::Pending), "{body}");
    let tcp = lab.tcp(vip, 20).expect("client during the outage");
    assert_spread(&tcp, &lab.backend_names(), "ClusterIP service with etcd down");
    assert_eq!(ipcache_of(&agent_a), ipcache_before, "the ipcache keeps its entries during the outage");
    assert!(agent_a.healthy() && agent_b.healthy());
    // Longer than the lease TTL: the leases expire meanwhile.
    std::thread::sleep(Duration::from_secs(4));

    etcd.start_members(&[0, 1, 2]).expect("etcd back");
    let outage_id = wait_for("a-outage to get its identity", Duration::from_secs(30), || {
        endpoints(&agent_a).into_iter().find(|e| e.name == "a-outage" && e.state == EndpointState::Ready)?.identity
    });
    wait_for("b-outage to get its identity", Duration::from_secs(30), || {
        endpoints(&agent_b).into_iter().find(|e| e.name == "b-outage" && e.state == EndpointState::Ready)?.identity
    });
    assert_eq!(ready_id(&agent_b, "team", "b-outage-2", &[], json!({"app": "outage"})), outage_id);
    assert_eq!(ipcache_of(&agent_a).get(&ip("10.201.0.200")), Some(&(outage_id, ipcache::flags::LOCAL)));
    let dump = etcd_dump(&eps);
    let ids = check_no_duplicates(&dump);
    assert_eq!(ids.len(), 2 * N + 3, "svc-*, bonly-*, after, outage, outage-b: {ids:#?}");
    // References lost with the expired leases were put again under new ones.
    let held_a: BTreeSet<u32> = endpoints(&agent_a).iter().filter_map(|e| e.identity).collect();
    wait_for("node-a's references after the outage", Duration::from_secs(15), || {
        (refs_of(&etcd_dump(&eps), "node-a") == held_a).then_some(())
    });

    // A dead node's references go with its lease; the others stay.
    assert!(!refs_of(&dump, "node-b").is_empty());
    agent_b.kill().expect("kill agent b");
    wait_for("node-b's references to expire", Duration::from_secs(15), || {
        refs_of(&etcd_dump(&eps), "node-b").is_empty().then_some(())
    });
    assert_eq!(refs_of(&etcd_dump(&eps), "node-a"), held_a);
    // Identities only the dead node used are collected after the grace period (4 lease TTLs here: 12 s);
    // the ones node-a still refers to stay.
    let remaining = wait_for("node-b-only identities to be collected", Duration::from_secs(40), || {
        let ids = check_no_duplicates(&etcd_dump(&eps));
        (ids.keys().copied().collect::<BTreeSet<u32>>() == held_a).then_some(ids)
    });
    assert_eq!(remaining.len(), N + 2, "svc-*, after, outage: {remaining:#?}");
    assert_eq!(identities(&agent_a).len(), N + 2);
    assert_spread(&lab.tcp(vip, 10).expect("client"), &lab.backend_names(), "service after everything");
}

fn crd_agent_options(node: &str, kubeconfig: &std::path::Path) -> AgentOptions {
    AgentOptions {
        node_name: Some(node.into()),
        k8s_kubeconfig: Some(kubeconfig.to_path_buf()),
        ..AgentOptions::default()
    }
    .with_args(&["--identity-allocation-mode", "crd"])
}

fn pod_yaml(name: &str, node: &str, app: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: team\n  labels:\n    app: {app}\n    \
         pod-template-hash: {name}\nspec:\n  nodeName: {node}\n  containers:\n  - name: c\n    image: registry.invalid/none\n"
    )
}

/// Writes `ips` into pod `name`'s status, as a kubelet would.
fn set_pod_ips(kube: &axon_lab::kube::KubeCluster, name: &str, ips: &[&str]) {
    let out = kube.kubectl(&["get", "pod", "-n", "team", name, "-o", "json"]).expect("kubectl get pod");
    assert!(out.success(), "{out}");
    let mut pod: Value = serde_json::from_str(&out.stdout).expect("pod JSON");
    pod["status"]["podIP"] = json!(ips[0]);
    pod["status"]["podIPs"] = json!(ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>());
    let path = format!("/api/v1/namespaces/team/pods/{name}/status");
    let out = kube.kubectl_stdin(&["replace", "--raw", &path, "-f", "-"], &pod.to_string()).expect("replace status");
    assert!(out.success(), "{out}");
}

/// Every endpoint of `agent` once all `names` are ready: name → identity.
fn ready_endpoints(agent: &Agent, names: &[String]) -> BTreeMap<String, u32> {
    wait_for("endpoints from the pod watcher", Duration::from_secs(40), || {
        let eps = endpoints(agent);
        let ready: BTreeMap<String, u32> = eps
            .iter()
            .filter(|e| e.state == EndpointState::Ready)
            .filter_map(|e| Some((e.name.clone(), e.identity?)))
            .collect();
        names.iter().all(|n| ready.contains_key(n)).then_some(ready)
    })
}

#[test]
fn crd_allocation_from_two_agents_at_once_gives_one_identity_per_label_set() {
    let kube = axon_lab::kube::KubeCluster::start().expect("kube-apiserver");
    kube.apply(&axon_crds::crds_yaml().expect("CRD yaml")).expect("install the CRDs");
    let out = kube
        .kubectl(&["wait", "--for=condition=established", "--timeout=30s", "crd/axonidentities.axon.io"])
        .expect("kubectl wait");
    assert!(out.success(), "{out}");
    kube.apply("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  labels:\n    tier: blue\n")
        .expect("namespace");

    let lab = Lab::new("idcrd", 1).expect("lab");
    let agent_a = lab.start_agent_with(crd_agent_options("node-a", kube.kubeconfig())).expect("agent a");
    let cgroup_b = Cgroup::create(&format!("{}-b", lab.id())).expect("second cgroup");
    let agent_b =
        Agent::start(&format!("{}-b", lab.id()), cgroup_b.path(), crd_agent_options("node-b", kube.kubeconfig()))
            .expect("agent b");

    // One apply: both agents see their pods at the same moment and race for the same label sets.
    const N: usize = 4;
    let mut yaml = String::new();
    for i in 0..N {
        yaml.push_str(&pod_yaml(&format!("a-{i}"), "node-a", &format!("svc-{i}")));
        yaml.push_str(&pod_yaml(&format!("b-{i}"), "node-b", &format!("svc-{i}")));
    }
    yaml.push_str(&pod_yaml("b-only", "node-b", "only-b"));
    kube.apply(&yaml).expect("pods");

    let names_a: Vec<String> = (0..N).map(|i| format!("a-{i}")).collect();
    let mut names_b: Vec<String> = (0..N).map(|i| format!("b-{i}")).collect();
    names_b.push("b-only".into());
    let ids_a = ready_endpoints(&agent_a, &names_a);
    let ids_b = ready_endpoints(&agent_b, &names_b);
    for i in 0..N {
        assert_eq!(ids_a[&format!("a-{i}")], ids_b[&format!("b-{i}")], "svc-{i}: a {ids_a:?} b {ids_b:?}");
    }
    let distinct: BTreeSet<u32> = ids_a.values().chain(ids_b.values()).copied().collect();
    assert_eq!(distinct.len(), N + 1, "one id per label set: a {ids_a:?} b {ids_b:?}");
    assert!(endpoints(&agent_a).iter().all(|e| !e.name.starts_with("b-")), "node-a only has its own pods");

    // The apiserver holds exactly one AxonIdentity per label set, each confirmed.
    let out = kube.kubectl(&["get", "axonidentities", "-o", "json"]).expect("kubectl get");
    assert!(out.success(), "{out}");
    let list: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let items = list["items"].as_array().expect("items");
    let mut by_labels: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for item in items {
        let id: u32 = item["metadata"]["name"].as_str().and_then(|n| n.parse().ok()).expect("decimal name");
        assert_eq!(item["metadata"]["annotations"]["axon.io/identity-state"], "confirmed", "{item}");
        by_labels.entry(item["spec"]["securityLabels"].to_string()).or_default().push(id);
    }
    assert_eq!(by_labels.len(), N + 1, "{}", out.stdout);
    assert!(by_labels.values().all(|ids| ids.len() == 1), "a label set with two identities: {by_labels:?}");
    let identity = identities(&agent_b).into_iter().find(|i| i.id == ids_b["b-only"]).expect("listed");
    assert_eq!(
        identity.labels,
        labels(&[
            ("k8s:app", "only-b"),
            ("k8s:io.axon.k8s.namespace.labels.tier", "blue"),
            ("k8s:io.kubernetes.pod.namespace", "team"),
        ])
    );

    // Pod addresses (no kubelet here: written into the status by hand) reach both nodes' ipcaches, local
    // pods flagged local, the other node's pods with the identity their node allocated.
    set_pod_ips(&kube, "a-1", &["10.202.0.1", "fd00:202::1"]);
    set_pod_ips(&kube, "b-1", &["10.202.1.1"]);
    let svc1 = ids_a["a-1"];
    let local = ipcache::flags::LOCAL;
    for (agent, a_flags, b_flags) in [(&agent_a, local, 0), (&agent_b, 0, local)] {
        let want: BTreeMap<IpAddr, (u32, u8)> = [
            (ip("10.202.0.1"), (svc1, a_flags)),
            (ip("fd00:202::1"), (svc1, a_flags)),
            (ip("10.202.1.1"), (svc1, b_flags)),
        ]
        .into();
        wait_for("pod addresses in the ipcache", Duration::from_secs(20), || (ipcache_of(agent) == want).then_some(()));
    }

    // A pod deleted on node-a leaves that node's endpoint list; node-b's replica keeps the identity.
    // No kubelet here to finish a graceful deletion: force it.
    let out = kube.kubectl(&["delete", "pod", "-n", "team", "a-0", "--grace-period=0", "--force"]).expect("delete");
    assert!(out.success(), "{out}");
    wait_for("a-0 to leave node-a's endpoints", Duration::from_secs(20), || {
        endpoints(&agent_a).iter().all(|e| e.name != "a-0").then_some(())
    });
}
