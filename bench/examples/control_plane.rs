//! The control-plane benchmark (run by `bench/control-plane`, which starts switchd): how long a
//! running switchd takes to apply 10,000 Services with 100,000 endpoints, and how long a single
//! endpoint change takes until every worker runs it ("programmed"), both measured by a gRPC
//! client over the control socket, wall clock, everything included. For comparison in the same
//! run: `iptables-restore` of the equivalent kube-proxy (iptables mode) ruleset in a scratch
//! network namespace, in full and as kube-proxy's partial update of one Service's chains.
//! Before that, the steps of an apply timed in this process (the client's encoding, then
//! decoding, conversion and planning as switchd does them); `--offline STATE_FILE` times only
//! those, over that state file's node (no switchd, no root). This process allocates with
//! mimalloc, as switchd does, so the steps cost here what they cost there.
#![allow(missing_docs)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bench::{ms, node_cidr, percentile};
use control::pb;
use flowtable::state::{
    EndpointSpec, Protocol, RemoteNodeSpec, ServicePortSpec, ServiceSpec, StateFile,
};
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    socket: std::path::PathBuf,
    netns: Option<String>,
    services: usize,
    endpoints: usize,
    changes: usize,
    runs: usize,
    json: Option<std::path::PathBuf>,
    offline: Option<std::path::PathBuf>,
    settle_ms: u64,
}

fn args() -> Args {
    let mut a = Args {
        socket: "/run/nodeswitch/switchd.sock".into(),
        netns: None,
        services: 10_000,
        endpoints: 10,
        changes: 1000,
        runs: 3,
        json: None,
        offline: None,
        settle_ms: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--socket" => a.socket = v.into(),
            "--iptables-netns" => a.netns = Some(v),
            "--services" => a.services = v.parse().expect("--services N"),
            "--endpoints" => a.endpoints = v.parse().expect("--endpoints N"),
            "--changes" => a.changes = v.parse().expect("--changes N"),
            "--runs" => a.runs = v.parse().expect("--runs N"),
            "--json" => a.json = Some(v.into()),
            "--offline" => a.offline = Some(v.into()),
            "--settle-ms" => a.settle_ms = v.parse().expect("--settle-ms N"),
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

/// The big state: the running node's own state, plus enough nodes to hold every endpoint at
/// a distinct address, plus the Services.
fn big_state(base: &StateFile, services: usize, per: usize) -> StateFile {
    let mut s = base.clone();
    let total = services * per;
    let nodes = total.div_ceil(250);
    for k in 0..nodes {
        s.nodes.push(RemoteNodeSpec {
            owner: String::new(),
            name: format!("bench-node-{k}"),
            ip: Ipv4Addr::new(198, 19, (k / 250) as u8, 1 + (k % 250) as u8),
            pod_cidr: format!("{}/24", node_cidr(k)).parse().unwrap(),
            vtep_mac: format!("02:01:00:00:{:02x}:{:02x}", k / 256, k % 256)
                .parse()
                .unwrap(),
            mac: Some(
                format!("02:02:00:00:{:02x}:{:02x}", k / 256, k % 256)
                    .parse()
                    .unwrap(),
            ),
        });
    }
    for i in 0..services {
        let endpoints = (0..per)
            .map(|j| {
                let e = i * per + j;
                let (k, host) = (e / 250, e % 250);
                let net = u32::from(node_cidr(k));
                EndpointSpec {
                    ip: Ipv4Addr::from(net + 2 + host as u32),
                    node: format!("bench-node-{k}"),
                    ready: true,
                    serving: None,
                    terminating: false,
                }
            })
            .collect();
        s.services.push(ServiceSpec {
            owner: String::new(),
            name: format!("bench/svc-{i}"),
            cluster_ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32),
            ports: vec![ServicePortSpec {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: Some(8080),
                node_port: None,
            }],
            load_balancer_ips: vec![],
            external_ips: vec![],
            session_affinity: Default::default(),
            affinity_timeout_seconds: 10800,
            external_traffic_policy: Default::default(),
            internal_traffic_policy: Default::default(),
            health_check_node_port: None,
            endpoints,
        });
    }
    s
}

fn chain(kind: &str, name: &str) -> String {
    // kube-proxy names chains by a hash of the Service port (or endpoint): 16 base32 characters.
    let h = flowtable::maglev::stable_hash(name.as_bytes(), 7);
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let tail: String = (0..16)
        .map(|k| alphabet[((h >> (k * 4)) & 31) as usize] as char)
        .collect();
    format!("KUBE-{kind}-{tail}")
}

/// The chains and rules kube-proxy's iptables mode writes for one Service port.
fn kube_proxy_service(out: &mut String, s: &ServiceSpec, decl: &mut String) {
    let p = &s.ports[0];
    let svc = chain("SVC", &format!("{}:{}", s.name, p.name));
    let _ = writeln!(decl, ":{svc} - [0:0]");
    let _ = writeln!(
        out,
        "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {} -j {svc}",
        s.cluster_ip, s.name, p.port
    );
    let _ = writeln!(
        out,
        "-A {svc} ! -s 10.244.0.0/16 -d {}/32 -p tcp -m comment --comment \"{} cluster IP\" -m tcp --dport {} -j KUBE-MARK-MASQ",
        s.cluster_ip, s.name, p.port
    );
    let n = s.endpoints.len();
    for (k, e) in s.endpoints.iter().enumerate() {
        let sep = chain("SEP", &format!("{}:{}:{}", s.name, p.name, e.ip));
        let _ = writeln!(decl, ":{sep} - [0:0]");
        if k + 1 < n {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{} -> {}:8080\" -m statistic --mode random --probability {:.11} -j {sep}",
                s.name,
                e.ip,
                1.0 / (n - k) as f64
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{} -> {}:8080\" -j {sep}",
                s.name, e.ip
            );
        }
        let _ = writeln!(
            out,
            "-A {sep} -s {}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
            e.ip, s.name
        );
        let _ = writeln!(
            out,
            "-A {sep} -p tcp -m comment --comment \"{}\" -m tcp -j DNAT --to-destination {}:8080",
            s.name, e.ip
        );
    }
}

fn kube_proxy_ruleset(services: &[ServiceSpec]) -> String {
    let mut decl = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    for s in services {
        kube_proxy_service(&mut rules, s, &mut decl);
    }
    rules.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    format!("{decl}{rules}COMMIT\n")
}

/// kube-proxy's partial sync for one changed Service: its chains flushed and rewritten,
/// everything else left as it is (`--noflush`).
fn kube_proxy_partial(s: &ServiceSpec) -> String {
    let mut decl = String::from("*nat\n");
    let mut all = String::new();
    kube_proxy_service(&mut all, s, &mut decl);
    // Only the Service's own chains: not its KUBE-SERVICES jump, which did not change.
    let rules: String = all
        .lines()
        .filter(|l| !l.starts_with("-A KUBE-SERVICES "))
        .map(|l| format!("{l}\n"))
        .collect();
    format!("{decl}{rules}COMMIT\n")
}

fn iptables_restore(netns: &str, text: &str, noflush: bool) -> Duration {
    let start = Instant::now();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "iptables-restore", "-w"]);
    if noflush {
        cmd.arg("--noflush");
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write rules");
    let out = child.wait_with_output().expect("iptables-restore");
    assert!(
        out.status.success(),
        "iptables-restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// Medians of an apply's steps run in this process, in milliseconds.
struct Steps {
    encode: f64,
    decode: f64,
    convert: f64,
    plan: f64,
    bytes: usize,
}

impl Steps {
    fn print(&self, runs: usize) {
        println!(
            "in-process steps (median of {runs}): encode {:.1} ms, decode {:.1} ms, convert {:.1} ms, plan {:.1} ms ({} bytes)",
            self.encode, self.decode, self.convert, self.plan, self.bytes
        );
    }
}

/// Times the steps of applying `big` over `base` without switchd: encoding the request (the
/// client's), decoding it, converting it to the state file's types and planning it (validation,
/// Service tables, the snapshot), as the server does them.
fn breakdown(base: &StateFile, big: &pb::State, runs: usize) -> Steps {
    use prost::Message as _;
    let (mut encode, mut decode, mut convert, mut plan) = (vec![], vec![], vec![], vec![]);
    let mut bytes = 0;
    for _ in 0..runs.max(1) {
        let req = pb::ReplaceRequest {
            owner: String::new(),
            state: Some(big.clone()),
            dry_run: false,
        };
        let t = Instant::now();
        let wire = req.encode_to_vec();
        encode.push(ms(t.elapsed()));
        bytes = wire.len();
        drop(req);
        let t = Instant::now();
        let req = pb::ReplaceRequest::decode(wire.as_slice()).expect("decode");
        decode.push(ms(t.elapsed()));
        let t = Instant::now();
        let state = control::convert::state(req.state.as_ref().expect("state")).expect("convert");
        convert.push(ms(t.elapsed()));
        let (engine, snap) = control::engine::Engine::new(base.clone()).expect("engine");
        let t = Instant::now();
        let p = engine
            .plan_replace(state, "", Some(&snap))
            .expect("plan")
            .expect("a change");
        plan.push(ms(t.elapsed()));
        drop(p);
    }
    Steps {
        encode: percentile(&mut encode, 0.5),
        decode: percentile(&mut decode, 0.5),
        convert: percentile(&mut convert, 0.5),
        plan: percentile(&mut plan, 0.5),
        bytes,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    if let Some(path) = &a.offline {
        // Only the in-process steps, over a state file's node: no switchd, no root.
        let text = std::fs::read_to_string(path).expect("read the state file");
        let base = StateFile::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let big = big_state(&base, a.services, a.endpoints);
        let s = breakdown(&base, &control::convert::state_request(&big), a.runs);
        s.print(a.runs);
        return;
    }
    let mut c = control::client::connect(&a.socket)
        .await
        .expect("connect to switchd");
    let base = c
        .get_state(pb::GetStateRequest::default())
        .await
        .expect("GetState")
        .into_inner()
        .state
        .unwrap();
    let base = control::convert::state(&base).expect("state");
    let big = big_state(&base, a.services, a.endpoints);
    let big_pb = control::convert::state_request(&big);
    let base_pb = control::convert::state_request(&base);
    println!(
        "state: {} Services x {} endpoints = {} endpoints on {} nodes",
        a.services,
        a.endpoints,
        a.services * a.endpoints,
        big.nodes.len()
    );

    // 0. Where an apply's time goes, in this process (no socket): the client's encoding,
    // switchd's decoding, conversion and planning, each a median of `runs`.
    let steps = breakdown(&base, &big_pb, a.runs);
    steps.print(a.runs);

    // 1. The whole state applied at once (from the small state), `runs` times.
    let mut full = Vec::new();
    let mut build = Vec::new();
    let mut programmed = Vec::new();
    for run in 0..a.runs {
        if run > 0 {
            c.replace(pb::ReplaceRequest {
                owner: String::new(),
                state: Some(base_pb.clone()),
                dry_run: false,
            })
            .await
            .expect("back to the small state");
        }
        // Left to settle, switchd hands the memory it freed back to the system first.
        tokio::time::sleep(std::time::Duration::from_millis(a.settle_ms)).await;
        // The request is copied before the clock starts: only the call is timed.
        let req = pb::ReplaceRequest {
            owner: String::new(),
            state: Some(big_pb.clone()),
            dry_run: false,
        };
        let t = Instant::now();
        let r = c
            .replace(req)
            .await
            .expect("apply the big state")
            .into_inner()
            .result
            .unwrap();
        full.push(ms(t.elapsed()));
        build.push(r.build_micros as f64 / 1e3);
        programmed.push(r.programmed_micros as f64 / 1e3);
        assert!(r.changed);
    }
    let full_med = percentile(&mut full.clone(), 0.5);
    println!(
        "apply {} Services / {} endpoints: {:.1} ms median of {} (runs {:?} ms; planning {:.1} ms, programmed {:.2} ms after publishing)",
        a.services,
        a.services * a.endpoints,
        full_med,
        a.runs,
        full.iter().map(|x| (x * 10.0).round() / 10.0).collect::<Vec<_>>(),
        percentile(&mut build, 0.5),
        percentile(&mut programmed, 0.5)
    );

    // 2. One endpoint changed at a time, until programmed.
    let mut lat = Vec::with_capacity(a.changes);
    let mut server = Vec::with_capacity(a.changes);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    // Each change flips one endpoint's readiness from what it is now: every call is a change.
    let mut ready: std::collections::HashMap<(usize, usize), bool> = Default::default();
    for _ in 0..a.changes {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng % big.services.len() as u64) as usize;
        let s = &big.services[i];
        let mut eps: Vec<pb::Endpoint> = s
            .endpoints
            .iter()
            .map(control::convert::endpoint_request)
            .collect();
        for (j, e) in eps.iter_mut().enumerate() {
            e.ready = Some(*ready.get(&(i, j)).unwrap_or(&true));
        }
        let j = (rng >> 32) as usize % eps.len();
        let now = ready.entry((i, j)).or_insert(true);
        *now = !*now;
        eps[j].ready = Some(*now);
        let t = Instant::now();
        let r = c
            .set_endpoints(pb::SetEndpointsRequest {
                service: s.name.clone(),
                endpoints: eps,
            })
            .await
            .expect("set endpoints")
            .into_inner()
            .result
            .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(r.changed, "every call changes an endpoint");
        server.push(r.programmed_micros as f64 + r.build_micros as f64);
    }
    let (p50, p99, max) = (
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99),
        percentile(&mut lat, 1.0),
    );
    let s99 = percentile(&mut server, 0.99);
    println!(
        "one endpoint change -> programmed ({} changes): p50 {:.0} us, p99 {:.0} us, max {:.0} us (in switchd: p99 {:.0} us)",
        a.changes, p50, p99, max, s99
    );

    // 3. The same with iptables-restore, as kube-proxy would.
    let mut report = serde_json::json!({
        "services": a.services,
        "endpoints": a.services * a.endpoints,
        "settle_ms": a.settle_ms,
        "apply_ms": full,
        "apply_median_ms": full_med,
        "steps_ms": {
            "encode": steps.encode,
            "decode": steps.decode,
            "convert": steps.convert,
            "plan": steps.plan,
        },
        "request_bytes": steps.bytes,
        "change_p50_us": p50,
        "change_p99_us": p99,
        "change_max_us": max,
    });
    if let Some(ns) = &a.netns {
        let rules = kube_proxy_ruleset(&big.services);
        let lines = rules.lines().filter(|l| l.starts_with("-A")).count();
        let t_full = iptables_restore(ns, &rules, false);
        let mut partial = Vec::new();
        for k in 0..20 {
            let mut s = big.services[k * 37 % big.services.len()].clone();
            s.endpoints[0].ip = Ipv4Addr::from(u32::from(s.endpoints[0].ip) ^ 0x40);
            partial.push(ms(iptables_restore(ns, &kube_proxy_partial(&s), true)));
        }
        let p_med = percentile(&mut partial, 0.5);
        let p_max = percentile(&mut partial, 1.0);
        let version = Command::new("iptables")
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!(
            "iptables-restore ({version}) of the equivalent kube-proxy ruleset ({lines} rules): {:.0} ms; one Service's chains rewritten (--noflush, 20 times): median {:.0} ms, max {:.0} ms",
            ms(t_full),
            p_med,
            p_max
        );
        report["iptables_rules"] = lines.into();
        report["iptables_full_ms"] = ms(t_full).into();
        report["iptables_change_median_ms"] = p_med.into();
        report["iptables_change_max_ms"] = p_max.into();
    }
    // Leave switchd as it was.
    c.replace(pb::ReplaceRequest {
        owner: String::new(),
        state: Some(base_pb),
        dry_run: false,
    })
    .await
    .expect("back to the small state");
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap()).expect("write JSON");
    }
}
