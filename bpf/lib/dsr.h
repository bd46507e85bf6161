/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Direct server return: how the load-balancing node tells the backend's
 * node which frontend a packet was sent to, so the backend's reply can leave
 * that node with the frontend as its source and go straight to the client.
 *
 * IPv4: an IP option right after the base header, type 0x9a (copied, class
 * 0, number 26: unassigned), length 8: frontend port (2 bytes) and address.
 * IPv6: a Destination Options extension header right after the base header
 * holding option 0x1e (RFC 4727 experimental, "skip if unknown") with port
 * and address, padded to 24 bytes.
 *
 * It is carried on TCP SYNs and on every UDP datagram. The backend's node
 * records a REPLY conntrack entry from it, removes it and hands the packet
 * to its stack. Only packets without options / extension headers of their
 * own get one, so both ends know exactly where it sits.
 */
#ifndef __AXON_DSR_H
#define __AXON_DSR_H

#include <linux/types.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>

#include "ctx.h"
#include "csum.h"

#define AXON_DSR_OPT4_TYPE 0x9a
#define AXON_DSR_OPT4_LEN  8
#define AXON_DSR_OPT6_TYPE 0x1e
#define AXON_DSR_OPT6_LEN  18 /* option data: port + address */

struct dsr_opt4 {
	__u8 type;
	__u8 len;
	__be16 port;
	__be32 addr;
};

/* The whole Destination Options header (RFC 8200 4.6), 24 bytes. */
struct dsr_opt6 {
	__u8 nexthdr;
	__u8 hdrlen;   /* in 8-byte units, not counting the first 8 */
	__u8 opt_type;
	__u8 opt_len;
	__be16 port;
	__u8 addr[16];
	__u8 pad_type; /* PadN */
	__u8 pad_len;
} __attribute__((packed));

#define DSR_OPT6_HDRLEN ((sizeof(struct dsr_opt6) / 8) - 1)

/* Computes the checksum of an IPv4 header of `ihl` 32-bit words. */
static __always_inline int ip4_csum_full(struct iphdr *ip, void *end, const int ihl)
{
	__u16 *w = (__u16 *)ip;

	if ((void *)ip + ihl * 4 > end)
		return -EINVAL;
	ip->check = 0;
	ip->check = csum_fold(csum_words(w, ihl * 2, 0));
	return 0;
}

/* Adds the option to an IPv4 packet with a 20-byte header. */
static __always_inline int dsr4_insert(ctx_t *ctx, __be32 addr, __be16 port)
{
	void *data, *end;
	struct dsr_opt4 *opt;
	struct iphdr *ip;

	if (ctx_insert(ctx, ETH_HLEN + sizeof(struct iphdr), sizeof(struct dsr_opt4)))
		return -ENOMEM;
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	ip = data + ETH_HLEN;
	opt = (void *)(ip + 1);
	if ((void *)(opt + 1) > end)
		return -EINVAL;
	opt->type = AXON_DSR_OPT4_TYPE;
	opt->len = AXON_DSR_OPT4_LEN;
	opt->port = port;
	opt->addr = addr;
	ip->ihl = 7;
	ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) + sizeof(struct dsr_opt4));
	return ip4_csum_full(ip, end, 7);
}

/* The frontend a DSR IPv4 packet carries; 1 when it carries one. */
static __always_inline int dsr4_parse(ctx_t *ctx, __be32 *addr, __be16 *port)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct iphdr *ip = data + ETH_HLEN;
	struct dsr_opt4 *opt = (void *)(ip + 1);

	if ((void *)(opt + 1) > end || ip->ihl != 7)
		return 0;
	if (opt->type != AXON_DSR_OPT4_TYPE || opt->len != AXON_DSR_OPT4_LEN)
		return 0;
	*addr = opt->addr;
	*port = opt->port;
	return 1;
}

/* Removes the option again (the packet leaves as the client sent it, with
 * the backend as destination). */
static __always_inline int dsr4_strip(ctx_t *ctx)
{
	void *data, *end;
	struct iphdr *ip;

	if (ctx_remove(ctx, ETH_HLEN + sizeof(struct iphdr), sizeof(struct dsr_opt4)))
		return -ENOMEM;
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end)
		return -EINVAL;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(bpf_ntohs(ip->tot_len) - sizeof(struct dsr_opt4));
	return ip4_csum_full(ip, end, 5);
}

/* Adds the extension header to an IPv6 packet whose next header is L4. */
static __always_inline int dsr6_insert(ctx_t *ctx, const __u32 addr[4], __be16 port)
{
	void *data, *end;
	struct dsr_opt6 *opt;
	struct ipv6hdr *ip6;

	if (ctx_insert(ctx, ETH_HLEN + sizeof(struct ipv6hdr), sizeof(struct dsr_opt6)))
		return -ENOMEM;
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	ip6 = data + ETH_HLEN;
	opt = (void *)(ip6 + 1);
	if ((void *)(opt + 1) > end)
		return -EINVAL;
	opt->nexthdr = ip6->nexthdr;
	opt->hdrlen = DSR_OPT6_HDRLEN;
	opt->opt_type = AXON_DSR_OPT6_TYPE;
	opt->opt_len = AXON_DSR_OPT6_LEN;
	opt->port = port;
	__builtin_memcpy(opt->addr, addr, 16);
	opt->pad_type = 1;
	opt->pad_len = 0;
	ip6->nexthdr = IPPROTO_DSTOPTS;
	ip6->payload_len = bpf_htons(bpf_ntohs(ip6->payload_len) + sizeof(struct dsr_opt6));
	return 0;
}

/* The DSR extension header of an IPv6 packet, NULL when it has none. The
 * pointer is valid until the packet changes. */
static __always_inline struct dsr_opt6 *dsr6_find(ctx_t *ctx)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct dsr_opt6 *opt = (void *)(ip6 + 1);

	if ((void *)(opt + 1) > end || ip6->nexthdr != IPPROTO_DSTOPTS)
		return NULL;
	if (opt->hdrlen != DSR_OPT6_HDRLEN || opt->opt_type != AXON_DSR_OPT6_TYPE ||
	    opt->opt_len != AXON_DSR_OPT6_LEN)
		return NULL;
	return opt;
}

static __always_inline int dsr6_strip(ctx_t *ctx)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct dsr_opt6 *opt = (void *)(ip6 + 1);
	__u8 nexthdr;

	if ((void *)(opt + 1) > end)
		return -EINVAL;
	nexthdr = opt->nexthdr;
	if (ctx_remove(ctx, ETH_HLEN + sizeof(struct ipv6hdr), sizeof(struct dsr_opt6)))
		return -ENOMEM;
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > end)
		return -EINVAL;
	ip6->nexthdr = nexthdr;
	ip6->payload_len = bpf_htons(bpf_ntohs(ip6->payload_len) - sizeof(struct dsr_opt6));
	return 0;
}

#endif /* __AXON_DSR_H */
