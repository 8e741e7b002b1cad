//! The table's storage: entries, the two-way index, the seqlock, the free list, and what a
//! packet does to an entry (insert, lookup, track, remove).
//!
//! Design: see the module docs of `conntrack`. Each entry's `st` word packs its version
//! (high 32 bits: even when stable, odd while an insert writes it, bumped on every insert
//! and free) with its flags (low 32 bits: ALIVE | REPLIED | ASSURED | BUSY | TCP state << 8
//! | protocol), so claiming, updating or freeing an entry is one CAS that fails if the entry
//! was reused in between. The tuple fields are written only while the version is odd; the
//! TCP fields only while BUSY is held; the deadline by whoever saw the packet last.

use super::region::{self, Identity, Memory, Opened, Recovery, Slab};
use super::tcp::{Side, Status, TcpConn, TcpState, TcpVerdict};
use super::{CtCounters, Dir, FlowKey, Hit, InsertError, Invalid, Segment, Timeouts, Track};
use crossbeam_queue::ArrayQueue;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering::*};

const EMPTY: u32 = 0;
const TOMB: u32 = 1;
const IDX_BITS: u32 = 24;
const IDX_MASK: u32 = (1 << IDX_BITS) - 1;
const DIR_BIT: u32 = 1 << IDX_BITS;
const MAX_PROBE: usize = 64;
/// Largest supported capacity (entry indices are 24 bits, less the two reserved values).
pub const MAX_CAPACITY: usize = (1 << IDX_BITS) - 2;

pub(super) const ALIVE: u32 = 1 << 31;
pub(super) const REPLIED: u32 = 1 << 30;
pub(super) const ASSURED: u32 = 1 << 29;
pub(super) const BUSY: u32 = 1 << 28;
/// The reply tuple is not indexed (a record looked up one way only, such as affinity).
pub(super) const ONE_WAY: u32 = 1 << 27;
const STATE_SHIFT: u32 = 8;
const STATE_MASK: u32 = 0xf << STATE_SHIFT;
/// How often a tracker spins on another worker's busy bit before passing the packet.
const BUSY_SPINS: u32 = 128;

#[inline]
pub(super) fn ver(st: u64) -> u32 {
    (st >> 32) as u32
}

#[inline]
pub(super) fn flags(st: u64) -> u32 {
    st as u32
}

#[inline]
fn pack(version: u32, meta: u32) -> u64 {
    (u64::from(version) << 32) | u64::from(meta)
}

#[inline]
pub(super) fn state_of(meta: u32) -> TcpState {
    TcpState::from_u8(((meta & STATE_MASK) >> STATE_SHIFT) as u8)
}

fn pack_ports(a: u16, b: u16) -> u32 {
    (u32::from(a) << 16) | u32::from(b)
}

/// One tracked connection: 80 bytes, every bit pattern valid (all atomics), all zero when
/// free; its layout is the shared region's (see `region`), so it is `repr(C)`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Entry {
    pub(super) st: AtomicU64,
    o_src: AtomicU32,
    o_dst: AtomicU32,
    o_ports: AtomicU32,
    n_src: AtomicU32,
    n_dst: AtomicU32,
    n_ports: AtomicU32,
    /// The clock second after which the entry is gone.
    pub(super) expires: AtomicU32,
    /// TCP: both sides' window scale and flags, the last segment's kind and direction.
    pub(super) tcp_meta: AtomicU32,
    /// For flows from outside the cluster: 1 << 48 | the MAC replies go back to (else 0).
    peer: AtomicU64,
    /// TCP: per side, highest end, highest allowed edge, largest window.
    pub(super) win: [AtomicU32; 6],
    /// TCP: the last segment's end.
    pub(super) last_end: AtomicU32,
}

impl Entry {
    /// Zeroes every field (a free entry of version 0).
    fn clear(&self) {
        self.st.store(0, Relaxed);
        for w in [
            &self.o_src,
            &self.o_dst,
            &self.o_ports,
            &self.n_src,
            &self.n_dst,
            &self.n_ports,
            &self.expires,
            &self.tcp_meta,
            &self.last_end,
        ] {
            w.store(0, Relaxed);
        }
        self.peer.store(0, Relaxed);
        for w in &self.win {
            w.store(0, Relaxed);
        }
    }
}

/// Live entries counted by kind ([`Conntrack::census`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// TCP connections, by state number ([`TcpState::ALL`]'s order).
    pub tcp: [u64; 10],
    /// UDP flows.
    pub udp: u64,
    /// ICMP echo flows.
    pub icmp: u64,
    /// Other protocols.
    pub other: u64,
    /// Session-affinity records (one-way, not connections).
    pub affinity: u64,
}

/// A live entry as `switchctl ct list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryInfo {
    /// The tuple the first packet had.
    pub original: FlowKey,
    /// What it was translated to.
    pub translated: FlowKey,
    /// TCP state (`None` for other protocols).
    pub state: TcpState,
    /// A reply has been seen.
    pub replied: bool,
    /// Assured (never evicted under pressure).
    pub assured: bool,
    /// Seconds until it expires unless traffic refreshes it.
    pub expires_in: u32,
}

/// A flow to start tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFlow {
    /// The tuple of its first packet.
    pub original: FlowKey,
    /// What that packet is translated to.
    pub translated: FlowKey,
    /// The first segment, for TCP: it sets the state and the window tracking.
    pub tcp: Option<Segment>,
    /// A fixed timeout instead of the protocol's (affinity records).
    pub timeout: Option<u32>,
    /// For flows from outside the cluster, the MAC address replies are sent back to.
    pub peer: Option<[u8; 6]>,
    /// Index the reply tuple too (false for records looked up one way only, such as
    /// ClientIP affinity).
    pub index_reply: bool,
}

impl NewFlow {
    /// A flow with no TCP segment, no fixed timeout and no peer, indexed both ways.
    pub fn new(original: FlowKey, translated: FlowKey) -> NewFlow {
        NewFlow {
            original,
            translated,
            tcp: None,
            timeout: None,
            peer: None,
            index_reply: true,
        }
    }
}

/// The connection-tracking table.
pub struct Conntrack {
    pub(super) entries: Slab<Entry>,
    index: Slab<AtomicU32>,
    header: Slab<region::Header>,
    /// Keeps mapped memory alive: after the slices into it, so dropped after them.
    owner: Option<Box<dyn Send + Sync>>,
    pub(super) free: ArrayQueue<u32>,
    pub(super) evict_cursor: AtomicU32,
    pub(super) gc_cursor: AtomicU32,
    pub(super) timeouts: Timeouts,
    now: AtomicU32,
    /// Live assured entries.
    assured: AtomicU64,
    /// Cumulative counters.
    pub counters: CtCounters,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("capacity", &self.entries.len())
            .field("len", &self.len())
            .field("mapped", &self.owner.is_some())
            .finish()
    }
}

impl Conntrack {
    /// A table for at most `capacity` connections (clamped to 1..=[`MAX_CAPACITY`]), in
    /// memory of this process.
    pub fn new(capacity: usize, timeouts: Timeouts) -> Conntrack {
        let id = Identity {
            node: String::new(),
            boot: [0; 16],
            pid: 0,
        };
        Conntrack::open(Memory::owned(capacity), timeouts, &id).0
    }

    /// A table in `memory`: taken over if it holds a table this build can read, made
    /// for `id` (see `region`), else wiped and new. Says which.
    pub fn open(memory: Memory, timeouts: Timeouts, id: &Identity) -> (Conntrack, Opened) {
        let Memory {
            header,
            entries,
            index,
            owner,
        } = memory;
        let capacity = entries.len();
        // Any slot count works because the home slot is found by multiply-shift, not by
        // masking; `region::layout` gives two keys per entry at a load factor of 1/2.
        let ct = Conntrack {
            entries,
            index,
            header,
            owner,
            free: ArrayQueue::new(capacity.max(1)),
            evict_cursor: AtomicU32::new(0),
            gc_cursor: AtomicU32::new(0),
            timeouts,
            now: AtomicU32::new(0),
            assured: AtomicU64::new(0),
            counters: CtCounters::default(),
        };
        let l = region::layout(capacity);
        let h = &ct.header[0];
        let opened = match h.check(&l, id) {
            Ok(None) => {
                ct.rebuild(true);
                Opened::Fresh
            }
            Ok(Some(clean)) => {
                let mut r = ct.rebuild(false);
                r.clean = clean;
                r.takeovers = h.took_over();
                Opened::Resumed(r)
            }
            Err(why) => {
                h.wipe();
                ct.rebuild(true);
                Opened::Replaced(why)
            }
        };
        h.claim(&l, id);
        (ct, opened)
    }

    /// Gives the memory back (a later [`Conntrack::open`] takes it over), as a process
    /// that dies leaves it: call [`Conntrack::close`] first for a clean handover.
    pub fn into_memory(self) -> Memory {
        Memory {
            header: self.header,
            entries: self.entries,
            index: self.index,
            owner: self.owner,
        }
    }

    /// Records that no writer is left (the workers have stopped): the next owner finds a
    /// clean region.
    pub fn close(&self) {
        self.header[0].close();
    }

    /// Rebuilds the index and the free list from the entries (before any worker runs):
    /// keeps each live, stable entry (all of them dropped if `wipe`), frees the rest.
    fn rebuild(&self, wipe: bool) -> Recovery {
        let mut r = Recovery::default();
        for s in self.index.iter() {
            s.store(EMPTY, Relaxed);
        }
        let mut assured = 0;
        for (i, e) in self.entries.iter().enumerate() {
            let i = i as u32;
            let st = e.st.load(Acquire);
            let (v, m) = (ver(st), flags(st));
            let keep = !wipe && m & ALIVE != 0 && v & 1 == 0 && m & BUSY == 0;
            if !wipe && v & 1 == 1 {
                r.torn += 1; // an insert in the middle of writing it (published or not)
            } else if !wipe && m & ALIVE != 0 && m & BUSY != 0 {
                r.busy += 1;
            }
            if keep {
                let (o, t) = self.tuple(e, m);
                let one_way = m & ONE_WAY != 0;
                let a = self.claim_slot(&o, i + 2);
                let b = one_way || self.claim_slot(&t.reversed(), DIR_BIT | (i + 2)).is_some();
                if a.is_some() && b {
                    r.kept += 1;
                    if m & ASSURED != 0 {
                        assured += 1;
                    }
                    continue;
                }
                if a.is_some() {
                    self.release_slot(&o, i + 2);
                }
                r.unindexed += 1;
            }
            if wipe {
                e.clear();
            } else {
                // Free, with a new even version: no flow cache can hold it (none survive a
                // process, but versions only ever move on).
                e.st.store(pack((v | 1).wrapping_add(1), 0), Release);
            }
            let _ = self.free.push(i);
        }
        self.assured.store(assured, Relaxed);
        r
    }

    /// An entry's tuples as stored (the caller knows it is stable).
    fn tuple(&self, e: &Entry, m: u32) -> (FlowKey, FlowKey) {
        let proto = m as u8;
        let key = |src: &AtomicU32, dst: &AtomicU32, ports: &AtomicU32| {
            let p = ports.load(Relaxed);
            FlowKey {
                src: src.load(Relaxed).into(),
                dst: dst.load(Relaxed).into(),
                sport: (p >> 16) as u16,
                dport: p as u16,
                proto,
            }
        };
        (
            key(&e.o_src, &e.o_dst, &e.o_ports),
            key(&e.n_src, &e.n_dst, &e.n_ports),
        )
    }

    /// Maximum number of connections.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Connections currently held (including any past their deadline not yet collected).
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// True if nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Bytes of memory per tracked connection at full capacity (entries plus index).
    pub fn bytes_per_entry(&self) -> usize {
        (std::mem::size_of::<Entry>() * self.entries.len() + 4 * self.index.len())
            / self.entries.len()
    }

    /// Advances the table's clock (seconds, any fixed epoch; never goes back).
    pub fn set_now(&self, secs: u32) {
        self.now.fetch_max(secs, Relaxed);
    }

    /// The table's clock.
    #[inline]
    pub fn now(&self) -> u32 {
        self.now.load(Relaxed)
    }

    /// True if the entry's deadline has passed.
    #[inline]
    pub(super) fn past_deadline(&self, e: &Entry, now: u32) -> bool {
        now > e.expires.load(Relaxed)
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
    pub(super) fn read(&self, i: u32) -> Option<(FlowKey, FlowKey, u32, u32)> {
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

    /// Looks a packet's 5-tuple up in both directions. Lock-free. An entry past its
    /// deadline is absent (and removed on the way).
    #[inline]
    pub fn lookup(&self, key: &FlowKey) -> Option<Hit> {
        let now = self.now();
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
                        if self.past_deadline(&self.entries[entry as usize], now) {
                            self.expire(entry, version, now);
                        } else {
                            return Some(Hit {
                                entry,
                                dir,
                                original: orig,
                                translated: tr,
                                state: state_of(meta),
                                replied: meta & REPLIED != 0,
                                assured: meta & ASSURED != 0,
                                version,
                            });
                        }
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

    /// True if some live entry's reply direction is exactly `reply_key`.
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

    /// Tracks a flow whose packets are not TCP-tracked (tests, tools): `original` was
    /// translated to `translated`. Returns the entry.
    pub fn insert(&self, original: FlowKey, translated: FlowKey) -> Result<u32, InsertError> {
        self.insert_flow(&NewFlow::new(original, translated))
            .map(|(e, _)| e)
    }

    /// Starts tracking a flow; returns the entry and the version it was published with (for
    /// a flow cache). A TCP flow's first segment is judged first: one that cannot open a
    /// connection is refused with [`InsertError::Invalid`] and takes no entry.
    pub fn insert_flow(&self, f: &NewFlow) -> Result<(u32, u32), InsertError> {
        let t = &self.timeouts;
        let (state, conn, timeout) = match (f.timeout, f.tcp) {
            (Some(fixed), _) => (TcpState::None, None, fixed),
            (None, Some(seg)) => {
                let mut c = TcpConn::open(&seg).map_err(InsertError::Invalid)?;
                match c.packet(0, &seg, Status::default(), t) {
                    TcpVerdict::Accept {
                        timeout,
                        kill: false,
                        ..
                    } => (c.state, Some(c), timeout.unwrap_or(t.tcp_syn_sent)),
                    TcpVerdict::Invalid(r) => return Err(InsertError::Invalid(r)),
                    _ => return Err(InsertError::Invalid(Invalid::New)),
                }
            }
            (None, None) => (TcpState::None, None, t.udp_unreplied),
        };
        let (original, translated) = (f.original, f.translated);
        let reply = translated.reversed();
        if f.index_reply && self.lookup(&reply).is_some() {
            return Err(InsertError::Clash);
        }
        let Some(i) = self.free.pop().or_else(|| self.evict()) else {
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
        e.expires.store(self.now().saturating_add(timeout), Relaxed);
        let p = f.peer.map_or(0, |m| {
            (1u64 << 48) | u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
        });
        e.peer.store(p, Relaxed);
        store_tcp(e, &conn.unwrap_or_default(), None);
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
        if f.index_reply && self.claim_slot(&reply, DIR_BIT | (i + 2)).is_none() {
            return fail(true);
        }
        e.st.store(
            pack(
                published,
                ALIVE
                    | if f.index_reply { 0 } else { ONE_WAY }
                    | ((state as u32) << STATE_SHIFT)
                    | u32::from(original.proto),
            ),
            Release,
        );
        self.counters.inserted.fetch_add(1, Release);
        Ok((i, published))
    }

    /// Records a packet of the connection `entry` held at `version`: judges a TCP segment
    /// (`seg`) by state and window, moves the state on, refreshes the deadline. For other
    /// protocols (`seg` is `None`) it records the reply and assured flags.
    #[inline]
    pub fn track(&self, entry: u32, version: u32, dir: Dir, seg: Option<&Segment>) -> Track {
        let Some(e) = self.entries.get(entry as usize) else {
            return Track::Gone;
        };
        match seg {
            Some(seg) => self.track_tcp(entry, e, version, dir, seg),
            None => self.track_datagram(e, version, dir),
        }
    }

    /// [`Conntrack::track`] for a TCP segment given as bytes, the packet path's way: `tcp`
    /// holds the TCP header and what follows, `l4_len` is the TCP length from the IP
    /// header. `None` if the header is malformed (see [`Segment::parse`]). A header with no
    /// options to read (none, or timestamps only) skips the option parser.
    #[inline(always)]
    pub fn track_tcp_bytes(
        &self,
        entry: u32,
        version: u32,
        dir: Dir,
        tcp: &[u8],
        l4_len: usize,
    ) -> Option<Track> {
        let fixed: &[u8; 20] = tcp.get(..20)?.try_into().ok()?;
        let hl = usize::from(fixed[12] >> 4) * 4;
        let plain = hl == 20 || (hl == 32 && tcp.get(20..24) == Some(&[1, 1, 8, 10][..]));
        let seg = if plain && hl <= l4_len {
            Segment::fixed(fixed, hl, l4_len)
        } else {
            Segment::from_header(fixed, tcp.get(20..).unwrap_or(&[]), l4_len)?
        };
        let e = self.entries.get(entry as usize)?;
        Some(self.track_tcp(entry, e, version, dir, &seg))
    }

    /// Refreshes the deadline of a record with a fixed timeout (affinity) to `timeout`
    /// seconds from now; false if it is gone.
    pub fn refresh(&self, entry: u32, version: u32, timeout: u32) -> bool {
        let Some(e) = self.entries.get(entry as usize) else {
            return false;
        };
        if !self.is_current(entry, version) {
            return false;
        }
        self.set_deadline(e, timeout);
        true
    }

    #[inline]
    fn set_deadline(&self, e: &Entry, timeout: u32) {
        let d = self.now().saturating_add(timeout);
        if e.expires.load(Relaxed) != d {
            e.expires.store(d, Relaxed);
        }
    }

    /// Sets the BUSY bit of `version`'s incarnation; `Err` with what to return if it is gone
    /// or another worker keeps it.
    #[inline(always)]
    fn claim(&self, e: &Entry, version: u32) -> Result<u64, Track> {
        let mut st = e.st.load(Acquire);
        let mut spins = 0;
        loop {
            if ver(st) != version || flags(st) & ALIVE == 0 {
                return Err(Track::Gone);
            }
            if flags(st) & BUSY != 0 {
                spins += 1;
                if spins > BUSY_SPINS {
                    self.counters.busy.fetch_add(1, Relaxed);
                    return Err(Track::Accept);
                }
                std::hint::spin_loop();
                st = e.st.load(Acquire);
                continue;
            }
            match e
                .st
                .compare_exchange_weak(st, st | u64::from(BUSY), Acquire, Acquire)
            {
                Ok(_) => return Ok(st),
                Err(cur) => st = cur,
            }
        }
    }

    #[inline(always)]
    fn track_tcp(&self, entry: u32, e: &Entry, version: u32, dir: Dir, seg: &Segment) -> Track {
        let st = match self.claim(e, version) {
            Ok(st) => st,
            Err(t) => return t,
        };
        let m = flags(st);
        if let Some(timeout) = self.established_ack(e, m, dir.index(), seg) {
            e.st.store(pack(version, m), Release);
            self.set_deadline(e, timeout);
            return Track::Accept;
        }
        self.track_tcp_slow(entry, e, version, m, dir, seg)
    }

    /// The full rules (`tcp.rs`) on a copy of the connection, stored back; the caller has
    /// claimed the entry (`m` is its flag word) and this releases it.
    #[inline(never)]
    fn track_tcp_slow(
        &self,
        entry: u32,
        e: &Entry,
        version: u32,
        m: u32,
        dir: Dir,
        seg: &Segment,
    ) -> Track {
        let before = load_tcp(e, m);
        let mut c = before;
        let status = Status {
            replied: m & REPLIED != 0,
            assured: m & ASSURED != 0,
        };
        let verdict = c.packet(dir.index(), seg, status, &self.timeouts);
        let mut nm = m;
        let mut kill = false;
        let out = match verdict {
            TcpVerdict::Accept {
                timeout,
                assured,
                kill: k,
            } => {
                if assured {
                    nm |= ASSURED;
                }
                if let Some(t) = timeout {
                    self.set_deadline(e, t);
                }
                kill = k;
                Track::Accept
            }
            TcpVerdict::Ignore => Track::Accept,
            TcpVerdict::Invalid(r) => {
                c = before;
                Track::Invalid(r)
            }
            TcpVerdict::Reopen => {
                c = before;
                Track::Reopen
            }
        };
        if out == Track::Accept {
            if dir == Dir::Reply {
                nm |= REPLIED;
            }
            nm = (nm & !STATE_MASK) | ((c.state as u32) << STATE_SHIFT);
            store_tcp(e, &c, Some(&before));
        }
        e.st.store(pack(version, nm), Release);
        if nm & !m & ASSURED != 0 {
            self.assured.fetch_add(1, Relaxed);
        }
        if kill {
            self.remove_version(entry, version);
        }
        out
    }

    fn track_datagram(&self, e: &Entry, version: u32, dir: Dir) -> Track {
        let mut st = e.st.load(Acquire);
        let mut spins = 0;
        let nm = loop {
            let m = flags(st);
            if ver(st) != version || m & ALIVE == 0 {
                return Track::Gone;
            }
            let mut nm = m;
            if m & REPLIED != 0 {
                // Traffic after the first reply: a stream, not a probe.
                nm |= ASSURED;
            }
            if dir == Dir::Reply {
                nm |= REPLIED;
            }
            if nm == m {
                break nm;
            }
            if m & BUSY != 0 {
                spins += 1;
                if spins > BUSY_SPINS {
                    break m;
                }
                std::hint::spin_loop();
                st = e.st.load(Acquire);
                continue;
            }
            match e
                .st
                .compare_exchange_weak(st, pack(version, nm), AcqRel, Acquire)
            {
                Ok(_) => {
                    if nm & !m & ASSURED != 0 {
                        self.assured.fetch_add(1, Relaxed);
                    }
                    break nm;
                }
                Err(cur) => st = cur,
            }
        };
        let t = if nm & ASSURED != 0 {
            self.timeouts.udp_assured
        } else {
            self.timeouts.udp_unreplied
        };
        self.set_deadline(e, t);
        Track::Accept
    }

    /// Removes an entry (for example, a UDP flow whose backend is gone). Safe to race: exactly
    /// one remover frees a given incarnation, and a reused entry is never removed by mistake.
    pub fn remove(&self, entry: u32) -> bool {
        self.remove_if(entry, None, |_, _| true)
    }

    /// Removes `entry` only if it still holds `version`'s connection.
    pub fn remove_version(&self, entry: u32, version: u32) -> bool {
        self.remove_if(entry, Some(version), |_, _| true)
    }

    /// Frees `entry` (of `version`, if given) if `cond(entry, flags)` holds when it is
    /// claimed; never while a worker holds it busy.
    pub(super) fn remove_if(
        &self,
        entry: u32,
        version: Option<u32>,
        cond: impl Fn(&Entry, u32) -> bool,
    ) -> bool {
        let Some(e) = self.entries.get(entry as usize) else {
            return false;
        };
        let Some((orig, tr, _, v)) = self.read(entry) else {
            return false;
        };
        if version.is_some_and(|want| want != v) {
            return false;
        }
        let mut st = e.st.load(Acquire);
        let mut spins = 0;
        loop {
            if ver(st) != v || flags(st) & ALIVE == 0 {
                return false;
            }
            if flags(st) & BUSY != 0 {
                spins += 1;
                if spins > BUSY_SPINS {
                    return false;
                }
                std::hint::spin_loop();
                st = e.st.load(Acquire);
                continue;
            }
            if !cond(e, flags(st)) {
                return false;
            }
            match e
                .st
                .compare_exchange_weak(st, st & !u64::from(ALIVE), AcqRel, Acquire)
            {
                Ok(_) => {
                    if flags(st) & ASSURED != 0 {
                        self.assured.fetch_sub(1, Relaxed);
                    }
                    break;
                }
                Err(cur) => st = cur,
            }
        }
        self.release_slot(&orig, entry + 2);
        if flags(st) & ONE_WAY == 0 {
            self.release_slot(&tr.reversed(), DIR_BIT | (entry + 2));
        }
        // Bump the version so readers and flow caches holding the old one let go.
        e.st.store(pack(v.wrapping_add(2), 0), Release);
        let _ = self.free.push(entry);
        true
    }

    /// Every live entry (for `switchctl ct list` and tests).
    pub fn entries(&self) -> Vec<EntryInfo> {
        let now = self.now();
        (0..self.entries.len() as u32)
            .filter_map(|i| {
                let (o, t, m, _) = self.read(i)?;
                let e = &self.entries[i as usize];
                if self.past_deadline(e, now) {
                    return None;
                }
                Some(EntryInfo {
                    original: o,
                    translated: t,
                    state: state_of(m),
                    replied: m & REPLIED != 0,
                    assured: m & ASSURED != 0,
                    expires_in: e.expires.load(Relaxed).saturating_sub(now),
                })
            })
            .collect()
    }

    /// Live entries by kind and TCP state: a scan of the whole table without locks (for the
    /// counters and metrics; never on the per-packet path).
    pub fn census(&self) -> Census {
        let now = self.now();
        let mut c = Census::default();
        for i in 0..self.entries.len() as u32 {
            let Some((o, _, m, _)) = self.read(i) else {
                continue;
            };
            if self.past_deadline(&self.entries[i as usize], now) {
                continue;
            }
            if m & ONE_WAY != 0 {
                c.affinity += 1;
                continue;
            }
            match o.proto {
                6 => c.tcp[state_of(m) as usize] += 1,
                17 => c.udp += 1,
                1 => c.icmp += 1,
                _ => c.other += 1,
            }
        }
        c
    }

    /// How many live entries are assured (a gauge kept as entries become assured and go).
    pub fn assured(&self) -> usize {
        self.assured.load(Relaxed) as usize
    }

    /// The TCP tracker's view of a live entry (tests, `switchctl`).
    pub fn tcp(&self, entry: u32) -> Option<TcpConn> {
        let e = self.entries.get(entry as usize)?;
        let m = flags(e.st.load(Acquire));
        (m & ALIVE != 0).then(|| load_tcp(e, m))
    }
}

/// Bits of `tcp_meta` per side: window scale (4), then the side's flags (6).
pub(super) const SIDE_BITS: u32 = 10;
/// Where `tcp_meta` keeps the last segment's kind (3 bits) and direction (1 bit).
pub(super) const LAST_SHIFT: u32 = 20;

fn load_tcp(e: &Entry, m: u32) -> TcpConn {
    let meta = e.tcp_meta.load(Relaxed);
    let side = |s: usize| {
        let bits = meta >> (SIDE_BITS * s as u32);
        Side {
            end: e.win[3 * s].load(Relaxed),
            maxend: e.win[3 * s + 1].load(Relaxed),
            maxwin: e.win[3 * s + 2].load(Relaxed),
            scale: (bits & 0xf) as u8,
            flags: ((bits >> 4) & 0x3f) as u8,
        }
    };
    TcpConn {
        state: state_of(m),
        sides: [side(0), side(1)],
        last_kind: ((meta >> LAST_SHIFT) & 0x7) as u8,
        last_dir: ((meta >> (LAST_SHIFT + 3)) & 1) as u8,
        last_end: e.last_end.load(Relaxed),
        simultaneous: meta & (1 << 24) != 0,
    }
}

fn meta_of(c: &TcpConn) -> u32 {
    let side = |s: &Side| u32::from(s.scale & 0xf) | (u32::from(s.flags & 0x3f) << 4);
    side(&c.sides[0])
        | (side(&c.sides[1]) << SIDE_BITS)
        | (u32::from(c.last_kind & 0x7) << LAST_SHIFT)
        | (u32::from(c.last_dir & 1) << (LAST_SHIFT + 3))
        | (u32::from(c.simultaneous) << 24)
}

/// Stores what changed of `c` (everything if `old` is `None`). Only the BUSY holder, or
/// the inserter of a free entry, calls it.
fn store_tcp(e: &Entry, c: &TcpConn, old: Option<&TcpConn>) {
    let put = |a: &AtomicU32, new: u32, was: Option<u32>| {
        if was != Some(new) {
            a.store(new, Relaxed);
        }
    };
    let was = |f: fn(&TcpConn) -> u32| old.map(f);
    put(&e.tcp_meta, meta_of(c), old.map(meta_of));
    for s in 0..2 {
        let n = &c.sides[s];
        put(&e.win[3 * s], n.end, old.map(|o| o.sides[s].end));
        put(&e.win[3 * s + 1], n.maxend, old.map(|o| o.sides[s].maxend));
        put(&e.win[3 * s + 2], n.maxwin, old.map(|o| o.sides[s].maxwin));
    }
    put(&e.last_end, c.last_end, was(|o| o.last_end));
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests_region;
