/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Internet checksum arithmetic (RFC 1071/1624) for incremental updates.
 *
 * Every value is summed exactly as it lies in the packet (network order,
 * loaded raw): one's complement sums do not care about byte order as long
 * as everything, the checksum field included, is read the same way.
 *
 * A "diff" is the one's complement sum of (~old + new) over the changed
 * words; applying it to a checksum field is one fold. The same diff serves
 * the skb helpers (bpf_l4_csum_replace with a 0 size takes a diff) and the
 * pointer-based updates XDP needs.
 */
#ifndef __AXON_CSUM_H
#define __AXON_CSUM_H

#include <linux/types.h>
#include <bpf/bpf_endian.h>

/* One's complement 32-bit add with end-around carry. */
static __always_inline __u32 csum_add(__u32 a, __u32 b)
{
	a += b;
	return a + (a < b);
}

/* Folds a 32-bit sum to 16 bits and complements it: a checksum field. */
static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* The diff of a 32-bit word changing from `from` to `to`. */
static __always_inline __u32 csum_diff32(__u32 from, __u32 to)
{
	return csum_add(~from, to);
}

/* The diff of a 16-bit word; ~from is taken in 16 bits so the carry
 * arithmetic stays in one's complement. */
static __always_inline __u32 csum_diff16(__u16 from, __u16 to)
{
	return csum_add((__u16)~from, to);
}

/* The diff of a 16-byte address changing (four 32-bit words). */
static __always_inline __u32 csum_diff128(const __u32 from[4], const __u32 to[4])
{
	__u32 d = 0;

	d = csum_add(d, csum_diff32(from[0], to[0]));
	d = csum_add(d, csum_diff32(from[1], to[1]));
	d = csum_add(d, csum_diff32(from[2], to[2]));
	d = csum_add(d, csum_diff32(from[3], to[3]));
	return d;
}

/* Applies `diff` to a complete checksum (the field holds ~sum). */
static __always_inline __u16 csum_apply(__u16 field, __u32 diff)
{
	return csum_fold(csum_add((__u16)~field, diff));
}

/* Sum of a 16-byte address, for pseudo-headers. */
static __always_inline __u32 csum_sum128(const __u32 a[4])
{
	__u32 s = csum_add(a[0], a[1]);

	s = csum_add(s, a[2]);
	return csum_add(s, a[3]);
}

/* Sum of `n` 16-bit words at `p` (n a compile-time constant in callers, so
 * the loop unrolls and the verifier sees fixed offsets). */
static __always_inline __u32 csum_words(const __u16 *p, int n, __u32 sum)
{
#pragma unroll
	for (int i = 0; i < n; i++)
		sum = csum_add(sum, p[i]);
	return sum;
}

/*
 * IPv4 pseudo-header sum (RFC 793): addresses, protocol and L4 length, the
 * latter two as the network-order words the header would hold.
 */
static __always_inline __u32 csum_pseudo4(__u32 saddr, __u32 daddr, __u8 proto,
					  __u16 l4_len)
{
	__u32 s = csum_add(saddr, daddr);

	s = csum_add(s, bpf_htons((__u16)proto));
	return csum_add(s, bpf_htons(l4_len));
}

/* IPv6 pseudo-header sum (RFC 8200 8.1). */
static __always_inline __u32 csum_pseudo6(const __u32 saddr[4], const __u32 daddr[4],
					  __u8 proto, __u32 l4_len)
{
	__u32 s = csum_add(csum_sum128(saddr), csum_sum128(daddr));

	s = csum_add(s, bpf_htonl(l4_len));
	return csum_add(s, bpf_htonl((__u32)proto));
}

/*
 * True when an L4 checksum field holds only the pseudo-header sum, which is
 * what a CHECKSUM_PARTIAL packet carries: the sender (a local socket, or
 * one behind a veth) left the rest to offload that never ran. Such a field
 * must not be updated as a complete checksum. A complete checksum matches
 * by chance once in 65536 packets; callers only use this to hand the packet
 * to a path that handles both kinds, so a false match costs speed, never
 * correctness.
 */
static __always_inline int csum_looks_partial(__u16 field, __u32 pseudo)
{
	return field == (__u16)~csum_fold(pseudo);
}

#endif /* __AXON_CSUM_H */
