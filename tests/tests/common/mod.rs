//! What the north-south test files share: a cluster set up in one call,
//! service JSON as the agent API takes it, and judgements over what the
//! client and the backends saw (names, peer addresses), with failure messages
//! that show every attempt and the agents' logs.

#![allow(dead_code)] // each test file uses its own subset

use axon_lab::check::show;
use axon_lab::{AgentOptions, Attempt, BackendServer, Cluster, MultiNodeLab, MultiNodeOptions, Probe, XdpSetting};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Where every backend listens.
pub const BACKEND_PORT: u16 = 8080;
/// Enough that each of up to 6 backends picked at random answers:
/// P(one is missed) ≤ 6·(5/6)^60 ≈ 1e-4; with 3, ≈ 2e-10.
pub const SPREAD: u32 = 60;

/// A lab, its backends' servers and one agent per node.
pub struct Ns {
    // Field order is drop order: agents first, then servers, then the lab.
    pub cluster: Cluster,
    pub servers: Vec<BackendServer>,
    pub lab: MultiNodeLab,
}

impl Ns {
    pub fn setup(label: &str, nodes: usize, per_node: usize, opts: AgentOptions) -> Ns {
        Self::setup_with(label, &MultiNodeOptions { nodes, backends_per_node: per_node, ..Default::default() }, opts)
    }

    /// Unless `opts` chooses an XDP mode, the agents serve from tc only
    /// (`--xdp-mode disabled`): the XDP tests choose theirs explicitly.
    pub fn setup_with(label: &str, shape: &MultiNodeOptions, mut opts: AgentOptions) -> Ns {
        opts.xdp_mode.get_or_insert(XdpSetting::Disabled);
        let lab = MultiNodeLab::with_options(label, shape).expect("lab");
        let servers = lab.serve_all(BACKEND_PORT).expect("backend servers");
        let cluster = lab.start_agents(&opts).expect("agents");
        Ns { cluster, servers, lab }
    }

    /// Declares `spec` as service `id` on every node.
    pub fn put(&self, id: u32, spec: &Value) {
        if let Err(e) = self.cluster.put_service(id, spec) {
            panic!("{e}");
        }
    }

    /// Runs a probe from the client.
    pub fn probe(&self, probe: &Probe) -> Vec<Attempt> {
        self.lab.probe(probe).unwrap_or_else(|e| panic!("client: {e}"))
    }

    /// Runs a probe that must succeed every time; returns its attempts.
    pub fn probe_ok(&self, probe: &Probe, what: &str) -> Vec<Attempt> {
        let attempts = self.probe(probe);
        if attempts.is_empty() || attempts.iter().any(|a| !a.ok) {
            panic!("{what}: {probe:?} failed:\n{}\n{}", show(&attempts), self.diagnostics());
        }
        attempts
    }

    /// Counters and logs of every agent, for a failure message.
    pub fn diagnostics(&self) -> String {
        let counters: Vec<String> = self
            .cluster
            .agents()
            .iter()
            .enumerate()
            .map(|(i, a)| format!("node-{} counters: {:?}", i + 1, counters(a)))
            .collect();
        format!("{}\n{}", counters.join("\n"), self.cluster.logs())
    }

    /// `[(backend, port)]` of every backend behind `node`, as JSON.
    pub fn backends_of(&self, node: usize, v6: bool) -> Value {
        self.lab.backends_json(&self.lab.backends_of(node), v6, BACKEND_PORT)
    }

    /// Every backend as JSON.
    pub fn all_backends(&self, v6: bool) -> Value {
        self.lab.all_backends_json(v6, BACKEND_PORT)
    }

    /// Names of the backends behind `node`.
    pub fn names_of(&self, node: usize) -> BTreeSet<String> {
        self.lab.backends_of(node).iter().map(|b| b.name().to_string()).collect()
    }

    pub fn all_names(&self) -> BTreeSet<String> {
        self.lab.backend_names().into_iter().map(str::to_string).collect()
    }

    /// The node a backend (by name) runs behind.
    pub fn node_of(&self, backend: &str) -> usize {
        self.lab.backends().iter().find(|b| b.name() == backend).map(|b| b.node()).expect("a backend of this lab")
    }
}

/// The datapath counters of an agent's status (`np_fwd`, `xdp_fwd`, ...).
pub fn counters(agent: &axon_lab::Agent) -> BTreeMap<String, u64> {
    match agent.request("GET", axon_api::paths::STATUS, None) {
        Ok((200, body)) => body
            .get("counters")
            .and_then(Value::as_object)
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_u64()?))).collect())
            .unwrap_or_default(),
        _ => BTreeMap::new(),
    }
}

/// A counter of an agent's status, 0 when absent.
pub fn counter(agent: &axon_lab::Agent, name: &str) -> u64 {
    counters(agent).get(name).copied().unwrap_or(0)
}

/// A service frontend `{address, port, protocol}`.
pub fn frontend(address: IpAddr, port: u16, protocol: &str) -> Value {
    json!({"address": address.to_string(), "port": port, "protocol": protocol})
}

/// `0.0.0.0` or `::`: a NodePort on every node address.
pub fn any_addr(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from([0u16; 8])
    } else {
        IpAddr::from([0u8; 4])
    }
}

/// A NodePort service on every node address.
pub fn nodeport(port: u16, protocol: &str, v6: bool, backends: Value) -> Value {
    json!({
        "name": format!("default/np-{port}-{}", protocol.to_ascii_lowercase()),
        "frontend": frontend(any_addr(v6), port, protocol),
        "type": "NodePort",
        "backends": backends,
    })
}

/// A service of `svc_type` on `address:port`.
pub fn service(svc_type: &str, address: IpAddr, port: u16, protocol: &str, backends: Value) -> Value {
    json!({
        "name": format!("default/{}-{port}-{}", svc_type.to_ascii_lowercase(), protocol.to_ascii_lowercase()),
        "frontend": frontend(address, port, protocol),
        "type": svc_type,
        "backends": backends,
    })
}

/// `spec` with `key` set to `value`.
pub fn with(mut spec: Value, key: &str, value: Value) -> Value {
    spec[key] = value;
    spec
}

/// How many answers each backend gave.
pub fn by_backend(attempts: &[Attempt]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.ok) {
        if let Some(name) = &a.answer {
            *out.entry(name.clone()).or_default() += 1;
        }
    }
    out
}

/// The set of backends that answered.
pub fn answered(attempts: &[Attempt]) -> BTreeSet<String> {
    by_backend(attempts).into_keys().collect()
}

/// Per backend, the source addresses it saw.
pub fn seen_by_backend(attempts: &[Attempt]) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for a in attempts.iter().filter(|a| a.ok) {
        if let (Some(name), Some(ip)) = (&a.answer, a.seen_ip()) {
            out.entry(name.clone()).or_default().insert(ip);
        }
    }
    out
}

/// Panics unless `attempts` all succeeded and exactly `want` answered.
pub fn assert_answered(attempts: &[Attempt], want: &BTreeSet<String>, what: &str) {
    assert!(attempts.iter().all(|a| a.ok) && !attempts.is_empty(), "{what}: failures:\n{}", show(attempts));
    assert_eq!(&answered(attempts), want, "{what}: counts {:?}", by_backend(attempts));
}

/// Panics unless every attempt failed with an error within `within`.
pub fn assert_fails_fast(attempts: &[Attempt], within: Duration, what: &str) {
    for a in attempts {
        assert!(
            !a.ok && a.error.is_some() && a.micros < within.as_micros() as u64,
            "{what}: expected an error in < {within:?}:\n{}",
            show(attempts)
        );
        // A timeout is exactly what "fails fast" rules out.
        assert!(
            !matches!(a.errno, Some(libc::EAGAIN) | Some(libc::ETIMEDOUT)),
            "{what}: timed out instead of being rejected:\n{}",
            show(attempts)
        );
    }
}

/// Panics unless every attempt got no answer at all (timed out).
pub fn assert_no_answer(attempts: &[Attempt], what: &str) {
    for a in attempts {
        assert!(!a.ok && a.answer.is_none(), "{what}: got an answer:\n{}", show(attempts));
        let timed_out = matches!(a.errno, Some(libc::EAGAIN) | Some(libc::ETIMEDOUT) | Some(libc::EINPROGRESS))
            || a.error.as_deref().is_some_and(|e| e.contains("timed out") || e.contains("timeout"));
        assert!(timed_out, "{what}: expected silence (a timeout), got an error:\n{}", show(attempts));
    }
}

/// The port of `ip:port`.
pub fn port_of(addr: &str) -> Option<u16> {
    addr.parse::<SocketAddr>().ok().map(|a| a.port())
}

/// Retries `f` until it returns Some or `within` passes.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `agentctl <args>` on node `i`'s agent, which must succeed.
pub fn ctl(ns: &Ns, node: usize, args: &[&str]) -> String {
    let out = ns.cluster.agent(node).agentctl(args).expect("running agentctl");
    assert!(out.success(), "agentctl {args:?} on node-{node} failed: {out}");
    out.stdout
}
