//! The mesh benchmark: one lab (two pods, a real Envoy in each, uid 1337),
//! four ways to put the apps' traffic through the sidecars, measured side by
//! side in one run:
//!
//! - `direct`: no sidecar (the ceiling),
//! - `iptables`: istio-iptables-style REDIRECT rules in each pod (the baseline),
//! - `capture`: Axon's cgroup capture, no sockmap (`axon.io/mesh-bypass=false`),
//! - `bypass`: Axon's capture plus the sockhash shortcut of the local pairs.
//!
//! Workloads: wrk keep-alive and one connection per request (HTTP through
//! Envoy's L4 proxy), and a streaming sweep of message sizes into a sink.

use anyhow::{bail, Context, Result};
use axon_lab::mesh::{wait_listening, LabProcess, MeshFlavor, MeshLab, APP_PORT};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const SINK_PORT: u16 = 9000;
/// A second sink, only for the first stream to an unseen destination.
pub const FRESH_SINK_PORT: u16 = 9001;
/// Unmeasured stream before each measured one.
const STREAM_WARMUP: Duration = Duration::from_millis(200);
pub const SIZES: &[usize] = &[64, 256, 1024, 4096, 16384, 65536];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    Iptables,
    Capture,
    Bypass,
}

impl Scenario {
    /// `direct`, `iptables`, `capture`, `bypass`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Direct => "direct",
            Scenario::Iptables => "iptables",
            Scenario::Capture => "capture",
            Scenario::Bypass => "bypass",
        }
    }

    pub const ALL: [Scenario; 4] = [Scenario::Direct, Scenario::Iptables, Scenario::Capture, Scenario::Bypass];

    pub fn label(self) -> &'static str {
        match self {
            Scenario::Direct => "direct (no sidecar)",
            Scenario::Iptables => "(a) iptables REDIRECT + Envoy",
            Scenario::Capture => "(b) Axon capture + Envoy",
            Scenario::Bypass => "(c) Axon capture + sockmap + Envoy",
        }
    }
}

/// One wrk run.
#[derive(Debug, Clone, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
}

#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub scenario: Scenario,
    /// One per entry of [`Options::connections`].
    pub keepalive: Vec<WrkResult>,
    pub newconn: WrkResult,
    /// MB/s per entry of [`SIZES`].
    pub stream_mbps: Vec<f64>,
}

#[derive(Clone)]
pub struct Options {
    /// Interleaved repetitions of the whole sweep; each cell reports the median.
    pub rounds: u32,
    pub duration: Duration,
    pub stream_duration: Duration,
    /// wrk connections of each keep-alive run (the new-connection run uses the first).
    pub connections: Vec<u32>,
    /// Only the streaming sweep (no wrk runs).
    pub streams_only: bool,
    /// Print the datapath's mesh counters after each stream.
    pub verbose: bool,
    /// Only these scenarios (all when empty).
    pub only: Vec<Scenario>,
}

/// Runs every scenario `opts.rounds` times, interleaved, each run in a lab
/// of its own (fresh namespaces, Envoys and agent: no run inherits another's
/// sockets, conntrack entries or learnt state), and returns the median of
/// each cell in [`Scenario::ALL`] order, plus the first stream to a
/// destination the datapath has not seen yet (see [`Report::first_stream`]).
pub fn run(opts: &Options) -> Result<Report> {
    let scenarios: Vec<Scenario> =
        Scenario::ALL.into_iter().filter(|s| opts.only.is_empty() || opts.only.contains(s)).collect();
    let mut rounds: Vec<Vec<ScenarioResult>> = vec![Vec::new(); scenarios.len()];
    let mut first_stream = None;
    for round in 0..opts.rounds.max(1) {
        for (i, scenario) in scenarios.iter().enumerate() {
            eprintln!("mesh bench, round {}: {}", round + 1, scenario.label());
            let (lab, _sinks) = fresh_lab()?;
            set_scenario(&lab, *scenario)?;
            if *scenario == Scenario::Bypass && first_stream.is_none() {
                let fresh = lab.pod(1).addr(false, FRESH_SINK_PORT).to_string();
                first_stream = Some(stream_mbps(&lab, &fresh, SIZES[0], opts)?);
            }
            rounds[i].push(run_scenario(&lab, *scenario, opts)?);
        }
    }
    let results = rounds.iter().map(|runs| median_result(runs)).collect();
    Ok(Report { results, first_stream, rounds: opts.rounds.max(1) })
}

/// Two pods with their apps and Envoys, and the two sinks in pod b.
fn fresh_lab() -> Result<(MeshLab, Vec<LabProcess>)> {
    let mut lab = MeshLab::new("bench-mesh", MeshFlavor::Istio, &[]).context("mesh lab")?;
    lab.start_pods(true).context("apps and Envoys")?;
    for pod in 0..2 {
        bound_time_wait(&lab, pod)?;
    }
    let sinks = [SINK_PORT, FRESH_SINK_PORT]
        .into_iter()
        .map(|port| {
            let sink = lab.spawn_app(1, &["sink", &port.to_string()])?;
            wait_listening(lab.netns(1), SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(10))?;
            Ok(sink)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((lab, sinks))
}

/// What [`run`] measured.
pub struct Report {
    pub results: Vec<ScenarioResult>,
    /// (c) only: MB/s of the smallest write size on the first connection to
    /// a destination the datapath knows nothing about.
    pub first_stream: Option<f64>,
    pub rounds: u32,
}

fn run_scenario(lab: &MeshLab, scenario: Scenario, opts: &Options) -> Result<ScenarioResult> {
    let url = format!("http://{}/", lab.pod(1).addr(false, APP_PORT));
    let (keepalive, newconn) = if opts.streams_only {
        (vec![WrkResult::default(); opts.connections.len()], WrkResult::default())
    } else {
        // Unmeasured, the same in every path: the datapath learns that the
        // app port answers request by request (docs/mesh.md), as it would
        // from any earlier traffic to a service.
        let first = opts.connections.first().copied().unwrap_or(8);
        wrk(lab, &url, &Options { duration: Duration::from_secs(1), ..opts.clone() }, first, false)?;
        let keepalive = opts.connections.iter().map(|c| wrk(lab, &url, opts, *c, false)).collect::<Result<Vec<_>>>()?;
        if opts.verbose {
            let c = lab.status().map_err(anyhow::Error::msg)?.counters;
            eprintln!("  after keep-alive: counters {}", serde_json::to_string(&c)?);
        }
        (keepalive, wrk(lab, &url, opts, opts.connections.first().copied().unwrap_or(8), true)?)
    };
    let sink = lab.pod(1).addr(false, SINK_PORT).to_string();
    let mut mbps = Vec::new();
    for size in SIZES {
        // The same destination as every measured stream before it: what a
        // steady workload sees. The warm-up is the same in every scenario.
        stream_mbps(lab, &sink, *size, &Options { stream_duration: STREAM_WARMUP, ..opts.clone() })?;
        mbps.push(stream_mbps(lab, &sink, *size, opts)?);
        if opts.verbose {
            let c = lab.status().map_err(anyhow::Error::msg)?.counters;
            eprintln!("  {size} B: {:.0} MB/s, counters {}", mbps.last().unwrap_or(&0.0), serde_json::to_string(&c)?);
        }
    }
    eprintln!(
        "  keep-alive {:?} req/s; new-conn {:.0} req/s; stream {:?}",
        keepalive.iter().map(|k| k.rps.round()).collect::<Vec<_>>(),
        newconn.rps,
        mbps.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    Ok(ScenarioResult { scenario, keepalive, newconn, stream_mbps: mbps })
}

/// One stream of `size`-byte writes from pod a's app to `sink`: MB/s written.
fn stream_mbps(lab: &MeshLab, sink: &str, size: usize, opts: &Options) -> Result<f64> {
    let ms = opts.stream_duration.as_millis().to_string();
    let run = lab.spawn_app(0, &["stream", sink, &size.to_string(), &ms])?;
    let text = run.wait_output(opts.stream_duration + Duration::from_secs(30))?;
    let v: serde_json::Value = serde_json::from_str(text.trim()).context("stream output")?;
    let bytes = v["bytes"].as_f64().context("stream output: bytes")?;
    let secs = v["secs"].as_f64().context("stream output: secs")?.max(1e-3);
    Ok(bytes / secs / 1e6)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn wrk_median(runs: &[ScenarioResult], pick: impl Fn(&ScenarioResult) -> &WrkResult) -> WrkResult {
    WrkResult {
        rps: median(runs.iter().map(|r| pick(r).rps).collect()),
        p50_us: median(runs.iter().map(|r| pick(r).p50_us).collect()),
        p99_us: median(runs.iter().map(|r| pick(r).p99_us).collect()),
        errors: runs.iter().map(|r| pick(r).errors).sum(),
    }
}

/// Cell by cell median of one scenario's rounds.
fn median_result(runs: &[ScenarioResult]) -> ScenarioResult {
    ScenarioResult {
        scenario: runs[0].scenario,
        keepalive: (0..runs[0].keepalive.len()).map(|i| wrk_median(runs, |r| &r.keepalive[i])).collect(),
        newconn: wrk_median(runs, |r| &r.newconn),
        stream_mbps: (0..SIZES.len()).map(|i| median(runs.iter().map(|r| r.stream_mbps[i]).collect())).collect(),
    }
}

/// Puts the lab in `scenario`: mesh registrations and iptables rules.
fn set_scenario(lab: &MeshLab, scenario: Scenario) -> Result<()> {
    for i in 0..2 {
        iptables_flush(lab, i)?;
    }
    match scenario {
        Scenario::Direct | Scenario::Iptables => {
            for i in 0..2 {
                lab.enable_pod(i, &[]).map_err(anyhow::Error::msg)?;
                lab.agentctl_ok(&["mesh", "disable", "--pod", &lab.pod(i).pod_ref()]).map_err(anyhow::Error::msg)?;
            }
            if scenario == Scenario::Iptables {
                for i in 0..2 {
                    iptables_istio(lab, i)?;
                }
            }
        }
        Scenario::Capture => {
            for i in 0..2 {
                lab.enable_pod(i, &[("axon.io/mesh-bypass", "false")]).map_err(anyhow::Error::msg)?;
            }
        }
        Scenario::Bypass => {
            for i in 0..2 {
                lab.enable_pod(i, &[]).map_err(anyhow::Error::msg)?;
            }
        }
    }
    Ok(())
}

/// The new-connection runs close tens of thousands of connections per
/// scenario; their TIME_WAIT sockets would outlive the scenario and make the
/// next ones' connects collide with them (1 s SYN retries). What a load test
/// does on a real node too, the same for every scenario: few TIME_WAIT
/// sockets and a wide port range in each pod.
fn bound_time_wait(lab: &MeshLab, pod: usize) -> Result<()> {
    for setting in
        ["net.ipv4.tcp_max_tw_buckets=1024", "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1"]
    {
        let mut cmd = Command::new("sysctl");
        cmd.args(["-q", "-w", setting]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        LabProcess::spawn(cmd, &format!("sysctl {setting}"), lab.netns(pod), &lab.pod(pod).cgroup, None)?
            .wait_output(Duration::from_secs(10))
            .map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

fn iptables(lab: &MeshLab, pod: usize, args: &[&str]) -> Result<()> {
    let mut cmd = Command::new("iptables");
    cmd.args(["-w", "-t", "nat"]).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    LabProcess::spawn(cmd, &format!("iptables {args:?}"), lab.netns(pod), &lab.pod(pod).cgroup, None)?
        .wait_output(Duration::from_secs(10))
        .map(drop)
        .map_err(anyhow::Error::msg)
}

/// istio-iptables' capture, reduced to what the lab needs: outbound TCP of
/// everyone but uid 1337 to 15001 (loopback excepted), inbound TCP to 15006.
fn iptables_istio(lab: &MeshLab, pod: usize) -> Result<()> {
    let rules: &[&[&str]] = &[
        &["-N", "AXB_OUTPUT"],
        &["-A", "OUTPUT", "-p", "tcp", "-j", "AXB_OUTPUT"],
        &["-A", "AXB_OUTPUT", "-m", "owner", "--uid-owner", "1337", "-j", "RETURN"],
        &["-A", "AXB_OUTPUT", "-d", "127.0.0.1/32", "-j", "RETURN"],
        &["-A", "AXB_OUTPUT", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15001"],
        &["-N", "AXB_INBOUND"],
        &["-A", "PREROUTING", "-p", "tcp", "-j", "AXB_INBOUND"],
        &["-A", "AXB_INBOUND", "-p", "tcp", "--dport", "15006", "-j", "RETURN"],
        &["-A", "AXB_INBOUND", "-p", "tcp", "-j", "REDIRECT", "--to-ports", "15006"],
    ];
    for r in rules {
        iptables(lab, pod, r)?;
    }
    Ok(())
}

fn iptables_flush(lab: &MeshLab, pod: usize) -> Result<()> {
    iptables(lab, pod, &["-F"])?;
    iptables(lab, pod, &["-X"])
}

fn wrk(lab: &MeshLab, url: &str, opts: &Options, connections: u32, new_conn: bool) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c", &connections.to_string(), "-d", &format!("{}s", opts.duration.as_secs())]).args([
        "--latency",
        "--timeout",
        "5s",
    ]);
    if new_conn {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let text = LabProcess::spawn(cmd, "wrk", lab.netns(0), &lab.pod(0).cgroup, None)?
        .wait_output(opts.duration + Duration::from_secs(30))
        .map_err(anyhow::Error::msg)?;
    parse_wrk(&text)
}

/// `Requests/sec:`, the 50% and 99% lines of `--latency`, socket errors and non-2xx.
pub fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.rps = v.trim().parse().context("Requests/sec")?;
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_us = duration_us(v.trim())?;
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_us = duration_us(v.trim())?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            r.errors += v.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    if r.rps == 0.0 {
        bail!("wrk printed no Requests/sec:\n{text}");
    }
    Ok(r)
}

fn duration_us(v: &str) -> Result<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        bail!("unknown duration {v:?}")
    };
    Ok(num.parse::<f64>().with_context(|| format!("duration {v:?}"))? * mult)
}

/// The markdown section written to docs/benchmarks.md.
pub fn report(report: &Report, command: &str, opts: &Options) -> String {
    let results = &report.results;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Command: `{command}` (median of {} interleaved rounds; wrk -t1 for {:?} per run; streams {:?} per size \
         after a {:?} warm-up stream; {}; {} CPUs).\n",
        report.rounds,
        opts.duration,
        opts.stream_duration,
        STREAM_WARMUP,
        axon_lab_kernel(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    let _ = writeln!(s, "HTTP keep-alive through both sidecars (Envoy L4), by wrk connections:\n");
    let _ = writeln!(s, "| path | connections | req/s | p50 | p99 | vs (a) req/s | vs (a) p50 | wrk errors |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let base = results.iter().find(|r| r.scenario == Scenario::Iptables);
    for (i, connections) in opts.connections.iter().enumerate() {
        for r in results {
            let k = &r.keepalive[i];
            let (x_rps, x_p50) = match base.map(|b| &b.keepalive[i]) {
                Some(b) if b.rps > 0.0 && b.p50_us > 0.0 => {
                    (format!("×{:.2}", k.rps / b.rps), format!("×{:.2}", k.p50_us / b.p50_us))
                }
                _ => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                s,
                "| {} | {connections} | {:.0} | {:.0} µs | {:.0} µs | {x_rps} | {x_p50} | {} |",
                r.scenario.label(),
                k.rps,
                k.p50_us,
                k.p99_us,
                k.errors
            );
        }
    }
    let _ = writeln!(
        s,
        "\nOne connection per request (`Connection: close`), {} connections (wrk counts every close as a read error):\n",
        opts.connections.first().copied().unwrap_or(0)
    );
    let _ = writeln!(s, "| path | req/s | p50 | vs (a) req/s |");
    let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
    for r in results {
        let x = match base {
            Some(b) if b.newconn.rps > 0.0 => format!("×{:.2}", r.newconn.rps / b.newconn.rps),
            _ => "-".into(),
        };
        let _ = writeln!(s, "| {} | {:.0} | {:.0} µs | {x} |", r.scenario.label(), r.newconn.rps, r.newconn.p50_us);
    }
    let _ = writeln!(s, "\nStreaming one way into a sink through both sidecars, MB/s by write size:\n");
    let header: Vec<String> = SIZES.iter().map(|b| human_size(*b)).collect();
    let _ = writeln!(s, "| path | {} |", header.join(" | "));
    let _ = writeln!(s, "| --- |{}", " ---: |".repeat(SIZES.len()));
    for r in results {
        let cells: Vec<String> = r.stream_mbps.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(s, "| {} | {} |", r.scenario.label(), cells.join(" | "));
    }
    if let (Some(b), Some(c)) = (
        results.iter().find(|r| r.scenario == Scenario::Capture),
        results.iter().find(|r| r.scenario == Scenario::Bypass),
    ) {
        let ratios: Vec<String> =
            b.stream_mbps.iter().zip(&c.stream_mbps).map(|(b, c)| format!("×{:.2}", c / b.max(1e-9))).collect();
        let _ = writeln!(s, "| (c) / (b) | {} |", ratios.join(" | "));
    }
    if let Some(first) = report.first_stream {
        let _ = writeln!(
            s,
            "\nFirst stream to a destination the datapath has not seen, {}: {first:.0} MB/s in (c) (an unknown \
             destination: the app's socket writes through plain TCP from the first byte, as in the rows above).",
            human_size(SIZES[0])
        );
    }
    s
}

fn human_size(b: usize) -> String {
    if b >= 1024 {
        format!("{} KiB", b / 1024)
    } else {
        format!("{b} B")
    }
}

fn axon_lab_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| format!("kernel {}", s.trim())).unwrap_or_default()
}
