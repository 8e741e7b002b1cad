//! Two nodes driven only by the Kubernetes API: each node's switchd starts from its node
//! config alone (no other nodes, no Services), its nodeswitch-agent programs it from the
//! stand-in API server (`tests/tools/apiserver.py`), and real kernel TCP/UDP in the pods
//! follows: pod to pod across nodes (the other node known only from its Node object: VTEP
//! MAC from the annotation its agent published, next-hop MAC from the kernel), ClusterIPs
//! and a NodePort; an endpoint removed from a slice gets no more connections; the API server
//! frozen for 10 s leaves forwarding alone and a change made meanwhile is programmed after;
//! an invalid Service is left out while the others are programmed; a Service port renamed
//! (targetPort by name), a NodePort added and a Node's pod CIDR reappearing are followed by
//! the traffic. Needs root.

#![allow(missing_docs)]
mod common;

use common::apiserver::Api;
use common::topo::{root_dir, skip_unless_root, state, Topo};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Processes killed when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Node `n`'s demo config without its other nodes and Services.
fn node_config(t: &Topo, n: u8) -> PathBuf {
    let mut s =
        flowtable::state::StateFile::parse(&std::fs::read_to_string(state(n)).unwrap()).unwrap();
    s.nodes.clear();
    s.services.clear();
    let p = t.dir.path().join(format!("node{n}-config.toml"));
    std::fs::write(&p, s.to_toml()).unwrap();
    p
}

fn agent(procs: &mut Procs, port: u16, n: u8, dir: &Path) {
    let bin = common::topo::switchd_bin().with_file_name("nodeswitch-agent");
    let c = Command::new(bin)
        .args(["--node", &format!("node{n}"), "--server"])
        .arg(format!("http://127.0.0.1:{port}"))
        .arg("--socket")
        .arg(dir.join(format!("n{n}.sock")))
        // (Two agents in one namespace: any free port for their /healthz.)
        .args(["--healthz-address", "127.0.0.1:0"])
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nodeswitch-agent");
    procs.0.push(c);
}

fn node(name: &str, ip: &str, cidr: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}
    })
}

fn web_slice(endpoints: &[(&str, &str)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, n)| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": n}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": eps
    })
}

/// Waits until `switchctl list KIND` on node `n` shows `want`.
fn wait_listed(t: &Topo, n: u8, kind: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, out, _) = t.ctl(n, &["list", kind]);
        if out.contains(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node{n} never listed {want} in {kind}: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn endpoints_of(t: &Topo, n: u8) -> String {
    t.ctl(n, &["get", "services", "default/web"]).1
}

#[test]
fn two_nodes_follow_the_api_server() {
    if skip_unless_root("the agent namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let (c1, c2) = (node_config(&t, 1), node_config(&t, 2));
    t.switchd(1, &c1);
    t.switchd(2, &c2);
    let mut procs = Procs(Vec::new());
    let api = Api::start(&root_dir(), None);
    let (port, api_pid) = (api.port, api.pid());
    api.put(node("node1", "198.18.0.1", "10.244.1.0/24"));
    api.put(node("node2", "198.18.0.2", "10.244.2.0/24"));
    api.put(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080}]}}),
    );
    api.put(web_slice(&[
        ("10.244.1.3", "node1"),
        ("10.244.2.3", "node2"),
    ]));
    api.put(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.53", "ports": [
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353}]}}));
    api.put(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "echo-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "echo"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "protocol": "UDP", "port": 5353}],
            "endpoints": [{"addresses": ["10.244.2.2"], "nodeName": "node2"}]}),
    );
    agent(&mut procs, port, 1, t.dir.path());
    agent(&mut procs, port, 2, t.dir.path());
    // Each node learns the other once its agent has published its VTEP MAC.
    wait_listed(&t, 1, "nodes", "node2");
    wait_listed(&t, 2, "nodes", "node1");
    wait_listed(&t, 1, "services", "default/echo");
    wait_listed(&t, 2, "services", "default/echo");

    let b_peers = t.dir.path().join("b-peers");
    let env = format!("ECHO_PEERS={}", b_peers.display());
    let echo = root_dir().join("tests/tools/echo.py");
    t.spawn(
        "b",
        &[
            "env",
            &env,
            "python3",
            echo.to_str().unwrap(),
            "serve-tcp",
            "8080",
        ],
    );
    t.wait_listening("b", 8080);
    t.serve("d", "tcp", 8080);
    t.serve("c", "udp", 5353);

    t.echo("a", "tcp", "10.244.2.3", 8080, 1_000_000);
    t.echo("c", "tcp", "10.244.1.3", 8080, 100_000);
    for _ in 0..4 {
        t.echo("a", "tcp", "10.96.0.10", 80, 60_000);
        t.echo("c", "tcp", "10.96.0.10", 80, 60_000);
    }
    t.echo("a", "udp", "10.96.0.53", 53, 512);
    t.echo("ext", "tcp", "198.18.0.2", 30080, 60_000);

    // pod-b leaves the slice: no new connection reaches it.
    api.put(web_slice(&[("10.244.2.3", "node2")]));
    let deadline = Instant::now() + Duration::from_secs(15);
    while endpoints_of(&t, 1).contains("10.244.1.3") || endpoints_of(&t, 2).contains("10.244.1.3") {
        assert!(Instant::now() < deadline, "pod-b still an endpoint");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = std::fs::read_to_string(&b_peers)
        .unwrap_or_default()
        .lines()
        .count();
    for _ in 0..10 {
        t.echo("a", "tcp", "10.96.0.10", 80, 10_000);
    }
    let after = std::fs::read_to_string(&b_peers)
        .unwrap_or_default()
        .lines()
        .count();
    assert_eq!(before, after, "a removed endpoint got new connections");

    // The API server frozen for 10 s: forwarding goes on; a change made then is programmed
    // once it answers again.
    let kill = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &api_pid.to_string()])
            .status()
            .unwrap()
            .success())
    };
    kill("-STOP");
    let frozen = Instant::now();
    while frozen.elapsed() < Duration::from_secs(10) {
        t.echo("a", "tcp", "10.96.0.10", 80, 10_000);
        std::thread::sleep(Duration::from_millis(500));
    }
    kill("-CONT");
    // An invalid Service (its ClusterIP is outside the Service CIDR) and a valid one at once.
    api.put(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bad", "namespace": "default"},
            "spec": {"clusterIP": "10.200.0.1", "ports": [{"port": 80}]}}));
    api.put(web_slice(&[
        ("10.244.1.3", "node1"),
        ("10.244.2.3", "node2"),
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !endpoints_of(&t, 1).contains("10.244.1.3") {
        assert!(
            Instant::now() < deadline,
            "the change after the freeze was not programmed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, listed, _) = t.ctl(1, &["list", "services"]);
    assert!(!listed.contains("default/bad"), "{listed}");
    t.echo("a", "tcp", "10.96.0.10", 80, 60_000);

    // The Service's port renamed, then its slice (as the EndpointSlice controller follows):
    // the targetPort by name resolves to the renamed slice port, and traffic follows.
    let web = |name: &str, extra: Value| {
        let mut port = json!({"name": name, "protocol": "TCP", "port": 80, "targetPort": name,
                              "nodePort": 30080});
        if let Some(p) = extra.as_object() {
            for (k, v) in p {
                port[k] = v.clone();
            }
        }
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [port]}})
    };
    api.put(web("www", json!({})));
    let mut slice = web_slice(&[("10.244.1.3", "node1"), ("10.244.2.3", "node2")]);
    slice["ports"][0]["name"] = "www".into();
    api.put(slice);
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in [1, 2] {
        loop {
            let (_, out, _) = t.ctl(n, &["get", "services", "default/web", "-o", "json"]);
            if out.contains("\"www\"") && out.contains("10.244.2.3") && out.contains("10.244.1.3") {
                break;
            }
            assert!(Instant::now() < deadline, "node{n}: {out}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for _ in 0..4 {
        t.echo("a", "tcp", "10.96.0.10", 80, 10_000);
    }
    t.echo("ext", "tcp", "198.18.0.1", 30080, 10_000);

    // A NodePort added to the UDP Service: the outside client reaches it on either node.
    api.put(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.53", "ports": [
                {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353,
                 "nodePort": 30053}]}}));
    for n in [1, 2] {
        wait_listed(&t, n, "services", "30053");
    }
    t.echo("ext", "udp", "198.18.0.1", 30053, 512);
    t.echo("ext", "udp", "198.18.0.2", 30053, 512);

    // node2's pod CIDR taken away (node1 forgets the route), then it appears again: pod to
    // pod across the nodes follows it.
    let mut bare = node("node2", "198.18.0.2", "10.244.2.0/24");
    bare["spec"] = json!({});
    let published = |t: &Topo| t.ctl(1, &["list", "nodes"]).1;
    let annotations =
        api.call("GET", "/api/v1/nodes/node2", &Value::Null).1["metadata"]["annotations"].clone();
    assert!(
        annotations.is_object(),
        "node2's agent published its VTEP MAC"
    );
    bare["metadata"]["annotations"] = annotations.clone();
    api.put(bare);
    let deadline = Instant::now() + Duration::from_secs(15);
    while published(&t).contains("10.244.2.0/24") {
        assert!(Instant::now() < deadline, "node2's CIDR still routed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut back = node("node2", "198.18.0.2", "10.244.2.0/24");
    back["metadata"]["annotations"] = annotations;
    api.put(back);
    wait_listed(&t, 1, "nodes", "10.244.2.0/24");
    t.echo("a", "tcp", "10.244.2.3", 8080, 100_000);
}

#[test]
fn the_manifests_init_step_sets_a_node_up() {
    if skip_unless_root("the init-step namespace test") {
        return;
    }
    // A node of its own: a namespace with an uplink, its API server on its loopback.
    let p = common::topo::unique_prefix();
    let ns = format!("{p}-k");
    let sh = |args: &[&str]| {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    struct DelNs(String);
    impl Drop for DelNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    assert!(Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .unwrap()
        .success());
    let _del = DelNs(ns.clone());
    sh(&["ip", "link", "set", "lo", "up"]);
    sh(&[
        "ip",
        "link",
        "add",
        "eth0",
        "address",
        "02:00:c6:12:00:05",
        "type",
        "veth",
        "peer",
        "name",
        "eth0p",
    ]);
    sh(&["ip", "addr", "add", "198.18.0.5/24", "dev", "eth0"]);
    sh(&["ip", "link", "set", "eth0", "up"]);
    let api = Api::start(&root_dir(), Some(&ns));
    let port = api.port;
    let node = node("node5", "198.18.0.5", "10.244.5.0/24");
    let put = serde_json::to_string(&node).unwrap();
    sh(&[
        "python3",
        "-c",
        &format!(
            "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:{port}/_test/put', \
             data={put:?}.encode(), method='POST')).read()"
        ),
    ]);

    // The init step's script, exactly as the manifest ships it.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("setup.sh");
    let manifest = root_dir().join("examples/kubernetes/nodeswitch.yaml");
    let o = Command::new("python3")
        .args(["-c", "import sys, yaml\nfor d in yaml.safe_load_all(open(sys.argv[1])):\n    if d and d['kind'] == 'ConfigMap': open(sys.argv[2], 'w').write(d['data']['setup.sh'])"])
        .arg(&manifest)
        .arg(&script)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: s, cluster: {{server: \"http://127.0.0.1:{port}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: c, context: {{cluster: s, user: u}}}}]\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    let bin = common::topo::switchd_bin();
    let bindir = bin.parent().unwrap();
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |what: &str| {
        let o = Command::new("ip")
            .args(["netns", "exec", &ns, "env"])
            .args([
                "NODE_NAME=node5",
                "UPLINK=eth0",
                "CLUSTER_CIDR=10.244.0.0/16",
            ])
            .args(["SERVICE_CIDR=10.96.0.0/12", "DNS=10.96.0.10"])
            .arg(format!("KUBECONFIG={}", kubeconfig.display()))
            .arg(format!("RUN={}", dir.path().join("run").display()))
            .arg(format!("HOSTFS={}", dir.path().join("host").display()))
            .arg(format!(
                "CNI_PLUGIN={}",
                bindir.join("nodeswitch-cni").display()
            ))
            .arg(format!("PATH={path}"))
            .arg("sh")
            .arg(&script)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run("the init step");
    // Run again (a pod restart): the same result, no error.
    run("the init step again");

    let state = std::fs::read_to_string(dir.path().join("run/node.toml")).unwrap();
    let s = flowtable::state::StateFile::parse(&state).unwrap();
    assert_eq!(
        (s.node.name.as_str(), s.node.uplink.as_str()),
        ("node5", "eth0")
    );
    assert_eq!(s.node.uplink_mac.to_string(), "02:00:c6:12:00:05");
    flowtable::snapshot::Snapshot::build(&s, 1).expect("switchd accepts it");
    let link = sh(&["ip", "-o", "link", "show", "nsw-host"]);
    assert!(link.contains("02:01:0a:f4:05:01"), "{link}");
    let routes = sh(&["ip", "route", "show", "dev", "nsw-host"]);
    for want in ["10.244.0.0/16", "10.96.0.0/12", "src 10.244.5.0"] {
        assert!(routes.contains(want), "{want}: {routes}");
    }
    let conf =
        std::fs::read_to_string(dir.path().join("host/etc/cni/net.d/10-nodeswitch.conflist"))
            .unwrap();
    assert!(conf.contains("10.244.5.0/24"), "{conf}");
    assert!(dir.path().join("host/opt/cni/bin/nodeswitch").exists());
}
