//! The run: one lab path ("station") per datapath, all up at once, then
//! rounds of measurements interleaved across datapaths — for each workload
//! and route, every datapath in turn, the order rotated each round — so that
//! load from elsewhere on the machine hits all of them alike; each cell's
//! result is the median over the rounds.

use super::agent::{NodeAgent, XdpMode};
use super::bpf::{self, DevicePrograms, RunStats};
use super::kubeproxy::{self, Backend};
use super::services::{self, node_port, Proto, Route, TCP_BACKEND_PORT, UDP_BACKEND_PORT};
use super::stats;
use super::sys;
use super::topo::{Topology, BACKEND1_IP, BACKEND2_IP, GEN_CLIENT_IP, GEN_DEVICE, GEN_NODE_IP, NODE1_IP, NODE_DEVICE};
use super::traffic::{self, BackendServers, Frames, Window};
use super::xdp::XdpPass;
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tracing::info;

/// A datapath under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Peer {
    /// No load balancer: the client sends to the backend's address, node-1
    /// routes (no conntrack, no rules). The ceiling of the stack's path.
    Plain,
    IptablesLegacy,
    IptablesNft,
    AxonTc,
    AxonXdpGeneric,
    AxonXdpNative,
}

impl Peer {
    pub const ALL: [Peer; 6] =
        [Peer::Plain, Peer::IptablesLegacy, Peer::IptablesNft, Peer::AxonTc, Peer::AxonXdpGeneric, Peer::AxonXdpNative];

    pub fn label(self) -> &'static str {
        match self {
            Peer::Plain => "plain",
            Peer::IptablesLegacy => "iptables-legacy",
            Peer::IptablesNft => "iptables-nft",
            Peer::AxonTc => "axon-tc",
            Peer::AxonXdpGeneric => "axon-xdp-generic",
            Peer::AxonXdpNative => "axon-xdp-native",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Peer::Plain => "pl",
            Peer::IptablesLegacy => "ipl",
            Peer::IptablesNft => "ipn",
            Peer::AxonTc => "tc",
            Peer::AxonXdpGeneric => "xg",
            Peer::AxonXdpNative => "xn",
        }
    }

    pub fn parse(s: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.label() == s)
    }

    fn xdp_mode(self) -> Option<XdpMode> {
        match self {
            Peer::AxonTc => Some(XdpMode::Disabled),
            Peer::AxonXdpGeneric => Some(XdpMode::Generic),
            Peer::AxonXdpNative => Some(XdpMode::Native),
            _ => None,
        }
    }

    fn iptables(self) -> Option<Backend> {
        match self {
            Peer::IptablesLegacy => Some(Backend::Legacy),
            Peer::IptablesNft => Some(Backend::Nft),
            _ => None,
        }
    }

    pub fn is_axon(self) -> bool {
        self.xdp_mode().is_some()
    }

    /// kube-proxy has no DSR; without a load balancer there is nothing to
    /// choose, and the `snat` route is plain routing to node-2's backend.
    pub fn serves(self, route: Route) -> bool {
        route != Route::Dsr || self.xdp_mode().is_some()
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Workload {
    /// UDP flood, delivered packets per second.
    Udp,
    /// TCP request/response over kept-alive connections.
    Rr,
    /// TCP connect + request/response + close, one connection per request.
    Crr,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Udp, Workload::Rr, Workload::Crr];

    pub fn label(self) -> &'static str {
        match self {
            Workload::Udp => "udp",
            Workload::Rr => "rr",
            Workload::Crr => "crr",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.label() == s)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub agent_bin: PathBuf,
    pub peers: Vec<Peer>,
    pub routes: Vec<Route>,
    pub workloads: Vec<Workload>,
    pub rounds: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub conns: usize,
    pub flows: u16,
    pub fillers: usize,
    pub client_cpu: Option<usize>,
    pub server_cpu: Option<usize>,
    /// Pause after set-up, to inspect the lab.
    pub hold: Duration,
}

/// One measurement of one cell.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Packets/s reaching the backend (udp) or completed requests/s (rr, crr).
    pub rate: f64,
    /// Frames node-1 took in from the generator over the whole flood (udp only).
    pub offered: f64,
    /// Of the packets that reached the backend's device, the share its
    /// socket delivered to the application (udp only).
    pub delivered_share: Option<f64>,

    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    /// Of the packets node-1's agent translated, the share XDP did (Axon only).
    pub xdp_share: Option<f64>,
    /// Node-1's datapath counters over the measurement (Axon only), for the JSON.
    pub counters: BTreeMap<String, u64>,
}

/// Where node-1's BPF time goes under a flood (Axon only), from a separate
/// pass with run-time statistics on: collecting them costs two clock reads
/// per program run, so the timed rounds run without.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BpfProfile {
    /// Run time of the programs on node-1's devices per frame node-1 took in.
    pub ns_per_packet: f64,
    /// Per program (link pin name): ns per run.
    pub ns_per_run: BTreeMap<String, f64>,
}

/// Every round of one (workload, route, peer).
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub workload: Workload,
    pub route: Route,
    pub peer: Peer,
    pub samples: Vec<Sample>,
    pub bpf: Option<BpfProfile>,
}

/// A path with one datapath configured, its servers and agents. Fields
/// drop in order: servers, agents, XDP programs, then the namespaces.
struct Station {
    peer: Peer,
    servers: Vec<BackendServers>,
    /// Node-1's programs, for their run-time statistics (Axon only).
    progs: Option<DevicePrograms>,
    agents: Vec<NodeAgent>,
    _xdp: Vec<XdpPass>,
    topo: Topology,
    client_mac: [u8; 6],
    node1_mac: [u8; 6],
}

impl Station {
    fn up(peer: Peer, cfg: &Config, run: &str, run_dir: &std::path::Path) -> anyhow::Result<Station> {
        let topo = Topology::build(&format!("{run}-{}", peer.tag()), peer == Peer::Plain)?;
        let mut xdp = Vec::new();
        if peer == Peer::AxonXdpNative {
            // XDP_TX/redirect out of a node's veth lands on its hub peer.
            for port in ["v1", "v2"] {
                xdp.push(XdpPass::attach(&topo.hub, port)?);
            }
        }
        let workers = cfg.conns * 2;
        let servers = vec![
            BackendServers::start(
                &topo.backend1,
                TCP_BACKEND_PORT,
                UDP_BACKEND_PORT,
                workers,
                cfg.server_cpu,
                cfg.server_cpu,
            )?,
            BackendServers::start(
                &topo.backend2,
                TCP_BACKEND_PORT,
                UDP_BACKEND_PORT,
                workers,
                cfg.server_cpu,
                cfg.server_cpu,
            )?,
        ];
        let mut agents = Vec::new();
        let fillers = services::fillers(cfg.fillers);
        if let Some(backend) = peer.iptables() {
            let all: Vec<_> = fillers.iter().cloned().chain(services::measured(false)).collect();
            let doc = kubeproxy::ruleset(&all);
            // kube-proxy programs every node alike.
            for ns in [&topo.node1, &topo.node2] {
                kubeproxy::load(ns, backend, &doc)?;
            }
        }
        if let Some(mode) = peer.xdp_mode() {
            let specs = fillers
                .iter()
                .chain(services::measured(true).iter())
                .map(services::axon_spec)
                .collect::<anyhow::Result<Vec<_>>>()?;
            let node1_devices = format!("{NODE_DEVICE},{GEN_DEVICE}");
            for (ns, node, devices) in
                [(&topo.node1, "node-1", node1_devices.as_str()), (&topo.node2, "node-2", NODE_DEVICE)]
            {
                let agent = NodeAgent::start(&cfg.agent_bin, ns, node, devices, mode, run_dir)?;
                agent.apply(specs.clone())?;
                agents.push(agent);
            }
        }
        let client_mac = Topology::mac(&topo.client, GEN_DEVICE)?;
        let node1_mac = Topology::mac(&topo.node1, GEN_DEVICE)?;
        let progs = match agents.first() {
            Some(a) => Some(DevicePrograms::open(a.bpffs(), &[NODE_DEVICE, GEN_DEVICE])?),
            None => None,
        };
        let st = Station { peer, servers, progs, agents, _xdp: xdp, topo, client_mac, node1_mac };
        st.check(cfg)?;
        Ok(st)
    }

    /// Where the client sends: node-1's segment address for TCP, its
    /// generator-wire address for UDP; the backend itself on `plain`.
    fn target(&self, route: Route, proto: Proto) -> SocketAddrV4 {
        if self.peer == Peer::Plain {
            let ip = if route == Route::Local { BACKEND1_IP } else { BACKEND2_IP };
            let port = if proto == Proto::Tcp { TCP_BACKEND_PORT } else { UDP_BACKEND_PORT };
            return SocketAddrV4::new(ip, port);
        }
        let node = if proto == Proto::Tcp { NODE1_IP } else { GEN_NODE_IP };
        SocketAddrV4::new(node, node_port(route, proto))
    }

    fn frames(&self, route: Route, flows: u16) -> Frames {
        Frames {
            src_mac: self.client_mac,
            dst_mac: self.node1_mac,
            src: GEN_CLIENT_IP,
            dst: self.target(route, Proto::Udp),
            flows,
        }
    }

    fn sink(&self, route: Route) -> &BackendServers {
        &self.servers[usize::from(route != Route::Local)]
    }

    fn backend_ns(&self, route: Route) -> &str {
        if route == Route::Local {
            &self.topo.backend1
        } else {
            &self.topo.backend2
        }
    }

    fn flood(
        &self,
        route: Route,
        flows: u16,
        win: Window,
        cpu: Option<usize>,
    ) -> anyhow::Result<traffic::FloodOutcome> {
        let frames = self.frames(route, flows);
        let (sink, ns) = (self.sink(route), self.backend_ns(route));
        let backend_rx = || sys::rx_packets(ns, "eth0").unwrap_or(0);
        let app_rx = || sink.udp_received();
        let counters = traffic::FloodCounters { backend_rx: &backend_rx, app_rx: &app_rx };
        traffic::udp_flood(&self.topo.client, GEN_DEVICE, &frames, win, cpu, &counters)
    }

    /// Every route answers TCP and delivers UDP before anything is timed
    /// (and neighbours are resolved, which XDP needs to forward itself).
    fn check(&self, cfg: &Config) -> anyhow::Result<()> {
        let win = || Window::new(Duration::from_millis(20), Duration::ZERO, Duration::from_millis(200));
        for route in cfg.routes.iter().copied().filter(|r| self.peer.serves(*r)) {
            let target = self.target(route, Proto::Tcp);
            let rr = traffic::tcp_rr(&self.topo.client, target, 1, false, win(), None).and_then(|o| {
                if o.ops > 0 {
                    Ok(o)
                } else {
                    bail!("no answer")
                }
            });
            if let Err(e) = rr {
                bail!("{} {}: TCP to {target} does not work: {e:#}{}", self.peer.label(), route.label(), self.logs());
            }
            let flood = self.flood(route, cfg.flows, win(), cfg.client_cpu)?;
            if flood.app_total == 0 {
                bail!(
                    "{} {}: UDP to {} delivers nothing ({} packets reached the backend's device){}",
                    self.peer.label(),
                    route.label(),
                    self.target(route, Proto::Udp),
                    flood.backend_total,
                    self.logs()
                );
            }
        }
        Ok(())
    }

    fn logs(&self) -> String {
        self.agents.iter().map(|a| format!("\nagent log {}:\n{}", a.log.display(), a.log_tail())).collect()
    }

    fn counters(&self) -> Option<BTreeMap<String, u64>> {
        self.agents.first().and_then(|a| a.counters().ok())
    }

    fn node_rx(&self) -> u64 {
        sys::rx_packets(&self.topo.node1, GEN_DEVICE).unwrap_or(0)
    }

    /// One flood with run-time statistics on (the caller enabled them):
    /// node-1's BPF time per frame it took in.
    fn profile(&self, cfg: &Config, route: Route) -> anyhow::Result<Option<BpfProfile>> {
        let Some(progs) = &self.progs else { return Ok(None) };
        let win = Window::new(Duration::from_millis(100), cfg.warmup, cfg.duration);
        let (runs0, rx0) = (progs.snapshot(), self.node_rx());
        self.flood(route, cfg.flows, win, cfg.client_cpu)?;
        let (runs1, rx1) = (progs.snapshot(), self.node_rx());
        Ok(bpf_costs(&runs0, &runs1, rx1.saturating_sub(rx0)))
    }

    fn measure(&self, cfg: &Config, workload: Workload, route: Route) -> anyhow::Result<Sample> {
        let before = self.counters();
        let win = Window::new(Duration::from_millis(100), cfg.warmup, cfg.duration);
        let mut sample = Sample::default();
        match workload {
            Workload::Udp => {
                let (rx0, o, rx1) =
                    (self.node_rx(), self.flood(route, cfg.flows, win, cfg.client_cpu)?, self.node_rx());
                sample.rate = o.backend_window as f64 / win.seconds();
                sample.offered = rx1.saturating_sub(rx0) as f64;
                sample.delivered_share = Some(o.socket_share());
            }
            Workload::Rr | Workload::Crr => {
                let target = self.target(route, Proto::Tcp);
                let mut o = traffic::tcp_rr(
                    &self.topo.client,
                    target,
                    cfg.conns,
                    workload == Workload::Crr,
                    win,
                    cfg.client_cpu,
                )?;
                sample.rate = o.ops as f64 / win.seconds();
                (sample.p50_us, sample.p99_us) = stats::p50_p99_us(&mut o.latencies_ns);
                sample.errors = o.errors;
            }
        }
        if let (Some(b), Some(a)) = (before, self.counters()) {
            let d = |k: &str| a.get(k).copied().unwrap_or(0).saturating_sub(b.get(k).copied().unwrap_or(0));
            let translated = d("np_fwd") + d("np_rev");
            sample.xdp_share = (translated > 0).then(|| d("xdp_fwd") as f64 / translated as f64);
            sample.counters = a.keys().map(|k| (k.clone(), d(k))).filter(|(_, v)| *v > 0).collect();
        }
        Ok(sample)
    }
}

/// Node-1's BPF run time over a flood: per packet, and per run of each program.
fn bpf_costs(
    before: &BTreeMap<String, RunStats>,
    after: &BTreeMap<String, RunStats>,
    packets: u64,
) -> Option<BpfProfile> {
    if after.is_empty() || packets == 0 {
        return None;
    }
    let mut profile = BpfProfile::default();
    let mut total = 0u64;
    for (name, a) in after {
        let b = before.get(name).copied().unwrap_or_default();
        let (ns, runs) = (a.ns.saturating_sub(b.ns), a.runs.saturating_sub(b.runs));
        total += ns;
        if runs > 0 {
            profile.ns_per_run.insert(name.clone(), ns as f64 / runs as f64);
        }
    }
    profile.ns_per_packet = total as f64 / packets as f64;
    Some(profile)
}

/// Brings every station up, runs the rounds, tears everything down.
pub fn run(cfg: &Config, run: &str, run_dir: &std::path::Path) -> anyhow::Result<Vec<Cell>> {
    let mut stations = Vec::new();
    for &peer in &cfg.peers {
        let t = Instant::now();
        let st = Station::up(peer, cfg, run, run_dir).with_context(|| format!("setting up {}", peer.label()))?;
        info!(peer = peer.label(), ms = t.elapsed().as_millis() as u64, "station up");
        eprintln!("axon-bench-nodeport: {} ready ({} ms)", peer.label(), t.elapsed().as_millis());
        stations.push(st);
    }
    if !cfg.hold.is_zero() {
        eprintln!("axon-bench-nodeport: lab up, holding for {:?}", cfg.hold);
        std::thread::sleep(cfg.hold);
    }
    let mut cells: Vec<Cell> = Vec::new();
    for round in 0..cfg.rounds {
        for &workload in &cfg.workloads {
            for &route in &cfg.routes {
                let here: Vec<&Station> = stations.iter().filter(|s| s.peer.serves(route)).collect();
                if here.is_empty() {
                    continue;
                }
                let mut line = format!("round {}/{} {} {}:", round + 1, cfg.rounds, workload.label(), route.label());
                for k in 0..here.len() {
                    let st = here[(k + round) % here.len()];
                    let sample = st.measure(cfg, workload, route).with_context(|| {
                        format!("{} {} through {}", workload.label(), route.label(), st.peer.label())
                    })?;
                    line.push_str(&format!(" {}={:.0}", st.peer.label(), sample.rate));
                    push_sample(&mut cells, workload, route, st.peer, sample);
                }
                eprintln!("axon-bench-nodeport: {line}");
            }
        }
    }
    if cfg.workloads.contains(&Workload::Udp) {
        profile_bpf(cfg, &stations, &mut cells)?;
    }
    drop(stations);
    Ok(cells)
}

/// After the timed rounds: one flood per Axon station and route with BPF
/// run-time statistics on, for where node-1's BPF time goes.
fn profile_bpf(cfg: &Config, stations: &[Station], cells: &mut [Cell]) -> anyhow::Result<()> {
    let _stats = match bpf::enable_stats() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("axon-bench-nodeport: BPF run-time statistics unavailable ({e}); no BPF profile");
            return Ok(());
        }
    };
    for st in stations.iter().filter(|s| s.progs.is_some()) {
        for &route in cfg.routes.iter().filter(|r| st.peer.serves(**r)) {
            let profile = st.profile(cfg, route).with_context(|| format!("profiling {}", st.peer.label()))?;
            if let Some(c) =
                cells.iter_mut().find(|c| c.workload == Workload::Udp && c.route == route && c.peer == st.peer)
            {
                c.bpf = profile;
            }
        }
    }
    eprintln!("axon-bench-nodeport: BPF profile done");
    Ok(())
}

fn push_sample(cells: &mut Vec<Cell>, workload: Workload, route: Route, peer: Peer, sample: Sample) {
    match cells.iter_mut().find(|c| c.workload == workload && c.route == route && c.peer == peer) {
        Some(c) => c.samples.push(sample),
        None => cells.push(Cell { workload, route, peer, samples: vec![sample], bpf: None }),
    }
}
