//! Instruction-count probe for the established Service path (see probe.rs): 64 connections
//! to local backends whose handshakes went through the pipeline, then data segments of
//! theirs (flow-cache hit, TCP state and window tracking, DNAT), batch after batch.
#![allow(missing_docs)]
use bench::*;
use flowtable::packet::DEFAULT_HEADROOM;
use flowtable::{Packet, Pipeline, PortId, Snapshot, StateFile, Verdict, BATCH_SIZE};

fn once(p: &mut Pipeline, snap: &Snapshot, port: PortId, f: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = [0u8; FRAME_SIZE];
    buf[DEFAULT_HEADROOM..DEFAULT_HEADROOM + f.len()].copy_from_slice(f);
    let mut pkt = Packet::new(&mut buf, DEFAULT_HEADROOM, f.len(), port).unwrap();
    let v = p.process_one(snap, &mut pkt);
    (v, pkt.data().to_vec())
}

fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let snap = Snapshot::build(&StateFile::parse(&services_state(10)).unwrap(), 1).unwrap();
    let mut p = Pipeline::new();
    let frames: Vec<Vec<u8>> = (0..BATCH_SIZE)
        .map(|k| {
            let (vip, sport) = (service_ip(k % 5 * 2), 30000 + k as u16);
            let (v, out) = once(
                &mut p,
                &snap,
                PortId(1),
                &pod_tcp_seg(vip, sport, "S", 1000, 0, 0),
            );
            let Verdict::Transmit(bport) = v else {
                panic!("SYN: {v:?}")
            };
            let backend = std::net::Ipv4Addr::new(out[30], out[31], out[32], out[33]);
            let synack = backend_tcp_seg(backend, sport, "SA", 5000, 1001, 0);
            assert_eq!(
                once(&mut p, &snap, bport, &synack).0,
                Verdict::Transmit(PortId(1))
            );
            let ack = pod_tcp_seg(vip, sport, "A", 1001, 5001, 0);
            assert_eq!(
                once(&mut p, &snap, PortId(1), &ack).0,
                Verdict::Transmit(bport)
            );
            pod_tcp_seg(vip, sport, "PA", 1001, 5001, 6)
        })
        .collect();
    let mut bufs = vec![[0u8; FRAME_SIZE]; BATCH_SIZE];
    for _ in 0..iters {
        for (b, f) in bufs.iter_mut().zip(&frames) {
            b[DEFAULT_HEADROOM..DEFAULT_HEADROOM + f.len()].copy_from_slice(f);
        }
        let mut it = bufs.iter_mut().zip(&frames);
        let mut pkts: [Packet<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
            let (b, f) = it.next().unwrap();
            Packet::new(b, DEFAULT_HEADROOM, f.len(), PortId(1)).unwrap()
        });
        let mut v = [Verdict::default(); BATCH_SIZE];
        p.process(&snap, &mut pkts, &mut v);
        assert!(v.iter().all(|v| matches!(v, Verdict::Transmit(_))), "{v:?}");
        std::hint::black_box(&v);
    }
}
