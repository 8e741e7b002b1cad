//! ICMPv4 messages (RFC 792): echo and the error messages the switch sends.

use super::{be16, checksum, put16, put32, WireError};

/// Length of the ICMP header (type, code, checksum, 4 bytes of rest-of-header).
pub const HEADER_LEN: usize = 8;

/// ICMP type values.
pub mod kind {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable.
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Source quench (deprecated; still an error message).
    pub const SOURCE_QUENCH: u8 = 4;
    /// Redirect.
    pub const REDIRECT: u8 = 5;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// True for the types that are error messages (never answered with another error).
#[inline]
pub fn is_error(t: u8) -> bool {
    // Unknown types (above 18) are treated as errors, as Linux does: never answered.
    t > 18
        || matches!(
            t,
            kind::DEST_UNREACHABLE
                | kind::SOURCE_QUENCH
                | kind::REDIRECT
                | kind::TIME_EXCEEDED
                | kind::PARAMETER_PROBLEM
        )
}

/// A view over an ICMP message; `new_checked` guarantees the 8-byte header.
#[derive(Debug)]
pub struct IcmpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps `buf` after checking for 8 bytes.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(IcmpPacket { buf })
    }

    /// Type.
    #[inline]
    pub fn kind(&self) -> u8 {
        self.buf.as_ref()[0]
    }

    /// Code.
    #[inline]
    pub fn code(&self) -> u8 {
        self.buf.as_ref()[1]
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), 2)
    }

    /// Echo identifier (bytes 4-5).
    #[inline]
    pub fn ident(&self) -> u16 {
        be16(self.buf.as_ref(), 4)
    }

    /// Echo sequence number (bytes 6-7).
    #[inline]
    pub fn seq(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }

    /// True if the checksum over the whole message is valid.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::verify(self.buf.as_ref())
    }

    /// Bytes after the 8-byte header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    /// Changes the type (code unchanged), updating the checksum incrementally.
    #[inline]
    pub fn set_kind(&mut self, t: u8) {
        let b = self.buf.as_mut();
        let old = be16(b, 0);
        let new = (u16::from(t) << 8) | (old & 0xff);
        put16(b, 0, new);
        let c = checksum::update16(be16(b, 2), old, new);
        put16(b, 2, c);
    }
}

/// Writes an ICMP header (type, code, rest) over `msg[..8]` and the checksum over all of `msg`.
#[inline]
pub fn write_message(msg: &mut [u8], t: u8, code: u8, rest: u32) -> bool {
    if msg.len() < HEADER_LEN {
        return false;
    }
    msg[0] = t;
    msg[1] = code;
    put16(msg, 2, 0);
    put32(msg, 4, rest);
    let c = checksum::checksum(msg);
    put16(msg, 2, c);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_to_reply_keeps_checksum_valid() {
        let mut m = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
        assert!(write_message(&mut m, kind::ECHO_REQUEST, 0, 0x1234_0001));
        let mut p = IcmpPacket::new_checked(&mut m[..]).unwrap();
        assert!(p.verify_checksum());
        assert_eq!((p.kind(), p.code(), p.ident(), p.seq()), (8, 0, 0x1234, 1));
        p.set_kind(kind::ECHO_REPLY);
        assert!(p.verify_checksum());
        assert_eq!(p.kind(), 0);
        assert_eq!(p.payload(), b"ping");
        assert_eq!(
            IcmpPacket::new_checked(&m[..7]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn error_types() {
        assert!(is_error(kind::TIME_EXCEEDED) && is_error(kind::DEST_UNREACHABLE));
        assert!(!is_error(kind::ECHO_REQUEST) && !is_error(kind::ECHO_REPLY));
    }
}
