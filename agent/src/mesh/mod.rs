//! Mesh acceleration: which pods have their sidecar traffic captured by
//! Axon's BPF programs instead of iptables, and have their local socket pairs
//! short-circuited through the sockhash.
//!
//! [`MeshManager`] owns the pod registry (name → cgroup, addresses,
//! annotations, the per-pod and per-namespace toggles), persists it in
//! `<state-dir>/mesh.json`, and realizes it in the pinned maps of
//! `bpf/mesh.c` ([`loader`]). Enabling writes the pod's addresses and
//! exclusions first and the pod entry last; disabling removes the pod entry
//! first, so the datapath never sees half a pod. Open connections are never
//! touched either way: a captured connection keeps its sidecar, a socket in
//! the sockhash keeps its shortcut until it closes.
//!
//! The embedded mode learns pods from the API (`PUT /v1/mesh/pods/NS/NAME`);
//! the Kubernetes mode calls [`MeshManager::set_pod`] with what it watches.

pub mod api;
pub mod loader;
pub mod pod;

use axon_api::mesh::{MeshCounters, MeshPodStatus, MeshStatus};
use axon_bpf::maps::mesh::{metric, MeshCidrKey, MeshIp, MeshPodRef};
use aya::maps::lpm_trie::Key;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use tracing::{info, warn};

pub use pod::{PodCapture, PodRef};

/// Which sidecar the pods run: fixes the default ports and proxy uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MeshMode {
    Istio,
    Linkerd,
}

impl MeshMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MeshMode::Istio => "istio",
            MeshMode::Linkerd => "linkerd",
        }
    }

    /// (outbound port, inbound port, proxy uid, the proxy's own inbound ports never captured).
    pub fn defaults(self) -> (u16, u16, u32, &'static [u16]) {
        match self {
            // istio-iptables: 15001/15006, uid 1337; 15090 (stats), 15021 (health), 15020 (merged metrics).
            MeshMode::Istio => (15001, 15006, 1337, &[15090, 15021, 15020]),
            // linkerd proxy-init: 4140/4143, uid 2102; 4190 (tap), 4191 (admin).
            MeshMode::Linkerd => (4140, 4143, 2102, &[4190, 4191]),
        }
    }
}

/// The agent's mesh settings (`--mesh-mode` and its overrides).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    pub mode: MeshMode,
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub proxy_uid: u32,
    /// Put local socket pairs in the sockhash unless a pod says otherwise.
    pub bypass: bool,
}

impl MeshConfig {
    /// From the flags: `None` when the mode is `off` (or not given).
    pub fn from_flags(
        mode: Option<&str>,
        outbound_port: Option<u16>,
        inbound_port: Option<u16>,
        proxy_uid: Option<u32>,
        bypass: Option<&str>,
    ) -> Result<Option<MeshConfig>, MeshError> {
        let mode = match mode.unwrap_or("off") {
            "off" => return Ok(None),
            "istio" => MeshMode::Istio,
            "linkerd" => MeshMode::Linkerd,
            other => return Err(MeshError::invalid("mesh-mode", format!("{other:?} is not istio, linkerd or off"))),
        };
        let bypass = match bypass.unwrap_or("on") {
            "on" | "true" => true,
            "off" | "false" => false,
            other => return Err(MeshError::invalid("mesh-bypass", format!("{other:?} is not on or off"))),
        };
        let (out, inb, uid, _) = mode.defaults();
        let config = MeshConfig {
            mode,
            outbound_port: outbound_port.unwrap_or(out),
            inbound_port: inbound_port.unwrap_or(inb),
            proxy_uid: proxy_uid.unwrap_or(uid),
            bypass,
        };
        if config.outbound_port == 0 || config.inbound_port == 0 {
            return Err(MeshError::invalid("mesh-outbound-port", "ports must be 1-65535"));
        }
        if config.outbound_port == config.inbound_port {
            return Err(MeshError::invalid("mesh-inbound-port", "must differ from --mesh-outbound-port"));
        }
        Ok(Some(config))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("mesh acceleration is off: start the agent with --mesh-mode istio|linkerd")]
    Off,
    #[error("mesh datapath: {0}")]
    Datapath(String),
    #[error("mesh state {path}: {message}")]
    State { path: PathBuf, message: String },
}

impl MeshError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        MeshError::Invalid { field: field.into(), message: message.into() }
    }
}

/// One registered pod as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct PodEntry {
    pod: PodRef,
    /// The pod's own choice; `None` follows its namespace.
    enabled: Option<bool>,
}

/// The persisted registry (`<state-dir>/mesh.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Registry {
    pods: BTreeMap<String, PodEntry>,
    namespaces: BTreeSet<String>,
}

/// What the maps hold for one pod, to undo it exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Realized {
    cgroup_id: u64,
    ips: Vec<IpAddr>,
    cidrs: Vec<MeshCidrKey>,
}

pub struct MeshManager {
    config: MeshConfig,
    cgroup_root: PathBuf,
    state_path: PathBuf,
    maps: loader::MeshMaps,
    registry: Registry,
    realized: BTreeMap<String, Realized>,
}

impl std::fmt::Debug for MeshManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshManager").field("config", &self.config).field("pods", &self.registry.pods.len()).finish()
    }
}

fn pod_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

static HANDLE: OnceLock<Arc<Mutex<MeshManager>>> = OnceLock::new();

/// Makes the manager reachable from the API (and the Kubernetes watchers).
pub fn install(manager: MeshManager) -> Arc<Mutex<MeshManager>> {
    let shared = Arc::new(Mutex::new(manager));
    if HANDLE.set(shared.clone()).is_err() {
        warn!("a mesh manager was already installed; keeping the first");
    }
    shared
}

/// The installed manager, if the agent runs with mesh acceleration on.
pub fn handle() -> Option<Arc<Mutex<MeshManager>>> {
    HANDLE.get().cloned()
}

impl MeshManager {
    /// Loads (or reuses) the mesh datapath on `cgroup_root`, reads the
    /// registry from `state_dir` and reconciles the maps to it.
    pub fn start(
        config: MeshConfig,
        bpffs_root: &Path,
        cgroup_root: &Path,
        state_dir: &Path,
    ) -> Result<MeshManager, MeshError> {
        let maps = loader::load(bpffs_root, cgroup_root)?;
        let state_path = state_dir.join("mesh.json");
        let registry = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| MeshError::State { path: state_path.clone(), message: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::default(),
            Err(e) => return Err(MeshError::State { path: state_path.clone(), message: e.to_string() }),
        };
        let mut manager = MeshManager {
            config,
            cgroup_root: cgroup_root.to_path_buf(),
            state_path,
            maps,
            registry,
            realized: BTreeMap::new(),
        };
        manager.sync_all()?;
        info!(mode = manager.config.mode.as_str(), pods = manager.registry.pods.len(), "mesh acceleration ready");
        Ok(manager)
    }

    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// Registers (or updates) a pod; `enabled` is its own toggle (`None`:
    /// follow the namespace). Realizes the result at once.
    pub fn register(&mut self, pod: PodRef, enabled: Option<bool>) -> Result<MeshPodStatus, MeshError> {
        pod.validate(&self.cgroup_root)?;
        // Refuse bad annotations before anything is stored.
        PodCapture::build(&self.config, &pod)?;
        let key = pod_key(&pod.namespace, &pod.name);
        let entry = PodEntry { pod, enabled };
        let previous = self.registry.pods.insert(key.clone(), entry);
        if let Err(e) = self.save().and_then(|()| self.sync_pod(&key)) {
            match previous {
                Some(p) => self.registry.pods.insert(key.clone(), p),
                None => self.registry.pods.remove(&key),
            };
            let _ = self.save();
            let _ = self.sync_pod(&key);
            return Err(e);
        }
        self.pod_status(&key)
    }

    /// The Kubernetes side's entry point: the pod as watched, and whether
    /// its label (or its namespace's) asks for acceleration.
    pub fn set_pod(&mut self, pod: PodRef, enabled: bool) -> Result<MeshPodStatus, MeshError> {
        self.register(pod, Some(enabled))
    }

    /// Forgets a pod (deleted): its map entries go first.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> Result<(), MeshError> {
        let key = pod_key(namespace, name);
        if self.registry.pods.remove(&key).is_none() {
            return Err(MeshError::NotFound(format!("pod {key} is not registered")));
        }
        self.unrealize(&key)?;
        self.save()
    }

    /// `enable/disable --pod NS/NAME`: the pod's own toggle.
    pub fn set_pod_enabled(&mut self, namespace: &str, name: &str, enabled: bool) -> Result<(), MeshError> {
        let key = pod_key(namespace, name);
        let entry = self.registry.pods.get_mut(&key).ok_or_else(|| {
            MeshError::NotFound(format!(
                "pod {key} is not registered (register it with its cgroup: agentctl mesh enable --pod {key} --cgroup PATH)"
            ))
        })?;
        entry.enabled = Some(enabled);
        self.save()?;
        self.sync_pod(&key)
    }

    /// `enable/disable --namespace NS`: every pod of NS that has no toggle
    /// of its own follows. A namespace may be enabled before its pods exist.
    pub fn set_namespace(&mut self, namespace: &str, enabled: bool) -> Result<(), MeshError> {
        axon_api::mesh::check_name("namespace", namespace).map_err(|m| MeshError::invalid("namespace", m))?;
        if enabled {
            self.registry.namespaces.insert(namespace.to_string());
        } else {
            self.registry.namespaces.remove(namespace);
            // Disabling a namespace also clears the pods' explicit "on".
            for entry in self.registry.pods.values_mut().filter(|e| e.pod.namespace == namespace) {
                entry.enabled = None;
            }
        }
        self.save()?;
        let keys: Vec<String> =
            self.registry.pods.iter().filter(|(_, e)| e.pod.namespace == namespace).map(|(k, _)| k.clone()).collect();
        for key in keys {
            self.sync_pod(&key)?;
        }
        Ok(())
    }

    fn effective(&self, entry: &PodEntry) -> bool {
        entry.enabled.unwrap_or_else(|| self.registry.namespaces.contains(&entry.pod.namespace))
    }

    fn save(&self) -> Result<(), MeshError> {
        let state_err = |e: std::io::Error| MeshError::State { path: self.state_path.clone(), message: e.to_string() };
        if let Some(dir) = self.state_path.parent() {
            std::fs::create_dir_all(dir).map_err(state_err)?;
        }
        let bytes = serde_json::to_vec_pretty(&self.registry)
            .map_err(|e| MeshError::State { path: self.state_path.clone(), message: e.to_string() })?;
        let tmp = self.state_path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes).map_err(state_err)?;
        std::fs::rename(&tmp, &self.state_path).map_err(state_err)
    }

    /// Makes the maps match every registered pod, and drops pod entries of
    /// the maps nobody registered (a previous run's leftovers).
    fn sync_all(&mut self) -> Result<(), MeshError> {
        let keys: Vec<String> = self.registry.pods.keys().cloned().collect();
        let mut wanted_ids = BTreeSet::new();
        for key in keys {
            self.sync_pod(&key)?;
            if let Some(r) = self.realized.get(&key) {
                wanted_ids.insert(r.cgroup_id);
            }
        }
        let stale: Vec<u64> =
            self.maps.pods.keys().filter_map(Result::ok).filter(|id| !wanted_ids.contains(id)).collect();
        for id in stale {
            info!(cgroup_id = id, "removing a mesh pod entry nobody registered");
            let _ = self.maps.pods.remove(&id);
        }
        let stale_ips: Vec<MeshIp> = self
            .maps
            .pod_ips
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, r)| !wanted_ids.contains(&r.cgroup_id))
            .map(|(ip, _)| ip)
            .collect();
        for ip in stale_ips {
            let _ = self.maps.pod_ips.remove(&ip);
        }
        Ok(())
    }

    /// Realizes one pod: written when effectively enabled, removed otherwise.
    fn sync_pod(&mut self, key: &str) -> Result<(), MeshError> {
        let Some(entry) = self.registry.pods.get(key).cloned() else {
            return self.unrealize(key);
        };
        if !self.effective(&entry) {
            return self.unrealize(key);
        }
        let capture = PodCapture::build(&self.config, &entry.pod)?;
        let cgroup_id = entry.pod.cgroup_id(&self.cgroup_root)?;
        // A pod whose cgroup or addresses changed: undo the old entries first.
        if self.realized.get(key).is_some_and(|r| r.cgroup_id != cgroup_id || r.ips != entry.pod.ips) {
            self.unrealize(key)?;
        }
        let old_cidrs = self.realized.get(key).map(|r| r.cidrs.clone()).unwrap_or_default();
        let dp = |what: &str, e: aya::maps::MapError| MeshError::Datapath(format!("{what} for pod {key}: {e}"));
        for ip in &entry.pod.ips {
            self.maps
                .pod_ips
                .insert(MeshIp::new(*ip), MeshPodRef { cgroup_id }, 0)
                .map_err(|e| dp("writing axon_mesh_pod_ips", e))?;
        }
        let cidrs: Vec<MeshCidrKey> =
            capture.exclude_cidrs.iter().map(|(ip, len)| MeshCidrKey::new(cgroup_id, *ip, *len)).collect();
        for c in &cidrs {
            self.maps.cidrs.insert(&lpm_key(c), 1, 0).map_err(|e| dp("writing axon_mesh_excl_cidrs", e))?;
        }
        self.maps.pods.insert(cgroup_id, capture.value, 0).map_err(|e| dp("writing axon_mesh_pods", e))?;
        for c in old_cidrs.iter().filter(|c| !cidrs.contains(c)) {
            let _ = self.maps.cidrs.remove(&lpm_key(c));
        }
        self.realized.insert(key.to_string(), Realized { cgroup_id, ips: entry.pod.ips.clone(), cidrs });
        info!(pod = key, cgroup_id, "mesh acceleration on");
        Ok(())
    }

    /// Removes what the maps hold for a pod: the pod entry first.
    fn unrealize(&mut self, key: &str) -> Result<(), MeshError> {
        let realized = match self.realized.remove(key) {
            Some(r) => r,
            // Not realized by this run: maybe by the previous one (restart).
            None => match self.registry.pods.get(key).map(|e| e.pod.cgroup_id(&self.cgroup_root)) {
                Some(Ok(id)) if self.maps.pods.get(&id, 0).is_ok() => {
                    Realized { cgroup_id: id, ips: self.registry.pods[key].pod.ips.clone(), cidrs: vec![] }
                }
                _ => return Ok(()),
            },
        };
        let gone = |e: &aya::maps::MapError| matches!(e, aya::maps::MapError::KeyNotFound);
        if let Err(e) = self.maps.pods.remove(&realized.cgroup_id) {
            if !gone(&e) {
                return Err(MeshError::Datapath(format!("removing pod {key} from axon_mesh_pods: {e}")));
            }
        }
        for ip in &realized.ips {
            let _ = self.maps.pod_ips.remove(&MeshIp::new(*ip));
        }
        for c in &realized.cidrs {
            let _ = self.maps.cidrs.remove(&lpm_key(c));
        }
        info!(pod = key, "mesh acceleration off");
        Ok(())
    }

    fn pod_status(&self, key: &str) -> Result<MeshPodStatus, MeshError> {
        let entry = self.registry.pods.get(key).ok_or_else(|| MeshError::NotFound(format!("pod {key}")))?;
        let capture = PodCapture::build(&self.config, &entry.pod).ok();
        let cgroup_id = entry.pod.cgroup_id(&self.cgroup_root).unwrap_or(0);
        let accelerated = cgroup_id != 0 && self.maps.pods.get(&cgroup_id, 0).is_ok();
        Ok(MeshPodStatus {
            namespace: entry.pod.namespace.clone(),
            name: entry.pod.name.clone(),
            cgroup: entry.pod.cgroup.display().to_string(),
            cgroup_id,
            ips: entry.pod.ips.iter().map(ToString::to_string).collect(),
            enabled: entry.enabled,
            accelerated,
            bypass: capture.as_ref().is_some_and(|c| c.bypass()),
            exclude_outbound_ports: capture.as_ref().map(|c| c.exclude_out.clone()).unwrap_or_default(),
            exclude_inbound_ports: capture.as_ref().map(|c| c.exclude_in.clone()).unwrap_or_default(),
            exclude_outbound_cidrs: capture
                .as_ref()
                .map(|c| c.exclude_cidrs.iter().map(|(ip, len)| format!("{ip}/{len}")).collect())
                .unwrap_or_default(),
        })
    }

    /// Everything `agentctl mesh status` shows.
    pub fn status(&self) -> MeshStatus {
        let pods = self.registry.pods.keys().filter_map(|k| self.pod_status(k).ok()).collect();
        MeshStatus {
            mode: self.config.mode.as_str().to_string(),
            outbound_port: self.config.outbound_port,
            inbound_port: self.config.inbound_port,
            proxy_uid: self.config.proxy_uid,
            namespaces: self.registry.namespaces.iter().cloned().collect(),
            pods,
            counters: self.counters(),
        }
    }

    fn counters(&self) -> MeshCounters {
        let read = |idx: u32| -> u64 {
            self.maps.metrics.get(&idx, 0).map(|values| values.iter().copied().sum::<u64>()).unwrap_or(0)
        };
        MeshCounters {
            captured_outbound: read(metric::OUTBOUND),
            captured_inbound: read(metric::INBOUND),
            excluded: read(metric::EXCLUDED),
            original_dst_answered: read(metric::ORIG_DST),
            sockets_bypassed: read(metric::SOCK_ADDED),
            sockets_sending: read(metric::SENDERS),
            app_sockets_plain: read(metric::APP_PLAIN),
            app_sockets_sending: read(metric::APP_SENDING),
            no_listener: read(metric::NO_LISTENER),
            sockhash_insert_failures: read(metric::SOCK_FAILED),
            messages_redirected: read(metric::REDIRECTED),
            messages_passed: read(metric::PASSED),
            bytes_redirected: read(metric::BYTES_REDIRECTED),
            streams_to_stack: read(metric::STREAMS_TO_STACK),
        }
    }
}

/// The LPM key aya wants: prefix length, then the rest of `mesh_cidr_key`.
fn lpm_key(c: &MeshCidrKey) -> Key<[u8; 28]> {
    let mut data = [0u8; 28];
    data[0..4].copy_from_slice(&c.pad.to_ne_bytes());
    data[4..12].copy_from_slice(&c.cgroup_id.to_ne_bytes());
    data[12..28].copy_from_slice(&c.addr);
    Key::new(c.prefixlen, data)
}
