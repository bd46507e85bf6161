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
	AXON_METRIC_MAX,
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

#endif /* __AXON_MAPS_H */
