//! A child cgroup (v2) per test: the agent attaches the socket-LB there and
//! the lab's clients run inside it, so nothing else on the machine is affected.

use crate::error::{IoContext, LabError, Result};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where cgroup2 is mounted, from `/proc/self/mountinfo` (on hybrid layouts it
/// is `/sys/fs/cgroup/unified`, not `/sys/fs/cgroup`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    find_mount("cgroup2")?.ok_or_else(|| LabError::Setup("no cgroup2 mount in /proc/self/mountinfo".into()))
}

/// The first mount point of filesystem type `fstype`.
pub(crate) fn find_mount(fstype: &str) -> Result<Option<PathBuf>> {
    Ok(find_mounts(fstype)?.into_iter().next())
}

/// Every mount point of filesystem type `fstype`.
pub(crate) fn find_mounts(fstype: &str) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ctx(|| "reading /proc/self/mountinfo".into())?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == fstype).then(|| PathBuf::from(unescape_mount_path(mount_point)))
        })
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal =
            bytes.get(i + 1..i + 4).filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A child cgroup, killed and removed on drop.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    procs: CString,
}

impl Cgroup {
    /// Creates `<cgroup2 mount>/<name>`.
    pub fn create(name: &str) -> Result<Cgroup> {
        let path = cgroup2_mount()?.join(name);
        std::fs::create_dir(&path).ctx(|| format!("creating cgroup {}", path.display()))?;
        let procs = CString::new(path.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|_| LabError::Setup(format!("cgroup path {} has a NUL byte", path.display())))?;
        Ok(Cgroup { path, procs })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `<path>/cgroup.procs` as a C string, ready for a `pre_exec` hook.
    pub(crate) fn procs_cstr(&self) -> &CString {
        &self.procs
    }

    /// Pids currently in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        read_pids(&self.path)
    }
}

fn read_pids(path: &Path) -> Vec<i32> {
    std::fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Kills whatever is left in the cgroup at `path` and removes it.
pub(crate) fn destroy(path: &Path) {
    if !path.exists() {
        return;
    }
    // cgroup.kill (5.14+) also catches processes forking while we look.
    if std::fs::write(path.join("cgroup.kill"), "1").is_err() {
        for pid in read_pids(path) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("lab: could not remove cgroup {}: {e}", path.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        destroy(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape_mount_path("/sys/fs/cgroup/unified"), "/sys/fs/cgroup/unified");
        assert_eq!(unescape_mount_path("/a\\040b"), "/a b");
    }
}
