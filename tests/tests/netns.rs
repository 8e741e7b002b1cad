//! Namespace tests: the real `switchd` on real veth interfaces, with the kernel's TCP/UDP stacks
//! in the pods as clients and servers.
//!
//! Every test builds its own two-node topology with `scripts/topology` under a unique prefix
//! (namespaces PREFIX-n1, -n2, -a .. -d, -ext, -ul; see that script for the picture), starts
//! one `switchd run` per switch-forwarded node, and removes everything when it ends, also when
//! it fails (the guards' `Drop`). Payloads are checked byte for byte by `tests/tools/echo.py`.
//!
//! Needs root (namespaces, XDP). In CI it runs as root and is never skipped; outside CI a
//! non-root run skips with a note.

#![allow(missing_docs)]

mod common;

use common::topo::*;
use std::process::Command;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every path of the two-node topology, both nodes forwarded by switchd.
#[test]
fn pods_nodes_and_services_through_two_switchds() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd(1, &state(1));
    t.switchd(2, &state(2));
    for pod in ["b", "d"] {
        t.serve(pod, "tcp", 8080);
    }
    t.serve("c", "udp", 5353);
    t.serve("a", "udp", 5353);

    // ICMP: same node, across nodes, the gateway (answered by the switch), node <-> pod.
    assert!(t.ping("a", "10.244.1.3", &[]), "pod-a -> pod-b (same node)");
    assert!(
        t.ping("a", "10.244.2.3", &[]),
        "pod-a -> pod-d (across nodes)"
    );
    assert!(t.ping("a", "10.244.1.1", &[]), "pod-a -> its gateway");
    assert!(t.ping("a", "198.18.0.1", &[]), "pod-a -> its node");
    assert!(t.ping("n1", "10.244.1.2", &[]), "node1 -> pod-a");
    // Through the host port: node -> another node's pod, a remote pod -> this node.
    assert!(
        t.ping("n1", "10.244.2.3", &[]),
        "node1 -> pod-d (host port, VXLAN)"
    );
    assert!(
        t.ping("d", "198.18.0.2", &[]),
        "pod-d -> its node (host port)"
    );
    // Pod MTU = uplink MTU - 50: a full-size packet with DF crosses the overlay.
    assert!(
        t.ping("a", "10.244.2.3", &["-M", "do", "-s", "1422"]),
        "1450-byte DF ping across nodes"
    );

    // TCP, 60 KB compared byte for byte: same node, across nodes (both directions).
    t.echo("a", "tcp", "10.244.1.3", 8080, 60_000);
    t.echo("a", "tcp", "10.244.2.3", 8080, 60_000);
    t.echo("c", "tcp", "10.244.1.3", 8080, 60_000);
    // UDP across nodes and back.
    t.echo("a", "udp", "10.244.2.2", 5353, 1200);
    t.echo("c", "udp", "10.244.1.2", 5353, 1200);
    // Services: ClusterIP (TCP to both backends over several connections, UDP to a remote
    // backend), NodePort from outside the cluster on either node.
    for _ in 0..4 {
        t.echo("a", "tcp", "10.96.0.10", 80, 60_000);
    }
    t.echo("a", "udp", "10.96.0.53", 53, 512);
    t.echo("ext", "tcp", "198.18.0.1", 30080, 60_000);
    t.echo("ext", "tcp", "198.18.0.2", 30080, 60_000);
    t.echo("ext", "udp", "198.18.0.1", 30053, 512);
    // The node's own clients: a remote pod, and a ClusterIP (both backends).
    t.echo("n1", "tcp", "10.244.2.3", 8080, 60_000);
    for _ in 0..4 {
        t.echo("n1", "tcp", "10.96.0.10", 80, 60_000);
    }

    let s = t.stats(1);
    // uplink, veth-a, veth-b and the host port nsw0.
    assert_eq!(s["ports"].as_array().unwrap().len(), 4);
    for p in s["ports"].as_array().unwrap() {
        assert_eq!(p["mode"], "copy", "veth runs in copy mode");
        assert_eq!(p["bad_descriptors"], 0);
    }
    assert!(s["actions"]["encapsulated"].as_u64().unwrap() > 0);
    assert!(s["actions"]["decapsulated"].as_u64().unwrap() > 0);
    assert!(s["actions"]["delivered_local"].as_u64().unwrap() > 0);
    assert!(s["actions"]["to_external"].as_u64().unwrap() > 0);
    assert!(s["nat"]["dnat"].as_u64().unwrap() > 0);
    assert!(s["nat"]["reverse_nat"].as_u64().unwrap() > 0);
    assert!(s["checksums_completed"].as_u64().unwrap() > 0);
    assert!(s["xdp"]["redirected"].as_u64().unwrap() > 0);
    assert!(
        s["xdp"]["passed"].as_u64().unwrap() > 0,
        "ARP replies (node -> pod neighbour resolution) went to the kernel"
    );
    assert_eq!(drops(&s), vec![], "node1 dropped nothing");
    assert_eq!(drops(&t.stats(2)), vec![], "node2 dropped nothing");
}

/// node1 forwarded by switchd, node2 by the kernel as Flannel and kube-proxy set it up.
#[test]
fn interoperates_with_the_kernels_vxlan_as_the_other_node() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "kernel"]);
    t.switchd(1, &state(1));
    t.serve("c", "tcp", 8080);
    t.serve("c", "udp", 5353);
    t.serve("b", "tcp", 8080);
    t.serve("d", "tcp", 8080);

    assert!(t.ping("a", "10.244.2.2", &[]), "switch pod -> kernel pod");
    assert!(t.ping("c", "10.244.1.2", &[]), "kernel pod -> switch pod");
    assert!(
        t.ping("a", "10.244.2.2", &["-M", "do", "-s", "1422"]),
        "1450-byte DF ping into the kernel's vxlan"
    );
    t.echo("a", "tcp", "10.244.2.2", 8080, 60_000);
    t.echo("c", "tcp", "10.244.1.3", 8080, 60_000);
    // ClusterIP on the switch, backend behind the kernel's vxlan (and its answer back).
    t.echo("a", "udp", "10.96.0.53", 53, 512);
    // NodePort on the kernel node (backends on both nodes), and on the switch node with the
    // backend behind the kernel's vxlan.
    for _ in 0..4 {
        t.echo("ext", "tcp", "198.18.0.2", 30080, 60_000);
    }
    t.echo("ext", "udp", "198.18.0.1", 30053, 512);
    // The switch node's own clients through its host port: a pod behind the kernel's vxlan,
    // and a ClusterIP whose backends are on both nodes.
    t.echo("n1", "tcp", "10.244.2.3", 8080, 60_000);
    for _ in 0..4 {
        t.echo("n1", "tcp", "10.96.0.10", 80, 60_000);
    }

    let s = t.stats(1);
    assert!(s["actions"]["decapsulated"].as_u64().unwrap() > 0);
    assert_eq!(drops(&s), vec![], "node1 dropped nothing");
}

/// Signals, faults and bad configuration: never an interface left redirecting into nothing.
#[test]
fn stops_cleanly_and_leaves_nothing_attached() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);

    // SIGTERM: exit 0 within a second, programs detached.
    let i = t.switchd(1, &state(1));
    assert_eq!(t.xdp_attached("n1"), 4);

    // A pod's interface deleted under the running daemon: its port is closed and its frames
    // return to the pool; frames for it are counted; everything else goes on.
    assert!(t.ping("a", "10.244.1.3", &[]));
    let ns_b = t.ns("b");
    assert!(Command::new("ip")
        .args(["netns", "del", &ns_b])
        .status()
        .unwrap()
        .success());
    assert!(!t.ping("a", "10.244.1.3", &[]), "pod-b is gone");
    assert!(t.ping("a", "10.244.1.1", &[]), "the switch goes on");
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = t.stats(1);
        if s["ports_gone"] == 1 || Instant::now() > deadline {
            break s;
        }
    };
    assert_eq!(s["ports_gone"], 1);
    assert!(s["worker_drops"]["tx_no_socket"].as_u64().unwrap() >= 1);
    assert_eq!(s["ports"].as_array().unwrap().len(), 3);
    let log = std::fs::read_to_string(&t.daemons[i].log).unwrap();
    assert!(log.contains("port veth-b (ifindex"), "{log}");
    let pid = t.daemons[i].child.id();
    let start = Instant::now();
    // The daemon is `ip netns exec`'s child image (exec'd): signal it directly.
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let st = t.daemons[i].child.wait().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "SIGTERM took {:?}",
        start.elapsed()
    );
    assert!(st.success(), "exit status after SIGTERM: {st}");
    assert_eq!(
        t.xdp_attached("n1"),
        3,
        "left attached (pinned) for the next switchd after SIGTERM"
    );
    let log = std::fs::read_to_string(&t.daemons[i].log).unwrap();
    assert!(log.contains("stopped"), "{log}");

    // SIGKILL: the pinned program holds for the grace period, then hands every frame to
    // the kernel. (veth-b is gone: run without pod-b; its old pin is removed.)
    let text = std::fs::read_to_string(state(1)).unwrap();
    let without_b = text.replace(
        "[[pods]]\nname = \"default/pod-b\"\nip = \"10.244.1.3\"\nmac = \"02:00:0a:f4:01:03\"\nport = \"veth-b\"\n",
        "",
    );
    assert_ne!(without_b, text);
    let path = t.dir.path().join("without-b.toml");
    std::fs::write(&path, &without_b).unwrap();
    let i = t.switchd_with(1, &path, &["--grace", "1"]);
    assert_eq!(t.xdp_attached("n1"), 3);
    t.daemons[i].child.kill().unwrap();
    t.daemons[i].child.wait().unwrap();
    assert_eq!(t.xdp_attached("n1"), 3, "pinned: attached after SIGKILL");
    std::thread::sleep(Duration::from_millis(1300));
    assert!(
        t.ping("n1", "10.244.1.2", &[]),
        "past the grace period the kernel serves node -> pod"
    );
    let mut cleanup = vec![switchd_bin().display().to_string(), "cleanup".into()];
    cleanup.extend(t.persist_args());
    let cleanup: Vec<&str> = cleanup.iter().map(String::as_str).collect();
    t.ok("n1", &cleanup);
    assert_eq!(t.xdp_attached("n1"), 0, "nothing attached after cleanup");

    // --no-persist: the bpf_links die with the process.
    let i = t.switchd_with(1, &path, &["--no-persist"]);
    assert_eq!(t.xdp_attached("n1"), 3);
    assert!(
        t.ping("a", "10.244.1.1", &[]),
        "the switch answers for the gateway"
    );
    assert_eq!(
        t.stats(1)["xdp"]["unserved"],
        0,
        "never fails open while running"
    );
    t.daemons[i].child.kill().unwrap();
    t.daemons[i].child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(t.xdp_attached("n1"), 0, "nothing attached after SIGKILL");

    // A missing interface and a wrong uplink MAC: clear errors, exit 1, nothing attached.
    let cases = [
        (
            text.clone(),
            "interface 'veth-b' (port of pod default/pod-b) does not exist",
        ),
        (
            without_b.replace("02:00:c6:12:00:01", "02:00:c6:12:00:09"),
            "node.uplink_mac is 02:00:c6:12:00:09 but interface 'uplink' has 02:00:c6:12:00:01",
        ),
        (
            text.replace(
                "pod_cidr = \"10.244.1.0/24\"",
                "pod_cidr = \"10.244.1.0/33\"",
            ),
            "10.244.1.0/33",
        ),
    ];
    for (k, (bad, want)) in cases.iter().enumerate() {
        let path = t.dir.path().join(format!("bad{k}.toml"));
        std::fs::write(&path, bad).unwrap();
        let out = t.run(
            "n1",
            &[
                switchd_bin().to_str().unwrap(),
                "run",
                "--no-control",
                "--state",
                path.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "error {err:?} should contain {want:?}");
        assert_eq!(t.xdp_attached("n1"), 0, "nothing attached after {want}");
    }
}

/// A pod added (and removed) at runtime by SIGHUP, while a TCP stream runs to another pod.
#[test]
fn pods_come_and_go_without_disturbing_others() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let live = t.dir.path().join("live.toml");
    std::fs::copy(state(1), &live).unwrap();
    let i = t.switchd(1, &live);
    let pid = t.daemons[i].child.id().to_string();
    t.serve("b", "tcp", 8080);

    // A long stream pod-a -> pod-b (200 MB echoed) runs in the background.
    let script = root_dir().join("tests/tools/echo.py");
    let stream = Command::new("ip")
        .args(["netns", "exec", &t.ns("a"), "python3"])
        .arg(&script)
        .args(["tcp", "10.244.1.3", "8080", "200000000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // New pod-e on node1.
    let _guard = t.add_pod_e();
    let mut text = std::fs::read_to_string(&live).unwrap();
    text.push_str(
        "\n[[pods]]\nname = \"default/pod-e\"\nip = \"10.244.1.4\"\nmac = \"02:00:0a:f4:01:04\"\nport = \"veth-e\"\n",
    );
    std::fs::write(&live, &text).unwrap();
    sh(&["kill", "-HUP", &pid]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !t.ping("a", "10.244.1.4", &[]) {
        assert!(Instant::now() < deadline, "pod-e unreachable after reload");
    }
    assert!(t.ping("e", "10.244.1.1", &[]), "pod-e reaches its gateway");
    let out = stream.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "stream to pod-b disturbed: {}{}\nswitchd: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        t.stats(1)
    );

    // Remove it again: back to the kernel, the others untouched.
    std::fs::write(&live, std::fs::read_to_string(state(1)).unwrap()).unwrap();
    sh(&["kill", "-HUP", &pid]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while t.xdp_attached("n1") != 4 {
        assert!(Instant::now() < deadline, "veth-e still attached");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(t.ping("a", "10.244.1.3", &[]));
    let s = t.stats(1);
    assert_eq!(s["generation"], 3);
    assert_eq!(s["ports"].as_array().unwrap().len(), 4);
    let log = std::fs::read_to_string(&t.daemons[i].log).unwrap();
    assert!(log.contains("ports added [veth-e]"), "{log}");
    assert!(log.contains("removed [veth-e]"), "{log}");
}

/// Two workers on node1 (`--cores 0,1`): ports are split between them and frames cross from
/// one to the other by handoff; every path still works and nothing is lost.
#[test]
fn two_workers_share_the_ports() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd_with(1, &state(1), &["--cores", "0,1"]);
    t.switchd(2, &state(2));
    t.serve("b", "tcp", 8080);
    t.serve("d", "tcp", 8080);
    t.serve("c", "udp", 5353);
    assert!(t.ping("a", "10.244.1.3", &[]));
    assert!(t.ping("a", "10.244.2.3", &[]));
    assert!(t.ping("n1", "10.244.2.3", &[]));
    t.echo("a", "tcp", "10.244.1.3", 8080, 60_000);
    t.echo("a", "tcp", "10.244.2.3", 8080, 60_000);
    for _ in 0..4 {
        t.echo("a", "tcp", "10.96.0.10", 80, 60_000);
    }
    t.echo("a", "udp", "10.96.0.53", 53, 512);
    t.echo("ext", "tcp", "198.18.0.1", 30080, 60_000);
    let s = t.stats(1);
    assert_eq!(s["workers"], 2);
    assert!(
        s["handed_off"].as_u64().unwrap() > 0,
        "frames crossed workers"
    );
    assert_eq!(drops(&s), vec![], "node1 dropped nothing");
    let log = std::fs::read_to_string(&t.daemons[0].log).unwrap();
    assert!(log.contains("worker 1"), "{log}");
}

/// What switchd puts on the wire, dissected by Wireshark (tshark): VXLAN with VNI 1 on port
/// 8472, inner TCP and ICMP from the pods with valid checksums. Then hostile frames from a
/// pod: every one counted as a drop, and the switch goes on forwarding.
#[test]
fn wireshark_reads_the_overlay_and_hostile_frames_are_counted() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd(1, &state(1));
    t.switchd(2, &state(2));
    t.serve("d", "tcp", 8080);
    // Capture where node1's uplink meets the underlay bridge.
    let pcap = t.dir.path().join("underlay.pcap");
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.ns("ul"),
            "tcpdump",
            "-i",
            "n1",
            "-U",
            "-n",
            "-w",
        ])
        .arg(&pcap)
        .args(["udp", "port", "8472"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(t.ping("a", "10.244.2.3", &[]));
    t.echo("a", "tcp", "10.244.2.3", 8080, 60_000);
    std::thread::sleep(Duration::from_millis(1000));
    let _ = Command::new("kill")
        .args(["-INT", &dump.id().to_string()])
        .status();
    let _ = dump.wait();
    if let Some(tshark) = common::tshark() {
        let text = common::tshark_verbose(&tshark, &pcap);
        for want in [
            "Virtual eXtensible Local Area Network",
            "VXLAN Network Identifier (VNI): 1",
            "Src: 10.244.1.2, Dst: 10.244.2.3",
            "Src: 10.244.2.3, Dst: 10.244.1.2",
            "Transmission Control Protocol",
            "Internet Control Message Protocol",
            "Dst Port: 8472",
        ] {
            assert!(text.contains(want), "tshark output lacks {want:?}");
        }
    }

    // 3000 hostile frames from pod-a: random bytes, truncated and corrupted IPv4, bad lengths.
    // Frames the kernel drops before the switch sees them (its socket's rings full on a
    // loaded machine) are counted too: together they are every frame sent.
    let kernel_drops = |s: &serde_json::Value| {
        ["kernel_rx_ring_full", "kernel_rx_dropped"]
            .iter()
            .map(|k| s["worker_drops"][k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let s0 = t.stats(1);
    let (before, kernel_before) = (s0["received"].as_u64().unwrap(), kernel_drops(&s0));
    let fuzz = r#"
import os, random, socket, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
random.seed(7)
sent = 0
for i in range(3000):
    n = random.randint(14, 1400)
    f = bytearray(os.urandom(n))
    f[0:6] = bytes.fromhex("02000af40101")
    f[6:12] = bytes.fromhex("02000af40102")
    if random.random() < 0.8:
        f[12:14] = b"\x08\x00"
        if n > 14:
            f[14] = random.choice([0x45, 0x46, 0x4f, 0x40, 0x65])
    try:
        s.send(bytes(f))
        sent += 1
    except OSError:
        pass
    if i % 200 == 199:
        time.sleep(0.01)  # bursts well under the rings' size
print(sent)
"#;
    let out = t.ok("a", &["python3", "-c", fuzz]);
    let sent: u64 = out.trim().parse().unwrap();
    assert!(sent > 2900, "sent {sent}");
    assert!(
        t.daemons[0].child.try_wait().unwrap().is_none(),
        "switchd survived"
    );
    assert!(t.ping("a", "10.244.2.3", &[]), "still forwarding");
    let s = t.stats(1);
    let received = s["received"].as_u64().unwrap() - before;
    let lost = kernel_drops(&s) - kernel_before;
    assert!(
        received + lost >= sent,
        "every frame reached the pipeline or was counted dropped before it ({received} and \
         {lost} of {sent})"
    );
    assert!(
        received * 10 >= sent * 9,
        "{received} of {sent} reached the pipeline"
    );
    let dropped: u64 = s["drops"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        dropped > 2000,
        "malformed frames are counted drops ({dropped})"
    );
    for p in s["ports"].as_array().unwrap() {
        assert_eq!(p["bad_descriptors"], 0);
    }
}

/// switchctl drives a running switchd: every query, a pod added and deleted, a Service's
/// endpoints changed while traffic runs, refusals with exit codes a script can rely on.
#[test]
fn switchctl_drives_a_running_switchd() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd(1, &state(1));
    t.switchd(2, &state(2));
    for pod in ["b", "d"] {
        t.serve(pod, "tcp", 8080);
    }
    let json = |out: &str| -> serde_json::Value { serde_json::from_str(out).expect("JSON") };

    let (rc, out, err) = t.ctl(1, &["version"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("node node1, generation 1"), "{out}");
    let (rc, out, _) = t.ctl(1, &["-o", "json", "list", "pods"]);
    assert_eq!(rc, 0);
    let pods = json(&out);
    assert_eq!(pods["pods"].as_array().unwrap().len(), 2);
    let (rc, out, _) = t.ctl(1, &["list", "nodes"]);
    assert!(
        rc == 0 && out.contains("node2") && out.contains("10.244.2.0/24"),
        "{out}"
    );
    let (rc, out, _) = t.ctl(1, &["get", "services", "default/web"]);
    assert!(
        rc == 0 && out.contains("Maglev table of 251 entries"),
        "{out}"
    );
    assert!(
        out.contains("10.244.1.3:8080") && out.contains("10.244.2.3:8080"),
        "{out}"
    );

    // A pod added with apply: reachable as soon as apply returns (programmed).
    let _guard = t.add_pod_e();
    let live = t.dir.path().join("live.toml");
    let base = std::fs::read_to_string(state(1)).unwrap();
    let pod_e = "\n[[pods]]\nname = \"default/pod-e\"\nip = \"10.244.1.4\"\nmac = \"02:00:0a:f4:01:04\"\nport = \"veth-e\"\n";
    std::fs::write(&live, format!("{base}{pod_e}")).unwrap();
    let (rc, out, err) = t.ctl(1, &["apply", "-f", live.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("pod/default/pod-e created"), "{out}");
    assert!(out.contains("generation 2 programmed"), "{out}");
    assert!(
        t.ping("a", "10.244.1.4", &[]),
        "pod-a -> pod-e right after apply"
    );
    assert_eq!(t.xdp_attached("n1"), 5);
    // The same file again changes nothing.
    let (rc, out, _) = t.ctl(1, &["apply", "-f", live.to_str().unwrap()]);
    assert!(
        rc == 0 && out.contains("no changes; generation 2 stays"),
        "{out}"
    );

    // The web Service down to its remote endpoint: explain says where a new flow goes, and
    // traffic goes there.
    let remote_only =
        format!("{base}{pod_e}").replace("  { ip = \"10.244.1.3\", node = \"node1\" },\n", "");
    assert_ne!(
        remote_only,
        format!("{base}{pod_e}"),
        "the demo state changed shape"
    );
    std::fs::write(&live, &remote_only).unwrap();
    let (rc, out, err) = t.ctl(1, &["apply", "-f", live.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("service/default/web configured"), "{out}");
    let (rc, out, _) = t.ctl(1, &["explain", "tcp", "10.244.1.2:40000", "10.96.0.10:80"]);
    assert_eq!(rc, 0);
    assert!(out.contains("ClusterIP of Service default/web"), "{out}");
    assert!(out.contains("-> 10.244.2.3:8080"), "{out}");
    assert!(
        out.contains(
            "verdict: transmit on uplink, VXLAN-encapsulated to 198.18.0.2 (generation 3)"
        ),
        "{out}"
    );
    for _ in 0..3 {
        t.echo("a", "tcp", "10.96.0.10", 80, 20_000);
    }
    let (rc, out, _) = t.ctl(
        1,
        &[
            "-o",
            "json",
            "ct",
            "list",
            "--address",
            "10.96.0.10",
            "--protocol",
            "tcp",
        ],
    );
    assert_eq!(rc, 0);
    let ct = json(&out);
    let entries = ct["entries"].as_array().unwrap();
    assert!(entries.len() >= 3, "{ct}");
    for e in entries {
        assert_eq!(e["translated_dst"], "10.244.2.3", "{e}");
    }

    // Refusals: an interface that does not exist, an address in use; nothing changes.
    let bad = format!("{remote_only}\n[[pods]]\nname = \"default/pod-z\"\nip = \"10.244.1.9\"\nmac = \"02:00:0a:f4:01:09\"\nport = \"veth-zz\"\n");
    std::fs::write(&live, bad).unwrap();
    let (rc, _, err) = t.ctl(1, &["apply", "-f", live.to_str().unwrap()]);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains(
            "invalid argument: pods[default/pod-z].port: interface 'veth-zz' does not exist"
        ),
        "{err}"
    );
    let dup = remote_only.replace("ip = \"10.244.1.4\"", "ip = \"10.244.1.3\"");
    std::fs::write(&live, dup).unwrap();
    let (rc, _, err) = t.ctl(1, &["apply", "-f", live.to_str().unwrap()]);
    assert_eq!(rc, 1, "{err}");
    assert!(
        err.contains(
            "pods[default/pod-e].ip: 10.244.1.3 is also the address of pods[default/pod-b]"
        ),
        "{err}"
    );
    // What switchd's start refuses, a live change refuses too, with the same reason; what
    // needs a restart is a failed precondition.
    for (bad, want) in [
        (
            format!("{remote_only}\n[[pods]]\nname = \"default/pod-z\"\nip = \"10.244.1.9\"\nmac = \"02:00:0a:f4:01:09\"\nport = \"lo\"\n"),
            "pods[default/pod-z].port: 'lo' cannot be a switch port",
        ),
        (
            format!("{remote_only}\n[[pods]]\nname = \"default/pod-z\"\nip = \"10.244.1.9\"\nmac = \"02:00:0a:f4:01:09\"\nport = \"nsw-host\"\n"),
            "invalid argument: pods[default/pod-z].port: interface 'nsw-host' is the kernel's side of the host port 'nsw0'",
        ),
        (
            remote_only.replace("uplink_mac = \"02:00:c6:12:00:01\"", "uplink_mac = \"02:00:c6:12:00:09\""),
            "invalid argument: node.uplink_mac: is 02:00:c6:12:00:09 but the interface has 02:00:c6:12:00:01",
        ),
        (
            remote_only.replace("uplink = \"uplink\"", "uplink = \"nsw-host\""),
            "failed precondition: node.uplink: changing the uplink to 'nsw-host' needs a restart",
        ),
    ] {
        assert_ne!(bad, remote_only);
        std::fs::write(&live, &bad).unwrap();
        let (rc, _, err) = t.ctl(1, &["apply", "-f", live.to_str().unwrap()]);
        assert_eq!(rc, 1, "{want}: {err}");
        assert!(err.contains(want), "{err}\nshould contain {want}");
    }
    std::fs::write(&live, "not = [toml").unwrap();
    let (rc, _, _) = t.ctl(1, &["apply", "-f", live.to_str().unwrap()]);
    assert_eq!(rc, 6, "an unreadable state file");
    let (rc, _, err) = t.ctl(1, &["get", "pods", "default/nope"]);
    assert_eq!(rc, 4, "{err}");
    let (rc, _, _) = t.ctl(3, &["version"]);
    assert_eq!(rc, 3, "no switchd on that socket");
    let (rc, out, _) = t.ctl(1, &["version"]);
    assert!(
        rc == 0 && out.contains("generation 3"),
        "refusals published nothing: {out}"
    );

    // Counters: per port, per worker, drops by reason (workers report twice a second).
    std::thread::sleep(Duration::from_millis(600));
    let (rc, out, _) = t.ctl(1, &["-o", "json", "stats"]);
    assert_eq!(rc, 0);
    let st = json(&out);
    assert_eq!(st["ports"].as_array().unwrap().len(), 5, "{st}");
    assert_eq!(st["workers"][0]["generation"], 3);
    assert!(st["actions"]["encapsulated"].as_u64().unwrap() > 0, "{st}");
    // pod-e's new eth0 sends IPv6 router solicitations: counted as ipv6_unsupported.
    let dropped: u64 = st["drops"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "ipv6_unsupported")
        .map(|(_, v)| v.as_u64().unwrap())
        .sum();
    assert_eq!(dropped, 0, "{st}");
    let (rc, out, _) = t.ctl(1, &["stats"]);
    assert!(
        rc == 0 && out.contains("ipv6_unsupported") && out.contains("veth-e"),
        "{out}"
    );

    // Deleting the pod gives its interface back to the kernel.
    let (rc, out, err) = t.ctl(1, &["delete", "pod", "default/pod-e"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("pod/default/pod-e deleted"), "{out}");
    assert_eq!(t.xdp_attached("n1"), 4);
    assert!(
        t.ping("a", "10.244.1.3", &[]),
        "the other pods are untouched"
    );
}

/// A flood of idle connections on the control socket of a switchd whose descriptor limit is
/// low (1024, the usual soft limit, as for a service): the caps keep it under the limit, the
/// stats file keeps being written, switchctl is answered during the flood, forwarding goes on.
#[test]
fn a_control_socket_flood_cannot_exhaust_descriptors() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let wrapper = t.dir.path().join("switchd-lowfd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 1024\nexec {} \"$@\"\n",
            switchd_bin().display()
        ),
    )
    .unwrap();
    sh(&["chmod", "+x", wrapper.to_str().unwrap()]);
    t.switchd_bin_with(1, &wrapper, &state(1), &[]);
    let sock = t.dir.path().join("n1.sock");
    // 5,000 connections that never speak, held open (more than the daemon's limit).
    let flood: Vec<_> = (0..5000)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&sock).ok())
        .collect();
    assert!(flood.len() > 1024, "only {} connections made", flood.len());
    let (rc, out, err) = t.ctl(1, &["version"]);
    assert_eq!(rc, 0, "switchctl during the flood: {err}");
    assert!(out.contains("node node1"), "{out}");
    assert!(t.ping("a", "10.244.1.3", &[]), "forwarding goes on");
    let s = t.stats(1); // waits for a fresh counters file
    let c = &s["control"]["unix"];
    assert_eq!(c["accept_errors"], 0, "never out of descriptors: {c}");
    assert!(c["evicted"].as_u64().unwrap() >= 4000, "{c}");
    let st = t.stats(1);
    assert_ne!(
        s["uptime_secs"], st["uptime_secs"],
        "the stats file is still written"
    );
    drop(flood);
}
