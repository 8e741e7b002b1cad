//! nodeswitch's dataplane decisions, with no I/O and no unsafe code.
//!
//! Design: `wire` holds zero-copy views over frame bytes; `snapshot` holds the immutable tables
//! (built from a `state` file, published lock-free by generation); `pipeline` decides a batch
//! of [`packet::Packet`]s against one snapshot and counts every outcome in `counters`.
//! Thread-safety: snapshots are shared read-only between workers; a `Pipeline` and its
//! counters belong to one worker; nothing on the packet path blocks (`parallel` joins its
//! threads, for the control plane only).

#![forbid(unsafe_code)]

pub mod cidr;
pub mod conntrack;
pub mod counters;
pub mod egress;
pub mod gro;
pub mod gso;
pub mod hash;
pub mod maglev;
pub mod names;
pub mod packet;
pub mod parallel;
pub mod pipeline;
pub mod services;
pub mod snapshot;
pub mod state;
pub mod tap;
pub mod wire;

pub use counters::{Action, Counters, DropReason};
pub use packet::{Packet, PortId};
pub use pipeline::{Pipeline, Verdict, BATCH_SIZE};
pub use snapshot::{Snapshot, SnapshotCell, SnapshotReader, StateError};
pub use state::StateFile;
