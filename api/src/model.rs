//! The service model as it crosses the API: a frontend (VIP, port, protocol),
//! its backends, and its type. Typed: an instance of these is always valid
//! apart from checks that need the agent's state (duplicates, limits).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// L4 protocol of a frontend; its backends share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub enum Protocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// The IANA protocol number the datapath keys on.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            _ => Err(format!("unknown protocol {s:?} (expected TCP or UDP)")),
        }
    }
}

/// Kubernetes service type of a frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalIPs,
    HostPort,
}

impl ServiceType {
    pub const ALL: [ServiceType; 5] = [
        ServiceType::ClusterIP,
        ServiceType::NodePort,
        ServiceType::LoadBalancer,
        ServiceType::ExternalIPs,
        ServiceType::HostPort,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalIPs => "ExternalIPs",
            ServiceType::HostPort => "HostPort",
        }
    }

    /// The `AXON_SVC_*` value the master slot carries.
    pub fn datapath_value(self) -> u8 {
        match self {
            ServiceType::ClusterIP => 1,
            ServiceType::NodePort => 2,
            ServiceType::ExternalIPs => 3,
            ServiceType::LoadBalancer => 4,
            ServiceType::HostPort => 5,
        }
    }

    pub fn from_datapath_value(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.datapath_value() == v)
    }

    /// Reached from outside the node (tc/XDP on node devices), not only by
    /// local sockets.
    pub fn is_north_south(self) -> bool {
        !matches!(self, ServiceType::ClusterIP)
    }

    /// Whose frontend may be the wildcard address (every node address).
    pub fn allows_wildcard(self) -> bool {
        matches!(self, ServiceType::NodePort | ServiceType::HostPort)
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(s)).ok_or_else(|| {
            format!("unknown service type {s:?} (expected ClusterIP, NodePort, LoadBalancer, ExternalIPs or HostPort)")
        })
    }
}

/// How north-south traffic reaches a backend on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbMode {
    /// The node rewrites the source to itself; replies come back through it.
    Snat,
    /// The backend sees the client and replies to it directly.
    Dsr,
    /// DSR for TCP, SNAT for UDP.
    Hybrid,
}

impl LbMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LbMode::Snat => "snat",
            LbMode::Dsr => "dsr",
            LbMode::Hybrid => "hybrid",
        }
    }

    /// Whether a frontend of `protocol` is served with DSR in this mode.
    pub fn uses_dsr(self, protocol: Protocol) -> bool {
        match self {
            LbMode::Snat => false,
            LbMode::Dsr => true,
            LbMode::Hybrid => protocol == Protocol::Tcp,
        }
    }
}

impl FromStr for LbMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "snat" => Ok(LbMode::Snat),
            "dsr" => Ok(LbMode::Dsr),
            "hybrid" => Ok(LbMode::Hybrid),
            _ => Err(format!("unknown load-balancing mode {s:?} (expected snat, dsr or hybrid)")),
        }
    }
}

/// How north-south traffic picks a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LbAlgorithm {
    Random,
    /// Consistent hashing of the 5-tuple: a flow keeps its backend when
    /// other backends come and go.
    Maglev,
}

impl LbAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            LbAlgorithm::Random => "random",
            LbAlgorithm::Maglev => "maglev",
        }
    }
}

impl FromStr for LbAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "random" => Ok(LbAlgorithm::Random),
            "maglev" => Ok(LbAlgorithm::Maglev),
            _ => Err(format!("unknown load-balancing algorithm {s:?} (expected random or maglev)")),
        }
    }
}

/// externalTrafficPolicy / internalTrafficPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

impl TrafficPolicy {
    pub fn is_cluster(&self) -> bool {
        *self == TrafficPolicy::Cluster
    }
}

impl FromStr for TrafficPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cluster" => Ok(TrafficPolicy::Cluster),
            "local" => Ok(TrafficPolicy::Local),
            _ => Err(format!("unknown traffic policy {s:?} (expected Cluster or Local)")),
        }
    }
}

/// sessionAffinity: ClientIP, with its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionAffinity {
    #[serde(rename = "timeoutSeconds")]
    pub timeout_seconds: u32,
}

impl SessionAffinity {
    /// Kubernetes' default ClientIP timeout (3 hours).
    pub const DEFAULT_TIMEOUT_SECONDS: u32 = 10_800;
}

/// An IPv4 or IPv6 prefix (`10.0.0.0/8`), host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix_len as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(*ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix_len as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(*ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (ADDRESS/PREFIX)"))?;
        let address: IpAddr = addr.parse().map_err(|_| format!("invalid address {addr:?} in CIDR {s:?}"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("invalid prefix length {len:?} in CIDR {s:?} (0-{max})"))?;
        let cidr = Cidr { address, prefix_len };
        let network = match address {
            IpAddr::V4(a) => {
                IpAddr::V4((u32::from(a) & u32::MAX.checked_shl(32 - prefix_len as u32).unwrap_or(0)).into())
            }
            IpAddr::V6(a) => {
                IpAddr::V6((u128::from(a) & u128::MAX.checked_shl(128 - prefix_len as u32).unwrap_or(0)).into())
            }
        };
        if network != address {
            return Err(format!("CIDR {s:?} has host bits set (did you mean {network}/{prefix_len}?)"));
        }
        Ok(cidr)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Per-service load-balancing options; all default to the agent's settings
/// or Kubernetes' defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceOptions {
    /// snat | dsr | hybrid; absent: the agent's `--lb-mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LbMode>,
    /// random | maglev; absent: the agent's `--lb-algorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<LbAlgorithm>,
    /// ClientIP affinity; absent: none.
    #[serde(rename = "sessionAffinity", default, skip_serializing_if = "Option::is_none")]
    pub session_affinity: Option<SessionAffinity>,
    #[serde(rename = "externalTrafficPolicy", default, skip_serializing_if = "TrafficPolicy::is_cluster")]
    pub external_traffic_policy: TrafficPolicy,
    #[serde(rename = "internalTrafficPolicy", default, skip_serializing_if = "TrafficPolicy::is_cluster")]
    pub internal_traffic_policy: TrafficPolicy,
    /// Only these sources may use a LoadBalancer frontend.
    #[serde(rename = "loadBalancerSourceRanges", default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<Cidr>,
    /// With externalTrafficPolicy=Local: where kube-proxy-style health checks ask for the local endpoint count.
    #[serde(rename = "healthCheckNodePort", default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
}

/// An address, port and protocol: a frontend, or a backend of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct L4Addr {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl L4Addr {
    pub fn new(address: IpAddr, port: u16, protocol: Protocol) -> Self {
        Self { address, port, protocol }
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

impl fmt::Display for L4Addr {
    /// `10.96.0.10:80/TCP`, `[fd00::10]:80/UDP` — Cilium's shape.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.socket_addr(), self.protocol)
    }
}

/// Whether a backend takes new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendState {
    #[default]
    Active,
    /// Going away (a terminating Kubernetes endpoint): no new connections
    /// pick it, connections already on it keep working until they end.
    Terminating,
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Terminating => "terminating",
        }
    }

    /// Whether new connections may pick it.
    pub fn takes_new_connections(self) -> bool {
        self == BackendState::Active
    }
}

/// One backend of a service. Its protocol is the frontend's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub state: BackendState,
    /// The node it runs on; a backend is local when this is the agent's
    /// `--node-name`. Absent: not known to be local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Backend {
    pub fn new(address: IpAddr, port: u16) -> Self {
        Self { address, port, state: BackendState::Active, node: None }
    }

    pub fn on_node(mut self, node: impl Into<String>) -> Self {
        self.node = Some(node.into());
        self
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

/// A service as a client declares it. `id` absent: the agent allocates one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub frontend: L4Addr,
    pub backends: Vec<Backend>,
    #[serde(rename = "type", default)]
    pub svc_type: ServiceType,
    #[serde(flatten)]
    pub options: ServiceOptions,
}

/// A service as the agent holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub frontend: L4Addr,
    pub backends: Vec<Backend>,
    #[serde(rename = "type")]
    pub svc_type: ServiceType,
    #[serde(flatten)]
    pub options: ServiceOptions,
}

impl Service {
    pub fn from_spec(id: u32, spec: ServiceSpec) -> Self {
        Self {
            id,
            name: spec.name,
            frontend: spec.frontend,
            backends: spec.backends,
            svc_type: spec.svc_type,
            options: spec.options,
        }
    }

    pub fn to_spec(&self) -> ServiceSpec {
        ServiceSpec {
            id: Some(self.id),
            name: self.name.clone(),
            frontend: self.frontend,
            backends: self.backends.clone(),
            svc_type: self.svc_type,
            options: self.options.clone(),
        }
    }

    /// The L4 address of backend `b`, with the service's protocol.
    pub fn backend_addr(&self, b: &Backend) -> L4Addr {
        L4Addr::new(b.address, b.port, self.frontend.protocol)
    }
}
