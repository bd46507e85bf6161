/* SPDX-License-Identifier: Apache-2.0 */
/*
 * North-south connection tracking over axon_ct{4,6}_global (LRU).
 *
 * A flow has up to two entries, each holding the whole translation (see
 * maps.h): SERVICE, keyed as the client's packet arrives, and REPLY, keyed
 * as the backend's reply arrives (to the SNAT address and port, or to the
 * client for node-local and DSR backends). A hit on either rewrites the
 * packet with one lookup.
 *
 * Lifetime: `expires` = now + the timeout of the flow's state (TCP: SYN
 * until the handshake completes, established, closing after FIN/RST; UDP:
 * one timeout). An expired entry is treated as absent and overwritten by
 * the next flow that needs the key; the agent's GC deletes the rest. The
 * expiry moves at most once a second per entry (it has second resolution),
 * and when it moves the partner entry is refreshed too, so the two
 * directions of a flow expire together even when only one of them sends.
 */
#ifndef __AXON_CONNTRACK_H
#define __AXON_CONNTRACK_H

#include <linux/types.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"
#include "lb.h"

/* Used when axon_config leaves a timeout at 0 (seconds). */
#define CT_DEFAULT_TIMEOUT_SYN   60
#define CT_DEFAULT_TIMEOUT_TCP   21600
#define CT_DEFAULT_TIMEOUT_CLOSE 10
#define CT_DEFAULT_TIMEOUT_UDP   60

/* TCP flag bits of header byte 13. */
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

static __always_inline __u32 ct_cfg_or(__u32 value, __u32 fallback)
{
	return value ? value : fallback;
}

static __always_inline __u32 ct_timeout(const struct axon_config *cfg, __u8 proto,
					__u8 state)
{
	if (proto != IPPROTO_TCP)
		return ct_cfg_or(cfg ? cfg->ct_timeout_udp : 0, CT_DEFAULT_TIMEOUT_UDP);
	switch (state) {
	case AXON_CT_TCP_EST:
		return ct_cfg_or(cfg ? cfg->ct_timeout_tcp : 0, CT_DEFAULT_TIMEOUT_TCP);
	case AXON_CT_TCP_CLOSING:
		return ct_cfg_or(cfg ? cfg->ct_timeout_close : 0, CT_DEFAULT_TIMEOUT_CLOSE);
	default:
		return ct_cfg_or(cfg ? cfg->ct_timeout_syn : 0, CT_DEFAULT_TIMEOUT_SYN);
	}
}

/* The state after a packet with `flags` in either direction. A SYN-ACK
 * keeps SYN: the handshake completes with the first plain ACK. */
static __always_inline __u8 ct_tcp_next(__u8 state, __u8 flags)
{
	if (flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		return AXON_CT_TCP_CLOSING;
	if (state == AXON_CT_TCP_CLOSING || state == AXON_CT_TCP_EST)
		return state;
	if (flags & TCP_FLAG_SYN)
		return AXON_CT_TCP_SYN;
	if (flags & TCP_FLAG_ACK)
		return AXON_CT_TCP_EST;
	return state;
}

static __always_inline __u8 ct_initial_state(__u8 proto, __u8 flags)
{
	if (proto != IPPROTO_TCP)
		return AXON_CT_TCP_NONE;
	return ct_tcp_next(AXON_CT_TCP_SYN, flags);
}

static __always_inline int ct_expired(__u32 expires, __u32 now)
{
	return (__s32)(expires - now) < 0;
}

/* A bare SYN over a closing entry: the client reuses the 4-tuple for a new
 * connection, which is balanced afresh. */
static __always_inline int ct_tcp_reopens(__u8 proto, __u8 state, __u8 flags)
{
	return proto == IPPROTO_TCP && state == AXON_CT_TCP_CLOSING &&
	       (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* ---------------------------------------------------------------- IPv4 -- */

static __always_inline void ct4_key_init(struct ct4_key *key, __be32 saddr, __be32 daddr,
					 __be16 sport, __be16 dport, __u8 proto, __u8 dir)
{
	__builtin_memset(key, 0, sizeof(*key));
	key->saddr = saddr;
	key->daddr = daddr;
	key->sport = sport;
	key->dport = dport;
	key->proto = proto;
	key->dir = dir;
}

/* The live entry of `key`, or NULL (absent or expired). */
static __always_inline struct ct4_entry *ct4_lookup(const struct ct4_key *key, __u32 now)
{
	struct ct4_entry *e = bpf_map_lookup_elem(&axon_ct4_global, key);

	if (!e || ct_expired(e->expires, now))
		return NULL;
	return e;
}

/* The key of the other direction of the flow `e` was found under (`dir`),
 * 0 when that direction has no entry on this node. */
static __always_inline int ct4_partner_key(const struct ct4_entry *e, __u8 dir, __u8 proto,
					   struct ct4_key *key)
{
	if (dir == AXON_CT_DIR_SERVICE) {
		if (e->flags & AXON_CT_F_SNAT)
			ct4_key_init(key, e->backend_addr, e->nat_addr, e->backend_port,
				     e->nat_port, proto, AXON_CT_DIR_REPLY);
		else if (e->flags & AXON_CT_F_LOCAL)
			ct4_key_init(key, e->backend_addr, e->client_addr, e->backend_port,
				     e->client_port, proto, AXON_CT_DIR_REPLY);
		else
			return 0;
		return 1;
	}
	if (e->flags & AXON_CT_F_DSR_BACKEND)
		return 0;
	ct4_key_init(key, e->client_addr, e->frontend_addr, e->client_port, e->frontend_port,
		     proto, AXON_CT_DIR_SERVICE);
	return 1;
}

/*
 * Accounts one packet of `len` bytes with TCP `flags` on `e`, found under
 * direction `dir`, and moves its state and expiry; when they moved, the
 * partner entry gets the same state and expiry.
 */
static __always_inline void ct4_touch(struct ct4_entry *e, __u8 dir, __u8 proto, __u8 flags,
				      __u32 len, __u32 now)
{
	__u8 state = proto == IPPROTO_TCP ? ct_tcp_next(e->tcp_state, flags) : AXON_CT_TCP_NONE;
	__u32 expires = now + ct_timeout(axon_config_get(), proto, state);
	struct ct4_entry *partner;
	struct ct4_key key;

	e->packets += 1;
	e->bytes += len;
	if (state == e->tcp_state && expires == e->expires)
		return;
	e->tcp_state = state;
	e->expires = expires;
	if (!ct4_partner_key(e, dir, proto, &key))
		return;
	partner = bpf_map_lookup_elem(&axon_ct4_global, &key);
	if (partner) {
		partner->tcp_state = state;
		partner->expires = expires;
	}
}

/* Fills a new entry's state, expiry and first packet. */
static __always_inline void ct4_entry_start(struct ct4_entry *e, __u8 proto, __u8 flags,
					    __u32 len, __u32 now)
{
	e->tcp_state = ct_initial_state(proto, flags);
	e->expires = now + ct_timeout(axon_config_get(), proto, e->tcp_state);
	e->packets = 1;
	e->bytes = len;
}

static __always_inline int ct4_put(const struct ct4_key *key, const struct ct4_entry *e)
{
	return bpf_map_update_elem(&axon_ct4_global, key, e, BPF_ANY);
}

/* ---------------------------------------------------------------- IPv6 -- */

static __always_inline void ct6_key_init(struct ct6_key *key, const void *saddr,
					 const void *daddr, __be16 sport, __be16 dport,
					 __u8 proto, __u8 dir)
{
	__builtin_memset(key, 0, sizeof(*key));
	__builtin_memcpy(key->saddr, saddr, 16);
	__builtin_memcpy(key->daddr, daddr, 16);
	key->sport = sport;
	key->dport = dport;
	key->proto = proto;
	key->dir = dir;
}

static __always_inline struct ct6_entry *ct6_lookup(const struct ct6_key *key, __u32 now)
{
	struct ct6_entry *e = bpf_map_lookup_elem(&axon_ct6_global, key);

	if (!e || ct_expired(e->expires, now))
		return NULL;
	return e;
}

static __always_inline int ct6_partner_key(const struct ct6_entry *e, __u8 dir, __u8 proto,
					   struct ct6_key *key)
{
	if (dir == AXON_CT_DIR_SERVICE) {
		if (e->flags & AXON_CT_F_SNAT)
			ct6_key_init(key, e->backend_addr, e->nat_addr, e->backend_port,
				     e->nat_port, proto, AXON_CT_DIR_REPLY);
		else if (e->flags & AXON_CT_F_LOCAL)
			ct6_key_init(key, e->backend_addr, e->client_addr, e->backend_port,
				     e->client_port, proto, AXON_CT_DIR_REPLY);
		else
			return 0;
		return 1;
	}
	if (e->flags & AXON_CT_F_DSR_BACKEND)
		return 0;
	ct6_key_init(key, e->client_addr, e->frontend_addr, e->client_port, e->frontend_port,
		     proto, AXON_CT_DIR_SERVICE);
	return 1;
}

static __always_inline void ct6_touch(struct ct6_entry *e, __u8 dir, __u8 proto, __u8 flags,
				      __u32 len, __u32 now)
{
	__u8 state = proto == IPPROTO_TCP ? ct_tcp_next(e->tcp_state, flags) : AXON_CT_TCP_NONE;
	__u32 expires = now + ct_timeout(axon_config_get(), proto, state);
	struct ct6_entry *partner;
	struct ct6_key key;

	e->packets += 1;
	e->bytes += len;
	if (state == e->tcp_state && expires == e->expires)
		return;
	e->tcp_state = state;
	e->expires = expires;
	if (!ct6_partner_key(e, dir, proto, &key))
		return;
	partner = bpf_map_lookup_elem(&axon_ct6_global, &key);
	if (partner) {
		partner->tcp_state = state;
		partner->expires = expires;
	}
}

static __always_inline void ct6_entry_start(struct ct6_entry *e, __u8 proto, __u8 flags,
					    __u32 len, __u32 now)
{
	e->tcp_state = ct_initial_state(proto, flags);
	e->expires = now + ct_timeout(axon_config_get(), proto, e->tcp_state);
	e->packets = 1;
	e->bytes = len;
}

static __always_inline int ct6_put(const struct ct6_key *key, const struct ct6_entry *e)
{
	return bpf_map_update_elem(&axon_ct6_global, key, e, BPF_ANY);
}

#endif /* __AXON_CONNTRACK_H */
