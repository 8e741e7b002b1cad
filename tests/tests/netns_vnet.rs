//! vnet pod ports (`switchd --pod-ports vnet`) through the real daemon: the pods' veths carry
//! no XDP program, so the pods keep TSO/GSO and the switch reads their 64 KB packets whole
//! through a packet socket; the node's stack is kept off them by the tc program. Checked as a
//! user would: every path of the two-node topology (pod to pod on a node, across nodes over
//! VXLAN, Services, NodePorts, the node's own clients) echoes byte for byte over real kernel
//! TCP and UDP, GSO packets arrive and go whole pod to pod, nothing is dropped, and a switchd
//! that stops leaves the pods' veths to the kernel again. Needs root.

#![allow(missing_docs)]
mod common;

use common::topo::{drops, port, resets, root_dir, sh, skip_unless_root, state, switchd_bin, Topo};
use std::time::{Duration, Instant};

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
    assert!(
        port(&s, "veth-a", "tx_joined") > 0,
        "segments from the overlay joined for pod-a: {s}"
    );
    assert!(
        port(&s, "veth-a", "tx_joined_segments") > 2 * port(&s, "veth-a", "tx_joined"),
        "several segments per joined packet: {s}"
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
    t.switchd_with(2, &state(2), &["--pod-ports", "vnet"]);
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

/// Sends `sig` to node1's switchd `i` and waits for it to exit.
fn stop(t: &mut Topo, i: usize, sig: &str) {
    let pid = t.daemons[i].child.id().to_string();
    sh(&["kill", sig, &pid]);
    let _ = t.daemons[i].child.wait();
}

/// Streams through Services while node1's vnet switchd is killed, stopped, restarted in the
/// other port mode and back, and a pod comes and goes by SIGHUP: no stream breaks or stalls
/// for a second, no reset, the new pod is served at once and its port let go when it leaves.
#[test]
fn vnet_ports_survive_restarts_mode_changes_and_pods_coming_and_going() {
    if skip_unless_root("the vnet namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let base = std::fs::read_to_string(state(1)).expect("demo state")
        + &std::fs::read_to_string(root_dir().join("tests/data/restart_services.toml"))
            .expect("restart Services");
    let live = t.dir.path().join("live.toml");
    std::fs::write(&live, &base).expect("write state");
    let s = root_dir()
        .join("tests/tools/streams.py")
        .display()
        .to_string();
    for host in ["b", "d"] {
        t.spawn(host, &["python3", &s, "serve", "7000"]);
        t.wait_listening(host, 7000);
    }
    t.serve("b", "tcp", 8080);
    t.switchd(2, &state(2));
    let vnet = ["--pod-ports", "vnet"];
    let mut i = t.switchd_with(1, &live, &vnet);
    let cap = t.capture_resets("a");
    std::thread::sleep(Duration::from_millis(1000));
    let secs = 20;
    let flows = [
        ("tcp", "10.96.0.30", "80", "local ClusterIP"),
        ("tcp", "10.96.0.31", "80", "remote ClusterIP"),
        ("udp", "10.96.0.31", "53", "UDP ClusterIP"),
    ];
    let mut outs = Vec::new();
    for (k, (proto, ip, port, _)) in flows.iter().enumerate() {
        let out = t.dir.path().join(format!("stream{k}.json"));
        let secs = secs.to_string();
        t.spawn(
            "a",
            &["python3", &s, proto, ip, port, &secs, out.to_str().unwrap()],
        );
        outs.push(out);
    }
    std::thread::sleep(Duration::from_secs(2));

    stop(&mut t, i, "-KILL");
    i = t.switchd_with(1, &live, &vnet);
    let log = std::fs::read_to_string(&t.daemons[i].log).unwrap();
    assert!(log.contains("vnet mode, pod"), "{log}");
    assert!(log.contains("link taken over"), "{log}");
    std::thread::sleep(Duration::from_secs(2));

    // To AF_XDP ports and back: the other hook's links are replaced, the new one first.
    stop(&mut t, i, "-TERM");
    i = t.switchd(1, &live);
    assert_eq!(
        t.xdp_attached("n1"),
        4,
        "XDP back on the uplink and the pods"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop(&mut t, i, "-TERM");
    i = t.switchd_with(1, &live, &vnet);
    assert_eq!(t.xdp_attached("n1"), 1, "only the uplink keeps XDP");
    std::thread::sleep(Duration::from_secs(1));

    assert_eq!(
        drops(&t.stats(1)),
        vec![],
        "node1 dropped nothing across restarts"
    );

    // A new pod, served at once; then gone again.
    let pid = t.daemons[i].child.id().to_string();
    let guard = t.add_pod_e();
    let pod_e = "\n[[pods]]\nname = \"default/pod-e\"\nip = \"10.244.1.4\"\nmac = \"02:00:0a:f4:01:04\"\nport = \"veth-e\"\n";
    std::fs::write(&live, base.clone() + pod_e).unwrap();
    sh(&["kill", "-HUP", &pid]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.ping("a", "10.244.1.4", &[]) {
        assert!(Instant::now() < deadline, "pod-e unreachable after reload");
    }
    t.echo("e", "tcp", "10.244.1.3", 8080, 2_000_000);
    std::fs::write(&live, &base).unwrap();
    sh(&["kill", "-HUP", &pid]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&t.daemons[i].log).unwrap();
        if log.contains("removed [veth-e]") {
            break;
        }
        assert!(Instant::now() < deadline, "veth-e not removed: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Its link is gone: the tc program no longer sees its frames (it would count them as
    // an unknown port's).
    let before = t.stats(1)["xdp"]["unknown_port"].as_u64().unwrap();
    let _ = t.ping("e", "10.244.1.1", &["-c", "3"]);
    let after = t.stats(1)["xdp"]["unknown_port"].as_u64().unwrap();
    assert_eq!(before, after, "veth-e's tc link detached");
    drop(guard);

    let deadline = Instant::now() + Duration::from_secs(secs + 20);
    while outs.iter().any(|o| !o.exists()) {
        assert!(Instant::now() < deadline, "streams did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    for (out, (_, _, _, what)) in outs.iter().zip(&flows) {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        assert!(r["error"].is_null(), "{what}: {r}");
        let stall = r["max_stall"].as_f64().unwrap();
        assert!(stall < 1.0, "{what}: stalled {stall} s: {r}");
        assert!(
            r["echoed"].as_u64().unwrap() > 500,
            "{what}: the stream ran: {r}"
        );
    }
    let rst = resets(&cap);
    assert!(rst.is_empty(), "pod-a saw resets: {rst:#?}");
    let s = t.stats(1);
    assert_eq!(s["xdp"]["unserved"], 0, "no frame failed open");
    // pod-e's own: its IPv6 autoconfiguration as it came up, a frame as it left.
    let other: Vec<_> = drops(&s)
        .into_iter()
        .filter(|(k, _)| k != "ipv6_unsupported" && k != "no_such_pod")
        .collect();
    assert_eq!(other, vec![], "node1 dropped nothing else");

    // Uninstall node1: every link, the pods' tc links too, detached and unpinned. Asked for
    // every node while node2's switchd runs, it refuses before touching anything.
    stop(&mut t, i, "-KILL");
    let pinned = t.persisted();
    let mut all = vec![switchd_bin().display().to_string(), "cleanup".to_string()];
    all.extend(t.persist_args());
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let o = t.run("n1", &all);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "cleanup of every node while node2 runs"
    );
    assert!(err.contains("nothing was removed"), "{err}");
    assert_eq!(t.persisted(), pinned, "nothing removed");
    assert!(t.ping("c", "10.244.2.3", &[]), "node2 still forwards");
    let mut one = all.clone();
    one.extend(["--node", "node1"]);
    let out = t.ok("n1", &one);
    assert_eq!(out.matches("removed link on ifindex").count(), 4, "{out}");
    assert!(
        t.persisted().iter().all(|p| !p.contains("node1")),
        "nothing of node1 left: {:?}",
        t.persisted()
    );
    assert!(
        t.persisted().iter().any(|p| p.contains("node2")),
        "node2's pins kept"
    );
    assert_eq!(t.xdp_attached("n1"), 0);
}
