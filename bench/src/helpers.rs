//! Spawning processes into the lab from the orchestrator: our own client
//! helpers (latency, reachability), which enter the netns/cgroup
//! themselves, and external tools (iptables-*-restore, nft), which are moved
//! into the client netns between fork and exec, so the measured time is the
//! tool's alone, without `ip netns exec`.

use crate::lab::ClientNet;
use crate::probe::{Paired, ReachReport, Target};
use crate::{guard, sys, workload};
use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Where a helper's connections come from.
pub struct Placement<'a> {
    pub net: &'a ClientNet,
    pub cgroup: &'a Path,
}

impl Placement<'_> {
    fn args(&self, cmd: &mut Command) {
        cmd.arg("--netns").arg(&self.net.path).arg("--cgroup").arg(self.cgroup);
    }
}

/// One latency target: where to connect and who may answer.
pub type Dest = (SocketAddrV4, Vec<SocketAddrV4>);

/// Latency to each target, measured by a client helper; with `baseline`,
/// direct connects from there are interleaved with the peer's.
pub fn latency(
    exe: &Path,
    at: &Placement,
    targets: &[Dest],
    baseline: Option<(&Placement, &[Dest])>,
    samples: usize,
    warmup: usize,
    max_seconds: u64,
) -> anyhow::Result<Vec<Paired>> {
    let mut cmd = Command::new(exe);
    cmd.arg("client");
    at.args(&mut cmd);
    cmd.args([
        "--samples",
        &samples.to_string(),
        "--warmup",
        &warmup.to_string(),
        "--max-seconds",
        &max_seconds.to_string(),
    ]);
    for (addr, expect) in targets {
        cmd.args(["--target", &workload::target_arg(*addr, expect)]);
    }
    if let Some((base, dests)) = baseline {
        cmd.arg("--baseline-netns").arg(&base.net.path).arg("--baseline-cgroup").arg(base.cgroup);
        for (addr, expect) in dests {
            cmd.args(["--baseline-target", &workload::target_arg(*addr, expect)]);
        }
    }
    let creating = guard::creating()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the client helper")?;
    let pid = child.id();
    guard::register_child(pid);
    drop(creating);
    let out = child.wait_with_output().context("running the client helper")?;
    guard::forget_child(pid);
    if !out.status.success() {
        bail!("client helper failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("decoding the client helper's report")
}

/// A reachability probe that has entered the lab and is connecting.
pub struct Reach {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Reach {
    pub fn start(exe: &Path, at: &Placement, target: &Target, timeout: Duration) -> anyhow::Result<Reach> {
        let mut cmd = Command::new(exe);
        cmd.arg("reach");
        at.args(&mut cmd);
        let expect: Vec<_> = target.expect.clone();
        cmd.args([
            "--target",
            &workload::target_arg(target.addr, &expect),
            "--timeout-ms",
            &timeout.as_millis().to_string(),
        ]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the reach probe")?;
        guard::register_child(child.id());
        let mut stdout = BufReader::new(child.stdout.take().context("probe stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line).context("waiting for the reach probe")?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            guard::forget_child(child.id());
            bail!("reach probe did not start");
        }
        Ok(Reach { child, stdout })
    }

    pub fn finish(mut self) -> anyhow::Result<ReachReport> {
        let mut text = String::new();
        self.stdout.read_to_string(&mut text).context("reading the reach probe's report")?;
        let _ = self.child.wait();
        guard::forget_child(self.child.id());
        serde_json::from_str(text.trim()).with_context(|| format!("decoding the reach probe's report {text:?}"))
    }
}

/// How an external tool's run ended.
pub enum ToolRun {
    Done(Duration),
    TimedOut(Duration),
}

/// Runs `program args` inside `net`, timing it from spawn to exit; killed
/// after `limit`. Output goes to `log`; a failure is an error quoting it.
pub fn tool(net: &ClientNet, program: &str, args: &[&str], limit: Duration, log: &Path) -> anyhow::Result<ToolRun> {
    let ns = sys::open_netns(&net.path).with_context(|| format!("opening {}", net.path.display()))?;
    let ns_fd = ns.as_raw_fd();
    let log_file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(log_file.try_clone()?).stderr(log_file);
    // SAFETY: setns(2) and prctl(2) only, between fork and exec; the fd
    // stays open in the parent until the child has been spawned.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let creating = guard::creating()?;
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    drop(ns);
    let pid = child.id();
    guard::register_child(pid);
    drop(creating);
    // Waiting in a thread gives the exit time exactly, and a timeout.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((status, start.elapsed()));
    });
    let outcome = match rx.recv_timeout(limit) {
        Ok((status, took)) => {
            let status = status.with_context(|| format!("waiting for {program}"))?;
            if !status.success() {
                bail!("{program} {} failed ({status}):\n{}", args.join(" "), crate::agent::tail(log));
            }
            ToolRun::Done(took)
        }
        Err(_) => {
            sys::signal(pid, libc::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(30));
            ToolRun::TimedOut(limit)
        }
    };
    guard::forget_child(pid);
    Ok(outcome)
}

/// Writes a generated document where a tool can read it.
pub fn write_doc(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
