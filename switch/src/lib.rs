//! switchd, nodeswitch's daemon.
//!
//! Design: the daemon moves frames between ports and the `flowtable` pipeline; it decides
//! nothing itself. Today its ports are pcap files (`replay`): the same pipeline, the same
//! batches of 64 and the same counters as the AF_XDP workers that come next, so a capture can
//! be replayed through the real decision code and the result opened in Wireshark.
//! Thread-safety: replay runs on the calling thread and shares nothing.

pub mod daemon;
pub mod pcapio;
pub mod replay;
pub mod worker;
pub mod xdp;
pub mod xsk;
