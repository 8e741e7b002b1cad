//! Instruction-count probe of what an open capture costs a worker per frame:
//! `valgrind --tool=callgrind --toggle-collect='*probe_tap::hook*'
//! target/release/examples/probe_tap MODE` offers 64,000 64-byte frames to the worker's
//! capture hook (`hook` here); divide the instructions by 64,000. MODE: `copy` (one capture of every
//! frame: the copy into the ring), `filtered` (a `host` filter the frame fails: parse and
//! match, no copy), `matched` (a filter the frame passes, then the copy), `closed` (no
//! session: the worker's mask test alone).
//! A reader takes the frames back between batches as `switchctl capture` does (outside the
//! collected function).
#![allow(missing_docs)]
use bench::pod_udp;
use flowtable::tap::{CaptureSpec, Filter, IfName, Point, Spec, Taps, WorkerTaps};

/// What a worker does per received frame: the mask test, then the hook if a capture wants
/// the port.
#[inline(never)]
fn hook(w: &WorkerTaps, mask: u8, ts: u64, name: IfName, frame: &[u8]) {
    if mask != 0 {
        w.capture(mask, ts, name, Point::Rx, frame, 8472);
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "copy".into());
    let filter = match mode.as_str() {
        "copy" | "closed" => "",
        "filtered" => "host 10.244.9.9",
        "matched" => "host 10.244.1.3 udp",
        other => panic!("unknown mode {other}: copy, filtered, matched, closed"),
    };
    let taps = Taps::new(1);
    let tap = (mode != "closed").then(|| {
        taps.open(Spec::Capture(CaptureSpec {
            ports: Vec::new(),
            rx: true,
            tx: true,
            filter: Filter::parse(filter).expect("filter"),
        }))
        .expect("open")
    });
    let mut w = WorkerTaps::new(0);
    w.refresh(&taps);
    let mask = w.port("veth-a").rx;
    let name = IfName::new("veth-a");
    let frame = pod_udp([10, 244, 1, 3], 18);
    let mut taken = Vec::new();
    for b in 0..1000u64 {
        for i in 0..64u64 {
            hook(&w, mask, b * 64 + i, name, &frame);
        }
        if let Some(t) = &tap {
            t.take_frames(64, &mut taken);
            for f in taken.drain(..) {
                t.recycle(f);
            }
        }
    }
    let lost = tap.as_ref().map_or(0, |t| t.lost());
    println!("{mode}: 64000 frames offered, {lost} lost");
}
