//! Pipeline tests over in-memory frames: one per verdict, frames built and decoded with
//! etherparse (an implementation independent of `wire`), checksums verified from scratch.

use super::*;
use crate::state::StateFile;
use crate::wire::{checksum, MacAddr};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;

const STATE: &str = include_str!("../../../examples/node1.toml");
const POD_A: [u8; 4] = [10, 244, 1, 2];
const POD_B: [u8; 4] = [10, 244, 1, 3];
const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 3];
const GW_MAC: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 1];
const GW: [u8; 4] = [10, 244, 1, 1];
const REMOTE_POD: [u8; 4] = [10, 244, 2, 7];
const NODE1: [u8; 4] = [198, 18, 0, 1];
const NODE2: [u8; 4] = [198, 18, 0, 2];
const NODE1_UPLINK_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 1];
const NODE2_UPLINK_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 2];
const VTEP1: [u8; 6] = [2, 0, 0, 0, 0xff, 1];
const VTEP2: [u8; 6] = [2, 0, 0, 0, 0xff, 2];
const PORT_A: PortId = PortId(1);
const PORT_B: PortId = PortId(2);

fn snap() -> Snapshot {
    Snapshot::build(&StateFile::parse(STATE).unwrap(), 1).unwrap()
}

fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .udp(5000, 6000);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

fn icmp_echo(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(src_mac, GW_MAC)
        .ipv4(src, dst, ttl)
        .icmpv4_echo_request(0x42, 7);
    let mut v = Vec::new();
    b.write(&mut v, b"abcdefgh").unwrap();
    v
}

/// Runs one frame through a fresh pipeline; returns the verdict, the output frame and the counters.
fn run(s: &Snapshot, frame: &[u8], port: PortId) -> (Verdict, Vec<u8>, Counters) {
    let mut buf = vec![0u8; 2048];
    let head = crate::packet::DEFAULT_HEADROOM;
    buf[head..head + frame.len()].copy_from_slice(frame);
    let mut pkt = Packet::new(&mut buf, head, frame.len(), port).unwrap();
    let mut p = Pipeline::new();
    let v = p.process_one(s, &mut pkt);
    let out = pkt.data().to_vec();
    assert_eq!(
        p.counters().received,
        p.counters().decided(),
        "every frame is accounted for"
    );
    (v, out, p.counters().clone())
}

fn ip_checksum_ok(ip: &etherparse::Ipv4HeaderSlice<'_>) -> bool {
    checksum::verify(ip.slice())
}

#[test]
fn local_delivery_rewrites_macs_and_ttl_only() {
    let s = snap();
    let f = udp_frame(MAC_A, GW_MAC, POD_A, POD_B, 64, b"hello");
    let (v, out, c) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Transmit(PORT_B));
    assert_eq!(c.actions(Action::DeliveredLocal), 1);
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let eth = etherparse::Ethernet2Header::from_slice(&out).unwrap().0;
    assert_eq!(eth.destination, MAC_B);
    assert_eq!(eth.source, GW_MAC);
    let ip = match p.net.unwrap() {
        etherparse::NetSlice::Ipv4(i) => i,
        _ => panic!("not ipv4"),
    };
    assert_eq!(ip.header().ttl(), 63);
    assert_eq!(
        ip.header().source(),
        POD_A,
        "no NAT: the receiver sees the sender's pod IP"
    );
    assert_eq!(ip.header().destination(), POD_B);
    assert!(ip_checksum_ok(&ip.header()));
    // Everything from the IP header's 10th byte on is untouched but the checksum/TTL.
    assert_eq!(out[14 + 20..], f[14 + 20..]);
    match p.transport.unwrap() {
        TransportSlice::Udp(u) => assert_eq!(u.payload(), b"hello"),
        _ => panic!("not udp"),
    }
}

#[test]
fn ethernet_padding_is_stripped() {
    let s = snap();
    let mut f = udp_frame(MAC_A, GW_MAC, POD_A, POD_B, 64, b"");
    f.resize(60, 0);
    let (v, out, _) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Transmit(PORT_B));
    assert_eq!(out.len(), 14 + 28);
}

#[test]
fn bad_ip_checksum_dropped_and_l4_not_repaired() {
    let s = snap();
    let mut f = udp_frame(MAC_A, GW_MAC, POD_A, POD_B, 64, b"x");
    f[24] ^= 0xff;
    let (v, _, c) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Drop(DropReason::Ipv4BadChecksum));
    assert_eq!(c.drops(DropReason::Ipv4BadChecksum), 1);
    // A wrong UDP checksum is forwarded as it is.
    let mut f = udp_frame(MAC_A, GW_MAC, POD_A, POD_B, 64, b"x");
    f[14 + 20 + 6] ^= 0x01;
    let (v, out, _) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Transmit(PORT_B));
    assert_eq!(out[40..42], f[40..42]);
}

#[test]
fn encapsulation_towards_remote_node() {
    let s = snap();
    let f = udp_frame(MAC_A, GW_MAC, POD_A, REMOTE_POD, 64, b"across");
    let (v, out, c) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(c.actions(Action::Encapsulated), 1);
    assert_eq!(out.len(), f.len() + 50);
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let eth = etherparse::Ethernet2Header::from_slice(&out).unwrap().0;
    assert_eq!(
        (eth.source, eth.destination),
        (NODE1_UPLINK_MAC, NODE2_UPLINK_MAC)
    );
    let ip = match p.net.unwrap() {
        etherparse::NetSlice::Ipv4(i) => i,
        _ => panic!(),
    };
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (NODE1, NODE2)
    );
    assert_eq!(ip.header().ttl(), 64);
    assert!(ip_checksum_ok(&ip.header()));
    assert_eq!(usize::from(ip.header().total_len()), out.len() - 14);
    let udp = match p.transport.unwrap() {
        TransportSlice::Udp(u) => u,
        _ => panic!(),
    };
    assert_eq!(udp.destination_port(), 8472);
    assert!((32768..61000).contains(&udp.source_port()));
    assert_eq!(udp.checksum(), 0);
    let vx = udp.payload();
    assert_eq!(&vx[..8], &[0x08, 0, 0, 0, 0, 0, 1, 0], "I flag, VNI 1");
    let inner = SlicedPacket::from_ethernet(&vx[8..]).unwrap();
    let ieth = etherparse::Ethernet2Header::from_slice(&vx[8..]).unwrap().0;
    assert_eq!((ieth.source, ieth.destination), (VTEP1, VTEP2));
    let iip = match inner.net.unwrap() {
        etherparse::NetSlice::Ipv4(i) => i,
        _ => panic!(),
    };
    assert_eq!(iip.header().ttl(), 63);
    assert_eq!(
        (iip.header().source(), iip.header().destination()),
        (POD_A, REMOTE_POD)
    );
    assert!(ip_checksum_ok(&iip.header()));
}

#[test]
fn outer_source_port_follows_the_flow() {
    let s = snap();
    let port_of = |src_port: u16| {
        let b = PacketBuilder::ethernet2(MAC_A, GW_MAC)
            .ipv4(POD_A, REMOTE_POD, 64)
            .udp(src_port, 53);
        let mut f = Vec::new();
        b.write(&mut f, b"q").unwrap();
        let (_, out, _) = run(&s, &f, PORT_A);
        u16::from_be_bytes([out[34], out[35]])
    };
    assert_eq!(port_of(1000), port_of(1000), "same flow, same port");
    let distinct: std::collections::HashSet<u16> = (1000..1064).map(port_of).collect();
    assert!(
        distinct.len() > 48,
        "flows spread over source ports: {}",
        distinct.len()
    );
}

fn vxlan_from_node2(inner: &[u8], vni: u32, src: [u8; 4]) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    let b = PacketBuilder::ethernet2(NODE2_UPLINK_MAC, NODE1_UPLINK_MAC)
        .ipv4(src, NODE1, 64)
        .udp(40000, 8472);
    let mut v = Vec::new();
    b.write(&mut v, &payload).unwrap();
    v
}

#[test]
fn decapsulation_delivers_to_local_pod() {
    let s = snap();
    let inner = udp_frame(VTEP2, VTEP1, REMOTE_POD, POD_B, 63, b"from node2");
    let f = vxlan_from_node2(&inner, 1, NODE2);
    let (v, out, c) = run(&s, &f, PortId::UPLINK);
    assert_eq!(v, Verdict::Transmit(PORT_B));
    assert_eq!(c.actions(Action::Decapsulated), 1);
    assert_eq!(c.actions(Action::DeliveredLocal), 1);
    assert_eq!(out.len(), inner.len());
    assert_eq!(&out[..6], &MAC_B);
    assert_eq!(&out[6..12], &GW_MAC);
    assert_eq!(out[14 + 8], 62);
    assert_eq!(out[14 + 20..], inner[14 + 20..]);
    assert!(checksum::verify(&out[14..34]));
}

#[test]
fn decapsulation_refusals_are_named() {
    let s = snap();
    let inner = udp_frame(VTEP2, VTEP1, REMOTE_POD, POD_B, 63, b"x");
    let cases: Vec<(Vec<u8>, DropReason)> = vec![
        (vxlan_from_node2(&inner, 2, NODE2), DropReason::VxlanBadVni),
        (
            vxlan_from_node2(&inner, 1, [198, 18, 0, 9]),
            DropReason::VxlanUnknownVtep,
        ),
        (
            vxlan_from_node2(
                &udp_frame(VTEP2, VTEP1, REMOTE_POD, [10, 244, 1, 99], 63, b"x"),
                1,
                NODE2,
            ),
            DropReason::NoSuchPod,
        ),
        (
            vxlan_from_node2(
                &udp_frame(VTEP2, VTEP1, REMOTE_POD, [10, 244, 3, 1], 63, b"x"),
                1,
                NODE2,
            ),
            DropReason::NotForThisNode,
        ),
        (
            vxlan_from_node2(&udp_frame(VTEP2, VTEP1, POD_A, POD_B, 63, b"x"), 1, NODE2),
            DropReason::SpoofedSource,
        ),
        (
            vxlan_from_node2(&inner[..20], 1, NODE2),
            DropReason::Ipv4Truncated,
        ),
        (
            vxlan_from_node2(&inner[..10], 1, NODE2),
            DropReason::VxlanMalformed,
        ),
    ];
    for (f, want) in cases {
        let (v, _, c) = run(&s, &f, PortId::UPLINK);
        assert_eq!(v, Verdict::Drop(want));
        assert_eq!(c.drops(want), 1);
    }
    let mut arp_inner = inner.clone();
    arp_inner[12..14].copy_from_slice(&[0x08, 0x06]);
    let (v, _, _) = run(&s, &vxlan_from_node2(&arp_inner, 1, NODE2), PortId::UPLINK);
    assert_eq!(v, Verdict::Drop(DropReason::VxlanInnerNotIpv4));
    let mut no_i = vxlan_from_node2(&inner, 1, NODE2);
    no_i[42] = 0;
    let (v, _, _) = run(&s, &no_i, PortId::UPLINK);
    assert_eq!(v, Verdict::Drop(DropReason::VxlanMalformed));
}

#[test]
fn node_traffic_goes_to_kernel() {
    let s = snap();
    // Non-VXLAN UDP to the node, ARP on the uplink, and pod -> node IP.
    let b = PacketBuilder::ethernet2(NODE2_UPLINK_MAC, NODE1_UPLINK_MAC)
        .ipv4(NODE2, NODE1, 64)
        .udp(1, 53);
    let mut f = Vec::new();
    b.write(&mut f, b"dns").unwrap();
    assert_eq!(run(&s, &f, PortId::UPLINK).0, Verdict::Kernel);
    let mut arp = f.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert_eq!(run(&s, &arp, PortId::UPLINK).0, Verdict::Kernel);
    let f = udp_frame(MAC_A, GW_MAC, POD_A, NODE1, 64, b"kubelet");
    let (v, out, c) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Kernel);
    assert_eq!(c.actions(Action::ToKernel), 1);
    assert_eq!(out, f, "kernel-bound frames are not rewritten");
}

fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f
}

#[test]
fn arp_for_gateway_is_answered() {
    let s = snap();
    let (v, out, c) = run(&s, &arp_request(MAC_A, POD_A, GW), PORT_A);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(c.actions(Action::ArpReplied), 1);
    let a = etherparse::ArpPacketSlice::from_slice(&out[14..]).unwrap();
    assert_eq!(a.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(a.sender_hw_addr(), GW_MAC);
    assert_eq!(a.sender_protocol_addr(), GW);
    assert_eq!(a.target_hw_addr(), MAC_A);
    assert_eq!(a.target_protocol_addr(), POD_A);
    assert_eq!(&out[..12], &[MAC_A, GW_MAC].concat()[..]);
    // Proxy ARP: another pod's address is answered with the gateway MAC too.
    let (v, out, _) = run(&s, &arp_request(MAC_A, POD_A, POD_B), PORT_A);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(&out[22..28], &GW_MAC);
}

#[test]
fn arp_that_needs_no_answer_or_lies_is_dropped() {
    let s = snap();
    let cases = [
        (arp_request(MAC_A, [0; 4], POD_A), DropReason::ArpIgnored),
        (arp_request(MAC_A, POD_A, POD_A), DropReason::ArpIgnored),
        (arp_request(MAC_A, POD_B, GW), DropReason::SpoofedSource),
        (arp_request(MAC_B, POD_A, GW), DropReason::SpoofedSource),
        (
            arp_request(MAC_A, POD_A, GW)[..40].to_vec(),
            DropReason::ArpMalformed,
        ),
    ];
    for (f, want) in cases {
        assert_eq!(run(&s, &f, PORT_A).0, Verdict::Drop(want));
    }
    let mut reply = arp_request(MAC_A, POD_A, GW);
    reply[21] = 2;
    assert_eq!(
        run(&s, &reply, PORT_A).0,
        Verdict::Drop(DropReason::ArpIgnored)
    );
}

#[test]
fn echo_to_gateway_is_answered() {
    let s = snap();
    let f = icmp_echo(MAC_A, POD_A, GW, 64);
    let (v, out, c) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(c.actions(Action::EchoReplied), 1);
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let eth = etherparse::Ethernet2Header::from_slice(&out).unwrap().0;
    assert_eq!((eth.source, eth.destination), (GW_MAC, MAC_A));
    let ip = match p.net.unwrap() {
        etherparse::NetSlice::Ipv4(i) => i,
        _ => panic!(),
    };
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (GW, POD_A)
    );
    assert!(ip_checksum_ok(&ip.header()));
    let icmp = match p.transport.unwrap() {
        TransportSlice::Icmpv4(i) => i,
        _ => panic!(),
    };
    assert_eq!(icmp.type_u8(), 0);
    assert!(checksum::verify(icmp.slice()));
    assert_eq!(icmp.payload(), b"abcdefgh");
    assert_eq!(&icmp.slice()[4..8], &[0, 0x42, 0, 7]);
}

#[test]
fn echo_from_remote_pod_is_answered_over_vxlan() {
    let s = snap();
    let mut inner = icmp_echo(VTEP2, REMOTE_POD, GW, 63);
    inner[..6].copy_from_slice(&VTEP1);
    let (v, out, c) = run(&s, &vxlan_from_node2(&inner, 1, NODE2), PortId::UPLINK);
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(c.actions(Action::EchoReplied), 1);
    assert_eq!(&out[30..34], &NODE2, "re-encapsulated to node2");
    assert_eq!(&out[50 + 26..50 + 34], &[GW, REMOTE_POD].concat()[..]);
}

#[test]
fn ttl_expiry_sends_time_exceeded() {
    let s = snap();
    for (dst, name) in [(POD_B, "local"), (REMOTE_POD, "remote")] {
        let f = udp_frame(MAC_A, GW_MAC, POD_A, dst, 1, b"traceroute");
        let (v, out, c) = run(&s, &f, PORT_A);
        assert_eq!(v, Verdict::Transmit(PORT_A), "{name}");
        assert_eq!(c.actions(Action::IcmpErrorSent), 1);
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let ip = match p.net.unwrap() {
            etherparse::NetSlice::Ipv4(i) => i,
            _ => panic!(),
        };
        assert_eq!(
            (ip.header().source(), ip.header().destination()),
            (GW, POD_A)
        );
        assert!(ip_checksum_ok(&ip.header()));
        let icmp = match p.transport.unwrap() {
            TransportSlice::Icmpv4(i) => i,
            _ => panic!(),
        };
        assert_eq!((icmp.type_u8(), icmp.code_u8()), (11, 0));
        assert!(checksum::verify(icmp.slice()));
        // The quote is the original datagram as the sender sent it.
        assert_eq!(icmp.payload(), &f[14..]);
    }
}

#[test]
fn no_error_about_an_error() {
    let s = snap();
    let b = PacketBuilder::ethernet2(MAC_A, GW_MAC)
        .ipv4(POD_A, POD_B, 1)
        .icmpv4(etherparse::Icmpv4Type::TimeExceeded(
            etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
        ));
    let mut f = Vec::new();
    b.write(&mut f, &[0u8; 28]).unwrap();
    assert_eq!(
        run(&s, &f, PORT_A).0,
        Verdict::Drop(DropReason::TtlExceeded)
    );
}

#[test]
fn too_big_with_df_gets_frag_needed() {
    let s = snap();
    // 1460 bytes of IP: fits the pod MTU of 1500 but not 1500 - 50 after encapsulation.
    let mut f = udp_frame(MAC_A, GW_MAC, POD_A, REMOTE_POD, 64, &[7u8; 1432]);
    assert_eq!(f.len(), 14 + 1460);
    let (v, out, _) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!((out[34], out[35]), (3, 4));
    assert_eq!(u16::from_be_bytes([out[40], out[41]]), 1450, "next-hop MTU");
    assert!(checksum::verify(&out[34..]));
    assert_eq!(out.len(), 14 + 576, "quote limited to a 576-byte datagram");
    // Without DF: dropped and counted, never sent oversize.
    f[14 + 6] &= !0x40;
    let sum = !checksum::checksum(&{
        let mut h = f[14..34].to_vec();
        h[10] = 0;
        h[11] = 0;
        h
    });
    f[24..26].copy_from_slice(&(!sum).to_be_bytes());
    assert_eq!(run(&s, &f, PORT_A).0, Verdict::Drop(DropReason::TooBig));
    // A full 1450-byte packet goes through.
    let f = udp_frame(MAC_A, GW_MAC, POD_A, REMOTE_POD, 64, &[7u8; 1422]);
    assert_eq!(run(&s, &f, PORT_A).0, Verdict::Transmit(PortId::UPLINK));
}

#[test]
fn anti_spoofing() {
    let s = snap();
    let wrong_ip = udp_frame(MAC_A, GW_MAC, POD_B, POD_B, 64, b"x");
    assert_eq!(
        run(&s, &wrong_ip, PORT_A).0,
        Verdict::Drop(DropReason::SpoofedSource)
    );
    let wrong_mac = udp_frame(MAC_B, GW_MAC, POD_A, POD_B, 64, b"x");
    assert_eq!(
        run(&s, &wrong_mac, PORT_A).0,
        Verdict::Drop(DropReason::SpoofedSource)
    );
}

#[test]
fn malformed_frames_have_their_own_reasons() {
    let s = snap();
    let good = udp_frame(MAC_A, GW_MAC, POD_A, POD_B, 64, b"payload!");
    let fix = |mut f: Vec<u8>| {
        f[24] = 0;
        f[25] = 0;
        let c = checksum::checksum(&f[14..14 + usize::from(f[14] & 0xf) * 4]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f
    };
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    let mut ihl_past = good.clone();
    ihl_past[14] = 0x4f;
    let mut v6 = good.clone();
    v6[14] = 0x65;
    let mut tl_big = good.clone();
    tl_big[17] = 200;
    let mut tl_small = good.clone();
    tl_small[17] = 10;
    let mut vlan = good.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    let mut ipv6 = good.clone();
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut other = good.clone();
    other[12..14].copy_from_slice(&[0x88, 0xcc]);
    let cases = [
        (good[..13].to_vec(), DropReason::EthernetTruncated),
        (good[..30].to_vec(), DropReason::Ipv4Truncated),
        (ihl4, DropReason::Ipv4BadHeaderLen),
        (ihl_past, DropReason::Ipv4Truncated),
        (v6, DropReason::Ipv4BadVersion),
        (fix(tl_big), DropReason::Ipv4BadTotalLen),
        (fix(tl_small), DropReason::Ipv4BadTotalLen),
        (vlan, DropReason::VlanTagged),
        (ipv6, DropReason::Ipv6Unsupported),
        (other, DropReason::UnsupportedEthertype),
        (
            udp_frame(MAC_A, GW_MAC, POD_A, [10, 244, 1, 200], 64, b"x"),
            DropReason::NoSuchPod,
        ),
        (
            udp_frame(MAC_A, GW_MAC, POD_A, [8, 8, 8, 8], 64, b"x"),
            DropReason::NoNextHop,
        ),
        (
            udp_frame(MAC_A, GW_MAC, POD_A, [10, 96, 0, 99], 64, b"x"),
            DropReason::NoRoute,
        ),
        (
            udp_frame(MAC_A, GW_MAC, POD_A, GW, 64, b"x"),
            DropReason::GatewayUnsupported,
        ),
    ];
    for (f, want) in cases {
        let (v, _, c) = run(&s, &f, PORT_A);
        assert_eq!(v, Verdict::Drop(want), "{want}");
        assert_eq!(c.drops(want), 1);
    }
    assert_eq!(
        run(&s, &good, PortId(9)).0,
        Verdict::Drop(DropReason::UnknownPort)
    );
}

#[test]
fn options_and_fragments_are_forwarded_as_they_are() {
    let s = snap();
    // IHL 6 with a NOP/EOL option word, and the MF flag set.
    let mut f = udp_frame(MAC_A, GW_MAC, POD_A, POD_B, 64, b"frag");
    f.splice(34..34, [1u8, 1, 1, 0]);
    f[14] = 0x46;
    let tl = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tl.to_be_bytes());
    f[20] |= 0x20;
    f[24] = 0;
    f[25] = 0;
    let c = checksum::checksum(&f[14..38]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    let (v, out, _) = run(&s, &f, PORT_A);
    assert_eq!(v, Verdict::Transmit(PORT_B));
    assert_eq!(out[38..], f[38..]);
    assert!(checksum::verify(&out[14..38]));
    assert_eq!(out[14 + 8], 63);
}

#[test]
fn batch_uses_one_snapshot_and_counts_all() {
    let s = snap();
    let frames = [
        udp_frame(MAC_A, GW_MAC, POD_A, POD_B, 64, b"1"),
        arp_request(MAC_A, POD_A, GW),
        udp_frame(MAC_A, GW_MAC, POD_A, [8, 8, 8, 8], 64, b"x"),
    ];
    let mut bufs: Vec<Vec<u8>> = frames.iter().map(|_| vec![0u8; 512]).collect();
    let mut pkts: Vec<Packet<'_>> = bufs
        .iter_mut()
        .zip(frames.iter())
        .map(|(b, f)| {
            b[128..128 + f.len()].copy_from_slice(f);
            Packet::new(b, 128, f.len(), PORT_A).unwrap()
        })
        .collect();
    let mut verdicts = [Verdict::default(); 3];
    let mut p = Pipeline::new();
    p.process(&s, &mut pkts, &mut verdicts);
    assert_eq!(
        verdicts,
        [
            Verdict::Transmit(PORT_B),
            Verdict::Transmit(PORT_A),
            Verdict::Drop(DropReason::NoNextHop)
        ]
    );
    assert_eq!(p.counters().received, 3);
    assert_eq!(p.counters().decided(), 3);
}

#[test]
fn no_headroom_is_counted() {
    let s = snap();
    let f = udp_frame(MAC_A, GW_MAC, POD_A, REMOTE_POD, 64, b"x");
    let mut buf = vec![0u8; 200];
    buf[10..10 + f.len()].copy_from_slice(&f);
    let mut pkt = Packet::new(&mut buf, 10, f.len(), PORT_A).unwrap();
    assert_eq!(
        Pipeline::new().process_one(&s, &mut pkt),
        Verdict::Drop(DropReason::NoHeadroom)
    );
}

#[test]
fn macs_parse() {
    assert_eq!("02:00:0a:f4:01:01".parse::<MacAddr>().unwrap().0, GW_MAC);
    assert_eq!(snap().node.gateway_ip, Ipv4Addr::from(GW));
}

#[test]
fn vxlan_decap_is_as_strict_as_linux() {
    let s = snap();
    let inner = udp_frame(VTEP2, VTEP1, REMOTE_POD, POD_B, 63, b"x");
    // VXLAN-GPE style flags (I + P) or reserved bits: Linux's plain vxlan drops them.
    for (at, val) in [(42usize, 0x0cu8), (43, 1), (49, 1)] {
        let mut f = vxlan_from_node2(&inner, 1, NODE2);
        f[at] = val;
        assert_eq!(
            run(&s, &f, PortId::UPLINK).0,
            Verdict::Drop(DropReason::VxlanMalformed),
            "byte {at}"
        );
    }
    // node2 may only send from its own pod CIDR.
    let outsider = udp_frame(VTEP2, VTEP1, [10, 244, 3, 1], POD_B, 63, b"x");
    assert_eq!(
        run(&s, &vxlan_from_node2(&outsider, 1, NODE2), PortId::UPLINK).0,
        Verdict::Drop(DropReason::SpoofedSource)
    );
}

#[test]
fn no_icmp_error_about_broadcasts() {
    let s = snap();
    // TTL 1 to the remote pod CIDR's broadcast address: dropped, no time exceeded.
    let f = udp_frame(MAC_A, GW_MAC, POD_A, [10, 244, 2, 255], 1, b"x");
    assert_eq!(
        run(&s, &f, PORT_A).0,
        Verdict::Drop(DropReason::TtlExceeded)
    );
}

const HOST_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 1, 1];
const HOST_IP: [u8; 4] = [10, 244, 1, 0];

/// node1 with a host port "nsw0" (port 3) for the node's kernel.
fn snap_with_host() -> Snapshot {
    let mut st = StateFile::parse(STATE).unwrap();
    st.node.host_port = Some("nsw0".into());
    st.node.host_mac = Some(MacAddr(HOST_MAC));
    Snapshot::build(&st, 1).unwrap()
}

#[test]
fn host_port_carries_the_nodes_own_traffic() {
    let s = snap_with_host();
    let host = s.port_id("nsw0").unwrap();
    assert_eq!(s.host().unwrap().ip, Ipv4Addr::from(HOST_IP));
    // The node -> a remote pod: encapsulated like a pod's packet, source the host address.
    let f = udp_frame(HOST_MAC, GW_MAC, HOST_IP, REMOTE_POD, 64, b"kubelet probe");
    let (v, out, c) = run(&s, &f, host);
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(c.actions(Action::Encapsulated), 1);
    assert_eq!(&out[50 + 14 + 12..50 + 14 + 16], &HOST_IP);
    // A remote pod's answer to the host address: to the host port, MACs rewritten, TTL - 1.
    let inner = udp_frame(VTEP2, VTEP1, REMOTE_POD, HOST_IP, 63, b"answer");
    let (v, out, c) = run(&s, &vxlan_from_node2(&inner, 1, NODE2), PortId::UPLINK);
    assert_eq!(v, Verdict::Transmit(host));
    assert_eq!(c.actions(Action::DeliveredLocal), 1);
    assert_eq!(&out[..6], &HOST_MAC);
    assert_eq!(&out[6..12], &GW_MAC);
    assert_eq!(out[14 + 8], 62);
    // The node's own IP over the overlay is not the host port's (its answer could not leave
    // from that address): the kernel's, as without a host port.
    let inner = udp_frame(VTEP2, VTEP1, REMOTE_POD, NODE1, 63, b"to node1");
    let (v, _, _) = run(&s, &vxlan_from_node2(&inner, 1, NODE2), PortId::UPLINK);
    assert_eq!(v, Verdict::Kernel);
    // A local pod -> the node's IP also goes through the switch to the host port.
    let f = udp_frame(MAC_A, GW_MAC, POD_A, NODE1, 64, b"to my node");
    assert_eq!(run(&s, &f, PORT_A).0, Verdict::Transmit(host));
    // The host port's ARP for a pod is answered by the switch (proxy ARP).
    let (v, _, _) = run(&s, &arp_request(HOST_MAC, HOST_IP, REMOTE_POD), host);
    assert_eq!(v, Verdict::Transmit(host));
}

#[test]
fn host_port_is_anti_spoofed_and_not_a_pod_address() {
    let s = snap_with_host();
    let host = s.port_id("nsw0").unwrap();
    // The host port may only send as the host address or the node's own (the kernel's
    // replies from a host-network endpoint), with the host MAC.
    let f = udp_frame(HOST_MAC, GW_MAC, NODE1, REMOTE_POD, 64, b"x");
    assert_eq!(run(&s, &f, host).0, Verdict::Transmit(PortId::UPLINK));
    for f in [
        udp_frame(HOST_MAC, GW_MAC, NODE2, REMOTE_POD, 64, b"x"),
        udp_frame(HOST_MAC, GW_MAC, POD_A, REMOTE_POD, 64, b"x"),
        udp_frame(MAC_A, GW_MAC, NODE1, REMOTE_POD, 64, b"x"),
        udp_frame(MAC_A, GW_MAC, HOST_IP, REMOTE_POD, 64, b"x"),
    ] {
        assert_eq!(
            run(&s, &f, host).0,
            Verdict::Drop(DropReason::SpoofedSource)
        );
    }
    // A pod cannot claim the host address either.
    let f = udp_frame(MAC_A, GW_MAC, HOST_IP, POD_B, 64, b"x");
    assert_eq!(
        run(&s, &f, PORT_A).0,
        Verdict::Drop(DropReason::SpoofedSource)
    );
    // Without a host port, the node's IP stays the kernel's.
    let f = udp_frame(MAC_A, GW_MAC, POD_A, NODE1, 64, b"x");
    assert_eq!(run(&snap(), &f, PORT_A).0, Verdict::Kernel);
}

#[test]
fn host_port_configuration_is_validated() {
    type Case = (Option<&'static str>, Option<[u8; 6]>, &'static str);
    let cases: [Case; 5] = [
        (
            Some("nsw0"),
            None,
            "node.host_mac: is required with host_port",
        ),
        (
            None,
            Some(HOST_MAC),
            "node.host_port: is required with host_mac",
        ),
        (
            Some("veth-a"),
            Some(HOST_MAC),
            "node.host_port: 'veth-a' is already used by pods[0]",
        ),
        (
            Some("nsw0"),
            Some(GW_MAC),
            "node.host_mac: is the gateway's MAC",
        ),
        (Some("nsw0"), Some(MAC_B), "is also the MAC of pods[1]"),
    ];
    for (port, mac, want) in cases {
        let mut st = StateFile::parse(STATE).unwrap();
        st.node.host_port = port.map(String::from);
        st.node.host_mac = mac.map(MacAddr);
        let e = Snapshot::build(&st, 1).unwrap_err().to_string();
        assert!(e.contains(want), "{e:?} should contain {want:?}");
    }
}
