//! The allocator: switchd's heap is mimalloc, and memory a large state freed goes back to the
//! system once the state has stood.
//!
//! Design: switchd allocates nothing per packet; what it allocates is control-plane state (a
//! big apply builds tens of MB of Service tables on several threads and frees the previous
//! ones). With glibc's malloc that work either started on fresh pages (small mmap and trim
//! thresholds: every large block a mapping of its own, free memory at the top handed back on
//! each `free`, so a big apply paid a page fault per 4 KiB) or, with the thresholds high,
//! fragmentation left pages that no trim could return (46 MB of 414 after a 200,000-Service
//! state, against 11 MB before it). mimalloc ([`Allocator`], the `#[global_allocator]` of
//! switchd and of the tests that measure it) allocates from per-thread pages by size class
//! and keeps a thread's freed pages for its next change; [`trim`] hands back the free pages
//! the calling thread keeps and purges every arena's freed pages (those that threads which
//! ended gave up included). So the daemon trims on the threads that keep pages after a
//! change: its control thread and the API's serving thread (which decodes requests) one to
//! two stats ticks after a change, again three seconds after it (the API's blocking threads,
//! which convert and plan, have ended by then: a one-second keep-alive), and every ten
//! seconds whatever happened (a refused or dry-run Replace changes no generation); the reload
//! thread trims after each reload.
//! Built without asking for transparent huge pages (`no_thp`: no `MADV_HUGEPAGE`; a first big
//! apply on huge pages took 340 ms against 160 ms without; a host whose THP setting is
//! `always` gives them anyway). Measured with `bench/control-plane`, same
//! run against glibc's malloc: 10,000 Services / 100,000 endpoints applied back to back in 127
//! vs 153 ms (medians of 5), after switchd handed its memory back (`--settle-ms 5000`) in
//! 155-170 vs 221-224 ms; switchd's resident memory 102 MB at start, 189 MB with that state,
//! 105 MB 4 s after the small state again (glibc: 107, 161, 109). What goes back after a
//! large state is asserted in `switch/tests/memory.rs` and, for the daemon, in
//! `tests/tests/netns_memory.rs`. glibc's malloc still serves the C
//! libraries (libbpf): [`configure`] keeps it to one arena. Thread-safety: both functions are
//! safe to call from any thread; [`trim`] acts on the calling thread's heap.
#![allow(unsafe_code)]

/// The allocator switchd's binary (and the tests that measure its memory) declares with
/// `#[global_allocator]`.
pub use mimalloc::MiMalloc as Allocator;

/// glibc's malloc (the C libraries' heap) with one arena; call before other threads start.
pub fn configure() {
    // SAFETY: mallopt only changes an allocator setting; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns free memory to the system: the free pages of the calling thread's mimalloc heap,
/// every mimalloc arena's freed pages, and glibc's free heap.
pub fn trim() {
    // SAFETY: mi_collect only walks mimalloc's own structures (the calling thread's heap and
    // the arenas, under their own locks); no pointer of ours is involved.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    // SAFETY: malloc_trim walks the allocator's own free lists under its lock.
    unsafe {
        libc::malloc_trim(0);
    }
}
