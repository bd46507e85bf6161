//! The load-balancing reconciler: the one writer of the `axon_lb*` maps.
//!
//! It keeps a model of what the maps hold (`realized`), diffs each desired
//! service against it and writes only what changed, in an order that never
//! lets a concurrent BPF lookup follow a reference to nothing: backends →
//! reverse NAT → source ranges → Maglev table → backend slots → master when
//! adding (the internal scope before the external master that points at it),
//! and master → surplus slots → tables, ranges → unreferenced backends when
//! shrinking or removing. Backend ids are refcounted per address so services
//! share entries, and are reused after release. At start-up the model is
//! rebuilt from the pinned maps themselves (`restore`), so an unchanged
//! service causes no write at all and entries nothing wants are removed.

use super::ids::{IdAllocator, IdError};
use super::maglev;
use crate::datapath::{BackendValue, DatapathError, Family, LbCapacity, LbMaps, MaglevEntry, SlotKey, SlotValue};
use axon_api::{Cidr, L4Addr, LbAlgorithm, LbMode, Service};
use axon_bpf::maps::{backend_state, scope, svc_flags};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use tracing::{debug, info};

/// Agent-wide settings that shape what a service becomes in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LbSettings {
    /// This node's name: backends whose `node` matches are local.
    pub node_name: String,
    /// Mode of north-south services that do not choose one.
    pub default_mode: LbMode,
    /// Algorithm of north-south services that do not choose one.
    pub default_algorithm: LbAlgorithm,
    /// Entries of each Maglev table (a prime).
    pub maglev_table_size: u32,
}

impl Default for LbSettings {
    fn default() -> Self {
        Self {
            node_name: String::new(),
            default_mode: LbMode::Snat,
            default_algorithm: LbAlgorithm::Random,
            maglev_table_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }
}

/// What one scope of a service looks like in the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ScopeState {
    /// The master slot as written; `None` when missing or unknown.
    master: Option<SlotValue>,
    /// Backend id of slot 1..=len; 0 where a slot was found missing.
    slots: Vec<u32>,
    /// The Maglev table as written (empty: none); u32::MAX where missing.
    maglev: Vec<u32>,
}

/// The scopes of one service, by scope id, ascending. A sorted vector, not a
/// map: services have one or two, and a `BTreeMap` node reserves room for
/// eleven (most of the agent's memory at 100k services, measured).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Scopes(Vec<(u8, ScopeState)>);

impl Scopes {
    fn position(&self, scope: u8) -> Result<usize, usize> {
        self.0.binary_search_by_key(&scope, |(s, _)| *s)
    }
    fn get(&self, scope: &u8) -> Option<&ScopeState> {
        self.position(*scope).ok().map(|i| &self.0[i].1)
    }
    fn get_mut(&mut self, scope: &u8) -> Option<&mut ScopeState> {
        self.position(*scope).ok().map(|i| &mut self.0[i].1)
    }
    fn contains_key(&self, scope: &u8) -> bool {
        self.position(*scope).is_ok()
    }
    fn insert(&mut self, scope: u8, state: ScopeState) {
        match self.position(scope) {
            Ok(i) => self.0[i].1 = state,
            Err(i) => {
                self.0.reserve_exact(1);
                self.0.insert(i, (scope, state));
            }
        }
    }
    fn iter(&self) -> impl DoubleEndedIterator<Item = (&u8, &ScopeState)> {
        self.0.iter().map(|(s, st)| (s, st))
    }
    fn values(&self) -> impl Iterator<Item = &ScopeState> {
        self.0.iter().map(|(_, st)| st)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Backend id → address. Ids are handed out lowest-first, so they are dense
/// and a vector indexed by id is half the size of a hash map; an id from the
/// maps beyond any sane count (a corrupt pin) goes to the overflow map.
#[derive(Debug, Default)]
struct BackendAddrs {
    dense: Vec<Option<L4Addr>>,
    sparse: HashMap<u32, L4Addr>,
}

impl BackendAddrs {
    const DENSE_LIMIT: u32 = 1 << 24;

    fn get(&self, id: &u32) -> Option<&L4Addr> {
        match self.dense.get(*id as usize) {
            Some(slot) => slot.as_ref(),
            None => self.sparse.get(id),
        }
    }
    fn contains_key(&self, id: &u32) -> bool {
        self.get(id).is_some()
    }
    fn insert(&mut self, id: u32, addr: L4Addr) {
        if id >= Self::DENSE_LIMIT {
            self.sparse.insert(id, addr);
            return;
        }
        let i = id as usize;
        if i >= self.dense.len() {
            self.dense.resize(i + 1, None);
        }
        self.dense[i] = Some(addr);
    }
    fn remove(&mut self, id: &u32) {
        match self.dense.get_mut(*id as usize) {
            Some(slot) => *slot = None,
            None => {
                self.sparse.remove(id);
            }
        }
    }
    fn clear(&mut self) {
        self.dense.clear();
        self.sparse.clear();
    }
    fn iter(&self) -> impl Iterator<Item = (u32, &L4Addr)> {
        let dense = self.dense.iter().enumerate().filter_map(|(i, a)| a.as_ref().map(|a| (i as u32, a)));
        dense.chain(self.sparse.iter().map(|(id, a)| (*id, a)))
    }
}

/// What one service looks like in the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Realized {
    frontend: L4Addr,
    scopes: Scopes,
    source_ranges: BTreeSet<Cidr>,
    /// Whether the reverse-NAT entry is known to be right.
    rev_nat_ok: bool,
    /// Backend ids of terminating backends: kept in the backend maps (so the
    /// flows already on them drain) but in no slot (so no new flow picks them).
    draining: Vec<u32>,
}

/// What one scope of a service should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ScopePlan {
    scope: u8,
    backends: Vec<BackendValue>,
    master: SlotValue,
    maglev: bool,
}

/// What one service should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    frontend: L4Addr,
    /// Internal scope (if any) first: it must exist before the external
    /// master that announces it.
    scopes: Vec<ScopePlan>,
    source_ranges: BTreeSet<Cidr>,
}

#[derive(Debug, Clone, Copy)]
struct BackendRef {
    id: u32,
    refs: u32,
    state: u8,
}

/// Entries found in the maps at start-up that no realized service explains.
#[derive(Debug, Default)]
struct Orphans {
    slots: Vec<SlotKey>,
    rev_nat: Vec<(u32, Family)>,
    maglev: Vec<(u32, u8, u32)>,
    source_ranges: Vec<(u32, Cidr)>,
}

/// Entry counts per map, indexed by family where the maps are per family.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub service_entries: [u64; 2],
    pub backend_entries: [u64; 2],
    pub rev_nat_entries: [u64; 2],
    pub source_range_entries: [u64; 2],
    pub maglev_entries: u64,
}

impl Usage {
    fn zip(self, other: Usage, f: impl Fn(u64, u64) -> u64) -> Usage {
        let pair = |a: [u64; 2], b: [u64; 2]| [f(a[0], b[0]), f(a[1], b[1])];
        Usage {
            service_entries: pair(self.service_entries, other.service_entries),
            backend_entries: pair(self.backend_entries, other.backend_entries),
            rev_nat_entries: pair(self.rev_nat_entries, other.rev_nat_entries),
            source_range_entries: pair(self.source_range_entries, other.source_range_entries),
            maglev_entries: f(self.maglev_entries, other.maglev_entries),
        }
    }
    fn plus(self, o: Usage) -> Usage {
        self.zip(o, |a, b| a + b)
    }
    fn minus(self, o: Usage) -> Usage {
        self.zip(o, |a, b| a.saturating_sub(b))
    }
    fn max(self, o: Usage) -> Usage {
        self.zip(o, u64::max)
    }
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

/// One change of a batch, for capacity planning: the service after
/// (`None` = deleted).
pub struct Change<'a> {
    pub id: u32,
    pub new: Option<&'a Service>,
}

pub struct Reconciler {
    maps: Box<dyn LbMaps>,
    capacity: LbCapacity,
    settings: LbSettings,
    realized: HashMap<u32, Realized>,
    backends: HashMap<L4Addr, BackendRef>,
    backend_addrs: BackendAddrs,
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

fn slot_number(index: usize) -> u16 {
    // Slot counts were bounded by `u16` when the plan was made.
    u16::try_from(index + 1).unwrap_or(u16::MAX)
}

/// What a realized service occupies in the maps (backends are counted apart,
/// being shared).
fn footprint(r: &Realized) -> Usage {
    let f = fam_index(&r.frontend.address);
    let mut u = Usage::default();
    u.rev_nat_entries[f] = 1;
    for s in r.scopes.values() {
        u.service_entries[f] += s.slots.len() as u64 + 1;
        u.maglev_entries += s.maglev.len() as u64;
    }
    for range in &r.source_ranges {
        u.source_range_entries[fam_index(&range.address)] += 1;
    }
    u
}

fn plan_footprint(p: &Plan, maglev_size: u32) -> Usage {
    let f = fam_index(&p.frontend.address);
    let mut u = Usage::default();
    u.rev_nat_entries[f] = 1;
    for s in &p.scopes {
        u.service_entries[f] += s.backends.len() as u64 + 1;
        if s.maglev && !s.backends.is_empty() {
            u.maglev_entries += maglev_size as u64;
        }
    }
    for range in &p.source_ranges {
        u.source_range_entries[fam_index(&range.address)] += 1;
    }
    u
}

impl Reconciler {
    /// Rebuilds the model from what the maps hold now. Nothing is written.
    pub fn restore(maps: Box<dyn LbMaps>, settings: LbSettings) -> Result<Self, ReconcileError> {
        let capacity = maps.capacity();
        let mut r = Self {
            maps,
            capacity,
            settings,
            realized: HashMap::new(),
            backends: HashMap::new(),
            backend_addrs: BackendAddrs::default(),
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
        self.restore_maglev(&snapshot.maglev);
        self.restore_source_ranges(&snapshot.source_ranges);
        self.restore_rev_nat(&snapshot.rev_nat);
        self.usage = self.usage_from_model();
        info!(
            services = self.realized.len(),
            backends = self.backends.len(),
            orphan_slots = self.orphans.slots.len(),
            orphan_rev_nat = self.orphans.rev_nat.len(),
            orphan_maglev = self.orphans.maglev.len(),
            orphan_source_ranges = self.orphans.source_ranges.len(),
            "restored load-balancing state from the maps"
        );
        Ok(())
    }

    fn restore_backends(&mut self, backends: &[(u32, BackendValue)]) {
        for (id, value) in backends {
            self.backend_addrs.insert(*id, value.addr);
            if self.backends.contains_key(&value.addr) || self.backend_ids.reserve(*id).is_err() {
                // A second id for one address: unreferenced, so `sync` deletes it.
                continue;
            }
            self.backends.insert(value.addr, BackendRef { id: *id, refs: 0, state: value.state });
        }
    }

    fn restore_services(&mut self, slots: &[(SlotKey, SlotValue)]) {
        let mut by_scope: BTreeMap<(u8, L4Addr), BTreeMap<u16, SlotValue>> = BTreeMap::new();
        for (key, value) in slots {
            by_scope.entry((key.scope, key.frontend)).or_default().insert(key.slot, *value);
        }
        // External scopes first: they create the services internal scopes attach to.
        let (external, internal): (Vec<_>, Vec<_>) =
            by_scope.into_iter().partition(|((s, _), _)| *s == scope::EXTERNAL);
        for ((scope_id, fe), slots) in external.into_iter().chain(internal) {
            let orphan_all = |o: &mut Orphans| {
                o.slots.extend(slots.keys().map(|s| SlotKey { frontend: fe, scope: scope_id, slot: *s }))
            };
            let Some(master) = slots.get(&0).copied().filter(|m| m.rev_nat_index != 0) else {
                orphan_all(&mut self.orphans);
                continue;
            };
            let id = master.rev_nat_index;
            let fits = match self.realized.get(&id) {
                None => scope_id == scope::EXTERNAL,
                Some(r) => r.frontend == fe && !r.scopes.contains_key(&scope_id),
            };
            if !fits {
                orphan_all(&mut self.orphans);
                continue;
            }
            let backend_slots: Vec<u32> = (1..=master.count)
                .map(|slot| {
                    slots.get(&slot).map(|v| v.backend_id).filter(|id| self.backend_addrs.contains_key(id)).unwrap_or(0)
                })
                .collect();
            for backend_id in &backend_slots {
                self.add_ref(*backend_id);
            }
            self.orphans.slots.extend(slots.keys().filter(|s| **s > master.count).map(|s| SlotKey {
                frontend: fe,
                scope: scope_id,
                slot: *s,
            }));
            let realized = self.realized.entry(id).or_insert_with(|| Realized {
                frontend: fe,
                scopes: Scopes::default(),
                source_ranges: BTreeSet::new(),
                rev_nat_ok: false,
                // Not in any slot, so not in the maps' shape: the first apply acquires them again.
                draining: Vec::new(),
            });
            realized
                .scopes
                .insert(scope_id, ScopeState { master: Some(master), slots: backend_slots, maglev: Vec::new() });
        }
    }

    fn restore_maglev(&mut self, entries: &[MaglevEntry]) {
        let m = self.settings.maglev_table_size as usize;
        for e in entries {
            let table = self
                .realized
                .get_mut(&e.rev_nat_index)
                .and_then(|r| r.scopes.get_mut(&e.scope))
                .filter(|_| (e.index as usize) < m);
            match table {
                Some(s) => {
                    if s.maglev.len() < m {
                        s.maglev.resize(m, u32::MAX);
                    }
                    s.maglev[e.index as usize] = e.backend_id;
                }
                None => self.orphans.maglev.push((e.rev_nat_index, e.scope, e.index)),
            }
        }
    }

    fn restore_source_ranges(&mut self, ranges: &[(u32, Cidr)]) {
        for (id, range) in ranges {
            match self.realized.get_mut(id) {
                Some(r) => {
                    r.source_ranges.insert(*range);
                }
                None => self.orphans.source_ranges.push((*id, *range)),
            }
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
        let mut u = self.realized.values().fold(Usage::default(), |acc, r| acc.plus(footprint(r)));
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
        let by_frontend: HashMap<L4Addr, u32> = self.realized.iter().map(|(id, r)| (r.frontend, *id)).collect();
        for key in orphans.slots {
            let live = by_frontend
                .get(&key.frontend)
                .and_then(|id| self.realized[id].scopes.get(&key.scope))
                .is_some_and(|s| key.slot as usize <= s.slots.len());
            if !live {
                debug!(frontend = %key.frontend, scope = key.scope, slot = key.slot, "deleting orphan service slot");
                self.maps.delete_slot(&key)?;
            }
        }
        for (id, scope_id, index) in orphans.maglev {
            let live = self
                .realized
                .get(&id)
                .and_then(|r| r.scopes.get(&scope_id))
                .is_some_and(|s| (index as usize) < s.maglev.len());
            if !live {
                self.maps.delete_maglev(id, scope_id, index)?;
            }
        }
        for (id, range) in orphans.source_ranges {
            if !self.realized.get(&id).is_some_and(|r| r.source_ranges.contains(&range)) {
                self.maps.delete_source_range(id, &range)?;
            }
        }
        for (id, family) in orphans.rev_nat {
            if self.realized.get(&id).is_none_or(|r| Family::of(&r.frontend.address) != family) {
                self.maps.delete_rev_nat(id, family)?;
            }
        }
        let unreferenced: Vec<(u32, L4Addr)> = self
            .backend_addrs
            .iter()
            .filter(|(id, addr)| self.backends.get(*addr).is_none_or(|b| b.id != *id || b.refs == 0))
            .map(|(id, addr)| (id, *addr))
            .collect();
        for (id, addr) in unreferenced {
            self.drop_backend(id, addr)?;
        }
        Ok(())
    }

    /// Which backends a scope serves, given a traffic policy.
    fn scope_backends(&self, svc: &Service, local_only: bool) -> Vec<BackendValue> {
        svc.backends
            .iter()
            .filter(|b| b.state.takes_new_connections())
            .map(|b| {
                let local =
                    !self.settings.node_name.is_empty() && b.node.as_deref() == Some(self.settings.node_name.as_str());
                let state = backend_state::ACTIVE | if local { backend_state::F_LOCAL } else { 0 };
                (BackendValue { addr: svc.backend_addr(b), state }, local)
            })
            .filter(|(_, local)| !local_only || *local)
            .map(|(v, _)| v)
            .collect()
    }

    /// The terminating backends of `svc`, as the backend map holds them.
    fn draining_backends(&self, svc: &Service) -> Vec<BackendValue> {
        svc.backends
            .iter()
            .filter(|b| !b.state.takes_new_connections())
            .map(|b| {
                let local =
                    !self.settings.node_name.is_empty() && b.node.as_deref() == Some(self.settings.node_name.as_str());
                let state = backend_state::TERMINATING | if local { backend_state::F_LOCAL } else { 0 };
                BackendValue { addr: svc.backend_addr(b), state }
            })
            .collect()
    }

    /// What `svc` should be in the maps, under this agent's settings.
    fn plan(&self, svc: &Service) -> Plan {
        let o = &svc.options;
        let north_south = svc.svc_type.is_north_south();
        let internal_local = !o.internal_traffic_policy.is_cluster();
        let external_local = north_south && !o.external_traffic_policy.is_cluster();
        // ClusterIP is only reached from inside: its one (external-keyed) scope follows iTP.
        let external = self.scope_backends(svc, if north_south { external_local } else { internal_local });
        let internal = self.scope_backends(svc, internal_local);
        let two_scopes = north_south && internal != external;

        let mut flags = 0u8;
        let affinity_timeout = o.session_affinity.map(|a| a.timeout_seconds).unwrap_or(0);
        if o.session_affinity.is_some() {
            flags |= svc_flags::AFFINITY;
        }
        if svc.frontend.address.is_unspecified() {
            flags |= svc_flags::NODEPORT_WILDCARD;
        }
        let maglev = north_south && o.algorithm.unwrap_or(self.settings.default_algorithm) == LbAlgorithm::Maglev;
        let mut external_flags = flags;
        if two_scopes {
            external_flags |= svc_flags::TWO_SCOPES;
        }
        if !o.source_ranges.is_empty() {
            external_flags |= svc_flags::SRC_RANGES;
        }
        if north_south && o.mode.unwrap_or(self.settings.default_mode).uses_dsr(svc.frontend.protocol) {
            external_flags |= svc_flags::DSR;
        }
        if maglev {
            external_flags |= svc_flags::MAGLEV;
        }
        let master = |backends: &[BackendValue], flags: u8| SlotValue {
            backend_id: affinity_timeout,
            rev_nat_index: svc.id,
            count: u16::try_from(backends.len()).unwrap_or(u16::MAX),
            svc_type: svc.svc_type.datapath_value(),
            flags,
        };
        let mut scopes = Vec::with_capacity(2);
        if two_scopes {
            scopes.push(ScopePlan {
                scope: scope::INTERNAL,
                master: master(&internal, flags),
                backends: internal,
                maglev: false,
            });
        }
        scopes.push(ScopePlan {
            scope: scope::EXTERNAL,
            master: master(&external, external_flags),
            backends: external,
            maglev,
        });
        Plan { frontend: svc.frontend, scopes, source_ranges: o.source_ranges.iter().copied().collect() }
    }

    /// Writes one service, changing only what differs from the maps.
    pub fn apply(&mut self, svc: &Service) -> Result<(), ReconcileError> {
        if svc.backends.len() > u16::MAX as usize {
            return Err(ReconcileError::Capacity {
                map: "backend slots of one service",
                needed: svc.backends.len() as u64,
                max: u16::MAX as u32,
            });
        }
        if self.realized.get(&svc.id).is_some_and(|old| old.frontend != svc.frontend) {
            self.remove(svc.id)?;
        }
        let plan = self.plan(svc);
        let old = self.realized.get(&svc.id).cloned();
        let fe = plan.frontend;

        // Everything the new masters will point at exists before them.
        let mut new_scopes = Scopes::default();
        let mut acquired: Vec<u32> = Vec::new();
        for sp in &plan.scopes {
            let ids = sp.backends.iter().map(|b| self.acquire_backend(b)).collect::<Result<Vec<u32>, _>>()?;
            acquired.extend(&ids);
            new_scopes.insert(sp.scope, ScopeState { master: Some(sp.master), slots: ids, maglev: Vec::new() });
        }
        let draining =
            self.draining_backends(svc).iter().map(|b| self.acquire_backend(b)).collect::<Result<Vec<u32>, _>>()?;
        if !old.as_ref().is_some_and(|o| o.rev_nat_ok) {
            self.maps.put_rev_nat(svc.id, &fe)?;
        }
        let old_ranges = old.as_ref().map(|o| o.source_ranges.clone()).unwrap_or_default();
        for range in plan.source_ranges.difference(&old_ranges) {
            self.maps.put_source_range(svc.id, range)?;
        }
        for sp in &plan.scopes {
            let old_scope = old.as_ref().and_then(|o| o.scopes.get(&sp.scope)).cloned().unwrap_or_default();
            let state = new_scopes.get_mut(&sp.scope).map(std::mem::take).unwrap_or_default();
            let written = self.write_scope(svc.id, fe, sp, state, &old_scope)?;
            new_scopes.insert(sp.scope, written);
        }
        // Scopes the service no longer has: their master went first (the
        // external master no longer announces them).
        if let Some(o) = &old {
            for (scope_id, old_scope) in o.scopes.iter().filter(|(s, _)| !new_scopes.contains_key(s)) {
                self.remove_scope(svc.id, fe, *scope_id, old_scope)?;
            }
        }
        for range in old_ranges.difference(&plan.source_ranges) {
            self.maps.delete_source_range(svc.id, range)?;
        }

        let new = Realized {
            frontend: fe,
            scopes: new_scopes,
            source_ranges: plan.source_ranges,
            rev_nat_ok: true,
            draining,
        };
        self.usage = self.usage.minus(old.as_ref().map(footprint).unwrap_or_default()).plus(footprint(&new));
        self.realized.insert(svc.id, new);
        let old_ids = old.iter().flat_map(|o| o.scopes.values().flat_map(|s| s.slots.iter()).chain(&o.draining));
        for id in old_ids.copied().collect::<Vec<u32>>() {
            self.release_backend(id)?;
        }
        Ok(())
    }

    /// One scope: Maglev table, then slots, then master, then surplus slots.
    fn write_scope(
        &mut self,
        id: u32,
        fe: L4Addr,
        sp: &ScopePlan,
        mut state: ScopeState,
        old: &ScopeState,
    ) -> Result<ScopeState, ReconcileError> {
        let key = |slot: u16| SlotKey { frontend: fe, scope: sp.scope, slot };
        if sp.maglev && !state.slots.is_empty() {
            state.maglev = self.write_maglev(id, sp, &state.slots, &old.maglev)?;
        }
        for (i, backend_id) in state.slots.iter().enumerate() {
            if old.slots.get(i) != Some(backend_id) {
                let value = SlotValue {
                    backend_id: *backend_id,
                    rev_nat_index: id,
                    count: 0,
                    svc_type: sp.master.svc_type,
                    flags: 0,
                };
                self.maps.put_slot(&key(slot_number(i)), &value)?;
            }
        }
        if old.master != Some(sp.master) {
            self.maps.put_slot(&key(0), &sp.master)?;
        }
        for i in state.slots.len()..old.slots.len() {
            self.maps.delete_slot(&key(slot_number(i)))?;
        }
        if state.maglev.is_empty() {
            for index in 0..old.maglev.len() {
                self.maps.delete_maglev(id, sp.scope, index as u32)?;
            }
        }
        Ok(state)
    }

    /// Writes the entries of a scope's Maglev table that differ from `old`.
    fn write_maglev(
        &mut self,
        id: u32,
        sp: &ScopePlan,
        slots: &[u32],
        old: &[u32],
    ) -> Result<Vec<u32>, ReconcileError> {
        let named: Vec<(String, u32)> =
            sp.backends.iter().zip(slots).map(|(b, id)| (b.addr.to_string(), *id)).collect();
        let table = maglev::table(&named, self.settings.maglev_table_size);
        for (index, backend_id) in table.iter().enumerate() {
            if old.get(index) != Some(backend_id) {
                let entry =
                    MaglevEntry { rev_nat_index: id, scope: sp.scope, index: index as u32, backend_id: *backend_id };
                self.maps.put_maglev(&entry)?;
            }
        }
        for index in table.len()..old.len() {
            self.maps.delete_maglev(id, sp.scope, index as u32)?;
        }
        Ok(table)
    }

    fn remove_scope(&mut self, id: u32, fe: L4Addr, scope_id: u8, old: &ScopeState) -> Result<(), ReconcileError> {
        let key = |slot: u16| SlotKey { frontend: fe, scope: scope_id, slot };
        self.maps.delete_slot(&key(0))?;
        for i in 0..old.slots.len() {
            self.maps.delete_slot(&key(slot_number(i)))?;
        }
        for index in 0..old.maglev.len() {
            self.maps.delete_maglev(id, scope_id, index as u32)?;
        }
        Ok(())
    }

    /// Removes one service: external master first, so no new connection
    /// picks anything that is about to go.
    pub fn remove(&mut self, id: u32) -> Result<(), ReconcileError> {
        let Some(old) = self.realized.get(&id).cloned() else { return Ok(()) };
        let fe = old.frontend;
        for (scope_id, state) in old.scopes.iter().rev() {
            self.remove_scope(id, fe, *scope_id, state)?;
        }
        for range in &old.source_ranges {
            self.maps.delete_source_range(id, range)?;
        }
        self.maps.delete_rev_nat(id, Family::of(&fe.address))?;
        self.realized.remove(&id);
        self.usage = self.usage.minus(footprint(&old));
        for backend_id in old.scopes.values().flat_map(|s| s.slots.iter()).chain(&old.draining) {
            self.release_backend(*backend_id)?;
        }
        Ok(())
    }

    fn acquire_backend(&mut self, value: &BackendValue) -> Result<u32, ReconcileError> {
        if let Some(b) = self.backends.get(&value.addr).copied() {
            if b.state != value.state {
                // The same address now known as (not) local: one in-place update.
                self.maps.put_backend(b.id, value)?;
            }
            self.backends.insert(value.addr, BackendRef { id: b.id, refs: b.refs + 1, state: value.state });
            return Ok(b.id);
        }
        let id = self.backend_ids.allocate()?;
        if let Err(e) = self.maps.put_backend(id, value) {
            self.backend_ids.release(id);
            return Err(e.into());
        }
        self.backends.insert(value.addr, BackendRef { id, refs: 1, state: value.state });
        self.backend_addrs.insert(id, value.addr);
        self.usage.backend_entries[fam_index(&value.addr.address)] += 1;
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
    /// written. Walks the batch in order: a service's old and new entries
    /// coexist while it is rewritten in place; a moved or deleted one is
    /// gone before the next change.
    pub fn check_capacity(&self, changes: &[Change<'_>]) -> Result<(), ReconcileError> {
        let mut usage = self.usage;
        let mut peak = usage;
        let mut new_backends: HashSet<L4Addr> = HashSet::new();
        let mut gone: HashSet<u32> = HashSet::new();
        for change in changes {
            let old = self.realized.get(&change.id).filter(|_| !gone.contains(&change.id));
            let old_fp = old.map(footprint).unwrap_or_default();
            let Some(new) = change.new else {
                usage = usage.minus(old_fp);
                gone.insert(change.id);
                continue;
            };
            let plan = self.plan(new);
            let draining = self.draining_backends(new);
            for b in plan.scopes.iter().flat_map(|sp| sp.backends.iter()).chain(&draining) {
                if !self.backends.contains_key(&b.addr) && new_backends.insert(b.addr) {
                    usage.backend_entries[fam_index(&b.addr.address)] += 1;
                }
            }
            let new_fp = plan_footprint(&plan, self.settings.maglev_table_size);
            let in_place = old.is_some_and(|o| o.frontend == new.frontend);
            let during =
                if in_place { usage.minus(old_fp).plus(old_fp.max(new_fp)) } else { usage.minus(old_fp).plus(new_fp) };
            peak = peak.max(during);
            usage = usage.minus(old_fp).plus(new_fp);
        }
        let cap = self.capacity;
        use axon_bpf::maps::names;
        let checks: [(&'static str, u64, u32); 9] = [
            (names::LB4_SERVICES, peak.service_entries[0], cap.service_entries),
            (names::LB6_SERVICES, peak.service_entries[1], cap.service_entries),
            (names::LB4_BACKENDS, peak.backend_entries[0], cap.backend_entries),
            (names::LB6_BACKENDS, peak.backend_entries[1], cap.backend_entries),
            (names::LB4_REVERSE_NAT, peak.rev_nat_entries[0], cap.rev_nat_entries),
            (names::LB6_REVERSE_NAT, peak.rev_nat_entries[1], cap.rev_nat_entries),
            (names::LB4_SOURCE_RANGE, peak.source_range_entries[0], cap.source_range_entries),
            (names::LB6_SOURCE_RANGE, peak.source_range_entries[1], cap.source_range_entries),
            (names::LB_MAGLEV, peak.maglev_entries, cap.maglev_entries),
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

    pub fn settings(&self) -> &LbSettings {
        &self.settings
    }

    /// How many of `svc`'s backends are on this node (kube-proxy's health
    /// check answer).
    pub fn local_backend_count(&self, svc: &Service) -> usize {
        self.scope_backends(svc, true).len()
    }

    /// Whether the model says service `svc` is in the maps exactly as planned.
    pub fn is_realized(&self, svc: &Service) -> bool {
        let plan = self.plan(svc);
        let draining = self.draining_backends(svc);
        self.realized.get(&svc.id).is_some_and(|r| {
            r.draining.len() == draining.len()
                && r.draining
                    .iter()
                    .zip(&draining)
                    .all(|(id, b)| self.backends.get(&b.addr).is_some_and(|br| br.id == *id && br.state == b.state))
                && r.frontend == plan.frontend
                && r.source_ranges == plan.source_ranges
                && r.scopes.len() == plan.scopes.len()
                && plan.scopes.iter().all(|sp| {
                    r.scopes.get(&sp.scope).is_some_and(|s| {
                        s.master == Some(sp.master)
                            && s.slots.len() == sp.backends.len()
                            && s.slots
                                .iter()
                                .zip(&sp.backends)
                                .all(|(id, b)| self.backends.get(&b.addr).is_some_and(|br| br.id == *id))
                    })
                })
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datapath::LbSnapshot;
    use axon_api::{Backend, Protocol, ServiceOptions, ServiceType, SessionAffinity, TrafficPolicy};
    use std::net::IpAddr;
    use std::sync::{Arc, Mutex};

    /// In-memory maps that check, after every single write, that a reader
    /// could never follow a master → slot → backend chain to nothing.
    #[derive(Default)]
    pub(crate) struct FakeMaps {
        pub slots: BTreeMap<SlotKey, SlotValue>,
        pub maglev: BTreeMap<(u32, u8, u32), u32>,
        pub ranges: BTreeSet<(u32, Cidr)>,
        pub backends: BTreeMap<u32, BackendValue>,
        pub rev_nat: BTreeMap<u32, (IpAddr, u16)>,
        pub writes: usize,
        pub max_entries: u32,
    }

    impl FakeMaps {
        fn check_invariant(&self) {
            for (key, v) in self.slots.iter().filter(|(k, _)| k.slot == 0) {
                let fe = key.frontend;
                for s in 1..=v.count {
                    let slot_key = SlotKey { slot: s, ..*key };
                    let slot_value = self
                        .slots
                        .get(&slot_key)
                        .unwrap_or_else(|| panic!("{fe}: master count {} but slot {s} missing", v.count));
                    assert!(
                        self.backends.contains_key(&slot_value.backend_id),
                        "{fe} slot {s} → missing backend {}",
                        slot_value.backend_id
                    );
                }
                assert!(self.rev_nat.contains_key(&v.rev_nat_index), "{fe}: master before its rev-NAT entry");
                if v.flags & svc_flags::TWO_SCOPES != 0 {
                    let internal = SlotKey { scope: scope::INTERNAL, ..*key };
                    assert!(self.slots.contains_key(&internal), "{fe}: TWO_SCOPES before the internal master");
                }
                if v.flags & svc_flags::MAGLEV != 0 && v.count > 0 {
                    let table: Vec<u32> = self
                        .maglev
                        .range((v.rev_nat_index, key.scope, 0)..=(v.rev_nat_index, key.scope, u32::MAX))
                        .map(|(_, b)| *b)
                        .collect();
                    assert!(!table.is_empty(), "{fe}: MAGLEV before its table");
                    assert!(
                        table.iter().all(|b| self.backends.contains_key(b)),
                        "{fe}: Maglev entry → missing backend"
                    );
                }
                if v.flags & svc_flags::SRC_RANGES != 0 {
                    assert!(
                        self.ranges.iter().any(|(id, _)| *id == v.rev_nat_index),
                        "{fe}: SRC_RANGES before the ranges"
                    );
                }
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
        fn put_slot(&mut self, key: &SlotKey, value: &SlotValue) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.slots.insert(*key, *value);
            });
            Ok(())
        }
        fn delete_slot(&mut self, key: &SlotKey) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.slots.remove(key);
            });
            Ok(())
        }
        fn put_maglev(&mut self, e: &MaglevEntry) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.maglev.insert((e.rev_nat_index, e.scope, e.index), e.backend_id);
            });
            Ok(())
        }
        fn delete_maglev(&mut self, id: u32, scope: u8, index: u32) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.maglev.remove(&(id, scope, index));
            });
            Ok(())
        }
        fn put_source_range(&mut self, id: u32, range: &Cidr) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.ranges.insert((id, *range));
            });
            Ok(())
        }
        fn delete_source_range(&mut self, id: u32, range: &Cidr) -> Result<(), DatapathError> {
            self.with(|m| {
                m.writes += 1;
                m.ranges.remove(&(id, *range));
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
                slots: m.slots.iter().map(|(k, v)| (*k, *v)).collect(),
                maglev: m
                    .maglev
                    .iter()
                    .map(|((id, scope, index), b)| MaglevEntry {
                        rev_nat_index: *id,
                        scope: *scope,
                        index: *index,
                        backend_id: *b,
                    })
                    .collect(),
                source_ranges: m.ranges.iter().copied().collect(),
                backends: m.backends.iter().map(|(id, v)| (*id, *v)).collect(),
                rev_nat: m.rev_nat.iter().map(|(id, (ip, port))| (*id, *ip, *port)).collect(),
            })
        }
        fn capacity(&self) -> LbCapacity {
            let max = self.0.lock().unwrap().max_entries;
            let max = if max == 0 { 65536 } else { max };
            LbCapacity {
                service_entries: max,
                backend_entries: max,
                rev_nat_entries: max,
                maglev_entries: max.max(1 << 20),
                source_range_entries: max,
            }
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
        let r = Reconciler::restore(Box::new(fake.clone()), LbSettings::default()).unwrap();
        (fake, r)
    }

    fn writes(f: &SharedFake) -> usize {
        f.0.lock().unwrap().writes
    }

    #[test]
    fn terminating_backends_drain_out_of_the_slots_but_stay_in_the_backend_map() {
        let (fake, mut r) = fresh();
        let mut s = svc(1, "10.96.0.1", 80, &["10.0.0.1:80", "10.0.0.2:80"]);
        r.apply(&s).unwrap();
        s.backends[0].state = axon_api::BackendState::Terminating;
        r.apply(&s).unwrap();
        assert!(r.is_realized(&s));
        {
            let m = fake.0.lock().unwrap();
            // Master + one slot: only 10.0.0.2 takes new connections.
            assert_eq!(m.slots.len(), 2);
            let slot = m.slots.iter().find(|(k, _)| k.slot == 1).map(|(_, v)| v.backend_id).unwrap();
            assert_eq!(m.backends[&slot].addr.address.to_string(), "10.0.0.2");
            // 10.0.0.1 stays resolvable for the flows already on it.
            let draining: Vec<_> =
                m.backends.values().filter(|b| b.state & 0x7f == backend_state::TERMINATING).collect();
            assert_eq!(draining.len(), 1);
            assert_eq!(draining[0].addr.address.to_string(), "10.0.0.1");
        }
        // A restart rebuilds the model from the maps and keeps the drain hold.
        let mut r = Reconciler::restore(Box::new(fake.clone()), LbSettings::default()).unwrap();
        r.sync([&s]).unwrap();
        assert!(r.is_realized(&s));
        assert_eq!(fake.0.lock().unwrap().backends.len(), 2);
        // Gone from the endpoints: gone from the maps.
        s.backends.remove(0);
        r.apply(&s).unwrap();
        assert_eq!(fake.0.lock().unwrap().backends.len(), 1);
        r.remove(1).unwrap();
        let m = fake.0.lock().unwrap();
        assert!(m.backends.is_empty() && m.slots.is_empty());
    }

    #[test]
    fn add_writes_backends_rev_nat_slots_and_master() {
        let (fake, mut r) = fresh();
        r.apply(&svc(1, "10.96.0.1", 80, &["10.0.0.1:8080", "10.0.0.2:8080"])).unwrap();
        let m = fake.0.lock().unwrap();
        assert_eq!(m.slots.len(), 3);
        assert_eq!(m.backends.len(), 2);
        assert_eq!(m.slots[&SlotKey { frontend: svc(1, "10.96.0.1", 80, &[]).frontend, scope: 0, slot: 0 }].count, 2);
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
        assert!(m.slots.keys().all(|k| k.frontend.address.is_ipv6()));
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
            m.slots.insert(
                SlotKey { frontend: fe, scope: 0, slot: 5 },
                SlotValue { backend_id: 1, rev_nat_index: 1, ..Default::default() },
            );
            let stray = L4Addr::new("10.96.9.9".parse().unwrap(), 1, Protocol::Udp);
            m.slots.insert(
                SlotKey { frontend: stray, scope: 0, slot: 1 },
                SlotValue { backend_id: 1, rev_nat_index: 99, ..Default::default() },
            );
            m.backends.insert(
                42,
                BackendValue { addr: L4Addr::new("10.9.9.9".parse().unwrap(), 9, Protocol::Tcp), state: 0 },
            );
            m.rev_nat.insert(99, ("10.96.9.9".parse().unwrap(), 1));
        }
        let mut r = Reconciler::restore(Box::new(fake.clone()), LbSettings::default()).unwrap();
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
        fake.0.lock().unwrap().slots.remove(&SlotKey { frontend: a.frontend, scope: 0, slot: 2 });
        // The invariant checker would trip on the next write unless the repair
        // writes the slot before anything else touches that master.
        let mut r = Reconciler::restore(Box::new(fake.clone()), LbSettings::default()).unwrap();
        r.sync([&a]).unwrap();
        assert_eq!(fake.0.lock().unwrap().slots.len(), 3);
        assert!(r.is_realized(&a));
    }

    #[test]
    fn capacity_is_checked_before_any_write() {
        let fake = SharedFake::default();
        fake.0.lock().unwrap().max_entries = 4;
        let mut r = Reconciler::restore(Box::new(fake.clone()), LbSettings::default()).unwrap();
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

    fn ns(
        id: u32,
        frontend: &str,
        svc_type: ServiceType,
        backends: &[(&str, &str)],
        options: ServiceOptions,
    ) -> Service {
        let (ip, port) = axon_api::validate::parse_frontend_arg(frontend).map(|f| (f.address, f.port)).unwrap();
        Service {
            id,
            name: None,
            frontend: L4Addr::new(ip, port, Protocol::Tcp),
            backends: backends
                .iter()
                .map(|(b, node)| {
                    let (ip, port) = axon_api::validate::parse_ip_port(b).unwrap();
                    Backend::new(ip, port).on_node(*node)
                })
                .collect(),
            svc_type,
            options,
        }
    }

    fn with_settings(settings: LbSettings) -> (SharedFake, Reconciler) {
        let fake = SharedFake::default();
        let r = Reconciler::restore(Box::new(fake.clone()), settings).unwrap();
        (fake, r)
    }

    fn node1() -> LbSettings {
        LbSettings { node_name: "node-1".into(), maglev_table_size: 251, ..LbSettings::default() }
    }

    const TWO_NODES: [(&str, &str); 3] =
        [("10.1.0.1:80", "node-1"), ("10.2.0.1:80", "node-2"), ("10.2.0.2:80", "node-2")];

    #[test]
    fn external_traffic_policy_local_writes_two_scopes() {
        let (fake, mut r) = with_settings(node1());
        let opts = ServiceOptions { external_traffic_policy: TrafficPolicy::Local, ..Default::default() };
        let s = ns(5, "0.0.0.0:30080", ServiceType::NodePort, &TWO_NODES, opts);
        r.apply(&s).unwrap();
        let m = fake.0.lock().unwrap();
        let master = |scope| m.slots[&SlotKey { frontend: s.frontend, scope, slot: 0 }];
        assert_eq!(master(scope::EXTERNAL).count, 1, "external traffic: only the local backend");
        assert_eq!(master(scope::INTERNAL).count, 3, "in-node clients: all backends");
        let ext = master(scope::EXTERNAL).flags;
        assert_eq!(
            ext & (svc_flags::TWO_SCOPES | svc_flags::NODEPORT_WILDCARD),
            svc_flags::TWO_SCOPES | svc_flags::NODEPORT_WILDCARD
        );
        let local: Vec<u8> = m.backends.values().map(|b| b.state & backend_state::F_LOCAL).collect();
        assert_eq!(local.iter().filter(|f| **f != 0).count(), 1, "one backend flagged local");
        drop(m);
        assert_eq!(r.local_backend_count(&s), 1);
        // Back to Cluster: the internal scope goes, after the external master stops announcing it.
        r.apply(&ns(5, "0.0.0.0:30080", ServiceType::NodePort, &TWO_NODES, ServiceOptions::default())).unwrap();
        let m = fake.0.lock().unwrap();
        assert!(m.slots.keys().all(|k| k.scope == scope::EXTERNAL));
        assert_eq!(m.slots.len(), 4);
    }

    #[test]
    fn maglev_tables_are_written_diffed_and_removed() {
        let (fake, mut r) = with_settings(node1());
        let opts = ServiceOptions { algorithm: Some(LbAlgorithm::Maglev), ..Default::default() };
        let s = ns(9, "10.0.0.100:80", ServiceType::LoadBalancer, &TWO_NODES, opts.clone());
        r.apply(&s).unwrap();
        assert_eq!(fake.0.lock().unwrap().maglev.len(), 251);
        let before = writes(&fake);
        // One backend of three goes: its entries move, few others do.
        let fewer = ns(9, "10.0.0.100:80", ServiceType::LoadBalancer, &TWO_NODES[..2], opts.clone());
        r.apply(&fewer).unwrap();
        let moved = writes(&fake) - before - 3; // master, slot delete, backend delete
        assert!(moved < 251 / 3 + 20, "{moved} table entries rewritten");
        // Unchanged: nothing written. Restored: nothing written either.
        let before = writes(&fake);
        r.apply(&fewer).unwrap();
        drop(r);
        let mut r = Reconciler::restore(Box::new(fake.clone()), node1()).unwrap();
        r.sync([&fewer]).unwrap();
        assert_eq!(writes(&fake), before);
        r.remove(9).unwrap();
        let m = fake.0.lock().unwrap();
        assert!(m.maglev.is_empty() && m.slots.is_empty() && m.backends.is_empty());
    }

    #[test]
    fn affinity_dsr_and_source_ranges_reach_the_master() {
        let (fake, mut r) = with_settings(LbSettings { default_mode: LbMode::Hybrid, ..node1() });
        let opts = ServiceOptions {
            session_affinity: Some(SessionAffinity { timeout_seconds: 600 }),
            source_ranges: vec!["10.77.0.0/24".parse().unwrap(), "fd77::/64".parse().unwrap()],
            ..Default::default()
        };
        let s = ns(3, "10.0.0.100:443", ServiceType::LoadBalancer, &TWO_NODES, opts);
        r.apply(&s).unwrap();
        let m = fake.0.lock().unwrap();
        let master = m.slots[&SlotKey { frontend: s.frontend, scope: 0, slot: 0 }];
        assert_eq!(master.backend_id, 600, "affinity timeout rides in the master");
        assert_eq!(master.flags & svc_flags::DSR, svc_flags::DSR, "hybrid: TCP is DSR");
        assert_eq!(m.ranges.len(), 2);
        drop(m);
        let mut fewer = s.clone();
        fewer.options.source_ranges.pop();
        r.apply(&fewer).unwrap();
        assert_eq!(fake.0.lock().unwrap().ranges.len(), 1);
        fewer.options.source_ranges.clear();
        r.apply(&fewer).unwrap();
        assert!(fake.0.lock().unwrap().ranges.is_empty());
    }

    #[test]
    fn capacity_counts_maglev_tables() {
        let fake = SharedFake::default();
        fake.0.lock().unwrap().max_entries = 64;
        let r = Reconciler::restore(Box::new(fake.clone()), node1()).unwrap();
        let opts = ServiceOptions { algorithm: Some(LbAlgorithm::Maglev), ..Default::default() };
        let s = ns(1, "10.0.0.100:80", ServiceType::LoadBalancer, &TWO_NODES, opts);
        // 251 entries per table against a maglev map of 2^20: fits.
        r.check_capacity(&[Change { id: 1, new: Some(&s) }]).unwrap();
    }
}
