//! TCP headers (RFC 9293): the fields the dataplane reads (ports, flags).

use super::{be16, be32, WireError};

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// TCP flag bits.
pub mod flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE (ECN echo).
    pub const ECE: u8 = 0x40;
    /// CWR (congestion window reduced).
    pub const CWR: u8 = 0x80;
}

/// TCP option kinds the dataplane reads.
pub mod option {
    /// End of option list.
    pub const EOL: u8 = 0;
    /// No operation (padding).
    pub const NOP: u8 = 1;
    /// Window scale (RFC 7323), 3 bytes.
    pub const WINDOW_SCALE: u8 = 3;
    /// SACK permitted (RFC 2018), 2 bytes.
    pub const SACK_PERMITTED: u8 = 4;
    /// SACK blocks (RFC 2018), 2 + 8n bytes.
    pub const SACK: u8 = 5;
    /// Timestamps (RFC 7323), 10 bytes.
    pub const TIMESTAMP: u8 = 8;
}

/// A view over a TCP segment.
///
/// `new_checked` guarantees 20 bytes and 20 <= data offset * 4 <= buffer length.
#[derive(Debug)]
pub struct TcpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buf` after the checks listed on the type.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let off = usize::from(b[12] >> 4) * 4;
        if off < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if off > b.len() {
            return Err(WireError::Truncated);
        }
        Ok(TcpPacket { buf })
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

    /// Sequence number.
    #[inline]
    pub fn seq(&self) -> u32 {
        be32(self.buf.as_ref(), 4)
    }

    /// Acknowledgement number.
    #[inline]
    pub fn ack(&self) -> u32 {
        be32(self.buf.as_ref(), 8)
    }

    /// Header length in bytes.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(self.buf.as_ref()[12] >> 4) * 4
    }

    /// The flag byte (see [`flags`]).
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[13]
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_checks() {
        let mut b = [0u8; 24];
        b[0..2].copy_from_slice(&1234u16.to_be_bytes());
        b[2..4].copy_from_slice(&80u16.to_be_bytes());
        b[4..8].copy_from_slice(&7u32.to_be_bytes());
        b[12] = 6 << 4;
        b[13] = flags::SYN | flags::ACK;
        let t = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(
            (t.src_port(), t.dst_port(), t.seq(), t.ack()),
            (1234, 80, 7, 0)
        );
        assert_eq!(t.header_len(), 24);
        assert_eq!(t.flags(), 0x12);
        assert_eq!(
            TcpPacket::new_checked(&b[..23]).unwrap_err(),
            WireError::Truncated
        );
        b[12] = 4 << 4;
        assert_eq!(
            TcpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
