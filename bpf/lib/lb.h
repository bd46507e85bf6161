/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Load-balancer lookups over the maps in maps.h, shared by the socket-LB
 * programs and the north-south (tc/XDP) programs:
 *
 *  - frontend lookup: (address, port, proto) -> master slot, falling back to
 *    the wildcard (0.0.0.0 / ::) NodePort entry when the address is one of
 *    this node's, and switching to the internal scope when asked and the
 *    service has one (AXON_SVC_F_TWO_SCOPES);
 *  - backend selection: ClientIP affinity first (when the service has it and
 *    the remembered backend is still one of its slots), then Maglev (north-
 *    south, AXON_SVC_F_MAGLEV) or a random slot;
 *  - small shared pieces: counters, config, clock, jhash, address helpers.
 *
 * Nothing here touches a packet or a socket: callers pass what they know.
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

/* A remembered affinity is only honoured if the backend is still one of the
 * service's slots; services up to this many slots are scanned for it, larger
 * ones only need the backend to still exist. */
#define AXON_AFFINITY_SCAN_MAX 64

/* Seed of every flow hash. Fixed, so every node hashes a flow alike and
 * Maglev sends it to the same backend whichever node it reaches. */
#define AXON_HASH_SEED 0x6178306eU

static __always_inline void axon_metric_inc(__u32 idx)
{
	__u64 *value = bpf_map_lookup_elem(&axon_metrics, &idx);

	/* Per-CPU slot, and these hooks run with migration disabled: a plain
	 * increment cannot race. */
	if (value)
		*value += 1;
}

/* The agent's settings; NULL only if the array is missing (never, once
 * loaded), so callers fall back to defaults on NULL and on zero fields. */
static __always_inline const struct axon_config *axon_config_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&axon_config, &zero);
}

/* Seconds of CLOCK_MONOTONIC, the clock of every `expires` and `last_used`. */
static __always_inline __u32 axon_now(void)
{
	return (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
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

static __always_inline int ipv6_addr_is_zero(const __u8 a[16])
{
	__u32 x[4];

	__builtin_memcpy(x, a, 16);
	return (x[0] | x[1] | x[2] | x[3]) == 0;
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

/* ---------------------------------------------------------------- jhash -- */

/* Bob Jenkins' lookup3 final mix (public domain), as the kernel's jhash. */
static __always_inline __u32 rol32(__u32 word, unsigned int shift)
{
	return (word << shift) | (word >> ((-shift) & 31));
}

#define __jhash_mix(a, b, c)                       \
	{                                          \
		a -= c; a ^= rol32(c, 4);  c += b; \
		b -= a; b ^= rol32(a, 6);  a += c; \
		c -= b; c ^= rol32(b, 8);  b += a; \
		a -= c; a ^= rol32(c, 16); c += b; \
		b -= a; b ^= rol32(a, 19); a += c; \
		c -= b; c ^= rol32(b, 4);  b += a; \
	}

#define __jhash_final(a, b, c)              \
	{                                   \
		c ^= b; c -= rol32(b, 14);  \
		a ^= c; a -= rol32(c, 11);  \
		b ^= a; b -= rol32(a, 25);  \
		c ^= b; c -= rol32(b, 16);  \
		a ^= c; a -= rol32(c, 4);   \
		b ^= a; b -= rol32(a, 14);  \
		c ^= b; c -= rol32(b, 24);  \
	}

#define JHASH_INITVAL 0xdeadbeefU

static __always_inline __u32 jhash_3words(__u32 a, __u32 b, __u32 c, __u32 initval)
{
	a += JHASH_INITVAL;
	b += JHASH_INITVAL;
	c += initval;
	__jhash_final(a, b, c);
	return c;
}

/* jhash2 over exactly 9 words: an IPv6 5-tuple (two addresses, ports). */
static __always_inline __u32 jhash_9words(const __u32 k[9], __u32 initval)
{
	__u32 a, b, c;

	a = b = c = JHASH_INITVAL + (9 << 2) + initval;
	a += k[0]; b += k[1]; c += k[2];
	__jhash_mix(a, b, c);
	a += k[3]; b += k[4]; c += k[5];
	__jhash_mix(a, b, c);
	a += k[6]; b += k[7]; c += k[8];
	__jhash_final(a, b, c);
	return c;
}

static __always_inline __u32 lb4_flow_hash(__be32 saddr, __be32 daddr, __be16 sport,
					   __be16 dport, __u8 proto)
{
	return jhash_3words(saddr, daddr, ((__u32)sport << 16) | dport, AXON_HASH_SEED ^ proto);
}

static __always_inline __u32 lb6_flow_hash(const __u32 saddr[4], const __u32 daddr[4],
					   __be16 sport, __be16 dport, __u8 proto)
{
	__u32 k[9];

	__builtin_memcpy(&k[0], saddr, 16);
	__builtin_memcpy(&k[4], daddr, 16);
	k[8] = ((__u32)sport << 16) | dport;
	return jhash_9words(k, AXON_HASH_SEED ^ proto);
}

/* ------------------------------------------------------ node addresses -- */

static __always_inline int node_addr6_is_local(const __u8 addr[16])
{
	struct node_addr_key key;

	__builtin_memcpy(key.address, addr, 16);
	return bpf_map_lookup_elem(&axon_node_addrs, &key) != NULL;
}

/* axon_node_addrs keeps IPv4 addresses v4-mapped. */
static __always_inline int node_addr4_is_local(__be32 addr)
{
	struct node_addr_key key;
	__u32 *w = (__u32 *)key.address;

	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	w[3] = addr;
	return bpf_map_lookup_elem(&axon_node_addrs, &key) != NULL;
}

/* ------------------------------------------------------------ affinity -- */

/*
 * Selection inputs that do not depend on the address family: who the client
 * is for affinity (the caller fills aff.client and aff.client_kind), the
 * flow hash for Maglev, and whether Maglev may be used at all (north-south
 * only).
 */
struct lb_select_args {
	struct lb_affinity_key aff;
	__u32 hash;
	__u8 allow_maglev;
	__u8 pad[3];
};

/* The backend remembered for this client, if used within `timeout` s. */
static __always_inline __u32 lb_affinity_get(const struct lb_affinity_key *key,
					     __u32 timeout, __u32 now)
{
	struct lb_affinity_val *val = bpf_map_lookup_elem(&axon_lb_affinity, key);

	if (!val || (__s32)(now - val->last_used) > (__s32)timeout)
		return 0;
	return val->backend_id;
}

static __always_inline void lb_affinity_put(const struct lb_affinity_key *key,
					    __u32 backend_id, __u32 now)
{
	struct lb_affinity_val val = { .backend_id = backend_id, .last_used = now };

	/* LRU: the insert cannot fail for lack of room, and a failure would
	 * only lose stickiness. */
	bpf_map_update_elem(&axon_lb_affinity, key, &val, BPF_ANY);
}

/* Maglev: the backend of `hash` in the service's table, 0 when the table
 * or the entry is missing (then the caller picks at random). */
static __always_inline __u32 lb_maglev_backend(__u32 rev_nat_index, __u8 scope, __u32 hash)
{
	const struct axon_config *cfg = axon_config_get();
	struct lb_maglev_key key = {};
	__u32 *id;

	if (!cfg || cfg->maglev_table_size == 0)
		return 0;
	key.rev_nat_index = rev_nat_index;
	key.scope = scope;
	key.index = hash % cfg->maglev_table_size;
	id = bpf_map_lookup_elem(&axon_lb_maglev, &key);
	return id ? *id : 0;
}

/* ---------------------------------------------------------------- IPv4 -- */

/*
 * A frontend as found: `key` is the key its slots live under (address 0 for
 * a wildcard NodePort match, scope switched when the internal view is used);
 * the rest is copied from the master slot(s).
 */
struct lb4_frontend {
	struct lb4_key key;
	__u32 rev_nat_index;
	__u32 affinity_timeout; /* seconds, when flags has AXON_SVC_F_AFFINITY */
	__u16 count;            /* slots of the scope in use */
	__u8 svc_type;
	__u8 flags;             /* AXON_SVC_F_* of the external master */
};

static __always_inline void lb4_key_init(struct lb4_key *key, __be32 addr,
					 __be16 dport, __u8 proto)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->address = addr;
	key->dport = dport;
	key->proto = proto;
	key->scope = AXON_SCOPE_EXTERNAL;
}

/*
 * Finds the frontend of (addr, dport, proto) in the external scope, where
 * every lookup starts. A destination that is one of this node's addresses
 * and has no entry of its own falls back to the wildcard NodePort entry.
 */
static __always_inline int lb4_lookup_frontend(__be32 addr, __be16 dport, __u8 proto,
					       struct lb4_frontend *fe)
{
	const struct lb_service *master;

	lb4_key_init(&fe->key, addr, dport, proto);
	master = bpf_map_lookup_elem(&axon_lb4_services, &fe->key);
	if (!master) {
		if (addr == 0 || !node_addr4_is_local(addr))
			return 0;
		fe->key.address = 0;
		master = bpf_map_lookup_elem(&axon_lb4_services, &fe->key);
		if (!master || !(master->flags & AXON_SVC_F_NODEPORT_WILDCARD))
			return 0;
	}
	fe->rev_nat_index = master->rev_nat_index;
	fe->affinity_timeout = master->backend_id;
	fe->count = master->count;
	fe->svc_type = master->svc_type;
	fe->flags = master->flags;
	return 1;
}

/* Switches to the internal scope's slots when the service has one; stays
 * external when the internal master is missing (being written). */
static __always_inline void lb4_use_internal_scope(struct lb4_frontend *fe)
{
	const struct lb_service *master;
	struct lb4_key key;

	if (!(fe->flags & AXON_SVC_F_TWO_SCOPES))
		return;
	key = fe->key;
	key.scope = AXON_SCOPE_INTERNAL;
	master = bpf_map_lookup_elem(&axon_lb4_services, &key);
	if (!master)
		return;
	fe->key.scope = AXON_SCOPE_INTERNAL;
	fe->count = master->count;
}

/* Follows one slot of the frontend to its backend; 0 when both exist. */
static __always_inline int lb4_slot_backend(const struct lb4_frontend *fe, __u16 slot,
					    struct lb4_backend *out, __u32 *backend_id)
{
	const struct lb_service *val;
	const struct lb4_backend *be;
	struct lb4_key key = fe->key;
	__u32 id;

	key.backend_slot = slot;
	val = bpf_map_lookup_elem(&axon_lb4_services, &key);
	if (!val)
		return -ENOENT;
	id = val->backend_id;
	be = bpf_map_lookup_elem(&axon_lb4_backends, &id);
	if (!be)
		return -ENOENT;
	*out = *be;
	*backend_id = id;
	return 0;
}

static __always_inline int lb4_backend_get(__u32 backend_id, struct lb4_backend *out)
{
	const struct lb4_backend *be = bpf_map_lookup_elem(&axon_lb4_backends, &backend_id);

	if (!be)
		return -ENOENT;
	*out = *be;
	return 0;
}

/* Whether `backend_id` is one of the frontend's slots (see
 * AXON_AFFINITY_SCAN_MAX for large services). */
static __always_inline int lb4_has_backend(const struct lb4_frontend *fe, __u32 backend_id)
{
	struct lb4_key key = fe->key;
	const struct lb_service *val;
	__u16 count = fe->count;

	if (count > AXON_AFFINITY_SCAN_MAX)
		return 1;
	for (__u16 slot = 1; slot <= AXON_AFFINITY_SCAN_MAX; slot++) {
		if (slot > count)
			break;
		key.backend_slot = slot;
		val = bpf_map_lookup_elem(&axon_lb4_services, &key);
		if (val && val->backend_id == backend_id)
			return 1;
	}
	return 0;
}

/* A random slot; a slot that vanished under us (the agent shrinking the
 * service between our master and slot lookups) is retried once with slot 1,
 * which exists as long as the service has any. */
static __always_inline int lb4_random_backend(const struct lb4_frontend *fe,
					      struct lb4_backend *be, __u32 *backend_id)
{
	__u16 slot = (bpf_get_prandom_u32() % fe->count) + 1;

	if (lb4_slot_backend(fe, slot, be, backend_id) == 0)
		return 0;
	axon_metric_inc(AXON_METRIC_SOCK_MISSING_SLOT);
	return lb4_slot_backend(fe, 1, be, backend_id);
}

/*
 * Picks a backend of `fe`: the client's affinity if the service has it and
 * the backend is still there, else Maglev (when allowed and the service asks
 * for it), else a random slot. Records the affinity of a new choice.
 */
static __always_inline enum lb_verdict lb4_select(const struct lb4_frontend *fe,
						  struct lb_select_args *args,
						  struct lb4_backend *be, __u32 *backend_id)
{
	__u32 now = 0, id;

	if (fe->count == 0)
		return LB_NO_BACKEND;

	if (fe->flags & AXON_SVC_F_AFFINITY) {
		now = axon_now();
		args->aff.rev_nat_index = fe->rev_nat_index;
		id = lb_affinity_get(&args->aff, fe->affinity_timeout, now);
		if (id && lb4_has_backend(fe, id) && lb4_backend_get(id, be) == 0) {
			*backend_id = id;
			lb_affinity_put(&args->aff, id, now);
			return LB_SELECTED;
		}
	}

	id = 0;
	if (args->allow_maglev && (fe->flags & AXON_SVC_F_MAGLEV))
		id = lb_maglev_backend(fe->rev_nat_index, fe->key.scope, args->hash);
	if (id && lb4_backend_get(id, be) == 0)
		*backend_id = id;
	else if (lb4_random_backend(fe, be, backend_id))
		return LB_NO_BACKEND;

	if (fe->flags & AXON_SVC_F_AFFINITY)
		lb_affinity_put(&args->aff, *backend_id, now);
	return LB_SELECTED;
}

/* True when the reverse-NAT entry of `rev_nat_index` still names
 * (addr, port): a service deleted or re-created under another id must not
 * keep rewriting replies for sockets that predate it. A wildcard NodePort
 * frontend (address 0) matches any of this node's addresses. */
static __always_inline int lb4_rev_nat_matches(__u32 rev_nat_index,
					       __be32 addr, __be16 port)
{
	const struct lb4_reverse_nat *rn;

	rn = bpf_map_lookup_elem(&axon_lb4_reverse_nat, &rev_nat_index);
	return rn && (rn->address == addr || rn->address == 0) && rn->port == port;
}

/* Whether `saddr` may use the frontend (loadBalancerSourceRanges). */
static __always_inline int lb4_source_allowed(const struct lb4_frontend *fe, __be32 saddr)
{
	struct lb4_src_range_key key;

	if (!(fe->flags & AXON_SVC_F_SRC_RANGES))
		return 1;
	key.prefixlen = 32 + 32;
	key.rev_nat_index = fe->rev_nat_index;
	key.address = saddr;
	return bpf_map_lookup_elem(&axon_lb4_source_range, &key) != NULL;
}

/* ---------------------------------------------------------------- IPv6 -- */

struct lb6_frontend {
	struct lb6_key key;
	__u32 rev_nat_index;
	__u32 affinity_timeout;
	__u16 count;
	__u8 svc_type;
	__u8 flags;
};

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

static __always_inline int lb6_lookup_frontend(const __u32 addr[4], __be16 dport, __u8 proto,
					       struct lb6_frontend *fe)
{
	const struct lb_service *master;

	lb6_key_init(&fe->key, addr, dport, proto);
	master = bpf_map_lookup_elem(&axon_lb6_services, &fe->key);
	if (!master) {
		if (ipv6_addr_is_zero(fe->key.address) || !node_addr6_is_local(fe->key.address))
			return 0;
		__builtin_memset(fe->key.address, 0, 16);
		master = bpf_map_lookup_elem(&axon_lb6_services, &fe->key);
		if (!master || !(master->flags & AXON_SVC_F_NODEPORT_WILDCARD))
			return 0;
	}
	fe->rev_nat_index = master->rev_nat_index;
	fe->affinity_timeout = master->backend_id;
	fe->count = master->count;
	fe->svc_type = master->svc_type;
	fe->flags = master->flags;
	return 1;
}

static __always_inline void lb6_use_internal_scope(struct lb6_frontend *fe)
{
	const struct lb_service *master;
	struct lb6_key key;

	if (!(fe->flags & AXON_SVC_F_TWO_SCOPES))
		return;
	key = fe->key;
	key.scope = AXON_SCOPE_INTERNAL;
	master = bpf_map_lookup_elem(&axon_lb6_services, &key);
	if (!master)
		return;
	fe->key.scope = AXON_SCOPE_INTERNAL;
	fe->count = master->count;
}

static __always_inline int lb6_slot_backend(const struct lb6_frontend *fe, __u16 slot,
					    struct lb6_backend *out, __u32 *backend_id)
{
	const struct lb_service *val;
	const struct lb6_backend *be;
	struct lb6_key key = fe->key;
	__u32 id;

	key.backend_slot = slot;
	val = bpf_map_lookup_elem(&axon_lb6_services, &key);
	if (!val)
		return -ENOENT;
	id = val->backend_id;
	be = bpf_map_lookup_elem(&axon_lb6_backends, &id);
	if (!be)
		return -ENOENT;
	*out = *be;
	*backend_id = id;
	return 0;
}

static __always_inline int lb6_backend_get(__u32 backend_id, struct lb6_backend *out)
{
	const struct lb6_backend *be = bpf_map_lookup_elem(&axon_lb6_backends, &backend_id);

	if (!be)
		return -ENOENT;
	*out = *be;
	return 0;
}

static __always_inline int lb6_has_backend(const struct lb6_frontend *fe, __u32 backend_id)
{
	struct lb6_key key = fe->key;
	const struct lb_service *val;
	__u16 count = fe->count;

	if (count > AXON_AFFINITY_SCAN_MAX)
		return 1;
	for (__u16 slot = 1; slot <= AXON_AFFINITY_SCAN_MAX; slot++) {
		if (slot > count)
			break;
		key.backend_slot = slot;
		val = bpf_map_lookup_elem(&axon_lb6_services, &key);
		if (val && val->backend_id == backend_id)
			return 1;
	}
	return 0;
}

static __always_inline int lb6_random_backend(const struct lb6_frontend *fe,
					      struct lb6_backend *be, __u32 *backend_id)
{
	__u16 slot = (bpf_get_prandom_u32() % fe->count) + 1;

	if (lb6_slot_backend(fe, slot, be, backend_id) == 0)
		return 0;
	axon_metric_inc(AXON_METRIC_SOCK_MISSING_SLOT);
	return lb6_slot_backend(fe, 1, be, backend_id);
}

/* IPv6 twin of lb4_select. */
static __always_inline enum lb_verdict lb6_select(const struct lb6_frontend *fe,
						  struct lb_select_args *args,
						  struct lb6_backend *be, __u32 *backend_id)
{
	__u32 now = 0, id;

	if (fe->count == 0)
		return LB_NO_BACKEND;

	if (fe->flags & AXON_SVC_F_AFFINITY) {
		now = axon_now();
		args->aff.rev_nat_index = fe->rev_nat_index;
		id = lb_affinity_get(&args->aff, fe->affinity_timeout, now);
		if (id && lb6_has_backend(fe, id) && lb6_backend_get(id, be) == 0) {
			*backend_id = id;
			lb_affinity_put(&args->aff, id, now);
			return LB_SELECTED;
		}
	}

	id = 0;
	if (args->allow_maglev && (fe->flags & AXON_SVC_F_MAGLEV))
		id = lb_maglev_backend(fe->rev_nat_index, fe->key.scope, args->hash);
	if (id && lb6_backend_get(id, be) == 0)
		*backend_id = id;
	else if (lb6_random_backend(fe, be, backend_id))
		return LB_NO_BACKEND;

	if (fe->flags & AXON_SVC_F_AFFINITY)
		lb_affinity_put(&args->aff, *backend_id, now);
	return LB_SELECTED;
}

static __always_inline int lb6_rev_nat_matches(__u32 rev_nat_index,
					       const __u8 addr[16], __be16 port)
{
	const struct lb6_reverse_nat *rn;

	rn = bpf_map_lookup_elem(&axon_lb6_reverse_nat, &rev_nat_index);
	return rn && (ipv6_addr_equal(rn->address, addr) || ipv6_addr_is_zero(rn->address)) &&
	       rn->port == port;
}

static __always_inline int lb6_source_allowed(const struct lb6_frontend *fe, const __u32 saddr[4])
{
	struct lb6_src_range_key key;

	if (!(fe->flags & AXON_SVC_F_SRC_RANGES))
		return 1;
	key.prefixlen = 32 + 128;
	key.rev_nat_index = fe->rev_nat_index;
	__builtin_memcpy(key.address, saddr, 16);
	return bpf_map_lookup_elem(&axon_lb6_source_range, &key) != NULL;
}

#endif /* __AXON_LB_H */
