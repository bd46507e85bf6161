//! Garbage collection of `AxonIdentity` objects (identity allocation mode `crd`): an identity is in use
//! while some Pod's namespace and labels map to its security labels. One that no pod has used for the
//! grace period — measured from when this leader first saw it unused, and never younger than the grace
//! period itself — is deleted, with the resourceVersion it was judged at as a precondition, so an
//! identity an agent touched meanwhile survives.
//!
//! Agents create an identity as `pending` and confirm it once it won (agent/src/identity/crd.rs); a pending
//! object older than [`STALE_PENDING`] belongs to an agent that died mid-allocation and is deleted whatever
//! its labels, since no agent ever uses a pending identity.

use crate::config::GcConfig;
use crate::error::{is_status, KubeContext, Result};
use axon_crds::labels::security_labels;
use axon_crds::AxonIdentity;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Preconditions};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

type LabelSet = BTreeMap<String, String>;

/// The AxonIdentity annotation holding `pending` or `confirmed` (absent: confirmed).
pub const IDENTITY_STATE: &str = "axon.io/identity-state";
/// A pending identity this old is abandoned (agents settle within seconds).
pub const STALE_PENDING: Duration = Duration::from_secs(60);

/// Remembers since when each identity has been unused.
#[derive(Debug, Default)]
pub struct Collector {
    unused_since: HashMap<String, Instant>,
}

/// One identity as the collector judges it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub name: String,
    pub labels: LabelSet,
    /// Age of the object (from its creationTimestamp).
    pub age: Duration,
    /// Created by an agent and never confirmed.
    pub pending: bool,
}

impl Collector {
    /// The identities to delete now, given the label sets pods use.
    pub fn judge(
        &mut self,
        identities: &[Candidate],
        used: &HashSet<LabelSet>,
        grace: Duration,
        now: Instant,
    ) -> Vec<String> {
        let present: HashSet<&str> = identities.iter().map(|i| i.name.as_str()).collect();
        self.unused_since.retain(|name, _| present.contains(name.as_str()));
        let mut doomed = Vec::new();
        for id in identities {
            if id.pending {
                if id.age >= STALE_PENDING {
                    doomed.push(id.name.clone());
                }
                continue;
            }
            if used.contains(&id.labels) {
                self.unused_since.remove(&id.name);
                continue;
            }
            let since = *self.unused_since.entry(id.name.clone()).or_insert(now);
            if now.duration_since(since) >= grace && id.age >= grace {
                doomed.push(id.name.clone());
            }
        }
        doomed
    }
}

/// Every `cfg.interval`, deletes identities unused for `cfg.grace`.
pub async fn run(client: Client, cfg: GcConfig) -> Result<()> {
    let mut collector = Collector::default();
    loop {
        if let Err(e) = collect(&client, &cfg, &mut collector).await {
            warn!(error = %e, "identity garbage collection failed; retrying");
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

/// One pass: list pods and identities, delete the ones unused long enough.
pub async fn collect(client: &Client, cfg: &GcConfig, collector: &mut Collector) -> Result<usize> {
    let pods: Api<Pod> = Api::all(client.clone());
    let ids: Api<AxonIdentity> = Api::all(client.clone());
    // Identities first: one created after this list is not judged in this pass at all.
    let identity_list = ids.list(&ListParams::default()).await.ctx(|| "listing axonidentities".into())?;
    let pod_list = pods.list(&ListParams::default()).await.ctx(|| "listing pods".into())?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_list = namespaces.list(&ListParams::default()).await.ctx(|| "listing namespaces".into())?;
    let ns_labels: HashMap<String, BTreeMap<String, String>> =
        ns_list.items.iter().map(|n| (n.name_any(), n.labels().clone())).collect();
    let mut used: HashSet<LabelSet> = HashSet::new();
    for pod in pod_list.items.iter().filter(|p| !is_finished(p)) {
        let ns = pod.namespace().unwrap_or_default();
        // An agent that had not seen the namespace yet computed the set without its labels: both count.
        used.insert(security_labels(&ns, pod.labels(), None));
        if let Some(labels) = ns_labels.get(&ns) {
            used.insert(security_labels(&ns, pod.labels(), Some(labels)));
        }
    }
    let now_ts = Timestamp::now();
    let by_name: HashMap<String, &AxonIdentity> = identity_list.items.iter().map(|i| (i.name_any(), i)).collect();
    let candidates: Vec<Candidate> = identity_list
        .items
        .iter()
        .map(|i| Candidate {
            name: i.name_any(),
            labels: i.spec.security_labels.clone(),
            age: i
                .creation_timestamp()
                .and_then(|t| Duration::try_from(now_ts.duration_since(t.0)).ok())
                .unwrap_or_default(),
            pending: i.annotations().get(IDENTITY_STATE).is_some_and(|s| s == "pending"),
        })
        .collect();
    let doomed = collector.judge(&candidates, &used, cfg.grace, Instant::now());
    let mut deleted = 0;
    for name in doomed {
        let Some(obj) = by_name.get(&name) else { continue };
        let params = DeleteParams {
            preconditions: Some(Preconditions { uid: obj.uid(), resource_version: obj.resource_version() }),
            ..DeleteParams::default()
        };
        match ids.delete(&name, &params).await {
            Ok(_) => {
                info!(identity = %name, labels = ?obj.spec.security_labels, "deleted unused identity");
                deleted += 1;
            }
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {
                debug!(identity = %name, "identity changed or went away meanwhile; kept")
            }
            Err(e) => return Err(e).ctx(|| format!("deleting axonidentity {name}")),
        }
    }
    Ok(deleted)
}

/// Pods that have terminated for good use no identity.
fn is_finished(p: &Pod) -> bool {
    matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> LabelSet {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn cand(name: &str, labels: LabelSet, age: u64) -> Candidate {
        Candidate { name: name.into(), labels, age: Duration::from_secs(age), pending: false }
    }

    #[test]
    fn stale_pending_identities_go_even_with_used_labels() {
        let web = set(&[("k8s:app", "web")]);
        let used: HashSet<LabelSet> = [web.clone()].into_iter().collect();
        let fresh = Candidate { pending: true, ..cand("500", web.clone(), 10) };
        let stale = Candidate { pending: true, ..cand("501", web, 61) };
        let mut c = Collector::default();
        assert_eq!(c.judge(&[fresh, stale], &used, Duration::from_secs(900), Instant::now()), vec!["501".to_string()]);
    }

    #[test]
    fn unused_identity_goes_only_after_the_grace_period() {
        let grace = Duration::from_secs(10);
        let web = set(&[("k8s:app", "web")]);
        let db = set(&[("k8s:app", "db")]);
        let ids = [cand("300", web.clone(), 100), cand("301", db, 100)];
        let used: HashSet<LabelSet> = [web].into_iter().collect();
        let mut c = Collector::default();
        let t0 = Instant::now();
        assert!(c.judge(&ids, &used, grace, t0).is_empty(), "first sight starts the clock");
        assert!(c.judge(&ids, &used, grace, t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(c.judge(&ids, &used, grace, t0 + Duration::from_secs(10)), vec!["301".to_string()]);
    }

    #[test]
    fn reuse_resets_the_clock_and_young_identities_wait() {
        let grace = Duration::from_secs(10);
        let web = set(&[("k8s:app", "web")]);
        let mut c = Collector::default();
        let t0 = Instant::now();
        let ids = [cand("300", web.clone(), 100)];
        c.judge(&ids, &HashSet::new(), grace, t0);
        let used: HashSet<LabelSet> = [web.clone()].into_iter().collect();
        c.judge(&ids, &used, grace, t0 + Duration::from_secs(8));
        assert!(c.judge(&ids, &HashSet::new(), grace, t0 + Duration::from_secs(12)).is_empty());
        let young = [cand("400", web, 3)];
        let mut c = Collector::default();
        c.judge(&young, &HashSet::new(), grace, t0);
        assert!(c.judge(&young, &HashSet::new(), grace, t0 + Duration::from_secs(11)).is_empty());
    }
}
