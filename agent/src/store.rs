//! The embedded, crash-safe state store of the standalone mode: every service
//! declared through the API, in a redb database under `--state-dir`. Each
//! change is one durable transaction, so a `kill -9` at any moment leaves
//! either the old or the new state, never a mix.

use axon_api::Service;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

/// service id → the service as JSON (a stable, inspectable encoding).
const SERVICES: TableDefinition<u32, &[u8]> = TableDefinition::new("services");

/// redb's page cache. The agent reads the store at start and for the rare
/// list/get; writes do not need a warm cache, and every MiB here is resident.
const CACHE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("state store {path}: service {id} is corrupt: {message}")]
    Corrupt { path: PathBuf, id: u32, message: String },
}

pub struct Store {
    db: Database,
    path: PathBuf,
    /// While set, commits skip the fsync; [`Store::end_batch`] makes them all durable at once.
    batching: std::sync::atomic::AtomicBool,
}

impl Store {
    /// Opens (creating if needed) `<state_dir>/services.redb`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let path = state_dir.join("services.redb");
        let err = |e: &dyn std::fmt::Display| StoreError::Db { path: path.clone(), message: e.to_string() };
        std::fs::create_dir_all(state_dir).map_err(|e| err(&e))?;
        let db = Database::builder().set_cache_size(CACHE_BYTES).create(&path).map_err(|e| err(&e))?;
        let store = Self { db, path, batching: Default::default() };
        // Create the table so reads of an empty store succeed.
        store.write(&[], &[])?;
        Ok(store)
    }

    fn err(&self, e: &dyn std::fmt::Display) -> StoreError {
        StoreError::Db { path: self.path.clone(), message: e.to_string() }
    }

    pub fn load_all(&self) -> Result<Vec<Service>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(&e))?;
        let table = txn.open_table(SERVICES).map_err(|e| self.err(&e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.err(&e))? {
            let (id, bytes) = entry.map_err(|e| self.err(&e))?;
            let svc: Service = serde_json::from_slice(bytes.value()).map_err(|e| StoreError::Corrupt {
                path: self.path.clone(),
                id: id.value(),
                message: e.to_string(),
            })?;
            out.push(svc);
        }
        Ok(out)
    }

    /// One service, if stored.
    pub fn get(&self, id: u32) -> Result<Option<Service>, StoreError> {
        Ok(self.get_many(&[id])?.pop().flatten())
    }

    /// Several services in one read transaction, in the order of `ids`.
    pub fn get_many(&self, ids: &[u32]) -> Result<Vec<Option<Service>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.err(&e))?;
        let table = txn.open_table(SERVICES).map_err(|e| self.err(&e))?;
        ids.iter()
            .map(|id| {
                let Some(bytes) = table.get(*id).map_err(|e| self.err(&e))? else { return Ok(None) };
                serde_json::from_slice(bytes.value()).map(Some).map_err(|e| StoreError::Corrupt {
                    path: self.path.clone(),
                    id: *id,
                    message: e.to_string(),
                })
            })
            .collect()
    }

    /// Starts a batch of writes: each stays atomic, but none waits for the disk until
    /// [`Store::end_batch`]. A source that can replay them (a Kubernetes relist) uses this so
    /// ten thousand services cost one fsync, not ten thousand.
    pub fn begin_batch(&self) {
        self.batching.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends a batch: one durable commit persists every write made during it.
    pub fn end_batch(&self) -> Result<(), StoreError> {
        self.batching.store(false, std::sync::atomic::Ordering::Relaxed);
        let txn = self.db.begin_write().map_err(|e| self.err(&e))?;
        txn.commit().map_err(|e| self.err(&e))
    }

    /// Writes `upserts` and removes `deletes` in one transaction, durable unless in a batch.
    pub fn write(&self, upserts: &[&Service], deletes: &[u32]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.err(&e))?;
        if self.batching.load(std::sync::atomic::Ordering::Relaxed) {
            txn.set_durability(redb::Durability::Eventual);
        }
        {
            let mut table = txn.open_table(SERVICES).map_err(|e| self.err(&e))?;
            for svc in upserts {
                let bytes = serde_json::to_vec(svc).map_err(|e| self.err(&e))?;
                table.insert(svc.id, bytes.as_slice()).map_err(|e| self.err(&e))?;
            }
            for id in deletes {
                table.remove(*id).map_err(|e| self.err(&e))?;
            }
        }
        txn.commit().map_err(|e| self.err(&e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::reconciler::tests::svc;

    #[test]
    fn round_trips_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("axon-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let store = Store::open(&dir).unwrap();
            let a = svc(1, "10.96.0.1", 80, &["10.0.0.1:80"]);
            let b = svc(2, "fd00::2", 53, &["[fd00::9]:53"]);
            store.write(&[&a, &b], &[]).unwrap();
            store.write(&[], &[1]).unwrap();
        }
        let store = Store::open(&dir).unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all, vec![svc(2, "fd00::2", 53, &["[fd00::9]:53"])]);
        assert_eq!(store.get(2).unwrap(), Some(all[0].clone()));
        assert_eq!(store.get_many(&[1, 2]).unwrap(), vec![None, Some(all[0].clone())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
