//! Typed zero-copy views over frame bytes, one module per header.
//!
//! Design (after smoltcp's `wire`): each view wraps a byte buffer (`&[u8]` or `&mut [u8]`),
//! field offsets live in one `field` module per header, and `new_checked` validates every
//! length the view's accessors rely on. After `new_checked` succeeds, no accessor panics: that is
//! each view's written contract, and the property tests in `pipeline` hold the views to it.
//! Views own nothing and keep no state, so they are as thread-safe as the buffer they borrow.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use ethernet::MacAddr;

/// Why a view refused a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the header (or than a length field inside it says).
    #[error("truncated")]
    Truncated,
    /// A version, type or length field has a value the header does not allow.
    #[error("malformed")]
    Malformed,
}

/// Reads a big-endian u16 at `off`; callers have checked the length.
#[inline]
pub(crate) fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

/// Reads a big-endian u32 at `off`; callers have checked the length.
#[inline]
pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Writes a big-endian u16 at `off`; callers have checked the length.
#[inline]
pub(crate) fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian u32 at `off`; callers have checked the length.
#[inline]
pub(crate) fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
