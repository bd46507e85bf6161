//! The `kvstore` allocation backend: identities in etcd.
//!
//! Keys (all under `axon/identities/`):
//! - `id/<id>` → the canonical label set: owning an id,
//! - `labels/<canonical labels>` → the id: owning a label set,
//! - `refs/<id>/<node>` → the labels, put under the node's lease: which nodes
//!   use the identity. A dead node stops renewing its lease and its
//!   references expire with it; the operator frees identities nobody refers to.
//!
//! Allocation: read `labels/<L>`; if absent, pick the lowest id without an
//! `id/` key and, in one transaction, create `id/<c>` and `labels/<L>` only if
//! both are absent (plus the reference). A lost race shows which key existed:
//! the label set's (use its id) or the id's (try the next one). Two ids can
//! never share a label set, nor two label sets an id, because both keys are
//! created atomically and never overwritten. With etcd down nothing is
//! allocated — the caller keeps the endpoint pending and retries.

use super::labels::LabelSet;
use super::{AllocError, IdRange};
use crate::kvstore::{CreateOutcome, KvStore, NewKey};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tracing::info;

pub const PREFIX: &str = "axon/identities/";
/// Tries before giving up on a round of allocation (each loses a race).
const MAX_ATTEMPTS: usize = 64;

pub fn id_key(id: u32) -> String {
    format!("{PREFIX}id/{id}")
}

pub fn labels_key(labels: &LabelSet) -> String {
    format!("{PREFIX}labels/{}", labels.canonical())
}

pub fn ref_key(id: u32, node: &str) -> String {
    format!("{PREFIX}refs/{id}/{node}")
}

pub struct KvAllocator {
    kv: KvStore,
    node: String,
    range: IdRange,
}

fn parse_id(key: &str, bytes: &[u8]) -> Result<u32, AllocError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AllocError::Corrupt(format!("{key}: not an identity number")))
}

impl KvAllocator {
    pub fn new(kv: KvStore, node: String, range: IdRange) -> Self {
        Self { kv, node, range }
    }

    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    pub async fn allocate(&self, labels: &LabelSet) -> Result<u32, AllocError> {
        let lkey = labels_key(labels);
        let canonical = labels.canonical();
        for _ in 0..MAX_ATTEMPTS {
            if let Some(bytes) = self.kv.get(&lkey).await? {
                let id = parse_id(&lkey, &bytes)?;
                // The reference only counts if the identity still exists when
                // it is written: the garbage collector deletes an identity only
                // while it has no reference, in one transaction too.
                if self.kv.put_leased_if(&ref_key(id, &self.node), canonical.as_bytes(), &lkey, &bytes).await? {
                    return Ok(id);
                }
                continue;
            }
            let candidate = self.lowest_free().await?;
            let keys = [
                NewKey { key: id_key(candidate), value: canonical.clone().into_bytes(), leased: false },
                NewKey { key: lkey.clone(), value: candidate.to_string().into_bytes(), leased: false },
            ];
            let reference =
                NewKey { key: ref_key(candidate, &self.node), value: canonical.clone().into_bytes(), leased: true };
            match self.kv.create_all(&keys, &[reference]).await? {
                CreateOutcome::Created => return Ok(candidate),
                // Either someone allocated this label set meanwhile (the next
                // round reads its id) or took the id (the next round skips it).
                CreateOutcome::Exists(_) => continue,
            }
        }
        Err(AllocError::Unavailable(format!("{MAX_ATTEMPTS} allocation attempts for {canonical} lost their races")))
    }

    async fn lowest_free(&self) -> Result<u32, AllocError> {
        let prefix = format!("{PREFIX}id/");
        let used: BTreeSet<u32> = self
            .kv
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(&prefix).and_then(|id| id.parse().ok()))
            .collect();
        (self.range.min..=self.range.max).find(|id| !used.contains(id)).ok_or(AllocError::Exhausted(self.range))
    }

    pub async fn lookup(&self, labels: &LabelSet) -> Result<Option<u32>, AllocError> {
        let lkey = labels_key(labels);
        self.kv.get(&lkey).await?.map(|b| parse_id(&lkey, &b)).transpose()
    }

    pub async fn release(&self, id: u32) -> Result<(), AllocError> {
        Ok(self.kv.delete(&ref_key(id, &self.node)).await?)
    }

    pub async fn list(&self) -> Result<Vec<(u32, LabelSet)>, AllocError> {
        let prefix = format!("{PREFIX}id/");
        let mut out = Vec::new();
        for (key, value) in self.kv.list(&prefix).await? {
            let Some(id) = key.strip_prefix(&prefix).and_then(|id| id.parse().ok()) else { continue };
            let labels = std::str::from_utf8(&value)
                .ok()
                .and_then(LabelSet::parse_canonical)
                .ok_or_else(|| AllocError::Corrupt(format!("{key}: not a label set")))?;
            out.push((id, labels));
        }
        out.sort();
        Ok(out)
    }

    pub async fn get(&self, id: u32) -> Result<Option<LabelSet>, AllocError> {
        let key = id_key(id);
        match self.kv.get(&key).await? {
            None => Ok(None),
            Some(value) => std::str::from_utf8(&value)
                .ok()
                .and_then(LabelSet::parse_canonical)
                .map(Some)
                .ok_or_else(|| AllocError::Corrupt(format!("{key}: not a label set"))),
        }
    }

    /// How long an identity must stay unreferenced before it is deleted:
    /// four lease TTLs (a minute by default), at least ten seconds.
    pub fn gc_grace(&self) -> Duration {
        (self.kv.lease_ttl() * 4).max(Duration::from_secs(10))
    }

    /// One garbage-collection pass: identities without any reference for
    /// [`KvAllocator::gc_grace`] (seen on successive passes) are deleted — in a
    /// transaction that only succeeds while `refs/<id>/` is still empty. Any
    /// agent may run it; concurrent passes are harmless. Returns the ids freed.
    pub async fn collect(&self, unreferenced: &mut BTreeMap<u32, Instant>) -> Result<Vec<u32>, AllocError> {
        let grace = self.gc_grace();
        let refs_prefix = format!("{PREFIX}refs/");
        let referenced: BTreeSet<u32> = self
            .kv
            .list(&refs_prefix)
            .await?
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(&refs_prefix)?.split('/').next()?.parse().ok())
            .collect();
        let all = self.list().await?;
        let now = Instant::now();
        unreferenced.retain(|id, _| all.iter().any(|(i, _)| i == id) && !referenced.contains(id));
        let mut freed = Vec::new();
        for (id, labels) in all {
            if referenced.contains(&id) {
                continue;
            }
            let since = *unreferenced.entry(id).or_insert(now);
            if now.duration_since(since) < grace {
                continue;
            }
            let keys = [id_key(id), labels_key(&labels)];
            if self.kv.delete_if_none(&keys, &format!("{PREFIX}refs/{id}/")).await? {
                info!(id, labels = %labels.canonical(), "unused identity deleted from the kvstore");
                freed.push(id);
            }
            unreferenced.remove(&id);
        }
        Ok(freed)
    }

    /// Puts this node's references again (after a new lease: the old one's
    /// keys are gone). Returns the identities that no longer exist (collected
    /// while this node was away): their endpoints must allocate again.
    pub async fn refresh(&self, held: &[(u32, LabelSet)]) -> Result<Vec<u32>, AllocError> {
        let mut lost = Vec::new();
        for (id, labels) in held {
            let still = self
                .kv
                .put_leased_if(
                    &ref_key(*id, &self.node),
                    labels.canonical().as_bytes(),
                    &labels_key(labels),
                    id.to_string().as_bytes(),
                )
                .await?;
            if !still {
                lost.push(*id);
            }
        }
        Ok(lost)
    }
}
