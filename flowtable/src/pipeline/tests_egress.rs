//! Egress through the pipeline: masquerade to the node's IP towards the next hop, replies and
//! ICMP errors translated back, port exhaustion, unresolved next hops, the node's own traffic
//! on the range handed to the kernel. Frames built and decoded with etherparse.

use super::*;
use crate::egress::{NextHops, NextHopsCell, Via};
use crate::state::StateFile;
use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};
use std::net::Ipv4Addr;

const STATE: &str = include_str!("../../../examples/demo/node1.toml");
const POD_A: [u8; 4] = [10, 244, 1, 2];
const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
const GW_MAC: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 1];
const NODE1: [u8; 4] = [198, 18, 0, 1];
const NODE1_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 1];
const HOST_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 1, 1];
const ROUTER: [u8; 4] = [198, 18, 0, 254];
const ROUTER_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 0xfe];
const OUTSIDE: [u8; 4] = [203, 0, 113, 10];
const PORT_A: PortId = PortId(1);

struct H {
    snap: Snapshot,
    p: Pipeline,
    hops: NextHopsCell,
}

impl H {
    fn new() -> H {
        H::with(STATE, "")
    }

    fn with(state: &str, egress: &str) -> H {
        let snap =
            Snapshot::build(&StateFile::parse(&format!("{state}{egress}")).unwrap(), 1).unwrap();
        let hops = NextHopsCell::new();
        hops.store(NextHops::new(
            &[
                (
                    "0.0.0.0/0".parse().unwrap(),
                    Via::Gateway(Ipv4Addr::from(ROUTER)),
                ),
                ("198.18.0.0/24".parse().unwrap(), Via::OnLink),
            ],
            &[(Ipv4Addr::from(ROUTER), crate::wire::MacAddr(ROUTER_MAC))],
            None,
        ));
        let mut p = Pipeline::new();
        p.set_next_hops(hops.clone());
        H { snap, p, hops }
    }

    fn send(&mut self, port: PortId, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; 4096];
        buf[256..256 + frame.len()].copy_from_slice(frame);
        let mut pkt = Packet::new(&mut buf, 256, frame.len(), port).unwrap();
        let v = self.p.process_one(&self.snap, &mut pkt);
        assert_eq!(self.p.counters().received, self.p.counters().decided());
        (v, pkt.data().to_vec())
    }

    fn host(&self) -> PortId {
        self.snap.host().unwrap().port
    }
}

fn udp(mac: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], ports: (u16, u16), ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(mac.0, mac.1)
        .ipv4(src, dst, ttl)
        .udp(ports.0, ports.1)
        .write(&mut v, b"query")
        .unwrap();
    v
}

fn tcp(
    mac: ([u8; 6], [u8; 6]),
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    flags: &str,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac.0, mac.1)
        .ipv4(src, dst, 64)
        .tcp(
            ports.0,
            ports.1,
            if flags == "SA" { 5000 } else { 1000 },
            64240,
        );
    let b = match flags {
        "S" => b.syn(),
        "SA" => b.syn().ack(1001),
        _ => b.ack(5001),
    };
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    v
}

fn echo(mac: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac.0, mac.1).ipv4(src, dst, 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 1)
    } else {
        b.icmpv4_echo_request(id, 1)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping").unwrap();
    v
}

/// An ICMP error from `from` to `to` quoting the first 28 bytes of `quoted` (an IP packet).
fn icmp_error(from: [u8; 4], to: [u8; 4], kind: Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, NODE1_MAC)
        .ipv4(from, to, 64)
        .icmpv4(kind)
        .write(&mut v, &quoted[..28])
        .unwrap();
    v
}

/// (source, source port, destination, destination port, TTL), every checksum verified.
fn decode(frame: &[u8]) -> ([u8; 4], u16, [u8; 4], u16, u8) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let (sp, dp) = match p.transport.unwrap() {
        TransportSlice::Udp(u) => {
            let want = u.to_header().calc_checksum_ipv4(&h, u.payload()).unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
            (u.source_port(), u.destination_port())
        }
        TransportSlice::Tcp(t) => {
            let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            (t.source_port(), t.destination_port())
        }
        TransportSlice::Icmpv4(i) => {
            let want = i.icmp_type().calc_checksum(i.payload());
            assert_eq!(i.checksum(), want, "ICMP checksum");
            match i.icmp_type() {
                Icmpv4Type::EchoRequest(e) => (e.id, 0),
                Icmpv4Type::EchoReply(e) => (0, e.id),
                _ => (0, 0),
            }
        }
        _ => panic!("unexpected transport"),
    };
    (h.source, sp, h.destination, dp, h.time_to_live)
}

const FROM_A: ([u8; 6], [u8; 6]) = (MAC_A, GW_MAC);
const FROM_ROUTER: ([u8; 6], [u8; 6]) = (ROUTER_MAC, NODE1_MAC);

#[test]
fn udp_is_masqueraded_to_the_next_hop_and_its_reply_comes_back() {
    let mut h = H::new();
    let (v, out) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (5353, 53), 64));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!((&out[0..6], &out[6..12]), (&ROUTER_MAC[..], &NODE1_MAC[..]));
    let (s, sp, d, dp, ttl) = decode(&out);
    assert_eq!((s, d, dp, ttl), (NODE1, OUTSIDE, 53, 63));
    assert!((61000..=65535).contains(&sp), "{sp}");
    assert_eq!(h.p.counters().actions(Action::Masqueraded), 1);
    assert_eq!(h.p.counters().snat, 1);
    // The same flow keeps its port.
    let (_, again) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (5353, 53), 64));
    assert_eq!(decode(&again).1, sp);
    // The reply, on the uplink to the node's IP and that port.
    let (v, back) = h.send(
        PortId::UPLINK,
        &udp(FROM_ROUTER, OUTSIDE, NODE1, (53, sp), 60),
    );
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(&back[0..6], &MAC_A);
    assert_eq!(decode(&back), (OUTSIDE, 53, POD_A, 5353, 59));
    assert_eq!(h.p.counters().new_flows, 1);
}

#[test]
fn tcp_and_ping_are_tracked_and_translated_both_ways() {
    let mut h = H::new();
    let (v, syn) = h.send(PORT_A, &tcp(FROM_A, POD_A, OUTSIDE, (40000, 443), "S"));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    let sp = decode(&syn).1;
    let (v, sa) = h.send(
        PortId::UPLINK,
        &tcp(FROM_ROUTER, OUTSIDE, NODE1, (443, sp), "SA"),
    );
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(decode(&sa), (OUTSIDE, 443, POD_A, 40000, 63));
    let (v, _) = h.send(PORT_A, &tcp(FROM_A, POD_A, OUTSIDE, (40000, 443), "A"));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));

    let (v, req) = h.send(PORT_A, &echo(FROM_A, POD_A, OUTSIDE, 77, false));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    let (s, id, d, _, _) = decode(&req);
    assert_eq!((s, d), (NODE1, OUTSIDE));
    assert!((61000..=65535).contains(&id), "{id}");
    let (v, rep) = h.send(PortId::UPLINK, &echo(FROM_ROUTER, OUTSIDE, NODE1, id, true));
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(decode(&rep), (OUTSIDE, 0, POD_A, 77, 63));
}

#[test]
fn icmp_errors_about_masqueraded_flows_reach_the_pod() {
    let mut h = H::new();
    // TTL 2: the switch passes it, the router's time exceeded comes back to the node's IP.
    let (_, out) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (33434, 33434), 2));
    let sp = decode(&out).1;
    let err = icmp_error(
        ROUTER,
        NODE1,
        Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit),
        &out[14..],
    );
    let (v, back) = h.send(PortId::UPLINK, &err);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    let (s, _, d, _, _) = decode(&back);
    assert_eq!((s, d), (ROUTER, POD_A));
    // The quote is the pod's own packet again.
    let q = &back[42..];
    assert_eq!((&q[12..16], &q[16..20]), (&POD_A[..], &OUTSIDE[..]));
    assert_eq!(u16::from_be_bytes([q[20], q[21]]), 33434);
    assert_ne!(sp, 33434);
    // Fragmentation needed, from the outside host itself: PMTU discovery through the NAT.
    let (_, out) = h.send(PORT_A, &tcp(FROM_A, POD_A, OUTSIDE, (40001, 443), "S"));
    let frag = icmp_error(
        OUTSIDE,
        NODE1,
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ),
        &out[14..],
    );
    let (v, back) = h.send(PortId::UPLINK, &frag);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!((decode(&back).0, decode(&back).2), (OUTSIDE, POD_A));
    assert_eq!(u16::from_be_bytes([back[40], back[41]]), 1400);
    // TTL 1: the switch is the first hop and answers itself.
    let (v, te) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (33435, 33434), 1));
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!((te[34], decode(&te).2), (11, POD_A));
}

#[test]
fn the_pods_own_icmp_errors_leave_from_the_node() {
    let mut h = H::new();
    let (_, out) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (5000, 9999), 64));
    let sp = decode(&out).1;
    let (_, back) = h.send(
        PortId::UPLINK,
        &udp(FROM_ROUTER, OUTSIDE, NODE1, (9999, sp), 64),
    );
    // The pod's port is closed: its kernel answers port unreachable, quoting the reply.
    let mut err = Vec::new();
    PacketBuilder::ethernet2(MAC_A, GW_MAC)
        .ipv4(POD_A, OUTSIDE, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, &back[14..42])
        .unwrap();
    let (v, out) = h.send(PORT_A, &err);
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!((decode(&out).0, decode(&out).2), (NODE1, OUTSIDE));
    let q = &out[42..];
    assert_eq!((&q[12..16], &q[16..20]), (&OUTSIDE[..], &NODE1[..]));
    assert_eq!(u16::from_be_bytes([q[22], q[23]]), sp);
}

#[test]
fn an_exhausted_range_drops_new_flows_only() {
    let mut h = H::with(STATE, "\n[egress]\nport_range = \"61000-61009\"\n");
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..10u16 {
        let (v, out) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (2000 + i, 53), 64));
        assert_eq!(v, Verdict::Transmit(PortId::UPLINK), "flow {i}");
        ports.insert(decode(&out).1);
    }
    assert_eq!(ports.len(), 10);
    for i in 10..15u16 {
        let (v, _) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (2000 + i, 53), 64));
        assert_eq!(v, Verdict::Drop(DropReason::SnatPortsExhausted));
    }
    assert_eq!(h.p.counters().drops(DropReason::SnatPortsExhausted), 5);
    // The first ten still work, both ways; another destination has its own ports.
    for i in 0..10u16 {
        let (v, out) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (2000 + i, 53), 64));
        assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
        let sp = decode(&out).1;
        let (v, _) = h.send(
            PortId::UPLINK,
            &udp(FROM_ROUTER, OUTSIDE, NODE1, (53, sp), 64),
        );
        assert_eq!(v, Verdict::Transmit(PORT_A));
    }
    let (v, _) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (2000, 54), 64));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
}

#[test]
fn unresolved_next_hops_are_named_and_asked_for() {
    let mut h = H::new();
    // On the uplink's link, but no neighbour entry yet.
    let (v, _) = h.send(PORT_A, &udp(FROM_A, POD_A, [198, 18, 0, 77], (1, 2), 64));
    assert_eq!(v, Verdict::Drop(DropReason::NeighbourUnresolved));
    assert_eq!(
        h.hops.load().take_missed(),
        vec![Ipv4Addr::new(198, 18, 0, 77)]
    );
    h.hops.store(NextHops::new(&[], &[], None));
    let (v, _) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (1, 2), 64));
    assert_eq!(v, Verdict::Drop(DropReason::NoNextHop));
    // Nothing was tracked for either.
    assert_eq!(h.p.counters().new_flows, 0);
    // Inside the cluster's ranges nothing leaves: no route.
    let (v, _) = h.send(PORT_A, &udp(FROM_A, POD_A, [10, 96, 9, 9], (1, 2), 64));
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
}

#[test]
fn the_nodes_own_traffic_on_the_range_goes_to_its_kernel() {
    let mut h = H::new();
    let host = h.host();
    // No flow on this port (the node's kernel has none there either: it answers).
    let (v, out) = h.send(
        PortId::UPLINK,
        &udp(FROM_ROUTER, OUTSIDE, NODE1, (53, 61234), 64),
    );
    assert_eq!(v, Verdict::Transmit(host));
    assert_eq!((&out[0..6], &out[6..12]), (&HOST_MAC[..], &GW_MAC[..]));
    assert_eq!(decode(&out), (OUTSIDE, 53, NODE1, 61234, 64));
    // The node's own ping (any identifier).
    let (v, _) = h.send(
        PortId::UPLINK,
        &echo(FROM_ROUTER, OUTSIDE, NODE1, 61500, true),
    );
    assert_eq!(v, Verdict::Transmit(host));
    assert_eq!(h.p.counters().actions(Action::ToKernel), 2);
    // Outside the range, and pings to the node: the kernel's as always.
    let (v, _) = h.send(
        PortId::UPLINK,
        &udp(FROM_ROUTER, OUTSIDE, NODE1, (53, 40000), 64),
    );
    assert_eq!(v, Verdict::Kernel);
    let (v, _) = h.send(PortId::UPLINK, &echo(FROM_ROUTER, OUTSIDE, NODE1, 5, false));
    assert_eq!(v, Verdict::Kernel);
}

#[test]
fn non_masquerade_destinations_leave_with_the_pods_address() {
    let egress = "\n[egress]\nnon_masquerade_cidrs = [\"203.0.113.0/24\"]\n";
    let mut h = H::with(STATE, egress);
    let (v, out) = h.send(PORT_A, &udp(FROM_A, POD_A, OUTSIDE, (5353, 53), 64));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(decode(&out), (POD_A, 5353, OUTSIDE, 53, 63));
    assert_eq!(h.p.counters().actions(Action::RoutedOut), 1);
    let mut h = H::with(STATE, "\n[egress]\nmasquerade = false\n");
    let (v, out) = h.send(PORT_A, &udp(FROM_A, POD_A, [192, 0, 2, 1], (5353, 53), 64));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(decode(&out).0, POD_A);
}

#[test]
fn a_remote_node_without_a_mac_is_reached_through_the_learned_next_hop() {
    const NODE2_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 2];
    let without = STATE.replace("mac = \"02:00:c6:12:00:02\"\n", "");
    assert_ne!(without, STATE);
    let mut h = H::with(&without, "");
    let to_d = udp(FROM_A, POD_A, [10, 244, 2, 3], (5000, 8080), 64);
    // Not resolved yet: dropped, named, and asked for.
    let (v, _) = h.send(PORT_A, &to_d);
    assert_eq!(v, Verdict::Drop(DropReason::NeighbourUnresolved));
    assert_eq!(
        h.hops.load().take_missed(),
        vec![Ipv4Addr::new(198, 18, 0, 2)]
    );
    h.hops.store(NextHops::new(
        &[("198.18.0.0/24".parse().unwrap(), Via::OnLink)],
        &[(
            Ipv4Addr::new(198, 18, 0, 2),
            crate::wire::MacAddr(NODE2_MAC),
        )],
        None,
    ));
    // VXLAN to a pod there, and the underlay to the node itself, both to its MAC.
    let (v, out) = h.send(PORT_A, &to_d);
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!((&out[0..6], &out[6..12]), (&NODE2_MAC[..], &NODE1_MAC[..]));
    assert_eq!(u16::from_be_bytes([out[36], out[37]]), 8472);
    let (v, out) = h.send(PORT_A, &udp(FROM_A, POD_A, [198, 18, 0, 2], (5000, 53), 64));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(&out[0..6], &NODE2_MAC[..]);
}

#[test]
fn a_pod_cannot_speak_for_the_node_or_leave_without_a_port() {
    let mut h = H::new();
    // An ICMP error about no flow of the pod's (here: quoting the node's own UDP flow) would
    // leave from the node's address: dropped.
    let quoted = udp(([0; 6], [0; 6]), NODE1, OUTSIDE, (40000, 53), 64);
    let mut forged = Vec::new();
    PacketBuilder::ethernet2(MAC_A, GW_MAC)
        .ipv4(POD_A, OUTSIDE, 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 576 },
        ))
        .write(&mut forged, &quoted[14..42])
        .unwrap();
    let (v, _) = h.send(PORT_A, &forged);
    assert_eq!(v, Verdict::Drop(DropReason::EgressIcmpUntracked));
    // An echo reply from a pod answers nothing; SCTP cannot be told apart on the way back.
    let (v, _) = h.send(PORT_A, &echo(FROM_A, POD_A, OUTSIDE, 9, true));
    assert_eq!(v, Verdict::Drop(DropReason::EgressUnsupported));
    let mut sctp = udp(FROM_A, POD_A, OUTSIDE, (5000, 5000), 64);
    sctp[23] = 132;
    let c = {
        let mut hdr = sctp[14..34].to_vec();
        hdr[10] = 0;
        hdr[11] = 0;
        etherparse::Ipv4Header::from_slice(&hdr)
            .unwrap()
            .0
            .calc_header_checksum()
    };
    sctp[24..26].copy_from_slice(&c.to_be_bytes());
    let (v, _) = h.send(PORT_A, &sctp);
    assert_eq!(v, Verdict::Drop(DropReason::EgressUnsupported));
    // Addresses no router forwards never leave.
    for dst in [
        [127, 0, 0, 1],
        [224, 0, 0, 251],
        [255, 255, 255, 255],
        [169, 254, 42, 1],
    ] {
        let (v, _) = h.send(PORT_A, &udp(FROM_A, POD_A, dst, (1, 2), 64));
        assert_eq!(v, Verdict::Drop(DropReason::NoRoute), "{dst:?}");
    }
    assert_eq!(h.p.counters().new_flows, 0);
}
