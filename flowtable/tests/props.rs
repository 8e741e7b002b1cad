//! Property tests: no frame, however malformed, panics the pipeline; every frame gets exactly
//! one counted outcome; every IPv4 header the switch transmits has a valid checksum.

#![allow(missing_docs)]

use flowtable::wire::checksum;
use flowtable::{Packet, Pipeline, PortId, Snapshot, StateFile, Verdict};
use proptest::prelude::*;

const STATE: &str = include_str!("../../examples/node1.toml");

fn snap() -> &'static Snapshot {
    static SNAP: std::sync::OnceLock<Snapshot> = std::sync::OnceLock::new();
    SNAP.get_or_init(|| Snapshot::build(&StateFile::parse(STATE).unwrap(), 1).unwrap())
}

/// Valid seed frames, one per path, to mutate.
fn seeds() -> Vec<(u16, Vec<u8>)> {
    let a = [2, 0, 0x0a, 0xf4, 1, 2];
    let gw = [2, 0, 0x0a, 0xf4, 1, 1];
    let mut out = Vec::new();
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(a, gw)
        .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
        .udp(1, 2)
        .write(&mut f, b"local")
        .unwrap();
    out.push((1, f));
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(a, gw)
        .ipv4([10, 244, 1, 2], [10, 244, 2, 9], 64)
        .tcp(1, 2, 3, 4)
        .write(&mut f, b"remote")
        .unwrap();
    out.push((1, f));
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(a, gw)
        .ipv4([10, 244, 1, 2], [10, 244, 1, 1], 64)
        .icmpv4_echo_request(1, 2)
        .write(&mut f, b"ping")
        .unwrap();
    out.push((1, f));
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(a, gw)
        .ipv4([10, 244, 1, 2], [10, 244, 2, 9], 1)
        .udp(1, 2)
        .write(&mut f, b"ttl")
        .unwrap();
    out.push((1, f));
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&a);
    arp.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&a);
    arp.extend_from_slice(&[10, 244, 1, 2, 0, 0, 0, 0, 0, 0, 10, 244, 1, 1]);
    out.push((1, arp));
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0xff, 2], [2, 0, 0, 0, 0xff, 1])
        .ipv4([10, 244, 2, 9], [10, 244, 1, 3], 63)
        .udp(1, 2)
        .write(&mut inner, b"decap")
        .unwrap();
    let mut payload = vec![8, 0, 0, 0, 0, 0, 1, 0];
    payload.extend_from_slice(&inner);
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([2, 0, 0xc6, 0x12, 0, 2], [2, 0, 0xc6, 0x12, 0, 1])
        .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .udp(40000, 8472)
        .write(&mut f, &payload)
        .unwrap();
    out.push((0, f));
    out
}

/// Checks what a user would check on any transmitted frame: IPv4 headers (outer and, for
/// VXLAN, inner) carry valid checksums.
fn assert_transmitted_ok(frame: &[u8]) {
    if frame.len() < 34 || frame[12..14] != [8, 0] {
        return;
    }
    let hl = usize::from(frame[14] & 0xf) * 4;
    assert!(checksum::verify(&frame[14..14 + hl]), "outer IPv4 checksum");
    if frame[23] == 17
        && frame.len() >= 14 + hl + 8 + 8 + 34
        && frame[14 + hl + 2..14 + hl + 4] == 8472u16.to_be_bytes()
    {
        let inner = &frame[14 + hl + 16..];
        let ihl = usize::from(inner[14] & 0xf) * 4;
        assert!(
            checksum::verify(&inner[14..14 + ihl]),
            "inner IPv4 checksum"
        );
    }
}

fn run(port: u16, frame: &[u8], headroom: usize, tailroom: usize) -> (Verdict, Vec<u8>, Pipeline) {
    let s = snap();
    let mut buf = vec![0u8; headroom + frame.len() + tailroom];
    buf[headroom..headroom + frame.len()].copy_from_slice(frame);
    let mut pkt = Packet::new(&mut buf, headroom, frame.len(), PortId(port)).unwrap();
    let mut p = Pipeline::new();
    let v = p.process_one(s, &mut pkt);
    let out = pkt.data().to_vec();
    (v, out, p)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(port in 0u16..4, frame in proptest::collection::vec(any::<u8>(), 0..200), head in 0usize..300, tail in 0usize..700) {
        let (v, out, p) = run(port, &frame, head, tail);
        prop_assert_eq!(p.counters().received, 1);
        prop_assert_eq!(p.counters().decided(), 1);
        if matches!(v, Verdict::Transmit(_)) {
            assert_transmitted_ok(&out);
        }
    }

    #[test]
    fn mutated_frames_never_panic_and_are_counted(
        seed in 0usize..6,
        flips in proptest::collection::vec((0usize..200, any::<u8>()), 0..6),
        cut in proptest::option::of(0usize..200),
        extra in proptest::collection::vec(any::<u8>(), 0..40),
        head in prop_oneof![Just(256usize), 0usize..64],
        tail in prop_oneof![Just(2048usize), 0usize..64],
    ) {
        let (port, mut f) = seeds()[seed].clone();
        for (at, x) in flips {
            if let Some(b) = f.get_mut(at) {
                *b ^= x;
            }
        }
        if let Some(c) = cut {
            f.truncate(c);
        }
        f.extend_from_slice(&extra);
        let (v, out, p) = run(port, &f, head, tail);
        prop_assert_eq!(p.counters().decided(), 1);
        let counted_drop = p.counters().total_drops();
        prop_assert_eq!(counted_drop == 1, matches!(v, Verdict::Drop(_)));
        if matches!(v, Verdict::Transmit(_)) {
            assert_transmitted_ok(&out);
        }
    }

    #[test]
    fn valid_seeds_survive_any_ttl(seed in 0usize..6, ttl in any::<u8>()) {
        let (port, mut f) = seeds()[seed].clone();
        let at = if port == 0 { 14 + 50 + 8 } else { 14 + 8 };
        if f.len() > at + 2 && f[12..14] == [8, 0] {
            let ip = at - 8;
            let old = u16::from_be_bytes([f[at], f[at + 1]]);
            f[at] = ttl;
            let new = u16::from_be_bytes([f[at], f[at + 1]]);
            let c = u16::from_be_bytes([f[ip + 10], f[ip + 11]]);
            f[ip + 10..ip + 12].copy_from_slice(&checksum::update16(c, old, new).to_be_bytes());
        }
        let (v, out, p) = run(port, &f, 256, 2048);
        prop_assert_eq!(p.counters().decided(), 1);
        if matches!(v, Verdict::Transmit(_)) {
            assert_transmitted_ok(&out);
        }
    }

    #[test]
    fn encapsulated_headers_are_exact(len in 0usize..1422, tos in any::<u8>(), df in any::<bool>(), ident in any::<u16>(), sport in any::<u16>(), n in 1usize..5) {
        let mut f = Vec::new();
        let mut ip = etherparse::Ipv4Header::new(0, 64, etherparse::IpNumber::UDP, [10, 244, 1, 2], [10, 244, 2, 9]).unwrap();
        ip.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
        ip.ecn = etherparse::IpEcn::try_new(tos & 3).unwrap();
        ip.dont_fragment = df;
        ip.identification = ident;
        etherparse::PacketBuilder::ethernet2([2, 0, 0x0a, 0xf4, 1, 2], [2, 0, 0x0a, 0xf4, 1, 1])
            .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .udp(sport, 53)
            .write(&mut f, &vec![0xab; len])
            .unwrap();
        let s = snap();
        let mut p = Pipeline::new();
        // Several packets, so the outer identification advances.
        for _ in 0..n {
            let mut buf = vec![0u8; 256 + f.len()];
            buf[256..].copy_from_slice(&f);
            let mut pkt = Packet::new(&mut buf, 256, f.len(), PortId(1)).unwrap();
            prop_assert_eq!(p.process_one(s, &mut pkt), Verdict::Transmit(PortId::UPLINK));
            let out = pkt.data();
            prop_assert_eq!(out.len(), f.len() + 50);
            prop_assert!(checksum::verify(&out[14..34]));
            prop_assert_eq!(usize::from(u16::from_be_bytes([out[16], out[17]])), f.len() + 36);
            prop_assert_eq!(usize::from(u16::from_be_bytes([out[38], out[39]])), f.len() + 16);
            prop_assert_eq!(out[15], tos, "outer TOS/ECN inherited");
            prop_assert_eq!(out[20] & 0x40 != 0, df, "outer DF inherited");
            prop_assert!(checksum::verify(&out[64..84]));
        }
    }
}
