//! The `crd` allocation backend: one `AxonIdentity` object per identity,
//! named by the id in decimal.
//!
//! Creating the object claims the id: the apiserver refuses a second object
//! of the same name. Kubernetes cannot make a *label set* unique across
//! objects, so that is done with a small protocol whose every decisive step
//! is a resourceVersion-checked write of one object:
//!
//! 1. List (a quorum read) the objects with this label set (selected by the
//!    `axon.io/identity-labels` digest label, then compared exactly). A
//!    `confirmed` one is the identity: done.
//! 2. Create one at the lowest free id, annotated `pending` (a name clash
//!    means the id was taken: pick the next).
//! 3. List again. A confirmed rival wins: delete ours, use it. Pending rivals
//!    with a *higher* id are deleted with a resourceVersion precondition;
//!    ones with a lower id are waited for (they are about to confirm), and
//!    deleted the same way if they stay pending for [`STALE_PENDING`] (their
//!    agent died).
//! 4. With no rival left, confirm ours: a replace carrying the
//!    resourceVersion we created it with. If a rival deleted it first, the
//!    replace fails and we start over.
//!
//! Why two agents can never both confirm an object for one label set: each
//! creates before it lists, so of two agents at least one lists after the
//! other's create and sees the rival object. That agent either sees it
//! confirmed (and defers), or deletes it, or waits for it; a delete and the
//! owner's confirm both carry the same resourceVersion precondition, so
//! exactly one of them succeeds — if the confirm wins, the delete fails, the
//! agent lists again and defers to the now-confirmed rival. Lists without a
//! resourceVersion are served from etcd with a quorum read, so no step acts
//! on a stale view.

use super::labels::LabelSet;
use super::{AllocError, IdRange};
use axon_crds::keys::{IDENTITY_LABELS_DIGEST, IDENTITY_OWNER, IDENTITY_STATE};
use axon_crds::{AxonIdentity, AxonIdentitySpec};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tracing::{debug, info};

const PENDING: &str = "pending";
const CONFIRMED: &str = "confirmed";
/// How long a lower-id pending rival may stay pending before it counts as abandoned.
pub const STALE_PENDING: Duration = Duration::from_secs(5);
const MAX_ROUNDS: usize = 32;
const POLL: Duration = Duration::from_millis(100);

pub struct CrdAllocator {
    api: Api<AxonIdentity>,
    node: String,
    range: IdRange,
}

fn kube_err(what: &str, e: kube::Error) -> AllocError {
    AllocError::Unavailable(format!("AxonIdentity {what}: {e}"))
}

fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

fn id_of(obj: &AxonIdentity) -> Option<u32> {
    obj.metadata.name.as_deref().and_then(|n| n.parse().ok())
}

fn is_confirmed(obj: &AxonIdentity) -> bool {
    obj.metadata.deletion_timestamp.is_none()
        && obj.metadata.annotations.as_ref().and_then(|a| a.get(IDENTITY_STATE)).is_none_or(|s| s == CONFIRMED)
}

fn labels_of(obj: &AxonIdentity) -> LabelSet {
    LabelSet(obj.spec.security_labels.clone())
}

impl CrdAllocator {
    pub fn new(client: kube::Client, node: String, range: IdRange) -> Self {
        Self { api: Api::all(client), node, range }
    }

    /// The objects carrying exactly `labels`, by id.
    async fn candidates(&self, labels: &LabelSet) -> Result<BTreeMap<u32, AxonIdentity>, AllocError> {
        let lp = ListParams::default().labels(&format!("{IDENTITY_LABELS_DIGEST}={}", labels.digest()));
        let list = self.api.list(&lp).await.map_err(|e| kube_err("list", e))?;
        Ok(list.items.into_iter().filter(|o| labels_of(o) == *labels).filter_map(|o| Some((id_of(&o)?, o))).collect())
    }

    pub async fn lookup(&self, labels: &LabelSet) -> Result<Option<u32>, AllocError> {
        Ok(self.candidates(labels).await?.into_iter().find(|(_, o)| is_confirmed(o)).map(|(id, _)| id))
    }

    pub async fn allocate(&self, labels: &LabelSet) -> Result<u32, AllocError> {
        for round in 0..MAX_ROUNDS {
            if let Some(id) = self.lookup(labels).await? {
                return Ok(id);
            }
            let Some((id, rv)) = self.create_pending(labels).await? else { continue };
            match self.settle(labels, id, rv).await? {
                Some(winner) => return Ok(winner),
                None => {
                    debug!(id, round, "our pending identity lost; starting over");
                    // Break the symmetry of two agents deleting each other's objects.
                    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 200)).await;
                }
            }
        }
        Err(AllocError::Unavailable(format!(
            "allocation for {} did not settle in {MAX_ROUNDS} rounds",
            labels.canonical()
        )))
    }

    /// Creates a pending object at the lowest free id: (id, resourceVersion),
    /// or None when the id was taken meanwhile.
    async fn create_pending(&self, labels: &LabelSet) -> Result<Option<(u32, String)>, AllocError> {
        let used: BTreeSet<u32> = self
            .api
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| kube_err("list", e))?
            .items
            .iter()
            .filter_map(|m| m.metadata.name.as_deref().and_then(|n| n.parse().ok()))
            .collect();
        let id =
            (self.range.min..=self.range.max).find(|i| !used.contains(i)).ok_or(AllocError::Exhausted(self.range))?;
        let obj = AxonIdentity {
            metadata: ObjectMeta {
                name: Some(id.to_string()),
                labels: Some([(IDENTITY_LABELS_DIGEST.to_string(), labels.digest())].into()),
                annotations: Some(
                    [
                        (IDENTITY_STATE.to_string(), PENDING.to_string()),
                        (IDENTITY_OWNER.to_string(), self.node.clone()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: AxonIdentitySpec { security_labels: labels.0.clone() },
        };
        match self.api.create(&PostParams::default(), &obj).await {
            Ok(created) => Ok(created.metadata.resource_version.map(|rv| (id, rv))),
            Err(e) if status_code(&e) == Some(409) => Ok(None),
            Err(e) => Err(kube_err("create", e)),
        }
    }

    /// Steps 3 and 4 for our pending object `own`: the winning id, or None
    /// when ours was deleted by a rival.
    async fn settle(&self, labels: &LabelSet, own: u32, own_rv: String) -> Result<Option<u32>, AllocError> {
        let mut waiting: HashMap<u32, (String, Instant)> = HashMap::new();
        let started = Instant::now();
        loop {
            let candidates = self.candidates(labels).await?;
            if !candidates.contains_key(&own) {
                return Ok(None);
            }
            if let Some((&winner, _)) = candidates.iter().find(|(id, o)| **id != own && is_confirmed(o)) {
                self.delete_checked(own, &own_rv).await?;
                return Ok(Some(winner));
            }
            let mut blocked = false;
            for (&id, obj) in candidates.iter().filter(|(id, _)| **id != own) {
                let rv = obj.metadata.resource_version.clone().unwrap_or_default();
                let abandoned = match waiting.get(&id) {
                    Some((seen_rv, since)) if *seen_rv == rv => since.elapsed() >= STALE_PENDING,
                    _ => {
                        waiting.insert(id, (rv.clone(), Instant::now()));
                        false
                    }
                };
                if id > own || abandoned {
                    // A failed precondition means it changed (confirmed or gone): the next list tells.
                    self.delete_checked(id, &rv).await?;
                } else {
                    blocked = true;
                }
            }
            if blocked || candidates.len() > 1 {
                if started.elapsed() > STALE_PENDING * 4 {
                    return Err(AllocError::Unavailable(format!(
                        "allocation for {} waited too long for rival identities",
                        labels.canonical()
                    )));
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            return match self.confirm(own, &own_rv).await? {
                true => {
                    info!(id = own, labels = %labels.canonical(), "identity allocated (AxonIdentity)");
                    Ok(Some(own))
                }
                false => Ok(None),
            };
        }
    }

    /// Deletes object `id` if it still has resourceVersion `rv`.
    async fn delete_checked(&self, id: u32, rv: &str) -> Result<(), AllocError> {
        let dp = DeleteParams {
            preconditions: Some(Preconditions { resource_version: Some(rv.to_string()), uid: None }),
            ..DeleteParams::default()
        };
        match self.api.delete(&id.to_string(), &dp).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => Ok(()),
            Err(e) => Err(kube_err("delete", e)),
        }
    }

    /// Marks our object confirmed if nobody touched it since we created it.
    async fn confirm(&self, id: u32, rv: &str) -> Result<bool, AllocError> {
        let Some(mut obj) = self.api.get_opt(&id.to_string()).await.map_err(|e| kube_err("get", e))? else {
            return Ok(false);
        };
        if obj.metadata.resource_version.as_deref() != Some(rv) {
            return Ok(false);
        }
        obj.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(IDENTITY_STATE.into(), CONFIRMED.into());
        match self.api.replace(&id.to_string(), &PostParams::default(), &obj).await {
            Ok(_) => Ok(true),
            Err(e) if matches!(status_code(&e), Some(404) | Some(409)) => Ok(false),
            Err(e) => Err(kube_err("replace", e)),
        }
    }

    pub async fn list(&self) -> Result<Vec<(u32, LabelSet)>, AllocError> {
        let list = self.api.list(&ListParams::default()).await.map_err(|e| kube_err("list", e))?;
        let mut out: Vec<(u32, LabelSet)> =
            list.items.iter().filter(|o| is_confirmed(o)).filter_map(|o| Some((id_of(o)?, labels_of(o)))).collect();
        out.sort();
        Ok(out)
    }

    pub async fn get(&self, id: u32) -> Result<Option<LabelSet>, AllocError> {
        let obj = self.api.get_opt(&id.to_string()).await.map_err(|e| kube_err("get", e))?;
        Ok(obj.filter(is_confirmed).map(|o| labels_of(&o)))
    }
}
