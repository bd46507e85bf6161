//! Naming, teardown and leftovers of a run. Everything a run creates — network
//! namespaces, cgroups, bpffs dirs, work dirs — is named `axn<pid>-…`, so
//! runs never collide and what a killed run left is recognisable (its pid is
//! gone). Drop guards tear down on normal exit and panic; Ctrl-C/SIGTERM go
//! through [`install_signal_guard`], which kills our helper processes by pid
//! and sweeps this run's names before exiting.

use super::sys;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tracing::{info, warn};

/// Prefix of every name a run creates; the pid follows, then `-`.
pub const PREFIX: &str = "axn";
/// Our command name as /proc shows it (15 characters of `axon-bench-nodeport`).
const COMM: &str = "axon-bench-node";
pub const BPFFS: &str = "/sys/fs/bpf";

/// `axn<pid>`: the stem of this run's names.
pub fn run_id() -> String {
    format!("{PREFIX}{}", std::process::id())
}

/// The pid in an `axn<pid>-…` name; `None` for anything else (`axns…`,
/// `axnp-…` belong to other labs).
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    if digits.is_empty() || !rest[digits.len()..].starts_with('-') {
        return None;
    }
    digits.parse().ok()
}

/// Whether `name` belongs to a run that is gone, or to run `own`.
fn stale(name: &str, own: Option<&str>) -> bool {
    match owner_pid(name) {
        None => false,
        Some(_) if own.is_some_and(|o| name.starts_with(&format!("{o}-"))) => true,
        Some(pid) => !sys::process_is(pid, COMM),
    }
}

/// Runs `ip` with `args`; its stderr becomes the error.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        anyhow::bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The cgroup2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .ok_or_else(|| anyhow::anyhow!("no cgroup2 mount in /proc/self/mountinfo"))
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mounted = info.lines().any(|l| {
        l.split_once(" - ")
            .is_some_and(|(pre, post)| post.starts_with("bpf ") && pre.split_whitespace().nth(4) == Some(BPFFS))
    });
    if !mounted {
        let st = Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]).status()?;
        if !st.success() {
            anyhow::bail!("mount -t bpf bpf {BPFFS} failed");
        }
    }
    Ok(())
}

/// rmdir a cgroup once its processes are gone (the kernel updates lazily).
pub fn remove_cgroup(cg: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(cg) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    warn!(cgroup = %cg.display(), "could not remove cgroup");
}

/// `axon-agent --cleanup` on a bpffs dir (inside its node's namespace when
/// that still exists: the dir and the netns share a name), then the dir.
pub fn cleanup_bpffs(agent_bin: &Path, dir: &Path) {
    let mut cmd = Command::new(agent_bin);
    cmd.arg("--cleanup").arg("--bpffs-root").arg(dir).stdout(Stdio::null()).stderr(Stdio::null());
    let netns = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    if let Ok(fd) = sys::open_netns(&netns) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let raw = fd.as_raw_fd();
        // SAFETY: only setns(2) between fork and exec; `fd` outlives spawn.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let _ = cmd.status();
        drop(fd);
    } else {
        let _ = cmd.status();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Removes the namespaces, cgroups, bpffs dirs and work dirs of dead runs,
/// and of run `own` when given. Processes inside those namespaces are ours
/// (agents of that run) and are killed by pid first.
pub fn sweep(own: Option<&str>, agent_bin: Option<&Path>) {
    for e in std::fs::read_dir(BPFFS).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if stale(&name, own) {
            kill_netns_pids(&name);
            match agent_bin {
                Some(bin) => cleanup_bpffs(bin, &e.path()),
                None => {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            info!(dir = %e.path().display(), "removed bpffs dir");
        }
    }
    for e in std::fs::read_dir(sys::NETNS_DIR).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if stale(&name, own) {
            kill_netns_pids(&name);
            let _ = ip(&["netns", "del", &name]);
            info!(netns = %name, "removed netns");
        }
    }
    if let Ok(root) = cgroup2_mount() {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if stale(&name, own) && e.path().is_dir() {
                remove_cgroup(&e.path());
            }
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
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).stderr(Stdio::null()).output() else { return };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()) {
        if pid != std::process::id() {
            sys::signal(pid, libc::SIGKILL);
        }
    }
}

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static PIPE_WR: AtomicI32 = AtomicI32::new(-1);
/// Held while a lab resource is created, and by the signal path from its
/// sweep to the exit: nothing is created after the sweep.
static CREATING: Mutex<()> = Mutex::new(());
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Whether a signal is tearing the run down (drop guards leave it to the sweep).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Hold while creating a namespace, cgroup or process (and registering it).
pub fn creating() -> anyhow::Result<MutexGuard<'static, ()>> {
    let guard = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    if stopping() {
        anyhow::bail!("interrupted");
    }
    Ok(guard)
}

/// Remembers a helper process so a signal can kill it.
pub fn register_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}

/// The helper was reaped; its pid may be reused.
pub fn forget_child(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).retain(|&p| p != pid);
}

extern "C" fn on_signal(_: libc::c_int) {
    let fd = PIPE_WR.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; one byte from a static.
        unsafe { libc::write(fd, b"x".as_ptr() as *const libc::c_void, 1) };
    }
}

/// On SIGINT/SIGTERM/SIGHUP: kill registered helpers, run `cleanup`, exit 130.
pub fn install_signal_guard(cleanup: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    PIPE_WR.store(fds[1], Ordering::Relaxed);
    // SAFETY: the read end is owned by this thread alone from here.
    let mut rd = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        if rd.read_exact(&mut b).is_ok() {
            eprintln!("\naxon-bench-nodeport: interrupted, removing the lab...");
            STOPPING.store(true, Ordering::SeqCst);
            let _held = CREATING.lock().unwrap_or_else(|p| p.into_inner());
            for pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                sys::signal(pid, libc::SIGKILL);
            }
            cleanup();
            std::process::exit(130);
        }
    });
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installing a handler that only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_axn_pid_dash_names_are_ours() {
        assert_eq!(owner_pid("axn123-tc-n1"), Some(123));
        assert_eq!(owner_pid("axns-1-x"), None);
        assert_eq!(owner_pid("axnp-tag-node"), None);
        assert_eq!(owner_pid("axn12"), None);
        assert_eq!(owner_pid("axb12-c1"), None);
    }

    #[test]
    fn own_run_is_stale() {
        assert!(stale("axn12-tc-hub", Some("axn12")));
    }
}
