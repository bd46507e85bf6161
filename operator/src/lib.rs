//! axon-operator: the cluster-wide half of Axon. One replica at a time (leader election through a Lease)
//! installs the CRDs, allocates per-node pod CIDRs and garbage-collects unused identities.

pub mod cidr;
pub mod config;
pub mod crds;
pub mod error;
pub mod health;
pub mod identity_gc;
pub mod ipam;
pub mod leader;
pub mod operator;
