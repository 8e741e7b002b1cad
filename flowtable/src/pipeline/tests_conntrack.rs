//! Connection tracking through the pipeline, with the failures production brings: a spoofed
//! SYN flood at a NodePort, stray and out-of-window segments, port reuse while the endpoints
//! change, late expiry, and ClientIP affinity past its timeout. Frames are built with
//! etherparse; sequence numbers follow real handshakes.

use super::*;
use crate::conntrack::{FlowKey, TcpState};
use crate::state::StateFile;
use etherparse::PacketBuilder;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;

const GW_MAC: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 1];
const UPLINK_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 0xfe];
const NODE_IP: [u8; 4] = [198, 18, 0, 1];
const WEB: [u8; 4] = [10, 96, 0, 10];
const STICKY: [u8; 4] = [10, 96, 0, 30];
const CLIENT: u8 = 2; // pod-a, 10.244.1.2

/// Pods a..e (10.244.1.2..6) on ports 1..5; web has b and c, or d and e once swapped.
fn state(web: &[u8], affinity_secs: u32) -> String {
    let mut s = String::from(
        "[node]\nname = \"node1\"\nip = \"198.18.0.1\"\npod_cidr = \"10.244.1.0/24\"\n\
         gateway_mac = \"02:00:0a:f4:01:01\"\nuplink = \"uplink\"\n\
         uplink_mac = \"02:00:c6:12:00:01\"\nvtep_mac = \"02:00:00:00:ff:01\"\n\n\
         [vxlan]\nvni = 1\nport = 8472\n\n",
    );
    for (i, n) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        s += &format!(
            "[[pods]]\nname = \"default/pod-{n}\"\nip = \"10.244.1.{}\"\n\
             mac = \"02:00:0a:f4:01:{:02x}\"\nport = \"veth-{n}\"\n\n",
            i + 2,
            i + 2
        );
    }
    let eps = |last: &[u8]| {
        last.iter()
            .map(|l| format!("{{ ip = \"10.244.1.{l}\", node = \"node1\" }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s += &format!(
        "[service_config]\nservice_cidr = \"10.96.0.0/12\"\n\n\
         [[services]]\nname = \"default/web\"\ncluster_ip = \"10.96.0.10\"\n\
         ports = [{{ protocol = \"TCP\", port = 80, target_port = 8080, node_port = 30080 }}]\n\
         endpoints = [{}]\n\n\
         [[services]]\nname = \"default/sticky\"\ncluster_ip = \"10.96.0.30\"\n\
         session_affinity = \"ClientIP\"\naffinity_timeout_seconds = {affinity_secs}\n\
         ports = [{{ protocol = \"TCP\", port = 80, target_port = 8080 }}]\n\
         endpoints = [{}]\n",
        eps(web),
        eps(&[3, 4, 5, 6])
    );
    s
}

fn snapshot(web: &[u8], generation: u64) -> Snapshot {
    Snapshot::build(&StateFile::parse(&state(web, 1)).unwrap(), generation).unwrap()
}

fn pod_mac(last: u8) -> [u8; 6] {
    [2, 0, 0x0a, 0xf4, 1, last]
}

fn port_of(last: u8) -> PortId {
    PortId(u16::from(last) - 1)
}

/// A TCP segment with these flags (`S`, `A`, `F`, `R`, `P`), numbers and payload.
#[allow(clippy::too_many_arguments)]
pub(super) fn seg(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: &str,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(smac, dmac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, seq, 64240);
    for c in flags.chars() {
        b = match c {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            other => panic!("flag {other}"),
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

struct H {
    snap: Snapshot,
    p: Pipeline,
}

impl H {
    fn new(capacity: usize) -> H {
        H {
            snap: snapshot(&[3, 4], 1),
            p: Pipeline::with_conntrack(std::sync::Arc::new(Conntrack::new(
                capacity,
                Timeouts::default(),
            ))),
        }
    }

    fn send(&mut self, port: PortId, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; 2048];
        buf[256..256 + frame.len()].copy_from_slice(frame);
        let mut pkt = Packet::new(&mut buf, 256, frame.len(), port).unwrap();
        let v = self.p.process_one(&self.snap, &mut pkt);
        assert_eq!(self.p.counters().received, self.p.counters().decided());
        (v, pkt.data().to_vec())
    }

    /// A client segment from pod-a to `vip`:80.
    fn client(
        &mut self,
        vip: [u8; 4],
        sport: u16,
        flags: &str,
        seq: u32,
        ack: u32,
        data: &[u8],
    ) -> (Verdict, Vec<u8>) {
        let f = seg(
            pod_mac(CLIENT),
            GW_MAC,
            [10, 244, 1, CLIENT],
            vip,
            sport,
            80,
            flags,
            seq,
            ack,
            data,
        );
        self.send(port_of(CLIENT), &f)
    }

    /// A backend's segment from 10.244.1.`backend`:8080 to `to`:`dport`.
    #[allow(clippy::too_many_arguments)]
    fn backend(
        &mut self,
        backend: u8,
        to: [u8; 4],
        dport: u16,
        flags: &str,
        seq: u32,
        ack: u32,
        data: &[u8],
    ) -> (Verdict, Vec<u8>) {
        let f = seg(
            pod_mac(backend),
            GW_MAC,
            [10, 244, 1, backend],
            to,
            8080,
            dport,
            flags,
            seq,
            ack,
            data,
        );
        self.send(port_of(backend), &f)
    }

    /// A full handshake from pod-a to `vip`; returns the backend's last address byte.
    fn connect(&mut self, vip: [u8; 4], sport: u16) -> u8 {
        let (v, out) = self.client(vip, sport, "S", 1000, 0, b"");
        let Verdict::Transmit(port) = v else {
            panic!("SYN from port {sport}: {v:?}")
        };
        let b = out[33];
        assert_eq!(port, port_of(b));
        let (v, back) = self.backend(b, [10, 244, 1, CLIENT], sport, "SA", 5000, 1001, b"");
        assert_eq!(
            v,
            Verdict::Transmit(port_of(CLIENT)),
            "SYN-ACK from port {sport}"
        );
        assert_eq!(&back[26..30], &vip, "reverse NAT");
        let (v, _) = self.client(vip, sport, "A", 1001, 5001, b"");
        assert_eq!(v, Verdict::Transmit(port), "ACK from port {sport}");
        b
    }

    fn entry(&self, vip: [u8; 4], sport: u16) -> Option<crate::conntrack::Hit> {
        self.p.conntrack().lookup(&FlowKey {
            src: Ipv4Addr::new(10, 244, 1, CLIENT),
            dst: vip.into(),
            sport,
            dport: 80,
            proto: 6,
        })
    }

    fn drops(&self, r: DropReason) -> u64 {
        self.p.counters().drops(r)
    }
}

/// A tiny xorshift, so the flood's sources are spread but the test repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 as u32
    }
}

#[test]
fn syn_flood_at_a_nodeport_cannot_lock_out_new_connections() {
    let capacity = 256;
    let mut h = H::new(capacity);
    let mut live = Vec::new();
    for sport in 20000..20100u16 {
        live.push((sport, h.connect(WEB, sport)));
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..50u16 {
        // 100 spoofed SYNs from outside, each answered by its backend (half-open).
        for _ in 0..100 {
            let src = 0x0b00_0000 | (rng.next() & 0x00ff_ffff);
            let src = Ipv4Addr::from(src).octets();
            let sport = (rng.next() % 60000) as u16 + 1024;
            let isn = rng.next();
            let f = seg(
                ROUTER_MAC, UPLINK_MAC, src, NODE_IP, sport, 30080, "S", isn, 0, b"",
            );
            let (v, out) = h.send(PortId::UPLINK, &f);
            if let Verdict::Transmit(p) = v {
                let b = out[33];
                assert_eq!(p, port_of(b));
                let (v, _) = h.backend(b, src, sport, "SA", 777, isn.wrapping_add(1), b"");
                assert_eq!(
                    v,
                    Verdict::Transmit(PortId::UPLINK),
                    "SYN-ACK to the spoofed source"
                );
            }
        }
        assert!(h.p.conntrack().len() <= capacity);
        // Every established flow keeps flowing.
        for (sport, b) in &live {
            let (v, _) = h.client(WEB, *sport, "PA", 1001 + u32::from(round), 5001, b"x");
            assert_eq!(
                v,
                Verdict::Transmit(port_of(*b)),
                "established flow {sport} in round {round}"
            );
        }
        // And a new client connects during the flood.
        h.connect(WEB, 30000 + round);
    }
    let ct = h.p.conntrack();
    assert!(
        ct.counters.evicted.load(Relaxed) > 4000,
        "half-open entries were evicted"
    );
    assert_eq!(
        ct.counters.full.load(Relaxed),
        0,
        "never refused while half-open entries exist"
    );
    for (sport, _) in &live {
        let e = h.entry(WEB, *sport).unwrap();
        assert!(e.assured && e.state == TcpState::Established);
    }
}

#[test]
fn out_of_window_rst_changes_nothing_and_the_connection_lives_on() {
    let mut h = H::new(64);
    let b = h.connect(WEB, 40000);
    h.p.set_now(10);
    let before = h.p.conntrack().tcp(h.entry(WEB, 40000).unwrap().entry);
    let (v, _) = h.backend(
        b,
        [10, 244, 1, CLIENT],
        40000,
        "R",
        5001 + (1 << 30),
        0,
        b"",
    );
    assert_eq!(v, Verdict::Drop(DropReason::CtInvalidSeqOverWindow));
    let e = h.entry(WEB, 40000).unwrap();
    assert_eq!(e.state, TcpState::Established);
    assert_eq!(
        h.p.conntrack().tcp(e.entry),
        before,
        "no state or window moved"
    );
    // A minute later, both directions still work and are translated.
    h.p.set_now(70);
    h.p.conntrack().gc(1 << 10);
    let (v, _) = h.client(WEB, 40000, "PA", 1001, 5001, b"GET /");
    assert_eq!(v, Verdict::Transmit(port_of(b)));
    let (v, back) = h.backend(b, [10, 244, 1, CLIENT], 40000, "PA", 5001, 1006, b"200 OK");
    assert_eq!(v, Verdict::Transmit(port_of(CLIENT)));
    assert_eq!(
        &back[26..30],
        &WEB,
        "from the Service address, not the backend's"
    );
    // Out-of-window data in either direction is dropped and counted too.
    let (v, _) = h.client(WEB, 40000, "PA", 1006 + (1 << 30), 5007, b"junk");
    assert_eq!(v, Verdict::Drop(DropReason::CtInvalidSeqOverWindow));
    let (v, _) = h.backend(
        b,
        [10, 244, 1, CLIENT],
        40000,
        "A",
        5007,
        1006 + 100_000,
        b"",
    );
    assert_eq!(v, Verdict::Drop(DropReason::CtInvalidAckOverWindow));
    assert_eq!(h.drops(DropReason::CtInvalidSeqOverWindow), 2);
    // An in-window, exact RST closes it.
    let (v, _) = h.backend(b, [10, 244, 1, CLIENT], 40000, "R", 5007, 0, b"");
    assert_eq!(v, Verdict::Transmit(port_of(CLIENT)));
    assert_eq!(h.entry(WEB, 40000).unwrap().state, TcpState::Close);
}

#[test]
fn stray_segments_open_nothing() {
    let mut h = H::new(64);
    for (flags, reason) in [
        ("FA", DropReason::CtInvalidNew),
        ("SA", DropReason::CtInvalidNew),
        ("R", DropReason::CtInvalidNew),
        ("SF", DropReason::CtInvalidFlags),
        ("F", DropReason::CtInvalidFlags),
        ("", DropReason::CtInvalidFlags),
    ] {
        let (v, _) = h.client(WEB, 41000, flags, 1, 1, b"");
        assert_eq!(v, Verdict::Drop(reason), "{flags}");
    }
    assert!(h.p.conntrack().is_empty(), "no entry, no affinity record");
    // An ACK is picked up mid-stream (as the kernel's nf_conntrack_tcp_loose does).
    let (v, _) = h.client(WEB, 41000, "A", 1, 1, b"");
    assert!(matches!(v, Verdict::Transmit(_)));
    // The client's ACK before the server's SYN-ACK is invalid.
    let (v, _) = h.client(WEB, 41001, "S", 1000, 0, b"");
    assert!(matches!(v, Verdict::Transmit(_)));
    let (v, _) = h.client(WEB, 41001, "A", 1001, 5001, b"");
    assert_eq!(v, Verdict::Drop(DropReason::CtInvalidState));
}

#[test]
fn port_reuse_after_an_endpoint_change_goes_to_current_backends() {
    let mut h = H::new(1024);
    // 200 connections to b/c, closed by FIN (TIME_WAIT) or by RST (CLOSE).
    for sport in 50000..50200u16 {
        let b = h.connect(WEB, sport);
        if sport % 2 == 0 {
            h.client(WEB, sport, "FA", 1001, 5001, b"");
            h.backend(b, [10, 244, 1, CLIENT], sport, "FA", 5001, 1002, b"");
            let (v, _) = h.client(WEB, sport, "A", 1002, 5002, b"");
            assert!(matches!(v, Verdict::Transmit(_)));
            assert_eq!(h.entry(WEB, sport).unwrap().state, TcpState::TimeWait);
        } else {
            h.client(WEB, sport, "R", 1001, 0, b"");
            assert_eq!(h.entry(WEB, sport).unwrap().state, TcpState::Close);
        }
    }
    // The endpoints are swapped; the same ports connect again.
    h.snap = snapshot(&[5, 6], 2);
    for sport in 50000..50200u16 {
        let b = h.connect(WEB, sport);
        assert!(
            [5, 6].contains(&b),
            "port {sport} went to 10.244.1.{b}, not in the current set"
        );
    }
    assert_eq!(h.p.conntrack().counters.reopened.load(Relaxed), 200);
}

#[test]
fn an_entry_past_its_deadline_is_not_used_even_before_gc() {
    let mut h = H::new(64);
    let t = Timeouts::default();
    h.p.set_now(100);
    h.connect(WEB, 42000);
    h.client(WEB, 42000, "R", 1001, 0, b"");
    h.snap = snapshot(&[5, 6], 2);
    // CLOSE lasts 10 s: past it, a segment of the old tuple is a new flow (no GC ran).
    h.p.set_now(100 + t.tcp_close + 1);
    let flows = h.p.counters().new_flows;
    let (v, out) = h.client(WEB, 42000, "S", 9000, 0, b"");
    assert!(matches!(v, Verdict::Transmit(_)));
    assert!([5, 6].contains(&out[33]));
    assert_eq!(h.p.counters().new_flows, flows + 1);
}

#[test]
fn client_ip_affinity_is_gone_after_its_timeout() {
    let mut h = H::new(1024);
    let mut now = 1000;
    h.p.set_now(now);
    // Within the timeout (1 s): every connection keeps the first one's backend.
    let first = h.connect(STICKY, 1024);
    for sport in 1025..1040 {
        assert_eq!(h.connect(STICKY, sport), first);
    }
    // Past it each new connection is picked afresh from its whole 5-tuple.
    let mut seen = std::collections::BTreeSet::new();
    for sport in 2000..2040 {
        now += 2;
        h.p.set_now(now);
        seen.insert(h.connect(STICKY, sport));
    }
    assert!(seen.len() >= 3, "later connections spread: {seen:?}");
}
