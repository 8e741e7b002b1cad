//! Service NAT through the pipeline: frames built and decoded with etherparse, checksums
//! verified with a sum written again here (not the code under test).

use super::*;
use crate::state::StateFile;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

const STATE: &str = include_str!("../../../examples/node1.toml");
const POD_A: [u8; 4] = [10, 244, 1, 2];
const POD_B: [u8; 4] = [10, 244, 1, 3];
const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 3];
const GW_MAC: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 1];
const WEB: [u8; 4] = [10, 96, 0, 10];
const WEB2: [u8; 4] = [10, 96, 0, 11];
const DNS: [u8; 4] = [10, 96, 0, 53];
const EMPTY: [u8; 4] = [10, 96, 0, 99];
const LOCAL_ONLY: [u8; 4] = [10, 96, 0, 20];
const STICKY: [u8; 4] = [10, 96, 0, 30];
const SELF: [u8; 4] = [10, 96, 0, 40];
const REMOTE_B: [u8; 4] = [10, 244, 2, 7];
const PORT_A: PortId = PortId(1);
const PORT_B: PortId = PortId(2);

fn csum_ok(data: &[u8]) -> bool {
    let mut s: u64 = 0;
    for c in data.chunks(2) {
        s += u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

/// IPv4 header, and TCP/UDP over the pseudo-header, all valid.
fn assert_checksums(frame: &[u8]) {
    let hl = usize::from(frame[14] & 0xf) * 4;
    assert!(csum_ok(&frame[14..14 + hl]), "IPv4 header checksum");
    let tl = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let l4 = &frame[14 + hl..14 + tl];
    let proto = frame[23];
    if proto == 6 || (proto == 17 && l4[6..8] != [0, 0]) {
        let mut p = Vec::new();
        p.extend_from_slice(&frame[26..34]);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        p.extend_from_slice(l4);
        assert!(csum_ok(&p), "L4 checksum");
    } else if proto == 1 {
        assert!(csum_ok(l4), "ICMP checksum");
    }
}

struct H {
    snap: Snapshot,
    p: Pipeline,
}

impl H {
    fn new() -> H {
        H::with_state(STATE)
    }
    fn with_state(text: &str) -> H {
        H {
            snap: Snapshot::build(&StateFile::parse(text).unwrap(), 1).unwrap(),
            p: Pipeline::new(),
        }
    }
    fn send(&mut self, port: PortId, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; 2048];
        buf[256..256 + frame.len()].copy_from_slice(frame);
        let mut pkt = Packet::new(&mut buf, 256, frame.len(), port).unwrap();
        let v = self.p.process_one(&self.snap, &mut pkt);
        let out = pkt.data().to_vec();
        assert_eq!(self.p.counters().received, self.p.counters().decided());
        if matches!(v, Verdict::Transmit(_)) && out.len() > 34 && out[12..14] == [8, 0] {
            assert_checksums(&out);
            if out[23] == 17 && u16::from_be_bytes([out[36], out[37]]) == 8472 {
                assert_checksums(&out[50..]);
            }
        }
        (v, out)
    }
}

fn tcp(
    mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac, GW_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(5000) };
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// A TCP segment to the gateway MAC (see `tests_conntrack::seg`).
#[allow(clippy::too_many_arguments)]
fn tcp_seg(
    mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: &str,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    super::tests_conntrack::seg(
        mac, GW_MAC, src, dst, sport, dport, flags, seq, ack, payload,
    )
}

fn udp(
    mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(mac, GW_MAC)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

fn tuple(frame: &[u8]) -> ([u8; 4], u16, [u8; 4], u16) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let ip = match p.net.unwrap() {
        etherparse::NetSlice::Ipv4(i) => i,
        _ => panic!(),
    };
    let (sp, dp) = match p.transport.unwrap() {
        TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    (ip.header().source(), sp, ip.header().destination(), dp)
}

/// The backend a client's first packet to web went to, over many client ports.
fn web_flow_to(h: &mut H, want_local: bool) -> (u16, Vec<u8>, Verdict) {
    for sport in 40000..41000 {
        let (v, out) = h.send(PORT_A, &tcp(MAC_A, POD_A, WEB, sport, 80, true, b""));
        let local = v == Verdict::Transmit(PORT_B);
        if local == want_local {
            return (sport, out, v);
        }
    }
    panic!("no flow went where wanted");
}

#[test]
fn clusterip_to_local_backend_and_back() {
    let mut h = H::new();
    let (sport, out, _) = web_flow_to(&mut h, true);
    assert_eq!(
        tuple(&out),
        (POD_A, sport, POD_B, 8080),
        "DNAT to pod-b:8080, client IP kept"
    );
    assert_eq!(&out[..6], &MAC_B);
    // The backend answers: source becomes the Service again.
    let (v, back) = h.send(
        PORT_B,
        &tcp_seg(MAC_B, POD_B, POD_A, 8080, sport, "SA", 5000, 1001, b""),
    );
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(tuple(&back), (WEB, 80, POD_A, sport));
    assert!(h.p.counters().reverse_nat >= 1);
    // The flow is tracked: the next packet goes to the same backend without a new entry.
    let flows = h.p.counters().new_flows;
    let (v, again) = h.send(
        PORT_A,
        &tcp_seg(
            MAC_A,
            POD_A,
            WEB,
            sport,
            80,
            "PA",
            1001,
            5001,
            b"GET / HTTP/1.1",
        ),
    );
    assert_eq!(v, Verdict::Transmit(PORT_B));
    assert_eq!(tuple(&again), (POD_A, sport, POD_B, 8080));
    assert_eq!(h.p.counters().new_flows, flows);
    let (v, _) = h.send(
        PORT_B,
        &tcp_seg(
            MAC_B,
            POD_B,
            POD_A,
            8080,
            sport,
            "PA",
            5001,
            1015,
            b"HTTP/1.1 200 OK",
        ),
    );
    assert_eq!(v, Verdict::Transmit(PORT_A));
    let e = h.p.conntrack().lookup(&crate::conntrack::FlowKey {
        src: POD_A.into(),
        dst: WEB.into(),
        sport,
        dport: 80,
        proto: 6,
    });
    let e = e.unwrap();
    assert_eq!(e.state, crate::conntrack::TcpState::Established);
    assert!(e.assured, "the handshake completed");
}

#[test]
fn clusterip_to_remote_backend_over_vxlan_and_back() {
    let mut h = H::new();
    let (sport, out, v) = web_flow_to(&mut h, false);
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(&out[30..34], &[198, 18, 0, 2], "encapsulated to node2");
    assert_eq!(tuple(&out[50..]), (POD_A, sport, REMOTE_B, 8080));
    // The reply comes back over VXLAN and is translated on this (the client's) node.
    let reply = tcp(
        [2, 0, 0, 0, 0xff, 2],
        REMOTE_B,
        POD_A,
        8080,
        sport,
        false,
        b"ok",
    );
    let mut vx = vec![8, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(&reply);
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0xc6, 0x12, 0, 2], [2, 0, 0xc6, 0x12, 0, 1])
        .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .udp(40000, 8472)
        .write(&mut f, &vx)
        .unwrap();
    let (v, back) = h.send(PortId::UPLINK, &f);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(tuple(&back), (WEB, 80, POD_A, sport));
}

#[test]
fn no_endpoints_rejects_at_once() {
    let mut h = H::new();
    let syn = tcp(MAC_A, POD_A, EMPTY, 40000, 80, true, b"");
    let (v, out) = h.send(PORT_A, &syn);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(h.p.counters().actions(Action::Rejected), 1);
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let TransportSlice::Tcp(t) = p.transport.unwrap() else {
        panic!()
    };
    assert!(t.rst() && t.ack() && !t.syn());
    assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
    assert_eq!(t.acknowledgment_number(), 1001, "ACKs the SYN");
    assert_eq!(tuple(&out).0, EMPTY, "from the Service address");
    // UDP: ICMP port unreachable from the Service address, quoting the datagram.
    let d = udp(MAC_A, POD_A, EMPTY, 5000, 80, b"hello");
    let (v, out) = h.send(PORT_A, &d);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!((out[34], out[35]), (3, 3));
    assert_eq!(&out[26..30], &EMPTY);
    assert_eq!(&out[42..], &d[14..]);
    assert_eq!(h.p.counters().actions(Action::Rejected), 2);
}

#[test]
fn internal_traffic_policy_local_without_local_endpoints_drops() {
    let mut h = H::new();
    let (v, _) = h.send(PORT_A, &tcp(MAC_A, POD_A, LOCAL_ONLY, 40000, 80, true, b""));
    assert_eq!(v, Verdict::Drop(DropReason::NoLocalEndpoints));
    assert_eq!(h.p.counters().drops(DropReason::NoLocalEndpoints), 1);
}

#[test]
fn hairpin_through_own_service() {
    let mut h = H::new();
    let (v, out) = h.send(PORT_A, &tcp(MAC_A, POD_A, SELF, 40000, 80, true, b""));
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(tuple(&out), ([169, 254, 42, 1], 40000, POD_A, 8080));
    // pod-a answers the hairpin address; it becomes the Service talking to pod-a.
    let (v, back) = h.send(
        PORT_A,
        &tcp(MAC_A, POD_A, [169, 254, 42, 1], 8080, 40000, false, b""),
    );
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(tuple(&back), (SELF, 80, POD_A, 40000));
}

#[test]
fn two_services_same_backend_same_client_port() {
    let mut h = H::new();
    // web may pick the remote backend; try ports until both go to pod-b.
    let mut sport = 0;
    for p in 40000..41000 {
        let (v, _) = h.send(PORT_A, &tcp(MAC_A, POD_A, WEB, p, 80, true, b""));
        if v == Verdict::Transmit(PORT_B) {
            sport = p;
            break;
        }
    }
    let (v, second) = h.send(PORT_A, &tcp(MAC_A, POD_A, WEB2, sport, 80, true, b""));
    assert_eq!(v, Verdict::Transmit(PORT_B));
    let (_, moved_port, dst, dport) = tuple(&second);
    assert_eq!((dst, dport), (POD_B, 8080));
    assert_ne!(
        moved_port, sport,
        "the clash is resolved by moving the source port"
    );
    let (_, back1) = h.send(PORT_B, &tcp(MAC_B, POD_B, POD_A, 8080, sport, false, b""));
    let (_, back2) = h.send(
        PORT_B,
        &tcp(MAC_B, POD_B, POD_A, 8080, moved_port, false, b""),
    );
    assert_eq!(tuple(&back1), (WEB, 80, POD_A, sport));
    assert_eq!(tuple(&back2), (WEB2, 80, POD_A, sport));
}

#[test]
fn udp_moves_off_removed_backend_tcp_keeps_it() {
    let text = STATE.replace("{ ip = \"10.244.2.7\", node = \"node2\" },\n]", "{ ip = \"10.244.2.7\", node = \"node2\" },\n  { ip = \"10.244.2.9\", node = \"node2\" },\n]");
    let mut h = H::with_state(&text);
    // UDP to dns: one backend, then it is replaced.
    let (_, out) = h.send(PORT_A, &udp(MAC_A, POD_A, DNS, 5000, 53, b"q"));
    assert_eq!(tuple(&out[50..]).2, [10, 244, 2, 8]);
    let moved = STATE.replace(
        "{ ip = \"10.244.2.8\", node = \"node2\" }",
        "{ ip = \"10.244.2.20\", node = \"node2\" }",
    );
    h.snap = Snapshot::build(&StateFile::parse(&moved).unwrap(), 2).unwrap();
    let (_, out) = h.send(PORT_A, &udp(MAC_A, POD_A, DNS, 5000, 53, b"q"));
    assert_eq!(
        tuple(&out[50..]).2,
        [10, 244, 2, 20],
        "no blackhole: the flow moved"
    );
    // TCP to web keeps its backend while that backend is still listed.
    let mut h = H::new();
    let (sport, _, _) = web_flow_to(&mut h, false);
    let terminating = STATE.replace("{ ip = \"10.244.2.7\", node = \"node2\" },\n]", "{ ip = \"10.244.2.7\", node = \"node2\", ready = false, serving = true, terminating = true },\n]");
    h.snap = Snapshot::build(&StateFile::parse(&terminating).unwrap(), 2).unwrap();
    // (The SYN-ACK would come over the overlay: the client sends its SYN again.)
    let (v, out) = h.send(PORT_A, &tcp(MAC_A, POD_A, WEB, sport, 80, true, b""));
    assert_eq!(
        v,
        Verdict::Transmit(PortId::UPLINK),
        "existing flow keeps its terminating backend"
    );
    assert_eq!(tuple(&out[50..]).2, REMOTE_B);
    for p in 50000..50100 {
        let (v, _) = h.send(PORT_A, &tcp(MAC_A, POD_A, WEB, p, 80, true, b""));
        assert_eq!(
            v,
            Verdict::Transmit(PORT_B),
            "no new flow to a terminating endpoint"
        );
    }
}

#[test]
fn client_ip_affinity_holds_until_timeout() {
    let mut h = H::new();
    h.p.set_now(100);
    let (_, first) = h.send(PORT_A, &tcp(MAC_A, POD_A, STICKY, 40000, 80, true, b""));
    let first_backend = if first.len() > 100 && first[23] == 17 {
        tuple(&first[50..]).2
    } else {
        tuple(&first).2
    };
    for p in 40001..40050 {
        let (_, out) = h.send(PORT_A, &tcp(MAC_A, POD_A, STICKY, p, 80, true, b""));
        let b = if out[23] == 17 {
            tuple(&out[50..]).2
        } else {
            tuple(&out).2
        };
        assert_eq!(b, first_backend, "same client, same backend");
    }
    // The remembered backend wins even when Maglev alone would now choose another.
    let fewer = STATE.replace("  { ip = \"10.244.2.10\", node = \"node2\" },\n", "  { ip = \"10.244.2.10\", node = \"node2\" },\n  { ip = \"10.244.2.11\", node = \"node2\" },\n  { ip = \"10.244.2.12\", node = \"node2\" },\n  { ip = \"10.244.2.13\", node = \"node2\" },\n");
    h.snap = Snapshot::build(&StateFile::parse(&fewer).unwrap(), 2).unwrap();
    let (_, out) = h.send(PORT_A, &tcp(MAC_A, POD_A, STICKY, 41000, 80, true, b""));
    let b = if out[23] == 17 {
        tuple(&out[50..]).2
    } else {
        tuple(&out).2
    };
    assert_eq!(b, first_backend);
    let aff = crate::conntrack::FlowKey {
        src: POD_A.into(),
        dst: STICKY.into(),
        sport: 0,
        dport: 80,
        proto: 255,
    };
    assert!(h.p.conntrack().lookup(&aff).is_some());
    h.p.set_now(100 + 61);
    h.p.conntrack().gc(1 << 20);
    assert!(
        h.p.conntrack().lookup(&aff).is_none(),
        "affinity expires after its timeout"
    );
}

#[test]
fn icmp_error_from_backend_is_translated_back() {
    let mut h = H::new();
    // UDP to dns goes to node2's backend; pretend that backend's kernel says port unreachable.
    let (_, out) = h.send(PORT_A, &udp(MAC_A, POD_A, DNS, 5000, 53, b"query"));
    let inner = &out[50..];
    let mut err = Vec::new();
    let quoted = &inner[14..];
    PacketBuilder::ethernet2([2, 0, 0, 0, 0xff, 2], [2, 0, 0, 0, 0xff, 1])
        .ipv4([10, 244, 2, 8], POD_A, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, quoted)
        .unwrap();
    let mut vx = vec![8, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(&err);
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0xc6, 0x12, 0, 2], [2, 0, 0xc6, 0x12, 0, 1])
        .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .udp(40000, 8472)
        .write(&mut f, &vx)
        .unwrap();
    let (v, back) = h.send(PortId::UPLINK, &f);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(
        &back[26..30],
        &DNS,
        "the error comes from the Service address"
    );
    let q = &back[42..];
    assert_eq!(&q[12..16], &POD_A);
    assert_eq!(
        &q[16..20],
        &DNS,
        "the quoted packet is what the client sent"
    );
    assert_eq!(u16::from_be_bytes([q[22], q[23]]), 53);
    assert!(csum_ok(&q[..20]), "quoted IPv4 checksum");
    let mut ps = Vec::new();
    ps.extend_from_slice(&q[12..20]);
    ps.extend_from_slice(&[0, 17]);
    ps.extend_from_slice(&((q.len() - 20) as u16).to_be_bytes());
    ps.extend_from_slice(&q[20..]);
    assert!(csum_ok(&ps), "quoted UDP checksum");
}

#[test]
fn frag_needed_for_translated_packet_quotes_the_service() {
    let mut h = H::new();
    // A DF packet too big for the overlay, to a Service whose backend is remote.
    let big = udp(MAC_A, POD_A, DNS, 5001, 53, &[1u8; 1440]);
    let (v, out) = h.send(PORT_A, &big);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!((out[34], out[35]), (3, 4));
    let q = &out[42..];
    assert_eq!(&q[16..20], &DNS, "PMTU discovery sees the Service address");
    assert!(csum_ok(&q[..20]));
}

#[test]
fn conntrack_full_drops_new_flows_only() {
    let mut h = H::new();
    h.p = Pipeline::with_conntrack(std::sync::Arc::new(crate::conntrack::Conntrack::new(
        2,
        Default::default(),
    )));
    // TCP to a UDP-only Service port is not a frontend: it is routed (and has no route).
    let (v, _) = h.send(PORT_A, &tcp(MAC_A, POD_A, DNS, 1000, 53, true, b""));
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
    for p in 0..2u16 {
        let (v, _) = h.send(PORT_A, &udp(MAC_A, POD_A, DNS, 1000 + p, 53, b""));
        assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
        // Replied, then more traffic: assured, no longer evictable.
        let r =
            h.p.conntrack()
                .lookup(&crate::conntrack::FlowKey {
                    src: POD_A.into(),
                    dst: DNS.into(),
                    sport: 1000 + p,
                    dport: 53,
                    proto: 17,
                })
                .unwrap();
        for _ in 0..2 {
            h.p.conntrack()
                .track(r.entry, r.version, crate::conntrack::Dir::Reply, None);
        }
    }
    let (v, _) = h.send(PORT_A, &udp(MAC_A, POD_A, DNS, 2000, 53, b""));
    assert_eq!(v, Verdict::Drop(DropReason::ConntrackFull));
    // Tracked flows keep working.
    let (v, _) = h.send(PORT_A, &udp(MAC_A, POD_A, DNS, 1000, 53, b""));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
}

const EXT: [u8; 4] = [198, 18, 0, 100];
const EXT_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 100];
const NODE1: [u8; 4] = [198, 18, 0, 1];
const NODE1_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 1];

fn from_outside(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(EXT_MAC, NODE1_MAC)
        .ipv4(EXT, dst, 64)
        .tcp(sport, dport, 7, 64240)
        .syn()
        .write(&mut v, b"")
        .unwrap();
    v
}

fn vxlan_from_node2(inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![8, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(inner);
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0xc6, 0x12, 0, 2], NODE1_MAC)
        .ipv4([198, 18, 0, 2], NODE1, 64)
        .udp(40000, 8472)
        .write(&mut f, &vx)
        .unwrap();
    f
}

#[test]
fn nodeport_cluster_policy_local_and_remote_backends() {
    let mut h = H::new();
    let mut seen_local = false;
    let mut seen_remote = false;
    for sport in 20000..20200u16 {
        let (v, out) = h.send(PortId::UPLINK, &from_outside(NODE1, sport, 30080));
        match v {
            Verdict::Transmit(PORT_B) if !seen_local => {
                seen_local = true;
                // Local backend: client IP preserved.
                assert_eq!(tuple(&out), (EXT, sport, POD_B, 8080));
                let (v, back) = h.send(PORT_B, &tcp(MAC_B, POD_B, EXT, 8080, sport, false, b""));
                assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
                assert_eq!(tuple(&back), (NODE1, 30080, EXT, sport));
                assert_eq!((&back[0..6], &back[6..12]), (&EXT_MAC[..], &NODE1_MAC[..]));
                assert_eq!(back[22], 63);
            }
            Verdict::Transmit(PortId::UPLINK) if !seen_remote => {
                seen_remote = true;
                // Remote backend: SNAT to this node's pod CIDR so the reply returns here.
                let (s, sp, d, dp) = tuple(&out[50..]);
                assert_eq!((s, d, dp), ([10, 244, 1, 1], REMOTE_B, 8080));
                let reply = tcp(
                    [2, 0, 0, 0, 0xff, 2],
                    REMOTE_B,
                    [10, 244, 1, 1],
                    8080,
                    sp,
                    false,
                    b"",
                );
                let (v, back) = h.send(PortId::UPLINK, &vxlan_from_node2(&reply));
                assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
                assert_eq!(tuple(&back), (NODE1, 30080, EXT, sport));
                assert_eq!(&back[0..6], &EXT_MAC);
            }
            Verdict::Transmit(_) => {}
            other => panic!("{other:?}"),
        }
        if seen_local && seen_remote {
            break;
        }
    }
    assert!(seen_local && seen_remote);
    assert!(h.p.counters().actions(Action::ToExternal) >= 2);
}

#[test]
fn external_traffic_policy_local() {
    let mut h = H::new();
    // LoadBalancer IP with a local endpoint: always the local one, client IP preserved.
    for sport in 21000..21050u16 {
        let (v, out) = h.send(PortId::UPLINK, &from_outside([198, 18, 1, 10], sport, 443));
        assert_eq!(v, Verdict::Transmit(PORT_B));
        assert_eq!(tuple(&out), (EXT, sport, POD_B, 8443));
    }
    // NodePort of a Service with no local endpoint: this node does not serve it.
    let (v, _) = h.send(PortId::UPLINK, &from_outside(NODE1, 22000, 30091));
    assert_eq!(v, Verdict::Drop(DropReason::NoLocalEndpoints));
    // Anything else to the node is still the kernel's.
    let (v, _) = h.send(PortId::UPLINK, &from_outside(NODE1, 22000, 22));
    assert_eq!(v, Verdict::Kernel);
}

#[test]
fn flow_cache_never_hides_a_new_translation() {
    let mut h = H::new();
    // pod-b:8080 talks to pod-a:40000 directly: nothing to translate (and the cache says so).
    for _ in 0..3 {
        let (v, out) = h.send(PORT_B, &tcp(MAC_B, POD_B, POD_A, 8080, 40000, false, b""));
        assert_eq!(v, Verdict::Transmit(PORT_A));
        assert_eq!(tuple(&out), (POD_B, 8080, POD_A, 40000));
    }
    // Now pod-a connects from the same port to a Service whose only backend is pod-b:8080...
    let (v, _) = h.send(PORT_A, &tcp(MAC_A, POD_A, WEB2, 40000, 80, true, b""));
    assert_eq!(v, Verdict::Transmit(PORT_B));
    // ...and the very same tuple from pod-b is now a reply that must be translated.
    let (v, out) = h.send(PORT_B, &tcp(MAC_B, POD_B, POD_A, 8080, 40000, false, b""));
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(tuple(&out), (WEB2, 80, POD_A, 40000));
    // Cached translations stop when the connection is gone.
    let e =
        h.p.conntrack()
            .lookup(&crate::conntrack::FlowKey {
                src: POD_A.into(),
                dst: WEB2.into(),
                sport: 40000,
                dport: 80,
                proto: 6,
            })
            .unwrap();
    assert!(h.p.conntrack().remove(e.entry));
    let (_, out) = h.send(PORT_B, &tcp(MAC_B, POD_B, POD_A, 8080, 40000, false, b""));
    assert_eq!(tuple(&out), (POD_B, 8080, POD_A, 40000));
}

#[test]
fn reject_to_outside_client_leaves_the_uplink() {
    // An outside client reaches, on an external IP, a Service without endpoints.
    let text = STATE.replace(
        "name = \"default/no-endpoints\"\ncluster_ip = \"10.96.0.99\"",
        "name = \"default/no-endpoints\"\ncluster_ip = \"10.96.0.99\"\nexternal_ips = [\"198.18.1.99\"]",
    );
    let mut h = H::with_state(&text);
    let (v, out) = h.send(PortId::UPLINK, &from_outside([198, 18, 1, 99], 23000, 80));
    assert_eq!(
        v,
        Verdict::Transmit(PortId::UPLINK),
        "the RST goes back out of the uplink"
    );
    assert_eq!((&out[0..6], &out[6..12]), (&EXT_MAC[..], &NODE1_MAC[..]));
    assert_eq!(tuple(&out), ([198, 18, 1, 99], 80, EXT, 23000));
    assert_eq!(out[47] & 0x04, 0x04, "RST");
    assert_eq!(h.p.counters().actions(Action::Rejected), 1);
}

#[test]
fn service_validation_protects_the_node() {
    let bad_lb = STATE.replace(
        "load_balancer_ips = [\"198.18.1.10\"]",
        "load_balancer_ips = [\"198.18.0.1\"]",
    );
    let e = Snapshot::build(&StateFile::parse(&bad_lb).unwrap(), 1).unwrap_err();
    assert!(
        e.field.ends_with("load_balancer_ips[0]") && e.reason.contains("node's address"),
        "{e}"
    );
    // An address in this node's or another node's pod CIDR would take over a pod's traffic.
    for (ip, cidr) in [("10.244.1.77", "this"), ("10.244.2.77", "node2's")] {
        let in_pods = STATE.replace(
            "load_balancer_ips = [\"198.18.1.10\"]",
            &format!("load_balancer_ips = [\"{ip}\"]"),
        );
        let e = Snapshot::build(&StateFile::parse(&in_pods).unwrap(), 1).unwrap_err();
        assert!(
            e.field.ends_with("load_balancer_ips[0]")
                && e.reason
                    == format!("{ip} must be outside the pod and Service CIDRs, and unicast"),
            "{cidr} pod CIDR: {e}"
        );
    }
    let np_vxlan = STATE.replace(
        "ports = [{ name = \"dns\", protocol = \"UDP\", port = 53, target_port = 5353 }]",
        "ports = [{ name = \"dns\", protocol = \"UDP\", port = 53, target_port = 5353, node_port = 30472 }]",
    ).replace("[vxlan]\nvni = 1\nport = 8472", "[vxlan]\nvni = 1\nport = 30472");
    let e = Snapshot::build(&StateFile::parse(&np_vxlan).unwrap(), 1).unwrap_err();
    assert!(e.reason.contains("VXLAN port"), "{e}");
    // A huge prime candidate is refused at once (no overflow, no long loop).
    let huge = STATE.replace(
        "maglev_table_size = 16381",
        "maglev_table_size = 4294967291",
    );
    let e = Snapshot::build(&StateFile::parse(&huge).unwrap(), 1).unwrap_err();
    assert_eq!(e.field, "service_config.maglev_table_size");
}

#[test]
fn icmp_error_from_client_about_a_reply_reaches_the_backend() {
    let mut h = H::new();
    h.send(PORT_A, &udp(MAC_A, POD_A, DNS, 5000, 53, b"query"));
    // The answer, as pod-a received it (from the Service), quoted in pod-a's port unreachable.
    let mut answer = Vec::new();
    PacketBuilder::ethernet2(GW_MAC, MAC_A)
        .ipv4(DNS, POD_A, 62)
        .udp(53, 5000)
        .write(&mut answer, b"late answer")
        .unwrap();
    let mut err = Vec::new();
    PacketBuilder::ethernet2(MAC_A, GW_MAC)
        .ipv4(POD_A, DNS, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut err, &answer[14..])
        .unwrap();
    let (v, out) = h.send(PORT_A, &err);
    assert_eq!(
        v,
        Verdict::Transmit(PortId::UPLINK),
        "to the backend's node"
    );
    let inner = &out[50..];
    assert_eq!(&inner[30..34], &[10, 244, 2, 8], "addressed to the backend");
    let q = &inner[42..];
    assert_eq!(
        (&q[12..16], u16::from_be_bytes([q[20], q[21]])),
        (&[10u8, 244, 2, 8][..], 5353),
        "quote as the backend sent it"
    );
    assert!(csum_ok(&inner[34..]) && csum_ok(&q[..20]));
}
