//! Reading the pinned maps without the agent: `agentctl bpf lb list` and the
//! agent's own start-up recovery both see exactly what the kernel serves;
//! `agentctl bpf ct list|flush` and the agent's conntrack GC walk the
//! conntrack maps.

use crate::maps::*;
use aya::maps::{HashMap, IterableMap, Map, MapData};
use aya::Pod;
use std::collections::HashSet;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
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
    map.iter().map(|r| r.map_err(|e| PinnedError::Read { path: path.to_path_buf(), message: e.to_string() })).collect()
}

/// One conntrack entry of either family, in host terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEntryView {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// `ct::DIR_SERVICE` (keyed as the client's packet arrives) or
    /// `ct::DIR_REPLY` (keyed as the backend's reply arrives).
    pub dir: u8,
    /// The key's source and destination.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Seconds of CLOCK_MONOTONIC after which the entry is dead.
    pub expires: u32,
    pub rev_nat_index: u32,
    pub backend_id: u32,
    pub client: SocketAddr,
    /// What the client sent to (VIP or node address, and port).
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    /// The source the backend sees under SNAT.
    pub nat: SocketAddr,
    /// `ct::F_*`.
    pub flags: u8,
    /// `ct::TCP_*`.
    pub tcp_state: u8,
    pub packets: u64,
    pub bytes: u64,
}

fn v4(addr: u32, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u32::from_be(addr))), u16::from_be(port))
}

fn v6(addr: [u8; 16], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(addr)), u16::from_be(port))
}

impl CtEntryView {
    pub fn from_v4(k: &Ct4Key, e: &Ct4Entry) -> Self {
        CtEntryView {
            proto: k.proto,
            dir: k.dir,
            src: v4(k.saddr, k.sport),
            dst: v4(k.daddr, k.dport),
            expires: e.expires,
            rev_nat_index: e.rev_nat_index,
            backend_id: e.backend_id,
            client: v4(e.client_addr, e.client_port),
            frontend: v4(e.frontend_addr, e.frontend_port),
            backend: v4(e.backend_addr, e.backend_port),
            nat: v4(e.nat_addr, e.nat_port),
            flags: e.flags,
            tcp_state: e.tcp_state,
            packets: e.packets,
            bytes: e.bytes,
        }
    }

    pub fn from_v6(k: &Ct6Key, e: &Ct6Entry) -> Self {
        CtEntryView {
            proto: k.proto,
            dir: k.dir,
            src: v6(k.saddr, k.sport),
            dst: v6(k.daddr, k.dport),
            expires: e.expires,
            rev_nat_index: e.rev_nat_index,
            backend_id: e.backend_id,
            client: v6(e.client_addr, e.client_port),
            frontend: v6(e.frontend_addr, e.frontend_port),
            backend: v6(e.backend_addr, e.backend_port),
            nat: v6(e.nat_addr, e.nat_port),
            flags: e.flags,
            tcp_state: e.tcp_state,
            packets: e.packets,
            bytes: e.bytes,
        }
    }

    /// Whether the entry is dead at `now` (seconds of CLOCK_MONOTONIC).
    pub fn expired_at(&self, now: u64) -> bool {
        u64::from(self.expires) < now
    }
}

/// Every entry of a pinned hash-like map, each key once, even while the
/// datapath inserts and evicts: the walk restarts at the first key when the
/// current one vanishes, so keys already seen are skipped and the walk is
/// bounded by twice the map's capacity.
pub fn dump_hash_unique<K, V>(path: &Path) -> Result<Vec<(K, V)>, PinnedError>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    let map = open_hash::<K, V>(path)?;
    let read_err = |e: &dyn std::fmt::Display| PinnedError::Read { path: path.to_path_buf(), message: e.to_string() };
    let max = map.map().info().map(|i| u64::from(i.max_entries())).unwrap_or(1 << 20);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (steps, key) in map.keys().enumerate() {
        let key = key.map_err(|e| read_err(&e))?;
        if steps as u64 > 2 * max + 16 {
            break;
        }
        if !seen.insert(key) {
            continue;
        }
        match map.get(&key, 0) {
            Ok(value) => out.push((key, value)),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(read_err(&e)),
        }
    }
    Ok(out)
}

/// Both conntrack maps, v4 entries first.
pub fn read_ct(bpffs_root: &Path) -> Result<Vec<CtEntryView>, PinnedError> {
    let dir = maps_dir(bpffs_root);
    let v4 = dump_hash_unique::<Ct4Key, Ct4Entry>(&dir.join(names::CT4_GLOBAL))?;
    let v6 = dump_hash_unique::<Ct6Key, Ct6Entry>(&dir.join(names::CT6_GLOBAL))?;
    Ok(v4
        .iter()
        .map(|(k, e)| CtEntryView::from_v4(k, e))
        .chain(v6.iter().map(|(k, e)| CtEntryView::from_v6(k, e)))
        .collect())
}

/// Deletes the entries of a pinned hash-like map for which `doomed` holds;
/// returns (entries seen, entries deleted). Keys are collected first and
/// deleted after (deleting during the walk would restart it each time);
/// an entry is re-read just before its delete so one refreshed meanwhile
/// survives.
pub fn delete_where<K, V>(path: &Path, doomed: impl Fn(&K, &V) -> bool) -> Result<(u64, u64), PinnedError>
where
    K: Pod + Eq + Hash,
    V: Pod,
{
    let entries = dump_hash_unique::<K, V>(path)?;
    let mut map = open_hash::<K, V>(path)?;
    let mut deleted = 0;
    for (key, value) in &entries {
        if !doomed(key, value) {
            continue;
        }
        match map.get(key, 0) {
            Ok(now) if doomed(key, &now) => {}
            _ => continue,
        }
        match map.remove(key) {
            Ok(()) => deleted += 1,
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(PinnedError::Read { path: path.to_path_buf(), message: format!("delete: {e}") }),
        }
    }
    Ok((entries.len() as u64, deleted))
}

/// Deletes every conntrack entry of both families; returns how many went.
/// Flows still passing packets start over as new connections.
pub fn flush_ct(bpffs_root: &Path) -> Result<u64, PinnedError> {
    let dir = maps_dir(bpffs_root);
    let (_, v4) = delete_where::<Ct4Key, Ct4Entry>(&dir.join(names::CT4_GLOBAL), |_, _| true)?;
    let (_, v6) = delete_where::<Ct6Key, Ct6Entry>(&dir.join(names::CT6_GLOBAL), |_, _| true)?;
    Ok(v4 + v6)
}
