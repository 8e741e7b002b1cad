//! Egress: what leaves the cluster, how it is masqueraded, and where it goes next.
//!
//! Design: [`Egress`] is the validated `[egress]` section, built into each snapshot: which
//! destinations are the cluster's (every pod CIDR, the Service CIDR: never sent out), which
//! leave un-masqueraded (`non_masquerade_cidrs`), and the node's port range masqueraded flows use (also ICMP echo
//! identifiers). [`NextHops`] is what the node's routing and neighbour tables say about the
//! uplink (routes out of it, with or without a gateway, and the MACs of its neighbours): the
//! daemon learns them over netlink and publishes a new `NextHops` whenever they change, the
//! way snapshots are published ([`NextHopsCell`]). A destination the switch cannot resolve is
//! dropped, counted, and logged in [`NextHops::missed`], a small lock-free set the daemon
//! reads to ask the kernel to resolve those neighbours. Thread-safety: both are immutable
//! once built and shared by `Arc`; workers read the current `NextHops` with one atomic load
//! per packet that leaves the cluster; the miss log is written by workers with relaxed
//! atomic stores (a lost entry is only a later retry) and drained by the daemon.

use crate::cidr::{Ipv4Cidr, PrefixTable};
use crate::hash::FastMap as HashMap;
use crate::snapshot::StateError;
use crate::state::{PortRange, StateFile, MAX_NON_MASQUERADE_CIDRS};
use crate::wire::MacAddr;
use arc_swap::ArcSwap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;

/// Ports of a `service_config` NodePort (always outside the masquerade range).
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The validated `[egress]` section of a snapshot.
#[derive(Debug, Clone)]
pub struct Egress {
    /// Whether traffic leaving the cluster is masqueraded to the node's IP.
    pub masquerade: bool,
    /// The node's ports (and ICMP identifiers) masqueraded flows use.
    pub ports: PortRange,
    /// The cluster's own ranges (every pod CIDR, the Service CIDR): never leave the uplink.
    cluster: PrefixTable<()>,
    /// `non_masquerade_cidrs`: leave with the pod's address.
    keep: PrefixTable<()>,
}

/// What becomes of a pod's packet to an address that is no pod, Service or node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving {
    /// Inside the cluster's ranges (an unknown pod CIDR, an unused Service IP), or an
    /// address no router forwards (0/8, loopback, multicast, reserved, broadcast, the hairpin
    /// address): no route.
    Cluster,
    /// Out of the uplink with the pod's address.
    Routed,
    /// Out of the uplink, masqueraded to the node's IP.
    Masqueraded,
}

impl Egress {
    /// Validates `state.egress` against the rest of `state` and builds the tables.
    pub fn build(state: &StateFile) -> Result<Egress, StateError> {
        let e = &state.egress;
        let err = |field: String, reason: String| StateError { field, reason };
        if e.non_masquerade_cidrs.len() > MAX_NON_MASQUERADE_CIDRS {
            return Err(err(
                "egress.non_masquerade_cidrs".into(),
                format!(
                    "has {} entries; at most {MAX_NON_MASQUERADE_CIDRS}",
                    e.non_masquerade_cidrs.len()
                ),
            ));
        }
        let r = e.port_range;
        if r.first <= *NODE_PORTS.end() && r.last >= *NODE_PORTS.start() {
            return Err(err(
                "egress.port_range".into(),
                format!("{r} overlaps the NodePort range 30000-32767"),
            ));
        }
        if r.contains(state.vxlan.port) {
            return Err(err(
                "egress.port_range".into(),
                format!("{r} holds the VXLAN port {}", state.vxlan.port),
            ));
        }
        let mut cluster = PrefixTable::default();
        cluster.insert(state.node.pod_cidr, ());
        for n in &state.nodes {
            cluster.insert(n.pod_cidr, ());
        }
        cluster.insert(state.service_config.service_cidr, ());
        for (net, len) in [([0, 0, 0, 0], 8), ([127, 0, 0, 0], 8), ([224, 0, 0, 0], 3)] {
            // (224.0.0.0/3: multicast, reserved and the limited broadcast.)
            if let Some(c) = Ipv4Cidr::new(Ipv4Addr::from(net), len) {
                cluster.insert(c, ());
            }
        }
        if let Some(c) = Ipv4Cidr::new(state.service_config.hairpin_ip, 32) {
            cluster.insert(c, ());
        }
        let mut keep = PrefixTable::default();
        for c in &e.non_masquerade_cidrs {
            keep.insert(*c, ());
        }
        Ok(Egress {
            masquerade: e.masquerade,
            ports: r,
            cluster,
            keep,
        })
    }

    /// What becomes of a pod's packet to `dst` (no pod, Service frontend or node).
    #[inline]
    pub fn leaving(&self, dst: Ipv4Addr) -> Leaving {
        if self.cluster.lookup(dst).is_some() {
            Leaving::Cluster
        } else if !self.masquerade || self.keep.lookup(dst).is_some() {
            Leaving::Routed
        } else {
            Leaving::Masqueraded
        }
    }
}

impl Default for Egress {
    fn default() -> Self {
        Egress::build(&StateFile::parse(DEFAULT_STATE).unwrap_or_else(|_| unreachable!()))
            .unwrap_or_else(|_| unreachable!())
    }
}

/// A minimal state, for [`Egress::default`].
const DEFAULT_STATE: &str =
    "[node]\nname = \"n\"\nip = \"192.0.2.1\"\npod_cidr = \"10.0.0.0/24\"\n\
    gateway_mac = \"02:00:00:00:00:01\"\nuplink_mac = \"02:00:00:00:00:02\"\n";

/// Most routes and neighbours a [`NextHops`] holds (more are ignored, and counted by the
/// daemon): a node's uplink has a handful.
pub const MAX_NEXT_HOPS: usize = 4096;

/// Slots of the miss log.
const MISS_SLOTS: usize = 64;

/// Why a destination has no next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No route out of the uplink covers it.
    NoRoute,
    /// The route's gateway (or the on-link destination) has no known MAC yet.
    NoNeighbour(Ipv4Addr),
}

/// Where the node's kernel routes a prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Via {
    /// Out of the uplink through this gateway.
    Gateway(Ipv4Addr),
    /// Out of the uplink, on its link: the destination is its own next hop.
    OnLink,
    /// Elsewhere (another interface, blackhole, unreachable): not the uplink's to send.
    Elsewhere,
}

/// The uplink's routes and neighbours, as the node's kernel has them.
#[derive(Debug)]
pub struct NextHops {
    /// Destination prefix -> how the kernel routes it (longest prefix wins, as there).
    routes: PrefixTable<Via>,
    neighbours: HashMap<u32, MacAddr>,
    /// Neighbours a worker wanted and did not find (0 = empty slot).
    missed: Arc<[AtomicU32; MISS_SLOTS]>,
}

impl NextHops {
    /// Builds the table from routes out of the uplink and the uplink's resolved neighbours;
    /// `missed` carries over the previous table's miss log.
    pub fn new(
        routes: &[(Ipv4Cidr, Via)],
        neighbours: &[(Ipv4Addr, MacAddr)],
        previous: Option<&NextHops>,
    ) -> NextHops {
        let mut t = PrefixTable::default();
        for (c, g) in routes.iter().take(MAX_NEXT_HOPS) {
            t.insert(*c, *g);
        }
        let neighbours = neighbours
            .iter()
            .take(MAX_NEXT_HOPS)
            .map(|(ip, mac)| (u32::from(*ip), *mac))
            .collect();
        NextHops {
            routes: t,
            neighbours,
            missed: previous.map_or_else(
                || Arc::new(std::array::from_fn(|_| AtomicU32::new(0))),
                |p| Arc::clone(&p.missed),
            ),
        }
    }

    /// The MAC to send a packet for `dst` to, out of the uplink.
    #[inline]
    pub fn resolve(&self, dst: Ipv4Addr) -> Result<MacAddr, Miss> {
        let hop = match self.routes.lookup(dst) {
            Some(Via::Gateway(gw)) => *gw,
            Some(Via::OnLink) => dst,
            Some(Via::Elsewhere) | None => return Err(Miss::NoRoute),
        };
        self.neighbours
            .get(&u32::from(hop))
            .copied()
            .ok_or(Miss::NoNeighbour(hop))
    }

    /// Notes that `ip` needs resolving (lock-free; a collision overwrites an older miss).
    #[inline]
    pub fn note_miss(&self, ip: Ipv4Addr) {
        let v = u32::from(ip);
        let slot = (v.wrapping_mul(0x9e37_79b9) >> 26) as usize % MISS_SLOTS;
        if self.missed[slot].load(Relaxed) != v {
            self.missed[slot].store(v, Relaxed);
        }
    }

    /// The neighbours workers missed since the last call (for the daemon to resolve).
    pub fn take_missed(&self) -> Vec<Ipv4Addr> {
        self.missed
            .iter()
            .filter_map(|s| match s.swap(0, Relaxed) {
                0 => None,
                v => Some(Ipv4Addr::from(v)),
            })
            .collect()
    }

    /// How many routes and neighbours it holds.
    pub fn len(&self) -> (usize, usize) {
        (self.routes.len(), self.neighbours.len())
    }
}

impl Default for NextHops {
    fn default() -> Self {
        NextHops::new(&[], &[], None)
    }
}

/// The published [`NextHops`]: the daemon stores, workers load.
#[derive(Debug, Clone, Default)]
pub struct NextHopsCell(Arc<ArcSwap<NextHops>>);

impl NextHopsCell {
    /// A cell holding an empty table (every destination a miss).
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes `next` to every worker.
    pub fn store(&self, next: NextHops) {
        self.0.store(Arc::new(next));
    }

    /// The current table.
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<NextHops>> {
        self.0.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn resolves_by_longest_route_then_neighbour() {
        let gw_mac: MacAddr = "02:00:00:00:00:fe".parse().unwrap();
        let peer_mac: MacAddr = "02:00:00:00:00:64".parse().unwrap();
        let h = NextHops::new(
            &[
                (
                    "0.0.0.0/0".parse().unwrap(),
                    Via::Gateway(ip("198.18.0.254")),
                ),
                ("198.18.0.0/24".parse().unwrap(), Via::OnLink),
                ("203.0.113.128/25".parse().unwrap(), Via::Elsewhere),
            ],
            &[(ip("198.18.0.254"), gw_mac), (ip("198.18.0.100"), peer_mac)],
            None,
        );
        assert_eq!(h.resolve(ip("203.0.113.10")), Ok(gw_mac));
        // A more specific route elsewhere shadows the uplink's default, as in the kernel.
        assert_eq!(h.resolve(ip("203.0.113.200")), Err(Miss::NoRoute));
        assert_eq!(h.resolve(ip("198.18.0.100")), Ok(peer_mac));
        assert_eq!(
            h.resolve(ip("198.18.0.7")),
            Err(Miss::NoNeighbour(ip("198.18.0.7")))
        );
        let none = NextHops::new(&[], &[], None);
        assert_eq!(none.resolve(ip("203.0.113.10")), Err(Miss::NoRoute));
    }

    #[test]
    fn misses_are_logged_once_and_carried_over() {
        let h = NextHops::new(&[], &[], None);
        h.note_miss(ip("198.18.0.254"));
        h.note_miss(ip("198.18.0.254"));
        let next = NextHops::new(&[], &[], Some(&h));
        assert_eq!(next.take_missed(), vec![ip("198.18.0.254")]);
        assert!(h.take_missed().is_empty());
    }

    #[test]
    fn the_port_range_keeps_clear_of_node_ports_and_vxlan() {
        let base = "[node]\nname = \"n\"\nip = \"192.0.2.1\"\npod_cidr = \"10.0.0.0/24\"\n\
            gateway_mac = \"02:00:00:00:00:01\"\nuplink_mac = \"02:00:00:00:00:02\"\n";
        for (range, want) in [
            ("32000-40000", "overlaps the NodePort range"),
            ("8000-9000", "holds the VXLAN port 8472"),
        ] {
            let s =
                StateFile::parse(&format!("{base}[egress]\nport_range = \"{range}\"\n")).unwrap();
            let e = Egress::build(&s).unwrap_err();
            assert_eq!(e.field, "egress.port_range");
            assert!(e.reason.contains(want), "{}", e.reason);
        }
        for bad in ["100-200", "62000-61000", "61000", "a-b", "61000-70000"] {
            let e =
                StateFile::parse(&format!("{base}[egress]\nport_range = \"{bad}\"\n")).unwrap_err();
            assert!(e.to_string().contains("port_range"), "{bad}: {e}");
        }
        let s = StateFile::parse(&format!(
            "{base}[egress]\nnon_masquerade_cidrs = [\"192.168.0.0/16\"]\n"
        ))
        .unwrap();
        let e = Egress::build(&s).unwrap();
        assert_eq!(e.leaving(ip("203.0.113.10")), Leaving::Masqueraded);
        assert_eq!(e.leaving(ip("192.168.3.4")), Leaving::Routed);
        for inside in [
            "10.0.0.9",
            "10.96.0.1",
            "127.0.0.1",
            "224.0.0.251",
            "255.255.255.255",
            "169.254.42.1",
        ] {
            assert_eq!(e.leaving(ip(inside)), Leaving::Cluster, "{inside}");
        }
        assert_eq!(e.ports.len(), 4536);
    }
}
