//! vnet pod ports (`switchd --pod-ports vnet`) through the real daemon: the pods' veths carry
//! no XDP program, so the pods keep TSO/GSO and the switch reads their 64 KB packets whole
//! through a packet socket; the node's stack is kept off them by the tc program. Checked as a
//! user would: every path of the two-node topology (pod to pod on a node, across nodes over
//! VXLAN, Services, NodePorts, the node's own clients) echoes byte for byte over real kernel
//! TCP and UDP, GSO packets arrive and go whole pod to pod, nothing is dropped, and a switchd
//! that stops leaves the pods' veths to the kernel again. Needs root.

#![allow(missing_docs)]
mod common;

use common::topo::{drops, skip_unless_root, state, Topo};

/// The counter `key` of port `name` in a stats document.
fn port(s: &serde_json::Value, name: &str, key: &str) -> u64 {
    s["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}: {s}"))[key]
        .as_u64()
        .unwrap_or_else(|| panic!("port {name} has no {key}: {s}"))
}

/// Every pod port of node `n`: its name and mode.
fn modes(s: &serde_json::Value) -> Vec<(String, String)> {
    s["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_string(),
                p["mode"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn every_path(t: &Topo) {
    assert!(t.ping("a", "10.244.1.3", &[]), "pod-a -> pod-b (same node)");
    assert!(t.ping("a", "10.244.2.3", &[]), "pod-a -> pod-d (across)");
    assert!(t.ping("a", "10.244.1.1", &[]), "pod-a -> its gateway");
    assert!(t.ping("a", "198.18.0.1", &[]), "pod-a -> its node");
    assert!(t.ping("n1", "10.244.1.2", &[]), "node1 -> pod-a");
    assert!(t.ping("n1", "10.244.2.3", &[]), "node1 -> pod-d");
    assert!(
        t.ping("a", "10.244.2.3", &["-M", "do", "-s", "1422"]),
        "1450-byte DF ping across nodes"
    );
    // Bulk TCP: the pods' stacks hand GSO packets to the switch.
    t.echo("a", "tcp", "10.244.1.3", 8080, 8_000_000);
    t.echo("a", "tcp", "10.244.2.3", 8080, 4_000_000);
    t.echo("c", "tcp", "10.244.1.3", 8080, 4_000_000);
    t.echo("a", "udp", "10.244.2.2", 5353, 1200);
    t.echo("c", "udp", "10.244.1.2", 5353, 1200);
    for _ in 0..4 {
        t.echo("a", "tcp", "10.96.0.10", 80, 1_000_000);
    }
    t.echo("a", "udp", "10.96.0.53", 53, 512);
    t.echo("ext", "tcp", "198.18.0.1", 30080, 1_000_000);
    t.echo("ext", "tcp", "198.18.0.2", 30080, 60_000);
    t.echo("n1", "tcp", "10.244.2.3", 8080, 1_000_000);
    for _ in 0..4 {
        t.echo("n1", "tcp", "10.96.0.10", 80, 60_000);
    }
}

#[test]
fn every_path_through_vnet_pod_ports_keeps_the_pods_gso() {
    if skip_unless_root("the vnet namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd_with(1, &state(1), &["--pod-ports", "vnet"]);
    t.switchd_with(2, &state(2), &["--pod-ports", "vnet"]);
    for pod in ["b", "d"] {
        t.serve(pod, "tcp", 8080);
    }
    t.serve("c", "udp", 5353);
    t.serve("a", "udp", 5353);
    assert_eq!(
        t.xdp_attached("n1"),
        1,
        "only the uplink has an XDP program"
    );
    every_path(&t);

    let s = t.stats(1);
    for (name, mode) in modes(&s) {
        let want = if name == "uplink" { "copy" } else { "vnet" };
        assert_eq!(mode, want, "port {name}");
    }
    assert!(
        port(&s, "veth-a", "rx_gso") > 0,
        "pod-a's stack sent GSO packets: {s}"
    );
    assert!(
        port(&s, "veth-b", "rx_gso") > 0,
        "pod-b's stack sent GSO packets: {s}"
    );
    assert!(s["actions"]["encapsulated"].as_u64().unwrap() > 0);
    assert!(s["nat"]["dnat"].as_u64().unwrap() > 0);
    assert!(s["nat"]["reverse_nat"].as_u64().unwrap() > 0);
    assert!(
        s["checksums_offloaded"].as_u64().unwrap() > 0,
        "partial checksums went on partial: {s}"
    );
    assert!(s["xdp"]["redirected"].as_u64().unwrap() > 0);
    assert_eq!(drops(&s), vec![], "node1 dropped nothing");
    assert_eq!(drops(&t.stats(2)), vec![], "node2 dropped nothing");
}

#[test]
fn vnet_pod_ports_across_two_workers() {
    if skip_unless_root("the vnet namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd_with(1, &state(1), &["--pod-ports", "vnet", "--cores", "0,1"]);
    t.switchd(2, &state(2));
    for pod in ["b", "d"] {
        t.serve(pod, "tcp", 8080);
    }
    t.serve("c", "udp", 5353);
    t.serve("a", "udp", 5353);
    every_path(&t);
    let s = t.stats(1);
    assert_eq!(s["workers"], 2);
    assert!(
        s["handed_off"].as_u64().unwrap() > 0,
        "frames crossed workers"
    );
    assert_eq!(drops(&s), vec![], "node1 dropped nothing");
    assert_eq!(drops(&t.stats(2)), vec![], "node2 dropped nothing");
}
