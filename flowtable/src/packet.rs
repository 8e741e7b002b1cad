//! A frame in a buffer with headroom: what the pipeline reads and rewrites.
//!
//! Design: a [`Packet`] borrows one buffer (a UMEM frame in the daemon, a plain array in
//! tests and replay) and marks the frame inside it by `start..end`. Encapsulation grows the
//! frame into the headroom in front of it and decapsulation shrinks it from the front, so
//! neither copies the payload. A packet is owned by one worker at a time; it has no interior
//! mutability and needs no synchronisation.

/// Headroom the daemon and replay reserve in front of every received frame (as XDP does).
pub const DEFAULT_HEADROOM: usize = 256;

/// A port of the switch: the uplink or one pod's interface. An index into the snapshot's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortId(pub u16);

impl PortId {
    /// The node's uplink is always port 0.
    pub const UPLINK: PortId = PortId(0);
}

/// A TCP/UDP checksum left partial for the transmitting port to finish (checksum offload):
/// the one's-complement sum from `start` to the end of the frame goes at `start + offset`.
/// Both are counted from the frame's first byte and from `start`, as AF_XDP's transmit
/// metadata (`csum_start`, `csum_offset`) counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxChecksum {
    /// Where the summed bytes begin (the L4 header), from the frame's first byte.
    pub start: u16,
    /// Where the checksum field is, from `start` (16 for TCP, 6 for UDP).
    pub offset: u16,
}

/// One frame inside a buffer that may have room before and after it.
#[derive(Debug)]
pub struct Packet<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    /// The port the frame arrived on.
    pub port: PortId,
    tx_checksum: Option<TxChecksum>,
}

impl<'a> Packet<'a> {
    /// A packet whose frame is `buf[start..start + len]`; `None` if that is out of bounds.
    #[inline]
    pub fn new(buf: &'a mut [u8], start: usize, len: usize, port: PortId) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > buf.len() {
            return None;
        }
        Some(Packet {
            buf,
            start,
            end,
            port,
            tx_checksum: None,
        })
    }

    /// The checksum the pipeline left for the transmitting port to finish, if any (only when
    /// offload is on: [`Pipeline::set_tx_checksum_offload`](crate::Pipeline::set_tx_checksum_offload)).
    #[inline]
    pub fn tx_checksum(&self) -> Option<TxChecksum> {
        self.tx_checksum
    }

    /// Records (or clears) the checksum left for the transmitting port.
    #[inline]
    pub(crate) fn set_tx_checksum(&mut self, c: Option<TxChecksum>) {
        self.tx_checksum = c;
    }

    /// The frame's bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The frame's bytes, mutable.
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Frame length.
    #[inline]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True for an empty frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Offset of the frame in its buffer (where a transmit descriptor must point).
    #[inline]
    pub fn offset(&self) -> usize {
        self.start
    }

    /// Free bytes in front of the frame.
    #[inline]
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// The bytes in front of the frame (its headroom), mutable: where a port's transmit
    /// metadata goes.
    #[inline]
    pub fn headroom_mut(&mut self) -> &mut [u8] {
        &mut self.buf[..self.start]
    }

    /// Free bytes after the frame.
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.end
    }

    /// Grows the frame by `n` bytes at the front (contents of the new bytes unspecified).
    #[inline]
    pub fn push_front(&mut self, n: usize) -> bool {
        if n > self.start {
            return false;
        }
        self.start -= n;
        true
    }

    /// Removes `n` bytes from the front.
    #[inline]
    pub fn pull_front(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.start += n;
        true
    }

    /// Sets the frame length (growing into tailroom or truncating).
    #[inline]
    pub fn set_len(&mut self, len: usize) -> bool {
        match self.start.checked_add(len) {
            Some(end) if end <= self.buf.len() => {
                self.end = end;
                true
            }
            _ => false,
        }
    }

    /// Largest length the frame can take without moving its start.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The buffer from the frame's start to the buffer's end (frame plus tailroom).
    #[inline]
    pub fn with_tailroom_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_shrink() {
        let mut b = [0u8; 100];
        b[10] = 7;
        let mut p = Packet::new(&mut b, 10, 20, PortId(3)).unwrap();
        assert_eq!(
            (p.len(), p.headroom(), p.tailroom(), p.capacity()),
            (20, 10, 70, 90)
        );
        assert_eq!(p.data()[0], 7);
        assert!(!p.push_front(11));
        assert!(p.push_front(10));
        assert_eq!((p.len(), p.offset()), (30, 0));
        assert_eq!(p.data()[10], 7);
        assert!(p.pull_front(10));
        assert!(!p.pull_front(21));
        assert!(p.set_len(90));
        assert!(!p.set_len(91));
        assert!(p.set_len(0) && p.is_empty());
        assert!(Packet::new(&mut b, 90, 11, PortId(0)).is_none());
        assert!(Packet::new(&mut b, usize::MAX, 2, PortId(0)).is_none());
    }
}
