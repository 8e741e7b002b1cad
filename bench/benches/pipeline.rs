//! Packet rate of the pipeline per path, at batch 64: `cargo bench -p bench --bench pipeline`.
//!
//! Each iteration decides one batch of 64 frames (the daemon's batch size) laid out with
//! 256 bytes of headroom; the frames are restored between iterations outside the timing, so
//! they are in cache as a copy-mode receive leaves them.
//! Criterion reports time per batch and elements (packets) per second; ns per packet is the
//! batch time divided by 64.

#![allow(missing_docs)]

use bench::{arp_request, pod_udp, snapshot, snapshot_without_services, uplink_vxlan, FRAME_SIZE};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowtable::packet::DEFAULT_HEADROOM;
use flowtable::Snapshot;
use flowtable::{Packet, Pipeline, PortId, Verdict, BATCH_SIZE};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn batch_of(frame: &[u8]) -> Vec<[u8; FRAME_SIZE]> {
    let mut b = [0u8; FRAME_SIZE];
    b[DEFAULT_HEADROOM..DEFAULT_HEADROOM + frame.len()].copy_from_slice(frame);
    vec![b; BATCH_SIZE]
}

fn bench_path(
    c: &mut Criterion,
    snap: &Snapshot,
    name: &str,
    frame: Vec<u8>,
    port: PortId,
    expect: Verdict,
) {
    let snap = snap.clone();
    let mut pipeline = Pipeline::new();
    let template = batch_of(&frame);
    let len = frame.len();
    // Sanity: the path measured is the path named.
    {
        let mut bufs = template.clone();
        let mut it = bufs.iter_mut();
        let mut pkts: [Packet<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
            Packet::new(it.next().expect("batch"), DEFAULT_HEADROOM, len, port).expect("fits")
        });
        let mut v = [Verdict::default(); BATCH_SIZE];
        pipeline.process(&snap, &mut pkts, &mut v);
        assert!(v.iter().all(|x| *x == expect), "{name}: {:?}", v[0]);
    }
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));
    let mut bufs = template.clone();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Restore the frames (untimed), as a receive would have written them.
                for buf in bufs.iter_mut() {
                    buf[DEFAULT_HEADROOM..DEFAULT_HEADROOM + len].copy_from_slice(&frame);
                }
                let start = Instant::now();
                let mut it = bufs.iter_mut();
                let mut pkts: [Packet<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
                    Packet::new(it.next().expect("batch"), DEFAULT_HEADROOM, len, port)
                        .expect("fits")
                });
                let mut v = [Verdict::default(); BATCH_SIZE];
                pipeline.process(black_box(&snap), &mut pkts, &mut v);
                black_box(v);
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

fn paths(c: &mut Criterion) {
    let pod_a = PortId(1);
    for (tag, snap) in [
        ("", snapshot_without_services()),
        ("_with_services", snapshot()),
    ] {
        let name = |n: &str| format!("{n}{tag}");
        bench_path(
            c,
            &snap,
            &name("local_delivery_64B"),
            pod_udp([10, 244, 1, 3], 18),
            pod_a,
            Verdict::Transmit(PortId(2)),
        );
        bench_path(
            c,
            &snap,
            &name("vxlan_encap_64B"),
            pod_udp([10, 244, 2, 7], 18),
            pod_a,
            Verdict::Transmit(PortId::UPLINK),
        );
        bench_path(
            c,
            &snap,
            &name("vxlan_decap_114B"),
            uplink_vxlan(18),
            PortId::UPLINK,
            Verdict::Transmit(PortId(2)),
        );
        bench_path(
            c,
            &snap,
            &name("arp_reply"),
            arp_request(),
            pod_a,
            Verdict::Transmit(pod_a),
        );
        bench_path(
            c,
            &snap,
            &name("local_delivery_1500B"),
            pod_udp([10, 244, 1, 3], 1472),
            pod_a,
            Verdict::Transmit(PortId(2)),
        );
        bench_path(
            c,
            &snap,
            &name("vxlan_encap_1450B"),
            pod_udp([10, 244, 2, 7], 1422),
            pod_a,
            Verdict::Transmit(PortId::UPLINK),
        );
    }
}

criterion_group!(benches, paths);
criterion_main!(benches);
