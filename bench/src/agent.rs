//! One `axon-agent` instance for the bench: its own bpffs dir, API socket
//! and state dir under the run's prefix, attached to the lab's socket-LB
//! cgroup only; stopped and `--cleanup`ed on drop.

use crate::{guard, sys};
use anyhow::{bail, Context};
use hyper::Method;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Map sizes for 100k services of 2 backends: 100k × (1 master + 2 slots)
/// service entries, 200k backends, 100k rev-NAT entries, with headroom.
pub const SERVICE_MAP_MAX: u32 = 400_000;
pub const BACKEND_MAP_MAX: u32 = 262_144;
pub const REVNAT_MAP_MAX: u32 = 131_072;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Agent {
    child: Option<Child>,
    bin: PathBuf,
    cgroup: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    state_dir: PathBuf,
    pub log: PathBuf,
    extra: Vec<String>,
}

/// VmRSS and VmHWM of the agent, in KiB.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Memory {
    /// VmRSS and VmHWM of process `pid`.
    pub fn of_pid(pid: u32) -> std::io::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Memory { rss_kib: field("VmRSS:"), hwm_kib: field("VmHWM:") })
    }
}

impl Agent {
    /// Starts instance `name` and waits until `GET /v1/healthz` answers 200.
    pub fn start(
        rt: &Runtime,
        bin: &Path,
        prefix: &str,
        workdir: &Path,
        cgroup: &Path,
        name: &str,
    ) -> anyhow::Result<Agent> {
        Self::start_with(rt, bin, prefix, workdir, cgroup, name, &[])
    }

    /// Like [`Agent::start`], with `extra` flags appended (a Kubernetes source, say).
    pub fn start_with(
        rt: &Runtime,
        bin: &Path,
        prefix: &str,
        workdir: &Path,
        cgroup: &Path,
        name: &str,
        extra: &[String],
    ) -> anyhow::Result<Agent> {
        let dir = workdir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut agent = Agent {
            child: None,
            bin: bin.to_path_buf(),
            cgroup: cgroup.to_path_buf(),
            bpffs: PathBuf::from(format!("/sys/fs/bpf/{prefix}-{name}")),
            socket: dir.join("agent.sock"),
            state_dir: dir.join("state"),
            log: dir.join("agent.log"),
            extra: extra.to_vec(),
        };
        agent.spawn()?;
        agent.wait_ready(rt)?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--bpffs-root")
            .arg(&self.bpffs)
            .arg("--cgroup-root")
            .arg(&self.cgroup)
            .arg("--api-socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(["--lb-service-map-max", &SERVICE_MAP_MAX.to_string()])
            .args(["--lb-backend-map-max", &BACKEND_MAP_MAX.to_string()])
            .args(["--lb-revnat-map-max", &REVNAT_MAP_MAX.to_string()])
            // Socket-LB only: no programs on the machine's own devices.
            .args(["--devices", "none"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        sys::die_with_parent_after_exec(&mut cmd);
        let _creating = guard::creating()?;
        let child = cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        guard::register_child(child.id());
        self.child = Some(child);
        Ok(())
    }

    /// SIGTERM and start again on the same pins and store: the agent
    /// restores its services from the store, without any API request.
    pub fn restart(&mut self, rt: &Runtime) -> anyhow::Result<Duration> {
        self.terminate();
        let start = Instant::now();
        self.spawn()?;
        self.wait_ready(rt)?;
        Ok(start.elapsed())
    }

    fn wait_ready(&mut self, rt: &Runtime) -> anyhow::Result<()> {
        let client = self.client();
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "axon-agent exited during start-up ({status}); log: {}\n{}",
                        self.log.display(),
                        tail(&self.log)
                    );
                }
            }
            if let Ok((status, _)) = rt.block_on(client.request(Method::GET, axon_api::paths::HEALTHZ, None)) {
                if status.is_success() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("axon-agent not ready after {READY_TIMEOUT:?}; log: {}\n{}", self.log.display(), tail(&self.log))
    }

    pub fn client(&self) -> axon_api::Client {
        axon_api::Client::new(&self.socket)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn memory(&self) -> anyhow::Result<Memory> {
        let pid = self.pid().context("agent not running")?;
        Memory::of_pid(pid).context("reading the agent's /proc status")
    }

    /// SIGTERM, then SIGKILL if it lingers; pins and store stay.
    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            sys::signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            guard::forget_child(child.id());
        }
    }

    /// Stops the agent, then removes its pins, links and store.
    pub fn stop(&mut self) {
        self.terminate();
        let _ = Command::new(&self.bin)
            .arg("--cleanup")
            .arg("--bpffs-root")
            .arg(&self.bpffs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if guard::stopping() {
            return;
        }
        self.stop();
    }
}

/// The last lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
