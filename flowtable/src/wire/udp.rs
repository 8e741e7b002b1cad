//! UDP headers (RFC 768).

use super::{be16, put16, WireError};

/// Length of the UDP header.
pub const HEADER_LEN: usize = 8;

/// A view over a UDP datagram.
///
/// `new_checked` guarantees 8 bytes of header and 8 <= length field <= buffer length.
#[derive(Debug)]
pub struct UdpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buf` after the checks listed on the type.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let l = usize::from(be16(b, 4));
        if l < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if l > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(UdpPacket { buf })
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        be16(self.buf.as_ref(), 0)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }

    /// Length field (header + payload).
    #[inline]
    pub fn len(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }

    /// True if the length field says there is no payload.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() as usize == HEADER_LEN
    }

    /// Checksum field (0 means none was computed).
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }

    /// Payload up to the length field.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..usize::from(self.len())]
    }
}

/// Writes a UDP header with checksum 0 (allowed for IPv4; what VXLAN senders do by default).
#[inline]
pub fn write_header(b: &mut [u8], src_port: u16, dst_port: u16, len: u16) -> bool {
    let Some(h) = b.get_mut(..HEADER_LEN) else {
        return false;
    };
    put16(h, 0, src_port);
    put16(h, 2, dst_port);
    put16(h, 4, len);
    put16(h, 6, 0);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_checks() {
        let mut b = [0u8; 12];
        assert!(write_header(&mut b, 40000, 8472, 12));
        let u = UdpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(
            (u.src_port(), u.dst_port(), u.len(), u.checksum()),
            (40000, 8472, 12, 0)
        );
        assert_eq!(u.payload().len(), 4);
        assert!(!u.is_empty());
        assert_eq!(
            UdpPacket::new_checked(&b[..7]).unwrap_err(),
            WireError::Truncated
        );
        assert_eq!(
            UdpPacket::new_checked(&b[..11]).unwrap_err(),
            WireError::Truncated
        );
        b[5] = 7;
        assert_eq!(
            UdpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        assert!(!write_header(&mut [0u8; 7], 1, 2, 8));
    }
}
