//! axon-agent: sources → desired state → reconcilers → pinned BPF maps.

pub mod datapath;
