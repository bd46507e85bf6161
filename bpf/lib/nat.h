/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Address and port translation of one packet, and SNAT port allocation.
 *
 * A rewrite takes the packet's tuple as parsed and the tuple it must carry,
 * writes what differs and fixes the checksums incrementally: the IPv4
 * header checksum directly, the L4 checksum through ctx_l4_csum (addresses
 * as pseudo-header changes, ports as L4 changes), so CHECKSUM_PARTIAL skbs
 * stay right.
 *
 * SNAT ports are claimed by inserting the flow's REPLY conntrack entry with
 * BPF_NOEXIST: the entry is the reservation, so two flows can never share
 * (backend, node address, port). A random port of the configured range is
 * tried a few times; an expired entry in the way is taken over.
 */
#ifndef __AXON_NAT_H
#define __AXON_NAT_H

#include <linux/types.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "ctx.h"
#include "csum.h"
#include "maps.h"
#include "lb.h"
#include "conntrack.h"

/* Used when axon_config leaves the SNAT range at 0. */
#define SNAT_DEFAULT_PORT_MIN 32768
#define SNAT_DEFAULT_PORT_MAX 65535
/* Ports probed per new flow: consecutive from a random start, so a range
 * that is mostly in use (closed flows hold their port for the close timeout)
 * still yields a free port instead of failing after a few random misses. */
#define SNAT_TRIES 32

/* The i-th port to try from `start` within [min, max]. */
static __always_inline __be16 snat_probe_port(__u32 start, __u32 i, __u16 min, __u16 max)
{
	__u32 span = (__u32)max - min + 1;

	return bpf_htons(min + (__u16)((start + i) % span));
}

struct tuple4 {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
};

struct tuple6 {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
};

/* Offset of the L4 checksum field within the TCP or UDP header. */
static __always_inline __u32 l4_csum_off(__u8 proto)
{
	return proto == IPPROTO_TCP ? 16 : 6;
}

/* Longest L3 header + options the rewrites accept: keeps every packet
 * offset below a bound the verifier can see. */
#define NAT_MAX_L4_OFF 256

/* Rewrites ports (at l4_off) and reports their checksum diff. */
static __always_inline int nat_ports(ctx_t *ctx, __u32 l4_off, __be16 old_sport,
				     __be16 new_sport, __be16 old_dport, __be16 new_dport,
				     __u32 *diff)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	__be16 *ports;

	if (l4_off > NAT_MAX_L4_OFF)
		return -EINVAL;
	ports = data + l4_off;
	if ((void *)(ports + 2) > end)
		return -EINVAL;
	*diff = 0;
	if (old_sport != new_sport) {
		*diff = csum_add(*diff, csum_diff16(old_sport, new_sport));
		ports[0] = new_sport;
	}
	if (old_dport != new_dport) {
		*diff = csum_add(*diff, csum_diff16(old_dport, new_dport));
		ports[1] = new_dport;
	}
	return 0;
}

/* Rewrites an IPv4 packet from tuple `from` to tuple `to`. */
static __always_inline int nat4_rewrite(ctx_t *ctx, __u32 l4_off, __u8 proto,
					const struct tuple4 *from, const struct tuple4 *to)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct iphdr *ip = data + ETH_HLEN;
	__u32 addr_diff = 0, port_diff = 0;

	if ((void *)(ip + 1) > end)
		return -EINVAL;
	if (from->saddr != to->saddr) {
		addr_diff = csum_add(addr_diff, csum_diff32(from->saddr, to->saddr));
		ip->saddr = to->saddr;
	}
	if (from->daddr != to->daddr) {
		addr_diff = csum_add(addr_diff, csum_diff32(from->daddr, to->daddr));
		ip->daddr = to->daddr;
	}
	if (addr_diff)
		ip->check = csum_apply(ip->check, addr_diff);
	if (nat_ports(ctx, l4_off, from->sport, to->sport, from->dport, to->dport, &port_diff))
		return -EINVAL;
	if (!addr_diff && !port_diff)
		return 0;
	return ctx_l4_csum(ctx, l4_off + l4_csum_off(proto), addr_diff, port_diff,
			   proto == IPPROTO_UDP, 0);
}

static __always_inline int addr6_words_equal(const __u32 a[4], const __u32 b[4])
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

/* Rewrites an IPv6 packet from tuple `from` to (saddr, sport) -> (daddr,
 * dport). The addresses are read through pointers (into conntrack entries,
 * backends or `from` itself) so callers keep no copies on the stack. */
static __always_inline int nat6_rewrite(ctx_t *ctx, __u32 l4_off, __u8 proto,
					const struct tuple6 *from, const __u32 *saddr,
					__be16 sport, const __u32 *daddr, __be16 dport)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	__u32 addr_diff = 0, port_diff = 0;

	if ((void *)(ip6 + 1) > end)
		return -EINVAL;
	if (!addr6_words_equal(from->saddr, saddr)) {
		addr_diff = csum_add(addr_diff, csum_diff128(from->saddr, saddr));
		__builtin_memcpy(&ip6->saddr, saddr, 16);
	}
	if (!addr6_words_equal(from->daddr, daddr)) {
		addr_diff = csum_add(addr_diff, csum_diff128(from->daddr, daddr));
		__builtin_memcpy(&ip6->daddr, daddr, 16);
	}
	if (nat_ports(ctx, l4_off, from->sport, sport, from->dport, dport, &port_diff))
		return -EINVAL;
	if (!addr_diff && !port_diff)
		return 0;
	return ctx_l4_csum(ctx, l4_off + l4_csum_off(proto), addr_diff, port_diff,
			   proto == IPPROTO_UDP, 1);
}

/* Decrements the IPv4 TTL of a packet this node forwards; -1 when it would
 * reach 0 (the stack must answer with ICMP time exceeded). */
static __always_inline int ip4_dec_ttl(ctx_t *ctx)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct iphdr *ip = data + ETH_HLEN;
	__u16 old, new;

	if ((void *)(ip + 1) > end || ip->ttl <= 1)
		return -1;
	/* TTL shares its checksum word with the protocol. */
	old = *(__u16 *)&ip->ttl;
	ip->ttl--;
	new = *(__u16 *)&ip->ttl;
	ip->check = csum_apply(ip->check, csum_diff16(old, new));
	return 0;
}

static __always_inline int ip6_dec_hop_limit(ctx_t *ctx)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct ipv6hdr *ip6 = data + ETH_HLEN;

	if ((void *)(ip6 + 1) > end || ip6->hop_limit <= 1)
		return -1;
	ip6->hop_limit--;
	return 0;
}

static __always_inline void snat_port_range(__u16 *min, __u16 *max)
{
	const struct axon_config *cfg = axon_config_get();

	*min = SNAT_DEFAULT_PORT_MIN;
	*max = SNAT_DEFAULT_PORT_MAX;
	if (cfg && cfg->snat_port_min && cfg->snat_port_max >= cfg->snat_port_min) {
		*min = cfg->snat_port_min;
		*max = cfg->snat_port_max;
	}
}

/*
 * Claims a SNAT port for a flow: inserts `reply` (the REPLY entry, nat_port
 * to be chosen) under `key` (its dport likewise). On success both carry the
 * port; -1 when every try collided with a live flow.
 */
static __always_inline int snat4_claim(struct ct4_key *key, struct ct4_entry *reply, __u32 now)
{
	struct ct4_entry *old;
	__u16 min, max;
	__u32 start;

	snat_port_range(&min, &max);
	start = bpf_get_prandom_u32() % ((__u32)max - min + 1);
	for (__u32 i = 0; i < SNAT_TRIES; i++) {
		__be16 port = snat_probe_port(start, i, min, max);

		key->dport = port;
		reply->nat_port = port;
		if (bpf_map_update_elem(&axon_ct4_global, key, reply, BPF_NOEXIST) == 0)
			return 0;
		old = bpf_map_lookup_elem(&axon_ct4_global, key);
		if (old && ct_expired(old->expires, now) &&
		    bpf_map_update_elem(&axon_ct4_global, key, reply, BPF_EXIST) == 0)
			return 0;
	}
	axon_metric_inc(AXON_METRIC_NP_SNAT_FAIL);
	return -1;
}

static __always_inline int snat6_claim(struct ct6_key *key, struct ct6_entry *reply, __u32 now)
{
	struct ct6_entry *old;
	__u16 min, max;
	__u32 start;

	snat_port_range(&min, &max);
	start = bpf_get_prandom_u32() % ((__u32)max - min + 1);
	for (__u32 i = 0; i < SNAT_TRIES; i++) {
		__be16 port = snat_probe_port(start, i, min, max);

		key->dport = port;
		reply->nat_port = port;
		if (bpf_map_update_elem(&axon_ct6_global, key, reply, BPF_NOEXIST) == 0)
			return 0;
		old = bpf_map_lookup_elem(&axon_ct6_global, key);
		if (old && ct_expired(old->expires, now) &&
		    bpf_map_update_elem(&axon_ct6_global, key, reply, BPF_EXIST) == 0)
			return 0;
	}
	axon_metric_inc(AXON_METRIC_NP_SNAT_FAIL);
	return -1;
}

#endif /* __AXON_NAT_H */
