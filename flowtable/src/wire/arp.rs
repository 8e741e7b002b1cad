//! ARP for IPv4 over Ethernet (RFC 826).

use super::{be16, put16, MacAddr, WireError};
use std::net::Ipv4Addr;

/// Length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = 28;

/// ARP opcodes.
pub mod op {
    /// Request.
    pub const REQUEST: u16 = 1;
    /// Reply.
    pub const REPLY: u16 = 2;
}

/// A view over an Ethernet/IPv4 ARP packet.
///
/// `new_checked` guarantees 28 bytes, hardware type 1 (Ethernet), protocol 0x0800, hardware
/// length 6 and protocol length 4; anything else is `Malformed` for this switch.
#[derive(Debug)]
pub struct ArpPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buf` after the checks listed on the type.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        let b = buf.as_ref();
        if b.len() < PACKET_LEN {
            return Err(WireError::Truncated);
        }
        if be16(b, 0) != 1 || be16(b, 2) != 0x0800 || b[4] != 6 || b[5] != 4 {
            return Err(WireError::Malformed);
        }
        Ok(ArpPacket { buf })
    }

    /// Opcode.
    #[inline]
    pub fn op(&self) -> u16 {
        be16(self.buf.as_ref(), 6)
    }

    #[inline]
    fn mac_at(&self, off: usize) -> MacAddr {
        let mut m = [0; 6];
        m.copy_from_slice(&self.buf.as_ref()[off..off + 6]);
        MacAddr(m)
    }

    #[inline]
    fn ip_at(&self, off: usize) -> Ipv4Addr {
        let b = self.buf.as_ref();
        Ipv4Addr::new(b[off], b[off + 1], b[off + 2], b[off + 3])
    }

    /// Sender hardware address.
    #[inline]
    pub fn sha(&self) -> MacAddr {
        self.mac_at(8)
    }

    /// Sender protocol address.
    #[inline]
    pub fn spa(&self) -> Ipv4Addr {
        self.ip_at(14)
    }

    /// Target hardware address.
    #[inline]
    pub fn tha(&self) -> MacAddr {
        self.mac_at(18)
    }

    /// Target protocol address.
    #[inline]
    pub fn tpa(&self) -> Ipv4Addr {
        self.ip_at(24)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Turns this request into the reply "`tpa` is at `mac`", in place.
    #[inline]
    pub fn make_reply(&mut self, mac: MacAddr) {
        let (sha, spa, tpa) = (self.sha(), self.spa(), self.tpa());
        let b = self.buf.as_mut();
        put16(b, 6, op::REPLY);
        b[8..14].copy_from_slice(&mac.0);
        b[14..18].copy_from_slice(&tpa.octets());
        b[18..24].copy_from_slice(&sha.0);
        b[24..28].copy_from_slice(&spa.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> [u8; 28] {
        let mut b = [0u8; 28];
        b[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        b[8..14].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        b[14..18].copy_from_slice(&[10, 244, 1, 2]);
        b[24..28].copy_from_slice(&[10, 244, 1, 1]);
        b
    }

    #[test]
    fn request_to_reply() {
        let mut b = request();
        let mut a = ArpPacket::new_checked(&mut b[..]).unwrap();
        assert_eq!(a.op(), op::REQUEST);
        assert_eq!(a.tpa(), Ipv4Addr::new(10, 244, 1, 1));
        a.make_reply(MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(a.op(), op::REPLY);
        assert_eq!(a.sha(), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(a.spa(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(a.tha(), MacAddr([2, 0, 0, 0, 0, 2]));
        assert_eq!(a.tpa(), Ipv4Addr::new(10, 244, 1, 2));
    }

    #[test]
    fn refuses_other_hardware() {
        let b = request();
        assert_eq!(
            ArpPacket::new_checked(&b[..27]).unwrap_err(),
            WireError::Truncated
        );
        let mut x = b;
        x[5] = 16;
        assert_eq!(
            ArpPacket::new_checked(&x[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
