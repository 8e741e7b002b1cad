//! The API from another toolchain: a Python client (grpcio and grpcio-tools' protoc from
//! PyPI, `tests/python/client.py`) over the Unix socket and over TLS gets exactly what the
//! Rust client gets for the same calls.

mod common;

use common::{certificates, Fixture};
use control::client::{connect, connect_tcp, spawn_tcp, TlsFiles};
use control::pb;
use control::pb::switch_service_client::SwitchServiceClient as SwitchClient;
use std::path::Path;
use std::sync::Arc;
use tonic::transport::Channel;

/// The calls client.py makes, made by the Rust client; the same JSON.
async fn rust_calls(mut sw: SwitchClient<Channel>) -> serde_json::Value {
    let names = |pods: Vec<pb::Pod>| {
        let mut v: Vec<String> = pods.into_iter().map(|p| p.name).collect();
        v.sort();
        v
    };
    let node = sw
        .version(pb::VersionRequest {})
        .await
        .unwrap()
        .into_inner()
        .node;
    let list = pb::ListPodsRequest {
        name: String::new(),
    };
    let before = names(sw.list_pods(list.clone()).await.unwrap().into_inner().pods);
    sw.upsert_pod(pb::UpsertPodRequest {
        pod: Some(pb::Pod {
            owner: String::new(),
            name: "default/pod-py".into(),
            ip: "10.244.1.9".into(),
            mac: "02:00:0a:f4:01:09".into(),
            port: "veth-py".into(),
        }),
    })
    .await
    .unwrap();
    let after = names(sw.list_pods(list).await.unwrap().into_inner().pods);
    let r = sw
        .set_endpoints(pb::SetEndpointsRequest {
            service: "default/web".into(),
            endpoints: vec![
                pb::Endpoint {
                    ip: "10.244.1.9".into(),
                    node: "node1".into(),
                    ..Default::default()
                },
                pb::Endpoint {
                    ip: "10.244.2.7".into(),
                    node: "node2".into(),
                    ready: Some(false),
                    ..Default::default()
                },
            ],
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    let set: Vec<String> = r.changes.into_iter().map(|c| c.action).collect();
    let mut eps: Vec<(String, bool)> = sw
        .list_endpoints(pb::ListEndpointsRequest {
            name: "default/web".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .endpoints
        .into_iter()
        .map(|e| (e.endpoint.unwrap_or_default().ip, e.usable))
        .collect();
    eps.sort();
    let refused = sw
        .upsert_pod(pb::UpsertPodRequest {
            pod: Some(pb::Pod {
                owner: String::new(),
                name: "default/bad".into(),
                ip: "10.244.9.9".into(),
                mac: "02:00:0a:f4:09:09".into(),
                port: "veth-bad".into(),
            }),
        })
        .await
        .err()
        .map(|s| {
            let code = format!("{:?}", s.code());
            // grpc's names: INVALID_ARGUMENT for tonic's InvalidArgument.
            let mut upper = String::new();
            for (i, ch) in code.chars().enumerate() {
                if ch.is_uppercase() && i > 0 {
                    upper.push('_');
                }
                upper.push(ch.to_ascii_uppercase());
            }
            serde_json::json!([upper, s.message()])
        });
    let r = sw
        .delete_pod(pb::DeletePodRequest {
            name: "default/pod-py".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap();
    let deleted: Vec<String> = r.changes.into_iter().map(|c| c.action).collect();
    serde_json::json!({
        "node": node,
        "pods_before": before,
        "pods_after": after,
        "set_endpoints": set,
        "endpoints": eps,
        "refused": refused,
        "deleted": deleted,
    })
}

fn python(args: &[&str]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py");
    let o = std::process::Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        o.status.success(),
        "client.py {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("client.py prints JSON")
}

fn have_grpcio() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI installs grpcio and grpcio-tools (scripts/install-deps)"
        );
        eprintln!("note: no grpcio for python3; skipping (scripts/install-deps installs it)");
    }
    ok
}

#[test]
fn a_python_client_over_the_unix_socket_gets_what_the_rust_one_gets() {
    if !have_grpcio() {
        return;
    }
    let py = {
        let f = Fixture::new();
        python(&["unix", f.path.to_str().unwrap()])
    };
    let f = Fixture::new();
    let rust =
        f.rt.block_on(async { rust_calls(connect(&f.path).await.unwrap()).await });
    assert_eq!(py, rust);
    assert_eq!(py["node"], "node1");
    assert_eq!(py["refused"][0], "INVALID_ARGUMENT");
}

#[test]
fn a_python_client_over_tls_gets_what_the_rust_one_gets() {
    if !have_grpcio() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let p = |n: &str| dir.path().join(n);
    let files = TlsFiles {
        cert: p("server.pem"),
        key: p("server.key"),
        ca: p("ca.pem"),
    };
    let serve = |f: &Fixture| {
        spawn_tcp(Arc::clone(&f.ctl), "127.0.0.1:0".parse().unwrap(), &files).unwrap()
    };
    let py = {
        let f = Fixture::new();
        let s = serve(&f);
        python(&[
            "tls",
            &s.addr().unwrap().to_string(),
            dir.path().to_str().unwrap(),
        ])
    };
    let f = Fixture::new();
    let s = serve(&f);
    let client = TlsFiles {
        cert: p("client.pem"),
        key: p("client.key"),
        ca: p("ca.pem"),
    };
    let addr = s.addr().unwrap().to_string();
    let rust =
        f.rt.block_on(async { rust_calls(connect_tcp(&addr, &client, None).await.unwrap()).await });
    assert_eq!(py, rust);
}
