//! The Kubernetes source: the connection to the API server ([`client`]).

pub mod client;

pub use client::{connect, K8sError};
