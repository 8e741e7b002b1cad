//! Connection tracking for Service NAT, shared by every worker.
//!
//! Design: a fixed-capacity table allocated once (memory is bounded by the configured
//! capacity and never grows). Entries live in an array; an open-addressing index maps both
//! directions' 5-tuples to an entry (like Linux's two tuplehashes), so the two directions of a
//! flow may be handled by different workers. All fields are atomics:
//! - lookups take no lock: probe the index, read the entry under a per-entry sequence number
//!   (a seqlock: retry if a writer was in the middle) and compare the full key;
//! - inserts take a free entry from a lock-free queue and claim index slots with CAS;
//! - state updates (last seen, TCP state, replied) are single-word atomic stores;
//! - removal (expiry by [`Conntrack::gc`], or eviction under pressure) claims the entry with a
//!   CAS so exactly one thread frees it, tombstones its index slots and returns it to the queue.
//!
//! When the table is full a new flow may evict an *unreplied* entry (a SYN flood's, or a UDP
//! probe's), never a replied/established one; if none is found the new flow is refused and the
//! caller counts the drop. GC runs off the packet path, so the table recovers by itself.
//!
//! Memory: 48 bytes per entry plus 16 bytes of index per entry (see [`Conntrack::bytes_per_entry`]).

use crossbeam_queue::ArrayQueue;
use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::*};

/// A 5-tuple as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// A well-mixed 64-bit hash of the tuple (not stable across versions; for in-memory tables).
    #[inline]
    pub fn hash(&self) -> u64 {
        let a = (u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst));
        let b =
            (u64::from(self.sport) << 24) | (u64::from(self.dport) << 8) | u64::from(self.proto);
        let mut h = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f);
        h ^= h >> 31;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 29)
    }
}

/// Which way a packet travels relative to the packet that created the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Same direction as the first packet (client to Service).
    Original,
    /// The reply direction (backend to client).
    Reply,
}

/// Connection state, from the TCP flags seen (other protocols use New/Established only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// Only the opening direction has been seen (TCP: SYN sent).
    New = 1,
    /// Both directions seen.
    Established = 2,
    /// FIN or RST seen.
    Closing = 3,
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Entry index (for [`Conntrack::touch`] and [`Conntrack::remove`]).
    pub entry: u32,
    /// Direction of the packet looked up.
    pub dir: Dir,
    /// The tuple the first packet had.
    pub original: FlowKey,
    /// The tuple the first packet was translated to.
    pub translated: FlowKey,
    /// Current state.
    pub state: CtState,
    /// True once a reply-direction packet has been seen.
    pub replied: bool,
    /// The entry's version when it was read (see [`Conntrack::is_current`]).
    pub version: u32,
}

/// Timeouts in seconds (defaults close to Cilium's and the kernel's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP with only the SYN side seen.
    pub tcp_syn: u32,
    /// TCP established.
    pub tcp_established: u32,
    /// TCP after FIN/RST.
    pub tcp_closing: u32,
    /// UDP (and others) never replied.
    pub udp_unreplied: u32,
    /// UDP (and others) replied.
    pub udp_replied: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: 60,
            tcp_established: 21600,
            tcp_closing: 10,
            udp_unreplied: 30,
            udp_replied: 120,
        }
    }
}

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// No free entry and nothing evictable: the flow is not tracked.
    Full,
    /// The translated flow's reply tuple is already tracked (a NAT clash): pick another port.
    Clash,
}

/// What one GC pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Entries examined.
    pub scanned: u64,
    /// Entries removed because they expired.
    pub expired: u64,
}

/// Cumulative counters (readable from any thread).
#[derive(Debug, Default)]
pub struct CtCounters {
    /// Entries created.
    pub inserted: AtomicU64,
    /// Inserts refused because the table was full.
    pub full: AtomicU64,
    /// Unreplied entries evicted to admit new flows.
    pub evicted: AtomicU64,
    /// Entries expired by GC.
    pub expired: AtomicU64,
}

const EMPTY: u32 = 0;
const TOMB: u32 = 1;
const IDX_BITS: u32 = 24;
const IDX_MASK: u32 = (1 << IDX_BITS) - 1;
const DIR_BIT: u32 = 1 << IDX_BITS;
const MAX_PROBE: usize = 64;
/// Largest supported capacity (entry indices are 24 bits, less the two reserved values).
pub const MAX_CAPACITY: usize = (1 << IDX_BITS) - 2;

const ALIVE: u32 = 1 << 31;
const REPLIED: u32 = 1 << 30;

#[inline]
fn ver(st: u64) -> u32 {
    (st >> 32) as u32
}

#[inline]
fn flags(st: u64) -> u32 {
    st as u32
}

#[inline]
fn pack(version: u32, meta: u32) -> u64 {
    (u64::from(version) << 32) | u64::from(meta)
}

#[inline]
fn state_of(meta: u32) -> CtState {
    match (meta >> 8) as u8 {
        2 => CtState::Established,
        3 => CtState::Closing,
        _ => CtState::New,
    }
}

/// `st` packs the entry's version (high 32 bits: even when stable, odd while written, bumped
/// on every insert and free) with its flags (low 32 bits: ALIVE | REPLIED | state << 8 |
/// proto), so that claiming an entry for removal or updating its state is one CAS that fails
/// if the entry was reused in between.
#[derive(Debug, Default)]
struct Entry {
    st: AtomicU64,
    o_src: AtomicU32,
    o_dst: AtomicU32,
    o_ports: AtomicU32,
    n_src: AtomicU32,
    n_dst: AtomicU32,
    n_ports: AtomicU32,
    last_seen: AtomicU32,
    /// A fixed timeout in seconds (affinity records), or 0: derive it from the state.
    timeout: AtomicU32,
    /// For flows from outside the cluster: 1 << 48 | the MAC replies go back to (else 0).
    peer: AtomicU64,
}

/// The connection-tracking table.
#[derive(Debug)]
pub struct Conntrack {
    entries: Box<[Entry]>,
    index: Box<[AtomicU32]>,
    free: ArrayQueue<u32>,
    evict_cursor: AtomicU32,
    gc_cursor: AtomicU32,
    timeouts: Timeouts,
    /// Cumulative counters.
    pub counters: CtCounters,
}

fn pack_ports(a: u16, b: u16) -> u32 {
    (u32::from(a) << 16) | u32::from(b)
}

impl Conntrack {
    /// A table for at most `capacity` connections (clamped to 1..=[`MAX_CAPACITY`]).
    pub fn new(capacity: usize, timeouts: Timeouts) -> Conntrack {
        let capacity = capacity.clamp(1, MAX_CAPACITY);
        // Two keys per entry at a load factor of at most 1/2; any slot count works because
        // the home slot is found by multiply-shift, not by masking.
        let slots = capacity * 4;
        let free = ArrayQueue::new(capacity);
        for i in 0..capacity as u32 {
            let _ = free.push(i);
        }
        Conntrack {
            entries: (0..capacity).map(|_| Entry::default()).collect(),
            index: (0..slots).map(|_| AtomicU32::new(EMPTY)).collect(),
            free,
            evict_cursor: AtomicU32::new(0),
            gc_cursor: AtomicU32::new(0),
            timeouts,
            counters: CtCounters::default(),
        }
    }

    /// Maximum number of connections.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Connections currently tracked.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// True if nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of memory per tracked connection at full capacity (entries plus index).
    pub fn bytes_per_entry(&self) -> usize {
        (std::mem::size_of::<Entry>() * self.entries.len() + 4 * self.index.len())
            / self.entries.len()
    }

    fn timeout_for(&self, proto: u8, state: CtState, replied: bool) -> u32 {
        let t = &self.timeouts;
        if proto == 6 {
            match state {
                CtState::New => t.tcp_syn,
                CtState::Established => t.tcp_established,
                CtState::Closing => t.tcp_closing,
            }
        } else if replied {
            t.udp_replied
        } else {
            t.udp_unreplied
        }
    }

    /// Home slot (multiply-shift over the high bits) and 7-bit tag (low bits) of a key hash.
    #[inline]
    fn home(&self, h: u64) -> (usize, u32) {
        let i = ((u128::from(h) * self.index.len() as u128) >> 64) as usize;
        (i, ((h & 0x7f) as u32) << 25)
    }

    #[inline]
    fn next_slot(&self, i: usize) -> usize {
        if i + 1 == self.index.len() {
            0
        } else {
            i + 1
        }
    }

    /// Reads an entry's identity under its seqlock: (original, translated, flags, version);
    /// `None` if it is free, dead or being rewritten.
    fn read(&self, i: u32) -> Option<(FlowKey, FlowKey, u32, u32)> {
        let e = self.entries.get(i as usize)?;
        let s1 = e.st.load(Acquire);
        if ver(s1) & 1 == 1 || flags(s1) & ALIVE == 0 {
            return None;
        }
        let (os, od, op) = (
            e.o_src.load(Relaxed),
            e.o_dst.load(Relaxed),
            e.o_ports.load(Relaxed),
        );
        let (ns, nd, np) = (
            e.n_src.load(Relaxed),
            e.n_dst.load(Relaxed),
            e.n_ports.load(Relaxed),
        );
        fence(Acquire);
        let s2 = e.st.load(Relaxed);
        if ver(s2) != ver(s1) || flags(s2) & ALIVE == 0 {
            return None;
        }
        let meta = flags(s2);
        let proto = meta as u8;
        let key = |src: u32, dst: u32, ports: u32| FlowKey {
            src: src.into(),
            dst: dst.into(),
            sport: (ports >> 16) as u16,
            dport: ports as u16,
            proto,
        };
        Some((key(os, od, op), key(ns, nd, np), meta, ver(s1)))
    }

    /// Looks a packet's 5-tuple up in both directions. Lock-free.
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<Hit> {
        let (mut i, tag) = self.home(key.hash());
        for _ in 0..MAX_PROBE {
            let s = self.index[i].load(Acquire);
            if s == EMPTY {
                return None;
            }
            if s != TOMB && s & (0x7f << 25) == tag {
                let entry = (s & IDX_MASK) - 2;
                let dir = if s & DIR_BIT == 0 {
                    Dir::Original
                } else {
                    Dir::Reply
                };
                if let Some((orig, tr, meta, version)) = self.read(entry) {
                    let k = match dir {
                        Dir::Original => orig,
                        Dir::Reply => tr.reversed(),
                    };
                    if k == *key {
                        return Some(Hit {
                            entry,
                            dir,
                            original: orig,
                            translated: tr,
                            state: state_of(meta),
                            replied: meta & REPLIED != 0,
                            version,
                        });
                    }
                }
            }
            i = self.next_slot(i);
        }
        None
    }

    /// True if `entry` still holds the connection it held at `version` (it has not been
    /// removed, and not reused for another). One atomic load: what a flow cache checks.
    #[inline]
    pub fn is_current(&self, entry: u32, version: u32) -> bool {
        self.entries.get(entry as usize).is_some_and(|e| {
            let st = e.st.load(Acquire);
            ver(st) == version && flags(st) & ALIVE != 0
        })
    }

    /// How many entries were ever created: a flow cache's "nothing to translate" entries are
    /// valid only while this has not changed.
    #[inline]
    pub fn insert_epoch(&self) -> u64 {
        self.counters.inserted.load(Acquire)
    }

    /// The current version of `entry` (changes whenever it is freed or reused).
    #[inline]
    pub fn version(&self, entry: u32) -> u32 {
        self.entries
            .get(entry as usize)
            .map_or(1, |e| ver(e.st.load(Acquire)))
    }

    /// For a flow that came in on the uplink, the MAC its replies go back to.
    #[inline]
    pub fn peer(&self, entry: u32) -> Option<[u8; 6]> {
        let p = self.entries.get(entry as usize)?.peer.load(Relaxed);
        (p >> 48 == 1).then(|| {
            let b = p.to_be_bytes();
            [b[2], b[3], b[4], b[5], b[6], b[7]]
        })
    }

    /// True if some entry's reply direction is exactly `reply_key`.
    pub fn reply_in_use(&self, reply_key: &FlowKey) -> bool {
        self.lookup(reply_key).is_some()
    }

    fn claim_slot(&self, key: &FlowKey, value_without_tag: u32) -> Option<usize> {
        let (mut i, tag) = self.home(key.hash());
        for _ in 0..MAX_PROBE {
            let s = self.index[i].load(Acquire);
            if (s == EMPTY || s == TOMB)
                && self.index[i]
                    .compare_exchange(s, tag | value_without_tag, AcqRel, Acquire)
                    .is_ok()
            {
                return Some(i);
            }
            i = self.next_slot(i);
        }
        None
    }

    fn release_slot(&self, key: &FlowKey, value_without_tag: u32) {
        let (mut i, tag) = self.home(key.hash());
        let v = tag | value_without_tag;
        for _ in 0..MAX_PROBE {
            let s = self.index[i].load(Acquire);
            if s == EMPTY {
                return;
            }
            if s == v {
                let _ = self.index[i].compare_exchange(s, TOMB, AcqRel, Acquire);
                return;
            }
            i = self.next_slot(i);
        }
    }

    /// Tracks a new flow: `original` was translated to `translated`. Returns the entry.
    pub fn insert(
        &self,
        original: FlowKey,
        translated: FlowKey,
        now: u32,
    ) -> Result<u32, InsertError> {
        self.insert_with_timeout(original, translated, now, None)
    }

    /// As [`Conntrack::insert`], with a fixed timeout instead of the protocol's (affinity).
    pub fn insert_with_timeout(
        &self,
        original: FlowKey,
        translated: FlowKey,
        now: u32,
        timeout: Option<u32>,
    ) -> Result<u32, InsertError> {
        self.insert_full(original, translated, now, timeout, None)
    }

    /// As [`Conntrack::insert`], with an optional fixed timeout and, for flows from outside
    /// the cluster, the MAC address replies are sent back to.
    pub fn insert_full(
        &self,
        original: FlowKey,
        translated: FlowKey,
        now: u32,
        timeout: Option<u32>,
        peer: Option<[u8; 6]>,
    ) -> Result<u32, InsertError> {
        self.insert_versioned(original, translated, now, timeout, peer, true)
            .map(|(e, _)| e)
    }

    /// The insert behind all others: returns the entry and the version it was published with
    /// (for a flow cache). With `index_reply` false only the original tuple is indexed (for
    /// records that are looked up one way only, such as ClientIP affinity).
    pub fn insert_versioned(
        &self,
        original: FlowKey,
        translated: FlowKey,
        now: u32,
        timeout: Option<u32>,
        peer: Option<[u8; 6]>,
        index_reply: bool,
    ) -> Result<(u32, u32), InsertError> {
        let reply = translated.reversed();
        if index_reply && self.lookup(&reply).is_some() {
            return Err(InsertError::Clash);
        }
        let Some(i) = self.free.pop().or_else(|| self.evict_unreplied(now)) else {
            self.counters.full.fetch_add(1, Relaxed);
            return Err(InsertError::Full);
        };
        let e = &self.entries[i as usize];
        // A free entry is ours alone: not ALIVE, in no index slot, in no queue.
        let v = ver(e.st.load(Relaxed)) | 1;
        e.st.store(pack(v, 0), Relaxed);
        fence(Release);
        e.o_src.store(original.src.into(), Relaxed);
        e.o_dst.store(original.dst.into(), Relaxed);
        e.o_ports
            .store(pack_ports(original.sport, original.dport), Relaxed);
        e.n_src.store(translated.src.into(), Relaxed);
        e.n_dst.store(translated.dst.into(), Relaxed);
        e.n_ports
            .store(pack_ports(translated.sport, translated.dport), Relaxed);
        e.last_seen.store(now, Relaxed);
        let p = peer.map_or(0, |m| {
            (1u64 << 48) | u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
        });
        e.peer.store(p, Relaxed);
        e.timeout.store(timeout.unwrap_or(0), Relaxed);
        // Index it while it is still odd (readers miss it); it goes live only once indexed,
        // so GC and eviction can never free an entry that is half inserted.
        let published = v.wrapping_add(1);
        let fail = |claimed_original: bool| {
            if claimed_original {
                self.release_slot(&original, i + 2);
            }
            e.st.store(pack(published, 0), Release);
            let _ = self.free.push(i);
            self.counters.full.fetch_add(1, Relaxed);
            Err(InsertError::Full)
        };
        if self.claim_slot(&original, i + 2).is_none() {
            return fail(false);
        }
        if index_reply && self.claim_slot(&reply, DIR_BIT | (i + 2)).is_none() {
            return fail(true);
        }
        e.st.store(
            pack(
                published,
                ALIVE | ((CtState::New as u32) << 8) | u32::from(original.proto),
            ),
            Release,
        );
        self.counters.inserted.fetch_add(1, Release);
        Ok((i, published))
    }

    /// Records a packet of the flow: last-seen time, the reply flag and the TCP state.
    #[inline]
    pub fn touch(&self, entry: u32, dir: Dir, tcp_flags: Option<u8>, now: u32) {
        let Some(e) = self.entries.get(entry as usize) else {
            return;
        };
        let version = ver(e.st.load(Acquire));
        e.last_seen.store(now, Relaxed);
        self.update_state(e, version, dir, tcp_flags);
    }

    /// [`Conntrack::touch`] for a flow cache hit: records the packet only if `entry` still
    /// holds the connection it held at `version`; returns whether it did.
    #[inline]
    pub fn touch_current(
        &self,
        entry: u32,
        version: u32,
        dir: Dir,
        tcp_flags: Option<u8>,
        now: u32,
    ) -> bool {
        let Some(e) = self.entries.get(entry as usize) else {
            return false;
        };
        let st = e.st.load(Acquire);
        if ver(st) != version || flags(st) & ALIVE == 0 {
            return false;
        }
        e.last_seen.store(now, Relaxed);
        self.update_state(e, version, dir, tcp_flags)
    }

    /// Applies a packet's direction and TCP flags to the entry's flags (a CAS loop that fails
    /// if the entry stops being `version`); false if it is dead or reused.
    #[inline]
    fn update_state(&self, e: &Entry, version: u32, dir: Dir, tcp_flags: Option<u8>) -> bool {
        let fin_rst = tcp_flags.is_some_and(|f| f & 0x05 != 0);
        let mut st = e.st.load(Acquire);
        loop {
            let old = flags(st);
            if ver(st) != version || old & ALIVE == 0 {
                return false;
            }
            // The common case: an established flow's packet without FIN/RST changes nothing.
            if !fin_rst
                && state_of(old) == CtState::Established
                && (dir == Dir::Original || old & REPLIED != 0)
            {
                return true;
            }
            let mut m = old;
            let reopen = dir == Dir::Original
                && state_of(old) == CtState::Closing
                && tcp_flags.is_some_and(|f| f & 0x12 == 0x02);
            if reopen {
                // A new SYN on a closed connection's tuple (port reuse): start over.
                m &= !REPLIED;
                m = (m & !0xff00) | ((CtState::New as u32) << 8);
            }
            if dir == Dir::Reply {
                m |= REPLIED;
            }
            let state = state_of(m);
            let new_state = match tcp_flags {
                _ if reopen => CtState::New,
                Some(f) if f & 0x05 != 0 => CtState::Closing,
                Some(_) if dir == Dir::Reply && state == CtState::New => CtState::Established,
                None if m & REPLIED != 0 && state == CtState::New => CtState::Established,
                _ => state,
            };
            m = (m & !0xff00) | ((new_state as u32) << 8);
            if m == old {
                return true;
            }
            match e
                .st
                .compare_exchange_weak(st, pack(version, m), AcqRel, Acquire)
            {
                Ok(_) => return true,
                Err(cur) => st = cur,
            }
        }
    }

    /// Removes an entry (for example, a UDP flow whose backend is gone). Safe to race: exactly
    /// one remover frees a given incarnation, and a reused entry is never removed by mistake.
    pub fn remove(&self, entry: u32) -> bool {
        let Some(e) = self.entries.get(entry as usize) else {
            return false;
        };
        let Some((orig, tr, _, version)) = self.read(entry) else {
            return false;
        };
        let mut st = e.st.load(Acquire);
        loop {
            if ver(st) != version || flags(st) & ALIVE == 0 {
                return false;
            }
            match e
                .st
                .compare_exchange_weak(st, st & !u64::from(ALIVE), AcqRel, Acquire)
            {
                Ok(_) => break,
                Err(cur) => st = cur,
            }
        }
        self.release_slot(&orig, entry + 2);
        self.release_slot(&tr.reversed(), DIR_BIT | (entry + 2));
        // Bump the version so readers and flow caches holding the old one let go.
        e.st.store(pack(version.wrapping_add(2), 0), Release);
        let _ = self.free.push(entry);
        true
    }

    /// Under pressure: evicts one unreplied entry near a rotating cursor, if any.
    fn evict_unreplied(&self, _now: u32) -> Option<u32> {
        let n = self.entries.len() as u32;
        for _ in 0..4 {
            let start = self.evict_cursor.fetch_add(32, Relaxed) % n;
            for k in 0..32u32.min(n) {
                let i = (start + k) % n;
                let m = flags(self.entries[i as usize].st.load(Relaxed));
                if m & ALIVE != 0 && m & REPLIED == 0 && self.remove(i) {
                    self.counters.evicted.fetch_add(1, Relaxed);
                    return self.free.pop();
                }
            }
        }
        None
    }

    /// Expires entries not seen within their timeout, scanning at most `budget` entries from
    /// where the previous pass stopped. Call it from a housekeeping thread, not per packet.
    pub fn gc(&self, now: u32, budget: usize) -> GcStats {
        let n = self.entries.len() as u32;
        let mut stats = GcStats::default();
        for _ in 0..budget.min(n as usize) {
            let i = self.gc_cursor.fetch_add(1, Relaxed) % n;
            stats.scanned += 1;
            let e = &self.entries[i as usize];
            let m = flags(e.st.load(Relaxed));
            if m & ALIVE == 0 {
                continue;
            }
            let fixed = e.timeout.load(Relaxed);
            let timeout = if fixed != 0 {
                fixed
            } else {
                self.timeout_for(m as u8, state_of(m), m & REPLIED != 0)
            };
            let age = now.saturating_sub(e.last_seen.load(Relaxed));
            if age > timeout && self.remove(i) {
                stats.expired += 1;
                self.counters.expired.fetch_add(1, Relaxed);
            }
        }
        stats
    }

    /// Every live entry (for `switchctl ct list` and tests): (original, translated, state, replied).
    pub fn entries(&self) -> Vec<(FlowKey, FlowKey, CtState, bool)> {
        (0..self.entries.len() as u32)
            .filter_map(|i| {
                let (o, t, m, _) = self.read(i)?;
                Some((o, t, state_of(m), m & REPLIED != 0))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(a: u8, sp: u16, b: [u8; 4], dp: u16, proto: u8) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::new(10, 244, 1, a),
            dst: Ipv4Addr::from(b),
            sport: sp,
            dport: dp,
            proto,
        }
    }

    fn dnat(o: FlowKey, backend: u8) -> FlowKey {
        FlowKey {
            dst: Ipv4Addr::new(10, 244, 2, backend),
            dport: 8080,
            ..o
        }
    }

    #[test]
    fn both_directions_find_the_entry() {
        let ct = Conntrack::new(16, Timeouts::default());
        let o = k(2, 40000, [10, 96, 0, 10], 80, 6);
        let t = dnat(o, 9);
        let e = ct.insert(o, t, 100).unwrap();
        let h = ct.lookup(&o).unwrap();
        assert_eq!(
            (h.entry, h.dir, h.translated, h.state, h.replied),
            (e, Dir::Original, t, CtState::New, false)
        );
        let r = ct.lookup(&t.reversed()).unwrap();
        assert_eq!((r.dir, r.original), (Dir::Reply, o));
        assert!(
            ct.lookup(&t).is_none(),
            "the translated tuple itself is not a key"
        );
        assert_eq!(ct.len(), 1);
    }

    #[test]
    fn tcp_states_and_timeouts() {
        let ct = Conntrack::new(16, Timeouts::default());
        let o = k(2, 40000, [10, 96, 0, 10], 80, 6);
        let e = ct.insert(o, dnat(o, 9), 0).unwrap();
        ct.touch(e, Dir::Reply, Some(0x12), 1);
        let h = ct.lookup(&o).unwrap();
        assert_eq!((h.state, h.replied), (CtState::Established, true));
        // Established survives far longer than a SYN would.
        assert_eq!(ct.gc(1000, 16).expired, 0);
        ct.touch(e, Dir::Original, Some(0x11), 1000);
        assert_eq!(ct.lookup(&o).unwrap().state, CtState::Closing);
        // A fresh SYN on the tuple reopens it; closing it again keeps the short timeout.
        ct.touch(e, Dir::Original, Some(0x02), 1000);
        assert_eq!(
            (ct.lookup(&o).unwrap().state, ct.lookup(&o).unwrap().replied),
            (CtState::New, false)
        );
        ct.touch(e, Dir::Original, Some(0x04), 1000);
        assert_eq!(ct.lookup(&o).unwrap().state, CtState::Closing);
        assert_eq!(ct.gc(1005, 16).expired, 0);
        assert_eq!(ct.gc(1011, 16).expired, 1);
        assert!(ct.lookup(&o).is_none());
        assert!(ct.is_empty());
    }

    #[test]
    fn udp_timeouts_depend_on_reply() {
        let ct = Conntrack::new(16, Timeouts::default());
        let a = k(2, 1, [10, 96, 0, 10], 53, 17);
        let b = k(3, 1, [10, 96, 0, 10], 53, 17);
        ct.insert(a, dnat(a, 9), 0).unwrap();
        let eb = ct.insert(b, dnat(b, 9), 0).unwrap();
        ct.touch(eb, Dir::Reply, None, 0);
        assert_eq!(ct.gc(31, 16).expired, 1);
        assert!(ct.lookup(&a).is_none() && ct.lookup(&b).is_some());
        assert_eq!(ct.gc(121, 16).expired, 1);
    }

    #[test]
    fn clash_on_reply_tuple_is_reported() {
        let ct = Conntrack::new(16, Timeouts::default());
        // Two Services, same backend, same client port: the translated tuples collide.
        let a = k(2, 40000, [10, 96, 0, 10], 80, 6);
        let b = k(2, 40000, [10, 96, 0, 11], 80, 6);
        ct.insert(a, dnat(a, 9), 0).unwrap();
        assert_eq!(ct.insert(b, dnat(b, 9), 0), Err(InsertError::Clash));
        let b2 = FlowKey {
            sport: 40001,
            ..dnat(b, 9)
        };
        assert!(ct.insert(b, b2, 0).is_ok());
    }

    #[test]
    fn full_table_evicts_only_unreplied() {
        let ct = Conntrack::new(4, Timeouts::default());
        let keys: Vec<FlowKey> = (0..4)
            .map(|i| k(10 + i, 1000, [10, 96, 0, 10], 80, 6))
            .collect();
        for key in &keys {
            let e = ct.insert(*key, dnat(*key, 9), 0).unwrap();
            ct.touch(e, Dir::Reply, Some(0x12), 0);
        }
        let new = k(99, 1000, [10, 96, 0, 10], 80, 6);
        assert_eq!(ct.insert(new, dnat(new, 9), 1), Err(InsertError::Full));
        assert!(
            keys.iter().all(|k| ct.lookup(k).is_some()),
            "established flows are never evicted"
        );
        assert_eq!(ct.counters.full.load(Relaxed), 1);
        // Make one unreplied: it is the one a new flow may take.
        ct.remove(ct.lookup(&keys[2]).unwrap().entry);
        let half = k(50, 1000, [10, 96, 0, 10], 80, 6);
        ct.insert(half, dnat(half, 9), 1).unwrap();
        ct.insert(new, dnat(new, 9), 2).unwrap();
        assert!(ct.lookup(&half).is_none() && ct.lookup(&new).is_some());
        assert_eq!(ct.counters.evicted.load(Relaxed), 1);
        // Pressure ends: GC frees expired entries and new flows are admitted again.
        ct.gc(100_000, 4);
        assert!(ct.is_empty());
        assert!(ct.insert(half, dnat(half, 9), 100_001).is_ok());
    }

    #[test]
    fn memory_per_connection() {
        let ct = Conntrack::new(1 << 20, Timeouts::default());
        assert!(ct.bytes_per_entry() <= 64, "{}", ct.bytes_per_entry());
    }

    #[test]
    fn churn_under_eviction_never_returns_a_torn_translation() {
        // A small table, four threads inserting unreplied flows (so inserts evict each
        // other's), and every hit checked against the translation its key must have.
        let ct = std::sync::Arc::new(Conntrack::new(64, Timeouts::default()));
        let tr_of = |o: &FlowKey| FlowKey {
            dst: Ipv4Addr::from(u32::from(o.src) ^ u32::from(o.sport)),
            dport: o.sport ^ 0x5a5a,
            ..*o
        };
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let ct = ct.clone();
                std::thread::spawn(move || {
                    for n in 0..20_000u32 {
                        let o = FlowKey {
                            src: Ipv4Addr::new(10, 244, t, (n % 200) as u8),
                            dst: Ipv4Addr::new(10, 96, 0, 1),
                            sport: (n % 5000) as u16,
                            dport: 80,
                            proto: 17,
                        };
                        let _ = ct.insert(o, tr_of(&o), n);
                        let probe = FlowKey {
                            sport: ((n * 7) % 5000) as u16,
                            ..o
                        };
                        if let Some(h) = ct.lookup(&probe) {
                            assert_eq!(h.original, probe);
                            assert_eq!(h.translated, tr_of(&probe), "torn entry");
                            if n % 3 == 0 {
                                ct.remove(h.entry);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Nothing leaked: every entry is either live and findable, or free.
        let live = ct.entries();
        assert_eq!(live.len(), ct.len());
        for (o, t, _, _) in live {
            assert_eq!(ct.lookup(&o).unwrap().translated, t);
            assert_eq!(ct.lookup(&t.reversed()).unwrap().original, o);
        }
        ct.gc(u32::MAX, 64);
        assert!(ct.is_empty());
        let probe = FlowKey {
            src: Ipv4Addr::new(1, 2, 3, 4),
            dst: Ipv4Addr::new(5, 6, 7, 8),
            sport: 1,
            dport: 2,
            proto: 6,
        };
        assert!(
            ct.insert(probe, tr_of(&probe), 0).is_ok(),
            "index slots were not leaked"
        );
    }

    #[test]
    fn concurrent_insert_lookup_remove() {
        let ct = std::sync::Arc::new(Conntrack::new(4096, Timeouts::default()));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let ct = ct.clone();
                std::thread::spawn(move || {
                    for round in 0..200u16 {
                        let mut mine = Vec::new();
                        for i in 0..16u16 {
                            let o = FlowKey {
                                src: Ipv4Addr::new(10, 244, 1, t),
                                dst: Ipv4Addr::new(10, 96, 0, 1),
                                sport: round * 16 + i,
                                dport: 80,
                                proto: 17,
                            };
                            let tr = FlowKey {
                                dst: Ipv4Addr::new(10, 244, 2, t),
                                dport: 8080,
                                ..o
                            };
                            let e = ct.insert(o, tr, 0).unwrap();
                            mine.push((o, tr, e));
                        }
                        for (o, tr, e) in &mine {
                            let h = ct.lookup(o).unwrap();
                            assert_eq!((h.entry, h.translated), (*e, *tr));
                            assert_eq!(ct.lookup(&tr.reversed()).unwrap().original, *o);
                        }
                        for (_, _, e) in mine {
                            assert!(ct.remove(e));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(ct.is_empty());
    }
}
