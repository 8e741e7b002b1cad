//! The `switchd` command line as a user runs it: exit codes and messages.

#![allow(missing_docs)]

use std::process::Command;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

fn switchd(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_switchd"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

#[test]
fn check_prints_tables() {
    let state = format!("{EXAMPLES}/node1.toml");
    let (code, out, _) = switchd(&["check", "--state", &state]);
    assert_eq!(code, 0);
    assert!(
        out.contains("valid") && out.contains("default/pod-a") && out.contains("node2"),
        "{out}"
    );
}

#[test]
fn invalid_state_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(format!("{EXAMPLES}/node1.toml")).unwrap();
    std::fs::write(
        &bad,
        text.replace(
            "pod_cidr = \"10.244.2.0/24\"",
            "pod_cidr = \"10.244.1.0/24\"",
        ),
    )
    .unwrap();
    let (code, _, err) = switchd(&["check", "--state", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.toml: nodes[0].pod_cidr: 10.244.1.0/24 overlaps this node's pod CIDR"),
        "{err}"
    );
    std::fs::write(&bad, "[node]\nname = 1\n").unwrap();
    let (code, _, err) = switchd(&["check", "--state", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 2") && err.contains("name"), "{err}");
}

#[test]
fn replay_of_the_shipped_example() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("{EXAMPLES}/node1.toml");
    let a = format!("veth-a={EXAMPLES}/pcap/pod-a.pcap");
    let u = format!("uplink={EXAMPLES}/pcap/uplink.pcap");
    let (code, out, err) = switchd(&[
        "replay",
        "--state",
        &state,
        "--in",
        &a,
        "--in",
        &u,
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replayed 13 frames"), "{out}");
    for f in [
        "uplink.pcap",
        "veth-a.pcap",
        "veth-b.pcap",
        "kernel.pcap",
        "counters.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("counters.json")).unwrap())
            .unwrap();
    assert_eq!(c["received"], 13);
    assert_eq!(c["dropped"], 3);
    assert_eq!(c["output"]["veth-a"], 4);
    assert_eq!(c["actions"]["rejected"], 1);
    assert_eq!(c["nat"]["new_flows"], 2);
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, err) = switchd(&[
        "replay", "--state", "x.toml", "--in", "nonsense", "--out", "/tmp/x",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("is not PORT=FILE"), "{err}");
}

#[test]
fn cleanup_removes_a_left_table_and_says_when_there_is_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let bpf = dir.path().join("bpf"); // not a bpffs: nothing pinned there
    let (r, b) = (run.to_str().unwrap(), bpf.to_str().unwrap());
    let (code, out, err) = switchd(&["cleanup", "--run-dir", r, "--bpf-dir", b]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "nothing to remove");
    // A table a switchd of node1 left (as it leaves one on SIGTERM or SIGKILL).
    std::fs::create_dir_all(run.join("node1")).unwrap();
    std::fs::write(run.join("node1/conntrack"), b"left behind").unwrap();
    let (code, out, err) = switchd(&["cleanup", "--run-dir", r, "--bpf-dir", b, "--node", "node2"]);
    assert_eq!((code, out.trim()), (0, "nothing to remove"), "{err}");
    let (code, out, err) = switchd(&["cleanup", "--run-dir", r, "--bpf-dir", b]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("removed the conntrack table"), "{out}");
    assert!(!run.exists(), "the run directory goes too");
}

#[test]
fn run_refuses_contradictory_persistence_flags() {
    let state = format!("{EXAMPLES}/node1.toml");
    let (code, _, err) = switchd(&["run", "--state", &state, "--fresh", "--no-persist"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--no-persist") && err.contains("--fresh"),
        "{err}"
    );
    let (code, _, err) = switchd(&["run", "--state", &state, "--grace", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--grace"), "{err}");
    let (code, out, _) = switchd(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("switchd 0."), "{out}");
}
