//! `axon-bench`: Axon socket-LB against direct connects, kube-proxy-style
//! iptables rules (legacy and nft backends) and a kube-proxy-nftables-style
//! ruleset, side by side in one lab of network namespaces. `make bench`
//! runs it; the hidden subcommands are the helpers it starts inside the lab.

mod agent;
mod docs_section;
mod guard;
mod helpers;
mod k8s;
mod lab;
mod probe;
mod report;
mod rules;
mod runner;
mod server;
mod stats;
mod sys;
mod workload;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use runner::{Config, Peer};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "axon-bench",
    about = "Benchmark Axon socket-LB against iptables and nftables service rules",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args)]
struct RunArgs {
    /// A short run for development: sizes 1 and 1k, 1000 samples, no docs.
    #[arg(long)]
    quick: bool,
    /// Service counts to measure [default: 1,1000,10000,100000].
    #[arg(long, value_delimiter = ',')]
    sizes: Vec<usize>,
    /// Peers to run [default: direct,axon,iptables-legacy,iptables-nft,nftables].
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Timed connects per target [default: 5000].
    #[arg(long)]
    samples: Option<usize>,
    /// Untimed connects before them.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Seconds a peer may take to program one size before it is skipped.
    #[arg(long, default_value_t = 180)]
    program_limit: u64,
    /// Seconds the add-one change may take (a full iptables-nft resync of 10k services takes minutes).
    #[arg(long, default_value_t = 60)]
    add_one_limit: u64,
    /// Size at which adding one service is timed [default: 10000, or the largest size].
    #[arg(long)]
    add_one_at: Option<usize>,
    /// The axon-agent binary [default: next to this binary].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Where to write the results section [default: docs/benchmarks.md of the workspace; none with --quick].
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Do not write docs/benchmarks.md.
    #[arg(long)]
    no_docs: bool,
    /// Also write every measurement as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Axon against the real kube-proxy 1.20.2, both fed by one real kube-apiserver (issue #4's benchmark).
    K8s(k8s::K8sArgs),
    /// Remove what interrupted runs left behind (axb* namespaces, cgroups, pins).
    Clean {
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Print a generated peer ruleset (to inspect it, or load it by hand).
    Rules {
        /// iptables (fresh node), iptables-sync (kube-proxy's --noflush resync), nft, nft-add (one more service), axon (bulk apply body).
        kind: String,
        /// Number of services (for nft-add: the index of the added one).
        #[arg(long, default_value_t = 3)]
        size: usize,
    },
    /// Helper: the backend server, inside the backend netns.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        port: u16,
    },
    /// Helper: timed connects from the client netns and cgroup.
    #[command(hide = true)]
    Client {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long = "target", required = true)]
        targets: Vec<probe::Target>,
        /// Where baseline (direct) connects come from, interleaved with the peer's.
        #[arg(long)]
        baseline_netns: Option<PathBuf>,
        #[arg(long)]
        baseline_cgroup: Option<PathBuf>,
        /// One per --target, in the same order.
        #[arg(long = "baseline-target")]
        baseline_targets: Vec<probe::Target>,
        #[arg(long)]
        samples: usize,
        #[arg(long)]
        warmup: usize,
        #[arg(long, default_value_t = 50)]
        block: usize,
        #[arg(long, default_value_t = 120)]
        max_seconds: u64,
    },
    /// Helper: connect until a new service answers; report when.
    #[command(hide = true)]
    Reach {
        #[arg(long)]
        netns: PathBuf,
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        target: probe::Target,
        #[arg(long)]
        timeout_ms: u64,
        #[arg(long, default_value_t = 100)]
        pause_us: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        None => bench(cli.run),
        Some(Cmd::K8s(args)) => {
            let agent_bin = ensure_agent(args.agent.clone())?;
            let exe = std::env::current_exe().context("locating this binary")?;
            k8s::run(args, k8s::Setup { exe, agent_bin })
        }
        Some(Cmd::Clean { agent }) => {
            lab::sweep(None, Some(&agent_path(agent)?));
            Ok(())
        }
        Some(Cmd::Rules { kind, size }) => {
            let doc = match kind.as_str() {
                "iptables" => rules::iptables(0..size, rules::IptablesStyle::Full),
                "iptables-sync" => rules::iptables(0..size, rules::IptablesStyle::Sync),
                "nft" => rules::nft_full(0..size),
                "nft-add" => rules::nft_add(size),
                "axon" => {
                    serde_json::to_string(&axon_api::ApplyRequest {
                        services: (0..size).map(workload::spec).collect(),
                    })? + "\n"
                }
                other => bail!("unknown ruleset {other:?} (iptables, iptables-sync, nft, nft-add, axon)"),
            };
            print!("{doc}");
            Ok(())
        }
        Some(Cmd::Serve { netns, port }) => server::run(&netns, port),
        Some(Cmd::Client {
            netns,
            cgroup,
            targets,
            baseline_netns,
            baseline_cgroup,
            baseline_targets,
            samples,
            warmup,
            block,
            max_seconds,
        }) => {
            sys::die_with_parent();
            let peer = probe::Side::open(&netns, cgroup.as_deref())?;
            let baseline = baseline_netns.map(|n| probe::Side::open(&n, baseline_cgroup.as_deref())).transpose()?;
            if baseline.is_some() && baseline_targets.len() != targets.len() {
                bail!("{} --target but {} --baseline-target", targets.len(), baseline_targets.len());
            }
            let pairs: Vec<_> =
                targets.into_iter().enumerate().map(|(i, t)| (t, baseline_targets.get(i).cloned())).collect();
            let plan = probe::Plan { samples, warmup, block, budget: Duration::from_secs(max_seconds) };
            let reports = probe::latency(&peer, baseline.as_ref(), &pairs, &plan)?;
            println!("{}", serde_json::to_string(&reports)?);
            Ok(())
        }
        Some(Cmd::Reach { netns, cgroup, target, timeout_ms, pause_us }) => {
            probe::enter(&netns, cgroup.as_deref())?;
            println!("ready");
            let report = probe::reach(&target, Duration::from_micros(pause_us), Duration::from_millis(timeout_ms));
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}

/// The workspace root (this crate is `bench/` in it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn agent_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating this binary")?;
    Ok(exe.with_file_name("axon-agent"))
}

/// Makes sure the agent binary exists and is current: `cargo build
/// --release -p axon-agent` into the target dir this binary came from
/// (a no-op when it is up to date). Skipped when --agent names one.
fn ensure_agent(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let explicit = flag.is_some();
    let path = agent_path(flag)?;
    if !explicit {
        let target_dir = path.parent().and_then(Path::parent).context("target dir of this binary")?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--release", "-p", "axon-agent", "--target-dir"])
            .arg(target_dir)
            .current_dir(workspace_root())
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => bail!("cargo build --release -p axon-agent failed ({s})"),
            Err(e) if path.is_file() => eprintln!("axon-bench: cannot run cargo ({e}); using {}", path.display()),
            Err(e) => bail!("cannot run cargo to build axon-agent: {e}"),
        }
    }
    if !path.is_file() {
        bail!(
            "axon-agent not found at {} (build it with cargo build --release -p axon-agent, or pass --agent)",
            path.display()
        );
    }
    Ok(path)
}

fn bench(args: RunArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("axon-bench needs root (network namespaces, cgroups, BPF)");
    }
    let started = Instant::now();
    let agent_bin = ensure_agent(args.agent.clone())?;
    let exe = std::env::current_exe().context("locating this binary")?;
    let sizes = if !args.sizes.is_empty() {
        args.sizes.clone()
    } else if args.quick {
        vec![1, 1000]
    } else {
        vec![1, 1000, 10_000, 100_000]
    };
    if let Some(&bad) = sizes.iter().find(|&&s| s == 0 || s + 1 > workload::MAX_SERVICES) {
        bail!("size {bad} outside 1..{}", workload::MAX_SERVICES);
    }
    let peers = if args.peers.is_empty() {
        Peer::ALL.to_vec()
    } else {
        args.peers
            .iter()
            .map(|p| Peer::parse(p).with_context(|| format!("unknown peer {p:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let add_one_at = args.add_one_at.unwrap_or_else(|| {
        if sizes.contains(&10_000) {
            10_000
        } else {
            sizes.iter().copied().max().unwrap_or(1)
        }
    });
    let samples = args.samples.unwrap_or(if args.quick { 1000 } else { 5000 });
    let cfg = Config {
        exe,
        agent_bin: agent_bin.clone(),
        sizes,
        peers,
        samples,
        warmup: args.warmup,
        program_limit: Duration::from_secs(args.program_limit),
        add_one_at,
        add_one_limit: Duration::from_secs(args.add_one_limit),
    };
    lab::sweep(None, Some(&agent_bin));
    let load_start = report::loadavg();
    let own = format!("{}{}", lab::PREFIX, std::process::id());
    {
        let (own, agent_bin) = (own.clone(), agent_bin.clone());
        guard::install(move || lab::sweep(Some(&own), Some(&agent_bin))).context("installing signal handlers")?;
    }
    eprintln!(
        "axon-bench: sizes {:?}, peers {}, {} samples per target; progress below, tables at the end",
        cfg.sizes,
        cfg.peers.iter().map(|p| p.label()).collect::<Vec<_>>().join(","),
        cfg.samples
    );
    let runs = {
        let mut lab = lab::Lab::up(&cfg.exe, workload::BACKEND_PORT)?;
        let mut runner = runner::Runner::new(&cfg, &mut lab)?;
        runner.run()
    };
    lab::sweep(Some(&own), Some(&agent_bin));
    let results = report::Results {
        command: command_line("make bench (axon-bench with its default options)", &[]),
        machine: report::Machine::probe(),
        samples: cfg.samples,
        warmup: cfg.warmup,
        add_one_at: cfg.add_one_at,
        add_one_limit_s: args.add_one_limit,
        load_start,
        load_end: report::loadavg(),
        program_limit_s: args.program_limit,
        duration_s: started.elapsed().as_secs_f64(),
        runs,
    };
    report::print(&results);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let docs = match (&args.docs, args.no_docs, args.quick) {
        (_, true, _) => None,
        (Some(p), false, _) => Some(p.clone()),
        (None, false, false) => Some(workspace_root().join("docs/benchmarks.md")),
        (None, false, true) => None,
    };
    if let Some(path) = docs {
        report::write_docs(&path, &results).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("axon-bench: results written to {}", path.display());
    }
    Ok(())
}

/// How this run was started, for the docs: `default` when its arguments are exactly `plain` (what
/// `make bench` runs).
fn command_line(default: &str, plain: &[&str]) -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().map(String::as_str).eq(plain.iter().copied()) {
        return default.to_string();
    }
    format!("axon-bench{}", args.iter().map(|a| format!(" {a}")).collect::<String>())
}
