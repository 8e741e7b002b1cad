//! Frames larger than a UMEM frame (multi-buffer AF_XDP) through the real daemon: a jumbo
//! underlay (9000, pods 8950) across to a node the kernel forwards (Flannel's vxlan device,
//! the reference), and a node-local MTU of 65,000 between the pods of one node with the
//! overlay's MTU on their default route. Checked as a user would: data echoed byte for byte
//! over TCP and UDP, pings of the largest size, frames counted on the pod's port far fewer
//! than the bytes would take at the smaller MTU, and a too-big frame answered with ICMP
//! fragmentation-needed naming the overlay's MTU. Needs root.

#![allow(missing_docs)]
mod common;

use common::topo::{drops, port, skip_unless_root, state, Topo};
use std::path::PathBuf;

/// Node `n`'s demo state with `uplink_mtu` set to `mtu`, written into the topology's dir.
fn state_at(t: &Topo, n: u8, mtu: u16) -> PathBuf {
    let text = std::fs::read_to_string(state(n)).expect("demo state");
    let mut out = String::new();
    let mut found = false;
    for line in text.lines() {
        if line.starts_with("uplink_mtu = ") {
            out.push_str(&format!("uplink_mtu = {mtu}\n"));
            found = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(found, "the demo state has an uplink_mtu line");
    let p = t.dir.path().join(format!("node{n}-{mtu}.toml"));
    std::fs::write(&p, out).expect("write state");
    p
}

/// Both nodes on switchd over a 9000 underlay with a node-local pod MTU of 65000 (node1's
/// switchd with `extra` arguments); echo servers on pod-b (TCP 7001, UDP 7002) and pod-d
/// (TCP 7001).
fn local_mtu_topology(extra: &[&str]) -> Topo {
    let mut t = Topo::up_env(
        ["switch", "switch"],
        &[("TOPO_MTU", "9000"), ("TOPO_LOCAL_MTU", "65000")],
    );
    let (s1, s2) = (state_at(&t, 1, 9000), state_at(&t, 2, 9000));
    t.switchd_with(1, &s1, extra);
    t.switchd(2, &s2);
    t.serve("b", "tcp", 7001);
    t.serve("b", "udp", 7002);
    t.serve("d", "tcp", 7001);
    t
}

/// Pings `to` from `from` with `size` bytes of payload, DF set; the output.
fn ping_df(t: &Topo, from: &str, to: &str, size: usize) -> (bool, String) {
    let o = t.run(
        from,
        &[
            "ping",
            "-c",
            "2",
            "-i",
            "0.3",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            to,
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// A pod whose route lets it send more than the overlay carries gets fragmentation-needed
/// from the switch with the overlay's MTU (8950), for a frame that spans several buffers.
fn too_big_is_answered_with_the_overlay_mtu(t: &Topo, mtu_of_eth0: u32) {
    if mtu_of_eth0 < 9500 {
        t.ok("n1", &["ip", "link", "set", "veth-a", "mtu", "9500"]);
        t.ok("a", &["ip", "link", "set", "eth0", "mtu", "9500"]);
    }
    t.ok(
        "a",
        &[
            "ip",
            "route",
            "replace",
            "10.244.2.0/24",
            "via",
            "10.244.1.1",
            "dev",
            "eth0",
            "mtu",
            "9500",
        ],
    );
    let (ok, text) = ping_df(t, "a", "10.244.2.2", 9400);
    assert!(
        !ok,
        "a 9428-byte packet cannot cross a 9000 underlay: {text}"
    );
    assert!(
        text.contains("mtu = 8950") || text.contains("mtu=8950"),
        "the sender learns the overlay's MTU from the switch: {text}"
    );
    let s = t.stats(1);
    assert!(
        s["actions"]["icmp_error_sent"].as_u64().unwrap_or(0) >= 1,
        "counted as an ICMP error sent: {s}"
    );
}

#[test]
fn jumbo_frames_cross_to_the_kernels_vxlan_and_back() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up_env(["switch", "kernel"], &[("TOPO_MTU", "9000")]);
    let st = state_at(&t, 1, 9000);
    t.switchd(1, &st);
    t.serve("c", "tcp", 7001);
    t.serve("c", "udp", 7002);
    let (ok, text) = ping_df(&t, "a", "10.244.2.2", 8950 - 28);
    assert!(ok, "an 8950-byte ping crosses both ways: {text}");
    let before = t.stats(1);
    let (rx0, tx0) = (port(&before, "veth-a", "rx"), port(&before, "veth-a", "tx"));
    t.echo("a", "tcp", "10.244.2.2", 7001, 4_000_000);
    t.echo("a", "udp", "10.244.2.2", 7002, 8900);
    let s = t.stats(1);
    let (rx, tx) = (
        port(&s, "veth-a", "rx") - rx0,
        port(&s, "veth-a", "tx") - tx0,
    );
    // 4 MB each way at MSS 8910 is about 450 data frames each way plus ACKs; at 1450 it
    // would be over 2,700.
    assert!(
        rx < 1400 && tx < 1400,
        "jumbo frames, not 1500-byte ones: rx {rx}, tx {tx}"
    );
    assert!(
        rx > 400 && tx > 400,
        "the echo went through veth-a: rx {rx}, tx {tx}"
    );
    for a in ["encapsulated", "decapsulated"] {
        assert!(s["actions"][a].as_u64().unwrap() > 0, "{a}: {s}");
    }
    assert!(
        drops(&s).is_empty(),
        "no drops: {:?}, ports {}",
        drops(&s),
        s["ports"]
    );
    too_big_is_answered_with_the_overlay_mtu(&t, 8950);
}

#[test]
fn a_node_local_mtu_carries_64k_frames_between_pods_of_a_node() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let t = local_mtu_topology(&[]);
    let (ok, text) = ping_df(&t, "a", "10.244.1.3", 64000);
    assert!(ok, "a 64 KB ping to a pod of the same node: {text}");
    let before = t.stats(1);
    let rx0 = port(&before, "veth-a", "rx");
    t.echo("a", "tcp", "10.244.1.3", 7001, 8_000_000);
    t.echo("a", "udp", "10.244.1.3", 7002, 60_000);
    let s = t.stats(1);
    let rx = port(&s, "veth-a", "rx") - rx0;
    // 8 MB at MSS 64960 is about 130 data frames plus ACKs of the echo; at 8950 it would be
    // 900 and more.
    assert!(rx < 500, "64 KB frames on veth-a: {rx} frames received");
    assert!(s["actions"]["delivered_local"].as_u64().unwrap() > 0, "{s}");
    // The pods' partial checksums were left for the kernel to finish (transmit metadata),
    // and the echo above came back byte for byte: the receiving stacks took them.
    let offloaded = |s: &serde_json::Value| s["checksums_offloaded"].as_u64().unwrap_or(0);
    assert!(
        offloaded(&s) > offloaded(&before) + 100,
        "checksums offloaded: {} -> {}",
        offloaded(&before),
        offloaded(&s)
    );
    // A burst of 64 KB frames takes 17 fill-ring frames each: one that arrives while the
    // worker is off its core can outrun the fill ring (counted by the kernel; TCP resends).
    // Anything else, or more than one in twenty, is a fault.
    let d = drops(&s);
    let lost: u64 = d
        .iter()
        .filter(|(r, _)| r == "kernel_rx_dropped")
        .map(|(_, n)| n)
        .sum();
    assert!(
        d.iter().all(|(r, _)| r == "kernel_rx_dropped") && lost * 20 <= rx.max(100),
        "no drops but a few at the fill ring: {d:?}, ports {}",
        s["ports"]
    );
    // Across nodes the default route's MTU (8950) holds.
    t.echo("a", "tcp", "10.244.2.3", 7001, 2_000_000);
    let (ok, text) = ping_df(&t, "a", "10.244.2.3", 8950 - 28);
    assert!(ok, "an 8950-byte ping to the other node: {text}");
    too_big_is_answered_with_the_overlay_mtu(&t, 65000);
}

/// Two workers on node1: pods' ports are split between them, so 64 KB frames between the
/// pods of node1 and to the uplink cross from one worker to the other as linked chains.
#[test]
fn chains_cross_from_worker_to_worker() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let t = local_mtu_topology(&["--cores", "0,1"]);
    t.echo("a", "tcp", "10.244.1.3", 7001, 4_000_000);
    t.echo("a", "udp", "10.244.1.3", 7002, 60_000);
    t.echo("a", "tcp", "10.244.2.3", 7001, 2_000_000);
    let s = t.stats(1);
    assert_eq!(s["workers"], 2);
    assert!(
        s["handed_off"].as_u64().unwrap() > 0,
        "frames crossed workers: {s}"
    );
    assert!(
        drops(&s).is_empty(),
        "no drops: {:?}, ports {}",
        drops(&s),
        s["ports"]
    );
}
