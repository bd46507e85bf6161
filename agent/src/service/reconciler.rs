//! The load-balancing reconciler: the one writer of the `axon_lb*` maps.
//!
//! It keeps a model of what the maps hold (`realized`), diffs each desired
//! service against it and writes only what changed, in an order that never
//! lets a concurrent BPF lookup follow a slot to a missing backend:
//! backends → reverse NAT → backend slots → master slot when adding, and
//! master → surplus slots → unreferenced backends when shrinking or removing.
//! Backend ids are refcounted per address so services share entries, and are
//! reused after release. At start-up the model is rebuilt from the pinned
//! maps themselves (`restore`), so an unchanged service causes no write at all
//! and entries nothing wants any more are found and removed.

use super::ids::{IdAllocator, IdError};
use crate::datapath::{BackendValue, DatapathError, Family, LbCapacity, LbMaps, SlotValue};
use axon_api::{L4Addr, Service};
use std::collections::{BTreeMap, HashMap, HashSet};
use tracing::{debug, info};

/// What one service looks like in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Realized {
    frontend: L4Addr,
    svc_type: u8,
    /// Backend id of slot 1..=len; 0 where a slot was found missing.
    slots: Vec<u32>,
    /// Whether the reverse-NAT entry is known to be right.
    rev_nat_ok: bool,
    /// Whether the master slot is known to be right.
    master_ok: bool,
}

#[derive(Debug, Clone, Copy)]
struct BackendRef {
    id: u32,
    refs: u32,
}

/// Entries found in the maps at start-up that no realized service explains.
#[derive(Debug, Default)]
struct Orphans {
    slots: Vec<(L4Addr, u16)>,
    rev_nat: Vec<(u32, Family)>,
}

/// Entry counts per map, indexed by family.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub service_entries: [u64; 2],
    pub backend_entries: [u64; 2],
    pub rev_nat_entries: [u64; 2],
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error("{map} would need {needed} entries but holds at most {max}")]
    Capacity { map: &'static str, needed: u64, max: u32 },
    #[error("backend ids: {0}")]
    Ids(#[from] IdError),
}

/// One change of a batch, for capacity planning: the service before (by id)
/// and after (`None` = deleted).
pub struct Change<'a> {
    pub id: u32,
    pub new: Option<&'a Service>,
}

pub struct Reconciler {
    maps: Box<dyn LbMaps>,
    capacity: LbCapacity,
    realized: HashMap<u32, Realized>,
    backends: HashMap<L4Addr, BackendRef>,
    backend_addrs: HashMap<u32, L4Addr>,
    backend_ids: IdAllocator,
    usage: Usage,
    orphans: Orphans,
}

fn fam_index(ip: &std::net::IpAddr) -> usize {
    match Family::of(ip) {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

impl Reconciler {
    /// Rebuilds the model from what the maps hold now. Nothing is written.
    pub fn restore(maps: Box<dyn LbMaps>) -> Result<Self, ReconcileError> {
        let capacity = maps.capacity();
        let mut r = Self {
            maps,
            capacity,
            realized: HashMap::new(),
            backends: HashMap::new(),
            backend_addrs: HashMap::new(),
            backend_ids: IdAllocator::new(1, u32::MAX - 1),
            usage: Usage::default(),
            orphans: Orphans::default(),
        };
        r.rebuild()?;
        Ok(r)
    }

    /// Forgets the model and reads it back from the maps: after a failed
    /// write the maps, not the model, are the truth.
    pub fn rebuild(&mut self) -> Result<(), ReconcileError> {
        let snapshot = self.maps.snapshot()?;
        self.realized.clear();
        self.backends.clear();
        self.backend_addrs.clear();
        self.backend_ids = IdAllocator::new(1, u32::MAX - 1);
        self.orphans = Orphans::default();
        self.restore_backends(&snapshot.backends);
        self.restore_services(&snapshot.slots);
        self.restore_rev_nat(&snapshot.rev_nat);
        self.usage = self.usage_from_model();
        info!(
            services = self.realized.len(),
            backends = self.backends.len(),
            orphan_slots = self.orphans.slots.len(),
            orphan_rev_nat = self.orphans.rev_nat.len(),
            "restored load-balancing state from the maps"
        );
        Ok(())
    }

    fn restore_backends(&mut self, backends: &[(u32, BackendValue)]) {
        for (id, value) in backends {
            if self.backends.contains_key(&value.addr) || self.backend_ids.reserve(*id).is_err() {
                // A second id for one address: unreferenced, so `sync` deletes it.
                self.backend_addrs.insert(*id, value.addr);
                continue;
            }
            self.backends.insert(value.addr, BackendRef { id: *id, refs: 0 });
            self.backend_addrs.insert(*id, value.addr);
        }
    }

    fn restore_services(&mut self, slots: &[(L4Addr, u16, SlotValue)]) {
        let mut by_frontend: BTreeMap<L4Addr, BTreeMap<u16, SlotValue>> = BTreeMap::new();
        for (fe, slot, value) in slots {
            by_frontend.entry(*fe).or_default().insert(*slot, *value);
        }
        for (fe, slots) in by_frontend {
            let master =
                slots.get(&0).filter(|m| m.rev_nat_index != 0 && !self.realized.contains_key(&m.rev_nat_index));
            let Some(master) = master.copied() else {
                self.orphans.slots.extend(slots.keys().map(|s| (fe, *s)));
                continue;
            };
            let mut backend_slots = Vec::with_capacity(master.count as usize);
            for slot in 1..=master.count {
                let id = slots
                    .get(&slot)
                    .map(|v| v.backend_id)
                    .filter(|id| self.backend_addrs.contains_key(id))
                    .unwrap_or(0);
                backend_slots.push(id);
            }
            for id in &backend_slots {
                self.add_ref(*id);
            }
            self.orphans.slots.extend(slots.keys().filter(|s| **s > master.count).map(|s| (fe, *s)));
            self.realized.insert(
                master.rev_nat_index,
                Realized {
                    frontend: fe,
                    svc_type: master.svc_type,
                    slots: backend_slots,
                    rev_nat_ok: false,
                    master_ok: true,
                },
            );
        }
    }

    fn restore_rev_nat(&mut self, rev_nat: &[(u32, std::net::IpAddr, u16)]) {
        for (id, ip, port) in rev_nat {
            match self.realized.get_mut(id) {
                Some(r) if r.frontend.address == *ip && r.frontend.port == *port => r.rev_nat_ok = true,
                Some(r) if Family::of(&r.frontend.address) == Family::of(ip) => {} // rewritten by apply
                _ => self.orphans.rev_nat.push((*id, Family::of(ip))),
            }
        }
    }

    fn add_ref(&mut self, id: u32) {
        if let Some(addr) = self.backend_addrs.get(&id) {
            if let Some(b) = self.backends.get_mut(addr).filter(|b| b.id == id) {
                b.refs += 1;
            }
        }
    }

    fn usage_from_model(&self) -> Usage {
        let mut u = Usage::default();
        for r in self.realized.values() {
            let f = fam_index(&r.frontend.address);
            u.service_entries[f] += r.slots.len() as u64 + 1;
            u.rev_nat_entries[f] += 1;
        }
        for addr in self.backends.keys() {
            u.backend_entries[fam_index(&addr.address)] += 1;
        }
        u
    }

    /// Makes the maps hold exactly `desired`: removes what is not wanted,
    /// applies every desired service (a no-op where nothing changed), then
    /// deletes orphans left from before.
    pub fn sync<'a>(&mut self, desired: impl IntoIterator<Item = &'a Service>) -> Result<(), ReconcileError> {
        let desired: Vec<&Service> = desired.into_iter().collect();
        let wanted: HashSet<u32> = desired.iter().map(|s| s.id).collect();
        let unwanted: Vec<u32> = self.realized.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in unwanted {
            self.remove(id)?;
        }
        for svc in desired {
            self.apply(svc)?;
        }
        self.delete_orphans()
    }

    fn delete_orphans(&mut self) -> Result<(), ReconcileError> {
        let orphans = std::mem::take(&mut self.orphans);
        let live_slots: HashMap<L4Addr, usize> = self.realized.values().map(|r| (r.frontend, r.slots.len())).collect();
        for (fe, slot) in orphans.slots {
            let still_used = slot > 0 && live_slots.get(&fe).is_some_and(|n| slot as usize <= *n);
            let is_live_master = slot == 0 && live_slots.contains_key(&fe);
            if !still_used && !is_live_master {
                debug!(frontend = %fe, slot, "deleting orphan service slot");
                self.maps.delete_slot(&fe, slot)?;
            }
        }
        for (id, family) in orphans.rev_nat {
            let live = self.realized.get(&id).is_some_and(|r| Family::of(&r.frontend.address) == family);
            if !live {
                self.maps.delete_rev_nat(id, family)?;
            }
        }
        let unreferenced: Vec<(u32, L4Addr)> = self
            .backend_addrs
            .iter()
            .filter(|(id, addr)| self.backends.get(addr).is_none_or(|b| b.id != **id || b.refs == 0))
            .map(|(id, addr)| (*id, *addr))
            .collect();
        for (id, addr) in unreferenced {
            self.drop_backend(id, addr)?;
        }
        Ok(())
    }

    /// Writes one service, changing only what differs from the maps.
    pub fn apply(&mut self, svc: &Service) -> Result<(), ReconcileError> {
        if self.realized.get(&svc.id).is_some_and(|old| old.frontend != svc.frontend) {
            self.remove(svc.id)?;
        }
        let old = self.realized.get(&svc.id).cloned();
        let fe = svc.frontend;
        let svc_type = svc.svc_type.datapath_value();
        let new_slots =
            svc.backends.iter().map(|b| self.acquire_backend(svc.backend_addr(b))).collect::<Result<Vec<u32>, _>>()?;

        if !old.as_ref().is_some_and(|o| o.rev_nat_ok) {
            self.maps.put_rev_nat(svc.id, &fe)?;
        }
        let old_slots: &[u32] = old.as_ref().map(|o| o.slots.as_slice()).unwrap_or(&[]);
        for (i, backend_id) in new_slots.iter().enumerate() {
            if old_slots.get(i) != Some(backend_id) {
                let value = SlotValue { backend_id: *backend_id, rev_nat_index: svc.id, count: 0, svc_type, flags: 0 };
                self.maps.put_slot(&fe, slot_number(i), &value)?;
            }
        }
        let master_changed =
            !old.as_ref().is_some_and(|o| o.master_ok && o.slots.len() == new_slots.len() && o.svc_type == svc_type);
        if master_changed {
            let count = u16::try_from(new_slots.len()).map_err(|_| ReconcileError::Capacity {
                map: "backend slots of one service",
                needed: new_slots.len() as u64,
                max: u16::MAX as u32,
            })?;
            let master = SlotValue { backend_id: 0, rev_nat_index: svc.id, count, svc_type, flags: 0 };
            self.maps.put_slot(&fe, 0, &master)?;
        }
        for i in new_slots.len()..old_slots.len() {
            self.maps.delete_slot(&fe, slot_number(i))?;
        }

        let f = fam_index(&fe.address);
        self.usage.service_entries[f] = self.usage.service_entries[f] + new_slots.len() as u64 + 1
            - old.as_ref().map_or(0, |o| o.slots.len() as u64 + 1);
        if old.is_none() {
            self.usage.rev_nat_entries[f] += 1;
        }
        let old_slots = old.map(|o| o.slots).unwrap_or_default();
        self.realized
            .insert(svc.id, Realized { frontend: fe, svc_type, slots: new_slots, rev_nat_ok: true, master_ok: true });
        for id in old_slots {
            self.release_backend(id)?;
        }
        Ok(())
    }

    /// Removes one service: master first, so no new connection picks a slot
    /// that is about to go.
    pub fn remove(&mut self, id: u32) -> Result<(), ReconcileError> {
        let Some(old) = self.realized.get(&id).cloned() else { return Ok(()) };
        let fe = old.frontend;
        self.maps.delete_slot(&fe, 0)?;
        for i in 0..old.slots.len() {
            self.maps.delete_slot(&fe, slot_number(i))?;
        }
        self.maps.delete_rev_nat(id, Family::of(&fe.address))?;
        self.realized.remove(&id);
        let f = fam_index(&fe.address);
        self.usage.service_entries[f] -= old.slots.len() as u64 + 1;
        self.usage.rev_nat_entries[f] -= 1;
        for backend_id in old.slots {
            self.release_backend(backend_id)?;
        }
        Ok(())
    }

    fn acquire_backend(&mut self, addr: L4Addr) -> Result<u32, ReconcileError> {
        if let Some(b) = self.backends.get_mut(&addr) {
            b.refs += 1;
            return Ok(b.id);
        }
        let id = self.backend_ids.allocate()?;
        let value = BackendValue { addr, state: axon_bpf::maps::backend_state::ACTIVE };
        if let Err(e) = self.maps.put_backend(id, &value) {
            self.backend_ids.release(id);
            return Err(e.into());
        }
        self.backends.insert(addr, BackendRef { id, refs: 1 });
        self.backend_addrs.insert(id, addr);
        self.usage.backend_entries[fam_index(&addr.address)] += 1;
        Ok(id)
    }

    fn release_backend(&mut self, id: u32) -> Result<(), ReconcileError> {
        let Some(addr) = self.backend_addrs.get(&id).copied() else { return Ok(()) };
        let Some(b) = self.backends.get_mut(&addr).filter(|b| b.id == id) else { return Ok(()) };
        b.refs = b.refs.saturating_sub(1);
        if b.refs == 0 {
            self.drop_backend(id, addr)?;
        }
        Ok(())
    }

    fn drop_backend(&mut self, id: u32, addr: L4Addr) -> Result<(), ReconcileError> {
        self.maps.delete_backend(id, Family::of(&addr.address))?;
        self.backend_addrs.remove(&id);
        if self.backends.get(&addr).is_some_and(|b| b.id == id) {
            self.backends.remove(&addr);
            self.usage.backend_entries[fam_index(&addr.address)] -= 1;
            self.backend_ids.release(id);
        }
        Ok(())
    }

    /// Refuses a batch that could not fit in the maps, before anything is
    /// written. Walks the batch in order and checks the peak of every map:
    /// within one service, additions happen before removals.
    pub fn check_capacity(&self, changes: &[Change<'_>]) -> Result<(), ReconcileError> {
        let mut usage = self.usage;
        let mut peak = usage;
        let mut new_backends: HashSet<L4Addr> = HashSet::new();
        let mut gone: HashSet<u32> = HashSet::new();
        let bump = |peak: &mut Usage, usage: &Usage| {
            for f in 0..2 {
                peak.service_entries[f] = peak.service_entries[f].max(usage.service_entries[f]);
                peak.backend_entries[f] = peak.backend_entries[f].max(usage.backend_entries[f]);
                peak.rev_nat_entries[f] = peak.rev_nat_entries[f].max(usage.rev_nat_entries[f]);
            }
        };
        for change in changes {
            let old = self.realized.get(&change.id).filter(|_| !gone.contains(&change.id));
            let same_frontend = matches!((old, change.new), (Some(o), Some(n)) if o.frontend == n.frontend);
            if let Some(o) = old.filter(|_| !same_frontend) {
                let f = fam_index(&o.frontend.address);
                usage.service_entries[f] -= o.slots.len() as u64 + 1;
                usage.rev_nat_entries[f] -= 1;
            }
            let Some(new) = change.new else {
                gone.insert(change.id);
                continue;
            };
            let f = fam_index(&new.frontend.address);
            for b in &new.backends {
                let addr = new.backend_addr(b);
                if !self.backends.contains_key(&addr) && new_backends.insert(addr) {
                    usage.backend_entries[fam_index(&addr.address)] += 1;
                }
            }
            let old_len = old.filter(|_| same_frontend).map(|o| o.slots.len() as u64 + 1);
            let new_len = new.backends.len() as u64 + 1;
            usage.service_entries[f] += new_len.saturating_sub(old_len.unwrap_or(0));
            if old_len.is_none() {
                usage.rev_nat_entries[f] += 1;
            }
            bump(&mut peak, &usage);
            if let Some(old_len) = old_len {
                usage.service_entries[f] -= old_len.saturating_sub(new_len);
            }
        }
        bump(&mut peak, &usage);
        let cap = self.capacity;
        let checks: [(&'static str, u64, u32); 6] = [
            (axon_bpf::maps::names::LB4_SERVICES, peak.service_entries[0], cap.service_entries),
            (axon_bpf::maps::names::LB6_SERVICES, peak.service_entries[1], cap.service_entries),
            (axon_bpf::maps::names::LB4_BACKENDS, peak.backend_entries[0], cap.backend_entries),
            (axon_bpf::maps::names::LB6_BACKENDS, peak.backend_entries[1], cap.backend_entries),
            (axon_bpf::maps::names::LB4_REVERSE_NAT, peak.rev_nat_entries[0], cap.rev_nat_entries),
            (axon_bpf::maps::names::LB6_REVERSE_NAT, peak.rev_nat_entries[1], cap.rev_nat_entries),
        ];
        for (map, needed, max) in checks {
            if needed > max as u64 {
                return Err(ReconcileError::Capacity { map, needed, max });
            }
        }
        Ok(())
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    pub fn capacity(&self) -> LbCapacity {
        self.capacity
    }

    /// Whether the model says service `id` is in the maps exactly as `svc`.
    pub fn is_realized(&self, svc: &Service) -> bool {
        self.realized.get(&svc.id).is_some_and(|r| {
            r.frontend == svc.frontend
                && r.slots.len() == svc.backends.len()
                && r.slots
                    .iter()
                    .zip(&svc.backends)
                    .all(|(id, b)| self.backends.get(&svc.backend_addr(b)).is_some_and(|br| br.id == *id))
        })
    }
}

fn slot_number(index: usize) -> u16 {
    // Slot counts were bounded by `u16` when the master was sized.
    u16::try_from(index + 1).unwrap_or(u16::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datapath::LbSnapshot;
    use axon_api::{Backend, Protocol, ServiceType};
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    /// In-memory maps that check, after every single write, that a reader
    /// could never follow a master → slot → backend chain to nothing.
    #[derive(Default)]
    pub(crate) struct FakeMaps {
        pub slots: BTreeMap<(L4Addr, u16), SlotValue>,
        pub backends: BTreeMap<u32, BackendValue>,
        pub rev_nat: BTreeMap<u32, (IpAddr, u16)>,
        pub writes: usize,
        pub max_entries: u32,
    }

    impl FakeMaps {
        fn check_invariant(&self) {
            for ((fe, slot), v) in &self.slots {
                if *slot != 0 {
                    continue;
                }
                for s in 1..=v.count {
                    let slot_value = self
                        .slots
                        .get(&(*fe, s))
                        .unwrap_or_else(|| panic!("{fe}: master count {} but slot {s} missing", v.count));
                    assert!(
                        self.backends.contains_key(&slot_value.backend_id),
                        "{fe} slot {s} → missing backend {}",
                        slot_value.backend_id
                    );
                }
                assert!(self.rev_nat.contains_key(&v.rev_nat_index), "{fe}: master before its rev-NAT entry");
            }
        }
    }

    #[derive(Clone, Default)]
    pub(crate) struct SharedFake(pub Arc<Mutex<FakeMaps>>);

    impl SharedFake {
        fn with<R>(&self, f: impl FnOnce(&mut FakeMaps) -> R) -> R {
            let mut m = self.0.lock().unwrap();
            let r = f(&mut m);
            m.check_invariant();
            r
        }
    }

    impl LbMaps for SharedFake {
        fn put_backend(&mut self, id: u32, backend: &BackendValue) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.backends.insert(id, *backend);
            });
            Ok(())
        }
        fn delete_backend(&mut self, id: u32, _: Family) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.backends.remove(&id);
            });
            Ok(())
        }
        fn put_slot(&mut self, fe: &L4Addr, slot: u16, value: &SlotValue) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.slots.insert((*fe, slot), *value);
            });
            Ok(())
        }
        fn delete_slot(&mut self, fe: &L4Addr, slot: u16) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.slots.remove(&(*fe, slot));
            });
            Ok(())
        }
        fn put_rev_nat(&mut self, id: u32, fe: &L4Addr) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.rev_nat.insert(id, (fe.address, fe.port));
            });
            Ok(())
        }
        fn delete_rev_nat(&mut self, id: u32, _: Family) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.rev_nat.remove(&id);
            });
            Ok(())
        }
        fn snapshot(&self) -> Result<LbSnapshot, DatapathError> {
            let m = self.0.lock().unwrap();
            Ok(LbSnapshot {
                slots: m.slots.iter().map(|((fe, s), v)| (*fe, *s, *v)).collect(),
                backends: m.backends.iter().map(|(id, v)| (*id, *v)).collect(),
                rev_nat: m.rev_nat.iter().map(|(id, (ip, port))| (*id, *ip, *port)).collect(),
            })
        }
        fn capacity(&self) -> LbCapacity {
            let max = self.0.lock().unwrap().max_entries;
            let max = if max == 0 { 65536 } else { max };
            LbCapacity { service_entries: max, backend_entries: max, rev_nat_entries: max }
        }
    }

    pub(crate) fn svc(id: u32, vip: &str, port: u16, backends: &[&str]) -> Service {
        Service {
            id,
            name: None,
            frontend: L4Addr::new(vip.parse().unwrap(), port, Protocol::Tcp),
            backends: backends
                .iter()
                .map(|b| {
                    let (ip, port) = axon_api::validate::parse_ip_port(b).unwrap();
                    Backend::new(ip, port)
                })
                .collect(),
            svc_type: ServiceType::ClusterIP,
            options: Default::default(),
        }
    }

    fn fresh() -> (SharedFake, Reconciler) {
        let fake = SharedFake::default();
        let r = Reconciler::restore(Box::new(fake.clone())).unwrap();
        (fake, r)
    }

    fn writes(f: &SharedFake) -> usize {
        f.0.lock().unwrap().writes
    }

    #[test]
    fn add_writes_backends_rev_nat_slots_and_master() {
        let (fake, mut r) = fresh();
        r.apply(&svc(1, "10.96.0.1", 80, &["10.0.0.1:8080", "10.0.0.2:8080"])).unwrap();
        let m = fake.0.lock().unwrap();
        assert_eq!(m.slots.len(), 3);
        assert_eq!(m.backends.len(), 2);
        assert_eq!(m.slots[&(svc(1, "10.96.0.1", 80, &[]).frontend, 0)].count, 2);
        assert_eq!(m.writes, 2 + 1 + 2 + 1);
    }

    #[test]
    fn unchanged_service_writes_nothing() {
        let (fake, mut r) = fresh();
        let s = svc(1, "10.96.0.1", 80, &["10.0.0.1:8080", "10.0.0.2:8080"]);
        r.apply(&s).unwrap();
        let before = writes(&fake);
        r.apply(&s).unwrap();
        assert_eq!(writes(&fake), before);
    }

    #[test]
    fn diff_touches_only_changed_slots() {
        let (fake, mut r) = fresh();
        r.apply(&svc(1, "10.96.0.1", 80, &["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"])).unwrap();
        let before = writes(&fake);
        // Replace the last backend: one new backend, one slot, one backend delete.
        r.apply(&svc(1, "10.96.0.1", 80, &["10.0.0.1:1", "10.0.0.2:1", "10.0.0.4:1"])).unwrap();
        assert_eq!(writes(&fake) - before, 3);
        // Shrink to one: master, two slot deletes, two backend deletes.
        let before = writes(&fake);
        r.apply(&svc(1, "10.96.0.1", 80, &["10.0.0.1:1"])).unwrap();
        assert_eq!(writes(&fake) - before, 5);
        let m = fake.0.lock().unwrap();
        assert_eq!((m.slots.len(), m.backends.len()), (2, 1));
    }

    #[test]
    fn shared_backends_are_refcounted_and_ids_reused() {
        let (fake, mut r) = fresh();
        r.apply(&svc(1, "10.96.0.1", 80, &["10.0.0.1:80"])).unwrap();
        r.apply(&svc(2, "10.96.0.2", 80, &["10.0.0.1:80", "10.0.0.2:80"])).unwrap();
        assert_eq!(fake.0.lock().unwrap().backends.len(), 2);
        r.remove(1).unwrap();
        assert_eq!(fake.0.lock().unwrap().backends.len(), 2, "still used by service 2");
        r.remove(2).unwrap();
        let m = fake.0.lock().unwrap();
        assert!(m.backends.is_empty() && m.slots.is_empty() && m.rev_nat.is_empty());
        drop(m);
        assert_eq!(r.usage(), Usage::default());
        r.apply(&svc(3, "10.96.0.3", 80, &["10.0.0.9:80"])).unwrap();
        assert_eq!(fake.0.lock().unwrap().backends.keys().copied().collect::<Vec<_>>(), vec![1], "id 1 reused");
    }

    #[test]
    fn frontend_change_moves_the_service() {
        let (fake, mut r) = fresh();
        r.apply(&svc(1, "10.96.0.1", 80, &["10.0.0.1:80"])).unwrap();
        r.apply(&svc(1, "fd00::1", 80, &["[fd00::a]:80"])).unwrap();
        let m = fake.0.lock().unwrap();
        assert!(m.slots.keys().all(|(fe, _)| fe.address.is_ipv6()));
        assert_eq!(m.backends.len(), 1);
    }

    #[test]
    fn restore_then_sync_is_silent_and_removes_orphans() {
        let (fake, mut r) = fresh();
        let a = svc(1, "10.96.0.1", 80, &["10.0.0.1:80", "10.0.0.2:80"]);
        let b = svc(7, "10.96.0.7", 53, &["10.0.0.3:53"]);
        r.apply(&a).unwrap();
        r.apply(&b).unwrap();
        drop(r);
        // Junk a crashed writer could leave: a slot beyond the count, a slot
        // with no master, a backend and a rev-NAT entry nobody uses.
        {
            let mut m = fake.0.lock().unwrap();
            let fe = a.frontend;
            m.slots.insert((fe, 5), SlotValue { backend_id: 1, rev_nat_index: 1, ..Default::default() });
            let stray = L4Addr::new("10.96.9.9".parse().unwrap(), 1, Protocol::Udp);
            m.slots.insert((stray, 1), SlotValue { backend_id: 1, rev_nat_index: 99, ..Default::default() });
            m.backends.insert(
                42,
                BackendValue { addr: L4Addr::new("10.9.9.9".parse().unwrap(), 9, Protocol::Tcp), state: 0 },
            );
            m.rev_nat.insert(99, ("10.96.9.9".parse().unwrap(), 1));
        }
        let mut r = Reconciler::restore(Box::new(fake.clone())).unwrap();
        let before = writes(&fake);
        r.sync([&a, &b]).unwrap();
        let m = fake.0.lock().unwrap();
        assert_eq!(m.writes - before, 4, "only the four orphans are deleted");
        assert_eq!(m.slots.len(), 3 + 2);
        assert_eq!(m.backends.len(), 3);
        assert_eq!(m.rev_nat.len(), 2);
        drop(m);
        // Desired state lost service 7: sync removes it, its backend goes too.
        r.sync([&a]).unwrap();
        let m = fake.0.lock().unwrap();
        assert_eq!((m.slots.len(), m.backends.len(), m.rev_nat.len()), (3, 2, 1));
    }

    #[test]
    fn restore_repairs_a_service_with_a_missing_slot() {
        let (fake, mut r) = fresh();
        let a = svc(1, "10.96.0.1", 80, &["10.0.0.1:80", "10.0.0.2:80"]);
        r.apply(&a).unwrap();
        drop(r);
        fake.0.lock().unwrap().slots.remove(&(a.frontend, 2));
        // The invariant checker would trip on the next write unless the repair
        // writes the slot before anything else touches that master.
        let mut r = Reconciler::restore(Box::new(fake.clone())).unwrap();
        r.sync([&a]).unwrap();
        assert_eq!(fake.0.lock().unwrap().slots.len(), 3);
        assert!(r.is_realized(&a));
    }

    #[test]
    fn capacity_is_checked_before_any_write() {
        let fake = SharedFake::default();
        fake.0.lock().unwrap().max_entries = 4;
        let mut r = Reconciler::restore(Box::new(fake.clone())).unwrap();
        let fits = svc(1, "10.96.0.1", 80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        r.check_capacity(&[Change { id: 1, new: Some(&fits) }]).unwrap();
        let too_big = svc(1, "10.96.0.1", 80, &["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"]);
        let err = r.check_capacity(&[Change { id: 1, new: Some(&too_big) }]).unwrap_err();
        assert!(matches!(err, ReconcileError::Capacity { map: "axon_lb4_services", needed: 5, max: 4 }), "{err}");
        r.apply(&fits).unwrap();
        // Replacing in place needs no extra room; a second service does.
        r.check_capacity(&[Change { id: 1, new: Some(&fits) }]).unwrap();
        let other = svc(2, "10.96.0.2", 80, &[]);
        assert!(r.check_capacity(&[Change { id: 2, new: Some(&other) }]).is_err());
        // ...unless the batch deletes service 1 first.
        r.check_capacity(&[Change { id: 1, new: None }, Change { id: 2, new: Some(&other) }]).unwrap();
    }
}
