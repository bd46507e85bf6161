/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The lab's only BPF program: XDP_PASS. On veth, native XDP can only
 * transmit (XDP_TX) or redirect a frame into a peer that has an XDP program
 * of its own (or GRO); the lab attaches this to the peers of the devices the
 * agent runs native XDP on, so those frames are delivered instead of dropped.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int lab_xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
