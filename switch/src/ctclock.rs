//! The conntrack table's housekeeping thread: its clock and its garbage collection.
//!
//! Design: one thread for the whole table, off every worker's loop. Ten times a second it
//! advances the table's clock ([`now`]: whole seconds of `CLOCK_MONOTONIC`, which every
//! process of a boot shares, so the deadlines in a table taken over from an earlier switchd
//! stay true), runs one GC step of a tenth of the table, so every entry is looked at within
//! a second whatever the capacity, and no worker ever stalls on a sweep, and beats the XDP
//! program's heartbeat (the program holds the switch's frames while it is fresh).
//! Thread-safety: the table is shared lock-free (see `flowtable::conntrack`); this thread
//! only stops when `stop` is set, and beats once more as it does.

use crate::xdp::Heartbeat;
use flowtable::conntrack::Conntrack;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the clock advances and GC steps run.
pub const TICKS_PER_SECOND: u32 = 10;

/// The table's clock now: 1 + whole seconds since boot (`CLOCK_MONOTONIC`).
pub fn now() -> u32 {
    1 + crate::shm::monotonic()
        .as_secs()
        .min(u64::from(u32::MAX - 1)) as u32
}

/// Starts the housekeeping thread.
pub fn spawn(
    ct: Arc<Conntrack>,
    stop: Arc<AtomicBool>,
    heartbeat: Heartbeat,
) -> std::io::Result<JoinHandle<()>> {
    ct.set_now(now());
    std::thread::Builder::new()
        .name("switchd-conntrack".into())
        .spawn(move || {
            let tick = Duration::from_secs(1) / TICKS_PER_SECOND;
            let budget = ct.gc_budget(TICKS_PER_SECOND);
            let mut failed = false;
            let beat = |failed: &mut bool| match heartbeat.beat() {
                Ok(()) => *failed = false,
                Err(e) if !*failed => {
                    eprintln!("switchd: heartbeat: {e}");
                    *failed = true;
                }
                Err(_) => {}
            };
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                ct.set_now(now());
                ct.gc(budget);
                beat(&mut failed);
            }
            beat(&mut failed);
        })
}
