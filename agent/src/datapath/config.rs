//! Where the datapath pins and attaches, and how large its maps are.

use axon_bpf::maps::defaults;
use std::path::{Path, PathBuf};

/// The bpffs directory the agent owns unless told otherwise.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/axon";

/// How the datapath is laid out on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    /// bpffs directory holding `maps/` and `links/`; must be on a bpffs.
    pub bpffs_root: PathBuf,
    /// cgroup2 directory the socket-LB programs attach to; every socket
    /// created in it or below is load-balanced.
    pub cgroup_root: PathBuf,
    /// max_entries of `axon_lb{4,6}_services` (one entry per slot).
    pub service_entries: u32,
    /// max_entries of `axon_lb{4,6}_backends`.
    pub backend_entries: u32,
    /// max_entries of `axon_lb{4,6}_reverse_nat` (one per service).
    pub rev_nat_entries: u32,
    /// max_entries of the LRU `axon_lb{4,6}_reverse_sk` (sockets remembered
    /// for getpeername/recvmsg).
    pub sock_revnat_entries: u32,
}

impl Default for DatapathConfig {
    /// The defaults of `axon_bpf::maps::defaults`, the machine's cgroup2 mount
    /// (falling back to `/sys/fs/cgroup`), and [`DEFAULT_BPFFS_ROOT`].
    fn default() -> Self {
        Self {
            bpffs_root: PathBuf::from(DEFAULT_BPFFS_ROOT),
            cgroup_root: cgroup2_mount().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
            service_entries: defaults::SERVICE_ENTRIES,
            backend_entries: defaults::BACKEND_ENTRIES,
            rev_nat_entries: defaults::REVNAT_ENTRIES,
            sock_revnat_entries: defaults::SOCK_REVNAT_ENTRIES,
        }
    }
}

impl DatapathConfig {
    /// Defaults, with the given bpffs root and cgroup.
    pub fn new(bpffs_root: impl Into<PathBuf>, cgroup_root: impl Into<PathBuf>) -> Self {
        Self { bpffs_root: bpffs_root.into(), cgroup_root: cgroup_root.into(), ..Self::default() }
    }
}

/// The first cgroup2 mount in `/proc/self/mountinfo`: `/sys/fs/cgroup` on a
/// unified layout, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| mount_point_of_type(line, "cgroup2"))
}

/// The mount point of a mountinfo line if its filesystem type is `fstype`.
/// Format: `id parent maj:min root mount-point options [optional...] - fstype source super-options`.
fn mount_point_of_type(line: &str, fstype: &str) -> Option<PathBuf> {
    let (before, after) = line.split_once(" - ")?;
    if after.split_whitespace().next()? != fstype {
        return None;
    }
    let mount_point = before.split_whitespace().nth(4)?;
    Some(PathBuf::from(unescape_mountinfo(mount_point)))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| std::str::from_utf8(d).ok());
        match (bytes[i], octal.and_then(|d| u8::from_str_radix(d, 8).ok())) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The nearest ancestor of `path` (or `path` itself) that exists: where a
/// not-yet-created directory would land.
pub(crate) fn nearest_existing(path: &Path) -> &Path {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_points_in_mountinfo_lines() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw";
        assert_eq!(mount_point_of_type(hybrid, "cgroup2"), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let v1 = "36 25 0:31 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu";
        assert_eq!(mount_point_of_type(v1, "cgroup2"), None);
        let escaped = r"40 25 0:33 / /mnt/my\040cg rw - cgroup2 none rw";
        assert_eq!(mount_point_of_type(escaped, "cgroup2"), Some(PathBuf::from("/mnt/my cg")));
    }
}
