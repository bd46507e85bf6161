//! Turning the runs into tables (aligned text for the terminal, markdown for
//! docs/benchmarks.md), the machine description, and the verdict on the
//! issue's targets.

use crate::agent::Memory;
use crate::docs_section::replace_section;
use crate::runner::{human, Peer, PeerRun};
use serde::Serialize;
use std::fmt::Write;
use std::path::Path;

pub const BEGIN: &str = "<!-- axon-bench:results:begin -->";
pub const END: &str = "<!-- axon-bench:results:end -->";

/// Target thresholds from the issue.
const P50_RATIO_MAX: f64 = 1.10;
const REACH_MS_MAX: f64 = 50.0;
const RSS_MIB_MAX: f64 = 64.0;
const TARGET_SIZE: usize = 100_000;
const REACH_SIZE: usize = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub iptables: String,
    pub nft: String,
    pub date: String,
    /// The workspace's commit, `+dirty` when its sources differ from it.
    pub revision: String,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Machine {
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
                .unwrap_or_default(),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            iptables: first_line("iptables-legacy", &["--version"]),
            nft: first_line("nft", &["--version"]),
            date: first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            revision: revision(),
        }
    }
}

fn revision() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    let git = |args: &[&str]| std::process::Command::new("git").arg("-C").arg(root).args(args).output().ok();
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

/// The three load averages, as /proc/loadavg has them.
pub fn loadavg() -> String {
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

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub command: String,
    pub machine: Machine,
    pub samples: usize,
    pub warmup: usize,
    pub add_one_at: usize,
    pub program_limit_s: u64,
    pub add_one_limit_s: u64,
    /// /proc/loadavg before and after: other work on the machine shows here.
    pub load_start: String,
    pub load_end: String,
    pub duration_s: f64,
    pub runs: Vec<PeerRun>,
}

pub(crate) struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&str]) -> Self {
        Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows: Vec::new() }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn text(&self) -> String {
        let cols = self.headers.len();
        let width = |c: usize| {
            self.rows
                .iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .chain([self.headers[c].chars().count()])
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (c, w) in widths.iter().enumerate() {
                let cell = cells.get(c).map(String::as_str).unwrap_or("");
                // The last column holds notes: no padding.
                if c + 1 == cols {
                    s.push_str(cell);
                } else {
                    let _ = write!(s, "{cell:<w$}  ");
                }
            }
            s.trim_end().to_string() + "\n"
        };
        let mut out = line(&self.headers);
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }

    pub(crate) fn markdown(&self) -> String {
        let mut out = format!("| {} |\n|{}\n", self.headers.join(" | "), "---|".repeat(self.headers.len()));
        for r in &self.rows {
            let _ = writeln!(out, "| {} |", r.join(" | "));
        }
        out
    }
}

fn find(runs: &[PeerRun], peer: Peer, size: usize) -> Option<&PeerRun> {
    runs.iter().find(|r| r.peer == peer && r.size == size)
}

fn sizes(runs: &[PeerRun]) -> Vec<usize> {
    let mut s: Vec<usize> = runs.iter().map(|r| r.size).collect();
    s.dedup();
    s
}

fn peers(runs: &[PeerRun]) -> Vec<Peer> {
    let mut p: Vec<Peer> = runs.iter().map(|r| r.peer).collect();
    p.sort();
    p.dedup();
    p
}

fn us(v: f64) -> String {
    format!("{v:.1}")
}

/// p50 of `run`'s target over direct's: the direct connects interleaved
/// with it when there are some, else the direct row of the same size.
fn ratio(runs: &[PeerRun], run: &PeerRun, last: bool) -> Option<f64> {
    let v = if last { run.last.as_ref() } else { run.first.as_ref() }?.latency.p50_us;
    let paired = if last { run.last_direct.as_ref() } else { run.first_direct.as_ref() };
    let d = match paired {
        Some(p) => p.latency.p50_us,
        None => {
            let direct = find(runs, Peer::Direct, run.size)?;
            if last { direct.last.as_ref() } else { direct.first.as_ref() }?.latency.p50_us
        }
    };
    (d > 0.0 && v > 0.0).then(|| v / d)
}

fn latency_table(runs: &[PeerRun]) -> Table {
    let mut t = Table::new(&[
        "services",
        "peer",
        "first p50 µs",
        "first p99 µs",
        "first p50 ×direct",
        "last p50 µs",
        "last p99 µs",
        "last p50 ×direct",
        "interleaved direct p50 µs (first / last)",
        "notes",
    ]);
    for run in runs {
        let mut row = vec![human(run.size), run.peer.label().to_string()];
        let mut notes = Vec::new();
        for (report, last) in [(&run.first, false), (&run.last, true)] {
            match report {
                Some(r) => {
                    row.push(us(r.latency.p50_us));
                    row.push(us(r.latency.p99_us));
                    row.push(ratio(runs, run, last).map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into()));
                    if r.errors > 0 {
                        notes.push(format!(
                            "{} failed connects ({})",
                            r.errors,
                            r.first_error.as_deref().unwrap_or("?")
                        ));
                    }
                    if r.latency.samples > 0 && r.backends_seen() < 2 && run.peer != Peer::Direct {
                        notes.push(format!("only {} backend answered", r.backends_seen()));
                    }
                }
                None => row.extend(["-".to_string(), "-".to_string(), "-".to_string()]),
            }
        }
        row.push(match (&run.first_direct, &run.last_direct) {
            (Some(f), Some(l)) => format!("{} / {}", us(f.latency.p50_us), us(l.latency.p50_us)),
            _ => "-".into(),
        });
        if let Some(s) = &run.skipped {
            notes.push(s.clone());
        }
        if let Some(e) = &run.error {
            notes.push(format!("error: {e}"));
        }
        row.push(one_line(&notes.join("; ")));
        t.row(row);
    }
    t
}

/// Tool errors quote multi-line output; a table cell holds one line.
fn one_line(s: &str) -> String {
    s.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" / ").replace('|', "\\|")
}

fn program_table(runs: &[PeerRun]) -> Table {
    let sizes = sizes(runs);
    let mut headers = vec!["peer".to_string()];
    headers.extend(sizes.iter().map(|s| format!("{} svc", human(*s))));
    let mut t = Table { headers, rows: Vec::new() };
    for peer in peers(runs).into_iter().filter(|p| *p != Peer::Direct) {
        let mut row = vec![peer.label().to_string()];
        for &s in &sizes {
            row.push(match find(runs, peer, s) {
                Some(r) if r.program_ms.is_some() => format_ms(r.program_ms.unwrap_or(0.0)),
                Some(r) if r.skipped.is_some() => "skipped".into(),
                Some(r) if r.error.is_some() => "error".into(),
                _ => "-".into(),
            });
        }
        t.row(row);
    }
    t
}

fn format_ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else {
        format!("{v:.1} ms")
    }
}

fn add_one_table(runs: &[PeerRun]) -> Table {
    let mut t = Table::new(&["peer", "change timed", "change took", "reachable after", "notes"]);
    for run in runs.iter().filter(|r| r.add_one.is_some()) {
        let Some(a) = &run.add_one else { continue };
        t.row(vec![
            run.peer.label().to_string(),
            a.what.clone(),
            match (a.timed_out, a.apply_ms > 0.0) {
                (true, _) => format!("> {}", format_ms(a.apply_ms)),
                (false, true) => format_ms(a.apply_ms),
                (false, false) => "-".into(),
            },
            a.reach_ms.map(format_ms).unwrap_or_else(|| "-".into()),
            one_line(a.error.as_deref().unwrap_or_default()),
        ]);
    }
    t
}

fn memory_table(runs: &[PeerRun]) -> Table {
    let mut t = Table::new(&[
        "services",
        "VmRSS idle MiB",
        "VmRSS as the apply returns MiB",
        "VmRSS settled MiB",
        "VmHWM MiB",
        "VmRSS after restart MiB",
        "restart to ready",
        "notes",
    ]);
    let mib = |m: Option<Memory>| m.map(|m| format!("{:.1}", m.rss_kib as f64 / 1024.0)).unwrap_or_else(|| "-".into());
    for run in runs.iter().filter(|r| r.peer == Peer::Axon) {
        t.row(vec![
            human(run.size),
            mib(run.memory_idle),
            mib(run.memory_applied),
            mib(run.memory),
            run.memory.map(|m| format!("{:.1}", m.hwm_kib as f64 / 1024.0)).unwrap_or_else(|| "-".into()),
            mib(run.memory_restarted),
            run.restart_ms.map(format_ms).unwrap_or_else(|| "-".into()),
            one_line(run.error.as_deref().or(run.skipped.as_deref()).unwrap_or_default()),
        ]);
    }
    t
}

fn targets_table(runs: &[PeerRun]) -> Table {
    let mut t = Table::new(&["target", "measured", "verdict"]);
    let axon_sizes: Vec<usize> =
        runs.iter().filter(|r| r.peer == Peer::Axon && r.first.is_some()).map(|r| r.size).collect();
    let largest = axon_sizes.iter().copied().max();
    let at = |size: usize, wanted: usize| {
        if size == wanted {
            String::new()
        } else {
            format!(" (measured at {}, target is at {})", human(size), human(wanted))
        }
    };

    let latency = largest.and_then(|s| find(runs, Peer::Axon, s)).and_then(|run| {
        let f = ratio(runs, run, false)?;
        let l = ratio(runs, run, true)?;
        Some((run.size, f.max(l), f, l))
    });
    t.row(match latency {
        Some((size, worst, f, l)) => vec![
            format!("connect p50 ≤ {P50_RATIO_MAX:.2}× direct at {} services", human(TARGET_SIZE)),
            format!("first {f:.2}×, last {l:.2}×{}", at(size, TARGET_SIZE)),
            verdict(worst <= P50_RATIO_MAX, size == TARGET_SIZE),
        ],
        None => {
            vec![format!("connect p50 ≤ {P50_RATIO_MAX:.2}× direct"), "not measured".into(), "NOT MET (no data)".into()]
        }
    });

    let reach = runs.iter().find(|r| r.peer == Peer::Axon && r.add_one.is_some());
    t.row(match reach.and_then(|r| Some((r.size, r.add_one.as_ref()?.reach_ms?))) {
        Some((size, ms)) => vec![
            format!("one new service reachable ≤ {REACH_MS_MAX:.0} ms with {} present", human(REACH_SIZE)),
            format!("{ms:.1} ms{}", at(size, REACH_SIZE)),
            verdict(ms <= REACH_MS_MAX, size == REACH_SIZE),
        ],
        None => vec![
            format!("one new service reachable ≤ {REACH_MS_MAX:.0} ms"),
            "not measured".into(),
            "NOT MET (no data)".into(),
        ],
    });

    let mem = runs.iter().filter(|r| r.peer == Peer::Axon && r.memory.is_some()).max_by_key(|r| r.size);
    t.row(match mem.and_then(|r| Some((r, r.memory?))) {
        Some((run, m)) => {
            let mib = |k: u64| k as f64 / 1024.0;
            let applied = run
                .memory_applied
                .map(|a| format!("; {:.1} MiB as the apply returned", mib(a.rss_kib)))
                .unwrap_or_default();
            vec![
                format!("agent RSS ≤ {RSS_MIB_MAX:.0} MiB at {} services", human(TARGET_SIZE)),
                format!(
                    "{:.1} MiB settled{applied}; peak {:.1} MiB{}",
                    mib(m.rss_kib),
                    mib(m.hwm_kib),
                    at(run.size, TARGET_SIZE)
                ),
                verdict(mib(m.rss_kib) <= RSS_MIB_MAX, run.size == TARGET_SIZE),
            ]
        }
        None => vec![format!("agent RSS ≤ {RSS_MIB_MAX:.0} MiB"), "not measured".into(), "NOT MET (no data)".into()],
    });
    t
}

fn verdict(ok: bool, at_target_size: bool) -> String {
    match (ok, at_target_size) {
        (true, true) => "met".into(),
        (false, true) => "NOT MET".into(),
        (true, false) => "met at this size (target size not run)".into(),
        (false, false) => "NOT MET at this size (target size not run)".into(),
    }
}

fn sections(res: &Results) -> Vec<(String, Table)> {
    let r = &res.runs;
    vec![
        (
            format!(
                "connect() latency: {} sequential TCP connects per target after {} warm-up, to the first and the last service (×direct: p50 over direct's p50 at the same size)",
                res.samples, res.warmup
            ),
            latency_table(r),
        ),
        ("time to program N services (wall time: Axon bulk apply call; whole iptables-restore / nft -f run)".into(), program_table(r)),
        (format!("adding one service with {} present", human(res.add_one_at)), add_one_table(r)),
        (
            "Axon agent memory (/proc/PID/status; settled = after the bulk apply, the latency runs and, at the add-one size, the PUT; after restart = the same services restored from the store without any API request)".into(),
            memory_table(r),
        ),
        ("targets (issue #2)".into(), targets_table(r)),
    ]
}

pub fn print(res: &Results) {
    let m = &res.machine;
    println!();
    println!(
        "axon-bench: kernel {}, {} CPUs ({}), {:.1} GiB; {:.0} s; load average {} before, {} after",
        m.kernel, m.cpus, m.cpu_model, m.memory_gib, res.duration_s, res.load_start, res.load_end
    );
    for (title, table) in sections(res) {
        println!("\n{title}\n{}", table.text());
    }
}

/// The generated part of docs/benchmarks.md.
pub fn markdown(res: &Results) -> String {
    let m = &res.machine;
    let mut out = String::new();
    let _ = writeln!(out, "{BEGIN}");
    let _ = writeln!(out, "_Generated by `axon-bench` on {}; do not edit by hand between these markers._\n", m.date);
    let _ = writeln!(out, "Command: `{}` at revision `{}`\n", res.command, m.revision);
    let _ = writeln!(
        out,
        "Machine: Linux {}, {} CPUs ({}), {:.1} GiB RAM; {}; {}. Load average {} before the run, {} after. \
         Whole run: {:.0} s; limits: {} s to program one size, {} s for the add-one change.\n",
        m.kernel,
        m.cpus,
        m.cpu_model,
        m.memory_gib,
        m.iptables,
        m.nft,
        res.load_start,
        res.load_end,
        res.duration_s,
        res.program_limit_s,
        res.add_one_limit_s
    );
    for (title, table) in sections(res) {
        let _ = writeln!(out, "#### {title}\n\n{}", table.markdown());
    }
    let _ = writeln!(out, "{END}");
    out
}

/// Replaces the generated section of `path` (keeping the hand-written text
/// around it), or writes a minimal page when it has none.
pub fn write_docs(path: &Path, res: &Results) -> std::io::Result<()> {
    replace_section(path, BEGIN, END, &markdown(res), "## Service benchmark results")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_render_aligned_and_as_markdown() {
        let mut t = Table::new(&["a", "bb", "notes"]);
        t.row(vec!["1".into(), "2".into(), "n".into()]);
        assert_eq!(t.text(), "a  bb  notes\n1  2   n\n");
        assert_eq!(t.markdown(), "| a | bb | notes |\n|---|---|---|\n| 1 | 2 | n |\n");
    }
}
