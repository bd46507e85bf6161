//! `#[repr(C)]` mirrors of the mesh-acceleration maps in `bpf/lib/mesh_maps.h`
//! (`bpf/mesh.c`). Addresses are 16 bytes, IPv4 v4-mapped; ports host order
//! unless the C side says `__be16`.

use std::net::{IpAddr, Ipv6Addr};

/// Names of the pinned mesh maps.
pub mod names {
    pub const PODS: &str = "axon_mesh_pods";
    pub const POD_IPS: &str = "axon_mesh_pod_ips";
    pub const EXCL_CIDRS: &str = "axon_mesh_excl_cidrs";
    pub const ORIG: &str = "axon_mesh_orig";
    pub const PAIRS: &str = "axon_mesh_pairs";
    /// Sockets whose writes the sk_msg program redirects (it is attached here).
    pub const SOCKHASH: &str = "axon_mesh_sockhash";
    /// Every socket of the shortcut: where redirected messages go.
    pub const TARGETS: &str = "axon_mesh_targets";
    pub const METRICS: &str = "axon_mesh_metrics";
    pub const FLOWS: &str = "axon_mesh_flows";
    pub const DST_PROFILES: &str = "axon_mesh_dst_profiles";
    pub const LISTENERS: &str = "axon_mesh_listeners";

    /// Every map the mesh object defines.
    pub const ALL: &[&str] =
        &[PODS, POD_IPS, EXCL_CIDRS, ORIG, PAIRS, SOCKHASH, TARGETS, METRICS, FLOWS, DST_PROFILES, LISTENERS];
}

/// `AXON_MESH_MODE_*`.
pub mod mode {
    pub const ISTIO: u8 = 1;
    pub const LINKERD: u8 = 2;
}

/// `AXON_MESH_POD_*` (`MeshPod::flags`).
pub mod pod_flags {
    /// The pod's local socket pairs go into the sockhash.
    pub const BYPASS: u8 = 0x01;
}

/// `AXON_MESH_ORIG_*` (`MeshOrig::flags`).
pub mod orig_flags {
    pub const OUTBOUND: u8 = 0x01;
    pub const INBOUND: u8 = 0x02;
    pub const LOCAL: u8 = 0x04;
    pub const BYPASS: u8 = 0x08;
    pub const PROXY: u8 = 0x10;
}

/// `AXON_MESH_M_*`: indices of `axon_mesh_metrics`.
pub mod metric {
    pub const OUTBOUND: u32 = 0;
    pub const INBOUND: u32 = 1;
    pub const EXCLUDED: u32 = 2;
    pub const ORIG_DST: u32 = 3;
    pub const SOCK_ADDED: u32 = 4;
    pub const SOCK_FAILED: u32 = 5;
    pub const REDIRECTED: u32 = 6;
    pub const PASSED: u32 = 7;
    pub const BYTES_REDIRECTED: u32 = 8;
    pub const STREAMS_TO_STACK: u32 = 9;
    pub const SENDERS: u32 = 10;
    pub const APP_PLAIN: u32 = 11;
    pub const NO_LISTENER: u32 = 12;
    pub const APP_SENDING: u32 = 13;
    /// Entries of the array.
    pub const MAX: u32 = 16;
}

/// `AXON_MESH_MAX_PORTS`: length of each port list of [`MeshPod`].
pub const MAX_PORTS: usize = 16;

/// `struct mesh_pod`: value of `axon_mesh_pods` (key: the pod's cgroup id).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshPod {
    pub proxy_uid: u32,
    pub outbound_port: u16,
    pub inbound_port: u16,
    /// Host order; 0 ends the list.
    pub exclude_out: [u16; MAX_PORTS],
    pub exclude_in: [u16; MAX_PORTS],
    pub mode: u8,
    pub flags: u8,
    pub pad: [u8; 6],
}

/// `struct mesh_ip`: key of `axon_mesh_pod_ips`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MeshIp {
    pub addr: [u8; 16],
}

impl MeshIp {
    pub fn new(ip: IpAddr) -> Self {
        MeshIp { addr: mapped(ip) }
    }
}

/// `struct mesh_pod_ref`: value of `axon_mesh_pod_ips`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshPodRef {
    pub cgroup_id: u64,
}

/// `struct mesh_cidr_key`: key of the `axon_mesh_excl_cidrs` LPM trie.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshCidrKey {
    pub prefixlen: u32,
    pub pad: u32,
    pub cgroup_id: u64,
    pub addr: [u8; 16],
}

impl MeshCidrKey {
    /// `addr/prefix` of the pod `cgroup_id`; an IPv4 prefix counts in the
    /// v4-mapped space (+96).
    pub fn new(cgroup_id: u64, addr: IpAddr, prefix: u8) -> Self {
        let bits = match addr {
            IpAddr::V4(_) => 96 + u32::from(prefix.min(32)),
            IpAddr::V6(_) => u32::from(prefix.min(128)),
        };
        MeshCidrKey { prefixlen: 32 + 64 + bits, pad: 0, cgroup_id, addr: mapped(addr) }
    }
}

/// `struct mesh_orig`: a captured connection's original destination.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshOrig {
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    pub family: u8,
    pub flags: u8,
    pub pad: u32,
}

impl MeshOrig {
    pub fn ip(&self) -> IpAddr {
        unmapped(self.addr)
    }

    pub fn port(&self) -> u16 {
        u16::from_be(self.port)
    }
}

/// `struct mesh_sock_key`: key of `axon_mesh_sockhash`, `axon_mesh_targets` and `axon_mesh_pairs`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MeshSockKey {
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u32,
    pub remote_port: u32,
    pub netns: u64,
}

/// `struct mesh_flow`: value of `axon_mesh_flows` (key: the sending socket's own [`MeshSockKey`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshFlow {
    pub streak: u32,
    pub pass: u32,
    pub last_send_ns: u64,
    pub app: MeshDst,
    pub redirected: u32,
}

/// `struct mesh_dst_profile`: value of `axon_mesh_dst_profiles` (key: [`MeshDst`]).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshDstProfile {
    pub rpc_ns: u64,
    pub stream_ns: u64,
}

/// `struct mesh_dst`: key of `axon_mesh_dst_profiles`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshDst {
    pub addr: [u8; 16],
    /// Network order.
    pub port: u16,
    /// [`role`]`::*`, 0: not an app socket.
    pub role: u8,
    pub pad: u8,
}

/// `struct mesh_listeners`: value of `axon_mesh_listeners` (key: a pod's cgroup id).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshListeners {
    /// [`listen`]`::*` bits.
    pub flags: u32,
}

/// `AXON_MESH_LISTEN_*` (`MeshListeners::flags`).
pub mod listen {
    pub const OUT_V4: u32 = 0x01;
    pub const OUT_V6: u32 = 0x02;
    pub const IN_V4: u32 = 0x04;
    pub const IN_V6: u32 = 0x08;
}

/// `AXON_MESH_ROLE_*` (`MeshDst::role`).
pub mod role {
    pub const CLIENT: u8 = 1;
    pub const SERVER: u8 = 2;
}

/// An address as the mesh maps store it: IPv4 v4-mapped.
pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The reverse of [`mapped`].
pub fn unmapped(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

// SAFETY: plain #[repr(C)] integers and byte arrays, padding explicit.
unsafe impl aya::Pod for MeshPod {}
unsafe impl aya::Pod for MeshIp {}
unsafe impl aya::Pod for MeshPodRef {}
unsafe impl aya::Pod for MeshCidrKey {}
unsafe impl aya::Pod for MeshOrig {}
unsafe impl aya::Pod for MeshSockKey {}
unsafe impl aya::Pod for MeshFlow {}
unsafe impl aya::Pod for MeshDst {}
unsafe impl aya::Pod for MeshListeners {}
unsafe impl aya::Pod for MeshDstProfile {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_is_mapped_and_back() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(unmapped(mapped(ip)), ip);
        let key = MeshCidrKey::new(7, "10.0.0.0".parse().unwrap(), 8);
        assert_eq!(key.prefixlen, 32 + 64 + 96 + 8);
    }
}
