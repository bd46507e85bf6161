//! Removing what earlier test processes left behind when they were killed
//! before their Drop guards ran: cgroups, bpffs directories (with their pinned
//! programs) and temp directories named `axt-<pid>-...` whose pid is gone.
//! Namespaces need no sweep: they die with the process holding their fd.

use crate::agent::{cleanup_bpffs, BPFFS};
use crate::bins;
use crate::cgroup;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// Sweeps once per test process.
pub fn once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sweep);
}

fn sweep() {
    if let Ok(mount) = cgroup::cgroup2_mount() {
        for dir in stale_entries(&mount) {
            cgroup::destroy(&dir);
        }
    }
    let agent = bins::binary("axon-agent").ok();
    for dir in stale_entries(Path::new(BPFFS)) {
        match &agent {
            Some(bin) => cleanup_bpffs(bin, &dir),
            None => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    for dir in stale_entries(&std::env::temp_dir()) {
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Entries `axt-<pid>-...` of `dir` whose process no longer exists.
fn stale_entries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_str().and_then(owner_pid).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .map(|e| e.path())
        .collect()
}

/// The pid in `axt-<pid>-<seq>[-label]`.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix("axt-")?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_owner_pid() {
        assert_eq!(owner_pid("axt-1234-0-spread"), Some(1234));
        assert_eq!(owner_pid("axt-1234-7"), Some(1234));
        assert_eq!(owner_pid("axon"), None);
        assert_eq!(owner_pid("axt-x-1"), None);
    }
}
