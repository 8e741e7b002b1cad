//! A fast hasher for the dataplane's integer keys (IPv4 addresses, prefixes, tuples).
//!
//! Design: keys in the tables are fixed-width integers chosen by the controller, never by
//! packets alone, so a keyed DoS-resistant hash buys nothing here while costing a few ns per
//! lookup. [`FastHasher`] multiplies by a 64-bit odd constant and folds the high half into the
//! low half, so hashbrown's bucket index (low bits) and tag (high bits) both depend on every
//! input bit. Stateless; any thread may use it.

use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-fold hasher for integer keys.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

const K: u64 = 0x9e37_79b9_7f4a_7c15;

impl FastHasher {
    #[inline]
    fn mix(&mut self, x: u64) {
        let h = (self.0 ^ x).wrapping_mul(K);
        self.0 = h ^ (h >> 29);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.mix(u64::from_le_bytes(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.mix(u64::from(i));
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.mix(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }
}

/// A hashbrown map using [`FastHasher`].
pub type FastMap<K, V> = hashbrown::HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_spread_over_low_bits() {
        // /24 network addresses differ only in bits 8..32; bucket indices must still differ.
        let mut low = std::collections::HashSet::new();
        for n in 0..256u32 {
            let mut h = FastHasher::default();
            h.write_u32(0x0af4_0000 | (n << 8));
            low.insert(h.finish() & 0x3ff);
        }
        assert!(low.len() > 200, "{}", low.len());
    }

    #[test]
    fn map_works() {
        let mut m: FastMap<u32, u32> = FastMap::default();
        for i in 0..10_000 {
            m.insert(i * 256, i);
        }
        assert!((0..10_000).all(|i| m[&(i * 256)] == i));
    }
}
