//! The per-batch pipeline: every frame of a batch in, one [`Verdict`] per frame out.
//!
//! Design (a VPP graph node): [`Pipeline::process`] is a function over a vector of packets and
//! one snapshot. Each frame is parsed once through the `wire` views, rewritten in place in its
//! own buffer (MACs, TTL, VXLAN headers in the headroom, replies over the request) and given a
//! verdict: transmit on a port, hand to the kernel, or drop with a named [`DropReason`]. Nothing
//! allocates, locks or blocks; the only state is the worker's own [`Counters`] and an IP
//! identification counter, so a `Pipeline` belongs to exactly one worker thread (it is `Send`,
//! not shared). The snapshot is passed in per batch: a batch never sees two generations.
//!
//! Paths, by ingress port:
//! - pod port: ARP for anything but the pod's own address is answered with the gateway MAC
//!   (proxy ARP); IPv4 must carry the pod's own source IP and MAC (anti-spoofing), then is
//!   routed: gateway address (ICMP echo answered), node address (kernel), a local pod
//!   (delivered, TTL - 1), another node's pod CIDR (VXLAN-encapsulated, TTL - 1), another
//!   node's own address (out of the uplink to it, TTL - 1: host-network endpoints).
//! - uplink: VXLAN to this node's address and port is checked (VNI, known VTEP) and
//!   decapsulated, then routed to a local pod; everything else is the node's and goes to the
//!   kernel.
//! - TCP/UDP checksums left partial by a sender's checksum offload (veth, vxlan) are completed
//!   first, as a NIC would (`offload`), except, with transmit checksum offload on, on a frame
//!   from a pod to another pod of this node: that one stays partial (re-derived if reverse NAT
//!   changed its addresses) and is marked for the transmitting port to finish.
//! - TTL expiry and too-big-with-DF become ICMP errors to the sender (RFC 1812 rules: never
//!   about an ICMP error or a non-first fragment).

mod arp;
mod flowcache;
mod forward;
mod icmp;
mod masquerade;
mod nat;
mod offload;
mod vxlan;

use crate::conntrack::{Conntrack, Invalid, Timeouts};
use crate::counters::{Action, Counters, DropReason};
use crate::packet::{Packet, PortId, TxChecksum};
use crate::snapshot::Snapshot;
use crate::wire::ethernet::{ethertype, EthernetFrame, HEADER_LEN as ETH_LEN};
use crate::wire::ipv4::{Ipv4Error, Ipv4Packet};
use std::sync::Arc;

/// The batch size the daemon and benchmarks use.
pub const BATCH_SIZE: usize = 64;

pub use vxlan::{flow_hash, src_port, OuterTemplate};

/// What to do with a frame after the pipeline has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the (rewritten) frame out of this port.
    Transmit(PortId),
    /// Hand the frame to the node's kernel: unchanged, or (for VXLAN addressed to the
    /// node's own IP) the decapsulated inner frame, whose MACs are the VTEPs'.
    Kernel,
    /// Drop the frame; the reason has been counted.
    Drop(DropReason),
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::Drop(DropReason::UnknownPort)
    }
}

/// How a frame reached the routing step; decides TTL handling and what may be routed where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hop {
    /// Sent by a local pod.
    FromPod,
    /// Decapsulated from another node.
    FromOverlay,
    /// From outside the cluster on the uplink (NodePort, LoadBalancer), after DNAT.
    FromUplink,
    /// Built by the switch itself (a reply or an ICMP error): no TTL decrement.
    Generated,
}

/// A decision before counting: what happened and where the frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Transmit on a port, counted as the action.
    Tx(PortId, Action),
    /// To the kernel.
    Kernel,
    /// Dropped.
    Drop(DropReason),
}

impl Outcome {
    /// The same outcome with a transmit counted as `a` instead (for replies and errors).
    pub(crate) fn as_action(self, a: Action) -> Outcome {
        match self {
            Outcome::Tx(p, _) => Outcome::Tx(p, a),
            o => o,
        }
    }
}

impl From<Invalid> for DropReason {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Flags => DropReason::CtInvalidFlags,
            Invalid::New => DropReason::CtInvalidNew,
            Invalid::State => DropReason::CtInvalidState,
            Invalid::SeqOverWindow => DropReason::CtInvalidSeqOverWindow,
            Invalid::AckOverWindow => DropReason::CtInvalidAckOverWindow,
            Invalid::Rst => DropReason::CtInvalidRst,
        }
    }
}

impl From<Ipv4Error> for DropReason {
    fn from(e: Ipv4Error) -> Self {
        match e {
            Ipv4Error::Truncated => DropReason::Ipv4Truncated,
            Ipv4Error::BadVersion => DropReason::Ipv4BadVersion,
            Ipv4Error::BadHeaderLen => DropReason::Ipv4BadHeaderLen,
            Ipv4Error::BadTotalLen => DropReason::Ipv4BadTotalLen,
        }
    }
}

/// One worker's pipeline: its counters, its IP identification sequence, the clock it was
/// given for this batch, and a handle on the conntrack table it shares with other workers.
#[derive(Debug)]
pub struct Pipeline {
    counters: Counters,
    ident: u16,
    /// Sink for the batch pre-touch loads, so they are not optimised away.
    touched: u8,
    ct: Arc<Conntrack>,
    cache: flowcache::FlowCache,
    /// The uplink's next hops, for what leaves the cluster.
    hops: crate::egress::NextHopsCell,
    /// Masquerade destinations recently found without a free port.
    full: masquerade::FullRanges,
    /// Leave pod-to-pod partial checksums to the transmitting port (`offload`).
    tx_checksum_offload: bool,
}

/// Conntrack capacity of a pipeline made by [`Pipeline::new`] (tests, tools).
pub const DEFAULT_PRIVATE_CT: usize = 4096;

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    /// A pipeline with zeroed counters and a small conntrack table of its own.
    pub fn new() -> Self {
        Self::with_conntrack(Arc::new(Conntrack::new(
            DEFAULT_PRIVATE_CT,
            Timeouts::default(),
        )))
    }

    /// A pipeline sharing `ct` with other workers.
    pub fn with_conntrack(ct: Arc<Conntrack>) -> Self {
        // Each worker starts its IP identification sequence elsewhere, so outer packets of
        // different workers towards one node do not share IDs.
        static NEXT_SEED: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let ident = NEXT_SEED.fetch_add(0x3b1d, std::sync::atomic::Ordering::Relaxed);
        Pipeline {
            counters: Counters::default(),
            ident,
            touched: 0,
            ct,
            cache: flowcache::FlowCache::default(),
            hops: crate::egress::NextHopsCell::new(),
            full: masquerade::FullRanges::default(),
            tx_checksum_offload: false,
        }
    }

    /// Has the pipeline resolve next hops out of the uplink from `hops` (shared with the
    /// daemon, which keeps it current); a new pipeline has an empty one.
    pub fn set_next_hops(&mut self, hops: crate::egress::NextHopsCell) {
        self.hops = hops;
    }

    /// Whether a pod's partial checksum on a frame to another pod of this node is left for the
    /// transmitting port to finish ([`Packet::tx_checksum`]) instead of completed here; off by
    /// default (replay and tests see complete checksums).
    pub fn set_tx_checksum_offload(&mut self, on: bool) {
        self.tx_checksum_offload = on;
    }

    /// Completes the checksum the pipeline left for the port ([`Packet::tx_checksum`]), for a
    /// port that cannot finish it; clears the mark. Counted as `checksums_completed`.
    pub fn finish_tx_checksum(&mut self, pkt: &mut Packet<'_>) {
        if pkt.tx_checksum().is_none() {
            return;
        }
        pkt.set_tx_checksum(None);
        if let Some(ip) = pkt.data_mut().get_mut(ETH_LEN..) {
            if offload::complete_partial_checksum(ip) {
                self.counters.checksums_offloaded =
                    self.counters.checksums_offloaded.saturating_sub(1);
                self.counters.checksums_completed += 1;
            }
        }
    }

    /// The conntrack table.
    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.ct
    }

    /// Advances the conntrack table's clock (seconds, any fixed epoch; shared by every
    /// pipeline on the table): entries age with it.
    pub fn set_now(&mut self, secs: u32) {
        self.ct.set_now(secs);
    }

    /// This worker's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Decides every packet of a batch with one snapshot; `verdicts[i]` is for `pkts[i]`.
    ///
    /// Frames are rewritten in place. If `verdicts` is shorter than `pkts`, only the first
    /// `verdicts.len()` packets are processed (and counted).
    pub fn process(&mut self, snap: &Snapshot, pkts: &mut [Packet<'_>], verdicts: &mut [Verdict]) {
        // Touch every frame's headers first: the loads are independent, so the CPU overlaps
        // their cache misses instead of taking them one packet at a time (a portable, safe
        // stand-in for VPP's explicit prefetch).
        let mut t = 0u8;
        for p in pkts.iter() {
            t ^= p.data().get(12).copied().unwrap_or(0);
        }
        self.touched ^= t;
        for (p, v) in pkts.iter_mut().zip(verdicts.iter_mut()) {
            *v = self.process_one(snap, p);
        }
    }

    /// Decides one packet (the batch function's body; also handy in tests).
    pub fn process_one(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>) -> Verdict {
        self.counters.received += 1;
        let outcome = if pkt.port == PortId::UPLINK {
            self.ingress_uplink(snap, pkt)
        } else {
            self.ingress_pod(snap, pkt)
        };
        match outcome {
            Outcome::Tx(port, a) => {
                self.counters.action(a);
                Verdict::Transmit(port)
            }
            Outcome::Kernel => {
                self.counters.action(Action::ToKernel);
                Verdict::Kernel
            }
            Outcome::Drop(r) => {
                self.counters.drop(r);
                Verdict::Drop(r)
            }
        }
    }

    pub(crate) fn next_ident(&mut self) -> u16 {
        self.ident = self.ident.wrapping_add(1);
        self.ident
    }

    fn ingress_pod(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>) -> Outcome {
        let Some(pod) = snap.pod_on_port(pkt.port) else {
            return Outcome::Drop(DropReason::UnknownPort);
        };
        let Ok(eth) = EthernetFrame::new_checked(pkt.data()) else {
            return Outcome::Drop(DropReason::EthernetTruncated);
        };
        match eth.ethertype() {
            ethertype::IPV4 => {}
            ethertype::ARP => return arp::from_pod(snap, pod, pkt),
            ethertype::VLAN | ethertype::QINQ | ethertype::QINQ_OLD => {
                return Outcome::Drop(DropReason::VlanTagged)
            }
            ethertype::IPV6 => return Outcome::Drop(DropReason::Ipv6Unsupported),
            _ => return Outcome::Drop(DropReason::UnsupportedEthertype),
        }
        let src_mac = eth.src();
        let ip = match Ipv4Packet::new_checked(eth.payload()) {
            Ok(ip) => ip,
            Err(e) => return Outcome::Drop(e.into()),
        };
        if !ip.verify_checksum() {
            return Outcome::Drop(DropReason::Ipv4BadChecksum);
        }
        // The host port is the node's kernel: it also answers from the node's own address
        // (replies of a host-network Service endpoint on this node).
        let own = ip.src() == pod.ip
            || (ip.src() == snap.node.ip && snap.host().is_some_and(|h| h.port == pkt.port));
        if src_mac != pod.mac || !own {
            return Outcome::Drop(DropReason::SpoofedSource);
        }
        // Strip Ethernet padding: what goes on is exactly the IP packet.
        let len = ETH_LEN + usize::from(ip.total_len());
        let dst = ip.dst();
        pkt.set_len(len);
        // A partial checksum stays partial only on the way to another local pod, its
        // addresses at most translated (reverse NAT of a Service reply: the field is then
        // re-derived below), nothing else rewritten but MACs and TTL: the port finishes it.
        let keep = match offload::partial_checksum_at(&pkt.data()[ETH_LEN..]) {
            Some(at) if self.tx_checksum_offload && snap.pod_by_ip(dst).is_some() => Some(at),
            Some(_) => {
                offload::complete_partial_checksum(&mut pkt.data_mut()[ETH_LEN..]);
                self.counters.checksums_completed += 1;
                None
            }
            None => None,
        };
        let nat = self.nat_from_pod(snap, pkt);
        if let Some((ihl, at)) = keep {
            // NAT's incremental update assumes a complete checksum; a partial one is the
            // pseudo-header sum of the addresses now in the header.
            offload::repartial(&mut pkt.data_mut()[ETH_LEN..], ihl, at);
        }
        let out = match nat {
            Some(o) => o,
            None => self.route(snap, pkt, Hop::FromPod),
        };
        if let Some((ihl, at)) = keep {
            let still = offload::partial_checksum_at(&pkt.data()[ETH_LEN..]) == Some((ihl, at));
            if still && matches!(out, Outcome::Tx(_, Action::DeliveredLocal)) {
                pkt.set_tx_checksum(Some(TxChecksum {
                    start: (ETH_LEN + ihl) as u16,
                    offset: at as u16,
                }));
                self.counters.checksums_offloaded += 1;
            } else if offload::complete_partial_checksum(&mut pkt.data_mut()[ETH_LEN..]) {
                // (Only if the frame is still that TCP/UDP packet: an ICMP error or a reply
                // built in its place is left alone.)
                self.counters.checksums_completed += 1;
            }
        }
        out
    }

    fn ingress_uplink(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>) -> Outcome {
        let Ok(eth) = EthernetFrame::new_checked(pkt.data()) else {
            return Outcome::Drop(DropReason::EthernetTruncated);
        };
        if eth.ethertype() != ethertype::IPV4 {
            return Outcome::Kernel;
        }
        if !snap.services.frontend_ips.is_empty() {
            if let Some(o) = self.nat_from_uplink(snap, pkt) {
                return o;
            }
        }
        if let Some(o) = self.unmasquerade(snap, pkt) {
            return o;
        }
        self.decap(snap, pkt)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_conntrack;
#[cfg(test)]
mod tests_egress;
#[cfg(test)]
mod tests_hostnet;
#[cfg(test)]
mod tests_offload;
#[cfg(test)]
mod tests_services;
