//! The BPF objects `build.rs` compiles from `bpf/*.c`, embedded in the binary
//! (8-byte aligned, as the ELF parser needs) so the agent ships as one file.
//!
//! Every object defines every map of `bpf/lib/maps.h`, pinned by name: load
//! them all with the same pin directory and they share one set of maps.

/// `bpf/sock_lb.c`: the cgroup sock_addr socket-LB programs, the post_bind
/// bind protection, and every LB map.
pub static SOCK_LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb.o"));

/// Function names of the sock_addr programs in [`SOCK_LB`], with their
/// attach point (ELF section), in a stable order.
pub const SOCK_LB_PROGRAMS: &[(&str, &str)] = &[
    ("sock4_connect", "cgroup/connect4"),
    ("sock4_sendmsg", "cgroup/sendmsg4"),
    ("sock4_recvmsg", "cgroup/recvmsg4"),
    ("sock4_getpeername", "cgroup/getpeername4"),
    ("sock6_connect", "cgroup/connect6"),
    ("sock6_sendmsg", "cgroup/sendmsg6"),
    ("sock6_recvmsg", "cgroup/recvmsg6"),
    ("sock6_getpeername", "cgroup/getpeername6"),
];

/// The cgroup sock (`BPF_PROG_TYPE_CGROUP_SOCK`) programs in [`SOCK_LB`]:
/// a bind() to a port a NodePort or HostPort service owns fails with
/// EADDRINUSE. Attach to the same cgroup as [`SOCK_LB_PROGRAMS`] (aya:
/// `CgroupSock`).
pub const SOCK_POST_BIND_PROGRAMS: &[(&str, &str)] =
    &[("sock4_post_bind", "cgroup/post_bind4"), ("sock6_post_bind", "cgroup/post_bind6")];

/// `bpf/nodeport.c`: north-south load balancing in tc on node devices.
pub static NODEPORT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/nodeport.o"));

/// The tc programs in [`NODEPORT`] (aya: `SchedClassifier`; section
/// `classifier`, the name aya 0.14 parses), with the direction each is
/// attached in on every node device.
pub const NODEPORT_PROGRAMS: &[(&str, &str)] =
    &[("nodeport_ingress", "classifier/ingress"), ("nodeport_egress", "classifier/egress")];

/// `bpf/xdp.c`: the XDP entry of north-south load balancing.
pub static XDP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xdp.o"));

/// The XDP program attached to node devices (native or generic mode).
pub const XDP_PROGRAM: &str = "xdp_nodeport";

/// An XDP program that passes everything: native XDP on a veth can only
/// XDP_TX or redirect into a veth whose peer runs an XDP program, so this
/// one goes on those peers.
pub const XDP_PASS_PROGRAM: &str = "xdp_pass";

/// `bpf/mesh.c`: mesh acceleration (sidecar capture, SO_ORIGINAL_DST,
/// sockops + sk_msg bypass). Its maps are its own (`bpf/lib/mesh_maps.h`).
pub static MESH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh.o"));

/// The cgroup programs in [`MESH`]: (function, section).
pub const MESH_CGROUP_PROGRAMS: &[(&str, &str)] = &[
    ("mesh4_connect", "cgroup/connect4"),
    ("mesh6_connect", "cgroup/connect6"),
    ("mesh4_bind", "cgroup/bind4"),
    ("mesh6_bind", "cgroup/bind6"),
    ("mesh_getsockopt", "cgroup/getsockopt"),
    ("mesh_sockops", "sockops"),
];

/// The sk_msg program in [`MESH`], attached to `axon_mesh_sockhash`.
pub const MESH_MSG_PROGRAM: &str = "mesh_msg";
