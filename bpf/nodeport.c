// SPDX-License-Identifier: Apache-2.0
/*
 * North-south load balancing in tc, on node devices (see lib/nodeport.h):
 *
 *  nodeport_ingress  tc ingress: new service flows, packets of known flows,
 *                    SNAT replies coming back, DSR packets arriving at the
 *                    backend's node;
 *  nodeport_egress   tc egress: replies of node-local and DSR backends get
 *                    the frontend as their source.
 *
 * Sections are "classifier" (what aya 0.14 parses as a SchedClassifier);
 * the loader attaches them with TCX where the kernel has it.
 */
#define AXON_CTX_SKB
#include "nodeport.h"

/* bpf_fib_lookup is GPL-only. */
char _license[] SEC("license") = "Dual BSD/GPL";

SEC("classifier")
int nodeport_ingress(struct __sk_buff *skb)
{
	if (np_xdp_skipped(skb))
		return CTX_ACT_OK;
	return np_ingress(skb);
}

SEC("classifier")
int nodeport_egress(struct __sk_buff *skb)
{
	return np_egress(skb);
}
