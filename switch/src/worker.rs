//! The forwarding workers: pinned threads, each owning its ports' sockets and rings, a share
//! of the UMEM's frames, its counters and a pipeline.
//!
//! Design: a loop of rounds. Each round takes the control thread's commands (a port added or
//! removed), reads the current snapshot generation (remapping ports when it changed), takes
//! sent frames back from the completion rings, tops up the fill rings (each to its port's own
//! target: a floor, more while the port receives bursts; `fill`), and then, port by port,
//! takes up to 64 received frames, decides them with the pipeline as one batch and one
//! snapshot, and queues them on the transmit rings of the ports they go to (one wakeup per port
//! per batch). Frames never move: a received frame is transmitted from where it was received,
//! its descriptor starting wherever the pipeline left the frame (VXLAN grows into the 256 bytes
//! in front). The exception is a multi-buffer frame (a chain of descriptors, on sockets bound
//! with `XDP_USE_SG`): it is copied into a contiguous per-batch buffer (`jumbo`) for the
//! pipeline and written back into UMEM frames as a transmit chain (`write_chain`), the first
//! of them the chain's own first frame. Nothing on this path allocates, locks or makes a
//! syscall except the transmit wakeup and, in `wakeup` mode, `sched_yield` while it waits a
//! moment for more and `poll` when idle.
//!
//! A vnet pod port (`--pod-ports vnet`, [`PortIo::Vnet`]) has no rings: its frames are read
//! with `recvmmsg` from a packet socket (into buffers that trade places with the batch
//! buffers), with a free UMEM frame as each one's identity (so that every later path, a
//! handoff or a transmit chain, is the AF_XDP one), up to a batch per round. A GSO packet (up to 64 KB, one frame) goes to the
//! pipeline whole when it is IPv4 to a vnet pod of this worker, and is otherwise cut into its
//! segments first (`flowtable::gso`), as the kernel would cut it on the way out. What the
//! pipeline sends to a vnet port goes out with `sendmsg` and a virtio-net header: a partial
//! checksum stays partial, a GSO packet goes whole; TCP segments for it are joined first, up
//! to `GRO_PACKETS` packets of up to 64 KB per batch (`flowtable::gro`), and sent when the
//! batch ends. Frames the tc program leaves to the node's stack (ARP replies, IPv4 for the
//! node) are seen by the socket too and ignored (`rx_kernel`).
//!
//! Every frame is in exactly one place, tracked per frame in `owner`: the free pool, user space
//! (during a batch), or the rings of one socket. A removed port's frames come back to the pool
//! once its socket is closed; a descriptor the kernel hands back that does not match the
//! bookkeeping is counted and ignored, never trusted.
//!
//! Several workers (`--cores`) share one UMEM through a [`Fabric`]: each owns a slice of the
//! frames (its *home* frames, the only ones it puts in its fill rings) and a set of ports.
//! A frame received by one worker for a port of another is handed over by index through the
//! other's inbox (no copy); once sent, the frame goes back to its home worker through that
//! worker's return queue.
//!
//! Thread-safety: everything here belongs to the worker thread. It shares the snapshot (read
//! through a `SnapshotReader`), the conntrack table (lock-free) and, twice a second, a report
//! under a mutex that the control thread only reads (`try_lock`: the worker never waits).

use crate::fill;
use crate::vnet::{VnetHeader, VnetSocket, MAX_VNET_FRAME, NEEDS_CSUM, RECV_BATCH, VNET_HDR_LEN};
use crate::xsk::{self, KernelStats, Mode, Socket, Umem, FRAME_SIZE, MAX_TX_CHAIN, PKT_CONTD};
use crossbeam_queue::ArrayQueue;
use flowtable::counters::Counters;
use flowtable::gro::{Coalescer, Push};
use flowtable::gso::{GsoError, GsoRequest, Segments};
use flowtable::packet::{Packet, PortId, TxChecksum, DEFAULT_HEADROOM};
use flowtable::pipeline::{Pipeline, Verdict, BATCH_SIZE};
use flowtable::snapshot::{Snapshot, SnapshotReader};
use flowtable::tap::{self, Event, IfName, Layers, Outcome, Point, PortTaps, Taps, WorkerTaps};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most ports (sockets) one worker serves; also the XSKMAP's size.
pub const MAX_PORTS: usize = 1024;
pub use crate::fill::FILL_TARGET;
const NO_SLOT: u16 = u16::MAX;
/// How long a `wakeup` worker waits by default for a batch to build up when a round found
/// only a few frames: none (measured with bench/e2e: waiting 10-30 µs lowers CPU per packet
/// on the local path but costs throughput when two nodes' workers share a core).
pub const DEFAULT_BATCH_WAIT: Duration = Duration::ZERO;

/// How long a `wakeup` worker keeps looking for frames after its last work before it sleeps
/// (`--idle-spin-us`): long enough for a reply within the node or across one hop to find it
/// awake (measured in a same-run A/B: 64-byte request/response latency 10-35% lower, CPU per
/// round trip higher; README "TCP throughput and latency").
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(50);

/// Where the second and later pieces of a transmit chain begin in their UMEM frames: past
/// room for transmit metadata, which the kernel (once the UMEM has it) checks in front of
/// every descriptor.
const CHAIN_OFF: usize = xsk::TX_METADATA_LEN;
/// The longest frame a worker forwards: what one transmit chain can carry ([`MAX_TX_CHAIN`]
/// frames, the first from [`DEFAULT_HEADROOM`], the others from `CHAIN_OFF`). An IPv4
/// packet (at most 65,535 bytes) and its Ethernet and VXLAN headers always fit.
pub const MAX_FRAME: usize =
    (FRAME_SIZE - DEFAULT_HEADROOM) + (MAX_TX_CHAIN - 1) * (FRAME_SIZE - CHAIN_OFF);
/// The longest frame a worker accepts from a port: [`MAX_FRAME`] less the headroom VXLAN
/// encapsulation may take. Longer chains are dropped as `rx_too_long`.
pub const MAX_RX_FRAME: usize = MAX_FRAME - DEFAULT_HEADROOM;
/// No next frame in a chain (`Fabric::next`).
const NO_FRAME: u32 = u32::MAX;

/// A frame handed from one worker to another, to be sent on one of the latter's ports. A
/// frame longer than its first UMEM frame's room is a chain: its bytes continue at offset 0
/// of the frames linked through `Fabric::next`, each full but the last.
#[derive(Debug, Clone, Copy)]
struct Handoff {
    frame: u32,
    off: u16,
    len: u32,
    slot: u16,
    epoch: u64,
}

/// One piece of a transmitted frame: UMEM frame index, offset in it, length.
type Seg = (u32, usize, usize);

/// What the workers share: the UMEM, which worker serves which port, and the lock-free queues
/// frames cross by. The port table is read only when a worker remaps (never per packet).
#[derive(Debug)]
pub struct Fabric {
    umem: Umem,
    per_worker: u32,
    ports: Mutex<HashMap<String, (u16, u16, u64)>>,
    ports_version: AtomicU64,
    next_epoch: AtomicU64,
    inbox: Vec<ArrayQueue<Handoff>>,
    returns: Vec<ArrayQueue<u32>>,
    /// Per frame: the next frame of the multi-frame chain it starts or continues, while the
    /// chain is handed from one worker to another (written by the sender before the push,
    /// read by the receiver after the pop: the queue orders them).
    next: Vec<AtomicU32>,
    /// Per worker: set while it sleeps in poll; then a handoff must wake it.
    sleeping: Vec<AtomicBool>,
    wake: Vec<xsk::EventFd>,
    /// The open captures and monitors (`switchctl capture`, `switchctl monitor`).
    pub taps: Arc<Taps>,
}

impl Fabric {
    /// A fabric over `umem` for `workers` workers (at least one), frames split evenly.
    pub fn new(umem: Umem, workers: usize) -> std::io::Result<Arc<Fabric>> {
        let workers = workers.max(1);
        let frames = umem.frames();
        let wake = (0..workers)
            .map(|_| xsk::EventFd::new())
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Arc::new(Fabric {
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
            wake,
            per_worker: frames / workers as u32,
            taps: Taps::new(workers),
            ports: Mutex::new(HashMap::new()),
            ports_version: AtomicU64::new(0),
            next_epoch: AtomicU64::new(1),
            inbox: (0..workers).map(|_| ArrayQueue::new(4096)).collect(),
            // A worker's returns can never exceed the frames there are: never full.
            returns: (0..workers)
                .map(|_| ArrayQueue::new(frames as usize))
                .collect(),
            next: (0..frames).map(|_| AtomicU32::new(NO_FRAME)).collect(),
            umem,
        }))
    }

    /// Wakes every sleeping worker (so that it looks at a new snapshot at once).
    pub fn wake_all(&self) {
        for w in 0..self.sleeping.len() {
            self.wake(w);
        }
    }

    /// Wakes worker `w` if it sleeps.
    fn wake(&self, w: usize) {
        if self.sleeping[w].load(Ordering::SeqCst) {
            self.wake[w].signal();
        }
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.inbox.len()
    }

    /// Records that port `name` is served by `worker` in `slot`; returns the port's epoch.
    pub fn set_port(&self, name: &str, slot: u16, worker: u16) -> u64 {
        let epoch = self.next_epoch.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.ports.lock() {
            p.insert(name.to_string(), (slot, worker, epoch));
        }
        self.ports_version.fetch_add(1, Ordering::Release);
        epoch
    }

    /// Forgets port `name` if it is still the one in `slot`.
    pub fn remove_port_if(&self, name: &str, slot: u16) {
        if let Ok(mut p) = self.ports.lock() {
            if p.get(name).is_some_and(|e| e.0 == slot) {
                p.remove(name);
            }
        }
        self.ports_version.fetch_add(1, Ordering::Release);
    }

    fn home(&self, frame: u32) -> usize {
        ((frame / self.per_worker.max(1)) as usize).min(self.inbox.len() - 1)
    }

    fn home_frames(&self, worker: usize) -> std::ops::Range<u32> {
        let lo = worker as u32 * self.per_worker;
        let hi = if worker + 1 == self.inbox.len() {
            self.umem.frames()
        } else {
            lo + self.per_worker
        };
        lo..hi
    }
}

/// How the worker waits when there is nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PollMode {
    /// Spin: lowest latency, but starves kernel work on a shared core.
    Busy,
    /// Spin while there is work (optionally pausing `--batch-wait-us` after a round with only
    /// a few frames, so the next finds a fuller batch) and `--idle-spin-us` after it, yielding
    /// the core to anything runnable; then sleep in `poll(2)` until a frame arrives (at most
    /// 10 ms).
    Wakeup,
}

/// One port's socket, as the control thread hands it to the worker.
#[derive(Debug)]
pub struct Port {
    /// Interface name (the port's name in the state file).
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// XSKMAP slot; also the port's index in the worker.
    pub slot: u16,
    /// Which incarnation of the slot this is (from [`Fabric::set_port`]): a frame handed over
    /// for an earlier port in the same slot is not sent to this one.
    pub epoch: u64,
    /// How its frames come and go.
    pub io: PortIo,
}

/// A port's socket.
// (One per port, never moved on the packet path: boxing the larger variant would add an
// indirection to every ring access.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum PortIo {
    /// An AF_XDP socket bound on the shared UMEM.
    Xsk(Socket),
    /// A packet socket with virtio-net headers (a `vnet` pod port: GSO packets whole).
    Vnet(VnetSocket),
}

impl PortIo {
    /// The descriptor to poll.
    pub fn fd(&self) -> std::os::fd::RawFd {
        match self {
            PortIo::Xsk(s) => s.fd(),
            PortIo::Vnet(v) => v.fd(),
        }
    }

    /// What the stats call the port's mode: `copy`, `zero-copy` or `vnet`.
    pub fn mode_name(&self) -> &'static str {
        match self {
            PortIo::Xsk(s) => s.mode.name(),
            PortIo::Vnet(_) => "vnet",
        }
    }

    /// The AF_XDP socket, if the port has one.
    pub fn xsk(&self) -> Option<&Socket> {
        match self {
            PortIo::Xsk(s) => Some(s),
            PortIo::Vnet(_) => None,
        }
    }

    fn xsk_mut(&mut self) -> Option<&mut Socket> {
        match self {
            PortIo::Xsk(s) => Some(s),
            PortIo::Vnet(_) => None,
        }
    }
}

/// What the control thread tells a worker.
#[derive(Debug)]
pub enum Command {
    /// Serve a new port; acknowledge once its fill ring is filled.
    Add(Box<Port>, Option<std::sync::mpsc::SyncSender<()>>),
    /// Stop serving the port in this slot and close its socket.
    Remove(u16),
}

/// Counters of one port, kept by the worker.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PortCounters {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub ifindex: u32,
    /// `copy` or `zero-copy`.
    pub mode: &'static str,
    /// Frames received from the socket.
    pub rx: u64,
    /// Frames queued for transmit on this port.
    pub tx: u64,
    /// Frames for this port dropped because its transmit ring was full.
    pub tx_ring_full: u64,
    /// Frames received while the port is in no snapshot (being removed): dropped.
    pub rx_not_a_port: u64,
    /// Multi-buffer frames longer than [`MAX_RX_FRAME`]: dropped.
    pub rx_too_long: u64,
    /// Descriptors from the kernel that did not match the frame bookkeeping: ignored.
    pub bad_descriptors: u64,
    /// vnet ports: GSO packets received (each one frame of up to 64 KB).
    pub rx_gso: u64,
    /// vnet ports: frames the tc program passed to the node's stack (ARP replies, traffic
    /// for the node's IP), seen by the socket too and left alone (not drops).
    pub rx_kernel: u64,
    /// vnet ports: GSO packets that cannot be segmented (a kind other than TCPv4 and
    /// UDP_L4, or headers that do not match it): dropped.
    pub gso_refused: u64,
    /// vnet ports: frames the kernel refused to send (longer than the interface's MTU, the
    /// interface down or gone): dropped.
    pub tx_failed: u64,
    /// vnet ports: packets sent whole that the worker joined from several TCP segments of a
    /// batch (`flowtable::gro`), and the segments they were made of.
    pub tx_joined: u64,
    /// See `tx_joined`.
    pub tx_joined_segments: u64,
    /// The kernel's own counters for the socket.
    pub kernel: KernelStats,
}

/// What the worker publishes for the control thread.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Snapshot generation the worker runs.
    pub generation: u64,
    /// Pipeline counters.
    pub counters: Counters,
    /// Per port.
    pub ports: Vec<PortCounters>,
    /// Frames the pipeline sent to a port that has no socket (yet or any more): dropped.
    pub tx_no_socket: u64,
    /// Frames the pipeline handed to the kernel after the XDP program had redirected them:
    /// the daemon has no path into the kernel's stack for these, so they are dropped.
    pub kernel_undeliverable: u64,
    /// Frames in the free pool.
    pub free_frames: usize,
    /// Ports closed because their interface disappeared.
    pub ports_gone: u64,
    /// Frames for another worker's port dropped because its inbox was full.
    pub handoff_full: u64,
    /// Frames handed to other workers.
    pub handed_off: u64,
    /// Multi-buffer frames dropped because the free pool had too few frames to send them in
    /// (or, from a vnet port, to cut a GSO packet into).
    pub tx_no_frames: u64,
    /// GSO packets kept whole for a vnet port of this worker that the pipeline sent
    /// elsewhere (a state change between the look and the decision): dropped.
    pub gso_undeliverable: u64,
    /// When the worker published this report.
    pub at: Option<Instant>,
}

impl Report {
    /// Every drop after the pipeline, by reason (its ports' summed): what `worker_drops`
    /// shows in the stats file, `switchctl stats` and the metrics.
    pub fn drops(&self) -> [(&'static str, u64); 12] {
        let sum = |f: fn(&PortCounters) -> u64| self.ports.iter().map(f).sum::<u64>();
        [
            ("tx_no_socket", self.tx_no_socket),
            ("kernel_undeliverable", self.kernel_undeliverable),
            ("handoff_full", self.handoff_full),
            ("tx_ring_full", sum(|p| p.tx_ring_full)),
            ("rx_not_a_port", sum(|p| p.rx_not_a_port)),
            ("rx_too_long", sum(|p| p.rx_too_long)),
            ("tx_no_frames", self.tx_no_frames),
            ("gso_undeliverable", self.gso_undeliverable),
            ("gso_refused", sum(|p| p.gso_refused)),
            ("tx_failed", sum(|p| p.tx_failed)),
            ("kernel_rx_ring_full", sum(|p| p.kernel.rx_ring_full)),
            ("kernel_rx_dropped", sum(|p| p.kernel.rx_dropped)),
        ]
    }
}

struct Slot {
    port: Port,
    /// Its name as taps record it.
    ifname: IfName,
    /// Frames in the fill ring or received and not yet taken (owned by the kernel side).
    filled: u32,
    /// How many frames its fill ring is topped up to (`fill`).
    target: u32,
    /// Its own fill floor where its MTU makes a frame a chain ([`chain_floor`]), else 0.
    min_fill: u32,
    /// Receive descriptors taken (a multi-buffer frame takes several: what the fill ring
    /// gave), and their count at the last report (`fill::decayed`).
    rx_descs: u64,
    rx_mark: u64,
    /// Transmit descriptors written this batch, not yet submitted.
    pending: u32,
    /// The frames those descriptors make up (a chain is one frame).
    pending_frames: u32,
    /// The port finishes partial checksums from transmit metadata (copy mode, a UMEM with
    /// room for it).
    tx_csum: bool,
    counters: PortCounters,
}

impl Slot {
    /// Writes a transmit descriptor for `len` bytes at `off` in `frame` (submitted with the
    /// others of the batch by [`submit_touched`]). False if the ring is full or the port
    /// already holds `cap` frames (a port that does not drain, because its peer is down or
    /// slower than its senders, cannot starve the others of frames); the frame is then the
    /// caller's to free.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        slot: u16,
        frame: u32,
        off: usize,
        len: usize,
        meta: bool,
        cap: u32,
        touched: &mut Vec<u16>,
    ) -> bool {
        self.enqueue_chain(slot, &[(frame, off, len)], meta, cap, touched)
    }

    /// Writes one frame as the transmit descriptors `segs` (all but the last marked
    /// [`PKT_CONTD`]; the first marked [`xsk::TX_METADATA`] if `meta`: its metadata is
    /// written in front of it): all of them or, as [`enqueue`](Self::enqueue) refuses, none.
    #[inline]
    fn enqueue_chain(
        &mut self,
        slot: u16,
        segs: &[Seg],
        meta: bool,
        cap: u32,
        touched: &mut Vec<u16>,
    ) -> bool {
        let n = segs.len() as u32;
        let want = self.pending + n;
        let Some(sock) = self.port.io.xsk_mut() else {
            return false;
        };
        let tx = &mut sock.tx;
        if tx.free(want) < want || (tx.used() + want > cap && tx.in_flight() + want > cap) {
            self.counters.tx_ring_full += 1;
            return false;
        }
        for (i, &(frame, off, len)) in segs.iter().enumerate() {
            let more = i + 1 < segs.len();
            tx.write(
                self.pending + i as u32,
                libc::xdp_desc {
                    addr: u64::from(frame) * FRAME_SIZE as u64 + off as u64,
                    len: len as u32,
                    options: (if more { PKT_CONTD } else { 0 })
                        | (if meta && i == 0 { xsk::TX_METADATA } else { 0 }),
                },
            );
        }
        if self.pending == 0 {
            touched.push(slot);
        }
        self.pending = want;
        self.pending_frames += 1;
        true
    }
}

/// The fill floor of a port whose frames, at interface MTU `mtu`, take several receive
/// descriptors: two dozen of its largest frames (a TCP sender's bursts, which can arrive
/// before the fill target grows), at most the whole ring; 0 where a frame takes one.
fn chain_floor(mtu: u32) -> u32 {
    let per_frame = (mtu as usize + 14).div_ceil(FRAME_SIZE - xsk::RX_OFFSET) as u32;
    if per_frame <= 1 {
        0
    } else {
        (24 * per_frame).min(FILL_TARGET)
    }
}

/// How many UMEM frames a frame of `len` bytes starting at `off` in its first takes (a
/// handoff's chain: the rest start at `CHAIN_OFF`).
fn chain_len(off: usize, len: usize) -> usize {
    let first = FRAME_SIZE.saturating_sub(off);
    if len <= first {
        1
    } else {
        1 + (len - first).div_ceil(FRAME_SIZE - CHAIN_OFF)
    }
}

/// Takes the received descriptors `range` of `rx`, one multi-buffer frame, and copies its
/// bytes into `buf` from [`DEFAULT_HEADROOM`]. Returns its first UMEM frame (now the
/// caller's; the others are back in `free`) and its length, or `None` when the chain is
/// dropped: a descriptor this socket was not given or out of its frame (`bad_descriptors`),
/// or longer than [`MAX_RX_FRAME`] (`rx_too_long`).
#[allow(clippy::too_many_arguments)]
fn take_chain(
    rx: &xsk::Ring<libc::xdp_desc>,
    range: std::ops::RangeInclusive<u32>,
    owner: &mut [u16],
    tag: u16,
    free: &mut Vec<u32>,
    umem: &Umem,
    counters: &mut PortCounters,
    buf: &mut [u8],
) -> Option<(u32, usize)> {
    let mut first = None;
    let mut len = 0usize;
    let mut ok = true;
    for i in range {
        let d = rx.read(i);
        let idx = (d.addr / FRAME_SIZE as u64) as usize;
        let off = (d.addr % FRAME_SIZE as u64) as usize;
        if owner.get(idx) != Some(&tag) {
            // Not a frame this socket was given: never touch it.
            ok = false;
            continue;
        }
        owner[idx] = 0;
        let dlen = d.len as usize;
        if dlen == 0 || off + dlen > FRAME_SIZE {
            ok = false;
        } else if ok && len + dlen <= MAX_RX_FRAME {
            // SAFETY: the frame came out of this socket's rx ring with its owner tag, now
            // cleared: it is in no ring and the kernel no longer writes it; it is read here
            // and nowhere else.
            #[allow(unsafe_code)]
            let src = unsafe { umem.frame(idx as u32) };
            let at = DEFAULT_HEADROOM + len;
            buf[at..at + dlen].copy_from_slice(&src[off..off + dlen]);
        }
        len += dlen;
        if first.is_none() {
            first = Some(idx as u32);
        } else {
            free.push(idx as u32);
        }
    }
    let first = first?;
    if !ok {
        counters.bad_descriptors += 1;
    } else if len > MAX_RX_FRAME {
        counters.rx_too_long += 1;
    } else {
        return Some((first, len));
    }
    free.push(first);
    None
}

/// Copies `data` into UMEM frames, `first` (from [`DEFAULT_HEADROOM`]) and as many more from
/// `free` as it needs (from `CHAIN_OFF`), each full but the last; with `csum`, writes the
/// transmit metadata that finishes that checksum in front of the first. Writes the pieces
/// into `segs` and returns their number, or `None` (nothing taken from `free`) if the pool
/// has too few frames or `data` is longer than [`MAX_FRAME`].
fn write_chain(
    umem: &Umem,
    free: &mut Vec<u32>,
    first: u32,
    data: &[u8],
    csum: Option<TxChecksum>,
    segs: &mut [Seg; MAX_TX_CHAIN],
) -> Option<usize> {
    let head = FRAME_SIZE - DEFAULT_HEADROOM;
    let n = 1 + data
        .len()
        .saturating_sub(head)
        .div_ceil(FRAME_SIZE - CHAIN_OFF);
    if n > MAX_TX_CHAIN || free.len() < n - 1 {
        return None;
    }
    let (lead, rest) = data.split_at(data.len().min(head));
    let pieces = std::iter::once(lead).chain(rest.chunks(FRAME_SIZE - CHAIN_OFF));
    for (i, piece) in pieces.enumerate() {
        let (frame, at) = if i == 0 {
            (first, DEFAULT_HEADROOM)
        } else {
            (free.pop().unwrap_or(first), CHAIN_OFF)
        };
        // SAFETY: `first` is the caller's (a received frame it holds, in no ring) and every
        // other frame comes from the free pool, which only this worker touches: each is in
        // no ring and no other slice of it exists.
        #[allow(unsafe_code)]
        let buf = unsafe { umem.frame(frame) };
        buf[at..at + piece.len()].copy_from_slice(piece);
        if let (0, Some(c)) = (i, csum) {
            xsk::write_tx_checksum(buf, at, c.start, c.offset);
        }
        segs[i] = (frame, at, piece.len());
    }
    Some(n)
}

/// Copies the pieces `segs` of one frame, in order, into `buf`; returns the frame's length.
///
/// # Safety
/// Every frame in `segs` must be the caller's: in no ring the kernel writes, and with no
/// other live slice of it.
#[allow(unsafe_code)]
unsafe fn gather(umem: &Umem, segs: &[Seg], buf: &mut [u8]) -> usize {
    let mut n = 0;
    for &(f, o, l) in segs {
        // SAFETY: the caller's promise, for each frame in turn (one slice at a time).
        let src = unsafe { umem.frame(f) };
        buf[n..n + l].copy_from_slice(&src[o..o + l]);
        n += l;
    }
    n
}

/// Publishes the descriptors written to each touched port and wakes the kernel (one syscall
/// per port per batch); a port whose socket turned out unbound goes to `gone`.
fn submit_touched(slots: &mut [Option<Slot>], touched: &mut Vec<u16>, gone: &mut Vec<u16>) {
    for t in touched.drain(..) {
        let Some(s) = slots.get_mut(usize::from(t)).and_then(Option::as_mut) else {
            continue;
        };
        let Some(sock) = s.port.io.xsk_mut() else {
            continue;
        };
        sock.tx.submit(s.pending);
        s.counters.tx += u64::from(s.pending_frames);
        s.pending = 0;
        s.pending_frames = 0;
        if (sock.tx.needs_wakeup() || sock.mode == Mode::Copy) && sock.kick_tx().is_err() {
            gone.push(t);
        }
    }
}

/// The worker: construct with [`Worker::new`], then [`Worker::run`] on its own thread.
pub struct Worker {
    fabric: Arc<Fabric>,
    id: u16,
    seen_ports: u64,
    /// Per slot (all workers'): the worker serving it, or NO_SLOT.
    slot_worker: Vec<u16>,
    /// Per slot: the epoch of the port in it, as last remapped.
    slot_epoch: Vec<u64>,
    /// Handoffs of the current batch, pushed once the batch's packets are gone.
    outbox: Vec<(u16, Handoff)>,
    handoff_full: u64,
    handed_off: u64,
    slots: Vec<Option<Slot>>,
    /// Slots in use, in order.
    active: Vec<u16>,
    /// Slots with transmit descriptors pending in this batch.
    touched: Vec<u16>,
    /// Slots whose interface disappeared (their socket is unbound), to be closed.
    gone: Vec<u16>,
    /// Ports closed because their interface disappeared.
    ports_gone: u64,
    /// The uplink's interface disappeared: the worker stops with an error.
    uplink_gone: bool,
    /// Per frame: 0 = free pool or user space, `s + 1` = in the rings of slot `s`.
    owner: Vec<u16>,
    free: Vec<u32>,
    pipeline: Pipeline,
    reader: SnapshotReader,
    snap: Arc<Snapshot>,
    /// Frames each port's fill ring is kept at.
    /// The fill floors (`fill`): the uplink's, every other port's.
    uplink_floor: u32,
    floor: u32,
    /// This worker's frames (its share of the UMEM).
    home: u32,
    /// Most frames one port's transmit ring may hold.
    tx_cap: u32,
    port_to_slot: Vec<u16>,
    slot_to_port: Vec<Option<PortId>>,
    cmds: Receiver<Command>,
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
    poll: PollMode,
    /// Pause after a round with only a few frames (`wakeup` mode; zero: none).
    pub batch_wait: Duration,
    /// Keep looking for frames this long after the last round with work before sleeping
    /// (`wakeup` mode; zero: sleep after a few idle rounds; default [`DEFAULT_IDLE_SPIN`]).
    pub idle_spin: Duration,
    pollfds: Vec<libc::pollfd>,
    storage: Vec<Packet<'static>>,
    tx_no_socket: u64,
    kernel_undeliverable: u64,
    /// Test hook ([`STALL_ENV`]): while this file exists the worker stops working.
    stall: Option<std::path::PathBuf>,
    /// The open captures and monitors, as this worker last looked.
    wtaps: WorkerTaps,
    /// Per slot: which of them want the port's frames.
    slot_taps: Vec<PortTaps>,
    /// Per packet of the batch being decided, while a monitor is open: its flows as received.
    before: Vec<Layers>,
    /// Per packet of a batch: where a multi-buffer frame is made contiguous for the pipeline
    /// ([`DEFAULT_HEADROOM`] + [`MAX_FRAME`] bytes each; pages are touched only once used).
    jumbo: Vec<Box<[u8]>>,
    /// Multi-buffer frames the free pool had too few frames to send.
    tx_no_frames: u64,
    gso_undeliverable: u64,
    /// Where a vnet port's frames are received (each the size of a batch buffer).
    vrx: Vec<Box<[u8]>>,
    /// Where a GSO packet for a vnet port is cut into when the pipeline finished its checksum.
    seg_out: Box<[u8]>,
    /// TCP packets being joined for vnet ports during a batch: the slot each is for
    /// (`NO_SLOT`: free) and the packet. All are sent when the batch ends.
    gro: Vec<(u16, Coalescer)>,
}

/// How many TCP packets a worker joins at once for its vnet ports (flows in one batch).
const GRO_PACKETS: usize = 4;

/// The environment variable naming a file that, while it exists, stalls every worker at its
/// next report (no frames served, no report published): how tests make a worker lag.
pub const STALL_ENV: &str = "NODESWITCH_TEST_STALL_FILE";

impl Worker {
    /// Worker `id` of `fabric` (its home frames free), serving no port yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        fabric: Arc<Fabric>,
        id: u16,
        pipeline: Pipeline,
        reader: SnapshotReader,
        cmds: Receiver<Command>,
        stop: Arc<AtomicBool>,
        report: Arc<Mutex<Report>>,
        poll: PollMode,
    ) -> Worker {
        let frames = fabric.umem.frames();
        let mut pipeline = pipeline;
        pipeline.set_tx_checksum_offload(fabric.umem.tx_metadata());
        let mut reader = reader;
        let snap = Arc::clone(reader.load());
        Worker {
            owner: vec![0; frames as usize],
            free: {
                let mut f = Vec::with_capacity(frames as usize);
                f.extend(fabric.home_frames(usize::from(id)).rev());
                f
            },
            id,
            seen_ports: u64::MAX,
            slot_worker: vec![NO_SLOT; MAX_PORTS],
            slot_epoch: vec![0; MAX_PORTS],
            outbox: Vec::with_capacity(BATCH_SIZE),
            handoff_full: 0,
            handed_off: 0,
            fabric,
            slots: (0..MAX_PORTS).map(|_| None).collect(),
            active: Vec::with_capacity(MAX_PORTS),
            touched: Vec::with_capacity(MAX_PORTS),
            gone: Vec::with_capacity(MAX_PORTS),
            ports_gone: 0,
            uplink_gone: false,
            pipeline,
            reader,
            snap,
            uplink_floor: FILL_TARGET,
            floor: FILL_TARGET,
            home: 0,
            tx_cap: xsk::RING_SIZE,
            port_to_slot: Vec::with_capacity(MAX_PORTS),
            slot_to_port: vec![None; MAX_PORTS],
            cmds,
            stop,
            report,
            poll,
            batch_wait: DEFAULT_BATCH_WAIT,
            idle_spin: DEFAULT_IDLE_SPIN,
            pollfds: Vec::with_capacity(MAX_PORTS),
            storage: Vec::with_capacity(BATCH_SIZE),
            tx_no_socket: 0,
            kernel_undeliverable: 0,
            stall: std::env::var_os(STALL_ENV).map(Into::into),
            wtaps: WorkerTaps::new(id),
            slot_taps: vec![PortTaps::default(); MAX_PORTS],
            before: Vec::with_capacity(BATCH_SIZE),
            jumbo: (0..BATCH_SIZE)
                .map(|_| vec![0u8; DEFAULT_HEADROOM + MAX_FRAME].into_boxed_slice())
                .collect(),
            tx_no_frames: 0,
            gso_undeliverable: 0,
            vrx: (0..RECV_BATCH)
                .map(|_| vec![0u8; DEFAULT_HEADROOM + MAX_FRAME].into_boxed_slice())
                .collect(),
            seg_out: vec![0u8; MAX_VNET_FRAME].into_boxed_slice(),
            gro: (0..GRO_PACKETS)
                .map(|_| (NO_SLOT, Coalescer::new()))
                .collect(),
        }
    }

    /// Adds a port (the control thread's initial ports, or a new pod's); its fill ring is
    /// filled by [`prefill`](Self::prefill) at startup, or right after a runtime `Add`.
    pub fn add(&mut self, port: Port) {
        let i = port.slot as usize;
        if self.slots[i].is_some() {
            self.remove(port.slot);
        }
        let counters = PortCounters {
            name: port.name.clone(),
            ifindex: port.ifindex,
            mode: port.io.mode_name(),
            ..PortCounters::default()
        };
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", port.name))
            .ok()
            .and_then(|m| m.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let xsk = port.io.xsk();
        let tx_csum = xsk.is_some_and(|s| s.mode == Mode::Copy) && self.fabric.umem.tx_metadata();
        let sg = xsk.is_some_and(|s| s.sg);
        if xsk.is_none() {
            // A vnet port sends a partial checksum on as it came (the virtio-net header).
            self.pipeline.set_tx_checksum_offload(true);
        }
        self.slots[i] = Some(Slot {
            min_fill: if sg { chain_floor(mtu) } else { 0 },
            ifname: IfName::new(&port.name),
            port,
            filled: 0,
            target: 0,
            rx_descs: 0,
            rx_mark: 0,
            pending: 0,
            pending_frames: 0,
            tx_csum,
            counters,
        });
        self.remap();
    }

    /// Fills every port's fill ring (after the initial ports are added).
    pub fn prefill(&mut self) {
        self.refill();
    }

    fn remove(&mut self, slot: u16) {
        let Some(s) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        // Closing the socket stops the kernel from touching its rings and frames.
        drop(s);
        let tag = slot + 1;
        for i in 0..self.owner.len() {
            if self.owner[i] == tag {
                self.owner[i] = 0;
                self.give_back(i as u32);
            }
        }
        self.remap();
    }

    /// A frame this worker is done with goes to its home worker's pool.
    fn give_back(&mut self, frame: u32) {
        let home = self.fabric.home(frame);
        if home == usize::from(self.id) {
            self.free.push(frame);
        } else {
            // Capacity is the number of frames: cannot be full.
            let _ = self.fabric.returns[home].push(frame);
            self.fabric.wake(home);
        }
    }

    /// Kicks every port whose transmit ring still holds frames: in copy mode the kernel sends
    /// at most 32 per wakeup, so a batch larger than that, or a port whose peer pushed back,
    /// would otherwise wait for the next frame to that port.
    /// Returns how many ports made progress, so that the worker does not go to sleep while a
    /// backlog still drains (a port that makes none, e.g. its link is down, does not keep it
    /// awake).
    fn kick_backlog(&mut self) -> usize {
        let mut progress = 0;
        for k in 0..self.active.len() {
            let i = self.active[k];
            let Some(s) = self.slots[i as usize].as_mut() else {
                continue;
            };
            let Some(sock) = s.port.io.xsk_mut() else {
                continue;
            };
            if sock.tx.used() == 0 {
                continue;
            }
            let before = sock.tx.in_flight();
            if before > 0 {
                let _ = sock.kick_tx();
                if sock.tx.in_flight() < before {
                    progress += 1;
                }
            }
        }
        progress
    }

    /// Closes the sockets of ports whose interface disappeared; their frames return to the
    /// pool and frames routed to them count as `tx_no_socket` until the state drops the pod.
    /// The uplink (slot 0, the UMEM's owner) is never closed here: its loss is fatal and
    /// reported by [`run`](Self::run). An unbound socket whose interface still exists (a
    /// driver's transient error) is left alone.
    fn close_gone(&mut self) {
        let mut gone = std::mem::take(&mut self.gone);
        gone.sort_unstable();
        gone.dedup();
        for &slot in &gone {
            let Some(s) = self.slots[slot as usize].as_ref() else {
                continue;
            };
            if xsk::ifindex_exists(s.port.ifindex) {
                continue;
            }
            if slot == 0 {
                self.uplink_gone = true;
                continue;
            }
            {
                eprintln!(
                    "switchd: port {} (ifindex {}) is gone: its interface was removed; socket closed",
                    s.port.name, s.port.ifindex
                );
                self.ports_gone += 1;
            }
            self.remove(slot);
        }
        gone.clear();
        self.gone = gone;
    }

    /// Rebuilds the port <-> slot maps for the current snapshot and the poll set.
    fn remap(&mut self) {
        self.seen_ports = self.fabric.ports_version.load(Ordering::Acquire);
        let ports = self.snap.ports();
        self.port_to_slot.clear();
        self.port_to_slot.resize(ports.len(), NO_SLOT);
        for s in self.slot_to_port.iter_mut() {
            *s = None;
        }
        for w in self.slot_worker.iter_mut() {
            *w = NO_SLOT;
        }
        if let Ok(table) = self.fabric.ports.lock() {
            for (i, name) in ports.iter().enumerate() {
                if let Some(&(slot, worker, epoch)) = table.get(name) {
                    if usize::from(slot) < MAX_PORTS {
                        self.port_to_slot[i] = slot;
                        self.slot_worker[usize::from(slot)] = worker;
                        self.slot_epoch[usize::from(slot)] = epoch;
                    }
                }
            }
        }
        self.pollfds.clear();
        self.active.clear();
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            self.active.push(i as u16);
            if let Some(p) = self.snap.port_id(&slot.port.name) {
                self.port_to_slot[p.0 as usize] = i as u16;
                self.slot_to_port[i] = Some(p);
            }
            self.pollfds.push(libc::pollfd {
                fd: slot.port.io.fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        self.pollfds.push(libc::pollfd {
            fd: self.fabric.wake[usize::from(self.id)].fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let home = self.fabric.home_frames(usize::from(self.id)).len() as u32;
        // (vnet ports have no fill ring: they take no share.)
        let others = self
            .active
            .iter()
            .filter(|&&i| i != 0)
            .filter(|&&i| {
                self.slots[usize::from(i)]
                    .as_ref()
                    .is_some_and(|s| s.port.io.xsk().is_some())
            })
            .count() as u32;
        self.home = home;
        (self.uplink_floor, self.floor) = fill::floors(home, others);
        // The pool as it will be once every ring has what it was promised (ports added
        // together, at start, are filled after all of them are added).
        let promised: u32 = self
            .slots
            .iter()
            .flatten()
            .map(|s| s.target.saturating_sub(s.filled))
            .sum();
        let mut free = (self.free.len() as u32).saturating_sub(promised);
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.port.io.xsk().is_none() {
                continue;
            }
            // Slot 0 is the uplink's.
            let floor = if i == 0 {
                self.uplink_floor
            } else {
                self.floor
            };
            if slot.target == 0 {
                // A new port.
                slot.target = if i == 0 {
                    floor
                } else {
                    fill::initial(floor, free, home)
                };
                free = free.saturating_sub(slot.target);
            }
            slot.target = slot.target.max(floor);
        }
        // Handed-over frames belong to other workers: a port's transmit share is taken over
        // every worker's ports, so that no worker's ports can hold another's frames hostage.
        let all_ports = self
            .fabric
            .ports
            .lock()
            .map(|t| t.len())
            .unwrap_or(0)
            .max(self.active.len())
            .max(1) as u32;
        let share = home / 4 / all_ports;
        self.tx_cap = share.clamp(64, xsk::RING_SIZE);
        self.retap();
    }

    /// Recomputes which sessions want each port's frames (after the sessions or the ports
    /// changed).
    fn retap(&mut self) {
        for (i, slot) in self.slots.iter().enumerate() {
            self.slot_taps[i] = match slot {
                Some(s) if self.wtaps.any() => self.wtaps.port(&s.port.name),
                _ => PortTaps::default(),
            };
        }
    }

    /// Runs until `stop` is set; publishes a last report before returning.
    /// Returns an error if it had to stop by itself (the uplink's interface disappeared).
    pub fn run(mut self) -> Result<(), String> {
        let start = Instant::now();
        let mut last_report = start;
        let mut idle_rounds = 0u32;
        let mut last_work = start;
        while !self.stop.load(Ordering::Relaxed) {
            if self.uplink_gone {
                self.publish(true);
                let name = self.slots[0]
                    .as_ref()
                    .map(|s| s.port.name.clone())
                    .unwrap_or_default();
                return Err(format!("the uplink '{name}' disappeared"));
            }
            while let Ok(cmd) = self.cmds.try_recv() {
                match cmd {
                    Command::Add(p, ack) => {
                        self.add(*p);
                        self.refill();
                        if let Some(ack) = ack {
                            let _ = ack.try_send(());
                        }
                    }
                    Command::Remove(s) => self.remove(s),
                }
            }
            if self.reader.load().generation != self.snap.generation {
                self.snap = Arc::clone(self.reader.load());
                self.remap();
            } else if self.fabric.ports_version.load(Ordering::Acquire) != self.seen_ports {
                self.remap();
            }
            while let Some(f) = self.fabric.returns[usize::from(self.id)].pop() {
                self.free.push(f);
            }
            if self.wtaps.refresh(&self.fabric.taps) {
                self.retap();
            }
            self.reclaim();
            self.refill();
            let mut work = 0;
            for k in 0..self.active.len() {
                let i = self.active[k] as usize;
                let n = self.rx_batch(i);
                if n > 0 {
                    if let Some(slot) = self.slots[i].as_mut() {
                        // What the kernel still has to receive into.
                        let left = slot.port.io.xsk_mut().map_or(0, |s| s.fill.in_flight());
                        let free = self.free.len() as u32;
                        slot.target = fill::grown(slot.target, left, free, self.home);
                    }
                    // Give the kernel back as many frames as it just filled, at once: a round
                    // can take long (transmit wakeups run the receivers' stacks on this core).
                    self.refill_slot(i);
                }
                work += n;
            }
            work += self.drain_inbox();
            work += self.kick_backlog();
            if !self.gone.is_empty() {
                self.close_gone();
            }
            let now = Instant::now();
            if now.duration_since(last_report) >= Duration::from_millis(500) {
                // A port whose interface was deleted has an unbound socket: the probe below
                // finds it even if nothing is sent to it.
                for k in 0..self.active.len() {
                    let i = self.active[k];
                    if let Some(s) = self.slots[i as usize].as_ref() {
                        let gone = match &s.port.io {
                            PortIo::Xsk(sock) => sock.kick_tx().is_err(),
                            PortIo::Vnet(_) => !xsk::ifindex_exists(s.port.ifindex),
                        };
                        if gone {
                            self.gone.push(i);
                        }
                    }
                }
                self.close_gone();
                self.decay_targets();
                self.publish(false);
                last_report = now;
                if let Some(f) = &self.stall {
                    while f.exists() && !self.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            if self.poll == PollMode::Busy {
                std::hint::spin_loop();
                continue;
            }
            if work > 0 {
                last_work = now;
            }
            if work >= BATCH_SIZE / 2 {
                idle_rounds = 0;
                continue;
            }
            if work > 0 && self.batch_wait.is_zero() {
                idle_rounds = 0;
                continue;
            }
            if work > 0 {
                // A trickle: let a batch build up instead of paying for a round (ring index
                // cache lines shared with the kernel's core) every few frames.
                idle_rounds = 0;
                xsk::pause(self.batch_wait);
                continue;
            }
            idle_rounds += 1;
            match self.poll {
                PollMode::Busy => {}
                PollMode::Wakeup if idle_rounds < 4 => xsk::pause(self.batch_wait),
                // Traffic came a moment ago: its reply may come soon. Look again, but let
                // anything runnable on this core (the other node's worker, a pod's stack) go
                // first.
                PollMode::Wakeup if now.duration_since(last_work) < self.idle_spin => {
                    std::thread::yield_now()
                }
                PollMode::Wakeup => {
                    for p in self.pollfds.iter_mut() {
                        p.revents = 0;
                    }
                    let me = usize::from(self.id);
                    // Announce the sleep, then look once more: a handoff pushed before the
                    // flag was visible is seen here, one pushed after it signals the eventfd.
                    self.fabric.sleeping[me].store(true, Ordering::SeqCst);
                    if self.fabric.inbox[me].is_empty() && self.fabric.returns[me].is_empty() {
                        xsk::poll_readable(&mut self.pollfds, 10);
                    }
                    self.fabric.sleeping[me].store(false, Ordering::SeqCst);
                    self.fabric.wake[me].drain();
                }
            }
        }
        self.publish(true);
        Ok(())
    }

    /// Takes sent frames back from every completion ring.
    fn reclaim(&mut self) {
        for &i in &self.active {
            let Some(slot) = self.slots[i as usize].as_mut() else {
                continue;
            };
            let Some(sock) = slot.port.io.xsk_mut() else {
                continue;
            };
            let comp = &mut sock.comp;
            let n = comp.ready(xsk::RING_SIZE);
            for k in 0..n {
                let addr = comp.read(k);
                let idx = (addr / FRAME_SIZE as u64) as usize;
                match self.owner.get_mut(idx) {
                    Some(o) if *o == i + 1 => {
                        *o = 0;
                        let home = self.fabric.home(idx as u32);
                        if home == usize::from(self.id) {
                            self.free.push(idx as u32);
                        } else {
                            let _ = self.fabric.returns[home].push(idx as u32);
                            self.fabric.wake(home);
                        }
                    }
                    _ => slot.counters.bad_descriptors += 1,
                }
            }
            comp.release(n);
        }
    }

    /// Halves the fill target of every port but the uplink that received less than it since
    /// the last report (`fill`).
    fn decay_targets(&mut self) {
        for slot in self.slots.iter_mut().skip(1).flatten() {
            if slot.port.io.xsk().is_none() {
                continue;
            }
            let rx = slot.rx_descs - slot.rx_mark;
            slot.target = fill::decayed(slot.target, rx, self.floor.max(slot.min_fill));
            slot.rx_mark = slot.rx_descs;
        }
    }

    /// Tops every fill ring up to its target from the free pool.
    fn refill(&mut self) {
        for k in 0..self.active.len() {
            let i = self.active[k] as usize;
            self.refill_slot(i);
        }
    }

    /// Tops slot `i`'s fill ring up to its target from the free pool.
    fn refill_slot(&mut self, i: usize) {
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        let target = slot.target;
        let floor = if i == 0 {
            self.uplink_floor
        } else {
            self.floor
        }
        .max(slot.min_fill);
        let free = self.free.len() as u32;
        let want = fill::want(target, floor, slot.filled, free, self.home);
        if want < (BATCH_SIZE as u32 / 2).min(target / 2) && slot.filled > 0 {
            return;
        }
        let Some(sock) = slot.port.io.xsk_mut() else {
            return;
        };
        let fill = &mut sock.fill;
        let n = fill.free(want).min(free);
        for k in 0..n {
            let idx = self.free.pop().unwrap_or_default();
            self.owner[idx as usize] = i as u16 + 1;
            fill.write(k, idx as u64 * FRAME_SIZE as u64);
        }
        if n > 0 {
            fill.submit(n);
            slot.filled += n;
            if fill.needs_wakeup() {
                sock.kick_rx();
            }
        }
    }

    /// Queues the frames other workers handed over on this worker's transmit rings; returns
    /// how many it took.
    fn drain_inbox(&mut self) -> usize {
        let me = usize::from(self.id);
        let mut n = 0;
        while n < 4 * BATCH_SIZE {
            let Some(h) = self.fabric.inbox[me].pop() else {
                break;
            };
            n += 1;
            // The frame's pieces: one, or a chain through `next`.
            let (off, len) = (usize::from(h.off), h.len as usize);
            let count = chain_len(off, len);
            let mut segs: [Seg; MAX_TX_CHAIN] = [(0, 0, 0); MAX_TX_CHAIN];
            let ok = len > 0 && off < FRAME_SIZE && count <= MAX_TX_CHAIN;
            let mut frame = h.frame;
            let (mut at, mut rem, mut got) = (off.min(FRAME_SIZE), len, 0);
            while got < count.min(MAX_TX_CHAIN) && (frame as usize) < self.owner.len() {
                let piece = rem.min(FRAME_SIZE - at);
                segs[got] = (frame, at, piece);
                got += 1;
                rem -= piece;
                at = CHAIN_OFF;
                if rem == 0 {
                    break;
                }
                frame = self.fabric.next[frame as usize].load(Ordering::Relaxed);
            }
            let segs = &segs[..got];
            let ok = ok && rem == 0;
            let epoch_ok = |d: &Slot| d.port.epoch == h.epoch;
            let tx_cap = self.tx_cap;
            let Some(dst) = self
                .slots
                .get_mut(usize::from(h.slot))
                .and_then(Option::as_mut)
                .filter(|d| ok && epoch_ok(d))
            else {
                self.tx_no_socket += 1;
                for sg in segs {
                    self.give_back(sg.0);
                }
                continue;
            };
            if let PortIo::Vnet(vs) = &dst.port.io {
                // Gathered into the first batch buffer (no batch is being decided now) and
                // sent as it is (the sender finished its checksum).
                let buf = &mut self.jumbo[0];
                // SAFETY: the frames came out of this worker's inbox, so they are this
                // worker's alone, in no ring; no other slice of them exists.
                #[allow(unsafe_code)]
                let n = unsafe { gather(&self.fabric.umem, segs, buf) };
                match vnet_send(vs, &VnetHeader::default(), &buf[..n]) {
                    Ok(()) => {
                        dst.counters.tx += 1;
                        let t = self.slot_taps[usize::from(h.slot)].tx;
                        if t != 0 {
                            let vxlan = self.snap.node.vxlan_port;
                            self.wtaps.capture(
                                t,
                                now_ns(),
                                dst.ifname,
                                Point::Tx,
                                &buf[..n],
                                vxlan,
                            );
                        }
                    }
                    Err(e) => {
                        e.count(&mut dst.counters);
                        if e == VnetTxError::Gone {
                            self.gone.push(h.slot);
                        }
                    }
                }
                for sg in segs {
                    self.give_back(sg.0);
                }
                continue;
            }
            if dst.enqueue_chain(h.slot, segs, false, tx_cap, &mut self.touched) {
                for sg in segs {
                    self.owner[sg.0 as usize] = h.slot + 1;
                }
                let t = self.slot_taps[usize::from(h.slot)].tx;
                if t != 0 {
                    // Gathered into the first batch buffer (no batch is being decided now).
                    let buf = &mut self.jumbo[0];
                    // SAFETY: the frames came out of this worker's inbox, so they are this
                    // worker's alone: their transmit descriptors are written but not
                    // submitted (that happens after this loop), so the kernel does not read
                    // them yet, and no other slice of them exists.
                    #[allow(unsafe_code)]
                    let n = unsafe { gather(&self.fabric.umem, segs, buf) };
                    let vxlan = self.snap.node.vxlan_port;
                    self.wtaps
                        .capture(t, now_ns(), dst.ifname, Point::Tx, &buf[..n], vxlan);
                }
            } else {
                for sg in segs {
                    self.give_back(sg.0);
                }
            }
        }
        submit_touched(&mut self.slots, &mut self.touched, &mut self.gone);
        n
    }

    /// Receives and decides up to one batch on slot `si`; returns the frames received.
    fn rx_batch(&mut self, si: usize) -> usize {
        if self.slots[si]
            .as_ref()
            .is_some_and(|s| s.port.io.xsk().is_none())
        {
            return self.rx_vnet(si);
        }
        let mut frames = [0u32; BATCH_SIZE];
        let mut descs = [(0usize, 0usize); BATCH_SIZE];
        // Per packet: a multi-buffer frame, copied into `jumbo[k]`.
        let mut chained = [false; BATCH_SIZE];
        let (n, m) = self.take_xsk(si, &mut frames, &mut descs, &mut chained);
        if m > 0 {
            let mut gso = [VnetHeader::default(); BATCH_SIZE];
            self.decide(si, m, &mut frames, &descs, &mut chained, &mut gso);
        }
        n as usize
    }

    /// Takes up to one batch of whole frames from AF_XDP slot `si`'s receive ring into
    /// `frames`/`descs` (a multi-buffer frame copied into `jumbo[k]`, `chained[k]`); returns
    /// the descriptors taken and the frames kept.
    fn take_xsk(
        &mut self,
        si: usize,
        frames: &mut [u32; BATCH_SIZE],
        descs: &mut [(usize, usize); BATCH_SIZE],
        chained: &mut [bool; BATCH_SIZE],
    ) -> (u32, usize) {
        let Worker {
            fabric,
            slots,
            owner,
            free,
            jumbo,
            ..
        } = self;
        let umem = &fabric.umem;
        let Some(slot) = slots[si].as_mut() else {
            return (0, 0);
        };
        let Some(sock) = slot.port.io.xsk_mut() else {
            return (0, 0);
        };
        let rx = &mut sock.rx;
        let avail = rx.ready(xsk::RING_SIZE);
        if avail == 0 {
            return (0, 0);
        }
        let tag = si as u16 + 1;
        let mut m = 0;
        // Descriptors taken: whole frames only (the kernel publishes a chain at once; one
        // cut by `avail` would wait for the next round).
        let mut n = 0;
        while n < avail && m < BATCH_SIZE {
            let d = rx.read(n);
            if d.options & PKT_CONTD != 0 {
                let mut end = n + 1;
                while end < avail && rx.read(end).options & PKT_CONTD != 0 {
                    end += 1;
                }
                if end == avail {
                    break;
                }
                let (c, buf) = (&mut slot.counters, &mut jumbo[m]);
                if let Some((first, len)) = take_chain(rx, n..=end, owner, tag, free, umem, c, buf)
                {
                    frames[m] = first;
                    descs[m] = (DEFAULT_HEADROOM, len);
                    chained[m] = true;
                    m += 1;
                }
                n = end + 1;
                continue;
            }
            n += 1;
            let idx = (d.addr / FRAME_SIZE as u64) as usize;
            let off = (d.addr % FRAME_SIZE as u64) as usize;
            if owner.get(idx) != Some(&tag) {
                // Not a frame this socket was given: never touch it.
                slot.counters.bad_descriptors += 1;
                continue;
            }
            owner[idx] = 0;
            if d.len == 0 || off + d.len as usize > FRAME_SIZE {
                slot.counters.bad_descriptors += 1;
                free.push(idx as u32);
                continue;
            }
            frames[m] = idx as u32;
            descs[m] = (off, d.len as usize);
            m += 1;
        }
        rx.release(n);
        slot.filled = slot.filled.saturating_sub(n);
        slot.rx_descs += u64::from(n);
        (n, m)
    }

    /// Decides the `m` frames received on slot `si` as one batch and sends each where the
    /// pipeline says: `frames[k]` is frame k's UMEM frame, holding it at `descs[k]` unless
    /// `chained[k]` (its bytes are in `jumbo[k]` from [`DEFAULT_HEADROOM`]); `gso[k]` is the
    /// virtio-net header of a GSO packet kept whole (a vnet port's; `gso_type` 0 otherwise).
    fn decide(
        &mut self,
        si: usize,
        m: usize,
        frames: &mut [u32; BATCH_SIZE],
        descs: &[(usize, usize); BATCH_SIZE],
        chained: &mut [bool; BATCH_SIZE],
        gso: &mut [VnetHeader; BATCH_SIZE],
    ) {
        let Worker {
            fabric,
            slots,
            free,
            owner,
            pipeline,
            snap,
            port_to_slot,
            slot_to_port,
            slot_worker,
            slot_epoch,
            outbox,
            storage,
            touched,
            gone,
            tx_cap,
            tx_no_socket,
            kernel_undeliverable,
            handoff_full,
            handed_off,
            wtaps,
            slot_taps,
            before,
            jumbo,
            tx_no_frames,
            gso_undeliverable,
            seg_out,
            gro,
            ..
        } = self;
        let umem = &fabric.umem;
        let Some(slot) = slots[si].as_mut() else {
            for &f in &frames[..m] {
                free.push(f);
            }
            return;
        };
        slot.counters.rx += m as u64;
        let rx_name = slot.ifname;
        let Some(port) = slot_to_port[si] else {
            slot.counters.rx_not_a_port += m as u64;
            free.extend_from_slice(&frames[..m]);
            return;
        };

        let mut pkts = recycle(std::mem::take(storage));
        let mut kept = 0;
        let mut jbufs = jumbo.iter_mut();
        for k in 0..m {
            let jb = jbufs.next();
            let (off, len) = descs[k];
            let buf: &mut [u8] = if chained[k] {
                match jb {
                    Some(b) => b,
                    None => {
                        free.push(frames[k]);
                        continue;
                    }
                }
            } else {
                // SAFETY: frame `frames[k]` came out of this socket's rx ring with the owner
                // tag of this slot, which was cleared (or, from a vnet port, out of this
                // worker's free pool): it is in no ring, the kernel does not write it, and it
                // appears once in `frames`; no other slice of it exists.
                #[allow(unsafe_code)]
                let b = unsafe { umem.frame(frames[k]) };
                b
            };
            // In bounds (checked against FRAME_SIZE above), so `None` cannot happen; if it
            // did, the frame goes back to the pool and `frames` stays in step with `pkts`.
            match Packet::new(buf, off, len, port) {
                Some(p) => {
                    pkts.push(p);
                    frames[kept] = frames[k];
                    chained[kept] = chained[k];
                    gso[kept] = gso[k];
                    kept += 1;
                }
                None => {
                    slot.counters.bad_descriptors += 1;
                    free.push(frames[k]);
                }
            }
        }
        let m = kept;
        // Taps (captures, monitors): nothing but these loads while none is open.
        let rx_taps = slot_taps[si];
        let ts = if wtaps.any() { now_ns() } else { 0 };
        let vxlan = snap.node.vxlan_port;
        if rx_taps.rx != 0 {
            for p in pkts.iter() {
                wtaps.capture(rx_taps.rx, ts, rx_name, Point::Rx, p.data(), vxlan);
            }
        }
        let monitor = rx_taps.monitor;
        before.clear();
        if monitor != 0 {
            before.extend(pkts.iter().map(|p| tap::layers(p.data(), vxlan)));
        }
        let generation = snap.generation;
        let note = |k: usize, outcome: Outcome, after: Option<&[u8]>| {
            if monitor != 0 {
                let e = Event {
                    ts_ns: ts,
                    generation,
                    port: rx_name,
                    outcome,
                    before: before.get(k).copied().unwrap_or_default(),
                    after: after.map(|d| tap::layers(d, vxlan)).unwrap_or_default(),
                    ..Event::default()
                };
                wtaps.event(monitor, &e);
            }
        };
        let mut verdicts = [Verdict::default(); BATCH_SIZE];
        let mut segs: [Seg; MAX_TX_CHAIN] = [(0, 0, 0); MAX_TX_CHAIN];
        let mut slot_bad = 0u64;
        let mut wake_mask = 0u64;
        pipeline.process(snap, &mut pkts, &mut verdicts[..m]);
        for k in 0..m {
            let idx = frames[k];
            match verdicts[k] {
                Verdict::Transmit(p) => {
                    let to = port_to_slot.get(p.0 as usize).copied().unwrap_or(NO_SLOT);
                    let Some(dst) = slots.get_mut(to as usize).and_then(Option::as_mut) else {
                        // Another worker's port: hand the frame over by index.
                        // (Pushed after the batch, once no slice of the frame is left here.)
                        let w = slot_worker.get(to as usize).copied().unwrap_or(NO_SLOT);
                        let pkt = &mut pkts[k];
                        if gso[k].gso_type != 0 {
                            // Kept whole for a vnet port of this worker, sent elsewhere.
                            *gso_undeliverable += 1;
                            free.push(idx);
                            note(k, Outcome::Drop("gso_undeliverable"), None);
                            continue;
                        }
                        // (Its checksum is finished here: the other worker knows no more
                        // than the frame.)
                        pipeline.finish_tx_checksum(pkt);
                        if usize::from(w) >= fabric.inbox.len() {
                            *tx_no_socket += 1;
                            free.push(idx);
                            note(k, Outcome::Drop("tx_no_socket"), None);
                            continue;
                        }
                        let (off, len) = if chained[k] {
                            // Its bytes go into a chain of frames linked through `next`.
                            let Some(c) = write_chain(umem, free, idx, pkt.data(), None, &mut segs)
                            else {
                                *tx_no_frames += 1;
                                free.push(idx);
                                note(k, Outcome::Drop("tx_no_frames"), None);
                                continue;
                            };
                            for w in segs[..c].windows(2) {
                                fabric.next[w[0].0 as usize].store(w[1].0, Ordering::Relaxed);
                            }
                            (DEFAULT_HEADROOM, pkt.len())
                        } else {
                            (pkt.offset(), pkt.len())
                        };
                        if monitor != 0 {
                            let name = IfName::new(snap.port_name(p).unwrap_or_default());
                            note(k, Outcome::Forward(name), Some(pkt.data()));
                        }
                        outbox.push((
                            w,
                            Handoff {
                                frame: idx,
                                off: off as u16,
                                len: len as u32,
                                slot: to,
                                epoch: slot_epoch.get(to as usize).copied().unwrap_or(0),
                            },
                        ));
                        continue;
                    };
                    let pkt = &mut pkts[k];
                    if let PortIo::Vnet(vs) = &dst.port.io {
                        // A TCP segment joins the packet of its flow being built for this port,
                        // or starts one; whatever of that flow does not join sends it first.
                        let (data, partial) = (pkt.data(), pkt.tx_checksum().is_some());
                        let mut taken = false;
                        for e in gro.iter_mut().filter(|e| e.0 == to) {
                            if gso[k].gso_type == 0 && !taken {
                                match e.1.push(data, partial) {
                                    Push::Joined => {
                                        taken = true;
                                        continue;
                                    }
                                    Push::Complete => taken = true,
                                    Push::Other if !e.1.same_flow(data) => continue,
                                    Push::Other => {}
                                }
                            } else if !e.1.same_flow(data) {
                                continue;
                            }
                            if flush_gro(vs, &mut e.1, &mut dst.counters) {
                                gone.push(to);
                            }
                            e.0 = NO_SLOT;
                        }
                        if !taken && gso[k].gso_type == 0 {
                            if let Some(e) = gro.iter_mut().find(|e| e.0 == NO_SLOT) {
                                if e.1.start(data, partial) {
                                    e.0 = to;
                                    taken = true;
                                }
                            }
                        }
                        if taken {
                            free.push(idx);
                            let t = slot_taps[usize::from(to)].tx;
                            if t != 0 {
                                wtaps.capture(t, ts, dst.ifname, Point::Tx, data, vxlan);
                            }
                            note(k, Outcome::Forward(dst.ifname), Some(data));
                            continue;
                        }
                        let sent = send_vnet(vs, pkt, gso[k], seg_out);
                        free.push(idx);
                        match sent {
                            Ok(n) => {
                                dst.counters.tx += n;
                                let t = slot_taps[usize::from(to)].tx;
                                if t != 0 {
                                    wtaps.capture(t, ts, dst.ifname, Point::Tx, pkt.data(), vxlan);
                                }
                                note(k, Outcome::Forward(dst.ifname), Some(pkt.data()));
                            }
                            Err(e) => {
                                let why = e.count(&mut dst.counters);
                                if e == VnetTxError::Gone {
                                    gone.push(to);
                                }
                                note(k, Outcome::Drop(why), None);
                            }
                        }
                        continue;
                    }
                    if gso[k].gso_type != 0 {
                        // Kept whole for a vnet port, sent to an AF_XDP one.
                        *gso_undeliverable += 1;
                        free.push(idx);
                        note(k, Outcome::Drop("gso_undeliverable"), None);
                        continue;
                    }
                    // A checksum left for the port: in the transmit metadata where the port
                    // can finish it, else here.
                    let csum = pkt.tx_checksum().filter(|_| dst.tx_csum);
                    if csum.is_none() {
                        pipeline.finish_tx_checksum(pkt);
                    }
                    let meta = csum.is_some();
                    if chained[k] {
                        let Some(c) = write_chain(umem, free, idx, pkt.data(), csum, &mut segs)
                        else {
                            *tx_no_frames += 1;
                            free.push(idx);
                            note(k, Outcome::Drop("tx_no_frames"), None);
                            continue;
                        };
                        if !dst.enqueue_chain(to, &segs[..c], meta, *tx_cap, touched) {
                            free.extend(segs[..c].iter().map(|s| s.0));
                            note(k, Outcome::Drop("tx_ring_full"), None);
                            continue;
                        }
                        for sg in &segs[..c] {
                            owner[sg.0 as usize] = to + 1;
                        }
                        let t = slot_taps[usize::from(to)].tx;
                        if t != 0 {
                            wtaps.capture(t, ts, dst.ifname, Point::Tx, pkt.data(), vxlan);
                        }
                        note(k, Outcome::Forward(dst.ifname), Some(pkt.data()));
                        continue;
                    }
                    // (With room for metadata in the UMEM the kernel wants it in front of
                    // every descriptor.)
                    let room = if umem.tx_metadata() { CHAIN_OFF } else { 0 };
                    if pkt.is_empty()
                        || pkt.offset() + pkt.len() > FRAME_SIZE
                        || pkt.offset() < room
                    {
                        slot_bad += 1;
                        free.push(idx);
                        note(k, Outcome::Drop("bad_descriptors"), None);
                        continue;
                    }
                    if let Some(c) = csum {
                        let at = pkt.offset();
                        xsk::write_tx_checksum(pkt.headroom_mut(), at, c.start, c.offset);
                    }
                    let (off, len) = (pkt.offset(), pkt.len());
                    if !dst.enqueue(to, idx, off, len, meta, *tx_cap, touched) {
                        free.push(idx);
                        note(k, Outcome::Drop("tx_ring_full"), None);
                        continue;
                    }
                    owner[idx as usize] = to + 1;
                    // The descriptor is not submitted before the batch ends: the frame is
                    // still only this worker's to read.
                    let t = slot_taps[usize::from(to)].tx;
                    if t != 0 {
                        wtaps.capture(t, ts, dst.ifname, Point::Tx, pkt.data(), vxlan);
                    }
                    note(k, Outcome::Forward(dst.ifname), Some(pkt.data()));
                }
                Verdict::Kernel => {
                    *kernel_undeliverable += 1;
                    free.push(idx);
                    note(k, Outcome::Drop("kernel_undeliverable"), None);
                }
                Verdict::Drop(r) => {
                    free.push(idx);
                    note(k, Outcome::Drop(r.name()), None);
                }
            }
        }
        *storage = recycle(pkts);
        // The joined packets go at the end of the batch.
        for e in gro.iter_mut().filter(|e| e.0 != NO_SLOT) {
            let to = std::mem::replace(&mut e.0, NO_SLOT);
            match slots.get_mut(usize::from(to)).and_then(Option::as_mut) {
                Some(d) => {
                    if let PortIo::Vnet(vs) = &d.port.io {
                        if flush_gro(vs, &mut e.1, &mut d.counters) {
                            gone.push(to);
                        }
                    }
                }
                None => {
                    if let Some(j) = e.1.finish() {
                        *tx_no_socket += u64::from(j.segments);
                    }
                }
            }
        }
        if let Some(s) = slots[si].as_mut() {
            s.counters.bad_descriptors += slot_bad;
        }
        for (w, h) in outbox.drain(..) {
            match fabric.inbox[usize::from(w)].push(h) {
                Ok(()) => {
                    *handed_off += 1;
                    wake_mask |= 1u64 << (w % 64);
                }
                Err(h) => {
                    *handoff_full += 1;
                    let mut frame = h.frame;
                    for _ in 0..chain_len(usize::from(h.off), h.len as usize) {
                        free.push(frame);
                        frame = fabric.next[frame as usize].load(Ordering::Relaxed);
                    }
                }
            }
        }
        while wake_mask != 0 {
            let w = wake_mask.trailing_zeros() as usize;
            wake_mask &= wake_mask - 1;
            fabric.wake(w);
        }
        submit_touched(slots, touched, gone);
    }

    /// Receives up to one batch of frames from vnet slot `si` (a GSO packet is one frame:
    /// kept whole when it goes to a vnet pod of this worker, else cut into its segments here,
    /// before the pipeline, as the kernel would cut it on the way out) and decides them, a
    /// batch at a time; returns the frames received. A frame waits in the socket while the
    /// free pool is empty.
    fn rx_vnet(&mut self, si: usize) -> usize {
        let mut frames = [0u32; BATCH_SIZE];
        let mut descs = [(0usize, 0usize); BATCH_SIZE];
        let mut chained = [false; BATCH_SIZE];
        let mut gso = [VnetHeader::default(); BATCH_SIZE];
        let node_ip = self.snap.node.ip;
        let host_ready = self.snap.host().is_some_and(|h| {
            self.port_to_slot
                .get(h.port.0 as usize)
                .is_some_and(|&s| s != NO_SLOT)
        });
        // Received into buffers of their own (a batch buffer's size): a frame that goes
        // whole trades places with the batch buffer it becomes, one to cut is cut from there.
        let mut vrx = std::mem::take(&mut self.vrx);
        let mut hdrs = [[0u8; VNET_HDR_LEN]; RECV_BATCH];
        let mut lens = [(0usize, false); RECV_BATCH];
        let (mut m, mut got) = (0, 0);
        'recv: while got < BATCH_SIZE {
            let want = RECV_BATCH
                .min(BATCH_SIZE - got)
                .min(self.free.len())
                .min(vrx.len());
            let Some(PortIo::Vnet(vs)) = self.slots[si].as_ref().map(|s| &s.port.io) else {
                break;
            };
            if want == 0 {
                break;
            }
            let r = match vs.recv_many(&mut hdrs, &mut vrx[..want], DEFAULT_HEADROOM, &mut lens) {
                Ok(r) => r,
                Err(_) => {
                    let gone = self.slots[si]
                        .as_ref()
                        .is_some_and(|s| !xsk::ifindex_exists(s.port.ifindex));
                    if gone {
                        self.gone.push(si as u16);
                    }
                    break;
                }
            };
            for j in 0..r {
                got += 1;
                if m == BATCH_SIZE {
                    self.decide(si, m, &mut frames, &descs, &mut chained, &mut gso);
                    m = 0;
                }
                let (len, cut) = lens[j];
                let cut = cut || len > MAX_RX_FRAME;
                let frame = &vrx[j][DEFAULT_HEADROOM..DEFAULT_HEADROOM + len.min(MAX_RX_FRAME)];
                let h = VnetHeader::parse(&hdrs[j]).unwrap_or_default();
                let kernel = !cut && kernel_frame(frame, node_ip, host_ready);
                let whole = h.gso_type == 0 || self.keeps_whole(frame);
                let Some(c) = self.slots[si].as_mut().map(|s| &mut s.counters) else {
                    break 'recv;
                };
                if cut {
                    c.rx_too_long += 1;
                    continue;
                }
                if kernel {
                    c.rx_kernel += 1;
                    continue;
                }
                if h.gso_type != 0 {
                    c.rx_gso += 1;
                }
                if whole {
                    std::mem::swap(&mut self.jumbo[m], &mut vrx[j]);
                    frames[m] = self.free.pop().unwrap_or_default();
                    descs[m] = (DEFAULT_HEADROOM, len);
                    chained[m] = true;
                    gso[m] = if h.gso_type != 0 {
                        h
                    } else {
                        VnetHeader::default()
                    };
                    m += 1;
                    continue;
                }
                let frame = &vrx[j][DEFAULT_HEADROOM..DEFAULT_HEADROOM + len];
                let segs = match GsoRequest::from_vnet(h.gso_type, h.gso_size) {
                    Ok(Some(req)) => Segments::new(frame, req),
                    _ => Err(GsoError::UnsupportedKind),
                };
                let Ok(segs) = segs else {
                    c.gso_refused += 1;
                    continue;
                };
                for i in 0..segs.count() {
                    if m == BATCH_SIZE {
                        self.decide(si, m, &mut frames, &descs, &mut chained, &mut gso);
                        m = 0;
                    }
                    let Some(f) = self.free.pop() else {
                        self.tx_no_frames += 1;
                        break;
                    };
                    let l = segs.len(i);
                    if DEFAULT_HEADROOM + l <= FRAME_SIZE {
                        // SAFETY: `f` comes from this worker's free pool: in no ring, and no
                        // other slice of it exists.
                        #[allow(unsafe_code)]
                        let b = unsafe { self.fabric.umem.frame(f) };
                        segs.write(i, &mut b[DEFAULT_HEADROOM..]);
                        chained[m] = false;
                    } else {
                        segs.write(i, &mut self.jumbo[m][DEFAULT_HEADROOM..]);
                        chained[m] = true;
                    }
                    frames[m] = f;
                    descs[m] = (DEFAULT_HEADROOM, l);
                    gso[m] = VnetHeader::default();
                    m += 1;
                }
            }
            if r < want {
                break; // the socket is drained
            }
        }
        self.vrx = vrx;
        if m > 0 {
            self.decide(si, m, &mut frames, &descs, &mut chained, &mut gso);
        }
        got
    }

    /// Whether a GSO packet from a vnet port goes whole: IPv4 to a local pod whose port is a
    /// vnet port of this worker (anything else is cut before the pipeline).
    fn keeps_whole(&self, frame: &[u8]) -> bool {
        if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
            return false;
        }
        let dst = std::net::Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
        let Some(pod) = self.snap.pod_by_ip(dst) else {
            return false;
        };
        let to = self
            .port_to_slot
            .get(pod.port.0 as usize)
            .copied()
            .unwrap_or(NO_SLOT);
        self.slots
            .get(usize::from(to))
            .and_then(Option::as_ref)
            .is_some_and(|s| s.port.io.xsk().is_none())
    }

    /// Publishes the report; `wait` blocks for the lock (only at exit).
    fn publish(&mut self, wait: bool) {
        let guard = if wait {
            self.report.lock().ok()
        } else {
            self.report.try_lock().ok()
        };
        let Some(mut r) = guard else { return };
        r.generation = self.snap.generation;
        r.counters = self.pipeline.counters().clone();
        r.ports.clear();
        for &i in &self.active {
            let Some(s) = self.slots[i as usize].as_mut() else {
                continue;
            };
            match &s.port.io {
                PortIo::Xsk(sock) => s.counters.kernel = sock.kernel_stats(),
                // (The socket's counters reset on every read.)
                PortIo::Vnet(v) => s.counters.kernel.rx_dropped += v.stats().drops,
            }
            r.ports.push(s.counters.clone());
        }
        r.tx_no_socket = self.tx_no_socket;
        r.kernel_undeliverable = self.kernel_undeliverable;
        r.free_frames = self.free.len();
        r.ports_gone = self.ports_gone;
        r.handoff_full = self.handoff_full;
        r.handed_off = self.handed_off;
        r.tx_no_frames = self.tx_no_frames;
        r.gso_undeliverable = self.gso_undeliverable;
        r.at = Some(Instant::now());
    }
}

/// Whether a frame a vnet port's socket saw is one the tc program passes to the node's
/// stack (the same rule as the XDP program's for a pod port): an ARP reply, or IPv4 for the
/// node's IP while no host port takes pod -> node traffic.
fn kernel_frame(frame: &[u8], node_ip: std::net::Ipv4Addr, host_ready: bool) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x06]) => frame.get(20..22) == Some(&[0, 2]),
        Some([0x08, 0x00]) => !host_ready && frame.get(30..34) == Some(&node_ip.octets()[..]),
        _ => false,
    }
}

/// Why a frame could not be sent on a vnet port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VnetTxError {
    /// The socket's send buffer is full (`tx_ring_full`).
    Full,
    /// The interface is gone (`tx_failed`; the port is closed).
    Gone,
    /// The kernel refused the frame (`tx_failed`).
    Failed,
    /// A GSO packet to cut that cannot be (`gso_refused`).
    Refused,
}

impl VnetTxError {
    /// Counts the drop on the port; returns its name.
    fn count(self, c: &mut PortCounters) -> &'static str {
        match self {
            VnetTxError::Full => {
                c.tx_ring_full += 1;
                "tx_ring_full"
            }
            VnetTxError::Gone | VnetTxError::Failed => {
                c.tx_failed += 1;
                "tx_failed"
            }
            VnetTxError::Refused => {
                c.gso_refused += 1;
                "gso_refused"
            }
        }
    }
}

/// Sends one frame with header `hdr` on a vnet port.
fn vnet_send(vs: &VnetSocket, hdr: &VnetHeader, data: &[u8]) -> Result<(), VnetTxError> {
    vs.send_parts(&hdr.bytes(), data)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => VnetTxError::Full,
            Some(libc::ENXIO) | Some(libc::ENODEV) => VnetTxError::Gone,
            _ => VnetTxError::Failed,
        })
}

/// Sends the packet `c` holds (if any) on a vnet port: several segments as one GSO packet
/// with a partial checksum, one as it came. Counts it on the port (a failure once per
/// segment); true if the port turned out gone.
fn flush_gro(vs: &VnetSocket, c: &mut Coalescer, counters: &mut PortCounters) -> bool {
    let Some(j) = c.finish() else {
        return false;
    };
    let mut hdr = VnetHeader::default();
    if let Some((start, offset)) = j.partial {
        hdr.flags = NEEDS_CSUM;
        hdr.csum_start = start;
        hdr.csum_offset = offset;
    }
    if j.segments > 1 {
        hdr.gso_type = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        hdr.gso_size = j.gso_size;
        hdr.hdr_len = j.hdr_len;
    }
    match vnet_send(vs, &hdr, j.frame) {
        Ok(()) => {
            counters.tx += 1;
            if j.segments > 1 {
                counters.tx_joined += 1;
                counters.tx_joined_segments += u64::from(j.segments);
            }
            false
        }
        Err(e) => {
            for _ in 0..j.segments {
                e.count(counters);
            }
            e == VnetTxError::Gone
        }
    }
}

/// Sends the pipeline's `pkt` on a vnet port: a checksum it left partial goes on partial
/// (the receiving pod's stack takes it as verified, as on the kernel's own veth path); a
/// GSO packet kept whole goes whole with its segmentation (`gso`), or, if the pipeline
/// finished its checksum, cut into `scratch` segment by segment. Returns the frames sent.
fn send_vnet(
    vs: &VnetSocket,
    pkt: &Packet<'_>,
    gso: VnetHeader,
    scratch: &mut [u8],
) -> Result<u64, VnetTxError> {
    let data = pkt.data();
    if let Some(hdr) = tx_header(pkt.tx_checksum(), gso) {
        vnet_send(vs, &hdr, data)?;
        return Ok(1);
    }
    let req = match GsoRequest::from_vnet(gso.gso_type, gso.gso_size) {
        Ok(Some(r)) => r,
        _ => return Err(VnetTxError::Refused),
    };
    let segs = Segments::new(data, req).map_err(|_| VnetTxError::Refused)?;
    if segs.max_len() > scratch.len() {
        return Err(VnetTxError::Refused);
    }
    for i in 0..segs.count() {
        let n = segs.write(i, scratch);
        vnet_send(vs, &VnetHeader::default(), &scratch[..n])?;
    }
    Ok(segs.count() as u64)
}

/// The virtio-net header a frame for a vnet port goes with, given the checksum the pipeline
/// left partial (`csum`) and the segmentation of a GSO packet kept whole (`gso`, `gso_type`
/// 0 for none); `None` when it must be cut first (a GSO packet whose checksum the pipeline
/// finished: segmentation offload needs it partial).
fn tx_header(csum: Option<TxChecksum>, gso: VnetHeader) -> Option<VnetHeader> {
    let partial = |c: TxChecksum, base: VnetHeader| VnetHeader {
        flags: NEEDS_CSUM,
        csum_start: c.start,
        csum_offset: c.offset,
        ..base
    };
    match (gso.gso_type, csum) {
        (0, None) => Some(VnetHeader::default()),
        (0, Some(c)) => Some(partial(c, VnetHeader::default())),
        (_, Some(c)) => Some(partial(c, gso)),
        (_, None) => None,
    }
}

/// Now, in nanoseconds since the epoch (a vDSO clock read; taken once per batch, and only
/// while a capture or monitor is open).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Reuses a vector's allocation for packets of another lifetime (the in-place collect of an
/// empty vector keeps its capacity; no allocation per batch).
fn recycle<'a, 'b>(mut v: Vec<Packet<'a>>) -> Vec<Packet<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("empty")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_whose_frames_are_chains_keeps_two_dozen_of_them_in_its_fill_ring() {
        assert_eq!(chain_floor(1450), 0);
        assert_eq!(
            chain_floor(3826),
            0,
            "3840 bytes of frame fit one descriptor"
        );
        assert_eq!(chain_floor(3827), 48);
        assert_eq!(chain_floor(8950), 72);
        assert_eq!(chain_floor(65000), 24 * 17);
    }

    #[test]
    fn a_chain_takes_the_frames_its_bytes_need() {
        assert_eq!(chain_len(256, 1), 1);
        assert_eq!(chain_len(256, FRAME_SIZE - 256), 1);
        assert_eq!(chain_len(256, FRAME_SIZE - 255), 2);
        // Later pieces start past room for transmit metadata.
        let rest = FRAME_SIZE - CHAIN_OFF;
        assert_eq!(chain_len(256, FRAME_SIZE - 256 + rest), 2);
        assert_eq!(chain_len(256, FRAME_SIZE - 256 + rest + 1), 3);
        // The largest Ethernet frame of an IPv4 packet, VXLAN-encapsulated, fits one chain.
        assert!(chain_len(DEFAULT_HEADROOM, 65_535 + 14 + 50) <= MAX_TX_CHAIN);
        const { assert!(65_535 + 14 + 50 <= MAX_FRAME) };
        const { assert!(MAX_RX_FRAME + DEFAULT_HEADROOM <= MAX_FRAME) };
    }

    #[test]
    fn a_frame_written_as_a_chain_reads_back_whole_and_takes_only_what_it_needs() {
        let umem = Umem::new(64).expect("UMEM");
        let data: Vec<u8> = (0..9014u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut free: Vec<u32> = (10..20).collect();
        let mut segs: [Seg; MAX_TX_CHAIN] = [(0, 0, 0); MAX_TX_CHAIN];
        let n = write_chain(&umem, &mut free, 3, &data, None, &mut segs).expect("frames enough");
        assert_eq!(n, 3);
        assert_eq!(
            n,
            chain_len(DEFAULT_HEADROOM, data.len()),
            "as a handoff counts it"
        );
        assert_eq!(free.len(), 8, "two frames taken besides the first");
        assert_eq!(segs[0].0, 3, "the first piece is in the frame given");
        assert_eq!(segs[0].1, DEFAULT_HEADROOM);
        let mut back = Vec::new();
        for &(f, off, len) in &segs[..n] {
            assert!(off + len <= FRAME_SIZE);
            // Every descriptor leaves room for transmit metadata in front of it.
            assert!(off >= xsk::TX_METADATA_LEN);
            // SAFETY: the test owns the UMEM; no other slice of the frame is alive.
            #[allow(unsafe_code)]
            let b = unsafe { umem.frame(f) };
            back.extend_from_slice(&b[off..off + len]);
        }
        assert_eq!(back, data);
        // Too few free frames: nothing taken, nothing written.
        let mut few = vec![30];
        assert_eq!(
            write_chain(&umem, &mut few, 4, &data, None, &mut segs),
            None
        );
        assert_eq!(few, vec![30]);
        // Longer than a chain can carry.
        let mut many: Vec<u32> = (20..60).collect();
        let huge = vec![0u8; MAX_FRAME + 1];
        assert_eq!(
            write_chain(&umem, &mut many, 5, &huge, None, &mut segs),
            None
        );
        assert_eq!(many.len(), 40);
    }

    #[test]
    fn a_chain_carries_the_checksum_request_in_front_of_its_first_piece() {
        let umem = Umem::new(8).expect("UMEM");
        let data = vec![0x5au8; 5000];
        let mut free: Vec<u32> = (4..8).collect();
        let mut segs: [Seg; MAX_TX_CHAIN] = [(0, 0, 0); MAX_TX_CHAIN];
        let c = TxChecksum {
            start: 34,
            offset: 16,
        };
        let n = write_chain(&umem, &mut free, 1, &data, Some(c), &mut segs).expect("frames");
        assert_eq!(n, 2);
        // SAFETY: the test owns the UMEM; no other slice of the frame is alive.
        #[allow(unsafe_code)]
        let b = unsafe { umem.frame(1) };
        let m = &b[DEFAULT_HEADROOM - xsk::TX_METADATA_LEN..DEFAULT_HEADROOM];
        assert_eq!(
            u64::from_ne_bytes(m[..8].try_into().unwrap()),
            1 << 1,
            "CHECKSUM"
        );
        assert_eq!(u16::from_ne_bytes([m[8], m[9]]), 34);
        assert_eq!(u16::from_ne_bytes([m[10], m[11]]), 16);
        assert!(m[12..].iter().all(|&x| x == 0), "no launch time");
        assert_eq!(b[DEFAULT_HEADROOM], 0x5a, "data untouched");
        let mut small = [0u8; 30];
        assert!(
            !xsk::write_tx_checksum(&mut small, 20, 34, 16),
            "no room in front"
        );
        assert_eq!(small, [0u8; 30]);
    }

    #[test]
    fn a_vnet_frame_goes_with_the_header_its_checksum_and_segmentation_need() {
        let tcp = TxChecksum {
            start: 34,
            offset: 16,
        };
        assert_eq!(
            tx_header(None, VnetHeader::default()),
            Some(VnetHeader::default())
        );
        let h = tx_header(Some(tcp), VnetHeader::default()).expect("a header");
        assert_eq!((h.flags, h.csum_start, h.csum_offset), (NEEDS_CSUM, 34, 16));
        assert_eq!((h.gso_type, h.gso_size), (0, 0));
        let gso = VnetHeader {
            gso_type: 1,
            hdr_len: 66,
            gso_size: 1448,
            ..VnetHeader::default()
        };
        let h = tx_header(Some(tcp), gso).expect("a header");
        assert_eq!(
            h,
            VnetHeader {
                flags: NEEDS_CSUM,
                gso_type: 1,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16
            }
        );
        assert_eq!(
            tx_header(None, gso),
            None,
            "a finished GSO packet is cut first"
        );
    }

    #[test]
    fn a_vnet_port_leaves_the_kernel_what_the_tc_program_passes() {
        let node = std::net::Ipv4Addr::new(198, 18, 0, 1);
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        arp[20..22].copy_from_slice(&[0, 2]);
        assert!(kernel_frame(&arp, node, false), "an ARP reply");
        arp[20..22].copy_from_slice(&[0, 1]);
        assert!(
            !kernel_frame(&arp, node, false),
            "an ARP request is the switch's"
        );
        let mut ip = vec![0u8; 34];
        ip[12..14].copy_from_slice(&[0x08, 0x00]);
        ip[30..34].copy_from_slice(&node.octets());
        assert!(kernel_frame(&ip, node, false), "IPv4 for the node");
        assert!(
            !kernel_frame(&ip, node, true),
            "... unless the host port takes it"
        );
        ip[33] = 2;
        assert!(!kernel_frame(&ip, node, false), "IPv4 for another address");
        assert!(!kernel_frame(&ip[..20], node, false), "too short to tell");
        assert!(!kernel_frame(&[], node, false));
    }

    #[test]
    fn a_reports_drops_name_every_reason_and_sum_its_ports() {
        let port = |full, gone| PortCounters {
            tx_ring_full: full,
            kernel: KernelStats {
                rx_dropped: gone,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut r = Report {
            tx_no_socket: 1,
            handoff_full: 2,
            tx_no_frames: 11,
            ports: vec![port(3, 4), port(5, 6)],
            ..Default::default()
        };
        r.ports[1].rx_too_long = 7;
        r.gso_undeliverable = 12;
        r.ports[0].gso_refused = 13;
        r.ports[1].tx_failed = 14;
        r.ports[0].rx_kernel = 99;
        let d: std::collections::BTreeMap<_, _> = r.drops().into_iter().collect();
        assert_eq!(d["tx_no_socket"], 1);
        assert_eq!(d["handoff_full"], 2);
        assert_eq!(d["tx_ring_full"], 8);
        assert_eq!(d["kernel_rx_dropped"], 10);
        assert_eq!(d["rx_too_long"], 7);
        assert_eq!(d["tx_no_frames"], 11);
        assert_eq!(d["gso_undeliverable"], 12);
        assert_eq!(d["gso_refused"], 13);
        assert_eq!(d["tx_failed"], 14);
        assert!(
            !d.values().any(|&n| n == 99),
            "frames left to the kernel are no drop"
        );
        assert_eq!(d.len(), 12, "twelve reasons, none twice");
    }
}
