//! The BPF objects `build.rs` compiles from `bpf/*.c`, embedded in the binary
//! (8-byte aligned, as the ELF parser needs) so the agent ships as one file.

/// `bpf/sock_lb.c`: the cgroup sock_addr socket-LB programs and every LB map.
pub static SOCK_LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb.o"));

/// Function names of the programs in [`SOCK_LB`], with their attach point
/// (ELF section), in a stable order.
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
