// SPDX-License-Identifier: Apache-2.0
/*
 * Mesh acceleration: sidecar traffic capture without iptables, and a
 * socket-to-socket shortcut for the local hops of a sidecar mesh.
 *
 *   cgroup/connect4,6   an app's connect() in an enabled pod goes to the
 *                       sidecar's outbound port on loopback (outbound
 *                       capture); a connect() to an enabled pod's address
 *                       goes to that pod's inbound port (inbound capture).
 *                       The original destination is kept by socket cookie.
 *   sockops             when such a connection is established, the original
 *                       destination is filed under the accepting side's
 *                       view of the tuple, and when the pod asks for the
 *                       bypass both sockets enter the shortcut: as targets,
 *                       and the sidecar's one also as a sender (see the
 *                       sockhashes in mesh_maps.h).
 *   cgroup/bind4,6      the sidecar's binds of its own ports tell which
 *                       family each of its listeners accepts, so capture
 *                       never sends a connection where nothing listens.
 *   cgroup/getsockopt   SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST on an accepted
 *                       socket answers from that record, so an unmodified
 *                       proxy (Envoy's original_dst, HAProxy's transparent
 *                       tcp mode) forwards to where the app was going.
 *   sk_msg              each message the sidecar sends on such a socket goes
 *                       straight into the peer socket's receive queue.
 *
 * Scope is the set of enabled pods (axon_mesh_pods, keyed by cgroup id,
 * found from the task's cgroup ancestry); every other socket is left alone.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "mesh_maps.h"

#define SO_ORIGINAL_DST 80 /* SOL_IP; IP6T_SO_ORIGINAL_DST is 80 on SOL_IPV6 too */
#define SOL_IP   0
#define SOL_IPV6 41
#define AF_INET  2
#define AF_INET6 10

/* Deepest cgroup level searched for a pod (pods sit under kubepods slices). */
#define MESH_MAX_CGROUP_LEVEL 12

/* One 32-bit context load per field: clang would merge neighbours into a
 * 64-bit load, which the verifier refuses on these contexts. */
#define CTX32(f) (*(volatile __u32 *)&(f))

static __always_inline void count(__u32 idx, __u64 n)
{
	__u64 *v = bpf_map_lookup_elem(&axon_mesh_metrics, &idx);
	if (v)
		*v += n;
}

static __always_inline void set_v4(__u8 *addr, __be32 ip4)
{
	__builtin_memset(addr, 0, 10);
	addr[10] = 0xff;
	addr[11] = 0xff;
	__builtin_memcpy(addr + 12, &ip4, 4);
}

static __always_inline void set_v6(__u8 *addr, const __u32 *ip6)
{
	__u32 w[4] = {ip6[0], ip6[1], ip6[2], ip6[3]};
	__builtin_memcpy(addr, w, 16);
}

static __always_inline int is_v4_mapped(const __u8 *a)
{
	__u64 hi;
	__u32 mid;
	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&mid, a + 8, 4);
	return hi == 0 && mid == bpf_htonl(0x0000ffff);
}

static __always_inline int is_loopback(const __u8 *a)
{
	if (is_v4_mapped(a))
		return a[12] == 127;
	__u64 hi, lo;
	__builtin_memcpy(&hi, a, 8);
	__builtin_memcpy(&lo, a + 8, 8);
	return hi == 0 && lo == bpf_cpu_to_be64(1);
}

/* The enabled pod the current task belongs to, and its cgroup id. */
static __always_inline struct mesh_pod *current_pod(__u64 *cgroup_id)
{
	for (int level = 1; level <= MESH_MAX_CGROUP_LEVEL; level++) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return 0;
		struct mesh_pod *pod = bpf_map_lookup_elem(&axon_mesh_pods, &id);
		if (pod) {
			*cgroup_id = id;
			return pod;
		}
	}
	return 0;
}

static __always_inline int port_listed(const __u16 *ports, __u16 port)
{
	for (int i = 0; i < AXON_MESH_MAX_PORTS; i++) {
		if (ports[i] == 0)
			return 0;
		if (ports[i] == port)
			return 1;
	}
	return 0;
}

static __always_inline int cidr_excluded(__u64 cgroup_id, const __u8 *addr)
{
	struct mesh_cidr_key key = {.prefixlen = 32 + 64 + 128, .cgroup_id = cgroup_id};
	__builtin_memcpy(key.addr, addr, 16);
	return bpf_map_lookup_elem(&axon_mesh_excl_cidrs, &key) != 0;
}

/* Whether the pod's sidecar can accept a redirect needing `want` (one
 * AXON_MESH_LISTEN_* bit). Unknown listeners: assume it can. */
static __always_inline int sidecar_listens(__u64 cgroup_id, __u32 want)
{
	struct mesh_listeners *l = bpf_map_lookup_elem(&axon_mesh_listeners, &cgroup_id);
	if (!l || (l->flags & want))
		return 1;
	count(AXON_MESH_M_NO_LISTENER, 1);
	return 0;
}

enum capture { CAPTURE_NONE, CAPTURE_OUTBOUND, CAPTURE_INBOUND };

/*
 * Decides what a connect() to (addr, port) becomes; fills *orig. On
 * CAPTURE_OUTBOUND the caller connects to loopback:*new_port, on
 * CAPTURE_INBOUND to addr:*new_port.
 */
static __always_inline enum capture decide(void *ctx, const __u8 *addr, __be16 port, __u8 family,
					   struct mesh_orig *orig, __u16 *new_port)
{
	__u64 cur_id = 0;
	struct mesh_pod *cur = current_pod(&cur_id);
	__u32 uid = (__u32)bpf_get_current_uid_gid();
	__u16 hport = bpf_ntohs(port);
	__u64 cookie = bpf_get_socket_cookie(ctx);

	__builtin_memcpy(orig->addr, addr, 16);
	orig->port = port;
	orig->family = family;
	orig->flags = 0;
	orig->pad = 0;

	if (is_loopback(addr))
		return CAPTURE_NONE;

	/* An excluded outbound destination skips the pod's own sidecar only:
	 * the destination pod may still capture it inbound, as with iptables. */
	int excluded = 0;
	if (cur && cur->proxy_uid != uid) {
		excluded = port_listed(cur->exclude_out, hport) || cidr_excluded(cur_id, addr);
		if (excluded)
			count(AXON_MESH_M_EXCLUDED, 1);
	}
	if (cur && cur->proxy_uid == uid)
		orig->flags |= AXON_MESH_ORIG_PROXY;
	int v4 = is_v4_mapped(addr);
	if (cur && cur->proxy_uid != uid && !excluded &&
	    sidecar_listens(cur_id, v4 ? AXON_MESH_LISTEN_OUT_V4 : AXON_MESH_LISTEN_OUT_V6)) {
		orig->flags = AXON_MESH_ORIG_OUTBOUND;
		if (cur->flags & AXON_MESH_POD_BYPASS)
			orig->flags |= AXON_MESH_ORIG_BYPASS;
		bpf_map_update_elem(&axon_mesh_orig, &cookie, orig, BPF_ANY);
		*new_port = cur->outbound_port;
		count(AXON_MESH_M_OUTBOUND, 1);
		return CAPTURE_OUTBOUND;
	}

	struct mesh_ip ip;
	__builtin_memcpy(ip.addr, addr, 16);
	struct mesh_pod_ref *ref = bpf_map_lookup_elem(&axon_mesh_pod_ips, &ip);
	if (!ref)
		return CAPTURE_NONE;
	__u64 dst_id = ref->cgroup_id;
	if (cur && cur_id == dst_id) {
		/* Inside the destination pod: the proxy handing a connection to
		 * its app. Not captured, but a local pair worth the bypass. */
		if (cur->flags & AXON_MESH_POD_BYPASS) {
			orig->flags |= AXON_MESH_ORIG_LOCAL | AXON_MESH_ORIG_BYPASS;
			bpf_map_update_elem(&axon_mesh_orig, &cookie, orig, BPF_ANY);
		}
		return CAPTURE_NONE;
	}
	struct mesh_pod *dst = bpf_map_lookup_elem(&axon_mesh_pods, &dst_id);
	if (!dst || hport == dst->inbound_port || hport == dst->outbound_port)
		return CAPTURE_NONE;
	if (port_listed(dst->exclude_in, hport)) {
		count(AXON_MESH_M_EXCLUDED, 1);
		return CAPTURE_NONE;
	}
	if (!sidecar_listens(dst_id, v4 ? AXON_MESH_LISTEN_IN_V4 : AXON_MESH_LISTEN_IN_V6))
		return CAPTURE_NONE;
	orig->flags |= AXON_MESH_ORIG_INBOUND;
	if (dst->flags & AXON_MESH_POD_BYPASS)
		orig->flags |= AXON_MESH_ORIG_BYPASS;
	bpf_map_update_elem(&axon_mesh_orig, &cookie, orig, BPF_ANY);
	*new_port = dst->inbound_port;
	count(AXON_MESH_M_INBOUND, 1);
	return CAPTURE_INBOUND;
}

/* The IPv6 address a connect() or bind() asks for. */
static __always_inline void user_addr6(struct bpf_sock_addr *ctx, __u8 *addr)
{
	__u32 ip6[4] = {CTX32(ctx->user_ip6[0]), CTX32(ctx->user_ip6[1]), CTX32(ctx->user_ip6[2]), CTX32(ctx->user_ip6[3])};
	set_v6(addr, ip6);
}

SEC("cgroup/connect4")
int mesh4_connect(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	__u8 addr[16];
	struct mesh_orig orig;
	__u16 new_port = 0;
	set_v4(addr, ctx->user_ip4);
	enum capture c = decide(ctx, addr, (__be16)ctx->user_port, 4, &orig, &new_port);
	if (c == CAPTURE_OUTBOUND)
		ctx->user_ip4 = bpf_htonl(0x7f000001);
	if (c != CAPTURE_NONE)
		ctx->user_port = bpf_htons(new_port);
	return 1;
}

SEC("cgroup/connect6")
int mesh6_connect(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	__u8 addr[16];
	struct mesh_orig orig;
	__u16 new_port = 0;
	user_addr6(ctx, addr);
	enum capture c = decide(ctx, addr, (__be16)ctx->user_port, 6, &orig, &new_port);
	if (c == CAPTURE_OUTBOUND) {
		/* A v4-mapped destination stays IPv4: ::ffff:127.0.0.1. */
		int mapped = is_v4_mapped(addr);
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = mapped ? bpf_htonl(0x0000ffff) : 0;
		ctx->user_ip6[3] = mapped ? bpf_htonl(0x7f000001) : bpf_htonl(1);
	}
	if (c != CAPTURE_NONE)
		ctx->user_port = bpf_htons(new_port);
	return 1;
}

/* Notes a bind of the sidecar's outbound or inbound port in an enabled pod
 * (see axon_mesh_listeners). Never changes the bind: widening Linkerd's
 * loopback-only outbound listener to the wildcard, as some meshes do, would
 * open the pod's outbound proxy to anyone who can reach the pod. */
static __always_inline void note_listener(const __u8 *addr, __be16 port)
{
	__u64 cur_id = 0;
	struct mesh_pod *cur = current_pod(&cur_id);
	if (!cur || cur->proxy_uid != (__u32)bpf_get_current_uid_gid())
		return;
	__u16 hport = bpf_ntohs(port);
	int v4 = is_v4_mapped(addr);
	__u64 hi, lo;
	__builtin_memcpy(&hi, addr, 8);
	__builtin_memcpy(&lo, addr + 8, 8);
	int any = v4 ? (addr[12] | addr[13] | addr[14] | addr[15]) == 0 : (hi | lo) == 0;
	int loop = is_loopback(addr);
	__u32 bits = 0;
	if (hport == cur->outbound_port && (loop || any))
		bits = v4 ? AXON_MESH_LISTEN_OUT_V4 : AXON_MESH_LISTEN_OUT_V6 | (any ? AXON_MESH_LISTEN_OUT_V4 : 0);
	else if (hport == cur->inbound_port && !loop)
		bits = v4 ? AXON_MESH_LISTEN_IN_V4 : AXON_MESH_LISTEN_IN_V6 | (any ? AXON_MESH_LISTEN_IN_V4 : 0);
	if (!bits)
		return;
	/* A sidecar binds its listeners one after the other at start-up: a
	 * plain read-modify-write is enough (no 32-bit atomic OR before BPF v3). */
	struct mesh_listeners *l = bpf_map_lookup_elem(&axon_mesh_listeners, &cur_id);
	if (l) {
		l->flags |= bits;
	} else {
		struct mesh_listeners init = {.flags = bits};
		bpf_map_update_elem(&axon_mesh_listeners, &cur_id, &init, BPF_ANY);
	}
}

SEC("cgroup/bind4")
int mesh4_bind(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	__u8 addr[16];
	set_v4(addr, ctx->user_ip4);
	note_listener(addr, (__be16)ctx->user_port);
	return 1;
}

SEC("cgroup/bind6")
int mesh6_bind(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	__u8 addr[16];
	user_addr6(ctx, addr);
	note_listener(addr, (__be16)ctx->user_port);
	return 1;
}

/* Fills the netns part of a key: loopback tuples repeat in every pod. */
static __always_inline void key_netns(struct mesh_sock_key *k, __u64 netns)
{
	k->netns = is_loopback(k->remote) ? netns : 0;
}

static __always_inline void swap_key(const struct mesh_sock_key *k, struct mesh_sock_key *out)
{
	__builtin_memcpy(out->local, k->remote, 16);
	__builtin_memcpy(out->remote, k->local, 16);
	out->local_port = k->remote_port;
	out->remote_port = k->local_port;
	out->netns = k->netns;
}

static __always_inline int sockops_key(struct bpf_sock_ops *skops, struct mesh_sock_key *k)
{
	if (skops->family == AF_INET) {
		set_v4(k->local, skops->local_ip4);
		set_v4(k->remote, skops->remote_ip4);
	} else if (skops->family == AF_INET6) {
		__u32 l[4] = {CTX32(skops->local_ip6[0]), CTX32(skops->local_ip6[1]), CTX32(skops->local_ip6[2]), CTX32(skops->local_ip6[3])};
		__u32 r[4] = {CTX32(skops->remote_ip6[0]), CTX32(skops->remote_ip6[1]), CTX32(skops->remote_ip6[2]), CTX32(skops->remote_ip6[3])};
		set_v6(k->local, l);
		set_v6(k->remote, r);
	} else {
		return 0;
	}
	k->local_port = skops->local_port;
	k->remote_port = bpf_ntohl(skops->remote_port);
	key_netns(k, bpf_get_netns_cookie(skops));
	return 1;
}

static __always_inline int fresh(__u64 seen_ns, __u64 now)
{
	return seen_ns && now - seen_ns <= AXON_MESH_PROFILE_TTL_NS;
}

/* Whether an app socket talking to `dst` sends through the shortcut: only
 * if the destination is known for request/response, and not since for a
 * small-write stream (see axon_mesh_dst_profiles). */
static __always_inline int app_may_send(const struct mesh_dst *dst)
{
	struct mesh_dst_profile *p = bpf_map_lookup_elem(&axon_mesh_dst_profiles, dst);
	__u64 now = bpf_ktime_get_ns();
	int send = p && fresh(p->rpc_ns, now) && !(fresh(p->stream_ns, now) && p->stream_ns >= p->rpc_ns);
	count(send ? AXON_MESH_M_APP_SENDING : AXON_MESH_M_APP_PLAIN, 1);
	return send;
}

static __always_inline void profile_mark(const struct mesh_dst *dst, int rpc)
{
	__u64 now = bpf_ktime_get_ns();
	struct mesh_dst_profile *p = bpf_map_lookup_elem(&axon_mesh_dst_profiles, dst);
	if (p) {
		if (rpc)
			p->rpc_ns = now;
		else
			p->stream_ns = now;
		return;
	}
	struct mesh_dst_profile init = {.rpc_ns = rpc ? now : 0, .stream_ns = rpc ? 0 : now};
	bpf_map_update_elem(&axon_mesh_dst_profiles, dst, &init, BPF_ANY);
}

/* Puts an established socket in the shortcut: always as a target, as a
 * sender if it is the sidecar's (app == 0) or an app socket allowed to. A
 * new connection starts with a fresh flow record (the tuple may be an
 * earlier connection's); an app socket's names its destination, and a
 * target-only app socket reports its RTT samples, from which sockops learns
 * the destination's profile. Every socket reports its close, which drops
 * its records. */
static __always_inline void shortcut_add(struct bpf_sock_ops *skops, struct mesh_sock_key *k,
					 const struct mesh_orig *o, __u8 app)
{
	bpf_map_delete_elem(&axon_mesh_flows, k);
	if (bpf_sock_hash_update(skops, &axon_mesh_targets, k, BPF_ANY) != 0) {
		count(AXON_MESH_M_SOCK_FAILED, 1);
		return;
	}
	count(AXON_MESH_M_SOCK_ADDED, 1);
	int sender = 1;
	if (app) {
		struct mesh_flow flow = {};
		__builtin_memcpy(flow.app.addr, o->addr, 16);
		flow.app.port = o->port;
		flow.app.role = app;
		bpf_map_update_elem(&axon_mesh_flows, k, &flow, BPF_ANY);
		sender = app_may_send(&flow.app);
	}
	bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG | (sender ? 0 : BPF_SOCK_OPS_RTT_CB_FLAG));
	if (!sender)
		return;
	if (bpf_sock_hash_update(skops, &axon_mesh_sockhash, k, BPF_ANY) == 0)
		count(AXON_MESH_M_SENDERS, 1);
	else
		count(AXON_MESH_M_SOCK_FAILED, 1);
}

/* An RTT sample of a target-only app socket: once it has sent enough
 * segments, judge its destination by the answers the sidecar redirected to
 * it (one per segment or so: request/response; none: a stream), then stop
 * asking (also when no verdict comes). Later connections to that destination start from the verdict. */
static __always_inline void learn_profile(struct bpf_sock_ops *skops, struct mesh_sock_key *k)
{
	__u32 segs = skops->data_segs_out;
	if (segs < AXON_MESH_PROFILE_MIN_SEGS)
		return;
	struct mesh_flow *own = bpf_map_lookup_elem(&axon_mesh_flows, k);
	if (!own || !own->app.role)
		return;
	struct mesh_sock_key peer = {};
	swap_key(k, &peer);
	struct mesh_flow *pf = bpf_map_lookup_elem(&axon_mesh_flows, &peer);
	__u32 answers = pf ? pf->redirected : 0;
	if (answers * 2 >= segs)
		profile_mark(&own->app, 1);
	else if (answers == 0 && segs >= AXON_MESH_PROFILE_STREAM_SEGS)
		profile_mark(&own->app, 0);
	else if (segs < AXON_MESH_PROFILE_GIVE_UP_SEGS)
		return;
	/* A verdict, or none to be had (some answers, not one per segment):
	 * this socket's ACKs no longer call in. */
	bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
}

SEC("sockops")
int mesh_sockops(struct bpf_sock_ops *skops)
{
	struct mesh_sock_key k = {};
	switch (skops->op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
		__u64 cookie = bpf_get_socket_cookie(skops);
		struct mesh_orig *o = bpf_map_lookup_elem(&axon_mesh_orig, &cookie);
		if (!o || !sockops_key(skops, &k))
			return 1;
		struct mesh_orig copy = *o;
		struct mesh_sock_key peer = {};
		swap_key(&k, &peer);
		/* On loopback and veth pairs of one node the SYN-ACK is handled
		 * here before the accepting side can ask: the record is ready
		 * for its getsockopt and its PASSIVE_ESTABLISHED. */
		bpf_map_update_elem(&axon_mesh_pairs, &peer, &copy, BPF_ANY);
		bpf_map_delete_elem(&axon_mesh_orig, &cookie);
		/* The connecting side is the sidecar, or an app (the client of
		 * the destination it asked for). */
		if (copy.flags & AXON_MESH_ORIG_BYPASS)
			shortcut_add(skops, &k, &copy, (copy.flags & AXON_MESH_ORIG_PROXY) ? 0 : AXON_MESH_ROLE_CLIENT);
		break;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB: {
		if (!sockops_key(skops, &k))
			return 1;
		struct mesh_orig *o = bpf_map_lookup_elem(&axon_mesh_pairs, &k);
		if (!o)
			return 1;
		/* Its record goes when it closes (see BPF_SOCK_OPS_STATE_CB). */
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
		/* The accepting side is the sidecar for a captured connection
		 * (its listener), the app for the sidecar's local one. */
		if (o->flags & AXON_MESH_ORIG_BYPASS) {
			struct mesh_orig copy = *o;
			shortcut_add(skops, &k, &copy, (copy.flags & AXON_MESH_ORIG_LOCAL) ? AXON_MESH_ROLE_SERVER : 0);
		}
		break;
	}
	case BPF_SOCK_OPS_RTT_CB:
		if (sockops_key(skops, &k))
			learn_profile(skops, &k);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		/* A socket of the mesh closed: its records go with it instead of
		 * waiting for LRU eviction (which could evict live ones first). */
		if (skops->args[1] == BPF_TCP_CLOSE && sockops_key(skops, &k)) {
			bpf_map_delete_elem(&axon_mesh_flows, &k);
			bpf_map_delete_elem(&axon_mesh_pairs, &k);
		}
		break;
	default:
		break;
	}
	return 1;
}

/* A message below this size counts toward a small-write stream. */
#define MESH_SMALL_MSG 8192
/* Small messages in a row, unanswered, before a direction leaves the shortcut. */
#define MESH_STREAM_STREAK 64
/* Small messages closer than this are back to back (one redirect costs a
 * few microseconds; a request/response round trip far more). */
#define MESH_BACK_TO_BACK_NS 20000

/* Per-direction choice (see struct mesh_flow): 1 = redirect this message. */
static __always_inline int keep_shortcut(const struct mesh_sock_key *own, const struct mesh_sock_key *peer, __u32 size)
{
	struct mesh_flow *f = bpf_map_lookup_elem(&axon_mesh_flows, own);
	if (f && f->pass)
		return 0;
	/* The peer receives this one: its next message answers it. */
	struct mesh_flow *pf = bpf_map_lookup_elem(&axon_mesh_flows, peer);
	if (pf && pf->streak)
		pf->streak = 0;
	int small = size < MESH_SMALL_MSG;
	if (!f) {
		struct mesh_flow init = {.streak = small, .last_send_ns = small ? bpf_ktime_get_ns() : 0, .redirected = 1};
		bpf_map_update_elem(&axon_mesh_flows, own, &init, BPF_ANY);
		return 1;
	}
	if (!small) {
		f->streak = 0;
		f->redirected++;
		return 1;
	}
	__u64 now = bpf_ktime_get_ns();
	__u64 gap = now - f->last_send_ns;
	f->last_send_ns = now;
	if (gap > MESH_BACK_TO_BACK_NS)
		f->streak = 0;
	if (++f->streak < MESH_STREAM_STREAK) {
		f->redirected++;
		return 1;
	}
	f->pass = 1;
	count(AXON_MESH_M_STREAM_PASS, 1);
	if (f->app.role)
		profile_mark(&f->app, 0);
	return 0;
}

SEC("sk_msg")
int mesh_msg(struct sk_msg_md *msg)
{
	struct mesh_sock_key own = {}, peer = {};
	if (msg->family == AF_INET) {
		set_v4(own.local, msg->local_ip4);
		set_v4(own.remote, msg->remote_ip4);
	} else if (msg->family == AF_INET6) {
		__u32 l[4] = {CTX32(msg->local_ip6[0]), CTX32(msg->local_ip6[1]), CTX32(msg->local_ip6[2]),
			      CTX32(msg->local_ip6[3])};
		__u32 r[4] = {CTX32(msg->remote_ip6[0]), CTX32(msg->remote_ip6[1]), CTX32(msg->remote_ip6[2]),
			      CTX32(msg->remote_ip6[3])};
		set_v6(own.local, l);
		set_v6(own.remote, r);
	} else {
		return SK_PASS;
	}
	own.local_port = msg->local_port;
	own.remote_port = bpf_ntohl(msg->remote_port);
	key_netns(&own, bpf_get_netns_cookie(msg));
	swap_key(&own, &peer);
	__u32 size = msg->size;
	if (!keep_shortcut(&own, &peer, size)) {
		count(AXON_MESH_M_PASSED, 1);
		return SK_PASS;
	}
	/* Without a peer in the map the redirect fails and leaves no target:
	 * SK_PASS then sends through the stack as usual. */
	if (bpf_msg_redirect_hash(msg, &axon_mesh_targets, &peer, BPF_F_INGRESS) == SK_PASS) {
		count(AXON_MESH_M_REDIRECTED, 1);
		count(AXON_MESH_M_BYTES_REDIR, size);
	} else {
		count(AXON_MESH_M_PASSED, 1);
	}
	return SK_PASS;
}

/* The record of the connection `sk` accepted, if Axon captured it. */
static __always_inline struct mesh_orig *accepted_orig(struct bpf_sockopt *ctx, struct bpf_sock *sk)
{
	struct mesh_sock_key k = {};
	if (sk->family == AF_INET) {
		set_v4(k.local, sk->src_ip4);
		set_v4(k.remote, sk->dst_ip4);
	} else if (sk->family == AF_INET6) {
		__u32 l[4] = {CTX32(sk->src_ip6[0]), CTX32(sk->src_ip6[1]), CTX32(sk->src_ip6[2]), CTX32(sk->src_ip6[3])};
		__u32 r[4] = {CTX32(sk->dst_ip6[0]), CTX32(sk->dst_ip6[1]), CTX32(sk->dst_ip6[2]), CTX32(sk->dst_ip6[3])};
		set_v6(k.local, l);
		set_v6(k.remote, r);
	} else {
		return 0;
	}
	k.local_port = sk->src_port;
	k.remote_port = bpf_ntohs(sk->dst_port);
	key_netns(&k, bpf_get_netns_cookie(ctx));
	return bpf_map_lookup_elem(&axon_mesh_pairs, &k);
}

SEC("cgroup/getsockopt")
int mesh_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6))
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct mesh_orig *o = accepted_orig(ctx, sk);
	if (!o || !(o->flags & (AXON_MESH_ORIG_OUTBOUND | AXON_MESH_ORIG_INBOUND)))
		return 1;

	if (ctx->level == SOL_IP) {
		struct sockaddr_in *sa = ctx->optval;
		if ((void *)(sa + 1) > ctx->optval_end || !is_v4_mapped(o->addr))
			return 1;
		__builtin_memset(sa, 0, sizeof(*sa));
		sa->sin_family = AF_INET;
		sa->sin_port = o->port;
		__builtin_memcpy(&sa->sin_addr.s_addr, o->addr + 12, 4);
		ctx->optlen = sizeof(*sa);
	} else {
		struct sockaddr_in6 *sa6 = ctx->optval;
		if ((void *)(sa6 + 1) > ctx->optval_end)
			return 1;
		__builtin_memset(sa6, 0, sizeof(*sa6));
		sa6->sin6_family = AF_INET6;
		sa6->sin6_port = o->port;
		__builtin_memcpy(sa6->sin6_addr.in6_u.u6_addr8, o->addr, 16);
		ctx->optlen = sizeof(*sa6);
	}
	ctx->retval = 0;
	count(AXON_MESH_M_ORIG_DST, 1);
	return 1;
}

char _license[] SEC("license") = "GPL";
