//! `axon-bench-mesh`: sidecar mesh traffic through istio-iptables-style
//! REDIRECT + Envoy (the baseline), Axon's cgroup capture + Envoy, and Axon's
//! capture + sockmap bypass + Envoy, side by side in one lab with the same
//! pods and the same Envoys; wrk keep-alive and new-connection, and a
//! streaming sweep of write sizes. Results go to the terminal and between
//! this bench's markers in docs/benchmarks.md.

#[path = "../docs_section.rs"]
mod docs_section;
#[path = "../mesh/mod.rs"]
mod mesh;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "axon-bench-mesh", about = "Benchmark sidecar capture: iptables vs Axon capture vs Axon + sockmap")]
struct Cli {
    /// Interleaved repetitions; each cell reports the median.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Milliseconds per streamed message size.
    #[arg(long, default_value_t = 1500)]
    stream_ms: u64,
    /// wrk connections of the keep-alive runs, comma-separated: a
    /// latency-bound and a CPU-bound load (the new-connection run uses the first).
    #[arg(long, value_delimiter = ',', default_value = "8,32")]
    connections: Vec<u32>,
    /// Short runs (one round, 2 s wrk, 500 ms streams).
    #[arg(long)]
    quick: bool,
    /// Only the streaming sweep, no wrk runs (implies --docs -).
    #[arg(long)]
    streams_only: bool,
    /// Print the datapath's mesh counters after each stream.
    #[arg(long)]
    verbose: bool,
    /// Run only this scenario (direct, iptables, capture, bypass); repeatable. Implies --docs -.
    #[arg(long = "only", value_parser = parse_scenario)]
    only: Vec<mesh::Scenario>,
    /// Where the results section goes ("-" for nowhere).
    #[arg(long, default_value = "docs/benchmarks.md")]
    docs: PathBuf,
}

const START: &str = "<!-- mesh-bench:start -->";
const END: &str = "<!-- mesh-bench:end -->";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let opts = mesh::Options {
        rounds: if cli.quick { 1 } else { cli.rounds },
        duration: Duration::from_secs(if cli.quick { 2 } else { cli.duration }),
        stream_duration: Duration::from_millis(if cli.quick { 500 } else { cli.stream_ms }),
        connections: cli.connections.clone(),
        streams_only: cli.streams_only,
        verbose: cli.verbose,
        only: cli.only.clone(),
    };
    let results = mesh::run(&opts)?;
    // What reproduces the run from a checkout (as `make bench` runs it), not this binary's path.
    let command = std::iter::once("cargo run --release -p axon-bench --bin axon-bench-mesh --".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let section = mesh::report(&results, &command, &opts);
    println!("{section}");
    if cli.docs.as_os_str() != "-" && !cli.streams_only && cli.only.is_empty() {
        let block = format!("{START}\n{section}{END}");
        docs_section::replace_section(
            &cli.docs,
            START,
            END,
            &block,
            "## Mesh acceleration: measured (`axon-bench-mesh`)",
        )
        .with_context(|| format!("writing {}", cli.docs.display()))?;
    }
    Ok(())
}

fn parse_scenario(name: &str) -> Result<mesh::Scenario, String> {
    mesh::Scenario::parse(name).ok_or_else(|| format!("unknown scenario {name:?}: direct, iptables, capture or bypass"))
}
