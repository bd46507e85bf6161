/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The maps of mesh acceleration (bpf/mesh.c) and the layout of their keys
 * and values. Kept apart from maps.h so that only the mesh object creates
 * them: the socket-LB and NodePort objects never own a sockhash.
 *
 * Every struct has a #[repr(C)] mirror in bpf/src/maps.rs, checked against
 * this object's BTF by bpf/tests/layout.rs. Addresses are 16 bytes; IPv4 is
 * stored v4-mapped (::ffff:a.b.c.d) so one key serves both families.
 */
#ifndef __AXON_MESH_MAPS_H
#define __AXON_MESH_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#define AXON_MESH_MODE_ISTIO   1
#define AXON_MESH_MODE_LINKERD 2

/* mesh_pod.flags */
#define AXON_MESH_POD_BYPASS 0x01 /* put the pod's local socket pairs in the sockhash */

#define AXON_MESH_MAX_PORTS 16

/* axon_mesh_pods: cgroup id of an enabled pod -> how to capture its traffic.
 * Ports are in host order; 0 ends a port list. */
struct mesh_pod {
	__u32 proxy_uid;     /* the sidecar's uid: its own connects are not captured */
	__u16 outbound_port; /* 15001 (istio), 4140 (linkerd) */
	__u16 inbound_port;  /* 15006 (istio), 4143 (linkerd) */
	__u16 exclude_out[AXON_MESH_MAX_PORTS];
	__u16 exclude_in[AXON_MESH_MAX_PORTS]; /* also the proxy's own admin ports */
	__u8 mode;  /* AXON_MESH_MODE_* */
	__u8 flags; /* AXON_MESH_POD_* */
	__u8 pad[6];
};

/* axon_mesh_pod_ips: a pod address -> its cgroup id (inbound capture). */
struct mesh_ip {
	__u8 addr[16];
};

struct mesh_pod_ref {
	__u64 cgroup_id;
};

/* axon_mesh_listeners (LRU): cgroup id of an enabled pod -> which
 * redirects its sidecar can accept, learnt by the bind hooks from the
 * sidecar's own binds of its outbound and inbound ports (AXON_MESH_LISTEN_*).
 * Capture sends a connection to loopback:outbound (outbound) or to the pod's
 * address:inbound (inbound); a sidecar without a listener of that family
 * there (Linkerd's outbound listener is 127.0.0.1:4140 only unless dual-stack
 * is on) would refuse it, so that family is left uncaptured instead, as
 * proxy-init leaves it without ip6tables. Absent: nothing seen (the sidecar
 * started before the pod was enabled): capture as usual. A wildcard IPv6
 * bind counts for IPv4 too (dual-stack, the default). */
#define AXON_MESH_LISTEN_OUT_V4 0x01 /* outbound port on 127.0.0.1 or 0.0.0.0 */
#define AXON_MESH_LISTEN_OUT_V6 0x02 /* outbound port on ::1 or :: */
#define AXON_MESH_LISTEN_IN_V4  0x04 /* inbound port on 0.0.0.0 or a pod address */
#define AXON_MESH_LISTEN_IN_V6  0x08 /* inbound port on :: or a pod address */

struct mesh_listeners {
	__u32 flags; /* AXON_MESH_LISTEN_* */
};

/* axon_mesh_excl_cidrs (LPM): (pod cgroup id, destination) -> 1. The prefix
 * covers pad and cgroup id (96 bits) plus the address prefix. */
struct mesh_cidr_key {
	__u32 prefixlen;
	__u32 pad;
	__u64 cgroup_id;
	__u8 addr[16];
};

/* mesh_orig.flags */
#define AXON_MESH_ORIG_OUTBOUND 0x01 /* captured to the pod's outbound port */
#define AXON_MESH_ORIG_INBOUND  0x02 /* captured to the destination pod's inbound port */
#define AXON_MESH_ORIG_LOCAL    0x04 /* not captured: the proxy forwarding to its own pod */
#define AXON_MESH_ORIG_BYPASS   0x08 /* the pair takes the socket shortcut */
#define AXON_MESH_ORIG_PROXY    0x10 /* the connecting side is the sidecar (its uid) */

/* axon_mesh_orig (LRU): socket cookie of a connect() -> where it was headed.
 * axon_mesh_pairs (LRU): the accepting side's view of that connection ->
 * the same, which is what getsockopt(SO_ORIGINAL_DST) answers. */
struct mesh_orig {
	__u8 addr[16];
	__be16 port;
	__u8 family; /* 4 or 6: the family of the connect() */
	__u8 flags;  /* AXON_MESH_ORIG_* */
	__u32 pad;
};

/* Key of axon_mesh_sockhash and axon_mesh_targets: one socket, seen from itself. netns is the
 * socket's network namespace cookie for loopback pairs (127/8, ::1: the same
 * tuple exists in every pod) and 0 for pod addresses (unique on a node). */
struct mesh_sock_key {
	__u8 local[16];
	__u8 remote[16];
	__u32 local_port;  /* host order */
	__u32 remote_port; /* host order */
	__u64 netns;
};

/* Where an app's socket in the shortcut talks to, seen from the app: the
 * destination it connected to (CLIENT) or the address it accepted on
 * (SERVER). Key of axon_mesh_dst_profiles. */
#define AXON_MESH_ROLE_CLIENT 1
#define AXON_MESH_ROLE_SERVER 2

struct mesh_dst {
	__u8 addr[16];
	__be16 port;
	__u8 role; /* AXON_MESH_ROLE_*; 0 in a flow record: not an app socket */
	__u8 pad;
};

/* axon_mesh_flows (LRU): one socket of the shortcut (its own view) -> for a
 * sender, whether its messages still take the shortcut; for an app socket,
 * also where it talks to. Deleted when the socket closes. A run of small messages with no answer
 * from the peer (a stream of small writes, where the stack's batching beats
 * one redirect per write) turns the shortcut off for that direction, for
 * good: data already redirected sits in the peer's queue, which the peer
 * reads before anything that arrives through the stack, so bytes stay in
 * order. Switching back would not be safe, and is never done. A run ends
 * with an answer (a message the peer redirected to this socket) or a pause:
 * an app peer sends through the stack, out of the program's sight, so a
 * request/response exchange shows as small messages with gaps between them,
 * a stream as small messages back to back. */
struct mesh_flow {
	__u32 streak;        /* small messages sent back to back, unanswered */
	__u32 pass;          /* 1: through the stack from now on */
	__u64 last_send_ns;  /* when the last small message was sent */
	struct mesh_dst app; /* an app's socket: where it talks to (see axon_mesh_dst_profiles) */
	__u32 redirected;    /* messages this socket's program sent to the shortcut */
};

/* axon_mesh_dst_profiles (LRU): an app destination -> what app sockets
 * talking to it were last seen doing (ns, boot clock). An app's socket only
 * sends through the shortcut (see the sockhashes below) when its destination
 * is known for request/response and not since for a small-write stream: a
 * socket cannot leave the shortcut's sender side mid-connection, and a
 * sender writing a small-write stream is slower than plain TCP. So the first
 * connections to a destination are targets only (plain TCP writes, as
 * without the shortcut) and teach the profile: sockops on their RTT samples
 * compares the segments they sent with the answers the sidecar redirected
 * back. Entries older than AXON_MESH_PROFILE_TTL_NS no longer count. */
#define AXON_MESH_PROFILE_TTL_NS (600ULL * 1000000000ULL)
/* Segments an app socket must have sent before its profile is judged. */
#define AXON_MESH_PROFILE_MIN_SEGS 8
/* Unanswered segments that make a small-write stream. */
#define AXON_MESH_PROFILE_STREAM_SEGS 64
/* Segments after which a socket with no verdict stops reporting RTT samples. */
#define AXON_MESH_PROFILE_GIVE_UP_SEGS 1024

struct mesh_dst_profile {
	__u64 rpc_ns;    /* last seen answering one request per segment or so */
	__u64 stream_ns; /* last seen writing unanswered (a stream) */
};

/* axon_mesh_metrics (per-CPU array) indices. */
#define AXON_MESH_M_OUTBOUND     0 /* connects captured to the outbound port */
#define AXON_MESH_M_INBOUND      1 /* connects captured to the inbound port */
#define AXON_MESH_M_EXCLUDED     2 /* connects left alone by an exclusion */
#define AXON_MESH_M_ORIG_DST     3 /* SO_ORIGINAL_DST answered */
#define AXON_MESH_M_SOCK_ADDED   4 /* sockets put in the shortcut (axon_mesh_targets) */
#define AXON_MESH_M_SOCK_FAILED  5 /* sockhash inserts refused */
#define AXON_MESH_M_REDIRECTED   6 /* messages redirected to the peer socket */
#define AXON_MESH_M_PASSED       7 /* messages sent through the stack (no peer) */
#define AXON_MESH_M_BYTES_REDIR  8 /* bytes redirected */
#define AXON_MESH_M_STREAM_PASS  9 /* flows switched to the stack (small-write streams) */
#define AXON_MESH_M_SENDERS     10 /* of those, sockets that send through it (axon_mesh_sockhash) */
#define AXON_MESH_M_APP_PLAIN   11 /* app sockets on plain TCP writes (destination not known for request/response) */
#define AXON_MESH_M_NO_LISTENER 12 /* connects left alone: the sidecar has no listener of that family */
#define AXON_MESH_M_APP_SENDING 13 /* app sockets sending through the shortcut: a request/response destination */
#define AXON_MESH_M_MAX          16

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct mesh_pod);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct mesh_ip);
	__type(value, struct mesh_pod_ref);
	__uint(max_entries, 8192);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct mesh_listeners);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct mesh_cidr_key);
	__type(value, __u8);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_excl_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, __u64);
	__type(value, struct mesh_orig);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mesh_sock_key);
	__type(value, struct mesh_orig);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_pairs SEC(".maps");

/*
 * Two sockhashes, because a socket in a sockhash that carries an sk_msg
 * program pays for it on every write, even when the program sends the write
 * through the stack (tcp_bpf_sendmsg copies it into an sk_msg first: small
 * writes run at about 0.6x of plain TCP), and the program stays with the
 * socket until it leaves every sockhash — which would drop data still queued
 * for it. So a socket only gets the program when its writes are worth
 * redirecting: always the sidecar's sockets (it forwards what it read, in
 * chunks), and an app's socket once its destination is known for
 * request/response (axon_mesh_dst_profiles). Otherwise it is only a target: it
 * sends through the stack like without Axon and receives the sidecar's
 * redirected messages.
 *
 * axon_mesh_sockhash: sockets whose writes mesh_msg redirects (sk_msg attached).
 * axon_mesh_targets:  every socket of the shortcut; where mesh_msg redirects to.
 */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct mesh_sock_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_sockhash SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct mesh_sock_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_targets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mesh_sock_key);
	__type(value, struct mesh_flow);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct mesh_dst);
	__type(value, struct mesh_dst_profile);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_dst_profiles SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, AXON_MESH_M_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_mesh_metrics SEC(".maps");

#endif
