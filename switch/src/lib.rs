//! switchd, nodeswitch's daemon.
//!
//! Design: the daemon moves frames between ports and the `flowtable` pipeline; it decides
//! nothing itself. Its ports are AF_XDP sockets (`xsk`, `worker`, `daemon`) or pcap files
//! (`replay`: the same pipeline, batches and counters, so a capture can be replayed through
//! the real decision code and the result opened in Wireshark). The control API's server runs
//! inside the daemon (`plane`). Thread-safety: see each module.

pub mod alloc;
pub mod ctclock;
pub mod daemon;
pub mod fill;
pub mod health;
pub mod healthcheck;
pub mod nexthop;
pub mod pcapio;
pub mod plane;
pub mod replay;
pub mod shm;
pub mod vnet;
pub mod worker;
pub mod xdp;
pub mod xsk;
