//! Instruction-count probe: `valgrind --tool=callgrind target/release/examples/probe PATH`
//! decides 1000 batches of one path; divide the pipeline's instruction count by 64,000.
//! (Wall time on a shared VM is noisy; instruction counts are not.) A third argument
//! `services` uses the example's Services too.
#![allow(missing_docs)]
use bench::*;
use flowtable::packet::DEFAULT_HEADROOM;
use flowtable::{Packet, Pipeline, PortId, Verdict, BATCH_SIZE};
use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "local".into());
    let (frame, port) = match path.as_str() {
        "local" => (pod_udp([10, 244, 1, 3], 18), PortId(1)),
        "encap" => (pod_udp([10, 244, 2, 7], 18), PortId(1)),
        "decap" => (uplink_vxlan(18), PortId::UPLINK),
        "arp" => (arp_request(), PortId(1)),
        "noop" => (pod_udp([10, 244, 1, 3], 18), PortId(1)),
        other => panic!("unknown path {other}: local, encap, decap, arp"),
    };
    let iters: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let snap = if std::env::args().nth(3).as_deref() == Some("services") {
        snapshot()
    } else {
        snapshot_without_services()
    };
    let mut p = Pipeline::new();
    let len = frame.len();
    let mut bufs = vec![[0u8; FRAME_SIZE]; BATCH_SIZE];
    let mut t_proc = std::time::Duration::ZERO;
    for _ in 0..iters {
        for b in bufs.iter_mut() {
            b[DEFAULT_HEADROOM..DEFAULT_HEADROOM + len].copy_from_slice(&frame);
        }
        let t = Instant::now();
        let mut it = bufs.iter_mut();
        let mut pkts: [Packet<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
            Packet::new(it.next().unwrap(), DEFAULT_HEADROOM, len, port).unwrap()
        });
        let mut v = [Verdict::default(); BATCH_SIZE];
        if path != "noop" {
            p.process(&snap, &mut pkts, &mut v);
        }
        std::hint::black_box(&v);
        t_proc += t.elapsed();
    }
    println!(
        "{path}: {:.1} ns/packet (wall, noisy)",
        t_proc.as_nanos() as f64 / (iters * BATCH_SIZE) as f64
    );
}
