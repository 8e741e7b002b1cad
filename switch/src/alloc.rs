//! The allocator's settings: memory a large state freed goes back to the system.
//!
//! Design: glibc's malloc keeps freed memory for reuse, in one arena per thread that ever
//! allocated (the Service tables are built on several threads). switchd allocates nothing
//! per packet, so one arena costs no contention that matters ([`configure`], at start), and
//! the control thread hands back what is free after a state change ([`trim`]). The mmap and
//! trim thresholds are fixed: left dynamic, glibc raises the mmap threshold to the largest block
//! freed (up to 32 MiB; a 200,000-Service table has blocks that large) and the trim threshold
//! to twice that, and then keeps up to 64 MiB free at the top of a heap for good; fixed, a block of 256 KiB or more is its own mapping, unmapped
//! when freed, and more than 1 MiB free at the top is handed back. Measured in
//! `switch/tests/memory.rs`. Thread-safety: both are safe to call from any thread.
#![allow(unsafe_code)]

/// One malloc arena for the whole process (call before other threads start).
pub fn configure() {
    // SAFETY: mallopt only changes an allocator setting; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    // SAFETY: as above.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
    }
    // SAFETY: as above.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}

/// Returns the free memory at the top of the heap and free pages inside it to the system.
pub fn trim() {
    // SAFETY: malloc_trim walks the allocator's own free lists under its lock.
    unsafe {
        libc::malloc_trim(0);
    }
}
