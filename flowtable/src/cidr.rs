//! IPv4 prefixes (CIDR blocks) and a longest-prefix-match table over them.
//!
//! The table is built once per snapshot and read-only afterwards, so any number of workers
//! may look up concurrently. Lookups probe one hash map per distinct prefix length, longest
//! first: with one pod CIDR size in a cluster (the usual case) that is one hash lookup.

use crate::hash::FastMap as HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix with no host bits set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: u32,
    len: u8,
}

/// Error parsing a prefix from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not of the form a.b.c.d/len.
    #[error("'{0}' is not an IPv4 CIDR (expected a.b.c.d/len)")]
    Syntax(String),
    /// Prefix length above 32.
    #[error("'{0}': prefix length must be 0 to 32")]
    Length(String),
    /// Bits set beyond the prefix length.
    #[error("'{0}' has host bits set (did you mean {1}?)")]
    HostBits(String, String),
}

#[inline]
fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl Ipv4Cidr {
    /// A prefix from an address and length; `None` if host bits are set or len > 32.
    #[inline]
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        if len > 32 {
            return None;
        }
        let a = u32::from(addr);
        (a & mask(len) == a).then_some(Ipv4Cidr { addr: a, len })
    }

    /// The network address.
    #[inline]
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }

    /// The prefix length.
    #[inline]
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The broadcast address (last address of the block).
    #[inline]
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr | !mask(self.len))
    }

    /// The n-th address of the block (n = 1 is the conventional gateway); `None` past the end.
    #[inline]
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - u32::from(self.len));
        (u64::from(n) < size).then(|| Ipv4Addr::from(self.addr + n))
    }

    /// True if `ip` is inside the block.
    #[inline]
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.addr
    }

    /// True if the two blocks share any address.
    #[inline]
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        let l = self.len.min(other.len);
        self.addr & mask(l) == other.addr & mask(l)
    }
}

impl fmt::Display for Ipv4Cidr {
    #[inline]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.len)
    }
}

impl fmt::Debug for Ipv4Cidr {
    #[inline]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;
    #[inline]
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| CidrError::Syntax(s.into()))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let len: u8 = l.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        if len > 32 {
            return Err(CidrError::Length(s.into()));
        }
        let net = u32::from(addr) & mask(len);
        Ipv4Cidr::new(addr, len).ok_or_else(|| {
            CidrError::HostBits(s.into(), format!("{}/{}", Ipv4Addr::from(net), len))
        })
    }
}

/// Longest-prefix match from prefixes to values of type `V`.
#[derive(Debug, Clone)]
pub struct PrefixTable<V> {
    /// (prefix length, network -> value), longest prefix first.
    levels: Vec<(u8, HashMap<u32, V>)>,
}

impl<V> Default for PrefixTable<V> {
    #[inline]
    fn default() -> Self {
        PrefixTable { levels: Vec::new() }
    }
}

impl<V> PrefixTable<V> {
    /// Inserts or replaces the value for `cidr`.
    #[inline]
    pub fn insert(&mut self, cidr: Ipv4Cidr, v: V) {
        let i = match self.levels.iter().position(|(l, _)| *l <= cidr.len) {
            Some(i) if self.levels[i].0 == cidr.len => i,
            Some(i) => {
                self.levels.insert(i, (cidr.len, HashMap::default()));
                i
            }
            None => {
                self.levels.push((cidr.len, HashMap::default()));
                self.levels.len() - 1
            }
        };
        self.levels[i].1.insert(cidr.addr, v);
    }

    /// How many prefixes it holds.
    pub fn len(&self) -> usize {
        self.levels.iter().map(|(_, m)| m.len()).sum()
    }

    /// Whether it holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// The value of the longest prefix containing `ip`.
    #[inline]
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<&V> {
        let a = u32::from(ip);
        self.levels.iter().find_map(|(l, m)| m.get(&(a & mask(*l))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contain() {
        let c: Ipv4Cidr = "10.244.1.0/24".parse().unwrap();
        assert!(c.contains(Ipv4Addr::new(10, 244, 1, 200)));
        assert!(!c.contains(Ipv4Addr::new(10, 244, 2, 1)));
        assert_eq!(c.nth(1), Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(c.nth(256), None);
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 244, 1, 255));
        assert_eq!(c.to_string(), "10.244.1.0/24");
        assert!(
            matches!("10.244.1.5/24".parse::<Ipv4Cidr>(), Err(CidrError::HostBits(_, s)) if s == "10.244.1.0/24")
        );
        assert!(matches!(
            "10.244.1.0/33".parse::<Ipv4Cidr>(),
            Err(CidrError::Length(_))
        ));
        assert!(matches!(
            "10.244.1.0".parse::<Ipv4Cidr>(),
            Err(CidrError::Syntax(_))
        ));
        let all: Ipv4Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
    }

    #[test]
    fn overlap() {
        let a: Ipv4Cidr = "10.244.0.0/16".parse().unwrap();
        let b: Ipv4Cidr = "10.244.3.0/24".parse().unwrap();
        let c: Ipv4Cidr = "10.245.0.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }

    #[test]
    fn longest_prefix_wins() {
        let mut t = PrefixTable::default();
        t.insert("10.0.0.0/8".parse().unwrap(), 1);
        t.insert("10.244.2.0/24".parse().unwrap(), 2);
        t.insert("10.244.0.0/16".parse().unwrap(), 3);
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 2, 9)), Some(&2));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 244, 3, 9)), Some(&3));
        assert_eq!(t.lookup(Ipv4Addr::new(10, 1, 3, 9)), Some(&1));
        assert_eq!(t.lookup(Ipv4Addr::new(11, 1, 3, 9)), None);
    }
}
