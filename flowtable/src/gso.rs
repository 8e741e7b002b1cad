//! Software segmentation of a pod's GSO packets: one TCP or UDP packet of up to 64 KB, as a
//! Linux sender hands it to a device that keeps its GSO (a veth with no XDP program, read
//! through a packet socket with a virtio-net header), cut into the MTU-sized frames it stands
//! for, exactly as the kernel's own GSO would cut it.
//!
//! Design: [`Segments::new`] validates the frame once against what the sender asked for (a
//! [`GsoRequest`]: the kind and the payload bytes per segment) and [`Segments::write`] builds
//! segment `i` straight into the caller's buffer (a transmit frame): the Ethernet, IPv4 and
//! TCP/UDP headers repeated, then that segment's share of the payload, with every field
//! segmentation changes set as Linux sets it: IPv4 total length, identification (the first
//! segment's plus `i`) and header checksum; TCP sequence number (plus the bytes before it),
//! FIN and PSH on the last segment only, CWR on the first only; UDP length; and the TCP/UDP
//! checksum complete (a sender's partial checksum is never passed on). Only IPv4 is
//! segmented (the switch forwards no IPv6) and only TCP (`gso_type` 1, with or without the
//! ECN bit) and UDP with per-datagram segmentation (`gso_type` 5, `UDP_SEGMENT`); legacy UFO
//! (IP fragments of one datagram) is refused, as Linux no longer produces it.
//!
//! Pure functions over byte slices; no state, no allocation.

use crate::wire::checksum;
use crate::wire::ethernet::{ethertype, HEADER_LEN as ETH_LEN};
use crate::wire::ipv4::protocol;

/// What kind of segmentation a sender asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4 (`VIRTIO_NET_HDR_GSO_TCPV4`).
    Tcp,
    /// UDP over IPv4, one datagram per segment (`VIRTIO_NET_HDR_GSO_UDP_L4`).
    Udp,
}

/// A sender's segmentation request: its kind and the payload bytes per segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GsoRequest {
    /// TCP or UDP.
    pub kind: GsoKind,
    /// Payload bytes per segment (the MSS for TCP); the last segment may be shorter.
    pub size: u16,
}

impl GsoRequest {
    /// The request a virtio-net header's `gso_type` and `gso_size` make: `Ok(None)` for none
    /// (`gso_type` 0), an error for a kind the switch does not segment.
    pub fn from_vnet(gso_type: u8, gso_size: u16) -> Result<Option<GsoRequest>, GsoError> {
        let kind = match gso_type & !0x80 {
            0 => return Ok(None),
            1 => GsoKind::Tcp,
            5 => GsoKind::Udp,
            _ => return Err(GsoError::UnsupportedKind),
        };
        Ok(Some(GsoRequest {
            kind,
            size: gso_size,
        }))
    }
}

/// Why a frame cannot be segmented as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    /// A GSO kind other than TCPv4 and UDP_L4 (IPv6, legacy UFO, unknown).
    #[error("a GSO kind the switch does not segment")]
    UnsupportedKind,
    /// The frame is not an unfragmented IPv4 packet of the asked protocol with whole headers.
    #[error("not an unfragmented IPv4 TCP/UDP packet of the asked kind")]
    NotSegmentable,
    /// A segment size of zero.
    #[error("segment size 0")]
    ZeroSize,
    /// More than [`MAX_SEGMENTS`] segments (a segment size no sender uses, which would
    /// multiply one packet's headers by thousands).
    #[error("more than {MAX_SEGMENTS} segments")]
    TooManySegments,
}

/// The most segments one packet is cut into: what a 64 KB packet makes at the smallest TCP
/// segment Linux sends (48 bytes of payload, `tcp_min_snd_mss`).
pub const MAX_SEGMENTS: usize = 1_400;

/// A validated GSO frame and how it divides; [`write`](Self::write) builds each segment.
#[derive(Debug, Clone, Copy)]
pub struct Segments<'a> {
    frame: &'a [u8],
    kind: GsoKind,
    /// Offset of the L4 header.
    l4: usize,
    /// Offset of the payload (end of the headers every segment repeats).
    payload: usize,
    /// End of the IP packet (Ethernet padding excluded).
    end: usize,
    size: usize,
}

impl<'a> Segments<'a> {
    /// Checks `frame` (Ethernet + IPv4 + TCP/UDP) against `req`.
    pub fn new(frame: &'a [u8], req: GsoRequest) -> Result<Segments<'a>, GsoError> {
        use GsoError::NotSegmentable as Bad;
        if req.size == 0 {
            return Err(GsoError::ZeroSize);
        }
        let ip = frame.get(ETH_LEN..).ok_or(Bad)?;
        if frame[12..14] != ethertype::IPV4.to_be_bytes() || ip.len() < 20 || ip[0] >> 4 != 4 {
            return Err(Bad);
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
        if ihl < 20 || total < ihl || total > ip.len() || frag != 0 {
            return Err(Bad);
        }
        let (proto, l4_hdr) = match req.kind {
            GsoKind::Tcp => {
                let off = ip.get(ihl + 12).ok_or(Bad)?;
                (protocol::TCP, usize::from(off >> 4) * 4)
            }
            GsoKind::Udp => (protocol::UDP, 8),
        };
        if ip[9] != proto || l4_hdr < 8 || (req.kind == GsoKind::Tcp && l4_hdr < 20) {
            return Err(Bad);
        }
        let l4 = ETH_LEN + ihl;
        let payload = l4 + l4_hdr;
        let end = ETH_LEN + total;
        if payload > end {
            return Err(Bad);
        }
        let s = Segments {
            frame,
            kind: req.kind,
            l4,
            payload,
            end,
            size: usize::from(req.size),
        };
        if s.count() > MAX_SEGMENTS {
            return Err(GsoError::TooManySegments);
        }
        Ok(s)
    }

    /// Number of segments (at least one: a packet without payload is one segment).
    pub fn count(&self) -> usize {
        (self.end - self.payload).div_ceil(self.size).max(1)
    }

    /// Length of the headers each segment repeats (Ethernet, IPv4, TCP/UDP).
    pub fn header_len(&self) -> usize {
        self.payload
    }

    /// Length of the longest segment, the first.
    pub fn max_len(&self) -> usize {
        self.len(0)
    }

    /// Length of segment `i` (`i < count()`).
    pub fn len(&self, i: usize) -> usize {
        let left = (self.end - self.payload).saturating_sub(i * self.size);
        self.payload + left.min(self.size)
    }

    /// Writes segment `i` (`i < count()`) into `out`, which holds at least
    /// [`len(i)`](Self::len) bytes; returns its length.
    pub fn write(&self, i: usize, out: &mut [u8]) -> usize {
        let len = self.len(i);
        let from = self.payload + i * self.size;
        let plen = len - self.payload;
        let out = &mut out[..len];
        out[..self.payload].copy_from_slice(&self.frame[..self.payload]);
        out[self.payload..].copy_from_slice(&self.frame[from..from + plen]);
        let last = i + 1 == self.count();
        // IPv4: length, identification, header checksum.
        let ip = ETH_LEN;
        let ihl = self.l4 - ip;
        let ip_len = (len - ip) as u16;
        out[ip + 2..ip + 4].copy_from_slice(&ip_len.to_be_bytes());
        let id = u16::from_be_bytes([out[ip + 4], out[ip + 5]]).wrapping_add(i as u16);
        out[ip + 4..ip + 6].copy_from_slice(&id.to_be_bytes());
        out[ip + 10..ip + 12].fill(0);
        let c = checksum::checksum(&out[ip..ip + ihl]);
        out[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        // L4: the fields segmentation changes, then the whole checksum.
        let l4 = self.l4;
        let l4_len = (len - l4) as u16;
        let at = match self.kind {
            GsoKind::Tcp => {
                let seq = u32::from_be_bytes([out[l4 + 4], out[l4 + 5], out[l4 + 6], out[l4 + 7]])
                    .wrapping_add((i * self.size) as u32);
                out[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
                use crate::wire::tcp::flags::{CWR, FIN, PSH};
                if !last {
                    out[l4 + 13] &= !(FIN | PSH);
                }
                if i != 0 {
                    out[l4 + 13] &= !CWR;
                }
                l4 + 16
            }
            GsoKind::Udp => {
                out[l4 + 4..l4 + 6].copy_from_slice(&l4_len.to_be_bytes());
                l4 + 6
            }
        };
        out[at..at + 2].fill(0);
        let src = [out[ip + 12], out[ip + 13], out[ip + 14], out[ip + 15]];
        let dst = [out[ip + 16], out[ip + 17], out[ip + 18], out[ip + 19]];
        let proto = out[ip + 9];
        let pseudo = checksum::pseudo_header_sum(src, dst, proto, l4_len);
        let mut c = !checksum::fold(pseudo + checksum::sum(&out[l4..]));
        if self.kind == GsoKind::Udp && c == 0 {
            c = 0xffff;
        }
        out[at..at + 2].copy_from_slice(&c.to_be_bytes());
        len
    }
}

#[cfg(test)]
mod tests;
