//! The bench's lab: a backend netns with the backend server, a fresh client
//! netns per measured peer (so no peer inherits another's netfilter state,
//! e.g. conntrack kept alive by a legacy nat table), the two cgroups the
//! clients run in, and the sweep that removes all of it. Every name starts
//! with `axb<pid>` so concurrent runs never collide and leftovers of a dead
//! run are recognisable.

use crate::workload::{POD_NET, VIP_NET};
use crate::{guard, sys};
use anyhow::{bail, Context};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Prefix of everything every bench run creates.
pub const PREFIX: &str = "axb";
const NETNS_DIR: &str = "/run/netns";
const BPFFS: &str = "/sys/fs/bpf";

/// Runs `ip` with `args`; its stderr becomes the error.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out =
        Command::new("ip").args(args).stdin(Stdio::null()).output().context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The cgroup2 mount point, from /proc/self/mountinfo (`/sys/fs/cgroup` on
/// unified hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            if post.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            pre.split_whitespace().nth(4).map(PathBuf::from)
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

pub struct Lab {
    pub prefix: String,
    pub backend_ns: String,
    /// Clients of the Axon peer run here; the agent attaches to it.
    pub cg_lb: PathBuf,
    /// Clients of every other peer run here, outside socket-LB's reach.
    pub cg_plain: PathBuf,
    pub workdir: PathBuf,
    server: Option<Child>,
    next_client: u32,
}

/// One client netns, veth-linked to the backend netns; deleted on drop.
pub struct ClientNet {
    pub name: String,
    pub path: PathBuf,
    veth: String,
}

impl Lab {
    /// Builds the backend side and starts the backend server.
    pub fn up(exe: &Path, backend_port: u16) -> anyhow::Result<Lab> {
        let prefix = format!("{PREFIX}{}", std::process::id());
        let cg_root = cgroup2_mount()?;
        let workdir = std::env::temp_dir().join(&prefix);
        let mut lab = Lab {
            backend_ns: format!("{prefix}-be"),
            cg_lb: cg_root.join(format!("{prefix}-lb")),
            cg_plain: cg_root.join(format!("{prefix}-plain")),
            workdir,
            prefix,
            server: None,
            next_client: 0,
        };
        let _creating = guard::creating()?;
        std::fs::create_dir_all(&lab.workdir).with_context(|| format!("creating {}", lab.workdir.display()))?;
        for cg in [&lab.cg_lb, &lab.cg_plain] {
            std::fs::create_dir(cg).with_context(|| format!("creating cgroup {}", cg.display()))?;
        }
        let ns = lab.backend_ns.clone();
        ip(&["netns", "add", &ns])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        // Every pod address is local here: one listener is every backend.
        ip(&["-n", &ns, "route", "add", "local", POD_NET, "dev", "lo"])?;
        // VIPs are local too but nothing listens on their port: a connect the
        // peer did not translate is refused at once instead of hanging.
        ip(&["-n", &ns, "route", "add", "local", VIP_NET, "dev", "lo"])?;
        lab.server = Some(start_server(exe, &lab.netns_path(&ns), backend_port)?);
        info!(netns = %ns, "backend netns up, server listening on :{backend_port}");
        Ok(lab)
    }

    pub fn netns_path(&self, name: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(name)
    }

    /// A fresh client netns: veth to the backend netns, routes to the pod
    /// range and the VIP range through it, and no default route.
    pub fn client_net(&mut self) -> anyhow::Result<ClientNet> {
        self.next_client += 1;
        let k = self.next_client;
        if k > 250 {
            bail!("more client namespaces than the address plan holds");
        }
        let name = format!("{}-c{k}", self.prefix);
        let veth = format!("{}c{k}", self.prefix);
        let peer = format!("{}b{k}", self.prefix);
        let _creating = guard::creating()?;
        ip(&["netns", "add", &name])?;
        let net = ClientNet { path: self.netns_path(&name), name: name.clone(), veth: veth.clone() };
        // Created inside the client netns with its peer put straight into the
        // backend netns: the host's own namespace never sees either end.
        ip(&["-n", &name, "link", "add", &veth, "type", "veth", "peer", "name", &peer, "netns", &self.backend_ns])?;
        let (client_ip, gw) = (format!("10.132.{k}.1/30"), format!("10.132.{k}.2"));
        ip(&["-n", &self.backend_ns, "addr", "add", &format!("{gw}/30"), "dev", &peer])?;
        ip(&["-n", &self.backend_ns, "link", "set", &peer, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&["-n", &name, "addr", "add", &client_ip, "dev", &veth])?;
        ip(&["-n", &name, "link", "set", &veth, "up"])?;
        ip(&["-n", &name, "route", "add", POD_NET, "via", &gw])?;
        ip(&["-n", &name, "route", "add", VIP_NET, "via", &gw])?;
        debug!(netns = %name, "client netns up");
        Ok(net)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if guard::stopping() {
            return;
        }
        if let Some(mut child) = self.server.take() {
            guard::forget_child(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = ip(&["netns", "del", &self.backend_ns]) {
            warn!("{e}");
        }
        for cg in [&self.cg_lb, &self.cg_plain] {
            remove_cgroup(cg);
        }
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}

impl Drop for ClientNet {
    fn drop(&mut self) {
        if guard::stopping() {
            return;
        }
        // Deleting the link first removes both veth ends synchronously;
        // netns teardown alone is deferred by the kernel.
        let _ = ip(&["-n", &self.name, "link", "del", &self.veth]);
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            warn!("{e}");
        }
    }
}

fn start_server(exe: &Path, netns: &Path, port: u16) -> anyhow::Result<Child> {
    let mut child = Command::new(exe)
        .args(["serve", "--netns"])
        .arg(netns)
        .args(["--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the backend server")?;
    guard::register_child(child.id());
    let stdout = child.stdout.take().context("server stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).context("waiting for the backend server")?;
    if line.trim() != "ready" {
        let _ = child.kill();
        let status = child.wait().ok();
        bail!("backend server did not start ({status:?})");
    }
    Ok(child)
}

/// rmdir a cgroup once the helpers in it have gone (they are reaped before,
/// but the kernel updates cgroup.procs lazily).
fn remove_cgroup(cg: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    warn!(cgroup = %cg.display(), "could not remove cgroup");
}

/// The pid in an `axb<pid>...` name.
fn owner_pid(name: &str) -> Option<u32> {
    let digits: String = name.strip_prefix(PREFIX)?.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Whether `name` belongs to a bench run that is gone (or, with `all`, to
/// this run as well).
fn stale(name: &str, own: Option<&str>) -> bool {
    match owner_pid(name) {
        None => false,
        Some(_)
            if own
                .is_some_and(|p| name.starts_with(p) && !name[p.len()..].starts_with(|c: char| c.is_ascii_digit())) =>
        {
            true
        }
        Some(pid) => !sys::process_is(pid, "axon-bench"),
    }
}

/// Removes every namespace, cgroup, bpffs dir and workdir of dead runs, and
/// of the run `own` (the prefix of this one) when given. Processes left in
/// those namespaces/cgroups are ours (helpers of that run): they are killed
/// by pid before their namespace goes.
pub fn sweep(own: Option<&str>, agent_bin: Option<&Path>) {
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if stale(&name, own) {
                kill_netns_pids(&name);
                let _ = ip(&["netns", "del", &name]);
                info!(netns = %name, "removed leftover netns");
            }
        }
    }
    if let Ok(root) = cgroup2_mount() {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if stale(&name, own) && e.path().is_dir() {
                kill_cgroup_pids(&e.path());
                remove_cgroup(&e.path());
            }
        }
    }
    for e in std::fs::read_dir(BPFFS).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if stale(&name, own) {
            if let Some(bin) = agent_bin {
                let _ = Command::new(bin)
                    .arg("--cleanup")
                    .arg("--bpffs-root")
                    .arg(e.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = std::fs::remove_dir_all(e.path());
            info!(dir = %e.path().display(), "removed leftover bpffs dir");
        }
    }
    for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if stale(&name, own) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn kill_netns_pids(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
        sys::signal(pid, libc::SIGKILL);
    }
}

fn kill_cgroup_pids(cg: &Path) {
    let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.split_whitespace().filter_map(|p| p.parse().ok()) {
        sys::signal(pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_prefix() {
        assert_eq!(owner_pid("axb1234-c3"), Some(1234));
        assert_eq!(owner_pid("axb77c1"), Some(77));
        assert_eq!(owner_pid("axt-1"), None);
        assert_eq!(owner_pid("axbfoo"), None);
    }

    #[test]
    fn own_prefix_is_stale_but_not_a_longer_pid() {
        assert!(stale("axb12-c1", Some("axb12")));
        assert!(stale("axb12c1", Some("axb12")));
    }
}
