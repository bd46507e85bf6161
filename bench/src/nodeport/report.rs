//! The results: medians per cell, ratios against the iptables peers of the
//! same run, the verdict on the targets, and the markdown that goes
//! to the terminal and between this bench's markers in docs/benchmarks.md.

use super::runner::{Cell, Peer, Workload};
use super::services::Route;
use super::stats;
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

pub const BEGIN: &str = "<!-- axon-bench-nodeport:results:begin -->";
pub const END: &str = "<!-- axon-bench-nodeport:results:end -->";

/// The targets, in packets/s over the best iptables peer.
const XDP_TARGET: f64 = 3.0;
const TC_TARGET: f64 = 1.5;

/// How the run was set up, for the header.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub command: String,
    pub date: String,
    pub revision: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub iptables: String,
    pub load_start: String,
    pub load_end: String,
    pub duration_s: f64,
    pub rounds: usize,
    pub window_s: f64,
    pub warmup_s: f64,
    pub conns: usize,
    pub flows: u16,
    pub fillers: usize,
    pub client_cpu: Option<usize>,
    pub server_cpu: Option<usize>,
}

/// The median of one cell's rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub workload: Workload,
    pub route: Route,
    pub peer: Peer,
    pub rate: f64,
    pub offered: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub errors: u64,
    pub spread: f64,
    pub xdp_share: Option<f64>,
    pub delivered_share: Option<f64>,
    pub bpf_ns_per_packet: Option<f64>,
    /// New flows node-1's Axon datapath could not give a SNAT port (all rounds).
    pub snat_fails: u64,
}

pub fn summarize(cells: &[Cell]) -> Vec<Summary> {
    cells
        .iter()
        .map(|c| {
            let med =
                |f: &dyn Fn(&super::runner::Sample) -> f64| stats::median(&c.samples.iter().map(f).collect::<Vec<_>>());
            let rates: Vec<f64> = c.samples.iter().map(|s| s.rate).collect();
            let opt = |f: &dyn Fn(&super::runner::Sample) -> Option<f64>| {
                let v: Vec<f64> = c.samples.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| stats::median(&v))
            };
            Summary {
                workload: c.workload,
                route: c.route,
                peer: c.peer,
                rate: stats::median(&rates),
                offered: med(&|s| s.offered),
                p50_us: med(&|s| s.p50_us),
                p99_us: med(&|s| s.p99_us),
                errors: c.samples.iter().map(|s| s.errors).sum(),
                spread: stats::spread(&rates),
                xdp_share: opt(&|s| s.xdp_share),
                delivered_share: opt(&|s| s.delivered_share),
                bpf_ns_per_packet: c.bpf.as_ref().map(|b| b.ns_per_packet),
                snat_fails: c.samples.iter().map(|s| s.counters.get("np_snat_fail").copied().unwrap_or(0)).sum(),
            }
        })
        .collect()
}

fn find(s: &[Summary], w: Workload, r: Route, p: Peer) -> Option<&Summary> {
    s.iter().find(|x| x.workload == w && x.route == r && x.peer == p)
}

/// kube-proxy has no DSR: a DSR row is compared with iptables' SNAT row
/// (the same backend, reached the only way kube-proxy can).
fn baseline_route(r: Route) -> Route {
    if r == Route::Dsr {
        Route::Snat
    } else {
        r
    }
}

fn ratio(s: &[Summary], row: &Summary, base: Peer) -> String {
    if row.peer == Peer::Plain {
        return "-".into();
    }
    match find(s, row.workload, baseline_route(row.route), base) {
        Some(b) if b.rate > 0.0 => format!("{:.2}", row.rate / b.rate),
        _ => "-".into(),
    }
}

/// The better of the two iptables peers (the conservative baseline).
fn best_iptables(s: &[Summary], w: Workload, r: Route) -> Option<&Summary> {
    [Peer::IptablesLegacy, Peer::IptablesNft]
        .into_iter()
        .filter_map(|p| find(s, w, r, p))
        .max_by(|a, b| a.rate.total_cmp(&b.rate))
}

fn route_cell(row: &Summary) -> String {
    match (row.peer, row.route) {
        (Peer::Plain, Route::Local) => "local (routed, no LB)".into(),
        (Peer::Plain, _) => "remote (routed, no LB)".into(),
        (_, r) => r.label().into(),
    }
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn rows(s: &[Summary], w: Workload) -> Vec<&Summary> {
    let mut v: Vec<&Summary> = s.iter().filter(|x| x.workload == w).collect();
    v.sort_by_key(|x| (x.route, x.peer));
    v
}

/// Nanoseconds per packet the whole path took beyond plain routing to the
/// same backend (the datapath's own cost, on this lab's one-CPU path).
fn over_plain(s: &[Summary], row: &Summary) -> String {
    let plain_route = if row.route == Route::Local { Route::Local } else { Route::Snat };
    match find(s, row.workload, plain_route, Peer::Plain) {
        Some(p) if row.peer != Peer::Plain && p.rate > 0.0 && row.rate > 0.0 => {
            format!("{:+.0}", 1e9 / row.rate - 1e9 / p.rate)
        }
        _ => "-".into(),
    }
}

fn udp_table(out: &mut String, s: &[Summary], info: &RunInfo) {
    let _ = writeln!(
        out,
        "#### UDP packets/s through the NodePort: {} flows of 60-byte frames, counted arriving at the backend (median of {} rounds)\n",
        info.flows, info.rounds
    );
    out.push_str("| route | datapath | delivered pps | ×iptables-legacy | ×iptables-nft | ns/packet over plain routing | node-1 BPF ns/packet | done in XDP | read by the sink | spread |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    let pct = |v: Option<f64>| v.map(|x| format!("{:.0}%", x * 100.0)).unwrap_or_else(|| "-".into());
    for r in rows(s, Workload::Udp) {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% |",
            route_cell(r),
            r.peer.label(),
            human(r.rate),
            ratio(s, r, Peer::IptablesLegacy),
            ratio(s, r, Peer::IptablesNft),
            over_plain(s, r),
            r.bpf_ns_per_packet.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into()),
            pct(r.xdp_share),
            pct(r.delivered_share),
            r.spread * 100.0
        );
    }
    out.push('\n');
}

fn tcp_table(out: &mut String, s: &[Summary], w: Workload, info: &RunInfo) {
    let what = if w == Workload::Rr {
        "kept-alive connections"
    } else {
        "a new connection per request (connect, request, response, close)"
    };
    let _ = writeln!(
        out,
        "#### TCP requests/s and latency, {what}: {} in parallel, 64-byte request and response (median of {} rounds)\n",
        info.conns, info.rounds
    );
    out.push_str(
        "| route | datapath | requests/s | p50 µs | p99 µs | ×iptables-legacy | ×iptables-nft | spread | errors | SNAT port failures |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows(s, w) {
        let fails = if r.peer.is_axon() { r.snat_fails.to_string() } else { "-".into() };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {:.0}% | {} | {fails} |",
            route_cell(r),
            r.peer.label(),
            human(r.rate),
            r.p50_us,
            r.p99_us,
            ratio(s, r, Peer::IptablesLegacy),
            ratio(s, r, Peer::IptablesNft),
            r.spread * 100.0,
            r.errors
        );
    }
    out.push('\n');
}

/// One row of the targets table.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub target: String,
    pub route: Route,
    pub measured: Option<f64>,
    pub met: Option<bool>,
}

pub fn verdicts(s: &[Summary]) -> Vec<Verdict> {
    let mut out = Vec::new();
    let checks = [(Peer::AxonXdpNative, XDP_TARGET), (Peer::AxonXdpGeneric, XDP_TARGET), (Peer::AxonTc, TC_TARGET)];
    for route in [Route::Snat, Route::Dsr, Route::Local] {
        for (peer, want) in checks {
            let measured = find(s, Workload::Udp, route, peer)
                .zip(best_iptables(s, Workload::Udp, baseline_route(route)))
                .filter(|(_, b)| b.rate > 0.0)
                .map(|(a, b)| a.rate / b.rate);
            if measured.is_none() && find(s, Workload::Udp, route, peer).is_none() {
                continue;
            }
            out.push(Verdict {
                target: format!("{} packets/s ≥ {want}× iptables", peer.label()),
                route,
                measured,
                met: measured.map(|m| m >= want),
            });
        }
    }
    out
}

fn targets_table(out: &mut String, s: &[Summary]) {
    out.push_str("#### Targets (issue #3): packets/s over the better of the two iptables peers on the same path\n\n");
    out.push_str("| target | route | measured | verdict |\n|---|---|---|---|\n");
    for v in verdicts(s) {
        let route = if v.route == Route::Dsr { "dsr (vs iptables snat)".to_string() } else { v.route.label().into() };
        let (m, verdict) = match (v.measured, v.met) {
            (Some(m), Some(true)) => (format!("{m:.2}×"), "met"),
            (Some(m), _) => (format!("{m:.2}×"), "NOT MET"),
            _ => ("-".into(), "not measured"),
        };
        let _ = writeln!(out, "| {} | {route} | {m} | {verdict} |", v.target);
    }
    out.push('\n');
}

fn header(out: &mut String, info: &RunInfo) {
    let _ = writeln!(
        out,
        "_Generated by `axon-bench-nodeport` on {}; do not edit by hand between these markers._\n",
        info.date
    );
    let _ = writeln!(out, "Command: `{}` at revision `{}`\n", info.command, info.revision);
    let cpu = |c: Option<usize>| c.map(|c| format!("CPU {c}")).unwrap_or_else(|| "any CPU".into());
    let _ = writeln!(
        out,
        "Machine: Linux {}, {} CPUs ({}); {}. Load average {} before the run, {} after. Whole run: {:.0} s. \
         Each cell: {} rounds of {:.1} s measured after {:.1} s of warm-up, datapaths interleaved; \
         client load on {}, backends on {}; {} idle filler NodePort services ahead of the measured ones.\n",
        info.kernel,
        info.cpus,
        info.cpu_model,
        info.iptables,
        info.load_start,
        info.load_end,
        info.duration_s,
        info.rounds,
        info.window_s,
        info.warmup_s,
        cpu(info.client_cpu),
        cpu(info.server_cpu),
        info.fillers
    );
}

/// The whole generated section (without the markers).
pub fn markdown(info: &RunInfo, s: &[Summary]) -> String {
    let mut out = String::new();
    header(&mut out, info);
    if s.iter().any(|x| x.workload == Workload::Udp) {
        udp_table(&mut out, s, info);
    }
    for w in [Workload::Rr, Workload::Crr] {
        if s.iter().any(|x| x.workload == w) {
            tcp_table(&mut out, s, w, info);
        }
    }
    if s.iter().any(|x| x.workload == Workload::Udp) {
        targets_table(&mut out, s);
    }
    out
}

/// Writes `body` between this benchmark's markers in `path`.
pub fn write_docs(path: &Path, body: &str) -> std::io::Result<()> {
    let block = format!("{BEGIN}\n{body}{END}");
    crate::docs_section::replace_section(
        path,
        BEGIN,
        END,
        &block,
        "## North-south: NodePort datapaths (`axon-bench-nodeport`)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docs_markers_replace_only_the_block() {
        let dir = std::env::temp_dir().join(format!("axn-report-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("b.md");
        std::fs::write(&p, "# Benchmarks\n\nother text\n").unwrap();
        write_docs(&p, "one\n").unwrap();
        let first = std::fs::read_to_string(&p).unwrap();
        assert!(first.starts_with("# Benchmarks\n\nother text\n\n## North-south"));
        assert!(first.contains(&format!("{BEGIN}\none\n{END}")));
        write_docs(&p, "two\n").unwrap();
        let second = std::fs::read_to_string(&p).unwrap();
        assert_eq!(second, first.replace("one\n", "two\n"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
