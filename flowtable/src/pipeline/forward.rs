//! Routing an IPv4 packet that sits at offset 14 of its frame, header already validated and
//! the frame trimmed to the IP total length: local delivery, or hand-off to encap/ICMP.

use super::{Hop, Outcome, Pipeline};
use crate::counters::{Action, DropReason};
use crate::packet::{Packet, PortId};
use crate::snapshot::{Pod, Snapshot};
use crate::wire::ethernet::{ethertype, EthernetFrame, HEADER_LEN as ETH_LEN};
use crate::wire::icmp::kind;
use crate::wire::ipv4;
use crate::wire::MacAddr;

/// "Fragmentation needed and DF set".
const CODE_FRAG_NEEDED: u8 = 4;

impl Pipeline {
    /// Routes the packet by destination. Callers guarantee a valid IPv4 header at offset 14.
    pub(super) fn route(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>, hop: Hop) -> Outcome {
        let Some(dst) = pkt.data().get(ETH_LEN + 16..ETH_LEN + 20) else {
            return Outcome::Drop(DropReason::Ipv4Truncated);
        };
        let dst = std::net::Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]);
        let node = &snap.node;
        if let Some(pod) = snap.pod_by_ip(dst) {
            return self.deliver(snap, pkt, pod, hop);
        }
        if dst == node.gateway_ip && hop != Hop::Generated {
            return self.answer_gateway(snap, pkt);
        }
        if dst == node.ip {
            // A local pod to its node: through the host port when there is one (the XDP
            // program passes such packets to the kernel itself when there is none). Others
            // reach the node at the host port's address; the node's own IP is the kernel's.
            // A NodePort flow to a host-network endpoint here also takes the host port: its
            // source is the gateway address, which the kernel routes back into the switch.
            if let Some(host) = snap.host() {
                // (From the host port itself only a Service flow comes back to it, its
                // source translated: the node reaching a host-network endpoint on itself.)
                let src = pkt.data().get(ETH_LEN + 12..ETH_LEN + 16);
                let hairpin = src.is_some_and(|s| s != host.ip.octets());
                let from_pod = hop == Hop::FromPod && (pkt.port != host.port || hairpin);
                if from_pod || hop == Hop::FromUplink {
                    return self.deliver(snap, pkt, host, hop);
                }
            }
            return Outcome::Kernel;
        }
        if node.pod_cidr.contains(dst) {
            return Outcome::Drop(DropReason::NoSuchPod);
        }
        if hop == Hop::FromOverlay {
            // This node does not route between other nodes.
            return Outcome::Drop(DropReason::NotForThisNode);
        }
        if let Some(remote) = snap.remote_by_vtep(dst) {
            // Another node's own address (a host-network endpoint, the node itself): over the
            // underlay, not VXLAN. Its kernel replies to the pod address, which its switch
            // sends back over VXLAN.
            let mac = match self.remote_mac(remote) {
                Ok(m) => m.or(remote.next_hop_mac).unwrap_or_default(),
                Err(r) => return Outcome::Drop(r),
            };
            return self.underlay(snap, pkt, mac, hop);
        }
        match snap.remote_for(dst) {
            Some(remote) => self.encap(snap, pkt, remote, hop),
            None if hop == Hop::Generated && pkt.port == PortId::UPLINK => {
                // A reply the switch built (RST, ICMP error) to a client outside the cluster
                // that came in on the uplink: back to the MAC the request came from.
                let uplink_mac = snap.node.uplink_mac;
                let data = pkt.data_mut();
                if data.len() < ETH_LEN {
                    return Outcome::Drop(DropReason::NoRoute);
                }
                data.copy_within(6..12, 0);
                data[6..12].copy_from_slice(&uplink_mac.0);
                Outcome::Tx(PortId::UPLINK, Action::ToExternal)
            }
            // Leaving the cluster (the node's kernel never routes that through the switch).
            None if hop == Hop::FromPod && snap.host().is_none_or(|h| h.port != pkt.port) => {
                self.egress(snap, pkt, hop)
            }
            None => Outcome::Drop(DropReason::NoRoute),
        }
    }

    /// TTL check for forwarded packets: `Some(outcome)` if the packet must not go on.
    pub(super) fn expire_ttl(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
        hop: Hop,
    ) -> Option<Outcome> {
        if hop == Hop::Generated {
            return None;
        }
        let ttl = *pkt.data().get(ETH_LEN + 8)?;
        if ttl > 1 {
            return None;
        }
        Some(self.icmp_error(
            snap,
            pkt,
            kind::TIME_EXCEEDED,
            0,
            0,
            DropReason::TtlExceeded,
        ))
    }

    /// Out of the uplink to another node's address, as a router would (TTL - 1).
    fn underlay(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
        next_hop: MacAddr,
        hop: Hop,
    ) -> Outcome {
        if let Some(o) = self.expire_ttl(snap, pkt, hop) {
            return o;
        }
        if let Some(o) = self.exceeds_uplink_mtu(snap, pkt, hop) {
            return o;
        }
        let data = pkt.data_mut();
        let (eth_hdr, body) = data.split_at_mut(ETH_LEN);
        if hop != Hop::Generated {
            ipv4::decrement_ttl(body);
        }
        if let Ok(mut eth) = EthernetFrame::new_checked(eth_hdr) {
            eth.set_dst(next_hop);
            eth.set_src(snap.node.uplink_mac);
            eth.set_ethertype(ethertype::IPV4);
        }
        Outcome::Tx(PortId::UPLINK, Action::ToNode)
    }

    /// For a packet leaving the uplink as it is (not encapsulated): `Some` if it is larger
    /// than the uplink's MTU (fragmentation needed to its sender when DF is set, as a router
    /// answers; else dropped).
    pub(super) fn exceeds_uplink_mtu(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
        hop: Hop,
    ) -> Option<Outcome> {
        let mtu = usize::from(snap.node.uplink_mtu);
        if pkt.data().len().saturating_sub(ETH_LEN) <= mtu {
            return None;
        }
        let df = pkt.data().get(ETH_LEN + 6).is_some_and(|f| f & 0x40 != 0);
        if df && hop != Hop::Generated {
            return Some(self.icmp_error(
                snap,
                pkt,
                kind::DEST_UNREACHABLE,
                CODE_FRAG_NEEDED,
                mtu as u32,
                DropReason::TooBig,
            ));
        }
        Some(Outcome::Drop(DropReason::TooBig))
    }

    fn deliver(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>, pod: &Pod, hop: Hop) -> Outcome {
        if let Some(o) = self.expire_ttl(snap, pkt, hop) {
            return o;
        }
        let data = pkt.data_mut();
        let (eth_hdr, body) = data.split_at_mut(ETH_LEN);
        if hop != Hop::Generated {
            ipv4::decrement_ttl(body);
        }
        if let Ok(mut eth) = EthernetFrame::new_checked(eth_hdr) {
            eth.set_dst(pod.mac);
            eth.set_src(snap.node.gateway_mac);
            eth.set_ethertype(ethertype::IPV4);
        }
        Outcome::Tx(pod.port, Action::DeliveredLocal)
    }
}
