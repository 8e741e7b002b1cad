//! VXLAN headers (RFC 7348).

use super::{be32, put32, WireError};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// Bytes VXLAN over IPv4 adds in front of the inner Ethernet frame (outer Eth + IPv4 + UDP + VXLAN).
pub const OVERHEAD: usize = 14 + 20 + 8 + HEADER_LEN;
/// The "I" flag: the VNI field is valid.
pub const FLAG_VNI: u8 = 0x08;

/// A view over a VXLAN header and the inner frame after it.
#[derive(Debug)]
pub struct VxlanPacket<T> {
    buf: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Wraps `buf` after checking for 8 bytes.
    #[inline]
    pub fn new_checked(buf: T) -> Result<Self, WireError> {
        if buf.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(VxlanPacket { buf })
    }

    /// The flags byte.
    #[inline]
    pub fn flags(&self) -> u8 {
        self.buf.as_ref()[0]
    }

    /// True if the I flag is set.
    #[inline]
    pub fn has_vni(&self) -> bool {
        self.flags() & FLAG_VNI != 0
    }

    /// The 24-bit VNI.
    #[inline]
    pub fn vni(&self) -> u32 {
        be32(self.buf.as_ref(), 4) >> 8
    }

    /// The inner Ethernet frame.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
}

/// Writes a VXLAN header with the I flag and `vni` into `b[..8]`.
#[inline]
pub fn write_header(b: &mut [u8], vni: u32) -> bool {
    let Some(h) = b.get_mut(..HEADER_LEN) else {
        return false;
    };
    put32(h, 0, u32::from(FLAG_VNI) << 24);
    put32(h, 4, (vni & 0x00ff_ffff) << 8);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let mut b = [0xffu8; 10];
        assert!(write_header(&mut b, 0x12_3456));
        assert_eq!(&b[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let v = VxlanPacket::new_checked(&b[..]).unwrap();
        assert!(v.has_vni());
        assert_eq!(v.vni(), 0x12_3456);
        assert_eq!(v.payload().len(), 2);
        assert_eq!(
            VxlanPacket::new_checked(&b[..7]).unwrap_err(),
            WireError::Truncated
        );
    }
}
