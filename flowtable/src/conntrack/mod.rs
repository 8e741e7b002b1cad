//! Connection tracking for Service NAT, shared by every worker.
//!
//! Design: a fixed-capacity table allocated once (memory is bounded by the configured
//! capacity and never grows), in files by concern:
//! - `table.rs`: the storage. Entries live in an array; an open-addressing index maps both
//!   directions' 5-tuples to an entry (like Linux's two tuplehashes), so the two directions
//!   of a flow may be handled by different workers. Insert, lookup, per-packet tracking and
//!   removal.
//! - `tcp.rs`: TCP states and window tracking as Linux's nf_conntrack does them, as a pure
//!   function over a plain copy of the connection.
//! - `fast.rs`: the same rules for the one segment nearly every packet is (an ACK of an
//!   assured, established connection), on the entry's words in place.
//! - `expiry.rs`: deadlines, garbage collection, and early drop under pressure.
//! - `region.rs`: the memory the table lives in (owned, or a shared mapping that outlives
//!   the process) and how a new process takes an earlier one's table over.
//!
//! Semantics (Linux's): an entry is *assured* once its TCP handshake completes, or, for UDP,
//! once a packet follows the first reply. When the table is full a new flow may evict a
//! non-assured entry (the one closest to expiry among those scanned), never an assured one;
//! a half-open TCP entry (a SYN flood's, whatever the backend answered) is never assured.
//! Every entry has a deadline; a lookup treats an entry past it as absent (and removes it),
//! and GC frees the rest within about a second of their deadline.
//!
//! Thread-safety: every field is an atomic. Lookups take no lock: they probe the index,
//! read the entry under its sequence number (a seqlock: retry if a writer was in the
//! middle) and compare the full key. Inserts take a free entry from a lock-free queue and
//! claim index slots with CAS. A TCP segment's tracking claims the entry's busy bit with a
//! CAS (never waiting more than a few spins: if another worker holds it, the segment passes
//! untracked and is counted), runs `tcp.rs` on a copy and stores it back. Removal claims the
//! entry with a CAS on its version, so exactly one thread frees an incarnation and never one
//! that a worker is tracking (busy) or that was reused in between.
//!
//! Memory: 80 bytes per entry plus 16 bytes of index (see [`Conntrack::bytes_per_entry`]).

mod expiry;
mod fast;
pub mod region;
mod table;
pub mod tcp;

pub use region::{Identity, Memory, Opened, Recovery};
pub use table::{Census, Conntrack, Entry, EntryInfo, NewFlow, MAX_CAPACITY};
pub use tcp::{Invalid, Segment, TcpState};

use std::net::Ipv4Addr;
use std::sync::atomic::AtomicU64;

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

impl Dir {
    /// 0 for the original direction, 1 for the reply.
    #[inline]
    pub fn index(self) -> usize {
        match self {
            Dir::Original => 0,
            Dir::Reply => 1,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Entry index (for [`Conntrack::track`] and [`Conntrack::remove`]).
    pub entry: u32,
    /// Direction of the packet looked up.
    pub dir: Dir,
    /// The tuple the first packet had.
    pub original: FlowKey,
    /// The tuple the first packet was translated to.
    pub translated: FlowKey,
    /// TCP state (`None` for other protocols).
    pub state: TcpState,
    /// True once a reply-direction packet has been seen.
    pub replied: bool,
    /// True once the connection is assured (never evicted under pressure).
    pub assured: bool,
    /// The entry's version when it was read (see [`Conntrack::is_current`]).
    pub version: u32,
}

/// Timeouts in seconds: Linux's defaults, with established TCP at 24 h as kube-proxy sets
/// it (`nf_conntrack_tcp_timeout_established`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP SYN_SENT (and SYN_SENT2).
    pub tcp_syn_sent: u32,
    /// TCP SYN_RECV: a half-open connection.
    pub tcp_syn_recv: u32,
    /// TCP ESTABLISHED.
    pub tcp_established: u32,
    /// TCP FIN_WAIT.
    pub tcp_fin_wait: u32,
    /// TCP CLOSE_WAIT.
    pub tcp_close_wait: u32,
    /// TCP LAST_ACK.
    pub tcp_last_ack: u32,
    /// TCP TIME_WAIT.
    pub tcp_time_wait: u32,
    /// TCP CLOSE (after a RST).
    pub tcp_close: u32,
    /// Cap while data is unacknowledged, or for a connection seen from one side only.
    pub tcp_unacknowledged: u32,
    /// UDP (and others) not yet assured.
    pub udp_unreplied: u32,
    /// UDP (and others) assured: a reply and more traffic after it.
    pub udp_assured: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 86_400,
            tcp_fin_wait: 120,
            tcp_close_wait: 60,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            tcp_unacknowledged: 300,
            udp_unreplied: 30,
            udp_assured: 120,
        }
    }
}

/// Longest timeout accepted (so a deadline never wraps the 32-bit clock in practice).
pub const MAX_TIMEOUT: u32 = 30 * 86_400;

impl Timeouts {
    /// The names [`Timeouts::set`] takes.
    pub const NAMES: [&'static str; 11] = [
        "tcp_syn_sent",
        "tcp_syn_recv",
        "tcp_established",
        "tcp_fin_wait",
        "tcp_close_wait",
        "tcp_last_ack",
        "tcp_time_wait",
        "tcp_close",
        "tcp_unacknowledged",
        "udp_unreplied",
        "udp_assured",
    ];

    fn field(&mut self, name: &str) -> Option<&mut u32> {
        Some(match name {
            "tcp_syn_sent" => &mut self.tcp_syn_sent,
            "tcp_syn_recv" => &mut self.tcp_syn_recv,
            "tcp_established" => &mut self.tcp_established,
            "tcp_fin_wait" => &mut self.tcp_fin_wait,
            "tcp_close_wait" => &mut self.tcp_close_wait,
            "tcp_last_ack" => &mut self.tcp_last_ack,
            "tcp_time_wait" => &mut self.tcp_time_wait,
            "tcp_close" => &mut self.tcp_close,
            "tcp_unacknowledged" => &mut self.tcp_unacknowledged,
            "udp_unreplied" => &mut self.udp_unreplied,
            "udp_assured" => &mut self.udp_assured,
            _ => return None,
        })
    }

    /// Sets one timeout by name (1..=[`MAX_TIMEOUT`] seconds).
    pub fn set(&mut self, name: &str, secs: u32) -> Result<(), String> {
        if !(1..=MAX_TIMEOUT).contains(&secs) {
            return Err(format!(
                "conntrack timeout {name}: {secs} is outside 1..={MAX_TIMEOUT} seconds"
            ));
        }
        let Some(f) = self.field(name) else {
            let shown: String = name
                .chars()
                .take(40)
                .flat_map(char::escape_default)
                .collect();
            return Err(format!(
                "unknown conntrack timeout '{shown}' (one of {})",
                Timeouts::NAMES.join(", ")
            ));
        };
        *f = secs;
        Ok(())
    }

    /// Parses `NAME=SECONDS` (the `--ct-timeout` flag) into these timeouts.
    pub fn set_from(&mut self, spec: &str) -> Result<(), String> {
        let Some((name, secs)) = spec.split_once('=') else {
            return Err("conntrack timeout: expected NAME=SECONDS".into());
        };
        let secs: u32 = secs.trim().parse().map_err(|_| {
            let shown: String = secs
                .chars()
                .take(20)
                .flat_map(char::escape_default)
                .collect();
            format!(
                "conntrack timeout {}: '{shown}' is not a number of seconds",
                name.trim()
            )
        })?;
        self.set(name.trim(), secs)
    }
}

/// What tracking a packet decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// Valid: translate and forward it.
    Accept,
    /// Invalid: drop it (counted by reason); the entry did not change.
    Invalid(Invalid),
    /// A SYN on a closed connection's tuple: the caller removes the entry and decides anew.
    Reopen,
    /// The entry is gone or was reused: look the packet up again.
    Gone,
}

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// No free entry and nothing evictable: the flow is not tracked.
    Full,
    /// The translated flow's reply tuple is already tracked (a NAT clash): pick another port.
    Clash,
    /// The first segment cannot open a connection (TCP): drop it.
    Invalid(Invalid),
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
    /// Inserts refused because the table was full of assured entries.
    pub full: AtomicU64,
    /// Non-assured entries evicted to admit new flows (early drop).
    pub evicted: AtomicU64,
    /// Entries removed past their deadline (by GC or by the lookup that found them).
    pub expired: AtomicU64,
    /// Closed TCP entries replaced by a new connection on the same tuple (port reuse).
    pub reopened: AtomicU64,
    /// Segments passed untracked because another worker held the entry.
    pub busy: AtomicU64,
}
