//! The watchers and the sync loop: Services, endpoints (discovery.k8s.io/v1
//! EndpointSlices, or core/v1 Endpoints where the server does not serve v1
//! slices) and Nodes are watched with kube's `runtime::watcher` into local
//! caches. Changes mark their Service dirty; a burst of them is coalesced and
//! each dirty Service replaces all its frontends in one commit
//! ([`ServiceManager::replace_owned`]). Every (re)list — the first one, and
//! any after the watch lost its place — reconciles all Services, deleting
//! owners the cluster no longer has, so a restart of the agent or the
//! apiserver loses nothing. Parts that cannot be served are skipped with a log
//! line and a core/v1 Event on the Service.

use super::translate::{self, EpGroup, NotServed, Translated, SERVICE_NAME_LABEL};
use super::K8sError;
use crate::service::{ServiceError, ServiceManager};
use axon_api::ServiceSpec;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Event as K8sEvent, EventSource, Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::ResourceExt;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// Settings of the Kubernetes source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// This node (Events' source, locality of endpoints without a nodeName).
    pub node_name: String,
    /// `service.kubernetes.io/service-proxy-name` value this agent serves.
    pub proxy_name: Option<String>,
    /// How long a burst of changes is collected before one reconcile.
    pub batch_delay: Duration,
}

/// Which endpoints API the server offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointsApi {
    /// discovery.k8s.io/v1 EndpointSlices.
    SlicesV1,
    /// core/v1 Endpoints (servers before 1.21 serve slices only as v1beta1).
    CoreV1,
}

impl EndpointsApi {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointsApi::SlicesV1 => "discovery.k8s.io/v1 EndpointSlices",
            EndpointsApi::CoreV1 => "core/v1 Endpoints",
        }
    }
}

/// Asks the server whether it serves discovery.k8s.io/v1 endpointslices;
/// retries until the server answers at all.
pub async fn detect_endpoints_api(client: &kube::Client) -> EndpointsApi {
    let mut delay = Duration::from_millis(200);
    loop {
        match client.list_api_group_resources("discovery.k8s.io/v1").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => return EndpointsApi::SlicesV1,
            Ok(_) => return EndpointsApi::CoreV1,
            Err(kube::Error::Api(e)) if e.code == 404 => return EndpointsApi::CoreV1,
            Err(e) => {
                warn!(error = %e, "asking the API server for discovery.k8s.io/v1 failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// One watch event of any kind (boxed: the kinds differ a lot in size).
enum Msg {
    Service(Box<Event<Service>>),
    Endpoints(Box<Event<Endpoints>>),
    Slice(Box<Event<EndpointSlice>>),
    Node(Box<Event<Node>>),
}

type MsgStream = Pin<Box<dyn Stream<Item = Msg> + Send>>;

fn watch<K, F>(api: Api<K>, wrap: F) -> MsgStream
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    F: Fn(Box<Event<K>>) -> Msg + Send + 'static,
{
    let kind = std::any::type_name::<K>().rsplit("::").next().unwrap_or("object");
    Box::pin(watcher::watcher(api, watcher::Config::default()).default_backoff().filter_map(move |r| {
        let msg = match r {
            Ok(ev) => Some(wrap(Box::new(ev))),
            Err(e) => {
                // The backoff retries; the watcher resumes or relists.
                warn!(kind, error = %e, "Kubernetes watch failed; retrying");
                None
            }
        };
        futures::future::ready(msg)
    }))
}

/// A cache of one kind, with the relist buffer.
struct Cache<K> {
    objects: HashMap<String, K>,
    relist: Option<HashMap<String, K>>,
    /// Whether a complete list has been seen.
    ready: bool,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self { objects: HashMap::new(), relist: None, ready: false }
    }
}

/// What a watch event did to a cache.
enum Change<K> {
    /// One object changed (the old version, if any, and the new, if any).
    One(Option<K>, Option<K>),
    /// A relist completed: everything may have changed.
    Relisted,
    Nothing,
}

impl<K: kube::Resource + Clone> Cache<K> {
    fn key(o: &K) -> String {
        format!("{}/{}", o.meta().namespace.as_deref().unwrap_or(""), o.meta().name.as_deref().unwrap_or(""))
    }

    fn apply(&mut self, mut ev: Event<K>) -> Change<K> {
        if let Event::Apply(o) | Event::InitApply(o) = &mut ev {
            slim(o);
        }
        match ev {
            Event::Apply(o) => {
                let old = self.objects.insert(Self::key(&o), o.clone());
                Change::One(old, Some(o))
            }
            Event::Delete(o) => Change::One(self.objects.remove(&Self::key(&o)), None),
            Event::Init => {
                self.relist = Some(HashMap::new());
                Change::Nothing
            }
            Event::InitApply(o) => {
                self.relist.get_or_insert_with(HashMap::new).insert(Self::key(&o), o);
                Change::Nothing
            }
            Event::InitDone => {
                self.objects = self.relist.take().unwrap_or_default();
                self.ready = true;
                Change::Relisted
            }
        }
    }
}

/// Drops what the translation never reads but every object carries: managed fields and kubectl's
/// copy of the last applied manifest are most of a small object's size (half the agent's memory
/// at 10k Services before this).
fn slim<K: kube::Resource>(o: &mut K) {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// The caches and what is waiting to be reconciled.
#[derive(Default)]
struct State {
    services: Cache<Service>,
    endpoints: Cache<Endpoints>,
    slices: Cache<EndpointSlice>,
    nodes: Cache<Node>,
    api: Option<EndpointsApi>,
    /// Services (`ns/name`) changed since the last reconcile.
    dirty: BTreeSet<String>,
    /// A relist happened: reconcile everything.
    full: bool,
    /// Problems last reported per Service, so an Event is sent once per change.
    reported: HashMap<String, Vec<String>>,
    /// Specs last applied per owner (what the manager holds), to skip no-ops.
    applied: HashMap<String, Vec<ServiceSpec>>,
}

fn slice_service_key(s: &EndpointSlice) -> Option<String> {
    let svc = s.labels().get(SERVICE_NAME_LABEL)?;
    Some(translate::owner(s.namespace().as_deref().unwrap_or(""), svc))
}

/// A Node's addresses (empty when there is no Node).
fn addresses_of(node: Option<&Node>) -> Vec<String> {
    let addrs = node.and_then(|n| n.status.as_ref()).and_then(|s| s.addresses.as_ref());
    addrs.into_iter().flatten().map(|a| a.address.clone()).collect()
}

impl State {
    fn ready(&self) -> bool {
        let eps = match self.api {
            Some(EndpointsApi::SlicesV1) => self.slices.ready,
            _ => self.endpoints.ready,
        };
        self.services.ready && eps && self.nodes.ready
    }

    /// Applies one watch event; answers whether something needs a reconcile.
    fn handle(&mut self, msg: Msg) -> bool {
        match msg {
            Msg::Service(ev) => match self.services.apply(*ev) {
                Change::One(old, new) => self.mark(old.iter().chain(&new).map(Cache::key)),
                Change::Relisted => self.full = true,
                Change::Nothing => return false,
            },
            Msg::Endpoints(ev) => match self.endpoints.apply(*ev) {
                Change::One(old, new) => self.mark(old.iter().chain(&new).map(Cache::key)),
                Change::Relisted => self.full = true,
                Change::Nothing => return false,
            },
            Msg::Slice(ev) => match self.slices.apply(*ev) {
                Change::One(old, new) => self.mark(old.iter().chain(&new).filter_map(slice_service_key)),
                Change::Relisted => self.full = true,
                Change::Nothing => return false,
            },
            // Node addresses decide which endpoints without a nodeName are local: recheck all when
            // they change (not on every status heartbeat).
            Msg::Node(ev) => match self.nodes.apply(*ev) {
                Change::One(old, new) if addresses_of(old.as_ref()) == addresses_of(new.as_ref()) => return false,
                Change::One(..) | Change::Relisted => self.full = true,
                Change::Nothing => return false,
            },
        }
        true
    }

    fn mark(&mut self, keys: impl Iterator<Item = String>) {
        self.dirty.extend(keys);
    }

    /// Node address → node name, for endpoints that do not say their node
    /// (selectorless Endpoints pointing at host-network addresses).
    fn node_addresses(&self) -> HashMap<IpAddr, String> {
        let mut out = HashMap::new();
        for node in self.nodes.objects.values() {
            let name = node.name_any();
            let addrs = node.status.as_ref().and_then(|s| s.addresses.as_ref());
            for a in addrs.into_iter().flatten() {
                if let Ok(ip) = a.address.parse() {
                    out.insert(ip, name.clone());
                }
            }
        }
        out
    }

    fn groups(&self, key: &str, nodes: &HashMap<IpAddr, String>) -> Vec<EpGroup> {
        let mut groups = match self.api {
            Some(EndpointsApi::SlicesV1) => self
                .slices
                .objects
                .values()
                .filter(|s| slice_service_key(s).as_deref() == Some(key))
                .filter_map(translate::group_from_slice)
                .collect(),
            _ => self.endpoints.objects.get(key).map(translate::groups_from_endpoints).unwrap_or_default(),
        };
        for ep in groups.iter_mut().flat_map(|g| g.endpoints.iter_mut()) {
            if ep.node.is_none() {
                ep.node = nodes.get(&ep.address).cloned();
            }
        }
        groups
    }
}

/// One Service's outcome in a reconcile.
struct Work {
    owner: String,
    /// None: the Service is gone or not served; its frontends go.
    specs: Option<Vec<ServiceSpec>>,
    problems: Vec<String>,
    service: Option<Service>,
}

/// Runs the source until the process ends. Errors only if the API server's
/// endpoints API could not be determined; watch failures are retried.
pub async fn run(
    client: kube::Client,
    manager: Arc<Mutex<ServiceManager>>,
    config: SourceConfig,
) -> Result<(), K8sError> {
    let api = detect_endpoints_api(&client).await;
    info!(endpoints = api.as_str(), "Kubernetes source: watching Services, endpoints and Nodes");
    let mut streams: Vec<MsgStream> = vec![
        watch(Api::<Service>::all(client.clone()), Msg::Service),
        watch(Api::<Node>::all(client.clone()), Msg::Node),
    ];
    streams.push(match api {
        EndpointsApi::SlicesV1 => watch(Api::<EndpointSlice>::all(client.clone()), Msg::Slice),
        EndpointsApi::CoreV1 => watch(Api::<Endpoints>::all(client.clone()), Msg::Endpoints),
    });
    let mut events = futures::stream::select_all(streams);
    let mut state = State { api: Some(api), ..State::default() };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let flush_at = deadline.filter(|_| state.ready());
        tokio::select! {
            msg = events.next() => {
                let Some(msg) = msg else { return Ok(()) };
                if state.handle(msg) && deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + config.batch_delay);
                }
            }
            _ = sleep_until(flush_at) => {
                deadline = None;
                reconcile(&mut state, &manager, &client, &config).await;
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Reconciles the dirty Services (or all of them after a relist).
async fn reconcile(
    state: &mut State,
    manager: &Arc<Mutex<ServiceManager>>,
    client: &kube::Client,
    config: &SourceConfig,
) {
    let full = std::mem::take(&mut state.full);
    let mut keys: BTreeSet<String> = std::mem::take(&mut state.dirty);
    if full {
        keys.extend(state.services.objects.keys().cloned());
        keys.extend(state.applied.keys().cloned());
    }
    let nodes = state.node_addresses();
    let mut work = Vec::with_capacity(keys.len());
    for key in keys {
        let service = state.services.objects.get(&key).cloned();
        let (specs, problems) = match &service {
            None => (None, Vec::new()),
            Some(svc) => match translate::translate(svc, &state.groups(&key, &nodes), config.proxy_name.as_deref()) {
                Ok(Translated { specs, problems }) => (Some(specs), problems),
                Err(why) => {
                    log_not_served(&key, &why);
                    (None, Vec::new())
                }
            },
        };
        let unchanged =
            state.applied.get(&key) == specs.as_ref() || (specs.is_none() && !state.applied.contains_key(&key));
        if unchanged && !full {
            report(state, client, config, &key, service.as_ref(), problems).await;
            continue;
        }
        work.push(Work { owner: key, specs, problems, service });
    }
    let started = std::time::Instant::now();
    let count = work.len();
    let manager = manager.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut m = manager.lock().unwrap_or_else(|p| p.into_inner());
        let mut results = Vec::with_capacity(work.len());
        if full {
            // Owners the store holds that the cluster no longer has (deleted while the agent was down).
            let known: HashSet<String> = work.iter().map(|w| w.owner.clone()).collect();
            for owner in m.owners().into_iter().filter(|o| !known.contains(o)) {
                if let Err(e) = m.delete_owned(&owner) {
                    warn!(service = %owner, error = %e, "removing a stale Kubernetes service failed");
                } else {
                    info!(service = %owner, "removed a Service the cluster no longer has");
                }
            }
        }
        // One fsync for the whole reconcile: a crash before it loses nothing the next relist
        // does not write again.
        let flushed = m.batch(|m| {
            for w in work {
                let result = apply_one(m, &w);
                results.push((w, result));
            }
        });
        if let Err(e) = flushed {
            warn!(error = %e, "persisting the Kubernetes services failed; they keep serving");
        }
        results
    })
    .await;
    let results = match joined {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "Kubernetes reconcile task failed; everything is retried");
            state.full = true;
            return;
        }
    };
    debug!(services = count, full, ms = started.elapsed().as_millis() as u64, "Kubernetes services reconciled");
    if full {
        // A full relist decoded every object once more than the caches keep.
        crate::memory::release_free_memory();
    }
    for (w, result) in results {
        let mut problems = w.problems;
        match result {
            Ok(()) => match w.specs {
                Some(specs) => {
                    state.applied.insert(w.owner.clone(), specs);
                }
                None => {
                    state.applied.remove(&w.owner);
                }
            },
            Err(e) => {
                // The previous version (if any) keeps serving; the next change retries.
                problems.push(format!("not served: {e}"));
                state.applied.remove(&w.owner);
            }
        }
        report(state, client, config, &w.owner, w.service.as_ref(), problems).await;
    }
}

/// Writes one Service's frontends, skipping the write when the manager
/// already holds exactly these (a relist after a restart rewrites nothing).
fn apply_one(m: &mut ServiceManager, w: &Work) -> Result<(), ServiceError> {
    match &w.specs {
        None => m.delete_owned(&w.owner).map(|_| ()),
        Some(specs) => {
            let current = m.owned_services(&w.owner)?;
            let same = current.len() == specs.len()
                && specs.iter().all(|s| {
                    current.iter().any(|c| {
                        let mut c = c.to_spec();
                        c.id = None;
                        c == *s
                    })
                });
            if same {
                return Ok(());
            }
            m.replace_owned(&w.owner, specs.clone()).map(|_| ())
        }
    }
}

fn log_not_served(key: &str, why: &NotServed) {
    match why {
        NotServed::OtherProxy(p) => debug!(service = %key, proxy = %p, "Service is for another proxy; not served"),
        other => debug!(service = %key, reason = ?other, "Service has no frontends to serve"),
    }
}

/// Logs the problems of a Service and records them as a Warning Event on it,
/// once per distinct set of problems.
async fn report(
    state: &mut State,
    client: &kube::Client,
    config: &SourceConfig,
    key: &str,
    service: Option<&Service>,
    problems: Vec<String>,
) {
    if state.reported.get(key).map(Vec::as_slice).unwrap_or(&[]) == problems.as_slice() {
        return;
    }
    if problems.is_empty() {
        state.reported.remove(key);
        return;
    }
    state.reported.insert(key.to_string(), problems.clone());
    let Some(svc) = service else { return };
    for p in &problems {
        warn!(service = %key, problem = %p, "Kubernetes Service partly or wholly not served");
    }
    let message = format!("axon-agent on {}: {}", config.node_name, problems.join("; "));
    if let Err(e) = post_event(client, svc, &config.node_name, &message).await {
        warn!(service = %key, error = %e, "recording the Event failed");
    }
}

async fn post_event(client: &kube::Client, svc: &Service, node: &str, message: &str) -> Result<(), kube::Error> {
    let ns = svc.namespace().unwrap_or_else(|| "default".into());
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let event = K8sEvent {
        metadata: ObjectMeta { generate_name: Some(format!("{}.axon.", svc.name_any())), ..ObjectMeta::default() },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            name: svc.metadata.name.clone(),
            namespace: Some(ns.clone()),
            uid: svc.metadata.uid.clone(),
            resource_version: svc.metadata.resource_version.clone(),
            ..ObjectReference::default()
        },
        reason: Some("AxonServiceSkipped".into()),
        message: Some(message.chars().take(1000).collect()),
        type_: Some("Warning".into()),
        source: Some(EventSource { component: Some("axon-agent".into()), host: Some(node.to_string()) }),
        reporting_component: Some("axon-agent".into()),
        reporting_instance: Some(node.to_string()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..K8sEvent::default()
    };
    Api::<K8sEvent>::namespaced(client.clone(), &ns).create(&PostParams::default(), &event).await.map(|_| ())
}
