//! Thin wrappers over the few system calls the bench needs beyond std:
//! entering a network namespace, joining a cgroup, a clock shared by all
//! processes, and tying a child's life to ours.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// CLOCK_MONOTONIC in nanoseconds. The clock is the same in every process
/// (we create no time namespace), so a timestamp taken in the client netns
/// compares with one taken by the orchestrator.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we hand it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Opens a network namespace handle (`/run/netns/NAME`).
pub fn open_netns(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: plain open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Moves the calling thread into the network namespace behind `fd`.
/// Helpers call this from their only thread, before opening any socket.
pub fn setns_net(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: setns(2) on a namespace fd we own.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn enter_netns(path: &Path) -> io::Result<()> {
    setns_net(&open_netns(path)?)
}

/// Moves this process into the cgroup v2 directory `dir`.
pub fn join_cgroup(dir: &Path) -> io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
}

/// Helpers die with the orchestrator, even when it is SIGKILLed, so a
/// crashed run leaves no process behind in the lab.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// Like [`die_with_parent`], for a program we exec (set between fork and exec).
pub fn die_with_parent_after_exec(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) only, between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Sends `sig` to one process we started.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Whether `pid` is alive (a zombie is not) and runs a program called `comm`.
pub fn process_is(pid: u32, comm: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // "pid (comm) state ...": comm may hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    &stat[open + 1..close] == comm && !matches!(state, "Z" | "X")
}
