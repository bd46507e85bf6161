//! Conntrack garbage collection: the BPF side treats an expired entry as
//! absent but only LRU pressure would ever remove it; [`ct_gc`] deletes
//! entries whose `expires` (CLOCK_MONOTONIC seconds, the clock of
//! `bpf_ktime_get_ns`) has passed, and [`run_ct_gc`] does so periodically.
//! [`ct_flush`] empties both conntrack maps.

use super::sys;
use super::DatapathError;
use axon_bpf::maps::{names, Ct4Entry, Ct4Key, Ct6Entry, Ct6Key};
use axon_bpf::pinned::{delete_where, flush_ct, maps_dir, PinnedError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What one GC pass found and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtGcStats {
    /// Entries looked at, both families.
    pub scanned: u64,
    /// Expired entries deleted.
    pub deleted: u64,
    pub deleted_v4: u64,
    pub deleted_v6: u64,
}

impl CtGcStats {
    /// Entries left alive after the pass.
    pub fn alive(&self) -> u64 {
        self.scanned - self.deleted
    }
}

/// Seconds of CLOCK_MONOTONIC now: what `expires` is compared with.
pub fn monotonic_secs() -> u64 {
    sys::monotonic_secs()
}

fn ct_err(e: PinnedError) -> DatapathError {
    DatapathError::Load { context: "conntrack".into(), message: e.to_string() }
}

/// Deletes every conntrack entry of both families that expired before
/// `now_secs` (CLOCK_MONOTONIC seconds; pass [`monotonic_secs()`]). An
/// entry refreshed by the datapath while the pass runs is kept.
pub fn ct_gc(bpffs_root: &Path, now_secs: u64) -> Result<CtGcStats, DatapathError> {
    let dir = maps_dir(bpffs_root);
    let (scanned4, deleted_v4) =
        delete_where::<Ct4Key, Ct4Entry>(&dir.join(names::CT4_GLOBAL), |_, e| u64::from(e.expires) < now_secs)
            .map_err(ct_err)?;
    let (scanned6, deleted_v6) =
        delete_where::<Ct6Key, Ct6Entry>(&dir.join(names::CT6_GLOBAL), |_, e| u64::from(e.expires) < now_secs)
            .map_err(ct_err)?;
    Ok(CtGcStats { scanned: scanned4 + scanned6, deleted: deleted_v4 + deleted_v6, deleted_v4, deleted_v6 })
}

/// Deletes every conntrack entry; returns how many.
pub fn ct_flush(bpffs_root: &Path) -> Result<u64, DatapathError> {
    let deleted = flush_ct(bpffs_root).map_err(ct_err)?;
    tracing::info!(deleted, "conntrack flushed");
    Ok(deleted)
}

/// Runs [`ct_gc`] every `every`, forever, on the blocking pool (a pass over
/// full maps takes a syscall per entry). Spawn it: `tokio::spawn(run_ct_gc(root, every))`.
/// Failures are logged and retried at the next tick.
pub async fn run_ct_gc(bpffs_root: PathBuf, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let root = bpffs_root.clone();
        match tokio::task::spawn_blocking(move || ct_gc(&root, monotonic_secs())).await {
            Ok(Ok(stats)) if stats.deleted > 0 => {
                tracing::info!(deleted = stats.deleted, alive = stats.alive(), "conntrack GC")
            }
            Ok(Ok(stats)) => tracing::debug!(alive = stats.alive(), "conntrack GC: nothing expired"),
            Ok(Err(e)) => tracing::warn!(error = %e, "conntrack GC failed"),
            Err(e) => tracing::warn!(error = %e, "conntrack GC task failed"),
        }
    }
}
