//! This node's own config for switchd, from its Node object: what a DaemonSet's init step
//! writes before switchd starts (`nodeswitch-agent node-config`).
//!
//! Design: a pure function from the Node (name, IPv4 InternalIP, IPv4 pod CIDR) and the
//! uplink's facts (name, MAC, MTU, read by the caller) to three files: switchd's state file
//! (`[node]` with a host port, `[service_config]`; the other nodes and the Services are the
//! agent's to write over the API), a shell environment file for the host port's setup
//! (`NODESWITCH_*` variables) and the CNI network config (host-local over the pod CIDR).
//! Addresses and MACs are derived, not chosen at random, so a restart writes the same files:
//! the gateway MAC is `02:00` and the gateway address, the host port's kernel side `02:01`
//! and it. Thread-safety: pure.

use super::model;
use flowtable::cidr::Ipv4Cidr;
use flowtable::state::{NodeSpec, ServiceConfigSpec, StateFile, VxlanSpec};
use flowtable::wire::MacAddr;
use k8s_openapi::api::core::v1::Node;
use std::net::Ipv4Addr;

/// The switch's side of the host port.
pub const HOST_PORT: &str = "nsw0";
/// The kernel's side of the host port.
pub const HOST_IF: &str = "nsw-host";

/// What the uplink is, as the caller read it off the node.
#[derive(Debug, Clone)]
pub struct Uplink {
    /// Interface name.
    pub name: String,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u16,
}

/// The cluster-wide settings the files need.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The Service CIDR.
    pub service_cidr: Ipv4Cidr,
    /// The cluster's pod CIDR (every node's pod CIDR inside it), routed into the host port.
    pub cluster_cidr: Ipv4Cidr,
    /// The cluster DNS Service address, for the CNI config (none: no `dns`).
    pub dns: Option<Ipv4Addr>,
}

/// The three files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// switchd's state file.
    pub state: String,
    /// `NAME=value` lines for the host port's setup script.
    pub env: String,
    /// The CNI network config list.
    pub conflist: String,
}

fn mac_of(prefix: [u8; 2], ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([prefix[0], prefix[1], o[0], o[1], o[2], o[3]])
}

/// The files for `node`; `Err` names what the Node lacks.
pub fn files(node: &Node, uplink: &Uplink, cluster: &ClusterSettings) -> Result<Files, String> {
    let d = model::desired("", std::slice::from_ref(node), &[], &[]);
    let name = node.metadata.name.clone().unwrap_or_default();
    // (The model refuses a node without its VTEP MAC; this node's is its own to choose.)
    let placed = d.nodes.first().map(|n| (n.ip, n.pod_cidr)).or_else(|| {
        let mut n = node.clone();
        n.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(model::VTEP_MAC_ANNOTATION.into(), uplink.mac.to_string());
        let d = model::desired("", std::slice::from_ref(&n), &[], &[]);
        d.nodes.first().map(|n| (n.ip, n.pod_cidr))
    });
    let Some((ip, pod_cidr)) = placed else {
        let why = d
            .skipped
            .first()
            .map_or("is not usable".to_string(), |s| s.reason.clone());
        return Err(format!("Node {}: {why}", flowtable::names::quote(&name)));
    };
    if !cluster.cluster_cidr.contains(pod_cidr.network()) {
        return Err(format!(
            "Node {}: its pod CIDR {pod_cidr} is outside the cluster CIDR {}",
            flowtable::names::quote(&name),
            cluster.cluster_cidr
        ));
    }
    let gateway = pod_cidr
        .nth(1)
        .ok_or_else(|| format!("pod CIDR {pod_cidr} has no gateway address"))?;
    let host_mac = mac_of([2, 1], gateway);
    let state = StateFile {
        node: NodeSpec {
            name: name.clone(),
            ip,
            pod_cidr,
            gateway_ip: None,
            gateway_mac: mac_of([2, 0], gateway),
            uplink: uplink.name.clone(),
            uplink_mac: uplink.mac,
            vtep_mac: None,
            uplink_mtu: uplink.mtu,
            host_port: Some(HOST_PORT.into()),
            host_mac: Some(host_mac),
        },
        vxlan: VxlanSpec::default(),
        pods: Vec::new(),
        nodes: Vec::new(),
        service_config: ServiceConfigSpec {
            service_cidr: cluster.service_cidr,
            ..ServiceConfigSpec::default()
        },
        services: Vec::new(),
        egress: flowtable::state::EgressSpec {
            non_masquerade_cidrs: vec![cluster.cluster_cidr],
            ..Default::default()
        },
    };
    // What switchd will refuse, refused here first.
    flowtable::snapshot::Snapshot::build(&state, 1)
        .map_err(|e| format!("the node config is invalid: {}: {}", e.field, e.reason))?;
    let env = format!(
        "NODESWITCH_NODE={}\nNODESWITCH_UPLINK={}\nNODESWITCH_HOST_IF={HOST_IF}\n\
         NODESWITCH_HOST_PORT={HOST_PORT}\nNODESWITCH_HOST_MAC={host_mac}\n\
         NODESWITCH_HOST_IP={}\nNODESWITCH_POD_CIDR={pod_cidr}\nNODESWITCH_CLUSTER_CIDR={}\n\
         NODESWITCH_SERVICE_CIDR={}\nNODESWITCH_POD_MTU={}\n",
        name,
        uplink.name,
        pod_cidr.network(),
        cluster.cluster_cidr,
        cluster.service_cidr,
        uplink.mtu.saturating_sub(50),
    );
    let mut conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "nodeswitch",
        "plugins": [{
            "type": "nodeswitch",
            "socket": crate::client::DEFAULT_SOCKET,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr.to_string()}]]}
        }]
    });
    if let Some(dns) = cluster.dns {
        conf["plugins"][0]["dns"] = serde_json::json!({
            "nameservers": [dns.to_string()],
            "search": ["svc.cluster.local", "cluster.local"]
        });
    }
    Ok(Files {
        state: state.to_toml(),
        env,
        conflist: serde_json::to_string_pretty(&conf).unwrap_or_default() + "\n",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClusterSettings {
        ClusterSettings {
            service_cidr: "10.96.0.0/12".parse().unwrap(),
            cluster_cidr: "10.244.0.0/16".parse().unwrap(),
            dns: Some(Ipv4Addr::new(10, 96, 0, 10)),
        }
    }

    fn uplink() -> Uplink {
        Uplink {
            name: "eth0".into(),
            mac: "02:00:c6:12:00:01".parse().unwrap(),
            mtu: 1500,
        }
    }

    #[test]
    fn a_node_object_gives_switchds_config_the_host_port_and_the_cni_config() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"},
            "spec": {"podCIDR": "10.244.1.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}
        }))
        .unwrap();
        let f = files(&n, &uplink(), &settings()).unwrap();
        let s = StateFile::parse(&f.state).unwrap();
        assert_eq!(
            (s.node.name.as_str(), s.node.ip, s.node.pod_cidr.to_string()),
            (
                "node1",
                Ipv4Addr::new(198, 18, 0, 1),
                "10.244.1.0/24".into()
            )
        );
        assert_eq!(s.node.gateway_mac.to_string(), "02:00:0a:f4:01:01");
        assert_eq!(s.node.host_mac.unwrap().to_string(), "02:01:0a:f4:01:01");
        assert_eq!(
            s.egress.non_masquerade_cidrs[0].to_string(),
            "10.244.0.0/16"
        );
        assert!(
            f.env.contains("NODESWITCH_HOST_IP=10.244.1.0\n"),
            "{}",
            f.env
        );
        assert!(f.env.contains("NODESWITCH_POD_MTU=1450\n"), "{}", f.env);
        let c: serde_json::Value = serde_json::from_str(&f.conflist).unwrap();
        assert_eq!(
            c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.1.0/24"
        );
        // The same Node, the same files.
        assert_eq!(files(&n, &uplink(), &settings()).unwrap(), f);
    }

    #[test]
    fn a_node_without_its_addresses_is_named() {
        let n: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": "node9"},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.9"}]}
        }))
        .unwrap();
        let e = files(&n, &uplink(), &settings()).unwrap_err();
        assert!(e.contains("node9") && e.contains("pod CIDR"), "{e}");
    }
}
