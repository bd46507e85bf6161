//! The ipcache reconciler: keeps the pinned `axon_ipcache` equal to the
//! desired IP → identity map, with the fewest writes.
//!
//! Restart-safe like the service reconciler: the realized model is rebuilt
//! from the pinned map, so an agent restart rewrites nothing that did not
//! change and the entries keep serving while the agent is down. Writes are
//! ordered: new and changed entries first (each an atomic replace of one
//! key), removals last — an IP never misses an entry while it moves from one
//! identity to another. Stale entries are only removed once the sources have
//! said everything they know (`prune`), so a half-listed source after a
//! restart cannot empty the map.

use axon_bpf::maps::ipcache::{host_key, IpcacheData, IpcacheEntry, FAMILY_BITS};
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::MapData;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

/// One desired or realized entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpcacheValue {
    pub identity: u32,
    pub local: bool,
}

/// What the reconciler writes to: the pinned map, or a fake in unit tests.
pub trait IpcacheWriter: Send {
    fn put(&mut self, ip: IpAddr, value: IpcacheValue) -> Result<(), String>;
    fn delete(&mut self, ip: IpAddr) -> Result<(), String>;
    /// Host entries (/32, /128) as they are in the map.
    fn entries(&self) -> Result<Vec<(IpAddr, IpcacheValue)>, String>;
}

pub struct PinnedIpcache(LpmTrie<MapData, IpcacheData, IpcacheEntry>);

impl PinnedIpcache {
    pub fn open(bpffs_root: &Path) -> Result<Self, String> {
        axon_bpf::maps::ipcache::open(bpffs_root).map(Self).map_err(|e| e.to_string())
    }
}

impl IpcacheWriter for PinnedIpcache {
    fn put(&mut self, ip: IpAddr, value: IpcacheValue) -> Result<(), String> {
        let flags = if value.local { axon_bpf::maps::ipcache::flags::LOCAL } else { 0 };
        self.0
            .insert(&host_key(ip), IpcacheEntry::new(value.identity, flags), 0)
            .map_err(|e| format!("axon_ipcache update {ip}: {e}"))
    }

    fn delete(&mut self, ip: IpAddr) -> Result<(), String> {
        match self.0.remove(&host_key(ip)) {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(format!("axon_ipcache delete {ip}: {e}")),
        }
    }

    fn entries(&self) -> Result<Vec<(IpAddr, IpcacheValue)>, String> {
        let mut out = Vec::new();
        for item in self.0.iter() {
            let (key, value): (Key<IpcacheData>, IpcacheEntry) =
                item.map_err(|e| format!("axon_ipcache iterate: {e}"))?;
            let Some(ip) = key.data().ip() else { continue };
            let host_bits = if ip.is_ipv4() { 32 } else { 128 };
            if key.prefix_len() != FAMILY_BITS + host_bits {
                continue;
            }
            let local = value.flags & axon_bpf::maps::ipcache::flags::LOCAL != 0;
            out.push((ip, IpcacheValue { identity: value.identity, local }));
        }
        Ok(out)
    }
}

pub struct IpcacheReconciler {
    writer: Box<dyn IpcacheWriter>,
    realized: BTreeMap<IpAddr, IpcacheValue>,
}

impl IpcacheReconciler {
    /// Adopts what the map holds now.
    pub fn restore(writer: Box<dyn IpcacheWriter>) -> Result<Self, String> {
        let realized = writer.entries()?.into_iter().collect();
        Ok(Self { writer, realized })
    }

    /// Forgets the model and re-reads the map (after a failed write).
    pub fn reload(&mut self) -> Result<(), String> {
        self.realized = self.writer.entries()?.into_iter().collect();
        Ok(())
    }

    pub fn realized(&self) -> &BTreeMap<IpAddr, IpcacheValue> {
        &self.realized
    }

    /// Makes the map equal `desired` (without `prune`: a superset of it).
    /// Returns the number of writes.
    pub fn sync(&mut self, desired: &BTreeMap<IpAddr, IpcacheValue>, prune: bool) -> Result<usize, String> {
        let mut writes = 0;
        for (ip, value) in desired {
            if self.realized.get(ip) != Some(value) {
                self.writer.put(*ip, *value)?;
                self.realized.insert(*ip, *value);
                writes += 1;
            }
        }
        if prune {
            let stale: Vec<IpAddr> = self.realized.keys().filter(|ip| !desired.contains_key(ip)).copied().collect();
            for ip in stale {
                self.writer.delete(ip)?;
                self.realized.remove(&ip);
                writes += 1;
            }
        }
        Ok(writes)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A map in memory that records every write.
    #[derive(Clone, Default)]
    pub struct FakeIpcache {
        pub map: Arc<Mutex<BTreeMap<IpAddr, IpcacheValue>>>,
        pub log: Arc<Mutex<Vec<String>>>,
    }

    impl IpcacheWriter for FakeIpcache {
        fn put(&mut self, ip: IpAddr, value: IpcacheValue) -> Result<(), String> {
            self.log.lock().unwrap().push(format!("put {ip} {}", value.identity));
            self.map.lock().unwrap().insert(ip, value);
            Ok(())
        }
        fn delete(&mut self, ip: IpAddr) -> Result<(), String> {
            self.log.lock().unwrap().push(format!("delete {ip}"));
            self.map.lock().unwrap().remove(&ip);
            Ok(())
        }
        fn entries(&self) -> Result<Vec<(IpAddr, IpcacheValue)>, String> {
            Ok(self.map.lock().unwrap().iter().map(|(k, v)| (*k, *v)).collect())
        }
    }

    fn v(identity: u32) -> IpcacheValue {
        IpcacheValue { identity, local: true }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn writes_only_changes_adds_before_removes_and_restores_from_the_map() {
        let fake = FakeIpcache::default();
        let mut r = IpcacheReconciler::restore(Box::new(fake.clone())).unwrap();
        let mut desired: BTreeMap<IpAddr, IpcacheValue> = [(ip("10.0.0.1"), v(256)), (ip("fd00::1"), v(256))].into();
        assert_eq!(r.sync(&desired, true).unwrap(), 2);
        assert_eq!(r.sync(&desired, true).unwrap(), 0);
        desired.remove(&ip("10.0.0.1"));
        desired.insert(ip("10.0.0.2"), v(257));
        fake.log.lock().unwrap().clear();
        assert_eq!(r.sync(&desired, true).unwrap(), 2);
        assert_eq!(*fake.log.lock().unwrap(), vec!["put 10.0.0.2 257".to_string(), "delete 10.0.0.1".to_string()]);

        // A restart adopts the map: nothing to write; without prune nothing is removed.
        let mut r = IpcacheReconciler::restore(Box::new(fake.clone())).unwrap();
        assert_eq!(r.sync(&desired, true).unwrap(), 0);
        assert_eq!(r.sync(&BTreeMap::new(), false).unwrap(), 0);
        assert_eq!(fake.map.lock().unwrap().len(), 2);
        assert_eq!(r.sync(&BTreeMap::new(), true).unwrap(), 2);
        assert!(fake.map.lock().unwrap().is_empty());
    }
}
