//! Service tables in a snapshot: frontends (ClusterIP, NodePort, LoadBalancer and external IPs)
//! to Service ports, their backends and Maglev tables.
//!
//! Design: everything is built and validated with the snapshot, off the packet path, and is
//! read-only afterwards. A frontend lookup is one hash probe on (address, port, protocol); a
//! backend pick is one Maglev table read. Each Service port keeps two tables: over all usable
//! endpoints (Cluster policies) and over this node's usable endpoints (Local policies).
//! "Usable" means ready; if no endpoint is ready, serving endpoints that are terminating are
//! used instead (as kube-proxy does), so a rolling update does not blackhole traffic.

use crate::cidr::Ipv4Cidr;
use crate::hash::FastMap;
use crate::maglev::Maglev;
use crate::snapshot::StateError;
use crate::state::{SessionAffinity, StateFile, TrafficPolicy};
use std::net::Ipv4Addr;

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

/// A set of backends to choose from, with its Maglev table (indices into `members`).
#[derive(Debug, Clone)]
pub struct Selection {
    /// Indices into the Service port's backends.
    pub members: Vec<u32>,
    /// The lookup table over `members`; `None` when there are none.
    pub maglev: Option<Maglev>,
}

impl Selection {
    fn build(backends: &[Backend], filter: impl Fn(&Backend) -> bool, size: usize) -> Selection {
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
        let maglev = Maglev::build(&keys, size);
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
#[derive(Debug, Clone)]
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
    /// `namespace/name`.
    pub name: String,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// ClientIP affinity timeout in seconds, if affinity is on.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy is Local.
    pub external_local: bool,
    /// internalTrafficPolicy is Local.
    pub internal_local: bool,
    /// Indices of its ports in the snapshot.
    pub ports: Vec<u32>,
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

/// All Service tables of a snapshot.
#[derive(Debug, Clone, Default)]
pub struct ServiceTables {
    /// Services.
    pub services: Vec<Service>,
    /// Service ports.
    pub ports: Vec<ServicePort>,
    /// Frontend key -> frontend.
    pub frontends: FastMap<u64, Frontend>,
    /// Every endpoint IP of every Service: a reply from one of these may need reverse NAT.
    pub backend_ips: FastMap<u32, ()>,
    /// Every frontend address (ClusterIPs, node IP with NodePorts, LoadBalancer/external IPs).
    pub frontend_ips: FastMap<u32, ()>,
    /// A 65536-bit filter over frontend, endpoint and hairpin addresses: a packet whose source
    /// and destination both miss it needs no NAT, and skips every NAT lookup.
    pub addr_filter: Vec<u64>,
    /// The Service CIDR.
    pub service_cidr: Option<Ipv4Cidr>,
    /// The hairpin source address.
    pub hairpin_ip: Option<Ipv4Addr>,
}

fn err(field: String, reason: String) -> StateError {
    StateError { field, reason }
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| *d <= n / *d)
            .all(|d| !n.is_multiple_of(d))
}

/// Validates the Service part of `state` and builds its tables.
pub fn build(state: &StateFile) -> Result<ServiceTables, StateError> {
    let cfg = &state.service_config;
    let node = &state.node;
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
    let pod_cidrs: Vec<(Ipv4Cidr, &str)> = std::iter::once((node.pod_cidr, node.name.as_str()))
        .chain(state.nodes.iter().map(|n| (n.pod_cidr, n.name.as_str())))
        .collect();
    for (c, name) in &pod_cidrs {
        if c.overlaps(&cfg.service_cidr) {
            return Err(err(
                "service_config.service_cidr".into(),
                format!("{} overlaps the pod CIDR {c} of {name}", cfg.service_cidr),
            ));
        }
    }
    if cfg.hairpin_ip.is_unspecified() || pod_cidrs.iter().any(|(c, _)| c.contains(cfg.hairpin_ip))
    {
        return Err(err(
            "service_config.hairpin_ip".into(),
            format!(
                "{} must be a spare address outside every pod CIDR",
                cfg.hairpin_ip
            ),
        ));
    }
    let size = cfg.maglev_table_size as usize;
    let mut t = ServiceTables {
        service_cidr: Some(cfg.service_cidr),
        hairpin_ip: Some(cfg.hairpin_ip),
        ..Default::default()
    };
    let mut names: FastMap<&str, usize> = FastMap::default();
    let mut owner: FastMap<u64, String> = FastMap::default();
    for (si, s) in state.services.iter().enumerate() {
        let f = |k: &str| format!("services[{si}].{k}");
        if s.name.is_empty() {
            return Err(err(f("name"), "must not be empty".into()));
        }
        if let Some(j) = names.insert(s.name.as_str(), si) {
            return Err(err(
                f("name"),
                format!("'{}' is also the name of services[{j}]", s.name),
            ));
        }
        if !cfg.service_cidr.contains(s.cluster_ip) {
            return Err(err(
                f("cluster_ip"),
                format!(
                    "{} is outside the Service CIDR {}",
                    s.cluster_ip, cfg.service_cidr
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
            for (i, ip) in ips.iter().enumerate() {
                if *ip == node.ip || state.nodes.iter().any(|n| n.ip == *ip) {
                    return Err(err(
                        f(&format!("{k}[{i}]")),
                        format!("{ip} is a node's address (serving it would take over that node's traffic)"),
                    ));
                }
                if pod_cidrs.iter().any(|(c, _)| c.contains(*ip))
                    || cfg.service_cidr.contains(*ip)
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
        for (ei, e) in s.endpoints.iter().enumerate() {
            let known = pod_cidrs.iter().find(|(_, n)| *n == e.node);
            let Some((cidr, _)) = known else {
                return Err(err(
                    f(&format!("endpoints[{ei}].node")),
                    format!("'{}' is not this node nor a known node", e.node),
                ));
            };
            if !cidr.contains(e.ip) {
                return Err(err(
                    f(&format!("endpoints[{ei}].ip")),
                    format!("{} is outside the pod CIDR {cidr} of node {}", e.ip, e.node),
                ));
            }
            if let Some(j) = s.endpoints[..ei].iter().position(|o| o.ip == e.ip) {
                return Err(err(
                    f(&format!("endpoints[{ei}].ip")),
                    format!("{} is also endpoints[{j}]", e.ip),
                ));
            }
        }
        let mut svc = Service {
            name: s.name.clone(),
            cluster_ip: s.cluster_ip,
            affinity_timeout: (s.session_affinity == SessionAffinity::ClientIp)
                .then_some(s.affinity_timeout_seconds),
            external_local: s.external_traffic_policy == TrafficPolicy::Local,
            internal_local: s.internal_traffic_policy == TrafficPolicy::Local,
            ports: Vec::new(),
        };
        for (pi, p) in s.ports.iter().enumerate() {
            let f = |k: &str| format!("services[{si}].ports[{pi}].{k}");
            if p.port == 0 {
                return Err(err(f("port"), "must be 1 to 65535".into()));
            }
            let target_port = p.target_port.unwrap_or(p.port);
            if target_port == 0 {
                return Err(err(f("target_port"), "must be 1 to 65535".into()));
            }
            if let Some(np) = p.node_port {
                if p.protocol == crate::state::Protocol::Udp && np == state.vxlan.port {
                    return Err(err(f("node_port"), format!("{np}/UDP is the VXLAN port")));
                }
                if !(30000..=32767).contains(&np) {
                    return Err(err(
                        f("node_port"),
                        format!("{np} is outside the NodePort range 30000-32767"),
                    ));
                }
            }
            let proto = p.protocol.number();
            let idx = t.ports.len() as u32;
            let mut keys = vec![(
                frontend_key(s.cluster_ip, p.port, proto),
                FrontendKind::ClusterIp,
                format!("{}:{}", s.cluster_ip, p.port),
            )];
            if let Some(np) = p.node_port {
                keys.push((
                    frontend_key(node.ip, np, proto),
                    FrontendKind::NodePort,
                    format!("node port {np}"),
                ));
            }
            for ip in s.load_balancer_ips.iter().chain(s.external_ips.iter()) {
                keys.push((
                    frontend_key(*ip, p.port, proto),
                    FrontendKind::External,
                    format!("{ip}:{}", p.port),
                ));
            }
            for (key, kind, text) in keys {
                let here = f("port");
                if let Some(other) = owner.insert(key, here.clone()) {
                    if other != here {
                        return Err(err(
                            here,
                            format!("{text}/{:?} is already served by {other}", p.protocol),
                        ));
                    }
                }
                t.frontends.insert(key, Frontend { port: idx, kind });
                t.frontend_ips.insert((key >> 24) as u32, ());
            }
            let backends: Vec<Backend> = s
                .endpoints
                .iter()
                .map(|e| Backend {
                    ip: e.ip,
                    port: target_port,
                    local: e.node == node.name,
                    ready: e.ready,
                    serving: e.serving.unwrap_or(e.ready),
                    terminating: e.terminating,
                })
                .collect();
            for b in &backends {
                t.backend_ips.insert(u32::from(b.ip), ());
            }
            let cluster = Selection::build(&backends, |_| true, size);
            let local = if svc.internal_local || svc.external_local {
                Selection::build(&backends, |b| b.local, size)
            } else {
                Selection {
                    members: Vec::new(),
                    maglev: None,
                }
            };
            t.ports.push(ServicePort {
                service: si as u32,
                name: p.name.clone(),
                protocol: proto,
                port: p.port,
                target_port,
                node_port: p.node_port,
                backends,
                cluster,
                local,
            });
            svc.ports.push(idx);
        }
        t.services.push(svc);
    }
    if !t.frontends.is_empty() {
        t.addr_filter = vec![0u64; 1024];
        let ips: Vec<u32> = t
            .frontend_ips
            .keys()
            .chain(t.backend_ips.keys())
            .copied()
            .chain(std::iter::once(u32::from(cfg.hairpin_ip)))
            .collect();
        for ip in ips {
            let b = filter_bit(ip);
            t.addr_filter[b / 64] |= 1 << (b % 64);
        }
    }
    Ok(t)
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
