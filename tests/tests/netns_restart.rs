//! Restarts without a reset: real kernel TCP and UDP streams through ClusterIPs (local and
//! remote backend) and a NodePort, while node1's switchd is killed, stopped, replaced by
//! another build and crash-looped; and a switchd gone for good hands the node back to the
//! kernel after the grace period. Run as root (CI does).

mod common;

use common::topo::{resets, root_dir, skip_unless_root, state, switchd_bin, Topo};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// node1's demo state and three Services on port 7000 of the stream servers (pod-b on
/// node1, pod-d on node2): a local ClusterIP, a remote one (TCP and UDP), a NodePort.
fn node1_state(dir: &Path) -> PathBuf {
    let mut text = std::fs::read_to_string(state(1)).unwrap();
    text.push_str(
        &std::fs::read_to_string(root_dir().join("tests/data/restart_services.toml")).unwrap(),
    );
    let p = dir.join("node1-restart.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn streams() -> String {
    root_dir()
        .join("tests/tools/streams.py")
        .display()
        .to_string()
}

/// The other build for the upgrade: the release switchd (`scripts/test` builds it), whose
/// version string differs from this debug build's.
fn other_build() -> Option<PathBuf> {
    let p = root_dir().join("target/release/switchd");
    if p.exists() {
        return Some(p);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI builds target/release/switchd (scripts/test) for the upgrade test"
    );
    eprintln!("note: no target/release/switchd; the upgrade runs this build again");
    None
}

fn version(bin: &Path) -> String {
    let o = Command::new(bin).arg("--version").output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

/// Stops node1's switchd with `sig` and waits for it to exit.
fn stop(t: &mut Topo, i: usize, sig: &str) {
    signal(t.daemons[i].child.id(), sig);
    let st = t.daemons[i].child.wait().unwrap();
    if sig == "-TERM" {
        assert!(st.success(), "exit status after SIGTERM: {st}");
    }
}

#[test]
fn streams_survive_every_kind_of_restart() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let s1 = node1_state(t.dir.path());
    let s = streams();
    for host in ["b", "d"] {
        t.spawn(host, &["python3", &s, "serve", "7000"]);
        t.wait_listening(host, 7000);
    }
    t.switchd(2, &state(2));
    let mut i = t.switchd(1, &s1);
    // Every RST the clients' kernels see or send.
    let caps: Vec<(String, PathBuf)> = ["a", "ext"]
        .iter()
        .map(|h| (h.to_string(), t.capture_resets(h)))
        .collect();
    std::thread::sleep(Duration::from_millis(1000));
    let secs = 26;
    let flows = [
        ("a", "tcp", "10.96.0.30", "80", "local ClusterIP"),
        ("a", "tcp", "10.96.0.31", "80", "remote ClusterIP"),
        ("ext", "tcp", "198.18.0.1", "30700", "NodePort from outside"),
        ("a", "udp", "10.96.0.31", "53", "UDP ClusterIP"),
    ];
    let mut outs = Vec::new();
    for (k, (host, proto, ip, port, _)) in flows.iter().enumerate() {
        let out = t.dir.path().join(format!("stream{k}.json"));
        t.spawn(
            host,
            &[
                "python3",
                &s,
                proto,
                ip,
                port,
                &secs.to_string(),
                out.to_str().unwrap(),
            ],
        );
        outs.push(out);
    }
    let t0 = Instant::now();
    let mut timeline = Vec::new();
    let mut mark = |what: &str, t0: Instant| {
        timeline.push(format!("{:.3} {what}", t0.elapsed().as_secs_f64()))
    };
    std::thread::sleep(Duration::from_secs(3));

    // (a) SIGKILL, started again.
    mark("(a) SIGKILL", t0);
    stop(&mut t, i, "-KILL");
    i = t.switchd(1, &s1);
    mark("(a) forwarding again", t0);
    let log = std::fs::read_to_string(&t.daemons[i].log).unwrap();
    assert!(log.contains("taken over (unclean shutdown)"), "{log}");
    assert!(log.contains("link taken over"), "{log}");
    std::thread::sleep(Duration::from_secs(3));

    // (b) SIGTERM, started again.
    mark("(b) SIGTERM", t0);
    stop(&mut t, i, "-TERM");
    i = t.switchd(1, &s1);
    mark("(b) forwarding again", t0);
    let log = std::fs::read_to_string(&t.daemons[i].log).unwrap();
    assert!(log.contains("taken over (clean shutdown)"), "{log}");
    std::thread::sleep(Duration::from_secs(3));

    // (c) an upgrade: SIGTERM, then another build.
    let (other, was) = (other_build(), version(&switchd_bin()));
    mark("(c) SIGTERM for the upgrade", t0);
    stop(&mut t, i, "-TERM");
    i = match &other {
        Some(bin) => {
            assert_ne!(version(bin), was, "the upgrade runs another build");
            t.switchd_bin_with(1, bin, &s1, &[])
        }
        None => t.switchd(1, &s1),
    };
    mark("(c) the other build forwards", t0);
    let log = std::fs::read_to_string(&t.daemons[i].log).unwrap();
    assert!(log.contains("taken over (clean shutdown)"), "{log}");
    std::thread::sleep(Duration::from_secs(3));

    // (d) a crash loop: killed and started 3 times within 5 s (back on this build).
    let start = Instant::now();
    for k in 0..3 {
        mark(&format!("(d) SIGKILL {k}"), t0);
        stop(&mut t, i, "-KILL");
        i = t.switchd(1, &s1);
        mark(&format!("(d) forwarding again {k}"), t0);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "3 restarts took {:?}",
        start.elapsed()
    );

    // The streams run to their end.
    let deadline = Instant::now() + Duration::from_secs(secs + 20);
    while outs.iter().any(|o| !o.exists()) {
        assert!(Instant::now() < deadline, "streams did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
    let all_logs = std::fs::read_to_string(t.dir.path().join("n1.all.log")).unwrap_or_default();
    let context = format!("timeline:\n{}\nlogs:\n{all_logs}", timeline.join("\n"));
    for (out, (_, _, _, _, what)) in outs.iter().zip(&flows) {
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        assert!(r["error"].is_null(), "{what}: {r}\n{context}");
        assert_eq!(
            r["backends"].as_array().unwrap().len(),
            1,
            "{what}: the same backend throughout: {r}"
        );
        let stall = r["max_stall"].as_f64().unwrap();
        assert!(stall < 1.0, "{what}: stalled {stall} s: {r}\n{context}");
        assert!(
            r["echoed"].as_u64().unwrap() > 500,
            "{what}: the stream ran: {r}"
        );
        eprintln!("{what}: max stall {stall} s, stalls {}", r["stalls"]);
    }
    // Held, never passed to the kernel, across every restart (the program's counters
    // live in the pinned maps).
    let xdp = &t.stats(1)["xdp"];
    assert_eq!(xdp["unserved"], 0, "no frame failed open: {xdp}");
    assert!(xdp["held"].as_u64().unwrap() > 0, "frames were held: {xdp}");
    for (h, cap) in &caps {
        let rst = resets(cap);
        assert!(rst.is_empty(), "pod {h} saw resets: {rst:#?}\n{context}");
    }
}

#[test]
fn a_switchd_gone_for_good_hands_the_node_back_to_the_kernel() {
    if skip_unless_root("the switchd namespace tests") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let i = t.switchd_with(1, &state(1), &["--grace", "2"]);
    assert!(
        t.ping("n1", "10.244.1.2", &[]),
        "node -> pod through the switch"
    );
    t.daemons[i].child.kill().unwrap();
    t.daemons[i].child.wait().unwrap();
    let killed = Instant::now();
    // Within the grace period the program holds the switch's frames (the pod's replies to
    // its node go through the host port): no answer, and nothing reaches the kernel.
    assert_eq!(t.xdp_attached("n1"), 4, "still attached after SIGKILL");
    assert!(!t.ping("n1", "10.244.1.2", &["-c", "1", "-W", "1"]));
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "the ping outlasted the grace"
    );
    // Past it, the node's kernel serves its interfaces as if nothing were attached.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(killed.elapsed()));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        t.ping("n1", "10.244.1.2", &[]),
        "node -> pod through the kernel after the grace period"
    );

    // cleanup: nothing attached, nothing left under the bpffs or the run directory.
    assert!(!t.persisted().is_empty());
    let mut cmd = vec![switchd_bin().display().to_string(), "cleanup".to_string()];
    cmd.extend(t.persist_args());
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let out = t.ok("n1", &cmd);
    assert!(out.contains("removed link on ifindex"), "{out}");
    assert!(out.contains("removed the conntrack table"), "{out}");
    assert_eq!(t.xdp_attached("n1"), 0, "cleanup detaches");
    assert_eq!(
        t.persisted(),
        Vec::<String>::new(),
        "cleanup removes every pin"
    );
    let out = t.ok("n1", &cmd);
    assert!(out.contains("nothing to remove"), "{out}");
}
