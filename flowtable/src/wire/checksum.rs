//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Pure functions over byte slices; no state, safe to call from any thread. Rewrites in the
//! dataplane use [`update16`] / [`update32`] so that the cost of a rewrite does not depend on
//! the packet's length, and a checksum that was wrong before a rewrite stays wrong after it
//! (forwarded traffic is never "repaired").

/// One's-complement sum of `data` as big-endian 16-bit words (odd tail padded with zero), unfolded.
#[inline]
pub fn sum(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

/// Folds an unfolded sum to 16 bits (end-around carry).
#[inline]
pub fn fold(acc: u64) -> u16 {
    // Four fixed end-around-carry steps fold any u64 (no data-dependent loop).
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// The checksum field value for `data` (with the checksum field itself zeroed by the caller).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// True if `data`, checksum field included, sums to 0xffff (the checksum is valid).
#[inline]
pub fn verify(data: &[u8]) -> bool {
    fold(sum(data)) == 0xffff
}

/// Unfolded sum of the IPv4 pseudo-header for TCP/UDP.
#[inline]
pub fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], protocol: u8, l4_len: u16) -> u64 {
    u64::from(u32::from_be_bytes(src))
        + u64::from(u32::from_be_bytes(dst))
        + u64::from(protocol)
        + u64::from(l4_len)
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word changes from `old` to `new`.
#[inline]
pub fn update16(check: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!check) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// RFC 1624 eqn. 3 for a 32-bit field (an IPv4 address).
#[inline]
pub fn update32(check: u16, old: u32, new: u32) -> u16 {
    let acc = u64::from(!check)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!(old as u16))
        + u64::from((new >> 16) as u16)
        + u64::from(new as u16);
    !fold(acc)
}

/// RFC 1624 delta of a 32-bit field changing from `old` to `new`: one's-complement sum of the
/// new words and the complemented old ones. Deltas of several fields add up (in a u32; up to
/// tens of thousands of them fit) and are applied with [`apply_delta`].
#[inline]
pub fn delta32(old: u32, new: u32) -> u32 {
    u32::from(!(old >> 16) as u16) + u32::from(!(old as u16)) + (new >> 16) + (new & 0xffff)
}

/// RFC 1624 delta of a 16-bit field changing from `old` to `new`.
#[inline]
pub fn delta16(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// Applies a delta to a checksum field value (RFC 1624 eqn. 3).
#[inline]
pub fn apply_delta(check: u16, delta: u32) -> u16 {
    let s = u32::from(!check) + delta;
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 section 3 example bytes.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn deltas_match_full_recompute() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&h);
        let d = delta32(0xc0a8_0001, 0x0af4_0102) + delta32(0xc0a8_00c7, 0x0a60_000a);
        h[12..16].copy_from_slice(&[10, 244, 1, 2]);
        h[16..20].copy_from_slice(&[10, 96, 0, 10]);
        let mut full = h;
        let want = checksum(&full);
        full[10..12].copy_from_slice(&apply_delta(c, d).to_be_bytes());
        assert!(verify(&full));
        assert_eq!(apply_delta(c, d), want);
        assert_eq!(apply_delta(c, delta16(7, 7)), c);
    }

    #[test]
    fn fold_handles_large_sums() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_fffe), 0xffff);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0x1234_5678_9abc), fold(0x1234 + 0x5678 + 0x9abc));
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
    }

    #[test]
    fn known_ipv4_header() {
        // A header from a real capture (Wikipedia's IPv4 checksum example): checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert!(verify(&h));
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let c = checksum(&h);
        // TTL 0x40 -> 0x3f: word 4 is ttl<<8|proto.
        let c2 = update16(c, 0x4011, 0x3f11);
        h[8] = 0x3f;
        assert_eq!(c2, checksum(&h));
        // Destination address change.
        let c3 = update32(c2, 0xc0a8_00c7, 0x0af4_0105);
        h[16..20].copy_from_slice(&[0x0a, 0xf4, 0x01, 0x05]);
        assert_eq!(c3, checksum(&h));
    }
}
