//! The agent benchmark (run by `bench/agent`, which starts switchd): nodeswitch-agent against
//! the stand-in API server (`tests/tools/apiserver.py`) holding a cluster of 10,000
//! Services with 100,000 endpoints on 400 nodes. Measures (wall clock, everything included)
//! a full start (the agent started until switchd runs the generation with every Service),
//! a restart of the agent (no new generation expected), and single EndpointSlice changes
//! from the moment the API server has accepted them until switchd runs a generation that
//! holds them ("programmed"): p50, p99 and max over `--changes` changes, spaced so that
//! each is measured alone.
#![allow(missing_docs)]

use bench::{ms, node_cidr, percentile};
use control::pb;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    socket: PathBuf,
    agent: PathBuf,
    services: usize,
    endpoints: usize,
    changes: usize,
    window_ms: u64,
    json: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        socket: "/run/nodeswitch/switchd.sock".into(),
        agent: "target/release/nodeswitch-agent".into(),
        services: 10_000,
        endpoints: 10,
        changes: 1000,
        window_ms: 10,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--socket" => a.socket = v.into(),
            "--agent" => a.agent = v.into(),
            "--services" => a.services = v.parse().expect("--services N"),
            "--endpoints" => a.endpoints = v.parse().expect("--endpoints N"),
            "--changes" => a.changes = v.parse().expect("--changes N"),
            "--sync-window-ms" => a.window_ms = v.parse().expect("--sync-window-ms N"),
            "--json" => a.json = Some(v.into()),
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

fn node(k: usize) -> Value {
    let name = format!("bench-node-{k}");
    let cidr = format!("{}/24", node_cidr(k));
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name},
                     "annotations": {"nodeswitch.io/vtep-mac":
                         format!("02:01:00:00:{:02x}:{:02x}", k / 256, k % 256)}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [
            {"type": "InternalIP",
             "address": Ipv4Addr::new(198, 19, (k / 250) as u8, 1 + (k % 250) as u8).to_string()},
            {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn service(i: usize) -> Value {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32);
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                 "ipFamilies": ["IPv4"], "ports": [
                     {"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    })
}

/// Service i's slice, with endpoint `down` (if any) not ready.
fn slice(i: usize, per: usize, down: Option<usize>) -> Value {
    let eps: Vec<Value> = (0..per)
        .map(|j| {
            let e = i * per + j;
            let (k, host) = (e / 250, e % 250);
            let ip = Ipv4Addr::from(u32::from(node_cidr(k)) + 2 + host as u32);
            let ready = down != Some(j);
            json!({"addresses": [ip.to_string()], "nodeName": format!("bench-node-{k}"),
                   "conditions": {"ready": ready, "serving": ready, "terminating": false}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
        "endpoints": eps
    })
}

/// The stand-in API server, started over `objects`; killed when dropped.
struct ApiServer {
    child: Child,
    port: u16,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ApiServer {
    fn start(objects: &std::path::Path) -> ApiServer {
        let mut child = Command::new("python3")
            .arg("tests/tools/apiserver.py")
            .arg("0")
            .arg(objects)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 tests/tools/apiserver.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("apiserver.py said {line:?}"));
        ApiServer { child, port }
    }

    /// Puts an object; returns when the server has accepted it (its answer read).
    fn put(&self, obj: &Value) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_nodelay(true).unwrap();
        let data = obj.to_string();
        write!(
            s,
            "POST /_test/put HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{data}",
            data.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
            "{out}"
        );
    }
}

type Client = pb::switch_service_client::SwitchServiceClient<tonic::transport::Channel>;

async fn generation(c: &mut Client) -> u64 {
    c.version(pb::VersionRequest {})
        .await
        .expect("Version")
        .into_inner()
        .generation
}

/// Polls switchd until its generation is past `after`; returns it and when it was seen.
async fn wait_generation(c: &mut Client, after: u64, limit: Duration) -> (u64, Instant) {
    let t = Instant::now();
    loop {
        let g = generation(c).await;
        if g > after {
            return (g, Instant::now());
        }
        assert!(t.elapsed() < limit, "no new generation within {limit:?}");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn agent(a: &Args, api: &ApiServer, log: &std::path::Path) -> Child {
    Command::new(&a.agent)
        .args(["--node", "node1", "--server"])
        .arg(format!("http://127.0.0.1:{}", api.port))
        .arg("--socket")
        .arg(&a.socket)
        .args(["--healthz-address", "127.0.0.1:0"])
        .arg("--sync-window-ms")
        .arg(a.window_ms.to_string())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("nodeswitch-agent")
}

async fn agent_services(c: &mut Client) -> (usize, usize) {
    let s = c
        .get_state(pb::GetStateRequest {
            owner: "agent".into(),
        })
        .await
        .expect("GetState")
        .into_inner()
        .state
        .unwrap();
    (
        s.services.len(),
        s.services.iter().map(|s| s.endpoints.len()).sum(),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().unwrap();
    let nodes = (a.services * a.endpoints).div_ceil(250);
    let mut objects: Vec<Value> = (0..nodes).map(node).collect();
    objects.extend((0..a.services).map(service));
    objects.extend((0..a.services).map(|i| slice(i, a.endpoints, None)));
    let file = dir.path().join("cluster.json");
    std::fs::write(&file, serde_json::to_vec(&objects).unwrap()).unwrap();
    drop(objects);
    let api = ApiServer::start(&file);
    println!(
        "cluster: {} Services x {} endpoints = {} endpoints on {nodes} nodes (stand-in API server, sync window {} ms)",
        a.services,
        a.endpoints,
        a.services * a.endpoints,
        a.window_ms
    );
    let mut c = control::client::connect(&a.socket)
        .await
        .expect("connect to switchd");

    // 1. A full start: the agent lists everything and writes one Replace.
    let g0 = generation(&mut c).await;
    let log = dir.path().join("agent.log");
    let log2 = dir.path().join("agent-restarted.log");
    let t = Instant::now();
    let mut child = agent(&a, &api, &log);
    let (g1, seen) = wait_generation(&mut c, g0, Duration::from_secs(60)).await;
    let start = seen - t;
    let (svcs, eps) = agent_services(&mut c).await;
    assert_eq!(
        (svcs, eps),
        (a.services, a.services * a.endpoints),
        "everything in one generation"
    );
    println!(
        "full start (agent started -> switchd runs every Service): {:.0} ms",
        ms(start)
    );

    // 2. A restart of the agent: nothing differs, no new generation.
    let _ = child.kill();
    let _ = child.wait();
    let mut child = agent(&a, &api, &log2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let g2 = generation(&mut c).await;
    println!("agent restart: {} new generations (expected 0)", g2 - g1);

    // 3. Single changes: one endpoint of a random Service made not ready, then ready again
    // (every change a real one).
    let mut lat = Vec::with_capacity(a.changes);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut g = g2;
    let (mut i, mut j) = (0, 0);
    for n in 0..a.changes {
        let down = n % 2 == 0;
        if down {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            i = (rng % a.services as u64) as usize;
            j = ((rng >> 32) % a.endpoints as u64) as usize;
        }
        let obj = slice(i, a.endpoints, down.then_some(j));
        api.put(&obj);
        let accepted = Instant::now();
        let (next, seen) = wait_generation(&mut c, g, Duration::from_secs(10)).await;
        lat.push(ms(seen - accepted));
        g = next;
        // (Outside the timing) the generation holds this change.
        let s = c
            .list_endpoints(pb::ListEndpointsRequest {
                name: format!("bench/svc-{i}"),
            })
            .await
            .expect("ListEndpoints")
            .into_inner();
        let not_ready = s
            .endpoints
            .iter()
            .filter(|e| e.endpoint.as_ref().is_some_and(|e| e.ready == Some(false)))
            .count();
        assert_eq!(not_ready, usize::from(down), "bench/svc-{i}: {s:?}");
        // Spaced: the next change comes after the window, so that each is measured alone.
        tokio::time::sleep(Duration::from_millis(a.window_ms + 5)).await;
    }
    let (p50, p99) = (percentile(&mut lat, 0.5), percentile(&mut lat, 0.99));
    let max = lat.iter().cloned().fold(0.0, f64::max);
    println!(
        "EndpointSlice change accepted -> programmed, {} changes: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        a.changes, p50, p99, max
    );
    let _ = child.kill();
    let _ = child.wait();
    if let Some(path) = &a.json {
        let out = json!({
            "services": a.services, "endpoints": a.services * a.endpoints, "nodes": nodes,
            "window_ms": a.window_ms, "full_start_ms": ms(start), "restart_generations": g2 - g1,
            "change_ms": {"p50": p50, "p99": p99, "max": max, "n": a.changes}
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    }
}
