//! `#[repr(C)]` mirrors of every key and value in `bpf/lib/maps.h`.
//!
//! Field for field the same as the C structs (the layout test reads the
//! object's BTF and compares sizes and offsets). Multi-byte fields the C side
//! declares `__be16`/`__be32` hold network byte order here too; the
//! constructors take host values and do the swap, so callers never do.

use std::net::{Ipv4Addr, Ipv6Addr};

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
}

/// `enum axon_metric`: indices of the per-CPU counters in `axon_metrics`.
pub mod metric {
    pub const SOCK_XLATE_FWD: u32 = 0;
    pub const SOCK_XLATE_REV: u32 = 1;
    pub const SOCK_NO_BACKEND: u32 = 2;
    pub const SOCK_MISSING_SLOT: u32 = 3;
    pub const COUNT: u32 = 4;
    pub const NAMES: &[&str] = &["sock_xlate_fwd", "sock_xlate_rev", "sock_no_backend", "sock_missing_slot"];
}

/// Default sizes, the same as the C defaults; the loader overrides them.
pub mod defaults {
    pub const SERVICE_ENTRIES: u32 = 262_144;
    pub const BACKEND_ENTRIES: u32 = 65_536;
    pub const REVNAT_ENTRIES: u32 = 65_536;
    pub const SOCK_REVNAT_ENTRIES: u32 = 262_144;
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

impl Lb4Key {
    pub fn new(address: Ipv4Addr, port: u16, proto: u8, backend_slot: u16) -> Self {
        Self {
            address: u32::from(address).to_be(),
            dport: port.to_be(),
            backend_slot,
            proto,
            ..Self::default()
        }
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
        Self {
            address: address.octets(),
            dport: port.to_be(),
            backend_slot,
            proto,
            ..Self::default()
        }
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
