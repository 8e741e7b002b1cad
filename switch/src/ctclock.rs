//! The conntrack table's housekeeping thread: its clock and its garbage collection.
//!
//! Design: one thread for the whole table, off every worker's loop. Ten times a second it
//! advances the table's clock (whole seconds since switchd started, from the monotonic
//! clock) and runs one GC step of a tenth of the table, so every entry is looked at within
//! a second whatever the capacity, and no worker ever stalls on a sweep. Thread-safety: the
//! table is shared lock-free (see `flowtable::conntrack`); this thread only stops when
//! `stop` is set.

use flowtable::conntrack::Conntrack;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the clock advances and GC steps run.
pub const TICKS_PER_SECOND: u32 = 10;

/// Starts the housekeeping thread.
pub fn spawn(ct: Arc<Conntrack>, stop: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    let start = Instant::now();
    ct.set_now(1);
    std::thread::Builder::new()
        .name("switchd-conntrack".into())
        .spawn(move || {
            let tick = Duration::from_secs(1) / TICKS_PER_SECOND;
            let budget = ct.gc_budget(TICKS_PER_SECOND);
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                ct.set_now(1 + start.elapsed().as_secs() as u32);
                ct.gc(budget);
            }
        })
}
