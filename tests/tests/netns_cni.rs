//! The CNI plugin (`nodeswitch-cni`) driven by a real runtime library: libcni (what containerd
//! and CRI-O use, through `tests/tools/cnitool`), run inside each node's namespace, with
//! Debian's host-local as IPAM, against the real switchd. Pods from CNI reach pods and
//! Services on both nodes, survive a SIGHUP and a restart of switchd, go cleanly (DEL twice,
//! DEL with the netns gone, GC), and every failure is the spec's error with nothing left
//! behind.

#![allow(missing_docs)]
mod common;

use common::topo::{root_dir, sh, skip_unless_root, state, DelNs, Topo};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

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

/// libcni's cnitool, built once (scripts/cnitool-build).
fn cnitool() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let o = Command::new(root_dir().join("scripts/cnitool-build"))
            .output()
            .expect("run scripts/cnitool-build");
        assert!(
            o.status.success(),
            "scripts/cnitool-build failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
    })
}

/// A node's CNI setup as a runtime has it: a bin dir with the plugin as `nodeswitch` (and
/// host-local from /usr/lib/cni on CNI_PATH), a conflist, a result cache, an IPAM dir.
struct Cni {
    node: u8,
    bin: PathBuf,
    conflist: PathBuf,
    cache: PathBuf,
    ipam: PathBuf,
}

/// The network config for node `n` (pod CIDR 10.244.n.0/24, addresses from .100 on).
fn conf(t: &Topo, n: u8, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "nodeswitch",
        "plugins": [{
            "type": "nodeswitch",
            "socket": t.dir.path().join(format!("n{n}.sock")),
            "ipam": {
                "type": "host-local",
                "dataDir": ipam_dir,
                "ranges": [[{"subnet": format!("10.244.{n}.0/24"),
                             "rangeStart": format!("10.244.{n}.100")}]]
            },
            "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
        }]
    })
}

impl Cni {
    fn new(t: &Topo, n: u8) -> Cni {
        Cni::with(t, n, |_| {})
    }

    /// Node `n`'s setup with its conflist changed by `edit`.
    fn with(t: &Topo, n: u8, edit: impl FnOnce(&mut Value)) -> Cni {
        let d = t.dir.path().join(format!("cni{n}"));
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let link = bin.join("nodeswitch");
        if !link.exists() {
            std::os::unix::fs::symlink(plugin_bin(), &link).unwrap();
        }
        let ipam = d.join("ipam");
        let mut c = conf(t, n, &ipam);
        edit(&mut c);
        let conflist = d.join(format!("conflist-{}.json", unique()));
        std::fs::write(&conflist, c.to_string()).unwrap();
        Cni {
            node: n,
            bin,
            conflist,
            cache: d.join("cache"),
            ipam,
        }
    }

    /// Runs cnitool in node `n`'s namespace: (exit code, stdout as JSON or Null).
    fn tool(&self, t: &Topo, pod: &str, args: &[&str]) -> (i32, Value) {
        let out = Command::new("ip")
            .args(["netns", "exec", &t.ns(&format!("n{}", self.node))])
            .arg(cnitool())
            .args(&args[..1])
            .arg(&self.conflist)
            .args(&args[1..])
            .env("CNI_PATH", format!("{}:/usr/lib/cni", self.bin.display()))
            .env("CNI_CACHE_DIR", &self.cache)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )
            .output()
            .expect("cnitool");
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| {
                panic!(
                    "{args:?}: {e}: {text} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        };
        (out.status.code().unwrap_or(-1), v)
    }

    /// `add`/`check`/`del` for the sandbox `pod` (container ID `id-POD`, netns `POD`).
    fn call(&self, t: &Topo, command: &str, pod: &str) -> (i32, Value) {
        let netns = format!("/run/netns/{}", t.ns(pod));
        self.tool(t, pod, &[command, &netns, &format!("id-{pod}")])
    }

    fn ok(&self, t: &Topo, command: &str, pod: &str) -> Value {
        let (code, v) = self.call(t, command, pod);
        assert_eq!(code, 0, "{command} {pod}: {v}");
        v
    }

    /// Addresses host-local holds.
    fn held(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.ipam.join("nodeswitch"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("10."))
            .collect();
        v.sort();
        v
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A pod sandbox: a netns with lo up, removed on drop.
fn sandbox(t: &Topo, pod: &str) -> DelNs {
    let ns = t.ns(pod);
    let g = DelNs(ns.clone());
    sh(&["ip", "netns", "add", &ns]);
    sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    g
}

/// Our host veths in node `n`'s namespace.
fn host_veths(t: &Topo, n: u8) -> Vec<String> {
    t.ok(&format!("n{n}"), &["ip", "-o", "link"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("nsw") && n.len() == 15)
        .collect()
}

/// switchd's pods of owner cni: (name, ip).
fn cni_pods(t: &Topo, n: u8) -> Vec<(String, String)> {
    let (code, out, err) = t.ctl(n, &["list", "pods", "-o", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let items = v
        .as_array()
        .cloned()
        .or_else(|| v["pods"].as_array().cloned())
        .unwrap_or_else(|| panic!("{out}"));
    let mut pods: Vec<_> = items
        .iter()
        .filter(|p| p["owner"] == "cni")
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["ip"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    pods.sort();
    pods
}

/// node1's demo state with two Services at the CNI pods: one local (q2), one on node2 (r).
fn node1_state(t: &Topo) -> PathBuf {
    let mut s = std::fs::read_to_string(state(1)).unwrap();
    s.push_str(
        r#"
[[services]]
name = "default/cni-local"
cluster_ip = "10.96.0.50"
ports = [{ protocol = "TCP", port = 80, target_port = 8080 }]
endpoints = [{ ip = "10.244.1.101", node = "node1" }]

[[services]]
name = "default/cni-remote"
cluster_ip = "10.96.0.51"
ports = [{ protocol = "TCP", port = 80, target_port = 8080 }]
endpoints = [{ ip = "10.244.2.100", node = "node2" }]
"#,
    );
    let p = t.dir.path().join("node1-cni.toml");
    std::fs::write(&p, s).unwrap();
    p
}

fn ping(t: &Topo, from: &str, to: &str) {
    assert!(t.ping(from, to, &[]), "{from} -> {to}");
}

/// Runs `command` for `pod` and checks that it fails with `code` and says `text`.
fn expect(t: &Topo, c: &Cni, command: &str, pod: &str, code: u64, text: &str) {
    let (exit, e) = c.call(t, command, pod);
    assert_eq!(exit, 1, "{command}: {e}");
    assert_eq!(e["code"], code, "{command}: {e}");
    let msg = format!("{} {}", e["msg"], e["details"]);
    assert!(msg.contains(text), "{command}: {text:?} not in {e}");
}

/// node1's setup with its plugin's config changed by `f`.
fn edited(t: &Topo, f: impl FnOnce(&mut Value)) -> Cni {
    Cni::with(t, 1, |v| f(&mut v["plugins"][0]))
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn pods_added_through_libcni_reach_pods_and_services_and_outlive_a_switchd_restart() {
    if skip_unless_root("the CNI namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let s1 = node1_state(&t);
    let d1 = t.switchd(1, &s1);
    t.switchd(2, &state(2));
    let (c1, c2) = (Cni::new(&t, 1), Cni::new(&t, 2));
    let (_q1, _q2, _r) = (sandbox(&t, "q1"), sandbox(&t, "q2"), sandbox(&t, "r"));

    // libcni asks the plugin for its versions and checks the list against them.
    let (code, v) = c1.tool(&t, "q1", &["validate"]);
    assert_eq!(code, 0, "validate: {v}");

    // ADD: libcni parses the result (as the spec's 1.0.0 result) before printing it.
    let r1 = c1.ok(&t, "add", "q1");
    assert_eq!(r1["cniVersion"], "1.0.0", "{r1}");
    assert_eq!(r1["ips"][0]["address"], "10.244.1.100/24", "{r1}");
    assert_eq!(r1["ips"][0]["gateway"], "10.244.1.1");
    let host = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    assert!(host.starts_with("nsw") && host.len() == 15, "{host}");
    assert!(r1["interfaces"][0].get("sandbox").is_none(), "{r1}");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r1["interfaces"][1]["sandbox"],
        format!("/run/netns/{}", t.ns("q1"))
    );
    // (libcni 1.1.2's result type is the 1.0.0 one, which has no interface mtu: checked below
    // in the pod.)
    assert_eq!(r1["ips"][0]["interface"], 1, "the index of the pod's eth0");
    assert_eq!(r1["routes"][0]["dst"], "0.0.0.0/0", "{r1}");
    assert_eq!(r1["dns"]["nameservers"][0], "10.96.0.10");
    // What the pod sees is what the result says.
    let addr = t.ok("q1", &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("10.244.1.100/24"), "{addr}");
    let mac = r1["interfaces"][1]["mac"].as_str().unwrap().to_string();
    let link = t.ok("q1", &["ip", "-o", "link", "show", "eth0"]);
    assert!(
        link.contains(&mac) && link.contains("mtu 1450"),
        "MAC of the result, MTU = uplink 1500 - 50: {link}"
    );
    let route = t.ok("q1", &["ip", "route", "show", "default"]);
    assert!(route.contains("via 10.244.1.1 dev eth0"), "{route}");
    let r2 = c1.ok(&t, "add", "q2");
    assert_eq!(r2["ips"][0]["address"], "10.244.1.101/24", "{r2}");
    let rr = c2.ok(&t, "add", "r");
    assert_eq!(rr["ips"][0]["address"], "10.244.2.100/24", "{rr}");
    assert_eq!(
        cni_pods(&t, 1),
        vec![
            ("default/q1".to_string(), "10.244.1.100".to_string()),
            ("default/q2".to_string(), "10.244.1.101".to_string())
        ]
    );

    // Traffic: programmed when ADD returned; pods on one node and across the overlay.
    ping(&t, "q1", "10.244.1.101");
    ping(&t, "q2", "10.244.1.100");
    ping(&t, "q1", "10.244.2.100");
    ping(&t, "r", "10.244.1.101");
    ping(&t, "q1", "10.244.1.2");
    t.serve("q2", "tcp", 8080);
    t.serve("r", "tcp", 8080);
    t.echo("q1", "tcp", "10.244.1.101", 8080, 100_000);
    t.echo("q1", "tcp", "10.244.2.100", 8080, 100_000);
    t.echo("r", "tcp", "10.244.1.101", 8080, 100_000);
    // Services whose endpoints are CNI pods, one on this node, one on the other.
    t.echo("q1", "tcp", "10.96.0.50", 80, 100_000);
    t.echo("q1", "tcp", "10.96.0.51", 80, 100_000);
    assert_eq!(c1.call(&t, "check", "q1").0, 0);

    // SIGHUP with a state file that lists none of them: they stay.
    signal(t.daemons[d1].child.id(), "-HUP");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(cni_pods(&t, 1).len(), 2);
    // A restart of switchd: the runtime does not ADD again, the pods are still attached.
    signal(t.daemons[d1].child.id(), "-TERM");
    assert!(t.daemons[d1].child.wait().unwrap().success());
    t.switchd(1, &s1);
    let log = std::fs::read_to_string(&t.daemons[d1].log).unwrap();
    assert!(log.contains("restored 2 of 2 objects kept by cni"), "{log}");
    assert_eq!(cni_pods(&t, 1).len(), 2);
    ping(&t, "q1", "10.244.2.100");
    t.echo("q1", "tcp", "10.96.0.50", 80, 10_000);
    assert_eq!(c1.call(&t, "check", "q2").0, 0);

    // CHECK names what differs: the pod's default route removed.
    t.ok("q2", &["ip", "route", "del", "default"]);
    let (code, e) = c1.call(&t, "check", "q2");
    assert_eq!(code, 1);
    assert_eq!(e["code"], 103, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("route"), "{e}");

    // DEL twice; DEL after the runtime removed the netns.
    c1.ok(&t, "del", "q2");
    c1.ok(&t, "del", "q2");
    sh(&["ip", "netns", "del", &t.ns("q1")]);
    c1.ok(&t, "del", "q1");
    c1.ok(&t, "del", "q1");
    assert!(cni_pods(&t, 1).is_empty());
    assert!(host_veths(&t, 1).is_empty(), "{:?}", host_veths(&t, 1));
    assert!(c1.held().is_empty(), "IPAM still holds {:?}", c1.held());
    assert!(
        !t.run_dir.join("node1").join("objects.json").exists(),
        "nothing left to keep"
    );

    // GC: the runtime names what is valid; the rest goes from switchd and the node.
    let _q3 = sandbox(&t, "q3");
    c2.ok(&t, "add", "q3");
    assert_eq!(cni_pods(&t, 2).len(), 2);
    let (code, v) = c2.tool(&t, "x", &["gc", "id-r/eth0"]);
    assert_eq!(code, 0, "gc: {v}");
    assert_eq!(
        cni_pods(&t, 2),
        vec![("default/r".to_string(), "10.244.2.100".to_string())]
    );
    assert_eq!(host_veths(&t, 2).len(), 1, "{:?}", host_veths(&t, 2));
    ping(&t, "r", "10.244.1.2");
    let (code, v) = c2.tool(&t, "x", &["status"]);
    assert_eq!(code, 0, "status: {v}");
    c2.ok(&t, "del", "q3");
    c2.ok(&t, "del", "r");
    assert!(c2.held().is_empty(), "IPAM still holds {:?}", c2.held());
}

/// Runs the plugin directly, as a runtime would, with `stdin` and the `CNI_*` environment.
fn raw(t: &Topo, env: &[(&str, &str)], stdin: &[u8]) -> (i32, Value) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &t.ns("n1")])
        .arg(plugin_bin())
        .env_remove("CNI_COMMAND")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

/// Nothing of a failed ADD is left: no veth, no address held, no pod in switchd.
fn nothing_left(t: &Topo, c: &Cni, what: &str) {
    assert!(
        host_veths(t, 1).is_empty(),
        "{what}: {:?}",
        host_veths(t, 1)
    );
    assert!(c.held().is_empty(), "{what}: IPAM holds {:?}", c.held());
}

#[test]
fn every_failure_is_a_spec_error_and_leaves_nothing_behind() {
    if skip_unless_root("the CNI error namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let c = Cni::new(&t, 1);
    let _q = sandbox(&t, "q");

    // switchd is not running: ADD is 11 (try again) before anything is made; STATUS is 50.
    expect(&t, &c, "add", "q", 11, "switchd");
    nothing_left(&t, &c, "ADD without switchd");
    let (exit, e) = c.tool(&t, "q", &["status"]);
    assert_eq!((exit, e["code"].as_u64()), (1, Some(50)), "{e}");

    t.switchd(1, &state(1));
    t.switchd(2, &state(2));
    // 1: a cniVersion the plugin does not speak (libcni passes it on).
    let old = Cni::with(&t, 1, |v| v["cniVersion"] = json!("0.4.0"));
    expect(&t, &old, "add", "q", 1, "0.4.0");
    // 2: a field the plugin does not know.
    expect(
        &t,
        &edited(&t, |p| p["colour"] = json!("blue")),
        "add",
        "q",
        2,
        "colour",
    );
    // 3: the sandbox's netns does not exist.
    expect(&t, &c, "add", "gone", 3, "netns");
    // 5: the IPAM plugin cannot be run.
    std::fs::write(c.bin.join("broken-ipam"), "not a program").unwrap();
    expect(
        &t,
        &edited(&t, |p| p["ipam"]["type"] = json!("broken-ipam")),
        "add",
        "q",
        5,
        "broken-ipam",
    );
    // 6: the config is not JSON (only a raw call can send that).
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "id-q"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    let (exit, e) = raw(&t, &env, b"{not json");
    assert_eq!((exit, e["code"].as_u64()), (1, Some(6)), "{e}");
    // 4: an interface name over 15 bytes (libcni refuses it before the plugin would), and
    // no CNI_COMMAND at all.
    let mut long = env;
    long[3] = ("CNI_IFNAME", "eth0-far-too-long");
    let (exit, e) = raw(&t, &long, b"{}");
    assert_eq!((exit, e["code"].as_u64()), (1, Some(4)), "{e}");
    assert!(e["msg"].as_str().unwrap().contains("CNI_IFNAME"), "{e}");
    let (exit, e) = raw(&t, &env[1..], b"{}");
    assert_eq!((exit, e["code"].as_u64()), (1, Some(4)), "{e}");
    assert!(e["msg"].as_str().unwrap().contains("CNI_COMMAND"), "{e}");
    // 7: an MTU out of range.
    expect(
        &t,
        &edited(&t, |p| p["mtu"] = json!(100)),
        "add",
        "q",
        7,
        "mtu",
    );
    // 102: no such IPAM plugin.
    expect(
        &t,
        &edited(&t, |p| p["ipam"]["type"] = json!("no-such-ipam")),
        "add",
        "q",
        102,
        "no-such-ipam",
    );
    nothing_left(&t, &c, "config errors");
    // 100: switchd refuses the pod (an address outside node1's pod CIDR): undone whole.
    let outside = edited(&t, |p| {
        p["ipam"]["ranges"] = json!([[{"subnet": "10.99.0.0/24"}]]);
        p["ipam"]["dataDir"] = json!(c.ipam);
    });
    expect(&t, &outside, "add", "q", 100, "10.99.0.2");
    nothing_left(&t, &c, "refused by switchd");
    assert!(cni_pods(&t, 1).is_empty());
    // 101: the sandbox already has an eth0 (another container's ADD into it).
    c.ok(&t, "add", "q");
    let (exit, e) = c.tool(
        &t,
        "q",
        &["add", &format!("/run/netns/{}", t.ns("q")), "id-other"],
    );
    assert_eq!((exit, e["code"].as_u64()), (1, Some(101)), "{e}");
    assert_eq!(
        host_veths(&t, 1).len(),
        1,
        "only q's: {:?}",
        host_veths(&t, 1)
    );
    assert_eq!(c.held().len(), 1, "only q's address: {:?}", c.held());
    c.ok(&t, "del", "q");
    nothing_left(&t, &c, "after DEL");
    // 11 for a DEL while switchd is down; once it is back the DEL goes through.
    c.ok(&t, "add", "q");
    let i = t.daemons.iter().position(|d| d.node == 1).unwrap();
    signal(t.daemons[i].child.id(), "-TERM");
    assert!(t.daemons[i].child.wait().unwrap().success());
    expect(&t, &c, "del", "q", 11, "switchd");
    assert_eq!(
        c.held().len(),
        1,
        "the address is held until switchd lets the pod go"
    );
    t.switchd(1, &state(1));
    c.ok(&t, "del", "q");
    nothing_left(&t, &c, "DEL after switchd came back");
    assert!(cni_pods(&t, 1).is_empty());
}

#[test]
fn fifty_pods_added_and_deleted_at_once() {
    if skip_unless_root("the CNI parallel namespace test") {
        return;
    }
    const N: usize = 50;
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd(1, &state(1));
    let c = Cni::new(&t, 1);
    let pods: Vec<String> = (0..N).map(|i| format!("p{i}")).collect();
    let _sandboxes: Vec<DelNs> = pods.iter().map(|p| sandbox(&t, p)).collect();
    let run_all = |command: &str| -> Vec<Value> {
        std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .iter()
                .map(|p| s.spawn(|| c.call(&t, command, p)))
                .collect();
            hs.into_iter()
                .zip(&pods)
                .map(|(h, p)| {
                    let (code, v) = h.join().unwrap();
                    assert_eq!(code, 0, "{command} {p}: {v}");
                    v
                })
                .collect()
        })
    };
    let results = run_all("add");
    let mut ips: Vec<String> = results
        .iter()
        .map(|r| r["ips"][0]["address"].as_str().unwrap().to_string())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), N, "{ips:?}");
    assert_eq!(cni_pods(&t, 1).len(), N);
    assert_eq!(host_veths(&t, 1).len(), N);
    assert_eq!(c.held().len(), N);
    // Every one of them is attached: the first and the last reach each other.
    let last = results[N - 1]["ips"][0]["address"].as_str().unwrap();
    let last = last.split('/').next().unwrap();
    assert!(t.ping("p0", last, &[]), "p0 -> {last}");
    let first = results[0]["ips"][0]["address"].as_str().unwrap();
    let first = first.split('/').next().unwrap();
    assert!(t.ping(&pods[N - 1], first, &[]), "the last pod -> {first}");
    run_all("del");
    assert!(cni_pods(&t, 1).is_empty());
    assert!(host_veths(&t, 1).is_empty(), "{:?}", host_veths(&t, 1));
    assert!(c.held().is_empty(), "IPAM still holds {:?}", c.held());
}
