//! agentctl: the command line for the Axon agent (through its API socket)
//! and for the BPF maps it pins (read directly). Shaped after `cilium`.

mod ct;
mod identity;
mod lb;
mod mesh;
mod service;
mod spec;
mod status;
mod table;

use anyhow::{Context, Result};
use axon_api::Client;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "agentctl", version, about = "Command line for the Axon agent and its BPF maps")]
struct Cli {
    /// The agent's API socket.
    #[arg(long, global = true, env = "AXON_API_SOCKET", default_value = "/run/axon/agent.sock")]
    socket: PathBuf,
    /// The agent's bpffs directory (where its maps and links are pinned).
    #[arg(long, global = true, env = "AXON_BPFFS_ROOT", default_value = "/sys/fs/bpf/axon")]
    bpffs_root: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage services (through the agent).
    #[command(subcommand, visible_alias = "svc")]
    Service(ServiceCmd),
    /// Read the BPF maps the agent pinned (works while the agent is down).
    #[command(subcommand)]
    Bpf(BpfCmd),
    /// Show what the agent loaded, where it is attached, and how full the maps are.
    Status,
    /// Security identities (numeric ids for label sets).
    #[command(subcommand, visible_alias = "id")]
    Identity(identity::IdentityCmd),
    /// This node's endpoints (pods) and their identities.
    #[command(subcommand, visible_alias = "ep")]
    Endpoint(identity::EndpointCmd),
    /// Mesh acceleration: sidecar capture and sockmap bypass per pod or namespace.
    #[command(subcommand)]
    Mesh(mesh::MeshCmd),
}

#[derive(Debug, Subcommand)]
enum ServiceCmd {
    /// List all services.
    #[command(visible_alias = "ls")]
    List,
    /// Show one service.
    Get { id: String },
    /// Delete a service.
    #[command(visible_alias = "rm")]
    Delete { id: String },
    /// Create or replace a service.
    Update(Box<spec::UpdateArgs>),
    /// Create or replace many services at once from a JSON or YAML file (`-` for stdin).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: String,
    },
}

#[derive(Debug, Subcommand)]
enum BpfCmd {
    /// The load-balancing maps.
    #[command(subcommand)]
    Lb(LbCmd),
    /// The north-south conntrack maps.
    #[command(subcommand)]
    Ct(CtCmd),
    /// The ipcache: IP → security identity.
    #[command(subcommand)]
    Ipcache(identity::IpcacheCmd),
}

#[derive(Debug, Subcommand)]
enum CtCmd {
    /// List every conntrack entry (both directions of each flow).
    #[command(visible_alias = "ls")]
    List,
    /// Delete every conntrack entry; flows still running start over.
    Flush,
}

#[derive(Debug, Subcommand)]
enum LbCmd {
    /// List every frontend and its backend slots as the kernel holds them.
    #[command(visible_alias = "ls")]
    List,
}

/// Writes `text` to stdout. A reader that went away (`agentctl ... | head`)
/// is not an error: there is nobody left to tell.
pub fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to standard output"),
        _ => Ok(()),
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    emit(&text)
}

/// A current-thread runtime: the CLI makes one request at a time.
fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.socket);
    let out = cli.output;
    match cli.command {
        Command::Service(cmd) => block_on(async {
            match cmd {
                ServiceCmd::List => service::list(&client, out).await,
                ServiceCmd::Get { id } => service::get(&client, &id, out).await,
                ServiceCmd::Delete { id } => service::delete(&client, &id, out).await,
                ServiceCmd::Update(args) => service::update(&client, &args, out).await,
                ServiceCmd::Apply { file } => service::apply(&client, &file, out).await,
            }
        }),
        Command::Bpf(BpfCmd::Lb(LbCmd::List)) => lb::list(&cli.bpffs_root, out),
        Command::Bpf(BpfCmd::Ct(CtCmd::List)) => ct::list(&cli.bpffs_root, out),
        Command::Bpf(BpfCmd::Ct(CtCmd::Flush)) => ct::flush(&cli.bpffs_root, out),
        Command::Bpf(BpfCmd::Ipcache(identity::IpcacheCmd::List)) => identity::ipcache_list(&cli.bpffs_root, out),
        Command::Status => block_on(status::show(&client, out)),
        Command::Identity(cmd) => block_on(identity::run_identity(&client, cmd, out)),
        Command::Endpoint(cmd) => block_on(identity::run_endpoint(&client, cmd, out)),
        Command::Mesh(cmd) => block_on(mesh::run(&client, cmd, out)),
    }
}

/// One line: each cause once, skipping causes a message already quotes
/// (errors that embed their source in their own text).
fn error_line(err: &anyhow::Error) -> String {
    if let Some(axon_api::ClientError::Unreachable { socket, source }) = err.downcast_ref() {
        return format!(
            "cannot reach the axon agent at {}: {} (is axon-agent running?)",
            socket.display(),
            os_message(source)
        );
    }
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// An I/O error as the C library words it, without Rust's "(os error N)".
fn os_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => text.trim_end_matches(&format!(" (os error {code})")).to_string(),
        None => text,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn unreachable_agent_is_one_line() {
        let err = axon_api::ClientError::Unreachable {
            socket: "/run/axon/agent.sock".into(),
            source: std::io::Error::from_raw_os_error(2), // ENOENT
        };
        let line = error_line(&anyhow::Error::new(err));
        assert_eq!(
            line,
            "cannot reach the axon agent at /run/axon/agent.sock: No such file or directory (is axon-agent running?)"
        );
    }

    #[test]
    fn global_flags_parse_anywhere() {
        let cli = Cli::try_parse_from(["agentctl", "service", "list", "-o", "json", "--socket", "/tmp/s"]).unwrap();
        assert_eq!((cli.output, cli.socket), (Output::Json, PathBuf::from("/tmp/s")));
        let cli = Cli::try_parse_from(["agentctl", "--bpffs-root", "/x", "bpf", "lb", "list"]).unwrap();
        assert_eq!(cli.bpffs_root, PathBuf::from("/x"));
        let cli = Cli::try_parse_from(["agentctl", "bpf", "ct", "flush", "-o", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Bpf(BpfCmd::Ct(CtCmd::Flush))));
    }
}
