//! Axon's kernel ABI: the BPF objects built from `bpf/*.c`, the Rust mirror of
//! every map layout in `bpf/lib/maps.h`, and read access to the pinned maps.
//! Knows nothing of the agent, Kubernetes or HTTP.

pub mod maps;
pub mod objects;
pub mod pinned;
