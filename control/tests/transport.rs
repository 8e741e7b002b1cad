//! The control API's transports under attack: silent connections by the thousand on the Unix
//! socket and on the TLS port cannot shut a client out or exhaust descriptors, idle
//! connections are closed, and an unsafe socket path is refused.

mod common;

use common::{certificates, Fixture};
use control::client::{connect, connect_tcp, spawn_tcp_with, spawn_unix_with, TlsFiles};
use control::listen::Limits;
use control::pb;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tests count the process's descriptors: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn limits() -> Limits {
    Limits {
        max_connections: 8,
        max_pending: 16,
        handshake_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        keepalive: Duration::from_millis(500),
    }
}

#[test]
fn silent_unix_connections_cannot_shut_a_client_out() {
    let _serial = serial();
    let f = Fixture::new();
    let path = f._dir.path().join("limited.sock");
    let server = spawn_unix_with(Arc::clone(&f.ctl), &path, limits()).unwrap();
    let before = open_fds();
    // 3000 connections that never say a word, held open by the attacker.
    let flood: Vec<_> = (0..3000)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The server holds at most max_pending of them (the attacker's own 3000 aside).
    let held = open_fds().saturating_sub(before + flood.len());
    assert!(
        held <= 16 + 4,
        "the server holds {held} descriptors for the flood"
    );
    // A real client gets through and is served while the flood is held open.
    f.rt.block_on(async {
        let mut c = connect(&path).await.expect("connect during the flood");
        let v = c.version(pb::VersionRequest {}).await.unwrap().into_inner();
        assert_eq!(v.node, "node1");
    });
    let s = server.stats();
    assert!(s.established.load(Relaxed) >= 1, "{s:?}");
    // Each silent connection goes: evicted by a newer one, or at the handshake deadline.
    std::thread::sleep(Duration::from_millis(1300));
    let gone = s.evicted.load(Relaxed) + s.handshake_timeouts.load(Relaxed);
    assert!(gone >= 2990, "{s:?}");
    assert!(s.handshake_timeouts.load(Relaxed) >= 1, "{s:?}");
    drop(flood);
}

#[test]
fn connections_over_the_cap_are_refused_and_idle_ones_closed() {
    let _serial = serial();
    let f = Fixture::new();
    let path = f._dir.path().join("capped.sock");
    let server = spawn_unix_with(Arc::clone(&f.ctl), &path, limits()).unwrap();
    f.rt.block_on(async {
        // Eight real clients: the cap.
        let mut clients = Vec::new();
        for _ in 0..8 {
            let mut c = connect(&path).await.unwrap();
            c.version(pb::VersionRequest {}).await.unwrap();
            clients.push(c);
        }
        // A ninth speaks, but no permit is left: closed.
        let ninth = match connect(&path).await {
            Err(_) => true,
            Ok(mut c) => c.version(pb::VersionRequest {}).await.is_err(),
        };
        assert!(ninth, "a ninth connection is refused");
        assert!(server.stats().refused.load(Relaxed) >= 1);
        // Idle past idle_timeout, real clients answer the server's pings and stay.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for c in clients.iter_mut() {
            c.version(pb::VersionRequest {})
                .await
                .expect("still connected");
        }
    });
    // A connection that said its preface and then nothing (it answers no ping) is closed.
    use std::io::Write;
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    let start = Instant::now();
    while server.stats().idle_closed.load(Relaxed) == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "never closed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn tcp_connections_that_never_start_tls_cannot_shut_a_client_out() {
    let _serial = serial();
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let p = |n: &str| dir.path().join(n);
    let server = spawn_tcp_with(
        Arc::clone(&f.ctl),
        "127.0.0.1:0".parse().unwrap(),
        &TlsFiles {
            cert: p("server.pem"),
            key: p("server.key"),
            ca: p("ca.pem"),
        },
        limits(),
    )
    .unwrap();
    let addr = server.addr().unwrap();
    let before = open_fds();
    let flood: Vec<_> = (0..3000)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let held = open_fds().saturating_sub(before + flood.len());
    assert!(
        held <= 16 + 4,
        "the server holds {held} descriptors for the flood"
    );
    let good = TlsFiles {
        cert: p("client.pem"),
        key: p("client.key"),
        ca: p("ca.pem"),
    };
    f.rt.block_on(async {
        let mut c = connect_tcp(&addr.to_string(), &good, None)
            .await
            .expect("a client with a certificate gets through the flood");
        c.version(pb::VersionRequest {}).await.unwrap();
    });
    let s = server.stats();
    std::thread::sleep(Duration::from_millis(1300));
    // Each silent connection went: evicted by a newer one, or at the handshake deadline.
    let gone = s.evicted.load(Relaxed) + s.handshake_timeouts.load(Relaxed);
    assert!(gone >= 2990, "{s:?}");
    assert!(s.handshake_timeouts.load(Relaxed) >= 1, "{s:?}");
    drop(flood);
}

#[test]
fn an_unsafe_socket_path_is_refused() {
    let _serial = serial();
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    let serve = |p: &std::path::Path| {
        spawn_unix_with(Arc::clone(&f.ctl), p, Limits::default())
            .err()
            .map(|e| e.to_string())
    };
    // A regular file where the socket goes is left alone.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"precious").unwrap();
    let e = serve(&file).expect("refused");
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"precious");
    // So is a symlink (not followed), even to a fine place.
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(dir.path().join("elsewhere.sock"), &link).unwrap();
    let e = serve(&link).expect("refused");
    assert!(e.contains("not a socket"), "{e}");
    // A directory others may write to.
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = serve(&open.join("s.sock")).expect("refused");
    assert!(e.contains("written by group or others"), "{e}");
    // A directory another user owns (root can make one: give it away).
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).is_ok() {
        let e = serve(&theirs.join("s.sock")).expect("refused");
        assert!(e.contains("belongs to uid 65534"), "{e}");
    }
    // A symlinked directory.
    let linked = dir.path().join("linked");
    std::os::unix::fs::symlink(dir.path(), &linked).unwrap();
    let e = serve(&linked.join("s.sock")).expect("refused");
    assert!(e.contains("is not a directory"), "{e}");
    // A missing directory is made, mode 0700; a stale socket of ours is replaced.
    let fresh = dir.path().join("new/run");
    let s = spawn_unix_with(Arc::clone(&f.ctl), &fresh.join("s.sock"), Limits::default()).unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    std::mem::forget(s); // as a killed daemon leaves it: the socket file stays
    let stale = fresh.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    spawn_unix_with(Arc::clone(&f.ctl), &stale, Limits::default()).expect("stale socket replaced");
}

#[test]
fn switchctl_exits_3_when_switchd_refuses_its_certificate() {
    let _serial = serial();
    let f = Fixture::new();
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let p = |n: &str| dir.path().join(n).display().to_string();
    let server = control::client::spawn_tcp(
        Arc::clone(&f.ctl),
        "127.0.0.1:0".parse().unwrap(),
        &TlsFiles {
            cert: p("server.pem").into(),
            key: p("server.key").into(),
            ca: p("ca.pem").into(),
        },
    )
    .unwrap();
    let addr = server.addr().unwrap().to_string();
    let ctl = |cert: &str, key: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchctl"))
            .args(["--tcp", &addr, "--tls-ca", &p("ca.pem")])
            .args(["--tls-cert", &p(cert), "--tls-key", &p(key), "version"])
            .output()
            .unwrap()
    };
    let ok = ctl("client.pem", "client.key");
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let refused = ctl("rogue.pem", "rogue.key");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{err}");
    assert!(err.contains("certificate"), "{err}");
}

#[test]
fn a_request_over_the_size_limit_is_resource_exhausted() {
    let _serial = serial();
    let f = Fixture::new();
    f.rt.block_on(async {
        let mut c = connect(&f.path)
            .await
            .unwrap()
            .max_encoding_message_size(usize::MAX);
        let big = control::server::MAX_REQUEST + 1024;
        let e = c
            .upsert_pod(pb::UpsertPodRequest {
                pod: Some(pb::Pod {
                    name: "x".repeat(big),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(
            e.message()
                .contains("over the limit of 268435456 bytes (256 MiB)"),
            "{}",
            e.message()
        );
        // The connection and the server are fine afterwards.
        c.version(pb::VersionRequest {}).await.unwrap();
    });
}
