//! `#[repr(C)]` mirrors of every key and value in `bpf/lib/maps.h`.
//!
//! Field for field the same as the C structs (the layout test reads the
//! object's BTF and compares sizes and offsets). Multi-byte fields the C side
//! declares `__be16`/`__be32` hold network byte order here too; the
//! constructors take host values and do the swap, so callers never do.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Mesh acceleration (`bpf/lib/mesh_maps.h`).
pub mod mesh;

/// The ipcache: IP → security identity (`axon_ipcache`).
pub mod ipcache;

/// Names of the pinned maps, as `bpftool map show` lists them.
pub mod names {
    pub const LB4_SERVICES: &str = "axon_lb4_services";
    pub const LB6_SERVICES: &str = "axon_lb6_services";
    pub const LB4_BACKENDS: &str = "axon_lb4_backends";
    pub const LB6_BACKENDS: &str = "axon_lb6_backends";
    pub const LB4_REVERSE_NAT: &str = "axon_lb4_reverse_nat";
    pub const LB6_REVERSE_NAT: &str = "axon_lb6_reverse_nat";
    pub const LB4_REVERSE_SK: &str = "axon_lb4_reverse_sk";
    pub const LB6_REVERSE_SK: &str = "axon_lb6_reverse_sk";
    pub const METRICS: &str = "axon_metrics";
    pub const CT4_GLOBAL: &str = "axon_ct4_global";
    pub const CT6_GLOBAL: &str = "axon_ct6_global";
    pub const LB_MAGLEV: &str = "axon_lb_maglev";
    pub const LB_AFFINITY: &str = "axon_lb_affinity";
    pub const LB4_SOURCE_RANGE: &str = "axon_lb4_source_range";
    pub const LB6_SOURCE_RANGE: &str = "axon_lb6_source_range";
    pub const DEVICES: &str = "axon_devices";
    pub const NODE_ADDRS: &str = "axon_node_addrs";
    pub const CONFIG: &str = "axon_config";
    pub const IPCACHE: &str = "axon_ipcache";

    /// Every map the socket-LB object defines, in a stable order.
    pub const ALL: &[&str] = &[
        LB4_SERVICES,
        LB6_SERVICES,
        LB4_BACKENDS,
        LB6_BACKENDS,
        LB4_REVERSE_NAT,
        LB6_REVERSE_NAT,
        LB4_REVERSE_SK,
        LB6_REVERSE_SK,
        METRICS,
        CT4_GLOBAL,
        CT6_GLOBAL,
        LB_MAGLEV,
        LB_AFFINITY,
        LB4_SOURCE_RANGE,
        LB6_SOURCE_RANGE,
        DEVICES,
        NODE_ADDRS,
        CONFIG,
        IPCACHE,
    ];
}

/// `AXON_SVC_*`: the service type kept in the master slot.
pub mod svc_type {
    pub const CLUSTER_IP: u8 = 1;
    pub const NODE_PORT: u8 = 2;
    pub const EXTERNAL_IPS: u8 = 3;
    pub const LOAD_BALANCER: u8 = 4;
    pub const HOST_PORT: u8 = 5;
}

/// `AXON_BE_*`: backend state.
pub mod backend_state {
    pub const ACTIVE: u8 = 0;
    pub const TERMINATING: u8 = 1;
    /// `AXON_BE_F_LOCAL`: flag bit, the backend runs on this node.
    pub const F_LOCAL: u8 = 1 << 7;
}

/// `AXON_SVC_F_*`: flags of the master slot.
pub mod svc_flags {
    pub const AFFINITY: u8 = 1 << 0;
    pub const TWO_SCOPES: u8 = 1 << 1;
    pub const SRC_RANGES: u8 = 1 << 2;
    pub const DSR: u8 = 1 << 3;
    pub const MAGLEV: u8 = 1 << 4;
    pub const NODEPORT_WILDCARD: u8 = 1 << 5;
}

/// `AXON_SCOPE_*`: which master a lookup uses.
pub mod scope {
    pub const EXTERNAL: u8 = 0;
    pub const INTERNAL: u8 = 1;
}

/// Conntrack constants (`AXON_CT_*`).
pub mod ct {
    pub const DIR_SERVICE: u8 = 0;
    pub const DIR_REPLY: u8 = 1;
    pub const F_SNAT: u8 = 1 << 0;
    pub const F_DSR: u8 = 1 << 1;
    pub const F_LOCAL: u8 = 1 << 2;
    pub const F_DSR_BACKEND: u8 = 1 << 3;
    pub const TCP_NONE: u8 = 0;
    pub const TCP_SYN: u8 = 1;
    pub const TCP_EST: u8 = 2;
    pub const TCP_CLOSING: u8 = 3;
}

/// `AXON_AFFINITY_CLIENT_*`.
pub mod affinity {
    pub const CLIENT_ADDR: u8 = 0;
    pub const CLIENT_NETNS: u8 = 1;
}

/// `AXON_LB_MODE_*`.
pub mod lb_mode {
    pub const SNAT: u8 = 0;
    pub const DSR: u8 = 1;
    pub const HYBRID: u8 = 2;
}

/// `AXON_DEV_F_*`.
pub mod dev_flags {
    pub const XDP: u8 = 1 << 0;
}

/// `enum axon_metric`: indices of the per-CPU counters in `axon_metrics`.
pub mod metric {
    pub const SOCK_XLATE_FWD: u32 = 0;
    pub const SOCK_XLATE_REV: u32 = 1;
    pub const SOCK_NO_BACKEND: u32 = 2;
    pub const SOCK_MISSING_SLOT: u32 = 3;
    pub const NP_FWD: u32 = 4;
    pub const NP_REV: u32 = 5;
    pub const NP_NO_BACKEND: u32 = 6;
    pub const NP_SRC_DENIED: u32 = 7;
    pub const NP_SNAT_FAIL: u32 = 8;
    pub const NP_CT_NEW: u32 = 9;
    pub const NP_FIB_FAIL: u32 = 10;
    pub const XDP_FWD: u32 = 11;
    pub const BIND_DENIED: u32 = 12;
    pub const COUNT: u32 = 13;
    pub const NAMES: &[&str] = &[
        "sock_xlate_fwd",
        "sock_xlate_rev",
        "sock_no_backend",
        "sock_missing_slot",
        "np_fwd",
        "np_rev",
        "np_no_backend",
        "np_src_denied",
        "np_snat_fail",
        "np_ct_new",
        "np_fib_fail",
        "xdp_fwd",
        "bind_denied",
    ];
}

/// Default sizes, the same as the C defaults; the loader overrides them.
pub mod defaults {
    pub const SERVICE_ENTRIES: u32 = 262_144;
    pub const BACKEND_ENTRIES: u32 = 65_536;
    pub const REVNAT_ENTRIES: u32 = 65_536;
    pub const SOCK_REVNAT_ENTRIES: u32 = 262_144;
    pub const CT_ENTRIES: u32 = 262_144;
    pub const MAGLEV_ENTRIES: u32 = 1_048_576;
    pub const AFFINITY_ENTRIES: u32 = 65_536;
    pub const SRC_RANGE_ENTRIES: u32 = 16_384;
    pub const DEVICE_ENTRIES: u32 = 64;
    pub const NODE_ADDR_ENTRIES: u32 = 256;
    pub const IPCACHE_ENTRIES: u32 = 512_000;
}

/// `struct lb4_key`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lb4Key {
    pub address: u32,
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}

/// `struct lb6_key`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lb6Key {
    pub address: [u8; 16],
    pub dport: u16,
    pub backend_slot: u16,
    pub proto: u8,
    pub scope: u8,
    pub pad: [u8; 2],
}

/// `struct lb_service`: the value of both service maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbService {
    pub backend_id: u32,
    pub rev_nat_index: u32,
    pub count: u16,
    pub svc_type: u8,
    pub flags: u8,
}

/// `struct lb4_backend`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4Backend {
    pub address: u32,
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

/// `struct lb6_backend`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb6Backend {
    pub address: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

/// `struct lb4_reverse_nat`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb4ReverseNat {
    pub address: u32,
    pub port: u16,
    pub pad: u16,
}

/// `struct lb6_reverse_nat`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lb6ReverseNat {
    pub address: [u8; 16],
    pub port: u16,
    pub pad: u16,
}

/// `struct ipv4_revnat_tuple`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv4RevnatTuple {
    pub cookie: u64,
    pub address: u32,
    pub port: u16,
    pub pad: u16,
}

/// `struct ipv4_revnat_entry`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4RevnatEntry {
    pub address: u32,
    pub port: u16,
    pub pad: u16,
    pub rev_nat_index: u32,
}

/// `struct ipv6_revnat_tuple`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ipv6RevnatTuple {
    pub cookie: u64,
    pub address: [u8; 16],
    pub port: u16,
    pub pad: u16,
    pub pad2: u32,
}

/// `struct ipv6_revnat_entry`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv6RevnatEntry {
    pub address: [u8; 16],
    pub port: u16,
    pub pad: u16,
    pub rev_nat_index: u32,
}

/// `struct ct4_key`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct4Key {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: [u8; 2],
}

/// `struct ct6_key`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ct6Key {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub pad: [u8; 2],
}

/// `struct ct4_entry`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct4Entry {
    pub packets: u64,
    pub bytes: u64,
    pub expires: u32,
    pub rev_nat_index: u32,
    pub backend_id: u32,
    pub client_addr: u32,
    pub frontend_addr: u32,
    pub backend_addr: u32,
    pub nat_addr: u32,
    pub client_port: u16,
    pub frontend_port: u16,
    pub backend_port: u16,
    pub nat_port: u16,
    pub flags: u8,
    pub tcp_state: u8,
    pub pad: [u8; 10],
}

/// `struct ct6_entry`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ct6Entry {
    pub packets: u64,
    pub bytes: u64,
    pub expires: u32,
    pub rev_nat_index: u32,
    pub backend_id: u32,
    pub pad0: u32,
    pub client_addr: [u8; 16],
    pub frontend_addr: [u8; 16],
    pub backend_addr: [u8; 16],
    pub nat_addr: [u8; 16],
    pub client_port: u16,
    pub frontend_port: u16,
    pub backend_port: u16,
    pub nat_port: u16,
    pub flags: u8,
    pub tcp_state: u8,
    pub pad: [u8; 6],
}

/// `struct lb_maglev_key`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbMaglevKey {
    pub rev_nat_index: u32,
    pub scope: u16,
    pub pad: u16,
    pub index: u32,
}

/// `struct lb_affinity_key`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LbAffinityKey {
    pub client: [u8; 16],
    pub rev_nat_index: u32,
    pub client_kind: u8,
    pub pad: [u8; 3],
}

/// `struct lb_affinity_val`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbAffinityVal {
    pub backend_id: u32,
    pub last_used: u32,
}

/// `struct lb4_src_range_key`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lb4SrcRangeKey {
    pub prefixlen: u32,
    pub rev_nat_index: u32,
    pub address: u32,
}

/// `struct lb6_src_range_key`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Lb6SrcRangeKey {
    pub prefixlen: u32,
    pub rev_nat_index: u32,
    pub address: [u8; 16],
}

/// `struct axon_device`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AxonDevice {
    pub ipv4: u32,
    pub ipv6: [u8; 16],
    pub mac: [u8; 6],
    pub flags: u8,
    pub pad: u8,
}

/// `struct node_addr_key`: IPv4 as `::ffff:a.b.c.d`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NodeAddrKey {
    pub address: [u8; 16],
}

/// `struct axon_config`
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AxonConfig {
    pub ct_timeout_syn: u32,
    pub ct_timeout_tcp: u32,
    pub ct_timeout_close: u32,
    pub ct_timeout_udp: u32,
    pub maglev_table_size: u32,
    pub nodeport_min: u16,
    pub nodeport_max: u16,
    pub snat_port_min: u16,
    pub snat_port_max: u16,
    pub lb_mode: u8,
    pub pad: [u8; 3],
}

// SAFETY: all of the above are repr(C), Copy, made only of integers and byte
// arrays, with every padding byte an explicit field: any bit pattern is valid.
unsafe impl aya::Pod for Lb4Key {}
unsafe impl aya::Pod for Lb6Key {}
unsafe impl aya::Pod for LbService {}
unsafe impl aya::Pod for Lb4Backend {}
unsafe impl aya::Pod for Lb6Backend {}
unsafe impl aya::Pod for Lb4ReverseNat {}
unsafe impl aya::Pod for Lb6ReverseNat {}
unsafe impl aya::Pod for Ipv4RevnatTuple {}
unsafe impl aya::Pod for Ipv4RevnatEntry {}
unsafe impl aya::Pod for Ipv6RevnatTuple {}
unsafe impl aya::Pod for Ipv6RevnatEntry {}
unsafe impl aya::Pod for Ct4Key {}
unsafe impl aya::Pod for Ct6Key {}
unsafe impl aya::Pod for Ct4Entry {}
unsafe impl aya::Pod for Ct6Entry {}
unsafe impl aya::Pod for LbMaglevKey {}
unsafe impl aya::Pod for LbAffinityKey {}
unsafe impl aya::Pod for LbAffinityVal {}
unsafe impl aya::Pod for Lb4SrcRangeKey {}
unsafe impl aya::Pod for Lb6SrcRangeKey {}
unsafe impl aya::Pod for AxonDevice {}
unsafe impl aya::Pod for NodeAddrKey {}
unsafe impl aya::Pod for AxonConfig {}

impl Lb4Key {
    pub fn new(address: Ipv4Addr, port: u16, proto: u8, backend_slot: u16) -> Self {
        Self { address: u32::from(address).to_be(), dport: port.to_be(), backend_slot, proto, ..Self::default() }
    }
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.address))
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

impl Lb6Key {
    pub fn new(address: Ipv6Addr, port: u16, proto: u8, backend_slot: u16) -> Self {
        Self { address: address.octets(), dport: port.to_be(), backend_slot, proto, ..Self::default() }
    }
    pub fn ip(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.address)
    }
    pub fn port(&self) -> u16 {
        u16::from_be(self.dport)
    }
}

impl Lb4Backend {
    pub fn new(address: Ipv4Addr, port: u16, proto: u8, flags: u8) -> Self {
        Self { address: u32::from(address).to_be(), port: port.to_be(), proto, flags }
    }
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.address))
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

impl Lb6Backend {
    pub fn new(address: Ipv6Addr, port: u16, proto: u8, flags: u8) -> Self {
        Self { address: address.octets(), port: port.to_be(), proto, flags }
    }
    pub fn ip(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.address)
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

impl Lb4ReverseNat {
    pub fn new(address: Ipv4Addr, port: u16) -> Self {
        Self { address: u32::from(address).to_be(), port: port.to_be(), pad: 0 }
    }
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from_be(self.address))
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

impl Lb6ReverseNat {
    pub fn new(address: Ipv6Addr, port: u16) -> Self {
        Self { address: address.octets(), port: port.to_be(), pad: 0 }
    }
    pub fn ip(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.address)
    }
    pub fn host_port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_store_network_order_and_read_back_host_order() {
        let key = Lb4Key::new(Ipv4Addr::new(10, 96, 0, 1), 8080, 6, 3);
        assert_eq!(key.address.to_ne_bytes(), [10, 96, 0, 1]);
        assert_eq!(key.dport.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!((key.ip(), key.port(), key.backend_slot), (Ipv4Addr::new(10, 96, 0, 1), 8080, 3));
        let be = Lb6Backend::new("fd00::2".parse().unwrap(), 443, 17, 0);
        assert_eq!((be.ip().to_string(), be.host_port()), ("fd00::2".to_string(), 443));
    }
}
