//! Maglev consistent hashing (Eisenbud et al., NSDI 2016) for Service backend selection.
//!
//! Design: a lookup table of a prime size M maps a flow hash to a backend. Backends are
//! identified by their `ip:port` and sorted before the table is filled, and every hash is a
//! fixed function (no per-process seed), so every node builds the same table from the same
//! endpoints and picks the same backend for the same flow. Adding or removing one of N
//! backends changes about 1/N of the entries. Tables are built off the packet path with the
//! snapshot and read-only afterwards; any number of workers read them concurrently.

use std::net::Ipv4Addr;

/// The default table size: a prime, as Cilium's default.
pub const DEFAULT_TABLE_SIZE: usize = 16381;

/// A stable 64-bit hash (FNV-1a then a murmur finaliser): the same on every node and build.
#[inline]
pub fn stable_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hash of a flow the table is indexed with: client address and port, Service address
/// and port, protocol. (For ClientIP affinity, pass port 0 for the client's port.)
#[inline]
pub fn flow_hash(client: Ipv4Addr, client_port: u16, vip: Ipv4Addr, vport: u16, proto: u8) -> u64 {
    let mut b = [0u8; 13];
    b[0..4].copy_from_slice(&client.octets());
    b[4..6].copy_from_slice(&client_port.to_be_bytes());
    b[6..10].copy_from_slice(&vip.octets());
    b[10..12].copy_from_slice(&vport.to_be_bytes());
    b[12] = proto;
    stable_hash(&b, 0x6d61_676c_6576)
}

/// A filled Maglev lookup table: entry = index into the backend list it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Vec<u16>,
}

impl Maglev {
    /// Builds a table of `size` entries (a prime below 2^31) over `backends` (at most 65535),
    /// given in any order; entries index into `backends` as given. `None` if there are no
    /// backends or `size` is out of range.
    pub fn build(backends: &[(Ipv4Addr, u16)], size: usize) -> Option<Maglev> {
        if backends.is_empty()
            || backends.len() > usize::from(u16::MAX)
            || !(2..1 << 31).contains(&size)
        {
            return None;
        }
        // Fill in a canonical order so the table does not depend on how endpoints were listed.
        let mut order: Vec<usize> = (0..backends.len()).collect();
        order.sort_by_key(|&i| (u32::from(backends[i].0), backends[i].1));
        let m = size as u64;
        let perms: Vec<(u64, u64)> = order.iter().map(|&i| permutation(backends[i], m)).collect();
        // Each backend walks its permutation offset, offset+skip, ... (mod M) by additions,
        // WIDE entries per step: which of them is the first free one is computed without a
        // branch, so the step's only branch (none free) is rarely taken until the table is
        // nearly full. One entry per step mispredicted that branch on most claims of a
        // half-full table: 6.0 -> 5.9 us for 10 backends, 62.9 -> 57.0 us for 100, 301 -> 268
        // us for 1000 (`cargo bench -p bench --bench services -- maglev`).
        let mut pos: Vec<u64> = perms.iter().map(|p| p.0).collect();
        let mut table = vec![u16::MAX; size];
        let mut filled = 0;
        let wrap = |c: u64| if c >= m { c - m } else { c };
        // Each backend's step times 0..=WIDE (mod M): a step's entries are independent sums.
        let steps: Vec<[u64; WIDE + 1]> = perms
            .iter()
            .map(|p| {
                let mut a = [0u64; WIDE + 1];
                for j in 1..=WIDE {
                    a[j] = wrap(a[j - 1] + p.1);
                }
                a
            })
            .collect();
        'fill: loop {
            for (k, &i) in order.iter().enumerate() {
                let st = &steps[k];
                let mut c0 = pos[k];
                let (c, next) = loop {
                    let mut at = [0u64; WIDE + 1];
                    let mut free = 0u32;
                    for j in 0..=WIDE {
                        at[j] = wrap(c0 + st[j]);
                    }
                    for j in 0..WIDE {
                        free |= u32::from(table[at[j] as usize] == u16::MAX) << j;
                    }
                    if free != 0 {
                        let j = free.trailing_zeros() as usize;
                        break (at[j], at[j + 1]);
                    }
                    c0 = at[WIDE];
                };
                table[c as usize] = i as u16;
                pos[k] = next;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
        Some(Maglev { table })
    }

    /// The backend index for a flow hash.
    #[inline]
    pub fn pick(&self, hash: u64) -> usize {
        let i = (hash % self.table.len() as u64) as usize;
        usize::from(self.table.get(i).copied().unwrap_or(0))
    }

    /// Table size.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Always false: a table has at least one entry.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// How many entries each backend owns (for `switchctl get services`).
    pub fn distribution(&self, backends: usize) -> Vec<usize> {
        let mut d = vec![0; backends];
        for e in &self.table {
            if let Some(x) = d.get_mut(usize::from(*e)) {
                *x += 1;
            }
        }
        d
    }
}

/// Entries of a backend's walk tested per step while the table is filled.
const WIDE: usize = 4;

/// A backend's permutation of a table of `m` entries: its first entry and its step, both
/// from the stable hash of its address and port (so every node and version agrees).
fn permutation(backend: (Ipv4Addr, u16), m: u64) -> (u64, u64) {
    let mut name = [0u8; 6];
    name[..4].copy_from_slice(&backend.0.octets());
    name[4..].copy_from_slice(&backend.1.to_be_bytes());
    (
        stable_hash(&name, 1) % m,
        stable_hash(&name, 2) % (m - 1) + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u8) -> Vec<(Ipv4Addr, u16)> {
        (0..n)
            .map(|i| (Ipv4Addr::new(10, 244, 1 + i % 3, 10 + i), 8080))
            .collect()
    }

    fn flows() -> impl Iterator<Item = u64> {
        (0..20_000u32).map(|i| {
            flow_hash(
                Ipv4Addr::from(0x0af4_0000 + i),
                30000 + (i % 5000) as u16,
                Ipv4Addr::new(10, 96, 0, 10),
                80,
                6,
            )
        })
    }

    /// The fill as the paper gives it (entry = (offset + j * skip) mod M): what the walk by
    /// additions must match.
    fn reference(backends: &[(Ipv4Addr, u16)], size: usize) -> Vec<u16> {
        let mut order: Vec<usize> = (0..backends.len()).collect();
        order.sort_by_key(|&i| (u32::from(backends[i].0), backends[i].1));
        let m = size as u64;
        let perms: Vec<(u64, u64)> = order.iter().map(|&i| permutation(backends[i], m)).collect();
        let mut next = vec![0u64; order.len()];
        let mut table = vec![u16::MAX; size];
        let mut filled = 0;
        loop {
            for (k, &i) in order.iter().enumerate() {
                let mut c = (perms[k].0 + next[k] * perms[k].1) % m;
                while table[c as usize] != u16::MAX {
                    next[k] += 1;
                    c = (perms[k].0 + next[k] * perms[k].1) % m;
                }
                table[c as usize] = i as u16;
                next[k] += 1;
                filled += 1;
                if filled == size {
                    return table;
                }
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn the_walk_fills_as_the_paper_does(
            ips in proptest::collection::vec(proptest::prelude::any::<u32>(), 1..200),
            port in 1u16..,
            step in 0usize..8,
        ) {
            let b: Vec<(Ipv4Addr, u16)> = ips.iter().map(|&ip| (Ipv4Addr::from(ip), port)).collect();
            let size = [7, 13, 251, 509, 1021, 4093, 16381, 65521][step];
            let want = reference(&b, size);
            let got = Maglev::build(&b, size).unwrap();
            proptest::prop_assert_eq!(got.table, want);
        }
    }

    #[test]
    fn sizes_out_of_range_build_nothing() {
        let b = backends(3);
        assert!(Maglev::build(&b, 1).is_none());
        assert!(Maglev::build(&b, 1 << 31).is_none());
        assert!(Maglev::build(&[], 7).is_none());
    }

    #[test]
    fn balanced_and_order_independent() {
        let b = backends(10);
        let m = Maglev::build(&b, DEFAULT_TABLE_SIZE).unwrap();
        let d = m.distribution(10);
        assert!(d.iter().all(|&x| (1600..=1680).contains(&x)), "{d:?}");
        let mut rev = b.clone();
        rev.reverse();
        let m2 = Maglev::build(&rev, DEFAULT_TABLE_SIZE).unwrap();
        for h in flows() {
            assert_eq!(
                b[m.pick(h)],
                rev[m2.pick(h)],
                "same backend whatever the listing order"
            );
        }
    }

    #[test]
    fn removing_one_of_n_moves_about_one_nth() {
        let b = backends(10);
        let m = Maglev::build(&b, DEFAULT_TABLE_SIZE).unwrap();
        let gone = b[3];
        let fewer: Vec<_> = b.iter().copied().filter(|x| *x != gone).collect();
        let m2 = Maglev::build(&fewer, DEFAULT_TABLE_SIZE).unwrap();
        let (mut on_gone, mut moved_others, mut total) = (0, 0, 0);
        for h in flows() {
            total += 1;
            let before = b[m.pick(h)];
            let after = fewer[m2.pick(h)];
            if before == gone {
                on_gone += 1;
            } else if before != after {
                moved_others += 1;
            }
        }
        let share = on_gone as f64 / total as f64;
        assert!(
            (0.08..0.12).contains(&share),
            "the removed backend had about 1/10: {share}"
        );
        let churn = moved_others as f64 / total as f64;
        assert!(
            churn < 0.02,
            "flows on surviving backends stay put (Maglev's bound): {churn}"
        );
    }

    #[test]
    fn adding_one_moves_about_one_nth_to_it() {
        let b = backends(9);
        let mut more = b.clone();
        more.push((Ipv4Addr::new(10, 244, 9, 99), 8080));
        let m = Maglev::build(&b, DEFAULT_TABLE_SIZE).unwrap();
        let m2 = Maglev::build(&more, DEFAULT_TABLE_SIZE).unwrap();
        let (mut to_new, mut moved_others, mut total) = (0, 0, 0);
        for h in flows() {
            total += 1;
            let after = more[m2.pick(h)];
            if after == more[9] {
                to_new += 1;
            } else if after != b[m.pick(h)] {
                moved_others += 1;
            }
        }
        let share = to_new as f64 / total as f64;
        assert!((0.08..0.12).contains(&share), "{share}");
        assert!((moved_others as f64 / total as f64) < 0.02);
    }

    const PINNED: u64 = 0x8516_d645_dbda_bfc0;

    #[test]
    fn hashes_are_fixed() {
        // The table must be identical on every node: pin the hash to known values.
        let h = flow_hash(
            Ipv4Addr::new(10, 244, 1, 2),
            40000,
            Ipv4Addr::new(10, 96, 0, 10),
            80,
            6,
        );
        assert_eq!(h, PINNED);
        assert!(Maglev::build(&[], 7).is_none());
        let one = Maglev::build(&[(Ipv4Addr::new(1, 2, 3, 4), 1)], 7).unwrap();
        assert!((0..100).all(|h| one.pick(h) == 0));
    }
}
