//! `#[repr(C)]` mirrors of `axon_ipcache` (`bpf/lib/maps.h`): IP or CIDR →
//! security identity, both families in one LPM trie, and a reader of the
//! pinned map for `agentctl` and the tests.

use crate::pinned::{maps_dir, PinnedError};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

/// `AXON_IPCACHE_FAMILY_*`.
pub mod family {
    pub const V4: u8 = 4;
    pub const V6: u8 = 6;
}

/// `AXON_IPCACHE_F_*`.
pub mod flags {
    /// The endpoint runs on this node.
    pub const LOCAL: u8 = 1;
}

/// Bits of the key before the address: the family byte and its padding.
pub const FAMILY_BITS: u32 = 32;

/// `struct ipcache_key`, prefix length included (what the BTF describes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheKey {
    pub prefixlen: u32,
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

/// The data part of an `ipcache_key` (everything after `prefixlen`), what
/// aya's `LpmTrie` keys are made of.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheData {
    pub family: u8,
    pub pad: [u8; 3],
    pub addr: [u8; 16],
}

/// `struct ipcache_entry`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpcacheEntry {
    pub identity: u32,
    pub flags: u8,
    pub pad: [u8; 3],
}

// SAFETY: integers and byte arrays with explicit padding; the layout test
// compares them with the C structs.
unsafe impl aya::Pod for IpcacheKey {}
unsafe impl aya::Pod for IpcacheData {}
unsafe impl aya::Pod for IpcacheEntry {}

const _: () = assert!(4 + std::mem::size_of::<IpcacheData>() == std::mem::size_of::<IpcacheKey>());

impl IpcacheData {
    pub fn new(ip: IpAddr) -> Self {
        let mut addr = [0u8; 16];
        let family = match ip {
            IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                family::V4
            }
            IpAddr::V6(v6) => {
                addr = v6.octets();
                family::V6
            }
        };
        Self { family, pad: [0; 3], addr }
    }

    /// The address, `None` for an unknown family.
    pub fn ip(&self) -> Option<IpAddr> {
        let addr = self.addr;
        match self.family {
            family::V4 => Some(IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))),
            family::V6 => Some(IpAddr::V6(Ipv6Addr::from(addr))),
            _ => None,
        }
    }
}

/// The trie key of one host address (/32 or /128).
pub fn host_key(ip: IpAddr) -> Key<IpcacheData> {
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    Key::new(FAMILY_BITS + bits, IpcacheData::new(ip))
}

impl IpcacheEntry {
    pub fn new(identity: u32, flags: u8) -> Self {
        Self { identity, flags, pad: [0; 3] }
    }
}

/// One entry of the pinned ipcache, in host terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpcacheView {
    pub ip: IpAddr,
    /// Prefix length of the address (32/128 for a host).
    pub prefix_len: u32,
    pub identity: u32,
    pub flags: u8,
}

/// Opens the pinned `axon_ipcache` under `bpffs_root`.
pub fn open(bpffs_root: &Path) -> Result<LpmTrie<MapData, IpcacheData, IpcacheEntry>, PinnedError> {
    let path = maps_dir(bpffs_root).join(crate::maps::names::IPCACHE);
    if !path.exists() {
        return Err(PinnedError::NotPinned { path });
    }
    let open_err = |e: &dyn std::fmt::Display| PinnedError::Open { path: path.clone(), message: e.to_string() };
    let data = MapData::from_pin(&path).map_err(|e| open_err(&e))?;
    let map = Map::from_map_data(data).map_err(|e| open_err(&e))?;
    LpmTrie::try_from(map).map_err(|e| open_err(&e))
}

/// Every entry of the pinned ipcache, sorted by address.
pub fn read(bpffs_root: &Path) -> Result<Vec<IpcacheView>, PinnedError> {
    let map = open(bpffs_root)?;
    let path = maps_dir(bpffs_root).join(crate::maps::names::IPCACHE);
    let mut out = Vec::new();
    for item in map.iter() {
        let (key, value) = item.map_err(|e| PinnedError::Read { path: path.clone(), message: e.to_string() })?;
        let data = key.data();
        let Some(ip) = data.ip() else { continue };
        out.push(IpcacheView {
            ip,
            prefix_len: key.prefix_len().saturating_sub(FAMILY_BITS),
            identity: value.identity,
            flags: value.flags,
        });
    }
    out.sort_by_key(|v| (v.ip, v.prefix_len));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_both_families() {
        for ip in ["10.1.2.3", "fd00::7"] {
            let ip: IpAddr = ip.parse().unwrap();
            let key = host_key(ip);
            assert_eq!(key.data().ip(), Some(ip));
        }
        assert_eq!(host_key("10.0.0.1".parse().unwrap()).prefix_len(), 64);
        assert_eq!(host_key("::1".parse().unwrap()).prefix_len(), 160);
    }
}
