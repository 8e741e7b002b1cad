//! Checksum offload on the switch's behalf: completing partial TCP/UDP checksums.
//!
//! A Linux sender whose device offers checksum offload (every veth, and the vxlan device on top
//! of one) hands its frames on with `CHECKSUM_PARTIAL`: the TCP or UDP checksum field holds
//! only the folded pseudo-header sum and the "hardware" is to finish it. Frames the XDP program
//! redirects to the switch leave the kernel that way; the switch is that hardware, so before
//! anything else reads or rewrites a TCP/UDP header it completes such a checksum exactly as a
//! NIC would: the one's-complement sum from the L4 header to the end (the field included),
//! complemented. Applied to a frame whose checksum is already complete and happens to equal the
//! pseudo-header sum (1 in 65536), the same computation yields the same value, so this never
//! changes a correct checksum, and it never repairs a wrong one (a wrong complete checksum is
//! not a pseudo-header sum, except by that same 1-in-65536 chance).
//! Where the frame leaves by a port that finishes checksums itself (AF_XDP's transmit
//! metadata, `Pipeline::set_tx_checksum_offload`), a frame that goes from a pod to another pod
//! of this node with nothing rewritten but MACs, TTL and (reverse NAT of a Service reply) its
//! addresses keeps its partial checksum, re-derived for the new addresses ([`repartial`]), and
//! is marked ([`Packet::tx_checksum`](crate::packet::Packet::tx_checksum)) for the port: no one
//! on the node sums its payload (the receiving pod's kernel trusts a partial checksum as
//! Linux does on veth).
//! Pure functions over the frame; no state.

use crate::wire::checksum;
use crate::wire::ipv4::protocol;

/// Where the partial TCP or UDP checksum of the IPv4 packet `ip` (header first, trimmed to
/// its total length) is: the L4 header's offset in `ip` and the field's offset in that header;
/// `None` if its checksum is not partial (complete, absent, or not TCP/UDP).
#[inline]
pub(crate) fn partial_checksum_at(ip: &[u8]) -> Option<(usize, usize)> {
    if ip.len() < 20 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    // Fragments never carry a partial checksum (it is resolved before fragmenting).
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if ihl < 20 || ip.len() < ihl || frag != 0 {
        return None;
    }
    let proto = ip[9];
    let at = match proto {
        protocol::TCP => 16,
        protocol::UDP => 6,
        _ => return None,
    };
    let l4_len = ip.len() - ihl;
    if l4_len < at + 2 || l4_len > usize::from(u16::MAX) {
        return None;
    }
    let field = u16::from_be_bytes([ip[ihl + at], ip[ihl + at + 1]]);
    if proto == protocol::UDP && field == 0 {
        return None; // no checksum
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let pseudo = checksum::fold(checksum::pseudo_header_sum(src, dst, proto, l4_len as u16));
    (field == pseudo).then_some((ihl, at))
}

/// Rewrites the partial checksum at `ihl + at` of the IPv4 packet `ip` as the pseudo-header
/// sum of the addresses and length now in its header (after NAT, whose incremental update
/// is right only for a complete checksum). Nothing if `ip` is too short or no longer TCP/UDP.
#[inline]
pub(crate) fn repartial(ip: &mut [u8], ihl: usize, at: usize) {
    if ip.len() < ihl + at + 2 || !matches!(ip[9], protocol::TCP | protocol::UDP) {
        return;
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let l4_len = (ip.len() - ihl) as u16;
    let pseudo = checksum::fold(checksum::pseudo_header_sum(src, dst, ip[9], l4_len));
    ip[ihl + at..ihl + at + 2].copy_from_slice(&pseudo.to_be_bytes());
}

/// Completes a partial TCP or UDP checksum of the IPv4 packet `ip` (header first, trimmed to
/// its total length). Returns true if the checksum field was completed.
#[inline]
pub(crate) fn complete_partial_checksum(ip: &mut [u8]) -> bool {
    let Some((ihl, at)) = partial_checksum_at(ip) else {
        return false;
    };
    let mut c = !checksum::fold(checksum::sum(&ip[ihl..]));
    if ip[9] == protocol::UDP && c == 0 {
        c = 0xffff;
    }
    ip[ihl + at..ihl + at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/UDP or TCP packet with a correct checksum.
    fn packet(proto: u8, payload: &[u8]) -> Vec<u8> {
        let l4_hdr = if proto == protocol::TCP { 20 } else { 8 };
        let total = 20 + l4_hdr + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 244, 2, 3]);
        p[20..22].copy_from_slice(&40000u16.to_be_bytes());
        p[22..24].copy_from_slice(&8080u16.to_be_bytes());
        if proto == protocol::TCP {
            p[32] = 0x50;
            p[33] = 0x18;
        } else {
            p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        }
        p[20 + l4_hdr..].copy_from_slice(payload);
        let at = if proto == protocol::TCP { 36 } else { 26 };
        let ps = checksum::pseudo_header_sum(
            [10, 244, 1, 2],
            [10, 244, 2, 3],
            proto,
            (total - 20) as u16,
        );
        let c = !checksum::fold(ps + checksum::sum(&p[20..]));
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        p
    }

    /// What Linux puts in the field under CHECKSUM_PARTIAL.
    fn partial(mut p: Vec<u8>, at: usize) -> Vec<u8> {
        let ps = checksum::pseudo_header_sum(
            [10, 244, 1, 2],
            [10, 244, 2, 3],
            p[9],
            (p.len() - 20) as u16,
        );
        p[at..at + 2].copy_from_slice(&checksum::fold(ps).to_be_bytes());
        p
    }

    #[test]
    fn completes_tcp_and_udp_partial_checksums_to_the_full_ones() {
        for (proto, at) in [(protocol::TCP, 36), (protocol::UDP, 26)] {
            let full = packet(proto, b"hello, partial checksum");
            let mut p = partial(full.clone(), at);
            assert_ne!(p, full);
            assert!(complete_partial_checksum(&mut p));
            assert_eq!(p, full, "protocol {proto}");
        }
    }

    #[test]
    fn leaves_complete_wrong_and_absent_checksums_alone() {
        let full = packet(protocol::TCP, b"abc");
        let mut p = full.clone();
        assert!(!complete_partial_checksum(&mut p));
        assert_eq!(p, full);
        let mut bad = full.clone();
        bad[36] ^= 0x55;
        let before = bad.clone();
        complete_partial_checksum(&mut bad);
        assert_eq!(bad, before, "a wrong checksum is not repaired");
        let mut udp = packet(protocol::UDP, b"x");
        udp[26..28].copy_from_slice(&[0, 0]);
        let before = udp.clone();
        assert!(!complete_partial_checksum(&mut udp));
        assert_eq!(udp, before, "UDP without a checksum stays without");
    }

    #[test]
    fn ignores_fragments_icmp_and_short_input() {
        let mut p = partial(packet(protocol::UDP, b"frag"), 26);
        p[6] = 0x20; // more fragments
        assert!(!complete_partial_checksum(&mut p));
        let mut icmp = packet(protocol::UDP, b"x");
        icmp[9] = 1;
        assert!(!complete_partial_checksum(&mut icmp));
        for n in 0..30 {
            let mut short = packet(protocol::TCP, b"")[..n.min(40)].to_vec();
            complete_partial_checksum(&mut short);
        }
    }
}
