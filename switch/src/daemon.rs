//! `switchd run`: the daemon on real interfaces.
//!
//! Design: the control thread (the process's main thread) validates the state file, checks every
//! interface, opens the conntrack table (taking over the region an earlier switchd of this
//! node left, `shm` and `flowtable::conntrack::region`), loads the XDP program (over the maps
//! an earlier switchd pinned, `xdp`) and beats its heartbeat, binds one AF_XDP socket per
//! port (the uplink's owns the UMEM, the pods' share it), gives each port to a worker (which
//! fills its fill ring), puts the sockets in the XSKMAP, attaches the program with bpf_links
//! (or swaps it into the pinned links it finds) and only then starts the workers, each pinned
//! to its core. A failure before any of that (state, interfaces) touches nothing; after it,
//! what is pinned stays pinned, and the program fails open once the heartbeat is older than
//! the grace period. SIGTERM/SIGINT stop the daemon (exit 0) and leave the pinned program and
//! the table, marked clean once the workers have stopped, for the next start; with
//! `--no-persist` the links are dropped first, so interfaces go back to the kernel at once.
//! The control API (gRPC on a Unix socket, `--control-socket`) and
//! SIGHUP (which re-reads the state file and replaces the desired state with it) both go
//! through one [`control::engine::Engine`]: a valid change becomes the next snapshot
//! generation, handed to this thread, which binds new pods' ports (EBUSY retried) and gives
//! them to a worker, detaches (and unpins) and closes removed pods' ports and publishes; the
//! other ports are not touched. A change that cannot be applied is refused with the reason and
//! the daemon goes on with the state it has. Counters go to a JSON file (`--stats`) twice a
//! second and at exit, and to the API's `GetStats`/`WatchStats`.
//!
//! Thread-safety: the control thread owns the XDP program and the links, and applies every
//! change that binds, attaches or detaches a port or changes the XDP maps; a change that needs
//! none of that is published by the API's thread (every publish happens under the engine's
//! lock, so there is one publisher at a time);
//! the workers own sockets and frames (`worker`). They talk by a channel of commands per
//! worker, the shared port table of the `Fabric`, the snapshot cell (arc-swap) and one report
//! mutex per worker that the worker only `try_lock`s.

use crate::plane::{numbers, Commit, DaemonPlane, Shared};
use crate::replay::{self, ConntrackReport, NatReport};
use crate::worker::{Command, Fabric, PollMode, Port, PortIo, Report, Worker, MAX_PORTS};
use crate::xdp::{Hook, Pinned, Role, Xdp, XdpError, XdpStats};
use crate::xsk::{self, Mode, Socket, Umem, XskError};
use control::server::{Control, Dataplane as _};
use control::ApiError;
use flowtable::conntrack::{Conntrack, Timeouts};
use flowtable::pipeline::Pipeline;
use flowtable::snapshot::{Snapshot, SnapshotCell};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the daemon runs (from the command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// The state file.
    pub state: PathBuf,
    /// One worker per core listed, pinned to it (empty: one worker, not pinned).
    pub cores: Vec<usize>,
    /// Conntrack capacity.
    pub conntrack_capacity: usize,
    /// Conntrack timeouts.
    pub conntrack_timeouts: Timeouts,
    /// How the worker waits when idle.
    pub poll: PollMode,
    /// Pause after a round with only a few frames (`wakeup` mode).
    pub batch_wait: Duration,
    /// How long to keep looking for frames after the last work before sleeping (`wakeup`).
    pub idle_spin: Duration,
    /// UMEM frames (4 KiB each).
    pub frames: u32,
    /// Try zero-copy on the uplink (falls back to copy mode).
    pub zero_copy: bool,
    /// How pods' interfaces (and the host port) are served.
    pub pod_ports: PodPorts,
    /// Where to write counters (JSON), if anywhere.
    pub stats: Option<PathBuf>,
    /// The control API's Unix socket, if any.
    pub control_socket: Option<PathBuf>,
    /// The control API on TCP (TLS with client certificates), if wanted.
    pub control_tcp: Option<(std::net::SocketAddr, control::client::TlsFiles)>,
    /// Where state that outlives the process lives (see [`Persist`]); `None`: nowhere.
    pub persist: Option<Persist>,
    /// Start without taking over what an earlier switchd left.
    pub fresh: bool,
    /// Where to serve /metrics, /healthz and /livez over HTTP, if anywhere.
    pub metrics: Option<std::net::SocketAddr>,
    /// The health checks' bound on a worker's report age and generation lag.
    pub health_bound: Duration,
    /// This build's version (the metrics' `nodeswitch_build_info`).
    pub version: String,
}

/// How the switch serves a pod's interface (`--pod-ports`). The uplink is always AF_XDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum PodPorts {
    /// An AF_XDP socket on the shared UMEM, frames steered by the XDP program.
    #[default]
    Xdp,
    /// A packet socket with virtio-net headers, the node's stack kept off the interface by
    /// the tc program: no XDP program on the pod's veth, so the pod keeps TSO/GSO.
    Vnet,
}

/// Send and receive buffer of a vnet port's packet socket: room for a burst of 64 KB GSO
/// packets.
const VNET_BUFFER: i32 = 4 << 20;

/// Opens pod port `name`'s socket of kind `kind` (AF_XDP: shared with the owner socket).
fn bind_pod(
    kind: PodPorts,
    name: &str,
    ifindex: u32,
    owner_fd: std::os::fd::RawFd,
    sg: bool,
) -> Result<PortIo, DaemonError> {
    match kind {
        PodPorts::Xdp => Socket::bind_shared(owner_fd, ifindex, sg)
            .map(PortIo::Xsk)
            .map_err(|source| DaemonError::Socket {
                name: name.to_string(),
                source,
            }),
        PodPorts::Vnet => crate::vnet::VnetSocket::open(name, VNET_BUFFER)
            .map(PortIo::Vnet)
            .map_err(|source| DaemonError::VnetSocket {
                name: name.to_string(),
                source,
            }),
    }
}

/// Where the state a restart keeps lives: the conntrack region under `run_dir/NODE/`, the
/// XDP program's links and maps pinned under `bpf_dir/NODE/`.
#[derive(Debug, Clone)]
pub struct Persist {
    /// On tmpfs: `/run/nodeswitch` by default.
    pub run_dir: PathBuf,
    /// On bpffs: `/sys/fs/bpf/nodeswitch` by default.
    pub bpf_dir: PathBuf,
    /// How long the XDP program holds the switch's frames after the last heartbeat.
    pub grace: Duration,
}

impl Persist {
    /// The directory a node's `dir` state goes in (the name made safe for a path).
    pub fn node_dir(dir: &Path, node: &str) -> PathBuf {
        let safe: String = node
            .chars()
            .take(200)
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let safe = if safe.starts_with('.') {
            format!("_{safe}")
        } else {
            safe
        };
        dir.join(safe)
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The state file is unreadable or invalid.
    #[error(transparent)]
    State(#[from] replay::ReplayError),
    /// A port's interface does not exist.
    #[error("interface '{name}' ({what}) does not exist")]
    NoInterface {
        /// Interface name.
        name: String,
        /// Which port it is.
        what: String,
    },
    /// The state file's uplink MAC is not the interface's.
    #[error("node.uplink_mac is {state} but interface '{name}' has {real}: they must be equal")]
    UplinkMac {
        /// Interface.
        name: String,
        /// From the state file.
        state: String,
        /// From the interface.
        real: String,
    },
    /// A pod's port is the kernel's side of the host port (or another interface that must
    /// stay the kernel's).
    #[error("interface '{name}' ({what}) is the kernel's side of the host port '{host}': it cannot be a switch port")]
    KernelSide {
        /// Interface.
        name: String,
        /// Which port it was given as.
        what: String,
        /// The host port.
        host: String,
    },
    /// The XDP program could not be loaded, programmed or attached.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// A socket could not be set up.
    #[error("AF_XDP socket on '{name}': {source}")]
    Socket {
        /// Interface.
        name: String,
        /// What failed.
        #[source]
        source: XskError,
    },
    /// A vnet pod port's packet socket could not be set up.
    #[error("packet socket on '{name}' (--pod-ports vnet): {source}")]
    VnetSocket {
        /// Interface.
        name: String,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The conntrack region could not be opened.
    #[error(transparent)]
    Region(#[from] crate::shm::ShmError),
    /// Removing an earlier switchd's state (`--fresh`) failed.
    #[error("removing the pinned XDP state in {0}: {1}")]
    Cleanup(PathBuf, std::io::Error),
    /// The metrics and health endpoint could not be served.
    #[error("--metrics {0}: {1}")]
    Metrics(std::net::SocketAddr, std::io::Error),
    /// Too many ports.
    #[error("{0} ports: at most {MAX_PORTS} are supported")]
    TooManyPorts(usize),
    /// A zero-copy uplink's UMEM cannot be shared with a port that has no zero-copy.
    #[error(
        "AF_XDP socket on '{name}': {source}: the uplink runs zero-copy and its UMEM is shared \
         with every port, but this one has no zero-copy (veth never has); run without --zero-copy"
    )]
    ZeroCopyShared {
        /// Interface.
        name: String,
        /// What failed.
        #[source]
        source: XskError,
    },
    /// The worker stopped by itself.
    #[error("stopped, interfaces detached: {0}")]
    Worker(String),
    /// Signal handlers could not be installed.
    #[error("signal handlers: {0}")]
    Signals(std::io::Error),
    /// The worker thread could not be started.
    #[error("worker thread: {0}")]
    Thread(std::io::Error),
    /// The control API could not be served.
    #[error(transparent)]
    Control(#[from] control::client::TransportError),
    /// The masquerade ports overlap the kernel's ephemeral ports.
    #[error(
        "egress.port_range {range} overlaps the kernel's ephemeral ports {kernel} \
         (net.ipv4.ip_local_port_range): the node's own connections would collide with \
         masqueraded ones; move one of them"
    )]
    PortRange {
        /// The state's range.
        range: flowtable::state::PortRange,
        /// The kernel's, as `FIRST-LAST`.
        kernel: String,
    },
    /// The uplink's routes and neighbours cannot be read.
    #[error("reading the uplink's routes and neighbours over netlink: {0}")]
    NextHops(std::io::Error),
}

/// Where the kernel's ephemeral port range is.
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// Refuses a masquerade range that overlaps the kernel's ephemeral ports (when it can read
/// them; without the file there is no kernel range to collide with).
fn check_port_range(snap: &Snapshot) -> Result<(), DaemonError> {
    if !snap.egress.masquerade {
        return Ok(());
    }
    let Ok(text) = std::fs::read_to_string(LOCAL_PORT_RANGE) else {
        return Ok(());
    };
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(lo)), Some(Ok(hi))) = (it.next(), it.next()) else {
        return Ok(());
    };
    let r = snap.egress.ports;
    if r.first <= hi && r.last >= lo {
        return Err(DaemonError::PortRange {
            range: r,
            kernel: format!("{lo}-{hi}"),
        });
    }
    Ok(())
}

impl DaemonError {
    /// The same refusal as the control API reports it.
    fn api(&self) -> ApiError {
        let msg = self.to_string();
        match self {
            DaemonError::NoInterface { name, what } if what.starts_with("a new uplink") => {
                ApiError::Precondition(format!(
                    "node.uplink: changing the uplink to '{name}' needs a restart of switchd"
                ))
            }
            DaemonError::NoInterface { name, what } => ApiError::Invalid {
                field: match what.strip_prefix("port of pod ") {
                    Some(pod) => format!("pods[{pod}].port"),
                    None if what == "the host port" => "node.host_port".into(),
                    None if what == "the uplink" => "node.uplink".into(),
                    None => what.clone(),
                },
                reason: format!("interface '{name}' does not exist"),
            },
            DaemonError::KernelSide { name, what, host } => ApiError::Invalid {
                field: match what.strip_prefix("port of pod ") {
                    Some(pod) => format!("pods[{pod}].port"),
                    None => what.clone(),
                },
                reason: format!(
                    "interface '{name}' is the kernel's side of the host port '{host}': it \
                     cannot be a switch port"
                ),
            },
            DaemonError::UplinkMac { state, real, .. } => ApiError::Invalid {
                field: "node.uplink_mac".into(),
                reason: format!("is {state} but the interface has {real}"),
            },
            DaemonError::PortRange { kernel, .. } => ApiError::Invalid {
                field: "egress.port_range".into(),
                reason: format!(
                    "overlaps the kernel's ephemeral ports {kernel} \
                     (net.ipv4.ip_local_port_range)"
                ),
            },
            DaemonError::TooManyPorts(_) => ApiError::Invalid {
                field: "pods".into(),
                reason: msg,
            },
            _ => ApiError::Precondition(msg),
        }
    }
}

/// Counters file written by the daemon.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Node name.
    pub node: String,
    /// Generation the worker runs.
    pub generation: u64,
    /// Generation published by the control thread.
    pub published_generation: u64,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// Frames given to the pipeline.
    pub received: u64,
    /// Per action.
    pub actions: BTreeMap<&'static str, u64>,
    /// Per drop reason (the pipeline's).
    pub drops: BTreeMap<&'static str, u64>,
    /// Drops decided after the pipeline, by the worker.
    pub worker_drops: BTreeMap<&'static str, u64>,
    /// Partial TCP/UDP checksums (from senders' checksum offload) completed by the switch.
    pub checksums_completed: u64,
    /// Partial checksums left for the transmitting port to finish (pod to pod on this node,
    /// AF_XDP transmit metadata).
    pub checksums_offloaded: u64,
    /// Per port.
    pub ports: Vec<crate::worker::PortCounters>,
    /// Service NAT.
    pub nat: NatReport,
    /// Conntrack.
    pub conntrack: ConntrackReport,
    /// The XDP program's counters.
    pub xdp: XdpStats,
    /// Frames in the UMEM's free pool.
    pub free_frames: usize,
    /// Ports closed because their interface disappeared (remove the pod from the state).
    pub ports_gone: u64,
    /// Worker threads.
    pub workers: usize,
    /// Frames handed from one worker to another (received and sent by different workers).
    pub handed_off: u64,
    /// The control API's listeners ("unix", "tcp"): connections accepted, refused, evicted,
    /// timed out.
    pub control: BTreeMap<String, control::listen::ListenReport>,
}

struct Running {
    xdp: Xdp,
    links: HashMap<String, libbpf_rs::Link>,
    /// Port name -> (slot, ifindex).
    ports: HashMap<String, (u16, u32)>,
    owner_fd: std::os::fd::RawFd,
    /// Whether the owner socket (and so every port) is multi-buffer.
    sg: bool,
    /// How pod ports are served.
    pod_ports: PodPorts,
    cell: Arc<SnapshotCell>,
    /// One command channel per worker.
    cmds: Vec<Sender<Command>>,
    fabric: Arc<Fabric>,
    /// The control API's listeners' counters.
    listeners: Vec<(String, Arc<control::listen::ListenStats>)>,
}

/// Points the XDP program's pod -> node traffic at the host port while the current state has
/// one and its interface is attached and present; at the kernel otherwise.
fn update_host_ready(run: &mut Running) {
    let snap = run.cell.load();
    let ready = snap.host().is_some_and(|h| {
        let name = snap.port_name(h.port).unwrap_or_default();
        run.links.contains_key(name)
            && run
                .ports
                .get(name)
                .is_some_and(|(_, ifindex)| xsk::ifindex_exists(*ifindex))
    });
    if let Err(e) = run.xdp.set_host_ready(ready) {
        log(format!("host port: {e}"));
    }
}

/// The worker that serves slot `slot`: the uplink (slot 0) on worker 0, pods spread evenly.
fn worker_for(slot: u16, workers: usize) -> usize {
    usize::from(slot) % workers.max(1)
}

fn read_mac(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/address"))
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
}

fn check_interfaces(snap: &Snapshot) -> Result<Vec<(String, u32, Role)>, DaemonError> {
    let mut out = Vec::new();
    for (i, name) in snap.ports().iter().enumerate() {
        let what = if i == 0 {
            "the uplink".to_string()
        } else if snap.host().is_some_and(|h| h.port.0 as usize == i) {
            "the host port".to_string()
        } else {
            snap.pods()
                .iter()
                .find(|p| p.port.0 as usize == i)
                .map(|p| format!("port of pod {}", p.name))
                .unwrap_or_else(|| "a pod port".to_string())
        };
        let ifindex = xsk::ifindex(name).ok_or_else(|| DaemonError::NoInterface {
            name: name.clone(),
            what,
        })?;
        out.push((
            name.clone(),
            ifindex,
            if i == 0 { Role::Uplink } else { Role::Pod },
        ));
    }
    if out.len() > MAX_PORTS {
        return Err(DaemonError::TooManyPorts(out.len()));
    }
    // The host port's veth peer is the node kernel's way in: never a switch port.
    if let Some(h) = snap.host() {
        let host = snap.port_name(h.port).unwrap_or_default().to_string();
        let peer = std::fs::read_to_string(format!("/sys/class/net/{host}/iflink"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let own = out.iter().find(|(n, _, _)| *n == host).map(|(_, i, _)| *i);
        if let Some(peer) = peer.filter(|p| Some(*p) != own) {
            if let Some((i, (name, _, _))) = out
                .iter()
                .enumerate()
                .find(|(_, (_, ifindex, _))| *ifindex == peer)
            {
                let what = snap
                    .pods()
                    .iter()
                    .find(|p| p.port.0 as usize == i)
                    .map(|p| format!("port of pod {}", p.name))
                    .unwrap_or_else(|| "the uplink".to_string());
                return Err(DaemonError::KernelSide {
                    name: name.clone(),
                    what,
                    host,
                });
            }
        }
    }
    let uplink = &snap.ports()[0];
    let want = snap.node.uplink_mac.to_string().to_ascii_lowercase();
    if let Some(real) = read_mac(uplink) {
        if real != want {
            return Err(DaemonError::UplinkMac {
                name: uplink.clone(),
                state: want,
                real,
            });
        }
    }
    Ok(out)
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("switchd: {msg}");
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(cfg: &Config) -> Result<(), DaemonError> {
    // First of all: a SIGHUP or SIGTERM during startup must not kill the process by default.
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&term)).map_err(DaemonError::Signals)?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
        .map_err(DaemonError::Signals)?;

    let began = Instant::now();
    crate::alloc::configure();
    let state = replay::read_state(&cfg.state)?;
    // What other writers gave the switch before it stopped (the CNI plugin's pods, ...).
    let keep_path = cfg
        .persist
        .as_ref()
        .map(|p| Persist::node_dir(&p.run_dir, &state.node.name).join(control::keep::FILE));
    // (--fresh: not restored; the file is rewritten once this switchd holds the node.)
    let state = match &keep_path {
        Some(path) if !cfg.fresh => restore_kept(state, path),
        _ => state,
    };
    let (engine, snap) = control::engine::Engine::new(state).map_err(|e| match e {
        ApiError::Invalid { field, reason } => {
            DaemonError::State(replay::ReplayError::StateInvalid {
                path: cfg.state.clone(),
                source: flowtable::snapshot::StateError { field, reason },
            })
        }
        other => DaemonError::Worker(other.to_string()),
    })?;
    let ifaces = check_interfaces(&snap)?;
    check_port_range(&snap)?;
    // The uplink's next hops, for what leaves the cluster (kept current by its own thread).
    let hops = flowtable::egress::NextHopsCell::new();
    let _hop_watcher =
        crate::nexthop::start(ifaces[0].1, hops.clone()).map_err(DaemonError::NextHops)?;

    // What an earlier switchd left: the conntrack region first (its lock says no other
    // switchd serves this node), then the pinned XDP state.
    let node = snap.node.name.clone();
    let dirs = cfg.persist.as_ref().map(|p| {
        (
            Persist::node_dir(&p.run_dir, &node),
            Persist::node_dir(&p.bpf_dir, &node),
        )
    });
    if let (true, Some((run_dir, bpf_dir))) = (cfg.fresh, &dirs) {
        crate::shm::remove(run_dir)?;
        crate::xdp::cleanup(bpf_dir).map_err(|e| DaemonError::Cleanup(bpf_dir.clone(), e))?;
        log("--fresh: removed the state an earlier switchd left");
    }
    let ct = match &dirs {
        Some((run_dir, _)) => {
            let (mem, resized) = crate::shm::open(run_dir, cfg.conntrack_capacity)?;
            if let Some(why) = resized {
                log(format!("conntrack region not taken over: {why}"));
            }
            let id = crate::shm::identity(&node);
            let (ct, opened) = Conntrack::open(mem, cfg.conntrack_timeouts, &id);
            log(format!(
                "conntrack in {}: {opened}",
                run_dir.join(crate::shm::REGION_FILE).display()
            ));
            ct
        }
        None => Conntrack::new(cfg.conntrack_capacity, cfg.conntrack_timeouts),
    };
    let ct = Arc::new(ct);
    ct.set_now(crate::ctclock::now());

    let (mut xdp, pinned) = Xdp::load(dirs.as_ref().map(|(_, b)| b.as_path()))?;
    match (&pinned, &dirs) {
        (Pinned::Off, _) | (_, None) => {}
        (Pinned::Fresh, Some((_, b))) => log(format!("XDP maps pinned in {}", b.display())),
        (Pinned::Reused, Some((_, b))) => {
            log(format!("took over the XDP maps pinned in {}", b.display()))
        }
        (Pinned::Replaced(why), Some((_, b))) => log(format!(
            "XDP maps pinned in {} are another build's ({why}): replaced",
            b.display()
        )),
    }
    // Without persistence the links go with the process, so the program must never fail
    // open while it lives: a grace period of (practically) forever.
    let grace = cfg.persist.as_ref().map_or(Duration::MAX, |p| p.grace);
    let heartbeat = xdp.heartbeat(grace)?;
    xdp.configure(&snap)?;
    let umem = Umem::new(cfg.frames).map_err(|source| DaemonError::Socket {
        name: ifaces[0].0.clone(),
        source,
    })?;
    let mut socks = Vec::new();
    let uplink = Socket::bind_owner(&umem, ifaces[0].1, cfg.zero_copy).map_err(|source| {
        DaemonError::Socket {
            name: ifaces[0].0.clone(),
            source,
        }
    })?;
    let (owner_fd, sg, zc) = (uplink.fd(), uplink.sg, uplink.mode == Mode::ZeroCopy);
    socks.push(Port {
        name: ifaces[0].0.clone(),
        ifindex: ifaces[0].1,
        slot: 0,
        epoch: 0,
        io: PortIo::Xsk(uplink),
    });
    for (slot, (name, ifindex, _)) in ifaces.iter().enumerate().skip(1) {
        let io = match bind_pod(cfg.pod_ports, name, *ifindex, owner_fd, sg) {
            Err(DaemonError::Socket { name, source }) if zc => {
                return Err(DaemonError::ZeroCopyShared { name, source })
            }
            r => r?,
        };
        socks.push(Port {
            name: name.clone(),
            ifindex: *ifindex,
            slot: slot as u16,
            epoch: 0,
            io,
        });
    }

    let cell = Arc::new(SnapshotCell::new(snap));
    let stop = Arc::new(AtomicBool::new(false));
    let n_workers = cfg.cores.len().max(1);
    if n_workers > 64 {
        return Err(DaemonError::Worker(format!(
            "{n_workers} cores given: at most 64 workers are supported"
        )));
    }
    let fabric = Fabric::new(umem, n_workers).map_err(DaemonError::Thread)?;
    let mut workers = Vec::new();
    let mut cmds = Vec::new();
    let mut reports = Vec::new();
    for id in 0..n_workers {
        let (tx, rx) = channel();
        let report = Arc::new(Mutex::new(Report::default()));
        let mut pipeline = Pipeline::with_conntrack(Arc::clone(&ct));
        pipeline.set_next_hops(hops.clone());
        let mut w = Worker::new(
            Arc::clone(&fabric),
            id as u16,
            pipeline,
            cell.reader(),
            rx,
            Arc::clone(&stop),
            Arc::clone(&report),
            cfg.poll,
        );
        w.batch_wait = cfg.batch_wait;
        w.idle_spin = cfg.idle_spin;
        workers.push(w);
        cmds.push(tx);
        reports.push(report);
    }
    let mut bound = Vec::new();
    let mut pending: HashMap<String, Port> = HashMap::new();
    for (p, (_, _, role)) in socks.into_iter().zip(&ifaces) {
        let w = worker_for(p.slot, n_workers);
        bound.push((
            p.name.clone(),
            p.slot,
            p.ifindex,
            p.io.xsk().map(|s| s.fd()),
            p.io.mode_name(),
            *role,
            w,
        ));
        let mut p = p;
        p.epoch = fabric.set_port(&p.name, p.slot, w as u16);
        pending.insert(p.name.clone(), p);
    }
    // Ports are added once every worker knows every port's slot.
    let mut links = HashMap::new();
    let mut ports = HashMap::new();
    let mut pending_ports = pending;
    for (name, _, _, _, _, _, w) in &bound {
        if let Some(p) = pending_ports.remove(name) {
            workers[*w].add(p);
        }
    }
    // Every fill ring filled (shares computed over all ports): a port can receive from the
    // moment it is attached.
    for w in workers.iter_mut() {
        w.prefill();
    }
    for (name, slot, ifindex, fd, mode, role, w) in &bound {
        // (A vnet port has no AF_XDP socket: the tc program serves it.)
        let hook = match fd {
            Some(fd) => {
                xdp.set_socket(u32::from(*slot), *fd)?;
                Hook::Xdp
            }
            None => {
                xdp.remove_socket(u32::from(*slot));
                Hook::Tc
            }
        };
        xdp.set_port(*ifindex, u32::from(*slot), *role)?;
        let (link, took_over) = xdp.attach(*ifindex, hook)?;
        links.insert(name.clone(), link);
        ports.insert(name.clone(), (*slot, *ifindex));
        log(format!(
            "port {name} (ifindex {ifindex}) {} mode, {}, worker {w}{}",
            mode,
            match role {
                Role::Uplink => "uplink",
                Role::Pod => "pod",
            },
            if took_over { ", link taken over" } else { "" }
        ));
    }
    let ifindexes: Vec<u32> = ifaces.iter().map(|(_, i, _)| *i).collect();
    xdp.forget_others(&ifindexes);

    let housekeeping = crate::ctclock::spawn(Arc::clone(&ct), Arc::clone(&stop), heartbeat)
        .map_err(DaemonError::Thread)?;
    let mut handles = Vec::new();
    for (id, worker) in workers.into_iter().enumerate() {
        let core = cfg.cores.get(id).copied();
        let h = std::thread::Builder::new()
            .name(format!("switchd-worker{id}"))
            .spawn(move || {
                if let Some(c) = core {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: c }) {
                        log(format!(
                            "could not pin worker {id} to core {c}; running unpinned"
                        ));
                    }
                }
                worker.run()
            })
            .map_err(DaemonError::Thread)?;
        handles.push(h);
    }
    log(format!(
        "node {} forwarding: {} ports, {} worker(s) on {}, {:?} polling, conntrack {} entries, \
         {} (started in {} ms)",
        cell.load().node.name,
        ports.len(),
        n_workers,
        if cfg.cores.is_empty() {
            "any core".to_string()
        } else {
            format!("cores {:?}", cfg.cores)
        },
        cfg.poll,
        cfg.conntrack_capacity,
        if sg {
            "multi-buffer frames (up to 64 KiB)"
        } else {
            "single-buffer frames only (the kernel refused XDP_USE_SG: frames over 3840 \
             bytes, an MTU over 3826, are dropped as kernel_rx_dropped)"
        },
        began.elapsed().as_millis()
    ));

    let start = Instant::now();
    let (commit_tx, commits) = channel::<Commit>();
    let shared = Arc::new(Mutex::new(Shared {
        xdp: numbers(&xdp.stats()),
    }));
    // The file now says what this switchd has (what was left out is gone from it).
    let keep = keep_path.map(|path| {
        let now = control::keep::Kept::of(&engine);
        let keep = control::keep::Keep::new(path);
        if let Err(e) = keep.write(&now) {
            log(format!(
                "the objects a restart keeps could not be written: {e}"
            ));
        }
        keep
    });
    let ctl = Control::kept(
        engine,
        DaemonPlane {
            commits: Mutex::new(commit_tx),
            cell: Arc::clone(&cell),
            ct: Arc::clone(&ct),
            fabric: Arc::clone(&fabric),
            reports: reports.clone(),
            shared: Arc::clone(&shared),
            start,
            hops: hops.clone(),
        },
        keep,
    );
    let mut run = Running {
        xdp,
        links,
        ports,
        owner_fd,
        sg,
        pod_ports: cfg.pod_ports,
        cell,
        cmds,
        fabric,
        listeners: Vec::new(),
    };
    update_host_ready(&mut run);
    let server = match &cfg.control_socket {
        Some(path) => {
            let h = control::client::spawn_unix(Arc::clone(&ctl), path)?;
            run.listeners.push(("unix".into(), Arc::clone(h.stats())));
            log(format!("control API on {} (root only)", path.display()));
            Some(h)
        }
        None => None,
    };
    let tcp_server = match &cfg.control_tcp {
        Some((addr, tls)) => {
            let h = control::client::spawn_tcp(Arc::clone(&ctl), *addr, tls)?;
            run.listeners.push(("tcp".into(), Arc::clone(h.stats())));
            log(format!(
                "control API on tcp {} (TLS, client certificates from {})",
                h.addr().map(|a| a.to_string()).unwrap_or_default(),
                tls.ca.display()
            ));
            Some(h)
        }
        None => None,
    };
    let _http = match cfg.metrics {
        Some(addr) => {
            let stats: Arc<dyn Fn() -> control::pb::Stats + Send + Sync> = {
                let ctl = Arc::clone(&ctl);
                Arc::new(move || ctl.plane().stats())
            };
            let exporter = control::metrics::Exporter::new(
                &cfg.version,
                Box::new({
                    let stats = Arc::clone(&stats);
                    move || stats()
                }),
                ctl.writes(),
            );
            let handler = crate::health::handler(
                stats,
                Arc::new(crate::health::Health::new(cfg.health_bound)),
                Arc::new(exporter),
            );
            let mut pool = control::http::HttpPool::new("switchd-metrics")
                .map_err(|e| DaemonError::Metrics(addr, e))?;
            let bound = pool
                .open(addr, handler)
                .map_err(|e| DaemonError::Metrics(addr, e))?;
            log(format!(
                "metrics on http://{bound}/metrics, health checks on /healthz and /livez"
            ));
            Some(pool)
        }
        None => None,
    };
    // SIGHUP: through the control plane like any other change (the desired state becomes the
    // file's), on one thread of its own (this thread applies what it plans), one reload at a
    // time in the order the signals came, signals that arrive meanwhile folded into one.
    let (reload_tx, reloads) = channel::<()>();
    {
        let ctl = Arc::clone(&ctl);
        let path = cfg.state.clone();
        std::thread::Builder::new()
            .name("switchd-reload".into())
            .spawn(move || {
                while reloads.recv().is_ok() {
                    while reloads.try_recv().is_ok() {}
                    reload(&ctl, &path);
                }
            })
            .map_err(DaemonError::Thread)?;
    }
    let mut last_stats = Instant::now();
    // The generation seen at the last tick, and for how many ticks it has stood: memory is
    // trimmed once a change has stood one tick (every worker has let the old snapshot go),
    // again after `TRIM_AGAIN_TICKS` (the API's planning threads have ended by then), and
    // every `TRIM_EVERY_TICKS` ticks whatever happened.
    let (mut seen_gen, mut stood, mut ticks) = (run.cell.load().generation, u32::MAX, 0u32);
    let mut failure = None;
    let mut health_checks = crate::healthcheck::HealthChecks::default();
    let mut checked_gen = None;
    while !term.load(Ordering::Relaxed) {
        let live = run.cell.load();
        if checked_gen != Some(live.generation) {
            checked_gen = Some(live.generation);
            for msg in health_checks.sync(live.node.ip, &live.services.health_checks()) {
                log(msg);
            }
        }
        drop(live);
        match commits.recv_timeout(Duration::from_millis(20)) {
            Ok(c) => {
                let r = apply_snapshot(&mut run, c.next);
                match &r {
                    Ok((_, msg)) if msg.is_empty() => {}
                    Ok((_, msg)) => log(msg),
                    Err(e) => log(format!("change refused, keeping the current state: {e}")),
                }
                let _ = c.reply.send(r.map(|(g, _)| g).map_err(|e| e.api()));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(20))
            }
        }
        if handles.iter().any(|h| h.is_finished()) {
            failure = Some("a worker stopped".to_string());
            break;
        }
        if hup.swap(false, Ordering::Relaxed) {
            let _ = reload_tx.send(());
        }
        if last_stats.elapsed() >= Duration::from_millis(500) {
            let gen = run.cell.load().generation;
            stood = if gen == seen_gen {
                stood.saturating_add(1)
            } else {
                0
            };
            ticks = ticks.wrapping_add(1);
            if stood == 1 || stood == TRIM_AGAIN_TICKS || ticks % TRIM_EVERY_TICKS == 0 {
                crate::alloc::trim();
                for h in server.iter().chain(tcp_server.iter()) {
                    h.on_serving_thread(crate::alloc::trim);
                }
            }
            seen_gen = gen;
            update_host_ready(&mut run);
            if let Ok(mut s) = shared.lock() {
                s.xdp = numbers(&run.xdp.stats());
            }
            if let Some(path) = &cfg.stats {
                write_stats(path, &run, &reports, &ct, start);
            }
            last_stats = Instant::now();
        }
    }
    let pinned = cfg.persist.is_some();
    if pinned {
        // The links stay (pinned): the program holds the switch's frames for the next
        // switchd, for the grace period after the last heartbeat (beaten once more below).
        log(
            "stopping: the XDP program and conntrack stay for the next switchd \
             (switchd cleanup removes them)",
        );
    } else {
        log("stopping: detaching the XDP program");
        // Interfaces first: from here on the kernel gets every frame.
        run.links.clear();
    }
    // Changes still queued are refused (their callers see UNAVAILABLE).
    drop(reload_tx);
    drop(commits);
    drop(server);
    drop(tcp_server);
    stop.store(true, Ordering::Relaxed);
    let _ = housekeeping.join();
    let mut why = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => why = Some(e),
            Err(_) => why = Some("a worker panicked".to_string()),
        }
    }
    if let Some(path) = &cfg.stats {
        write_stats(path, &run, &reports, &ct, start);
    }
    // No writer is left: the next owner finds the table clean.
    ct.close();
    drop(run);
    if let Some(f) = failure {
        return Err(DaemonError::Worker(why.unwrap_or(f)));
    }
    log("stopped");
    Ok(())
}

/// The state file's `state` with the objects other writers gave an earlier switchd of this
/// node (`control::keep`, kept in `path`). A file that cannot be read is moved aside
/// (`.bad`) and the switch starts with the state file's objects only.
fn restore_kept(state: flowtable::state::StateFile, path: &Path) -> flowtable::state::StateFile {
    use control::keep::{restore, Kept};
    match Kept::load(path) {
        Ok(None) => state,
        Ok(Some(kept)) => {
            let (state, notes) = restore(state, kept.clone(), |p| xsk::ifindex(p).is_some());
            let total: usize = kept
                .owners
                .values()
                .map(|o| o.pods.len() + o.nodes.len() + o.services.len())
                .sum();
            let restored = state.pods.iter().filter(|p| !p.owner.is_empty()).count()
                + state.nodes.iter().filter(|n| !n.owner.is_empty()).count()
                + state
                    .services
                    .iter()
                    .filter(|s| !s.owner.is_empty())
                    .count();
            log(format!(
                "restored {restored} of {total} objects kept by {} in {}",
                kept.owners.keys().cloned().collect::<Vec<_>>().join(", "),
                path.display(),
            ));
            for n in notes {
                log(format!("  left out {n}"));
            }
            state
        }
        Err(e) => {
            let bad = path.with_extension("json.bad");
            let journal = control::keep::journal_path(path);
            let moved = std::fs::rename(path, &bad).is_ok();
            let _ = std::fs::rename(&journal, journal.with_extension("journal.bad"));
            log(format!(
                "the objects an earlier switchd kept are not restored: {e}{}",
                if moved {
                    format!(" (moved to {})", bad.display())
                } else {
                    String::new()
                }
            ));
            state
        }
    }
}

/// Stats ticks (500 ms) after a change when memory is trimmed a second time: past the API's
/// blocking threads' keep-alive (1 s), so what they kept is handed back too.
const TRIM_AGAIN_TICKS: u32 = 6;

/// Stats ticks between trims whatever happened (20: every 10 s), for what calls that change
/// no generation left behind (a refused or dry-run Replace, a large GetState).
const TRIM_EVERY_TICKS: u32 = 20;

/// Reloads the state file through the control plane (on the reload thread), then hands back
/// what planning it left free on this thread.
fn reload(ctl: &Control<DaemonPlane>, path: &Path) {
    reload_once(ctl, path);
    crate::alloc::trim();
}

/// Re-reads the state file and makes it the desired state; logs what happened.
fn reload_once(ctl: &Control<DaemonPlane>, path: &Path) {
    let r = replay::read_state(path)
        .map_err(|e| e.to_string())
        .and_then(|s| ctl.replace(s, false).map_err(|e| e.to_string()));
    match r {
        Ok(a) if !a.changed => log(format!(
            "reloaded {}: no changes, generation {}",
            path.display(),
            a.generation
        )),
        Ok(a) => log(format!(
            "reloaded {}: generation {} programmed, {}",
            path.display(),
            a.generation,
            a.changes
                .iter()
                .map(|c| format!("{} {} {}", c.kind, c.name, c.action))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Err(e) => log(format!("reload refused, keeping the current state: {e}")),
    }
}

/// Makes `next` live: binds and attaches new pods' ports, detaches and closes removed ones,
/// publishes; returns the generation and what changed. On error nothing has changed.
fn apply_snapshot(run: &mut Running, next: Snapshot) -> Result<(u64, String), DaemonError> {
    let cur = run.cell.load();
    // What needs a restart, or must match the interface, is refused before anything else.
    check_port_range(&next)?;
    if next.ports()[0] != cur.ports()[0] {
        return Err(DaemonError::NoInterface {
            name: next.ports()[0].clone(),
            what: "a new uplink: changing the uplink needs a restart; that uplink".into(),
        });
    }
    if next.node.uplink_mac != cur.node.uplink_mac {
        let want = next.node.uplink_mac.to_string().to_ascii_lowercase();
        if let Some(real) = read_mac(&next.ports()[0]).filter(|r| *r != want) {
            return Err(DaemonError::UplinkMac {
                name: next.ports()[0].clone(),
                state: want,
                real,
            });
        }
    }
    if next.ports() == cur.ports() && next.node.ip == cur.node.ip {
        // The same ports (a Service or node change, the common case): nothing to bind or
        // detach; an interface that went away meanwhile is the workers' to notice.
        if let Err(e) = run.xdp.configure(&next) {
            let _ = run.xdp.configure(&cur);
            return Err(e.into());
        }
        let generation = run.cell.publish(next);
        run.fabric.wake_all();
        return Ok((generation, String::new()));
    }
    let ifaces = check_interfaces(&next)?;
    // Ports that went away, or whose interface was re-created (new ifindex).
    let removed: Vec<(String, u16, u32)> = run
        .ports
        .iter()
        .filter(|(name, (_, ifindex))| {
            !ifaces
                .iter()
                .any(|(n, i, _)| n == *name && (i == ifindex || n == &next.ports()[0]))
        })
        .map(|(n, (s, i))| (n.clone(), *s, *i))
        .collect();
    let added: Vec<(String, u32)> = ifaces
        .iter()
        .skip(1)
        .filter(|(n, i, _)| run.ports.get(n).map(|(_, have)| have != i).unwrap_or(true))
        .map(|(n, i, _)| (n.clone(), *i))
        .collect();
    if run.ports.len() - removed.len() + added.len() > MAX_PORTS {
        return Err(DaemonError::TooManyPorts(ifaces.len()));
    }
    // Bind the new sockets first: a failure here changes nothing.
    let mut used: Vec<u16> = run
        .ports
        .iter()
        .filter(|(n, _)| !removed.iter().any(|r| &r.0 == *n))
        .map(|(_, (s, _))| *s)
        .collect();
    let mut new_ports = Vec::new();
    for (name, ifindex) in &added {
        let slot = (0..MAX_PORTS as u16)
            .find(|s| !used.contains(s) && !removed.iter().any(|r| r.1 == *s))
            .ok_or(DaemonError::TooManyPorts(MAX_PORTS + 1))?;
        used.push(slot);
        let io = bind_pod(run.pod_ports, name, *ifindex, run.owner_fd, run.sg)?;
        new_ports.push(Port {
            name: name.clone(),
            ifindex: *ifindex,
            slot,
            epoch: 0,
            io,
        });
    }
    // Everything that can fail comes first; on failure it is undone and nothing has changed.
    if let Err(e) = run.xdp.configure(&next) {
        let _ = run.xdp.configure(&cur);
        return Err(e.into());
    }
    let mut done: Vec<(String, u16, u32)> = Vec::new();
    let mut new_links = Vec::new();
    let mut failed = None;
    for mut p in new_ports {
        let (name, slot, ifindex) = (p.name.clone(), p.slot, p.ifindex);
        let fd = p.io.xsk().map(|s| s.fd());
        let w = worker_for(slot, run.cmds.len());
        p.epoch = run.fabric.set_port(&name, slot, w as u16);
        // The worker fills the port's fill ring before the program can send it anything.
        let (ack, acked) = std::sync::mpsc::sync_channel(1);
        let _ = run.cmds[w].send(Command::Add(Box::new(p), Some(ack)));
        let _ = acked.recv_timeout(Duration::from_millis(500));
        done.push((name.clone(), slot, ifindex));
        let step = match fd {
            Some(fd) => run.xdp.set_socket(u32::from(slot), fd).map(|()| Hook::Xdp),
            None => {
                run.xdp.remove_socket(u32::from(slot));
                Ok(Hook::Tc)
            }
        }
        .and_then(|hook| {
            run.xdp.set_port(ifindex, u32::from(slot), Role::Pod)?;
            run.xdp.attach(ifindex, hook)
        });
        match step {
            Ok((link, _)) => new_links.push((name.clone(), link)),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    if let Some(e) = failed {
        for (_, link) in new_links {
            run.xdp.detach(link);
        }
        for (name, slot, ifindex) in done {
            run.xdp.remove_port(ifindex);
            run.xdp.remove_socket(u32::from(slot));
            run.fabric.remove_port_if(&name, slot);
            // A re-created interface's old port is still live: point the table back at it.
            if let Some((_, old_slot, _)) = removed.iter().find(|r| r.0 == name) {
                let w = worker_for(*old_slot, run.cmds.len());
                run.fabric.set_port(&name, *old_slot, w as u16);
            }
            let _ = run.cmds[worker_for(slot, run.cmds.len())].send(Command::Remove(slot));
        }
        let _ = run.xdp.configure(&cur);
        return Err(e.into());
    }
    // Removed ports: back to the kernel, then the worker closes the socket. (A re-created
    // interface keeps its name: only the old slot and ifindex go.)
    for (name, slot, ifindex) in &removed {
        run.xdp.remove_port(*ifindex);
        run.xdp.remove_socket(u32::from(*slot));
        if !done.iter().any(|d| &d.0 == name) {
            if let Some(link) = run.links.remove(name) {
                run.xdp.detach(link);
            }
            run.ports.remove(name);
        }
        run.fabric.remove_port_if(name, *slot);
        let _ = run.cmds[worker_for(*slot, run.cmds.len())].send(Command::Remove(*slot));
    }
    for (name, link) in new_links {
        if let Some(old) = run.links.insert(name, link) {
            run.xdp.detach(old); // a re-created interface's link (defunct)
        }
    }
    let mut names = Vec::new();
    for (name, slot, ifindex) in done {
        run.ports.insert(name.clone(), (slot, ifindex));
        names.push(name);
    }
    let generation = run.cell.publish(next);
    run.fabric.wake_all();
    update_host_ready(run);
    Ok((
        generation,
        format!(
            "generation {generation} published, ports added [{}], removed [{}]",
            names.join(", "),
            removed
                .iter()
                .map(|r| r.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

fn write_stats(
    path: &Path,
    run: &Running,
    reports: &[Arc<Mutex<Report>>],
    ct: &Conntrack,
    start: Instant,
) {
    // The workers' reports, merged.
    let mut r = Report::default();
    for (i, rep) in reports.iter().enumerate() {
        let Ok(w) = rep.lock() else { return };
        r.generation = if i == 0 {
            w.generation
        } else {
            r.generation.min(w.generation)
        };
        r.counters.merge(&w.counters);
        r.ports.extend(w.ports.iter().cloned());
        r.tx_no_socket += w.tx_no_socket;
        r.kernel_undeliverable += w.kernel_undeliverable;
        r.free_frames += w.free_frames;
        r.ports_gone += w.ports_gone;
        r.handoff_full += w.handoff_full;
        r.handed_off += w.handed_off;
    }
    let c = &r.counters;
    let snap = run.cell.load();
    let mut ports = r.ports.clone();
    ports.sort_by_key(|p| p.name.clone());
    let stats = Stats {
        node: snap.node.name.clone(),
        generation: r.generation,
        published_generation: snap.generation,
        uptime_secs: start.elapsed().as_secs_f64(),
        received: c.received,
        actions: replay::action_counts(c),
        drops: replay::drop_counts(c),
        worker_drops: BTreeMap::from(r.drops()),
        checksums_completed: c.checksums_completed,
        checksums_offloaded: c.checksums_offloaded,
        ports,
        nat: NatReport::of(c),
        conntrack: ConntrackReport::of(ct),
        xdp: run.xdp.stats(),
        control: run
            .listeners
            .iter()
            .map(|(k, v)| (k.clone(), v.report()))
            .collect(),
        free_frames: r.free_frames,
        ports_gone: r.ports_gone,
        workers: reports.len(),
        handed_off: r.handed_off,
    };
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_string_pretty(&stats).unwrap_or_default() + "\n";
    if std::fs::write(&tmp, json).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
