//! nodeswitch-agent end to end, without root: the real binary against the stand-in API server
//! (`tests/tools/apiserver.py`, Kubernetes' list/watch/PATCH wire protocol) and a switchd
//! control server over an in-memory dataplane. A fresh start programs the cluster's nodes
//! and Services; the agent publishes its VTEP MAC on its Node; an endpoint turning
//! terminating is programmed; a watch expired with 410 Gone is relisted and resumed; an
//! agent restart writes nothing new.
#![allow(missing_docs)]

#[path = "../../tests/tests/common/apiserver.rs"]
mod apiserver;
mod common;

use apiserver::Api;
use common::Fixture;
use control::pb;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// This node's config: no other nodes, no Services (the agent brings them).
const CONFIG: &str = r#"
[node]
name = "node1"
ip = "198.18.0.1"
pod_cidr = "10.244.1.0/24"
gateway_mac = "02:00:0a:f4:01:01"
uplink_mac = "02:00:c6:12:00:01"
vtep_mac = "02:00:00:00:ff:01"

[[pods]]
name = "default/pod-b"
ip = "10.244.1.3"
mac = "02:00:0a:f4:01:03"
port = "veth-b"
"#;

fn node(name: &str, ip: &str, cidr: &str, mac: Option<&str>) -> Value {
    let mut n = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                 {"type": "Hostname", "address": name}]}
    });
    if let Some(m) = mac {
        n["metadata"]["annotations"] = json!({"nodeswitch.io/vtep-mac": m});
    }
    n
}

fn web_slice(node2_terminating: bool) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-x1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": [
            {"addresses": ["10.244.1.3"], "conditions": {"ready": true}, "nodeName": "node1"},
            {"addresses": ["10.244.2.3"], "nodeName": "node2",
             "conditions": {"ready": !node2_terminating, "serving": true,
                            "terminating": node2_terminating}}
        ]
    })
}

/// A running agent, killed when dropped (also when a test fails).
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Agent {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn agent(api: &Api, f: &Fixture, healthz: u16) -> Agent {
    Agent(
        Command::new(env!("CARGO_BIN_EXE_nodeswitch-agent"))
            .args(["--node", "node1", "--server"])
            .arg(format!("http://127.0.0.1:{}", api.port))
            .arg("--socket")
            .arg(&f.path)
            .arg("--healthz-address")
            .arg(format!("127.0.0.1:{healthz}"))
            .args(["--healthz-bound-seconds", "1"])
            .spawn()
            .expect("nodeswitch-agent"),
    )
}

/// `GET path` on the agent's healthz port: (status, body); waits for it to listen.
fn healthz(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "healthz: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    (
        code,
        out.split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The agent's objects in switchd, polled until `done` holds (10 s at most).
fn wait_for(f: &Fixture, what: &str, done: impl Fn(&pb::State) -> bool) -> pb::State {
    let mut c = f.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s =
            f.rt.block_on(c.get_state(pb::GetStateRequest {
                owner: "agent".into(),
            }))
            .unwrap()
            .into_inner()
            .state
            .unwrap();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: switchd holds {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_agent_programs_switchd_from_the_api_server_and_follows_it() {
    let api = Api::start(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
        None,
    );
    api.put(node("node1", "198.18.0.1", "10.244.1.0/24", None));
    api.put(node(
        "node2",
        "198.18.0.2",
        "10.244.2.0/24",
        Some("02:00:00:00:ff:02"),
    ));
    api.put(node("node3", "198.18.0.3", "10.244.3.0/24", None));
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http", "nodePort": 30080}]}
    }));
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "headless", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
    }));
    api.put(web_slice(false));
    let mut f = Fixture::with_state(CONFIG);
    let hz = free_port();
    let mut a = agent(&api, &f, hz);

    // A fresh start: node2 (node3 has published no VTEP MAC yet) and default/web with both
    // endpoints, its named targetPort resolved from the slice.
    let s = wait_for(&f, "the first sync", |s| {
        s.services
            .iter()
            .any(|x| x.name == "default/web" && x.endpoints.len() == 2)
    });
    let nodes: Vec<&str> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nodes, ["node2"]);
    assert_eq!(s.nodes[0].mac, "", "left for switchd to resolve");
    let web = s.services.iter().find(|x| x.name == "default/web").unwrap();
    assert_eq!(
        (
            web.ports[0].port,
            web.ports[0].target_port,
            web.ports[0].node_port
        ),
        (80, 8080, 30080)
    );
    assert_eq!(
        s.services.len(),
        1,
        "the headless Service is not programmed"
    );
    // Healthy once programmed, as kube-proxy answers.
    let (code, body) = healthz(hz, "/healthz");
    assert_eq!(code, 200, "{body}");
    let h: Value = serde_json::from_str(&body).unwrap();
    assert!(h["lastUpdated"].as_str().unwrap().ends_with('Z'), "{h}");
    assert_eq!(healthz(hz, "/livez").0, 200);
    assert_eq!(healthz(hz, "/metrics-not-here").0, 404);
    // Its metrics: the first sync programmed, its latency observed, the headless Service
    // counted as not programmed.
    let (code, text) = healthz(hz, "/metrics");
    assert_eq!(code, 200, "{text}");
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in {text}"))
    };
    assert!(sample("nodeswitch_agent_syncs_total") >= 1.0, "{text}");
    assert!(
        sample("nodeswitch_agent_sync_duration_seconds_count") >= 1.0,
        "{text}"
    );
    assert!(
        sample("nodeswitch_agent_objects_not_programmed_total") >= 1.0,
        "{text}"
    );
    assert!(
        sample("nodeswitch_agent_last_sync_timestamp_seconds") > 1.7e9,
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));

    // Its VTEP MAC, on its own Node (switchd's node.vtep_mac).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, n) = api.call("GET", "/api/v1/nodes/node1", &Value::Null);
        if n["metadata"]["annotations"]["nodeswitch.io/vtep-mac"] == "02:00:00:00:ff:01" {
            break;
        }
        assert!(Instant::now() < deadline, "node1 not annotated: {n}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A Service switchd refuses is left out, the others stay, and it gets a Warning Event.
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": {"clusterIP": "10.200.0.1", "ports": [{"name": "x", "port": 80}]}
    }));
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let (_, evs) = api.call("GET", "/_test/events", &Value::Null);
        let found = evs.as_array().and_then(|a| {
            a.iter()
                .find(|e| e["regarding"]["name"] == "bad" && e["regarding"]["kind"] == "Service")
                .cloned()
        });
        if let Some(e) = found {
            break e;
        }
        assert!(Instant::now() < deadline, "no Event for default/bad: {evs}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("NotProgrammed")),
        "{event}"
    );
    assert!(
        event["note"].as_str().unwrap().contains("Service CIDR"),
        "{event}"
    );
    assert_eq!(event["reportingController"], "nodeswitch-agent");
    let s = wait_for(&f, "the others still programmed", |s| s.services.len() == 1);
    assert_eq!(s.services[0].name, "default/web");

    // An endpoint turns terminating: one write, one new generation.
    let g = f.generation();
    api.put(web_slice(true));
    wait_for(&f, "the terminating endpoint", |s| {
        s.services.iter().any(|x| {
            x.endpoints.iter().any(|e| {
                e.ip == "10.244.2.3" && e.terminating == Some(true) && e.ready == Some(false)
            })
        })
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.generation(), g + 1, "one change, one generation");

    // Node3's agent publishes its MAC: node3 is programmed.
    api.put(node(
        "node3",
        "198.18.0.3",
        "10.244.3.0/24",
        Some("02:00:00:00:ff:03"),
    ));
    wait_for(&f, "node3", |s| s.nodes.len() == 2);

    // The watches expire (etcd compaction): 410 Gone, a relist, and changes still arrive.
    assert_eq!(api.call("POST", "/_test/compact", &json!({})).0, 200);
    api.put(web_slice(false));
    wait_for(&f, "a change after 410 Gone", |s| {
        s.services.iter().any(|x| {
            x.endpoints
                .iter()
                .all(|e| e.ready != Some(false) && e.terminating != Some(true))
        })
    });
    let (_, asked) = api.call("GET", "/_test/requests", &Value::Null);
    let relists = asked
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            let p = r[1].as_str().unwrap_or("");
            p.starts_with("/apis/discovery.k8s.io/v1/endpointslices") && !p.contains("watch=")
        })
        .count();
    assert!(
        relists >= 2,
        "the slices were listed again after 410: {asked}"
    );

    // The Service's port renamed (in the Service and, as the controller writes it, in its
    // slice) and a NodePort added on a second port.
    api.put(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [
            {"name": "web", "protocol": "TCP", "port": 80, "targetPort": "web", "nodePort": 30080},
            {"name": "admin", "protocol": "TCP", "port": 9090, "targetPort": 9090,
             "nodePort": 30090}]}
    }));
    let mut slice = web_slice(false);
    slice["ports"] = json!([{"name": "web", "protocol": "TCP", "port": 8081},
                            {"name": "admin", "protocol": "TCP", "port": 9090}]);
    api.put(slice);
    let s = wait_for(&f, "the renamed port and the new NodePort", |s| {
        s.services.iter().any(|x| {
            x.name == "default/web" && x.ports.len() == 2 && x.ports[0].target_port == 8081
        })
    });
    let ports: Vec<(&str, u32, u32, u32)> = s.services[0]
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.port, p.target_port, p.node_port))
        .collect();
    assert_eq!(ports, [("web", 80, 8081, 30080), ("admin", 9090, 0, 30090)]);

    // A node registers before the controller-manager gives it a pod CIDR: left out, then
    // programmed when the CIDR appears.
    let mut n4 = node(
        "node4",
        "198.18.0.4",
        "10.244.4.0/24",
        Some("02:00:00:00:ff:04"),
    );
    n4["spec"] = json!({});
    api.put(n4);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wait_for(&f, "node4 not yet", |_| true).nodes.len(), 2);
    api.put(node(
        "node4",
        "198.18.0.4",
        "10.244.4.0/24",
        Some("02:00:00:00:ff:04"),
    ));
    let s = wait_for(&f, "node4 with its pod CIDR", |s| s.nodes.len() == 3);
    let n4 = s.nodes.iter().find(|n| n.name == "node4").unwrap();
    assert_eq!(
        (n4.ip.as_str(), n4.pod_cidr.as_str()),
        ("198.18.0.4", "10.244.4.0/24")
    );

    // switchd restarts without the agent's objects (this stand-in keeps nothing): the agent
    // sees another instance and writes everything again, unasked by the API server.
    f.server = None;
    let _ = std::fs::remove_file(&f.path);
    let (engine, snap) =
        control::engine::Engine::new(flowtable::state::StateFile::parse(CONFIG).unwrap()).unwrap();
    let plane = control::local::LocalPlane::new(
        snap,
        std::sync::Arc::new(flowtable::conntrack::Conntrack::new(
            1 << 12,
            flowtable::conntrack::Timeouts::default(),
        )),
    );
    f.ctl = control::server::Control::new(engine, plane);
    f.server = Some(control::client::spawn_unix(std::sync::Arc::clone(&f.ctl), &f.path).unwrap());
    let s = wait_for(&f, "everything again after switchd's restart", |s| {
        s.nodes.len() == 3 && s.services.len() == 1
    });
    assert_eq!(s.services[0].ports.len(), 2);

    // A restart of the agent with nothing changed writes nothing new.
    let g = f.generation();
    let _ = a.kill();
    let _ = a.wait();
    let mut a = agent(&api, &f, hz);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(f.generation(), g, "no new generation from a restart");
    // ... and it follows the next change.
    api.put(web_slice(true));
    wait_for(&f, "a change after the agent's restart", |s| {
        s.services.iter().any(|x| {
            x.endpoints
                .iter()
                .any(|e| e.ready == Some(false) && e.terminating == Some(true))
        })
    });

    // switchd gone: a change cannot be programmed, and after the bound /healthz says so.
    f.server = None;
    api.put(web_slice(false));
    std::thread::sleep(Duration::from_millis(2500));
    let (code, body) = healthz(hz, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("waited"), "{body}");
    let _ = a.kill();
    let _ = a.wait();
}

/// An interface of this machine with a unicast MAC, to stand for the uplink.
fn some_uplink() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        std::fs::read_to_string(format!("/sys/class/net/{n}/address")).is_ok_and(|m| {
            let m = m.trim();
            m.len() == 17
                && m != "00:00:00:00:00:00"
                && u8::from_str_radix(&m[..2], 16).is_ok_and(|b| b & 1 == 0)
        })
    })
}

#[test]
fn node_config_waits_for_the_pod_cidr_and_writes_the_three_files() {
    let Some(uplink) = some_uplink() else {
        eprintln!("skipped: no interface with a unicast MAC to stand for the uplink");
        return;
    };
    let api = Api::start(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")),
        None,
    );
    let mut n = node("node7", "198.18.0.7", "10.244.7.0/24", None);
    n["spec"] = json!({});
    api.put(n);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("cni/10-nodeswitch.conflist");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nodeswitch-agent"))
        .args(["--node", "node7", "--server"])
        .arg(format!("http://127.0.0.1:{}", api.port))
        .args([
            "node-config",
            "--uplink",
            &uplink,
            "--dns",
            "10.96.0.10",
            "--wait-seconds",
            "20",
        ])
        .arg("--out-dir")
        .arg(dir.path())
        .arg("--cni-conf")
        .arg(&conf)
        .spawn()
        .unwrap();
    // The controller-manager assigns the pod CIDR a moment after the node registers.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "it waits for the pod CIDR"
    );
    api.put(node("node7", "198.18.0.7", "10.244.7.0/24", None));
    let status = child.wait().unwrap();
    assert!(status.success());
    let state = std::fs::read_to_string(dir.path().join("node.toml")).unwrap();
    let s = flowtable::state::StateFile::parse(&state).unwrap();
    assert_eq!(
        (s.node.name.as_str(), s.node.uplink.as_str()),
        ("node7", uplink.as_str())
    );
    assert_eq!(s.node.pod_cidr.to_string(), "10.244.7.0/24");
    control::engine::Engine::new(s).expect("switchd accepts it");
    let env = std::fs::read_to_string(dir.path().join("node.env")).unwrap();
    assert!(env.contains("NODESWITCH_HOST_IP=10.244.7.0\n"), "{env}");
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    assert_eq!(c["plugins"][0]["dns"]["nameservers"][0], "10.96.0.10");
}
