//! What `GET /v1/status` reports: where the agent keeps things, what it loaded
//! and attached, how full each map is, and what the kernel can do.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Status {
    pub version: String,
    pub uptime_seconds: u64,
    pub bpffs_root: String,
    pub cgroup_root: String,
    pub api_socket: String,
    pub state_dir: String,
    /// Where services come from ("embedded store" in standalone mode).
    pub source: String,
    pub services: usize,
    pub backends: usize,
    pub programs: Vec<ProgramStatus>,
    pub maps: Vec<MapStatus>,
    pub kernel: KernelStatus,
    /// Datapath counters summed over CPUs (`sock_xlate_fwd`, ...).
    pub counters: BTreeMap<String, u64>,
    /// Node devices serving north-south traffic (empty: socket-LB only).
    #[serde(default)]
    pub devices: Vec<DeviceStatus>,
    /// Addresses NodePort services answer on, with their device.
    #[serde(default)]
    pub node_addresses: Vec<NodeAddressStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DeviceStatus {
    pub name: String,
    pub ifindex: u32,
    pub mac: String,
    #[serde(default)]
    pub ipv4: Option<String>,
    #[serde(default)]
    pub ipv6: Option<String>,
    /// How the tc programs are attached (`tcx`).
    pub tc: String,
    /// XDP mode in use (`native`, `generic`); absent without XDP.
    #[serde(default)]
    pub xdp: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct NodeAddressStatus {
    pub address: String,
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ProgramStatus {
    /// Function name in the object (`sock4_connect`).
    pub name: String,
    /// Attach point (`cgroup/connect4`).
    pub attach_type: String,
    /// The cgroup it is attached to.
    pub attached_to: String,
    /// Pinned link path (survives the agent).
    pub link_pin: String,
    /// Kernel program id, when known.
    #[serde(default)]
    pub program_id: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct MapStatus {
    pub name: String,
    pub pin: String,
    pub entries: u64,
    pub max_entries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct KernelStatus {
    pub release: String,
    /// Feature name → supported (`cgroup_sock_addr`, `bpf_link`, `tcx`, ...).
    pub features: BTreeMap<String, bool>,
}
