//! `axon-bench-nodeport`: the north-south benchmark. NodePort packets/s
//! (UDP flood), requests/s and p50/p99 latency (TCP request/response, kept
//! alive and one connection per request) through kube-proxy-style iptables
//! rules (iptables-legacy, iptables-nft) and Axon's tc, generic XDP and
//! native XDP datapaths — backend on the node (local) or behind another node
//! (SNAT, DSR) — side by side in one run, plus plain routing as the ceiling.
//! Results go to the terminal and between this bench's markers in
//! docs/benchmarks.md.

#[path = "../docs_section.rs"]
mod docs_section;
#[path = "../nodeport/mod.rs"]
mod nodeport;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nodeport::report::{self, RunInfo};
use nodeport::runner::{self, Config, Peer, Workload};
use nodeport::services::{Route, MAX_FILLERS};
use nodeport::{lab, sys};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "axon-bench-nodeport",
    about = "Benchmark NodePort traffic through iptables (kube-proxy rules) and Axon tc / XDP generic / XDP native",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A short run for development: 1 round of 0.5 s per cell, docs not written.
    #[arg(long)]
    quick: bool,
    /// Rounds per cell (the median is reported) [default: 3; 1 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds measured per cell and round [default: 1; 0.5 with --quick].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds of load before the measured part [default: 0.3; 0.2 with --quick].
    #[arg(long)]
    warmup: Option<f64>,
    /// Datapaths [default: plain,iptables-legacy,iptables-nft,axon-tc,axon-xdp-generic,axon-xdp-native].
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Routes to the backend [default: local,snat,dsr].
    #[arg(long, value_delimiter = ',')]
    routes: Vec<String>,
    /// Workloads [default: udp,rr,crr].
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Parallel TCP connections (client threads).
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// UDP flows (source ports) in the flood.
    #[arg(long, default_value_t = 16)]
    flows: u16,
    /// Idle NodePort services ahead of the measured ones (kube-proxy's chains grow with them).
    #[arg(long, default_value_t = 100)]
    fillers: usize,
    /// CPU for the client side (load generator) [default: 0].
    #[arg(long)]
    client_cpu: Option<usize>,
    /// CPU for the backends' servers [default: 1].
    #[arg(long)]
    server_cpu: Option<usize>,
    /// The axon-agent binary [default: next to this binary, built if stale].
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Where to write the results section [default: docs/benchmarks.md; none with --quick].
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Do not write docs.
    #[arg(long)]
    no_docs: bool,
    /// Also write every sample as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the lab up this many seconds after set-up, before measuring (to inspect it).
    #[arg(long, hide = true, default_value_t = 0)]
    hold: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Remove what interrupted runs left behind (axn<pid>-* namespaces, cgroups, bpffs dirs).
    Clean {
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// Print the kube-proxy iptables ruleset a node gets.
    Rules {
        #[arg(long, default_value_t = 3)]
        fillers: usize,
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
        Some(Cmd::Clean { ref agent }) => {
            lab::sweep(None, Some(&agent_path(agent.clone())?));
            Ok(())
        }
        Some(Cmd::Rules { fillers }) => {
            let all: Vec<_> = nodeport::services::fillers(fillers.min(MAX_FILLERS))
                .into_iter()
                .chain(nodeport::services::measured(false))
                .collect();
            print!("{}", nodeport::kubeproxy::ruleset(&all));
            Ok(())
        }
        None => bench(&cli),
    }
}

fn parse_list<T>(given: &[String], all: &[T], parse: impl Fn(&str) -> Option<T>, what: &str) -> anyhow::Result<Vec<T>>
where
    T: Copy,
{
    if given.is_empty() {
        return Ok(all.to_vec());
    }
    given.iter().map(|s| parse(s).with_context(|| format!("unknown {what} {s:?}"))).collect()
}

fn config(cli: &Cli, agent_bin: PathBuf) -> anyhow::Result<Config> {
    let secs = |v: Option<f64>, full: f64, quick: f64| {
        Duration::from_secs_f64(v.unwrap_or(if cli.quick { quick } else { full }).max(0.0))
    };
    if cli.fillers > MAX_FILLERS {
        bail!("--fillers at most {MAX_FILLERS}");
    }
    if cli.conns == 0 || cli.flows == 0 {
        bail!("--conns and --flows must be at least 1");
    }
    // Two CPUs: the client side on one, the backends on the other. On one
    // CPU nothing is pinned.
    let cpus = sys::cpus();
    let pick = |given: Option<usize>, default: usize| match given {
        Some(c) if c < cpus => Ok(Some(c)),
        Some(c) => bail!("CPU {c} not available ({cpus} CPUs)"),
        None => Ok((cpus >= 2).then_some(default)),
    };
    Ok(Config {
        agent_bin,
        peers: parse_list(&cli.peers, &Peer::ALL, Peer::parse, "datapath")?,
        routes: parse_list(&cli.routes, &Route::ALL, Route::parse, "route")?,
        workloads: parse_list(&cli.workloads, &Workload::ALL, Workload::parse, "workload")?,
        rounds: cli.rounds.unwrap_or(if cli.quick { 1 } else { 3 }).max(1),
        warmup: secs(cli.warmup, 0.3, 0.2),
        duration: secs(cli.duration, 1.0, 0.5).max(Duration::from_millis(100)),
        conns: cli.conns,
        flows: cli.flows,
        fillers: cli.fillers,
        client_cpu: pick(cli.client_cpu, 0)?,
        server_cpu: pick(cli.server_cpu, 1)?,
        hold: Duration::from_secs(cli.hold),
    })
}

fn bench(cli: &Cli) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("axon-bench-nodeport needs root (network namespaces, BPF, iptables)");
    }
    let started = Instant::now();
    let agent_bin = ensure_agent(cli.agent.clone())?;
    let cfg = config(cli, agent_bin.clone())?;
    let run = lab::run_id();
    lab::sweep(None, Some(&agent_bin));
    {
        let (run, bin) = (run.clone(), agent_bin.clone());
        lab::install_signal_guard(move || lab::sweep(Some(&run), Some(&bin))).context("installing signal handlers")?;
    }
    let run_dir = std::env::temp_dir().join(format!("{run}-work"));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let load_start = loadavg();
    eprintln!(
        "axon-bench-nodeport: datapaths {}, {} round(s) of {:.1} s per cell; progress below, tables at the end",
        cfg.peers.iter().map(|p| p.label()).collect::<Vec<_>>().join(","),
        cfg.rounds,
        cfg.duration.as_secs_f64()
    );
    let cells = runner::run(&cfg, &run, &run_dir);
    lab::sweep(Some(&run), Some(&agent_bin));
    let cells = cells?;
    let info = RunInfo {
        command: command_line(),
        date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        revision: revision(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        cpus: sys::cpus(),
        cpu_model: cpu_model(),
        iptables: format!(
            "{}; {}",
            first_line("iptables-legacy", &["--version"]),
            first_line("iptables-nft", &["--version"])
        ),
        load_start,
        load_end: loadavg(),
        duration_s: started.elapsed().as_secs_f64(),
        rounds: cfg.rounds,
        window_s: cfg.duration.as_secs_f64(),
        warmup_s: cfg.warmup.as_secs_f64(),
        conns: cfg.conns,
        flows: cfg.flows,
        fillers: cfg.fillers,
        client_cpu: cfg.client_cpu,
        server_cpu: cfg.server_cpu,
    };
    let summaries = report::summarize(&cells);
    let body = report::markdown(&info, &summaries);
    println!("{body}");
    if let Some(path) = &cli.json {
        let doc = serde_json::json!({"run": info, "summary": summaries, "cells": cells, "targets": report::verdicts(&summaries)});
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let docs = match (&cli.docs, cli.no_docs, cli.quick) {
        (_, true, _) => None,
        (Some(p), false, _) => Some(p.clone()),
        (None, false, false) => Some(workspace_root().join("docs/benchmarks.md")),
        (None, false, true) => None,
    };
    if let Some(path) = docs {
        report::write_docs(&path, &body).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("axon-bench-nodeport: results written to {}", path.display());
    }
    Ok(())
}

/// The workspace root (this crate is `bench/` in it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

fn agent_path(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    Ok(std::env::current_exe().context("locating this binary")?.with_file_name("axon-agent"))
}

/// The agent binary, rebuilt (`cargo build --release -p axon-agent` into
/// this binary's target dir, a no-op when current) unless --agent names one.
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
            Ok(s) if path.is_file() => {
                eprintln!("axon-bench-nodeport: building axon-agent failed ({s}); using {}", path.display())
            }
            Ok(s) => bail!("cargo build --release -p axon-agent failed ({s})"),
            Err(e) if path.is_file() => {
                eprintln!("axon-bench-nodeport: cannot run cargo ({e}); using {}", path.display())
            }
            Err(e) => bail!("cannot run cargo to build axon-agent: {e}"),
        }
    }
    if !path.is_file() {
        bail!("axon-agent not found at {} (pass --agent)", path.display());
    }
    Ok(path)
}

/// How this run was started, for the docs, without the options that only
/// say where results go (`--json`, `--docs`, `--no-docs`). With no other
/// options it is what `make bench` runs.
fn command_line() -> String {
    let mut args = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" | "--docs" => {
                it.next();
            }
            "--no-docs" => {}
            _ if a.starts_with("--json=") || a.starts_with("--docs=") => {}
            _ => args.push(a),
        }
    }
    if args.is_empty() {
        return "make bench (axon-bench-nodeport with its default options)".to_string();
    }
    format!("axon-bench-nodeport {}", args.join(" "))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn first_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_default()
}

/// The workspace's commit, `+dirty` when the datapath or bench sources differ.
fn revision() -> String {
    let root = workspace_root();
    let git = |args: &[&str]| std::process::Command::new("git").arg("-C").arg(&root).args(args).output().ok();
    let Some(head) = git(&["rev-parse", "--short", "HEAD"]).filter(|o| o.status.success()) else {
        return "unknown".into();
    };
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no", "--", "agent", "api", "bpf", "bench"])
        .is_some_and(|o| !o.stdout.is_empty());
    if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}
