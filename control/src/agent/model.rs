//! From Kubernetes objects to switchd's: Nodes to other nodes, Services and their
//! EndpointSlices to Services with endpoints, following kube-proxy's reading of them.
//!
//! Design: [`desired`] takes the cluster's objects as the API server serves them and returns
//! what the agent wants switchd to hold (owner [`OWNER`]) and what it left out, each with
//! the reason, so that one bad object never keeps the rest from being programmed:
//! - a Node needs an IPv4 InternalIP, an IPv4 pod CIDR (`spec.podCIDRs`, else `podCIDR`) and
//!   the VTEP MAC its agent publishes in the [`VTEP_MAC_ANNOTATION`]; its next-hop MAC is
//!   left to switchd (resolved from this node's routing and neighbour tables). This node is
//!   not among them (its settings are switchd's own config).
//! - Services: headless and ExternalName Services and those labelled
//!   [`SERVICE_PROXY_NAME_LABEL`] are not programmed (kube-proxy's rules), nor IPv6 ones
//!   (until dual-stack). Ports keep name, protocol, port and nodePort; the port on the
//!   endpoints is the one the Service's EndpointSlices give for the port's name (they carry
//!   the resolved targetPort, named or not), else a numeric targetPort, else the port.
//! - EndpointSlices (IPv4, labelled `kubernetes.io/service-name`) of a Service are merged:
//!   each endpoint's first address, its node (`nodeName`; else the node whose pod CIDR or
//!   address holds it), and its conditions with the API's defaults (ready unknown = ready,
//!   serving unknown = ready, terminating unknown = false); an address listed twice is taken
//!   once, a ready listing first.
//!
//! Thread-safety: pure functions over borrowed data.

use flowtable::cidr::Ipv4Cidr;
use flowtable::state::{
    EndpointSpec, Protocol, RemoteNodeSpec, ServicePortSpec, ServiceSpec, SessionAffinity,
    TrafficPolicy,
};
use flowtable::wire::MacAddr;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The owner of everything the agent writes.
pub const OWNER: &str = "agent";
/// The annotation each agent sets on its own Node: its VTEP MAC (Flannel's backend-data).
pub const VTEP_MAC_ANNOTATION: &str = "nodeswitch.io/vtep-mac";
/// Services with this label belong to another proxy (kube-proxy's rule).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// sessionAffinityConfig.clientIP.timeoutSeconds when unset.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// An object the agent does not program, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// `Node`, `Service` or `EndpointSlice`.
    pub kind: &'static str,
    /// `name` or `namespace/name`.
    pub name: String,
    /// Why (for the log and the object's Event).
    pub reason: String,
}

/// What the agent wants this node's switchd to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The other nodes, by name.
    pub nodes: Vec<RemoteNodeSpec>,
    /// The Services, by name, with their endpoints.
    pub services: Vec<ServiceSpec>,
    /// What was left out.
    pub skipped: Vec<Skipped>,
}

fn full_name(ns: Option<&String>, name: Option<&String>) -> String {
    match ns {
        Some(ns) => format!("{ns}/{}", name.map_or("", String::as_str)),
        None => name.cloned().unwrap_or_default(),
    }
}

fn v4(s: &str) -> Option<Ipv4Addr> {
    s.parse().ok()
}

/// A node's IPv4 InternalIP and pod CIDR, known even when it cannot be programmed (to place
/// endpoints without `nodeName`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    name: String,
    ip: Option<Ipv4Addr>,
    cidr: Option<Ipv4Cidr>,
}

/// What the nodes give every Service's endpoints: where each node is, and which nodes are
/// programmed (this one included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Placement {
    placed: Vec<Placed>,
    known: BTreeSet<String>,
}

fn place(n: &Node) -> Placed {
    let name = n.metadata.name.clone().unwrap_or_default();
    let ip = n
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .and_then(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| v4(&a.address))
        });
    let spec = n.spec.as_ref();
    let cidr = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .and_then(|c| c.iter().find_map(|c| c.parse::<Ipv4Cidr>().ok()))
        .or_else(|| {
            spec.and_then(|s| s.pod_cidr.as_ref())
                .and_then(|c| c.parse().ok())
        });
    Placed { name, ip, cidr }
}

/// The desired state from the cluster's objects, for the node named `this_node`.
pub fn desired(
    this_node: &str,
    nodes: &[Node],
    services: &[Service],
    slices: &[EndpointSlice],
) -> Desired {
    let mut out = Desired::default();
    let (at, mut specs, mut skipped) = self::nodes(this_node, nodes.iter());
    out.nodes.append(&mut specs);
    out.skipped.append(&mut skipped);

    // Slices by Service.
    let mut by_service: BTreeMap<String, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let Some(svc) = slice_service(s) {
            by_service.entry(svc).or_default().push(s);
        }
    }
    for s in services {
        let name = service_name(s);
        let slices = by_service.get(&name).map_or(&[][..], Vec::as_slice);
        match service(&name, s, slices, &at) {
            Ok(Some((spec, mut left))) => {
                out.services.push(spec);
                out.skipped.append(&mut left);
            }
            Ok(None) => {}
            Err(reason) => out.skipped.push(Skipped {
                kind: "Service",
                name,
                reason,
            }),
        }
    }
    out.services.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A Service's name as switchd knows it (`namespace/name`).
pub(crate) fn service_name(s: &Service) -> String {
    full_name(s.metadata.namespace.as_ref(), s.metadata.name.as_ref())
}

/// An object's `namespace/name` (its name alone when cluster-scoped).
pub(crate) fn object_name(m: &kube::api::ObjectMeta) -> String {
    full_name(m.namespace.as_ref(), m.name.as_ref())
}

/// The Service (`namespace/name`) an EndpointSlice is for, if it is one the agent reads
/// (labelled with its Service, IPv4).
pub(crate) fn slice_service(s: &EndpointSlice) -> Option<String> {
    let svc = s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))?;
    (s.address_type == "IPv4").then(|| full_name(s.metadata.namespace.as_ref(), Some(svc)))
}

/// The other nodes (sorted by name), what they give the endpoints, and the nodes left out.
pub(crate) fn nodes<'a>(
    this_node: &str,
    nodes: impl Iterator<Item = &'a Node>,
) -> (Placement, Vec<RemoteNodeSpec>, Vec<Skipped>) {
    let nodes: Vec<&Node> = nodes.collect();
    let mut out = Desired::default();
    let placed: Vec<Placed> = nodes.iter().map(|n| place(n)).collect();
    let mut known: BTreeSet<String> = BTreeSet::new();
    known.insert(this_node.to_string());
    for (n, p) in nodes.iter().zip(&placed) {
        if p.name == this_node || p.name.is_empty() {
            continue;
        }
        let skip = |reason: String| Skipped {
            kind: "Node",
            name: p.name.clone(),
            reason,
        };
        let (Some(ip), Some(cidr)) = (p.ip, p.cidr) else {
            out.skipped.push(skip(if p.ip.is_none() {
                "has no IPv4 InternalIP".into()
            } else {
                "has no IPv4 pod CIDR yet".into()
            }));
            continue;
        };
        let mac = n
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(VTEP_MAC_ANNOTATION));
        let Some(vtep_mac) = mac.and_then(|m| m.parse::<MacAddr>().ok()) else {
            out.skipped.push(skip(match mac {
                None => format!("has no {VTEP_MAC_ANNOTATION} annotation yet (its agent sets it)"),
                Some(m) => format!(
                    "{VTEP_MAC_ANNOTATION} {} is not a MAC address",
                    flowtable::names::quote(m)
                ),
            }));
            continue;
        };
        known.insert(p.name.clone());
        out.nodes.push(RemoteNodeSpec {
            name: p.name.clone(),
            owner: OWNER.into(),
            ip,
            pod_cidr: cidr,
            vtep_mac,
            mac: None,
        });
    }
    out.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    (Placement { placed, known }, out.nodes, out.skipped)
}

/// One Service: `Ok(None)` if it is not for this proxy at all (headless, ExternalName,
/// another proxy's), `Err` with the reason if it cannot be programmed.
pub(crate) fn service(
    name: &str,
    s: &Service,
    slices: &[&EndpointSlice],
    at: &Placement,
) -> Result<Option<(ServiceSpec, Vec<Skipped>)>, String> {
    let (nodes, known) = (&at.placed, &at.known);
    if s.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return Ok(None);
    }
    let Some(spec) = s.spec.as_ref() else {
        return Ok(None);
    };
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return Ok(None);
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => return Ok(None),
        Some(ip) => match v4(ip) {
            Some(ip) => ip,
            None if ip.contains(':') => {
                return Err("is IPv6 (not supported until dual-stack)".into())
            }
            None => {
                return Err(format!(
                    "clusterIP {} is not an address",
                    flowtable::names::quote(ip)
                ))
            }
        },
    };
    let mut left = Vec::new();
    // Each Service port's number on the endpoints, from the slices (by the port's name).
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let pname = p.name.clone().unwrap_or_default();
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                return Err(format!(
                    "ports[{i}].protocol {} is unknown",
                    flowtable::names::quote(other)
                ))
            }
        };
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("ports[{i}].port {} is not a port", p.port))?;
        let from_slices = slices
            .iter()
            .flat_map(|s| s.ports.iter().flatten())
            .filter(|sp| sp.name.clone().unwrap_or_default() == pname)
            .filter(|sp| {
                sp.protocol.as_deref().unwrap_or("TCP") == p.protocol.as_deref().unwrap_or("TCP")
            })
            .find_map(|sp| {
                sp.port
                    .and_then(|n| u16::try_from(n).ok())
                    .filter(|n| *n != 0)
            });
        let target = from_slices.or(match &p.target_port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok().filter(|n| *n != 0),
            _ => None,
        });
        let node_port = match kind {
            "NodePort" | "LoadBalancer" => p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0),
            _ => None,
        };
        ports.push(ServicePortSpec {
            name: pname,
            protocol,
            port,
            target_port: target.filter(|t| *t != port),
            node_port,
        });
    }
    let load_balancer_ips = if kind == "LoadBalancer" {
        s.status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .map(|ing| {
                ing.iter()
                    .filter_map(|i| i.ip.as_deref().and_then(v4))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .filter_map(|ip| v4(ip))
        .collect();
    let session_affinity = match spec.session_affinity.as_deref() {
        Some("ClientIP") => SessionAffinity::ClientIp,
        _ => SessionAffinity::None,
    };
    let affinity_timeout_seconds = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds)
        .and_then(|t| u32::try_from(t).ok())
        .unwrap_or(DEFAULT_AFFINITY_TIMEOUT);
    let policy = |p: Option<&str>| match p {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    // externalTrafficPolicy means something only for Services reachable from outside.
    let external_traffic_policy = if kind == "ClusterIP" && spec.external_ips.is_none() {
        TrafficPolicy::Cluster
    } else {
        policy(spec.external_traffic_policy.as_deref())
    };

    // Endpoints, merged over the slices: an address once, a ready listing first.
    let mut endpoints: Vec<EndpointSpec> = Vec::new();
    let mut at: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for sl in slices {
        let sname = full_name(sl.metadata.namespace.as_ref(), sl.metadata.name.as_ref());
        for e in &sl.endpoints {
            let Some(ip) = e.addresses.first().and_then(|a| v4(a)) else {
                continue;
            };
            let node = match &e.node_name {
                Some(n) => Some(n.clone()),
                None => nodes
                    .iter()
                    .find(|p| p.cidr.is_some_and(|c| c.contains(ip)) || p.ip == Some(ip))
                    .map(|p| p.name.clone()),
            };
            let Some(node) = node.filter(|n| known.contains(n)) else {
                left.push(Skipped {
                    kind: "EndpointSlice",
                    name: sname.clone(),
                    reason: format!(
                        "endpoint {ip} of Service {name}: its node {} is not programmed",
                        e.node_name
                            .as_deref()
                            .map_or("(none)".into(), flowtable::names::quote)
                    ),
                });
                continue;
            };
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let ep = EndpointSpec {
                ip,
                node,
                ready,
                serving: Some(c.and_then(|c| c.serving).unwrap_or(ready)),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
            };
            match at.get(&ip) {
                Some(&i) => {
                    if ep.ready && !endpoints[i].ready {
                        endpoints[i] = ep;
                    }
                }
                None => {
                    at.insert(ip, endpoints.len());
                    endpoints.push(ep);
                }
            }
        }
    }
    endpoints.sort_by_key(|e| u32::from(e.ip));
    Ok(Some((
        ServiceSpec {
            name: name.to_string(),
            owner: OWNER.into(),
            cluster_ip,
            ports,
            load_balancer_ips,
            external_ips,
            session_affinity,
            affinity_timeout_seconds,
            external_traffic_policy,
            internal_traffic_policy: policy(spec.internal_traffic_policy.as_deref()),
            // Kubernetes allocates it only with the Local policy; nothing to serve otherwise.
            health_check_node_port: (external_traffic_policy == TrafficPolicy::Local)
                .then(|| {
                    spec.health_check_node_port
                        .and_then(|p| u16::try_from(p).ok())
                })
                .flatten()
                .filter(|&p| p != 0),
            endpoints,
        },
        left,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, ip: &str, cidr: Option<&str>, mac: Option<&str>) -> Node {
        let mut n = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "resourceVersion": "1", "uid": format!("uid-{name}")},
            "spec": {},
            "status": {"addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip}
            ]}
        });
        if let Some(c) = cidr {
            n["spec"] = json!({"podCIDR": c, "podCIDRs": [c]});
        }
        if let Some(m) = mac {
            n["metadata"]["annotations"] = json!({ VTEP_MAC_ANNOTATION: m });
        }
        serde_json::from_value(n).unwrap()
    }

    fn service(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    fn cluster() -> (Vec<Node>, Vec<Service>, Vec<EndpointSlice>) {
        let nodes = vec![
            node(
                "node1",
                "198.18.0.1",
                Some("10.244.1.0/24"),
                Some("02:00:00:00:ff:01"),
            ),
            node(
                "node2",
                "198.18.0.2",
                Some("10.244.2.0/24"),
                Some("02:00:00:00:ff:02"),
            ),
            node("node3", "198.18.0.3", Some("10.244.3.0/24"), None),
            node("node4", "198.18.0.4", None, Some("02:00:00:00:ff:04")),
        ];
        let services = vec![
            service(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default"},
                "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                         "ipFamilies": ["IPv4"], "ports": [
                    {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}
                ]}
            })),
            service(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "lb", "namespace": "shop"},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.20",
                         "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Cluster",
                         "sessionAffinity": "ClientIP",
                         "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                         "externalIPs": ["192.0.2.7"], "healthCheckNodePort": 31000,
                         "ports": [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}, {"hostname": "lb.example"}]}}
            })),
            service(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "kubernetes", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443, "targetPort": 6443}]}
            })),
            service(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "headless", "namespace": "default"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
            service(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.com"}})),
            service(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "other", "namespace": "default",
                             "labels": {SERVICE_PROXY_NAME_LABEL: "someone-else"}},
                "spec": {"clusterIP": "10.96.0.30", "ports": [{"port": 80}]}})),
            service(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "six", "namespace": "default"},
                "spec": {"clusterIP": "fd00::10", "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}})),
        ];
        let slices = vec![
            slice(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-abc", "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": [
                    {"addresses": ["10.244.1.3"], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": "node1"},
                    {"addresses": ["10.244.2.3"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "node2"}
                ]
            })),
            slice(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-def", "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": [
                    {"addresses": ["10.244.2.4"], "conditions": {}},
                    {"addresses": ["10.244.3.4"], "conditions": {"ready": true}, "nodeName": "node3"},
                    {"addresses": ["10.244.1.3"], "conditions": {"ready": false}, "nodeName": "node1"}
                ]
            })),
            slice(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "web-v6", "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: "web"}},
                "addressType": "IPv6", "ports": [{"name": "http", "port": 8080}],
                "endpoints": [{"addresses": ["fd00::3"]}]
            })),
            slice(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: "kubernetes"}},
                "addressType": "IPv4", "ports": [{"name": "https", "protocol": "TCP", "port": 6443}],
                "endpoints": [{"addresses": ["198.18.0.2"], "conditions": {"ready": true}}]
            })),
        ];
        (nodes, services, slices)
    }

    #[test]
    fn a_cluster_becomes_the_nodes_and_services_kube_proxy_would_program() {
        let (nodes, services, slices) = cluster();
        let d = desired("node1", &nodes, &services, &slices);
        // Only node2 is complete (node3 lacks its VTEP MAC, node4 its pod CIDR).
        assert_eq!(d.nodes.len(), 1);
        let n2 = &d.nodes[0];
        assert_eq!(
            (
                n2.name.as_str(),
                n2.ip,
                n2.pod_cidr.to_string(),
                n2.vtep_mac.to_string(),
                n2.mac
            ),
            (
                "node2",
                "198.18.0.2".parse().unwrap(),
                "10.244.2.0/24".into(),
                "02:00:00:00:ff:02".into(),
                None
            )
        );
        assert_eq!(n2.owner, OWNER);
        let names: Vec<&str> = d.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["default/kubernetes", "default/web", "shop/lb"]);

        let web = &d.services[1];
        assert_eq!(web.cluster_ip, Ipv4Addr::new(10, 96, 0, 10));
        // The named targetPort resolved by the slices.
        assert_eq!(web.ports[0].target_port, Some(8080));
        let eps: Vec<(String, &str, bool, Option<bool>, bool)> = web
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.ip.to_string(),
                    e.node.as_str(),
                    e.ready,
                    e.serving,
                    e.terminating,
                )
            })
            .collect();
        assert_eq!(
            eps,
            [
                // Listed twice: the ready listing wins.
                ("10.244.1.3".into(), "node1", true, Some(true), false),
                ("10.244.2.3".into(), "node2", false, Some(true), true),
                // No nodeName: placed by the pod CIDR; no conditions: ready.
                ("10.244.2.4".into(), "node2", true, Some(true), false),
            ]
        );
        // node3's endpoint cannot be programmed (node3 is not), and says so.
        assert!(d.skipped.iter().any(|s| s.kind == "EndpointSlice"
            && s.name == "default/web-def"
            && s.reason.contains("10.244.3.4")));

        let lb = &d.services[2];
        assert_eq!(lb.ports[0].protocol, Protocol::Udp);
        assert_eq!(
            (lb.ports[0].target_port, lb.ports[0].node_port),
            (Some(5353), Some(30053))
        );
        assert_eq!(lb.load_balancer_ips, [Ipv4Addr::new(198, 51, 100, 9)]);
        assert_eq!(lb.external_ips, [Ipv4Addr::new(192, 0, 2, 7)]);
        assert_eq!(lb.session_affinity, SessionAffinity::ClientIp);
        assert_eq!(lb.affinity_timeout_seconds, 60);
        assert_eq!(lb.external_traffic_policy, TrafficPolicy::Local);
        assert!(lb.endpoints.is_empty());

        // The API server's endpoint: no nodeName, placed at node2's own address.
        let k = &d.services[0];
        assert_eq!(k.ports[0].target_port, Some(6443));
        assert_eq!(
            (k.endpoints[0].ip, k.endpoints[0].node.as_str()),
            (Ipv4Addr::new(198, 18, 0, 2), "node2")
        );

        // Left out with a reason: the incomplete nodes and the IPv6 Service; not mentioned:
        // headless, ExternalName and another proxy's Services.
        let reasons: Vec<(&str, &str)> = d
            .skipped
            .iter()
            .filter(|s| s.kind != "EndpointSlice")
            .map(|s| (s.kind, s.name.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("Node", "node3"),
                ("Node", "node4"),
                ("Service", "default/six")
            ]
        );
    }

    #[test]
    fn the_result_is_a_state_switchd_accepts() {
        let (nodes, services, slices) = cluster();
        let d = desired("node1", &nodes, &services, &slices);
        let mut state =
            flowtable::state::StateFile::parse(include_str!("../../../examples/demo/node1.toml"))
                .unwrap();
        state.nodes = d.nodes;
        state.services = d.services;
        flowtable::snapshot::Snapshot::build(&state, 1).expect("switchd accepts it");
    }

    #[test]
    fn hostile_objects_are_refused_by_name_not_by_panic() {
        let s = service(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bad", "namespace": "x"},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 70000}, {"port": 0}]}}));
        let d = desired("node1", &[], &[s], &[]);
        assert!(d.services.is_empty());
        assert_eq!(d.skipped[0].name, "x/bad");
        assert!(
            d.skipped[0].reason.contains("ports[0].port 70000"),
            "{:?}",
            d.skipped
        );
        let n = node("n\nx", "not-an-ip", Some("10.244.9.0/24"), Some("zz"));
        let d = desired("node1", &[n], &[], &[]);
        assert!(d.nodes.is_empty() && d.skipped.len() == 1);
    }
}
