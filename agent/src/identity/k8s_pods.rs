//! The Kubernetes source of endpoints: watches Namespaces (their labels are
//! part of a pod's identity) and Pods. Pods with `spec.nodeName` equal to
//! this node are its endpoints (an identity is allocated and referenced for
//! each); every other pod only contributes its addresses to the ipcache, with
//! the identity its own node allocated (looked up, retried until found).
//!
//! A restart of the agent or the apiserver is a fresh list: endpoints that
//! are not in it are removed, and stale ipcache entries are pruned only once
//! both lists are complete.

use super::labels::LabelSet;
use super::Shared;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use tracing::{info, warn};

type Labels = BTreeMap<String, String>;
type Key = (String, String);

/// What the source remembers of a pod.
#[derive(Debug, Clone, PartialEq)]
struct PodInfo {
    node: Option<String>,
    ips: Vec<IpAddr>,
    labels: Labels,
}

struct Source {
    manager: Shared,
    node: String,
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<Key, PodInfo>,
    namespaces_listed: bool,
    pods_listed: bool,
}

/// The pod as an endpoint, or None when it has none (host network, finished).
fn pod_info(pod: &Pod) -> Option<(Key, Option<PodInfo>)> {
    let key = (pod.metadata.namespace.clone()?, pod.metadata.name.clone()?);
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let finished = status.and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    // A terminating pod still runs (and talks) until it is gone: it keeps its identity.
    if finished || host_network {
        return Some((key, None));
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|list| list.iter().filter_map(|p| p.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()).and_then(|ip| ip.parse().ok()) {
            ips.push(ip);
        }
    }
    let info = PodInfo {
        node: spec.and_then(|s| s.node_name.clone()),
        ips,
        labels: pod.metadata.labels.clone().unwrap_or_default().into_iter().collect(),
    };
    Some((key, Some(info)))
}

impl Source {
    async fn apply_pod(&mut self, key: Key, info: Option<PodInfo>) {
        let Some(info) = info else {
            self.remove_pod(&key).await;
            return;
        };
        if self.pods.get(&key) == Some(&info) {
            return;
        }
        // A pod moving between "local" and "remote" is first removed from the other side.
        let was_local = self.pods.get(&key).map(|p| p.node.as_deref() == Some(self.node.as_str()));
        let is_local = info.node.as_deref() == Some(self.node.as_str());
        let mut m = self.manager.lock().await;
        if was_local == Some(!is_local) {
            if is_local {
                m.delete_remote(&key.0, &key.1);
            } else {
                m.delete_local(&key.0, &key.1).await;
            }
        }
        let ns_labels = self.namespaces.get(&key.0);
        if is_local {
            m.upsert_local(&key.0, &key.1, info.ips.clone(), info.labels.clone(), ns_labels).await;
        } else if !info.ips.is_empty() {
            let set = LabelSet::for_pod(&key.0, &info.labels, ns_labels);
            m.upsert_remote(&key.0, &key.1, info.ips.clone(), set).await;
        } else {
            m.delete_remote(&key.0, &key.1);
        }
        drop(m);
        self.pods.insert(key, info);
    }

    async fn remove_pod(&mut self, key: &Key) {
        if self.pods.remove(key).is_none() {
            return;
        }
        let mut m = self.manager.lock().await;
        m.delete_local(&key.0, &key.1).await;
        m.delete_remote(&key.0, &key.1);
    }

    /// A namespace's labels changed: its pods' label sets change with them.
    async fn apply_namespace(&mut self, name: String, labels: Labels) {
        if self.namespaces.get(&name) == Some(&labels) {
            return;
        }
        self.namespaces.insert(name.clone(), labels);
        let pods: Vec<(Key, PodInfo)> =
            self.pods.iter().filter(|(k, _)| k.0 == name).map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, info) in pods {
            // Forget it so apply_pod does not skip it as unchanged.
            self.pods.remove(&key);
            self.apply_pod(key, Some(info)).await;
        }
    }

    /// A fresh pod list ended: pods it did not name are gone.
    async fn pods_relisted(&mut self, seen: &BTreeSet<Key>) {
        let (local, remote) = self.manager.lock().await.endpoint_keys();
        let stale: BTreeSet<Key> =
            self.pods.keys().chain(local.iter()).chain(remote.iter()).filter(|k| !seen.contains(*k)).cloned().collect();
        for key in stale {
            self.pods.insert(key.clone(), PodInfo { node: None, ips: Vec::new(), labels: Labels::new() });
            self.remove_pod(&key).await;
        }
        self.pods_listed = true;
        self.maybe_synced().await;
    }

    async fn maybe_synced(&self) {
        if self.pods_listed && self.namespaces_listed {
            self.manager.lock().await.set_synced();
        }
    }
}

/// Watches Namespaces and Pods until the process ends (the watchers retry
/// with backoff while the apiserver is away).
pub async fn run(client: kube::Client, manager: Shared, node: String) {
    let namespaces =
        watcher::watcher(Api::<Namespace>::all(client.clone()), watcher::Config::default()).default_backoff();
    let pods = watcher::watcher(Api::<Pod>::all(client), watcher::Config::default()).default_backoff();
    futures::pin_mut!(namespaces, pods);
    let mut source = Source {
        manager,
        node,
        namespaces: BTreeMap::new(),
        pods: BTreeMap::new(),
        namespaces_listed: false,
        pods_listed: false,
    };
    let mut pods_seen: BTreeSet<Key> = BTreeSet::new();
    let mut ns_seen: BTreeSet<String> = BTreeSet::new();
    info!(node = %source.node, "watching Pods and Namespaces for identities");
    loop {
        tokio::select! {
            ev = namespaces.next() => match ev {
                None => return,
                Some(Err(e)) => warn!(error = %e, "namespace watch"),
                Some(Ok(Event::Init)) => ns_seen.clear(),
                Some(Ok(Event::InitApply(ns) | Event::Apply(ns))) => {
                    let Some(name) = ns.metadata.name.clone() else { continue };
                    ns_seen.insert(name.clone());
                    source.apply_namespace(name, ns.metadata.labels.clone().unwrap_or_default().into_iter().collect()).await;
                }
                Some(Ok(Event::Delete(ns))) => {
                    if let Some(name) = ns.metadata.name { source.namespaces.remove(&name); }
                }
                Some(Ok(Event::InitDone)) => {
                    source.namespaces.retain(|n, _| ns_seen.contains(n));
                    source.namespaces_listed = true;
                    source.maybe_synced().await;
                }
            },
            ev = pods.next() => match ev {
                None => return,
                Some(Err(e)) => warn!(error = %e, "pod watch"),
                Some(Ok(Event::Init)) => pods_seen.clear(),
                Some(Ok(Event::InitApply(pod))) => {
                    if let Some((key, info)) = pod_info(&pod) {
                        pods_seen.insert(key.clone());
                        source.apply_pod(key, info).await;
                    }
                }
                Some(Ok(Event::Apply(pod))) => {
                    if let Some((key, info)) = pod_info(&pod) { source.apply_pod(key, info).await; }
                }
                Some(Ok(Event::Delete(pod))) => {
                    if let Some((key, _)) = pod_info(&pod) { source.remove_pod(&key).await; }
                }
                Some(Ok(Event::InitDone)) => source.pods_relisted(&pods_seen).await,
            },
        }
    }
}
