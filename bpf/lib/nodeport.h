/* SPDX-License-Identifier: Apache-2.0 */
/*
 * North-south load balancing on node devices, shared by tc (nodeport.c)
 * and XDP (xdp.c).
 *
 * Ingress, per packet, for IPv4 and IPv6 TCP/UDP:
 *  1. a DSR packet from a load-balancing node (carrying the frontend in an
 *     IP option / extension header): this node hosts the backend; record a
 *     REPLY conntrack entry, strip the option, hand the packet to the stack;
 *  2. a conntrack SERVICE hit: translate as the flow was set up;
 *  3. a conntrack REPLY hit of a SNAT flow: the backend's reply, translate
 *     back to frontend -> client;
 *  4. a frontend (NodePort on a node address, incl. the wildcard entry;
 *     LoadBalancer; externalIPs; HostPort — never ClusterIP, which is
 *     socket-LB's): source ranges, backend selection, then one of
 *       local  backend on this node: destination NAT only, client kept;
 *       SNAT   remote backend, replies come back here: source = the egress
 *              device's address and a port from the SNAT range;
 *       DSR    remote backend, replies go straight to the client: client
 *              kept, frontend carried to the backend's node;
 *     a frontend with no backend answers with a TCP RST / ICMP unreachable.
 *  Translated packets are forwarded with bpf_fib_lookup + redirect.
 *
 * Egress (tc only): replies of node-local and DSR backends leaving towards
 * the client get the frontend as their source.
 *
 * XDP does every step it can finish in XDP and hands the rest to tc
 * unchanged (XDP_PASS): a translation is only committed (conntrack written,
 * packet rewritten) once XDP knows it will transmit the packet itself, so
 * tc never sees a packet XDP translated. XDP hands over: packets whose L4
 * checksum is a CHECKSUM_PARTIAL seed (local/veth senders), flows whose
 * next hop is not a node device (local backends) or needs neighbour
 * resolution. Packets XDP found nothing for are marked in the XDP metadata
 * so tc skips its lookups.
 *
 * Not handled (passed to the stack untouched): IP fragments, IPv6 packets
 * with routing/fragment headers, ICMP errors about translated flows, VLAN.
 */
#ifndef __AXON_NODEPORT_H
#define __AXON_NODEPORT_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
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
#include "nat.h"
#include "dsr.h"
#include "reject.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* A handler that did not decide: the caller goes on. Distinct from every
 * tc and XDP verdict. */
#define NP_CONTINUE 0x7fff

/* Translation mode of a new flow. */
enum np_mode {
	NP_MODE_LOCAL = 0,
	NP_MODE_SNAT,
	NP_MODE_DSR,
};

/* What a fib lookup for a translated packet found: the verdict, and for a
 * forwardable next hop its device, MACs and MTU. Kept apart from the lookup's
 * 64-byte parameters so those do not stay on the stack. */
struct np_hop {
	int rc;
	__u32 ifindex;
	__u16 mtu;
	__u8 smac[ETH_ALEN];
	__u8 dmac[ETH_ALEN];
};

static __always_inline void np_hop_from(struct np_hop *hop, const struct bpf_fib_lookup *params,
					int rc)
{
	hop->rc = rc;
	hop->ifindex = params->ifindex;
	hop->mtu = params->mtu_result;
	__builtin_memcpy(hop->smac, params->smac, ETH_ALEN);
	__builtin_memcpy(hop->dmac, params->dmac, ETH_ALEN);
}

/* ------------------------------------------------------- shared pieces -- */

static __always_inline int np_set_macs(ctx_t *ctx, const struct np_hop *hop)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return -EINVAL;
	__builtin_memcpy(eth->h_dest, hop->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, hop->smac, ETH_ALEN);
	return 0;
}

/* Whether XDP can transmit the packet itself: a resolved next hop out of
 * the ingress device (XDP_TX) or another node device (redirect; node devices
 * are the ones the loader prepared for XDP), and a TTL left to spend. */
static __always_inline int np_xdp_can_send(ctx_t *ctx, const struct np_hop *hop, __u8 ttl)
{
	__u32 ifindex = hop->ifindex;

	if (hop->rc != BPF_FIB_LKUP_RET_SUCCESS || ttl <= 1)
		return 0;
	if (ifindex == ctx_ifindex(ctx))
		return 1;
	return bpf_map_lookup_elem(&axon_devices, &ifindex) != NULL;
}

static __always_inline int np_dec_ttl(ctx_t *ctx, int is_v6)
{
	return is_v6 ? ip6_dec_hop_limit(ctx) : ip4_dec_ttl(ctx);
}

/*
 * Sends a translated packet on by its fib lookup: redirect with the
 * looked-up MACs; in tc, a next hop without a neighbour entry goes through
 * bpf_redirect_neigh, and anything the fib cannot forward (a local address,
 * no route, forwarding off, too big) is left to the stack, which routes the
 * translated packet itself.
 */
static __always_inline int np_send(ctx_t *ctx, const struct np_hop *hop, int is_v6)
{
	switch (hop->rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		if (np_dec_ttl(ctx, is_v6))
			return CTX_ACT_OK;
		if (np_set_macs(ctx, hop))
			return CTX_ACT_DROP;
		if (CTX_IS_XDP)
			axon_metric_inc(AXON_METRIC_XDP_FWD);
		return ctx_redirect(ctx, hop->ifindex);
#if !CTX_IS_XDP
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		if (np_dec_ttl(ctx, is_v6))
			return CTX_ACT_OK;
		return bpf_redirect_neigh(hop->ifindex, NULL, 0, 0);
#endif
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return CTX_ACT_OK;
	default:
		axon_metric_inc(AXON_METRIC_NP_FIB_FAIL);
		return CTX_ACT_OK;
	}
}

/* The fib's MTU check: XDP frames have no skb, so the length is given;
 * tc leaves it 0 and the kernel checks the skb itself (GSO-aware). */
static __always_inline __u16 np_fib_len(__u32 l3_len)
{
	return CTX_IS_XDP ? (__u16)l3_len : 0;
}

#if CTX_IS_XDP
static __always_inline void np_xdp_mark_skip(ctx_t *ctx)
{
	void *meta, *data;

	if (bpf_xdp_adjust_meta(ctx, -(int)sizeof(__u32)))
		return;
	meta = (void *)(long)ctx->data_meta;
	data = ctx_data(ctx);
	if (meta + sizeof(__u32) > data)
		return;
	*(__u32 *)meta = AXON_XDP_META_SKIP;
}
#define np_mark_skip(ctx) np_xdp_mark_skip(ctx)
#else
#define np_mark_skip(ctx) do { } while (0)

/* Whether xdp_nodeport already looked at this packet and found nothing. */
static __always_inline int np_xdp_skipped(ctx_t *ctx)
{
	void *meta = (void *)(long)ctx->data_meta;
	void *data = ctx_data(ctx);

	if (meta + sizeof(__u32) > data)
		return 0;
	return *(__u32 *)meta == AXON_XDP_META_SKIP;
}
#endif

/* North-south serves every frontend type but ClusterIP. */
static __always_inline int np_serves(__u8 svc_type)
{
	return svc_type != AXON_SVC_CLUSTER_IP;
}

/* ---------------------------------------------------------------- IPv4 -- */

struct np4_pkt {
	struct tuple4 t; /* as received */
	__u32 l4_off;  /* from the Ethernet header */
	__u32 len;     /* whole packet, for the counters */
	__u16 tot_len; /* IP total length */
	__u8 proto;
	__u8 tcp_flags;
	__u8 ihl;
	__u8 ttl;
	__u8 pad[2];
};

/* Parses an IPv4 TCP/UDP packet (the Ethernet type already checked); -1
 * for anything north-south does not handle. */
static __always_inline int np4_parse(ctx_t *ctx, struct np4_pkt *p)
{
	void *data, *end;
	struct iphdr *ip;
	__u32 l4_off, l4_len;

	if (ctx_pull(ctx, ETH_HLEN + sizeof(struct iphdr) + sizeof(struct dsr_opt4) +
				  sizeof(struct tcp_plain)))
		return -1;
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	ip = data + ETH_HLEN;
	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5)
		return -1;
	/* Fragments: only the first has ports, and the rest would miss the
	 * translation; the stack reassembles for local services only. */
	if (ip->frag_off & bpf_htons(0x3fff))
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	p->proto = ip->protocol;
	p->t.saddr = ip->saddr;
	p->t.daddr = ip->daddr;
	p->tot_len = bpf_ntohs(ip->tot_len);
	p->ihl = ip->ihl;
	p->ttl = ip->ttl;
	l4_off = ETH_HLEN + p->ihl * 4;
	l4_len = p->proto == IPPROTO_TCP ? sizeof(struct tcp_plain) : 8;
	if (data + l4_off + l4_len > end) {
		if (ctx_pull(ctx, l4_off + l4_len))
			return -1;
		data = ctx_data(ctx);
		end = ctx_data_end(ctx);
	}
	if (l4_off > ETH_HLEN + 60 || data + l4_off + l4_len > end)
		return -1;
	p->l4_off = l4_off;
	p->t.sport = *(__be16 *)(data + l4_off);
	p->t.dport = *(__be16 *)(data + l4_off + 2);
	p->tcp_flags = p->proto == IPPROTO_TCP ? *(__u8 *)(data + l4_off + 13) : 0;
	p->len = ctx_len(ctx);
	return 0;
}

/* XDP only: whether the L4 checksum is a CHECKSUM_PARTIAL seed. */
static __always_inline int np4_csum_partial(ctx_t *ctx, const struct np4_pkt *p)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	__u32 off = p->l4_off + l4_csum_off(p->proto);
	__u16 *field;

	if (off > ETH_HLEN + 60 + 16)
		return 1;
	field = data + off;
	if ((void *)(field + 1) > end)
		return 1;
	if (p->proto == IPPROTO_UDP && *field == 0)
		return 0;
	return csum_looks_partial(*field, csum_pseudo4(p->t.saddr, p->t.daddr, p->proto,
						       p->tot_len - p->ihl * 4));
}

static __always_inline void np4_fib(ctx_t *ctx, struct np_hop *hop, const struct np4_pkt *p,
				    const struct tuple4 *t, __u32 extra_len)
{
	struct bpf_fib_lookup params = {};

	params.family = AF_INET;
	params.l4_protocol = p->proto;
	params.sport = t->sport;
	params.dport = t->dport;
	params.tot_len = np_fib_len(p->tot_len + extra_len);
	params.ifindex = ctx_ifindex(ctx);
	params.ipv4_src = t->saddr;
	params.ipv4_dst = t->daddr;
	np_hop_from(hop, &params, bpf_fib_lookup(ctx, &params, sizeof(params), 0));
}

/* DSR carries the frontend on what may open state at the backend's node. */
static __always_inline int np_dsr_opt_needed(__u8 proto, __u8 tcp_flags)
{
	return proto == IPPROTO_UDP || (tcp_flags & TCP_FLAG_SYN);
}

/* Translates and sends a packet of a known flow (client -> frontend). */
static __noinline int np4_ct_forward(ctx_t *ctx, const struct np4_pkt *p,
					  struct ct4_entry *e, __u32 now)
{
	struct tuple4 to;
	__be32 frontend_addr = e->frontend_addr;
	__be16 frontend_port = e->frontend_port;
	int dsr = (e->flags & AXON_CT_F_DSR) && np_dsr_opt_needed(p->proto, p->tcp_flags) &&
		  p->ihl == 5;
	struct np_hop hop;

	to = p->t;
	to.daddr = e->backend_addr;
	to.dport = e->backend_port;
	if (e->flags & AXON_CT_F_SNAT) {
		to.saddr = e->nat_addr;
		to.sport = e->nat_port;
	}
	np4_fib(ctx, &hop, p, &to, dsr ? sizeof(struct dsr_opt4) : 0);
	if (CTX_IS_XDP && !np_xdp_can_send(ctx, &hop, p->ttl))
		return CTX_ACT_OK;

	ct4_touch(e, AXON_CT_DIR_SERVICE, p->proto, p->tcp_flags, p->len, now);
	if (nat4_rewrite(ctx, p->l4_off, p->proto, &p->t, &to))
		return CTX_ACT_DROP;
	if (dsr && dsr4_insert(ctx, frontend_addr, frontend_port))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_FWD);
	return np_send(ctx, &hop, 0);
}

/* Translates a SNAT flow's reply (backend -> node) back to frontend ->
 * client and sends it on. */
static __noinline int np4_ct_reply(ctx_t *ctx, const struct np4_pkt *p,
					struct ct4_entry *e, __u32 now)
{
	struct tuple4 to;
	struct np_hop hop;

	to.saddr = e->frontend_addr;
	to.sport = e->frontend_port;
	to.daddr = e->client_addr;
	to.dport = e->client_port;
	np4_fib(ctx, &hop, p, &to, 0);
	if (CTX_IS_XDP && !np_xdp_can_send(ctx, &hop, p->ttl))
		return CTX_ACT_OK;

	ct4_touch(e, AXON_CT_DIR_REPLY, p->proto, p->tcp_flags, p->len, now);
	if (nat4_rewrite(ctx, p->l4_off, p->proto, &p->t, &to))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_REV);
	return np_send(ctx, &hop, 0);
}

static __noinline int np4_reject(ctx_t *ctx, const struct np4_pkt *p)
{
	axon_metric_inc(AXON_METRIC_NP_NO_BACKEND);
	if (p->proto == IPPROTO_TCP)
		return reject4_rst(ctx, p->l4_off);
	return reject4_icmp(ctx);
}

/* The backend chosen for a new flow, and what the flow needs of its service. */
struct np4_choice {
	struct lb4_backend be;
	__u32 backend_id;
	__u32 rev_nat_index;
	__u8 svc_flags;
	__u8 pad[3];
};

/* Source ranges and backend selection for a new flow to `fe`: 0 with a
 * choice, -EPERM for a denied source, -ENOENT for no backend. */
static __noinline int np4_select(const struct np4_pkt *p, const struct lb4_frontend *fe,
				  struct np4_choice *c)
{
	struct lb_select_args args = {};

	if (!lb4_source_allowed(fe, p->t.saddr)) {
		axon_metric_inc(AXON_METRIC_NP_SRC_DENIED);
		return -EPERM;
	}
	__builtin_memcpy(args.aff.client, &p->t.saddr, sizeof(p->t.saddr));
	args.aff.client_kind = AXON_AFFINITY_CLIENT_ADDR;
	args.hash = lb4_flow_hash(p->t.saddr, p->t.daddr, p->t.sport, p->t.dport, p->proto);
	args.allow_maglev = 1;
	if (lb4_select(fe, &args, &c->be, &c->backend_id) != LB_SELECTED)
		return -ENOENT;
	c->rev_nat_index = fe->rev_nat_index;
	c->svc_flags = fe->flags;
	return 0;
}

/* Sets up a new flow to the chosen backend and sends its first packet. */
static __noinline int np4_new_flow(ctx_t *ctx, const struct np4_pkt *p,
				 const struct np4_choice *c, __u32 now)
{
	const struct axon_device *dev;
	struct ct4_key key;
	struct tuple4 to;
	struct ct4_entry e = {};
	enum np_mode mode = NP_MODE_LOCAL;
	__u32 ifindex;
	struct np_hop hop;
	int dsr_opt;

	to = p->t;
	to.daddr = c->be.address;
	to.dport = c->be.port;
	np4_fib(ctx, &hop, p, &to, 0);

	/* Remote: not marked local, and the route leaves by a node device. */
	e.nat_addr = 0;
	if (!(c->be.flags & AXON_BE_F_LOCAL) &&
	    (hop.rc == BPF_FIB_LKUP_RET_SUCCESS || hop.rc == BPF_FIB_LKUP_RET_NO_NEIGH)) {
		ifindex = hop.ifindex;
		dev = bpf_map_lookup_elem(&axon_devices, &ifindex);
		if (dev && (c->svc_flags & AXON_SVC_F_DSR) && p->ihl == 5)
			mode = NP_MODE_DSR;
		else if (dev && dev->ipv4)
			mode = NP_MODE_SNAT;
		if (dev)
			e.nat_addr = dev->ipv4;
	}
	dsr_opt = mode == NP_MODE_DSR && np_dsr_opt_needed(p->proto, p->tcp_flags);
	/* XDP's fib lookup checked the MTU without the DSR option. */
	if (CTX_IS_XDP && (!np_xdp_can_send(ctx, &hop, p->ttl) ||
			   (dsr_opt && p->tot_len + sizeof(struct dsr_opt4) > hop.mtu)))
		return CTX_ACT_OK;

	e.rev_nat_index = c->rev_nat_index;
	e.backend_id = c->backend_id;
	e.client_addr = p->t.saddr;
	e.client_port = p->t.sport;
	e.frontend_addr = p->t.daddr;
	e.frontend_port = p->t.dport;
	e.backend_addr = c->be.address;
	e.backend_port = c->be.port;
	ct4_entry_start(&e, p->proto, p->tcp_flags, p->len, now);
	switch (mode) {
	case NP_MODE_SNAT:
		e.flags = AXON_CT_F_SNAT;
		ct4_key_init(&key, c->be.address, e.nat_addr, c->be.port, 0, p->proto, AXON_CT_DIR_REPLY);
		if (snat4_claim(&key, &e, now))
			return CTX_ACT_DROP;
		to.saddr = e.nat_addr;
		to.sport = e.nat_port;
		break;
	case NP_MODE_DSR:
		e.flags = AXON_CT_F_DSR;
		e.nat_addr = 0;
		break;
	default:
		e.flags = AXON_CT_F_LOCAL;
		e.nat_addr = 0;
		ct4_key_init(&key, c->be.address, p->t.saddr, c->be.port, p->t.sport, p->proto,
			     AXON_CT_DIR_REPLY);
		ct4_put(&key, &e);
		break;
	}
	ct4_key_init(&key, p->t.saddr, p->t.daddr, p->t.sport, p->t.dport, p->proto, AXON_CT_DIR_SERVICE);
	if (ct4_put(&key, &e))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_CT_NEW);

	if (nat4_rewrite(ctx, p->l4_off, p->proto, &p->t, &to))
		return CTX_ACT_DROP;
	if (dsr_opt && dsr4_insert(ctx, p->t.daddr, p->t.dport))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_FWD);
	return np_send(ctx, &hop, 0);
}

/*
 * This node hosts the backend of a DSR flow: remember (backend -> client)
 * with the frontend the client used, so nodeport_egress can give the reply
 * that source; then drop the option and let the stack deliver the packet.
 */
static __noinline int np4_dsr_backend(ctx_t *ctx, const struct np4_pkt *p, __u32 now)
{
	struct ct4_entry *old, e = {};
	struct ct4_key key;
	__be32 addr;
	__be16 port;

	if (!dsr4_parse(ctx, &addr, &port))
		return NP_CONTINUE;
	ct4_key_init(&key, p->t.daddr, p->t.saddr, p->t.dport, p->t.sport, p->proto, AXON_CT_DIR_REPLY);
	old = ct4_lookup(&key, now);
	if (old && old->frontend_addr == addr && old->frontend_port == port &&
	    !ct_tcp_reopens(p->proto, old->tcp_state, p->tcp_flags)) {
		ct4_touch(old, AXON_CT_DIR_REPLY, p->proto, p->tcp_flags, p->len, now);
	} else {
		e.client_addr = p->t.saddr;
		e.client_port = p->t.sport;
		e.frontend_addr = addr;
		e.frontend_port = port;
		e.backend_addr = p->t.daddr;
		e.backend_port = p->t.dport;
		e.flags = AXON_CT_F_DSR_BACKEND;
		ct4_entry_start(&e, p->proto, p->tcp_flags, p->len, now);
		ct4_put(&key, &e);
		axon_metric_inc(AXON_METRIC_NP_CT_NEW);
	}
	if (dsr4_strip(ctx))
		return CTX_ACT_DROP;
	np_mark_skip(ctx);
	return CTX_ACT_OK;
}

/* Whether a flow's backend is still what it was when the flow began (the
 * id may since have been freed, or reused for another backend). */
static __always_inline int np4_backend_current(const struct ct4_entry *e)
{
	__u32 id = e->backend_id;
	const struct lb4_backend *be = bpf_map_lookup_elem(&axon_lb4_backends, &id);

	return be && be->address == e->backend_addr && be->port == e->backend_port;
}

/* A packet of no known flow: a new flow if it is for a frontend. */
static __always_inline int np4_new_service_flow(ctx_t *ctx, const struct np4_pkt *p, __u32 now)
{
	struct np4_choice choice;
	struct lb4_frontend fe;
	int ret;

	if (!lb4_lookup_frontend(p->t.daddr, p->t.dport, p->proto, &fe) || !np_serves(fe.svc_type)) {
		np_mark_skip(ctx);
		return CTX_ACT_OK;
	}
	ret = np4_select(p, &fe, &choice);
	if (ret == -EPERM)
		return CTX_ACT_DROP;
	if (ret)
		return np4_reject(ctx, p);
	return np4_new_flow(ctx, p, &choice, now);
}

static __noinline int np4_ingress(ctx_t *ctx)
{
	struct np4_pkt p;
	__u32 now;
	int ret;

	if (np4_parse(ctx, &p))
		return CTX_ACT_OK;
	now = axon_now();
	if (p.ihl == 7) {
		ret = np4_dsr_backend(ctx, &p, now);
		if (ret != NP_CONTINUE)
			return ret;
	}
	if (CTX_IS_XDP && np4_csum_partial(ctx, &p))
		return CTX_ACT_OK;

	{
		/* Scoped: the key's stack is reused by the new-flow path. */
		struct ct4_entry *e;
		struct ct4_key key;

		ct4_key_init(&key, p.t.saddr, p.t.daddr, p.t.sport, p.t.dport, p.proto, AXON_CT_DIR_SERVICE);
		e = ct4_lookup(&key, now);
		/* A flow whose backend is gone is balanced afresh. */
		if (e && !ct_tcp_reopens(p.proto, e->tcp_state, p.tcp_flags) &&
		    np4_backend_current(e))
			return np4_ct_forward(ctx, &p, e, now);

		key.dir = AXON_CT_DIR_REPLY;
		e = ct4_lookup(&key, now);
		if (e && (e->flags & AXON_CT_F_SNAT))
			return np4_ct_reply(ctx, &p, e, now);
	}

	return np4_new_service_flow(ctx, &p, now);
}

#if !CTX_IS_XDP
/* A node-local or DSR backend's reply leaving for the client: it must come
 * from the frontend the client talked to. */
static __noinline int np4_egress(ctx_t *ctx)
{
	struct tuple4 to;
	struct ct4_entry *e;
	struct ct4_key key;
	struct np4_pkt p;
	__u32 now;

	if (np4_parse(ctx, &p))
		return CTX_ACT_OK;
	now = axon_now();
	ct4_key_init(&key, p.t.saddr, p.t.daddr, p.t.sport, p.t.dport, p.proto, AXON_CT_DIR_REPLY);
	e = ct4_lookup(&key, now);
	if (!e || !(e->flags & (AXON_CT_F_LOCAL | AXON_CT_F_DSR_BACKEND)))
		return CTX_ACT_OK;
	to = p.t;
	to.saddr = e->frontend_addr;
	to.sport = e->frontend_port;
	ct4_touch(e, AXON_CT_DIR_REPLY, p.proto, p.tcp_flags, p.len, now);
	if (nat4_rewrite(ctx, p.l4_off, p.proto, &p.t, &to))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_REV);
	return CTX_ACT_OK;
}
#endif

/* ---------------------------------------------------------------- IPv6 -- */

struct np6_pkt {
	struct tuple6 t; /* as received */
	__u32 l4_off;
	__u32 len;
	__u16 payload_len;
	__u8 proto;
	__u8 tcp_flags;
	__u8 hop_limit;
	__u8 has_ext; /* extension headers before L4 */
	__u8 pad[2];
};

/* Extension headers walked before giving up on a packet. */
#define NP6_MAX_EXT 4

static __always_inline int np6_parse(ctx_t *ctx, struct np6_pkt *p)
{
	void *data, *end;
	struct ipv6hdr *ip6;
	__u32 off = ETH_HLEN + sizeof(struct ipv6hdr), l4_len;
	__u8 nexthdr;

	if (ctx_pull(ctx, ETH_HLEN + sizeof(struct ipv6hdr) + sizeof(struct dsr_opt6) +
				  sizeof(struct tcp_plain)))
		return -1;
	data = ctx_data(ctx);
	end = ctx_data_end(ctx);
	ip6 = data + ETH_HLEN;
	if ((void *)(ip6 + 1) > end || ip6->version != 6)
		return -1;
	nexthdr = ip6->nexthdr;
	p->has_ext = 0;
#pragma unroll
	for (int i = 0; i < NP6_MAX_EXT; i++) {
		__u8 *ext;

		if (nexthdr == IPPROTO_TCP || nexthdr == IPPROTO_UDP)
			break;
		/* Routing headers change the pseudo-header's destination,
		 * fragments have no ports: both are left to the stack. */
		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_DSTOPTS)
			return -1;
		ext = data + off;
		if ((void *)(ext + 2) > end)
			return -1;
		nexthdr = ext[0];
		off += (ext[1] + 1) * 8;
		if (off > NAT_MAX_L4_OFF - sizeof(struct tcp_plain))
			return -1;
		p->has_ext = 1;
	}
	if (nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP)
		return -1;
	p->proto = nexthdr;
	__builtin_memcpy(p->t.saddr, &ip6->saddr, 16);
	__builtin_memcpy(p->t.daddr, &ip6->daddr, 16);
	p->payload_len = bpf_ntohs(ip6->payload_len);
	p->hop_limit = ip6->hop_limit;
	l4_len = p->proto == IPPROTO_TCP ? sizeof(struct tcp_plain) : 8;
	if (data + off + l4_len > end) {
		if (ctx_pull(ctx, off + l4_len))
			return -1;
		data = ctx_data(ctx);
		end = ctx_data_end(ctx);
	}
	if (off > NAT_MAX_L4_OFF || data + off + l4_len > end)
		return -1;
	p->l4_off = off;
	p->t.sport = *(__be16 *)(data + off);
	p->t.dport = *(__be16 *)(data + off + 2);
	p->tcp_flags = p->proto == IPPROTO_TCP ? *(__u8 *)(data + off + 13) : 0;
	p->len = ctx_len(ctx);
	return 0;
}

static __always_inline __u32 np6_l4_len(const struct np6_pkt *p)
{
	return p->payload_len - (p->l4_off - ETH_HLEN - sizeof(struct ipv6hdr));
}

static __always_inline int np6_csum_partial(ctx_t *ctx, const struct np6_pkt *p)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	__u32 off = p->l4_off + l4_csum_off(p->proto);
	__u16 *field;

	if (off > NAT_MAX_L4_OFF + 16)
		return 1;
	field = data + off;
	if ((void *)(field + 1) > end)
		return 1;
	return csum_looks_partial(*field, csum_pseudo6(p->t.saddr, p->t.daddr, p->proto,
						       np6_l4_len(p)));
}

static __always_inline void np6_fib(ctx_t *ctx, struct np_hop *hop, const struct np6_pkt *p,
				    const __u32 *saddr, __be16 sport, const __u32 *daddr,
				    __be16 dport)
{
	struct bpf_fib_lookup params = {};

	params.family = AF_INET6;
	params.l4_protocol = p->proto;
	params.sport = sport;
	params.dport = dport;
	params.tot_len = np_fib_len(sizeof(struct ipv6hdr) + p->payload_len);
	params.ifindex = ctx_ifindex(ctx);
	__builtin_memcpy(params.ipv6_src, saddr, 16);
	__builtin_memcpy(params.ipv6_dst, daddr, 16);
	np_hop_from(hop, &params, bpf_fib_lookup(ctx, &params, sizeof(params), 0));
}

/* XDP checked the MTU without the DSR extension header it would add. */
static __always_inline int np6_xdp_can_send(ctx_t *ctx, const struct np6_pkt *p,
					    const struct np_hop *hop, int dsr)
{
	return np_xdp_can_send(ctx, hop, p->hop_limit) &&
	       (!dsr || sizeof(struct ipv6hdr) + p->payload_len + sizeof(struct dsr_opt6) <= hop->mtu);
}

static __noinline int np6_ct_forward(ctx_t *ctx, const struct np6_pkt *p,
				     struct ct6_entry *e, __u32 now)
{
	int dsr = (e->flags & AXON_CT_F_DSR) && np_dsr_opt_needed(p->proto, p->tcp_flags) &&
		  !p->has_ext;
	int snat = e->flags & AXON_CT_F_SNAT;
	const __u32 *saddr = snat ? (const __u32 *)e->nat_addr : p->t.saddr;
	__be16 sport = snat ? e->nat_port : p->t.sport;
	struct np_hop hop;

	np6_fib(ctx, &hop, p, saddr, sport, (const __u32 *)e->backend_addr, e->backend_port);
	if (CTX_IS_XDP && !np6_xdp_can_send(ctx, p, &hop, dsr))
		return CTX_ACT_OK;

	ct6_touch(e, AXON_CT_DIR_SERVICE, p->proto, p->tcp_flags, p->len, now);
	if (nat6_rewrite(ctx, p->l4_off, p->proto, &p->t, saddr, sport,
			 (const __u32 *)e->backend_addr, e->backend_port))
		return CTX_ACT_DROP;
	if (dsr && dsr6_insert(ctx, (const __u32 *)e->frontend_addr, e->frontend_port))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_FWD);
	return np_send(ctx, &hop, 1);
}

static __noinline int np6_ct_reply(ctx_t *ctx, const struct np6_pkt *p,
				   struct ct6_entry *e, __u32 now)
{
	struct np_hop hop;

	np6_fib(ctx, &hop, p, (const __u32 *)e->frontend_addr, e->frontend_port,
		(const __u32 *)e->client_addr, e->client_port);
	if (CTX_IS_XDP && !np6_xdp_can_send(ctx, p, &hop, 0))
		return CTX_ACT_OK;

	ct6_touch(e, AXON_CT_DIR_REPLY, p->proto, p->tcp_flags, p->len, now);
	if (nat6_rewrite(ctx, p->l4_off, p->proto, &p->t, (const __u32 *)e->frontend_addr,
			 e->frontend_port, (const __u32 *)e->client_addr, e->client_port))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_REV);
	return np_send(ctx, &hop, 1);
}

static __noinline int np6_reject(ctx_t *ctx, const struct np6_pkt *p)
{
	axon_metric_inc(AXON_METRIC_NP_NO_BACKEND);
	if (p->proto == IPPROTO_TCP)
		return reject6_rst(ctx, p->l4_off);
	return reject6_icmp(ctx);
}

/* The backend chosen for a new flow, and what the flow needs of its service. */
struct np6_choice {
	struct lb6_backend be;
	__u32 backend_id;
	__u32 rev_nat_index;
	__u8 svc_flags;
	__u8 pad[3];
};

static __noinline int np6_select(const struct np6_pkt *p, const struct lb6_frontend *fe,
				 struct np6_choice *c)
{
	struct lb_select_args args = {};

	if (!lb6_source_allowed(fe, p->t.saddr)) {
		axon_metric_inc(AXON_METRIC_NP_SRC_DENIED);
		return -EPERM;
	}
	__builtin_memcpy(args.aff.client, p->t.saddr, 16);
	args.aff.client_kind = AXON_AFFINITY_CLIENT_ADDR;
	args.hash = lb6_flow_hash(p->t.saddr, p->t.daddr, p->t.sport, p->t.dport, p->proto);
	args.allow_maglev = 1;
	if (lb6_select(fe, &args, &c->be, &c->backend_id) != LB_SELECTED)
		return -ENOENT;
	c->rev_nat_index = fe->rev_nat_index;
	c->svc_flags = fe->flags;
	return 0;
}

static __noinline int np6_new_flow(ctx_t *ctx, const struct np6_pkt *p,
				   const struct np6_choice *c, __u32 now)
{
	const __u32 *baddr = (const __u32 *)c->be.address;
	const struct axon_device *dev = NULL;
	enum np_mode mode = NP_MODE_LOCAL;
	struct np_hop hop;
	__u32 ifindex;
	int dsr_opt;

	np6_fib(ctx, &hop, p, p->t.saddr, p->t.sport, baddr, c->be.port);
	if (!(c->be.flags & AXON_BE_F_LOCAL) &&
	    (hop.rc == BPF_FIB_LKUP_RET_SUCCESS || hop.rc == BPF_FIB_LKUP_RET_NO_NEIGH)) {
		ifindex = hop.ifindex;
		dev = bpf_map_lookup_elem(&axon_devices, &ifindex);
		if (dev && (c->svc_flags & AXON_SVC_F_DSR) && !p->has_ext)
			mode = NP_MODE_DSR;
		else if (dev && !ipv6_addr_is_zero(dev->ipv6))
			mode = NP_MODE_SNAT;
	}
	dsr_opt = mode == NP_MODE_DSR && np_dsr_opt_needed(p->proto, p->tcp_flags);
	if (CTX_IS_XDP && !np6_xdp_can_send(ctx, p, &hop, dsr_opt))
		return CTX_ACT_OK;

	{
		/* Scoped after the fib lookup: its parameters and the entry
		 * never live at once, and share stack. */
		struct ct6_entry e = {};
		struct ct6_key key;
		int snat = mode == NP_MODE_SNAT && dev;

		e.rev_nat_index = c->rev_nat_index;
		e.backend_id = c->backend_id;
		__builtin_memcpy(e.client_addr, p->t.saddr, 16);
		e.client_port = p->t.sport;
		__builtin_memcpy(e.frontend_addr, p->t.daddr, 16);
		e.frontend_port = p->t.dport;
		__builtin_memcpy(e.backend_addr, c->be.address, 16);
		e.backend_port = c->be.port;
		ct6_entry_start(&e, p->proto, p->tcp_flags, p->len, now);
		if (snat) {
			e.flags = AXON_CT_F_SNAT;
			__builtin_memcpy(e.nat_addr, dev->ipv6, 16);
			ct6_key_init(&key, c->be.address, e.nat_addr, c->be.port, 0, p->proto,
				     AXON_CT_DIR_REPLY);
			if (snat6_claim(&key, &e, now))
				return CTX_ACT_DROP;
		} else if (mode == NP_MODE_DSR) {
			e.flags = AXON_CT_F_DSR;
		} else {
			e.flags = AXON_CT_F_LOCAL;
			ct6_key_init(&key, c->be.address, p->t.saddr, c->be.port, p->t.sport,
				     p->proto, AXON_CT_DIR_REPLY);
			ct6_put(&key, &e);
		}
		ct6_key_init(&key, p->t.saddr, p->t.daddr, p->t.sport, p->t.dport, p->proto,
			     AXON_CT_DIR_SERVICE);
		if (ct6_put(&key, &e))
			return CTX_ACT_DROP;
		axon_metric_inc(AXON_METRIC_NP_CT_NEW);

		if (nat6_rewrite(ctx, p->l4_off, p->proto, &p->t,
				 snat ? (const __u32 *)e.nat_addr : p->t.saddr,
				 snat ? e.nat_port : p->t.sport, baddr, c->be.port))
			return CTX_ACT_DROP;
	}
	if (dsr_opt && dsr6_insert(ctx, p->t.daddr, p->t.dport))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_FWD);
	return np_send(ctx, &hop, 1);
}

static __noinline int np6_dsr_backend(ctx_t *ctx, const struct np6_pkt *p, __u32 now)
{
	struct dsr_opt6 *opt = dsr6_find(ctx);
	struct ct6_entry *old;
	struct ct6_key key;

	if (!opt)
		return NP_CONTINUE;
	ct6_key_init(&key, p->t.daddr, p->t.saddr, p->t.dport, p->t.sport, p->proto,
		     AXON_CT_DIR_REPLY);
	old = ct6_lookup(&key, now);
	if (old && ipv6_addr_equal(old->frontend_addr, opt->addr) && old->frontend_port == opt->port &&
	    !ct_tcp_reopens(p->proto, old->tcp_state, p->tcp_flags)) {
		ct6_touch(old, AXON_CT_DIR_REPLY, p->proto, p->tcp_flags, p->len, now);
	} else {
		struct ct6_entry e = {};

		__builtin_memcpy(e.client_addr, p->t.saddr, 16);
		e.client_port = p->t.sport;
		__builtin_memcpy(e.frontend_addr, opt->addr, 16);
		e.frontend_port = opt->port;
		__builtin_memcpy(e.backend_addr, p->t.daddr, 16);
		e.backend_port = p->t.dport;
		e.flags = AXON_CT_F_DSR_BACKEND;
		ct6_entry_start(&e, p->proto, p->tcp_flags, p->len, now);
		ct6_put(&key, &e);
		axon_metric_inc(AXON_METRIC_NP_CT_NEW);
	}
	if (dsr6_strip(ctx))
		return CTX_ACT_DROP;
	np_mark_skip(ctx);
	return CTX_ACT_OK;
}

static __always_inline int np6_backend_current(const struct ct6_entry *e)
{
	__u32 id = e->backend_id;
	const struct lb6_backend *be = bpf_map_lookup_elem(&axon_lb6_backends, &id);

	return be && ipv6_addr_equal(be->address, e->backend_addr) && be->port == e->backend_port;
}

/* A packet of no known flow: a new flow if it is for a frontend. */
static __always_inline int np6_new_service_flow(ctx_t *ctx, const struct np6_pkt *p, __u32 now)
{
	struct np6_choice choice;
	struct lb6_frontend fe;
	int ret;

	if (!lb6_lookup_frontend(p->t.daddr, p->t.dport, p->proto, &fe) || !np_serves(fe.svc_type)) {
		np_mark_skip(ctx);
		return CTX_ACT_OK;
	}
	ret = np6_select(p, &fe, &choice);
	if (ret == -EPERM)
		return CTX_ACT_DROP;
	if (ret)
		return np6_reject(ctx, p);
	return np6_new_flow(ctx, p, &choice, now);
}

static __noinline int np6_ingress(ctx_t *ctx)
{
	struct np6_pkt p;
	__u32 now;
	int ret;

	if (np6_parse(ctx, &p))
		return CTX_ACT_OK;
	now = axon_now();
	if (p.has_ext) {
		ret = np6_dsr_backend(ctx, &p, now);
		if (ret != NP_CONTINUE)
			return ret;
	}
	if (CTX_IS_XDP && np6_csum_partial(ctx, &p))
		return CTX_ACT_OK;

	{
		/* Scoped: the key's stack is reused by the new-flow path. */
		struct ct6_entry *e;
		struct ct6_key key;

		ct6_key_init(&key, p.t.saddr, p.t.daddr, p.t.sport, p.t.dport, p.proto, AXON_CT_DIR_SERVICE);
		e = ct6_lookup(&key, now);
		if (e && !ct_tcp_reopens(p.proto, e->tcp_state, p.tcp_flags) &&
		    np6_backend_current(e))
			return np6_ct_forward(ctx, &p, e, now);

		key.dir = AXON_CT_DIR_REPLY;
		e = ct6_lookup(&key, now);
		if (e && (e->flags & AXON_CT_F_SNAT))
			return np6_ct_reply(ctx, &p, e, now);
	}

	return np6_new_service_flow(ctx, &p, now);
}

#if !CTX_IS_XDP
static __noinline int np6_egress(ctx_t *ctx)
{
	struct ct6_entry *e;
	struct ct6_key key;
	struct np6_pkt p;
	__u32 now;

	if (np6_parse(ctx, &p))
		return CTX_ACT_OK;
	now = axon_now();
	ct6_key_init(&key, p.t.saddr, p.t.daddr, p.t.sport, p.t.dport, p.proto, AXON_CT_DIR_REPLY);
	e = ct6_lookup(&key, now);
	if (!e || !(e->flags & (AXON_CT_F_LOCAL | AXON_CT_F_DSR_BACKEND)))
		return CTX_ACT_OK;
	ct6_touch(e, AXON_CT_DIR_REPLY, p.proto, p.tcp_flags, p.len, now);
	if (nat6_rewrite(ctx, p.l4_off, p.proto, &p.t, (const __u32 *)e->frontend_addr,
			 e->frontend_port, p.t.daddr, p.t.dport))
		return CTX_ACT_DROP;
	axon_metric_inc(AXON_METRIC_NP_REV);
	return CTX_ACT_OK;
}
#endif

/* ------------------------------------------------------------ dispatch -- */

static __always_inline __be16 np_eth_proto(ctx_t *ctx)
{
	void *data = ctx_data(ctx), *end = ctx_data_end(ctx);
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > end)
		return 0;
	return eth->h_proto;
}

static __always_inline int np_ingress(ctx_t *ctx)
{
	switch (np_eth_proto(ctx)) {
	case bpf_htons(ETH_P_IP):
		return np4_ingress(ctx);
	case bpf_htons(ETH_P_IPV6):
		return np6_ingress(ctx);
	default:
		return CTX_ACT_OK;
	}
}

#if !CTX_IS_XDP
static __always_inline int np_egress(ctx_t *ctx)
{
	switch (np_eth_proto(ctx)) {
	case bpf_htons(ETH_P_IP):
		return np4_egress(ctx);
	case bpf_htons(ETH_P_IPV6):
		return np6_egress(ctx);
	default:
		return CTX_ACT_OK;
	}
}
#endif

#endif /* __AXON_NODEPORT_H */
