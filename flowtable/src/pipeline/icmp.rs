//! ICMP the switch originates: echo replies from the gateway address and errors to senders.

use super::{Hop, Outcome, Pipeline};
use crate::counters::{Action, DropReason};
use crate::packet::Packet;
use crate::snapshot::Snapshot;
use crate::wire::ethernet::HEADER_LEN as ETH_LEN;
use crate::wire::icmp::{self, kind, IcmpPacket};
use crate::wire::ipv4::{self, protocol, Ipv4Packet, Ipv4Repr};

/// Largest datagram an ICMP error may be (RFC 1812 4.3.2.3): quote as much as fits.
const MAX_ERROR_DATAGRAM: usize = 576;
/// IPv4 + ICMP header bytes in front of the quoted datagram.
const ERROR_HEADERS: usize = ipv4::MIN_HEADER_LEN + icmp::HEADER_LEN;
/// Precedence "internetwork control", as Linux marks ICMP errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;

impl Pipeline {
    /// A packet addressed to the gateway: answer ICMP echo requests, refuse the rest.
    pub(super) fn answer_gateway(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>) -> Outcome {
        {
            let Some(body) = pkt.data_mut().get_mut(ETH_LEN..) else {
                return Outcome::Drop(DropReason::Ipv4Truncated);
            };
            let Ok(mut ip) = Ipv4Packet::new_checked(body) else {
                return Outcome::Drop(DropReason::Ipv4Truncated);
            };
            if ip.protocol() != protocol::ICMP || ip.is_fragment() {
                return Outcome::Drop(DropReason::GatewayUnsupported);
            }
            {
                let Ok(mut msg) = IcmpPacket::new_checked(ip.payload_mut()) else {
                    return Outcome::Drop(DropReason::GatewayUnsupported);
                };
                if msg.kind() != kind::ECHO_REQUEST || msg.code() != 0 {
                    return Outcome::Drop(DropReason::GatewayUnsupported);
                }
                if !msg.verify_checksum() {
                    return Outcome::Drop(DropReason::IcmpBadChecksum);
                }
                msg.set_kind(kind::ECHO_REPLY);
            }
            ip.swap_addrs();
            ip.set_ttl(64);
        }
        self.route(snap, pkt, Hop::Generated)
            .as_action(Action::EchoReplied)
    }

    /// Replaces the packet with an ICMP error about it, from the gateway address to its
    /// sender, and routes that. `fallback` is the drop reason when no error may be sent.
    pub(super) fn icmp_error(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
        icmp_type: u8,
        code: u8,
        rest: u32,
        fallback: DropReason,
    ) -> Outcome {
        self.icmp_error_from(
            snap,
            pkt,
            icmp_type,
            code,
            rest,
            fallback,
            snap.node.gateway_ip,
        )
    }

    /// As [`Pipeline::icmp_error`], sent from `from` (a Service address for port unreachable).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn icmp_error_from(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
        icmp_type: u8,
        code: u8,
        rest: u32,
        fallback: DropReason,
        from: std::net::Ipv4Addr,
    ) -> Outcome {
        let (total_len, src) = {
            let Some(body) = pkt.data().get(ETH_LEN..) else {
                return Outcome::Drop(fallback);
            };
            let Ok(ip) = Ipv4Packet::new_checked(body) else {
                return Outcome::Drop(fallback);
            };
            let about_error = ip.protocol() == protocol::ICMP
                && ip.payload().first().is_some_and(|t| icmp::is_error(*t));
            let src = ip.src();
            let dst = ip.dst();
            let subnet_broadcast = |a: std::net::Ipv4Addr| {
                snap.node.pod_cidr.broadcast() == a
                    || snap
                        .remote_for(a)
                        .is_some_and(|r| r.pod_cidr.broadcast() == a)
            };
            let link_multicast = pkt.data().first().is_some_and(|b| b & 1 == 1);
            // RFC 1812 4.3.2.7: no error about an error, a non-first fragment, a packet sent
            // to a broadcast or multicast address, or from a source that is not one host.
            if about_error
                || ip.frag_offset() != 0
                || link_multicast
                || dst.is_broadcast()
                || dst.is_multicast()
                || subnet_broadcast(dst)
                || src.is_unspecified()
                || src.is_broadcast()
                || src.is_multicast()
                || src.is_loopback()
                || src.octets()[0] >= 240
                || subnet_broadcast(src)
            {
                return Outcome::Drop(fallback);
            }
            (usize::from(ip.total_len()), src)
        };
        // At most a 576-byte datagram, and small enough to cross the overlay encapsulated.
        let overlay_room = usize::from(snap.node.uplink_mtu)
            .saturating_sub(crate::wire::vxlan::OVERHEAD + ERROR_HEADERS);
        let mut quote = total_len
            .min(MAX_ERROR_DATAGRAM - ERROR_HEADERS)
            .min(overlay_room.max(28));
        let room = pkt.capacity().saturating_sub(ETH_LEN + ERROR_HEADERS);
        if room < quote {
            // RFC 792 needs at least the header and 8 bytes of the original.
            if room < total_len.min(60 + 8) {
                return Outcome::Drop(DropReason::NoTailroom);
            }
            quote = room;
        }
        let ip_start = ETH_LEN;
        let quote_start = ip_start + ERROR_HEADERS;
        let new_len = quote_start + quote;
        let ident = self.next_ident();
        {
            let buf = pkt.with_tailroom_mut();
            buf.copy_within(ip_start..ip_start + quote, quote_start);
        }
        pkt.set_len(new_len);
        let data = pkt.data_mut();
        ipv4::write_header(
            &mut data[ip_start..],
            &Ipv4Repr {
                tos: TOS_INTERNETWORK_CONTROL,
                total_len: (ERROR_HEADERS + quote) as u16,
                ident,
                dont_frag: false,
                ttl: 64,
                protocol: protocol::ICMP,
                src: from.octets(),
                dst: src.octets(),
            },
        );
        icmp::write_message(
            &mut data[ip_start + ipv4::MIN_HEADER_LEN..new_len],
            icmp_type,
            code,
            rest,
        );
        // An error about a translated packet quotes the translation: undo it for the sender.
        if !snap.services.frontends.is_empty() {
            let _ = self.nat_error_quote(snap, pkt);
        }
        self.route(snap, pkt, Hop::Generated)
            .as_action(Action::IcmpErrorSent)
    }
}
