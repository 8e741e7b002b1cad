//! Deadlines, garbage collection and early drop under pressure.
//!
//! Design: every entry carries its deadline (a second of the table's clock), refreshed by
//! the packets that keep it alive. A lookup that meets an entry past its deadline removes
//! it; [`Conntrack::gc`] sweeps the table from a shared cursor so that calls from a
//! housekeeping thread, each with [`Conntrack::gc_budget`] entries, cover it within a
//! second at any capacity. When the free list is empty an insert evicts one entry that is
//! not assured: of the first 16 scanned (from a rotating cursor) that hold one, the one
//! nearest its deadline (the least recently refreshed); an expired one goes first.
//!
//! Thread-safety: removal goes through `remove_if`, which claims the incarnation with a CAS
//! and re-checks the condition on the claimed word; an entry a worker holds busy is skipped.

use super::table::{flags, ver, Conntrack, ALIVE, ASSURED, BUSY};
use super::GcStats;
use std::sync::atomic::Ordering::Relaxed;

/// Entries an eviction looks at per round.
const EVICT_SCAN: u32 = 16;
/// Rounds before an insert gives up (the table is full of assured entries). Assured
/// entries can sit together (entries are handed out in order when the table is new), so
/// one insert may walk past 1024 of them; each look is two loads of one entry.
const EVICT_ROUNDS: u32 = 64;

impl Conntrack {
    /// Entries one [`Conntrack::gc`] call should visit so that `calls_per_second` calls a
    /// second cover the whole table each second.
    pub fn gc_budget(&self, calls_per_second: u32) -> usize {
        self.capacity()
            .div_ceil(calls_per_second.max(1) as usize)
            .max(1)
    }

    /// Removes entries past their deadline, visiting `budget` entries from where the
    /// previous call stopped. Call it from a housekeeping thread, not per packet.
    pub fn gc(&self, budget: usize) -> GcStats {
        let n = self.entries.len() as u32;
        let now = self.now();
        let mut stats = GcStats::default();
        for _ in 0..budget.min(n as usize) {
            let i = self.gc_cursor.fetch_add(1, Relaxed) % n;
            stats.scanned += 1;
            let e = &self.entries[i as usize];
            let st = e.st.load(Relaxed);
            if flags(st) & ALIVE == 0 || !self.past_deadline(e, now) {
                continue;
            }
            if self.expire(i, ver(st), now) {
                stats.expired += 1;
            }
        }
        stats
    }

    /// Removes `entry` (of `version`) if it is still past its deadline; counts it.
    pub(super) fn expire(&self, entry: u32, version: u32, now: u32) -> bool {
        let gone = self.remove_if(entry, Some(version), |e, _| self.past_deadline(e, now));
        if gone {
            self.counters.expired.fetch_add(1, Relaxed);
        }
        gone
    }

    /// Under pressure: frees one expired or non-assured entry and returns a free entry.
    pub(super) fn evict(&self) -> Option<u32> {
        let n = self.entries.len() as u32;
        let now = self.now();
        for _ in 0..EVICT_ROUNDS {
            let start = self.evict_cursor.fetch_add(EVICT_SCAN, Relaxed) % n;
            let mut best: Option<(u32, u32, u32)> = None;
            for k in 0..EVICT_SCAN.min(n) {
                let i = (start + k) % n;
                let e = &self.entries[i as usize];
                let st = e.st.load(Relaxed);
                let m = flags(st);
                if m & ALIVE == 0 || m & BUSY != 0 {
                    continue;
                }
                let deadline = e.expires.load(Relaxed);
                if now > deadline {
                    if self.expire(i, ver(st), now) {
                        return self.free.pop();
                    }
                    continue;
                }
                if m & ASSURED == 0 && best.is_none_or(|(_, d, _)| deadline < d) {
                    best = Some((i, deadline, ver(st)));
                }
            }
            if let Some((i, _, v)) = best {
                if self.remove_if(i, Some(v), |_, m| m & ASSURED == 0) {
                    self.counters.evicted.fetch_add(1, Relaxed);
                    return self.free.pop();
                }
            }
        }
        None
    }
}
