//! [`AyaLbMaps`]: the [`LbMaps`] trait over the pinned LB maps. Translates the
//! model's host-order values into the `#[repr(C)]` layouts of
//! `axon_bpf::maps` and kernel errors into [`DatapathError`].

use super::{BackendValue, DatapathError, Family, LbCapacity, LbMaps, LbSnapshot, MaglevEntry, SlotKey, SlotValue};
use axon_api::{Cidr, L4Addr, Protocol};
use axon_bpf::maps::{
    names, Lb4Backend, Lb4Key, Lb4ReverseNat, Lb4SrcRangeKey, Lb6Backend, Lb6Key, Lb6ReverseNat, Lb6SrcRangeKey,
    LbMaglevKey, LbService,
};
use axon_bpf::pinned::maps_dir;
use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{HashMap, Map, MapData, MapError};
use aya::Pod;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// Opens the map pinned at `dir/name` as the typed map `typed` makes of it,
/// with its max_entries (for "map full" errors).
fn open_pinned<T>(
    dir: &Path,
    name: &str,
    typed: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<(u32, T), DatapathError> {
    let path = dir.join(name);
    let load_err =
        |message: String| DatapathError::Load { context: format!("opening pinned map {}", path.display()), message };
    let data = MapData::from_pin(&path).map_err(|e| load_err(e.to_string()))?;
    let max_entries = data.info().map_err(|e| load_err(e.to_string()))?.max_entries();
    let map = Map::from_map_data(data).map_err(|e| load_err(e.to_string()))?;
    Ok((max_entries, typed(map).map_err(|e| load_err(e.to_string()))?))
}

/// One pinned hash map, with what error messages need to name it.
struct Table<K: Pod, V: Pod> {
    name: &'static str,
    max_entries: u32,
    map: HashMap<MapData, K, V>,
}

impl<K: Pod, V: Pod> Table<K, V> {
    fn open(dir: &Path, name: &'static str) -> Result<Self, DatapathError> {
        let (max_entries, map) = open_pinned(dir, name, HashMap::try_from)?;
        Ok(Self { name, max_entries, map })
    }

    /// Inserts or replaces; a new key that does not fit is `MapFull`.
    fn put(&mut self, key: &K, value: &V) -> Result<(), DatapathError> {
        let err = match self.map.insert(key, value, 0) {
            Ok(()) => return Ok(()),
            Err(e) => map_error_io(e),
        };
        let full = match err.raw_os_error() {
            Some(libc::E2BIG) => true,
            // No-prealloc hash maps allocate per element: ENOMEM is "full" only
            // when the key is new; otherwise the kernel is short of memory.
            Some(libc::ENOMEM) => self.map.get(key, 0).is_err(),
            _ => false,
        };
        if full {
            return Err(DatapathError::MapFull { map: self.name, max_entries: self.max_entries });
        }
        Err(DatapathError::Map { map: self.name, op: "update", source: err })
    }

    /// Deletes; an absent key is fine (reconciling is idempotent).
    fn delete(&mut self, key: &K) -> Result<(), DatapathError> {
        match self.map.remove(key).map_err(map_error_io) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(DatapathError::Map { map: self.name, op: "delete", source }),
        }
    }

    fn entries(&self) -> Result<Vec<(K, V)>, DatapathError> {
        self.map
            .iter()
            .map(|r| r.map_err(|e| DatapathError::Map { map: self.name, op: "iterate", source: map_error_io(e) }))
            .collect()
    }
}

/// The kernel's errno when there is one, so callers can match on it.
fn map_error_io(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        MapError::KeyNotFound | MapError::ElementNotFound => io::Error::from_raw_os_error(libc::ENOENT),
        other => io::Error::other(other.to_string()),
    }
}

/// The load-balancing maps pinned under a bpffs root, both families.
pub struct AyaLbMaps {
    services4: Table<Lb4Key, LbService>,
    services6: Table<Lb6Key, LbService>,
    backends4: Table<u32, Lb4Backend>,
    backends6: Table<u32, Lb6Backend>,
    rev_nat4: Table<u32, Lb4ReverseNat>,
    rev_nat6: Table<u32, Lb6ReverseNat>,
    maglev: Table<LbMaglevKey, u32>,
    ranges4: RangeTable<SrcRange4>,
    ranges6: RangeTable<SrcRange6>,
}

/// The (rev_nat_index, address) data of a source-range LPM key; the trie's
/// prefix length counts the index's 32 bits plus the CIDR's.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SrcRange4 {
    rev_nat_index: u32,
    address: u32,
}

#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SrcRange6 {
    rev_nat_index: u32,
    address: [u8; 16],
}

// SAFETY: packed integers and bytes, no padding; the layout test proves
// `prefixlen` + these equal `struct lb{4,6}_src_range_key`.
unsafe impl aya::Pod for SrcRange4 {}
unsafe impl aya::Pod for SrcRange6 {}

const _: () = assert!(4 + std::mem::size_of::<SrcRange4>() == std::mem::size_of::<Lb4SrcRangeKey>());
const _: () = assert!(4 + std::mem::size_of::<SrcRange6>() == std::mem::size_of::<Lb6SrcRangeKey>());

/// A pinned LPM trie, with what error messages need to name it.
struct RangeTable<K: aya::Pod> {
    name: &'static str,
    max_entries: u32,
    map: LpmTrie<MapData, K, u8>,
}

impl<K: aya::Pod> RangeTable<K> {
    fn open(dir: &Path, name: &'static str) -> Result<Self, DatapathError> {
        let (max_entries, map) = open_pinned(dir, name, LpmTrie::try_from)?;
        Ok(Self { name, max_entries, map })
    }

    fn put(&mut self, key: &LpmKey<K>) -> Result<(), DatapathError> {
        self.map.insert(key, 1, 0).map_err(|e| {
            let source = map_error_io(e);
            match source.raw_os_error() {
                Some(libc::ENOSPC) | Some(libc::E2BIG) => {
                    DatapathError::MapFull { map: self.name, max_entries: self.max_entries }
                }
                _ => DatapathError::Map { map: self.name, op: "update", source },
            }
        })
    }

    fn delete(&mut self, key: &LpmKey<K>) -> Result<(), DatapathError> {
        match self.map.remove(key).map_err(map_error_io) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(DatapathError::Map { map: self.name, op: "delete", source }),
        }
    }

    fn keys(&self) -> Result<Vec<LpmKey<K>>, DatapathError> {
        self.map
            .keys()
            .map(|k| k.map_err(|e| DatapathError::Map { map: self.name, op: "iterate", source: map_error_io(e) }))
            .collect()
    }
}

fn range4_key(rev_nat_index: u32, range: &Cidr, ip: std::net::Ipv4Addr) -> LpmKey<SrcRange4> {
    LpmKey::new(32 + range.prefix_len as u32, SrcRange4 { rev_nat_index, address: u32::from(ip).to_be() })
}

fn range6_key(rev_nat_index: u32, range: &Cidr, ip: std::net::Ipv6Addr) -> LpmKey<SrcRange6> {
    LpmKey::new(32 + range.prefix_len as u32, SrcRange6 { rev_nat_index, address: ip.octets() })
}

impl std::fmt::Debug for AyaLbMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AyaLbMaps").field("capacity", &self.capacity()).finish_non_exhaustive()
    }
}

impl AyaLbMaps {
    /// Opens the maps pinned under `<bpffs_root>/maps` (by [`super::Datapath::load`]).
    pub fn open(bpffs_root: &Path) -> Result<Self, DatapathError> {
        let dir = maps_dir(bpffs_root);
        Ok(Self {
            services4: Table::open(&dir, names::LB4_SERVICES)?,
            services6: Table::open(&dir, names::LB6_SERVICES)?,
            backends4: Table::open(&dir, names::LB4_BACKENDS)?,
            backends6: Table::open(&dir, names::LB6_BACKENDS)?,
            rev_nat4: Table::open(&dir, names::LB4_REVERSE_NAT)?,
            rev_nat6: Table::open(&dir, names::LB6_REVERSE_NAT)?,
            maglev: Table::open(&dir, names::LB_MAGLEV)?,
            ranges4: RangeTable::open(&dir, names::LB4_SOURCE_RANGE)?,
            ranges6: RangeTable::open(&dir, names::LB6_SOURCE_RANGE)?,
        })
    }
}

fn protocol(number: u8, what: &str) -> Option<Protocol> {
    let protocol = Protocol::from_number(number);
    if protocol.is_none() {
        tracing::warn!(number, "{what} with an unknown protocol in the maps; skipped");
    }
    protocol
}

fn lb4_key(key: &SlotKey, ip: std::net::Ipv4Addr) -> Lb4Key {
    let mut k = Lb4Key::new(ip, key.frontend.port, key.frontend.protocol.number(), key.slot);
    k.scope = key.scope;
    k
}

fn lb6_key(key: &SlotKey, ip: std::net::Ipv6Addr) -> Lb6Key {
    let mut k = Lb6Key::new(ip, key.frontend.port, key.frontend.protocol.number(), key.slot);
    k.scope = key.scope;
    k
}

fn to_lb_service(v: &SlotValue) -> LbService {
    LbService {
        backend_id: v.backend_id,
        rev_nat_index: v.rev_nat_index,
        count: v.count,
        svc_type: v.svc_type,
        flags: v.flags,
    }
}

fn from_lb_service(v: &LbService) -> SlotValue {
    SlotValue {
        backend_id: v.backend_id,
        rev_nat_index: v.rev_nat_index,
        count: v.count,
        svc_type: v.svc_type,
        flags: v.flags,
    }
}

impl LbMaps for AyaLbMaps {
    fn put_backend(&mut self, id: u32, backend: &BackendValue) -> Result<(), DatapathError> {
        let (port, proto) = (backend.addr.port, backend.addr.protocol.number());
        match backend.addr.address {
            IpAddr::V4(ip) => self.backends4.put(&id, &Lb4Backend::new(ip, port, proto, backend.state)),
            IpAddr::V6(ip) => self.backends6.put(&id, &Lb6Backend::new(ip, port, proto, backend.state)),
        }
    }

    fn delete_backend(&mut self, id: u32, family: Family) -> Result<(), DatapathError> {
        match family {
            Family::V4 => self.backends4.delete(&id),
            Family::V6 => self.backends6.delete(&id),
        }
    }

    fn put_slot(&mut self, key: &SlotKey, value: &SlotValue) -> Result<(), DatapathError> {
        let value = to_lb_service(value);
        match key.frontend.address {
            IpAddr::V4(ip) => self.services4.put(&lb4_key(key, ip), &value),
            IpAddr::V6(ip) => self.services6.put(&lb6_key(key, ip), &value),
        }
    }

    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), DatapathError> {
        match key.frontend.address {
            IpAddr::V4(ip) => self.services4.delete(&lb4_key(key, ip)),
            IpAddr::V6(ip) => self.services6.delete(&lb6_key(key, ip)),
        }
    }

    fn put_maglev(&mut self, e: &MaglevEntry) -> Result<(), DatapathError> {
        let key = LbMaglevKey { rev_nat_index: e.rev_nat_index, scope: e.scope as u16, pad: 0, index: e.index };
        self.maglev.put(&key, &e.backend_id)
    }

    fn delete_maglev(&mut self, rev_nat_index: u32, scope: u8, index: u32) -> Result<(), DatapathError> {
        self.maglev.delete(&LbMaglevKey { rev_nat_index, scope: scope as u16, pad: 0, index })
    }

    fn put_source_range(&mut self, rev_nat_index: u32, range: &Cidr) -> Result<(), DatapathError> {
        match range.address {
            IpAddr::V4(ip) => self.ranges4.put(&range4_key(rev_nat_index, range, ip)),
            IpAddr::V6(ip) => self.ranges6.put(&range6_key(rev_nat_index, range, ip)),
        }
    }

    fn delete_source_range(&mut self, rev_nat_index: u32, range: &Cidr) -> Result<(), DatapathError> {
        match range.address {
            IpAddr::V4(ip) => self.ranges4.delete(&range4_key(rev_nat_index, range, ip)),
            IpAddr::V6(ip) => self.ranges6.delete(&range6_key(rev_nat_index, range, ip)),
        }
    }

    fn put_rev_nat(&mut self, id: u32, frontend: &L4Addr) -> Result<(), DatapathError> {
        match frontend.address {
            IpAddr::V4(ip) => self.rev_nat4.put(&id, &Lb4ReverseNat::new(ip, frontend.port)),
            IpAddr::V6(ip) => self.rev_nat6.put(&id, &Lb6ReverseNat::new(ip, frontend.port)),
        }
    }

    fn delete_rev_nat(&mut self, id: u32, family: Family) -> Result<(), DatapathError> {
        match family {
            Family::V4 => self.rev_nat4.delete(&id),
            Family::V6 => self.rev_nat6.delete(&id),
        }
    }

    fn snapshot(&self) -> Result<LbSnapshot, DatapathError> {
        let mut snap = LbSnapshot::default();
        for (key, value) in self.services4.entries()? {
            if let Some(p) = protocol(key.proto, "service slot") {
                let frontend = L4Addr::new(key.ip().into(), key.port(), p);
                snap.slots
                    .push((SlotKey { frontend, scope: key.scope, slot: key.backend_slot }, from_lb_service(&value)));
            }
        }
        for (key, value) in self.services6.entries()? {
            if let Some(p) = protocol(key.proto, "service slot") {
                let frontend = L4Addr::new(key.ip().into(), key.port(), p);
                snap.slots
                    .push((SlotKey { frontend, scope: key.scope, slot: key.backend_slot }, from_lb_service(&value)));
            }
        }
        for (id, be) in self.backends4.entries()? {
            if let Some(p) = protocol(be.proto, "backend") {
                let addr = L4Addr::new(be.ip().into(), be.host_port(), p);
                snap.backends.push((id, BackendValue { addr, state: be.flags }));
            }
        }
        for (id, be) in self.backends6.entries()? {
            if let Some(p) = protocol(be.proto, "backend") {
                let addr = L4Addr::new(be.ip().into(), be.host_port(), p);
                snap.backends.push((id, BackendValue { addr, state: be.flags }));
            }
        }
        for (id, rn) in self.rev_nat4.entries()? {
            snap.rev_nat.push((id, rn.ip().into(), rn.host_port()));
        }
        for (id, rn) in self.rev_nat6.entries()? {
            snap.rev_nat.push((id, rn.ip().into(), rn.host_port()));
        }
        for (key, backend_id) in self.maglev.entries()? {
            let scope = key.scope as u8;
            snap.maglev.push(MaglevEntry { rev_nat_index: key.rev_nat_index, scope, index: key.index, backend_id });
        }
        for key in self.ranges4.keys()? {
            let data = key.data();
            let address = std::net::Ipv4Addr::from(u32::from_be(data.address)).into();
            let prefix_len = key.prefix_len().saturating_sub(32) as u8;
            snap.source_ranges.push((data.rev_nat_index, Cidr { address, prefix_len }));
        }
        for key in self.ranges6.keys()? {
            let data = key.data();
            let address = std::net::Ipv6Addr::from(data.address).into();
            let prefix_len = key.prefix_len().saturating_sub(32) as u8;
            snap.source_ranges.push((data.rev_nat_index, Cidr { address, prefix_len }));
        }
        snap.slots.sort_by_key(|(key, _)| *key);
        snap.maglev.sort();
        snap.source_ranges.sort();
        snap.backends.sort_by_key(|(id, be)| (*id, be.addr));
        snap.rev_nat.sort();
        Ok(snap)
    }

    fn capacity(&self) -> LbCapacity {
        LbCapacity {
            service_entries: self.services4.max_entries,
            backend_entries: self.backends4.max_entries,
            rev_nat_entries: self.rev_nat4.max_entries,
            maglev_entries: self.maglev.max_entries,
            source_range_entries: self.ranges4.max_entries,
        }
    }
}
