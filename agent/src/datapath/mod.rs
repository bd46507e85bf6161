//! The datapath: loads Axon's BPF objects, pins their maps and links under the
//! agent's bpffs root, attaches the socket-LB programs to the agent's cgroup,
//! and gives the reconcilers typed access to the load-balancing maps.
//!
//! Everything above this module speaks in model types (`L4Addr`, ids); only
//! this module knows the `#[repr(C)]` layouts of `axon_bpf::maps`.

use axon_api::{Cidr, L4Addr};
use std::net::IpAddr;

mod cleanup;
mod config;
mod ct;
mod devices;
mod loader;
mod maps;
mod node;
mod status;
mod sys;

pub use cleanup::{cleanup, CleanupReport};
pub use config::{cgroup2_mount, DatapathConfig, DEFAULT_BPFFS_ROOT};
pub use config::{
    CtTimeouts, Devices, InvalidConfig, PortRange, XdpMode, DEFAULT_NODEPORT_RANGE, DEFAULT_SNAT_PORT_RANGE,
};
pub use ct::{ct_flush, ct_gc, monotonic_secs, run_ct_gc, CtGcStats};
pub use devices::{detect_devices, NodeDevice};
pub(crate) use loader::error_chain;
pub use loader::{AttachTarget, DeviceAttachment, XdpAttach};
pub use loader::{AttachedProgram, Datapath, LinkAction};
pub use maps::AyaLbMaps;
pub use node::{node_addr_key, reserve_ports};
pub use status::{kernel_release, probe_features, DatapathStatus};
pub use status::{DeviceStatus, NodeAddressStatus};

/// Address family of a map pair (`axon_lb4_*` / `axon_lb6_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Value of a service-map slot (`struct lb_service`), in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotValue {
    /// Slot > 0: the backend this slot selects. Master slot: 0.
    pub backend_id: u32,
    /// The service id; key of the reverse-NAT map.
    pub rev_nat_index: u32,
    /// Master slot: number of backend slots.
    pub count: u16,
    /// `AXON_SVC_*`.
    pub svc_type: u8,
    pub flags: u8,
}

/// Value of a backend-map entry (`struct lb{4,6}_backend`), in host order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendValue {
    pub addr: L4Addr,
    /// `AXON_BE_*`.
    pub state: u8,
}

/// A service-map key in model terms: frontend, scope (`AXON_SCOPE_*`), slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub frontend: L4Addr,
    pub scope: u8,
    pub slot: u16,
}

/// A Maglev table entry: (service, scope, index) → backend id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevEntry {
    pub rev_nat_index: u32,
    pub scope: u8,
    pub index: u32,
    pub backend_id: u32,
}

/// Everything the LB maps hold, read back (agent start: recover ids, find orphans).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbSnapshot {
    /// Every service-map entry, both families.
    pub slots: Vec<(SlotKey, SlotValue)>,
    /// Every Maglev table entry.
    pub maglev: Vec<MaglevEntry>,
    /// (rev-NAT index, range) of both source-range maps.
    pub source_ranges: Vec<(u32, Cidr)>,
    /// (backend id, backend) of both backend maps.
    pub backends: Vec<(u32, BackendValue)>,
    /// (rev-NAT index, address, port) of both reverse-NAT maps.
    pub rev_nat: Vec<(u32, IpAddr, u16)>,
}

/// max_entries of the LB maps (same for both families).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbCapacity {
    pub service_entries: u32,
    pub backend_entries: u32,
    pub rev_nat_entries: u32,
    pub maglev_entries: u32,
    pub source_range_entries: u32,
}

/// Why a datapath operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The map has no room: the caller's change must be refused, not dropped.
    #[error("BPF map {map} is full ({max_entries} entries)")]
    MapFull { map: &'static str, max_entries: u32 },
    #[error("BPF map {map}: {op} failed: {source}")]
    Map { map: &'static str, op: &'static str, source: std::io::Error },
    #[error("{context}: {message}")]
    Load { context: String, message: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Writes and reads of the load-balancing maps. Deletes of absent entries
/// succeed (reconciling is idempotent). The real implementation is backed by
/// the pinned maps; the reconciler's unit tests use an in-memory one.
pub trait LbMaps: Send {
    fn put_backend(&mut self, id: u32, backend: &BackendValue) -> Result<(), DatapathError>;
    fn delete_backend(&mut self, id: u32, family: Family) -> Result<(), DatapathError>;
    fn put_slot(&mut self, key: &SlotKey, value: &SlotValue) -> Result<(), DatapathError>;
    fn delete_slot(&mut self, key: &SlotKey) -> Result<(), DatapathError>;
    fn put_rev_nat(&mut self, id: u32, frontend: &L4Addr) -> Result<(), DatapathError>;
    fn delete_rev_nat(&mut self, id: u32, family: Family) -> Result<(), DatapathError>;
    fn put_maglev(&mut self, entry: &MaglevEntry) -> Result<(), DatapathError>;
    fn delete_maglev(&mut self, rev_nat_index: u32, scope: u8, index: u32) -> Result<(), DatapathError>;
    fn put_source_range(&mut self, rev_nat_index: u32, range: &Cidr) -> Result<(), DatapathError>;
    fn delete_source_range(&mut self, rev_nat_index: u32, range: &Cidr) -> Result<(), DatapathError>;
    fn snapshot(&self) -> Result<LbSnapshot, DatapathError>;
    fn capacity(&self) -> LbCapacity;
}
