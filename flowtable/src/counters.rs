//! What happened to every frame: one counter per action and one per named drop reason.
//!
//! Design (VPP's error counters): the pipeline never drops a frame without naming why, and
//! `received == sum(actions) + sum(drops)` holds after every batch, which the property tests
//! check. A [`Counters`] is owned by one worker and updated with plain adds (no atomics on the
//! packet path); the daemon publishes copies for readers between batches.

use std::fmt;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v,)* }

        impl $name {
            /// Every value, in counter order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            /// Number of values.
            pub const COUNT: usize = $name::ALL.len();
            /// The snake_case name used in JSON, the CLI and docs.
            pub fn name(self) -> &'static str {
                match self { $($name::$v => $s,)* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_enum! {
    /// Why a frame was dropped. Every drop has exactly one reason.
    DropReason {
        /// Shorter than an Ethernet header.
        EthernetTruncated = "ethernet_truncated",
        /// 802.1Q/802.1ad tagged; pods and the uplink are untagged.
        VlanTagged = "vlan_tagged",
        /// IPv6; dropped until dual-stack support.
        Ipv6Unsupported = "ipv6_unsupported",
        /// An ethertype that is neither IPv4, ARP nor IPv6.
        UnsupportedEthertype = "unsupported_ethertype",
        /// ARP that is not Ethernet/IPv4, or shorter than 28 bytes.
        ArpMalformed = "arp_malformed",
        /// ARP that needs no answer: replies, gratuitous ARP, probes, requests for the pod's own address.
        ArpIgnored = "arp_ignored",
        /// IPv4 header shorter than 20 bytes or than its IHL.
        Ipv4Truncated = "ipv4_truncated",
        /// IPv4 version field is not 4.
        Ipv4BadVersion = "ipv4_bad_version",
        /// IPv4 IHL below 5.
        Ipv4BadHeaderLen = "ipv4_bad_header_len",
        /// IPv4 total length below the header length or beyond the frame.
        Ipv4BadTotalLen = "ipv4_bad_total_len",
        /// IPv4 header checksum wrong.
        Ipv4BadChecksum = "ipv4_bad_checksum",
        /// A pod sent with a source IP or MAC that is not its own.
        SpoofedSource = "spoofed_source",
        /// The frame arrived on a port the current snapshot does not know (a pod just removed).
        UnknownPort = "unknown_port",
        /// No route: not a pod, the gateway, the node or a remote pod CIDR.
        NoRoute = "no_route",
        /// Inside this node's pod CIDR, but no pod has that address.
        NoSuchPod = "no_such_pod",
        /// VXLAN traffic from another node for an address outside this node (no transit routing).
        NotForThisNode = "not_for_this_node",
        /// TTL ran out and no ICMP error may be sent (the packet was an ICMP error or a non-first fragment).
        TtlExceeded = "ttl_exceeded",
        /// Too big for the uplink MTU after encapsulation and DF not set (the switch does not fragment).
        TooBig = "too_big",
        /// Not enough headroom in the buffer to encapsulate.
        NoHeadroom = "no_headroom",
        /// Not enough room in the buffer to build a reply.
        NoTailroom = "no_tailroom",
        /// Something other than an ICMP echo request sent to the gateway address.
        GatewayUnsupported = "gateway_unsupported",
        /// ICMP echo request to the gateway with a bad ICMP checksum.
        IcmpBadChecksum = "icmp_bad_checksum",
        /// UDP/VXLAN header truncated or inconsistent, or the I flag missing.
        VxlanMalformed = "vxlan_malformed",
        /// VXLAN with a VNI other than the configured one.
        VxlanBadVni = "vxlan_bad_vni",
        /// VXLAN from an address that is not a known node.
        VxlanUnknownVtep = "vxlan_unknown_vtep",
        /// VXLAN outer packet is an IP fragment (not reassembled).
        VxlanFragmented = "vxlan_fragmented",
        /// The inner frame of a VXLAN packet is not IPv4.
        VxlanInnerNotIpv4 = "vxlan_inner_not_ipv4",
        /// TCP/UDP header too short to read ports and flags, for a Service or reply.
        L4Truncated = "l4_truncated",
        /// An IP fragment addressed to a Service (fragments are not reassembled for NAT).
        ServiceFragment = "service_fragment",
        /// SCTP to a Service: not translated yet.
        SctpUnsupported = "sctp_unsupported",
        /// internalTrafficPolicy or externalTrafficPolicy Local and no endpoint on this node.
        NoLocalEndpoints = "no_local_endpoints",
        /// A new Service flow could not be tracked: the conntrack table is full of live flows.
        ConntrackFull = "conntrack_full",
        /// No free source port to resolve a NAT clash.
        NatClash = "nat_clash",
        /// Conntrack: a TCP flag combination no stack sends (SYN+FIN, FIN without ACK, none).
        CtInvalidFlags = "ct_invalid_flags",
        /// Conntrack: a TCP segment that cannot open a connection (SYN-ACK, FIN, RST) with none tracked.
        CtInvalidNew = "ct_invalid_new",
        /// Conntrack: a TCP segment invalid in the connection's state (an ACK before the SYN-ACK, ...).
        CtInvalidState = "ct_invalid_state",
        /// Conntrack: a TCP segment starting beyond the receiver's window.
        CtInvalidSeqOverWindow = "ct_invalid_seq_over_window",
        /// Conntrack: a TCP segment acknowledging data the other side never sent.
        CtInvalidAckOverWindow = "ct_invalid_ack_over_window",
        /// Conntrack: a RST below the sequence its receiver acknowledged.
        CtInvalidRst = "ct_invalid_rst",
        /// Leaving the cluster, but no route out of the uplink covers the destination.
        NoNextHop = "no_next_hop",
        /// Leaving the cluster, but the next hop's MAC is not known yet (resolution asked for).
        NeighbourUnresolved = "neighbour_unresolved",
        /// A new masqueraded flow found no free port for its destination in `egress.port_range`.
        SnatPortsExhausted = "snat_ports_exhausted",
        /// An IP fragment to be masqueraded (fragments are not reassembled).
        EgressFragment = "egress_fragment",
        /// To be masqueraded but neither TCP, UDP nor an ICMP echo (no port to tell it by).
        EgressUnsupported = "egress_unsupported",
        /// On a masquerade port of the node's IP without a flow, and no host port to give it
        /// to the kernel by.
        EgressNoFlow = "egress_no_flow",
        /// An ICMP error a pod sent out of the cluster about no masqueraded flow of its own.
        EgressIcmpUntracked = "egress_icmp_untracked",
    }
}

named_enum! {
    /// What the switch did with a frame it did not drop.
    Action {
        /// Delivered to a pod on this node.
        DeliveredLocal = "delivered_local",
        /// Encapsulated in VXLAN towards another node.
        Encapsulated = "encapsulated",
        /// Decapsulated from VXLAN (then delivered, or answered).
        Decapsulated = "decapsulated",
        /// ARP request answered.
        ArpReplied = "arp_replied",
        /// ICMP echo to the gateway answered.
        EchoReplied = "echo_replied",
        /// Turned into an ICMP error (time exceeded, fragmentation needed) to the sender.
        IcmpErrorSent = "icmp_error_sent",
        /// Handed to the node's kernel.
        ToKernel = "to_kernel",
        /// A Service with no endpoints answered: TCP RST or ICMP port unreachable.
        Rejected = "rejected",
        /// A backend's reply to a client outside the cluster, sent out of the uplink.
        ToExternal = "to_external",
        /// Sent over the underlay to another node's own address (a host-network endpoint).
        ToNode = "to_node",
        /// A pod's packet out of the uplink, its source masqueraded to the node's IP.
        Masqueraded = "masqueraded",
        /// A pod's packet out of the uplink with its own address (`non_masquerade_cidrs`).
        RoutedOut = "routed_out",
    }
}

/// Per-worker counters: frames received, per action, per drop reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// Frames given to the pipeline.
    pub received: u64,
    /// Frames translated to a Service backend (DNAT), new or tracked flows.
    pub dnat: u64,
    /// Frames translated back from a backend to the Service (reverse NAT).
    pub reverse_nat: u64,
    /// New Service and masqueraded flows (conntrack entries created).
    pub new_flows: u64,
    /// Frames whose source was masqueraded to the node's IP.
    pub snat: u64,
    /// Partial TCP/UDP checksums (left by a sender's checksum offload) completed.
    pub checksums_completed: u64,
    /// Partial TCP/UDP checksums left for the transmitting port to finish (AF_XDP transmit
    /// metadata: pod to pod on this node).
    pub checksums_offloaded: u64,
    actions: [u64; Action::COUNT],
    drops: [u64; DropReason::COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            received: 0,
            dnat: 0,
            reverse_nat: 0,
            new_flows: 0,
            snat: 0,
            checksums_completed: 0,
            checksums_offloaded: 0,
            actions: [0; Action::COUNT],
            drops: [0; DropReason::COUNT],
        }
    }
}

impl Counters {
    /// Counts one action.
    #[inline]
    pub fn action(&mut self, a: Action) {
        self.actions[a as usize] += 1;
    }

    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, r: DropReason) {
        self.drops[r as usize] += 1;
    }

    /// The count for an action. (Decapsulated frames also count their final action.)
    pub fn actions(&self, a: Action) -> u64 {
        self.actions[a as usize]
    }

    /// The count for a drop reason.
    pub fn drops(&self, r: DropReason) -> u64 {
        self.drops[r as usize]
    }

    /// Total drops over all reasons.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Frames that left the pipeline with a final verdict (drop, transmit or kernel).
    ///
    /// `Decapsulated` is an intermediate step and is not counted here, so for any sequence of
    /// batches `received == decided()`.
    pub fn decided(&self) -> u64 {
        let final_actions: u64 = Action::ALL
            .iter()
            .filter(|a| **a != Action::Decapsulated)
            .map(|a| self.actions(*a))
            .sum();
        final_actions + self.total_drops()
    }

    /// Adds another worker's counters into this one.
    pub fn merge(&mut self, o: &Counters) {
        self.received += o.received;
        self.dnat += o.dnat;
        self.reverse_nat += o.reverse_nat;
        self.new_flows += o.new_flows;
        self.snat += o.snat;
        self.checksums_completed += o.checksums_completed;
        self.checksums_offloaded += o.checksums_offloaded;
        for (a, b) in self.actions.iter_mut().zip(o.actions.iter()) {
            *a += b;
        }
        for (a, b) in self.drops.iter_mut().zip(o.drops.iter()) {
            *a += b;
        }
    }

    /// Non-zero actions with their names.
    pub fn nonzero_actions(&self) -> impl Iterator<Item = (Action, u64)> + '_ {
        Action::ALL
            .iter()
            .map(|a| (*a, self.actions(*a)))
            .filter(|(_, n)| *n != 0)
    }

    /// Non-zero drop reasons with their names.
    pub fn nonzero_drops(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|r| (*r, self.drops(*r)))
            .filter(|(_, n)| *n != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.extend(Action::ALL.iter().map(|a| a.name()));
        for n in &names {
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()),
                "{n}"
            );
        }
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(before, names.len());
    }

    #[test]
    fn decided_excludes_decap() {
        let mut c = Counters::default();
        c.action(Action::Decapsulated);
        c.action(Action::DeliveredLocal);
        c.drop(DropReason::NoRoute);
        assert_eq!(c.decided(), 2);
        let mut d = Counters::default();
        d.merge(&c);
        d.merge(&c);
        assert_eq!(d.drops(DropReason::NoRoute), 2);
        assert_eq!(d.nonzero_actions().count(), 2);
    }
}
