//! `nodeswitch-cni`: the CNI plugin through which the container runtime attaches pods to
//! switchd.
//!
//! Design: one process per runtime call. What the call means is decided from its inputs by
//! pure functions ([`spec`]: the environment, errors and versions; [`config`]: the network
//! config; [`result`]: results; [`naming`]: the names and addresses the plugin chooses), tested in memory; the
//! I/O ([`ipam`]: the delegated IPAM plugin; netlink and switchd's API) comes on top of them.
//! Thread-safety: a plugin call is single-threaded; nothing here is shared.

pub mod config;
pub mod ipam;
pub mod link;
pub mod naming;
pub mod plugin;
pub mod result;
pub mod spec;
