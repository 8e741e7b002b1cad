//! The bounded, lossy rings a worker fills for one tap session: captured frames and events.
//!
//! Design: a frame ring is two lock-free queues of the same boxed buffers, allocated when the
//! session opens: the worker takes a free buffer, copies the frame into it (no allocation: the
//! buffer's capacity is the snap length) and queues it full; the reader takes full buffers
//! and gives them back. No free buffer means the reader is behind: the frame is lost and
//! counted, and the worker goes on. An event ring is one queue of plain values.
//!
//! Thread-safety: one producer (the session's worker) and one consumer (its reader) per ring;
//! `ArrayQueue` is lock-free for both, the counters are atomics.

use super::{Event, IfName, Point};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{AtomicU64, Ordering};

/// One captured frame.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    /// When the worker took it, in nanoseconds since the epoch.
    pub ts_ns: u64,
    /// The worker that took it (whose ring it goes back to).
    pub worker: u16,
    /// The port it was received on or sent to.
    pub port: IfName,
    /// Received or sent.
    pub point: Point,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// Its first `snaplen` bytes.
    pub data: Vec<u8>,
}

/// A worker's captured frames for one session.
#[derive(Debug)]
pub struct FrameRing {
    free: ArrayQueue<Box<Captured>>,
    full: ArrayQueue<Box<Captured>>,
    lost: AtomicU64,
    snaplen: usize,
}

impl FrameRing {
    /// A ring of `slots` buffers of `snaplen` bytes each (both at least 1).
    pub fn new(slots: usize, snaplen: usize) -> FrameRing {
        let slots = slots.max(1);
        let snaplen = snaplen.max(1);
        let free = ArrayQueue::new(slots);
        for _ in 0..slots {
            let b = Box::new(Captured {
                data: Vec::with_capacity(snaplen),
                ..Captured::default()
            });
            let _ = free.push(b);
        }
        FrameRing {
            free,
            full: ArrayQueue::new(slots),
            lost: AtomicU64::new(0),
            snaplen,
        }
    }

    /// Copies `frame` in (its first `snaplen` bytes); false, and counted lost, if the ring
    /// is full.
    pub fn offer(&self, ts_ns: u64, worker: u16, port: IfName, point: Point, frame: &[u8]) -> bool {
        let Some(mut b) = self.free.pop() else {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        b.ts_ns = ts_ns;
        b.worker = worker;
        b.port = port;
        b.point = point;
        b.orig_len = frame.len() as u32;
        b.data.clear();
        b.data
            .extend_from_slice(&frame[..frame.len().min(self.snaplen)]);
        // As many buffers as places: a buffer taken from `free` always fits in `full`.
        if let Err(b) = self.full.push(b) {
            let _ = self.free.push(b);
            self.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The oldest captured frame, if any.
    pub fn take(&self) -> Option<Box<Captured>> {
        self.full.pop()
    }

    /// Gives a buffer from [`take`](Self::take) back for reuse.
    pub fn recycle(&self, b: Box<Captured>) {
        let _ = self.free.push(b);
    }

    /// Frames lost because the ring was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

/// A worker's events for one session.
#[derive(Debug)]
pub struct EventRing {
    q: ArrayQueue<Event>,
    lost: AtomicU64,
}

impl EventRing {
    /// A ring of `slots` events (at least 1).
    pub fn new(slots: usize) -> EventRing {
        EventRing {
            q: ArrayQueue::new(slots.max(1)),
            lost: AtomicU64::new(0),
        }
    }

    /// Queues `e`; false, and counted lost, if the ring is full.
    pub fn offer(&self, e: Event) -> bool {
        if self.q.push(e).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The oldest event, if any.
    pub fn take(&self) -> Option<Event> {
        self.q.pop()
    }

    /// Events lost because the ring was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_frame_ring_loses_and_counts_and_recovers_once_read() {
        let r = FrameRing::new(2, 4);
        let p = IfName::new("veth0");
        assert!(r.offer(1, 0, p, Point::Rx, b"abcdefgh"));
        assert!(r.offer(2, 0, p, Point::Tx, b"xy"));
        assert!(!r.offer(3, 0, p, Point::Rx, b"z"));
        assert_eq!(r.lost(), 1);
        let a = r.take().unwrap();
        assert_eq!(
            (a.ts_ns, a.orig_len, &a.data[..]),
            (1, 8, &b"abcd"[..]),
            "cut at snaplen"
        );
        assert_eq!(a.port.as_str(), "veth0");
        let cap = a.data.capacity();
        r.recycle(a);
        assert!(r.offer(4, 0, p, Point::Rx, b"1234"));
        assert_eq!(r.take().unwrap().point, Point::Tx, "in order");
        let c = r.take().unwrap();
        assert_eq!(
            (c.ts_ns, c.data.capacity()),
            (4, cap),
            "the buffer was reused"
        );
        assert!(r.take().is_none());
    }

    #[test]
    fn a_full_event_ring_loses_and_counts() {
        let r = EventRing::new(1);
        assert!(r.offer(Event::default()));
        assert!(!r.offer(Event::default()));
        assert_eq!(r.lost(), 1);
        assert!(r.take().is_some());
        assert!(r.take().is_none());
    }
}
