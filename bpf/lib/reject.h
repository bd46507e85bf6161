/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Answers for packets to a frontend that has no backend: a TCP RST for
 * TCP, an ICMP / ICMPv6 port unreachable for UDP, built in place from the
 * offending packet and sent back out of the device it came in on, so the
 * client fails at once instead of retransmitting into silence.
 *
 * Checksums: the answers get complete checksums. In tc the offending skb
 * may be CHECKSUM_PARTIAL (sent by a local or veth-attached socket); its
 * csum_start still points at the TCP header of the RST, so the RST's
 * checksum is written such that bpf_l4_csum_replace turns it into the
 * complete checksum on a plain skb and into the pseudo-header seed on a
 * partial one (see rst_csum_seed). An ICMP answer built from a partial UDP
 * datagram keeps the skb's partial state; devices that finalise it would
 * rewrite the quoted UDP checksum, which only matters on links without
 * checksum offload (veth, and everything with hardware offload, is fine).
 */
#ifndef __AXON_REJECT_H
#define __AXON_REJECT_H

#include <linux/types.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>

#include "ctx.h"
#include "csum.h"
#include "conntrack.h"
#include "nat.h"

#define ICMP_DEST_UNREACH   3
#define ICMP_PORT_UNREACH   3
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PORT_UNREACH 4
#define IPPROTO_ICMPV6_     58

#define REJECT_TTL 64
#define IP_DF_FLAG 0x4000

/* What an ICMP error header looks like on the wire (no linux/icmp.h). */
struct icmp_err_hdr {
	__u8 type;
	__u8 code;
	__u16 checksum;
	__u32 unused;
};

/* A TCP header without options, flags as one byte. */
struct tcp_plain {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res;
	__u8 flags;
	__be16 window;
	__u16 check;
	__be16 urg_ptr;
};

/* Sizes of the answers, from the Ethernet header. */
#define RST4_LEN  (ETH_HLEN + sizeof(struct iphdr) + sizeof(struct tcp_plain))
#define RST6_LEN  (ETH_HLEN + sizeof(struct ipv6hdr) + sizeof(struct tcp_plain))
#define ICMP4_QUOTE (sizeof(struct iphdr) + 8)
#define ICMP6_QUOTE (sizeof(struct ipv6hdr) + 8)
#define ICMP4_LEN (ETH_HLEN + sizeof(struct iphdr) + sizeof(struct icmp_err_hdr) + ICMP4_QUOTE)
#define ICMP6_LEN (ETH_HLEN + sizeof(struct ipv6hdr) + sizeof(struct icmp_err_hdr) + ICMP6_QUOTE)

static __always_inline void eth_swap(struct ethhdr *eth)
{
	__u8 tmp[ETH_ALEN];

	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
}

/*
 * The RST answering a segment: sequence numbers per RFC 9293 3.10.7.1.
 * `seg_len` is the segment's payload length.
 */
static __always_inline void rst_build(struct tcp_plain *rst, const struct tcp_plain *seg,
				      __u32 seg_len)
{
	__builtin_memset(rst, 0, sizeof(*rst));
	rst->source = seg->dest;
	rst->dest = seg->source;
	rst->doff_res = 5 << 4;
	if (seg->flags & TCP_FLAG_ACK) {
		rst->seq = seg->ack_seq;
		rst->flags = TCP_FLAG_RST;
	} else {
		seg_len += !!(seg->flags & TCP_FLAG_SYN) + !!(seg->flags & TCP_FLAG_FIN);
		rst->ack_seq = bpf_htonl(bpf_ntohl(seg->seq) + seg_len);
		rst->flags = TCP_FLAG_RST | TCP_FLAG_ACK;
	}
}

/*
 * The value to write in the RST's checksum field before a final
 * bpf_l4_csum_replace(diff, BPF_F_PSEUDO_HDR), which leaves `full` (the
 * complete checksum) on a plain skb and `seed` (the folded pseudo-header
 * sum) on a CHECKSUM_PARTIAL one: x - diff = full and x + diff = seed in
 * one's complement arithmetic, so x = (full + seed) / 2, where halving mod
 * 0xffff is a rotation right by one bit. XDP has no partial frames to
 * answer (see csum_looks_partial) and writes `full`; so does tc when the
 * answer's TCP header is not where the skb's csum_start points.
 */
static __always_inline __u16 rst_csum_seed(__u16 full, __u32 pseudo, int seed_ok, __u32 *diff)
{
	__u32 sum;
	__u16 x;

	*diff = 0;
	if (CTX_IS_XDP || !seed_ok)
		return full;
	sum = (__u32)full + (__u16)~csum_fold(pseudo);
	sum = (sum & 0xffff) + (sum >> 16);
	x = (__u16)((sum >> 1) | ((sum & 1) << 15));
	*diff = csum_add(x, (__u16)~full);
	return x;
}

static __always_inline int rst_csum_finish(ctx_t *ctx, __u32 off, __u32 diff, int is_v6)
{
#if CTX_IS_XDP
	return 0;
#else
	int ret;

	if (!diff)
		return 0;
	ret = bpf_l4_csum_replace(ctx, off, 0, diff,
				  BPF_F_PSEUDO_HDR | (is_v6 ? BPF_F_IPV6 : 0));
	if (ret == -EINVAL && is_v6)
		ret = bpf_l4_csum_replace(ctx, off, 0, diff, BPF_F_PSEUDO_HDR);
	return ret;
#endif
}

/* ---------------------------------------------------------------- IPv4 -- */

/* Turns the TCP segment at `l4_off` into the RST answering it. */
static __always_inline int reject4_rst(ctx_t *ctx, __u32 l4_off)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct iphdr *ip = data + ETH_HLEN, nip = {};
	struct tcp_plain seg, rst;
	__u32 seg_len, pseudo, diff;
	int seed_ok;

	if (l4_off > ETH_HLEN + 60 || (void *)(ip + 1) > end)
		return CTX_ACT_DROP;
	if (data + l4_off + sizeof(seg) > end || data + RST4_LEN > end)
		return CTX_ACT_DROP;
	__builtin_memcpy(&seg, data + l4_off, sizeof(seg));
	if (seg.flags & TCP_FLAG_RST)
		return CTX_ACT_DROP;
	seg_len = bpf_ntohs(ip->tot_len) - (l4_off - ETH_HLEN) - (seg.doff_res >> 4) * 4;
	rst_build(&rst, &seg, seg_len);

	nip.version = 4;
	nip.ihl = 5;
	nip.tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(rst));
	nip.frag_off = bpf_htons(IP_DF_FLAG);
	nip.ttl = REJECT_TTL;
	nip.protocol = IPPROTO_TCP;
	nip.saddr = ip->daddr;
	nip.daddr = ip->saddr;
	nip.check = csum_fold(csum_words((__u16 *)&nip, sizeof(nip) / 2, 0));

	pseudo = csum_pseudo4(nip.saddr, nip.daddr, IPPROTO_TCP, sizeof(rst));
	seed_ok = l4_off == ETH_HLEN + sizeof(struct iphdr);
	rst.check = rst_csum_seed(csum_fold(csum_words((__u16 *)&rst, sizeof(rst) / 2, pseudo)),
				  pseudo, seed_ok, &diff);

	eth_swap(data);
	__builtin_memcpy(data + ETH_HLEN, &nip, sizeof(nip));
	__builtin_memcpy(data + ETH_HLEN + sizeof(nip), &rst, sizeof(rst));
	if (ctx_set_len(ctx, RST4_LEN))
		return CTX_ACT_DROP;
	if (rst_csum_finish(ctx, ETH_HLEN + sizeof(nip) + 16, diff, 0))
		return CTX_ACT_DROP;
	return ctx_redirect(ctx, ctx_ifindex(ctx));
}

/* Turns a UDP datagram (20-byte IP header) into the ICMP port unreachable
 * answering it: new IP + ICMP headers, then the original IP header and the
 * first 8 bytes of its payload. */
static __always_inline int reject4_icmp(ctx_t *ctx)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct iphdr *ip = data + ETH_HLEN, nip = {};
	struct icmp_err_hdr icmp = {};
	struct ethhdr eth;
	__u32 sum;

	if (data + ETH_HLEN + ICMP4_QUOTE > end || ip->ihl != 5)
		return CTX_ACT_DROP;
	__builtin_memcpy(&eth, data, sizeof(eth));
	nip.version = 4;
	nip.ihl = 5;
	nip.tot_len = bpf_htons(sizeof(struct iphdr) + sizeof(icmp) + ICMP4_QUOTE);
	nip.ttl = REJECT_TTL;
	nip.protocol = IPPROTO_ICMP;
	nip.saddr = ip->daddr;
	nip.daddr = ip->saddr;
	nip.check = csum_fold(csum_words((__u16 *)&nip, sizeof(nip) / 2, 0));

	if (ctx_set_len(ctx, ETH_HLEN + ICMP4_QUOTE))
		return CTX_ACT_DROP;
	if (ctx_insert(ctx, ETH_HLEN, sizeof(nip) + sizeof(icmp)))
		return CTX_ACT_DROP;
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	if (data + ICMP4_LEN > end)
		return CTX_ACT_DROP;

	eth_swap(&eth);
	__builtin_memcpy(data, &eth, sizeof(eth));
	__builtin_memcpy(data + ETH_HLEN, &nip, sizeof(nip));
	icmp.type = ICMP_DEST_UNREACH;
	icmp.code = ICMP_PORT_UNREACH;
	__builtin_memcpy(data + ETH_HLEN + sizeof(nip), &icmp, sizeof(icmp));
	sum = csum_words(data + ETH_HLEN + sizeof(nip), (sizeof(icmp) + ICMP4_QUOTE) / 2, 0);
	((struct icmp_err_hdr *)(data + ETH_HLEN + sizeof(nip)))->checksum = csum_fold(sum);
	return ctx_redirect(ctx, ctx_ifindex(ctx));
}

/* ---------------------------------------------------------------- IPv6 -- */

static __always_inline void ip6_answer_header(struct ipv6hdr *nip, const struct ipv6hdr *ip6,
					      __u16 payload_len, __u8 nexthdr)
{
	__builtin_memset(nip, 0, sizeof(*nip));
	nip->version = 6;
	nip->payload_len = bpf_htons(payload_len);
	nip->nexthdr = nexthdr;
	nip->hop_limit = REJECT_TTL;
	nip->saddr = ip6->daddr;
	nip->daddr = ip6->saddr;
}

static __always_inline int reject6_rst(ctx_t *ctx, __u32 l4_off)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct ipv6hdr *ip6 = data + ETH_HLEN, nip;
	struct tcp_plain seg, rst;
	__u32 seg_len, pseudo, diff;
	int seed_ok;

	if (l4_off > NAT_MAX_L4_OFF || (void *)(ip6 + 1) > end)
		return CTX_ACT_DROP;
	if (data + l4_off + sizeof(seg) > end || data + RST6_LEN > end)
		return CTX_ACT_DROP;
	__builtin_memcpy(&seg, data + l4_off, sizeof(seg));
	if (seg.flags & TCP_FLAG_RST)
		return CTX_ACT_DROP;
	seg_len = bpf_ntohs(ip6->payload_len) - (l4_off - ETH_HLEN - sizeof(*ip6)) -
		  (seg.doff_res >> 4) * 4;
	rst_build(&rst, &seg, seg_len);
	ip6_answer_header(&nip, ip6, sizeof(rst), IPPROTO_TCP);

	pseudo = csum_pseudo6((__u32 *)&nip.saddr, (__u32 *)&nip.daddr, IPPROTO_TCP, sizeof(rst));
	seed_ok = l4_off == ETH_HLEN + sizeof(struct ipv6hdr);
	rst.check = rst_csum_seed(csum_fold(csum_words((__u16 *)&rst, sizeof(rst) / 2, pseudo)),
				  pseudo, seed_ok, &diff);

	eth_swap(data);
	__builtin_memcpy(data + ETH_HLEN, &nip, sizeof(nip));
	__builtin_memcpy(data + ETH_HLEN + sizeof(nip), &rst, sizeof(rst));
	if (ctx_set_len(ctx, RST6_LEN))
		return CTX_ACT_DROP;
	if (rst_csum_finish(ctx, ETH_HLEN + sizeof(nip) + 16, diff, 1))
		return CTX_ACT_DROP;
	return ctx_redirect(ctx, ctx_ifindex(ctx));
}

/* ICMPv6 port unreachable for a UDP datagram whose UDP header follows the
 * IPv6 header directly (the quote then holds its ports). */
static __always_inline int reject6_icmp(ctx_t *ctx)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct ipv6hdr *ip6 = data + ETH_HLEN, nip;
	struct icmp_err_hdr icmp = {};
	struct ethhdr eth;
	__u32 sum;

	if (data + ETH_HLEN + ICMP6_QUOTE > end || ip6->nexthdr != IPPROTO_UDP)
		return CTX_ACT_DROP;
	__builtin_memcpy(&eth, data, sizeof(eth));
	ip6_answer_header(&nip, ip6, sizeof(icmp) + ICMP6_QUOTE, IPPROTO_ICMPV6_);

	if (ctx_set_len(ctx, ETH_HLEN + ICMP6_QUOTE))
		return CTX_ACT_DROP;
	if (ctx_insert(ctx, ETH_HLEN, sizeof(nip) + sizeof(icmp)))
		return CTX_ACT_DROP;
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	if (data + ICMP6_LEN > end)
		return CTX_ACT_DROP;

	eth_swap(&eth);
	__builtin_memcpy(data, &eth, sizeof(eth));
	__builtin_memcpy(data + ETH_HLEN, &nip, sizeof(nip));
	icmp.type = ICMPV6_DEST_UNREACH;
	icmp.code = ICMPV6_PORT_UNREACH;
	__builtin_memcpy(data + ETH_HLEN + sizeof(nip), &icmp, sizeof(icmp));
	sum = csum_pseudo6((__u32 *)&nip.saddr, (__u32 *)&nip.daddr, IPPROTO_ICMPV6_,
			   sizeof(icmp) + ICMP6_QUOTE);
	sum = csum_words(data + ETH_HLEN + sizeof(nip), (sizeof(icmp) + ICMP6_QUOTE) / 2, sum);
	((struct icmp_err_hdr *)(data + ETH_HLEN + sizeof(nip)))->checksum = csum_fold(sum);
	return ctx_redirect(ctx, ctx_ifindex(ctx));
}

#endif /* __AXON_REJECT_H */
