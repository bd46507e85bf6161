//! [`cleanup`]: removes every link, map pin and directory the datapath owns
//! under a bpffs root (`axon-agent --cleanup`). Needs no running agent and no
//! loaded object: it works from the pins alone, and running it twice is fine.

use super::sys;
use super::DatapathError;
use axon_bpf::pinned::{links_dir, maps_dir};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// What [`cleanup`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Link pins removed; each link was detached from its cgroup.
    pub links_detached: Vec<PathBuf>,
    /// Map pins removed (the maps are freed once no program uses them).
    pub maps_unpinned: Vec<PathBuf>,
    /// Directories removed (`maps/`, `links/`, the root).
    pub dirs_removed: Vec<PathBuf>,
    /// Entries left in place because Axon did not create them.
    pub left_alone: Vec<PathBuf>,
}

impl CleanupReport {
    pub fn is_empty(&self) -> bool {
        self.links_detached.is_empty() && self.maps_unpinned.is_empty() && self.dirs_removed.is_empty()
    }
}

impl std::fmt::Display for CleanupReport {
    /// One line per thing removed, then a summary; what `--cleanup` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.links_detached {
            writeln!(f, "detached and unpinned link {}", p.display())?;
        }
        for p in &self.maps_unpinned {
            writeln!(f, "unpinned map {}", p.display())?;
        }
        for p in &self.dirs_removed {
            writeln!(f, "removed {}", p.display())?;
        }
        for p in &self.left_alone {
            writeln!(f, "left alone (not Axon's) {}", p.display())?;
        }
        write!(
            f,
            "cleanup: {} links detached, {} maps unpinned, {} directories removed",
            self.links_detached.len(),
            self.maps_unpinned.len(),
            self.dirs_removed.len()
        )
    }
}

fn io_err(path: &Path, source: io::Error) -> DatapathError {
    DatapathError::Io { path: path.display().to_string(), source }
}

/// Detaches and unpins every link under `<root>/links`, unpins every map
/// under `<root>/maps`, and removes those directories and the root when
/// empty. Programs are detached first so nothing runs against maps that are
/// going away.
pub fn cleanup(bpffs_root: &Path) -> Result<CleanupReport, DatapathError> {
    let mut report = CleanupReport::default();
    let links = links_dir(bpffs_root);
    for pin in entries(&links)? {
        // Detach explicitly: unlinking the pin alone leaves the link
        // attached while any process (a running agent) holds it open.
        match sys::obj_get(&pin).and_then(|fd| sys::link_detach(fd.as_fd())) {
            Ok(()) => {}
            Err(e) => tracing::warn!(pin = %pin.display(), error = %e, "detaching link; removing its pin anyway"),
        }
        remove_file(&pin)?;
        report.links_detached.push(pin);
    }
    let maps = maps_dir(bpffs_root);
    for pin in entries(&maps)? {
        remove_file(&pin)?;
        report.maps_unpinned.push(pin);
    }
    for dir in [links, maps, bpffs_root.to_path_buf()] {
        remove_dir(&dir, &mut report)?;
    }
    tracing::info!(
        root = %bpffs_root.display(),
        links = report.links_detached.len(),
        maps = report.maps_unpinned.len(),
        "datapath cleaned up"
    );
    Ok(report)
}

/// Entries of `dir`, sorted; none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, DatapathError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir, e)),
    };
    let mut paths = read.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>().map_err(|e| io_err(dir, e))?;
    paths.sort();
    Ok(paths)
}

fn remove_file(path: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}

/// Removes an empty directory; a non-empty one holds something that is not
/// Axon's and is left with its contents listed in the report.
fn remove_dir(dir: &Path, report: &mut CleanupReport) -> Result<(), DatapathError> {
    match std::fs::remove_dir(dir) {
        Ok(()) => {
            report.dirs_removed.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        // Not empty, or a mount point (a root that is the bpffs mount itself).
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EBUSY)) => {
            let mut left = entries(dir)?;
            left.retain(|p| !report.dirs_removed.contains(p));
            tracing::warn!(dir = %dir.display(), ?left, "directory holds entries Axon did not create; left in place");
            report.left_alone.extend(left);
            Ok(())
        }
        Err(e) => Err(io_err(dir, e)),
    }
}
