//! The lab: everything Axon's end-to-end tests need to put real traffic through
//! the socket-LB without touching the machine's own network — network
//! namespaces joined by veths on a bridge ([`Lab`]), a child cgroup per test
//! ([`Cgroup`]), backend servers that answer with their own name
//! ([`BackendServer`]), a client process run inside the test's netns *and*
//! cgroup ([`client`]), and an `axon-agent` with its own bpffs dir, socket and
//! state dir ([`Agent`]). For north-south tests, [`MultiNodeLab`] builds a
//! client, nodes and backends behind them, with one agent per node running
//! inside the node's namespace ([`Cluster`]). Every piece is a Drop guard, and
//! every name is unique, so tests run in parallel and clean up even when they
//! panic.

pub mod agent;
pub mod backend;
pub mod bins;
pub mod cgroup;
pub mod check;
pub mod client;
pub mod error;
pub mod etcd;
pub mod kube;
pub mod kube_standin;
pub mod mesh;
pub mod multinode;
pub mod netns;
pub mod nic;
pub mod probe;
pub mod sweep;
pub mod topology;
pub mod xdp;

pub use agent::{Agent, AgentOptions, CmdOutput, LbAlgorithm, LbMode, XdpSetting};
pub use backend::{BackendServer, ReplyStyle};
pub use cgroup::Cgroup;
pub use client::{ClientRun, Place, Probe, RunningClient, UdpMode};
pub use error::{LabError, Result};
pub use multinode::{Cluster, LabBackend, LabNode, MultiNodeLab, MultiNodeOptions};
pub use netns::Netns;
pub use probe::{Attempt, ClientEnv, HttpAnswer, LoadSummary};
pub use topology::{Lab, Node};
pub use xdp::XdpPass;
