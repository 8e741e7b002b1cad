//! Transmit checksum offload through the pipeline: which partial checksums are left for the
//! port (pod to pod on this node, nothing but MACs and TTL rewritten) and which are completed
//! here (everything else), decoded with etherparse and verified from scratch.

use super::*;
use crate::packet::DEFAULT_HEADROOM;
use crate::state::StateFile;
use crate::wire::checksum;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

const STATE: &str = include_str!("../../../examples/node1.toml");
const POD_A: [u8; 4] = [10, 244, 1, 2];
const POD_B: [u8; 4] = [10, 244, 1, 3];
const REMOTE_POD: [u8; 4] = [10, 244, 2, 7];
const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
const GW_MAC: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 1];
const PORT_A: PortId = PortId(1);
const PORT_B: PortId = PortId(2);

fn snap(services: bool) -> Snapshot {
    let mut s = StateFile::parse(STATE).unwrap();
    if !services {
        s.services.clear();
    }
    Snapshot::build(&s, 1).unwrap()
}

/// A TCP segment from pod-a with the partial checksum Linux leaves under checksum offload.
fn partial_tcp(dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, GW_MAC)
        .ipv4(POD_A, dst, 64)
        .tcp(40000, 8080, 1000, 64240)
        .ack(1);
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    let l4_len = (f.len() - 34) as u16;
    let partial = checksum::fold(checksum::pseudo_header_sum(POD_A, dst, 6, l4_len));
    f[50..52].copy_from_slice(&partial.to_be_bytes());
    f
}

fn tcp_checksum_ok(frame: &[u8]) -> bool {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not TCP")
    };
    t.to_header()
        .calc_checksum_ipv4(&h.to_header(), t.payload())
        .unwrap()
        == t.checksum()
}

/// Runs `frame` from pod-a through a pipeline with offload `on`; returns the verdict, the
/// frame after the pipeline (and after `finish_tx_checksum` if `finish`), its mark, and
/// the counters.
fn run(
    s: &Snapshot,
    frame: &[u8],
    on: bool,
    finish: bool,
) -> (Verdict, Vec<u8>, Option<TxChecksum>, Counters) {
    let mut buf = vec![0u8; 4096];
    buf[DEFAULT_HEADROOM..DEFAULT_HEADROOM + frame.len()].copy_from_slice(frame);
    let mut pkt = Packet::new(&mut buf, DEFAULT_HEADROOM, frame.len(), PORT_A).unwrap();
    let mut p = Pipeline::new();
    p.set_tx_checksum_offload(on);
    let v = p.process_one(s, &mut pkt);
    let mark = pkt.tx_checksum();
    if finish {
        p.finish_tx_checksum(&mut pkt);
        assert_eq!(pkt.tx_checksum(), None);
    }
    (v, pkt.data().to_vec(), mark, p.counters().clone())
}

#[test]
fn pod_to_local_pod_leaves_the_partial_checksum_to_the_port() {
    let s = snap(false);
    let frame = partial_tcp(POD_B, &[7u8; 1000]);
    let (v, out, mark, c) = run(&s, &frame, true, false);
    assert_eq!(v, Verdict::Transmit(PORT_B));
    assert_eq!(
        mark,
        Some(TxChecksum {
            start: 34,
            offset: 16
        })
    );
    assert_eq!(out[50..52], frame[50..52], "still the pseudo-header sum");
    assert_eq!(out[14 + 8], 63, "TTL decremented");
    assert!(!tcp_checksum_ok(&out));
    assert_eq!((c.checksums_offloaded, c.checksums_completed), (1, 0));
    // What the port does with it, or the worker where the port cannot.
    let (_, out, _, c) = run(&s, &frame, true, true);
    assert!(tcp_checksum_ok(&out));
    assert_eq!((c.checksums_offloaded, c.checksums_completed), (0, 1));
}

#[test]
fn everything_else_is_completed_here() {
    // Offload off (replay, tests): complete.
    let s = snap(false);
    let (v, out, mark, c) = run(&s, &partial_tcp(POD_B, b"x"), false, false);
    assert_eq!((v, mark), (Verdict::Transmit(PORT_B), None));
    assert!(tcp_checksum_ok(&out));
    assert_eq!((c.checksums_offloaded, c.checksums_completed), (0, 1));
    // To another node: encapsulated, so the inner checksum is complete.
    let (v, out, mark, _) = run(&s, &partial_tcp(REMOTE_POD, b"x"), true, false);
    assert_eq!((v, mark), (Verdict::Transmit(PortId::UPLINK), None));
    assert!(tcp_checksum_ok(&out[50..]), "inner segment");
    // To a Service's ClusterIP: translated and routed in NAT, so complete first.
    let s = snap(true);
    let mut syn = partial_tcp([10, 96, 0, 10], b"");
    syn[34..36].copy_from_slice(&40001u16.to_be_bytes());
    syn[36..38].copy_from_slice(&80u16.to_be_bytes());
    syn[47] = 0x02; // SYN (the partial field covers no L4 byte: still partial)
    let (v, out, mark, _) = run(&s, &syn, true, false);
    assert_eq!(mark, None);
    // DNAT to the local or the remote backend (then the inner segment).
    match v {
        Verdict::Transmit(PortId::UPLINK) => assert!(tcp_checksum_ok(&out[50..])),
        Verdict::Transmit(_) => assert!(tcp_checksum_ok(&out)),
        other => panic!("{other:?}"),
    }
    // A complete checksum is never marked.
    let s = snap(false);
    let mut done = partial_tcp(POD_B, b"x");
    let (_, fixed, _, _) = run(&s, &done, false, false);
    done[50..52].copy_from_slice(&fixed[50..52]);
    let (_, out, mark, c) = run(&s, &done, true, false);
    assert_eq!(mark, None);
    assert!(tcp_checksum_ok(&out));
    assert_eq!((c.checksums_offloaded, c.checksums_completed), (0, 0));
}

#[test]
fn a_services_reply_to_a_local_client_is_translated_and_left_partial() {
    // pod-a -> ClusterIP 10.96.0.10:80, sent until Maglev picks the local backend pod-b,
    // then pod-b's SYN-ACK (partial checksum): reverse NAT to the ClusterIP, delivered to
    // pod-a with the checksum left for the port, right once finished.
    let s = snap(true);
    let mut p = Pipeline::new();
    p.set_tx_checksum_offload(true);
    let mut buf = vec![0u8; 4096];
    let mut one = |p: &mut Pipeline, frame: &[u8], port: PortId, finish: bool| {
        buf[DEFAULT_HEADROOM..DEFAULT_HEADROOM + frame.len()].copy_from_slice(frame);
        let mut pkt = Packet::new(&mut buf, DEFAULT_HEADROOM, frame.len(), port).unwrap();
        let v = p.process_one(&s, &mut pkt);
        let mark = pkt.tx_checksum();
        if finish {
            p.finish_tx_checksum(&mut pkt);
        }
        (v, mark, pkt.data().to_vec())
    };
    let syn = |sport: u16| {
        let b = PacketBuilder::ethernet2(MAC_A, GW_MAC)
            .ipv4(POD_A, [10, 96, 0, 10], 64)
            .tcp(sport, 80, 1000, 64240)
            .syn();
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        f
    };
    let sport = (40000..40100)
        .find(|&sp| one(&mut p, &syn(sp), PORT_A, false).0 == Verdict::Transmit(PORT_B))
        .expect("some flow lands on the local backend");
    let b = PacketBuilder::ethernet2([2, 0, 0x0a, 0xf4, 1, 3], GW_MAC)
        .ipv4(POD_B, POD_A, 64)
        .tcp(8080, sport, 5000, 64240)
        .syn()
        .ack(1001);
    let mut synack = Vec::new();
    b.write(&mut synack, &[]).unwrap();
    let partial = checksum::fold(checksum::pseudo_header_sum(POD_B, POD_A, 6, 20));
    synack[50..52].copy_from_slice(&partial.to_be_bytes());
    let (v, mark, out) = one(&mut p, &synack, PORT_B, false);
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(out[26..30], [10, 96, 0, 10], "source is the ClusterIP");
    assert_eq!(out[34..36], 80u16.to_be_bytes(), "and its port");
    assert!(mark.is_some(), "left for the port");
    let translated = checksum::fold(checksum::pseudo_header_sum([10, 96, 0, 10], POD_A, 6, 20));
    assert_eq!(
        out[50..52],
        translated.to_be_bytes(),
        "partial for the new addresses"
    );
    assert_eq!(p.counters().reverse_nat, 1);
    // Retransmitted (now from the flow cache), and finished as the port would.
    let (_, _, out) = one(&mut p, &synack, PORT_B, true);
    assert!(tcp_checksum_ok(&out));
}

#[test]
fn an_icmp_error_about_a_partial_segment_is_not_marked() {
    let s = snap(false);
    let mut frame = partial_tcp(POD_B, b"x");
    frame[14 + 8] = 1; // TTL 1: time exceeded back to pod-a
    frame[24..26].fill(0);
    let c = checksum::checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    let (v, out, mark, _) = run(&s, &frame, true, false);
    assert_eq!((v, mark), (Verdict::Transmit(PORT_A), None));
    assert_eq!(out[14 + 9], 1, "ICMP");
}
