//! The table's memory, and how a new process takes over the one an earlier process left.
//!
//! Design: the table lives in one region of three parts: a [`Header`] (one page), the
//! entries, the index (see [`layout`]). A process allocates it ([`Memory::owned`], tests and
//! replay) or the daemon maps it from a file on tmpfs ([`Memory::mapped`]; the mapping and
//! its `unsafe` live in `switch`), so that it outlives the process. An all-zero region is an
//! empty table. The header says what the region holds: magic, layout version, entry size,
//! capacity, index size, the kernel boot it was made in, the node it belongs to, and
//! whether the last owner closed it (clean) or is running or died (dirty).
//!
//! Taking a region over ([`Conntrack::open`]) never trusts more than it checks: a header
//! that does not match this build and this node is refused with the reason and the region
//! is wiped; one that matches is scanned entry by entry: an entry a writer was in the middle
//! of when its process died (odd version: an insert; BUSY: a tracker's update) is dropped,
//! every other live entry is kept, and the index and free list are rebuilt from the
//! survivors (so the index hash need not be stable across builds, and tombstones go).
//!
//! Thread-safety: the header is written only by the owner, before its workers start and
//! after they stop; the region's file is locked by its owner (see `switch::shm`), so two
//! processes never own one region.

use super::table::{Entry, MAX_CAPACITY};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

/// "nswct\0\0" and a format byte: what a conntrack region starts with.
pub const MAGIC: u64 = u64::from_be_bytes(*b"nswct\0\0\x01");
/// The layout of entries and flags this build reads and writes; bumped on any change to
/// [`Entry`] or to the meaning of its bits.
pub const LAYOUT_VERSION: u32 = 1;
/// Bytes of the header page; the entries start after it.
pub const HEADER_BYTES: usize = 4096;
/// Longest node name a region records (longer names are compared by this prefix).
pub const NODE_BYTES: usize = 64;

const CLEAN: u32 = 1;
const DIRTY: u32 = 2;

/// The region's header page.
#[repr(C)]
#[derive(Debug, Default)]
pub struct Header {
    magic: AtomicU64,
    layout: AtomicU32,
    entry_bytes: AtomicU32,
    capacity: AtomicU32,
    slots: AtomicU32,
    state: AtomicU32,
    owner_pid: AtomicU32,
    boot: [AtomicU64; 2],
    node: [AtomicU64; NODE_BYTES / 8],
    /// How many processes took this region over.
    takeovers: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<Entry>() == 80);

/// Where each part of a region of `capacity` entries lies (byte offsets) and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Entries held.
    pub capacity: usize,
    /// Index slots.
    pub slots: usize,
    /// Offset of the entries.
    pub entries_at: usize,
    /// Offset of the index.
    pub index_at: usize,
    /// Total bytes.
    pub len: usize,
}

/// The layout of a region for `capacity` entries (clamped to 1..=[`MAX_CAPACITY`]).
pub fn layout(capacity: usize) -> Layout {
    let capacity = capacity.clamp(1, MAX_CAPACITY);
    let slots = capacity * 4;
    let entries_at = HEADER_BYTES;
    let index_at = (entries_at + capacity * std::mem::size_of::<Entry>()).next_multiple_of(64);
    Layout {
        capacity,
        slots,
        entries_at,
        index_at,
        len: (index_at + slots * 4).next_multiple_of(HEADER_BYTES),
    }
}

/// Who opens a region: it is taken over only if it was made in the same boot for the same
/// node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node's name.
    pub node: String,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`), 16 bytes.
    pub boot: [u8; 16],
    /// The opening process.
    pub pid: u32,
}

/// Memory the table lives in: owned by this process, or mapped from shared memory.
pub(super) enum Slab<T: 'static> {
    Owned(Box<[T]>),
    Mapped(&'static [T]),
}

impl<T> std::ops::Deref for Slab<T> {
    type Target = [T];
    #[inline(always)]
    fn deref(&self) -> &[T] {
        match self {
            Slab::Owned(b) => b,
            Slab::Mapped(s) => s,
        }
    }
}

/// A region's parts, ready for [`super::Conntrack::open`].
pub struct Memory {
    pub(super) header: Slab<Header>,
    pub(super) entries: Slab<Entry>,
    pub(super) index: Slab<AtomicU32>,
    /// Keeps a mapping alive as long as the table uses it (declared last: dropped after
    /// the slices into it).
    pub(super) owner: Option<Box<dyn Send + Sync>>,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("entries", &self.entries.len())
            .field("slots", &self.index.len())
            .field("mapped", &matches!(self.entries, Slab::Mapped(_)))
            .finish()
    }
}

/// Why [`Memory::mapped`] refused its parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conntrack region: {0}")]
pub struct RegionError(String);

impl Memory {
    /// Zeroed memory of this process for `capacity` entries (an empty table).
    pub fn owned(capacity: usize) -> Memory {
        let l = layout(capacity);
        Memory {
            header: Slab::Owned(Box::new([Header::default()])),
            entries: Slab::Owned((0..l.capacity).map(|_| Entry::default()).collect()),
            index: Slab::Owned((0..l.slots).map(|_| AtomicU32::new(0)).collect()),
            owner: None,
        }
    }

    /// Parts of a shared mapping laid out by [`layout`]; `owner` keeps the mapping alive.
    pub fn mapped(
        header: &'static Header,
        entries: &'static [Entry],
        index: &'static [AtomicU32],
        owner: Box<dyn Send + Sync>,
    ) -> Result<Memory, RegionError> {
        let l = layout(entries.len());
        if entries.len() != l.capacity || index.len() != l.slots {
            return Err(RegionError(format!(
                "{} entries and {} index slots do not make a table ({} slots expected)",
                entries.len(),
                index.len(),
                l.slots
            )));
        }
        Ok(Memory {
            header: Slab::Mapped(std::slice::from_ref(header)),
            entries: Slab::Mapped(entries),
            index: Slab::Mapped(index),
            owner: Some(owner),
        })
    }

    /// Entries this memory holds.
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }
}

/// What [`super::Conntrack::open`] found in the memory it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Empty memory: a new table.
    Fresh,
    /// A region that cannot be taken over (the reason): wiped, a new table.
    Replaced(String),
    /// A region taken over.
    Resumed(Recovery),
}

/// What taking a region over kept and dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The previous owner closed it (false: it died or is still running).
    pub clean: bool,
    /// Connections kept.
    pub kept: usize,
    /// Entries dropped because an insert was in the middle of writing them.
    pub torn: usize,
    /// Entries dropped because a tracker was in the middle of updating them.
    pub busy: usize,
    /// Entries dropped because the rebuilt index had no room for them.
    pub unindexed: usize,
    /// How many times this region has been taken over, this time included.
    pub takeovers: u64,
}

impl std::fmt::Display for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Opened::Fresh => write!(f, "a new table"),
            Opened::Replaced(why) => write!(f, "a new table ({why})"),
            Opened::Resumed(r) => write!(
                f,
                "taken over ({} shutdown): {} connections kept, {} dropped half-written \
                 ({} inserts, {} updates), {} dropped for want of index room",
                if r.clean { "clean" } else { "unclean" },
                r.kept,
                r.torn + r.busy,
                r.torn,
                r.busy,
                r.unindexed
            ),
        }
    }
}

fn node_words(node: &str) -> [u64; NODE_BYTES / 8] {
    let mut b = [0u8; NODE_BYTES];
    let n = node.len().min(NODE_BYTES);
    b[..n].copy_from_slice(&node.as_bytes()[..n]);
    let mut w = [0u64; NODE_BYTES / 8];
    for (i, c) in b.chunks_exact(8).enumerate() {
        w[i] = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    w
}

fn node_name(words: [u64; NODE_BYTES / 8]) -> String {
    let b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end])
        .chars()
        .flat_map(char::escape_default)
        .collect()
}

fn boot_words(boot: &[u8; 16]) -> [u64; 2] {
    let (a, b) = boot.split_at(8);
    [
        u64::from_le_bytes(a.try_into().unwrap_or([0; 8])),
        u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
    ]
}

impl Header {
    /// Whether a table of `l` for `id` may take this header's region over: `Ok(None)` for
    /// an empty region, `Ok(Some(clean))` for one to take over, `Err(why)` otherwise.
    pub(super) fn check(&self, l: &Layout, id: &Identity) -> Result<Option<bool>, String> {
        let magic = self.magic.load(Acquire);
        if magic == 0 {
            return Ok(None);
        }
        if magic != MAGIC {
            return Err(format!("not a conntrack region (magic {magic:#018x})"));
        }
        let layout = self.layout.load(Relaxed);
        if layout != LAYOUT_VERSION {
            return Err(format!(
                "layout version {layout}, this build has {LAYOUT_VERSION}"
            ));
        }
        let eb = self.entry_bytes.load(Relaxed) as usize;
        if eb != std::mem::size_of::<Entry>() {
            return Err(format!("{eb}-byte entries, this build has 80"));
        }
        let cap = self.capacity.load(Relaxed) as usize;
        let slots = self.slots.load(Relaxed) as usize;
        if cap != l.capacity || slots != l.slots {
            return Err(format!(
                "capacity {cap} ({slots} index slots), this table has {} ({})",
                l.capacity, l.slots
            ));
        }
        if [self.boot[0].load(Relaxed), self.boot[1].load(Relaxed)] != boot_words(&id.boot) {
            return Err("made before the kernel last booted".into());
        }
        let node: [u64; NODE_BYTES / 8] = std::array::from_fn(|i| self.node[i].load(Relaxed));
        if node != node_words(&id.node) {
            return Err(format!(
                "it belongs to node '{}', this is '{}'",
                node_name(node),
                node_name(node_words(&id.node))
            ));
        }
        Ok(Some(self.state.load(Relaxed) == CLEAN))
    }

    /// Stamps the header for `id` as the running (dirty) owner of a table of `l`.
    pub(super) fn claim(&self, l: &Layout, id: &Identity) {
        self.layout.store(LAYOUT_VERSION, Relaxed);
        self.entry_bytes
            .store(std::mem::size_of::<Entry>() as u32, Relaxed);
        self.capacity.store(l.capacity as u32, Relaxed);
        self.slots.store(l.slots as u32, Relaxed);
        for (w, v) in self.boot.iter().zip(boot_words(&id.boot)) {
            w.store(v, Relaxed);
        }
        for (w, v) in self.node.iter().zip(node_words(&id.node)) {
            w.store(v, Relaxed);
        }
        self.owner_pid.store(id.pid, Relaxed);
        self.state.store(DIRTY, Relaxed);
        self.magic.store(MAGIC, Release);
    }

    /// Marks the region wiped (magic cleared first, so a crash mid-wipe leaves an empty one).
    pub(super) fn wipe(&self) {
        self.magic.store(0, Release);
        self.takeovers.store(0, Relaxed);
    }

    /// Counts one more takeover; returns the count.
    pub(super) fn took_over(&self) -> u64 {
        self.takeovers.fetch_add(1, Relaxed) + 1
    }

    /// Records that the owner closed the table with no writer left.
    pub(super) fn close(&self) {
        self.state.store(CLEAN, Release);
    }

    /// True if the last owner closed the region cleanly.
    pub fn is_clean(&self) -> bool {
        self.state.load(Acquire) == CLEAN
    }
}
