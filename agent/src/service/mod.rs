//! The service model: the desired set of services (frontend, backends, type),
//! the checks that need the whole set (duplicate frontends, limits, ids, map
//! room), and the order of effects: validate → persist → reconcile. Every
//! source (the local API, Kubernetes) goes through here; nothing downstream
//! knows where a service came from.
//!
//! Services of an external source are *owned*: their name is `OWNER:PORT`
//! (Kubernetes: `namespace/name:port`; the API refuses ':' in names), the
//! source replaces or deletes all services of one owner in one commit
//! ([`ServiceManager::replace_owned`]), and the local API may read them but
//! not change them (409 naming the owner).

pub mod ids;
pub mod maglev;
pub mod reconciler;

use crate::datapath::LbMaps;
use crate::store::{Store, StoreError};
use axon_api::{FieldError, L4Addr, Protocol, Service, ServiceSpec, ServiceType};
use ids::IdAllocator;
use reconciler::{Change, LbSettings, ReconcileError, Reconciler};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use tracing::{error, info};

/// Limits a single request must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_backends_per_service: usize,
    /// NodePorts and health check ports come from this range (inclusive).
    pub nodeport_range: (u16, u16),
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_backends_per_service: 4096, nodeport_range: (30000, 32767) }
    }
}

/// A node-wide port a service holds: a NodePort/HostPort frontend, or a
/// health check port. Two claims collide on the same port and protocol when
/// either is on every address or both are on the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PortClaim {
    port: u16,
    protocol: Protocol,
    address: IpAddr,
    /// Which field of the service holds it, for messages.
    field: &'static str,
}

fn port_claims(svc: &Service) -> Vec<PortClaim> {
    let mut claims = Vec::new();
    if svc.svc_type.allows_wildcard() {
        let f = svc.frontend;
        claims.push(PortClaim { port: f.port, protocol: f.protocol, address: f.address, field: "frontend.port" });
    }
    if let Some(port) = svc.options.health_check_node_port {
        let any = if svc.frontend.address.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u8; 16]) };
        claims.push(PortClaim { port, protocol: Protocol::Tcp, address: any, field: "healthCheckNodePort" });
    }
    claims
}

fn claims_collide(a: &PortClaim, b: &PortClaim) -> bool {
    a.port == b.port
        && a.protocol == b.protocol
        && a.address.is_ipv4() == b.address.is_ipv4()
        && (a.address.is_unspecified() || b.address.is_unspecified() || a.address == b.address)
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or breaks a rule: 400.
    #[error("{0}")]
    Invalid(FieldError),
    /// No such service: 404.
    #[error("id: service {0} does not exist")]
    NotFound(u32),
    /// The request collides with another service: 409.
    #[error("{0}")]
    Conflict(FieldError),
    /// The maps have no room for it: 507.
    #[error("{0}")]
    NoRoom(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("datapath: {0}")]
    Datapath(ReconcileError),
}

impl ServiceError {
    pub fn field(&self) -> Option<&str> {
        match self {
            ServiceError::Invalid(e) | ServiceError::Conflict(e) => Some(&e.field),
            ServiceError::NotFound(_) => Some("id"),
            _ => None,
        }
    }
}

fn from_reconcile(e: ReconcileError) -> ServiceError {
    match e {
        ReconcileError::Capacity { .. } => ServiceError::NoRoom(e.to_string()),
        ReconcileError::Datapath(crate::datapath::DatapathError::MapFull { .. }) => ServiceError::NoRoom(e.to_string()),
        e => ServiceError::Datapath(e),
    }
}

/// The desired services live in the store only: the manager keeps the
/// indexes its checks need (frontends, ids, node-wide ports), and the
/// reconciler keeps what the maps hold. A second in-memory copy of every
/// service was a third of the agent's memory at 100k services.
pub struct ServiceManager {
    frontends: HashMap<L4Addr, u32>,
    service_ids: IdAllocator,
    count: usize,
    /// (port, protocol) → the services holding node-wide ports on it.
    port_owners: HashMap<(u16, Protocol), HashSet<u32>>,
    /// The node-wide ports of each service that holds any.
    claims: HashMap<u32, Vec<PortClaim>>,
    /// Owner (`namespace/name` of a Kubernetes Service) → its services.
    owned: HashMap<String, HashSet<u32>>,
    store: Store,
    reconciler: Reconciler,
    limits: Limits,
}

/// The owner of a source-owned service: its name up to the ':' (names the
/// local API accepts have none).
pub fn owner_of(svc: &Service) -> Option<&str> {
    svc.name.as_deref().and_then(|n| n.split_once(':')).map(|(owner, _)| owner)
}

/// Where a spec sits in the request, for error messages ("" or "services[3]").
fn field_of(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

impl ServiceManager {
    /// Loads the store, rebuilds the datapath model from the pinned maps and
    /// makes the maps match the store (removing orphans): the same path as any
    /// change, so every start exercises it.
    pub fn start(
        store: Store,
        maps: Box<dyn LbMaps>,
        limits: Limits,
        settings: LbSettings,
    ) -> Result<Self, ServiceError> {
        let stored = store.load_all()?;
        let reconciler = Reconciler::restore(maps, settings).map_err(from_reconcile)?;
        let mut manager = Self {
            frontends: HashMap::new(),
            service_ids: IdAllocator::new(1, u32::MAX - 1),
            count: 0,
            port_owners: HashMap::new(),
            claims: HashMap::new(),
            owned: HashMap::new(),
            store,
            reconciler,
            limits,
        };
        let mut kept = Vec::with_capacity(stored.len());
        let mut dropped = Vec::new();
        for svc in stored {
            let collides = manager.frontends.contains_key(&svc.frontend)
                || port_claims(&svc).iter().any(|c| manager.claim_holder(c, &|_| false).is_some());
            if collides || manager.service_ids.reserve(svc.id).is_err() {
                // Only a store edited behind the agent's back gets here: the API refuses collisions.
                error!(id = svc.id, frontend = %svc.frontend, "stored service collides with another; removing it");
                dropped.push(svc.id);
                continue;
            }
            manager.index(&svc);
            kept.push(svc);
        }
        if !dropped.is_empty() {
            manager.store.write(&[], &dropped)?;
        }
        manager.reconciler.sync(kept.iter()).map_err(from_reconcile)?;
        info!(services = kept.len(), "service state reconciled into the datapath");
        Ok(manager)
    }

    fn index(&mut self, svc: &Service) {
        self.count += 1;
        self.frontends.insert(svc.frontend, svc.id);
        if let Some(owner) = owner_of(svc) {
            self.owned.entry(owner.to_string()).or_default().insert(svc.id);
        }
        let claims = port_claims(svc);
        if claims.is_empty() {
            return;
        }
        for c in &claims {
            self.port_owners.entry((c.port, c.protocol)).or_default().insert(svc.id);
        }
        self.claims.insert(svc.id, claims);
    }

    fn unindex(&mut self, svc: &Service) {
        self.count -= 1;
        self.frontends.remove(&svc.frontend);
        if let Some(owner) = owner_of(svc) {
            if let Some(ids) = self.owned.get_mut(owner) {
                ids.remove(&svc.id);
                if ids.is_empty() {
                    self.owned.remove(owner);
                }
            }
        }
        for c in self.claims.remove(&svc.id).unwrap_or_default() {
            if let Some(owners) = self.port_owners.get_mut(&(c.port, c.protocol)) {
                owners.remove(&svc.id);
                if owners.is_empty() {
                    self.port_owners.remove(&(c.port, c.protocol));
                }
            }
        }
    }

    /// Every service, by id (read from the store).
    pub fn list(&self) -> Result<Vec<Service>, ServiceError> {
        Ok(self.store.load_all()?)
    }

    pub fn get(&self, id: u32) -> Result<Service, ServiceError> {
        self.store.get(id)?.ok_or(ServiceError::NotFound(id))
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn backend_count(&self) -> usize {
        self.reconciler.backend_count()
    }

    /// `PUT /v1/services/{id}`: creates or replaces service `id`.
    pub fn put(&mut self, id: u32, mut spec: ServiceSpec) -> Result<Service, ServiceError> {
        if let Some(body_id) = spec.id.filter(|b| *b != id) {
            return Err(ServiceError::Invalid(FieldError::new(
                "id",
                format!("{body_id} does not match the id in the path ({id})"),
            )));
        }
        spec.id = Some(id);
        self.commit(vec![spec], "").map(|mut v| v.remove(0))
    }

    /// Refuses a local change to a service some source owns.
    fn refuse_owned(&self, id: u32, field: String) -> Result<(), ServiceError> {
        let Some(owner) = self.owned.iter().find(|(_, ids)| ids.contains(&id)).map(|(o, _)| o) else {
            return Ok(());
        };
        Err(ServiceError::Conflict(FieldError::new(
            field,
            format!("service {id} comes from Kubernetes Service {owner}; change it there, not through the local API"),
        )))
    }

    /// Owners that have services now (Kubernetes: `namespace/name`).
    pub fn owners(&self) -> Vec<String> {
        self.owned.keys().cloned().collect()
    }

    /// The services of `owner`, by id.
    pub fn owned_services(&self, owner: &str) -> Result<Vec<Service>, ServiceError> {
        let mut ids: Vec<u32> = self.owned.get(owner).map(|s| s.iter().copied().collect()).unwrap_or_default();
        ids.sort_unstable();
        Ok(self.store.get_many(&ids)?.into_iter().flatten().collect())
    }

    /// Makes `specs` the whole set of `owner`'s services in one commit: all
    /// of them are checked first, then the ones no longer wanted go, the
    /// rest are written; on any error nothing changes. A service keeps its
    /// id while its frontend stays (established flows keep their reverse
    /// NAT). Every spec's name must be `owner:...`.
    pub fn replace_owned(&mut self, owner: &str, specs: Vec<ServiceSpec>) -> Result<Vec<Service>, ServiceError> {
        let current: HashSet<u32> = self.owned.get(owner).cloned().unwrap_or_default();
        let mut ids = Vec::with_capacity(specs.len());
        let mut allocated = Vec::new();
        let release = |m: &mut Self, allocated: &[u32]| allocated.iter().for_each(|id| m.service_ids.release(*id));
        for (i, spec) in specs.iter().enumerate() {
            let named_right = spec.name.as_deref().and_then(|n| n.split_once(':')).is_some_and(|(o, _)| o == owner);
            if !named_right {
                release(self, &allocated);
                return Err(ServiceError::Invalid(FieldError::new(
                    format!("services[{i}].name"),
                    format!("{:?} is not named {owner}:PORT", spec.name),
                )));
            }
            match self.frontends.get(&spec.frontend).filter(|id| current.contains(id)) {
                Some(id) if !ids.contains(id) => ids.push(*id),
                _ => match self.service_ids.allocate() {
                    Ok(id) => {
                        allocated.push(id);
                        ids.push(id);
                    }
                    Err(e) => {
                        release(self, &allocated);
                        return Err(ServiceError::NoRoom(format!("service ids: {e}")));
                    }
                },
            }
        }
        let kept: HashSet<u32> = ids.iter().copied().collect();
        let mut removed: Vec<u32> = current.difference(&kept).copied().collect();
        removed.sort_unstable();
        let prefix = |i: usize| format!("{owner}[{i}]");
        let result = self.commit_with_ids(specs, ids, &removed, &prefix);
        if result.is_err() {
            release(self, &allocated);
        }
        result
    }

    /// Runs `f` as one batch: every change in it stays atomic on its own, and one fsync at the
    /// end makes them all durable. For sources that can replay what a crash loses (a relist).
    pub fn batch<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Result<T, ServiceError> {
        self.store.begin_batch();
        let out = f(self);
        self.store.end_batch()?;
        Ok(out)
    }

    /// Removes every service of `owner` (its Kubernetes Service is gone).
    pub fn delete_owned(&mut self, owner: &str) -> Result<usize, ServiceError> {
        let n = self.owned.get(owner).map_or(0, |ids| ids.len());
        self.replace_owned(owner, Vec::new())?;
        Ok(n)
    }

    /// `POST /v1/services`: creates a service; refuses to replace one.
    pub fn create(&mut self, spec: ServiceSpec) -> Result<Service, ServiceError> {
        if let Some(id) = spec.id.filter(|id| self.service_ids.is_used(*id)) {
            return Err(ServiceError::Conflict(FieldError::new("id", format!("service {id} already exists"))));
        }
        if let Some(owner) = self.frontends.get(&spec.frontend) {
            return Err(ServiceError::Conflict(FieldError::new(
                "frontend",
                format!("{} is already the frontend of service {owner}", spec.frontend),
            )));
        }
        self.commit(vec![spec], "").map(|mut v| v.remove(0))
    }

    /// `POST /v1/services/apply`: creates or replaces many services, all or
    /// nothing. A spec without id replaces the service with its frontend, if
    /// any, so applying the same file twice changes nothing.
    pub fn apply(&mut self, specs: Vec<ServiceSpec>) -> Result<Vec<Service>, ServiceError> {
        self.commit(specs, "services")
    }

    pub fn delete(&mut self, id: u32) -> Result<Service, ServiceError> {
        let svc = self.get(id)?;
        self.refuse_owned(id, "id".into())?;
        self.store.write(&[], &[id])?;
        if let Err(e) = self.reconciler.remove(id) {
            error!(id, error = %e, "removing service from the datapath failed; rolling back");
            self.store.write(&[&svc], &[])?;
            self.recover();
            return Err(from_reconcile(e));
        }
        self.unindex(&svc);
        self.service_ids.release(id);
        Ok(svc)
    }

    /// Validates a batch against the current state, then persists it, then
    /// writes the maps. `list_field` names the request's array ("" for one).
    fn commit(&mut self, specs: Vec<ServiceSpec>, list_field: &str) -> Result<Vec<Service>, ServiceError> {
        let prefix = |i: usize| if list_field.is_empty() { String::new() } else { format!("{list_field}[{i}]") };
        let (ids, allocated) = self.assign_ids(&specs, &prefix)?;
        let owned = ids.iter().enumerate().try_for_each(|(i, id)| self.refuse_owned(*id, field_of(&prefix(i), "id")));
        let result = owned.and_then(|_| self.commit_with_ids(specs, ids, &[], &prefix));
        if result.is_err() {
            // A rejected request leaks no id.
            for id in allocated {
                self.service_ids.release(id);
            }
        }
        result
    }

    /// Writes `specs` as services `ids` and removes services `removed`, as
    /// one change: checked together, persisted in one transaction, the
    /// removed ones leaving the maps first.
    fn commit_with_ids(
        &mut self,
        specs: Vec<ServiceSpec>,
        ids: Vec<u32>,
        removed: &[u32],
        prefix: &dyn Fn(usize) -> String,
    ) -> Result<Vec<Service>, ServiceError> {
        let batch: Vec<Service> = specs.into_iter().zip(&ids).map(|(spec, id)| Service::from_spec(*id, spec)).collect();
        let leaving: HashSet<u32> = removed.iter().copied().collect();
        self.check_limits(&batch, prefix)?;
        self.check_frontends(&batch, &leaving, prefix)?;
        self.check_node_ports(&batch, &leaving, prefix)?;
        let removed_services: Vec<Service> = self.store.get_many(removed)?.into_iter().flatten().collect();
        let previous: Vec<Option<Service>> = self.store.get_many(&ids)?;
        let moved: Vec<u32> = batch
            .iter()
            .zip(&previous)
            .filter(|(s, old)| old.as_ref().is_some_and(|old| old.frontend != s.frontend))
            .map(|(s, _)| s.id)
            .collect();
        let changes: Vec<Change<'_>> = removed
            .iter()
            .chain(&moved)
            .map(|id| Change { id: *id, new: None })
            .chain(batch.iter().map(|s| Change { id: s.id, new: Some(s) }))
            .collect();
        self.reconciler.check_capacity(&changes).map_err(from_reconcile)?;

        self.store.write(&batch.iter().collect::<Vec<_>>(), removed)?;
        let gone_first: Vec<u32> = removed.iter().chain(&moved).copied().collect();
        if let Err(e) = self.reconcile_batch(&batch, &gone_first) {
            error!(error = %e, "writing the datapath failed; rolling back");
            let created: Vec<u32> =
                batch.iter().zip(&previous).filter(|(_, old)| old.is_none()).map(|(s, _)| s.id).collect();
            let restored: Vec<&Service> = previous.iter().flatten().chain(&removed_services).collect();
            self.store.write(&restored, &created)?;
            self.recover();
            return Err(from_reconcile(e));
        }
        for svc in &removed_services {
            self.unindex(svc);
            self.service_ids.release(svc.id);
        }
        for (svc, old) in batch.iter().zip(&previous) {
            match old {
                Some(old) => self.unindex(old),
                // Ids chosen by the client are reserved here; allocated ones already are.
                None => {
                    let _ = self.service_ids.reserve(svc.id);
                }
            }
            self.index(svc);
        }
        Ok(batch)
    }

    /// Moved services leave their old frontend before anyone may take it.
    fn reconcile_batch(&mut self, batch: &[Service], moved: &[u32]) -> Result<(), ReconcileError> {
        for id in moved {
            self.reconciler.remove(*id)?;
        }
        for svc in batch {
            self.reconciler.apply(svc)?;
        }
        Ok(())
    }

    /// After a failed write, reread the maps and make them match the (rolled
    /// back) desired state again.
    fn recover(&mut self) {
        let desired = match self.store.load_all() {
            Ok(all) => all,
            Err(e) => {
                error!(error = %e, "reading the store for datapath recovery failed; the next change or restart retries");
                return;
            }
        };
        let result = self.reconciler.rebuild().and_then(|_| self.reconciler.sync(desired.iter()));
        if let Err(e) = result {
            error!(error = %e, "datapath recovery failed; the next change or restart retries");
        }
    }

    /// Ids for a batch: the spec's own, else the id of the service that has
    /// this frontend, else the lowest free one. Answers the ids and which of
    /// them were allocated here.
    fn assign_ids(
        &mut self,
        specs: &[ServiceSpec],
        prefix: &dyn Fn(usize) -> String,
    ) -> Result<(Vec<u32>, Vec<u32>), ServiceError> {
        let mut seen = HashSet::new();
        let mut chosen = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let id = spec.id.or_else(|| self.frontends.get(&spec.frontend).copied());
            if let Some(id) = id {
                if !seen.insert(id) {
                    return Err(ServiceError::Invalid(FieldError::new(
                        field_of(&prefix(i), "id"),
                        format!("id {id} appears twice in the request"),
                    )));
                }
            }
            chosen.push(id);
        }
        let mut allocated = Vec::new();
        let mut skipped = Vec::new();
        let mut out = Vec::with_capacity(chosen.len());
        for id in chosen {
            let id = match id {
                Some(id) => id,
                None => loop {
                    let candidate = match self.service_ids.allocate() {
                        Ok(c) => c,
                        Err(e) => {
                            allocated.append(&mut skipped);
                            for id in &allocated {
                                self.service_ids.release(*id);
                            }
                            return Err(ServiceError::NoRoom(format!("service ids: {e}")));
                        }
                    };
                    if seen.contains(&candidate) {
                        // Taken by a spec later in this batch: not ours to keep.
                        skipped.push(candidate);
                        continue;
                    }
                    allocated.push(candidate);
                    break candidate;
                },
            };
            out.push(id);
        }
        for id in skipped {
            self.service_ids.release(id);
        }
        Ok((out, allocated))
    }

    fn check_limits(&self, batch: &[Service], prefix: &dyn Fn(usize) -> String) -> Result<(), ServiceError> {
        let max = self.limits.max_backends_per_service;
        for (i, svc) in batch.iter().enumerate() {
            if svc.backends.len() > max {
                return Err(ServiceError::Invalid(FieldError::new(
                    field_of(&prefix(i), "backends"),
                    format!(
                        "{} backends, more than the {max} a service may have (--max-backends-per-service)",
                        svc.backends.len()
                    ),
                )));
            }
        }
        Ok(())
    }

    /// No two services may share a frontend once the batch is applied. Costs
    /// O(batch), not O(services): one PUT stays cheap with 100k present.
    fn check_frontends(
        &self,
        batch: &[Service],
        leaving: &HashSet<u32>,
        prefix: &dyn Fn(usize) -> String,
    ) -> Result<(), ServiceError> {
        let in_batch: HashSet<u32> = batch.iter().map(|s| s.id).chain(leaving.iter().copied()).collect();
        let mut batch_owners: HashMap<L4Addr, u32> = HashMap::with_capacity(batch.len());
        for (i, svc) in batch.iter().enumerate() {
            let taken_in_batch = batch_owners.insert(svc.frontend, svc.id);
            let taken_outside =
                self.frontends.get(&svc.frontend).filter(|owner| **owner != svc.id && !in_batch.contains(owner));
            if let Some(owner) = taken_in_batch.or(taken_outside.copied()) {
                return Err(ServiceError::Conflict(FieldError::new(
                    field_of(&prefix(i), "frontend"),
                    format!("{} is already the frontend of service {owner}", svc.frontend),
                )));
            }
        }
        Ok(())
    }

    /// NodePorts and health check ports: inside the range, and not held by
    /// another service on the same address (or on every address).
    fn check_node_ports(
        &self,
        batch: &[Service],
        leaving: &HashSet<u32>,
        prefix: &dyn Fn(usize) -> String,
    ) -> Result<(), ServiceError> {
        let (lo, hi) = self.limits.nodeport_range;
        let in_batch: HashSet<u32> = batch.iter().map(|s| s.id).chain(leaving.iter().copied()).collect();
        let mut batch_claims: Vec<(u32, PortClaim)> = Vec::new();
        for (i, svc) in batch.iter().enumerate() {
            for claim in port_claims(svc) {
                let field = field_of(&prefix(i), claim.field);
                let ranged = svc.svc_type == ServiceType::NodePort || claim.field == "healthCheckNodePort";
                if ranged && !(lo..=hi).contains(&claim.port) {
                    return Err(ServiceError::Invalid(FieldError::new(
                        field,
                        format!("{} is outside the NodePort range {lo}-{hi} (--nodeport-range)", claim.port),
                    )));
                }
                let outside = self.claim_holder(&claim, &|owner| owner == svc.id || in_batch.contains(&owner));
                let inside =
                    batch_claims.iter().find(|(owner, other)| *owner != svc.id && claims_collide(&claim, other));
                if let Some(owner) = outside.or(inside.map(|(owner, _)| *owner)) {
                    return Err(ServiceError::Conflict(FieldError::new(
                        field,
                        format!("{} port {} is already taken by service {owner}", claim.protocol, claim.port),
                    )));
                }
                batch_claims.push((svc.id, claim));
            }
        }
        Ok(())
    }

    /// Which service (other than those in `except`) holds a port colliding
    /// with `claim`.
    fn claim_holder(&self, claim: &PortClaim, except: &dyn Fn(u32) -> bool) -> Option<u32> {
        let owners = self.port_owners.get(&(claim.port, claim.protocol))?;
        owners.iter().copied().filter(|owner| !except(*owner)).find(|owner| {
            self.claims.get(owner).is_some_and(|claims| claims.iter().any(|other| claims_collide(claim, other)))
        })
    }

    /// Services with a health check port and how many of their backends run
    /// on this node, for the kube-proxy-style health check server.
    pub fn health_checks(&self) -> Vec<(u16, Service, usize)> {
        let ids: Vec<u32> = self
            .claims
            .iter()
            .filter(|(_, claims)| claims.iter().any(|c| c.field == "healthCheckNodePort"))
            .map(|(id, _)| *id)
            .collect();
        let services = match self.store.get_many(&ids) {
            Ok(s) => s,
            Err(e) => {
                error!(error = %e, "reading health-checked services failed");
                return Vec::new();
            }
        };
        services
            .into_iter()
            .flatten()
            .filter_map(|s| {
                s.options.health_check_node_port.map(|p| (p, s.clone(), self.reconciler.local_backend_count(&s)))
            })
            .collect()
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }
}

#[cfg(test)]
mod tests {
    use super::reconciler::tests::{svc, SharedFake};
    use super::*;

    struct Fixture {
        fake: SharedFake,
        dir: std::path::PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("axon-svc-test-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self { fake: SharedFake::default(), dir }
        }

        fn start(&self) -> ServiceManager {
            let store = Store::open(&self.dir).unwrap();
            let limits = Limits { max_backends_per_service: 4, ..Limits::default() };
            ServiceManager::start(store, Box::new(self.fake.clone()), limits, LbSettings::default()).unwrap()
        }

        fn map_entries(&self) -> (usize, usize, usize) {
            let m = self.fake.0.lock().unwrap();
            (m.slots.len(), m.backends.len(), m.rev_nat.len())
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn spec(s: &Service) -> ServiceSpec {
        let mut spec = s.to_spec();
        spec.id = None;
        spec
    }

    #[test]
    fn rejected_requests_change_nothing() {
        let fx = Fixture::new("reject");
        let mut m = fx.start();
        let a = svc(1, "10.96.0.1", 80, &["10.0.0.1:80"]);
        m.put(1, spec(&a)).unwrap();
        let before = (m.list().unwrap(), fx.map_entries());

        let dup = svc(2, "10.96.0.1", 80, &["10.0.0.2:80"]);
        let e = m.put(2, spec(&dup)).unwrap_err();
        assert!(matches!(&e, ServiceError::Conflict(f) if f.field == "frontend"), "{e}");
        let many = svc(3, "10.96.0.3", 80, &["10.0.0.1:1", "10.0.0.1:2", "10.0.0.1:3", "10.0.0.1:4", "10.0.0.1:5"]);
        let e = m.put(3, spec(&many)).unwrap_err();
        assert!(matches!(&e, ServiceError::Invalid(f) if f.field == "backends"), "{e}");
        // A bulk request with one bad member applies none of them.
        let ok = svc(0, "10.96.0.4", 80, &["10.0.0.4:80"]);
        let dup_with_id = ServiceSpec { id: Some(5), ..spec(&dup) };
        let e = m.apply(vec![spec(&ok), dup_with_id]).unwrap_err();
        assert!(matches!(&e, ServiceError::Conflict(f) if f.field == "services[1].frontend"), "{e}");
        assert!(matches!(m.delete(9), Err(ServiceError::NotFound(9))));
        assert!(matches!(m.put(5, ServiceSpec { id: Some(6), ..spec(&a) }), Err(ServiceError::Invalid(_))));
        assert_eq!((m.list().unwrap(), fx.map_entries()), before);
        // And no service id leaked: the next allocation is 2.
        assert_eq!(m.create(spec(&ok)).unwrap().id, 2);
    }

    #[test]
    fn apply_is_idempotent_and_keys_on_frontend() {
        let fx = Fixture::new("apply");
        let mut m = fx.start();
        let a = svc(0, "10.96.0.1", 80, &["10.0.0.1:80"]);
        let b = svc(0, "10.96.0.2", 53, &["10.0.0.2:53", "10.0.0.3:53"]);
        let first = m.apply(vec![spec(&a), spec(&b)]).unwrap();
        assert_eq!(first.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 2]);
        let writes = fx.fake.0.lock().unwrap().writes;
        let again = m.apply(vec![spec(&a), spec(&b)]).unwrap();
        assert_eq!(again, first);
        assert_eq!(fx.fake.0.lock().unwrap().writes, writes, "re-applying writes nothing");
    }

    #[test]
    fn two_services_can_swap_frontends_in_one_batch() {
        let fx = Fixture::new("swap");
        let mut m = fx.start();
        m.put(1, spec(&svc(1, "10.96.0.1", 80, &["10.0.0.1:80"]))).unwrap();
        m.put(2, spec(&svc(2, "10.96.0.2", 80, &["10.0.0.2:80"]))).unwrap();
        let mut s1 = spec(&svc(1, "10.96.0.2", 80, &["10.0.0.1:80"]));
        s1.id = Some(1);
        let mut s2 = spec(&svc(2, "10.96.0.1", 80, &["10.0.0.2:80"]));
        s2.id = Some(2);
        m.apply(vec![s1, s2]).unwrap();
        assert!(m.list().unwrap().iter().all(|s| m.reconciler().is_realized(s)));
        assert_eq!(fx.map_entries(), (4, 2, 2));
    }

    fn owned(owner_port: &str, vip: &str, port: u16, backends: &[&str]) -> ServiceSpec {
        ServiceSpec { name: Some(owner_port.into()), ..spec(&svc(0, vip, port, backends)) }
    }

    #[test]
    fn an_owner_replaces_its_services_as_a_whole_and_the_api_cannot_touch_them() {
        let fx = Fixture::new("owned");
        let mut m = fx.start();
        let local = m.create(spec(&svc(0, "10.96.0.9", 80, &["10.0.0.9:80"]))).unwrap();
        let first = m
            .replace_owned(
                "ns/web",
                vec![
                    owned("ns/web:http", "10.96.0.1", 80, &["10.0.0.1:80"]),
                    owned("ns/web:dns", "10.96.0.1", 53, &[]),
                ],
            )
            .unwrap();
        assert_eq!(m.owners(), vec!["ns/web".to_string()]);
        // The port 53 frontend goes, port 80 keeps its id, 8080 is new: one commit.
        let second = m
            .replace_owned(
                "ns/web",
                vec![
                    owned("ns/web:http", "10.96.0.1", 80, &["10.0.0.2:80"]),
                    owned("ns/web:alt", "10.96.0.1", 8080, &["10.0.0.2:80"]),
                ],
            )
            .unwrap();
        assert_eq!(second[0].id, first[0].id);
        let names: Vec<_> = m.owned_services("ns/web").unwrap().into_iter().filter_map(|s| s.name).collect();
        assert_eq!(names, vec!["ns/web:http".to_string(), "ns/web:alt".to_string()]);
        assert!(m.list().unwrap().iter().all(|s| m.reconciler().is_realized(s)));

        // A set with one bad member changes nothing: here a frontend another service holds.
        let before = (m.list().unwrap(), fx.map_entries());
        let e = m
            .replace_owned(
                "ns/web",
                vec![owned("ns/web:http", "10.96.0.1", 80, &[]), owned("ns/web:x", "10.96.0.9", 80, &[])],
            )
            .unwrap_err();
        assert!(matches!(&e, ServiceError::Conflict(f) if f.field == "ns/web[1].frontend"), "{e}");
        assert_eq!((m.list().unwrap(), fx.map_entries()), before);

        // The local API reads but does not change owned services.
        let id = second[0].id;
        let e = m.delete(id).unwrap_err();
        assert!(matches!(&e, ServiceError::Conflict(_)) && e.to_string().contains("ns/web"), "{e}");
        let e = m.put(id, spec(&svc(id, "10.96.0.1", 80, &[]))).unwrap_err();
        assert!(matches!(&e, ServiceError::Conflict(_)), "{e}");
        assert!(m.apply(vec![spec(&svc(0, "10.96.0.1", 80, &[]))]).is_err());
        assert_eq!(m.get(id).unwrap().backends.len(), 1);

        // A restart finds the owner again from the names in the store.
        drop(m);
        let mut m = fx.start();
        assert_eq!(m.owners(), vec!["ns/web".to_string()]);
        assert_eq!(m.delete_owned("ns/web").unwrap(), 2);
        assert_eq!(m.list().unwrap(), vec![local]);
        assert_eq!(fx.map_entries(), (2, 1, 1));
    }

    #[test]
    fn restart_restores_from_store_and_writes_nothing() {
        let fx = Fixture::new("restart");
        let listed = {
            let mut m = fx.start();
            m.put(3, spec(&svc(3, "10.96.0.3", 80, &["10.0.0.1:80", "10.0.0.2:80"]))).unwrap();
            m.put(4, spec(&svc(4, "fd00::4", 80, &["[fd00::1]:80"]))).unwrap();
            m.list().unwrap()
        };
        let writes = fx.fake.0.lock().unwrap().writes;
        let m = fx.start();
        assert_eq!(m.list().unwrap(), listed);
        assert_eq!(fx.fake.0.lock().unwrap().writes, writes, "no gap: nothing rewritten at start");
        // The store lost a service (say, restored from an old backup): the
        // maps follow the store.
        drop(m);
        Store::open(&fx.dir).unwrap().write(&[], &[4]).unwrap();
        let m = fx.start();
        assert_eq!(m.len(), 1);
        assert_eq!(fx.map_entries(), (3, 2, 1));
    }
}
