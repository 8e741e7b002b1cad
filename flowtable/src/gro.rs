//! Receive coalescing for ports that take GSO packets (vnet pod ports): consecutive TCP
//! segments of one flow, as a batch brings them (decapsulated from VXLAN, or from a port that
//! cannot keep GSO), joined into one packet of up to 64 KB that the port hands to the pod
//! whole with a segmentation request, as the kernel's GRO joins them before its stack.
//!
//! Design: a [`Coalescer`] builds one packet in a buffer of its own. [`Coalescer::start`]
//! takes a segment that may begin one (IPv4 without options, not a fragment, TCP with payload,
//! ACK and no other flag, a valid checksum or one left partial); [`Coalescer::push`] appends
//! a segment only where it continues the packet exactly: the same Ethernet header, the same
//! IPv4 header but for length, identification (consecutive unless DF) and checksum, the same
//! TCP header but for the sequence number (the next byte) and PSH, no more payload than the
//! first segment's (a shorter one, or one with PSH, ends the packet), 65,535 bytes of IPv4 at
//! most. [`Coalescer::finish`] hands the packet over: one segment as it came, several as one
//! frame whose IPv4 length and header checksum are set and whose TCP checksum is left partial
//! (the pseudo-header sum for the whole length: the receiving stack takes it as verified,
//! as it takes what the kernel's GRO built) with the segmentation a sender would have asked
//! for ([`Joined`]).
//!
//! A segment whose checksum is wrong is never joined (it goes on alone, for the pod's stack
//! to drop and count); nothing is changed in what the pod would have received but the framing.
//! Pure functions over byte slices and one owned buffer; no I/O. Thread-safety: a
//! `Coalescer` belongs to one worker.

use crate::wire::checksum;
use crate::wire::ethernet::HEADER_LEN as ETH_LEN;
use crate::wire::tcp::flags::{ACK, PSH};

/// Offset of the IPv4 header, and of the TCP header behind a 20-byte IPv4 header.
const IP: usize = ETH_LEN;
const TCP: usize = ETH_LEN + 20;
/// The most IPv4 bytes a joined packet holds.
const MAX_IP_LEN: usize = 65_535;
/// DF in the IPv4 flags byte.
const DF: u8 = 0x40;

/// What [`Coalescer::finish`] hands over.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined<'a> {
    /// The frame: Ethernet, IPv4 and TCP headers, then every segment's payload.
    pub frame: &'a [u8],
    /// How many segments it was made of (1: the segment as it came).
    pub segments: u16,
    /// Payload bytes per segment (the first segment's): the segmentation to ask for.
    pub gso_size: u16,
    /// Length of the headers (Ethernet, IPv4, TCP).
    pub hdr_len: u16,
    /// Where the TCP header begins and where its checksum is from there (`Some` when the
    /// checksum is left partial: always for several segments, for one as it came).
    pub partial: Option<(u16, u16)>,
}

/// Why [`Coalescer::push`] did or did not take a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Appended; the packet may take more.
    Joined,
    /// Appended, and the packet is complete (PSH, or less payload than the first segment's,
    /// or not a byte more fits): finish it now.
    Complete,
    /// Not this packet's: finish it first (the segment may start the next one).
    Other,
}

/// One TCP packet being joined from segments.
#[derive(Debug)]
pub struct Coalescer {
    buf: Box<[u8]>,
    /// Bytes in `buf` (0: nothing open).
    len: usize,
    hdr_len: usize,
    mss: usize,
    segments: u16,
    next_seq: u32,
    next_id: u16,
    partial: bool,
    /// No more may be appended (a short segment or PSH came).
    closed: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

/// A segment that may be joined: its header length and payload length.
fn candidate(frame: &[u8], partial: bool) -> Option<(usize, usize)> {
    if frame.len() < TCP + 20 || frame[12..14] != [0x08, 0x00] || frame[IP] != 0x45 {
        return None;
    }
    let ip_len = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    let frag = u16::from_be_bytes([frame[IP + 6], frame[IP + 7]]) & 0x3fff;
    if frame[IP + 9] != 6 || frag != 0 || ip_len < 40 || IP + ip_len > frame.len() {
        return None;
    }
    let doff = usize::from(frame[TCP + 12] >> 4) * 4;
    let hdr = TCP + doff;
    if doff < 20 || hdr > IP + ip_len || frame[TCP + 13] & !PSH != ACK {
        return None;
    }
    let payload = IP + ip_len - hdr;
    if payload == 0 || !checksum::verify(&frame[IP..TCP]) {
        return None;
    }
    if !partial {
        let src = [
            frame[IP + 12],
            frame[IP + 13],
            frame[IP + 14],
            frame[IP + 15],
        ];
        let dst = [
            frame[IP + 16],
            frame[IP + 17],
            frame[IP + 18],
            frame[IP + 19],
        ];
        let tcp = &frame[TCP..IP + ip_len];
        let pseudo = checksum::pseudo_header_sum(src, dst, 6, tcp.len() as u16);
        if checksum::fold(pseudo + checksum::sum(tcp)) != 0xffff {
            return None;
        }
    }
    Some((hdr, payload))
}

impl Coalescer {
    /// An empty coalescer with room for one 64 KB packet.
    pub fn new() -> Coalescer {
        Coalescer {
            buf: vec![0u8; ETH_LEN + MAX_IP_LEN].into_boxed_slice(),
            len: 0,
            hdr_len: 0,
            mss: 0,
            segments: 0,
            next_seq: 0,
            next_id: 0,
            partial: false,
            closed: false,
        }
    }

    /// Whether a packet is being joined.
    pub fn is_open(&self) -> bool {
        self.len > 0
    }

    /// Begins a packet with `frame` (`partial`: its TCP checksum holds the pseudo-header sum
    /// only); false if it cannot begin one (then nothing is taken: send it alone). Only
    /// while none is open.
    pub fn start(&mut self, frame: &[u8], partial: bool) -> bool {
        if self.is_open() {
            return false;
        }
        let Some((hdr, payload)) = candidate(frame, partial) else {
            return false;
        };
        if frame[TCP + 13] & PSH != 0 {
            return false; // complete by itself
        }
        let end = hdr + payload;
        self.buf[..end].copy_from_slice(&frame[..end]);
        self.len = end;
        self.hdr_len = hdr;
        self.mss = payload;
        self.segments = 1;
        self.next_seq = seq(frame).wrapping_add(payload as u32);
        self.next_id = id(frame).wrapping_add(1);
        self.partial = partial;
        self.closed = false;
        true
    }

    /// Appends `frame` if it continues the open packet (see the module docs).
    pub fn push(&mut self, frame: &[u8], partial: bool) -> Push {
        if !self.is_open() || self.closed {
            return Push::Other;
        }
        let Some((hdr, payload)) = candidate(frame, partial) else {
            return Push::Other;
        };
        let b = &self.buf;
        let df = b[IP + 6] & DF != 0;
        let same = hdr == self.hdr_len
            && frame[..IP + 2] == b[..IP + 2]
            && frame[IP + 6] & 0xe0 == b[IP + 6] & 0xe0
            && frame[IP + 8..IP + 10] == b[IP + 8..IP + 10]
            && frame[IP + 12..IP + 20] == b[IP + 12..IP + 20]
            && frame[TCP..TCP + 4] == b[TCP..TCP + 4]
            && frame[TCP + 8..TCP + 13] == b[TCP + 8..TCP + 13]
            && frame[TCP + 14..TCP + 16] == b[TCP + 14..TCP + 16]
            && frame[TCP + 18..hdr] == b[TCP + 18..hdr]
            && (df || id(frame) == self.next_id)
            && seq(frame) == self.next_seq
            && payload <= self.mss
            && self.len + payload - ETH_LEN <= MAX_IP_LEN;
        if !same {
            return Push::Other;
        }
        let end = self.len + payload;
        self.buf[self.len..end].copy_from_slice(&frame[hdr..hdr + payload]);
        self.len = end;
        self.segments += 1;
        self.next_seq = self.next_seq.wrapping_add(payload as u32);
        self.next_id = self.next_id.wrapping_add(1);
        let push = frame[TCP + 13] & PSH;
        self.buf[TCP + 13] |= push;
        self.partial |= partial;
        if push != 0 || payload < self.mss || self.len - ETH_LEN >= MAX_IP_LEN {
            self.closed = true;
            return Push::Complete;
        }
        Push::Joined
    }

    /// Whether `frame` belongs to the open packet's flow (IPv4, TCP, the same addresses and
    /// ports): one that does not join the packet must not overtake it.
    pub fn same_flow(&self, frame: &[u8]) -> bool {
        if !self.is_open() || frame.len() < IP + 20 || frame[12..14] != [0x08, 0x00] {
            return false;
        }
        let ihl = usize::from(frame[IP] & 0x0f) * 4;
        let b = &self.buf;
        frame[IP + 9] == 6
            && frame[IP + 12..IP + 20] == b[IP + 12..IP + 20]
            && frame.get(IP + ihl..IP + ihl + 4) == Some(&b[TCP..TCP + 4])
    }

    /// Hands the open packet over and makes room for the next; `None` if none is open.
    pub fn finish(&mut self) -> Option<Joined<'_>> {
        if !self.is_open() {
            return None;
        }
        let len = std::mem::take(&mut self.len);
        let partial_at = Some((TCP as u16, 16));
        if self.segments == 1 {
            return Some(Joined {
                frame: &self.buf[..len],
                segments: 1,
                gso_size: self.mss as u16,
                hdr_len: self.hdr_len as u16,
                partial: partial_at.filter(|_| self.partial),
            });
        }
        let b = &mut self.buf[..len];
        let ip_len = (len - ETH_LEN) as u16;
        b[IP + 2..IP + 4].copy_from_slice(&ip_len.to_be_bytes());
        b[IP + 10..IP + 12].fill(0);
        let c = checksum::checksum(&b[IP..TCP]);
        b[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
        let src = [b[IP + 12], b[IP + 13], b[IP + 14], b[IP + 15]];
        let dst = [b[IP + 16], b[IP + 17], b[IP + 18], b[IP + 19]];
        let pseudo = checksum::pseudo_header_sum(src, dst, 6, (len - TCP) as u16);
        b[TCP + 16..TCP + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
        Some(Joined {
            frame: &self.buf[..len],
            segments: self.segments,
            gso_size: self.mss as u16,
            hdr_len: self.hdr_len as u16,
            partial: partial_at,
        })
    }
}

fn seq(frame: &[u8]) -> u32 {
    u32::from_be_bytes([
        frame[TCP + 4],
        frame[TCP + 5],
        frame[TCP + 6],
        frame[TCP + 7],
    ])
}

fn id(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[IP + 4], frame[IP + 5]])
}

#[cfg(test)]
mod tests;
