//! Host-network Service endpoints through the real switchd: `default/kubernetes`
//! (10.96.0.1:443) whose endpoint is a TCP server on node2's own address (198.18.0.2:6443, as
//! an API server is), reached from a pod on each node and from node1's kernel, and a Service
//! whose endpoint is node1's own address, reached from a pod on node1 and from node1 itself;
//! both also by NodePort from outside the cluster, the first by its LoadBalancer IP too.
//! Real kernel TCP on both ends; payloads checked byte for byte.

#![allow(missing_docs)]
mod common;

use common::topo::{skip_unless_root, state, Topo};
use std::path::PathBuf;

const SERVICES: &str = r#"
[[services]]
name = "default/kubernetes"
cluster_ip = "10.96.0.1"
ports = [{ name = "https", protocol = "TCP", port = 443, target_port = 6443, node_port = 30443 }]
load_balancer_ips = ["198.18.1.10"]
endpoints = [{ ip = "198.18.0.2", node = "node2" }]

[[services]]
name = "default/node1-api"
cluster_ip = "10.96.0.2"
ports = [{ protocol = "TCP", port = 443, target_port = 7443, node_port = 30444 }]
endpoints = [{ ip = "198.18.0.1", node = "node1" }]
"#;

/// Node `n`'s demo state with the two Services.
fn with_services(t: &Topo, n: u8) -> PathBuf {
    let mut s = std::fs::read_to_string(state(n)).unwrap();
    s.push_str(SERVICES);
    let p = t.dir.path().join(format!("node{n}-hostnet.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn services_reach_endpoints_on_node_addresses() {
    if skip_unless_root("the host-network endpoint namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let (s1, s2) = (with_services(&t, 1), with_services(&t, 2));
    t.switchd(1, &s1);
    t.switchd(2, &s2);
    // The "API server": node2's kernel, on its own address.
    t.serve("n2", "tcp", 6443);
    t.serve("n1", "tcp", 7443);

    // A pod on node1: over the underlay to node2, the reply back over VXLAN.
    t.echo("a", "tcp", "10.96.0.1", 443, 1_000_000);
    // A pod on node2: the endpoint is its own node's kernel, behind the host port.
    t.echo("c", "tcp", "10.96.0.1", 443, 1_000_000);
    // node1's kernel itself (its route to the Service CIDR is the host port).
    t.echo("n1", "tcp", "10.96.0.1", 443, 100_000);
    // An endpoint on node1's own address: from a pod, and from node1 itself (a hairpin).
    t.echo("b", "tcp", "10.96.0.2", 443, 1_000_000);
    t.echo("n1", "tcp", "10.96.0.2", 443, 100_000);

    // NodePort from outside the cluster: to the other node's address (node1 -> node2), to the
    // receiving node's own (node2 -> node2, node1 -> node1).
    t.echo("ext", "tcp", "198.18.0.1", 30443, 100_000);
    t.echo("ext", "tcp", "198.18.0.2", 30443, 100_000);
    t.echo("ext", "tcp", "198.18.0.1", 30444, 100_000);
    // A LoadBalancer IP, routed to node1 by the outside client (as a cloud balancer would).
    t.ok(
        "ext",
        &["ip", "route", "add", "198.18.1.10/32", "via", "198.18.0.1"],
    );
    t.echo("ext", "tcp", "198.18.1.10", 443, 100_000);

    let s = t.stats(1);
    assert!(
        s["actions"]["to_node"].as_u64().unwrap() > 0,
        "{}",
        s["actions"]
    );
    // Nothing went the wrong way: no drops for lack of a route, no spoofing, nothing the
    // kernel could not take.
    let drops = common::topo::drops(&s);
    for bad in ["no_route", "spoofed_source", "kernel_undeliverable"] {
        assert!(
            !drops.iter().any(|(k, _)| k == bad),
            "node1 dropped {bad}: {drops:?}"
        );
    }
}
