//! The benchmark itself: for each size, each peer in turn gets a fresh
//! client netns, is programmed with the same services (timed), has connect()
//! latency measured to its first and last service, and at the add-one size
//! is timed adding one more service until a client reaches it.

use crate::agent::{Agent, Memory};
use crate::helpers::{self, Placement, Reach, ToolRun};
use crate::lab::{ClientNet, Lab};
use crate::probe::{Target, TargetReport};
use crate::rules::{self, IptablesStyle};
use crate::sys;
use crate::workload;
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tracing::{debug, info};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
pub enum Peer {
    Direct,
    Axon,
    IptablesLegacy,
    IptablesNft,
    Nftables,
}

impl Peer {
    pub const ALL: [Peer; 5] = [Peer::Direct, Peer::Axon, Peer::IptablesLegacy, Peer::IptablesNft, Peer::Nftables];

    pub fn label(self) -> &'static str {
        match self {
            Peer::Direct => "direct",
            Peer::Axon => "axon",
            Peer::IptablesLegacy => "iptables-legacy",
            Peer::IptablesNft => "iptables-nft",
            Peer::Nftables => "nftables",
        }
    }

    pub fn parse(s: &str) -> Option<Peer> {
        Peer::ALL.into_iter().find(|p| p.label() == s)
    }

    /// The external tool the peer needs, if any.
    fn tool(self) -> Option<&'static str> {
        match self {
            Peer::Direct | Peer::Axon => None,
            Peer::IptablesLegacy => Some("iptables-legacy-restore"),
            Peer::IptablesNft => Some("iptables-nft-restore"),
            Peer::Nftables => Some("nft"),
        }
    }
}

pub struct Config {
    pub exe: PathBuf,
    pub agent_bin: PathBuf,
    pub sizes: Vec<usize>,
    pub peers: Vec<Peer>,
    pub samples: usize,
    pub warmup: usize,
    /// Longest a peer may take to program one size; also the bound on any
    /// one latency target.
    pub program_limit: Duration,
    pub add_one_at: usize,
    /// Longest the add-one change may take (a full iptables-nft resync of
    /// 10k services takes minutes).
    pub add_one_limit: Duration,
}

/// Adding one service with `add_one_at` services present.
#[derive(Debug, Clone, Serialize)]
pub struct AddOne {
    /// What was timed: the PUT call, or the whole restore / nft transaction.
    pub what: String,
    pub apply_ms: f64,
    /// From the start of the change until a client connect reached a backend.
    pub reach_ms: Option<f64>,
    pub attempts: u64,
    /// The change itself did not finish within the limit.
    pub timed_out: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerRun {
    pub peer: Peer,
    pub size: usize,
    pub skipped: Option<String>,
    pub program_ms: Option<f64>,
    pub first: Option<TargetReport>,
    pub last: Option<TargetReport>,
    /// Direct connects interleaved with `first`/`last` (same time slices).
    pub first_direct: Option<TargetReport>,
    pub last_direct: Option<TargetReport>,
    pub add_one: Option<AddOne>,
    /// Axon only: agent memory before programming, as the apply call
    /// returns, once settled (after the latency runs and, at the add-one
    /// size, the PUT), and after a restart that restores the same services
    /// from the store with no API request.
    pub memory_applied: Option<Memory>,
    pub memory: Option<Memory>,
    pub memory_idle: Option<Memory>,
    pub memory_restarted: Option<Memory>,
    pub restart_ms: Option<f64>,
    pub error: Option<String>,
}

impl PeerRun {
    fn new(peer: Peer, size: usize) -> Self {
        PeerRun {
            peer,
            size,
            skipped: None,
            program_ms: None,
            first: None,
            last: None,
            first_direct: None,
            last_direct: None,
            add_one: None,
            memory_applied: None,
            memory: None,
            memory_idle: None,
            memory_restarted: None,
            restart_ms: None,
            error: None,
        }
    }
}

pub struct Runner<'a> {
    cfg: &'a Config,
    lab: &'a mut Lab,
    rt: Runtime,
    /// Per peer: (size, programming time) of its last finished size, or why it stopped.
    history: HashMap<Peer, Result<(usize, Duration), String>>,
}

impl<'a> Runner<'a> {
    pub fn new(cfg: &'a Config, lab: &'a mut Lab) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
        Ok(Runner { cfg, lab, rt, history: HashMap::new() })
    }

    pub fn run(&mut self) -> Vec<PeerRun> {
        let mut runs = Vec::new();
        for &size in &self.cfg.sizes {
            for &peer in &self.cfg.peers {
                let run = self.run_one(peer, size);
                progress(&run);
                runs.push(run);
            }
        }
        runs
    }

    fn run_one(&mut self, peer: Peer, size: usize) -> PeerRun {
        let mut run = PeerRun::new(peer, size);
        if let Some(reason) = self.skip_reason(peer, size) {
            run.skipped = Some(reason);
            return run;
        }
        let started = Instant::now();
        if let Err(e) = self.measure(peer, size, &mut run) {
            debug!(peer = peer.label(), size, "{e:#}");
            run.error = Some(format!("{e:#}"));
        }
        match (&run.skipped, run.program_ms) {
            (Some(reason), _) => {
                self.history.insert(peer, Err(reason.clone()));
            }
            (None, Some(ms)) => {
                self.history.insert(peer, Ok((size, Duration::from_secs_f64(ms / 1000.0))));
            }
            _ => {}
        }
        info!(peer = peer.label(), size, secs = started.elapsed().as_secs(), "done");
        run
    }

    /// A peer that timed out, or whose time at the previous size projects
    /// (linearly, which is optimistic for iptables) past the limit, is skipped.
    fn skip_reason(&self, peer: Peer, size: usize) -> Option<String> {
        if let Some(tool) = peer.tool() {
            if !tool_exists(tool) {
                return Some(format!("{tool} not installed"));
            }
        }
        let limit = self.cfg.program_limit;
        match self.history.get(&peer)? {
            Err(reason) => Some(format!("skipped after a smaller size: {reason}")),
            Ok((prev, took)) if *prev > 0 => {
                let projected = took.mul_f64(size as f64 / *prev as f64);
                (projected > limit).then(|| {
                    format!(
                        "skipped: programming {} took {:.1} s, so {} projects to {:.0} s > limit {} s",
                        human(*prev),
                        took.as_secs_f64(),
                        human(size),
                        projected.as_secs_f64(),
                        limit.as_secs()
                    )
                })
            }
            Ok(_) => None,
        }
    }

    fn measure(&mut self, peer: Peer, size: usize, run: &mut PeerRun) -> anyhow::Result<()> {
        let net = self.lab.client_net()?;
        let cgroup = if peer == Peer::Axon { self.lab.cg_lb.clone() } else { self.lab.cg_plain.clone() };
        let at = Placement { net: &net, cgroup: &cgroup };
        let mut agent = match peer {
            Peer::Direct => None,
            Peer::Axon => Some(self.program_axon(size, run)?),
            Peer::IptablesLegacy | Peer::IptablesNft | Peer::Nftables => {
                self.program_rules(peer, size, &net, run)?;
                None
            }
        };
        if run.skipped.is_some() {
            return Ok(());
        }
        self.measure_latency(peer, size, &at, run)?;
        if size == self.cfg.add_one_at && peer != Peer::Direct {
            run.add_one = Some(self.add_one(peer, size, &at, agent.as_ref()).unwrap_or_else(|e| AddOne {
                what: String::new(),
                apply_ms: 0.0,
                reach_ms: None,
                attempts: 0,
                timed_out: false,
                error: Some(format!("{e:#}")),
            }));
        }
        if let Some(a) = agent.as_mut() {
            run.memory = Some(a.memory()?);
            let took = a.restart(&self.rt)?;
            run.restart_ms = Some(ms(took));
            run.memory_restarted = Some(a.memory()?);
        }
        Ok(())
    }

    /// A fresh agent with `size` services applied; its memory before and after.
    fn program_axon(&self, size: usize, run: &mut PeerRun) -> anyhow::Result<Agent> {
        let name = format!("agent-{size}");
        let agent =
            Agent::start(&self.rt, &self.cfg.agent_bin, &self.lab.prefix, &self.lab.workdir, &self.lab.cg_lb, &name)?;
        run.memory_idle = agent.memory().ok();
        run.program_ms = Some(ms(self.axon_apply(&agent, size)?));
        run.memory_applied = Some(agent.memory()?);
        Ok(agent)
    }

    /// Loads the peer's ruleset for `size` services into `net`; a load that
    /// exceeds the limit marks the run skipped.
    fn program_rules(&self, peer: Peer, size: usize, net: &ClientNet, run: &mut PeerRun) -> anyhow::Result<()> {
        let tool = peer.tool().unwrap_or_default();
        let doc = if peer == Peer::Nftables {
            rules::nft_full(0..size)
        } else {
            rules::iptables(0..size, IptablesStyle::Full)
        };
        let file = helpers::write_doc(&self.lab.workdir, &format!("{}-{size}.rules", peer.label()), &doc)?;
        drop(doc);
        let file_arg = file.to_string_lossy().to_string();
        let argv: Vec<&str> = if peer == Peer::Nftables { vec!["-f", &file_arg] } else { vec![&file_arg] };
        let log = self.lab.workdir.join(format!("{}-{size}.log", peer.label()));
        let outcome = helpers::tool(net, tool, &argv, self.cfg.program_limit, &log);
        let _ = std::fs::remove_file(&file);
        match outcome? {
            ToolRun::Done(took) => run.program_ms = Some(ms(took)),
            ToolRun::TimedOut(limit) => {
                run.skipped = Some(format!(
                    "{tool} did not finish {} services within {} s (killed)",
                    human(size),
                    limit.as_secs()
                ))
            }
        }
        Ok(())
    }

    /// Connect latency to the first and last service, with direct connects
    /// from a pristine netns interleaved (none for the direct peer itself).
    fn measure_latency(&mut self, peer: Peer, size: usize, at: &Placement, run: &mut PeerRun) -> anyhow::Result<()> {
        let targets = latency_targets(peer, size);
        let direct_targets = latency_targets(Peer::Direct, size);
        let base_net = if peer == Peer::Direct { None } else { Some(self.lab.client_net()?) };
        let base_at = base_net.as_ref().map(|net| Placement { net, cgroup: &self.lab.cg_plain });
        let baseline = base_at.as_ref().map(|b| (b, direct_targets.as_slice()));
        let reports = helpers::latency(
            &self.cfg.exe,
            at,
            &targets,
            baseline,
            self.cfg.samples,
            self.cfg.warmup,
            self.cfg.program_limit.as_secs(),
        )?;
        let mut reports = reports.into_iter();
        if let Some(p) = reports.next() {
            run.first = Some(p.peer);
            run.first_direct = p.baseline;
        }
        if let Some(p) = reports.next() {
            run.last = Some(p.peer);
            run.last_direct = p.baseline;
        }
        Ok(())
    }

    /// Runs one API call to completion. The client aborts its connection
    /// task when it has the answer, but on this single-threaded runtime the
    /// task (and so the connection) only goes away when the runtime runs
    /// again: a short sleep lets it close, as any real client's would, which
    /// is when the agent hands the request's freed heap back.
    fn call<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(async {
            let out = f.await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            out
        })
    }

    /// Programs `size` services through the bulk API; the timed part is the
    /// apply call (the body is encoded beforehand).
    fn axon_apply(&self, agent: &Agent, size: usize) -> anyhow::Result<Duration> {
        let specs: Vec<_> = (0..size).map(workload::spec).collect();
        let body =
            serde_json::to_vec(&axon_api::ApplyRequest { services: specs }).context("encoding the apply request")?;
        let client = agent.client();
        let limit = self.cfg.program_limit;
        let start = Instant::now();
        let (result, took) = self.call(async {
            let result = tokio::time::timeout(limit, client.apply_raw(body)).await;
            (result, start.elapsed())
        });
        match result {
            Ok(Ok(services)) if services.len() == size => Ok(took),
            Ok(Ok(services)) => bail!("apply stored {} services, expected {size}", services.len()),
            Ok(Err(e)) => bail!("bulk apply of {size} services: {e}"),
            Err(_) => bail!("bulk apply of {size} services did not answer within {} s", limit.as_secs()),
        }
    }

    fn add_one(&self, peer: Peer, size: usize, at: &Placement, agent: Option<&Agent>) -> anyhow::Result<AddOne> {
        let target = Target { addr: workload::vip(size), expect: workload::backends(size) };
        let limit = self.cfg.add_one_limit;
        // Documents are generated before the clock starts.
        let prepared = match peer {
            Peer::IptablesLegacy | Peer::IptablesNft => {
                let doc = rules::iptables(0..size + 1, IptablesStyle::Sync);
                Some(helpers::write_doc(&self.lab.workdir, &format!("{}-sync.rules", peer.label()), &doc)?)
            }
            Peer::Nftables => Some(helpers::write_doc(&self.lab.workdir, "nftables-add.rules", &rules::nft_add(size))?),
            _ => None,
        };
        let probe = Reach::start(&self.cfg.exe, at, &target, limit)?;
        let t0 = sys::mono_ns();
        let (what, apply) = match peer {
            Peer::Axon => {
                let client = agent.context("no agent")?.client();
                let spec = workload::spec(size);
                let id = spec.id.context("spec without id")?;
                let start = Instant::now();
                let (result, took) = self.call(async {
                    let result = client.put_service(id, &spec).await;
                    (result, start.elapsed())
                });
                result.context("PUT of one more service")?;
                (format!("PUT /v1/services/{id}"), took)
            }
            Peer::IptablesLegacy | Peer::IptablesNft | Peer::Nftables => {
                let tool = peer.tool().unwrap_or_default();
                let file = prepared.context("no document")?.to_string_lossy().to_string();
                let (what, argv): (String, Vec<&str>) = if peer == Peer::Nftables {
                    ("nft -f (1 element, 3 chains, 7 rules)".into(), vec!["-f", &file])
                } else {
                    (
                        format!("{tool} --noflush (full resync of {} services)", human(size + 1)),
                        vec!["--noflush", &file],
                    )
                };
                let log = self.lab.workdir.join(format!("{}-add.log", peer.label()));
                match helpers::tool(at.net, tool, &argv, limit, &log)? {
                    ToolRun::Done(took) => (what, took),
                    ToolRun::TimedOut(l) => {
                        let _ = probe.finish();
                        return Ok(AddOne {
                            what,
                            apply_ms: ms(l),
                            reach_ms: None,
                            attempts: 0,
                            timed_out: true,
                            error: Some(format!("{tool} did not finish within the {} s limit (killed)", l.as_secs())),
                        });
                    }
                }
            }
            Peer::Direct => bail!("direct has nothing to add"),
        };
        let report = probe.finish()?;
        Ok(AddOne {
            what,
            apply_ms: ms(apply),
            reach_ms: report.reached_ns.map(|t| t.saturating_sub(t0) as f64 / 1e6),
            attempts: report.attempts,
            timed_out: false,
            error: report.reached_ns.is_none().then(|| report.last_error.unwrap_or_else(|| "never reached".into())),
        })
    }
}

/// First and last service; "direct" connects to their first backends.
fn latency_targets(peer: Peer, size: usize) -> Vec<helpers::Dest> {
    [0, size - 1]
        .into_iter()
        .map(|i| {
            let backends = workload::backends(i);
            if peer == Peer::Direct {
                (backends[0], vec![backends[0]])
            } else {
                (workload::vip(i), backends)
            }
        })
        .collect()
}

fn tool_exists(tool: &str) -> bool {
    std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file())).unwrap_or(false)
        || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(tool).is_file())
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// 1, 1k, 10k, 100k.
pub fn human(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn progress(run: &PeerRun) {
    let head = format!("[{:>4}] {:<16}", human(run.size), run.peer.label());
    if let Some(s) = &run.skipped {
        eprintln!("{head} {s}");
        return;
    }
    let mut parts = Vec::new();
    if let Some(p) = run.program_ms {
        parts.push(format!("programmed in {p:.1} ms"));
    }
    for (what, r) in [("first", &run.first), ("last", &run.last)] {
        if let Some(r) = r {
            parts.push(format!("{what} p50 {:.1} µs p99 {:.1} µs{}", r.latency.p50_us, r.latency.p99_us, errors(r)));
        }
    }
    if let Some(a) = &run.add_one {
        match a.reach_ms {
            Some(r) => parts.push(format!("+1 service: applied in {:.1} ms, reachable after {r:.1} ms", a.apply_ms)),
            None => parts.push(format!("+1 service failed: {}", a.error.as_deref().unwrap_or("?"))),
        }
    }
    if let Some(m) = run.memory {
        parts.push(format!("agent RSS {:.1} MiB", m.rss_kib as f64 / 1024.0));
    }
    if let Some(m) = run.memory_restarted {
        parts.push(format!("after restart {:.1} MiB", m.rss_kib as f64 / 1024.0));
    }
    if let Some(e) = &run.error {
        parts.push(format!("ERROR: {e}"));
    }
    eprintln!("{head} {}", parts.join("; "));
}

fn errors(r: &TargetReport) -> String {
    if r.errors == 0 {
        String::new()
    } else {
        format!(" ({} errors: {})", r.errors, r.first_error.as_deref().unwrap_or("?"))
    }
}
