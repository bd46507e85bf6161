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

/// Kubernetes service type of a frontend. Only ClusterIP has a datapath so
/// far; the other types arrive with north-south load balancing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum ServiceType {
    #[default]
    ClusterIP,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
        }
    }

    /// The `AXON_SVC_*` value the master slot carries.
    pub fn datapath_value(self) -> u8 {
        match self {
            ServiceType::ClusterIP => 1,
        }
    }

    pub fn from_datapath_value(v: u8) -> Option<Self> {
        match v {
            1 => Some(ServiceType::ClusterIP),
            _ => None,
        }
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
        match s.to_ascii_lowercase().as_str() {
            "clusterip" => Ok(ServiceType::ClusterIP),
            "nodeport" | "loadbalancer" | "externalips" | "hostport" => Err(format!(
                "service type {s:?} needs the north-south datapath, which this agent does not have yet; only ClusterIP is served"
            )),
            _ => Err(format!("unknown service type {s:?} (expected ClusterIP)")),
        }
    }
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
}

impl BackendState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Active => "active",
        }
    }
}

/// One backend of a service. Its protocol is the frontend's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub state: BackendState,
}

impl Backend {
    pub fn new(address: IpAddr, port: u16) -> Self {
        Self { address, port, state: BackendState::Active }
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
}

impl Service {
    pub fn from_spec(id: u32, spec: ServiceSpec) -> Self {
        Self { id, name: spec.name, frontend: spec.frontend, backends: spec.backends, svc_type: spec.svc_type }
    }

    pub fn to_spec(&self) -> ServiceSpec {
        ServiceSpec {
            id: Some(self.id),
            name: self.name.clone(),
            frontend: self.frontend,
            backends: self.backends.clone(),
            svc_type: self.svc_type,
        }
    }

    /// The L4 address of backend `b`, with the service's protocol.
    pub fn backend_addr(&self, b: &Backend) -> L4Addr {
        L4Addr::new(b.address, b.port, self.frontend.protocol)
    }
}
