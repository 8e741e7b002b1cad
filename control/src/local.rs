//! An in-process dataplane: a snapshot cell and a conntrack table, for tests and benchmarks
//! that run pipelines on their own threads.
//!
//! Design: `publish` is [`SnapshotCell::publish`]; "programmed" is every reader made from the
//! cell (each pipeline thread's) having loaded the generation. Nothing here touches an
//! interface. Thread-safety: shared by `Arc`; the cell and table are lock-free for readers.

use crate::error::ApiError;
use crate::pb;
use crate::server::Dataplane;
use flowtable::conntrack::Conntrack;
use flowtable::snapshot::{Snapshot, SnapshotCell};
use std::sync::Arc;
use std::time::Duration;

/// A dataplane made of a snapshot cell and a conntrack table.
#[derive(Debug, Clone)]
pub struct LocalPlane {
    /// The published snapshot; pipeline threads read it through [`SnapshotCell::reader`].
    pub cell: Arc<SnapshotCell>,
    /// The shared conntrack table.
    pub ct: Arc<Conntrack>,
}

impl LocalPlane {
    /// A dataplane starting with `first`.
    pub fn new(first: Snapshot, ct: Arc<Conntrack>) -> LocalPlane {
        LocalPlane {
            cell: Arc::new(SnapshotCell::new(first)),
            ct,
        }
    }
}

impl Dataplane for LocalPlane {
    fn publish(&self, next: Snapshot) -> Result<u64, ApiError> {
        Ok(self.cell.publish(next))
    }

    fn wait_programmed(&self, generation: u64, timeout: Duration) -> Result<(), ApiError> {
        self.cell
            .wait_programmed(generation, timeout, &|| {})
            .map_err(|l| {
                ApiError::NotProgrammed(format!(
                    "generation {generation} is published but readers {:?} (reader, generation) did not run it within {timeout:?}",
                    l.0
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
        pb::Stats {
            node: snap.node.name.clone(),
            generation: self
                .cell
                .running()
                .into_iter()
                .min()
                .unwrap_or(snap.generation),
            published_generation: snap.generation,
            conntrack_entries: self.ct.len() as u64,
            conntrack_capacity: self.ct.capacity() as u64,
            ..Default::default()
        }
    }
}
