//! An `axon-agent` for one test: its own bpffs directory, API socket and
//! state directory, attached to the test's cgroup only — and, for a lab node,
//! running inside that node's network namespace. It can be stopped
//! gracefully, killed, and started again on the same directories; dropping
//! the guard kills it and runs `axon-agent --cleanup`, so no program, link or
//! pin outlives the test. Also runs `agentctl` against it.

use crate::bins;
use crate::error::{IoContext, LabError, Result};
use crate::netns::Netns;
use axon_api::{Client, ClientError, Service, ServiceSpec, Status};
use hyper::Method;
use std::fs::OpenOptions;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Where bpffs is expected; mounted there if it is not.
pub const BPFFS: &str = "/sys/fs/bpf";
const HEALTHY_WITHIN: Duration = Duration::from_secs(20);
const STOP_WITHIN: Duration = Duration::from_secs(15);
const CMD_WITHIN: Duration = Duration::from_secs(30);

/// Knobs for the agent's command line.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    pub max_backends_per_service: Option<u32>,
    /// `--node-name`: which backends are local (a backend's `node`).
    pub node_name: Option<String>,
    /// `--devices`: the node devices the north-south programs attach to.
    pub devices: Vec<String>,
    /// `--lb-mode`: the default north-south mode.
    pub lb_mode: Option<LbMode>,
    /// `--lb-algorithm`: the default backend selection.
    pub lb_algorithm: Option<LbAlgorithm>,
    /// `--xdp-mode`.
    pub xdp_mode: Option<XdpSetting>,
    /// `--nodeport-range MIN-MAX`.
    pub nodeport_range: Option<(u16, u16)>,
    /// Appended to the command line as they are.
    pub extra_args: Vec<String>,
    /// `--k8s-kubeconfig`: serve Services from this Kubernetes API server.
    pub k8s_kubeconfig: Option<std::path::PathBuf>,
}

impl AgentOptions {
    /// The flags these options add to the agent's command line.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut flag = |name: &str, value: String| {
            args.push(name.to_string());
            args.push(value);
        };
        if let Some(n) = self.max_backends_per_service {
            flag("--max-backends-per-service", n.to_string());
        }
        if let Some(name) = &self.node_name {
            flag("--node-name", name.clone());
        }
        // No devices named: socket-LB only. The agent's own default (`auto`)
        // would attach to the default-route device of the netns it runs in,
        // which for single-node labs is the machine's own.
        let devices = if self.devices.is_empty() { "none".to_string() } else { self.devices.join(",") };
        flag("--devices", devices);
        if let Some(m) = self.lb_mode {
            flag("--lb-mode", m.as_str().into());
        }
        if let Some(a) = self.lb_algorithm {
            flag("--lb-algorithm", a.as_str().into());
        }
        if let Some(x) = self.xdp_mode {
            flag("--xdp-mode", x.as_str().into());
        }
        if let Some((min, max)) = self.nodeport_range {
            flag("--nodeport-range", format!("{min}-{max}"));
        }
        if let Some(k) = &self.k8s_kubeconfig {
            flag("--k8s-kubeconfig", k.display().to_string());
        }
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Adds raw flags (builder style).
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// North-south load-balancing mode (`--lb-mode`, and a service's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbMode {
    Snat,
    Dsr,
    Hybrid,
}

impl LbMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMode::Snat => "snat",
            LbMode::Dsr => "dsr",
            LbMode::Hybrid => "hybrid",
        }
    }
}

/// Backend selection (`--lb-algorithm`, and a service's `algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbAlgorithm {
    Random,
    Maglev,
}

impl LbAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            LbAlgorithm::Random => "random",
            LbAlgorithm::Maglev => "maglev",
        }
    }
}

/// Where the north-south entry runs (`--xdp-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpSetting {
    /// XDP in the driver; the agent fails if a device cannot.
    Native,
    /// Native where the device allows, tc elsewhere.
    BestEffort,
    /// Generic (skb) XDP.
    Generic,
    /// tc only.
    Disabled,
}

impl XdpSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpSetting::Native => "native",
            XdpSetting::BestEffort => "best-effort",
            XdpSetting::Generic => "generic",
            XdpSetting::Disabled => "disabled",
        }
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

impl std::fmt::Display for CmdOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- stdout ---\n{}\n--- stderr ---\n{}", self.status, self.stdout, self.stderr)
    }
}

/// A running (or stopped, restartable) agent.
#[derive(Debug)]
pub struct Agent {
    bin: PathBuf,
    bpffs_root: PathBuf,
    cgroup_root: PathBuf,
    work_dir: PathBuf,
    api_socket: PathBuf,
    state_dir: PathBuf,
    log_path: PathBuf,
    opts: AgentOptions,
    /// The network namespace the agent runs in (a node's), when not the test's own.
    netns: Option<OwnedFd>,
    child: Option<Child>,
    api: Client,
    rt: tokio::runtime::Runtime,
}

impl Agent {
    /// Starts an agent whose directories are named after `id`, attached to
    /// `cgroup_root`, and waits until `/v1/healthz` answers.
    pub fn start(id: &str, cgroup_root: &Path, opts: AgentOptions) -> Result<Agent> {
        Self::start_in(id, cgroup_root, None, opts)
    }

    /// Like [`Agent::start`], with the agent inside `netns` (entered with
    /// `setns` between fork and exec, so `/sys` and its bpffs and cgroup2
    /// mounts stay as they are — unlike `ip netns exec`). Restarts and the
    /// final cleanup run there too.
    pub fn start_in(id: &str, cgroup_root: &Path, netns: Option<&Netns>, opts: AgentOptions) -> Result<Agent> {
        let netns = match netns {
            Some(ns) => Some(ns.dup_fd()?),
            None => None,
        };
        let bin = bins::binary("axon-agent")?;
        ensure_bpffs()?;
        let work_dir = std::env::temp_dir().join(id);
        let state_dir = work_dir.join("state");
        std::fs::create_dir_all(&state_dir).ctx(|| format!("creating {}", state_dir.display()))?;
        let bpffs_root = Path::new(BPFFS).join(id);
        std::fs::create_dir_all(&bpffs_root).ctx(|| format!("creating {}", bpffs_root.display()))?;
        let api_socket = work_dir.join("agent.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ctx(|| "building the API client runtime".into())?;
        let mut agent = Agent {
            bin,
            bpffs_root,
            cgroup_root: cgroup_root.to_path_buf(),
            log_path: work_dir.join("agent.log"),
            api: Client::new(&api_socket),
            work_dir,
            api_socket,
            state_dir,
            opts,
            netns,
            child: None,
            rt,
        };
        agent.start_again()?;
        Ok(agent)
    }

    pub fn bpffs_root(&self) -> &Path {
        &self.bpffs_root
    }

    pub fn api_socket(&self) -> &Path {
        &self.api_socket
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    pub fn options(&self) -> &AgentOptions {
        &self.opts
    }

    /// Changes the options the next [`Agent::start_again`] uses.
    pub fn set_options(&mut self, opts: AgentOptions) {
        self.opts = opts;
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the agent wrote to stderr/stdout, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Starts the agent (again) on the same directories and waits until healthy.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Err(self.error("start_again: the agent is already running".into()));
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .ctx(|| format!("opening {}", self.log_path.display()))?;
        let log2 = log.try_clone().ctx(|| "duplicating the log file".into())?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--bpffs-root")
            .arg(&self.bpffs_root)
            .arg("--cgroup-root")
            .arg(&self.cgroup_root)
            .arg("--api-socket")
            .arg(&self.api_socket)
            .arg("--state-dir")
            .arg(&self.state_dir);
        cmd.args(self.opts.args());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        die_with_parent(&mut cmd);
        enter_netns(&mut cmd, self.netns.as_ref());
        let child = cmd.spawn().ctx(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_healthy()
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + HEALTHY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(self.error(format!("exited before becoming healthy: {status}")));
                }
            }
            if self.healthy() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.error(format!("not healthy after {HEALTHY_WITHIN:?} (GET /v1/healthz)")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /v1/healthz` answers 2xx right now.
    pub fn healthy(&self) -> bool {
        let probe = self.api.request(Method::GET, axon_api::paths::HEALTHZ, None);
        matches!(
            self.rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), probe).await }),
            Ok(Ok((status, _))) if status.is_success()
        )
    }

    /// SIGTERM (graceful: programs stay pinned and keep serving) and wait for the exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.signal_and_wait(libc::SIGTERM, STOP_WITHIN)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal_and_wait(libc::SIGKILL, STOP_WITHIN)
    }

    /// SIGTERM, then start again on the same directories.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_again()
    }

    /// SIGKILL, then start again on the same directories.
    pub fn restart_killed(&mut self) -> Result<()> {
        self.kill()?;
        self.start_again()
    }

    fn signal_and_wait(&mut self, sig: i32, within: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(self.error("the agent is not running".into()));
        };
        // SAFETY: signalling our own child, which we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().ctx(|| "waiting for axon-agent".into())? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(self.error(format!("did not exit within {within:?} of signal {sig}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The API client (async; drive it with [`Agent::block_on`]).
    pub fn api(&self) -> &Client {
        &self.api
    }

    /// Runs an API future to completion on the guard's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A raw request: status code and body (JSON when it parses, else a string).
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, serde_json::Value)> {
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|e| LabError::Setup(format!("method {method}: {e}")))?;
        let (status, bytes) = self
            .rt
            .block_on(self.api.request(method, path, body.map(|b| b.as_bytes().to_vec())))
            .map_err(|e| self.error(format!("request {path}: {e}")))?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status.as_u16(), body))
    }

    pub fn list_services(&self) -> std::result::Result<Vec<Service>, ClientError> {
        self.rt.block_on(self.api.list_services())
    }

    pub fn get_service(&self, id: u32) -> std::result::Result<Service, ClientError> {
        self.rt.block_on(self.api.get_service(id))
    }

    pub fn put_service(&self, id: u32, spec: &ServiceSpec) -> std::result::Result<Service, ClientError> {
        self.rt.block_on(self.api.put_service(id, spec))
    }

    pub fn create_service(&self, spec: &ServiceSpec) -> std::result::Result<Service, ClientError> {
        self.rt.block_on(self.api.create_service(spec))
    }

    pub fn delete_service(&self, id: u32) -> std::result::Result<Service, ClientError> {
        self.rt.block_on(self.api.delete_service(id))
    }

    pub fn apply(&self, services: Vec<ServiceSpec>) -> std::result::Result<Vec<Service>, ClientError> {
        self.rt.block_on(self.api.apply(services))
    }

    pub fn status(&self) -> std::result::Result<Status, ClientError> {
        self.rt.block_on(self.api.status())
    }

    /// Every entry of the pinned LB maps, read straight from bpffs.
    pub fn lb_maps(&self) -> Result<axon_bpf::pinned::LbMapsDump> {
        axon_bpf::pinned::read_lb_maps(&self.bpffs_root)
            .map_err(|e| LabError::Setup(format!("reading pinned maps: {e}")))
    }

    /// `agentctl --socket <sock> --bpffs-root <dir> <args>`.
    pub fn agentctl(&self, args: &[&str]) -> Result<CmdOutput> {
        let mut cmd = Command::new(bins::binary("agentctl")?);
        cmd.arg("--socket").arg(&self.api_socket).arg("--bpffs-root").arg(&self.bpffs_root).args(args);
        run_with_timeout(cmd, CMD_WITHIN)
    }

    fn error(&self, message: String) -> LabError {
        LabError::Agent { message, log: self.log_path.clone(), stderr: self.log() }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        cleanup_bpffs_in(&self.bin, &self.bpffs_root, self.netns.as_ref());
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// `axon-agent --cleanup --bpffs-root <dir>`, then whatever is left of the dir.
pub(crate) fn cleanup_bpffs(bin: &Path, bpffs_root: &Path) {
    cleanup_bpffs_in(bin, bpffs_root, None)
}

/// [`cleanup_bpffs`] run inside `netns` (where the agent attached to devices).
fn cleanup_bpffs_in(bin: &Path, bpffs_root: &Path, netns: Option<&OwnedFd>) {
    let mut cmd = Command::new(bin);
    cmd.arg("--cleanup").arg("--bpffs-root").arg(bpffs_root);
    enter_netns(&mut cmd, netns);
    match run_with_timeout(cmd, CMD_WITHIN) {
        Ok(out) if out.success() => {}
        Ok(out) => eprintln!("lab: axon-agent --cleanup --bpffs-root {} failed: {out}", bpffs_root.display()),
        Err(e) => eprintln!("lab: axon-agent --cleanup: {e}"),
    }
    if bpffs_root.exists() {
        if let Err(e) = std::fs::remove_dir_all(bpffs_root) {
            eprintln!("lab: removing {}: {e}", bpffs_root.display());
        }
    }
}

/// Runs `cmd` to the end, capturing its output; killed after `limit`.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Result<CmdOutput> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().ctx(|| format!("starting {what}"))?;
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>));
    let err = drain(child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().ctx(|| format!("waiting for {what}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Setup(format!("{what} did not finish within {limit:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(CmdOutput { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}

/// The child gets SIGKILL if the test thread that started it goes away, so a
/// crashed test leaves no agent behind.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The child enters `netns` (if given) between fork and exec.
fn enter_netns(cmd: &mut Command, netns: Option<&OwnedFd>) {
    let Some(fd) = netns.map(|f| f.as_raw_fd()) else {
        return;
    };
    // SAFETY: setns is async-signal-safe; the fd stays open (held by the
    // Agent) until the spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Mounts bpffs at [`BPFFS`] unless it is there already.
pub fn ensure_bpffs() -> Result<()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mounted = crate::cgroup::find_mounts("bpf")?.iter().any(|p| p == Path::new(BPFFS));
    if mounted {
        return Ok(());
    }
    // SAFETY: all pointers are NUL-terminated literals.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), c"/sys/fs/bpf".as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(LabError::io(format!("mounting bpffs at {BPFFS}"), std::io::Error::last_os_error()));
    }
    Ok(())
}
