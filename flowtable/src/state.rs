//! The declarative state file: this node, its pods and the other nodes, in TOML.
//!
//! Design: plain serde types mirror the file (unknown keys are refused, so a typo is an error,
//! not a silently ignored setting); [`StateFile::parse`] reports syntax errors with line and
//! column, and [`crate::snapshot::Snapshot::build`] validates meaning and names the offending
//! field. Parsing is pure: reading the file is the caller's business. The schema is documented
//! in `docs/state-file.md` and shown by `examples/node1.toml`.

use crate::cidr::Ipv4Cidr;
use crate::wire::MacAddr;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::net::Ipv4Addr;

/// The whole state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    /// This node.
    pub node: NodeSpec,
    /// VXLAN overlay settings.
    #[serde(default)]
    pub vxlan: VxlanSpec,
    /// Pods on this node.
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// The other nodes of the cluster.
    #[serde(default)]
    pub nodes: Vec<RemoteNodeSpec>,
    /// Cluster-wide Service settings.
    #[serde(default)]
    pub service_config: ServiceConfigSpec,
    /// Services and their endpoints.
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    /// Pods' traffic leaving the cluster.
    #[serde(default)]
    pub egress: EgressSpec,
}

/// Pods' traffic to destinations outside the cluster: masqueraded to the node's IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// Translate the source of such traffic to the node's IP (Flannel's `ipMasq`); when off it
    /// leaves the uplink with the pod's address.
    #[serde(default = "yes")]
    pub masquerade: bool,
    /// Destinations never masqueraded, besides every pod CIDR and the Service CIDR (the
    /// ip-masq-agent's `nonMasqueradeCIDRs`); at most [`MAX_NON_MASQUERADE_CIDRS`].
    #[serde(default)]
    pub non_masquerade_cidrs: Vec<Ipv4Cidr>,
    /// The node's ports (and ICMP identifiers) masqueraded flows use; must not overlap the
    /// kernel's ephemeral ports (`net.ipv4.ip_local_port_range`).
    #[serde(default = "default_port_range")]
    pub port_range: PortRange,
}

/// Most `egress.non_masquerade_cidrs`.
pub const MAX_NON_MASQUERADE_CIDRS: usize = 256;

fn default_port_range() -> PortRange {
    PortRange {
        first: 61000,
        last: 65535,
    }
}

impl Default for EgressSpec {
    fn default() -> Self {
        EgressSpec {
            masquerade: true,
            non_masquerade_cidrs: Vec::new(),
            port_range: default_port_range(),
        }
    }
}

/// An inclusive range of ports, written `FIRST-LAST` (e.g. `61000-65535`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (at least `first`).
    pub last: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn len(&self) -> u32 {
        u32::from(self.last) + 1 - u32::from(self.first)
    }

    /// Never empty (`first <= last` is checked on parsing); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `p` is in the range.
    pub fn contains(&self, p: u16) -> bool {
        (self.first..=self.last).contains(&p)
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range FIRST-LAST (1024-65535)");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first < 1024 || last < first {
            return Err(format!(
                "{s:?} must be FIRST-LAST with 1024 <= FIRST <= LAST <= 65535"
            ));
        }
        Ok(PortRange { first, last })
    }
}

/// Cluster-wide Service settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfigSpec {
    /// The Service CIDR; every ClusterIP must be inside it.
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Cidr,
    /// Maglev lookup table size per Service port; must be a prime.
    #[serde(default = "default_maglev")]
    pub maglev_table_size: u32,
    /// Source address a pod's connection to itself through a Service is translated to, so
    /// that the reply comes back through the switch (Cilium's default).
    #[serde(default = "default_hairpin")]
    pub hairpin_ip: Ipv4Addr,
}

fn default_service_cidr() -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 12).unwrap_or_else(|| unreachable!())
}

fn default_maglev() -> u32 {
    crate::maglev::DEFAULT_TABLE_SIZE as u32
}

fn default_hairpin() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 42, 1)
}

impl Default for ServiceConfigSpec {
    fn default() -> Self {
        ServiceConfigSpec {
            service_cidr: default_service_cidr(),
            maglev_table_size: default_maglev(),
            hairpin_ip: default_hairpin(),
        }
    }
}

/// A Service (the parts of a Kubernetes Service and its EndpointSlices the dataplane uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `namespace/name`.
    pub name: String,
    /// Which writer owns it ("" is the node's config: the state file and SIGHUP; others
    /// name themselves, e.g. `cni`, `agent`). A Replace covers only its writer's objects. Not
    /// part of the state file.
    #[serde(skip)]
    pub owner: String,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    /// LoadBalancer ingress IPs (served for traffic arriving on the uplink).
    #[serde(default)]
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// externalIPs (served like LoadBalancer IPs).
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    /// sessionAffinity.
    #[serde(default)]
    pub session_affinity: SessionAffinity,
    /// sessionAffinityConfig.clientIP.timeoutSeconds (1 to 86400).
    #[serde(default = "default_affinity_timeout")]
    pub affinity_timeout_seconds: u32,
    /// externalTrafficPolicy.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    /// internalTrafficPolicy.
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    /// healthCheckNodePort (needs externalTrafficPolicy Local): the node answers HTTP on its
    /// IP at this TCP port, 200 while it has a ready local endpoint, 503 otherwise, so a load
    /// balancer sends the Service's traffic only to nodes that serve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check_node_port: Option<u16>,
    /// Endpoints, as in EndpointSlices.
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

fn default_affinity_timeout() -> u32 {
    10800
}

/// A Service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePortSpec {
    /// Port name (may be empty for a single-port Service).
    #[serde(default)]
    pub name: String,
    /// Protocol.
    #[serde(default)]
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// The port on the endpoints; defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
    /// The NodePort (30000-32767), if any.
    #[serde(default)]
    pub node_port: Option<u16>,
}

/// An endpoint of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Name of the node the pod runs on.
    pub node: String,
    /// conditions.ready.
    #[serde(default = "yes")]
    pub ready: bool,
    /// conditions.serving; defaults to `ready`.
    #[serde(default)]
    pub serving: Option<bool>,
    /// conditions.terminating.
    #[serde(default)]
    pub terminating: bool,
}

fn yes() -> bool {
    true
}

/// Transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// sessionAffinity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SessionAffinity {
    /// No affinity: every connection is balanced on its own.
    #[default]
    None,
    /// The same client IP goes to the same endpoint until the timeout.
    #[serde(rename = "ClientIP")]
    ClientIp,
}

/// externalTrafficPolicy / internalTrafficPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node.
    Local,
}

/// This node's identity and addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// The node's IP on the underlay (also its VTEP address).
    pub ip: Ipv4Addr,
    /// The pod CIDR assigned to this node.
    pub pod_cidr: Ipv4Cidr,
    /// Gateway address the pods route through; defaults to the CIDR's first host address.
    #[serde(default)]
    pub gateway_ip: Option<Ipv4Addr>,
    /// MAC the switch answers ARP with and sends to pods from.
    pub gateway_mac: MacAddr,
    /// Name of the uplink port (interface).
    #[serde(default = "default_uplink")]
    pub uplink: String,
    /// MAC of the uplink interface (outer source MAC of VXLAN frames).
    pub uplink_mac: MacAddr,
    /// This node's VTEP MAC (inner source MAC of encapsulated frames); defaults to `uplink_mac`.
    #[serde(default)]
    pub vtep_mac: Option<MacAddr>,
    /// MTU of the uplink; encapsulated packets larger than this are refused.
    #[serde(default = "default_mtu")]
    pub uplink_mtu: u16,
    /// The host port: the switch's side of a veth pair whose other side is the node's own
    /// interface into the cluster (routes to the cluster's pod and Service CIDRs with the pod
    /// CIDR's network address as source, as Flannel does). Optional.
    #[serde(default)]
    pub host_port: Option<String>,
    /// MAC of the node's side of the host port's veth pair (required with `host_port`).
    #[serde(default)]
    pub host_mac: Option<MacAddr>,
}

fn default_uplink() -> String {
    "uplink".into()
}

fn default_mtu() -> u16 {
    1500
}

/// VXLAN overlay settings (Flannel's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanSpec {
    /// VXLAN network identifier (24 bits).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// UDP destination port (8472 is Flannel's, 4789 IANA's).
    #[serde(default = "default_port")]
    pub port: u16,
}

fn default_vni() -> u32 {
    1
}

fn default_port() -> u16 {
    8472
}

impl Default for VxlanSpec {
    fn default() -> Self {
        VxlanSpec {
            vni: default_vni(),
            port: default_port(),
        }
    }
}

/// A pod on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// Pod name (namespace/name, or any unique label).
    pub name: String,
    /// Which writer owns it ("" is the node's config: the state file and SIGHUP; others
    /// name themselves, e.g. `cni`, `agent`). A Replace covers only its writer's objects. Not
    /// part of the state file.
    #[serde(skip)]
    pub owner: String,
    /// The pod's IP.
    pub ip: Ipv4Addr,
    /// The MAC of the pod's eth0.
    pub mac: MacAddr,
    /// The port (host-side veth interface) the pod is attached to.
    pub port: String,
}

/// Another node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteNodeSpec {
    /// Node name.
    pub name: String,
    /// Which writer owns it ("" is the node's config: the state file and SIGHUP; others
    /// name themselves, e.g. `cni`, `agent`). A Replace covers only its writer's objects. Not
    /// part of the state file.
    #[serde(skip)]
    pub owner: String,
    /// The node's underlay IP (its VTEP).
    pub ip: Ipv4Addr,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// The node's VTEP MAC: the inner destination MAC of frames sent to it.
    pub vtep_mac: MacAddr,
    /// Next-hop MAC on the uplink towards the node: the outer destination MAC. Absent: the
    /// switch resolves it from the node's routing and neighbour tables, as for egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

/// Error from parsing a state file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

impl StateFile {
    /// Parses TOML text; syntax and type errors name the line, column and key.
    pub fn parse(text: &str) -> Result<StateFile, ParseError> {
        toml::from_str(text).map_err(|e| ParseError(e.to_string().trim_end().to_string()))
    }

    /// Renders the state back as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

macro_rules! text_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}

text_serde!(MacAddr);
text_serde!(Ipv4Cidr);
text_serde!(PortRange);

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[node]
name = "node1"
ip = "198.18.0.1"
pod_cidr = "10.244.1.0/24"
gateway_mac = "02:00:00:00:01:01"
uplink_mac = "02:00:c6:12:00:01"
"#;

    #[test]
    fn defaults() {
        let s = StateFile::parse(MIN).unwrap();
        assert_eq!(s.vxlan, VxlanSpec { vni: 1, port: 8472 });
        assert_eq!(s.node.uplink, "uplink");
        assert_eq!(s.node.uplink_mtu, 1500);
        assert!(s.pods.is_empty() && s.nodes.is_empty());
        let again = StateFile::parse(&s.to_toml()).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn errors_name_line_and_key() {
        let bad = MIN.replace("02:00:00:00:01:01", "02:00:00:00:01");
        let e = StateFile::parse(&bad).unwrap_err().to_string();
        assert!(
            e.contains("line 6") && e.contains("not a MAC address"),
            "{e}"
        );
        let typo = format!("{MIN}gatway = \"x\"\n");
        let e = StateFile::parse(&typo).unwrap_err().to_string();
        assert!(e.contains("unknown field") && e.contains("gatway"), "{e}");
        let cidr = MIN.replace("10.244.1.0/24", "10.244.1.7/24");
        let e = StateFile::parse(&cidr).unwrap_err().to_string();
        assert!(e.contains("host bits"), "{e}");
    }
}
