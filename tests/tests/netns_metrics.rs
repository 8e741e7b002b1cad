//! switchd's metrics and health endpoints through the real daemon (`--metrics`): after pod
//! traffic on the two-node topology, the exposition is parsed by the Prometheus client
//! library's own OpenMetrics and text parsers and its values equal what `switchctl stats`
//! reports; `/healthz` and `/livez` answer 200, then 503 with the reason while a worker is
//! stalled (the worker test hook), then 200 again. A LoadBalancer Service with the Local
//! policy gets its health-check node port answered from the outside client as kube-proxy
//! answers it: 200 on the node with a ready endpoint, 503 on the other and once the
//! endpoint is not ready, closed once the Service is gone. Needs root.

#![allow(missing_docs)]
mod common;

use common::topo::{root_dir, skip_unless_root, state, Topo};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ADDR: &str = "127.0.0.1:9962";

fn get(t: &Topo, path: &str, metrics: bool) -> serde_json::Value {
    fetch(t, "n1", &format!("http://{ADDR}{path}"), metrics)
}

fn fetch(t: &Topo, host: &str, url: &str, metrics: bool) -> serde_json::Value {
    let tool = root_dir().join("tests/tools/scrape.py");
    let mut args = vec!["/usr/bin/python3", tool.to_str().unwrap(), url];
    if metrics {
        args.push("--metrics");
    }
    let out = t.run(host, &args);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "GET {url}: {e}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The samples as name{k=v,...} -> value, labels sorted.
fn samples(v: &serde_json::Value) -> HashMap<String, f64> {
    let mut m = HashMap::new();
    for s in v["samples"].as_array().expect("samples") {
        let mut labels: Vec<String> = s[1]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect();
        labels.sort();
        m.insert(
            format!("{}{{{}}}", s[0].as_str().unwrap(), labels.join(",")),
            s[2].as_f64().unwrap(),
        );
    }
    m
}

#[test]
fn metrics_match_the_stats_and_health_follows_the_workers() {
    if skip_unless_root("the metrics namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let stall = t.dir.path().join("stall");
    t.switchd_env.push((
        "NODESWITCH_TEST_STALL_FILE".into(),
        stall.display().to_string(),
    ));
    t.switchd_with(1, &state(1), &["--metrics", ADDR, "--health-bound", "2"]);
    t.switchd(2, &state(2));
    assert!(t.ping("a", "10.244.1.3", &[]));
    assert!(t.ping("a", "10.244.2.3", &[]));
    t.serve("b", "tcp", 8080);
    t.serve("d", "tcp", 8080);
    t.echo("a", "tcp", "10.244.2.3", 8080, 100_000);
    // Through a ClusterIP: conntrack entries, counted by state.
    t.echo("a", "tcp", "10.96.0.10", 80, 10_000);

    // The API's counters read before and after the scrape bound the scrape's (a stray
    // neighbour solicitation may arrive meanwhile); the workers publish twice a second.
    let api = |t: &Topo| -> serde_json::Value {
        let (rc, out, err) = t.ctl(1, &["stats", "-o", "json"]);
        assert_eq!(rc, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let s = t.stats(1);
    let before = api(&t);
    let scraped = get(&t, "/metrics", true);
    std::thread::sleep(Duration::from_millis(600));
    let after = api(&t);
    assert_eq!(scraped["status"], 200, "{scraped}");
    assert_eq!(
        scraped["type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let m = samples(&scraped);
    assert_eq!(
        scraped["classic_samples"].as_u64().unwrap() as usize,
        m.len(),
        "the text-format parser reads every sample too"
    );
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or(0) as f64;
    let check = |key: String, at: &dyn Fn(&serde_json::Value) -> f64| {
        let got = *m
            .get(&key)
            .unwrap_or_else(|| panic!("{key} missing: {m:?}"));
        let (lo, hi) = (at(&before), at(&after));
        assert!(
            lo <= got && got <= hi,
            "{key} = {got}, the API said {lo} then {hi}"
        );
    };
    let ports = before["ports"].as_array().unwrap();
    assert!(ports.len() >= 3, "{before}");
    for (i, p) in ports.iter().enumerate() {
        let (name, worker) = (p["name"].as_str().unwrap(), num(&p["worker"]));
        for dir in ["rx", "tx"] {
            check(
                format!(
                    "nodeswitch_port_packets_total{{direction={dir},port={name},worker={worker}}}"
                ),
                &|v| num(&v["ports"][i][dir]),
            );
        }
    }
    check("nodeswitch_received_packets_total{}".into(), &|v| {
        num(&v["received"])
    });
    assert!(
        num(&before["received"]) > 0.0,
        "traffic was counted: {before}"
    );
    for action in before["actions"].as_object().unwrap().keys() {
        check(
            format!("nodeswitch_actions_total{{action={action}}}"),
            &|v| num(&v["actions"][action]),
        );
    }
    for (map, stage) in [("drops", "pipeline"), ("worker_drops", "worker")] {
        for reason in before[map].as_object().unwrap().keys() {
            check(
                format!("nodeswitch_drops_total{{reason={reason},stage={stage}}}"),
                &|v| num(&v[map][reason]),
            );
        }
    }
    let workers = before["workers"].as_array().unwrap();
    for (map, stage) in [("drops", "pipeline"), ("worker_drops", "worker")] {
        // The node's figure for each reason is its workers' sum, within one scrape.
        for reason in before[map].as_object().unwrap().keys() {
            let sum: f64 = workers
                .iter()
                .map(|w| {
                    m.get(&format!(
                        "nodeswitch_worker_drops_total{{reason={reason},stage={stage},worker={}}}",
                        w["id"]
                    ))
                    .copied()
                    .unwrap_or(0.0)
                })
                .sum();
            let total = m[&format!("nodeswitch_drops_total{{reason={reason},stage={stage}}}")];
            assert_eq!(
                sum, total,
                "{stage} {reason}: the workers' sum is the node's"
            );
        }
    }
    for (i, w) in workers.iter().enumerate() {
        for (map, stage) in [("drops", "pipeline"), ("worker_drops", "worker")] {
            let reasons = w[map].as_object().expect("a worker's drops by reason");
            if stage == "pipeline" {
                let node: Vec<&String> = before[map].as_object().unwrap().keys().collect();
                assert_eq!(
                    reasons.keys().collect::<Vec<_>>(),
                    node,
                    "a worker lists every pipeline drop reason"
                );
            }
            for reason in reasons.keys() {
                check(
                    format!(
                        "nodeswitch_worker_drops_total{{reason={reason},stage={stage},worker={}}}",
                        w["id"]
                    ),
                    &|v| num(&v["workers"][i][map][reason]),
                );
            }
        }
    }
    check("nodeswitch_conntrack_capacity{}".into(), &|v| {
        num(&v["conntrack_capacity"])
    });
    check("nodeswitch_published_generation{}".into(), &|v| {
        num(&v["published_generation"])
    });
    assert!(m["nodeswitch_xdp_packets_total{verdict=redirected}"] > 0.0);
    let tcp_by_state: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("nodeswitch_conntrack_tcp_entries{"))
        .map(|(_, v)| v)
        .sum();
    assert!(
        tcp_by_state >= 1.0,
        "the ClusterIP connection is counted: {m:?}"
    );
    assert_eq!(
        m["nodeswitch_conntrack_entries_by_protocol{protocol=tcp}"],
        tcp_by_state
    );
    assert!(m
        .keys()
        .any(|k| k.starts_with("nodeswitch_build_info{") && k.contains("node=node1")));
    // The stats file counts what the API does.
    assert!(num(&s["received"]) <= num(&after["received"]));

    // A write shows in the control plane's histograms.
    let (rc, _, err) = t.ctl(1, &["apply", "-f", state(1).to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    let m = samples(&get(&t, "/metrics", true));
    assert!(
        m["nodeswitch_control_plan_duration_seconds_count{}"] >= 1.0,
        "{m:?}"
    );

    for path in ["/healthz", "/livez"] {
        let h = get(&t, path, false);
        assert_eq!(h["status"], 200, "{path}: {h}");
    }
    let h = get(&t, "/nope", false);
    assert_eq!(h["status"], 404);

    // A stalled worker: 503 with the reason once its report is older than the bound.
    std::fs::write(&stall, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = get(&t, "/healthz", false);
        if h["status"] == 503 || Instant::now() > deadline {
            break h;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(h["status"], 503, "{h}");
    let body: serde_json::Value = serde_json::from_str(h["body"].as_str().unwrap()).unwrap();
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("has not reported"),
        "{body}"
    );
    assert_eq!(get(&t, "/livez", false)["status"], 503);
    std::fs::remove_file(&stall).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&t, "/healthz", false)["status"] != 200 {
        assert!(
            Instant::now() < deadline,
            "healthy again once the worker runs"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(t.ping("a", "10.244.2.3", &[]), "forwarding resumed");
}

/// Node `n`'s demo state with `extra` appended, written in the topology's directory.
fn state_with(t: &Topo, n: u8, name: &str, extra: &str) -> std::path::PathBuf {
    let mut s = std::fs::read_to_string(state(n)).unwrap();
    s.push_str(extra);
    let p = t.dir.path().join(format!("node{n}-{name}.toml"));
    std::fs::write(&p, s).unwrap();
    p
}

const LB_LOCAL: &str = r#"
[[services]]
name = "shop/lb"
cluster_ip = "10.96.0.70"
external_traffic_policy = "Local"
health_check_node_port = 32100
ports = [{ protocol = "TCP", port = 80, target_port = 8080, node_port = 30100 }]
endpoints = [{ ip = "10.244.1.3", node = "node1", ready = READY }]
"#;

#[test]
fn health_check_node_ports_answer_as_kube_proxy() {
    if skip_unless_root("the health-check node port namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    let ready = LB_LOCAL.replace("READY", "true");
    let s1 = state_with(&t, 1, "lb", &ready);
    t.switchd(1, &s1);
    t.switchd(2, &state_with(&t, 2, "lb", &ready));
    let hc = |t: &Topo, node: &str| fetch(t, "ext", &format!("http://{node}:32100/"), false);
    let body = |v: &serde_json::Value| -> serde_json::Value {
        serde_json::from_str(v["body"].as_str().unwrap_or("null")).unwrap()
    };
    // node1 has the ready endpoint, node2 none.
    let r = hc(&t, "198.18.0.1");
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(
        body(&r),
        serde_json::json!({"service": {"namespace": "shop", "name": "lb"}, "localEndpoints": 1})
    );
    let r = hc(&t, "198.18.0.2");
    assert_eq!(r["status"], 503, "{r}");
    assert_eq!(body(&r)["localEndpoints"], 0);
    // The endpoint not ready: node1 answers 503 too.
    let unready = state_with(&t, 1, "lb-unready", &LB_LOCAL.replace("READY", "false"));
    let (rc, _, err) = t.ctl(1, &["apply", "-f", unready.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = hc(&t, "198.18.0.1");
        if r["status"] == 503 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(r["status"], 503, "{r}");
    assert_eq!(body(&r)["localEndpoints"], 0);
    // The Service gone: the port closes (the node's kernel refuses the connection).
    let (rc, _, err) = t.ctl(1, &["apply", "-f", state(1).to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while hc(&t, "198.18.0.1")["status"] != 0 {
        assert!(
            Instant::now() < deadline,
            "the health-check port stayed open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&t.daemons[0].log).unwrap();
    assert!(
        log.contains("health-check node port 198.18.0.1:32100 for Service shop/lb"),
        "{log}"
    );
}
