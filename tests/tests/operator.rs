//! axon-operator against a real kube-apiserver 1.20.2: it installs the CRDs, two replicas elect exactly one
//! leader through a Lease and the standby takes over within the lease duration when the leader is killed,
//! every Node gets distinct pod CIDRs that survive operator restarts and are released with the Node, and
//! unused identities are garbage-collected after the grace period while used ones stay.

use axon_lab::bins::binary;
use axon_lab::check::wait_for;
use axon_lab::kube::KubeCluster;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LEASE_SECS: u64 = 4;
const RETRY_SECS: u64 = 1;

/// One axon-operator process; killed on drop.
struct Operator {
    id: String,
    health: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Operator {
    fn start(kube: &KubeCluster, id: &str, extra: &[&str]) -> Operator {
        let health = free_port();
        let log = std::env::temp_dir().join(format!("axon-operator-{}-{id}-{health}.log", std::process::id()));
        let mut args: Vec<String> = [
            "--kubeconfig",
            kube.kubeconfig().to_str().expect("utf-8"),
            "--namespace",
            "default",
            "--id",
            id,
            "--lease-duration",
            &LEASE_SECS.to_string(),
            "--renew-deadline",
            "3",
            "--retry-period",
            &RETRY_SECS.to_string(),
            "--health-addr",
            &format!("127.0.0.1:{health}"),
            "--log-level",
            "info,kube=warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut op = Operator { id: id.to_string(), health, args, log, child: None };
        op.spawn();
        op
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("operator log");
        let mut cmd = Command::new(binary("axon-operator").expect("axon-operator built (cargo build --workspace)"));
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log.try_clone().expect("log fd")).stderr(log);
        // The operator dies with the test even when the test panics.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn axon-operator"));
    }

    /// SIGKILL: no lease release, the standby must wait for expiry.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The body of GET /healthz, or None while nothing answers.
    fn healthz(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.health)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        resp.starts_with("HTTP/1.0 200").then(|| resp.split("\r\n\r\n").nth(1).unwrap_or("").trim().to_string())
    }

    /// The exit status once the process has ended by itself.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        } else {
            eprintln!("--- log of operator {} ({}):\n{}", self.id, self.log.display(), self.logs());
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn lease_holder(kube: &KubeCluster) -> Option<String> {
    let out = kube
        .kubectl(&["get", "lease", "-n", "default", "axon-operator", "-o", "jsonpath={.spec.holderIdentity}"])
        .ok()?;
    let h = out.stdout.trim().to_string();
    (out.success() && !h.is_empty()).then_some(h)
}

fn get_json(kube: &KubeCluster, args: &[&str]) -> Value {
    let mut all = vec!["get", "-o", "json"];
    all.extend_from_slice(args);
    let out = kube.kubectl(&all).expect("kubectl");
    assert!(out.success(), "kubectl {all:?}: {out}");
    serde_json::from_str(&out.stdout).expect("kubectl JSON")
}

/// Node name → pod CIDRs, from the AxonNodes.
fn pod_cidrs(kube: &KubeCluster) -> BTreeMap<String, Vec<String>> {
    get_json(kube, &["axonnodes"])["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let cidrs = i["spec"]["podCidrs"]
                        .as_array()
                        .map(|c| c.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                        .unwrap_or_default();
                    (i["metadata"]["name"].as_str().unwrap_or_default().to_string(), cidrs)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn create_nodes(kube: &KubeCluster, names: &[&str]) {
    let yaml: String =
        names.iter().map(|n| format!("---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n")).collect();
    kube.apply(&yaml).expect("create nodes");
}

/// Waits until every listed node has one IPv4 and one IPv6 pod CIDR and returns all allocations.
fn wait_allocated(kube: &KubeCluster, nodes: &[&str]) -> BTreeMap<String, Vec<String>> {
    wait_for("pod CIDRs on every node", Duration::from_secs(20), || {
        let all = pod_cidrs(kube);
        nodes.iter().all(|n| all.get(*n).is_some_and(|c| c.len() == 2)).then_some(all)
    })
}

fn assert_distinct(all: &BTreeMap<String, Vec<String>>) {
    let flat: Vec<&String> = all.values().flatten().collect();
    let unique: BTreeSet<&String> = flat.iter().copied().collect();
    assert_eq!(flat.len(), unique.len(), "two nodes share a pod CIDR: {all:?}");
    for (node, cidrs) in all {
        assert!(cidrs[0].starts_with("10.244.") && cidrs[0].ends_with("/24"), "{node}: {cidrs:?}");
        assert!(cidrs[1].starts_with("fd00:244:") && cidrs[1].ends_with("/120"), "{node}: {cidrs:?}");
    }
}

const IPAM_FLAGS: &[&str] = &[
    "--cluster-pool-ipv4-cidr",
    "10.244.0.0/16",
    "--cluster-pool-ipv4-mask-size",
    "24",
    "--cluster-pool-ipv6-cidr",
    "fd00:244::/104",
    "--cluster-pool-ipv6-mask-size",
    "120",
    "--ipam-resync-interval",
    "2",
];

#[test]
fn two_replicas_one_leader_failover_and_stable_pod_cidrs() {
    let mut kube = KubeCluster::start().expect("kube-apiserver");
    // An older AxonNode CRD, as an earlier release (or a hand) left it: the leader must upgrade it in place.
    kube.apply(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {name: axonnodes.axon.io}\n\
         spec:\n  group: axon.io\n  scope: Cluster\n  names: {kind: AxonNode, plural: axonnodes, singular: axonnode}\n\
         \x20 versions:\n  - name: v1alpha1\n    served: true\n    storage: true\n\
         \x20   schema: {openAPIV3Schema: {type: object, properties: {spec: {type: object, properties: {old: {type: string}}}}}}\n",
    )
    .expect("old CRD");
    let mut a = Operator::start(&kube, "op-a", IPAM_FLAGS);
    let mut b = Operator::start(&kube, "op-b", IPAM_FLAGS);

    // Exactly one leader: the Lease names it, and only it says so on /healthz.
    let leader = wait_for("a lease holder", Duration::from_secs(30), || lease_holder(&kube));
    wait_for("both health endpoints", Duration::from_secs(10), || {
        (a.healthz().is_some() && b.healthz().is_some()).then_some(())
    });
    for _ in 0..5 {
        let roles = [a.healthz(), b.healthz()];
        let leaders = roles.iter().filter(|r| r.as_deref() == Some("ok leader")).count();
        assert_eq!(leaders, 1, "roles {roles:?}");
        assert_eq!(lease_holder(&kube).as_deref(), Some(leader.as_str()), "the lease changed hands with both alive");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The leader installed the CRDs, upgrading the old one to the current schema.
    let crd = get_json(&kube, &["crd", "axonnodes.axon.io"]);
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert!(spec["podCidrs"].is_object(), "the AxonNode CRD was not upgraded: {crd}");
    assert!(crd["spec"]["versions"][0]["subresources"]["status"].is_object(), "{crd}");
    let crd = get_json(&kube, &["crd", "axonidentities.axon.io"]);
    assert_eq!(crd["spec"]["names"]["kind"], "AxonIdentity");

    create_nodes(&kube, &["node-1", "node-2", "node-3"]);
    let before = wait_allocated(&kube, &["node-1", "node-2", "node-3"]);
    assert_eq!(before.len(), 3);
    assert_distinct(&before);
    let owner = get_json(&kube, &["axonnode", "node-1"]);
    assert_eq!(owner["metadata"]["ownerReferences"][0]["kind"], "Node", "{owner}");

    // Kill the leader without letting it release the lease: the standby takes over once it expires.
    let (dead, alive) = if leader == "op-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    let killed = Instant::now();
    dead.kill();
    let new_leader = wait_for("the standby to take over", Duration::from_secs(20), || {
        lease_holder(&kube).filter(|h| *h == alive.id && alive.healthz().as_deref() == Some("ok leader"))
    });
    let took = killed.elapsed();
    eprintln!("takeover by {new_leader} {took:?} after the leader was killed (lease {LEASE_SECS}s)");
    assert!(
        took <= Duration::from_secs(LEASE_SECS + 2 * RETRY_SECS + 1),
        "takeover took {took:?}, more than the lease duration ({LEASE_SECS}s) plus two retry periods"
    );
    let lease = get_json(&kube, &["lease", "-n", "default", "axon-operator"]);
    assert!(lease["spec"]["leaseTransitions"].as_i64().unwrap_or(0) >= 1, "{lease}");

    // The new leader rebuilt the allocation from the AxonNodes: nothing moved.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pod_cidrs(&kube), before, "pod CIDRs changed when the leader changed");

    // The killed replica comes back as a standby and changes nothing either.
    dead.spawn();
    wait_for("the restarted replica's health endpoint", Duration::from_secs(10), || dead.healthz());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(dead.healthz().as_deref(), Some("ok standby"));
    assert_eq!(lease_holder(&kube).as_deref(), Some(alive.id.as_str()));
    assert_eq!(pod_cidrs(&kube), before);

    // A deleted Node releases its CIDRs; the next new Node gets them (the lowest free), no one else does.
    let out = kube.kubectl(&["delete", "node", "node-2"]).expect("kubectl");
    assert!(out.success(), "{out}");
    wait_for("node-2's AxonNode to go", Duration::from_secs(15), || {
        (!pod_cidrs(&kube).contains_key("node-2")).then_some(())
    });
    create_nodes(&kube, &["node-4"]);
    let after = wait_allocated(&kube, &["node-1", "node-3", "node-4"]);
    assert_distinct(&after);
    assert_eq!(after["node-4"], before["node-2"], "node-4 should reuse node-2's released CIDRs");
    assert_eq!(after["node-1"], before["node-1"]);
    assert_eq!(after["node-3"], before["node-3"]);

    // Cut off from the apiserver, the leader cannot renew: it must stop acting (exit) within the renew
    // deadline, before its lease could expire for anyone else. The standby keeps trying, and leads once the
    // apiserver is back.
    let (leader, standby) = if alive.id == "op-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    kube.stop_apiserver();
    let cut = Instant::now();
    let status = wait_for("the cut-off leader to stop", Duration::from_secs(10), || leader.exited());
    assert!(!status.success(), "a leader that lost its lease must exit with an error");
    assert!(cut.elapsed() < Duration::from_secs(LEASE_SECS + 1), "it stopped after {:?}", cut.elapsed());
    assert!(leader.logs().contains("lost leadership"), "{}", leader.logs());
    assert!(standby.exited().is_none(), "the standby must keep waiting: {}", standby.logs());
    kube.start_apiserver().expect("apiserver back");
    let standby_id = standby.id.clone();
    wait_for("the standby to lead after the outage", Duration::from_secs(30), || {
        lease_holder(&kube).filter(|h| *h == standby_id && standby.healthz().as_deref() == Some("ok leader"))
    });
    assert_eq!(pod_cidrs(&kube), after, "pod CIDRs moved across the outage");
}

fn identity_yaml(id: u32, labels: &[(&str, &str)]) -> String {
    let labels: String = labels.iter().map(|(k, v)| format!("    \"{k}\": \"{v}\"\n")).collect();
    format!("---\napiVersion: axon.io/v1alpha1\nkind: AxonIdentity\nmetadata:\n  name: \"{id}\"\nspec:\n  securityLabels:\n{labels}")
}

fn identities(kube: &KubeCluster) -> BTreeSet<String> {
    get_json(kube, &["axonidentities"])["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["metadata"]["name"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

#[test]
fn identity_gc_removes_unused_identities_after_the_grace_period() {
    const GRACE: u64 = 4;
    let kube = KubeCluster::start().expect("kube-apiserver");
    let grace = GRACE.to_string();
    let _op = Operator::start(
        &kube,
        "op-gc",
        &[
            "--identity-gc-interval",
            "1",
            "--identity-gc-grace-period",
            &grace,
            "--cluster-pool-ipv4-cidr",
            "10.245.0.0/16",
        ],
    );
    wait_for("the CRDs", Duration::from_secs(30), || {
        kube.kubectl(&["get", "crd", "axonidentities.axon.io"]).ok().filter(|o| o.success())
    });
    kube.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\n  labels: {app: web, tier: front, pod-template-hash: 5d8f}\n\
         spec:\n  containers: [{name: web, image: registry.invalid/web}]\n",
    )
    .expect("create pod");
    // A pod in a labelled namespace: the agent puts the namespace's labels into the pod's label set.
    kube.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n  labels: {team: a}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata:\n  name: api\n  namespace: team-a\n  labels: {app: api}\n\
         spec:\n  containers: [{name: api, image: registry.invalid/api}]\n",
    )
    .expect("create namespace and pod");
    let ns = "k8s:io.kubernetes.pod.namespace";
    let created = Instant::now();
    kube.apply(&format!(
        "{}{}{}{}",
        identity_yaml(1001, &[("k8s:app", "web"), ("k8s:tier", "front"), (ns, "default")]),
        identity_yaml(1002, &[("k8s:app", "gone"), (ns, "default")]),
        identity_yaml(1003, &[("k8s:app", "web"), ("k8s:tier", "front"), (ns, "other")]),
        identity_yaml(1004, &[("k8s:app", "api"), (ns, "team-a"), ("k8s:io.axon.k8s.namespace.labels.team", "a")]),
    ))
    .expect("create identities");

    // Within the grace period nothing goes, used or not.
    std::thread::sleep(Duration::from_secs(GRACE - 2));
    let all: BTreeSet<String> = ["1001", "1002", "1003", "1004"].iter().map(|s| s.to_string()).collect();
    assert_eq!(identities(&kube), all, "an identity went before its grace period");

    // After it, the unused ones go (1003 has the pod's labels but another namespace); the pod's stays.
    let in_use = BTreeSet::from(["1001".to_string(), "1004".to_string()]);
    wait_for("unused identities to be collected", Duration::from_secs(GRACE + 10), || {
        (identities(&kube) == in_use).then_some(())
    });
    let took = created.elapsed();
    assert!(took >= Duration::from_secs(GRACE), "collected after {took:?}, before the {GRACE}s grace period");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(identities(&kube), in_use, "the identity of a running pod was collected");

    // The pod goes: its identity follows after the grace period.
    let out = kube.kubectl(&["delete", "pod", "web", "-n", "default", "--grace-period=0", "--force"]).expect("kubectl");
    assert!(out.success(), "{out}");
    let gone = Instant::now();
    wait_for("the web pod's identity to be collected", Duration::from_secs(GRACE + 10), || {
        (identities(&kube) == BTreeSet::from(["1004".to_string()])).then_some(())
    });
    assert!(gone.elapsed() >= Duration::from_secs(GRACE - 1), "collected {:?} after its pod went", gone.elapsed());
}
