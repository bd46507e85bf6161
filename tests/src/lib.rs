//! The lab: everything Axon's end-to-end tests need to put real traffic through
//! the socket-LB without touching the machine's own network — network
//! namespaces joined by veths on a bridge ([`Lab`]), a child cgroup per test
//! ([`Cgroup`]), backend servers that answer with their own name
//! ([`BackendServer`]), a client process run inside the test's netns *and*
//! cgroup ([`client`]), and an `axon-agent` with its own bpffs dir, socket and
//! state dir ([`Agent`]). Every piece is a Drop guard, and every name is unique,
//! so tests run in parallel and clean up even when they panic.

pub mod agent;
pub mod backend;
pub mod bins;
pub mod cgroup;
pub mod check;
pub mod client;
pub mod error;
pub mod netns;
pub mod probe;
pub mod sweep;
pub mod topology;

pub use agent::{Agent, AgentOptions, CmdOutput};
pub use backend::BackendServer;
pub use cgroup::Cgroup;
pub use client::{ClientRun, RunningClient, UdpMode};
pub use error::{LabError, Result};
pub use netns::Netns;
pub use probe::{Attempt, ClientEnv, LoadSummary};
pub use topology::{Lab, Node};
