//! AF_XDP sockets, their rings and the UMEM they share, on the kernel's socket API (libc).
//!
//! Design: one [`Umem`] (anonymous memory cut into 4 KiB frames) is registered on the first
//! socket, the *owner* (the uplink's); every other port binds with `XDP_SHARED_UMEM` to the
//! owner and gets fill and completion rings of its own. A frame received on one port can so be
//! transmitted on any other without a copy, and a transmit descriptor may start anywhere inside
//! its frame: the kernel puts a received frame 256 bytes (`XDP_PACKET_HEADROOM`) into it, so
//! VXLAN encapsulation grows the frame into that headroom in place and decapsulation just
//! starts the descriptor later. (xsk-rs, the crate first chosen for this, ties a descriptor to
//! a fixed address in its frame, which would cost a copy of every encapsulated frame; this
//! module is the few hundred lines it takes to own the rings instead.) Where the kernel offers
//! it the owner binds with `XDP_USE_SG` (multi-buffer: a frame longer than a chunk is a chain
//! of descriptors, each but the last marked [`PKT_CONTD`]); the sharing sockets inherit it.
//!
//! Each [`Ring`] is single-producer, single-consumer shared memory with the kernel: the
//! producer index is published with Release after the descriptors are written, the consumer's
//! with Release after they are read; the other side's index is read with Acquire.
//!
//! Thread-safety: a [`Socket`] and its rings belong to one worker thread at a time (`Send`,
//! not `Sync`). The UMEM's memory is shared with the kernel; which frame is whose is the
//! worker's bookkeeping (`daemon::worker`): a frame is touched by user space only while it is
//! in none of the four rings.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of one UMEM frame (chunk). Aligned mode: a power of two.
pub const FRAME_SIZE: usize = 4096;
/// Where the kernel puts a received frame inside its chunk (`XDP_PACKET_HEADROOM`).
pub const RX_OFFSET: usize = 256;
/// Descriptors per ring (every ring of every socket).
pub const RING_SIZE: u32 = 2048;
/// Bind flag: multi-buffer frames (kernel 6.6+, `XDP_USE_SG` in `linux/if_xdp.h`).
const XDP_USE_SG: u16 = 1 << 4;
/// Descriptor option: the frame continues in the next descriptor (`XDP_PKT_CONTD`).
pub const PKT_CONTD: u32 = 1 << 0;
/// UMEM registration flag: `tx_metadata_len` is valid (kernel 6.8+, `XDP_UMEM_TX_METADATA_LEN`).
const XDP_UMEM_TX_METADATA_LEN: u32 = 1 << 2;
/// Descriptor option: transmit metadata precedes the frame (`XDP_TX_METADATA`).
pub const TX_METADATA: u32 = 1 << 1;
/// Transmit metadata flag: finish a partial checksum (`XDP_TXMD_FLAGS_CHECKSUM`).
const TXMD_FLAGS_CHECKSUM: u64 = 1 << 1;
/// Bytes of transmit metadata in front of a frame that carries [`TX_METADATA`]
/// (`struct xsk_tx_metadata`: flags, then csum_start, csum_offset and launch_time).
pub const TX_METADATA_LEN: usize = 24;
/// Most descriptors one transmitted frame may span: the kernel builds an skb of a linear part
/// and at most `MAX_SKB_FRAGS` (17) fragments, and refuses a longer chain as invalid.
pub const MAX_TX_CHAIN: usize = 17;

/// Why a socket could not be set up; says which step failed.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct XskError {
    /// The step that failed.
    pub step: &'static str,
    /// The kernel's error.
    #[source]
    pub source: io::Error,
}

fn os_err(step: &'static str) -> XskError {
    XskError {
        step,
        source: io::Error::last_os_error(),
    }
}

/// An anonymous memory mapping, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, offset: u64, step: &'static str) -> Result<Self, XskError> {
        let (prot, flags) = (
            libc::PROT_READ | libc::PROT_WRITE,
            if fd < 0 {
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE
            } else {
                libc::MAP_SHARED | libc::MAP_POPULATE
            },
        );
        // SAFETY: a fresh mapping at an address the kernel chooses; nothing aliases it.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset as i64) };
        if p == libc::MAP_FAILED {
            return Err(os_err(step));
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| os_err(step))?;
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `Mapping::new` with this length and is unmapped
        // once; every pointer into it lives in the struct that owns this mapping.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

// SAFETY: the mapping is plain memory; its owner decides who touches it.
unsafe impl Send for Mapping {}

// SAFETY: shared access goes only through `Umem::frame`, whose contract makes the caller the
// frame's only user (the workers' ownership protocol); the rings are never shared.
unsafe impl Sync for Mapping {}

/// The frames every socket of a worker shares.
#[derive(Debug)]
pub struct Umem {
    map: Mapping,
    frames: u32,
    /// Registered with room for transmit metadata ([`TX_METADATA_LEN`]).
    tx_metadata: std::sync::atomic::AtomicBool,
}

impl Umem {
    /// Maps `frames` frames of [`FRAME_SIZE`] bytes.
    pub fn new(frames: u32) -> Result<Umem, XskError> {
        let len = frames as usize * FRAME_SIZE;
        let map = Mapping::new(-1, len, 0, "mmap UMEM")?;
        Ok(Umem {
            map,
            frames,
            tx_metadata: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether the kernel took the UMEM with transmit metadata: a copy-mode socket's frames
    /// may then carry [`TX_METADATA`] and leave with their partial checksum for the receiver
    /// (`CHECKSUM_PARTIAL`; see [`write_tx_checksum`]).
    pub fn tx_metadata(&self) -> bool {
        self.tx_metadata.load(Ordering::Relaxed)
    }

    /// Number of frames.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// The frame with index `idx` (`addr / FRAME_SIZE`), all of its bytes.
    ///
    /// # Safety
    /// The caller owns frame `idx` exclusively for the returned lifetime: it is in none of the
    /// kernel's rings and no other slice of it is alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn frame(&self, idx: u32) -> &mut [u8] {
        assert!(idx < self.frames, "frame index out of range");
        let off = idx as usize * FRAME_SIZE;
        let p = self.map.ptr.as_ptr().wrapping_add(off);
        // SAFETY: `off + FRAME_SIZE <= len` (checked above), so the pointer stays inside the
        // mapping; exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(p, FRAME_SIZE) }
    }

    fn reg(&self, metadata: bool) -> libc::xdp_umem_reg {
        libc::xdp_umem_reg {
            addr: self.map.ptr.as_ptr() as u64,
            len: self.map.len as u64,
            chunk_size: FRAME_SIZE as u32,
            headroom: 0,
            flags: if metadata {
                XDP_UMEM_TX_METADATA_LEN
            } else {
                0
            },
            tx_metadata_len: if metadata { TX_METADATA_LEN as u32 } else { 0 },
        }
    }
}

/// One ring shared with the kernel. `T` is `u64` (fill, completion) or `xdp_desc` (rx, tx).
#[derive(Debug)]
pub struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    cached_prod: u32,
    cached_cons: u32,
    _map: Mapping,
}

// SAFETY: the ring's memory is owned by `_map`; the worker that owns the ring is its only
// user-space user.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    fn map(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        pgoff: u64,
        step: &'static str,
    ) -> Result<Self, XskError> {
        let len = off.desc as usize + RING_SIZE as usize * std::mem::size_of::<T>();
        let map = Mapping::new(fd, len, pgoff, step)?;
        let base = map.ptr;
        let at = |o: u64| -> Result<NonNull<u8>, XskError> {
            if o as usize >= len {
                return Err(XskError {
                    step,
                    source: io::Error::other("ring offset outside its mapping"),
                });
            }
            // SAFETY: `o < len`: the pointer stays inside the mapping.
            Ok(unsafe { base.add(o as usize) })
        };
        let producer = at(off.producer)?.cast();
        let consumer = at(off.consumer)?.cast();
        let flags = at(off.flags)?.cast();
        let descs = at(off.desc)?.cast();
        let mut r = Ring {
            producer,
            consumer,
            flags,
            descs,
            mask: RING_SIZE - 1,
            cached_prod: 0,
            cached_cons: 0,
            _map: map,
        };
        r.cached_prod = r.prod().load(Ordering::Acquire);
        r.cached_cons = r.cons().load(Ordering::Acquire);
        Ok(r)
    }

    fn prod(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping, 4-byte aligned by the kernel's layout.
        unsafe { self.producer.as_ref() }
    }

    fn cons(&self) -> &AtomicU32 {
        // SAFETY: as for `prod`.
        unsafe { self.consumer.as_ref() }
    }

    /// True when the kernel asks for a wakeup (`XDP_RING_NEED_WAKEUP`).
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `prod`.
        let f = unsafe { self.flags.as_ref() };
        f.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    // --- producer side (fill, tx) ---

    /// Free slots, up to `want`.
    pub fn free(&mut self, want: u32) -> u32 {
        let free = RING_SIZE - self.cached_prod.wrapping_sub(self.cached_cons);
        if free >= want {
            return want;
        }
        self.cached_cons = self.cons().load(Ordering::Acquire);
        (RING_SIZE - self.cached_prod.wrapping_sub(self.cached_cons)).min(want)
    }

    /// Writes the `i`-th descriptor after the producer index (not yet visible to the kernel);
    /// `i` must be below what [`free`](Self::free) returned.
    pub fn write(&mut self, i: u32, v: T) {
        let slot = (self.cached_prod.wrapping_add(i) & self.mask) as usize;
        let p = self.descs.as_ptr().wrapping_add(slot);
        // SAFETY: `slot < RING_SIZE`, inside the descriptor array; the slot is free (producer
        // side owns it until `submit`).
        unsafe { p.write(v) }
    }

    /// Publishes `n` written descriptors to the kernel.
    pub fn submit(&mut self, n: u32) {
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.prod().store(self.cached_prod, Ordering::Release);
    }

    /// Descriptors submitted and not consumed by the kernel, as last seen (no shared-memory
    /// read; see [`in_flight`](Self::in_flight) for a fresh count).
    pub fn used(&self) -> u32 {
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Descriptors written by user space that the kernel has not consumed yet (the whole ring
    /// content as the producer sees it, for reclaiming frames when a socket closes).
    pub fn in_flight(&mut self) -> u32 {
        self.cached_cons = self.cons().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    // --- consumer side (rx, completion) ---

    /// Descriptors ready, up to `want`.
    pub fn ready(&mut self, want: u32) -> u32 {
        let have = self.cached_prod.wrapping_sub(self.cached_cons);
        if have >= want {
            return want;
        }
        self.cached_prod = self.prod().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons).min(want)
    }

    /// Reads the `i`-th ready descriptor; `i` must be below what [`ready`](Self::ready)
    /// returned.
    pub fn read(&self, i: u32) -> T {
        let slot = (self.cached_cons.wrapping_add(i) & self.mask) as usize;
        let p = self.descs.as_ptr().wrapping_add(slot);
        // SAFETY: `slot < RING_SIZE`; the kernel published it (Acquire in `ready`) and does
        // not touch it until `release`.
        unsafe { p.read() }
    }

    /// Gives `n` read descriptors back to the kernel.
    pub fn release(&mut self, n: u32) {
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.cons().store(self.cached_cons, Ordering::Release);
    }
}

/// Whether a port runs in copy or zero-copy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The kernel copies frames between the driver and the UMEM.
    Copy,
    /// The driver reads and writes the UMEM directly.
    ZeroCopy,
}

impl Mode {
    /// `copy` or `zero-copy`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Copy => "copy",
            Mode::ZeroCopy => "zero-copy",
        }
    }
}

/// The kernel's per-socket counters (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KernelStats {
    /// Frames dropped for reasons other than the two below (e.g. too big for a frame).
    pub rx_dropped: u64,
    /// Received frames dropped because the rx ring was full.
    pub rx_ring_full: u64,
    /// Times the fill ring was empty when a frame arrived.
    pub rx_fill_ring_empty: u64,
    /// Invalid transmit descriptors.
    pub tx_invalid: u64,
}

/// One AF_XDP socket bound to queue 0 of an interface, with its four rings.
#[derive(Debug)]
pub struct Socket {
    /// Received frames.
    pub rx: Ring<libc::xdp_desc>,
    /// Frames to send.
    pub tx: Ring<libc::xdp_desc>,
    /// Empty frames for the kernel to receive into.
    pub fill: Ring<u64>,
    /// Sent frames the kernel gives back.
    pub comp: Ring<u64>,
    /// How the port runs.
    pub mode: Mode,
    /// Multi-buffer: frames larger than a chunk arrive and leave as descriptor chains
    /// ([`PKT_CONTD`]). Set for the owner when the kernel accepted `XDP_USE_SG`; sockets that
    /// share its UMEM inherit it.
    pub sg: bool,
    fd: OwnedFd,
}

impl Socket {
    /// Creates the socket that registers `umem`, on `ifindex` queue 0: zero-copy if asked
    /// and the driver can, copy mode otherwise; multi-buffer where the kernel and driver
    /// offer it (a driver that cannot gets a single-buffer socket). Need-wakeup is on;
    /// sockets that share the UMEM inherit all three.
    pub fn bind_owner(umem: &Umem, ifindex: u32, zero_copy: bool) -> Result<Socket, XskError> {
        let bind = |sg: bool| {
            if zero_copy {
                if let Ok(s) = retry_busy(|| Self::try_bind(Some(umem), ifindex, None, true, sg)) {
                    return Ok(s);
                }
            }
            retry_busy(|| Self::try_bind(Some(umem), ifindex, None, false, sg))
        };
        match bind(true) {
            Err(e) if is_unsupported(&e) => bind(false),
            r => r,
        }
    }

    /// Creates a socket on `ifindex` queue 0 sharing the UMEM of the socket `owner_fd`;
    /// `sg` is the owner's [`sg`](Self::sg) (inherited, not asked for).
    pub fn bind_shared(owner_fd: RawFd, ifindex: u32, sg: bool) -> Result<Socket, XskError> {
        retry_busy(|| Self::try_bind(None, ifindex, Some(owner_fd), false, sg))
    }

    fn try_bind(
        umem: Option<&Umem>,
        ifindex: u32,
        owner: Option<RawFd>,
        zero_copy: bool,
        sg: bool,
    ) -> Result<Socket, XskError> {
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os_err("socket(AF_XDP)"));
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let fdn = fd.as_raw_fd();
        if let Some(umem) = umem {
            // With room for transmit metadata where the kernel knows it (6.8+); else without.
            let meta = setsockopt(fdn, libc::XDP_UMEM_REG, &umem.reg(true), "register UMEM");
            match meta {
                Ok(()) => umem.tx_metadata.store(true, Ordering::Relaxed),
                Err(e) if is_unsupported(&e) => {
                    setsockopt(fdn, libc::XDP_UMEM_REG, &umem.reg(false), "register UMEM")?;
                    umem.tx_metadata.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        setsockopt(fdn, libc::XDP_UMEM_FILL_RING, &RING_SIZE, "fill ring size")?;
        setsockopt(
            fdn,
            libc::XDP_UMEM_COMPLETION_RING,
            &RING_SIZE,
            "completion ring size",
        )?;
        setsockopt(fdn, libc::XDP_RX_RING, &RING_SIZE, "rx ring size")?;
        setsockopt(fdn, libc::XDP_TX_RING, &RING_SIZE, "tx ring size")?;
        let zero = libc::xdp_ring_offset {
            producer: 0,
            consumer: 0,
            desc: 0,
            flags: 0,
        };
        let off = getsockopt(
            fdn,
            libc::XDP_MMAP_OFFSETS,
            libc::xdp_mmap_offsets {
                rx: zero,
                tx: zero,
                fr: zero,
                cr: zero,
            },
            "ring offsets",
        )?;
        let rx = Ring::map(fdn, &off.rx, libc::XDP_PGOFF_RX_RING as u64, "mmap rx ring")?;
        let tx = Ring::map(fdn, &off.tx, libc::XDP_PGOFF_TX_RING as u64, "mmap tx ring")?;
        let fill = Ring::map(
            fdn,
            &off.fr,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            "mmap fill ring",
        )?;
        let comp = Ring::map(
            fdn,
            &off.cr,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            "mmap completion ring",
        )?;
        let sg_flag = if sg { XDP_USE_SG } else { 0 };
        let (flags, shared) = match owner {
            // Mode, need_wakeup and multi-buffer are inherited from the owner; no other flag
            // is allowed.
            Some(o) => (libc::XDP_SHARED_UMEM, o as u32),
            None if zero_copy => (libc::XDP_ZEROCOPY | libc::XDP_USE_NEED_WAKEUP | sg_flag, 0),
            None => (libc::XDP_COPY | libc::XDP_USE_NEED_WAKEUP | sg_flag, 0),
        };
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: 0,
            sxdp_shared_umem_fd: shared,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp and its exact size is passed.
        let r = unsafe {
            libc::bind(
                fdn,
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as u32,
            )
        };
        if r != 0 {
            return Err(os_err("bind"));
        }
        let opts = getsockopt(
            fdn,
            libc::XDP_OPTIONS,
            libc::xdp_options { flags: 0 },
            "options",
        )?;
        let mode = if opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
            Mode::ZeroCopy
        } else {
            Mode::Copy
        };
        Ok(Socket {
            rx,
            tx,
            fill,
            comp,
            mode,
            sg,
            fd,
        })
    }

    /// The socket's descriptor (for the XSKMAP and poll).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Tells the kernel there is something to send (copy mode always needs this).
    /// Transient errors (the kernel is busy, the link is down) are left for the next batch;
    /// `Err` means the socket is no longer bound: its interface is gone.
    pub fn kick_tx(&self) -> Result<(), io::Error> {
        // SAFETY: a zero-length send on our own socket; no buffer is read.
        let r = unsafe {
            libc::sendto(
                self.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV)) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Asks the kernel to look at the fill ring (drivers that set need_wakeup on it).
    pub fn kick_rx(&self) {
        // SAFETY: a zero-length receive on our own socket; no buffer is written.
        let r = unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        let _ = r;
    }

    /// The kernel's counters for this socket.
    pub fn kernel_stats(&self) -> KernelStats {
        let zero = libc::xdp_statistics {
            rx_dropped: 0,
            rx_invalid_descs: 0,
            tx_invalid_descs: 0,
            rx_ring_full: 0,
            rx_fill_ring_empty_descs: 0,
            tx_ring_empty_descs: 0,
        };
        match getsockopt(self.fd(), libc::XDP_STATISTICS, zero, "statistics") {
            Ok(s) => KernelStats {
                rx_dropped: s.rx_dropped,
                rx_ring_full: s.rx_ring_full,
                rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
                tx_invalid: s.tx_invalid_descs,
            },
            Err(_) => KernelStats::default(),
        }
    }
}

/// True if binding failed because the kernel or driver does not offer what was asked
/// (multi-buffer on a kernel before 6.6, or a zero-copy driver without it).
fn is_unsupported(e: &XskError) -> bool {
    matches!(
        e.source.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

/// Retries `bind` while it fails with EBUSY (the previous socket on the queue is still being
/// freed by the kernel: a restart's case), every 2 ms for up to two seconds.
fn retry_busy(mut bind: impl FnMut() -> Result<Socket, XskError>) -> Result<Socket, XskError> {
    let delay = std::time::Duration::from_millis(2);
    let mut waited = std::time::Duration::ZERO;
    loop {
        match bind() {
            Err(e)
                if e.source.raw_os_error() == Some(libc::EBUSY)
                    && waited < std::time::Duration::from_secs(2) =>
            {
                std::thread::sleep(delay);
                waited += delay;
            }
            r => return r,
        }
    }
}

/// Writes the transmit metadata that asks the kernel to finish a partial checksum (`start`
/// and `offset` as [`TxChecksum`](flowtable::packet::TxChecksum) counts them) into the
/// [`TX_METADATA_LEN`] bytes of `frame` in front of `at`, where the frame's data begins; the
/// descriptor then carries [`TX_METADATA`]. False (nothing written) when `at` leaves no room.
pub fn write_tx_checksum(frame: &mut [u8], at: usize, start: u16, offset: u16) -> bool {
    let Some(m) = at
        .checked_sub(TX_METADATA_LEN)
        .and_then(|from| frame.get_mut(from..at))
    else {
        return false;
    };
    m[..8].copy_from_slice(&TXMD_FLAGS_CHECKSUM.to_ne_bytes());
    m[8..10].copy_from_slice(&start.to_ne_bytes());
    m[10..12].copy_from_slice(&offset.to_ne_bytes());
    m[12..].fill(0);
    true
}

fn setsockopt<T>(fd: RawFd, opt: i32, v: &T, step: &'static str) -> Result<(), XskError> {
    // SAFETY: `v` points to a live `T` and its exact size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_XDP,
            opt,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as u32,
        )
    };
    if r != 0 {
        return Err(os_err(step));
    }
    Ok(())
}

fn getsockopt<T>(fd: RawFd, opt: i32, init: T, step: &'static str) -> Result<T, XskError> {
    let mut v = init;
    let mut len = std::mem::size_of::<T>() as u32;
    // SAFETY: the kernel writes at most `len` bytes into `v`, a live `T`.
    let r =
        unsafe { libc::getsockopt(fd, libc::SOL_XDP, opt, (&mut v as *mut T).cast(), &mut len) };
    if r != 0 {
        return Err(os_err(step));
    }
    Ok(v)
}

/// Waits until one of `fds` is readable or `timeout_ms` passes (`poll(2)`); interrupted
/// waits return early.
pub fn poll_readable(fds: &mut [libc::pollfd], timeout_ms: i32) {
    // SAFETY: `fds` is a live, correctly sized array of pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    let _ = r;
}

/// An eventfd: one thread wakes another that sleeps in `poll(2)`.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    /// A new non-blocking eventfd.
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2) call; the fd is owned right below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The descriptor, for poll.
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }

    /// Wakes the poller (a full counter only means it is already awake).
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which lives for the call.
        let r = unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
        let _ = r;
    }

    /// Clears pending wakeups.
    pub fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads at most 8 bytes into `v`, which lives for the call.
        let r = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        let _ = r;
    }
}

/// Sleeps about `d` (a few microseconds late at most: the thread's timer slack is set to 1 µs
/// on first use instead of the default 50 µs).
pub fn pause(d: std::time::Duration) {
    thread_local! {
        static SLACK: () = {
            // SAFETY: PR_SET_TIMERSLACK takes an integer argument and touches no memory.
            let r = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64, 0u64, 0u64, 0u64) };
            let _ = r;
        };
    }
    SLACK.with(|_| ());
    std::thread::sleep(d);
}

/// True if an interface with index `ifindex` exists (in this network namespace).
pub fn ifindex_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let r = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    !r.is_null()
}

/// The name of the interface with index `ifindex` (in this network namespace), if any.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write, and it writes a
    // NUL-terminated name on success.
    let r = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if r.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated string within its IF_NAMESIZE bytes.
    let c = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(c.to_string_lossy().into_owned())
}

/// The interface index of `name`, or `None` if there is no such interface.
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}
