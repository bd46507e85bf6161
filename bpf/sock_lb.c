// SPDX-License-Identifier: Apache-2.0
/*
 * Socket-level load balancing for ClusterIP services (cgroup sock_addr hooks).
 *
 * connect() and unconnected UDP sendmsg() to a frontend (VIP, port, proto)
 * are rewritten to one backend picked at random, before any packet exists:
 * there is no per-packet NAT and no conntrack. What was rewritten is
 * remembered per socket (cookie, backend) -> (VIP, port, service id) in
 * axon_lb{4,6}_reverse_sk, so getpeername() and UDP recvmsg() show the VIP,
 * never the backend.
 *
 * A frontend with no backend rejects connect()/sendmsg() at once with
 * ECONNREFUSED (bpf_set_retval), so clients fail fast instead of sending to a
 * VIP nothing answers for.
 *
 * The v6 hooks also serve v4-mapped destinations (::ffff:a.b.c.d, a dual-stack
 * socket talking IPv4) from the v4 maps.
 *
 * North-south frontends are served here too for clients on this node: a
 * connect() to one of the node's addresses on a NodePort/HostPort port finds
 * the wildcard entry; a service with an internal view (internalTraffic-
 * Policy/externalTrafficPolicy=Local, AXON_SVC_F_TWO_SCOPES) is balanced
 * over its internal scope; ClientIP affinity keys on the network namespace,
 * since no source address exists yet at connect() time.
 *
 * post_bind4/post_bind6 keep local processes off the ports NodePort and
 * HostPort services own: such a bind() fails with EADDRINUSE.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "maps.h"
#include "lb.h"

/* Return values of sock_addr programs. */
#define SYS_REJECT  0
#define SYS_PROCEED 1

/* The kernel checks the license string only to gate GPL-only helpers, none
 * of which are used here. */
char _license[] SEC("license") = "Apache-2.0";

/* Only TCP and UDP have services; everything else passes untouched. */
static __always_inline int sock_lb_proto(const struct bpf_sock_addr *ctx,
					 __u8 *proto)
{
	__u32 p = ctx->protocol;

	if (p != IPPROTO_TCP && p != IPPROTO_UDP)
		return 0;
	*proto = (__u8)p;
	return 1;
}

/* user_port holds the port in network order in its low 16 bits. */
static __always_inline __be16 ctx_port(const struct bpf_sock_addr *ctx)
{
	return (__be16)ctx->user_port;
}

/* Refuse the syscall with ECONNREFUSED instead of the default EPERM: a
 * client (and its retry logic) must read it as "nothing listens here". */
static __always_inline int sock_reject(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return SYS_REJECT;
}

/* ---------------------------------------------------------------- IPv4 -- */

static __always_inline void sock4_remember(struct bpf_sock_addr *ctx,
					   const struct lb4_backend *be,
					   __be32 vip, __be16 vport,
					   __u32 rev_nat_index)
{
	struct ipv4_revnat_tuple key;
	struct ipv4_revnat_entry val;

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memset(&val, 0, sizeof(val));
	key.cookie = bpf_get_socket_cookie(ctx);
	key.address = be->address;
	key.port = be->port;
	val.address = vip;
	val.port = vport;
	val.rev_nat_index = rev_nat_index;
	/* LRU: an insert never fails for lack of room. A failed insert only
	 * costs the VIP in getpeername(), so it does not fail the connect. */
	bpf_map_update_elem(&axon_lb4_reverse_sk, &key, &val, BPF_ANY);
}

/* ClientIP affinity of a socket: its network namespace (a pod). */
static __always_inline void sock_affinity_client(struct bpf_sock_addr *ctx,
						 struct lb_select_args *args, __u8 svc_flags)
{
	__u64 cookie;

	if (!(svc_flags & AXON_SVC_F_AFFINITY))
		return;
	cookie = bpf_get_netns_cookie(ctx);
	__builtin_memcpy(args->aff.client, &cookie, sizeof(cookie));
	args->aff.client_kind = AXON_AFFINITY_CLIENT_NETNS;
}

/* Forward translation of an IPv4 destination, in place; shared by the v4
 * hooks and the v4-mapped case of the v6 hooks. */
static __always_inline enum lb_verdict
sock4_xlate_fwd(struct bpf_sock_addr *ctx, __be32 *addr, __be16 *port)
{
	struct lb_select_args args = {};
	struct lb4_frontend fe;
	struct lb4_backend be;
	enum lb_verdict verdict;
	__u32 backend_id;
	__u8 proto;

	if (!sock_lb_proto(ctx, &proto))
		return LB_NOT_A_SERVICE;
	if (!lb4_lookup_frontend(*addr, *port, proto, &fe))
		return LB_NOT_A_SERVICE;
	lb4_use_internal_scope(&fe);
	sock_affinity_client(ctx, &args, fe.flags);
	verdict = lb4_select(&fe, &args, &be, &backend_id);
	if (verdict != LB_SELECTED) {
		axon_metric_inc(AXON_METRIC_SOCK_NO_BACKEND);
		return verdict;
	}

	sock4_remember(ctx, &be, *addr, *port, fe.rev_nat_index);
	*addr = be.address;
	*port = be.port;
	axon_metric_inc(AXON_METRIC_SOCK_XLATE_FWD);
	return LB_SELECTED;
}

/* Reverse translation of an IPv4 peer, in place: 1 when rewritten. */
static __always_inline int sock4_xlate_rev(struct bpf_sock_addr *ctx,
					   __be32 *addr, __be16 *port)
{
	struct ipv4_revnat_tuple key;
	struct ipv4_revnat_entry *val;

	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = bpf_get_socket_cookie(ctx);
	key.address = *addr;
	key.port = *port;
	val = bpf_map_lookup_elem(&axon_lb4_reverse_sk, &key);
	if (!val)
		return 0;
	if (!lb4_rev_nat_matches(val->rev_nat_index, val->address, val->port)) {
		/* The service is gone or now means something else. */
		bpf_map_delete_elem(&axon_lb4_reverse_sk, &key);
		return 0;
	}
	*addr = val->address;
	*port = val->port;
	axon_metric_inc(AXON_METRIC_SOCK_XLATE_REV);
	return 1;
}

static __always_inline int sock4_fwd_hook(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = ctx_port(ctx);

	switch (sock4_xlate_fwd(ctx, &addr, &port)) {
	case LB_SELECTED:
		ctx->user_ip4 = addr;
		ctx->user_port = (__u32)port;
		return SYS_PROCEED;
	case LB_NO_BACKEND:
		return sock_reject();
	default:
		return SYS_PROCEED;
	}
}

static __always_inline int sock4_rev_hook(struct bpf_sock_addr *ctx)
{
	__be32 addr = ctx->user_ip4;
	__be16 port = ctx_port(ctx);

	if (sock4_xlate_rev(ctx, &addr, &port)) {
		ctx->user_ip4 = addr;
		ctx->user_port = (__u32)port;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_fwd_hook(ctx);
}

/* Unconnected UDP: every datagram picks its own backend. */
SEC("cgroup/sendmsg4")
int sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_fwd_hook(ctx);
}

SEC("cgroup/recvmsg4")
int sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_rev_hook(ctx);
}

SEC("cgroup/getpeername4")
int sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_rev_hook(ctx);
}

/* ---------------------------------------------------------------- IPv6 -- */

static __always_inline void ctx_get_ip6(const struct bpf_sock_addr *ctx,
					__u32 addr[4])
{
	addr[0] = ctx->user_ip6[0];
	addr[1] = ctx->user_ip6[1];
	addr[2] = ctx->user_ip6[2];
	addr[3] = ctx->user_ip6[3];
}

static __always_inline void ctx_set_ip6(struct bpf_sock_addr *ctx,
					const __u32 addr[4])
{
	ctx->user_ip6[0] = addr[0];
	ctx->user_ip6[1] = addr[1];
	ctx->user_ip6[2] = addr[2];
	ctx->user_ip6[3] = addr[3];
}

static __always_inline void sock6_remember(struct bpf_sock_addr *ctx,
					   const struct lb6_backend *be,
					   const __u32 vip[4], __be16 vport,
					   __u32 rev_nat_index)
{
	struct ipv6_revnat_tuple key;
	struct ipv6_revnat_entry val;

	__builtin_memset(&key, 0, sizeof(key));
	__builtin_memset(&val, 0, sizeof(val));
	key.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(key.address, be->address, 16);
	key.port = be->port;
	__builtin_memcpy(val.address, vip, 16);
	val.port = vport;
	val.rev_nat_index = rev_nat_index;
	bpf_map_update_elem(&axon_lb6_reverse_sk, &key, &val, BPF_ANY);
}

static __always_inline enum lb_verdict
sock6_xlate_fwd(struct bpf_sock_addr *ctx, __u32 addr[4], __be16 *port)
{
	struct lb_select_args args = {};
	struct lb6_frontend fe;
	struct lb6_backend be;
	enum lb_verdict verdict;
	__u32 backend_id;
	__u8 proto;

	if (!sock_lb_proto(ctx, &proto))
		return LB_NOT_A_SERVICE;
	if (!lb6_lookup_frontend(addr, *port, proto, &fe))
		return LB_NOT_A_SERVICE;
	lb6_use_internal_scope(&fe);
	sock_affinity_client(ctx, &args, fe.flags);
	verdict = lb6_select(&fe, &args, &be, &backend_id);
	if (verdict != LB_SELECTED) {
		axon_metric_inc(AXON_METRIC_SOCK_NO_BACKEND);
		return verdict;
	}

	sock6_remember(ctx, &be, addr, *port, fe.rev_nat_index);
	__builtin_memcpy(addr, be.address, 16);
	*port = be.port;
	axon_metric_inc(AXON_METRIC_SOCK_XLATE_FWD);
	return LB_SELECTED;
}

static __always_inline int sock6_xlate_rev(struct bpf_sock_addr *ctx,
					   __u32 addr[4], __be16 *port)
{
	struct ipv6_revnat_tuple key;
	struct ipv6_revnat_entry *val;

	__builtin_memset(&key, 0, sizeof(key));
	key.cookie = bpf_get_socket_cookie(ctx);
	__builtin_memcpy(key.address, addr, 16);
	key.port = *port;
	val = bpf_map_lookup_elem(&axon_lb6_reverse_sk, &key);
	if (!val)
		return 0;
	if (!lb6_rev_nat_matches(val->rev_nat_index, val->address, val->port)) {
		bpf_map_delete_elem(&axon_lb6_reverse_sk, &key);
		return 0;
	}
	__builtin_memcpy(addr, val->address, 16);
	*port = val->port;
	axon_metric_inc(AXON_METRIC_SOCK_XLATE_REV);
	return 1;
}

static __always_inline int sock6_fwd_hook(struct bpf_sock_addr *ctx)
{
	__be16 port = ctx_port(ctx);
	enum lb_verdict verdict;
	__u32 addr[4];
	__be32 v4;

	ctx_get_ip6(ctx, addr);
	if (ipv6_v4mapped(addr, &v4)) {
		verdict = sock4_xlate_fwd(ctx, &v4, &port);
		if (verdict == LB_SELECTED)
			ctx->user_ip6[3] = v4; /* stays ::ffff:backend */
	} else {
		verdict = sock6_xlate_fwd(ctx, addr, &port);
		if (verdict == LB_SELECTED)
			ctx_set_ip6(ctx, addr);
	}

	switch (verdict) {
	case LB_SELECTED:
		ctx->user_port = (__u32)port;
		return SYS_PROCEED;
	case LB_NO_BACKEND:
		return sock_reject();
	default:
		return SYS_PROCEED;
	}
}

static __always_inline int sock6_rev_hook(struct bpf_sock_addr *ctx)
{
	__be16 port = ctx_port(ctx);
	__u32 addr[4];
	__be32 v4;

	ctx_get_ip6(ctx, addr);
	if (ipv6_v4mapped(addr, &v4)) {
		if (sock4_xlate_rev(ctx, &v4, &port)) {
			ctx->user_ip6[3] = v4;
			ctx->user_port = (__u32)port;
		}
	} else if (sock6_xlate_rev(ctx, addr, &port)) {
		ctx_set_ip6(ctx, addr);
		ctx->user_port = (__u32)port;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect6")
int sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock6_fwd_hook(ctx);
}

SEC("cgroup/sendmsg6")
int sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock6_fwd_hook(ctx);
}

SEC("cgroup/recvmsg6")
int sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock6_rev_hook(ctx);
}

SEC("cgroup/getpeername6")
int sock6_getpeername(struct bpf_sock_addr *ctx)
{
	return sock6_rev_hook(ctx);
}

/* ------------------------------------------------------ bind protection -- */

/* Whether a master slot belongs to a service that owns its port on the
 * node's addresses. */
static __always_inline int bind_owner(const struct lb_service *master)
{
	return master && (master->svc_type == AXON_SVC_NODE_PORT ||
			  master->svc_type == AXON_SVC_HOST_PORT);
}

static __always_inline int bind4_owned_exact(__be32 addr, __be16 port, __u8 proto)
{
	struct lb4_key key;

	lb4_key_init(&key, addr, port, proto);
	return bind_owner(bpf_map_lookup_elem(&axon_lb4_services, &key));
}

static __always_inline int bind6_owned_exact(const __u32 addr[4], __be16 port, __u8 proto)
{
	struct lb6_key key;

	lb6_key_init(&key, addr, port, proto);
	return bind_owner(bpf_map_lookup_elem(&axon_lb6_services, &key));
}

struct bpf_map;

/* State of the walk over axon_node_addrs for a bind to the any-address. */
struct bind_walk {
	__be16 port;
	__u8 proto;
	__u8 v4;    /* check IPv4 addresses */
	__u8 v6;    /* check IPv6 addresses */
	__u8 owned; /* result */
};

static long bind_walk_addr(struct bpf_map *map, struct node_addr_key *key,
			   __u32 *ifindex, struct bind_walk *walk)
{
	__u32 addr[4];
	__be32 v4;

	__builtin_memcpy(addr, key->address, 16);
	if (ipv6_v4mapped(addr, &v4)) {
		if (walk->v4 && bind4_owned_exact(v4, walk->port, walk->proto))
			walk->owned = 1;
	} else if (walk->v6 && bind6_owned_exact(addr, walk->port, walk->proto)) {
		walk->owned = 1;
	}
	return walk->owned ? 1 : 0; /* 1 stops the walk */
}

/* A bind to the any-address takes the port on every node address, so it
 * collides with a frontend on any of them. */
static __always_inline int bind_any_owned(__be16 port, __u8 proto, int v4, int v6)
{
	struct bind_walk walk = { .port = port, .proto = proto, .v4 = v4, .v6 = v6 };

	bpf_for_each_map_elem(&axon_node_addrs, bind_walk_addr, &walk, 0);
	return walk.owned;
}

static __always_inline int bind4_owned(__be32 addr, __be16 port, __u8 proto)
{
	/* The wildcard NodePort entry owns the port on every address. */
	if (bind4_owned_exact(0, port, proto))
		return 1;
	if (addr != 0)
		return bind4_owned_exact(addr, port, proto);
	return bind_any_owned(port, proto, 1, 0);
}

static __always_inline int bind_proto(__u32 protocol, __u8 *proto)
{
	if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
		return 0;
	*proto = (__u8)protocol;
	return 1;
}

/* EADDRINUSE is what the process would get had the service's port been
 * bound by another socket; without bpf_set_retval the kernel says EPERM. */
static __always_inline int bind_reject(void)
{
	axon_metric_inc(AXON_METRIC_BIND_DENIED);
	bpf_set_retval(-EADDRINUSE);
	return SYS_REJECT;
}

SEC("cgroup/post_bind4")
int sock4_post_bind(struct bpf_sock *ctx)
{
	/* src_port is in host order, unlike every port in the maps. */
	__be16 port = bpf_htons((__u16)ctx->src_port);
	__u8 proto;

	if (!bind_proto(ctx->protocol, &proto) || port == 0)
		return SYS_PROCEED;
	if (bind4_owned(ctx->src_ip4, port, proto))
		return bind_reject();
	return SYS_PROCEED;
}

SEC("cgroup/post_bind6")
int sock6_post_bind(struct bpf_sock *ctx)
{
	__be16 port = bpf_htons((__u16)ctx->src_port);
	__u32 addr[4], zero[4] = {};
	__u8 proto;
	__be32 v4;

	if (!bind_proto(ctx->protocol, &proto) || port == 0)
		return SYS_PROCEED;
	addr[0] = ctx->src_ip6[0];
	addr[1] = ctx->src_ip6[1];
	addr[2] = ctx->src_ip6[2];
	addr[3] = ctx->src_ip6[3];

	if (ipv6_v4mapped(addr, &v4)) {
		if (bind4_owned(v4, port, proto))
			return bind_reject();
		return SYS_PROCEED;
	}
	if (bind6_owned_exact(zero, port, proto))
		return bind_reject();
	if ((addr[0] | addr[1] | addr[2] | addr[3]) != 0) {
		if (bind6_owned_exact(addr, port, proto))
			return bind_reject();
		return SYS_PROCEED;
	}
	/* [::] is dual-stack unless IPV6_V6ONLY, which a post_bind program
	 * cannot see: it is refused whatever family owns the port. */
	if (bind4_owned_exact(0, port, proto) || bind_any_owned(port, proto, 1, 1))
		return bind_reject();
	return SYS_PROCEED;
}
