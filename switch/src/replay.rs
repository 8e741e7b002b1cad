//! Replaying captures through the real pipeline: one pcap per input port in, one pcap per
//! output port (plus the kernel-bound frames) and the counters as JSON out.
//!
//! Design: inputs are merged by timestamp (ties keep command-line order, then file order) and
//! cut into batches of [`flowtable::BATCH_SIZE`] frames, each copied into its own buffer with
//! [`flowtable::packet::DEFAULT_HEADROOM`] bytes of headroom, exactly as the AF_XDP ports
//! lay frames out in UMEM. One pipeline decides every batch against one snapshot built from the
//! state file. Output frames keep their input timestamps. Runs on the calling thread.

use crate::pcapio::{self, PcapError, Writer};
use flowtable::conntrack::{Conntrack, Timeouts};
use flowtable::counters::Counters;
use flowtable::packet::DEFAULT_HEADROOM;
use flowtable::{
    Action, DropReason, Packet, Pipeline, PortId, Snapshot, StateFile, Verdict, BATCH_SIZE,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Size of each frame buffer (headroom included), as a UMEM frame.
pub const FRAME_SIZE: usize = 4096;
/// File name of the kernel-bound frames in the output directory.
pub const KERNEL_PCAP: &str = "kernel.pcap";
/// File name of the counters in the output directory.
pub const COUNTERS_JSON: &str = "counters.json";

/// One `--in PORT=FILE` argument.
#[derive(Debug, Clone)]
pub struct Input {
    /// Port name (interface) or pod name.
    pub port: String,
    /// Capture file.
    pub path: PathBuf,
}

impl std::str::FromStr for Input {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, path) = s
            .split_once('=')
            .filter(|(p, f)| !p.is_empty() && !f.is_empty())
            .ok_or_else(|| format!("'{s}' is not PORT=FILE (for example veth-a=pod-a.pcap)"))?;
        Ok(Input {
            port: port.to_string(),
            path: PathBuf::from(path),
        })
    }
}

/// Everything that can stop a replay, each naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The state file could not be read.
    #[error("{path}: {source}")]
    StateIo {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The state file does not parse.
    #[error("{path}: {reason}")]
    StateParse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        reason: String,
    },
    /// The state file parses but is not valid.
    #[error("{path}: {source}")]
    StateInvalid {
        /// The file.
        path: PathBuf,
        /// The field and reason.
        source: flowtable::StateError,
    },
    /// An `--in` names a port the state file does not have.
    #[error("--in {port}=...: no such port or pod in the state file (ports: {known})")]
    UnknownPort {
        /// The name given.
        port: String,
        /// The ports the state file has.
        known: String,
    },
    /// The output directory could not be created.
    #[error("{path}: {source}")]
    OutDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A capture could not be read or written.
    #[error(transparent)]
    Pcap(#[from] PcapError),
}

/// Frames that could not be replayed as captured (not pipeline drops: they never reached it).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct InputStats {
    /// Frames read from all inputs.
    pub frames: u64,
    /// Frames the capture cut short (snaplen); replaying them would invent a different frame.
    pub skipped_truncated_capture: u64,
    /// Frames larger than a frame buffer less its headroom.
    pub skipped_too_large: u64,
}

/// Settings of a replay beyond its inputs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Conntrack capacity (connections).
    pub conntrack_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            conntrack_capacity: 65536,
        }
    }
}

/// Service NAT counters of a replay.
#[derive(Debug, Clone, Serialize)]
pub struct NatReport {
    /// Frames translated to a backend.
    pub dnat: u64,
    /// Frames translated back to the Service.
    pub reverse_nat: u64,
    /// New Service and masqueraded flows.
    pub new_flows: u64,
    /// Frames masqueraded to the node's IP.
    pub snat: u64,
}

/// Conntrack state after a replay.
#[derive(Debug, Clone, Serialize)]
pub struct ConntrackReport {
    /// Capacity (connections).
    pub capacity: usize,
    /// Entries live at the end.
    pub entries: usize,
    /// Entries created.
    pub inserted: u64,
    /// New flows refused because the table was full.
    pub full: u64,
    /// Non-assured entries evicted under pressure (early drop).
    pub evicted: u64,
    /// Entries expired.
    pub expired: u64,
    /// Closed TCP entries replaced by a new connection on their tuple (port reuse).
    pub reopened: u64,
    /// TCP segments passed untracked because another worker held their entry.
    pub busy: u64,
    /// Entries assured now (never evicted).
    pub assured: usize,
    /// Memory per connection in bytes.
    pub bytes_per_entry: usize,
}

/// What a replay did: the JSON written to `counters.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Node name from the state file.
    pub node: String,
    /// Snapshot generation used.
    pub generation: u64,
    /// Input accounting.
    pub input: InputStats,
    /// Frames given to the pipeline.
    pub received: u64,
    /// Count per action (all actions, zeros included).
    pub actions: BTreeMap<&'static str, u64>,
    /// Count per drop reason (all reasons, zeros included).
    pub drops: BTreeMap<&'static str, u64>,
    /// Total drops.
    pub dropped: u64,
    /// Frames written per output file (port name or "kernel").
    pub output: BTreeMap<String, u64>,
    /// Service NAT.
    pub nat: NatReport,
    /// Conntrack.
    pub conntrack: ConntrackReport,
}

/// Every action's count by name, zeros included (replay's and the daemon's counters files).
pub fn action_counts(c: &Counters) -> BTreeMap<&'static str, u64> {
    Action::ALL
        .iter()
        .map(|a| (a.name(), c.actions(*a)))
        .collect()
}

/// Every drop reason's count by name, zeros included.
pub fn drop_counts(c: &Counters) -> BTreeMap<&'static str, u64> {
    DropReason::ALL
        .iter()
        .map(|d| (d.name(), c.drops(*d)))
        .collect()
}

impl NatReport {
    /// The Service NAT counters of `c`.
    pub fn of(c: &Counters) -> NatReport {
        NatReport {
            dnat: c.dnat,
            reverse_nat: c.reverse_nat,
            new_flows: c.new_flows,
            snat: c.snat,
        }
    }
}

impl ConntrackReport {
    /// The table's size and counters now.
    pub fn of(ct: &Conntrack) -> ConntrackReport {
        ConntrackReport {
            capacity: ct.capacity(),
            entries: ct.len(),
            inserted: ct.counters.inserted.load(Relaxed),
            full: ct.counters.full.load(Relaxed),
            evicted: ct.counters.evicted.load(Relaxed),
            expired: ct.counters.expired.load(Relaxed),
            reopened: ct.counters.reopened.load(Relaxed),
            busy: ct.counters.busy.load(Relaxed),
            assured: ct.assured(),
            bytes_per_entry: ct.bytes_per_entry(),
        }
    }
}

/// Reads, parses and validates a state file into a generation-1 snapshot.
pub fn load_state(path: &Path) -> Result<Snapshot, ReplayError> {
    let state = read_state(path)?;
    Snapshot::build(&state, 1).map_err(|source| ReplayError::StateInvalid {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and parses a state file (its meaning is checked when a snapshot is built from it).
pub fn read_state(path: &Path) -> Result<StateFile, ReplayError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReplayError::StateIo {
        path: path.to_path_buf(),
        source,
    })?;
    StateFile::parse(&text).map_err(|e| ReplayError::StateParse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn resolve_port(snap: &Snapshot, name: &str) -> Result<PortId, ReplayError> {
    if let Some(p) = snap.port_id(name) {
        return Ok(p);
    }
    if let Some(pod) = snap.pods().iter().find(|p| p.name == name) {
        return Ok(pod.port);
    }
    Err(ReplayError::UnknownPort {
        port: name.to_string(),
        known: snap.ports().join(", "),
    })
}

/// Replays `inputs` through the pipeline built from `state`, writing results into `out_dir`.
pub fn run(state: &Path, inputs: &[Input], out_dir: &Path) -> Result<Report, ReplayError> {
    run_with(state, inputs, out_dir, &Options::default())
}

/// As [`run`], with options. The conntrack clock follows the capture timestamps.
pub fn run_with(
    state: &Path,
    inputs: &[Input],
    out_dir: &Path,
    opts: &Options,
) -> Result<Report, ReplayError> {
    let snap = load_state(state)?;
    let mut frames = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let port = resolve_port(&snap, &input.port)?;
        for (j, f) in pcapio::read_frames(&input.path)?.into_iter().enumerate() {
            frames.push((f.ts, i, j, port, f));
        }
    }
    frames.sort_by_key(|(ts, i, j, _, _)| (*ts, *i, *j));

    std::fs::create_dir_all(out_dir).map_err(|source| ReplayError::OutDir {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let mut writers = Vec::new();
    for name in snap.ports() {
        writers.push(Writer::create(&out_dir.join(format!("{name}.pcap")))?);
    }
    let mut kernel = Writer::create(&out_dir.join(KERNEL_PCAP))?;

    let mut stats = InputStats::default();
    let ct = Arc::new(Conntrack::new(opts.conntrack_capacity, Timeouts::default()));
    let mut pipeline = Pipeline::with_conntrack(Arc::clone(&ct));
    let mut bufs = vec![[0u8; FRAME_SIZE]; BATCH_SIZE];
    let mut verdicts = [Verdict::default(); BATCH_SIZE];
    let mut queue = frames.into_iter().peekable();
    while queue.peek().is_some() {
        let mut pkts = Vec::with_capacity(BATCH_SIZE);
        let mut stamps = Vec::with_capacity(BATCH_SIZE);
        for buf in bufs.iter_mut() {
            let Some((ts, _, _, port, f)) = next_replayable(&mut queue, &mut stats) else {
                break;
            };
            buf[DEFAULT_HEADROOM..DEFAULT_HEADROOM + f.data.len()].copy_from_slice(&f.data);
            if let Some(p) = Packet::new(buf, DEFAULT_HEADROOM, f.data.len(), port) {
                pkts.push(p);
                stamps.push(ts);
            }
        }
        if let Some(first) = stamps.first() {
            let now = u32::try_from(first.as_secs()).unwrap_or(u32::MAX);
            pipeline.set_now(now);
            ct.gc(4096);
        }
        let n = pkts.len();
        pipeline.process(&snap, &mut pkts, &mut verdicts[..n]);
        for ((p, v), ts) in pkts.iter().zip(verdicts.iter()).zip(stamps) {
            match v {
                Verdict::Transmit(port) => {
                    if let Some(w) = writers.get_mut(usize::from(port.0)) {
                        w.write(ts, p.data())?;
                    }
                }
                Verdict::Kernel => kernel.write(ts, p.data())?,
                Verdict::Drop(_) => {}
            }
        }
    }

    let c = pipeline.counters();
    let mut output = BTreeMap::new();
    for (name, w) in snap.ports().iter().zip(writers) {
        output.insert(name.clone(), w.frames);
        w.finish()?;
    }
    output.insert("kernel".to_string(), kernel.frames);
    kernel.finish()?;
    let report = Report {
        node: snap.node.name.clone(),
        generation: snap.generation,
        input: stats,
        received: c.received,
        actions: action_counts(c),
        drops: drop_counts(c),
        dropped: c.total_drops(),
        output,
        nat: NatReport::of(c),
        conntrack: ConntrackReport::of(&ct),
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    let path = out_dir.join(COUNTERS_JSON);
    std::fs::write(&path, json + "\n").map_err(|source| PcapError::Io { path, source })?;
    Ok(report)
}

type Queued = (std::time::Duration, usize, usize, PortId, pcapio::Frame);

fn next_replayable(q: &mut impl Iterator<Item = Queued>, stats: &mut InputStats) -> Option<Queued> {
    for item in q {
        stats.frames += 1;
        if item.4.truncated {
            stats.skipped_truncated_capture += 1;
        } else if item.4.data.len() > FRAME_SIZE - DEFAULT_HEADROOM {
            stats.skipped_too_large += 1;
        } else {
            return Some(item);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_syntax() {
        let i: Input = "veth-a=a.pcap".parse().unwrap();
        assert_eq!(
            (i.port.as_str(), i.path.to_str()),
            ("veth-a", Some("a.pcap"))
        );
        assert!("veth-a".parse::<Input>().is_err());
        assert!("=a.pcap".parse::<Input>().is_err());
        assert!("veth-a=".parse::<Input>().is_err());
    }
}
