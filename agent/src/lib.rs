//! axon-agent: sources → desired state → reconcilers → pinned BPF maps.
//!
//! - [`service`]: the desired services and the LB reconciler,
//! - [`store`]: the embedded crash-safe store of the standalone mode,
//! - [`datapath`]: BPF objects, pins, links and typed map access,
//! - [`api`]: the REST API on the unix socket,
//! - [`k8s`]: the Kubernetes source (Services, Endpoints/EndpointSlices, Nodes),
//! - [`identity`]: security identities (embedded, CRD or etcd allocation) and the ipcache,
//! - [`kvstore`]: the etcd client,
//! - [`config`]: flags and config file.

pub mod api;
pub mod config;
pub mod datapath;
pub mod health;
pub mod identity;
pub mod k8s;
pub mod kvstore;
pub mod memory;
pub mod mesh;
pub mod service;
pub mod store;
