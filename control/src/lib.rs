//! nodeswitch's control plane: the gRPC API (`proto/nodeswitch/v1/nodeswitch.proto`), its server (run inside
//! switchd) and the client that `switchctl` uses.
//!
//! Design: requests are converted ([`convert`]) into the state file's types, planned by the
//! [`engine`] into the next immutable snapshot (validated whole, Service tables rebuilt only
//! where they changed), published by the [`server::Dataplane`] and confirmed once every worker
//! runs it. Reads ([`query`]) describe one snapshot. The data path never waits on any of it.
//! Thread-safety: see each module; the server is shared by `Arc`.

#[cfg(feature = "agent")]
pub mod agent;
pub mod client;
pub mod cni;
pub mod convert;
pub mod engine;
pub mod error;
pub mod http;
pub mod keep;
pub mod listen;
pub mod local;
pub mod metrics;
pub mod query;
pub mod server;
pub mod tap;

pub use error::ApiError;

/// The generated gRPC types and services (package `nodeswitch.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("nodeswitch.v1");
}
