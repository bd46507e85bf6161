//! Tables for `axon-bench k8s`: the terminal, and the generated section of docs/benchmarks.md.

use super::{Proxy, Run};
use crate::report::Table;
use crate::runner::human;
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

pub const BEGIN: &str = "<!-- axon-bench-k8s:results:begin -->";
pub const END: &str = "<!-- axon-bench-k8s:results:end -->";
/// The target: Axon reaches a new Service at least this many times sooner than kube-proxy.
const REACH_RATIO_TARGET: f64 = 1000.0;

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub command: String,
    pub iptables: String,
    pub samples: usize,
    pub duration_s: f64,
    pub runs: Vec<Run>,
}

pub fn iptables_version() -> String {
    std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "iptables not found".into())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into())
}

pub fn progress(run: &Run) -> String {
    format!(
        "  {:<10} {:>6} services: sync {} ms, new service reachable {} ms, p50 first/last/direct {}/{}/{} µs, RSS {} MiB{}",
        run.proxy_label(),
        human(run.size),
        opt(run.sync_ms, 1),
        opt(run.add_one_ms, 2),
        opt(run.p50_first_us, 1),
        opt(run.p50_last_us, 1),
        opt(run.p50_direct_us, 1),
        opt(run.memory.map(|m| m.rss_kib as f64 / 1024.0), 1),
        run.error.as_ref().map(|e| format!(" — ERROR: {e}")).unwrap_or_default()
    )
}

impl Run {
    fn proxy_label(&self) -> &'static str {
        match self.proxy {
            Proxy::KubeProxy => "kube-proxy",
            Proxy::Axon => "axon",
        }
    }
}

fn main_table(res: &Results) -> Table {
    let mut t = Table::new(&[
        "proxy",
        "services",
        "full sync (ms)",
        "new Service reachable (ms)",
        "connect p50 first (µs)",
        "connect p50 last (µs)",
        "direct p50 (µs)",
        "RSS (MiB)",
        "notes",
    ]);
    for r in &res.runs {
        t.row(vec![
            r.proxy_label().into(),
            human(r.size),
            opt(r.sync_ms, 1),
            opt(r.add_one_ms, 2),
            opt(r.p50_first_us, 1),
            opt(r.p50_last_us, 1),
            opt(r.p50_direct_us, 1),
            opt(r.memory.map(|m| m.rss_kib as f64 / 1024.0), 1),
            r.error.clone().unwrap_or_default(),
        ]);
    }
    t
}

fn ratio_table(res: &Results) -> Table {
    let mut t = Table::new(&[
        "services",
        "reachability: kube-proxy / axon",
        "target",
        "full sync: kube-proxy / axon",
        "last/first p50 kube-proxy",
        "last/first p50 axon",
    ]);
    let mut sizes: Vec<usize> = res.runs.iter().map(|r| r.size).collect();
    sizes.dedup();
    for size in sizes {
        let find = |p: Proxy| res.runs.iter().find(|r| r.size == size && r.proxy == p);
        let (Some(kp), Some(ax)) = (find(Proxy::KubeProxy), find(Proxy::Axon)) else { continue };
        let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        let reach = div(kp.add_one_ms, ax.add_one_ms);
        let verdict = match reach {
            Some(x) if x >= REACH_RATIO_TARGET => format!(">= {REACH_RATIO_TARGET}x: met"),
            Some(_) => format!(">= {REACH_RATIO_TARGET}x: NOT met"),
            None => "-".into(),
        };
        t.row(vec![
            human(size),
            opt(reach, 0) + "x",
            verdict,
            opt(div(kp.sync_ms, ax.sync_ms), 1) + "x",
            opt(div(kp.p50_last_us, kp.p50_first_us), 2),
            opt(div(ax.p50_last_us, ax.p50_first_us), 2),
        ]);
    }
    t
}

pub fn print(res: &Results) {
    println!("\nAxon vs kube-proxy 1.20.2 ({}), {} samples per latency target\n", res.iptables, res.samples);
    print!("{}", main_table(res).text());
    println!();
    print!("{}", ratio_table(res).text());
}

pub fn markdown(res: &Results) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(
        out,
        "Command: `{}` — kube-proxy in iptables mode via `{}`; {} timed connects per latency target; run took {:.0} s.\n",
        res.command, res.iptables, res.samples, res.duration_s
    );
    let _ = writeln!(out, "{}", main_table(res).markdown());
    let _ = writeln!(out, "{}", ratio_table(res).markdown());
    let _ = writeln!(out, "{END}");
    out
}

pub fn write_docs(path: &Path, res: &Results) -> std::io::Result<()> {
    let heading = "## Axon vs the real kube-proxy (`axon-bench k8s`)";
    crate::docs_section::replace_section(path, BEGIN, END, &markdown(res), heading)
}
