//! An `axon-agent` inside a node's network namespace (entered with setns(2)
//! between fork and exec — never `ip netns exec`, which remounts /sys and
//! hides bpffs and cgroup2): its own bpffs dir (named like the netns, so a
//! sweep can clean it there), API socket, state dir and child cgroup. Stopped
//! and `--cleanup`ed on drop, which detaches its tc/XDP links.

use super::lab;
use anyhow::{bail, Context};
use axon_api::ServiceSpec;
use hyper::Method;
use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// SNAT source ports: everything above the NodePort range, like Cilium's
/// default (the agent's own default, 61000-65535, holds 4.5k ports per
/// backend, which new connections at bench rates exhaust within its 10 s
/// close timeout; kube-proxy's MASQUERADE draws from 1024-65535).
pub const SNAT_PORT_RANGE: &str = "32768-65535";

/// How the agent runs north-south: `--xdp-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Disabled,
    Generic,
    Native,
}

impl XdpMode {
    pub fn flag(self) -> &'static str {
        match self {
            XdpMode::Disabled => "disabled",
            XdpMode::Generic => "generic",
            XdpMode::Native => "native",
        }
    }
}

pub struct NodeAgent {
    bin: PathBuf,
    netns: String,
    child: Option<Child>,
    bpffs: PathBuf,
    cgroup: PathBuf,
    workdir: PathBuf,
    pub log: PathBuf,
    client: axon_api::Client,
    rt: Runtime,
}

impl NodeAgent {
    /// Starts an agent in netns `netns` for node `node_name` on `devices`
    /// (comma-separated), and waits until `/v1/healthz` answers.
    pub fn start(
        bin: &Path,
        netns: &str,
        node_name: &str,
        devices: &str,
        xdp: XdpMode,
        run_dir: &Path,
    ) -> anyhow::Result<NodeAgent> {
        lab::ensure_bpffs()?;
        let workdir = run_dir.join(netns);
        std::fs::create_dir_all(workdir.join("state")).with_context(|| format!("creating {}", workdir.display()))?;
        let cgroup = lab::cgroup2_mount()?.join(netns);
        {
            let _creating = lab::creating()?;
            std::fs::create_dir_all(&cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let socket = workdir.join("agent.sock");
        let mut agent = NodeAgent {
            bin: bin.to_path_buf(),
            netns: netns.to_string(),
            child: None,
            bpffs: Path::new(lab::BPFFS).join(netns),
            cgroup,
            log: workdir.join("agent.log"),
            client: axon_api::Client::new(&socket),
            workdir,
            rt,
        };
        agent.spawn(node_name, devices, xdp, &socket)?;
        agent.wait_ready()?;
        Ok(agent)
    }

    fn spawn(&mut self, node_name: &str, devices: &str, xdp: XdpMode, socket: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--bpffs-root")
            .arg(&self.bpffs)
            .arg("--cgroup-root")
            .arg(&self.cgroup)
            .arg("--api-socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(self.workdir.join("state"))
            .args(["--devices", devices, "--node-name", node_name, "--xdp-mode", xdp.flag()])
            .args(["--snat-port-range", SNAT_PORT_RANGE, "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let ns = super::sys::open_netns(&self.netns).with_context(|| format!("opening netns {}", self.netns))?;
        let raw = ns.as_raw_fd();
        // SAFETY: only prctl(2) and setns(2) between fork and exec; `ns`
        // stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let _creating = lab::creating()?;
        let child = cmd.spawn().with_context(|| format!("starting {}", self.bin.display()))?;
        lab::register_child(child.id());
        self.child = Some(child);
        Ok(())
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().map(Child::try_wait).transpose()?.flatten() {
                bail!("axon-agent in {} exited during start-up ({status}):\n{}", self.netns, self.log_tail());
            }
            let probe = self.client.request(Method::GET, axon_api::paths::HEALTHZ, None);
            if let Ok((status, _)) = self.rt.block_on(probe) {
                if status.is_success() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("axon-agent in {} not ready after {READY_TIMEOUT:?}:\n{}", self.netns, self.log_tail())
    }

    /// Replaces the agent's services with `services` (one bulk apply).
    pub fn apply(&self, services: Vec<ServiceSpec>) -> anyhow::Result<()> {
        self.rt
            .block_on(self.client.apply(services))
            .map(|_| ())
            .with_context(|| format!("applying services to the agent in {}", self.netns))
    }

    /// The datapath counters of `/v1/status` (summed over CPUs).
    pub fn counters(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let status = self.rt.block_on(self.client.status()).context("agent status")?;
        Ok(status.counters)
    }

    /// The agent's bpffs dir (maps and link pins).
    pub fn bpffs(&self) -> &Path {
        &self.bpffs
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            super::sys::signal(child.id(), libc::SIGTERM);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            lab::forget_child(child.id());
        }
        lab::cleanup_bpffs(&self.bin, &self.bpffs);
        lab::remove_cgroup(&self.cgroup);
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        if lab::stopping() {
            return;
        }
        self.stop();
    }
}
