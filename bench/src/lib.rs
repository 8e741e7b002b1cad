//! Frames and snapshots shared by the benchmarks in `benches/`.
//!
//! Design: every benchmark decides a batch of [`flowtable::BATCH_SIZE`] frames laid out as the
//! daemon lays them out (one buffer per frame, [`flowtable::packet::DEFAULT_HEADROOM`] bytes of
//! headroom). Frames are built with etherparse, independently of the code measured.

use etherparse::PacketBuilder;
use flowtable::{Snapshot, StateFile};

/// The example node's state file.
pub const STATE: &str = include_str!("../../examples/node1.toml");
/// Size of one frame buffer, as a UMEM frame.
pub const FRAME_SIZE: usize = 2048;

/// The example node's snapshot.
pub fn snapshot() -> Snapshot {
    let s = StateFile::parse(STATE).unwrap_or_else(|e| panic!("example state: {e}"));
    Snapshot::build(&s, 1).unwrap_or_else(|e| panic!("example state: {e}"))
}

/// A pod-a frame: UDP with `payload` bytes to `dst`.
pub fn pod_udp(dst: [u8; 4], payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2([2, 0, 0x0a, 0xf4, 1, 2], [2, 0, 0x0a, 0xf4, 1, 1])
        .ipv4([10, 244, 1, 2], dst, 64)
        .udp(40000, 5201);
    b.write(&mut v, &vec![0x5a; payload])
        .unwrap_or_else(|e| panic!("{e}"));
    v
}

/// A VXLAN frame from node2 carrying UDP to pod-b.
pub fn uplink_vxlan(payload: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0xff, 2], [2, 0, 0, 0, 0xff, 1])
        .ipv4([10, 244, 2, 7], [10, 244, 1, 3], 63)
        .udp(40000, 5201)
        .write(&mut inner, &vec![0x5a; payload])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut vx = vec![8, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(&inner);
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0xc6, 0x12, 0, 2], [2, 0, 0xc6, 0x12, 0, 1])
        .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .udp(50000, 8472)
        .write(&mut v, &vx)
        .unwrap_or_else(|e| panic!("{e}"));
    v
}

/// An ARP request from pod-a for its gateway.
pub fn arp_request() -> Vec<u8> {
    let a = [2, 0, 0x0a, 0xf4, 1, 2];
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&a);
    f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&a);
    f.extend_from_slice(&[10, 244, 1, 2, 0, 0, 0, 0, 0, 0, 10, 244, 1, 1]);
    f
}
