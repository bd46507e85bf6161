//! The Kubernetes source: the connection to the API server ([`client`]), the
//! translation of Services and their endpoints into Axon services with
//! kube-proxy's semantics ([`translate`]), and the watchers that keep the
//! service manager in step with the cluster ([`source`]).

pub mod client;
pub mod source;
pub mod translate;

pub use client::{connect, K8sError};
