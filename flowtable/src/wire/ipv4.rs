//! IPv4 headers (RFC 791): validation, incremental rewrites, header construction.

use super::{be16, checksum, put16, WireError};
use std::net::Ipv4Addr;

/// Field offsets.
mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: std::ops::Range<usize> = 12..16;
    pub const DST: std::ops::Range<usize> = 16..20;
}

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// IP protocol numbers the switch distinguishes.
pub mod protocol {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// A view over an IPv4 packet.
///
/// `new_checked` guarantees: version 4, IHL >= 5, the header fits in the buffer, and
/// header length <= total length <= buffer length. Bytes past the total length (Ethernet
/// padding) are outside [`Ipv4Packet::payload`].
#[derive(Debug)]
pub struct Ipv4Packet<T> {
    buf: T,
}

/// Why an IPv4 header was refused; maps one to one onto the pipeline's drop reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv4Error {
    /// Fewer than 20 bytes, or fewer than IHL*4.
    Truncated,
    /// Version is not 4.
    BadVersion,
    /// IHL below 5.
    BadHeaderLen,
    /// Total length below the header length or beyond the buffer.
    BadTotalLen,
}

impl From<Ipv4Error> for WireError {
    #[inline]
    fn from(e: Ipv4Error) -> Self {
        match e {
            Ipv4Error::Truncated => WireError::Truncated,
            _ => WireError::Malformed,
        }
    }
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buf` after the checks listed on the type.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, Ipv4Error> {
        let p = Self::new_checked_lenient(buf)?;
        let b = p.buf.as_ref();
        let tl = usize::from(be16(b, field::TOTAL_LEN));
        if tl < p.header_len() || tl > b.len() {
            return Err(Ipv4Error::BadTotalLen);
        }
        Ok(p)
    }

    /// Wraps a possibly cut-short packet (one quoted in an ICMP error): checks the version,
    /// IHL and that the header fits, but not the total length. Accessors stay panic-free;
    /// the payload is whatever follows the header, up to the total length.
    #[inline]
    pub fn new_checked_lenient(buf: T) -> Result<Self, Ipv4Error> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(Ipv4Error::Truncated);
        }
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(Ipv4Error::BadVersion);
        }
        let hl = usize::from(b[field::VER_IHL] & 0x0f) * 4;
        if hl < MIN_HEADER_LEN {
            return Err(Ipv4Error::BadHeaderLen);
        }
        if hl > b.len() {
            return Err(Ipv4Error::Truncated);
        }
        Ok(Ipv4Packet { buf })
    }

    /// Header length in bytes (IHL * 4).
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    /// The DSCP/ECN byte.
    #[inline]
    pub fn tos(&self) -> u8 {
        self.buf.as_ref()[field::TOS]
    }

    /// Total length field.
    #[inline]
    pub fn total_len(&self) -> u16 {
        be16(self.buf.as_ref(), field::TOTAL_LEN)
    }

    /// Identification field.
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buf.as_ref(), field::IDENT)
    }

    /// Don't-fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        self.buf.as_ref()[field::FLAGS_FRAG] & 0x40 != 0
    }

    /// More-fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        self.buf.as_ref()[field::FLAGS_FRAG] & 0x20 != 0
    }

    /// Fragment offset in 8-byte units.
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        be16(self.buf.as_ref(), field::FLAGS_FRAG) & 0x1fff
    }

    /// True if this is any fragment (first, middle or last).
    #[inline]
    pub fn is_fragment(&self) -> bool {
        self.more_frags() || self.frag_offset() != 0
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[field::TTL]
    }

    /// Protocol number.
    #[inline]
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[field::PROTOCOL]
    }

    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }

    /// Source address as raw octets.
    #[inline]
    pub fn src_bytes(&self) -> [u8; 4] {
        let mut a = [0; 4];
        a.copy_from_slice(&self.buf.as_ref()[field::SRC]);
        a
    }

    /// Destination address as raw octets.
    #[inline]
    pub fn dst_bytes(&self) -> [u8; 4] {
        let mut a = [0; 4];
        a.copy_from_slice(&self.buf.as_ref()[field::DST]);
        a
    }

    /// Source address.
    #[inline]
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_bytes())
    }

    /// Destination address.
    #[inline]
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_bytes())
    }

    /// True if the header checksum is valid.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(&self.buf.as_ref()[..self.header_len()])
    }

    /// The header (options included).
    #[inline]
    pub fn header(&self) -> &[u8] {
        &self.buf.as_ref()[..self.header_len()]
    }

    /// The payload up to the total length (padding excluded).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        let b = self.buf.as_ref();
        let end = usize::from(self.total_len()).clamp(self.header_len(), b.len());
        &b[self.header_len()..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Decrements TTL by one and updates the checksum incrementally (callers check TTL > 1 first).
    #[inline]
    pub fn decrement_ttl(&mut self) {
        decrement_ttl(self.buf.as_mut());
    }

    /// Sets TTL, updating the checksum incrementally.
    #[inline]
    pub fn set_ttl(&mut self, ttl: u8) {
        let b = self.buf.as_mut();
        let old = be16(b, field::TTL);
        let new = (u16::from(ttl) << 8) | (old & 0xff);
        put16(b, field::TTL, new);
        let c = checksum::update16(be16(b, field::CHECKSUM), old, new);
        put16(b, field::CHECKSUM, c);
    }

    /// Sets the source address, updating the header checksum incrementally.
    #[inline]
    pub fn set_src(&mut self, a: Ipv4Addr) {
        let old = u32::from(self.src());
        let b = self.buf.as_mut();
        b[field::SRC].copy_from_slice(&a.octets());
        let c = checksum::update32(be16(b, field::CHECKSUM), old, u32::from(a));
        put16(b, field::CHECKSUM, c);
    }

    /// Sets the destination address, updating the header checksum incrementally.
    #[inline]
    pub fn set_dst(&mut self, a: Ipv4Addr) {
        let old = u32::from(self.dst());
        let b = self.buf.as_mut();
        b[field::DST].copy_from_slice(&a.octets());
        let c = checksum::update32(be16(b, field::CHECKSUM), old, u32::from(a));
        put16(b, field::CHECKSUM, c);
    }

    /// Swaps source and destination; the checksum is unchanged (the sum is commutative).
    #[inline]
    pub fn swap_addrs(&mut self) {
        let b = self.buf.as_mut();
        for i in 0..4 {
            b.swap(field::SRC.start + i, field::DST.start + i);
        }
    }

    /// The payload up to the total length, mutable.
    #[inline]
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        let end = usize::from(self.total_len()).clamp(hl, self.buf.as_ref().len());
        &mut self.buf.as_mut()[hl..end]
    }
}

/// Decrements the TTL of the IPv4 header at the start of `header` and updates its checksum
/// incrementally, without re-validating it (for callers that already did); returns false if
/// `header` is shorter than 20 bytes.
#[inline]
pub fn decrement_ttl(header: &mut [u8]) -> bool {
    if header.len() < MIN_HEADER_LEN {
        return false;
    }
    header[field::TTL] = header[field::TTL].wrapping_sub(1);
    // RFC 1624 for a word that drops by 0x0100: the checksum rises by 0x0100 with end-around
    // carry (what Linux's ip_decrease_ttl does).
    let c = u32::from(be16(header, field::CHECKSUM)) + 0x0100;
    put16(header, field::CHECKSUM, (c + (c >> 16)) as u16);
    true
}

/// Fields of a 20-byte header that [`write_header`] emits.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Repr {
    /// DSCP/ECN.
    pub tos: u8,
    /// Total length (header + payload).
    pub total_len: u16,
    /// Identification.
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_frag: bool,
    /// Time to live.
    pub ttl: u8,
    /// Protocol.
    pub protocol: u8,
    /// Source.
    pub src: [u8; 4],
    /// Destination.
    pub dst: [u8; 4],
}

/// Writes a 20-byte header with a computed checksum into `b[..20]`; returns false if `b` is short.
#[inline]
pub fn write_header(b: &mut [u8], r: &Ipv4Repr) -> bool {
    let Some(h) = b.get_mut(..MIN_HEADER_LEN) else {
        return false;
    };
    h[0] = 0x45;
    h[1] = r.tos;
    put16(h, field::TOTAL_LEN, r.total_len);
    put16(h, field::IDENT, r.ident);
    put16(h, field::FLAGS_FRAG, if r.dont_frag { 0x4000 } else { 0 });
    h[field::TTL] = r.ttl;
    h[field::PROTOCOL] = r.protocol;
    put16(h, field::CHECKSUM, 0);
    h[field::SRC].copy_from_slice(&r.src);
    h[field::DST].copy_from_slice(&r.dst);
    let c = checksum::checksum(h);
    put16(h, field::CHECKSUM, c);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut b = vec![0u8; 28];
        write_header(
            &mut b,
            &Ipv4Repr {
                tos: 0,
                total_len: 28,
                ident: 7,
                dont_frag: true,
                ttl: 64,
                protocol: protocol::UDP,
                src: [10, 244, 1, 2],
                dst: [10, 244, 1, 3],
            },
        );
        b
    }

    #[test]
    fn written_header_reads_back() {
        let b = header();
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 7);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), protocol::UDP);
        assert_eq!(p.src(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(p.dst(), Ipv4Addr::new(10, 244, 1, 3));
        assert!(p.verify_checksum());
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn refuses_bad_headers() {
        let b = header();
        assert_eq!(
            Ipv4Packet::new_checked(&b[..19]).unwrap_err(),
            Ipv4Error::Truncated
        );
        let mut v6 = b.clone();
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).unwrap_err(),
            Ipv4Error::BadVersion
        );
        let mut ihl4 = b.clone();
        ihl4[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&ihl4[..]).unwrap_err(),
            Ipv4Error::BadHeaderLen
        );
        let mut ihl15 = b.clone();
        ihl15[0] = 0x4f;
        assert_eq!(
            Ipv4Packet::new_checked(&ihl15[..]).unwrap_err(),
            Ipv4Error::Truncated
        );
        let mut long = b.clone();
        long[3] = 29;
        assert_eq!(
            Ipv4Packet::new_checked(&long[..]).unwrap_err(),
            Ipv4Error::BadTotalLen
        );
        let mut short = b.clone();
        short[3] = 19;
        assert_eq!(
            Ipv4Packet::new_checked(&short[..]).unwrap_err(),
            Ipv4Error::BadTotalLen
        );
    }

    #[test]
    fn padding_is_outside_payload() {
        let mut b = header();
        b.extend_from_slice(&[0xee; 10]);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn rewrites_keep_checksum_valid() {
        let mut b = header();
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.decrement_ttl();
        assert_eq!(p.ttl(), 63);
        assert!(p.verify_checksum());
        p.set_dst(Ipv4Addr::new(10, 96, 0, 1));
        p.set_src(Ipv4Addr::new(198, 18, 0, 1));
        p.swap_addrs();
        p.set_ttl(1);
        assert!(p.verify_checksum());
        assert_eq!(p.src(), Ipv4Addr::new(10, 96, 0, 1));
    }

    #[test]
    fn bad_checksum_stays_bad_after_rewrite() {
        let mut b = header();
        b[10] ^= 0x55;
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        assert!(!p.verify_checksum());
        p.decrement_ttl();
        assert!(!p.verify_checksum());
    }

    #[test]
    fn fragments() {
        let mut b = header();
        b[6] = 0x20; // MF
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().is_fragment());
        b[6] = 0x00;
        b[7] = 0x10; // offset 16
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.frag_offset(), 16);
        assert!(p.is_fragment());
    }
}
