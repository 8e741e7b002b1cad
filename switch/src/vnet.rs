//! Packet sockets with a virtio-net header: the I/O of a GSO-keeping pod port (prototype).
//!
//! Design: an `AF_PACKET` socket bound to one interface with `PACKET_VNET_HDR` receives every
//! frame that interface receives, GSO packets of up to 64 KB whole, each preceded by a
//! 10-byte [`VnetHeader`] that says how to segment it and where its partial checksum is; a
//! frame sent with the same header leaves the interface as one skb the kernel segments (or,
//! on a veth, hands to the peer whole). An interface served this way has no XDP program, so
//! the pod's side keeps TSO/GSO (an XDP program on a veth removes them). The socket sees a
//! frame before tc ingress, so the node's own stack is kept off the interface with a tc drop
//! (set up by the caller). `PACKET_QDISC_BYPASS` sends straight to the driver and
//! `PACKET_IGNORE_OUTGOING` keeps a socket from receiving what is sent on its interface.
//!
//! The workers serve `vnet` pod ports (`switchd --pod-ports vnet`) with it, one `recvmmsg`
//! per up to [`RECV_BATCH`] frames and one `sendmsg` per frame (a GSO packet is one frame); `examples/vnet_port.rs` is the
//! bare forwarder `bench/vnet-proto` measures. Thread-safety: a [`VnetSocket`] is a file descriptor; `Send`, used by one thread.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Length of the virtio-net header in front of every frame (`struct virtio_net_hdr`).
pub const VNET_HDR_LEN: usize = 10;
/// Buffer size that holds any frame such a socket receives: the header, a 64 KB IP packet and
/// its Ethernet header.
pub const MAX_VNET_FRAME: usize = VNET_HDR_LEN + 65_535 + 14;

/// The virtio-net header's fields (little-endian on the wire for a packet socket: host order
/// of this machine, which the kernel uses for `PACKET_VNET_HDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHeader {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (1): the checksum at `csum_start + csum_offset` is partial.
    pub flags: u8,
    /// GSO type: 0 none, 1 TCPv4, 3 UDP, 4 TCPv6; 0x80 ECN.
    pub gso_type: u8,
    /// Length of the headers to repeat in every segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts, from the frame's first byte.
    pub csum_start: u16,
    /// Where the checksum goes, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Reads the header from the first [`VNET_HDR_LEN`] bytes of `b`; `None` if shorter.
    pub fn parse(b: &[u8]) -> Option<VnetHeader> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }
}

/// Most frames one [`VnetSocket::recv_many`] takes.
pub const RECV_BATCH: usize = 16;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the frame's checksum at `csum_start + csum_offset` holds
/// the pseudo-header sum only; the receiver (or the device) finishes it.
pub const NEEDS_CSUM: u8 = 1;

impl VnetHeader {
    /// The header's [`VNET_HDR_LEN`] bytes, as the kernel reads them.
    pub fn bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// What a packet socket's kernel counters say (`PACKET_STATISTICS`, which resets them on
/// every read: the caller sums).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetStats {
    /// Frames the socket received since the last read (its drops included).
    pub packets: u64,
    /// Frames dropped since the last read because the receive buffer was full.
    pub drops: u64,
}

/// A packet socket with `PACKET_VNET_HDR` bound to one interface.
#[derive(Debug)]
pub struct VnetSocket {
    fd: OwnedFd,
}

fn check(r: libc::c_int, what: &str) -> io::Result<()> {
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn set_int(fd: RawFd, level: i32, opt: i32, v: libc::c_int, what: &str) -> io::Result<()> {
    // SAFETY: `v` is a live int and its exact size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    check(r, what)
}

impl VnetSocket {
    /// Opens the socket on `ifname` with `buffer` bytes of receive and send buffer.
    pub fn open(ifname: &str, buffer: i32) -> io::Result<VnetSocket> {
        let name = CString::new(ifname)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
        // SAFETY: reads the NUL-terminated name only.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface {ifname}"),
            ));
        }
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the descriptor is owned right below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        check(raw, "socket(AF_PACKET)")?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let n = fd.as_raw_fd();
        set_int(
            n,
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            1,
            "PACKET_VNET_HDR",
        )?;
        set_int(
            n,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            1,
            "qdisc bypass",
        )?;
        set_int(
            n,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            1,
            "ignore outgoing",
        )?;
        set_int(
            n,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            buffer,
            "SO_RCVBUFFORCE",
        )?;
        set_int(
            n,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            buffer,
            "SO_SNDBUFFORCE",
        )?;
        let sa = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: proto,
            sll_ifindex: ifindex as i32,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: `sa` is a valid sockaddr_ll and its exact size is passed.
        let r = unsafe {
            libc::bind(
                n,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        check(r, "bind")?;
        Ok(VnetSocket { fd })
    }

    /// The socket's descriptor (for poll).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receives one frame (header first) into `buf` without waiting; `None` when none waits.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: `buf` is live and writable for the length passed.
        let r = unsafe {
            libc::recv(
                self.fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(r as usize))
    }

    /// Receives up to [`RECV_BATCH`] frames in one call, without waiting: frame `i`'s header
    /// into `hdrs[i]`, its bytes into `bufs[i][at..]`, its length and whether it was cut
    /// (longer than that room) into `out[i]`. Returns how many (0 when none waits).
    pub fn recv_many(
        &self,
        hdrs: &mut [[u8; VNET_HDR_LEN]],
        bufs: &mut [Box<[u8]>],
        at: usize,
        out: &mut [(usize, bool)],
    ) -> io::Result<usize> {
        let n = hdrs.len().min(bufs.len()).min(out.len()).min(RECV_BATCH);
        // SAFETY: all-zero iovecs and mmsghdrs are valid (null, empty).
        let mut iov: [[libc::iovec; 2]; RECV_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        let mut room = [0usize; RECV_BATCH];
        for i in 0..n {
            let b = bufs[i].get_mut(at..).unwrap_or_default();
            room[i] = b.len();
            iov[i] = [
                libc::iovec {
                    iov_base: hdrs[i].as_mut_ptr().cast(),
                    iov_len: VNET_HDR_LEN,
                },
                libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                },
            ];
            msgs[i].msg_hdr.msg_iov = iov[i].as_mut_ptr();
            msgs[i].msg_hdr.msg_iovlen = 2;
        }
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: `msgs[..n]` point at live iovecs over `hdrs` and `bufs`, writable for the
        // lengths given and borrowed mutably for the call; no timeout pointer.
        let r = unsafe {
            libc::recvmmsg(
                self.fd(),
                msgs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        let r = (r as usize).min(n);
        for i in 0..r {
            let len = (msgs[i].msg_len as usize).saturating_sub(VNET_HDR_LEN);
            let cut = msgs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > room[i];
            out[i] = (len, cut);
        }
        Ok(r)
    }

    /// Sends one frame: `hdr` then `data`, without waiting (a full send buffer is an error,
    /// `WouldBlock`).
    pub fn send_parts(&self, hdr: &[u8; VNET_HDR_LEN], data: &[u8]) -> io::Result<()> {
        let mut iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut libc::c_void,
                iov_len: VNET_HDR_LEN,
            },
            libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            },
        ];
        // SAFETY: an all-zero msghdr is valid (no name, no control).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.as_mut_ptr();
        msg.msg_iovlen = iov.len();
        // SAFETY: `msg` points at two live iovecs the kernel only reads (sendmsg), which
        // outlive the call.
        let r = unsafe { libc::sendmsg(self.fd(), &msg, libc::MSG_DONTWAIT) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The kernel's counters since the last call.
    pub fn stats(&self) -> VnetStats {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is a live tpacket_stats and `len` its exact size.
        let r = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r < 0 {
            return VnetStats::default();
        }
        VnetStats {
            packets: u64::from(st.tp_packets),
            drops: u64::from(st.tp_drops),
        }
    }

    /// Sends one frame (header first).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is live and readable for the length passed.
        let r = unsafe { libc::send(self.fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Waits until one of `fds` is readable or `timeout_ms` passes.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfd.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_read_in_host_order() {
        let mut b = [0u8; 12];
        b[0] = 1;
        b[1] = 1;
        b[2..4].copy_from_slice(&66u16.to_ne_bytes());
        b[4..6].copy_from_slice(&1448u16.to_ne_bytes());
        b[6..8].copy_from_slice(&34u16.to_ne_bytes());
        b[8..10].copy_from_slice(&16u16.to_ne_bytes());
        let h = VnetHeader::parse(&b).expect("header");
        assert_eq!(
            h,
            VnetHeader {
                flags: 1,
                gso_type: 1,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16
            }
        );
        assert_eq!(VnetHeader::parse(&b[..9]), None);
        assert_eq!(h.bytes(), b[..VNET_HDR_LEN]);
    }
}
