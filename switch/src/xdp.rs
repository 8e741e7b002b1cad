//! The XDP program (`bpf/xsk_redirect.bpf.c`): loading, its maps, and attaching it.
//!
//! Design: one program object per daemon, attached to every port with a bpf_link
//! ([`Xdp::attach`]): the kernel detaches a link by itself when the last descriptor to it
//! closes, so a daemon that dies, even by SIGKILL, never leaves an interface redirecting into a
//! socket that is gone. The program's maps say which interfaces are ports and in which role,
//! which XSKMAP slot serves each, the node's IP and VXLAN port, and the Service frontends the
//! uplink must hand to the switch; everything else is passed to the kernel.
//! Thread-safety: used by the daemon's control thread only.

use flowtable::services::FrontendKind;
use flowtable::snapshot::Snapshot;
use libbpf_rs::{Link, MapCore, MapFlags, Object, ObjectBuilder};
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::sync::Arc;

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xsk_redirect.bpf.o"));

/// Role of a port in the XDP program's `ports` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node's uplink: only VXLAN for the node and Service frontends go to the switch.
    Uplink = 0,
    /// A pod's host-side veth: everything but ARP replies and traffic for the node's IP.
    Pod = 1,
}

/// What the XDP program itself counted (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct XdpStats {
    /// Frames redirected into a socket.
    pub redirected: u64,
    /// Frames passed to the kernel because they are the node's.
    pub passed: u64,
    /// Frames for the switch passed to the kernel because the port's socket was not ready.
    pub no_socket: u64,
    /// Frames seen on an interface that is not (or no longer) a port.
    pub unknown_port: u64,
    /// Frames on a receive queue other than 0: passed to the kernel on the uplink, dropped on
    /// pod ports.
    pub other_queue: u64,
}

/// Errors loading or programming the XDP program.
#[derive(Debug, thiserror::Error)]
#[error("XDP program: {what}: {source}")]
pub struct XdpError {
    what: String,
    #[source]
    source: libbpf_rs::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> XdpError {
    let what = what.into();
    move |source| XdpError { what, source }
}

/// The loaded program and its maps.
#[derive(Debug)]
pub struct Xdp {
    obj: Object,
    frontends: HashSet<[u8; 8]>,
    /// The frontend table the map was last made equal to (none while it is being changed).
    programmed: Option<Arc<flowtable::hash::FastMap<u64, flowtable::services::Frontend>>>,
    node: [u8; 8],
}

impl Xdp {
    /// Loads the embedded program into the kernel (not attached anywhere yet).
    pub fn load() -> Result<Xdp, XdpError> {
        let open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(err("open"))?;
        let obj = open.load().map_err(err("load (verifier or permissions)"))?;
        Ok(Xdp {
            obj,
            frontends: HashSet::new(),
            programmed: None,
            node: [0; 8],
        })
    }

    fn map(&self, name: &str) -> libbpf_rs::Map<'_> {
        self.obj
            .maps()
            .find(|m| m.name() == name)
            .expect("the embedded object defines this map")
    }

    /// Attaches the program to `ifindex` with a bpf_link (native mode where the driver has
    /// it); dropping the link detaches it.
    pub fn attach(&self, ifindex: u32) -> Result<Link, XdpError> {
        let prog = self
            .obj
            .progs_mut()
            .find(|p| p.name() == "nodeswitch_xdp")
            .expect("the embedded object defines this program");
        prog.attach_xdp(ifindex as i32)
            .map_err(err(format!("attach to ifindex {ifindex}")))
    }

    /// Declares `ifindex` a port served by XSKMAP slot `slot`.
    pub fn set_port(&self, ifindex: u32, slot: u32, role: Role) -> Result<(), XdpError> {
        let mut v = [0u8; 8];
        v[..4].copy_from_slice(&slot.to_ne_bytes());
        v[4..].copy_from_slice(&(role as u32).to_ne_bytes());
        self.map("ports")
            .update(&ifindex.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(err(format!("set port {ifindex}")))
    }

    /// Forgets port `ifindex` (its frames go to the kernel).
    pub fn remove_port(&self, ifindex: u32) {
        let _ = self.map("ports").delete(&ifindex.to_ne_bytes());
    }

    /// Puts the socket `fd` in XSKMAP slot `slot`.
    pub fn set_socket(&self, slot: u32, fd: RawFd) -> Result<(), XdpError> {
        self.map("xsks")
            .update(
                &slot.to_ne_bytes(),
                &(fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(err(format!("put socket in XSKMAP slot {slot}")))
    }

    /// Empties XSKMAP slot `slot`.
    pub fn remove_socket(&self, slot: u32) {
        let _ = self.map("xsks").delete(&slot.to_ne_bytes());
    }

    /// Programs the node's IP, VXLAN port and the Service frontends the uplink serves
    /// (NodePorts on the node's IP, LoadBalancer and external IPs) from `snap`.
    pub fn configure(&mut self, snap: &Snapshot) -> Result<(), XdpError> {
        let mut n = self.node;
        n[..4].copy_from_slice(&snap.node.ip.octets());
        n[4..6].copy_from_slice(&snap.node.vxlan_port.to_be_bytes());
        if snap.host().is_none() {
            n[6..8].copy_from_slice(&0u16.to_ne_bytes());
        }
        if n != self.node || self.programmed.is_none() {
            self.map("node")
                .update(&0u32.to_ne_bytes(), &n, MapFlags::ANY)
                .map_err(err("set node"))?;
            self.node = n;
        }
        if self
            .programmed
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &snap.services.frontends))
        {
            return Ok(()); // the same frontends as last time (an endpoint change)
        }
        self.programmed = None;
        let mut want = HashSet::new();
        for (&key, fe) in snap.services.frontends.iter() {
            if fe.kind == FrontendKind::ClusterIp {
                continue;
            }
            let ip = ((key >> 24) as u32).to_be_bytes();
            let port = ((key >> 8) as u16).to_be_bytes();
            let proto = key as u8;
            want.insert([ip[0], ip[1], ip[2], ip[3], port[0], port[1], proto, 0]);
        }
        // The set follows the map entry by entry, so a failure part way (a full map) leaves
        // it true and the next configure finishes the job.
        let stale: Vec<[u8; 8]> = self.frontends.difference(&want).copied().collect();
        for k in stale {
            if self.map("frontends").delete(&k).is_ok() {
                self.frontends.remove(&k);
            }
        }
        let new: Vec<[u8; 8]> = want.difference(&self.frontends).copied().collect();
        for k in new {
            self.map("frontends")
                .update(&k, &[1u8], MapFlags::ANY)
                .map_err(err("add a Service frontend"))?;
            self.frontends.insert(k);
        }
        self.programmed = Some(Arc::clone(&snap.services.frontends));
        Ok(())
    }

    /// Whether pod -> node traffic goes through the switch to the host port (set once the
    /// host port is attached; cleared when it goes) or is passed to the kernel.
    pub fn set_host_ready(&mut self, ready: bool) -> Result<(), XdpError> {
        let mut n = self.node;
        n[6..8].copy_from_slice(&u16::from(ready).to_ne_bytes());
        if n != self.node {
            self.map("node")
                .update(&0u32.to_ne_bytes(), &n, MapFlags::ANY)
                .map_err(err("set node"))?;
            self.node = n;
        }
        Ok(())
    }

    /// The program's own counters, summed over CPUs.
    pub fn stats(&self) -> XdpStats {
        let map = self.map("stats");
        let get = |i: u32| -> u64 {
            map.lookup_percpu(&i.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .map(|cpus| {
                    cpus.iter()
                        .filter_map(|b| b.get(..8))
                        .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                        .sum()
                })
                .unwrap_or(0)
        };
        XdpStats {
            redirected: get(0),
            passed: get(1),
            no_socket: get(2),
            unknown_port: get(3),
            other_queue: get(4),
        }
    }
}
