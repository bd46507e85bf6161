//! One lab "path": a client, two nodes and a backend behind each node, all
//! in network namespaces of this run, for one datapath under test. Every
//! datapath gets its own copy, so none inherits another's netfilter state
//! and all of them can stay up for the whole run (measurements interleave).
//!
//! ```text
//!                 hub: br0 (10.77.0.0/24, no STP, no bridge netfilter)
//!          ┌────────────────┼──────────────────┐
//!     client (cl)       node-1 (n1)          node-2 (n2)
//!     eth0 .2           eth0 .11             eth0 .12
//!     gen0 10.78.0.2 ── gen0 10.78.0.1
//!                       bk1 ─ backend-1      bk1 ─ backend-2
//!                       10.81.1.10           10.81.2.10
//! ```
//!
//! TCP goes over the segment. The UDP packet generator has a wire of its
//! own, `gen0`, straight into node-1 (GRO on, so node-1 receives through
//! NAPI like a NIC driver): the client sends XDP frames into it, so node-1
//! gets page-backed frames rather than socket-made skbs.
//!
//! Nodes forward and route each other's backend /24; a backend's veth is
//! like a pod's (the node side holds the gateway as a /32 and a host route).
//! The client knows only the segment, so it reaches a backend only through
//! a NodePort translation on node-1 — except on the `plain` path, which
//! routes the backend range via node-1 to measure forwarding without any
//! load balancer. Senders (client, backends) have transmit checksum offload
//! off: their packets carry complete checksums, as packets from a real NIC do.

use super::lab::{self, ip};
use super::sys;
use anyhow::{bail, Context};
use std::net::Ipv4Addr;
use tracing::{debug, warn};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const NODE1_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
pub const NODE2_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
pub const BACKEND1_IP: Ipv4Addr = Ipv4Addr::new(10, 81, 1, 10);
pub const BACKEND2_IP: Ipv4Addr = Ipv4Addr::new(10, 81, 2, 10);
pub const GEN_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
pub const GEN_NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
/// The generator's wire, on the client and on node-1.
pub const GEN_DEVICE: &str = "gen0";
/// The node devices (what the agents get as `--devices`).
pub const NODE_DEVICE: &str = "eth0";

/// The namespaces of one path, by role; all deleted on drop.
pub struct Topology {
    pub hub: String,
    pub client: String,
    pub node1: String,
    pub node2: String,
    pub backend1: String,
    pub backend2: String,
    created: Vec<String>,
}

impl Topology {
    /// Builds the path `stem` (`axn<pid>-<tag>`); `plain_routes` gives the
    /// client a route to the backends via node-1.
    pub fn build(stem: &str, plain_routes: bool) -> anyhow::Result<Topology> {
        let name = |role: &str| format!("{stem}-{role}");
        let mut t = Topology {
            hub: name("hub"),
            client: name("cl"),
            node1: name("n1"),
            node2: name("n2"),
            backend1: name("b1"),
            backend2: name("b2"),
            created: Vec::new(),
        };
        for ns in t.all() {
            let _creating = lab::creating()?;
            ip(&["netns", "add", &ns])?;
            t.created.push(ns);
        }
        t.sysctls()?;
        t.wire()?;
        t.address(plain_routes)?;
        for (ns, dev) in [(&t.client, "eth0"), (&t.backend1, "eth0"), (&t.backend2, "eth0")] {
            sys::tx_checksum_off(ns, dev)?;
        }
        debug!(stem, "path built");
        Ok(t)
    }

    fn all(&self) -> Vec<String> {
        [&self.hub, &self.client, &self.node1, &self.node2, &self.backend1, &self.backend2]
            .into_iter()
            .cloned()
            .collect()
    }

    /// Set before devices exist: new devices copy the `default` values.
    fn sysctls(&self) -> anyhow::Result<()> {
        for ns in self.all() {
            for conf in ["all", "default"] {
                sys::sysctl(&ns, &format!("net.ipv4.conf.{conf}.rp_filter"), "0")?;
            }
        }
        for ns in [&self.node1, &self.node2] {
            for conf in ["all", "default"] {
                sys::sysctl(ns, &format!("net.ipv4.conf.{conf}.forwarding"), "1")?;
            }
        }
        // Bridged frames skip iptables in the hub (br_netfilter may be loaded
        // on the host; its switches are per namespace).
        for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"] {
            if let Err(e) = sys::sysctl(&self.hub, &format!("net.bridge.{key}"), "0") {
                debug!("{e:#} (br_netfilter not loaded?)");
            }
        }
        // Many short connections: a wide port range, TIME_WAIT ports reused.
        sys::sysctl(&self.client, "net.ipv4.ip_local_port_range", "1024 65000")?;
        sys::sysctl(&self.client, "net.ipv4.tcp_tw_reuse", "1")?;
        for ns in [&self.backend1, &self.backend2] {
            sys::sysctl(ns, "net.core.somaxconn", "4096")?;
        }
        Ok(())
    }

    fn wire(&self) -> anyhow::Result<()> {
        let hub = self.hub.as_str();
        ip(&["-n", hub, "link", "set", "lo", "up"])?;
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0"])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        // Each veth is created in the hub with its far end put straight into
        // its namespace: the host's own namespace never sees either end.
        for (i, ns) in [&self.client, &self.node1, &self.node2].into_iter().enumerate() {
            let port = format!("v{i}");
            ip(&["-n", hub, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            ip(&["-n", hub, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", hub, "link", "set", &port, "up"])?;
        }
        for (node, backend) in [(&self.node1, &self.backend1), (&self.node2, &self.backend2)] {
            ip(&["-n", node, "link", "add", "bk1", "type", "veth", "peer", "name", "eth0", "netns", backend])?;
        }
        ip(&[
            "-n",
            &self.client,
            "link",
            "add",
            GEN_DEVICE,
            "type",
            "veth",
            "peer",
            "name",
            GEN_DEVICE,
            "netns",
            &self.node1,
        ])?;
        Ok(())
    }

    fn address(&self, plain_routes: bool) -> anyhow::Result<()> {
        for ns in self.all().iter().filter(|n| **n != self.hub) {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        let cl = self.client.as_str();
        ip(&["-n", cl, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "eth0"])?;
        if plain_routes {
            ip(&["-n", cl, "route", "add", "10.81.0.0/16", "via", &NODE1_IP.to_string()])?;
        }
        let nodes = [
            (&self.node1, NODE1_IP, BACKEND1_IP, 1u8, NODE2_IP, 2u8),
            (&self.node2, NODE2_IP, BACKEND2_IP, 2u8, NODE1_IP, 1u8),
        ];
        for (ns, node_ip, backend_ip, i, peer_ip, j) in nodes {
            ip(&["-n", ns, "addr", "add", &format!("{node_ip}/24"), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "bk1", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("10.81.{i}.1/32"), "dev", "bk1"])?;
            ip(&["-n", ns, "route", "add", &format!("{backend_ip}/32"), "dev", "bk1", "scope", "link"])?;
            ip(&["-n", ns, "route", "add", &format!("10.81.{j}.0/24"), "via", &peer_ip.to_string()])?;
        }
        for (ns, addr) in [(&self.client, GEN_CLIENT_IP), (&self.node1, GEN_NODE_IP)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", GEN_DEVICE])?;
            ip(&["-n", ns, "link", "set", GEN_DEVICE, "up"])?;
        }
        sys::gro_on(&self.node1, GEN_DEVICE)?;
        for (ns, backend_ip, i) in [(&self.backend1, BACKEND1_IP, 1u8), (&self.backend2, BACKEND2_IP, 2u8)] {
            ip(&["-n", ns, "addr", "add", &format!("{backend_ip}/24"), "dev", "eth0"])?;
            ip(&["-n", ns, "route", "add", "default", "via", &format!("10.81.{i}.1")])?;
        }
        Ok(())
    }

    /// The MAC address of `dev` in netns `ns`.
    pub fn mac(ns: &str, dev: &str) -> anyhow::Result<[u8; 6]> {
        let out = std::process::Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .with_context(|| format!("no MAC address of {dev} in {ns}: {text}"))?;
        let bytes: Vec<u8> = hex.split(':').filter_map(|b| u8::from_str_radix(b, 16).ok()).collect();
        if bytes.len() != 6 {
            bail!("bad MAC address {hex:?} of {dev} in {ns}");
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&bytes);
        Ok(mac)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if lab::stopping() {
            return;
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                warn!("{e:#}");
            }
        }
    }
}
