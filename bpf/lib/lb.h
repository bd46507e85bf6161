/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Load-balancer lookups over the maps in maps.h: frontend -> master slot,
 * master -> a random backend slot -> backend, and the datapath counters.
 *
 * Kept free of any hook-specific context so the socket-LB programs and the
 * future tc/XDP programs select backends the same way.
 */
#ifndef __AXON_LB_H
#define __AXON_LB_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"

/* Outcome of a frontend lookup. */
enum lb_verdict {
	LB_NOT_A_SERVICE = 0, /* no master slot: leave the address alone */
	LB_SELECTED,          /* a backend was chosen */
	LB_NO_BACKEND,        /* a service with nothing to serve it: reject */
};

static __always_inline void axon_metric_inc(__u32 idx)
{
	__u64 *value = bpf_map_lookup_elem(&axon_metrics, &idx);

	/* Per-CPU slot, and these hooks run with migration disabled: a plain
	 * increment cannot race. */
	if (value)
		*value += 1;
}

/* Byte-wise equal IPv6 addresses, compared as words so clang emits no call
 * to memcmp (BPF has none). */
static __always_inline int ipv6_addr_equal(const __u8 a[16], const __u8 b[16])
{
	__u32 x[4], y[4];

	__builtin_memcpy(x, a, 16);
	__builtin_memcpy(y, b, 16);
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3])) == 0;
}

/* The address of a v4-mapped IPv6 address (::ffff:a.b.c.d), or 0 when the
 * address is not v4-mapped. Addresses are in network order. */
static __always_inline int ipv6_v4mapped(const __u32 addr[4], __be32 *v4)
{
	if (addr[0] != 0 || addr[1] != 0 || addr[2] != bpf_htonl(0x0000ffff))
		return 0;
	*v4 = addr[3];
	return 1;
}

/* ---------------------------------------------------------------- IPv4 -- */

static __always_inline void lb4_key_init(struct lb4_key *key, __be32 addr,
					 __be16 dport, __u8 proto)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->address = addr;
	key->dport = dport;
	key->proto = proto;
	key->scope = AXON_SCOPE_EXTERNAL;
}

/* Follows one slot of `key` to its backend; 0 when both exist. */
static __always_inline int lb4_slot_backend(const struct lb4_key *key,
					    struct lb4_backend *out)
{
	const struct lb_service *slot;
	const struct lb4_backend *be;
	__u32 backend_id;

	slot = bpf_map_lookup_elem(&axon_lb4_services, key);
	if (!slot)
		return -ENOENT;
	backend_id = slot->backend_id;
	be = bpf_map_lookup_elem(&axon_lb4_backends, &backend_id);
	if (!be)
		return -ENOENT;
	*out = *be;
	return 0;
}

/*
 * Picks a backend for (addr, dport, proto). On LB_SELECTED, `be` holds the
 * backend and `rev_nat_index` the service id. A slot that vanished under us
 * (the agent shrinking the service between our master and slot lookups) is
 * retried once with slot 1, which exists as long as the service has any.
 */
static __always_inline enum lb_verdict
lb4_select_backend(__be32 addr, __be16 dport, __u8 proto,
		   struct lb4_backend *be, __u32 *rev_nat_index)
{
	const struct lb_service *master;
	struct lb4_key key;
	__u16 count;

	lb4_key_init(&key, addr, dport, proto);
	master = bpf_map_lookup_elem(&axon_lb4_services, &key);
	if (!master)
		return LB_NOT_A_SERVICE;
	count = master->count;
	*rev_nat_index = master->rev_nat_index;
	if (count == 0) {
		axon_metric_inc(AXON_METRIC_SOCK_NO_BACKEND);
		return LB_NO_BACKEND;
	}

	key.backend_slot = (bpf_get_prandom_u32() % count) + 1;
	if (lb4_slot_backend(&key, be) == 0)
		return LB_SELECTED;

	axon_metric_inc(AXON_METRIC_SOCK_MISSING_SLOT);
	key.backend_slot = 1;
	if (lb4_slot_backend(&key, be) == 0)
		return LB_SELECTED;
	return LB_NO_BACKEND;
}

/* True when the reverse-NAT entry of `rev_nat_index` still names
 * (addr, port): a service deleted or re-created under another id must not
 * keep rewriting replies for sockets that predate it. */
static __always_inline int lb4_rev_nat_matches(__u32 rev_nat_index,
					       __be32 addr, __be16 port)
{
	const struct lb4_reverse_nat *rn;

	rn = bpf_map_lookup_elem(&axon_lb4_reverse_nat, &rev_nat_index);
	return rn && rn->address == addr && rn->port == port;
}

/* ---------------------------------------------------------------- IPv6 -- */

static __always_inline void lb6_key_init(struct lb6_key *key,
					 const __u32 addr[4], __be16 dport,
					 __u8 proto)
{
	__builtin_memset(key, 0, sizeof(*key));
	__builtin_memcpy(key->address, addr, 16);
	key->dport = dport;
	key->proto = proto;
	key->scope = AXON_SCOPE_EXTERNAL;
}

static __always_inline int lb6_slot_backend(const struct lb6_key *key,
					    struct lb6_backend *out)
{
	const struct lb_service *slot;
	const struct lb6_backend *be;
	__u32 backend_id;

	slot = bpf_map_lookup_elem(&axon_lb6_services, key);
	if (!slot)
		return -ENOENT;
	backend_id = slot->backend_id;
	be = bpf_map_lookup_elem(&axon_lb6_backends, &backend_id);
	if (!be)
		return -ENOENT;
	*out = *be;
	return 0;
}

/* IPv6 twin of lb4_select_backend. */
static __always_inline enum lb_verdict
lb6_select_backend(const __u32 addr[4], __be16 dport, __u8 proto,
		   struct lb6_backend *be, __u32 *rev_nat_index)
{
	const struct lb_service *master;
	struct lb6_key key;
	__u16 count;

	lb6_key_init(&key, addr, dport, proto);
	master = bpf_map_lookup_elem(&axon_lb6_services, &key);
	if (!master)
		return LB_NOT_A_SERVICE;
	count = master->count;
	*rev_nat_index = master->rev_nat_index;
	if (count == 0) {
		axon_metric_inc(AXON_METRIC_SOCK_NO_BACKEND);
		return LB_NO_BACKEND;
	}

	key.backend_slot = (bpf_get_prandom_u32() % count) + 1;
	if (lb6_slot_backend(&key, be) == 0)
		return LB_SELECTED;

	axon_metric_inc(AXON_METRIC_SOCK_MISSING_SLOT);
	key.backend_slot = 1;
	if (lb6_slot_backend(&key, be) == 0)
		return LB_SELECTED;
	return LB_NO_BACKEND;
}

static __always_inline int lb6_rev_nat_matches(__u32 rev_nat_index,
					       const __u8 addr[16], __be16 port)
{
	const struct lb6_reverse_nat *rn;

	rn = bpf_map_lookup_elem(&axon_lb6_reverse_nat, &rev_nat_index);
	return rn && ipv6_addr_equal(rn->address, addr) && rn->port == port;
}

#endif /* __AXON_LB_H */
