//! ARP from pods: the switch answers every request with the gateway MAC (proxy ARP), so a pod
//! reaches everything through the switch whatever prefix its address is configured with.

use super::Outcome;
use crate::counters::{Action, DropReason};
use crate::packet::Packet;
use crate::snapshot::{Pod, Snapshot};
use crate::wire::arp::{op, ArpPacket};
use crate::wire::ethernet::{EthernetFrame, HEADER_LEN as ETH_LEN};
use std::net::Ipv4Addr;

pub(super) fn from_pod(snap: &Snapshot, pod: &Pod, pkt: &mut Packet<'_>) -> Outcome {
    let data = pkt.data_mut();
    let (eth_hdr, body) = data.split_at_mut(ETH_LEN);
    let Ok(mut arp) = ArpPacket::new_checked(body) else {
        return Outcome::Drop(DropReason::ArpMalformed);
    };
    if arp.op() != op::REQUEST {
        return Outcome::Drop(DropReason::ArpIgnored);
    }
    let eth_src = {
        let mut m = [0; 6];
        m.copy_from_slice(&eth_hdr[6..12]);
        crate::wire::MacAddr(m)
    };
    if eth_src != pod.mac || arp.sha() != pod.mac {
        return Outcome::Drop(DropReason::SpoofedSource);
    }
    if arp.spa() == Ipv4Addr::UNSPECIFIED {
        // An address probe (RFC 5227): answering would make the pod think its address is taken.
        return Outcome::Drop(DropReason::ArpIgnored);
    }
    if arp.spa() != pod.ip {
        return Outcome::Drop(DropReason::SpoofedSource);
    }
    if arp.tpa() == pod.ip {
        // Gratuitous ARP / announcement for its own address.
        return Outcome::Drop(DropReason::ArpIgnored);
    }
    arp.make_reply(snap.node.gateway_mac);
    if let Ok(mut eth) = EthernetFrame::new_checked(eth_hdr) {
        eth.set_dst(pod.mac);
        eth.set_src(snap.node.gateway_mac);
    }
    Outcome::Tx(pkt.port, Action::ArpReplied)
}
