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
pub const SIZES: &[usize] = &[64, 256, 1024, 4096, 16384, 65536];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Direct,
    Iptables,
    Capture,
    Bypass,
}

impl Scenario {
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
    pub keepalive: WrkResult,
    pub newconn: WrkResult,
    /// MB/s per entry of [`SIZES`].
    pub stream_mbps: Vec<f64>,
}

pub struct Options {
    pub duration: Duration,
    pub stream_duration: Duration,
    pub connections: u32,
    /// Only the streaming sweep (no wrk runs).
    pub streams_only: bool,
    /// Print the datapath's mesh counters after each stream.
    pub verbose: bool,
}

/// Runs every scenario and returns the results in [`Scenario::ALL`] order.
pub fn run(opts: &Options) -> Result<Vec<ScenarioResult>> {
    let mut lab = MeshLab::new("bench-mesh", MeshFlavor::Istio, &[]).context("mesh lab")?;
    lab.start_pods(true).context("apps and Envoys")?;
    let _sink = lab.spawn_app(1, &["sink", &SINK_PORT.to_string()])?;
    wait_listening(lab.netns(1), SocketAddr::from(([127, 0, 0, 1], SINK_PORT)), Duration::from_secs(10))?;
    let mut out = Vec::new();
    for scenario in Scenario::ALL {
        set_scenario(&lab, scenario)?;
        eprintln!("mesh bench: {}", scenario.label());
        let url = format!("http://{}/", lab.pod(1).addr(false, APP_PORT));
        let (keepalive, newconn) = if opts.streams_only {
            (WrkResult::default(), WrkResult::default())
        } else {
            (wrk(&lab, &url, opts, false)?, wrk(&lab, &url, opts, true)?)
        };
        let sink = lab.pod(1).addr(false, SINK_PORT).to_string();
        let mut stream_mbps = Vec::new();
        for size in SIZES {
            let ms = opts.stream_duration.as_millis().to_string();
            let run = lab.spawn_app(0, &["stream", &sink, &size.to_string(), &ms])?;
            let text = run.wait_output(opts.stream_duration + Duration::from_secs(30))?;
            let v: serde_json::Value = serde_json::from_str(text.trim()).context("stream output")?;
            let bytes = v["bytes"].as_f64().unwrap_or(0.0);
            let secs = v["secs"].as_f64().unwrap_or(1.0).max(1e-3);
            stream_mbps.push(bytes / secs / 1e6);
            if opts.verbose {
                let c = lab.status().map_err(anyhow::Error::msg)?.counters;
                eprintln!("  {size} B: {:.0} MB/s, counters {}", bytes / secs / 1e6, serde_json::to_string(&c)?);
            }
        }
        eprintln!(
            "  keep-alive {:.0} req/s p50 {:.0}us; new-conn {:.0} req/s; stream {:?}",
            keepalive.rps, keepalive.p50_us, newconn.rps, stream_mbps
        );
        out.push(ScenarioResult { scenario, keepalive, newconn, stream_mbps });
    }
    set_scenario(&lab, Scenario::Direct)?;
    Ok(out)
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

fn wrk(lab: &MeshLab, url: &str, opts: &Options, new_conn: bool) -> Result<WrkResult> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", "-c", &opts.connections.to_string(), "-d", &format!("{}s", opts.duration.as_secs())]).args([
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
pub fn report(results: &[ScenarioResult], command: &str, opts: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Command: `{command}` (wrk -t1 -c{} for {:?} per run; streams {:?} per size; {}).\n",
        opts.connections,
        opts.duration,
        opts.stream_duration,
        axon_lab_kernel()
    );
    let base = results.iter().find(|r| r.scenario == Scenario::Iptables).map(|r| r.keepalive.clone());
    let _ = writeln!(
        s,
        "| path | keep-alive req/s | p50 | p99 | vs (a) req/s | vs (a) p50 | new conn req/s | new conn p50 | wrk errors (keep-alive / new conn) |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in results {
        let (x_rps, x_p50) = match &base {
            Some(b) if b.rps > 0.0 && b.p50_us > 0.0 => {
                (format!("×{:.2}", r.keepalive.rps / b.rps), format!("×{:.2}", r.keepalive.p50_us / b.p50_us))
            }
            _ => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} µs | {:.0} µs | {x_rps} | {x_p50} | {:.0} | {:.0} µs | {} / {} |",
            r.scenario.label(),
            r.keepalive.rps,
            r.keepalive.p50_us,
            r.keepalive.p99_us,
            r.newconn.rps,
            r.newconn.p50_us,
            r.keepalive.errors,
            r.newconn.errors
        );
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
