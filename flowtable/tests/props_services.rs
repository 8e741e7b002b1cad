//! Property tests for Services: random valid Service traffic interleaved with random table
//! updates (endpoints replaced, made terminating, Services removed) never panics, every frame
//! is accounted for, and every transmitted frame carries valid IPv4 and TCP/UDP/ICMP
//! checksums (verified with a sum written here, not the code under test).

#![allow(missing_docs)]

use flowtable::{Packet, Pipeline, PortId, Snapshot, StateFile, Verdict};
use proptest::prelude::*;
use std::sync::OnceLock;

const STATE: &str = include_str!("../../examples/node1.toml");

fn variants() -> &'static [Snapshot] {
    static V: OnceLock<Vec<Snapshot>> = OnceLock::new();
    V.get_or_init(|| {
        let texts = [
            STATE.to_string(),
            STATE.replace("{ ip = \"10.244.1.3\", node = \"node1\" },\n  { ip = \"10.244.2.7\", node = \"node2\" },\n]\n\n[[services]]\nname = \"kube-system/dns\"", "{ ip = \"10.244.2.30\", node = \"node2\" },\n]\n\n[[services]]\nname = \"kube-system/dns\""),
            STATE.replace("{ ip = \"10.244.2.8\", node = \"node2\" }", "{ ip = \"10.244.2.8\", node = \"node2\", ready = false, serving = true, terminating = true }"),
            STATE.split("\n[[services]]\nname = \"default/no-endpoints\"").next().unwrap().to_string(),
            STATE.split("\n# Services").next().unwrap().to_string(),
        ];
        for t in &texts[1..] {
            assert_ne!(t, STATE, "every variant changes the tables");
        }
        texts.iter().enumerate().map(|(i, t)| Snapshot::build(&StateFile::parse(t).unwrap(), i as u64 + 1).unwrap()).collect()
    })
}

fn sum_ok(data: &[u8]) -> bool {
    let mut s: u64 = 0;
    for c in data.chunks(2) {
        s += u64::from(c[0]) << 8 | u64::from(*c.get(1).unwrap_or(&0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

fn check_ip_frame(f: &[u8]) {
    assert!(f.len() >= 34 && f[12..14] == [8, 0]);
    let hl = usize::from(f[14] & 0xf) * 4;
    assert!(sum_ok(&f[14..14 + hl]), "IPv4 checksum");
    let tl = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let l4 = &f[14 + hl..14 + tl];
    match f[23] {
        1 => assert!(sum_ok(l4), "ICMP checksum"),
        6 | 17 if !(f[23] == 17 && l4[6..8] == [0, 0]) => {
            let mut p = f[26..34].to_vec();
            p.extend_from_slice(&[0, f[23]]);
            p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            p.extend_from_slice(l4);
            assert!(sum_ok(&p), "L4 checksum");
        }
        _ => {}
    }
}

fn check(f: &[u8]) {
    if f.len() < 34 || f[12..14] != [8, 0] {
        return;
    }
    if f[23] == 17 && f.len() >= 50 + 34 && f[36..38] == 8472u16.to_be_bytes() {
        let hl = usize::from(f[14] & 0xf) * 4;
        assert!(sum_ok(&f[14..14 + hl]), "outer IPv4 checksum");
        check_ip_frame(&f[50..]);
    } else {
        check_ip_frame(f);
    }
}

const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
const MAC_B: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 3];
const GW_MAC: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 1];

/// A valid frame of one of the Service paths.
fn frame(kind: u8, port: u16, flags: u8, payload: &[u8]) -> (u16, Vec<u8>) {
    use etherparse::PacketBuilder as B;
    let mut v = Vec::new();
    let tcp = |b: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
               sp: u16,
               dp: u16,
               v: &mut Vec<u8>| {
        let mut t = b.tcp(sp, dp, 1000, 1000);
        if flags & 2 != 0 {
            t = t.syn();
        }
        if flags & 0x10 != 0 {
            t = t.ack(77);
        }
        if flags & 1 != 0 {
            t = t.fin();
        }
        if flags & 4 != 0 {
            t = t.rst();
        }
        t.write(v, payload).unwrap();
    };
    match kind % 8 {
        0 => {
            tcp(
                B::ethernet2(MAC_A, GW_MAC).ipv4([10, 244, 1, 2], [10, 96, 0, 10], 64),
                port,
                80,
                &mut v,
            );
            (1, v)
        }
        1 => {
            B::ethernet2(MAC_A, GW_MAC)
                .ipv4([10, 244, 1, 2], [10, 96, 0, 53], 64)
                .udp(port, 53)
                .write(&mut v, payload)
                .unwrap();
            (1, v)
        }
        2 => {
            tcp(
                B::ethernet2(MAC_B, GW_MAC).ipv4([10, 244, 1, 3], [10, 244, 1, 2], 64),
                8080,
                port,
                &mut v,
            );
            (2, v)
        }
        3 => {
            tcp(
                B::ethernet2(MAC_A, GW_MAC).ipv4([10, 244, 1, 2], [10, 96, 0, 99], 64),
                port,
                80,
                &mut v,
            );
            (1, v)
        }
        4 => {
            B::ethernet2(MAC_A, GW_MAC)
                .ipv4([10, 244, 1, 2], [10, 96, 0, 99], 64)
                .udp(port, 80)
                .write(&mut v, payload)
                .unwrap();
            (1, v)
        }
        5 => {
            tcp(
                B::ethernet2(MAC_A, GW_MAC).ipv4([10, 244, 1, 2], [10, 96, 0, 40], 64),
                port,
                80,
                &mut v,
            );
            (1, v)
        }
        6 => {
            tcp(
                B::ethernet2([2, 0, 0xc6, 0x12, 0, 100], [2, 0, 0xc6, 0x12, 0, 1]).ipv4(
                    [198, 18, 0, 100],
                    [198, 18, 0, 1],
                    64,
                ),
                port,
                30080,
                &mut v,
            );
            (0, v)
        }
        _ => {
            let mut inner = Vec::new();
            tcp(
                B::ethernet2([2, 0, 0, 0, 0xff, 2], [2, 0, 0, 0, 0xff, 1]).ipv4(
                    [10, 244, 2, 7],
                    [10, 244, 1, 2],
                    63,
                ),
                8080,
                port,
                &mut inner,
            );
            let mut vx = vec![8, 0, 0, 0, 0, 0, 1, 0];
            vx.extend_from_slice(&inner);
            B::ethernet2([2, 0, 0xc6, 0x12, 0, 2], [2, 0, 0xc6, 0x12, 0, 1])
                .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
                .udp(40000, 8472)
                .write(&mut v, &vx)
                .unwrap();
            (0, v)
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Frame {
        kind: u8,
        port: u16,
        flags: u8,
        len: usize,
    },
    Update(usize),
    Tick(u32),
    Mangled {
        kind: u8,
        at: usize,
        x: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<u8>(), 40000u16..40016, any::<u8>(), 0usize..64).prop_map(|(kind, port, flags, len)| Op::Frame { kind, port, flags, len }),
        1 => (0usize..5).prop_map(Op::Update),
        1 => (0u32..200).prop_map(Op::Tick),
        2 => (any::<u8>(), 0usize..100, 1u8..=255).prop_map(|(kind, at, x)| Op::Mangled { kind, at, x }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn service_traffic_with_table_updates(ops in proptest::collection::vec(op(), 1..120)) {
        let vs = variants();
        let mut snap = &vs[0];
        let mut p = Pipeline::new();
        let mut now = 0u32;
        for o in ops {
            let (port, f, valid) = match o {
                Op::Update(i) => { snap = &vs[i]; continue; }
                Op::Tick(s) => { now += s; p.set_now(now); p.conntrack().gc(4096); continue; }
                Op::Frame { kind, port, flags, len } => {
                    let (pt, f) = frame(kind, port, flags, &vec![0x42; len]);
                    (pt, f, true)
                }
                Op::Mangled { kind, at, x } => {
                    let (pt, mut f) = frame(kind, 40000, 0x12, b"xyz");
                    let i = at % f.len();
                    f[i] ^= x;
                    (pt, f, false)
                }
            };
            let mut buf = vec![0u8; 256 + f.len() + 700];
            buf[256..256 + f.len()].copy_from_slice(&f);
            let mut pkt = Packet::new(&mut buf, 256, f.len(), PortId(port)).unwrap();
            let v = p.process_one(snap, &mut pkt);
            prop_assert_eq!(p.counters().received, p.counters().decided());
            if valid && matches!(v, Verdict::Transmit(_)) {
                check(pkt.data());
            }
        }
    }
}
