//! switchd's metrics and health endpoints through the real daemon (`--metrics`): after pod
//! traffic on the two-node topology, the exposition is parsed by the Prometheus client
//! library's own OpenMetrics and text parsers and its values equal what `switchctl stats`
//! reports; `/healthz` and `/livez` answer 200, then 503 with the reason while a worker is
//! stalled (the worker test hook), then 200 again. Needs root.

#![allow(missing_docs)]
mod common;

use common::topo::{root_dir, skip_unless_root, state, Topo};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const ADDR: &str = "127.0.0.1:9962";

fn get(t: &Topo, path: &str, metrics: bool) -> serde_json::Value {
    let tool = root_dir().join("tests/tools/scrape.py");
    let url = format!("http://{ADDR}{path}");
    let mut args = vec!["/usr/bin/python3", tool.to_str().unwrap(), &url];
    if metrics {
        args.push("--metrics");
    }
    let out = t.run("n1", &args);
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "GET {path}: {e}: {text}{}",
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
    t.serve("d", "tcp", 8080);
    t.echo("a", "tcp", "10.244.2.3", 8080, 100_000);

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
    check("nodeswitch_conntrack_capacity{}".into(), &|v| {
        num(&v["conntrack_capacity"])
    });
    check("nodeswitch_published_generation{}".into(), &|v| {
        num(&v["published_generation"])
    });
    assert!(m["nodeswitch_xdp_packets_total{verdict=redirected}"] > 0.0);
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
