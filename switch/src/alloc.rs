//! The allocator's settings: memory a large state freed goes back to the system.
//!
//! Design: glibc's malloc keeps freed memory for reuse, in one arena per thread that ever
//! allocated (the Service tables are built on several threads). switchd allocates nothing
//! per packet, so one arena costs no contention that matters ([`configure`], at start), and
//! the control thread hands back what is free after a state change ([`trim`]). Measured in
//! `switch/tests/memory.rs`. Thread-safety: both are safe to call from any thread.
#![allow(unsafe_code)]

/// One malloc arena for the whole process (call before other threads start).
pub fn configure() {
    // SAFETY: mallopt only changes an allocator setting; no pointer is involved.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns the free memory at the top of the heap and free pages inside it to the system.
pub fn trim() {
    // SAFETY: malloc_trim walks the allocator's own free lists under its lock.
    unsafe {
        libc::malloc_trim(0);
    }
}
