//! The XDP program (`bpf/xsk_redirect.bpf.c`): loading, its maps, attaching it, and its pins.
//!
//! Design: one program object per daemon, attached to every port with a bpf_link
//! ([`Xdp::attach`]). The program's maps say which interfaces are ports and in which role,
//! which XSKMAP slot serves each, the node's IP and VXLAN port, the Service frontends and the
//! masquerade port range the uplink must hand to the switch; everything else is passed to the
//! kernel.
//!
//! Restarts: with a pin directory (on bpffs, `--bpf-dir`), every map is pinned there by name
//! and every link as `link-IFINDEX`, so they outlive the process. The next switchd loads its
//! object over the pinned maps (libbpf reuses a pinned map whose definition matches; one that
//! does not, from a build with other maps, is replaced), takes each pinned link over by
//! swapping its program for the new one (`bpf_link_update`: no moment without a program),
//! and removes pins of interfaces that are no longer ports. While switchd is gone its
//! sockets are gone from the XSKMAP and the program drops the switch's frames; the
//! [`Heartbeat`] it beats says for how long (the grace period), after which the program
//! passes everything to the kernel. Without a pin directory a link detaches when the process
//! exits, as before. [`cleanup`] removes every pin (detaching the links).
//! Pod ports of the `vnet` kind carry the object's tc program instead ([`Hook::Tc`]): the
//! same decision for the same maps, made at tcx ingress after the switch's packet socket
//! has seen the frame; the same pins and heartbeat.
//! Thread-safety: used by the daemon's control thread only; a [`Heartbeat`] is its own map
//! handle, beaten from the housekeeping thread.

use flowtable::services::FrontendKind;
use flowtable::snapshot::Snapshot;
use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Object, ObjectBuilder};
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xsk_redirect.bpf.o"));

/// The maps the program defines (each pinned under its name).
const MAPS: [&str; 7] = [
    "xsks",
    "ports",
    "node",
    "frontends",
    "stats",
    "heartbeat",
    "egress",
];
/// A pinned link's file name: this prefix and the interface's index.
const LINK_PREFIX: &str = "link-";
/// bpffs's `f_type` (`BPF_FS_MAGIC`).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted on a node.
pub const BPF_MOUNT: &str = "/sys/fs/bpf";

/// Role of a port in the XDP program's `ports` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The node's uplink: only VXLAN for the node and Service frontends go to the switch.
    Uplink = 0,
    /// A pod's host-side veth: everything but ARP replies and traffic for the node's IP.
    Pod = 1,
}

/// Which of the object's programs a port's link runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `nodeswitch_xdp` at XDP: frames for the switch are redirected into its AF_XDP socket.
    Xdp,
    /// `nodeswitch_tc` at tcx ingress (a `vnet` pod port): the switch's packet socket has
    /// already seen the frame; what it serves is dropped before the node's stack.
    Tc,
}

/// Attaches `prog` at tcx ingress of `ifindex` (libbpf-rs 0.25 has no wrapper for it).
fn attach_tcx(prog: &libbpf_rs::ProgramMut<'_>, ifindex: u32) -> libbpf_rs::Result<Link> {
    use libbpf_rs::AsRawLibbpf;
    let raw = prog.as_libbpf_object();
    // SAFETY: `raw` is the loaded program `prog` borrows (live for this call); NULL options
    // are libbpf's defaults; the call returns a new link object or NULL with errno set.
    #[allow(unsafe_code)]
    let link = unsafe {
        libbpf_sys::bpf_program__attach_tcx(raw.as_ptr(), ifindex as i32, std::ptr::null())
    };
    let Some(link) = std::ptr::NonNull::new(link) else {
        return Err(libbpf_rs::Error::from(std::io::Error::last_os_error()));
    };
    // SAFETY: `link` is the live link object libbpf just returned; the Link owns it from
    // here (destroys it on drop) and nothing else refers to it.
    #[allow(unsafe_code)]
    Ok(unsafe { Link::from_ptr(link) })
}

/// What the XDP program itself counted (summed over CPUs).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct XdpStats {
    /// Frames redirected into a socket.
    pub redirected: u64,
    /// Frames passed to the kernel because they are the node's.
    pub passed: u64,
    /// Frames for the switch dropped because the port's socket was not there (switchd
    /// restarting, or a port being bound): held for the next switchd to serve.
    pub held: u64,
    /// Frames seen on an interface that is not (or no longer) a port.
    pub unknown_port: u64,
    /// Frames on a receive queue other than 0: passed to the kernel on the uplink, dropped on
    /// pod ports.
    pub other_queue: u64,
    /// Frames passed to the kernel because no switchd beat the heartbeat within the grace
    /// period (switchd gone: the node's kernel serves its interfaces).
    pub unserved: u64,
}

/// What loading found pinned by an earlier switchd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// No pin directory: links detach when this process exits.
    Off,
    /// Nothing was pinned: new maps, pinned now.
    Fresh,
    /// The pinned maps were reused (their contents included).
    Reused,
    /// Pinned maps that do not match this build (the reason) were replaced.
    Replaced(String),
}

/// Errors loading or programming the XDP program.
#[derive(Debug, thiserror::Error)]
#[error("XDP program: {what}: {source:#}")]
pub struct XdpError {
    what: String,
    #[source]
    source: libbpf_rs::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> XdpError {
    let what = what.into();
    move |source| XdpError { what, source }
}

/// What an attach failure names: the interface and its MTU. (With the multi-buffer program a
/// veth takes any MTU Linux allows, 65535; a kernel without multi-buffer XDP refuses the
/// program when it is loaded, before any attach.)
fn attach_context(ifindex: u32) -> String {
    let name = crate::xsk::ifname(ifindex);
    let mtu = name.as_deref().and_then(|n| {
        std::fs::read_to_string(format!("/sys/class/net/{n}/mtu"))
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    });
    format!(
        "attach to {} (ifindex {ifindex}{})",
        name.as_deref().unwrap_or("?"),
        mtu.map_or(String::new(), |m| format!(", MTU {m}"))
    )
}

/// The loaded program and its maps.
#[derive(Debug)]
pub struct Xdp {
    obj: Object,
    pins: Option<PathBuf>,
    frontends: HashSet<[u8; 8]>,
    /// The frontend table the map was last made equal to (none while it is being changed).
    programmed: Option<Arc<flowtable::hash::FastMap<u64, flowtable::services::Frontend>>>,
    node: [u8; 8],
}

impl Xdp {
    /// Loads the embedded program into the kernel (not attached anywhere yet), over the
    /// maps pinned in `pins` if there are any that match (see the module docs).
    pub fn load(pins: Option<&Path>) -> Result<(Xdp, Pinned), XdpError> {
        let Some(dir) = pins else {
            return Ok((Xdp::open(None)?, Pinned::Off));
        };
        prepare_dir(dir)?;
        let had = MAPS.iter().any(|m| dir.join(m).exists());
        match Xdp::open(Some(dir)) {
            Ok(x) => Ok((x, if had { Pinned::Reused } else { Pinned::Fresh })),
            Err(e) if had => {
                // Another build's maps: new ones (the old links keep the old maps until
                // they are taken over below).
                for m in MAPS {
                    let _ = std::fs::remove_file(dir.join(m));
                }
                let x = Xdp::open(Some(dir))?;
                Ok((x, Pinned::Replaced(e.to_string())))
            }
            Err(e) => Err(e),
        }
    }

    fn open(pins: Option<&Path>) -> Result<Xdp, XdpError> {
        let mut open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(err("open"))?;
        if let Some(dir) = pins {
            for mut m in open.maps_mut() {
                let name = m.name().to_string_lossy().into_owned();
                if MAPS.contains(&name.as_str()) {
                    m.set_pin_path(dir.join(&name))
                        .map_err(err(format!("pin path of map {name}")))?;
                }
            }
        }
        let obj = open.load().map_err(err(
            "load (verifier, permissions, or pinned maps that differ)",
        ))?;
        let mut x = Xdp {
            obj,
            pins: pins.map(Path::to_path_buf),
            frontends: HashSet::new(),
            programmed: None,
            node: [0; 8],
        };
        // What a previous switchd put in the reused maps: frontends are diffed from it.
        let keys: Vec<Vec<u8>> = x.map("frontends").keys().collect();
        for k in keys {
            if let Ok(k) = <[u8; 8]>::try_from(k.as_slice()) {
                x.frontends.insert(k);
            }
        }
        Ok(x)
    }

    /// A handle on the heartbeat map for the housekeeping thread; `grace` is how long the
    /// program holds the switch's frames after the last beat.
    pub fn heartbeat(&self, grace: Duration) -> Result<Heartbeat, XdpError> {
        let map = MapHandle::try_from(&self.map("heartbeat")).map_err(err("heartbeat map"))?;
        let hb = Heartbeat {
            map,
            // At most 2^62 ns (146 years): the program adds it to a timestamp.
            grace_ns: grace.as_nanos().min(1 << 62) as u64,
        };
        hb.beat()?;
        Ok(hb)
    }

    /// Removes the ports of interfaces not in `keep` from the ports map, and their pinned
    /// links (which detaches them): what a previous switchd served that this one does not.
    pub fn forget_others(&self, keep: &[u32]) {
        let ports = self.map("ports");
        let stale: Vec<Vec<u8>> = ports
            .keys()
            .filter(|k| {
                <[u8; 4]>::try_from(k.as_slice())
                    .is_ok_and(|b| !keep.contains(&u32::from_ne_bytes(b)))
            })
            .collect();
        for k in stale {
            let _ = ports.delete(&k);
        }
        let Some(dir) = &self.pins else { return };
        for (ifindex, path) in pinned_links(dir) {
            if !keep.contains(&ifindex) {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn map(&self, name: &str) -> libbpf_rs::Map<'_> {
        self.obj
            .maps()
            .find(|m| m.name() == name)
            .expect("the embedded object defines this map")
    }

    /// Attaches the program of `hook` to `ifindex` with a bpf_link (XDP: native mode where
    /// the driver has it; tc: tcx ingress), or takes over the link a previous switchd pinned
    /// there (true); dropping the link detaches it unless it is pinned ([`Xdp::detach`] does
    /// both). A pinned link of the other hook (switchd restarted with another
    /// `--pod-ports`) is replaced.
    pub fn attach(&self, ifindex: u32, hook: Hook) -> Result<(Link, bool), XdpError> {
        let name = match hook {
            Hook::Xdp => "nodeswitch_xdp",
            Hook::Tc => "nodeswitch_tc",
        };
        let prog = self
            .obj
            .progs_mut()
            .find(|p| p.name() == name)
            .expect("the embedded object defines this program");
        let pin = self
            .pins
            .as_ref()
            .map(|d| d.join(format!("{LINK_PREFIX}{ifindex}")));
        // The other hook's link (switchd restarted with another --pod-ports) stays attached
        // until the new one is: no moment with neither (XDP runs before tc, and each drops
        // what the switch serves while it restarts).
        let mut stale = None;
        if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
            if let Ok(mut link) = Link::open(path) {
                if link.update_prog(&prog).is_ok() {
                    return Ok((link, true));
                }
                stale = Some(link);
            }
            // A link that cannot be updated (its interface went away, or the other hook's):
            // a new one.
            let _ = std::fs::remove_file(path);
        }
        let mut link = match hook {
            Hook::Xdp => prog.attach_xdp(ifindex as i32),
            Hook::Tc => attach_tcx(&prog, ifindex),
        }
        .map_err(|e| err(attach_context(ifindex))(e))?;
        if let Some(path) = pin {
            if let Err(e) = link.pin(&path) {
                return Err(err(format!("pin the link of ifindex {ifindex}"))(e));
            }
        }
        if let Some(old) = stale {
            let _ = old.detach();
        }
        Ok((link, false))
    }

    /// Detaches a port's link for good (unpinned first).
    pub fn detach(&self, mut link: Link) {
        if link.pin_path().is_some() {
            let _ = link.unpin();
        }
        let _ = link.detach();
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
        // The masquerade ports: replies to them on the node's IP come to the switch.
        let e = &snap.egress;
        let mut eg = [0u8; 8];
        eg[..2].copy_from_slice(&e.ports.first.to_ne_bytes());
        eg[2..4].copy_from_slice(&e.ports.last.to_ne_bytes());
        eg[4..8].copy_from_slice(&u32::from(e.masquerade).to_ne_bytes());
        self.map("egress")
            .update(&0u32.to_ne_bytes(), &eg, MapFlags::ANY)
            .map_err(err("set egress"))?;
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
            held: get(2),
            unknown_port: get(3),
            other_queue: get(4),
            unserved: get(5),
        }
    }
}

/// The heartbeat map: while it is fresh the program holds the switch's frames.
#[derive(Debug)]
pub struct Heartbeat {
    map: MapHandle,
    grace_ns: u64,
}

impl Heartbeat {
    /// Records that a switchd is alive now.
    pub fn beat(&self) -> Result<(), XdpError> {
        let now = crate::shm::monotonic().as_nanos() as u64;
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&now.to_ne_bytes());
        v[8..].copy_from_slice(&self.grace_ns.to_ne_bytes());
        self.map
            .update(&0u32.to_ne_bytes(), &v, MapFlags::ANY)
            .map_err(err("beat the heartbeat"))
    }
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    crate::shm::statfs_type(&c) == Some(BPF_FS_MAGIC)
}

/// Makes `dir` a directory on bpffs: mounts bpffs on [`BPF_MOUNT`] if `dir` is below it
/// and nothing is mounted there yet (as Cilium does).
fn prepare_dir(dir: &Path) -> Result<(), XdpError> {
    let io = |what: String| move |e: std::io::Error| err(what)(libbpf_rs::Error::from(e));
    let parent = dir.parent().unwrap_or(dir);
    let on_fs = |p: &Path| p.exists() && is_bpffs(p);
    if !on_fs(dir)
        && !on_fs(parent)
        && dir.starts_with(BPF_MOUNT)
        && !is_bpffs(Path::new(BPF_MOUNT))
    {
        crate::shm::mount_bpffs(Path::new(BPF_MOUNT))
            .map_err(io(format!("mount bpffs on {BPF_MOUNT}")))?;
        let own = |p: &str| std::fs::read_link(p).ok();
        if own("/proc/self/ns/mnt") != own("/proc/1/ns/mnt") {
            eprintln!(
                "switchd: warning: mounted bpffs on {BPF_MOUNT} in this process's own mount \
                 namespace (ip netns exec makes one): the pins go when it exits, so a \
                 restart is not held; mount bpffs in the host's namespace or pass a \
                 --bpf-dir on one"
            );
        }
    }
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    if !is_bpffs(dir) {
        return Err(err(format!(
            "pin directory {}: not on a bpf filesystem (mount -t bpf bpf DIR, or pass a \
             --bpf-dir on one)",
            dir.display()
        ))(libbpf_rs::Error::from_raw_os_error(
            libc::EINVAL,
        )));
    }
    Ok(())
}

/// The links pinned in `dir`: (ifindex, path).
fn pinned_links(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let ifindex = name.strip_prefix(LINK_PREFIX)?.parse().ok()?;
            Some((ifindex, e.path()))
        })
        .collect()
}

/// `switchd cleanup`: removes every link (detaching the program) and map pinned in `dir`,
/// then `dir`; returns what it removed.
pub fn cleanup(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut gone = Vec::new();
    if !dir.exists() {
        return Ok(gone);
    }
    for (ifindex, path) in pinned_links(dir) {
        if let Ok(link) = Link::open(&path) {
            let _ = link.detach();
        }
        std::fs::remove_file(&path)?;
        gone.push(format!("link on ifindex {ifindex}"));
    }
    for m in MAPS {
        let p = dir.join(m);
        if p.exists() {
            std::fs::remove_file(&p)?;
            gone.push(format!("map {m}"));
        }
    }
    std::fs::remove_dir(dir)?;
    Ok(gone)
}
