//! The lab topology: a hub namespace holding a bridge, a client namespace and
//! N backend namespaces, each joined to the bridge by a veth, all on one
//! segment (`10.77.0.0/24`, `fd77::/64`). Nothing has a default route, so an
//! address outside the lab — a VIP the socket-LB failed to translate — fails
//! locally with ENETUNREACH instead of leaving.
//!
//! ```text
//!   client ns (eth0 10.77.0.2)    backend-N ns (eth0 10.77.0.1N)
//!          |                             |
//!   hub ns:  v0 ──────── br0 ───────── vN
//! ```

use crate::agent::{Agent, AgentOptions};
use crate::backend::BackendServer;
use crate::bins;
use crate::cgroup::Cgroup;
use crate::error::Result;
use crate::netns::Netns;
use crate::sweep;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;

/// The lab segment's IPv4 /24.
pub const SUBNET_V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 0);
/// The lab segment's IPv6 /64.
pub const SUBNET_V6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 0);
const BRIDGE: &str = "br0";
const NODE_IF: &str = "eth0";

/// One namespace on the lab segment: the client or a backend.
#[derive(Debug)]
pub struct Node {
    name: String,
    netns: Netns,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl Node {
    pub(crate) fn new_raw(name: &str, netns: Netns, ipv4: Ipv4Addr, ipv6: Ipv6Addr) -> Node {
        Node { name: name.to_string(), netns, ipv4, ipv6 }
    }

    /// `client`, `backend-1`, `backend-2`, ... — also what its servers answer.
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

    /// `ipv4:port` or `[ipv6]:port`.
    pub fn addr(&self, v6: bool, port: u16) -> SocketAddr {
        let ip: IpAddr = if v6 { self.ipv6.into() } else { self.ipv4.into() };
        SocketAddr::new(ip, port)
    }

    /// Starts a server answering with this node's name on `port` (TCP and UDP, v4 and v6).
    pub fn serve(&self, port: u16) -> Result<BackendServer> {
        BackendServer::start(&self.netns, &self.name, port)
    }

    /// Like [`Node::serve`], answering `"<name> from <peer>"`.
    pub fn serve_reporting(&self, port: u16) -> Result<BackendServer> {
        BackendServer::start_reporting(&self.netns, &self.name, port)
    }
}

/// A whole lab; dropping it removes every namespace, veth and the cgroup.
#[derive(Debug)]
pub struct Lab {
    id: String,
    client: Node,
    backends: Vec<Node>,
    // Declared last: dropped after the nodes whose veths hang off its bridge.
    hub: Netns,
    cgroup: Cgroup,
}

impl Lab {
    /// Builds the topology with `backends` backend namespaces, and a child
    /// cgroup named after the lab.
    pub fn new(label: &str, backends: usize) -> Result<Lab> {
        sweep::once();
        let id = format!("{}-{}", bins::unique_id(), bins::sanitize_label(label));
        let hub = Netns::new(&format!("{id}/hub"))?;
        let client = make_node(&id, "client", 2)?;
        let backends = (1..=backends)
            .map(|i| make_node(&id, &format!("backend-{i}"), 10 + i as u8))
            .collect::<Result<Vec<_>>>()?;
        let cgroup = Cgroup::create(&id)?;
        let lab = Lab { id, client, backends, hub, cgroup };
        lab.wire()?;
        Ok(lab)
    }

    /// Unique id of this lab (`axt-<pid>-<seq>-<label>`): the cgroup's name,
    /// and the stem of the agent's directories.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn client(&self) -> &Node {
        &self.client
    }

    pub fn backends(&self) -> &[Node] {
        &self.backends
    }

    /// Backend `i`, 1-based like its name (`backend(1)` is `backend-1`).
    pub fn backend(&self, i: usize) -> &Node {
        &self.backends[i - 1]
    }

    /// `ip:port` of every backend (IPv6 when `v6`).
    pub fn backend_addrs(&self, v6: bool, port: u16) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr(v6, port)).collect()
    }

    /// `backend-1`, `backend-2`, ...
    pub fn backend_names(&self) -> Vec<&str> {
        self.backends.iter().map(Node::name).collect()
    }

    pub fn hub(&self) -> &Netns {
        &self.hub
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Starts a server on `port` in every backend.
    pub fn serve_all(&self, port: u16) -> Result<Vec<BackendServer>> {
        self.backends.iter().map(|b| b.serve(port)).collect()
    }

    /// An agent for this lab, attached to the lab's cgroup.
    pub fn start_agent(&self) -> Result<Agent> {
        self.start_agent_with(AgentOptions::default())
    }

    /// The agent runs in the test's own network namespace: it is told to
    /// leave every network device alone (`--devices none`, when it has the
    /// flag), so only the lab's cgroup sees its programs.
    pub fn start_agent_with(&self, mut opts: AgentOptions) -> Result<Agent> {
        if opts.devices.is_empty() && bins::agent_has_flag("--devices")? {
            opts.devices.push("none".into());
        }
        Agent::start(&self.id, self.cgroup.path(), opts)
    }

    /// Bridge and veths in the hub, then each node's side.
    fn wire(&self) -> Result<()> {
        let nodes: Vec<&Node> = std::iter::once(&self.client).chain(&self.backends).collect();
        let targets: Vec<(usize, RawFd)> = nodes.iter().enumerate().map(|(i, n)| (i, n.netns.raw_fd())).collect();
        self.hub.netlink("wiring the hub", |h| wire_hub(h, targets))?;
        for (i, node) in nodes.iter().enumerate() {
            let (v4, v6) = (node.ipv4, node.ipv6);
            node.netns.netlink("configuring eth0", move |h| configure_node(h, i, v4, v6))?;
        }
        Ok(())
    }
}

fn make_node(id: &str, name: &str, host: u8) -> Result<Node> {
    let o = SUBNET_V4.octets();
    Ok(Node {
        name: name.to_string(),
        netns: Netns::new(&format!("{id}/{name}"))?,
        ipv4: Ipv4Addr::new(o[0], o[1], o[2], host),
        ipv6: Ipv6Addr::from(u128::from(SUBNET_V6) | u128::from(host)),
    })
}

pub(crate) async fn link_index(h: &Handle, name: &str) -> std::result::Result<u32, rtnetlink::Error> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await? {
        Some(msg) => Ok(msg.header.index),
        None => Err(rtnetlink::Error::RequestFailed),
    }
}

pub(crate) async fn set_up(h: &Handle, index: u32) -> std::result::Result<(), rtnetlink::Error> {
    h.link().set(LinkUnspec::new_with_index(index).up().build()).execute().await
}

/// In the hub: `lo` up, bridge `br0`, and per node a veth `v<i>` on the bridge
/// whose peer `p<i>` moves into the node's namespace.
async fn wire_hub(h: Handle, targets: Vec<(usize, RawFd)>) -> std::result::Result<(), rtnetlink::Error> {
    set_up(&h, link_index(&h, "lo").await?).await?;
    // No multicast snooping: IPv6 neighbour discovery must just flood.
    h.link().add(LinkBridge::new(BRIDGE).mcast_snooping(false).build()).execute().await?;
    let bridge = link_index(&h, BRIDGE).await?;
    for (i, fd) in targets {
        let (hub_end, node_end) = (format!("v{i}"), format!("p{i}"));
        h.link().add(LinkVeth::new(&hub_end, &node_end).build()).execute().await?;
        let peer = link_index(&h, &node_end).await?;
        h.link().set(LinkUnspec::new_with_index(peer).setns_by_fd(fd).build()).execute().await?;
        let port = link_index(&h, &hub_end).await?;
        h.link().set(LinkUnspec::new_with_index(port).controller(bridge).up().build()).execute().await?;
    }
    Ok(())
}

/// In a node: `lo` up, `p<i>` renamed `eth0`, up, with both addresses (the
/// IPv6 one without DAD, so it is usable at once).
async fn configure_node(h: Handle, i: usize, v4: Ipv4Addr, v6: Ipv6Addr) -> std::result::Result<(), rtnetlink::Error> {
    set_up(&h, link_index(&h, "lo").await?).await?;
    let idx = link_index(&h, &format!("p{i}")).await?;
    h.link().set(LinkUnspec::new_with_index(idx).name(NODE_IF.to_string()).build()).execute().await?;
    set_up(&h, idx).await?;
    h.address().add(idx, IpAddr::V4(v4), 24).execute().await?;
    let mut add6 = h.address().add(idx, IpAddr::V6(v6), 64);
    let msg = add6.message_mut();
    msg.header.flags |= AddressHeaderFlags::Nodad;
    msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    add6.execute().await
}
