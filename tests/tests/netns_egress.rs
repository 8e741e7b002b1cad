//! Egress masquerade through the real switchd: pods on both nodes reach a host outside the
//! cluster (203.0.113.10, behind the router namespace that is the nodes' default gateway)
//! by ping, TCP (1 MB, byte for byte) and UDP; the outside host sees only node addresses;
//! traceroute-style probes get their time-exceeded back (from the switch at TTL 1, from the
//! router through the masquerade at TTL 2); a hop with a smaller MTU makes TCP settle by
//! path-MTU discovery; 10,000 concurrent UDP flows with a range of 1,000 ports count the
//! exhaustion and keep the flows that got a port; the node's own TCP and ping to the same
//! host work meanwhile. The next hop is what the node's kernel says (netlink). Needs root.

#![allow(missing_docs)]
mod common;

use common::topo::{root_dir, skip_unless_root, state, Topo};
use std::path::PathBuf;

const OUTSIDE: &str = "203.0.113.10";

/// Node `n`'s demo state with `extra` appended.
fn state_with(t: &Topo, n: u8, extra: &str) -> PathBuf {
    let mut s = std::fs::read_to_string(state(n)).unwrap();
    s.push_str(extra);
    let tag = extra
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let p = t.dir.path().join(format!("node{n}-egress-{tag:08x}.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

fn tool(name: &str) -> String {
    root_dir()
        .join("tests/tools")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn json(t: &Topo, host: &str, args: &[&str]) -> serde_json::Value {
    let out = t.run(host, args);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "{args:?} in {host}: {e}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Starts an echo server in the outside host that notes its peers; returns the notes' path.
fn serve_outside(t: &mut Topo, proto: &str, port: u16) -> PathBuf {
    let peers = t.dir.path().join(format!("peers-{proto}-{port}"));
    let env = format!("ECHO_PEERS={}", peers.display());
    t.spawn(
        "out",
        &[
            "env",
            &env,
            "python3",
            &tool("echo.py"),
            &format!("serve-{proto}"),
            &port.to_string(),
        ],
    );
    t.wait_listening("out", port);
    peers
}

fn peer_ips(path: &PathBuf) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.rsplit_once(':').map(|(ip, _)| ip.to_string()))
        .collect()
}

#[test]
fn pods_reach_the_outside_masqueraded_to_their_node() {
    if skip_unless_root("the egress namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let (s1, s2) = (state(1), state(2));
    t.switchd(1, &s1);
    t.switchd(2, &s2);
    let tcp_peers = serve_outside(&mut t, "tcp", 8080);
    let udp_peers = serve_outside(&mut t, "udp", 5353);

    for pod in ["a", "b", "c"] {
        assert!(t.ping(pod, OUTSIDE, &[]), "ping {pod} -> {OUTSIDE}");
        t.echo(pod, "tcp", OUTSIDE, 8080, 1_000_000);
        t.echo(pod, "udp", OUTSIDE, 5353, 1200);
    }
    // The node's own connections, besides: its kernel's ports are outside the range.
    t.echo("n1", "tcp", OUTSIDE, 8080, 100_000);
    assert!(t.ping("n1", OUTSIDE, &[]), "the node's own ping");

    let want: std::collections::BTreeSet<String> = ["198.18.0.1", "198.18.0.2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(peer_ips(&tcp_peers), want, "TCP peers the outside host saw");
    assert_eq!(peer_ips(&udp_peers), want, "UDP peers the outside host saw");

    // Traceroute-style probes: the switch is the first hop, the router the second.
    let first = json(
        &t,
        "a",
        &["python3", &tool("ttl.py"), OUTSIDE, "33434", "1"],
    );
    assert_eq!(
        (first["type"].as_u64(), first["from"].as_str()),
        (Some(11), Some("10.244.1.1")),
        "{first}"
    );
    let second = json(
        &t,
        "a",
        &["python3", &tool("ttl.py"), OUTSIDE, "33435", "2"],
    );
    assert_eq!(
        (second["type"].as_u64(), second["from"].as_str()),
        (Some(11), Some("198.18.0.254")),
        "{second}"
    );

    // switchctl explain follows the same next hop and translation.
    let (rc, out, err) = t.ctl(1, &["explain", "udp", "10.244.1.2:5000", "203.0.113.10:53"]);
    eprintln!("{out}");
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("masqueraded") && out.contains("198.18.0.1"),
        "{out}"
    );

    let s = t.stats(1);
    assert!(
        s["actions"]["masqueraded"].as_u64().unwrap() > 0,
        "{}",
        s["actions"]
    );
    let drops = common::topo::drops(&s);
    for bad in [
        "no_next_hop",
        "snat_ports_exhausted",
        "egress_no_flow",
        "no_route",
    ] {
        assert!(
            !drops.iter().any(|(k, _)| k == bad),
            "node1 dropped {bad}: {drops:?}"
        );
    }
}

#[test]
fn a_smaller_mtu_beyond_the_router_makes_tcp_settle() {
    if skip_unless_root("the egress PMTU namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let s1 = state(1);
    t.switchd(1, &s1);
    // The router's link to the outside carries 1280 bytes, the pods' 1450, and the outside
    // host advertises an MSS for 1450 (as a host on a bigger link would): the pod's
    // full-size DF segments get "fragmentation needed" from the router, sent to the node's
    // address, which the switch must translate for the pod.
    t.ok("rt", &["ip", "link", "set", "eth1", "mtu", "1280"]);
    t.ok("out", &["ip", "link", "set", "eth0", "mtu", "1280"]);
    t.ok(
        "out",
        &[
            "ip",
            "route",
            "replace",
            "default",
            "via",
            "203.0.113.1",
            "advmss",
            "1410",
        ],
    );
    serve_outside(&mut t, "tcp", 8080);
    t.echo("a", "tcp", OUTSIDE, 8080, 1_000_000);
    let route = t.ok("a", &["ip", "route", "get", OUTSIDE]);
    assert!(
        route.contains("mtu 1280"),
        "the pod learnt the path MTU: {route}"
    );
}

#[test]
fn an_exhausted_port_range_keeps_the_flows_that_have_a_port() {
    if skip_unless_root("the egress exhaustion namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let s1 = state_with(&t, 1, "\n[egress]\nport_range = \"61000-61999\"\n");
    t.switchd(1, &s1);
    serve_outside(&mut t, "udp", 5353);
    let r = json(
        &t,
        "a",
        &["python3", &tool("udpflows.py"), OUTSIDE, "5353", "10000"],
    );
    let s = t.stats(1);
    // One destination, 1,000 ports: exactly 1,000 flows get one, and keep it.
    let why = format!("{r} {} {}", s["drops"], s["worker_drops"]);
    assert_eq!(r["answered"].as_u64(), Some(1000), "{why}");
    assert_eq!(r["again"].as_u64(), Some(1000), "{why}");
    // Every other flow's datagram is dropped and counted: for want of a port, or (on a
    // loaded machine) by the kernel before the switch saw it, on the pod's veth or at the
    // switch port's socket.
    let drops = common::topo::drops(&s);
    let counted: u64 = drops
        .iter()
        .filter(|(k, _)| {
            [
                "snat_ports_exhausted",
                "kernel_rx_ring_full",
                "kernel_rx_dropped",
            ]
            .contains(&k.as_str())
        })
        .map(|(_, v)| *v)
        .sum();
    let veth: u64 = t
        .ok("a", &["cat", "/sys/class/net/eth0/statistics/tx_dropped"])
        .trim()
        .parse()
        .unwrap();
    eprintln!("exhaustion: {drops:?}, pod veth tx_dropped {veth}");
    assert!(
        counted + veth >= 9000,
        "{drops:?}, pod veth tx_dropped {veth}"
    );
    assert!(counted >= 8000, "most are the switch's: {drops:?}");
    // The node's own traffic is untouched by the full range.
    t.echo("n1", "udp", OUTSIDE, 5353, 100);

    // A range over the kernel's ephemeral ports is refused while switchd runs, naming it;
    // another range takes effect at once (the XDP program steers its replies).
    let overlap = state_with(&t, 1, "\n[egress]\nport_range = \"40000-41000\"\n");
    let (rc, _, err) = t.ctl(1, &["apply", "-f", overlap.to_str().unwrap()]);
    assert_ne!(rc, 0);
    assert!(
        err.contains("egress.port_range") && err.contains("ip_local_port_range"),
        "{err}"
    );
    let moved = state_with(&t, 1, "\n[egress]\nport_range = \"63000-63999\"\n");
    let (rc, _, err) = t.ctl(1, &["apply", "-f", moved.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    let peers = serve_outside(&mut t, "udp", 5354);
    t.echo("b", "udp", OUTSIDE, 5354, 100);
    let port: u16 = std::fs::read_to_string(&peers)
        .unwrap()
        .split(':')
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .unwrap();
    assert!((63000..=63999).contains(&port), "{port}");
}

#[test]
fn a_node_listed_without_its_mac_is_reached_through_the_kernels_neighbour_table() {
    if skip_unless_root("the next-hop namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    // node1 is told node2's address but not its MAC (as an agent that reads Node objects
    // would be): the switch asks node1's kernel to resolve it and keep it resolved.
    let text = std::fs::read_to_string(state(1)).unwrap();
    let without = text.replace("mac = \"02:00:c6:12:00:02\"\n", "");
    assert_ne!(without, text);
    let p = t.dir.path().join("node1-no-mac.toml");
    std::fs::write(&p, without).unwrap();
    t.switchd(1, &p);
    t.switchd(2, &state(2));
    t.serve("d", "tcp", 8080);
    t.echo("a", "tcp", "10.244.2.3", 8080, 1_000_000);
    assert!(t.ping("a", "10.244.2.2", &[]), "ping a -> c");
    let neigh = t.ok(
        "n1",
        &["ip", "neigh", "show", "198.18.0.2", "dev", "uplink"],
    );
    assert!(
        neigh.contains("02:00:c6:12:00:02"),
        "node1's kernel resolved node2: {neigh}"
    );
}
