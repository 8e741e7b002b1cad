//! A per-worker exact-match cache of Service NAT decisions, in front of the shared tables
//! (OVS's EMC in front of its classifier).
//!
//! Design: a direct-mapped array keyed by the packet's 5-tuple. An entry remembers the
//! translation a tracked flow's packets get (the new tuple and the precomputed RFC 1624
//! deltas for the IPv4 and L4 checksums), the conntrack entry and its version, and the
//! snapshot generation it was decided under. A hit is valid only if the generation is the
//! current one and the conntrack entry still holds the same connection (one atomic load), so
//! the cache is invalidated by generation and by version, never by scanning. It belongs to one
//! worker's [`super::Pipeline`]: no sharing, no synchronisation.

use crate::conntrack::{Dir, FlowKey};
use crate::wire::checksum::{delta16 as ones_delta16, delta32 as ones_delta32};

/// Entries per worker (64 bytes each).
const SLOTS: usize = 1024;

/// One cached decision.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cached {
    /// Packed key: src, dst, sport<<16|dport, proto (0 = empty slot).
    src: u32,
    dst: u32,
    ports: u32,
    proto: u8,
    reply: bool,
    generation: u64,
    pub entry: u32,
    pub version: u32,
    pub to_src: u32,
    pub to_dst: u32,
    pub to_ports: u32,
    /// Delta for the IPv4 header checksum.
    pub d_ip: u32,
    /// Delta for the TCP/UDP checksum (addresses and ports).
    pub d_l4: u32,
    /// A "nothing to translate" entry, valid while no conntrack entry has been created since
    /// `epoch` (only a new entry can make a tuple translatable).
    pub pass: bool,
    /// The conntrack insert count when a pass entry was made.
    pub epoch: u64,
}

impl Cached {
    /// Direction of the cached packets relative to the connection.
    pub fn dir(&self) -> Dir {
        if self.reply {
            Dir::Reply
        } else {
            Dir::Original
        }
    }
}

/// The cache.
#[derive(Debug)]
pub(super) struct FlowCache {
    slots: Box<[Cached]>,
}

impl Default for FlowCache {
    fn default() -> Self {
        FlowCache {
            slots: vec![Cached::default(); SLOTS].into_boxed_slice(),
        }
    }
}

#[inline]
fn slot_of(k: &FlowKey) -> usize {
    ((u128::from(k.hash()) * SLOTS as u128) >> 64) as usize
}

impl FlowCache {
    /// The cached decision for a packet tuple, if one was stored under `generation`.
    #[inline]
    pub fn get(&self, k: &FlowKey, generation: u64) -> Option<&Cached> {
        let c = self.slots.get(slot_of(k))?;
        (c.proto == k.proto
            && c.proto != 0
            && c.src == u32::from(k.src)
            && c.dst == u32::from(k.dst)
            && c.ports == (u32::from(k.sport) << 16 | u32::from(k.dport))
            && c.generation == generation)
            .then_some(c)
    }

    /// Remembers that packets with tuple `from` become `to`.
    #[allow(clippy::too_many_arguments)]
    pub fn put(
        &mut self,
        from: &FlowKey,
        to: &FlowKey,
        dir: Dir,
        entry: u32,
        version: u32,
        generation: u64,
    ) {
        let mut d_ip = 0;
        if from.src != to.src {
            d_ip += ones_delta32(from.src.into(), to.src.into());
        }
        if from.dst != to.dst {
            d_ip += ones_delta32(from.dst.into(), to.dst.into());
        }
        let mut d_l4 = d_ip;
        if from.sport != to.sport {
            d_l4 += ones_delta16(from.sport, to.sport);
        }
        if from.dport != to.dport {
            d_l4 += ones_delta16(from.dport, to.dport);
        }
        if let Some(s) = self.slots.get_mut(slot_of(from)) {
            *s = Cached {
                src: from.src.into(),
                dst: from.dst.into(),
                ports: u32::from(from.sport) << 16 | u32::from(from.dport),
                proto: from.proto,
                reply: dir == Dir::Reply,
                generation,
                entry,
                version,
                to_src: to.src.into(),
                to_dst: to.dst.into(),
                to_ports: u32::from(to.sport) << 16 | u32::from(to.dport),
                d_ip,
                d_l4,
                pass: false,
                epoch: 0,
            };
        }
    }

    /// Remembers that packets with tuple `k` need no translation, as of conntrack `epoch`.
    pub fn put_pass(&mut self, k: &FlowKey, generation: u64, epoch: u64) {
        if let Some(s) = self.slots.get_mut(slot_of(k)) {
            *s = Cached {
                src: k.src.into(),
                dst: k.dst.into(),
                ports: u32::from(k.sport) << 16 | u32::from(k.dport),
                proto: k.proto,
                generation,
                pass: true,
                epoch,
                ..Cached::default()
            };
        }
    }

    /// Forgets a slot (its connection is gone).
    pub fn forget(&mut self, k: &FlowKey) {
        if let Some(s) = self.slots.get_mut(slot_of(k)) {
            s.proto = 0;
        }
    }
}
