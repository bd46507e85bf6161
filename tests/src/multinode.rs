//! The north-south lab: a client, two or three "nodes" on one segment, and
//! backend namespaces behind each node — a small cluster, all in network
//! namespaces of this process, with one `axon-agent` per node running inside
//! that node's namespace ([`Cluster`]).
//!
//! ```text
//!                      hub ns: br0 (10.77.0.0/24, fd77::/64)
//!         ┌──────────────────┬─┴────────────────┬──────────────────┐
//!   client ns            node-1 ns           node-2 ns          node-3 ns
//!   eth0 10.77.0.2       eth0 10.77.0.11     eth0 10.77.0.12    eth0 10.77.0.13
//!        10.77.0.3       bk1 ─ backend-1     bk1 ─ backend-2    ...
//!   10.99.0.0/24 via     10.81.1.10/24       10.81.2.10/24
//!     node-1 (LB IPs)    (its /24: 10.81.1.0/24, fd81:1::/64)
//! ```
//!
//! Nodes forward (IPv4 and IPv6) and route every other node's backend subnet
//! via that node. Each backend has a veth to its node (the node side holds
//! the gateway address as a /32 and a host route to the backend, like a pod's
//! veth) and a default route via its node. The client knows only the segment
//! (and the LB subnet via node-1): it has no route to any backend subnet, so
//! it reaches backends only through a translation on a node, and a missing
//! translation fails (ENETUNREACH on the client, or an ICMP error from the
//! node) instead of slipping through.
//!
//! Each node gets its own child cgroup (the agent's `--cgroup-root`, where the
//! socket-LB and bind protection apply to processes started with
//! [`LabNode::place`]); the client runs in a cgroup of its own with nothing
//! attached. Everything is removed on drop.

use crate::agent::{Agent, AgentOptions};
use crate::backend::BackendServer;
use crate::bins;
use crate::cgroup::Cgroup;
use crate::client::{Place, Probe};
use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::nic;
use crate::probe::{Attempt, HttpAnswer};
use crate::sweep;
use crate::topology::{link_index, set_up, Node, SUBNET_V4, SUBNET_V6};
use crate::xdp::XdpPass;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, CacheInfo};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::sync::Mutex;

const BRIDGE: &str = "br0";
/// Every namespace's device on the segment (or, in a backend, towards its node).
pub const SEGMENT_DEVICE: &str = "eth0";
/// Host part of the client's second address (`10.77.0.3`, `fd77::3`).
const CLIENT_ALT_HOST: u8 = 3;
const CLIENT_HOST: u8 = 2;
/// The LB / external IP subnet the client routes to node-1.
pub const LB_SUBNET_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 0);
pub const LB_SUBNET_V6: Ipv6Addr = Ipv6Addr::new(0xfd99, 0, 0, 0, 0, 0, 0, 0);

/// Shape of a [`MultiNodeLab`].
#[derive(Debug, Clone)]
pub struct MultiNodeOptions {
    /// Number of nodes (1–9).
    pub nodes: usize,
    /// Backends behind each node (1–80).
    pub backends_per_node: usize,
    /// Transmit checksum offload on the client's and the backends' devices.
    /// Off: senders compute full checksums and receivers verify them, so a
    /// translation with a wrong checksum update loses packets (see [`nic`]).
    pub checksum_offload: bool,
}

impl Default for MultiNodeOptions {
    fn default() -> Self {
        MultiNodeOptions { nodes: 2, backends_per_node: 1, checksum_offload: true }
    }
}

/// One node: a namespace on the segment, forwarding, with backends behind it.
#[derive(Debug)]
pub struct LabNode {
    index: usize,
    name: String,
    netns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    cgroup: Cgroup,
}

impl LabNode {
    /// 1-based.
    pub fn index(&self) -> usize {
        self.index
    }

    /// `node-1`, ... — the agent's `--node-name` and a backend's `node`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// The node's segment address of one family.
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ipv6.into()
        } else {
            self.ipv4.into()
        }
    }

    pub fn addr(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(v6), port)
    }

    /// The node's device on the segment (what the agent gets as `--devices`).
    pub fn device(&self) -> &'static str {
        SEGMENT_DEVICE
    }

    /// The hub-side peer of [`LabNode::device`] (on the bridge).
    pub fn hub_port(&self) -> String {
        format!("v{}", self.index)
    }

    /// The node's child cgroup (its agent's `--cgroup-root`).
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The node's backend subnet: `10.81.<i>.0/24` or `fd81:<i>::/64`.
    pub fn backend_subnet(&self, v6: bool) -> (IpAddr, u8) {
        if v6 {
            (backend_ipv6(self.index, 0).into(), 64)
        } else {
            (backend_ipv4(self.index, 0).into(), 24)
        }
    }

    /// The node's address on its backends' veths (their default gateway):
    /// `10.81.<i>.1` / `fd81:<i>::1`.
    pub fn backend_gateway(&self, v6: bool) -> IpAddr {
        let (v4, v6addr) = backend_gateway(self.index);
        if v6 {
            v6addr.into()
        } else {
            v4.into()
        }
    }

    /// Processes started here run in the node's namespace *and* cgroup,
    /// where its agent's socket-LB and bind protection apply.
    pub fn place(&self) -> Place<'_> {
        Place::new(&self.netns, Some(&self.cgroup))
    }

    /// Starts an agent inside this node: `--node-name` and `--devices` are
    /// filled in unless `opts` sets them.
    pub fn start_agent(&self, lab_id: &str, opts: &AgentOptions) -> Result<Agent> {
        let mut opts = opts.clone();
        opts.node_name.get_or_insert_with(|| self.name.clone());
        if opts.devices.is_empty() {
            opts.devices.push(SEGMENT_DEVICE.to_string());
        }
        Agent::start_in(&format!("{lab_id}-{}", self.name), self.cgroup.path(), Some(&self.netns), opts)
    }
}

/// A backend namespace behind a node.
#[derive(Debug)]
pub struct LabBackend {
    node: usize,
    ns: Node,
}

impl LabBackend {
    /// `backend-1`, ... numbered across the lab, node by node.
    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The index of the node it is behind (1-based).
    pub fn node(&self) -> usize {
        self.node
    }

    /// The name of the node it is behind (a service backend's `node`).
    pub fn node_name(&self) -> String {
        format!("node-{}", self.node)
    }

    pub fn netns(&self) -> &Netns {
        self.ns.netns()
    }

    pub fn ipv4(&self) -> Ipv4Addr {
        self.ns.ipv4()
    }

    pub fn ipv6(&self) -> Ipv6Addr {
        self.ns.ipv6()
    }

    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.ipv6().into()
        } else {
            self.ipv4().into()
        }
    }

    pub fn addr(&self, v6: bool, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(v6), port)
    }

    /// A server on `port` (TCP and UDP, both families) answering
    /// `"<name> from <peer>"`.
    pub fn serve(&self, port: u16) -> Result<BackendServer> {
        BackendServer::start_reporting(self.ns.netns(), self.ns.name(), port)
    }

    /// A backend entry of a service JSON: `{"address", "port", "node"}`.
    pub fn json(&self, v6: bool, port: u16) -> Value {
        serde_json::json!({"address": self.ip(v6).to_string(), "port": port, "node": self.node_name()})
    }
}

/// The whole north-south lab; dropping it removes every namespace, veth,
/// cgroup and XDP program it made.
#[derive(Debug)]
pub struct MultiNodeLab {
    id: String,
    client: Node,
    nodes: Vec<LabNode>,
    backends: Vec<LabBackend>,
    xdp: Mutex<Vec<XdpPass>>,
    // Declared last: dropped after the namespaces whose veths hang off its bridge.
    hub: Netns,
    client_cgroup: Cgroup,
}

impl MultiNodeLab {
    /// `nodes` nodes with `backends_per_node` backends each.
    pub fn new(label: &str, nodes: usize, backends_per_node: usize) -> Result<MultiNodeLab> {
        Self::with_options(label, &MultiNodeOptions { nodes, backends_per_node, ..Default::default() })
    }

    pub fn with_options(label: &str, opts: &MultiNodeOptions) -> Result<MultiNodeLab> {
        if !(1..=9).contains(&opts.nodes) || !(1..=80).contains(&opts.backends_per_node) {
            return Err(LabError::Setup(format!(
                "a multi-node lab has 1-9 nodes and 1-80 backends per node, not {} and {}",
                opts.nodes, opts.backends_per_node
            )));
        }
        sweep::once();
        let id = format!("{}-{}", bins::unique_id(), bins::sanitize_label(label));
        let hub = Netns::new(&format!("{id}/hub"))?;
        let client = Node::new_raw(
            "client",
            Netns::new(&format!("{id}/client"))?,
            segment_ipv4(CLIENT_HOST),
            segment_ipv6(CLIENT_HOST),
        );
        let nodes = (1..=opts.nodes).map(|i| make_node(&id, i)).collect::<Result<Vec<_>>>()?;
        let mut backends = Vec::new();
        for node in 1..=opts.nodes {
            for k in 1..=opts.backends_per_node {
                let name = format!("backend-{}", backends.len() + 1);
                let netns = Netns::new(&format!("{id}/{name}"))?;
                let ns = Node::new_raw(&name, netns, backend_ipv4(node, k), backend_ipv6(node, k));
                backends.push(LabBackend { node, ns });
            }
        }
        let client_cgroup = Cgroup::create(&format!("{id}-client"))?;
        let lab = MultiNodeLab { id, client, nodes, backends, xdp: Mutex::new(Vec::new()), hub, client_cgroup };
        lab.wire(opts)?;
        Ok(lab)
    }

    /// `axt-<pid>-<seq>-<label>`: stem of the cgroups and agents' directories.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client namespace (`10.77.0.2`, `fd77::2`; also [`MultiNodeLab::client_alt`]).
    pub fn client(&self) -> &Node {
        &self.client
    }

    /// The client's second address (`10.77.0.3` / `fd77::3`), for a second source.
    pub fn client_alt(&self, v6: bool) -> IpAddr {
        if v6 {
            segment_ipv6(CLIENT_ALT_HOST).into()
        } else {
            segment_ipv4(CLIENT_ALT_HOST).into()
        }
    }

    /// The client's main address of one family.
    pub fn client_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.client.ipv6().into()
        } else {
            self.client.ipv4().into()
        }
    }

    pub fn nodes(&self) -> &[LabNode] {
        &self.nodes
    }

    /// Node `i`, 1-based like its name.
    pub fn node(&self, i: usize) -> &LabNode {
        &self.nodes[i - 1]
    }

    pub fn backends(&self) -> &[LabBackend] {
        &self.backends
    }

    /// Backend `i`, 1-based like its name.
    pub fn backend(&self, i: usize) -> &LabBackend {
        &self.backends[i - 1]
    }

    /// The backends behind node `node`.
    pub fn backends_of(&self, node: usize) -> Vec<&LabBackend> {
        self.backends.iter().filter(|b| b.node == node).collect()
    }

    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    /// An address in the LB / external IP subnet (routed by the client to
    /// node-1): `10.99.0.<host>` or `fd99::<host>`.
    pub fn lb_ip(&self, v6: bool, host: u8) -> IpAddr {
        if v6 {
            Ipv6Addr::from(u128::from(LB_SUBNET_V6) | u128::from(host)).into()
        } else {
            let o = LB_SUBNET_V4.octets();
            Ipv4Addr::new(o[0], o[1], o[2], host).into()
        }
    }

    /// Starts a peer-reporting server on `port` in every backend.
    pub fn serve_all(&self, port: u16) -> Result<Vec<BackendServer>> {
        self.backends.iter().map(|b| b.serve(port)).collect()
    }

    /// The backend entries of a service JSON for the given backends.
    pub fn backends_json(&self, backends: &[&LabBackend], v6: bool, port: u16) -> Value {
        Value::Array(backends.iter().map(|b| b.json(v6, port)).collect())
    }

    /// Every backend as service JSON entries.
    pub fn all_backends_json(&self, v6: bool, port: u16) -> Value {
        Value::Array(self.backends.iter().map(|b| b.json(v6, port)).collect())
    }

    /// `backend-1`, `backend-2`, ...
    pub fn backend_names(&self) -> Vec<&str> {
        self.backends.iter().map(LabBackend::name).collect()
    }

    /// Where the client's processes run: the client namespace, in a cgroup
    /// with nothing attached (north-south traffic is translated on the nodes).
    pub fn client_place(&self) -> Place<'_> {
        Place::new(self.client.netns(), Some(&self.client_cgroup))
    }

    /// Runs a probe from the client.
    pub fn probe(&self, probe: &Probe) -> Result<Vec<Attempt>> {
        self.client_place().probe(probe)
    }

    /// `count` TCP connections from the client to `addr`.
    pub fn tcp(&self, addr: SocketAddr, count: u32) -> Result<Vec<Attempt>> {
        self.probe(&Probe::tcp(addr).count(count))
    }

    /// `count` UDP requests from the client to `addr`, each from a new connected socket.
    pub fn udp(&self, addr: SocketAddr, count: u32) -> Result<Vec<Attempt>> {
        self.probe(&Probe::udp(addr).count(count))
    }

    /// An HTTP/1.0 GET from the client.
    pub fn http(&self, addr: SocketAddr, path: &str) -> Result<HttpAnswer> {
        self.client_place().http(addr, path)
    }

    /// One agent per node, each inside its node (see [`LabNode::start_agent`]).
    pub fn start_agents(&self, opts: &AgentOptions) -> Result<Cluster> {
        let agents = self.nodes.iter().map(|n| n.start_agent(&self.id, opts)).collect::<Result<Vec<_>>>()?;
        Ok(Cluster { agents })
    }

    /// Attaches XDP_PASS to `ifname` in `netns`, for as long as the lab lives.
    pub fn attach_xdp_pass(&self, netns: &Netns, ifname: &str) -> Result<()> {
        let prog = XdpPass::attach(netns, ifname)?;
        self.xdp.lock().unwrap_or_else(|p| p.into_inner()).push(prog);
        Ok(())
    }

    /// XDP_PASS on every peer a node's native XDP may transmit or redirect
    /// into: the hub side of each node's segment device, and each backend's
    /// device. Without it, XDP_TX/redirect on veth drops the frame.
    pub fn attach_xdp_pass_to_peers(&self) -> Result<()> {
        for node in &self.nodes {
            self.attach_xdp_pass(&self.hub, &node.hub_port())?;
        }
        for b in &self.backends {
            self.attach_xdp_pass(b.netns(), SEGMENT_DEVICE)?;
        }
        Ok(())
    }

    fn wire(&self, opts: &MultiNodeOptions) -> Result<()> {
        self.set_sysctls()?;
        let mut targets = vec![(0usize, self.client.netns().raw_fd())];
        targets.extend(self.nodes.iter().map(|n| (n.index, n.netns.raw_fd())));
        self.hub.netlink("wiring the hub", |h| wire_hub(h, targets))?;
        let (v4, v6) = (self.client.ipv4(), self.client.ipv6());
        let node1 = (self.node(1).ipv4, self.node(1).ipv6);
        self.client.netns().netlink("configuring the client", move |h| configure_client(h, v4, v6, node1))?;
        for node in &self.nodes {
            self.wire_node(node)?;
        }
        if !opts.checksum_offload {
            nic::set_tx_checksum(self.client.netns(), SEGMENT_DEVICE, false)?;
            for b in &self.backends {
                nic::set_tx_checksum(b.netns(), SEGMENT_DEVICE, false)?;
            }
        }
        Ok(())
    }

    /// Forwarding on the nodes; no reverse-path filter and no DAD anywhere,
    /// so what the lab builds works at once and as drawn. Set before any
    /// device arrives: new devices copy the `default` values.
    fn set_sysctls(&self) -> Result<()> {
        let all = std::iter::once(self.client.netns())
            .chain(self.nodes.iter().map(|n| &n.netns))
            .chain(self.backends.iter().map(|b| b.netns()));
        for ns in all {
            for conf in ["all", "default"] {
                ns.sysctl_write(&format!("net/ipv4/conf/{conf}/rp_filter"), "0")?;
                ns.sysctl_write(&format!("net/ipv6/conf/{conf}/accept_dad"), "0")?;
            }
        }
        for node in &self.nodes {
            for conf in ["all", "default"] {
                node.netns.sysctl_write(&format!("net/ipv4/conf/{conf}/forwarding"), "1")?;
                node.netns.sysctl_write(&format!("net/ipv6/conf/{conf}/forwarding"), "1")?;
            }
        }
        Ok(())
    }

    /// The node's segment side, its backends' veths, and its routes to the
    /// other nodes' backend subnets.
    fn wire_node(&self, node: &LabNode) -> Result<()> {
        let i = node.index;
        let (v4, v6) = (node.ipv4, node.ipv6);
        let backends: Vec<(usize, RawFd, Ipv4Addr, Ipv6Addr)> = self
            .backends_of(i)
            .iter()
            .enumerate()
            .map(|(k, b)| (k + 1, b.netns().raw_fd(), b.ipv4(), b.ipv6()))
            .collect();
        let peers: Vec<(usize, Ipv4Addr, Ipv6Addr)> =
            self.nodes.iter().filter(|n| n.index != i).map(|n| (n.index, n.ipv4, n.ipv6)).collect();
        node.netns.netlink("configuring a node", move |h| configure_node(h, i, v4, v6, backends, peers))?;
        for (k, b) in self.backends_of(i).iter().enumerate() {
            let (bv4, bv6) = (b.ipv4(), b.ipv6());
            let dev = format!("pb{}", k + 1);
            b.netns().netlink("configuring a backend", move |h| configure_backend(h, dev, i, bv4, bv6))?;
        }
        Ok(())
    }
}

/// The agents of a [`MultiNodeLab`], one per node, and the calls that
/// declare a service on all of them at once (as Kubernetes would).
#[derive(Debug)]
pub struct Cluster {
    agents: Vec<Agent>,
}

impl Cluster {
    pub fn agents(&self) -> &[Agent] {
        &self.agents
    }

    /// The agent of node `i` (1-based).
    pub fn agent(&self, i: usize) -> &Agent {
        &self.agents[i - 1]
    }

    pub fn agent_mut(&mut self, i: usize) -> &mut Agent {
        &mut self.agents[i - 1]
    }

    /// `PUT /v1/services/<id>` with `spec` on every agent; the first refusal
    /// is an error carrying the agent's answer.
    pub fn put_service(&self, id: u32, spec: &Value) -> Result<()> {
        self.put_service_on(&(1..=self.agents.len()).collect::<Vec<_>>(), id, spec)
    }

    /// `PUT /v1/services/<id>` on the agents of the given nodes only.
    pub fn put_service_on(&self, nodes: &[usize], id: u32, spec: &Value) -> Result<()> {
        let body = spec.to_string();
        for &i in nodes {
            let (status, answer) = self.agent(i).request("PUT", &axon_api::paths::service(id), Some(&body))?;
            if !(200..300).contains(&status) {
                return Err(LabError::Setup(format!(
                    "node-{i} refused service {id}: {status} {answer}\nspec: {body}\nagent log:\n{}",
                    self.agent(i).log()
                )));
            }
        }
        Ok(())
    }

    /// `DELETE /v1/services/<id>` on every agent.
    pub fn delete_service(&self, id: u32) -> Result<()> {
        for (i, agent) in self.agents.iter().enumerate() {
            let (status, answer) = agent.request("DELETE", &axon_api::paths::service(id), None)?;
            if !(200..300).contains(&status) {
                return Err(LabError::Setup(format!("node-{} refused to delete {id}: {status} {answer}", i + 1)));
            }
        }
        Ok(())
    }

    /// Every agent's log, labelled, for failure messages.
    pub fn logs(&self) -> String {
        self.agents
            .iter()
            .enumerate()
            .map(|(i, a)| format!("--- agent of node-{} ---\n{}", i + 1, a.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn segment_ipv4(host: u8) -> Ipv4Addr {
    let o = SUBNET_V4.octets();
    Ipv4Addr::new(o[0], o[1], o[2], host)
}

/// `fd77::<host as hex digits of its decimal>`: node-1 (host 11) is `fd77::11`.
fn segment_ipv6(host: u8) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(SUBNET_V6) | u128::from(decimal_as_hex(host)))
}

fn decimal_as_hex(n: u8) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(u16::from(n))
}

/// `10.81.<node>.<9+k>` (k ≥ 1); k = 0 is the subnet, the gateway is `.1`.
fn backend_ipv4(node: usize, k: usize) -> Ipv4Addr {
    let host = if k == 0 { 0 } else { 9 + k };
    Ipv4Addr::new(10, 81, node as u8, host as u8)
}

/// `fd81:<node>::<9+k as decimal digits>`: the first backend is `fd81:1::10`.
fn backend_ipv6(node: usize, k: usize) -> Ipv6Addr {
    let host = if k == 0 { 0 } else { decimal_as_hex((9 + k) as u8) };
    Ipv6Addr::new(0xfd81, node as u16, 0, 0, 0, 0, 0, host)
}

fn backend_gateway(node: usize) -> (Ipv4Addr, Ipv6Addr) {
    (Ipv4Addr::new(10, 81, node as u8, 1), Ipv6Addr::new(0xfd81, node as u16, 0, 0, 0, 0, 0, 1))
}

fn make_node(id: &str, i: usize) -> Result<LabNode> {
    let name = format!("node-{i}");
    Ok(LabNode {
        index: i,
        netns: Netns::new(&format!("{id}/{name}"))?,
        ipv4: segment_ipv4(10 + i as u8),
        ipv6: segment_ipv6(10 + i as u8),
        cgroup: Cgroup::create(&format!("{id}-{name}"))?,
        name,
    })
}

type NlResult<T> = std::result::Result<T, rtnetlink::Error>;

/// In the hub: `lo` up, bridge `br0`, and per namespace a veth `v<i>` on the
/// bridge whose peer `p<i>` moves into that namespace (0 is the client).
async fn wire_hub(h: Handle, targets: Vec<(usize, RawFd)>) -> NlResult<()> {
    set_up(&h, link_index(&h, "lo").await?).await?;
    // No multicast snooping: IPv6 neighbour discovery must just flood.
    h.link().add(LinkBridge::new(BRIDGE).mcast_snooping(false).build()).execute().await?;
    let bridge = link_index(&h, BRIDGE).await?;
    for (i, fd) in targets {
        let (hub_end, far_end) = (format!("v{i}"), format!("p{i}"));
        h.link().add(LinkVeth::new(&hub_end, &far_end).build()).execute().await?;
        let peer = link_index(&h, &far_end).await?;
        h.link().set(LinkUnspec::new_with_index(peer).setns_by_fd(fd).build()).execute().await?;
        let port = link_index(&h, &hub_end).await?;
        h.link().set(LinkUnspec::new_with_index(port).controller(bridge).up().build()).execute().await?;
    }
    Ok(())
}

/// `from` renamed to `eth0` and up (with `lo`); its index.
async fn bring_up_as_eth0(h: &Handle, from: &str) -> NlResult<u32> {
    set_up(h, link_index(h, "lo").await?).await?;
    let idx = link_index(h, from).await?;
    h.link().set(LinkUnspec::new_with_index(idx).name(SEGMENT_DEVICE.to_string()).build()).execute().await?;
    set_up(h, idx).await?;
    Ok(idx)
}

/// An address on `index`; IPv6 without DAD, so it is usable at once.
async fn add_addr(h: &Handle, index: u32, ip: IpAddr, prefix: u8) -> NlResult<()> {
    let mut req = h.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await
}

/// A second IPv6 address, deprecated (preferred lifetime 0) so the kernel
/// never picks it as a source by itself; binding to it still works.
async fn add_deprecated_addr6(h: &Handle, index: u32, ip: Ipv6Addr, prefix: u8) -> NlResult<()> {
    let mut req = h.address().add(index, ip.into(), prefix);
    let msg = req.message_mut();
    msg.header.flags |= AddressHeaderFlags::Nodad;
    msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    let mut lifetimes = CacheInfo::default();
    lifetimes.ifa_preferred = 0;
    lifetimes.ifa_valid = u32::MAX;
    msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
    req.execute().await
}

async fn route4_via(h: &Handle, dst: Ipv4Addr, len: u8, gw: Ipv4Addr) -> NlResult<()> {
    h.route()
        .add(RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, len).gateway(gw).build())
        .execute()
        .await
}

async fn route6_via(h: &Handle, dst: Ipv6Addr, len: u8, gw: Ipv6Addr) -> NlResult<()> {
    h.route()
        .add(RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(dst, len).gateway(gw).build())
        .execute()
        .await
}

/// A host route out of a device, no gateway (like a pod's route on its node).
async fn host_routes_dev(h: &Handle, index: u32, v4: Ipv4Addr, v6: Ipv6Addr) -> NlResult<()> {
    let r4 = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(v4, 32)
        .output_interface(index)
        .scope(RouteScope::Link)
        .build();
    h.route().add(r4).execute().await?;
    let r6 = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(v6, 128).output_interface(index).build();
    h.route().add(r6).execute().await
}

/// The client: both addresses of each family on the segment, and the LB
/// subnet via node-1. Nothing else: backends are unreachable from here.
async fn configure_client(h: Handle, v4: Ipv4Addr, v6: Ipv6Addr, node1: (Ipv4Addr, Ipv6Addr)) -> NlResult<()> {
    let idx = bring_up_as_eth0(&h, "p0").await?;
    add_addr(&h, idx, v4.into(), 24).await?;
    add_addr(&h, idx, v6.into(), 64).await?;
    add_addr(&h, idx, segment_ipv4(CLIENT_ALT_HOST).into(), 24).await?;
    add_deprecated_addr6(&h, idx, segment_ipv6(CLIENT_ALT_HOST), 64).await?;
    route4_via(&h, LB_SUBNET_V4, 24, node1.0).await?;
    route6_via(&h, LB_SUBNET_V6, 64, node1.1).await
}

/// A node: `eth0` on the segment; per backend `k` a veth `bk<k>` (here, with
/// the gateway address as a /32 and a host route to the backend) whose peer
/// `pb<k>` moves into the backend; routes to every other node's backend subnet.
async fn configure_node(
    h: Handle,
    i: usize,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    backends: Vec<(usize, RawFd, Ipv4Addr, Ipv6Addr)>,
    peers: Vec<(usize, Ipv4Addr, Ipv6Addr)>,
) -> NlResult<()> {
    let idx = bring_up_as_eth0(&h, &format!("p{i}")).await?;
    add_addr(&h, idx, v4.into(), 24).await?;
    add_addr(&h, idx, v6.into(), 64).await?;
    let (gw4, gw6) = backend_gateway(i);
    for (k, fd, b4, b6) in backends {
        let (near, far) = (format!("bk{k}"), format!("pb{k}"));
        h.link().add(LinkVeth::new(&near, &far).build()).execute().await?;
        let far_idx = link_index(&h, &far).await?;
        h.link().set(LinkUnspec::new_with_index(far_idx).setns_by_fd(fd).build()).execute().await?;
        let near_idx = link_index(&h, &near).await?;
        set_up(&h, near_idx).await?;
        add_addr(&h, near_idx, gw4.into(), 32).await?;
        add_addr(&h, near_idx, gw6.into(), 128).await?;
        host_routes_dev(&h, near_idx, b4, b6).await?;
    }
    for (j, p4, p6) in peers {
        route4_via(&h, backend_ipv4(j, 0), 24, p4).await?;
        route6_via(&h, backend_ipv6(j, 0), 64, p6).await?;
    }
    Ok(())
}

/// A backend: `pb<k>` renamed `eth0`, its addresses in the node's subnet, and
/// a default route via the node.
async fn configure_backend(h: Handle, from: String, node: usize, v4: Ipv4Addr, v6: Ipv6Addr) -> NlResult<()> {
    let idx = bring_up_as_eth0(&h, &from).await?;
    add_addr(&h, idx, v4.into(), 24).await?;
    add_addr(&h, idx, v6.into(), 64).await?;
    let (gw4, gw6) = backend_gateway(node);
    route4_via(&h, Ipv4Addr::UNSPECIFIED, 0, gw4).await?;
    route6_via(&h, Ipv6Addr::UNSPECIFIED, 0, gw6).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_like_their_names() {
        assert_eq!(segment_ipv4(11), Ipv4Addr::new(10, 77, 0, 11));
        assert_eq!(segment_ipv6(11).to_string(), "fd77::11");
        assert_eq!(segment_ipv6(2).to_string(), "fd77::2");
        assert_eq!(backend_ipv4(2, 1), Ipv4Addr::new(10, 81, 2, 10));
        assert_eq!(backend_ipv6(2, 1).to_string(), "fd81:2::10");
        assert_eq!(backend_ipv6(3, 0).to_string(), "fd81:3::");
        assert_eq!(backend_gateway(1).1.to_string(), "fd81:1::1");
    }
}
