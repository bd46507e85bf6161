//! A north-south lab that needs nothing of the agent, for tests/nodeport.rs.
//!
//! ```text
//!   client ──┐                  (lan: a bridge in its own namespace)
//!            ├── br0 ──┬── node (eth0) ── b1   backend local to node
//!                      └── remote (eth0) ── b2 backend behind the other node
//! ```
//! client, node and remote share the lan segment 10.77.0.0/24, fd77::/64;
//! b1 sits behind node on 10.77.1.0/24, fd77:1::/64, b2 behind remote on
//! 10.77.2.0/24, fd77:2::/64. node routes b2's subnet via remote; node and
//! remote forward. Nothing has a default route out of the lab; every name
//! carries the test's tag, and dropping the lab deletes every namespace.

#![allow(dead_code)]

pub mod capture;
pub mod datapath;
pub mod net;
pub mod servers;

use net::{ip, ns_sh, Netns};
use std::net::IpAddr;

/// One family's addresses in the lab.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub client: IpAddr,
    pub node: IpAddr,
    pub remote: IpAddr,
    pub b1: IpAddr,
    pub b2: IpAddr,
}

pub const V4: fn() -> Addrs = || Addrs {
    client: "10.77.0.1".parse().expect("literal"),
    node: "10.77.0.2".parse().expect("literal"),
    remote: "10.77.0.3".parse().expect("literal"),
    b1: "10.77.1.2".parse().expect("literal"),
    b2: "10.77.2.2".parse().expect("literal"),
};

pub const V6: fn() -> Addrs = || Addrs {
    client: "fd77::1".parse().expect("literal"),
    node: "fd77::2".parse().expect("literal"),
    remote: "fd77::3".parse().expect("literal"),
    b1: "fd77:1::2".parse().expect("literal"),
    b2: "fd77:2::2".parse().expect("literal"),
};

pub struct Lab {
    pub client: String,
    pub node: String,
    pub remote: String,
    pub lan: String,
    pub b1: String,
    pub b2: String,
    _namespaces: Vec<Netns>,
}

/// A veth pair `a_dev` in `a` <-> `b_dev` in `b`, both up.
fn veth(a: &str, a_dev: &str, b: &str, b_dev: &str) {
    ip(&["-n", a, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b]);
    ip(&["-n", a, "link", "set", "dev", a_dev, "up"]);
    ip(&["-n", b, "link", "set", "dev", b_dev, "up"]);
}

fn addr(ns: &str, dev: &str, cidr: &str) {
    if cidr.contains(':') {
        ip(&["-n", ns, "addr", "add", cidr, "dev", dev, "nodad"]);
    } else {
        ip(&["-n", ns, "addr", "add", cidr, "dev", dev]);
    }
}

fn route(ns: &str, dst: &str, via: &str) {
    let family = if via.contains(':') { "-6" } else { "-4" };
    ip(&[family, "-n", ns, "route", "add", dst, "via", via]);
}

/// Forwarding on, reverse-path filtering off (the client's address arrives
/// on paths the filter would not expect once translated).
fn router(ns: &str) {
    ns_sh(
        ns,
        "sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 \
         net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0 \
         2>/dev/null || { echo 1 > /proc/sys/net/ipv4/ip_forward; \
         echo 1 > /proc/sys/net/ipv6/conf/all/forwarding; \
         echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter; \
         echo 0 > /proc/sys/net/ipv4/conf/default/rp_filter; }",
    );
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let name = |role: &str| format!("axnp-{tag}-{role}");
        let (client, node, remote, lan, b1, b2) =
            (name("c"), name("n"), name("r"), name("lan"), name("b1"), name("b2"));
        let mut namespaces = Vec::new();
        for ns in [&lan, &client, &node, &remote, &b1, &b2] {
            namespaces.push(Netns::new(ns));
        }

        // No multicast snooping: it may hold back neighbour solicitations
        // until it has seen MLD reports, delaying the first IPv6 packets.
        ip(&["-n", &lan, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        ip(&["-n", &lan, "link", "set", "br0", "up"]);
        for (ns, port) in [(&client, "c"), (&node, "n"), (&remote, "r")] {
            veth(ns, "eth0", &lan, port);
            ip(&["-n", &lan, "link", "set", "dev", port, "master", "br0"]);
        }
        veth(&node, "b1", &b1, "eth0");
        veth(&remote, "b2", &b2, "eth0");
        router(&node);
        router(&remote);
        // Forwarding turns off IPv6 address configuration on interfaces
        // brought up later; addresses are added after it.

        addr(&client, "eth0", "10.77.0.1/24");
        addr(&client, "eth0", "fd77::1/64");
        addr(&node, "eth0", "10.77.0.2/24");
        addr(&node, "eth0", "fd77::2/64");
        addr(&remote, "eth0", "10.77.0.3/24");
        addr(&remote, "eth0", "fd77::3/64");
        addr(&node, "b1", "10.77.1.1/24");
        addr(&node, "b1", "fd77:1::1/64");
        addr(&b1, "eth0", "10.77.1.2/24");
        addr(&b1, "eth0", "fd77:1::2/64");
        addr(&remote, "b2", "10.77.2.1/24");
        addr(&remote, "b2", "fd77:2::1/64");
        addr(&b2, "eth0", "10.77.2.2/24");
        addr(&b2, "eth0", "fd77:2::2/64");

        route(&node, "10.77.2.0/24", "10.77.0.3");
        route(&node, "fd77:2::/64", "fd77::3");
        route(&b1, "default", "10.77.1.1");
        route(&b1, "default", "fd77:1::1");
        route(&b2, "default", "10.77.2.1");
        route(&b2, "default", "fd77:2::1");

        Lab { client, node, remote, lan, b1, b2, _namespaces: namespaces }
    }
}
