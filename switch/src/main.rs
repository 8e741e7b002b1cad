//! `switchd`: nodeswitch's daemon. `run` forwards on real interfaces through AF_XDP,
//! `replay` runs captures through the same pipeline, `check` validates a state file.

/// switchd's heap (see `switch::alloc`).
#[global_allocator]
static ALLOCATOR: switch::alloc::Allocator = switch::alloc::Allocator;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use switch::replay::{self, Input};

/// The version `--version` prints and the daemon logs: the crate's, and which build.
const VERSION: &str = if cfg!(debug_assertions) {
    concat!(env!("CARGO_PKG_VERSION"), " (debug build)")
} else {
    env!("CARGO_PKG_VERSION")
};

#[derive(Parser)]
#[command(
    name = "switchd",
    version = VERSION,
    about = "nodeswitch: a userspace AF_XDP packet switch for Kubernetes nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the state that outlives switchd lives.
#[derive(clap::Args)]
struct Dirs {
    /// The conntrack table's directory (tmpfs); one subdirectory per node.
    #[arg(long, value_name = "DIR", default_value = "/run/nodeswitch")]
    run_dir: PathBuf,
    /// Where the XDP program's links and maps are pinned (bpffs, mounted on /sys/fs/bpf if
    /// nothing is); one subdirectory per node.
    #[arg(long, value_name = "DIR", default_value = "/sys/fs/bpf/nodeswitch")]
    bpf_dir: PathBuf,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Cmd {
    /// Forward on real interfaces: AF_XDP sockets on the uplink and every pod's port.
    ///
    /// Needs root (or CAP_NET_ADMIN, CAP_BPF and CAP_NET_RAW). Restarts keep every
    /// connection: the conntrack table lives in --run-dir, the XDP program stays attached
    /// (pinned in --bpf-dir) and holds the switch's frames until the next switchd takes
    /// over, for at most --grace seconds; `run` takes over what it finds there. SIGTERM or
    /// SIGINT: stop (exit 0), leaving that state for the next start (`switchd cleanup`
    /// removes it). SIGHUP: re-read the state file and make it the desired state (pods
    /// added or removed without a restart). `switchctl` drives it through the control socket.
    Run {
        /// The state file (TOML; see docs/state-file.md): node, uplink, pods, nodes, Services.
        #[arg(long)]
        state: PathBuf,
        /// One worker thread per core listed (comma-separated), each pinned to its core and
        /// serving its share of the ports; default: one worker, not pinned.
        #[arg(long, alias = "core", value_delimiter = ',', value_name = "CORES")]
        cores: Vec<usize>,
        /// Conntrack capacity (connections; memory is fixed at 96 bytes each).
        #[arg(long, default_value_t = 262_144, value_parser = clap::value_parser!(u64).range(1..=16_777_214))]
        conntrack_capacity: u64,
        /// A conntrack timeout, NAME=SECONDS (repeatable): tcp_syn_sent (120), tcp_syn_recv
        /// (60), tcp_established (86400), tcp_fin_wait (120), tcp_close_wait (60),
        /// tcp_last_ack (30), tcp_time_wait (120), tcp_close (10), tcp_unacknowledged (300),
        /// udp_unreplied (30), udp_assured (120).
        #[arg(long, value_name = "NAME=SECONDS", value_parser = parse_ct_timeout)]
        ct_timeout: Vec<(String, u32)>,
        /// How the worker waits when idle: `wakeup` sleeps in poll(2) (leaves a shared core
        /// to the kernel's receive work), `busy` spins (lowest latency on a dedicated core).
        #[arg(long, value_enum, default_value = "wakeup")]
        poll: switch::worker::PollMode,
        /// In `wakeup` mode, microseconds to wait for a batch to build up after a round that
        /// found only a few frames (0: go straight on). Trades latency for CPU per packet.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1000))]
        batch_wait_us: u64,
        /// In `wakeup` mode, microseconds to keep looking for frames (yielding the core to
        /// anything else runnable) after the last round with work, before sleeping in poll(2):
        /// a request's reply that comes back within it skips the wakeup. Spin is CPU; 0 sleeps
        /// as soon as a few rounds find nothing.
        #[arg(long, default_value_t = switch::worker::DEFAULT_IDLE_SPIN.as_micros() as u64, value_parser = clap::value_parser!(u64).range(0..=10_000))]
        idle_spin_us: u64,
        /// UMEM frames of 4 KiB shared by all ports.
        #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
        frames: u32,
        /// Try zero-copy mode (falls back to copy mode where the driver has none, as veth).
        #[arg(long)]
        zero_copy: bool,
        /// How pods' interfaces are served: `xdp` (AF_XDP socket and XDP program) or `vnet`
        /// (packet socket with virtio-net headers and a tc program: no XDP on the pod's veth,
        /// so the pod keeps TSO/GSO and 64 KB packets move whole pod to pod; see README).
        #[arg(long, value_enum, default_value = "xdp")]
        pod_ports: switch::daemon::PodPorts,
        /// Write counters (JSON) to this file twice a second and at exit.
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
        /// The control API's Unix socket (mode 0600: root only); two switchds on one host
        /// need two sockets.
        #[arg(long, value_name = "PATH", default_value = control::client::DEFAULT_SOCKET)]
        control_socket: PathBuf,
        /// Serve Prometheus metrics (/metrics) and health checks (/healthz, /livez) over HTTP
        /// at this address (host:port), e.g. 127.0.0.1:9962. No TLS, no authentication:
        /// bind it where only scrapers and probes reach.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// /healthz answers 503 once a worker has not reported for this many seconds, or has
        /// run an older snapshot than the published one for as long.
        #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        health_bound: u64,
        /// Serve no control API (SIGHUP reloads of the state file still work).
        #[arg(long, conflicts_with = "control_socket")]
        no_control: bool,
        /// Also serve the control API on TCP at this address (host:port), with TLS only:
        /// clients must present a certificate signed by --tls-client-ca.
        #[arg(long, value_name = "ADDR", requires_all = ["tls_cert", "tls_key", "tls_client_ca"])]
        control_tcp: Option<std::net::SocketAddr>,
        /// The server's certificate (PEM) for --control-tcp.
        #[arg(long, value_name = "FILE", requires = "control_tcp")]
        tls_cert: Option<PathBuf>,
        /// The server's private key (PEM) for --control-tcp.
        #[arg(long, value_name = "FILE", requires = "control_tcp")]
        tls_key: Option<PathBuf>,
        /// The CA (PEM) that must have signed every client's certificate.
        #[arg(long, value_name = "FILE", requires = "control_tcp")]
        tls_client_ca: Option<PathBuf>,
        #[command(flatten)]
        dirs: Dirs,
        /// Seconds the XDP program holds the switch's frames after switchd's last heartbeat
        /// (a restart must finish within it); past it the kernel gets every frame.
        #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
        grace: u64,
        /// Start afresh: remove the conntrack table, the pinned XDP state and the kept
        /// objects of other writers (CNI pods) an earlier switchd of this node left,
        /// instead of taking them over.
        #[arg(long)]
        fresh: bool,
        /// Keep nothing across restarts: conntrack in process memory, the XDP program
        /// detached when switchd exits (every restart then resets Service connections),
        /// other writers' objects (CNI pods) not kept.
        #[arg(long, conflicts_with_all = ["fresh"])]
        no_persist: bool,
    },
    /// Uninstall: detach the pinned XDP program and remove the state `run` leaves for the
    /// next start (pinned links and maps, the conntrack table, the kept objects) of one
    /// node or of all.
    Cleanup {
        #[command(flatten)]
        dirs: Dirs,
        /// Only this node's state (default: every node's under the directories).
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Replay pcap/pcapng captures through the real pipeline and write what it sends.
    ///
    /// Writes DIR/<port>.pcap for every port (the uplink and each pod's), DIR/kernel.pcap for
    /// frames handed to the node's kernel, and DIR/counters.json with every counter.
    Replay {
        /// The state file (TOML; see docs/state-file.md).
        #[arg(long)]
        state: PathBuf,
        /// PORT=FILE: frames of FILE arrive on PORT (a port name or pod name). Repeatable.
        #[arg(long = "in", value_name = "PORT=FILE", required = true)]
        inputs: Vec<Input>,
        /// Output directory (created if missing; files in it are overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Conntrack capacity (connections; memory is fixed at 96 bytes each).
        #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=16_777_214))]
        conntrack_capacity: u64,
    },
    /// Validate a state file and print the tables it describes.
    Check {
        /// The state file.
        #[arg(long)]
        state: PathBuf,
    },
}

/// Checks one `--ct-timeout` (the one rule set: `Timeouts::set_from`).
fn parse_ct_timeout(spec: &str) -> Result<(String, u32), String> {
    flowtable::conntrack::Timeouts::default().set_from(spec)?;
    let (name, secs) = spec.split_once('=').unwrap_or((spec, "0"));
    Ok((name.trim().to_string(), secs.trim().parse().unwrap_or(0)))
}

/// The timeouts the flags give (each already checked by `parse_ct_timeout`).
fn timeouts(given: &[(String, u32)]) -> flowtable::conntrack::Timeouts {
    let mut t = flowtable::conntrack::Timeouts::default();
    for (name, secs) in given {
        let _ = t.set(name, *secs);
    }
    t
}

/// `switchd cleanup`: every node's state under the directories, or `node`'s.
fn cleanup(dirs: &Dirs, node: Option<&str>) -> Result<(), String> {
    use switch::daemon::Persist;
    let nodes = |dir: &PathBuf| -> Vec<PathBuf> {
        match node {
            Some(n) => vec![Persist::node_dir(dir, n)],
            None => std::fs::read_dir(dir)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default(),
        }
    };
    // A node whose switchd runs is refused before anything is touched (its links, pinned
    // beside the others, would otherwise be detached under it).
    if let Some(d) = nodes(&dirs.run_dir)
        .into_iter()
        .find(|d| switch::shm::held(d))
    {
        return Err(format!(
            "{}: a running switchd holds this node's conntrack region (stop it first, or name \
             another node with --node); nothing was removed",
            d.display()
        ));
    }
    let mut removed = 0;
    for d in nodes(&dirs.bpf_dir) {
        let gone = switch::xdp::cleanup(&d).map_err(|e| format!("{}: {e}", d.display()))?;
        for g in &gone {
            println!("removed {g} ({})", d.display());
        }
        removed += gone.len();
    }
    for d in nodes(&dirs.run_dir) {
        let mut gone = false;
        for f in [control::keep::FILE, control::keep::JOURNAL] {
            let kept = d.join(f);
            match std::fs::remove_file(&kept) {
                Ok(()) => gone = true,
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("{}: {e}", kept.display()))
                }
                Err(_) => {}
            }
        }
        if gone {
            println!("removed the objects kept for a restart ({})", d.display());
            removed += 1;
        }
        if switch::shm::remove(&d).map_err(|e| e.to_string())? {
            println!("removed the conntrack table ({})", d.display());
            removed += 1;
        }
    }
    let _ = std::fs::remove_dir(&dirs.bpf_dir);
    let _ = std::fs::remove_dir(&dirs.run_dir);
    if removed == 0 {
        println!("nothing to remove");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run {
            state,
            cores,
            conntrack_capacity,
            ct_timeout,
            poll,
            batch_wait_us,
            idle_spin_us,
            frames,
            zero_copy,
            pod_ports,
            stats,
            control_socket,
            metrics,
            health_bound,
            no_control,
            control_tcp,
            tls_cert,
            tls_key,
            tls_client_ca,
            dirs,
            grace,
            fresh,
            no_persist,
        } => {
            eprintln!("switchd: {VERSION} starting");
            let cfg = switch::daemon::Config {
                state,
                cores,
                conntrack_capacity: conntrack_capacity as usize,
                conntrack_timeouts: timeouts(&ct_timeout),
                poll,
                batch_wait: std::time::Duration::from_micros(batch_wait_us),
                idle_spin: std::time::Duration::from_micros(idle_spin_us),
                frames,
                zero_copy,
                pod_ports,
                stats,
                control_socket: (!no_control).then_some(control_socket),
                control_tcp: match (control_tcp, tls_cert, tls_key, tls_client_ca) {
                    (Some(addr), Some(cert), Some(key), Some(ca)) => {
                        Some((addr, control::client::TlsFiles { cert, key, ca }))
                    }
                    _ => None,
                },
                persist: (!no_persist).then(|| switch::daemon::Persist {
                    run_dir: dirs.run_dir,
                    bpf_dir: dirs.bpf_dir,
                    grace: std::time::Duration::from_secs(grace),
                }),
                fresh,
                metrics,
                health_bound: std::time::Duration::from_secs(health_bound),
                version: VERSION.into(),
            };
            return match switch::daemon::run(&cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchd: error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Replay {
            state,
            inputs,
            out,
            conntrack_capacity,
        } => {
            let opts = replay::Options {
                conntrack_capacity: conntrack_capacity as usize,
            };
            replay::run_with(&state, &inputs, &out, &opts).map(|r| {
            println!(
                "replayed {} frames on node {} (generation {})",
                r.received, r.node, r.generation
            );
            if r.input.skipped_truncated_capture + r.input.skipped_too_large > 0 {
                println!(
                    "  skipped: {} cut short by the capture's snaplen, {} too large",
                    r.input.skipped_truncated_capture, r.input.skipped_too_large
                );
            }
            for (k, v) in r.actions.iter().filter(|(_, v)| **v > 0) {
                println!("  {k:<24} {v:>8}");
            }
            for (k, v) in r.drops.iter().filter(|(_, v)| **v > 0) {
                println!("  drop {k:<19} {v:>8}");
            }
            for (k, v) in &r.output {
                println!("  -> {}/{k}.pcap: {v} frames", out.display());
            }
            println!(
                "  services: {} translated, {} translated back, {} new flows; conntrack {} of {} entries",
                r.nat.dnat, r.nat.reverse_nat, r.nat.new_flows, r.conntrack.entries, r.conntrack.capacity
            );
            println!("  -> {}/{}", out.display(), replay::COUNTERS_JSON);
        })
        }
        Cmd::Cleanup { dirs, node } => {
            return match cleanup(&dirs, node.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("switchd: error: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Check { state } => replay::load_state(&state).map(|s| {
            println!(
                "{}: valid. node {} ip {} pod_cidr {} gateway {} ({})",
                state.display(),
                s.node.name,
                s.node.ip,
                s.node.pod_cidr,
                s.node.gateway_ip,
                s.node.gateway_mac
            );
            println!(
                "vxlan vni {} port {}, uplink '{}' mtu {}",
                s.node.vni,
                s.node.vxlan_port,
                s.ports()[0],
                s.node.uplink_mtu
            );
            for p in s.pods() {
                println!(
                    "pod  {:<24} {:<15} {} port {}",
                    p.name,
                    p.ip,
                    p.mac,
                    s.port_name(p.port).unwrap_or("?")
                );
            }
            for sv in s.services.iter() {
                for &pi in &sv.ports {
                    if let Some(p) = s.services.ports.get(pi as usize) {
                        let np = p
                            .node_port
                            .map(|n| format!(" nodePort {n}"))
                            .unwrap_or_default();
                        println!(
                            "svc  {:<24} {}:{}/{}{np} -> {} endpoints ({} usable)",
                            sv.name,
                            sv.cluster_ip,
                            p.port,
                            match p.protocol {
                                6 => "TCP",
                                17 => "UDP",
                                _ => "SCTP",
                            },
                            p.backends.len(),
                            p.cluster.members.len()
                        );
                    }
                }
            }
            for r in s.remotes() {
                println!(
                    "node {:<24} {:<15} pod_cidr {} vtep {} next-hop {}",
                    r.name,
                    r.ip,
                    r.pod_cidr,
                    r.vtep_mac,
                    r.next_hop_mac
                        .map_or("resolved from the node's tables".into(), |m| m.to_string())
                );
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchd: error: {e}");
            ExitCode::FAILURE
        }
    }
}
