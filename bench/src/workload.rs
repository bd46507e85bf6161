//! The services every peer is programmed with: service `i` has a VIP from
//! 10.96.0.0/12 on port 80 and two backends of its own on port 8080, from a
//! pod range the backend namespace answers for as a whole (AnyIP).

use axon_api::{Backend, L4Addr, Protocol, ServiceSpec, ServiceType};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

pub const VIP_NET: &str = "10.96.0.0/12";
pub const VIP_PORT: u16 = 80;
/// Backends: 10.128.0.0/14 holds 262144 addresses, two per service.
pub const POD_NET: &str = "10.128.0.0/14";
/// What kube-proxy is told is the cluster's pod CIDR. It covers the backends
/// and the client (10.132.x.1), so the client is treated like a pod and its
/// traffic is not masqueraded, as for in-cluster clients.
pub const CLUSTER_CIDR: &str = "10.128.0.0/13";
pub const BACKEND_PORT: u16 = 8080;
pub const BACKENDS_PER_SERVICE: usize = 2;
/// The most services the address plan holds.
pub const MAX_SERVICES: usize = 120_000;

const VIP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const POD_BASE: u32 = u32::from_be_bytes([10, 128, 0, 0]);

/// Service `i`'s frontend.
pub fn vip(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(VIP_BASE + 1 + i as u32), VIP_PORT)
}

/// Service `i`'s backends.
pub fn backends(i: usize) -> Vec<SocketAddrV4> {
    (0..BACKENDS_PER_SERVICE)
        .map(|j| SocketAddrV4::new(Ipv4Addr::from(POD_BASE + 1 + (i * BACKENDS_PER_SERVICE + j) as u32), BACKEND_PORT))
        .collect()
}

/// Kubernetes-style identity of service `i` (namespace, name).
pub fn name(i: usize) -> (String, String) {
    ("bench".to_string(), format!("svc-{i:06}"))
}

/// Service `i` as the Axon API takes it; ids start at 1.
pub fn spec(i: usize) -> ServiceSpec {
    let (ns, name) = name(i);
    let v = vip(i);
    ServiceSpec {
        id: Some(i as u32 + 1),
        name: Some(format!("{ns}/{name}")),
        frontend: L4Addr::new(IpAddr::V4(*v.ip()), v.port(), Protocol::Tcp),
        backends: backends(i).into_iter().map(|b| Backend::new(IpAddr::V4(*b.ip()), b.port())).collect(),
        svc_type: ServiceType::ClusterIP,
        options: Default::default(),
    }
}

/// A client probe target: the VIP (or, for "direct", a backend) and the
/// backends allowed to answer.
pub fn target_arg(addr: SocketAddrV4, expect: &[SocketAddrV4]) -> String {
    let list: Vec<String> = expect.iter().map(|b| b.to_string()).collect();
    format!("{addr}={}", list.join(","))
}

/// A 64-bit bijection (splitmix64's finalizer): distinct inputs give
/// distinct outputs, so names derived from it never collide.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

const B32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A kube-proxy-looking hash: `len` base32 characters, unique per (kind, i)
/// for len >= 13 (the first 13 characters encode the whole 64-bit value).
pub fn hash_name(kind: u64, i: usize, len: usize) -> String {
    let a = mix((kind << 40) | i as u64);
    let v = ((a as u128) << 64) | mix(a) as u128;
    (0..len.min(25)).map(|k| B32[((v >> (123 - 5 * k)) & 31) as usize] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn addresses_stay_in_their_ranges() {
        let last = MAX_SERVICES - 1;
        assert!(vip(last).ip().octets()[1] < 112, "VIP leaves 10.96.0.0/12");
        let b = backends(last);
        assert!(b[1].ip().octets()[1] < 132, "backend leaves 10.128.0.0/14");
        assert_ne!(backends(0)[1], backends(1)[0]);
    }

    #[test]
    fn hash_names_are_unique() {
        let names: HashSet<String> = (0..200_000).map(|i| hash_name(1, i, 16)).collect();
        assert_eq!(names.len(), 200_000);
        assert_ne!(hash_name(1, 7, 16), hash_name(2, 7, 16));
    }
}
