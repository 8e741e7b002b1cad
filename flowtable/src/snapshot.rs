//! The immutable tables workers decide with, and the lock-free cell that publishes them.
//!
//! Design: the controller validates a [`StateFile`] and builds a whole new [`Snapshot`] off the
//! packet path; [`SnapshotCell::publish`] swaps it in atomically (arc-swap) with the next
//! generation number. A worker holds a [`SnapshotReader`] and calls `load` once per batch,
//! which costs one atomic read when nothing changed; the batch is then decided entirely by
//! that one snapshot, never by a mix. Snapshots are read-only after construction and shared
//! by `Arc`, so any number of workers read them concurrently; old ones are freed when the last
//! worker moves on. The controller never waits for workers and workers never wait for it.

use crate::cidr::{Ipv4Cidr, PrefixTable};
use crate::hash::FastMap as HashMap;
use crate::packet::PortId;
use crate::state::StateFile;
use crate::wire::MacAddr;
use arc_swap::{ArcSwap, Cache};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// This node, as the pipeline needs it.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Underlay/VTEP address.
    pub ip: Ipv4Addr,
    /// Pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// Pods' gateway address (answered by the switch).
    pub gateway_ip: Ipv4Addr,
    /// Pods' gateway MAC.
    pub gateway_mac: MacAddr,
    /// Uplink MAC (outer source).
    pub uplink_mac: MacAddr,
    /// VTEP MAC (inner source of encapsulated frames).
    pub vtep_mac: MacAddr,
    /// Uplink MTU.
    pub uplink_mtu: u16,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
}

/// A pod on this node.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Pod name.
    pub name: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Pod MAC.
    pub mac: MacAddr,
    /// The port it is attached to.
    pub port: PortId,
}

/// Another node.
#[derive(Debug, Clone)]
pub struct RemoteNode {
    /// Node name.
    pub name: String,
    /// Underlay/VTEP address.
    pub ip: Ipv4Addr,
    /// Its pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// Its VTEP MAC (inner destination).
    pub vtep_mac: MacAddr,
    /// Next-hop MAC on the uplink (outer destination), when the state gives it.
    pub next_hop_mac: Option<MacAddr>,
    /// Precomputed outer headers towards this node (see [`crate::pipeline::OuterTemplate`]).
    pub outer: crate::pipeline::OuterTemplate,
}

/// Remote pod CIDRs of one prefix length `len` inside the supernet `net/net_len`: slot
/// `(ip - net) >> (32 - len)` holds the remote node index + 1 (0 = none).
#[derive(Debug, Clone)]
struct DirectRoutes {
    net: u32,
    net_mask: u32,
    shift: u32,
    slots: Vec<u32>,
}

impl DirectRoutes {
    fn build(remotes: &[RemoteNode]) -> Option<DirectRoutes> {
        let first = remotes.first()?;
        let len = first.pod_cidr.prefix_len();
        if len == 0 || remotes.iter().any(|r| r.pod_cidr.prefix_len() != len) {
            return None;
        }
        // The longest prefix covering every remote CIDR.
        let base = u32::from(first.pod_cidr.network());
        let common = remotes
            .iter()
            .map(|r| (u32::from(r.pod_cidr.network()) ^ base).leading_zeros())
            .min()
            .unwrap_or(32)
            .min(u32::from(len));
        if u32::from(len) - common > 16 {
            return None;
        }
        let net_mask = if common == 0 {
            0
        } else {
            u32::MAX << (32 - common)
        };
        let net = base & net_mask;
        let shift = 32 - u32::from(len);
        let mut slots = vec![0u32; 1usize << (u32::from(len) - common)];
        for (i, r) in remotes.iter().enumerate() {
            let slot = ((u32::from(r.pod_cidr.network()) - net) >> shift) as usize;
            *slots.get_mut(slot)? = i as u32 + 1;
        }
        Some(DirectRoutes {
            net,
            net_mask,
            shift,
            slots,
        })
    }

    #[inline]
    fn lookup(&self, ip: u32) -> Option<u32> {
        if ip & self.net_mask != self.net {
            return None;
        }
        let s = *self
            .slots
            .get(((ip - self.net).checked_shr(self.shift).unwrap_or(0)) as usize)?;
        s.checked_sub(1)
    }
}

/// A state file that cannot be applied: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct StateError {
    /// The field, as a path into the state file (`pods[2].ip`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> StateError {
    StateError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One generation of the switch's tables.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Generation number; strictly increasing across publishes.
    pub generation: u64,
    /// This node.
    pub node: NodeConfig,
    ports: Vec<String>,
    port_pod: Vec<Option<u32>>,
    /// Index in `pods` of the host port's entry, if there is a host port.
    host: Option<u32>,
    pods: Vec<Pod>,
    pod_by_ip: HashMap<u32, u32>,
    /// Direct index over the pod CIDR: slot `ip - network` holds pod index + 1 (0 = none).
    pod_slots: Vec<u32>,
    remotes: Vec<RemoteNode>,
    routes: PrefixTable<u32>,
    /// Direct index over remote pod CIDRs when they all have one prefix length and fit in a
    /// supernet of at most 65536 of them (the usual cluster layout): see [`DirectRoutes`].
    direct_routes: Option<DirectRoutes>,
    vtep_by_ip: HashMap<u32, u32>,
    /// Services, their ports, frontends and backends (shared between generations that did
    /// not change them).
    pub services: Arc<crate::services::ServiceTables>,
    /// What leaves the cluster is masqueraded how.
    pub egress: Arc<crate::egress::Egress>,
}

fn check_unicast(field: &str, m: MacAddr) -> Result<(), StateError> {
    if m.is_multicast() || m == MacAddr::default() {
        return Err(err(field, format!("{m} is not a unicast MAC address")));
    }
    Ok(())
}

fn check_port_name(field: &str, n: &str) -> Result<(), StateError> {
    crate::names::interface_name(n).map_err(|r| err(field, r))
}

impl Snapshot {
    /// Validates `state` and builds generation `generation` of the tables from it.
    pub fn build(state: &StateFile, generation: u64) -> Result<Snapshot, StateError> {
        Self::build_inner(state, generation, || {
            crate::services::build(state).map(Arc::new)
        })
    }

    /// Validates everything in `state` but its Services (which are ignored) and builds a
    /// snapshot with `services` as its Service tables, built and validated beforehand against
    /// the same nodes and settings (see [`crate::services::ServiceTables::update`]).
    pub fn build_with(
        state: &StateFile,
        services: Arc<crate::services::ServiceTables>,
        generation: u64,
    ) -> Result<Snapshot, StateError> {
        if !services.context_matches(state) {
            return Err(err(
                "services",
                "were validated against other nodes or Service settings",
            ));
        }
        Self::build_inner(state, generation, || Ok(services))
    }

    /// This snapshot with other Service tables (built by
    /// [`crate::services::ServiceTables::update`] from these ones, so validated against the
    /// same nodes and settings): the rest is copied, not rebuilt.
    pub fn with_services(&self, services: Arc<crate::services::ServiceTables>) -> Snapshot {
        Snapshot {
            services,
            ..self.clone()
        }
    }

    fn build_inner(
        state: &StateFile,
        generation: u64,
        services: impl FnOnce() -> Result<Arc<crate::services::ServiceTables>, StateError>,
    ) -> Result<Snapshot, StateError> {
        let n = &state.node;
        crate::names::check_nodes(state).map_err(|(f, r)| err(f, r))?;
        if n.pod_cidr.prefix_len() > 30 {
            return Err(err(
                "node.pod_cidr",
                format!("{} leaves no room for pods (at most /30)", n.pod_cidr),
            ));
        }
        if n.pod_cidr.contains(n.ip) {
            return Err(err(
                "node.ip",
                format!("{} is inside the node's pod CIDR {}", n.ip, n.pod_cidr),
            ));
        }
        let gateway_ip = match n.gateway_ip {
            Some(g) => g,
            None => n
                .pod_cidr
                .nth(1)
                .ok_or_else(|| err("node.pod_cidr", "has no first host address"))?,
        };
        if !n.pod_cidr.contains(gateway_ip)
            || gateway_ip == n.pod_cidr.network()
            || gateway_ip == n.pod_cidr.broadcast()
        {
            return Err(err(
                "node.gateway_ip",
                format!("{gateway_ip} is not a host address of {}", n.pod_cidr),
            ));
        }
        check_unicast("node.gateway_mac", n.gateway_mac)?;
        check_unicast("node.uplink_mac", n.uplink_mac)?;
        let vtep_mac = n.vtep_mac.unwrap_or(n.uplink_mac);
        check_unicast("node.vtep_mac", vtep_mac)?;
        check_port_name("node.uplink", &n.uplink)?;
        if !(576..=9216).contains(&n.uplink_mtu) {
            return Err(err(
                "node.uplink_mtu",
                format!("{} is outside 576..=9216", n.uplink_mtu),
            ));
        }
        if state.vxlan.vni > 0x00ff_ffff {
            return Err(err(
                "vxlan.vni",
                format!("{} does not fit in 24 bits", state.vxlan.vni),
            ));
        }
        if state.vxlan.port == 0 {
            return Err(err("vxlan.port", "must not be 0"));
        }

        let mut ports = vec![n.uplink.clone()];
        let mut port_pod = vec![None];
        let mut pods = Vec::with_capacity(state.pods.len());
        let mut pod_by_ip = HashMap::with_capacity_and_hasher(state.pods.len(), Default::default());
        let mut names = HashMap::default();
        let mut macs = HashMap::default();
        for (i, p) in state.pods.iter().enumerate() {
            let f = |k: &str| format!("pods[{i}].{k}");
            crate::names::pod_name(&p.name).map_err(|r| err(f("name"), r))?;
            if let Some(j) = names.insert(p.name.as_str(), i) {
                return Err(err(
                    f("name"),
                    format!("'{}' is also the name of pods[{j}]", p.name),
                ));
            }
            if !n.pod_cidr.contains(p.ip) {
                return Err(err(
                    f("ip"),
                    format!("{} is outside the node's pod CIDR {}", p.ip, n.pod_cidr),
                ));
            }
            if p.ip == n.pod_cidr.network() || p.ip == n.pod_cidr.broadcast() || p.ip == gateway_ip
            {
                return Err(err(
                    f("ip"),
                    format!("{} is the network, broadcast or gateway address", p.ip),
                ));
            }
            if let Some(j) = pod_by_ip.insert(u32::from(p.ip), i as u32) {
                return Err(err(
                    f("ip"),
                    format!("{} is also the address of pods[{j}]", p.ip),
                ));
            }
            check_unicast(&f("mac"), p.mac)?;
            if p.mac == n.gateway_mac {
                return Err(err(f("mac"), "is the gateway's MAC"));
            }
            if let Some(j) = macs.insert(p.mac, i) {
                return Err(err(
                    f("mac"),
                    format!("{} is also the MAC of pods[{j}]", p.mac),
                ));
            }
            check_port_name(&f("port"), &p.port)?;
            if let Some(j) = ports.iter().position(|x| *x == p.port) {
                let other = if j == 0 {
                    "the uplink".to_string()
                } else {
                    format!("pods[{}]", j - 1)
                };
                return Err(err(
                    f("port"),
                    format!("'{}' is already used by {other}", p.port),
                ));
            }
            let port =
                PortId(u16::try_from(ports.len()).map_err(|_| err(f("port"), "too many ports"))?);
            ports.push(p.port.clone());
            port_pod.push(Some(i as u32));
            pods.push(super::snapshot::Pod {
                name: p.name.clone(),
                ip: p.ip,
                mac: p.mac,
                port,
            });
        }

        // The host port: the node's kernel as one more "pod" whose address is the node's IP.
        let host = match (&n.host_port, n.host_mac) {
            (None, None) => None,
            (Some(_), None) => return Err(err("node.host_mac", "is required with host_port")),
            (None, Some(_)) => return Err(err("node.host_port", "is required with host_mac")),
            (Some(name), Some(mac)) => {
                check_port_name("node.host_port", name)?;
                if let Some(j) = ports.iter().position(|x| x == name) {
                    let other = if j == 0 {
                        "the uplink".to_string()
                    } else {
                        format!("pods[{}]", j - 1)
                    };
                    return Err(err(
                        "node.host_port",
                        format!("'{name}' is already used by {other}"),
                    ));
                }
                check_unicast("node.host_mac", mac)?;
                if mac == n.gateway_mac {
                    return Err(err("node.host_mac", "is the gateway's MAC"));
                }
                if let Some(j) = macs.get(&mac) {
                    return Err(err(
                        "node.host_mac",
                        format!("{mac} is also the MAC of pods[{j}]"),
                    ));
                }
                let port = PortId(
                    u16::try_from(ports.len())
                        .map_err(|_| err("node.host_port", "too many ports"))?,
                );
                ports.push(name.clone());
                port_pod.push(Some(pods.len() as u32));
                // Its address is the pod CIDR's network address (as Flannel gives flannel.1),
                // so other nodes accept what the node sends into the overlay.
                pod_by_ip.insert(u32::from(n.pod_cidr.network()), pods.len() as u32);
                pods.push(super::snapshot::Pod {
                    name: HOST_POD.to_string(),
                    ip: n.pod_cidr.network(),
                    mac,
                    port,
                });
                Some(pods.len() as u32 - 1)
            }
        };

        let mut remotes = Vec::with_capacity(state.nodes.len());
        let mut routes = PrefixTable::default();
        let mut vtep_by_ip =
            HashMap::with_capacity_and_hasher(state.nodes.len(), Default::default());
        for (i, r) in state.nodes.iter().enumerate() {
            let f = |k: &str| format!("nodes[{i}].{k}");
            if r.ip == n.ip {
                return Err(err(f("ip"), format!("{} is this node's address", r.ip)));
            }
            if let Some(j) = vtep_by_ip.insert(u32::from(r.ip), i as u32) {
                return Err(err(
                    f("ip"),
                    format!("{} is also the address of nodes[{j}]", r.ip),
                ));
            }
            if r.pod_cidr.overlaps(&n.pod_cidr) {
                return Err(err(
                    f("pod_cidr"),
                    format!(
                        "{} overlaps this node's pod CIDR {}",
                        r.pod_cidr, n.pod_cidr
                    ),
                ));
            }
            if let Some(j) = state.nodes[..i]
                .iter()
                .position(|o| o.pod_cidr.overlaps(&r.pod_cidr))
            {
                return Err(err(
                    f("pod_cidr"),
                    format!(
                        "{} overlaps nodes[{j}].pod_cidr {}",
                        r.pod_cidr, state.nodes[j].pod_cidr
                    ),
                ));
            }
            check_unicast(&f("vtep_mac"), r.vtep_mac)?;
            if let Some(m) = r.mac {
                check_unicast(&f("mac"), m)?;
            }
            routes.insert(r.pod_cidr, i as u32);
            let outer = crate::pipeline::OuterTemplate::new(
                n.uplink_mac,
                // (Resolved per packet when absent: see the pipeline's `remote_mac`.)
                r.mac.unwrap_or_default(),
                n.ip,
                r.ip,
                state.vxlan.port,
                state.vxlan.vni,
                vtep_mac,
                r.vtep_mac,
            );
            remotes.push(RemoteNode {
                outer,
                name: r.name.clone(),
                ip: r.ip,
                pod_cidr: r.pod_cidr,
                vtep_mac: r.vtep_mac,
                next_hop_mac: r.mac,
            });
        }

        // A direct-indexed table over the pod CIDR (at most 64 Ki slots, 256 KiB) makes the
        // hottest lookup two loads; larger CIDRs fall back to the hash map.
        let mut pod_slots = Vec::new();
        if n.pod_cidr.prefix_len() >= 16 {
            pod_slots = vec![0u32; 1usize << (32 - u32::from(n.pod_cidr.prefix_len()))];
            for (i, p) in pods.iter().enumerate() {
                let slot = (u32::from(p.ip) - u32::from(n.pod_cidr.network())) as usize;
                pod_slots[slot] = i as u32 + 1;
            }
        }

        let services = services()?;
        let egress = Arc::new(crate::egress::Egress::build(state)?);
        let direct_routes = DirectRoutes::build(&remotes);

        Ok(Snapshot {
            generation,
            node: NodeConfig {
                name: n.name.clone(),
                ip: n.ip,
                pod_cidr: n.pod_cidr,
                gateway_ip,
                gateway_mac: n.gateway_mac,
                uplink_mac: n.uplink_mac,
                vtep_mac,
                uplink_mtu: n.uplink_mtu,
                vni: state.vxlan.vni,
                vxlan_port: state.vxlan.port,
            },
            ports,
            port_pod,
            host,
            pods,
            pod_by_ip,
            pod_slots,
            remotes,
            routes,
            direct_routes,
            vtep_by_ip,
            services,
            egress,
        })
    }

    /// Port names, indexed by [`PortId`]; index 0 is the uplink.
    pub fn ports(&self) -> &[String] {
        &self.ports
    }

    /// The id of the port named `name`.
    pub fn port_id(&self, name: &str) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p == name)
            .map(|i| PortId(i as u16))
    }

    /// The name of a port.
    pub fn port_name(&self, p: PortId) -> Option<&str> {
        self.ports.get(usize::from(p.0)).map(String::as_str)
    }

    /// All pods, the host port's entry (named [`HOST_POD`]) last if there is one.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The host port's entry: the node's kernel, at the pod CIDR's network address (its
    /// source into the overlay) and at the node's IP.
    #[inline]
    pub fn host(&self) -> Option<&Pod> {
        self.pods.get(self.host? as usize)
    }

    /// All remote nodes.
    pub fn remotes(&self) -> &[RemoteNode] {
        &self.remotes
    }

    /// The pod attached to port `p`.
    #[inline]
    pub fn pod_on_port(&self, p: PortId) -> Option<&Pod> {
        let i = (*self.port_pod.get(usize::from(p.0))?)?;
        self.pods.get(i as usize)
    }

    /// The local pod with address `ip`.
    #[inline]
    pub fn pod_by_ip(&self, ip: Ipv4Addr) -> Option<&Pod> {
        if !self.pod_slots.is_empty() {
            let off = u32::from(ip).wrapping_sub(u32::from(self.node.pod_cidr.network())) as usize;
            let slot = *self.pod_slots.get(off)?;
            return self.pods.get(slot.checked_sub(1)? as usize);
        }
        let i = *self.pod_by_ip.get(&u32::from(ip))?;
        self.pods.get(i as usize)
    }

    /// The remote node whose pod CIDR holds `ip` (longest prefix).
    #[inline]
    pub fn remote_for(&self, ip: Ipv4Addr) -> Option<&RemoteNode> {
        if let Some(d) = &self.direct_routes {
            return self.remotes.get(d.lookup(u32::from(ip))? as usize);
        }
        let i = *self.routes.lookup(ip)?;
        self.remotes.get(i as usize)
    }

    /// The remote node whose VTEP address is `ip`.
    #[inline]
    pub fn remote_by_vtep(&self, ip: Ipv4Addr) -> Option<&RemoteNode> {
        let i = *self.vtep_by_ip.get(&u32::from(ip))?;
        self.remotes.get(i as usize)
    }
}

/// Name of the [`Pod`] entry that stands for the node's kernel behind the host port.
pub const HOST_POD: &str = "(host)";

/// The published snapshot: one writer (the controller), any number of readers (workers).
///
/// Each reader reports the generation it runs (an atomic it stores when it picks up a new
/// snapshot), so the writer can wait until a change is "programmed": run by every reader.
#[derive(Debug)]
pub struct SnapshotCell {
    current: Arc<ArcSwap<Snapshot>>,
    readers: std::sync::Mutex<Vec<std::sync::Weak<AtomicU64>>>,
}

/// Readers that had not reached a generation in time: (reader index, generation it runs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lagging(pub Vec<(usize, u64)>);

impl SnapshotCell {
    /// A cell holding `first` (its generation is kept).
    pub fn new(first: Snapshot) -> Self {
        SnapshotCell {
            current: Arc::new(ArcSwap::from_pointee(first)),
            readers: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Publishes `next` as the next generation and returns that generation number.
    ///
    /// Only one thread may publish at a time (the controller serialises its writes); readers
    /// are never blocked.
    pub fn publish(&self, mut next: Snapshot) -> u64 {
        let generation = self.current.load().generation + 1;
        next.generation = generation;
        self.current.store(Arc::new(next));
        generation
    }

    /// The current snapshot (for the controller and tools; workers use a reader).
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// A per-worker reader that caches the current snapshot and reports the generation it
    /// runs (see [`wait_programmed`](Self::wait_programmed)).
    pub fn reader(&self) -> SnapshotReader {
        let running = Arc::new(AtomicU64::new(self.current.load().generation));
        if let Ok(mut r) = self.readers.lock() {
            r.retain(|w| w.strong_count() > 0);
            r.push(Arc::downgrade(&running));
        }
        SnapshotReader {
            cache: Cache::new(Arc::clone(&self.current)),
            running,
        }
    }

    /// The generation each live reader runs, in the order they were made.
    pub fn running(&self) -> Vec<u64> {
        self.readers
            .lock()
            .map(|r| {
                r.iter()
                    .filter_map(|w| w.upgrade())
                    .map(|a| a.load(Ordering::Acquire))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until every live reader runs `generation` or a later one, calling `wake` (which
    /// should wake idle readers so that they look) while it waits. Spins briefly, then sleeps
    /// in steps of 20 µs. Errors with the readers still behind after `timeout`.
    pub fn wait_programmed(
        &self,
        generation: u64,
        timeout: Duration,
        wake: &dyn Fn(),
    ) -> Result<(), Lagging> {
        let readers: Vec<Arc<AtomicU64>> = self
            .readers
            .lock()
            .map(|r| r.iter().filter_map(|w| w.upgrade()).collect())
            .unwrap_or_default();
        let start = Instant::now();
        let mut woken = false;
        for round in 0u32.. {
            let behind: Vec<(usize, u64)> = readers
                .iter()
                .enumerate()
                .map(|(i, a)| (i, a.load(Ordering::Acquire)))
                .filter(|(_, g)| *g < generation)
                .filter(|(i, _)| Arc::strong_count(&readers[*i]) > 1)
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(Lagging(behind));
            }
            if !woken || round % 64 == 0 {
                wake();
                woken = true;
            }
            if round < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
        Ok(())
    }
}

/// A worker's handle on the published snapshot; call [`SnapshotReader::load`] once per batch.
#[derive(Debug)]
pub struct SnapshotReader {
    cache: Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>,
    running: Arc<AtomicU64>,
}

impl SnapshotReader {
    /// The newest snapshot; cheap when it has not changed since the last call. The caller
    /// decides its next frames with it, so its generation counts as running from here on.
    #[inline]
    pub fn load(&mut self) -> &Arc<Snapshot> {
        let s = self.cache.load();
        if self.running.load(Ordering::Relaxed) != s.generation {
            self.running.store(s.generation, Ordering::Release);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = include_str!("../../examples/node1.toml");

    fn build(edit: impl FnOnce(&mut StateFile)) -> Result<Snapshot, StateError> {
        let mut s = StateFile::parse(STATE).unwrap();
        edit(&mut s);
        Snapshot::build(&s, 1)
    }

    #[test]
    fn example_builds_with_stable_ports() {
        let s = build(|_| {}).unwrap();
        assert_eq!(s.ports(), ["uplink", "veth-a", "veth-b"]);
        assert_eq!(s.port_id("veth-b"), Some(PortId(2)));
        assert_eq!(
            s.pod_on_port(PortId(1)).unwrap().ip,
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert!(s.pod_on_port(PortId::UPLINK).is_none());
        assert!(s.pod_on_port(PortId(3)).is_none());
        assert_eq!(
            s.remote_for(Ipv4Addr::new(10, 244, 2, 200)).unwrap().name,
            "node2"
        );
        assert!(s.remote_for(Ipv4Addr::new(10, 244, 3, 1)).is_none());
        assert_eq!(
            s.remote_by_vtep(Ipv4Addr::new(198, 18, 0, 2)).unwrap().name,
            "node2"
        );
        assert_eq!(s.node.vtep_mac.to_string(), "02:00:00:00:ff:01");
    }

    #[test]
    fn every_invalid_field_is_named() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let cidr = |s: &str| s.parse::<Ipv4Cidr>().unwrap();
        let mac = |s: &str| s.parse::<MacAddr>().unwrap();
        type Edit = Box<dyn FnOnce(&mut StateFile)>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s.node.name.clear()), "node.name"),
            (
                Box::new(move |s| s.node.pod_cidr = cidr("10.244.1.0/31")),
                "node.pod_cidr",
            ),
            (Box::new(move |s| s.node.ip = ip("10.244.1.9")), "node.ip"),
            (
                Box::new(move |s| s.node.gateway_ip = Some(ip("10.244.1.0"))),
                "node.gateway_ip",
            ),
            (
                Box::new(move |s| s.node.gateway_mac = mac("01:00:5e:00:00:01")),
                "node.gateway_mac",
            ),
            (
                Box::new(move |s| s.node.uplink_mac = mac("00:00:00:00:00:00")),
                "node.uplink_mac",
            ),
            (Box::new(|s| s.node.uplink = "a/b".into()), "node.uplink"),
            (Box::new(|s| s.node.uplink_mtu = 100), "node.uplink_mtu"),
            (Box::new(|s| s.vxlan.vni = 1 << 24), "vxlan.vni"),
            (Box::new(|s| s.vxlan.port = 0), "vxlan.port"),
            (
                Box::new(|s| s.pods[1].name = s.pods[0].name.clone()),
                "pods[1].name",
            ),
            (
                Box::new(move |s| s.pods[1].ip = ip("10.244.2.3")),
                "pods[1].ip",
            ),
            (
                Box::new(move |s| s.pods[1].ip = ip("10.244.1.1")),
                "pods[1].ip",
            ),
            (
                Box::new(move |s| s.pods[1].ip = ip("10.244.1.255")),
                "pods[1].ip",
            ),
            (
                Box::new(move |s| s.pods[1].ip = ip("10.244.1.2")),
                "pods[1].ip",
            ),
            (Box::new(|s| s.pods[1].mac = s.pods[0].mac), "pods[1].mac"),
            (
                Box::new(|s| s.pods[1].mac = s.node.gateway_mac),
                "pods[1].mac",
            ),
            (
                Box::new(|s| s.pods[1].port = "veth-a".into()),
                "pods[1].port",
            ),
            (
                Box::new(|s| s.pods[1].port = "uplink".into()),
                "pods[1].port",
            ),
            (
                Box::new(|s| s.pods[1].port = "a-very-long-interface-name".into()),
                "pods[1].port",
            ),
            (
                Box::new(|s| s.nodes[0].name = "node1".into()),
                "nodes[0].name",
            ),
            (
                Box::new(move |s| s.nodes[0].ip = ip("198.18.0.1")),
                "nodes[0].ip",
            ),
            (
                Box::new(move |s| s.nodes[0].pod_cidr = cidr("10.244.0.0/16")),
                "nodes[0].pod_cidr",
            ),
            (
                Box::new(move |s| s.nodes[0].vtep_mac = mac("ff:ff:ff:ff:ff:ff")),
                "nodes[0].vtep_mac",
            ),
            (
                Box::new(move |s| s.nodes[0].mac = Some(mac("00:00:00:00:00:00"))),
                "nodes[0].mac",
            ),
            (
                Box::new(|s| {
                    let mut n = s.nodes[0].clone();
                    n.name = "node3".into();
                    n.ip = "198.18.0.3".parse().unwrap();
                    n.pod_cidr = "10.244.2.128/25".parse().unwrap();
                    s.nodes.push(n);
                }),
                "nodes[1].pod_cidr",
            ),
        ];
        for (edit, field) in cases {
            let e = build(edit).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(!e.reason.is_empty());
        }
    }

    #[test]
    fn direct_routes_agree_with_prefix_match() {
        let mut state = StateFile::parse(STATE).unwrap();
        let template = state.nodes[0].clone();
        for n in 3..60u8 {
            let mut r = template.clone();
            r.name = format!("node{n}");
            r.ip = Ipv4Addr::new(198, 18, 0, n);
            r.pod_cidr = Ipv4Cidr::new(Ipv4Addr::new(10, 244, n, 0), 24).unwrap();
            state.nodes.push(r);
        }
        let s = Snapshot::build(&state, 1).unwrap();
        assert!(s.direct_routes.is_some());
        for a in 0..=255u8 {
            for b in [0u8, 1, 7, 255] {
                let ip = Ipv4Addr::new(10, 244, a, b);
                let want = s
                    .routes
                    .lookup(ip)
                    .map(|i| s.remotes[*i as usize].name.clone());
                assert_eq!(s.remote_for(ip).map(|r| r.name.clone()), want, "{ip}");
            }
        }
        assert!(s.remote_for(Ipv4Addr::new(10, 245, 3, 1)).is_none());
        assert!(s.remote_for(Ipv4Addr::new(8, 8, 8, 8)).is_none());
        // Mixed prefix lengths fall back to longest-prefix match.
        state.nodes[5].pod_cidr = "10.250.0.0/16".parse().unwrap();
        let s = Snapshot::build(&state, 1).unwrap();
        assert!(s.direct_routes.is_none());
        assert_eq!(
            s.remote_for(Ipv4Addr::new(10, 250, 9, 9)).unwrap().name,
            state.nodes[5].name
        );
    }

    #[test]
    fn publish_bumps_generation_and_readers_follow() {
        let cell = SnapshotCell::new(build(|_| {}).unwrap());
        let mut reader = cell.reader();
        assert_eq!(reader.load().generation, 1);
        let g = cell.publish(build(|s| s.pods.pop().map(|_| ()).unwrap_or(())).unwrap());
        assert_eq!(g, 2);
        assert_eq!(reader.load().generation, 2);
        assert_eq!(reader.load().pods().len(), 1);
        assert_eq!(cell.load().generation, 2);
    }
}
