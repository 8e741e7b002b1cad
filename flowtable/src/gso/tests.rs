//! Segmentation checked field by field: frames built and the segments decoded with
//! etherparse, every checksum verified, the payload reassembled.

use super::*;
use crate::wire::tcp::flags::{ACK, CWR, FIN, PSH};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use proptest::prelude::*;

const SRC: [u8; 4] = [10, 244, 1, 2];
const DST: [u8; 4] = [10, 244, 1, 3];

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A TCP frame (timestamps option) as a GSO sender hands it on: total length over the MTU.
fn tcp_frame(data: &[u8], flags: u8, id: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(SRC, DST, 64)
        .tcp(40000, 5201, 0xffff_f000, 64240)
        .options(&[etherparse::TcpOptionElement::Timestamp(1, 2)])
        .expect("options")
        .ack(7);
    let mut f = Vec::new();
    b.write(&mut f, data).expect("build");
    f[14 + 4..14 + 6].copy_from_slice(&id.to_be_bytes());
    f[14 + 20 + 13] = flags;
    // Both checksums again, over the edited fields.
    f[24..26].fill(0);
    let c = checksum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    f[50..52].fill(0);
    let pseudo = checksum::pseudo_header_sum(SRC, DST, 6, (f.len() - 34) as u16);
    let c = !checksum::fold(pseudo + checksum::sum(&f[34..]));
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

fn udp_frame(data: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(SRC, DST, 64)
        .udp(40000, 5353);
    let mut f = Vec::new();
    b.write(&mut f, data).expect("build");
    f
}

/// Every segment, written into a buffer of exactly its length.
fn segments(frame: &[u8], req: GsoRequest) -> Vec<Vec<u8>> {
    let s = Segments::new(frame, req).expect("segmentable");
    (0..s.count())
        .map(|i| {
            let mut out = vec![0u8; s.len(i)];
            assert_eq!(s.write(i, &mut out), out.len());
            out
        })
        .collect()
}

/// IPv4 header and L4 checksums of a segment are right (one's-complement sums to 0xffff).
fn checksums_ok(seg: &[u8]) -> bool {
    let ihl = usize::from(seg[14] & 0x0f) * 4;
    let ip = &seg[14..];
    let l4_len = (ip.len() - ihl) as u16;
    let pseudo = checksum::pseudo_header_sum(SRC, DST, ip[9], l4_len);
    checksum::verify(&ip[..ihl]) && checksum::fold(pseudo + checksum::sum(&ip[ihl..])) == 0xffff
}

#[test]
fn tcp_segments_are_what_the_kernel_would_send() {
    let data = payload(65_000);
    let frame = tcp_frame(&data, ACK | PSH | FIN | CWR, 0xfffe);
    let req = GsoRequest {
        kind: GsoKind::Tcp,
        size: 1448,
    };
    let segs = segments(&frame, req);
    assert_eq!(segs.len(), 65_000usize.div_ceil(1448));
    let mut joined = Vec::new();
    for (i, seg) in segs.iter().enumerate() {
        let p = SlicedPacket::from_ethernet(seg).expect("parse");
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not IPv4")
        };
        let h = ip.header();
        assert_eq!(usize::from(h.total_len()), seg.len() - 14, "segment {i}");
        assert_eq!(h.identification(), 0xfffeu16.wrapping_add(i as u16));
        assert_eq!(h.ttl(), 64);
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("not TCP")
        };
        assert_eq!(
            t.sequence_number(),
            0xffff_f000u32.wrapping_add(1448 * i as u32)
        );
        assert_eq!(t.acknowledgment_number(), 7);
        assert_eq!(t.options(), &frame[54..66], "options repeated");
        let last = i + 1 == segs.len();
        assert_eq!((t.fin(), t.psh()), (last, last), "segment {i}");
        assert_eq!(t.cwr(), i == 0, "segment {i}");
        assert!(t.ack());
        assert!(checksums_ok(seg), "segment {i}");
        assert!(seg.len() - 66 <= 1448);
        joined.extend_from_slice(t.payload());
    }
    assert_eq!(joined, data);
}

#[test]
fn udp_segments_are_datagrams_of_their_own() {
    let data = payload(4000);
    let frame = udp_frame(&data);
    let req = GsoRequest::from_vnet(5, 1400).expect("kind").expect("gso");
    let segs = segments(&frame, req);
    assert_eq!(segs.len(), 3);
    let mut joined = Vec::new();
    for seg in &segs {
        let p = SlicedPacket::from_ethernet(seg).expect("parse");
        let Some(TransportSlice::Udp(u)) = p.transport else {
            panic!("not UDP")
        };
        assert_eq!(usize::from(u.length()), seg.len() - 34);
        assert_ne!(u.checksum(), 0);
        assert!(checksums_ok(seg));
        joined.extend_from_slice(u.payload());
    }
    assert_eq!(joined, data);
    assert_eq!(segs[2].len(), 42 + 1200);
}

#[test]
fn a_partial_checksum_comes_out_complete() {
    // Under CHECKSUM_PARTIAL the field holds the pseudo-header sum only.
    let data = payload(3000);
    let mut frame = tcp_frame(&data, ACK, 1);
    let l4_len = (frame.len() - 34) as u16;
    let partial = checksum::fold(checksum::pseudo_header_sum(SRC, DST, 6, l4_len));
    frame[50..52].copy_from_slice(&partial.to_be_bytes());
    let req = GsoRequest {
        kind: GsoKind::Tcp,
        size: 1448,
    };
    assert!(segments(&frame, req).iter().all(|s| checksums_ok(s)));
}

#[test]
fn a_packet_within_one_segment_is_one_segment() {
    let frame = tcp_frame(&payload(100), ACK | FIN, 9);
    let req = GsoRequest {
        kind: GsoKind::Tcp,
        size: 1448,
    };
    let segs = segments(&frame, req);
    assert_eq!(segs.len(), 1);
    assert_eq!(segs[0].len(), frame.len());
    assert_eq!(segs[0][47] & FIN, FIN);
    let empty = tcp_frame(&[], ACK, 9);
    assert_eq!(segments(&empty, req), vec![empty.clone()]);
}

#[test]
fn what_is_not_segmented_is_refused() {
    let tcp = GsoRequest {
        kind: GsoKind::Tcp,
        size: 1448,
    };
    let udp = GsoRequest {
        kind: GsoKind::Udp,
        size: 1448,
    };
    let frame = tcp_frame(&payload(5000), ACK, 1);
    assert_eq!(
        Segments::new(&frame, udp).err(),
        Some(GsoError::NotSegmentable)
    );
    let mut frag = frame.clone();
    frag[14 + 6] = 0x20; // more fragments
    assert_eq!(
        Segments::new(&frag, tcp).err(),
        Some(GsoError::NotSegmentable)
    );
    let mut v6 = frame.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(
        Segments::new(&v6, tcp).err(),
        Some(GsoError::NotSegmentable)
    );
    let mut long = frame.clone();
    long[16..18].copy_from_slice(&6000u16.to_be_bytes()); // total length past the frame
    assert_eq!(
        Segments::new(&long, tcp).err(),
        Some(GsoError::NotSegmentable)
    );
    assert_eq!(
        Segments::new(&frame[..40], tcp).err(),
        Some(GsoError::NotSegmentable)
    );
    let zero = GsoRequest { size: 0, ..tcp };
    assert_eq!(Segments::new(&frame, zero).err(), Some(GsoError::ZeroSize));
    let big = tcp_frame(&payload(60_000), ACK, 1);
    let tiny = GsoRequest { size: 1, ..tcp };
    assert_eq!(
        Segments::new(&big, tiny).err(),
        Some(GsoError::TooManySegments),
        "60,000 one-byte segments"
    );
    let smallest = GsoRequest { size: 48, ..tcp };
    assert!(Segments::new(&big, smallest).is_ok(), "TCP's smallest MSS");
    assert_eq!(GsoRequest::from_vnet(0, 1448), Ok(None));
    assert_eq!(GsoRequest::from_vnet(0x81, 1448), Ok(Some(tcp)));
    for legacy_or_v6 in [3, 4, 0x84] {
        assert_eq!(
            GsoRequest::from_vnet(legacy_or_v6, 1448),
            Err(GsoError::UnsupportedKind)
        );
    }
}

proptest! {
    #[test]
    fn segments_reassemble_with_valid_checksums(
        len in 0usize..9000,
        size in 8u16..3000,
        flags in any::<u8>(),
        id in any::<u16>(),
        udp in any::<bool>(),
    ) {
        let data = payload(len);
        let (frame, kind) = if udp {
            (udp_frame(&data), GsoKind::Udp)
        } else {
            (tcp_frame(&data, flags, id), GsoKind::Tcp)
        };
        let segs = segments(&frame, GsoRequest { kind, size });
        let hdr = if udp { 42 } else { 66 };
        let mut joined = Vec::new();
        for seg in &segs {
            prop_assert!(checksums_ok(seg));
            prop_assert!(seg.len() - hdr <= usize::from(size));
            joined.extend_from_slice(&seg[hdr..]);
        }
        prop_assert_eq!(joined, data);
    }

    #[test]
    fn any_bytes_are_refused_or_segmented_without_panic(
        frame in proptest::collection::vec(any::<u8>(), 0..200),
        size in 0u16..100,
        udp in any::<bool>(),
    ) {
        let kind = if udp { GsoKind::Udp } else { GsoKind::Tcp };
        if let Ok(s) = Segments::new(&frame, GsoRequest { kind, size }) {
            let mut out = vec![0u8; s.max_len()];
            for i in 0..s.count() {
                prop_assert!(s.len(i) <= out.len());
                s.write(i, &mut out);
            }
        }
    }
}
