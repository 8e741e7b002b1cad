//! The CNI plugin (`nodeswitch-cni`) attaching a pod to a running switchd, run as a runtime
//! runs it (environment and config on stdin) inside node1's namespace, with Debian's
//! host-local as IPAM: ADD, traffic to a pod on the other node, CHECK, DEL twice, STATUS.

#![allow(missing_docs)]
mod common;

use common::topo::{skip_unless_root, state, DelNs, Topo};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn plugin_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("nodeswitch-cni");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p control` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

struct Call<'a> {
    t: &'a Topo,
    conf: serde_json::Value,
    id: String,
    netns: String,
}

impl Call<'_> {
    /// Runs the plugin in node1's namespace: (exit code, parsed stdout or Null).
    fn run(&self, command: &str, conf: &serde_json::Value) -> (i32, serde_json::Value) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.t.ns("n1")])
            .arg(plugin_bin())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &self.id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=cni-q",
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{command}: {e}: {text}"))
        };
        (out.status.code().unwrap_or(-1), v)
    }
}

#[test]
fn a_pod_added_by_the_cni_plugin_reaches_the_other_node_and_goes_cleanly() {
    if skip_unless_root("the CNI plugin namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd(1, &state(1));
    t.switchd(2, &state(2));
    let q = t.ns("cq");
    let _q = DelNs(q.clone());
    assert!(Command::new("ip")
        .args(["netns", "add", &q])
        .status()
        .unwrap()
        .success());
    let data = t.dir.path().join("ipam");
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "nodeswitch",
        "type": "nodeswitch",
        "socket": t.dir.path().join("n1.sock"),
        "ipam": {
            "type": "host-local",
            "dataDir": data,
            "ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.100"}]]
        },
        "dns": {"nameservers": ["10.96.0.10"]}
    });
    let call = Call {
        t: &t,
        conf: conf.clone(),
        id: format!("cnitest{}", std::process::id()),
        netns: format!("/run/netns/{q}"),
    };
    let (code, r) = call.run("ADD", &call.conf);
    assert_eq!(code, 0, "ADD: {r}");
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["ips"][0]["address"], "10.244.1.100/24", "{r}");
    assert_eq!(r["ips"][0]["gateway"], "10.244.1.1");
    assert_eq!(r["ips"][0]["interface"], 1);
    assert_eq!(r["interfaces"][1]["name"], "eth0");
    assert_eq!(r["interfaces"][1]["sandbox"], call.netns.as_str());
    assert_eq!(r["interfaces"][1]["mtu"], 1450);
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    let (_, pods, _) = t.ctl(1, &["list", "pods"]);
    let line = pods
        .lines()
        .find(|l| l.contains("default/cni-q"))
        .unwrap_or_else(|| panic!("{pods}"));
    assert!(
        line.contains("10.244.1.100") && line.ends_with("cni"),
        "{line}"
    );
    // Programmed when ADD returned: the new pod reaches pod-d on node2 at once.
    assert!(t.ping("cq", "10.244.2.3", &[]), "cni pod -> pod-d");
    assert!(t.ping("d", "10.244.1.100", &[]), "pod-d -> cni pod");

    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    let (code, out) = call.run("CHECK", &check);
    assert_eq!((code, &out), (0, &serde_json::Value::Null), "CHECK");
    let (code, out) = call.run("STATUS", &conf);
    assert_eq!(code, 0, "STATUS: {out}");

    let mut del = conf.clone();
    del["prevResult"] = r.clone();
    for _ in 0..2 {
        let (code, out) = call.run("DEL", &del);
        assert_eq!(code, 0, "DEL: {out}");
    }
    let (_, pods, _) = t.ctl(1, &["list", "pods"]);
    assert!(!pods.contains("cni-q"), "{pods}");
    let links = t.ok("n1", &["ip", "-o", "link"]);
    let host = r["interfaces"][0]["name"].as_str().unwrap();
    assert!(host.starts_with("nsw") && host.len() == 15, "{host}");
    assert!(!links.contains(host), "{host} is still there: {links}");
    let held: Vec<_> = std::fs::read_dir(data.join("nodeswitch"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("10."))
        .collect();
    assert!(held.is_empty(), "IPAM still holds {held:?}");
}
