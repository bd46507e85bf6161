//! The identity module's embedded database, `<state-dir>/identity.redb` (a
//! file of its own beside the services store): the endpoints registered
//! through the API (every mode: they and their last identity survive a
//! restart), and, in the `embedded` allocation mode, the identities
//! themselves (id → labels and labels → id, changed in one transaction).

use super::labels::LabelSet;
use super::{AllocError, IdRange};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

const IDS: TableDefinition<u32, &str> = TableDefinition::new("identities");
const BY_LABELS: TableDefinition<&str, u32> = TableDefinition::new("identity_labels");
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");

/// An endpoint as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEndpoint {
    pub namespace: String,
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub labels: BTreeMap<String, String>,
    pub identity: Option<u32>,
}

pub struct IdentityDb {
    db: Database,
    path: PathBuf,
}

impl IdentityDb {
    pub fn open(state_dir: &Path) -> Result<Self, AllocError> {
        let path = state_dir.join("identity.redb");
        let err = |e: &dyn std::fmt::Display| AllocError::Store(format!("{}: {e}", path.display()));
        std::fs::create_dir_all(state_dir).map_err(|e| err(&e))?;
        let db = Database::builder().set_cache_size(1 << 20).create(&path).map_err(|e| err(&e))?;
        let this = Self { db, path };
        // Create the tables so that reads of a fresh file succeed.
        let txn = this.db.begin_write().map_err(|e| this.err(&e))?;
        txn.open_table(IDS).map_err(|e| this.err(&e))?;
        txn.open_table(BY_LABELS).map_err(|e| this.err(&e))?;
        txn.open_table(ENDPOINTS).map_err(|e| this.err(&e))?;
        txn.commit().map_err(|e| this.err(&e))?;
        Ok(this)
    }

    fn err(&self, e: &dyn std::fmt::Display) -> AllocError {
        AllocError::Store(format!("{}: {e}", self.path.display()))
    }

    /// The id of `labels`, allocating the lowest free one in `range` if there
    /// is none; both directions in one durable transaction.
    pub fn allocate(&self, labels: &LabelSet, range: IdRange) -> Result<u32, AllocError> {
        let canonical = labels.canonical();
        let txn = self.db.begin_write().map_err(|e| self.err(&e))?;
        let id = {
            let mut by_labels = txn.open_table(BY_LABELS).map_err(|e| self.err(&e))?;
            if let Some(id) = by_labels.get(canonical.as_str()).map_err(|e| self.err(&e))? {
                return Ok(id.value());
            }
            let mut ids = txn.open_table(IDS).map_err(|e| self.err(&e))?;
            let mut candidate = range.min;
            for entry in ids.range(range.min..=range.max).map_err(|e| self.err(&e))? {
                let (id, _) = entry.map_err(|e| self.err(&e))?;
                if id.value() != candidate {
                    break;
                }
                candidate = candidate.checked_add(1).ok_or(AllocError::Exhausted(range))?;
            }
            if candidate > range.max {
                return Err(AllocError::Exhausted(range));
            }
            ids.insert(candidate, canonical.as_str()).map_err(|e| self.err(&e))?;
            by_labels.insert(canonical.as_str(), candidate).map_err(|e| self.err(&e))?;
            candidate
        };
        txn.commit().map_err(|e| self.err(&e))?;
        Ok(id)
    }

    /// Frees `id` (the embedded mode frees an identity when no endpoint uses it).
    pub fn free(&self, id: u32) -> Result<(), AllocError> {
        let txn = self.db.begin_write().map_err(|e| self.err(&e))?;
        {
            let mut ids = txn.open_table(IDS).map_err(|e| self.err(&e))?;
            let removed = ids.remove(id).map_err(|e| self.err(&e))?.map(|v| v.value().to_string());
            if let Some(canonical) = removed {
                let mut by_labels = txn.open_table(BY_LABELS).map_err(|e| self.err(&e))?;
                by_labels.remove(canonical.as_str()).map_err(|e| self.err(&e))?;
            }
        }
        txn.commit().map_err(|e| self.err(&e))
    }

    pub fn lookup(&self, labels: &LabelSet) -> Result<Option<u32>, AllocError> {
        let txn = self.db.begin_read().map_err(|e| self.err(&e))?;
        let by_labels = txn.open_table(BY_LABELS).map_err(|e| self.err(&e))?;
        Ok(by_labels.get(labels.canonical().as_str()).map_err(|e| self.err(&e))?.map(|v| v.value()))
    }

    pub fn identities(&self) -> Result<Vec<(u32, LabelSet)>, AllocError> {
        let txn = self.db.begin_read().map_err(|e| self.err(&e))?;
        let ids = txn.open_table(IDS).map_err(|e| self.err(&e))?;
        let mut out = Vec::new();
        for entry in ids.iter().map_err(|e| self.err(&e))? {
            let (id, canonical) = entry.map_err(|e| self.err(&e))?;
            let labels = LabelSet::parse_canonical(canonical.value()).ok_or_else(|| {
                AllocError::Corrupt(format!("identity {}: labels {:?}", id.value(), canonical.value()))
            })?;
            out.push((id.value(), labels));
        }
        Ok(out)
    }

    pub fn endpoints(&self) -> Result<Vec<StoredEndpoint>, AllocError> {
        let txn = self.db.begin_read().map_err(|e| self.err(&e))?;
        let table = txn.open_table(ENDPOINTS).map_err(|e| self.err(&e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.err(&e))? {
            let (key, bytes) = entry.map_err(|e| self.err(&e))?;
            let ep = serde_json::from_slice(bytes.value())
                .map_err(|e| AllocError::Corrupt(format!("endpoint {}: {e}", key.value())))?;
            out.push(ep);
        }
        Ok(out)
    }

    pub fn put_endpoint(&self, ep: &StoredEndpoint) -> Result<(), AllocError> {
        let key = format!("{}/{}", ep.namespace, ep.name);
        let bytes = serde_json::to_vec(ep).map_err(|e| self.err(&e))?;
        let txn = self.db.begin_write().map_err(|e| self.err(&e))?;
        txn.open_table(ENDPOINTS)
            .map_err(|e| self.err(&e))?
            .insert(key.as_str(), bytes.as_slice())
            .map_err(|e| self.err(&e))?;
        txn.commit().map_err(|e| self.err(&e))
    }

    pub fn delete_endpoint(&self, namespace: &str, name: &str) -> Result<(), AllocError> {
        let key = format!("{namespace}/{name}");
        let txn = self.db.begin_write().map_err(|e| self.err(&e))?;
        txn.open_table(ENDPOINTS).map_err(|e| self.err(&e))?.remove(key.as_str()).map_err(|e| self.err(&e))?;
        txn.commit().map_err(|e| self.err(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(app: &str) -> LabelSet {
        LabelSet::for_pod("default", &[("app".to_string(), app.to_string())].into(), None)
    }

    #[test]
    fn allocates_lowest_free_once_per_label_set_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("axon-identity-db-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let range = IdRange { min: 256, max: 258 };
        {
            let db = IdentityDb::open(&dir).unwrap();
            assert_eq!(db.allocate(&set("a"), range).unwrap(), 256);
            assert_eq!(db.allocate(&set("b"), range).unwrap(), 257);
            assert_eq!(db.allocate(&set("a"), range).unwrap(), 256);
            db.free(256).unwrap();
            assert_eq!(db.lookup(&set("a")).unwrap(), None);
            assert_eq!(db.allocate(&set("c"), range).unwrap(), 256);
            assert_eq!(db.allocate(&set("d"), range).unwrap(), 258);
            assert!(matches!(db.allocate(&set("e"), range), Err(AllocError::Exhausted(_))));
        }
        let db = IdentityDb::open(&dir).unwrap();
        let ids: Vec<u32> = db.identities().unwrap().into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![256, 257, 258]);
        assert_eq!(db.lookup(&set("b")).unwrap(), Some(257));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
