//! Security identities: a cluster-wide number (in `--identity-range`, by
//! default 256–65535) for each set of security-relevant labels (the pod's
//! namespace, its labels and its namespace's labels, `k8s:`-prefixed), and
//! the node-local ipcache (IP → identity) kept ready for policy.
//!
//! This module owns:
//! - [`labels`]: which labels count and their canonical form,
//! - the allocator backends chosen by `--identity-allocation-mode`:
//!   `embedded` ([`store`], one node, redb), `crd` ([`crd`], `AxonIdentity`
//!   objects) and `kvstore` ([`kvstore`], etcd),
//! - [`IdentityManager`]: the endpoints (pods) of this node and the addresses
//!   of every other pod, each endpoint's identity reference, and
//! - [`ipcache`]: the reconciler of the pinned `axon_ipcache`.
//!
//! Endpoints come from the local API (`PUT /v1/endpoints/NS/NAME`, [`api`])
//! when no Kubernetes is configured, else from watching Pods and Namespaces
//! ([`k8s_pods`]). An endpoint whose identity cannot be allocated because the
//! allocator is unreachable (etcd or the apiserver down) is `pending`: it
//! keeps its last identity in the ipcache, the datapath keeps serving, and a
//! background loop retries until the allocator answers.

pub mod api;
pub mod crd;
pub mod ipcache;
pub mod k8s_pods;
pub mod kvstore;
pub mod labels;
pub mod store;

use axon_api::identity::{Endpoint, EndpointState, Identity};
use ipcache::{IpcacheReconciler, IpcacheValue};
use labels::LabelSet;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use store::{IdentityDb, StoredEndpoint};
use tracing::{info, warn};

/// The range identities are allocated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub min: u32,
    pub max: u32,
}

impl Default for IdRange {
    fn default() -> Self {
        Self { min: 256, max: 65535 }
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AllocError {
    #[error("identity allocator unavailable: {0}")]
    Unavailable(String),
    #[error("identity range {0} is exhausted")]
    Exhausted(IdRange),
    #[error("identity store: {0}")]
    Store(String),
    #[error("corrupt identity data: {0}")]
    Corrupt(String),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
}

/// `--identity-allocation-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocationMode {
    #[default]
    Embedded,
    Crd,
    Kvstore,
}

impl std::str::FromStr for AllocationMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "crd" => Ok(Self::Crd),
            "kvstore" => Ok(Self::Kvstore),
            _ => Err(format!("{s:?} is not one of embedded, crd, kvstore")),
        }
    }
}

impl AllocationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Crd => "crd",
            Self::Kvstore => "kvstore",
        }
    }
}

/// The allocator, one of three.
pub enum Backend {
    Embedded { db: Arc<IdentityDb>, range: IdRange },
    Kvstore(Box<kvstore::KvAllocator>),
    Crd(Box<crd::CrdAllocator>),
}

impl Backend {
    async fn allocate(&self, labels: &LabelSet) -> Result<u32, AllocError> {
        match self {
            Backend::Embedded { db, range } => db.allocate(labels, *range),
            Backend::Kvstore(kv) => kv.allocate(labels).await,
            Backend::Crd(c) => c.allocate(labels).await,
        }
    }

    /// This node no longer uses `id`.
    async fn release(&self, id: u32) -> Result<(), AllocError> {
        match self {
            // Single node: nobody else can be using it.
            Backend::Embedded { db, .. } => db.free(id),
            Backend::Kvstore(kv) => kv.release(id).await,
            // Unused AxonIdentities are the operator's to collect (after a grace period).
            Backend::Crd(_) => Ok(()),
        }
    }

    async fn lookup(&self, labels: &LabelSet) -> Result<Option<u32>, AllocError> {
        match self {
            Backend::Embedded { db, .. } => db.lookup(labels),
            Backend::Kvstore(kv) => kv.lookup(labels).await,
            Backend::Crd(c) => c.lookup(labels).await,
        }
    }

    pub async fn list(&self) -> Result<Vec<(u32, LabelSet)>, AllocError> {
        match self {
            Backend::Embedded { db, .. } => db.identities(),
            Backend::Kvstore(kv) => kv.list().await,
            Backend::Crd(c) => c.list().await,
        }
    }

    pub async fn get(&self, id: u32) -> Result<Option<LabelSet>, AllocError> {
        match self {
            Backend::Embedded { db, .. } => Ok(db.identities()?.into_iter().find(|(i, _)| *i == id).map(|(_, l)| l)),
            Backend::Kvstore(kv) => kv.get(id).await,
            Backend::Crd(c) => c.get(id).await,
        }
    }
}

/// Upper bound of one allocator call made on behalf of an endpoint.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// After a call that failed slowly, endpoints go pending at once for this
/// long instead of each waiting for the allocator to time out again.
const BACKOFF: Duration = Duration::from_secs(2);
/// A failure that took at least this long means the allocator is not
/// answering (worth the back-off); a quicker one (one etcd member gone, a
/// broken stream) is no reason to turn the next caller away.
const SLOW_FAILURE: Duration = Duration::from_secs(1);
/// How often pending endpoints are retried (and kvstore references checked).
pub const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// How often the kvstore garbage collector looks for unreferenced identities.
const GC_INTERVAL: Duration = Duration::from_secs(3);

type Key = (String, String);

struct LocalEndpoint {
    ips: Vec<IpAddr>,
    pod_labels: BTreeMap<String, String>,
    set: LabelSet,
    /// The identity this endpoint holds a reference on.
    held: Option<u32>,
    /// The identity shown and kept in the ipcache: `held`, or the last known
    /// one while pending.
    identity: Option<u32>,
    pending: Option<String>,
}

struct RemoteEndpoint {
    ips: Vec<IpAddr>,
    set: LabelSet,
    identity: Option<u32>,
}

pub struct IdentityManager {
    backend: Backend,
    mode: AllocationMode,
    db: Arc<IdentityDb>,
    /// Endpoints come from the API and are persisted (no Kubernetes source).
    persist: bool,
    local: BTreeMap<Key, LocalEndpoint>,
    remote: BTreeMap<Key, RemoteEndpoint>,
    /// id → (labels, number of local endpoints holding it).
    held: BTreeMap<u32, (LabelSet, usize)>,
    ipcache: IpcacheReconciler,
    /// The sources have reported everything: stale ipcache entries may go.
    synced: bool,
    /// Allocations for endpoints fail fast until then (see [`guarded`]).
    down_until: Option<Instant>,
    /// The same for background upkeep (remote lookups, lease references,
    /// garbage collection): kept apart so that an upkeep call that met an
    /// etcd leader election does not turn the next endpoint away.
    upkeep_down_until: Option<Instant>,
    kv_epoch: u64,
    /// kvstore garbage collection: ids seen unreferenced, since when; the last pass.
    gc_unreferenced: BTreeMap<u32, Instant>,
    last_gc: Option<Instant>,
}

impl IdentityManager {
    /// Restores the persisted endpoints (API source) and adopts the pinned
    /// ipcache as it is.
    pub fn new(
        backend: Backend,
        mode: AllocationMode,
        db: Arc<IdentityDb>,
        ipcache: IpcacheReconciler,
        persist: bool,
    ) -> Result<Self, AllocError> {
        let mut m = Self {
            backend,
            mode,
            db,
            persist,
            local: BTreeMap::new(),
            remote: BTreeMap::new(),
            held: BTreeMap::new(),
            ipcache,
            synced: false,
            down_until: None,
            upkeep_down_until: None,
            kv_epoch: 0,
            gc_unreferenced: BTreeMap::new(),
            last_gc: None,
        };
        if persist {
            for ep in m.db.endpoints()? {
                let set = LabelSet::for_pod(&ep.namespace, &ep.labels, None);
                m.local.insert(
                    (ep.namespace, ep.name),
                    LocalEndpoint {
                        ips: ep.ips,
                        pod_labels: ep.labels,
                        set,
                        held: None,
                        identity: ep.identity,
                        pending: Some("restored; re-allocating".into()),
                    },
                );
            }
            // The API is the whole source: what was stored is everything.
            m.synced = true;
        }
        Ok(m)
    }

    pub fn mode(&self) -> AllocationMode {
        self.mode
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    fn hold(&mut self, id: u32, set: &LabelSet) {
        self.held.entry(id).or_insert_with(|| (set.clone(), 0)).1 += 1;
    }

    /// Drops one local reference; the last one releases the identity.
    async fn unhold(&mut self, id: u32) {
        let Some(entry) = self.held.get_mut(&id) else { return };
        entry.1 -= 1;
        if entry.1 > 0 {
            return;
        }
        self.held.remove(&id);
        // The backend call is best effort: an unreleased kvstore reference
        // expires with the lease, an unfreed embedded id is collected at start.
        if let Err(e) = guarded(&mut self.down_until, self.backend.release(id)).await {
            warn!(id, error = %e, "releasing identity failed");
        }
    }

    /// Allocates for local endpoint `key` if it needs it; true if it changed.
    async fn allocate_for(&mut self, key: &Key) -> bool {
        let Some(ep) = self.local.get(key) else { return false };
        if ep.held.is_some() && ep.pending.is_none() {
            return false;
        }
        let set = ep.set.clone();
        let result = guarded(&mut self.down_until, self.backend.allocate(&set)).await;
        match result {
            Ok(id) => {
                self.hold(id, &set);
                let old = self.local.get_mut(key).and_then(|ep| {
                    ep.identity = Some(id);
                    ep.pending = None;
                    ep.held.replace(id)
                });
                if let Some(old) = old {
                    self.unhold(old).await;
                }
                info!(endpoint = %format!("{}/{}", key.0, key.1), id, "endpoint identity");
                self.persist_endpoint(key);
                true
            }
            Err(e) => {
                if let Some(ep) = self.local.get_mut(key) {
                    ep.pending = Some(e.to_string());
                }
                false
            }
        }
    }

    fn persist_endpoint(&self, key: &Key) {
        if !self.persist {
            return;
        }
        let Some(ep) = self.local.get(key) else { return };
        let stored = StoredEndpoint {
            namespace: key.0.clone(),
            name: key.1.clone(),
            ips: ep.ips.clone(),
            labels: ep.pod_labels.clone(),
            identity: ep.identity,
        };
        if let Err(e) = self.db.put_endpoint(&stored) {
            warn!(error = %e, "persisting endpoint failed");
        }
    }

    /// Adds or updates an endpoint of this node.
    pub async fn upsert_local(
        &mut self,
        namespace: &str,
        name: &str,
        ips: Vec<IpAddr>,
        pod_labels: BTreeMap<String, String>,
        namespace_labels: Option<&BTreeMap<String, String>>,
    ) -> Endpoint {
        let key = (namespace.to_string(), name.to_string());
        let set = LabelSet::for_pod(namespace, &pod_labels, namespace_labels);
        match self.local.get_mut(&key) {
            Some(ep) => {
                ep.ips = ips;
                ep.pod_labels = pod_labels;
                if ep.set != set {
                    ep.set = set;
                    ep.pending = Some("labels changed".into());
                }
            }
            None => {
                self.local.insert(
                    key.clone(),
                    LocalEndpoint { ips, pod_labels, set, held: None, identity: None, pending: Some("new".into()) },
                );
            }
        }
        // Persist before the allocator is asked: the endpoint survives a
        // restart even if the allocator is down now.
        self.persist_endpoint(&key);
        self.allocate_for(&key).await;
        self.sync_ipcache();
        self.endpoint(&key).unwrap_or_else(|| unreachable_endpoint(&key))
    }

    /// Removes an endpoint of this node; its identity reference goes with it.
    pub async fn delete_local(&mut self, namespace: &str, name: &str) -> Option<Endpoint> {
        let key = (namespace.to_string(), name.to_string());
        let shown = self.endpoint(&key)?;
        let ep = self.local.remove(&key)?;
        if self.persist {
            if let Err(e) = self.db.delete_endpoint(namespace, name) {
                warn!(error = %e, "removing the stored endpoint failed");
            }
        }
        self.sync_ipcache();
        if let Some(id) = ep.held {
            self.unhold(id).await;
        }
        Some(shown)
    }

    /// A pod of another node: only its addresses and identity matter here.
    pub async fn upsert_remote(&mut self, namespace: &str, name: &str, ips: Vec<IpAddr>, set: LabelSet) {
        let key = (namespace.to_string(), name.to_string());
        let known = self.remote.get(&key).filter(|r| r.set == set).and_then(|r| r.identity);
        let identity = match known {
            Some(id) => Some(id),
            None => guarded(&mut self.down_until, self.backend.lookup(&set)).await.ok().flatten(),
        };
        self.remote.insert(key, RemoteEndpoint { ips, set, identity });
        self.sync_ipcache();
    }

    pub fn delete_remote(&mut self, namespace: &str, name: &str) {
        if self.remote.remove(&(namespace.to_string(), name.to_string())).is_some() {
            self.sync_ipcache();
        }
    }

    /// Names of the endpoints known, local and remote (for a source's resync).
    pub fn endpoint_keys(&self) -> (Vec<Key>, Vec<Key>) {
        (self.local.keys().cloned().collect(), self.remote.keys().cloned().collect())
    }

    /// The sources have listed everything: stale ipcache entries may go.
    pub fn set_synced(&mut self) {
        if !self.synced {
            info!("identity sources synced; pruning stale ipcache entries");
            self.synced = true;
            // Every endpoint is known (and, embedded, allocated): ids nobody holds are leftovers.
            self.collect_unused_embedded();
        }
        self.sync_ipcache();
    }

    /// One round of background work: pending endpoints, unresolved remote
    /// pods, and (kvstore) this node's references after a lease change.
    pub async fn retry(&mut self) {
        let pending: Vec<Key> = self
            .local
            .iter()
            .filter(|(_, ep)| ep.pending.is_some() || ep.held.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = false;
        for key in pending {
            if self.down_until.is_some_and(|t| Instant::now() < t) {
                break;
            }
            changed |= self.allocate_for(&key).await;
        }
        let unresolved: Vec<Key> =
            self.remote.iter().filter(|(_, r)| r.identity.is_none()).map(|(k, _)| k.clone()).collect();
        for key in unresolved {
            if self.upkeep_down_until.is_some_and(|t| Instant::now() < t) {
                break;
            }
            let Some(set) = self.remote.get(&key).map(|r| r.set.clone()) else { continue };
            let found = guarded(&mut self.upkeep_down_until, self.backend.lookup(&set)).await;
            if let (Ok(Some(id)), Some(r)) = (found, self.remote.get_mut(&key)) {
                r.identity = Some(id);
                changed = true;
            }
        }
        self.refresh_references().await;
        self.collect_kvstore_garbage().await;
        if changed {
            self.sync_ipcache();
        }
    }

    /// kvstore: after a new lease (the old one expired while etcd was away),
    /// this node's references are put again.
    async fn refresh_references(&mut self) {
        let Backend::Kvstore(kv) = &self.backend else { return };
        if self.held.is_empty() || self.upkeep_down_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let store = kv.kv().clone();
        if let Err(e) =
            guarded(&mut self.upkeep_down_until, async { store.lease_id().await.map_err(AllocError::from) }).await
        {
            warn!(error = %e, "kvstore lease unavailable");
            return;
        }
        let epoch = store.lease_epoch();
        if epoch == self.kv_epoch {
            return;
        }
        let held: Vec<(u32, LabelSet)> = self.held.iter().map(|(id, (set, _))| (*id, set.clone())).collect();
        let result = match &self.backend {
            Backend::Kvstore(kv) => guarded(&mut self.upkeep_down_until, kv.refresh(&held)).await,
            _ => Ok(Vec::new()),
        };
        match result {
            Ok(lost) => {
                info!(epoch, references = held.len(), "kvstore references put under the current lease");
                self.kv_epoch = epoch;
                // Identities collected while this node was away: allocate again.
                for id in lost {
                    warn!(id, "identity no longer exists; its endpoints allocate again");
                    self.held.remove(&id);
                    for ep in self.local.values_mut().filter(|ep| ep.held == Some(id)) {
                        ep.held = None;
                        ep.pending = Some(format!("identity {id} was collected"));
                    }
                }
            }
            Err(e) => warn!(error = %e, "refreshing kvstore references failed"),
        }
    }

    /// kvstore: identities no node refers to any more are deleted after a
    /// grace period (the operator does this for AxonIdentities; etcd has no
    /// operator, so every agent takes part — passes are idempotent).
    async fn collect_kvstore_garbage(&mut self) {
        let Backend::Kvstore(kv) = &self.backend else { return };
        if self.last_gc.is_some_and(|t| t.elapsed() < GC_INTERVAL)
            || self.upkeep_down_until.is_some_and(|t| Instant::now() < t)
        {
            return;
        }
        self.last_gc = Some(Instant::now());
        match guarded(&mut self.upkeep_down_until, kv.collect(&mut self.gc_unreferenced)).await {
            Ok(freed) if !freed.is_empty() => info!(?freed, "unused identities collected"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "identity garbage collection failed"),
        }
    }

    /// The embedded mode frees identities no endpoint holds (left by a crash
    /// between an endpoint's removal and the free).
    pub fn collect_unused_embedded(&mut self) {
        let Backend::Embedded { db, .. } = &self.backend else { return };
        let Ok(all) = db.identities() else { return };
        for (id, _) in all {
            if !self.held.contains_key(&id) {
                if let Err(e) = db.free(id) {
                    warn!(id, error = %e, "freeing an unused identity failed");
                }
            }
        }
    }

    fn desired_ipcache(&self) -> BTreeMap<IpAddr, IpcacheValue> {
        let mut desired = BTreeMap::new();
        for r in self.remote.values() {
            if let Some(identity) = r.identity {
                for ip in &r.ips {
                    desired.insert(*ip, IpcacheValue { identity, local: false });
                }
            }
        }
        // Local endpoints win over a remote record of the same address.
        for ep in self.local.values() {
            if let Some(identity) = ep.identity {
                for ip in &ep.ips {
                    desired.insert(*ip, IpcacheValue { identity, local: true });
                }
            }
        }
        desired
    }

    fn sync_ipcache(&mut self) {
        let desired = self.desired_ipcache();
        if let Err(e) = self.ipcache.sync(&desired, self.synced) {
            warn!(error = %e, "writing the ipcache failed; retried on the next change");
            // Re-read what the map holds so the next sync diffs against the truth.
            if let Err(e) = self.ipcache.reload() {
                warn!(error = %e, "re-reading the ipcache failed");
            }
        }
    }

    fn endpoint(&self, key: &Key) -> Option<Endpoint> {
        let ep = self.local.get(key)?;
        Some(Endpoint {
            namespace: key.0.clone(),
            name: key.1.clone(),
            ips: ep.ips.clone(),
            labels: ep.pod_labels.clone(),
            identity: ep.identity,
            state: if ep.pending.is_some() { EndpointState::Pending } else { EndpointState::Ready },
            message: ep.pending.clone(),
        })
    }

    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.local.keys().filter_map(|k| self.endpoint(k)).collect()
    }
}

/// Runs one allocator call bounded by [`CALL_TIMEOUT`], failing fast while
/// the allocator is known to be down (a call failed after [`SLOW_FAILURE`]).
async fn guarded<T>(
    down_until: &mut Option<Instant>,
    f: impl std::future::Future<Output = Result<T, AllocError>>,
) -> Result<T, AllocError> {
    if down_until.is_some_and(|t| Instant::now() < t) {
        return Err(AllocError::Unavailable(
            "the allocator did not answer recently; retrying in the background".into(),
        ));
    }
    let started = Instant::now();
    let result = match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(AllocError::Unavailable(format!("no answer within {CALL_TIMEOUT:?}"))),
    };
    let slow_failure = matches!(result, Err(AllocError::Unavailable(_))) && started.elapsed() >= SLOW_FAILURE;
    *down_until = slow_failure.then(|| Instant::now() + BACKOFF);
    result
}

fn unreachable_endpoint(key: &Key) -> Endpoint {
    Endpoint {
        namespace: key.0.clone(),
        name: key.1.clone(),
        ips: Vec::new(),
        labels: BTreeMap::new(),
        identity: None,
        state: EndpointState::Pending,
        message: Some("endpoint vanished while being registered".into()),
    }
}

/// The wire form of an identity.
pub fn to_wire(id: u32, labels: LabelSet) -> Identity {
    Identity { id, labels: labels.0 }
}

/// `--identity-allocation-mode`, `--identity-range`, `--kvstore-endpoints`, `--kvstore-lease-ttl`.
#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    pub mode: AllocationMode,
    pub range: IdRange,
    pub kvstore_endpoints: Vec<String>,
    pub lease_ttl: Duration,
}

impl IdentityConfig {
    /// From the flags, falling back to the config file; errors name the flag.
    pub fn from_settings(
        flags: &crate::config::Flags,
        file: &crate::config::FileConfig,
    ) -> Result<Self, (&'static str, String)> {
        let mode = match flags.identity_allocation_mode.clone().or(file.identity_allocation_mode.clone()) {
            Some(m) => m.parse().map_err(|e| ("identity-allocation-mode", e))?,
            None => AllocationMode::Embedded,
        };
        let range = match flags.identity_range.clone().or(file.identity_range.clone()) {
            Some(r) => parse_id_range(&r).map_err(|e| ("identity-range", e))?,
            None => IdRange::default(),
        };
        let kvstore_endpoints: Vec<String> = flags
            .kvstore_endpoints
            .clone()
            .or(file.kvstore_endpoints.clone())
            .map(|s| s.split(',').map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect())
            .unwrap_or_default();
        for e in &kvstore_endpoints {
            // The etcd client is built without TLS: say so instead of failing on every request.
            if !e.starts_with("http://") || e.parse::<hyper::Uri>().is_err() {
                return Err((
                    "kvstore-endpoints",
                    format!("{e:?} is not an http:// URL (TLS to etcd is not supported yet)"),
                ));
            }
        }
        if mode == AllocationMode::Kvstore && kvstore_endpoints.is_empty() {
            return Err(("kvstore-endpoints", "required with --identity-allocation-mode kvstore".into()));
        }
        let ttl = flags.kvstore_lease_ttl.or(file.kvstore_lease_ttl).unwrap_or(15);
        if !(2..=3600).contains(&ttl) {
            return Err(("kvstore-lease-ttl", format!("{ttl} is not between 2 and 3600 seconds")));
        }
        Ok(Self { mode, range, kvstore_endpoints, lease_ttl: Duration::from_secs(ttl) })
    }
}

fn parse_id_range(s: &str) -> Result<IdRange, String> {
    let (lo, hi) = s.split_once('-').ok_or_else(|| format!("{s:?} is not MIN-MAX"))?;
    let num = |p: &str| p.trim().parse::<u32>().map_err(|_| format!("{p:?} is not a number"));
    let (min, max) = (num(lo)?, num(hi)?);
    // 0-255 are reserved (Cilium's reserved identities: host, world, ...).
    if min < 256 || min > max {
        return Err(format!("{s:?}: MIN must be at least 256 and at most MAX"));
    }
    Ok(IdRange { min, max })
}

/// Builds the allocator the configuration names, restores the endpoints and
/// the ipcache, and starts the background work (retries, the kvstore lease,
/// the Pod/Namespace watchers when Kubernetes is configured). The datapath
/// must be loaded (it pins `axon_ipcache`).
pub async fn start(config: &crate::config::Config) -> Result<Shared, AllocError> {
    let ic = &config.identity;
    let db = Arc::new(IdentityDb::open(&config.state_dir)?);
    let writer = ipcache::PinnedIpcache::open(&config.bpffs_root).map_err(AllocError::Store)?;
    let ipcache = IpcacheReconciler::restore(Box::new(writer)).map_err(AllocError::Store)?;
    let needs_kube = config.k8s_enabled || ic.mode == AllocationMode::Crd;
    let kube_client = match needs_kube {
        true => Some(
            crate::k8s::connect(config.k8s_kubeconfig.as_deref())
                .await
                .map_err(|e| AllocError::Unavailable(e.to_string()))?,
        ),
        false => None,
    };
    let node = config.node_name.clone();
    let backend = match (ic.mode, &kube_client) {
        (AllocationMode::Embedded, _) => Backend::Embedded { db: db.clone(), range: ic.range },
        (AllocationMode::Kvstore, _) => {
            let kv = crate::kvstore::KvStore::connect(crate::kvstore::KvConfig {
                endpoints: ic.kvstore_endpoints.clone(),
                lease_ttl: ic.lease_ttl,
                request_timeout: Duration::from_secs(3),
            })
            .await?;
            tokio::spawn(kv.clone().keep_alive_loop());
            Backend::Kvstore(Box::new(kvstore::KvAllocator::new(kv, node.clone(), ic.range)))
        }
        (AllocationMode::Crd, Some(client)) => {
            Backend::Crd(Box::new(crd::CrdAllocator::new(client.clone(), node.clone(), ic.range)))
        }
        (AllocationMode::Crd, None) => {
            return Err(AllocError::Unavailable("crd mode needs a Kubernetes client".into()))
        }
    };
    let persist = !config.k8s_enabled;
    let mut manager = IdentityManager::new(backend, ic.mode, db, ipcache, persist)?;
    if ic.mode == AllocationMode::Embedded && persist {
        // Local and instant: restored endpoints get their (same) ids now.
        manager.retry().await;
        manager.collect_unused_embedded();
    }
    if persist {
        manager.set_synced();
    }
    info!(mode = ic.mode.as_str(), range = %ic.range, endpoints = manager.local.len(), "identities ready");
    let shared: Shared = Arc::new(tokio::sync::Mutex::new(manager));
    install(shared.clone());
    tokio::spawn(run_retry_loop(shared.clone()));
    if let (true, Some(client)) = (config.k8s_enabled, kube_client) {
        tokio::spawn(k8s_pods::run(client, shared.clone(), node));
    }
    Ok(shared)
}

impl From<crate::kvstore::KvError> for AllocError {
    fn from(e: crate::kvstore::KvError) -> Self {
        match e {
            crate::kvstore::KvError::Unavailable { .. } => AllocError::Unavailable(e.to_string()),
            crate::kvstore::KvError::Data { .. } => AllocError::Corrupt(e.to_string()),
        }
    }
}

/// The running manager, for the API routes and the Kubernetes watcher.
pub type Shared = Arc<tokio::sync::Mutex<IdentityManager>>;

static HANDLE: OnceLock<Shared> = OnceLock::new();

/// Makes `manager` the one the API answers from.
pub fn install(manager: Shared) {
    let _ = HANDLE.set(manager);
}

pub fn handle() -> Option<Shared> {
    HANDLE.get().cloned()
}

/// Retries pending work every [`RETRY_INTERVAL`], forever.
pub async fn run_retry_loop(manager: Shared) {
    loop {
        tokio::time::sleep(RETRY_INTERVAL).await;
        manager.lock().await.retry().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileConfig, Flags};
    use clap::Parser;

    fn settings(args: &[&str]) -> Result<IdentityConfig, (&'static str, String)> {
        let mut argv = vec!["axon-agent"];
        argv.extend_from_slice(args);
        IdentityConfig::from_settings(&Flags::try_parse_from(argv).unwrap(), &FileConfig::default())
    }

    #[test]
    fn bad_settings_name_their_flag() {
        assert_eq!(settings(&["--identity-allocation-mode", "etcd"]).unwrap_err().0, "identity-allocation-mode");
        assert_eq!(settings(&["--identity-allocation-mode", "kvstore"]).unwrap_err().0, "kvstore-endpoints");
        assert_eq!(settings(&["--kvstore-endpoints", "127.0.0.1:2379"]).unwrap_err().0, "kvstore-endpoints");
        assert_eq!(settings(&["--identity-range", "10-20"]).unwrap_err().0, "identity-range");
        assert_eq!(settings(&["--kvstore-lease-ttl", "1"]).unwrap_err().0, "kvstore-lease-ttl");
        let ok = settings(&["--identity-allocation-mode", "kvstore", "--kvstore-endpoints", "http://a:1,http://b:2"])
            .unwrap();
        assert_eq!((ok.mode, ok.kvstore_endpoints.len(), ok.range), (AllocationMode::Kvstore, 2, IdRange::default()));
    }

    #[tokio::test]
    async fn references_are_counted_and_the_last_endpoint_frees_the_identity() {
        let dir = std::env::temp_dir().join(format!("axon-identity-manager-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = Arc::new(IdentityDb::open(&dir).unwrap());
        let fake = ipcache::tests::FakeIpcache::default();
        let reconciler = IpcacheReconciler::restore(Box::new(fake.clone())).unwrap();
        let backend = Backend::Embedded { db: db.clone(), range: IdRange::default() };
        let mut m = IdentityManager::new(backend, AllocationMode::Embedded, db.clone(), reconciler, true).unwrap();
        let web: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let a = m.upsert_local("prod", "a", vec!["10.0.0.1".parse().unwrap()], web.clone(), None).await;
        let b = m.upsert_local("prod", "b", vec!["10.0.0.2".parse().unwrap()], web.clone(), None).await;
        assert_eq!((a.identity, b.identity, a.state), (Some(256), Some(256), EndpointState::Ready));
        assert_eq!(fake.map.lock().unwrap().len(), 2);
        m.delete_local("prod", "a").await.unwrap();
        assert_eq!(db.identities().unwrap().len(), 1, "b still holds it");
        // Relabelling b moves it to a new identity and frees the old one.
        let db_labels: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
        let b = m.upsert_local("prod", "b", vec!["10.0.0.2".parse().unwrap()], db_labels, None).await;
        assert_eq!(b.identity, Some(257));
        assert_eq!(db.identities().unwrap().iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![257]);
        assert_eq!(fake.map.lock().unwrap()[&"10.0.0.2".parse::<IpAddr>().unwrap()].identity, 257);
        m.delete_local("prod", "b").await.unwrap();
        assert!(db.identities().unwrap().is_empty());
        assert!(fake.map.lock().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
