//! Prototype of a GSO-keeping pod port (issue 17, item 4): a packet socket with
//! `PACKET_VNET_HDR` (`switch::vnet`) on each of two interfaces that have no XDP program,
//! forwarding every frame of one to the other unchanged, virtio-net header included, so a
//! pod's 64 KB GSO packets and their partial checksums cross whole (one receive and one send
//! per 64 KB instead of per MTU-sized frame).
//!
//! `vnet_port IF_A IF_B [SECONDS]` (root): the interfaces must not also be handled by the
//! kernel's stack (`bench/vnet-proto` puts a tc ingress drop on them). One thread: it spins
//! 50 us after its last frame, then sleeps in poll(2). Prints frames, bytes, the largest frame
//! and GSO frames per direction at exit (SIGTERM or the time). A measurement tool with no
//! pipeline, not switchd's code.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switch::vnet::{poll_readable, VnetHeader, VnetSocket, MAX_VNET_FRAME, VNET_HDR_LEN};

#[derive(Default)]
struct Dir {
    frames: u64,
    gso: u64,
    bytes: u64,
    largest: usize,
    send_errors: u64,
}

/// Moves up to 64 frames waiting on `from` to `to`; returns how many.
fn pump(from: &VnetSocket, to: &VnetSocket, buf: &mut [u8], d: &mut Dir) -> usize {
    let mut n = 0;
    while n < 64 {
        let len = match from.recv(buf) {
            Ok(Some(len)) if len > VNET_HDR_LEN => len,
            Ok(_) => break,
            Err(e) => panic!("recv: {e}"),
        };
        if to.send(&buf[..len]).is_err() {
            d.send_errors += 1;
        }
        if VnetHeader::parse(buf).is_some_and(|h| h.gso_type != 0) {
            d.gso += 1;
        }
        d.frames += 1;
        d.bytes += (len - VNET_HDR_LEN) as u64;
        d.largest = d.largest.max(len - VNET_HDR_LEN);
        n += 1;
    }
    n
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(a), Some(b)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: vnet_port IF_A IF_B [SECONDS]");
        std::process::exit(2);
    };
    let (a, b) = (
        VnetSocket::open(a, 32 << 20).expect("open IF_A"),
        VnetSocket::open(b, 32 << 20).expect("open IF_B"),
    );
    let secs: u64 = args.get(3).map_or(3600, |s| s.parse().expect("seconds"));
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone()).expect("signal");
    let end = Instant::now() + Duration::from_secs(secs);
    let mut buf = vec![0u8; MAX_VNET_FRAME];
    let (mut ab, mut ba) = (Dir::default(), Dir::default());
    let mut busy = Instant::now();
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        let moved = pump(&a, &b, &mut buf, &mut ab) + pump(&b, &a, &mut buf, &mut ba);
        if moved > 0 {
            busy = Instant::now();
        } else if busy.elapsed() > Duration::from_micros(50) {
            poll_readable(&[a.fd(), b.fd()], 100);
        }
    }
    for (name, d) in [("a->b", &ab), ("b->a", &ba)] {
        println!(
            "{name}: {} frames ({} GSO), {} bytes, largest {} bytes, {} send errors",
            d.frames, d.gso, d.bytes, d.largest, d.send_errors
        );
    }
}
