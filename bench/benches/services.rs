//! Service NAT cost per packet at batch 64: `cargo bench -p bench --bench services`.
//!
//! Paths: a new flow (backend pick + conntrack insert + DNAT), an established flow to a local
//! backend (conntrack hit with TCP state and window tracking + DNAT: a data segment of a
//! connection whose handshake went through the pipeline), reverse NAT of the backend's
//! reply, and an established flow to a backend on another node (DNAT + VXLAN
//! encapsulation; the backend's handshake segments come back over VXLAN). Each at 10 and 10,000 Services
//! (10 endpoints each); the established paths also with 1,000,000 other connections tracked.
//! Frames are restored between iterations outside the timing.

#![allow(missing_docs)]

use bench::{
    backend_tcp_seg, pod_tcp_seg, pod_tcp_to, remote_backend_tcp_seg, service_ip, services_state,
    FRAME_SIZE,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flowtable::conntrack::{Conntrack, Dir, FlowKey, NewFlow, Segment, Timeouts};
use flowtable::packet::DEFAULT_HEADROOM;
use flowtable::{Packet, Pipeline, PortId, Snapshot, StateFile, Verdict, BATCH_SIZE};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POD_A: PortId = PortId(1);

fn snapshot(n: usize) -> Snapshot {
    let text = services_state(n);
    let state = StateFile::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    Snapshot::build(&state, 1).unwrap_or_else(|e| panic!("{e}"))
}

/// Decides `frames` (in batches of 64) once, returning verdicts; untimed setup helper.
fn run_once(p: &mut Pipeline, snap: &Snapshot, port: PortId, frame: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = [0u8; FRAME_SIZE];
    buf[DEFAULT_HEADROOM..DEFAULT_HEADROOM + frame.len()].copy_from_slice(frame);
    let mut pkt = Packet::new(&mut buf, DEFAULT_HEADROOM, frame.len(), port)
        .unwrap_or_else(|| panic!("fits"));
    let v = p.process_one(snap, &mut pkt);
    (v, pkt.data().to_vec())
}

/// Times batches built from `frames` (cycled, 64 per batch, each with its own port).
fn time_batches(
    p: &mut Pipeline,
    snap: &Snapshot,
    frames: &[(PortId, Vec<u8>)],
    iters: u64,
    mut between: impl FnMut(&mut Pipeline, u64),
) -> Duration {
    let mut bufs = vec![[0u8; FRAME_SIZE]; BATCH_SIZE];
    let mut total = Duration::ZERO;
    let mut next = 0usize;
    for it in 0..iters {
        between(p, it);
        let mut meta = [(PortId(0), 0usize); BATCH_SIZE];
        for (b, m) in bufs.iter_mut().zip(meta.iter_mut()) {
            let (port, f) = &frames[next % frames.len()];
            next += 1;
            b[DEFAULT_HEADROOM..DEFAULT_HEADROOM + f.len()].copy_from_slice(f);
            *m = (*port, f.len());
        }
        let start = Instant::now();
        let mut it_b = bufs.iter_mut().zip(meta.iter());
        let mut pkts: [Packet<'_>; BATCH_SIZE] = std::array::from_fn(|_| {
            let (b, (port, len)) = it_b.next().unwrap_or_else(|| panic!("batch"));
            Packet::new(b, DEFAULT_HEADROOM, *len, *port).unwrap_or_else(|| panic!("fits"))
        });
        let mut v = [Verdict::default(); BATCH_SIZE];
        p.process(black_box(snap), &mut pkts, &mut v);
        black_box(v);
        total += start.elapsed();
    }
    total
}

/// Client and backend initial sequence numbers of the benchmark's connections.
const CLIENT_ISN: u32 = 1000;
const SERVER_ISN: u32 = 5000;

/// A segment as conntrack reads it (for the prefill, which bypasses the pipeline).
fn seg(flags: u8, seq: u32, ack: u32) -> Segment {
    Segment {
        flags,
        seq,
        ack,
        win: 64240,
        ..Segment::default()
    }
}

/// Fills the table with `n` unrelated connections that completed their handshake
/// (assured, so never evicted).
fn prefill(ct: &Conntrack, n: usize) {
    for i in 0..n as u32 {
        let o = FlowKey {
            src: Ipv4Addr::from(0x0a00_0000 + (i >> 12)),
            dst: Ipv4Addr::new(10, 96, 0, 1),
            sport: (i & 0xfff) as u16 + 1024,
            dport: 80,
            proto: 6,
        };
        let t = FlowKey {
            dst: Ipv4Addr::new(10, 244, 2, 10),
            dport: 8080,
            ..o
        };
        let flow = NewFlow {
            tcp: Some(seg(0x02, CLIENT_ISN, 0)),
            ..NewFlow::new(o, t)
        };
        if let Ok((e, v)) = ct.insert_flow(&flow) {
            let synack = seg(0x12, SERVER_ISN, CLIENT_ISN + 1);
            ct.track(e, v, Dir::Reply, Some(&synack));
            let ack = seg(0x10, CLIENT_ISN + 1, SERVER_ISN + 1);
            ct.track(e, v, Dir::Original, Some(&ack));
            ct.track(e, v, Dir::Original, Some(&ack));
        }
    }
}

fn bench_scale(c: &mut Criterion, services: usize, tracked: usize) {
    let snap = snapshot(services);
    let tag = format!(
        "{services}svc_{}conns",
        if tracked >= 1_000_000 {
            "1M".to_string()
        } else {
            tracked.to_string()
        }
    );
    let mut g = c.benchmark_group("services");
    g.throughput(Throughput::Elements(BATCH_SIZE as u64));

    // Established flows: 64 flows from pod-a, to local-endpoint Services (even) and to
    // remote-endpoint Services (odd), spread over the Service range.
    let pick = |k: usize, parity: usize| -> usize {
        ((k * (services / 64).max(1)) & !1 | parity) % services.max(2)
    };
    let ct = Arc::new(Conntrack::new(
        tracked.max(4096) + 8192,
        Timeouts::default(),
    ));
    prefill(&ct, tracked);
    let mut p = Pipeline::with_conntrack(Arc::clone(&ct));
    let mut local_frames = Vec::new();
    let mut replies = Vec::new();
    let mut remote_frames = Vec::new();
    for k in 0..BATCH_SIZE {
        // A local backend: the whole handshake through the pipeline, then data both ways.
        let svc = pick(k, 0);
        let (vip, sport) = (service_ip(svc), 30000 + k as u16);
        let syn = pod_tcp_seg(vip, sport, "S", CLIENT_ISN, 0, 0);
        let (v, out) = run_once(&mut p, &snap, POD_A, &syn);
        assert!(
            matches!(v, Verdict::Transmit(port) if port != PortId::UPLINK),
            "{v:?}"
        );
        let backend = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        let Verdict::Transmit(bport) = v else {
            unreachable!()
        };
        let synack = backend_tcp_seg(backend, sport, "SA", SERVER_ISN, CLIENT_ISN + 1, 0);
        assert_eq!(
            run_once(&mut p, &snap, bport, &synack).0,
            Verdict::Transmit(POD_A)
        );
        let ack = pod_tcp_seg(vip, sport, "A", CLIENT_ISN + 1, SERVER_ISN + 1, 0);
        assert_eq!(
            run_once(&mut p, &snap, POD_A, &ack).0,
            Verdict::Transmit(bport)
        );
        let data = pod_tcp_seg(vip, sport, "PA", CLIENT_ISN + 1, SERVER_ISN + 1, 6);
        local_frames.push((POD_A, data));
        let reply = backend_tcp_seg(backend, sport, "PA", SERVER_ISN + 1, CLIENT_ISN + 7, 6);
        replies.push((bport, reply));
        // A remote backend: the same, its segments over VXLAN.
        let svc = pick(k, 1);
        let (vip, sport) = (service_ip(svc), 31000 + k as u16);
        let syn = pod_tcp_seg(vip, sport, "S", CLIENT_ISN, 0, 0);
        let (v, out) = run_once(&mut p, &snap, POD_A, &syn);
        assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
        let backend = Ipv4Addr::new(out[80], out[81], out[82], out[83]);
        let synack = remote_backend_tcp_seg(backend, sport, "SA", SERVER_ISN, CLIENT_ISN + 1, 0);
        assert_eq!(
            run_once(&mut p, &snap, PortId::UPLINK, &synack).0,
            Verdict::Transmit(POD_A)
        );
        let ack = pod_tcp_seg(vip, sport, "A", CLIENT_ISN + 1, SERVER_ISN + 1, 0);
        assert_eq!(
            run_once(&mut p, &snap, POD_A, &ack).0,
            Verdict::Transmit(PortId::UPLINK)
        );
        let data = pod_tcp_seg(vip, sport, "PA", CLIENT_ISN + 1, SERVER_ISN + 1, 6);
        remote_frames.push((POD_A, data));
    }
    for ((port, f), (_, d)) in replies.iter().zip(&local_frames) {
        assert_eq!(
            run_once(&mut p, &snap, POD_A, d).0,
            Verdict::Transmit(*port)
        );
        assert_eq!(
            run_once(&mut p, &snap, *port, f).0,
            Verdict::Transmit(POD_A),
            "reply translated back"
        );
    }
    g.bench_function(format!("established_dnat_local/{tag}"), |b| {
        b.iter_custom(|n| time_batches(&mut p, &snap, &local_frames, n, |_, _| {}))
    });
    g.bench_function(format!("reverse_nat/{tag}"), |b| {
        b.iter_custom(|n| time_batches(&mut p, &snap, &replies, n, |_, _| {}))
    });
    g.bench_function(format!("established_dnat_vxlan_encap/{tag}"), |b| {
        b.iter_custom(|n| time_batches(&mut p, &snap, &remote_frames, n, |_, _| {}))
    });

    if tracked < 1_000_000 {
        // New flows: every packet a SYN of a flow never seen; the table is renewed (untimed)
        // before it fills.
        let new_frames: Vec<(PortId, Vec<u8>)> = (0..16384u32)
            .map(|i| {
                (
                    POD_A,
                    pod_tcp_to(
                        service_ip(((i as usize) * 7) % services),
                        1024 + (i % 60000) as u16,
                        true,
                    ),
                )
            })
            .collect();
        let mut fresh =
            Pipeline::with_conntrack(Arc::new(Conntrack::new(1 << 16, Timeouts::default())));
        g.bench_function(format!("new_flow_dnat/{services}svc"), |b| {
            b.iter_custom(|n| {
                time_batches(&mut fresh, &snap, &new_frames, n, |p, it| {
                    if it % (16384 / BATCH_SIZE as u64) == 0 {
                        *p = Pipeline::with_conntrack(Arc::new(Conntrack::new(
                            1 << 16,
                            Timeouts::default(),
                        )));
                    }
                })
            })
        });
    }
    g.finish();
    if services == 10 && tracked < 1_000_000 {
        println!(
            "conntrack memory: {} bytes per connection",
            ct.bytes_per_entry()
        );
    }
}

fn services(c: &mut Criterion) {
    bench_scale(c, 10, 0);
    bench_scale(c, 10_000, 0);
    bench_scale(c, 10_000, 1_000_000);
}

/// Building one Maglev table as a Service's apply does: 10 backends (509 entries), 100 (4093)
/// and 1000 (16381, the default cap); a big apply builds one per Service port. Each iteration
/// builds another Service's table (4096 backend sets in turn): with a few sets over and over
/// the branch predictor learns their probe sequences, which no apply lets it do (with 64 sets
/// the 10-backend table measured 3.4 us, with 4096 the 6.6 us it takes in an apply).
fn maglev(c: &mut Criterion) {
    let mut g = c.benchmark_group("maglev build");
    for n in [10usize, 100, 1000] {
        let sets: Vec<Vec<(Ipv4Addr, u16)>> = (0..4096u32)
            .map(|k| {
                (0..n as u32)
                    .map(|i| (Ipv4Addr::from(0x0a00_0000 + (k << 16) + i * 7), 8080))
                    .collect()
            })
            .collect();
        let size = flowtable::services::table_size(n, flowtable::maglev::DEFAULT_TABLE_SIZE);
        let mut k = 0;
        g.bench_function(format!("{n} backends, {size} entries"), |b| {
            b.iter(|| {
                k = (k + 1) % sets.len();
                flowtable::maglev::Maglev::build(black_box(&sets[k]), size)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, services, maglev);
criterion_main!(benches);
