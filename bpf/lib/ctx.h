/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One packet API over both program types, so nodeport.h is written once
 * for tc (struct __sk_buff) and XDP (struct xdp_md).
 *
 * A program defines AXON_CTX_SKB or AXON_CTX_XDP before including this.
 * Headers are read and written through data/data_end pointers in both;
 * what differs sits behind the small wrappers below: checksum fix-ups (the
 * skb helpers know CHECKSUM_PARTIAL, XDP does the arithmetic itself),
 * making or removing room in the packet, and how a packet is sent on.
 */
#ifndef __AXON_CTX_H
#define __AXON_CTX_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"

#if defined(AXON_CTX_XDP)
typedef struct xdp_md ctx_t;
#define CTX_IS_XDP 1
#define CTX_ACT_OK   XDP_PASS
#define CTX_ACT_DROP XDP_DROP
#elif defined(AXON_CTX_SKB)
typedef struct __sk_buff ctx_t;
#define CTX_IS_XDP 0
/* TC_ACT_UNSPEC: pass, and let any later TCX program see the packet too. */
#define CTX_ACT_OK   TC_ACT_UNSPEC
#define CTX_ACT_DROP TC_ACT_SHOT
#else
#error "define AXON_CTX_SKB or AXON_CTX_XDP before including ctx.h"
#endif

/* Written by xdp_nodeport in front of a packet it looked at and found no
 * flow or service for, so the tc ingress program skips its own lookups. */
#define AXON_XDP_META_SKIP 0x41584e53 /* "AXNS" */

static __always_inline void *ctx_data(const ctx_t *ctx)
{
	return (void *)(long)ctx->data;
}

static __always_inline void *ctx_data_end(const ctx_t *ctx)
{
	return (void *)(long)ctx->data_end;
}

/* The device the program runs on (ingress device for XDP and tc ingress,
 * egress device for tc egress). */
static __always_inline __u32 ctx_ifindex(const ctx_t *ctx)
{
#if CTX_IS_XDP
	return ctx->ingress_ifindex;
#else
	return ctx->ifindex;
#endif
}

static __always_inline __u32 ctx_len(const ctx_t *ctx)
{
#if CTX_IS_XDP
	return (__u32)(ctx->data_end - ctx->data);
#else
	return ctx->len;
#endif
}

/* Makes the first `len` bytes, or the whole packet if shorter, directly
 * accessible (a no-op for XDP, whose frames are linear). */
static __always_inline int ctx_pull(ctx_t *ctx, __u32 len)
{
#if CTX_IS_XDP
	return 0;
#else
	if (ctx_data(ctx) + len <= ctx_data_end(ctx))
		return 0;
	if (len > ctx->len)
		len = ctx->len;
	if (ctx_data(ctx) + len <= ctx_data_end(ctx))
		return 0;
	return bpf_skb_pull_data(ctx, len);
#endif
}

/*
 * Applies an L4 checksum update at `off` (the checksum field): `addr_diff`
 * covers pseudo-header fields (addresses), `port_diff` the L4 header itself.
 * For an skb the kernel knows whether the field is complete or only a
 * CHECKSUM_PARTIAL seed and updates it accordingly; XDP only ever gets here
 * with a complete checksum (see csum_looks_partial).
 */
static __always_inline int ctx_l4_csum(ctx_t *ctx, __u32 off, __u32 addr_diff,
				       __u32 port_diff, int is_udp, int is_v6)
{
#if CTX_IS_XDP
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	__u16 *field;

	if (off > 512)
		return -EINVAL;
	field = data + off;
	if ((void *)(field + 1) > end)
		return -EINVAL;
	/* UDP over IPv4 may carry no checksum at all; a computed 0 is sent
	 * as 0xffff (RFC 768). */
	if (is_udp && *field == 0)
		return 0;
	*field = csum_apply(*field, csum_add(addr_diff, port_diff));
	if (is_udp && *field == 0)
		*field = 0xffff;
	return 0;
#else
	__u64 flags = is_udp ? BPF_F_MARK_MANGLED_0 : 0;
	int ret;

	if (addr_diff) {
		/* BPF_F_IPV6 (6.16+) keeps skb->csum right for IPv6
		 * CHECKSUM_COMPLETE; older kernels refuse the flag. */
		ret = bpf_l4_csum_replace(ctx, off, 0, addr_diff,
					  flags | BPF_F_PSEUDO_HDR | (is_v6 ? BPF_F_IPV6 : 0));
		if (ret == -EINVAL && is_v6)
			ret = bpf_l4_csum_replace(ctx, off, 0, addr_diff,
						  flags | BPF_F_PSEUDO_HDR);
		if (ret)
			return ret;
	}
	if (port_diff)
		return bpf_l4_csum_replace(ctx, off, 0, port_diff, flags);
	return 0;
#endif
}

#if CTX_IS_XDP
/* Moves the first `n` bytes (a constant, even) of the packet between
 * overlapping places, 16 bits at a time, in the order that never reads a
 * byte already overwritten: ascending when moving towards the front. */
static __always_inline int xdp_move(void *dst, void *src, const void *end, const __u32 n)
{
	__u16 *d = dst, *s = src;

	if (src + n > end || dst + n > end)
		return -EINVAL;
	if (dst < src) {
#pragma unroll
		for (__u32 i = 0; i < n / 2; i++)
			d[i] = s[i];
	} else {
#pragma unroll
		for (__u32 i = n / 2; i > 0; i--)
			d[i - 1] = s[i - 1];
	}
	return 0;
}
#endif

/*
 * Inserts `len` bytes right after the first `keep` bytes of the packet
 * (`keep` = Ethernet header, or Ethernet + IP base header). The new bytes
 * are uninitialised. tc: bpf_skb_adjust_room, which also keeps the skb's
 * checksum and GSO state consistent; XDP: grow the head and move the kept
 * headers to the new front.
 */
static __always_inline int ctx_insert(ctx_t *ctx, const __u32 keep, const __u32 len)
{
#if CTX_IS_XDP
	void *data;

	if (bpf_xdp_adjust_head(ctx, -(int)len))
		return -ENOMEM;
	data = ctx_data(ctx);
	return xdp_move(data, data + len, ctx_data_end(ctx), keep);
#else
	return bpf_skb_adjust_room(ctx, len, keep == ETH_HLEN ? BPF_ADJ_ROOM_MAC : BPF_ADJ_ROOM_NET, 0);
#endif
}

/* Removes `len` bytes after the first `keep` bytes (the reverse of
 * ctx_insert). */
static __always_inline int ctx_remove(ctx_t *ctx, const __u32 keep, const __u32 len)
{
#if CTX_IS_XDP
	void *data = ctx_data(ctx);

	if (xdp_move(data + len, data, ctx_data_end(ctx), keep))
		return -EINVAL;
	return bpf_xdp_adjust_head(ctx, (int)len);
#else
	return bpf_skb_adjust_room(ctx, -(int)len, keep == ETH_HLEN ? BPF_ADJ_ROOM_MAC : BPF_ADJ_ROOM_NET, 0);
#endif
}

/* Trims (or extends) the packet to `len` bytes from the Ethernet header. */
static __always_inline int ctx_set_len(ctx_t *ctx, __u32 len)
{
#if CTX_IS_XDP
	return bpf_xdp_adjust_tail(ctx, (int)len - (int)ctx_len(ctx));
#else
	return bpf_skb_change_tail(ctx, len, 0);
#endif
}

/* Sends the packet out of `ifindex` (its egress). XDP transmits back out of
 * the ingress device with XDP_TX. */
static __always_inline int ctx_redirect(ctx_t *ctx, __u32 ifindex)
{
#if CTX_IS_XDP
	if (ifindex == ctx->ingress_ifindex)
		return XDP_TX;
#endif
	return bpf_redirect(ifindex, 0);
}

#endif /* __AXON_CTX_H */
