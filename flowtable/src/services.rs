//! Service tables in a snapshot: frontends (ClusterIP, NodePort, LoadBalancer and external IPs)
//! to Service ports, their backends and Maglev tables.
//!
//! Design: everything is built and validated with the snapshot, off the packet path, and is
//! read-only afterwards. A frontend lookup is one hash probe on (address, port, protocol); a
//! backend pick is one Maglev table read. Each Service port keeps two tables: over all usable
//! endpoints (Cluster policies) and over this node's usable endpoints (Local policies).
//! "Usable" means ready; if no endpoint is ready, serving endpoints that are terminating are
//! used instead (as kube-proxy does), so a rolling update does not blackhole traffic.
//!
//! Updates are incremental ([`ServiceTables::update`]): Services and their ports live in slots
//! behind `Arc`s, so the next generation shares every Service that did not change with the
//! previous one and a one-endpoint change rebuilds one Service's tables, not ten thousand.
//! A Maglev table's size follows its backend count ([`table_size`]): the smallest prime of a
//! fixed ladder with at least [`ENTRIES_PER_BACKEND`] entries per backend, up to the configured
//! `maglev_table_size`. Tables are built on several threads when many Services change at once.
//!
//! Thread-safety: a `ServiceTables` is immutable once built and shared by the workers through
//! the snapshot; `update` returns a new one and leaves `self` untouched.

use crate::cidr::Ipv4Cidr;
use crate::hash::FastMap;
use crate::maglev::Maglev;
use crate::snapshot::StateError;
use crate::state::{ServiceSpec, SessionAffinity, StateFile, TrafficPolicy};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// An endpoint of a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Port on the pod (the Service port's targetPort).
    pub port: u16,
    /// True if the pod runs on this node.
    pub local: bool,
    /// conditions.ready.
    pub ready: bool,
    /// conditions.serving.
    pub serving: bool,
    /// conditions.terminating.
    pub terminating: bool,
}

/// Items in shared chunks of 64: cloning copies one pointer per chunk, replacing an item copies
/// its chunk (64 pointers); items themselves are shared. This keeps the next generation of
/// ten thousand Services a few microseconds away from the current one.
#[derive(Debug)]
pub struct Slots<T> {
    chunks: Vec<Arc<Vec<Arc<T>>>>,
    len: usize,
}

const CHUNK: usize = 64;

impl<T> Clone for Slots<T> {
    fn clone(&self) -> Self {
        Slots {
            chunks: self.chunks.clone(),
            len: self.len,
        }
    }
}

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Default> Slots<T> {
    /// Number of slots.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no slots.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The item in slot `i`.
    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK).map(|a| &**a)
    }

    /// Every slot's item, in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.chunks.iter().flat_map(|c| c.iter().map(|a| &**a))
    }

    fn push_default(&mut self) -> u32 {
        if self.len.is_multiple_of(CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(CHUNK)));
        }
        if let Some(c) = self.chunks.last_mut() {
            Arc::make_mut(c).push(Arc::default());
        }
        self.len += 1;
        self.len as u32 - 1
    }

    fn set(&mut self, i: usize, item: Arc<T>) -> Arc<T> {
        match self.chunks.get_mut(i / CHUNK) {
            Some(c) => match Arc::make_mut(c).get_mut(i % CHUNK) {
                Some(slot) => std::mem::replace(slot, item),
                None => item,
            },
            None => item,
        }
    }
}

impl<T: Default> std::ops::Index<usize> for Slots<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

/// Entries per backend a Maglev table has at least (unless `maglev_table_size` caps it): with
/// 32, backends' shares differ by at most about 3%.
pub const ENTRIES_PER_BACKEND: usize = 32;

/// The primes Maglev tables are sized from (each about twice the one before).
const LADDER: [usize; 13] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071, 262139, 524287, 1_000_003,
];

/// The Maglev table size for `backends` backends: the smallest ladder prime with at least
/// [`ENTRIES_PER_BACKEND`] entries per backend, at most `max` (itself a prime). Sizes change
/// only when the backend count crosses a ladder step, so adding or removing one backend
/// usually keeps Maglev's minimal disruption.
/// Past `max` only when there are more backends than `max` entries: then the smallest step
/// with at least one entry per backend (every backend is served).
pub fn table_size(backends: usize, max: usize) -> usize {
    let want = backends.saturating_mul(ENTRIES_PER_BACKEND);
    let size = LADDER
        .iter()
        .copied()
        .find(|&p| p >= want)
        .unwrap_or(max)
        .min(max);
    if size >= backends {
        return size;
    }
    LADDER
        .iter()
        .copied()
        .find(|&p| p >= backends)
        .unwrap_or(LADDER[LADDER.len() - 1])
}

/// A set of backends to choose from, with its Maglev table (indices into `members`).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Indices into the Service port's backends.
    pub members: Vec<u32>,
    /// The lookup table over `members`; `None` when there are none.
    pub maglev: Option<Maglev>,
}

impl Selection {
    fn build(backends: &[Backend], filter: impl Fn(&Backend) -> bool, max: usize) -> Selection {
        let ready: Vec<u32> = (0..backends.len() as u32)
            .filter(|&i| filter(&backends[i as usize]) && backends[i as usize].ready)
            .collect();
        let members = if ready.is_empty() {
            (0..backends.len() as u32)
                .filter(|&i| {
                    let b = &backends[i as usize];
                    filter(b) && b.serving && b.terminating
                })
                .collect()
        } else {
            ready
        };
        let keys: Vec<(Ipv4Addr, u16)> = members
            .iter()
            .map(|&i| (backends[i as usize].ip, backends[i as usize].port))
            .collect();
        let maglev = Maglev::build(&keys, table_size(keys.len(), max));
        Selection { members, maglev }
    }

    /// Picks a backend index (into the Service port's backends) for a flow hash.
    #[inline]
    pub fn pick(&self, hash: u64) -> Option<u32> {
        let m = self.maglev.as_ref()?;
        self.members.get(m.pick(hash)).copied()
    }

    /// True if there is nothing to choose from.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// One port of one Service.
#[derive(Debug, Clone, Default)]
pub struct ServicePort {
    /// Index of the Service in the snapshot.
    pub service: u32,
    /// Port name.
    pub name: String,
    /// IP protocol number.
    pub protocol: u8,
    /// The Service port.
    pub port: u16,
    /// The endpoints' port.
    pub target_port: u16,
    /// The NodePort, if any.
    pub node_port: Option<u16>,
    /// Every endpoint, in any condition.
    pub backends: Vec<Backend>,
    /// Usable endpoints anywhere in the cluster.
    pub cluster: Selection,
    /// Usable endpoints on this node.
    pub local: Selection,
    /// The frontend keys of this port (see [`frontend_key`]).
    pub frontend_keys: Vec<u64>,
}

impl ServicePort {
    /// True if `ip:port` is one of this port's endpoints (in any condition).
    pub fn has_backend(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.backends.iter().any(|b| b.ip == ip && b.port == port)
    }
}

/// A Service.
#[derive(Debug, Clone)]
pub struct Service {
    /// `namespace/name` (empty: a free slot).
    pub name: String,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// ClientIP affinity timeout in seconds, if affinity is on.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy is Local.
    pub external_local: bool,
    /// internalTrafficPolicy is Local.
    pub internal_local: bool,
    /// Its health-check node port, if it has one.
    pub health_check_node_port: Option<u16>,
    /// Indices of its ports in the snapshot.
    pub ports: Vec<u32>,
}

/// A health-check node port this node serves (`ServiceTables::health_checks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The TCP port on the node's IP.
    pub port: u16,
    /// The Service, `namespace/name`.
    pub service: String,
    /// Its ready endpoints on this node.
    pub local_endpoints: u32,
}

impl Service {
    /// The Service `s` describes, with its ports in these slots.
    fn of(s: &ServiceSpec, ports: Vec<u32>) -> Service {
        Service {
            name: s.name.clone(),
            cluster_ip: s.cluster_ip,
            affinity_timeout: (s.session_affinity == SessionAffinity::ClientIp)
                .then_some(s.affinity_timeout_seconds),
            external_local: s.external_traffic_policy == TrafficPolicy::Local,
            internal_local: s.internal_traffic_policy == TrafficPolicy::Local,
            health_check_node_port: s.health_check_node_port,
            ports,
        }
    }
}

impl Default for Service {
    fn default() -> Self {
        Service {
            name: String::new(),
            cluster_ip: Ipv4Addr::UNSPECIFIED,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
            health_check_node_port: None,
            ports: Vec::new(),
        }
    }
}

/// How traffic reached a Service port, which decides the policy that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendKind {
    /// ClusterIP:port, from inside the cluster.
    ClusterIp,
    /// Node IP:nodePort, from outside.
    NodePort,
    /// LoadBalancer or external IP:port, from outside.
    External,
}

/// A frontend: where a Service port is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frontend {
    /// Index of the Service port.
    pub port: u32,
    /// Which kind of address.
    pub kind: FrontendKind,
}

/// The packed key of a frontend or of an address:port:protocol.
#[inline]
pub fn frontend_key(ip: Ipv4Addr, port: u16, protocol: u8) -> u64 {
    (u64::from(u32::from(ip)) << 24) | (u64::from(port) << 8) | u64::from(protocol)
}

/// What Services are validated against outside themselves: when it changes, every Service is
/// rebuilt ([`ServiceTables::context_matches`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Context {
    node_name: String,
    node_ip: Ipv4Addr,
    /// Whether this node has a host port (its kernel behind the switch: host-network
    /// endpoints on this node need it).
    host_port: bool,
    /// Every node (this node too) by name: its pod CIDR and its own address (host-network
    /// endpoints). One hash lookup per endpoint: a big apply looks up 100,000.
    nodes: FastMap<String, (Ipv4Cidr, Ipv4Addr)>,
    node_ips: Vec<Ipv4Addr>,
    vxlan_port: u16,
    service_cidr: Ipv4Cidr,
    max_table: usize,
    hairpin_ip: Ipv4Addr,
}

impl Context {
    fn of(state: &StateFile) -> Context {
        let node = &state.node;
        Context {
            nodes: std::iter::once((node.name.clone(), (node.pod_cidr, node.ip)))
                .chain(
                    state
                        .nodes
                        .iter()
                        .map(|n| (n.name.clone(), (n.pod_cidr, n.ip))),
                )
                .collect(),
            node_name: node.name.clone(),
            node_ip: node.ip,
            host_port: node.host_port.is_some(),
            node_ips: state.nodes.iter().map(|n| n.ip).collect(),
            vxlan_port: state.vxlan.port,
            service_cidr: state.service_config.service_cidr,
            max_table: state.service_config.maglev_table_size as usize,
            hairpin_ip: state.service_config.hairpin_ip,
        }
    }
}

/// All Service tables of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct ServiceTables {
    /// Services, by slot (a free slot has an empty name and no ports).
    pub services: Slots<Service>,
    /// Service ports, by slot (a free slot is in no frontend).
    pub ports: Slots<ServicePort>,
    /// Frontend key -> frontend (shared until a change adds or removes a frontend).
    pub frontends: Arc<FastMap<u64, Frontend>>,
    /// Every endpoint IP of every Service (with how many Service ports use it): a reply from
    /// one of these may need reverse NAT.
    pub backend_ips: Arc<FastMap<u32, u32>>,
    /// Every frontend address (ClusterIPs, node IP with NodePorts, LoadBalancer/external IPs),
    /// with how many frontends use it.
    pub frontend_ips: Arc<FastMap<u32, u32>>,
    /// A 65536-bit filter over frontend, endpoint and hairpin addresses: a packet whose source
    /// and destination both miss it needs no NAT, and skips every NAT lookup. Removals leave
    /// their bits set (a false positive costs a lookup, never a wrong decision) until the
    /// filter is rebuilt.
    pub addr_filter: Arc<Vec<u64>>,
    /// The Service CIDR.
    pub service_cidr: Option<Ipv4Cidr>,
    /// The hairpin source address.
    pub hairpin_ip: Option<Ipv4Addr>,
    /// Service name hash ([`name_key`]) -> slot.
    names: Arc<FastMap<u64, u32>>,
    free_services: Vec<u32>,
    free_ports: Vec<u32>,
    ctx: Option<Arc<Context>>,
    /// Addresses removed since the filter was last rebuilt.
    stale: usize,
}

/// Most endpoints one Service may have (every one of them is served).
pub const MAX_ENDPOINTS: usize = 65_535;
/// Most ports one Service may have.
pub const MAX_PORTS_PER_SERVICE: usize = 128;
/// Most LoadBalancer IPs, and most external IPs, one Service may have.
pub const MAX_IPS_PER_SERVICE: usize = 256;
/// Most Services in a state.
pub const MAX_SERVICES: usize = 262_144;
/// Most frontends on the uplink (NodePorts, LoadBalancer and external IPs): the size of the
/// XDP program's `frontends` map (`switch/bpf/xsk_redirect.bpf.c`).
pub const MAX_EXTERNAL_FRONTENDS: usize = 65_536;

fn err(field: String, reason: String) -> StateError {
    StateError { field, reason }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| *d <= n / *d)
            .all(|d| !n.is_multiple_of(d))
}

/// The field path of a Service's field in errors: `services[namespace/name].field` (a name
/// that breaks the rules is shown quoted: short and escaped).
fn path(s: &ServiceSpec, k: &str) -> String {
    if s.name.is_empty() {
        format!("services[(no name)].{k}")
    } else if crate::names::service_name(&s.name).is_ok() {
        format!("services[{}].{k}", s.name)
    } else {
        format!("services[{}].{k}", crate::names::quote(&s.name))
    }
}

/// Validates the Service part of `state` and builds its tables.
pub fn build(state: &StateFile) -> Result<ServiceTables, StateError> {
    ServiceTables::build_from(state, &state.services.iter().collect::<Vec<_>>())
}

/// Checks the cluster-wide Service settings against the rest of the state.
fn check_config(state: &StateFile) -> Result<(), StateError> {
    // Endpoints name their node: the names must be sound and unique first.
    crate::names::check_nodes(state).map_err(|(f, r)| err(f, r))?;
    let cfg = &state.service_config;
    if cfg.maglev_table_size < 7
        || cfg.maglev_table_size > 1_000_003
        || !is_prime(cfg.maglev_table_size)
    {
        return Err(err(
            "service_config.maglev_table_size".into(),
            format!(
                "{} is not a prime between 7 and 1000003 (16381 is the default)",
                cfg.maglev_table_size
            ),
        ));
    }
    let node = &state.node;
    // The pod CIDR is blamed (its field), not the Service CIDR every other node agrees with.
    let pod_cidrs = std::iter::once((node.pod_cidr, "node.pod_cidr".to_string())).chain(
        state
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.pod_cidr, format!("nodes[{i}].pod_cidr"))),
    );
    for (c, field) in pod_cidrs {
        if c.overlaps(&cfg.service_cidr) {
            return Err(err(
                field,
                format!("{c} overlaps the Service CIDR {}", cfg.service_cidr),
            ));
        }
        if c.contains(cfg.hairpin_ip) {
            return Err(err(
                "service_config.hairpin_ip".into(),
                format!(
                    "{} must be a spare address outside every pod CIDR",
                    cfg.hairpin_ip
                ),
            ));
        }
    }
    if cfg.hairpin_ip.is_unspecified() {
        return Err(err(
            "service_config.hairpin_ip".into(),
            format!(
                "{} must be a spare address outside every pod CIDR",
                cfg.hairpin_ip
            ),
        ));
    }
    Ok(())
}

/// Checks one Service on its own (everything but name clashes and frontend conflicts).
fn check_service(ctx: &Context, s: &ServiceSpec) -> Result<(), StateError> {
    let f = |k: &str| path(s, k);
    if s.name.is_empty() {
        return Err(err(f("name"), "must not be empty".into()));
    }
    crate::names::service_name(&s.name).map_err(|r| err(f("name"), r))?;
    if s.ports.len() > MAX_PORTS_PER_SERVICE {
        return Err(err(
            f("ports"),
            format!(
                "{} ports: at most {MAX_PORTS_PER_SERVICE} per Service",
                s.ports.len()
            ),
        ));
    }
    if s.endpoints.len() > MAX_ENDPOINTS {
        return Err(err(
            f("endpoints"),
            format!(
                "{} endpoints: at most {MAX_ENDPOINTS} per Service (the Maglev tables index \
                 backends with 16 bits)",
                s.endpoints.len()
            ),
        ));
    }
    for (i, p) in s.ports.iter().enumerate() {
        crate::names::port_name(&p.name).map_err(|r| err(f(&format!("ports[{i}].name")), r))?;
    }
    if !ctx.service_cidr.contains(s.cluster_ip) {
        return Err(err(
            f("cluster_ip"),
            format!(
                "{} is outside the Service CIDR {}",
                s.cluster_ip, ctx.service_cidr
            ),
        ));
    }
    if !(1..=86400).contains(&s.affinity_timeout_seconds) {
        return Err(err(
            f("affinity_timeout_seconds"),
            format!("{} is outside 1..=86400", s.affinity_timeout_seconds),
        ));
    }
    for (k, ips) in [
        ("load_balancer_ips", &s.load_balancer_ips),
        ("external_ips", &s.external_ips),
    ] {
        if ips.len() > MAX_IPS_PER_SERVICE {
            return Err(err(
                f(k),
                format!(
                    "{} addresses: at most {MAX_IPS_PER_SERVICE} per Service",
                    ips.len()
                ),
            ));
        }
        for (i, ip) in ips.iter().enumerate() {
            if *ip == ctx.node_ip || ctx.node_ips.contains(ip) {
                return Err(err(
                    f(&format!("{k}[{i}]")),
                    format!(
                        "{ip} is a node's address (serving it would take over that node's traffic)"
                    ),
                ));
            }
            if ctx.nodes.values().any(|(c, _)| c.contains(*ip))
                || ctx.service_cidr.contains(*ip)
                || ip.is_unspecified()
                || ip.is_multicast()
                || ip.is_broadcast()
            {
                return Err(err(
                    f(&format!("{k}[{i}]")),
                    format!("{ip} must be outside the pod and Service CIDRs, and unicast"),
                ));
            }
        }
    }
    let mut seen: FastMap<u32, usize> = FastMap::default();
    for (ei, e) in s.endpoints.iter().enumerate() {
        let Some(&(cidr, node_ip)) = ctx.nodes.get(e.node.as_str()) else {
            return Err(err(
                f(&format!("endpoints[{ei}].node")),
                format!(
                    "{} is not this node nor a known node",
                    crate::names::quote(&e.node)
                ),
            ));
        };
        // A pod's address, or the node's own (a hostNetwork pod, an API server).
        let host_network = node_ip == e.ip;
        if !cidr.contains(e.ip) && !host_network {
            return Err(err(
                f(&format!("endpoints[{ei}].ip")),
                format!(
                    "{} is neither in the pod CIDR {cidr} of node {} nor that node's IP",
                    e.ip, e.node
                ),
            ));
        }
        if host_network && e.node == ctx.node_name && !ctx.host_port {
            return Err(err(
                f(&format!("endpoints[{ei}].ip")),
                format!(
                    "{} is this node's IP: reaching its kernel through the switch needs a host \
                     port (node.host_port)",
                    e.ip
                ),
            ));
        }
        if let Some(j) = seen.insert(u32::from(e.ip), ei) {
            return Err(err(
                f(&format!("endpoints[{ei}].ip")),
                format!("{} is also endpoints[{j}]", e.ip),
            ));
        }
    }
    for (pi, p) in s.ports.iter().enumerate() {
        let f = |k: &str| path(s, &format!("ports[{pi}].{k}"));
        if p.port == 0 {
            return Err(err(f("port"), "must be 1 to 65535".into()));
        }
        if p.target_port == Some(0) {
            return Err(err(f("target_port"), "must be 1 to 65535".into()));
        }
        if let Some(np) = p.node_port {
            if p.protocol == crate::state::Protocol::Udp && np == ctx.vxlan_port {
                return Err(err(f("node_port"), format!("{np}/UDP is the VXLAN port")));
            }
            if !(30000..=32767).contains(&np) {
                return Err(err(
                    f("node_port"),
                    format!("{np} is outside the NodePort range 30000-32767"),
                ));
            }
        }
    }
    if let Some(hc) = s.health_check_node_port {
        let f = || path(s, "health_check_node_port");
        if s.external_traffic_policy != TrafficPolicy::Local {
            return Err(err(
                f(),
                "needs external_traffic_policy = \"Local\" (only then does a node's answer \
                 depend on its endpoints)"
                    .into(),
            ));
        }
        if !(30000..=32767).contains(&hc) {
            return Err(err(
                f(),
                format!("{hc} is outside the NodePort range 30000-32767"),
            ));
        }
        if let Some(pi) = s
            .ports
            .iter()
            .position(|p| p.node_port == Some(hc) && p.protocol == crate::state::Protocol::Tcp)
        {
            return Err(err(
                f(),
                format!("{hc} is also ports[{pi}].node_port (TCP)"),
            ));
        }
    }
    Ok(())
}

/// A validated Service's ports, built off the tables (possibly on another thread).
struct Built {
    ports: Vec<ServicePort>,
}

fn build_ports(ctx: &Context, s: &ServiceSpec) -> Built {
    let any_local = s.internal_traffic_policy == TrafficPolicy::Local
        || s.external_traffic_policy == TrafficPolicy::Local;
    let ports = s
        .ports
        .iter()
        .map(|p| {
            let proto = p.protocol.number();
            let target_port = p.target_port.unwrap_or(p.port);
            let mut keys = vec![frontend_key(s.cluster_ip, p.port, proto)];
            if let Some(np) = p.node_port {
                keys.push(frontend_key(ctx.node_ip, np, proto));
            }
            for ip in s.load_balancer_ips.iter().chain(s.external_ips.iter()) {
                let k = frontend_key(*ip, p.port, proto);
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            let backends: Vec<Backend> = s
                .endpoints
                .iter()
                .map(|e| Backend {
                    ip: e.ip,
                    port: target_port,
                    local: e.node == ctx.node_name,
                    ready: e.ready,
                    serving: e.serving.unwrap_or(e.ready),
                    terminating: e.terminating,
                })
                .collect();
            let cluster = Selection::build(&backends, |_| true, ctx.max_table);
            let local = if any_local {
                Selection::build(&backends, |b| b.local, ctx.max_table)
            } else {
                Selection::default()
            };
            ServicePort {
                service: 0,
                name: p.name.clone(),
                protocol: proto,
                port: p.port,
                target_port,
                node_port: p.node_port,
                backends,
                cluster,
                local,
                frontend_keys: keys,
            }
        })
        .collect();
    Built { ports }
}

/// Validates many Services and builds their ports on every available core (validation and
/// Maglev tables dominate a big apply). The first invalid Service in `specs`' order is the
/// error, with its position, as if they were checked one by one.
fn build_all(ctx: &Context, specs: &[&ServiceSpec]) -> Result<Vec<Built>, (usize, StateError)> {
    crate::parallel::try_map(specs, 256, |i, s: &&ServiceSpec| {
        check_service(ctx, s)
            .map(|()| build_ports(ctx, s))
            .map_err(|e| (i, e))
    })
}

impl ServiceTables {
    /// Validates the Service settings of `base` and `services` and builds their tables (the
    /// Services in `base` itself are ignored).
    pub fn build_from(base: &StateFile, services: &[&ServiceSpec]) -> Result<Self, StateError> {
        check_config(base)?;
        let cfg = &base.service_config;
        let t = ServiceTables {
            service_cidr: Some(cfg.service_cidr),
            hairpin_ip: Some(cfg.hairpin_ip),
            ctx: Some(Arc::new(Context::of(base))),
            ..Default::default()
        };
        t.update(&[], services)
    }

    /// True if `state`'s nodes, VXLAN and Service settings are the ones these tables were
    /// validated against, so that [`update`](Self::update) may be used; otherwise build anew.
    pub fn context_matches(&self, state: &StateFile) -> bool {
        self.ctx
            .as_deref()
            .is_some_and(|c| *c == Context::of(state))
    }

    /// The next tables: the Services named in `removed` and those in `upserted` taken out, then
    /// `upserted` validated and put in; everything else is shared with `self`. Errors name the
    /// Service by name (`services[ns/web].endpoints[2].node`). `self` is not changed.
    pub fn update(&self, removed: &[&str], upserted: &[&ServiceSpec]) -> Result<Self, StateError> {
        let Some(ctx) = self.ctx.clone() else {
            return Err(err(
                "services".into(),
                "tables without settings cannot be updated".into(),
            ));
        };
        // Checked one by one, a Service given twice is refused at its second mention unless
        // a Service before that is invalid: the same here, with the checks run in parallel.
        let mut seen: std::collections::HashSet<&str> = Default::default();
        let twice = upserted.iter().position(|s| !seen.insert(s.name.as_str()));
        let given_twice = |d: usize| {
            let s = upserted[d];
            err(path(s, "name"), format!("'{}' is given twice", s.name))
        };
        let built = match (build_all(&ctx, upserted), twice) {
            (Ok(b), None) => b,
            (Ok(_), Some(d)) => return Err(given_twice(d)),
            (Err((i, _)), Some(d)) if d < i => return Err(given_twice(d)),
            (Err((_, e)), _) => return Err(e),
        };
        let gone: std::collections::HashSet<&str> = removed.iter().copied().collect();
        let mut t = self.clone();
        // A Service whose frontends stay the same (an endpoint change, the common case) is
        // replaced in its slots: the frontend tables stay shared.
        let mut rest = Vec::new();
        for (s, b) in upserted.iter().zip(built) {
            match t
                .service_slot(&s.name)
                .filter(|_| !gone.contains(s.name.as_str()))
            {
                Some(slot) => match t.replace_in_place(slot, s, b) {
                    Ok(()) => {}
                    Err(b) => rest.push((*s, b)),
                },
                None => rest.push((*s, b)),
            }
        }
        for name in removed
            .iter()
            .copied()
            .chain(rest.iter().map(|(s, _)| s.name.as_str()))
        {
            if let Some(slot) = t.service_slot(name) {
                t.remove_slot(slot);
            }
        }
        for (s, b) in rest {
            t.insert(s, b)?;
        }
        if t.names.len() > MAX_SERVICES {
            return Err(err(
                "services".into(),
                format!("{} Services: at most {MAX_SERVICES}", t.names.len()),
            ));
        }
        if !Arc::ptr_eq(&t.frontends, &self.frontends) {
            let external = t
                .frontends
                .values()
                .filter(|f| f.kind != FrontendKind::ClusterIp)
                .count();
            if external > MAX_EXTERNAL_FRONTENDS {
                return Err(err(
                    "services".into(),
                    format!(
                        "{external} NodePort, LoadBalancer and external-IP frontends: at most \
                         {MAX_EXTERNAL_FRONTENDS} (what the XDP program's frontend map holds)"
                    ),
                ));
            }
        }
        if upserted.iter().any(|s| s.health_check_node_port.is_some())
            || !Arc::ptr_eq(&t.frontends, &self.frontends)
        {
            t.check_health_ports(&ctx)?;
        }
        if t.stale > 1024 && t.stale > t.backend_ips.len() + t.frontend_ips.len() {
            t.rebuild_filter();
        }
        Ok(t)
    }

    /// Health-check node ports are unique and no Service's TCP node port.
    fn check_health_ports(&self, ctx: &Context) -> Result<(), StateError> {
        let mut seen: FastMap<u16, &str> = FastMap::default();
        for svc in self.iter() {
            let Some(hc) = svc.health_check_node_port else {
                continue;
            };
            let field = format!("services[{}].health_check_node_port", svc.name);
            if let Some(other) = seen.insert(hc, &svc.name) {
                return Err(err(
                    field,
                    format!("{hc} is also the health-check node port of Service {other}"),
                ));
            }
            if let Some(f) = self.frontends.get(&frontend_key(ctx.node_ip, hc, 6)) {
                let owner = self
                    .ports
                    .get(f.port as usize)
                    .and_then(|p| self.services.get(p.service as usize))
                    .map(|o| o.name.as_str())
                    .unwrap_or_default();
                return Err(err(
                    field,
                    format!("{hc}/TCP is a node port of Service {owner}"),
                ));
            }
        }
        Ok(())
    }

    /// The health-check node ports this node serves, by port, with each Service's ready
    /// local endpoints (counted on its first port: every port has the Service's endpoints).
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        let mut v: Vec<HealthCheck> = self
            .iter()
            .filter_map(|svc| {
                let port = svc.health_check_node_port?;
                let local_endpoints = svc
                    .ports
                    .first()
                    .and_then(|&pi| self.ports.get(pi as usize))
                    .map_or(0, |p| {
                        p.backends.iter().filter(|b| b.local && b.ready).count() as u32
                    });
                Some(HealthCheck {
                    port,
                    service: svc.name.clone(),
                    local_endpoints,
                })
            })
            .collect();
        v.sort_by_key(|h| h.port);
        v
    }

    /// The slot of the Service named `name`.
    pub fn service_slot(&self, name: &str) -> Option<u32> {
        let slot = self.names.get(&name_key(name)).copied()?;
        (self.services.get(slot as usize)?.name == name).then_some(slot)
    }

    /// The Service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(self.service_slot(name)? as usize)
    }

    /// The Services in use, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &Service> + '_ {
        self.services.iter().filter(|s| !s.name.is_empty())
    }

    /// Puts `s` in the slots of the Service it replaces if its ports have the same frontends;
    /// gives `built` back otherwise.
    fn replace_in_place(&mut self, slot: u32, s: &ServiceSpec, built: Built) -> Result<(), Built> {
        let Some(old) = self.services.get(slot as usize) else {
            return Err(built);
        };
        let same = old.ports.len() == built.ports.len()
            && old.ports.iter().zip(&built.ports).all(|(&pi, sp)| {
                self.ports.get(pi as usize).is_some_and(|o| {
                    o.frontend_keys == sp.frontend_keys && o.protocol == sp.protocol
                })
            });
        if !same {
            return Err(built);
        }
        let idxs = old.ports.clone();
        for (&pi, mut sp) in idxs.iter().zip(built.ports) {
            sp.service = slot;
            let ips = |b: &[Backend]| {
                let mut v: Vec<u32> = b.iter().map(|b| u32::from(b.ip)).collect();
                v.sort_unstable();
                v
            };
            let old_sp = self.ports.set(pi as usize, Arc::new(sp));
            let new_ips = ips(&self.ports[pi as usize].backends);
            let old_ips = ips(&old_sp.backends);
            if new_ips != old_ips {
                for ip in &old_ips {
                    dec(Arc::make_mut(&mut self.backend_ips), *ip, &mut self.stale);
                }
                for ip in &new_ips {
                    *Arc::make_mut(&mut self.backend_ips).entry(*ip).or_default() += 1;
                    self.set_bit(*ip);
                }
            }
        }
        self.services
            .set(slot as usize, Arc::new(Service::of(s, idxs)));
        Ok(())
    }

    fn remove_slot(&mut self, slot: u32) {
        let svc = self.services.set(slot as usize, Arc::default());
        for &pi in &svc.ports {
            let sp = self.ports.set(pi as usize, Arc::default());
            for key in &sp.frontend_keys {
                Arc::make_mut(&mut self.frontends).remove(key);
                dec(
                    Arc::make_mut(&mut self.frontend_ips),
                    (key >> 24) as u32,
                    &mut self.stale,
                );
            }
            for b in &sp.backends {
                dec(
                    Arc::make_mut(&mut self.backend_ips),
                    u32::from(b.ip),
                    &mut self.stale,
                );
            }
            self.free_ports.push(pi);
        }
        Arc::make_mut(&mut self.names).remove(&name_key(&svc.name));
        self.free_services.push(slot);
    }

    fn insert(&mut self, s: &ServiceSpec, built: Built) -> Result<(), StateError> {
        if let Some(&other) = self.names.get(&name_key(&s.name)) {
            let other = self.services.get(other as usize).map(|o| o.name.as_str());
            return Err(err(
                path(s, "name"),
                if other == Some(s.name.as_str()) {
                    format!("'{}' is given twice", s.name)
                } else {
                    // 64-bit hashes: about one chance in 10^11 with 10,000 Services.
                    format!(
                        "'{}' hashes like the name of Service {}; rename one of them",
                        s.name,
                        other.unwrap_or_default()
                    )
                },
            ));
        }
        let slot = match self.free_services.pop() {
            Some(x) => x,
            None => self.services.push_default(),
        };
        let mut svc = Service::of(s, Vec::with_capacity(built.ports.len()));
        Arc::make_mut(&mut self.names).insert(name_key(&s.name), slot);
        for (pi, mut sp) in built.ports.into_iter().enumerate() {
            let idx = match self.free_ports.pop() {
                Some(x) => x,
                None => self.ports.push_default(),
            };
            sp.service = slot;
            for (k, &key) in sp.frontend_keys.iter().enumerate() {
                let kind = match k {
                    0 => FrontendKind::ClusterIp,
                    1 if sp.node_port.is_some() => FrontendKind::NodePort,
                    _ => FrontendKind::External,
                };
                if let Some(other) = self.frontends.get(&key) {
                    // A failed update is dropped whole: nothing needs undoing here.
                    let owner = &self.ports[other.port as usize];
                    let by = if owner.service == slot {
                        "another port of this Service".to_string()
                    } else {
                        let name = self
                            .services
                            .get(owner.service as usize)
                            .map(|o| o.name.as_str())
                            .unwrap_or_default();
                        format!("Service {name}")
                    };
                    let what = match kind {
                        FrontendKind::NodePort => format!("node port {}", key >> 8 & 0xffff),
                        _ => format!("{}:{}", Ipv4Addr::from((key >> 24) as u32), sp.port),
                    };
                    return Err(err(
                        path(s, &format!("ports[{pi}].port")),
                        format!(
                            "{what}/{} is already served by {by}",
                            proto_name(sp.protocol)
                        ),
                    ));
                }
                Arc::make_mut(&mut self.frontends).insert(key, Frontend { port: idx, kind });
                *Arc::make_mut(&mut self.frontend_ips)
                    .entry((key >> 24) as u32)
                    .or_default() += 1;
                self.set_bit((key >> 24) as u32);
            }
            for b in &sp.backends {
                *Arc::make_mut(&mut self.backend_ips)
                    .entry(u32::from(b.ip))
                    .or_default() += 1;
                self.set_bit(u32::from(b.ip));
            }
            self.ports.set(idx as usize, Arc::new(sp));
            svc.ports.push(idx);
        }
        if let Some(h) = self.hairpin_ip {
            self.set_bit(u32::from(h));
        }
        self.services.set(slot as usize, Arc::new(svc));
        Ok(())
    }

    fn set_bit(&mut self, ip: u32) {
        let b = filter_bit(ip);
        let bit = 1u64 << (b % 64);
        if self.addr_filter.get(b / 64).is_some_and(|w| w & bit != 0) {
            return; // already set: the shared filter stays shared
        }
        let f = Arc::make_mut(&mut self.addr_filter);
        if f.is_empty() {
            *f = vec![0u64; 1024];
        }
        f[b / 64] |= bit;
    }

    fn rebuild_filter(&mut self) {
        self.addr_filter = Arc::default();
        self.stale = 0;
        let ips: Vec<u32> = self
            .frontend_ips
            .keys()
            .chain(self.backend_ips.keys())
            .copied()
            .collect();
        for ip in ips {
            self.set_bit(ip);
        }
        if let (Some(h), false) = (self.hairpin_ip, self.addr_filter.is_empty()) {
            self.set_bit(u32::from(h));
        }
    }
}

/// The key of a Service name in the name index (a stable 64-bit hash).
fn name_key(name: &str) -> u64 {
    crate::maglev::stable_hash(name.as_bytes(), 0x6e61_6d65)
}

fn dec(map: &mut FastMap<u32, u32>, ip: u32, stale: &mut usize) {
    if let Some(n) = map.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            map.remove(&ip);
            *stale += 1;
        }
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "TCP",
        17 => "UDP",
        132 => "SCTP",
        _ => "?",
    }
}

#[inline]
fn filter_bit(ip: u32) -> usize {
    (ip.wrapping_mul(0x9e37_79b1) >> 16) as usize
}

impl ServiceTables {
    /// The frontend for a destination, if it is one.
    #[inline]
    pub fn frontend(&self, ip: Ipv4Addr, port: u16, protocol: u8) -> Option<Frontend> {
        if self.frontends.is_empty() {
            return None;
        }
        self.frontends
            .get(&frontend_key(ip, port, protocol))
            .copied()
    }

    /// False if neither address can be involved in NAT (a fast, safe pre-check: true may be
    /// a false positive, false never is).
    #[inline]
    pub fn may_translate(&self, src: u32, dst: u32) -> bool {
        let hit = |ip: u32| {
            let b = filter_bit(ip);
            self.addr_filter
                .get(b / 64)
                .is_some_and(|w| w & (1 << (b % 64)) != 0)
        };
        hit(dst) || hit(src)
    }

    /// True if `ip` is the address of some frontend.
    #[inline]
    pub fn frontends_ip(&self, ip: Ipv4Addr) -> bool {
        self.frontend_ips.contains_key(&u32::from(ip))
    }

    /// True if `ip` is an endpoint of some Service.
    #[inline]
    pub fn is_backend_ip(&self, ip: Ipv4Addr) -> bool {
        !self.backend_ips.is_empty() && self.backend_ips.contains_key(&u32::from(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{EndpointSpec, ServiceSpec};

    const STATE: &str = include_str!("../../examples/node1.toml");

    /// What a Service's tables decide, independent of slot numbers.
    fn decisions(t: &ServiceTables) -> Vec<String> {
        let mut out: Vec<String> = t
            .frontends
            .iter()
            .map(|(k, f)| {
                let sp = &t.ports[f.port as usize];
                let svc = &t.services[sp.service as usize];
                let picks: Vec<String> = (0..64u64)
                    .map(|h| {
                        let i = sp
                            .cluster
                            .pick(h * 7919)
                            .map(|i| sp.backends[i as usize].ip);
                        format!("{i:?}")
                    })
                    .collect();
                format!(
                    "{k:x} {:?} {} {} {}",
                    f.kind,
                    svc.name,
                    sp.target_port,
                    picks.join(",")
                )
            })
            .collect();
        out.sort();
        out
    }

    fn full(state: &StateFile) -> ServiceTables {
        build(state).unwrap()
    }

    #[test]
    fn health_check_node_ports_are_checked_and_count_local_ready_endpoints() {
        let state = StateFile::parse(STATE).unwrap();
        let t = full(&state);
        let lb = |hc: u16| {
            let mut s = state
                .services
                .iter()
                .find(|s| s.name == "default/lb-local")
                .unwrap()
                .clone();
            s.health_check_node_port = Some(hc);
            s
        };
        let next = t.update(&[], &[&lb(32000)]).unwrap();
        let spec = lb(32000);
        let local = spec
            .endpoints
            .iter()
            .filter(|e| e.node == "node1" && e.ready)
            .count() as u32;
        assert_eq!(
            next.health_checks(),
            vec![HealthCheck {
                port: 32000,
                service: "default/lb-local".into(),
                local_endpoints: local
            }]
        );
        let mut none = lb(32000);
        for e in &mut none.endpoints {
            e.ready = false;
        }
        assert_eq!(
            next.update(&[], &[&none]).unwrap().health_checks()[0].local_endpoints,
            0
        );
        // Refused: outside the range, without the Local policy, on a TCP node port of its own
        // or of another Service, twice.
        let e = t.update(&[], &[&lb(8080)]).unwrap_err();
        assert_eq!(e.field, "services[default/lb-local].health_check_node_port");
        assert!(e.reason.contains("outside the NodePort range"), "{e}");
        let mut cluster = lb(32000);
        cluster.external_traffic_policy = TrafficPolicy::Cluster;
        let e = t.update(&[], &[&cluster]).unwrap_err();
        assert!(e.reason.contains("external_traffic_policy"), "{e}");
        let e = t.update(&[], &[&lb(30090)]).unwrap_err();
        assert!(e.reason.contains("ports[0].node_port"), "{e}");
        let e = t.update(&[], &[&lb(30080)]).unwrap_err();
        assert!(e.reason.contains("node port of Service default/web"), "{e}");
        let mut twin = lb(32000);
        twin.name = "default/lb-twin".into();
        twin.cluster_ip = Ipv4Addr::new(10, 96, 9, 77);
        twin.load_balancer_ips.clear();
        for p in &mut twin.ports {
            p.node_port = Some(30999);
        }
        let e = next.update(&[], &[&twin]).unwrap_err();
        assert!(e.reason.contains("also the health-check node port"), "{e}");
        // A NodePort added on the health-check port is refused too.
        let mut web = state.services[0].clone();
        web.ports[0].node_port = Some(32000);
        let e = next.update(&[], &[&web]).unwrap_err();
        assert!(
            e.reason
                .contains("32000/TCP is a node port of Service default/web"),
            "{e}"
        );
    }

    #[test]
    fn incremental_updates_decide_as_a_full_build() {
        let mut state = StateFile::parse(STATE).unwrap();
        let mut t = full(&state);
        type Edit = Box<dyn Fn(&mut StateFile) -> String>;
        let edits: Vec<Edit> = vec![
            Box::new(|s| {
                s.services[0].endpoints[0].ready = false;
                s.services[0].name.clone()
            }),
            Box::new(|s| {
                s.services[0].endpoints.push(EndpointSpec {
                    ip: Ipv4Addr::new(10, 244, 2, 50),
                    node: "node2".into(),
                    ready: true,
                    serving: None,
                    terminating: false,
                });
                s.services[0].name.clone()
            }),
            Box::new(|s| {
                s.services[1].cluster_ip = Ipv4Addr::new(10, 96, 9, 9);
                s.services[1].name.clone()
            }),
            Box::new(|s| {
                let mut n = s.services[2].clone();
                n.name = "default/added".into();
                n.cluster_ip = Ipv4Addr::new(10, 96, 9, 10);
                s.services.push(n);
                "default/added".into()
            }),
            Box::new(|s| {
                s.services[0].ports[0].node_port = None;
                s.services[0].name.clone()
            }),
        ];
        for edit in &edits {
            let name = edit(&mut state);
            let spec: &ServiceSpec = state.services.iter().find(|s| s.name == name).unwrap();
            let next = t.update(&[], &[spec]).unwrap();
            assert_eq!(
                decisions(&next),
                decisions(&full(&state)),
                "after changing {name}"
            );
            t = next;
        }
        // A removal frees its slots, and they are reused.
        let gone = state.services.remove(1).name;
        let next = t.update(&[&gone], &[]).unwrap();
        assert_eq!(decisions(&next), decisions(&full(&state)));
        assert!(next.service(&gone).is_none());
        assert!(next.iter().all(|s| s.name != gone));
    }

    #[test]
    fn an_endpoint_change_shares_the_frontend_tables() {
        let mut state = StateFile::parse(STATE).unwrap();
        let t = full(&state);
        state.services[0].endpoints[1].ready = false;
        let next = t.update(&[], &[&state.services[0]]).unwrap();
        assert!(Arc::ptr_eq(&t.frontends, &next.frontends));
        assert!(Arc::ptr_eq(&t.backend_ips, &next.backend_ips));
        assert!(Arc::ptr_eq(&t.names, &next.names));
        // The old tables are untouched: the workers still reading them see no change.
        assert_eq!(
            decisions(&t),
            decisions(&full(&StateFile::parse(STATE).unwrap()))
        );
    }

    #[test]
    fn a_failed_update_leaves_nothing_behind() {
        let state = StateFile::parse(STATE).unwrap();
        let t = full(&state);
        let mut clash = state.services[1].clone();
        clash.name = "default/clash".into();
        let e = t.update(&[], &[&clash]).unwrap_err();
        assert!(e.reason.contains("already served by Service"), "{e}");
        assert_eq!(decisions(&t), decisions(&full(&state)));
        // Two frontends swapped between Services in one update are no clash.
        let mut a = state.services[0].clone();
        let mut b = state.services[1].clone();
        std::mem::swap(&mut a.cluster_ip, &mut b.cluster_ip);
        t.update(&[], &[&a, &b]).unwrap();
    }

    #[test]
    fn removed_and_upserted_together_means_upserted() {
        let mut state = StateFile::parse(STATE).unwrap();
        let t = full(&state);
        state.services[0].endpoints[0].ready = false;
        let web = state.services[0].clone();
        let next = t.update(&[&web.name], &[&web]).unwrap();
        assert_eq!(decisions(&next), decisions(&full(&state)));
        let e = next.update(&[], &[&web, &web]).unwrap_err();
        assert!(e.reason.contains("given twice"), "{e}");
    }

    /// `n` distinct valid Services (enough for the checks to run on every core).
    fn many(state: &StateFile, n: usize) -> Vec<ServiceSpec> {
        (0..n)
            .map(|i| {
                let mut s = state.services[0].clone();
                s.name = format!("many/svc-{i}");
                s.cluster_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32);
                for p in &mut s.ports {
                    p.node_port = None;
                }
                s.load_balancer_ips.clear();
                s.external_ips.clear();
                s.health_check_node_port = None;
                s
            })
            .collect()
    }

    #[test]
    fn checked_in_parallel_the_first_bad_service_in_order_is_the_error() {
        let state = StateFile::parse(STATE).unwrap();
        let t = full(&state);
        let mut v = many(&state, 3000);
        v[2900].cluster_ip = Ipv4Addr::new(192, 0, 2, 1);
        v[1700].affinity_timeout_seconds = 0;
        let refs: Vec<&ServiceSpec> = v.iter().collect();
        let e = t.update(&[], &refs).unwrap_err();
        assert_eq!(
            e.field, "services[many/svc-1700].affinity_timeout_seconds",
            "{e}"
        );
        // A name given twice counts where its second mention is.
        v[2000].name = "many/svc-10".into();
        let refs: Vec<&ServiceSpec> = v.iter().collect();
        let e = t.update(&[], &refs).unwrap_err();
        assert_eq!(
            e.field, "services[many/svc-1700].affinity_timeout_seconds",
            "{e}"
        );
        v[1200].name = "many/svc-10".into();
        let refs: Vec<&ServiceSpec> = v.iter().collect();
        let e = t.update(&[], &refs).unwrap_err();
        assert_eq!(e.field, "services[many/svc-10].name", "{e}");
        assert!(e.reason.contains("given twice"), "{e}");
        // And all valid, every one is built.
        let v = many(&state, 3000);
        let refs: Vec<&ServiceSpec> = v.iter().collect();
        let next = t.update(&[], &refs).unwrap();
        assert_eq!(next.iter().count(), 3000 + state.services.len());
    }

    #[test]
    fn table_sizes_follow_the_ladder() {
        assert_eq!(table_size(1, 16381), 251);
        assert_eq!(table_size(8, 16381), 509);
        assert_eq!(table_size(10, 16381), 509);
        assert_eq!(table_size(100, 16381), 4093);
        assert_eq!(table_size(10_000, 16381), 16381);
        assert_eq!(table_size(5, 7), 7);
        assert_eq!(table_size(10, 7), 251);
        // More backends than the configured size: one entry each at least.
        assert_eq!(table_size(20_000, 16381), 32749);
        assert_eq!(table_size(65_535, 16381), 131071);
    }

    #[test]
    fn uplink_frontends_are_bounded_by_the_xdp_map() {
        let base = StateFile::parse(include_str!("../../examples/node1.toml")).unwrap();
        let svc = |i: u32| ServiceSpec {
            name: format!("default/ext-{i}"),
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i),
            ports: vec![crate::state::ServicePortSpec {
                name: String::new(),
                protocol: crate::state::Protocol::Tcp,
                port: 80,
                target_port: None,
                node_port: None,
            }],
            external_ips: (0..MAX_IPS_PER_SERVICE as u32)
                .map(|k| Ipv4Addr::from(0x2000_0000 + i * 1024 + k))
                .collect(),
            ..base.services[0].clone()
        };
        let full: Vec<ServiceSpec> = (0..(MAX_EXTERNAL_FRONTENDS / MAX_IPS_PER_SERVICE) as u32)
            .map(svc)
            .collect();
        let refs: Vec<&ServiceSpec> = full.iter().collect();
        let t = ServiceTables::build_from(&base, &refs).expect("exactly the limit");
        let mut one_more = svc(full.len() as u32);
        one_more.external_ips.truncate(1);
        let e = t.update(&[], &[&one_more]).unwrap_err();
        assert_eq!(e.field, "services");
        assert!(e.reason.contains("at most 65536"), "{}", e.reason);
        // And one Service may not have more than MAX_IPS_PER_SERVICE of either kind.
        let mut big = svc(0);
        big.external_ips.push(Ipv4Addr::new(33, 0, 0, 1));
        let e = ServiceTables::build_from(&base, &[&big]).unwrap_err();
        assert_eq!(e.field, "services[default/ext-0].external_ips");
        assert!(e.reason.contains("at most 256 per Service"), "{}", e.reason);
    }

    #[test]
    fn the_largest_service_serves_every_endpoint() {
        let mut text = String::from(
            "[node]\nname = \"node1\"\nip = \"198.18.0.1\"\npod_cidr = \"10.128.0.0/9\"\n\
             gateway_mac = \"02:00:0a:f4:01:01\"\nuplink = \"uplink\"\n\
             uplink_mac = \"02:00:c6:12:00:01\"\n\
             [service_config]\nservice_cidr = \"10.96.0.0/12\"\n",
        );
        let eps = |n: usize| {
            (0..n)
                .map(|i| {
                    let ip = std::net::Ipv4Addr::from(0x0a81_0000 + i as u32 + 1);
                    format!("{{ ip = \"{ip}\", node = \"node1\" }}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let svc = |n: usize| {
            format!(
                "[[services]]\nname = \"default/big\"\ncluster_ip = \"10.96.0.9\"\n\
                 ports = [{{ port = 80 }}]\nendpoints = [{}]\n",
                eps(n)
            )
        };
        text.push_str(&svc(MAX_ENDPOINTS));
        let state = StateFile::parse(&text).unwrap();
        let t = build(&state).unwrap();
        let port = &t.ports[0];
        assert_eq!(port.cluster.members.len(), MAX_ENDPOINTS);
        let mut seen = vec![false; MAX_ENDPOINTS];
        for h in 0..2_000_000u64 {
            if let Some(i) = port.cluster.pick(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
                seen[i as usize] = true;
            }
        }
        assert!(seen.iter().filter(|s| **s).count() > MAX_ENDPOINTS * 9 / 10);
        // One more is refused, naming the limit.
        let over = text.replace(&svc(MAX_ENDPOINTS), &svc(MAX_ENDPOINTS + 1));
        let e = build(&StateFile::parse(&over).unwrap()).unwrap_err();
        assert_eq!(e.field, "services[default/big].endpoints");
        assert!(
            e.reason.contains("at most 65535 per Service"),
            "{}",
            e.reason
        );
    }
}
