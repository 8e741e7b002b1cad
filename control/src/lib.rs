//! nodeswitch's control plane: the gRPC API, its server and `switchctl`.
//!
//! Not built yet (see the control-plane issue). It will validate requests into the same
//! [`flowtable::StateFile`] model the state file uses and publish snapshots through
//! [`flowtable::SnapshotCell`]; the data path never waits on it.

pub use flowtable::StateFile;
