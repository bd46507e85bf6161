// SPDX-License-Identifier: Apache-2.0
/*
 * North-south load balancing at the XDP hook of node devices (see
 * lib/nodeport.h): what XDP can finish itself — forwarding known and new
 * flows with DNAT/SNAT/DSR out of a node device, SNAT replies, stripping
 * DSR options, answering frontends without backends — is done here; the
 * rest is passed unchanged to nodeport_ingress in tc.
 *
 *  xdp_nodeport  the entry, attached in native or generic (skb) mode;
 *  xdp_pass      passes everything: for the peer of a veth node device,
 *                which needs an XDP program of its own before native XDP
 *                on the device can XDP_TX or redirect into it.
 */
#define AXON_CTX_XDP
#include "nodeport.h"

/* bpf_fib_lookup is GPL-only. */
char _license[] SEC("license") = "Dual BSD/GPL";

SEC("xdp")
int xdp_nodeport(struct xdp_md *ctx)
{
	return np_ingress(ctx);
}

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
