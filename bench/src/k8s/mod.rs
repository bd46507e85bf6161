//! `axon-bench k8s`: Axon against the real kube-proxy 1.20.2 (iptables mode), both fed by the same real
//! kube-apiserver and the same Services/Endpoints. Per size (services already present), each proxy starts
//! fresh in its own client namespace and is measured for: full sync (start → last service reachable), the
//! connect latency to the first and last service next to a direct connect, the time from creating one more
//! Service in the apiserver to the first connection through it, and its memory.

mod forward;
mod kubeproxy;
mod objects;
mod report;

use crate::agent::{Agent, Memory};
use crate::helpers::{self, Placement, Reach};
use crate::lab::Lab;
use crate::probe::Target;
use crate::{guard, lab, sys, workload};
use anyhow::{bail, Context};
use axon_lab::kube::{kube_bin, KubeCluster};
use clap::Args;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// The Node object Axon's agent runs as.
const AXON_NODE_NAME: &str = "bench-axon";

#[derive(Args, Debug, Clone)]
pub struct K8sArgs {
    /// Services present before each measurement [default: 1000,10000; --quick: 100,1000].
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Proxies to run [default: kube-proxy,axon].
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Timed connects per target [default: 2000; --quick: 300].
    #[arg(long)]
    pub samples: Option<usize>,
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Seconds a proxy may take to sync or to serve one more Service.
    #[arg(long, default_value_t = 600)]
    pub limit: u64,
    /// Short run for development: sizes 100 and 1k, fewer samples, no docs.
    #[arg(long)]
    pub quick: bool,
    /// The axon-agent binary [default: next to this binary].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Where to write the results section [default: docs/benchmarks.md; none with --quick].
    #[arg(long)]
    pub docs: Option<PathBuf>,
    #[arg(long)]
    pub no_docs: bool,
    /// Also write every measurement as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proxy {
    KubeProxy,
    Axon,
}

impl Proxy {
    fn label(self) -> &'static str {
        match self {
            Proxy::KubeProxy => "kube-proxy",
            Proxy::Axon => "axon",
        }
    }

    fn parse(s: &str) -> Option<Proxy> {
        [Proxy::KubeProxy, Proxy::Axon].into_iter().find(|p| p.label() == s)
    }
}

/// One proxy at one size.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub proxy: Proxy,
    pub size: usize,
    /// Process start → the last service answers.
    pub sync_ms: Option<f64>,
    /// Service created in the apiserver → the first connection through it.
    pub add_one_ms: Option<f64>,
    pub p50_first_us: Option<f64>,
    pub p50_last_us: Option<f64>,
    pub p50_direct_us: Option<f64>,
    pub memory: Option<Memory>,
    pub error: Option<String>,
}

pub struct Setup {
    pub exe: PathBuf,
    pub agent_bin: PathBuf,
}

pub fn run(args: K8sArgs, setup: Setup) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("axon-bench k8s needs root (network namespaces, cgroups, BPF)");
    }
    let started = Instant::now();
    let sizes = match (&args.sizes, args.quick) {
        (s, _) if !s.is_empty() => s.clone(),
        (_, true) => vec![100, 1000],
        (_, false) => vec![1000, 10_000],
    };
    if let Some(&bad) = sizes.iter().find(|&&s| s == 0 || s + 1 > objects::MAX_SERVICES) {
        bail!("size {bad} outside 1..{}", objects::MAX_SERVICES);
    }
    let proxies = if args.peers.is_empty() {
        vec![Proxy::KubeProxy, Proxy::Axon]
    } else {
        args.peers
            .iter()
            .map(|p| Proxy::parse(p).with_context(|| format!("unknown proxy {p:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let samples = args.samples.unwrap_or(if args.quick { 300 } else { 2000 });
    let kube_proxy_bin = kube_bin("kube-proxy")?;
    let rt = Runtime::new().context("tokio runtime")?;
    lab::sweep(None, Some(&setup.agent_bin));
    let own = format!("{}{}", lab::PREFIX, std::process::id());
    {
        let (own, agent_bin) = (own.clone(), setup.agent_bin.clone());
        guard::install(move || lab::sweep(Some(&own), Some(&agent_bin))).context("installing signal handlers")?;
    }
    eprintln!("axon-bench k8s: starting kube-apiserver 1.20.2 and etcd");
    let kube = KubeCluster::start().context("starting the apiserver")?;
    let client = rt.block_on(objects::client(kube.kubeconfig()))?;
    rt.block_on(objects::ensure_namespace(&client))?;
    rt.block_on(objects::ensure_node(&client, kubeproxy::NODE_NAME, "10.132.0.1"))?;
    rt.block_on(objects::ensure_node(&client, AXON_NODE_NAME, "10.132.0.2"))?;
    let mut runs = Vec::new();
    {
        let mut lab = Lab::up(&setup.exe, workload::BACKEND_PORT)?;
        let mut present = 0;
        for &size in &sizes {
            let t = Instant::now();
            rt.block_on(objects::create_many(&client, present..size)).context("creating services")?;
            eprintln!(
                "axon-bench k8s: {size} services in the apiserver (+{} in {:.1} s)",
                size - present,
                t.elapsed().as_secs_f64()
            );
            present = size;
            for &proxy in &proxies {
                let ctx = Ctx {
                    setup: &setup,
                    kube: &kube,
                    rt: &rt,
                    client: &client,
                    samples,
                    warmup: args.warmup,
                    limit: Duration::from_secs(args.limit),
                    kube_proxy_bin: &kube_proxy_bin,
                };
                let mut run = Run {
                    proxy,
                    size,
                    sync_ms: None,
                    add_one_ms: None,
                    p50_first_us: None,
                    p50_last_us: None,
                    p50_direct_us: None,
                    memory: None,
                    error: None,
                };
                if let Err(e) = measure(&ctx, &mut lab, &mut run) {
                    run.error = Some(format!("{e:#}"));
                }
                // The added service goes again, so the next proxy starts from the same `size`.
                let _ = rt.block_on(objects::delete(&client, size));
                eprintln!("{}", report::progress(&run));
                runs.push(run);
            }
        }
    }
    lab::sweep(Some(&own), Some(&setup.agent_bin));
    let results = report::Results {
        command: crate::command_line("make bench (axon-bench k8s)", &["k8s"]),
        iptables: report::iptables_version(),
        samples,
        duration_s: started.elapsed().as_secs_f64(),
        runs,
    };
    report::print(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let docs = match (&args.docs, args.no_docs, args.quick) {
        (_, true, _) | (None, false, true) => None,
        (Some(p), false, _) => Some(p.clone()),
        (None, false, false) => Some(crate::workspace_root().join("docs/benchmarks.md")),
    };
    if let Some(path) = docs {
        report::write_docs(&path, &results).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("axon-bench k8s: results written to {}", path.display());
    }
    Ok(())
}

struct Ctx<'a> {
    setup: &'a Setup,
    kube: &'a KubeCluster,
    rt: &'a Runtime,
    client: &'a kube::Client,
    samples: usize,
    warmup: usize,
    limit: Duration,
    kube_proxy_bin: &'a std::path::Path,
}

fn target(i: usize) -> Target {
    Target { addr: objects::vip(i), expect: objects::backends(i) }
}

/// A running proxy of either kind; dropping it stops it.
enum Running {
    KubeProxy(kubeproxy::KubeProxy),
    Axon(Agent),
}

impl Running {
    fn memory(&self) -> Option<Memory> {
        match self {
            Running::KubeProxy(kp) => kp.pid().and_then(|pid| Memory::of_pid(pid).ok()),
            Running::Axon(agent) => agent.memory().ok(),
        }
    }
}

fn measure(ctx: &Ctx, lab: &mut Lab, run: &mut Run) -> anyhow::Result<()> {
    let size = run.size;
    let net = lab.client_net()?;
    let cgroup = match run.proxy {
        Proxy::KubeProxy => lab.cg_plain.clone(),
        Proxy::Axon => lab.cg_lb.clone(),
    };
    let at = Placement { net: &net, cgroup: &cgroup };
    // Full sync: the probe is connecting before the proxy starts.
    let probe = Reach::start(&ctx.setup.exe, &at, &target(size - 1), ctx.limit)?;
    let t0 = sys::mono_ns();
    let mut running = match run.proxy {
        Proxy::KubeProxy => {
            let upstream: SocketAddr =
                ctx.kube.server().trim_start_matches("https://").parse().context("apiserver address")?;
            forward::start(&net.path, kubeproxy::APISERVER_IN_NETNS.parse()?, upstream)?;
            let kc = kubeproxy::kubeconfig(&lab.workdir, &ctx.kube.ca_file(), ctx.kube.token())?;
            Running::KubeProxy(kubeproxy::KubeProxy::start(ctx.kube_proxy_bin, &net.path, &kc, &lab.workdir)?)
        }
        Proxy::Axon => {
            let extra: Vec<String> =
                ["--k8s-kubeconfig", &ctx.kube.kubeconfig().display().to_string(), "--node-name", AXON_NODE_NAME]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
            Running::Axon(Agent::start_with(
                ctx.rt,
                &ctx.setup.agent_bin,
                &lab.prefix,
                &lab.workdir,
                &lab.cg_lb,
                "axon-k8s",
                &extra,
            )?)
        }
    };
    let synced = probe.finish()?;
    if let Running::KubeProxy(kp) = &mut running {
        kp.check_running()?;
    }
    let Some(reached) = synced.reached_ns else {
        bail!(
            "the last service never answered within {} s: {}",
            ctx.limit.as_secs(),
            synced.last_error.unwrap_or_default()
        );
    };
    run.sync_ms = Some(reached.saturating_sub(t0) as f64 / 1e6);
    let dests = [(objects::vip(0), objects::backends(0)), (objects::vip(size - 1), objects::backends(size - 1))];
    let direct: Vec<helpers::Dest> = dests.iter().map(|(_, b)| (b[0], vec![b[0]])).collect();
    let plain = Placement { net: &net, cgroup: &lab.cg_plain };
    let lat = helpers::latency(&ctx.setup.exe, &at, &dests, Some((&plain, &direct)), ctx.samples, ctx.warmup, 120)?;
    run.p50_first_us = lat.first().map(|p| p.peer.latency.p50_us);
    run.p50_last_us = lat.get(1).map(|p| p.peer.latency.p50_us);
    run.p50_direct_us = lat.first().and_then(|p| p.baseline.as_ref()).map(|b| b.latency.p50_us);
    if let Some(bad) = lat.iter().find(|p| p.peer.errors > 0) {
        bail!(
            "{} of the connects to {} failed: {}",
            bad.peer.errors,
            bad.peer.target,
            bad.peer.first_error.clone().unwrap_or_default()
        );
    }
    // One more Service, created in the apiserver while the probe connects.
    let probe = Reach::start(&ctx.setup.exe, &at, &target(size), ctx.limit)?;
    let t1 = sys::mono_ns();
    ctx.rt.block_on(objects::create(ctx.client, size))?;
    let added = probe.finish()?;
    run.add_one_ms = added.reached_ns.map(|t| t.saturating_sub(t1) as f64 / 1e6);
    run.memory = running.memory();
    drop(running);
    if added.reached_ns.is_none() {
        bail!("the added service never answered: {}", added.last_error.unwrap_or_default());
    }
    Ok(())
}
