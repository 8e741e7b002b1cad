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
    /// The node's underlay IP (its VTEP).
    pub ip: Ipv4Addr,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// The node's VTEP MAC: the inner destination MAC of frames sent to it.
    pub vtep_mac: MacAddr,
    /// Next-hop MAC on the uplink towards the node: the outer destination MAC.
    pub mac: MacAddr,
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
