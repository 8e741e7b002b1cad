// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
// nodeswitch's XDP program: sends the frames the switch forwards to its AF_XDP sockets and
// passes what belongs to the node itself to the kernel.
//
// One object is loaded per switchd and attached (bpf_link) to the uplink and every pod port.
// `ports` says what an interface is (uplink or pod) and which XSKMAP slot serves it:
// - pod port: everything goes to the switch except ARP replies (the kernel's own neighbour
//   resolution towards its pods) and, unless the node has a host port (then the switch
//   delivers it there, reverse NAT included), IPv4 addressed to the node's IP;
// - uplink: only VXLAN addressed to the node, Service frontends (NodePort, LoadBalancer and
//   external IPs, listed in `frontends`) and what may be a masqueraded flow's (to the node's
//   IP: TCP/UDP to a port in `egress`'s range, ICMP echo replies with an identifier in it,
//   ICMP errors quoting a TCP/UDP packet from such a port) go to the switch; the rest is the
//   node's.
// Restarts: switchd pins the program's links and maps in bpffs, so they outlive it, and
// beats `heartbeat` ten times a second. While the heartbeat is fresh, a frame for the switch
// on a port whose socket is gone (switchd restarting) is dropped, held for the TCP/UDP
// retransmission the next switchd serves, never passed to a kernel that would answer a
// Service flow with RST. Once no switchd has beaten for the grace period, every frame is
// passed to the kernel, exactly as if the program were detached. Every decision is counted
// per CPU in `stats`.
//
// Pod ports of the `vnet` kind (switchd --pod-ports vnet) have no XDP program: a packet socket
// reads their frames, GSO packets whole, before tc ingress, where `nodeswitch_tc` makes the
// same decision as the XDP program for a pod port and drops what the switch serves (the
// socket has its copy), so that the node's stack never routes it a second time.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ROLE_UPLINK 0
#define ROLE_POD 1

struct port_cfg {
	__u32 slot;
	__u32 role;
};

#define NODE_HAS_HOST_PORT 1

struct node_cfg {
	__u32 ip;         /* network byte order */
	__u16 vxlan_port; /* network byte order */
	__u16 flags;      /* NODE_HAS_HOST_PORT: pod -> node traffic goes through the switch */
};

struct frontend_key {
	__u32 ip;   /* network byte order */
	__u16 port; /* network byte order */
	__u8 proto;
	__u8 pad;
};

enum stat {
	STAT_REDIRECTED = 0,
	STAT_PASSED = 1,
	STAT_HELD = 2,
	STAT_UNKNOWN_PORT = 3,
	STAT_OTHER_QUEUE = 4,
	STAT_UNSERVED = 5,
	STAT_MAX = 6,
};

struct egress_cfg {
	__u16 first; /* host byte order */
	__u16 last;
	__u32 on;    /* masquerading at all */
};

struct heartbeat {
	__u64 last_ns;  /* CLOCK_MONOTONIC of switchd's last beat */
	__u64 grace_ns; /* how long the switch's frames are held after it */
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct port_cfg);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_cfg);
} node SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536); /* flowtable::services::MAX_EXTERNAL_FRONTENDS */
	__type(key, struct frontend_key);
	__type(value, __u8);
} frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct heartbeat);
} heartbeat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct egress_cfg);
} egress SEC(".maps");

static __always_inline int in_range(struct egress_cfg *e, __u16 port_be)
{
	__u16 p = bpf_ntohs(port_be);
	return e && e->on && p >= e->first && p <= e->last;
}

/* ICMP to the node: an echo reply or an error that may be a masqueraded flow's. */
static __always_inline int masqueraded_icmp(struct iphdr *ip, void *end, __u32 node_ip,
					    struct egress_cfg *e)
{
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return 0;
	__u8 *icmp = (void *)ip + ihl;
	if ((void *)(icmp + 8) > end)
		return 0;
	if (icmp[0] == 0) /* echo reply: the identifier */
		return in_range(e, *(__u16 *)(icmp + 4));
	if (icmp[0] != 3 && icmp[0] != 11 && icmp[0] != 12)
		return 0;
	struct iphdr *q = (void *)(icmp + 8);
	if ((void *)(q + 1) > end || q->saddr != node_ip)
		return 0;
	if (q->protocol != IPPROTO_TCP && q->protocol != IPPROTO_UDP)
		return 0;
	__u32 qihl = q->ihl * 4;
	if (qihl < sizeof(*q))
		return 0;
	__u16 *qports = (void *)q + qihl;
	if ((void *)(qports + 2) > end)
		return 0;
	return in_range(e, qports[0]);
}

static __always_inline int count(__u32 what, int action)
{
	__u64 *c = bpf_map_lookup_elem(&stats, &what);
	if (c)
		*c += 1;
	return action;
}

/* A pod port's frame that is the node's own (the one rule both programs apply): an ARP
 * reply (the kernel's neighbour resolution towards its pods) and, unless the node has a
 * host port, IPv4 addressed to the node's IP. `eth + 1 <= end` is the caller's. */
static __always_inline int pod_frame_is_the_nodes(struct ethhdr *eth, void *end,
						  struct node_cfg *n)
{
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		/* ARP header: htype(2) ptype(2) hlen(1) plen(1) op(2) */
		__u16 *op = (void *)(eth + 1) + 6;
		return (void *)(op + 1) <= end && *op == bpf_htons(2);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		return (void *)(ip + 1) <= end && ip->daddr == n->ip &&
		       !(n->flags & NODE_HAS_HOST_PORT);
	}
	return 0;
}

static __always_inline int to_switch(struct port_cfg *cfg)
{
	/* No socket in the slot: dropped (the heartbeat is fresh, checked before). */
	int r = bpf_redirect_map(&xsks, cfg->slot, XDP_DROP);
	if (r == XDP_REDIRECT)
		return count(STAT_REDIRECTED, r);
	return count(STAT_HELD, r);
}

SEC("xdp.frags")
int nodeswitch_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 zero = 0;

	struct port_cfg *cfg = bpf_map_lookup_elem(&ports, &ifindex);
	if (!cfg)
		return count(STAT_UNKNOWN_PORT, XDP_PASS);
	struct heartbeat *hb = bpf_map_lookup_elem(&heartbeat, &zero);
	/* The coarse clock may lag the beat's by a tick: never subtract it from the beat. */
	if (!hb || bpf_ktime_get_coarse_ns() > hb->last_ns + hb->grace_ns)
		return count(STAT_UNSERVED, XDP_PASS);
	/* The switch binds one socket per port, on queue 0: a frame on any other receive queue
	 * could not be delivered to it. On the uplink it stays with the kernel (multi-queue
	 * uplinks: use one combined channel, ethtool -L IF combined 1); from a pod it is dropped,
	 * never handed to the kernel past anti-spoofing and Service NAT. */
	if (ctx->rx_queue_index != 0)
		return count(STAT_OTHER_QUEUE, cfg->role == ROLE_POD ? XDP_DROP : XDP_PASS);
	struct node_cfg *n = bpf_map_lookup_elem(&node, &zero);
	if (!n)
		return count(STAT_PASSED, XDP_PASS);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return cfg->role == ROLE_POD ? to_switch(cfg) : count(STAT_PASSED, XDP_PASS);

	if (cfg->role == ROLE_POD) {
		if (pod_frame_is_the_nodes(eth, end, n))
			return count(STAT_PASSED, XDP_PASS);
		return to_switch(cfg);
	}

	/* Uplink. */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(STAT_PASSED, XDP_PASS);
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		return count(STAT_PASSED, XDP_PASS);
	/* Later fragments carry no ports: the kernel's (the switch does not NAT fragments). */
	if (ip->frag_off & bpf_htons(0x1fff))
		return count(STAT_PASSED, XDP_PASS);
	struct egress_cfg *e = bpf_map_lookup_elem(&egress, &zero);
	if (ip->protocol == IPPROTO_ICMP) {
		if (ip->daddr == n->ip && masqueraded_icmp(ip, end, n->ip, e))
			return to_switch(cfg);
		return count(STAT_PASSED, XDP_PASS);
	}
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return count(STAT_PASSED, XDP_PASS);
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return count(STAT_PASSED, XDP_PASS);
	__u16 *ports_hdr = (void *)ip + ihl;
	if ((void *)(ports_hdr + 2) > end)
		return count(STAT_PASSED, XDP_PASS);
	__u16 dport = ports_hdr[1];
	if (ip->protocol == IPPROTO_UDP && ip->daddr == n->ip && dport == n->vxlan_port)
		return to_switch(cfg);
	if (ip->daddr == n->ip && in_range(e, dport))
		return to_switch(cfg);
	struct frontend_key key = {
		.ip = ip->daddr,
		.port = dport,
		.proto = ip->protocol,
		.pad = 0,
	};
	if (bpf_map_lookup_elem(&frontends, &key))
		return to_switch(cfg);
	return count(STAT_PASSED, XDP_PASS);
}

/* TCX verdicts (linux/bpf.h has them from 6.6 on; spelled out for older headers). */
#define NS_TCX_PASS 0
#define NS_TCX_DROP 2

SEC("tcx/ingress")
int nodeswitch_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u32 ifindex = skb->ifindex;
	__u32 zero = 0;

	struct port_cfg *cfg = bpf_map_lookup_elem(&ports, &ifindex);
	if (!cfg || cfg->role != ROLE_POD)
		return count(STAT_UNKNOWN_PORT, NS_TCX_PASS);
	struct heartbeat *hb = bpf_map_lookup_elem(&heartbeat, &zero);
	if (!hb || bpf_ktime_get_coarse_ns() > hb->last_ns + hb->grace_ns)
		return count(STAT_UNSERVED, NS_TCX_PASS);
	struct node_cfg *n = bpf_map_lookup_elem(&node, &zero);
	if (!n)
		return count(STAT_PASSED, NS_TCX_PASS);
	/* Headers outside the linear part: the switch's (its socket has the whole frame). */
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return count(STAT_REDIRECTED, NS_TCX_DROP);
	if (pod_frame_is_the_nodes(eth, end, n))
		return count(STAT_PASSED, NS_TCX_PASS);
	return count(STAT_REDIRECTED, NS_TCX_DROP);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
