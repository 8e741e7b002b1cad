//! Conversions between the gRPC messages and the state file's types.
//!
//! Design: every text field is parsed here, once, and a bad one becomes an
//! [`ApiError::Invalid`] that names the field by its path in the request
//! (`changes[2].upsert_pod.ip`) and says what is wrong; meaning (overlaps, duplicates, unknown
//! nodes) is checked later by the snapshot builder. Empty strings and zero numbers stand for the
//! state file's defaults, so a message converted back and forth is the same object.
//! Pure functions; any thread may call them.

use crate::error::ApiError;
use crate::pb;
use flowtable::cidr::Ipv4Cidr;
use flowtable::names::quote;
use flowtable::state::{
    EgressSpec, EndpointSpec, NodeSpec, PodSpec, Protocol, RemoteNodeSpec, ServiceConfigSpec,
    ServicePortSpec, ServiceSpec, SessionAffinity, StateFile, TrafficPolicy, VxlanSpec,
};
use flowtable::wire::MacAddr;
use std::net::Ipv4Addr;

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// A field's path, made only when an error needs it (a big request has hundreds of
/// thousands of fields).
type At<'a> = &'a dyn Fn() -> String;

/// A required IPv4 address.
pub fn ip(field: &str, s: &str) -> Result<Ipv4Addr, ApiError> {
    ip_at(&|| field.to_string(), s)
}

fn ip_at(field: At, s: &str) -> Result<Ipv4Addr, ApiError> {
    if s.is_empty() {
        return Err(invalid(&field(), "is required"));
    }
    s.parse()
        .map_err(|_| invalid(&field(), format!("{} is not an IPv4 address", quote(s))))
}

fn opt_ip(field: &str, s: &str) -> Result<Option<Ipv4Addr>, ApiError> {
    if s.is_empty() {
        Ok(None)
    } else {
        ip(field, s).map(Some)
    }
}

fn cidr(field: &str, s: &str) -> Result<Ipv4Cidr, ApiError> {
    if s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    s.parse().map_err(|e| invalid(field, format!("{e}")))
}

fn mac(field: &str, s: &str) -> Result<MacAddr, ApiError> {
    if s.is_empty() {
        return Err(invalid(field, "is required"));
    }
    s.parse().map_err(|e| invalid(field, format!("{e}")))
}

fn opt_mac(field: &str, s: &str) -> Result<Option<MacAddr>, ApiError> {
    if s.is_empty() {
        Ok(None)
    } else {
        mac(field, s).map(Some)
    }
}

fn port(field: &str, n: u32) -> Result<u16, ApiError> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(field, format!("{n} is outside 1..=65535"))),
    }
}

fn opt_port(field: &str, n: u32) -> Result<Option<u16>, ApiError> {
    if n == 0 {
        Ok(None)
    } else {
        port(field, n).map(Some)
    }
}

/// A name: required here; what makes one valid is `flowtable::names`' to say, for every
/// input alike (the snapshot build applies it).
fn name_at(field: At, s: &str) -> Result<String, ApiError> {
    if s.is_empty() {
        return Err(invalid(&field(), "is required"));
    }
    Ok(s.to_string())
}

fn name(field: &str, s: &str) -> Result<String, ApiError> {
    name_at(&|| field.to_string(), s)
}

/// A protocol name: TCP (also the default, ""), UDP or SCTP.
pub fn protocol(field: &str, s: &str) -> Result<Protocol, ApiError> {
    match s.to_ascii_uppercase().as_str() {
        "" | "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        _ => Err(invalid(
            field,
            format!("unknown protocol {} (TCP, UDP or SCTP)", quote(s)),
        )),
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn policy(field: &str, s: &str) -> Result<TrafficPolicy, ApiError> {
    match s {
        "" | "Cluster" => Ok(TrafficPolicy::Cluster),
        "Local" => Ok(TrafficPolicy::Local),
        _ => Err(invalid(
            field,
            format!("unknown traffic policy {} (Cluster or Local)", quote(s)),
        )),
    }
}

fn policy_name(p: TrafficPolicy) -> &'static str {
    match p {
        TrafficPolicy::Cluster => "Cluster",
        TrafficPolicy::Local => "Local",
    }
}

/// Another node from its message.
pub fn node(f: &str, n: &pb::Node) -> Result<RemoteNodeSpec, ApiError> {
    Ok(RemoteNodeSpec {
        name: name(&format!("{f}.name"), &n.name)?,
        ip: ip(&format!("{f}.ip"), &n.ip)?,
        pod_cidr: cidr(&format!("{f}.pod_cidr"), &n.pod_cidr)?,
        vtep_mac: mac(&format!("{f}.vtep_mac"), &n.vtep_mac)?,
        mac: opt_mac(&format!("{f}.mac"), &n.mac)?,
        owner: owner(&format!("{f}.owner"), &n.owner)?,
    })
}

/// A writer's name from a request ("" and `config` are the node's config).
pub fn owner(f: &str, o: &str) -> Result<String, ApiError> {
    flowtable::names::owner(o)
        .map(str::to_string)
        .map_err(|r| invalid(f, r))
}

/// Another node as a message.
pub fn node_pb(n: &RemoteNodeSpec) -> pb::Node {
    pb::Node {
        name: n.name.clone(),
        ip: n.ip.to_string(),
        pod_cidr: n.pod_cidr.to_string(),
        vtep_mac: n.vtep_mac.to_string(),
        mac: n.mac.map(|m| m.to_string()).unwrap_or_default(),
        owner: flowtable::names::owner_shown(&n.owner).into(),
    }
}

/// A pod from its message.
pub fn pod(f: &str, p: &pb::Pod) -> Result<PodSpec, ApiError> {
    Ok(PodSpec {
        name: name(&format!("{f}.name"), &p.name)?,
        ip: ip(&format!("{f}.ip"), &p.ip)?,
        mac: mac(&format!("{f}.mac"), &p.mac)?,
        port: name(&format!("{f}.port"), &p.port)?,
        owner: owner(&format!("{f}.owner"), &p.owner)?,
    })
}

/// A pod as a message.
pub fn pod_pb(p: &PodSpec) -> pb::Pod {
    pb::Pod {
        name: p.name.clone(),
        ip: p.ip.to_string(),
        mac: p.mac.to_string(),
        port: p.port.clone(),
        owner: flowtable::names::owner_shown(&p.owner).into(),
    }
}

/// An endpoint from its message.
pub fn endpoint(f: &str, e: &pb::Endpoint) -> Result<EndpointSpec, ApiError> {
    endpoint_at(&|| f.to_string(), e)
}

fn endpoint_at(f: At, e: &pb::Endpoint) -> Result<EndpointSpec, ApiError> {
    let ip = match (e.ipv4, e.ip.is_empty()) {
        (0, _) => ip_at(&|| format!("{}.ip", f()), &e.ip)?,
        (n, true) => Ipv4Addr::from(n),
        (_, false) => {
            return Err(invalid(
                &format!("{}.ipv4", f()),
                "is set beside ip: give one of them",
            ))
        }
    };
    Ok(EndpointSpec {
        ip,
        node: name_at(&|| format!("{}.node", f()), &e.node)?,
        ready: e.ready.unwrap_or(true),
        serving: e.serving,
        terminating: e.terminating.unwrap_or(false),
    })
}

/// An endpoint as a message, its address in text (`ip`: what replies give).
pub fn endpoint_pb(e: &EndpointSpec) -> pb::Endpoint {
    pb::Endpoint {
        ip: e.ip.to_string(),
        node: e.node.clone(),
        ready: Some(e.ready),
        serving: e.serving,
        terminating: Some(e.terminating),
        ipv4: 0,
    }
}

/// An endpoint as a message, its address as a number (`ipv4`) and its conditions only where
/// they differ from the defaults: what this crate's clients send (a request with 100,000
/// endpoints is decoded field by field).
pub fn endpoint_request(e: &EndpointSpec) -> pb::Endpoint {
    pb::Endpoint {
        ip: String::new(),
        node: e.node.clone(),
        ready: (!e.ready).then_some(false),
        serving: e.serving,
        terminating: e.terminating.then_some(true),
        ipv4: u32::from(e.ip),
    }
}

/// Endpoints from their messages.
pub fn endpoints(f: &str, es: &[pb::Endpoint]) -> Result<Vec<EndpointSpec>, ApiError> {
    es.iter()
        .enumerate()
        .map(|(i, e)| endpoint_at(&|| format!("{f}[{i}]"), e))
        .collect()
}

/// A Service from its message.
pub fn service(f: &str, s: &pb::Service) -> Result<ServiceSpec, ApiError> {
    service_at(&|| f.to_string(), s)
}

/// Puts a field's path on an error made without one (a big request has hundreds of
/// thousands of fields: their paths are made only for the error).
fn at<T>(r: Result<T, ApiError>, field: impl FnOnce() -> String) -> Result<T, ApiError> {
    r.map_err(|e| match e {
        ApiError::Invalid { reason, .. } => ApiError::Invalid {
            field: field(),
            reason,
        },
        other => other,
    })
}

fn service_at(f: At, s: &pb::Service) -> Result<ServiceSpec, ApiError> {
    let ips = |k: &str, v: &[String]| -> Result<Vec<Ipv4Addr>, ApiError> {
        v.iter()
            .enumerate()
            .map(|(i, x)| ip_at(&|| format!("{}.{k}[{i}]", f()), x))
            .collect()
    };
    let ports = s
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let f = |k: &str| format!("{}.ports[{i}].{k}", f());
            Ok(ServicePortSpec {
                name: p.name.clone(),
                protocol: at(protocol("", &p.protocol), || f("protocol"))?,
                port: at(port("", p.port), || f("port"))?,
                target_port: at(opt_port("", p.target_port), || f("target_port"))?,
                node_port: at(opt_port("", p.node_port), || f("node_port"))?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let k = |k: &str| format!("{}.{k}", f());
    Ok(ServiceSpec {
        name: name_at(&|| k("name"), &s.name)?,
        owner: at(owner("", &s.owner), || k("owner"))?,
        cluster_ip: ip_at(&|| k("cluster_ip"), &s.cluster_ip)?,
        ports,
        load_balancer_ips: ips("load_balancer_ips", &s.load_balancer_ips)?,
        external_ips: ips("external_ips", &s.external_ips)?,
        session_affinity: match s.session_affinity.as_str() {
            "" | "None" => SessionAffinity::None,
            "ClientIP" => SessionAffinity::ClientIp,
            other => {
                return Err(invalid(
                    &k("session_affinity"),
                    format!(
                        "unknown session affinity {} (None or ClientIP)",
                        quote(other)
                    ),
                ))
            }
        },
        affinity_timeout_seconds: if s.affinity_timeout_seconds == 0 {
            10800
        } else {
            s.affinity_timeout_seconds
        },
        external_traffic_policy: at(policy("", &s.external_traffic_policy), || {
            k("external_traffic_policy")
        })?,
        internal_traffic_policy: at(policy("", &s.internal_traffic_policy), || {
            k("internal_traffic_policy")
        })?,
        health_check_node_port: at(opt_port("", s.health_check_node_port), || {
            k("health_check_node_port")
        })?,
        endpoints: s
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| endpoint_at(&|| format!("{}.endpoints[{i}]", f()), e))
            .collect::<Result<_, _>>()?,
    })
}

/// Services converted on every core from this many on (10,000 take milliseconds).
const PARALLEL_SERVICES: usize = 1024;

/// A state message's Services, converted in parallel when there are many; the first bad one
/// in the list's order is the error, as if they were converted one by one.
fn services(list: &[pb::Service]) -> Result<Vec<ServiceSpec>, ApiError> {
    flowtable::parallel::try_map(list, PARALLEL_SERVICES, |i, x| {
        service_at(&|| format!("state.services[{i}]"), x)
    })
}

/// A Service as a message, its endpoints' addresses in text (replies).
pub fn service_pb(s: &ServiceSpec) -> pb::Service {
    service_msg(s, endpoint_pb)
}

/// A Service as a message, its endpoints' addresses as numbers (requests).
pub fn service_request(s: &ServiceSpec) -> pb::Service {
    service_msg(s, endpoint_request)
}

fn service_msg(s: &ServiceSpec, endpoint: fn(&EndpointSpec) -> pb::Endpoint) -> pb::Service {
    pb::Service {
        name: s.name.clone(),
        owner: flowtable::names::owner_shown(&s.owner).into(),
        cluster_ip: s.cluster_ip.to_string(),
        ports: s
            .ports
            .iter()
            .map(|p| pb::ServicePort {
                name: p.name.clone(),
                protocol: protocol_name(p.protocol).into(),
                port: p.port.into(),
                target_port: p.target_port.map(u32::from).unwrap_or(0),
                node_port: p.node_port.map(u32::from).unwrap_or(0),
            })
            .collect(),
        load_balancer_ips: s.load_balancer_ips.iter().map(|i| i.to_string()).collect(),
        external_ips: s.external_ips.iter().map(|i| i.to_string()).collect(),
        session_affinity: match s.session_affinity {
            SessionAffinity::None => "None".into(),
            SessionAffinity::ClientIp => "ClientIP".into(),
        },
        affinity_timeout_seconds: s.affinity_timeout_seconds,
        external_traffic_policy: policy_name(s.external_traffic_policy).into(),
        internal_traffic_policy: policy_name(s.internal_traffic_policy).into(),
        health_check_node_port: s.health_check_node_port.map(u32::from).unwrap_or(0),
        endpoints: s.endpoints.iter().map(endpoint).collect(),
    }
}

/// One writer's objects in a Replace.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    /// Pods.
    pub pods: Vec<PodSpec>,
    /// Other nodes.
    pub nodes: Vec<RemoteNodeSpec>,
    /// Services.
    pub services: Vec<ServiceSpec>,
}

/// The objects of a state message (what a writer other than the config replaces): its
/// node, VXLAN and Service settings must be unset.
pub fn objects(s: &pb::State) -> Result<Objects, ApiError> {
    for (set, k) in [
        (s.node.is_some(), "node"),
        (s.vxlan.is_some(), "vxlan"),
        (s.service_config.is_some(), "service_config"),
        (s.egress.is_some(), "egress"),
    ] {
        if set {
            return Err(invalid(
                &format!("state.{k}"),
                "is the node config's (owner \"config\"); another owner's Replace leaves it unset",
            ));
        }
    }
    lists(s)
}

/// The pods, nodes and Services of a state message.
fn lists(s: &pb::State) -> Result<Objects, ApiError> {
    Ok(Objects {
        pods: s
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| pod(&format!("state.pods[{i}]"), p))
            .collect::<Result<_, _>>()?,
        nodes: s
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| node(&format!("state.nodes[{i}]"), n))
            .collect::<Result<_, _>>()?,
        services: services(&s.services)?,
    })
}

/// Checks that every object of a Replace by `owner` (stored form) names that owner or none.
pub fn owned_by(s: &pb::State, owner: &str) -> Result<(), ApiError> {
    let check = |f: String, o: &str| -> Result<(), ApiError> {
        match flowtable::names::owner(o) {
            _ if o.is_empty() => Ok(()),
            Ok(x) if x == owner => Ok(()),
            _ => Err(invalid(
                &f,
                format!(
                    "{} is not the owner of this Replace ({})",
                    flowtable::names::quote(o),
                    flowtable::names::owner_shown(owner)
                ),
            )),
        }
    };
    for (i, p) in s.pods.iter().enumerate() {
        check(format!("state.pods[{i}].owner"), &p.owner)?;
    }
    for (i, n) in s.nodes.iter().enumerate() {
        check(format!("state.nodes[{i}].owner"), &n.owner)?;
    }
    for (i, x) in s.services.iter().enumerate() {
        check(format!("state.services[{i}].owner"), &x.owner)?;
    }
    Ok(())
}

/// The whole state from its message.
pub fn state(s: &pb::State) -> Result<StateFile, ApiError> {
    let n = s
        .node
        .as_ref()
        .ok_or_else(|| invalid("state.node", "is required"))?;
    let f = |k: &str| format!("state.node.{k}");
    let defaults = VxlanSpec::default();
    let vxlan = s.vxlan.unwrap_or_default();
    let cfg = s.service_config.clone().unwrap_or_default();
    let dcfg = ServiceConfigSpec::default();
    let Objects {
        pods,
        nodes,
        services,
    } = lists(s)?;
    Ok(StateFile {
        node: NodeSpec {
            name: name(&f("name"), &n.name)?,
            ip: ip(&f("ip"), &n.ip)?,
            pod_cidr: cidr(&f("pod_cidr"), &n.pod_cidr)?,
            gateway_ip: opt_ip(&f("gateway_ip"), &n.gateway_ip)?,
            gateway_mac: mac(&f("gateway_mac"), &n.gateway_mac)?,
            uplink: if n.uplink.is_empty() {
                "uplink".into()
            } else {
                n.uplink.clone()
            },
            uplink_mac: mac(&f("uplink_mac"), &n.uplink_mac)?,
            vtep_mac: opt_mac(&f("vtep_mac"), &n.vtep_mac)?,
            uplink_mtu: match n.uplink_mtu {
                0 => 1500,
                m => u16::try_from(m)
                    .map_err(|_| invalid(&f("uplink_mtu"), format!("{m} is outside 576..=9216")))?,
            },
            host_port: (!n.host_port.is_empty()).then(|| n.host_port.clone()),
            host_mac: opt_mac(&f("host_mac"), &n.host_mac)?,
        },
        vxlan: VxlanSpec {
            vni: if vxlan.vni == 0 {
                defaults.vni
            } else {
                vxlan.vni
            },
            port: match vxlan.port {
                0 => defaults.port,
                p => port("state.vxlan.port", p)?,
            },
        },
        pods,
        nodes,
        service_config: ServiceConfigSpec {
            service_cidr: if cfg.service_cidr.is_empty() {
                dcfg.service_cidr
            } else {
                cidr("state.service_config.service_cidr", &cfg.service_cidr)?
            },
            maglev_table_size: if cfg.maglev_table_size == 0 {
                dcfg.maglev_table_size
            } else {
                cfg.maglev_table_size
            },
            hairpin_ip: opt_ip("state.service_config.hairpin_ip", &cfg.hairpin_ip)?
                .unwrap_or(dcfg.hairpin_ip),
        },
        services,
        egress: egress(s.egress.as_ref())?,
    })
}

/// The `[egress]` section from its message (unset fields take the state file's defaults).
fn egress(e: Option<&pb::Egress>) -> Result<EgressSpec, ApiError> {
    let d = EgressSpec::default();
    let Some(e) = e else {
        return Ok(d);
    };
    // (Its limits are the snapshot's to check, as for the state file.)
    Ok(EgressSpec {
        masquerade: e.masquerade.unwrap_or(d.masquerade),
        non_masquerade_cidrs: e
            .non_masquerade_cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| cidr(&format!("state.egress.non_masquerade_cidrs[{i}]"), c))
            .collect::<Result<_, _>>()?,
        port_range: if e.port_range.is_empty() {
            d.port_range
        } else {
            e.port_range
                .parse()
                .map_err(|r: String| invalid("state.egress.port_range", r))?
        },
    })
}

/// The whole state as a message (a reply: endpoints' addresses in text).
pub fn state_pb(s: &StateFile, generation: u64) -> pb::State {
    state_msg(s, generation, service_pb)
}

/// The whole state as a Replace request sends it (endpoints' addresses as numbers).
pub fn state_request(s: &StateFile) -> pb::State {
    state_msg(s, 0, service_request)
}

fn state_msg(
    s: &StateFile,
    generation: u64,
    service: fn(&ServiceSpec) -> pb::Service,
) -> pb::State {
    let n = &s.node;
    pb::State {
        node: Some(pb::ThisNode {
            name: n.name.clone(),
            ip: n.ip.to_string(),
            pod_cidr: n.pod_cidr.to_string(),
            gateway_ip: n.gateway_ip.map(|g| g.to_string()).unwrap_or_default(),
            gateway_mac: n.gateway_mac.to_string(),
            uplink: n.uplink.clone(),
            uplink_mac: n.uplink_mac.to_string(),
            vtep_mac: n.vtep_mac.map(|m| m.to_string()).unwrap_or_default(),
            uplink_mtu: n.uplink_mtu.into(),
            host_port: n.host_port.clone().unwrap_or_default(),
            host_mac: n.host_mac.map(|m| m.to_string()).unwrap_or_default(),
        }),
        vxlan: Some(pb::Vxlan {
            vni: s.vxlan.vni,
            port: s.vxlan.port.into(),
        }),
        pods: s.pods.iter().map(pod_pb).collect(),
        nodes: s.nodes.iter().map(node_pb).collect(),
        service_config: Some(pb::ServiceConfig {
            service_cidr: s.service_config.service_cidr.to_string(),
            maglev_table_size: s.service_config.maglev_table_size,
            hairpin_ip: s.service_config.hairpin_ip.to_string(),
        }),
        services: s.services.iter().map(service).collect(),
        generation,
        egress: Some(pb::Egress {
            masquerade: Some(s.egress.masquerade),
            non_masquerade_cidrs: s
                .egress
                .non_masquerade_cidrs
                .iter()
                .map(ToString::to_string)
                .collect(),
            port_range: s.egress.port_range.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = include_str!("../../examples/node1.toml");

    #[test]
    fn state_round_trips() {
        let s = StateFile::parse(STATE).unwrap();
        assert_eq!(state(&state_pb(&s, 3)).unwrap(), s);
        let mut s = s;
        // Every combination of conditions survives the request's form, which leaves the
        // defaults (ready, not terminating) out.
        let e0 = s.services[0].endpoints[0].clone();
        s.services[0].endpoints = (0..12u32)
            .map(|k| EndpointSpec {
                ip: Ipv4Addr::from(u32::from(e0.ip) + k),
                ready: k & 1 != 0,
                terminating: k & 2 != 0,
                serving: [None, Some(false), Some(true)][(k / 4) as usize],
                ..e0.clone()
            })
            .collect();
        let r = state_request(&s);
        assert_eq!(state(&r).unwrap(), s);
        assert_eq!(state(&state_pb(&s, 1)).unwrap(), s);
        let e = &r.services[0].endpoints[3];
        assert!(e.ip.is_empty());
        assert_eq!(Ipv4Addr::from(e.ipv4), s.services[0].endpoints[3].ip);
        assert_eq!((e.ready, e.terminating), (None, Some(true)));
    }

    #[test]
    fn an_endpoint_gives_its_address_once() {
        let s = StateFile::parse(STATE).unwrap();
        let mut m = state_request(&s);
        m.services[1].endpoints[0].ip = "10.244.1.9".into();
        let e = state(&m).unwrap_err().to_string();
        assert_eq!(
            e,
            "state.services[1].endpoints[0].ipv4: is set beside ip: give one of them"
        );
        m.services[1].endpoints[0].ip.clear();
        m.services[1].endpoints[0].ipv4 = 0;
        let e = state(&m).unwrap_err().to_string();
        assert_eq!(e, "state.services[1].endpoints[0].ip: is required");
    }

    #[test]
    fn bad_fields_are_named() {
        let s = StateFile::parse(STATE).unwrap();
        let mut m = state_pb(&s, 1);
        m.pods[0].ip = "10.244.1.300".into();
        let e = state(&m).unwrap_err().to_string();
        assert_eq!(e, "state.pods[0].ip: '10.244.1.300' is not an IPv4 address");
        let mut m = state_pb(&s, 1);
        m.services[0].ports[0].protocol = "ICMP".into();
        let e = state(&m).unwrap_err().to_string();
        assert_eq!(
            e,
            "state.services[0].ports[0].protocol: unknown protocol 'ICMP' (TCP, UDP or SCTP)"
        );
        let mut m = state_pb(&s, 1);
        m.services[0].ports[0].port = 70000;
        let e = state(&m).unwrap_err().to_string();
        assert_eq!(
            e,
            "state.services[0].ports[0].port: 70000 is outside 1..=65535"
        );
        let mut m = state_pb(&s, 1);
        m.nodes[0].pod_cidr = "10.244.2.0/33".into();
        let e = state(&m).unwrap_err().to_string();
        assert!(e.starts_with("state.nodes[0].pod_cidr: "), "{e}");
        let mut m = state_pb(&s, 1);
        m.pods[0].mac = "02:00".into();
        let e = state(&m).unwrap_err().to_string();
        assert!(e.starts_with("state.pods[0].mac: "), "{e}");
    }

    #[test]
    fn converted_in_parallel_the_first_bad_service_in_order_is_the_error() {
        let s = StateFile::parse(STATE).unwrap();
        let mut m = state_pb(&s, 1);
        let one = m.services[0].clone();
        m.services = (0..3 * PARALLEL_SERVICES)
            .map(|i| pb::Service {
                name: format!("many/svc-{i}"),
                ..one.clone()
            })
            .collect();
        let good = state(&m).unwrap();
        assert_eq!(good.services.len(), 3 * PARALLEL_SERVICES);
        assert!(good
            .services
            .iter()
            .enumerate()
            .all(|(i, x)| x.name == format!("many/svc-{i}")));
        let late = 3 * PARALLEL_SERVICES - 5;
        let early = PARALLEL_SERVICES + 7;
        m.services[late].endpoints[0].ip = "10.244.1".into();
        m.services[early].external_traffic_policy = "Nearest".into();
        let e = state(&m).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "state.services[{early}].external_traffic_policy: unknown traffic policy \
                 'Nearest' (Cluster or Local)"
            )
        );
        m.services[early].external_traffic_policy = String::new();
        let e = state(&m).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("state.services[{late}].endpoints[0].ip: '10.244.1' is not an IPv4 address")
        );
    }
}
