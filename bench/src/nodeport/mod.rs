//! `axon-bench-nodeport`: NodePort traffic through kube-proxy-style iptables
//! rules (legacy and nft) and through Axon's tc, generic-XDP and native-XDP
//! datapaths (SNAT and DSR), side by side in one run on copies of one lab
//! topology. The binary (`src/bin/axon-bench-nodeport.rs`) parses the
//! command line; these modules do the work.

pub mod agent;
pub mod bpf;
pub mod kubeproxy;
pub mod lab;
pub mod report;
pub mod runner;
pub mod services;
pub mod stats;
pub mod sys;
pub mod topo;
pub mod traffic;
pub mod xdp;
