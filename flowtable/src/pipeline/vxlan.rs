//! VXLAN (RFC 7348) towards other nodes: encapsulation in the frame's headroom, and
//! decapsulation of what other nodes send to this one. Flannel's wire format: VNI 1, UDP port
//! 8472 by default, outer UDP checksum 0, inner MACs are the VTEPs'.

use super::{Hop, Outcome, Pipeline};
use crate::counters::{Action, DropReason};
use crate::packet::{Packet, PortId};
use crate::snapshot::{RemoteNode, Snapshot};
use crate::wire::ethernet::{ethertype, EthernetFrame, HEADER_LEN as ETH_LEN};
use crate::wire::icmp::kind;
use crate::wire::ipv4::{self, protocol, Ipv4Packet, Ipv4Repr};
use crate::wire::udp::{self, UdpPacket};
use crate::wire::vxlan::{self, VxlanPacket, OVERHEAD};

/// Outer UDP source ports are spread over Linux's default ephemeral range, as its vxlan does.
const SRC_PORT_MIN: u16 = 32768;
/// End (exclusive) of the outer source port range.
const SRC_PORT_MAX: u16 = 61000;
/// Outer TTL, Linux's default for vxlan.
const OUTER_TTL: u8 = 64;
/// "Fragmentation needed and DF set" (RFC 1191).
const CODE_FRAG_NEEDED: u8 = 4;

/// A hash of the inner flow (addresses, protocol, ports when present) for ECMP spreading.
pub fn flow_hash(ip: &Ipv4Packet<&[u8]>) -> u32 {
    let b = ip.header();
    let payload = ip.payload();
    hash_fields(b, payload)
}

#[inline]
fn hash_fields(hdr: &[u8], payload: &[u8]) -> u32 {
    if hdr.len() < ipv4::MIN_HEADER_LEN {
        return 0;
    }
    let src = u32::from_be_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
    let dst = u32::from_be_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
    let proto = hdr[9];
    let fragment = u16::from_be_bytes([hdr[6], hdr[7]]) & 0x3fff != 0;
    let mut h = (u64::from(src) << 32) | u64::from(dst);
    let ports = match payload.get(..4) {
        Some(p) if !fragment && (proto == protocol::TCP || proto == protocol::UDP) => {
            u32::from_be_bytes([p[0], p[1], p[2], p[3]])
        }
        _ => 0,
    };
    h ^= (u64::from(ports) << 8 | u64::from(proto)).rotate_left(29);
    // MurmurHash3's 64-bit finaliser.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// Maps a flow hash onto the source port range the way Linux's `udp_flow_src_port` does.
pub fn src_port(hash: u32) -> u16 {
    let range = u64::from(SRC_PORT_MAX - SRC_PORT_MIN);
    SRC_PORT_MIN + ((u64::from(hash) * range) >> 32) as u16
}

/// The outer Ethernet/IPv4/UDP/VXLAN headers towards one node, built once per snapshot.
///
/// Per packet only the IPv4 TOS, total length, identification and DF bit and the UDP source
/// port and length change; they are patched in and the IPv4 checksum is finished from the
/// template's precomputed partial sum (the sum is linear in the words), so encapsulation
/// never sums a header. Also carries the inner MACs to write.
#[derive(Debug, Clone)]
pub struct OuterTemplate {
    bytes: [u8; OVERHEAD],
    /// Folded one's-complement sum of the outer IPv4 header with the variable fields zero.
    partial_sum: u32,
    inner_src: [u8; 6],
    inner_dst: [u8; 6],
}

impl OuterTemplate {
    /// The template for frames from this node (`src_*`) to another (`dst_*`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        src_mac: crate::wire::MacAddr,
        next_hop_mac: crate::wire::MacAddr,
        src_ip: std::net::Ipv4Addr,
        dst_ip: std::net::Ipv4Addr,
        port: u16,
        vni: u32,
        inner_src: crate::wire::MacAddr,
        inner_dst: crate::wire::MacAddr,
    ) -> Self {
        let mut b = [0u8; OVERHEAD];
        b[0..6].copy_from_slice(&next_hop_mac.0);
        b[6..12].copy_from_slice(&src_mac.0);
        b[12..14].copy_from_slice(&ethertype::IPV4.to_be_bytes());
        ipv4::write_header(
            &mut b[ETH_LEN..],
            &Ipv4Repr {
                tos: 0,
                total_len: 0,
                ident: 0,
                dont_frag: false,
                ttl: OUTER_TTL,
                protocol: protocol::UDP,
                src: src_ip.octets(),
                dst: dst_ip.octets(),
            },
        );
        // Zero the checksum: the per-packet sum is finished from `partial_sum`.
        b[ETH_LEN + 10] = 0;
        b[ETH_LEN + 11] = 0;
        let partial_sum = u32::from(crate::wire::checksum::fold(crate::wire::checksum::sum(
            &b[ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN],
        )));
        udp::write_header(&mut b[ETH_LEN + ipv4::MIN_HEADER_LEN..], 0, port, 0);
        vxlan::write_header(
            &mut b[ETH_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN..],
            vni,
        );
        OuterTemplate {
            bytes: b,
            partial_sum,
            inner_src: inner_src.0,
            inner_dst: inner_dst.0,
        }
    }

    /// Writes the outer headers into `out[..50]` for an inner frame of `inner_len` bytes.
    #[inline]
    fn write(&self, out: &mut [u8], inner_len: usize, tos: u8, df: bool, ident: u16, sport: u16) {
        let Some(Ok(out)) = out.get_mut(..OVERHEAD).map(<&mut [u8; OVERHEAD]>::try_from) else {
            return;
        };
        *out = self.bytes;
        let ip_len = (inner_len + OVERHEAD - ETH_LEN) as u16;
        let flags: u16 = if df { 0x4000 } else { 0 };
        out[ETH_LEN + 1] = tos;
        out[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&ip_len.to_be_bytes());
        out[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&ident.to_be_bytes());
        out[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&flags.to_be_bytes());
        // At most 15 words of 16 bits: two end-around carries fold it.
        let sum = self.partial_sum
            + u32::from(tos)
            + u32::from(ip_len)
            + u32::from(ident)
            + u32::from(flags);
        let sum = (sum & 0xffff) + (sum >> 16);
        let c = !(((sum & 0xffff) + (sum >> 16)) as u16);
        out[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
        let u = ETH_LEN + ipv4::MIN_HEADER_LEN;
        out[u..u + 2].copy_from_slice(&sport.to_be_bytes());
        out[u + 4..u + 6].copy_from_slice(&(ip_len - ipv4::MIN_HEADER_LEN as u16).to_be_bytes());
    }
}

impl Pipeline {
    pub(super) fn encap(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
        remote: &RemoteNode,
        hop: Hop,
    ) -> Outcome {
        let inner_len = pkt.len();
        // The header was validated on ingress: read the few fields needed directly.
        let (hash, tos, df, ttl) = {
            let d = pkt.data();
            let Some(hdr) = d.get(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN) else {
                return Outcome::Drop(DropReason::Ipv4Truncated);
            };
            let hl = usize::from(hdr[0] & 0x0f) * 4;
            let payload = d.get(ETH_LEN + hl..).unwrap_or(&[]);
            (
                hash_fields(hdr, payload),
                hdr[1],
                hdr[6] & 0x40 != 0,
                hdr[8],
            )
        };
        if hop != Hop::Generated && ttl <= 1 {
            return self.icmp_error(
                snap,
                pkt,
                kind::TIME_EXCEEDED,
                0,
                0,
                DropReason::TtlExceeded,
            );
        }
        let outer_ip_len = inner_len + OVERHEAD - ETH_LEN;
        let mtu = usize::from(snap.node.uplink_mtu);
        if outer_ip_len > mtu {
            if df && hop != Hop::Generated {
                // The inner IP packet may be the MTU less all 50 bytes of overhead.
                let next_hop_mtu = mtu.saturating_sub(OVERHEAD) as u32;
                return self.icmp_error(
                    snap,
                    pkt,
                    kind::DEST_UNREACHABLE,
                    CODE_FRAG_NEEDED,
                    next_hop_mtu,
                    DropReason::TooBig,
                );
            }
            return Outcome::Drop(DropReason::TooBig);
        }
        if pkt.headroom() < OVERHEAD {
            return Outcome::Drop(DropReason::NoHeadroom);
        }
        let next_hop = match self.remote_mac(remote) {
            Ok(m) => m,
            Err(r) => return Outcome::Drop(r),
        };
        let ident = self.next_ident();
        let t = &remote.outer;
        {
            let data = pkt.data_mut();
            if hop != Hop::Generated {
                ipv4::decrement_ttl(&mut data[ETH_LEN..]);
            }
            data[0..6].copy_from_slice(&t.inner_dst);
            data[6..12].copy_from_slice(&t.inner_src);
        }
        pkt.push_front(OVERHEAD);
        t.write(pkt.data_mut(), inner_len, tos, df, ident, src_port(hash));
        if let (Some(m), Some(d)) = (next_hop, pkt.data_mut().get_mut(0..6)) {
            d.copy_from_slice(&m.0);
        }
        Outcome::Tx(PortId::UPLINK, Action::Encapsulated)
    }

    /// The outer destination MAC towards `remote` when the state does not give it (`None`:
    /// the template's own): the next hop the node's tables name for its address.
    #[inline]
    pub(super) fn remote_mac(
        &self,
        remote: &RemoteNode,
    ) -> Result<Option<crate::wire::MacAddr>, DropReason> {
        if remote.next_hop_mac.is_some() {
            return Ok(None);
        }
        let hops = self.hops.load();
        match hops.resolve(remote.ip) {
            Ok(m) => Ok(Some(m)),
            Err(crate::egress::Miss::NoRoute) => Err(DropReason::NoNextHop),
            Err(crate::egress::Miss::NoNeighbour(n)) => {
                hops.note_miss(n);
                Err(DropReason::NeighbourUnresolved)
            }
        }
    }

    /// An IPv4 frame from the uplink: decapsulate VXLAN addressed to this node, pass the rest
    /// to the kernel.
    pub(super) fn decap(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>) -> Outcome {
        let node = &snap.node;
        let (outer_len, inner_len) = {
            let Ok(ip) = Ipv4Packet::new_checked(&pkt.data()[ETH_LEN..]) else {
                return Outcome::Kernel;
            };
            if ip.dst() != node.ip || ip.protocol() != protocol::UDP || ip.frag_offset() != 0 {
                return Outcome::Kernel;
            }
            let l4 = ip.payload();
            if l4.len() < 4 || u16::from_be_bytes([l4[2], l4[3]]) != node.vxlan_port {
                return Outcome::Kernel;
            }
            // From here on it is VXLAN for this node: every refusal is a counted drop.
            if ip.more_frags() {
                return Outcome::Drop(DropReason::VxlanFragmented);
            }
            if !ip.verify_checksum() {
                return Outcome::Drop(DropReason::Ipv4BadChecksum);
            }
            let Ok(udp) = UdpPacket::new_checked(l4) else {
                return Outcome::Drop(DropReason::VxlanMalformed);
            };
            let Ok(vx) = VxlanPacket::new_checked(udp.payload()) else {
                return Outcome::Drop(DropReason::VxlanMalformed);
            };
            // As Linux's vxlan without extensions: only the I flag, reserved bits zero.
            let h = udp.payload();
            if vx.flags() != vxlan::FLAG_VNI || h[1..4] != [0, 0, 0] || h[7] != 0 {
                return Outcome::Drop(DropReason::VxlanMalformed);
            }
            if vx.vni() != node.vni {
                return Outcome::Drop(DropReason::VxlanBadVni);
            }
            let Some(sender) = snap.remote_by_vtep(ip.src()) else {
                return Outcome::Drop(DropReason::VxlanUnknownVtep);
            };
            let sender_cidr = sender.pod_cidr;
            let Ok(inner) = EthernetFrame::new_checked(vx.payload()) else {
                return Outcome::Drop(DropReason::VxlanMalformed);
            };
            if inner.ethertype() != ethertype::IPV4 {
                return Outcome::Drop(DropReason::VxlanInnerNotIpv4);
            }
            let inner_ip = match Ipv4Packet::new_checked(inner.payload()) {
                Ok(i) => i,
                Err(e) => return Outcome::Drop(e.into()),
            };
            if !inner_ip.verify_checksum() {
                return Outcome::Drop(DropReason::Ipv4BadChecksum);
            }
            // A node may only send from its own pod CIDR (pods, its VTEP address, its SNAT)
            // or its own underlay address (its kernel answering a pod: a host-network
            // endpoint on that node).
            if !sender_cidr.contains(inner_ip.src()) && inner_ip.src() != ip.src() {
                return Outcome::Drop(DropReason::SpoofedSource);
            }
            (
                ETH_LEN + ip.header_len() + udp::HEADER_LEN + vxlan::HEADER_LEN,
                ETH_LEN + usize::from(inner_ip.total_len()),
            )
        };
        pkt.pull_front(outer_len);
        pkt.set_len(inner_len);
        self.counters.action(Action::Decapsulated);
        if super::offload::complete_partial_checksum(&mut pkt.data_mut()[ETH_LEN..]) {
            self.counters.checksums_completed += 1;
        }
        if let Some(o) = self.nat_from_overlay(snap, pkt) {
            return o;
        }
        self.route(snap, pkt, Hop::FromOverlay)
    }
}
