//! Instruction-count probe for the established Service path (see probe.rs).
#![allow(missing_docs)]
use bench::*;
use flowtable::packet::DEFAULT_HEADROOM;
use flowtable::{Packet, Pipeline, PortId, Snapshot, StateFile, Verdict, BATCH_SIZE};
fn main() {
    let iters: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let snap = Snapshot::build(&StateFile::parse(&services_state(10)).unwrap(), 1).unwrap();
    let mut p = Pipeline::new();
    let frames: Vec<Vec<u8>> = (0..BATCH_SIZE)
        .map(|k| pod_tcp_to(service_ip(k % 5 * 2), 30000 + k as u16, true))
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
        std::hint::black_box(&v);
    }
}
