//! Reading the pinned LB maps without the agent: `agentctl bpf lb list` and
//! the agent's own start-up recovery both see exactly what the kernel serves.

use crate::maps::*;
use aya::maps::{HashMap, Map, MapData};
use aya::Pod;
use std::path::{Path, PathBuf};

/// Where the agent pins maps under its bpffs root.
pub fn maps_dir(bpffs_root: &Path) -> PathBuf {
    bpffs_root.join("maps")
}

/// Where the agent pins program links under its bpffs root.
pub fn links_dir(bpffs_root: &Path) -> PathBuf {
    bpffs_root.join("links")
}

#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error("map {path} is not pinned (is the agent's --bpffs-root right, and has the agent run?)")]
    NotPinned { path: PathBuf },
    #[error("opening pinned map {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("reading pinned map {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// Every entry of the LB maps, both families.
#[derive(Debug, Clone, Default)]
pub struct LbMapsDump {
    pub services4: Vec<(Lb4Key, LbService)>,
    pub services6: Vec<(Lb6Key, LbService)>,
    pub backends4: Vec<(u32, Lb4Backend)>,
    pub backends6: Vec<(u32, Lb6Backend)>,
    pub rev_nat4: Vec<(u32, Lb4ReverseNat)>,
    pub rev_nat6: Vec<(u32, Lb6ReverseNat)>,
}

/// Reads all LB maps pinned under `bpffs_root`.
pub fn read_lb_maps(bpffs_root: &Path) -> Result<LbMapsDump, PinnedError> {
    let dir = maps_dir(bpffs_root);
    Ok(LbMapsDump {
        services4: dump_hash(&dir.join(names::LB4_SERVICES))?,
        services6: dump_hash(&dir.join(names::LB6_SERVICES))?,
        backends4: dump_hash(&dir.join(names::LB4_BACKENDS))?,
        backends6: dump_hash(&dir.join(names::LB6_BACKENDS))?,
        rev_nat4: dump_hash(&dir.join(names::LB4_REVERSE_NAT))?,
        rev_nat6: dump_hash(&dir.join(names::LB6_REVERSE_NAT))?,
    })
}

/// Opens a pinned hash map with the given key/value layout.
pub fn open_hash<K: Pod, V: Pod>(path: &Path) -> Result<HashMap<MapData, K, V>, PinnedError> {
    if !path.exists() {
        return Err(PinnedError::NotPinned { path: path.to_path_buf() });
    }
    let open_err = |e: &dyn std::fmt::Display| PinnedError::Open { path: path.to_path_buf(), message: e.to_string() };
    let data = MapData::from_pin(path).map_err(|e| open_err(&e))?;
    let map = Map::from_map_data(data).map_err(|e| open_err(&e))?;
    HashMap::try_from(map).map_err(|e| open_err(&e))
}

/// All entries of a pinned hash map.
pub fn dump_hash<K: Pod, V: Pod>(path: &Path) -> Result<Vec<(K, V)>, PinnedError> {
    let map = open_hash::<K, V>(path)?;
    map.iter()
        .map(|r| r.map_err(|e| PinnedError::Read { path: path.to_path_buf(), message: e.to_string() }))
        .collect()
}
