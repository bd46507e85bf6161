/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Every map Axon's programs share, and the layout of every key and value.
 *
 * This file is the kernel ABI between the datapath and the agent: each struct
 * here has a #[repr(C)] mirror in bpf/src/maps.rs, and bpf/tests/layout.rs
 * proves from this object's BTF that sizes and field offsets agree. Padding is
 * always explicit so that a zeroed Rust value hashes like a zeroed C value.
 *
 * Maps are pinned by name under the agent's bpffs root, so they outlive the
 * agent and a restarted agent picks up what the kernel is serving. The
 * max_entries below are only defaults: the loader resizes every map from the
 * agent's configuration before creating it.
 */
#ifndef __AXON_MAPS_H
#define __AXON_MAPS_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* Service types, stored in lb_service.svc_type (the master slot). */
#define AXON_SVC_CLUSTER_IP   1
#define AXON_SVC_NODE_PORT    2
#define AXON_SVC_EXTERNAL_IPS 3
#define AXON_SVC_LOAD_BALANCER 4
#define AXON_SVC_HOST_PORT    5

/* Backend states, stored in lb{4,6}_backend.flags. Only active backends are
 * given slots today; the field exists so draining needs no layout change. */
#define AXON_BE_ACTIVE      0
#define AXON_BE_TERMINATING 1

/* Frontend key scope: one table serves both, the external scope arrives with
 * externalTrafficPolicy=Local. */
#define AXON_SCOPE_EXTERNAL 0
#define AXON_SCOPE_INTERNAL 1

/*
 * axon_lb4_services: (VIP, port, proto, slot) -> lb_service.
 * Slot 0 is the master entry: count = number of backend slots, rev_nat_index =
 * the service id. Slots 1..count each hold one backend id. The agent writes
 * backends before the slots that name them and the master last, and removes in
 * the opposite order, so a lookup never follows a slot to a missing backend.
 */
struct lb4_key {
	__be32 address;
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

struct lb6_key {
	__u8 address[16];
	__be16 dport;
	__u16 backend_slot;
	__u8 proto;
	__u8 scope;
	__u8 pad[2];
};

/* Value of both service maps. */
struct lb_service {
	__u32 backend_id;    /* slot > 0: the backend; master: 0 */
	__u32 rev_nat_index; /* the service id, key of axon_lb{4,6}_reverse_nat */
	__u16 count;         /* master: number of backend slots */
	__u8 svc_type;       /* AXON_SVC_* */
	__u8 flags;          /* reserved for affinity / traffic policy bits */
};

/* axon_lb4_backends / axon_lb6_backends: backend id (__u32) -> address. */
struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags; /* AXON_BE_* */
};

struct lb6_backend {
	__u8 address[16];
	__be16 port;
	__u8 proto;
	__u8 flags;
};

/* axon_lb4_reverse_nat / axon_lb6_reverse_nat: rev_nat_index (__u32) -> the
 * frontend a reply must appear to come from. */
struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct lb6_reverse_nat {
	__u8 address[16];
	__be16 port;
	__u16 pad;
};

/*
 * axon_lb4_reverse_sk / axon_lb6_reverse_sk (LRU): what connect()/sendmsg()
 * translated for a socket, so getpeername() and recvmsg() can show the VIP.
 * Keyed by socket cookie and the backend the socket was sent to.
 */
struct ipv4_revnat_tuple {
	__u64 cookie;
	__be32 address;
	__be16 port;
	__u16 pad;
};

struct ipv4_revnat_entry {
	__be32 address;
	__be16 port;
	__u16 pad;
	__u32 rev_nat_index;
};

struct ipv6_revnat_tuple {
	__u64 cookie;
	__u8 address[16];
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct ipv6_revnat_entry {
	__u8 address[16];
	__be16 port;
	__u16 pad;
	__u32 rev_nat_index;
};

/* axon_metrics (per-CPU array): datapath counters read by `agentctl status`. */
enum axon_metric {
	AXON_METRIC_SOCK_XLATE_FWD = 0, /* connect/sendmsg translated to a backend */
	AXON_METRIC_SOCK_XLATE_REV,     /* recvmsg/getpeername translated to a VIP */
	AXON_METRIC_SOCK_NO_BACKEND,    /* frontend with no backend: rejected */
	AXON_METRIC_SOCK_MISSING_SLOT,  /* slot or backend vanished under a lookup */
	AXON_METRIC_NP_FWD,             /* north-south: packets translated towards a backend */
	AXON_METRIC_NP_REV,             /* north-south: replies translated back */
	AXON_METRIC_NP_NO_BACKEND,      /* north-south: rejected (ICMP/RST), no backend */
	AXON_METRIC_NP_SRC_DENIED,      /* north-south: dropped by loadBalancerSourceRanges */
	AXON_METRIC_NP_SNAT_FAIL,       /* north-south: no free SNAT port */
	AXON_METRIC_NP_CT_NEW,          /* north-south: connections created */
	AXON_METRIC_NP_FIB_FAIL,        /* north-south: no route/neighbour; passed to the stack */
	AXON_METRIC_XDP_FWD,            /* of NP_FWD+NP_REV: done in XDP */
	AXON_METRIC_BIND_DENIED,        /* bind() to a port a NodePort service owns */
	AXON_METRIC_MAX,
};

/* lb_service.flags of the master slot. */
#define AXON_SVC_F_AFFINITY   (1 << 0) /* ClientIP affinity; master.backend_id = timeout (s) */
#define AXON_SVC_F_TWO_SCOPES (1 << 1) /* an AXON_SCOPE_INTERNAL master exists (eTP/iTP=Local) */
#define AXON_SVC_F_SRC_RANGES (1 << 2) /* loadBalancerSourceRanges: check axon_lb{4,6}_source_range */
#define AXON_SVC_F_DSR        (1 << 3) /* north-south: backend replies directly (else SNAT) */
#define AXON_SVC_F_MAGLEV     (1 << 4) /* north-south: pick from axon_lb_maglev (else random) */
#define AXON_SVC_F_NODEPORT_WILDCARD (1 << 5) /* address 0.0.0.0/:: : every node address */

/* lb{4,6}_backend.flags bit, beside the AXON_BE_* state in the low bits. */
#define AXON_BE_F_LOCAL (1 << 7) /* the backend runs on this node */

/* Conntrack (axon_ct{4,6}_global). One flow has two entries: the
 * SERVICE direction keyed as the client's packet arrives (client -> frontend),
 * and the REPLY direction keyed as the backend's reply arrives (backend ->
 * client, or backend -> SNAT address:port). Both carry the whole translation,
 * so either direction rewrites with one lookup. */
#define AXON_CT_DIR_SERVICE 0
#define AXON_CT_DIR_REPLY   1

/* ct{4,6}_entry.flags */
#define AXON_CT_F_SNAT  (1 << 0) /* source rewritten to nat_addr:nat_port */
#define AXON_CT_F_DSR   (1 << 1) /* backend replies directly; reverse-translated on its node */
#define AXON_CT_F_LOCAL (1 << 2) /* backend behind this node: destination NAT only */
#define AXON_CT_F_DSR_BACKEND (1 << 3) /* this node is the DSR backend's node */

/* ct{4,6}_entry.tcp_state */
#define AXON_CT_TCP_NONE   0 /* UDP */
#define AXON_CT_TCP_SYN    1
#define AXON_CT_TCP_EST    2
#define AXON_CT_TCP_CLOSING 3 /* FIN or RST seen */

struct ct4_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* AXON_CT_DIR_* */
	__u8 pad[2];
};

struct ct6_key {
	__u8 saddr[16];
	__u8 daddr[16];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u8 pad[2];
};

struct ct4_entry {
	__u64 packets;
	__u64 bytes;
	__u32 expires;       /* seconds of CLOCK_MONOTONIC (bpf_ktime_get_ns) */
	__u32 rev_nat_index; /* the service */
	__u32 backend_id;
	__be32 client_addr;
	__be32 frontend_addr; /* what the client sent to (VIP, node address) */
	__be32 backend_addr;
	__be32 nat_addr;      /* AXON_CT_F_SNAT: the address the backend sees */
	__be16 client_port;
	__be16 frontend_port;
	__be16 backend_port;
	__be16 nat_port;
	__u8 flags;     /* AXON_CT_F_* */
	__u8 tcp_state; /* AXON_CT_TCP_* */
	__u8 pad[10];
};

struct ct6_entry {
	__u64 packets;
	__u64 bytes;
	__u32 expires;
	__u32 rev_nat_index;
	__u32 backend_id;
	__u32 pad0;
	__u8 client_addr[16];
	__u8 frontend_addr[16];
	__u8 backend_addr[16];
	__u8 nat_addr[16];
	__be16 client_port;
	__be16 frontend_port;
	__be16 backend_port;
	__be16 nat_port;
	__u8 flags;
	__u8 tcp_state;
	__u8 pad[6];
};

/* axon_lb_maglev: (service, scope, index) -> backend id. The agent computes
 * each Maglev table (size axon_config.maglev_table_size, a prime) and writes
 * only the entries that change. */
struct lb_maglev_key {
	__u32 rev_nat_index;
	__u16 scope; /* AXON_SCOPE_* */
	__u16 pad;
	__u32 index;
};

/* axon_lb_affinity (LRU): (client, service) -> backend, for ClientIP
 * affinity. The client is its address for north-south traffic and the
 * network namespace cookie for socket-LB (no source address exists at
 * connect() time). */
#define AXON_AFFINITY_CLIENT_ADDR  0
#define AXON_AFFINITY_CLIENT_NETNS 1

struct lb_affinity_key {
	__u8 client[16]; /* IPv4 in the first 4 bytes; netns cookie in the first 8 */
	__u32 rev_nat_index;
	__u8 client_kind; /* AXON_AFFINITY_CLIENT_* */
	__u8 pad[3];
};

struct lb_affinity_val {
	__u32 backend_id;
	__u32 last_used; /* seconds of CLOCK_MONOTONIC */
};

/* axon_lb{4,6}_source_range (LPM trie): loadBalancerSourceRanges per service.
 * prefixlen counts the 32 bits of rev_nat_index plus the CIDR's length. */
struct lb4_src_range_key {
	__u32 prefixlen;
	__u32 rev_nat_index;
	__be32 address;
};

struct lb6_src_range_key {
	__u32 prefixlen;
	__u32 rev_nat_index;
	__u8 address[16];
};

/* axon_devices: ifindex -> the node device's addresses, for SNAT source
 * selection and for knowing a destination is this node (NodePort). */
struct axon_device {
	__be32 ipv4;
	__u8 ipv6[16];
	__u8 mac[6];
	__u8 flags; /* AXON_DEV_F_* */
	__u8 pad;
};

#define AXON_DEV_F_XDP (1 << 0) /* the XDP program is attached (tc skips what XDP did) */

/* axon_node_addrs: every address of this node (v4 as ::ffff:a.b.c.d) ->
 * ifindex, so "is the destination this node?" is one lookup. */
struct node_addr_key {
	__u8 address[16];
};

/* axon_config (one-element array): the agent's datapath settings. */
#define AXON_LB_MODE_SNAT   0
#define AXON_LB_MODE_DSR    1
#define AXON_LB_MODE_HYBRID 2

struct axon_config {
	__u32 ct_timeout_syn;         /* seconds, TCP before the handshake completes */
	__u32 ct_timeout_tcp;         /* seconds, established TCP */
	__u32 ct_timeout_close;       /* seconds, after FIN/RST */
	__u32 ct_timeout_udp;         /* seconds */
	__u32 maglev_table_size;      /* a prime */
	__u16 nodeport_min;
	__u16 nodeport_max;
	__u16 snat_port_min;
	__u16 snat_port_max;
	__u8 lb_mode;                 /* AXON_LB_MODE_*, the agent default */
	__u8 pad[3];
};

#define AXON_DEFAULT_SERVICE_ENTRIES 262144
#define AXON_DEFAULT_BACKEND_ENTRIES 65536
#define AXON_DEFAULT_REVNAT_ENTRIES  65536
#define AXON_DEFAULT_SOCK_REVNAT_ENTRIES 262144

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb4_key);
	__type(value, struct lb_service);
	__uint(max_entries, AXON_DEFAULT_SERVICE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb4_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb6_key);
	__type(value, struct lb_service);
	__uint(max_entries, AXON_DEFAULT_SERVICE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb6_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_backend);
	__uint(max_entries, AXON_DEFAULT_BACKEND_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb4_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb6_backend);
	__uint(max_entries, AXON_DEFAULT_BACKEND_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb6_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb4_reverse_nat);
	__uint(max_entries, AXON_DEFAULT_REVNAT_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb4_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct lb6_reverse_nat);
	__uint(max_entries, AXON_DEFAULT_REVNAT_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb6_reverse_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv4_revnat_tuple);
	__type(value, struct ipv4_revnat_entry);
	__uint(max_entries, AXON_DEFAULT_SOCK_REVNAT_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb4_reverse_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ipv6_revnat_tuple);
	__type(value, struct ipv6_revnat_entry);
	__uint(max_entries, AXON_DEFAULT_SOCK_REVNAT_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb6_reverse_sk SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, AXON_METRIC_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_metrics SEC(".maps");

#define AXON_DEFAULT_CT_ENTRIES      262144
#define AXON_DEFAULT_MAGLEV_ENTRIES  1048576
#define AXON_DEFAULT_AFFINITY_ENTRIES 65536
#define AXON_DEFAULT_SRC_RANGE_ENTRIES 16384
#define AXON_DEFAULT_DEVICE_ENTRIES  64
#define AXON_DEFAULT_NODE_ADDR_ENTRIES 256

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct4_key);
	__type(value, struct ct4_entry);
	__uint(max_entries, AXON_DEFAULT_CT_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_ct4_global SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct ct6_key);
	__type(value, struct ct6_entry);
	__uint(max_entries, AXON_DEFAULT_CT_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_ct6_global SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct lb_maglev_key);
	__type(value, __u32);
	__uint(max_entries, AXON_DEFAULT_MAGLEV_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity_val);
	__uint(max_entries, AXON_DEFAULT_AFFINITY_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lb4_src_range_key);
	__type(value, __u8);
	__uint(max_entries, AXON_DEFAULT_SRC_RANGE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb4_source_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lb6_src_range_key);
	__type(value, __u8);
	__uint(max_entries, AXON_DEFAULT_SRC_RANGE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_lb6_source_range SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct axon_device);
	__uint(max_entries, AXON_DEFAULT_DEVICE_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_devices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct node_addr_key);
	__type(value, __u32);
	__uint(max_entries, AXON_DEFAULT_NODE_ADDR_ENTRIES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_node_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct axon_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_config SEC(".maps");

/*
 * axon_ipcache: IP (or CIDR) -> security identity, both families in one LPM
 * trie. The prefix length counts the family byte and its padding (32 bits)
 * plus the address bits, so a /32 IPv4 entry has prefixlen 64 and a /128 IPv6
 * entry 160. Written by the agent's identity reconciler (one entry per pod
 * IP); read by policy enforcement in a later issue.
 */
#define AXON_IPCACHE_FAMILY_V4 4
#define AXON_IPCACHE_FAMILY_V6 6
#define AXON_IPCACHE_F_LOCAL   1 /* the endpoint runs on this node */
#define AXON_DEFAULT_IPCACHE_ENTRIES 512000

struct ipcache_key {
	__u32 prefixlen;
	__u8 family;   /* AXON_IPCACHE_FAMILY_* */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 in the first 4 bytes, the rest zero */
};

struct ipcache_entry {
	__u32 identity;
	__u8 flags;    /* AXON_IPCACHE_F_* */
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ipcache_key);
	__type(value, struct ipcache_entry);
	__uint(max_entries, AXON_DEFAULT_IPCACHE_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} axon_ipcache SEC(".maps");

#endif /* __AXON_MAPS_H */
