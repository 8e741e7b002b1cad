//! switchd's side of the control API: the [`Dataplane`] the gRPC server drives.
//!
//! Design: the gRPC server plans a change on its own thread and hands the finished snapshot
//! to the daemon's control thread (a channel), which binds and attaches new pods' ports,
//! detaches removed ones and publishes, exactly as a SIGHUP reload does, and answers with the
//! generation or the reason it refused. A snapshot with the same ports and the same Service
//! frontends as the live one (an endpoint change) needs none of that and is published
//! directly (all publishes happen under the engine's lock). Waiting for "programmed" happens back on the gRPC
//! thread: the workers report the generation they run through their snapshot readers and are
//! woken so that an idle one looks at once. Counters come from the workers' reports (the
//! mutexes they `try_lock`), the conntrack table and the XDP counters the control thread
//! keeps fresh.
//!
//! Thread-safety: `DaemonPlane` is shared by the server's threads; everything it holds is
//! either a channel sender, an `Arc` of a lock-free structure or a mutex that no worker waits on.

use crate::replay::{self, ConntrackReport, NatReport};
use crate::worker::{Fabric, Report};
use control::pb;
use control::server::Dataplane;
use control::ApiError;
use flowtable::conntrack::Conntrack;
use flowtable::snapshot::{Snapshot, SnapshotCell};
use std::collections::HashMap;
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A snapshot to make live, and where to answer.
pub struct Commit {
    /// The next snapshot.
    pub next: Snapshot,
    /// The generation it got, or why it was refused.
    pub reply: SyncSender<Result<u64, ApiError>>,
}

/// What the control thread keeps fresh for the API.
#[derive(Debug, Default, Clone)]
pub struct Shared {
    /// The XDP program's counters.
    pub xdp: HashMap<String, u64>,
}

/// The daemon as the gRPC server sees it.
pub struct DaemonPlane {
    /// To the control thread.
    pub commits: Mutex<Sender<Commit>>,
    /// The published snapshot.
    pub cell: Arc<SnapshotCell>,
    /// The conntrack table.
    pub ct: Arc<Conntrack>,
    /// The workers' fabric (to wake them).
    pub fabric: Arc<Fabric>,
    /// Each worker's report.
    pub reports: Vec<Arc<Mutex<Report>>>,
    /// Kept fresh by the control thread.
    pub shared: Arc<Mutex<Shared>>,
    /// When the daemon started.
    pub start: Instant,
    /// The uplink's next hops the workers use.
    pub hops: flowtable::egress::NextHopsCell,
}

/// The table's census as `census.tcp.STATE`, `census.udp`, `census.icmp`, `census.other`,
/// `census.affinity` (the metrics' entries by protocol and TCP state).
pub fn census(c: &flowtable::conntrack::Census, out: &mut HashMap<String, u64>) {
    for st in flowtable::conntrack::TcpState::ALL {
        out.insert(format!("census.tcp.{}", st.name()), c.tcp[st as usize]);
    }
    for (k, v) in [
        ("udp", c.udp),
        ("icmp", c.icmp),
        ("other", c.other),
        ("affinity", c.affinity),
    ] {
        out.insert(format!("census.{k}"), v);
    }
}

/// A serializable value's numeric fields, flattened (`a.b` for nested ones).
pub fn numbers(v: &impl serde::Serialize) -> HashMap<String, u64> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut HashMap<String, u64>) {
        match v {
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_u64() {
                    out.insert(prefix.to_string(), x);
                }
            }
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = HashMap::new();
    if let Ok(j) = serde_json::to_value(v) {
        walk("", &j, &mut out);
    }
    out
}

impl Dataplane for DaemonPlane {
    fn next_hops(&self) -> Option<flowtable::egress::NextHopsCell> {
        Some(self.hops.clone())
    }

    fn taps(&self) -> Option<Arc<flowtable::tap::Taps>> {
        Some(Arc::clone(&self.fabric.taps))
    }

    fn publish(&self, next: Snapshot) -> Result<u64, ApiError> {
        let cur = self.cell.load();
        if next.ports() == cur.ports()
            && next.node.ip == cur.node.ip
            && next.node.vxlan_port == cur.node.vxlan_port
            // (a new uplink MAC is checked against the interface by the control thread)
            && next.node.uplink_mac == cur.node.uplink_mac
            && Arc::ptr_eq(&next.services.frontends, &cur.services.frontends)
            // (the masquerade range is in the XDP program's maps, and checked against the
            // kernel's ephemeral ports)
            && next.egress.ports == cur.egress.ports
            && next.egress.masquerade == cur.egress.masquerade
        {
            // Nothing for the control thread to do (no port to bind or detach, the XDP
            // program's maps stay as they are): publish from here. Every publish happens
            // under the engine's lock, so there is still one publisher at a time.
            let generation = self.cell.publish(next);
            self.fabric.wake_all();
            return Ok(generation);
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        self.commits
            .lock()
            .map_err(|_| ApiError::Unavailable("switchd is stopping".into()))?
            .send(Commit { next, reply })
            .map_err(|_| ApiError::Unavailable("switchd is stopping".into()))?;
        answer
            .recv()
            .map_err(|_| ApiError::Unavailable("switchd is stopping".into()))?
    }

    fn wait_programmed(&self, generation: u64, timeout: Duration) -> Result<(), ApiError> {
        self.cell
            .wait_programmed(generation, timeout, &|| self.fabric.wake_all())
            .map_err(|l| {
                let behind: Vec<String> =
                    l.0.iter()
                        .map(|(w, g)| format!("worker {w} runs {g}"))
                        .collect();
                ApiError::NotProgrammed(format!(
                    "generation {generation} is published but not programmed after {timeout:?}: {}",
                    behind.join(", ")
                ))
            })
    }

    fn current(&self) -> Arc<Snapshot> {
        self.cell.load()
    }

    fn conntrack(&self) -> Option<Arc<Conntrack>> {
        Some(Arc::clone(&self.ct))
    }

    fn stats(&self) -> pb::Stats {
        let snap = self.cell.load();
        let running = self.cell.running();
        let mut total = flowtable::counters::Counters::default();
        let mut ports = Vec::new();
        let mut workers = Vec::new();
        let mut worker_drops: HashMap<String, u64> = HashMap::new();
        for (id, rep) in self.reports.iter().enumerate() {
            let Ok(r) = rep.lock() else { continue };
            total.merge(&r.counters);
            let drops = r.drops();
            for (k, v) in drops {
                *worker_drops.entry(k.into()).or_default() += v;
            }
            for p in &r.ports {
                ports.push(pb::PortStats {
                    name: p.name.clone(),
                    worker: id as u32,
                    mode: p.mode.into(),
                    rx: p.rx,
                    tx: p.tx,
                    tx_ring_full: p.tx_ring_full,
                    rx_not_a_port: p.rx_not_a_port,
                    bad_descriptors: p.bad_descriptors,
                    kernel_rx_dropped: p.kernel.rx_dropped,
                    kernel_rx_ring_full: p.kernel.rx_ring_full,
                    kernel_tx_invalid: p.kernel.tx_invalid,
                    rx_too_long: p.rx_too_long,
                    rx_gso: p.rx_gso,
                    rx_kernel: p.rx_kernel,
                    gso_refused: p.gso_refused,
                    tx_failed: p.tx_failed,
                    tx_joined: p.tx_joined,
                    tx_joined_segments: p.tx_joined_segments,
                });
            }
            workers.push(pb::WorkerStats {
                id: id as u32,
                generation: running.get(id).copied().unwrap_or(r.generation),
                received: r.counters.received,
                dropped: r.counters.total_drops() + drops.iter().map(|(_, v)| v).sum::<u64>(),
                handed_off: r.handed_off,
                free_frames: r.free_frames as u64,
                drops: replay::drop_counts(&r.counters)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                worker_drops: drops.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
                report_age_secs: r
                    .at
                    .map_or(self.start.elapsed(), |t| t.elapsed())
                    .as_secs_f64(),
            });
        }
        ports.sort_by(|a, b| a.name.cmp(&b.name));
        let xdp = self
            .shared
            .lock()
            .map(|s| s.xdp.clone())
            .unwrap_or_default();
        pb::Stats {
            node: snap.node.name.clone(),
            generation: running.iter().copied().min().unwrap_or(snap.generation),
            published_generation: snap.generation,
            uptime_secs: self.start.elapsed().as_secs_f64(),
            received: total.received,
            actions: replay::action_counts(&total)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            drops: replay::drop_counts(&total)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            worker_drops,
            ports,
            workers,
            conntrack_entries: self.ct.len() as u64,
            conntrack_capacity: self.ct.capacity() as u64,
            conntrack: {
                let mut m = numbers(&ConntrackReport::of(&self.ct));
                census(&self.ct.census(), &mut m);
                m
            },
            nat: numbers(&NatReport::of(&total)),
            xdp,
        }
    }
}
