//! What the control API's tests share: a server on a Unix socket over an in-memory
//! dataplane, and test certificates.

#![allow(dead_code)]

use control::client::{connect, spawn_unix, ServerHandle};
use control::engine::Engine;
use control::local::LocalPlane;
use control::pb::switch_service_client::SwitchServiceClient as SwitchClient;
use control::server::Control;
use flowtable::conntrack::{Conntrack, Timeouts};
use flowtable::state::StateFile;
use std::sync::Arc;
use tonic::transport::Channel;

pub const STATE: &str = include_str!("../../../examples/node1.toml");

pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
    pub ctl: Arc<Control<LocalPlane>>,
    pub server: Option<ServerHandle>,
    pub rt: tokio::runtime::Runtime,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::with_state(STATE)
    }

    /// A server over `text` as the node's config.
    pub fn with_state(text: &str) -> Fixture {
        let (engine, snap) = Engine::new(StateFile::parse(text).unwrap()).unwrap();
        let plane = LocalPlane::new(snap, Arc::new(Conntrack::new(1 << 16, Timeouts::default())));
        let ctl = Control::new(engine, plane);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchd.sock");
        let server = spawn_unix(Arc::clone(&ctl), &path).unwrap();
        Fixture {
            _dir: dir,
            path,
            ctl,
            server: Some(server),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    pub fn client(&self) -> SwitchClient<Channel> {
        self.rt.block_on(connect(&self.path)).unwrap()
    }

    pub fn generation(&self) -> u64 {
        self.ctl.plane().cell.load().generation
    }
}

/// Makes a CA, a server certificate for 127.0.0.1, a client certificate from the CA and one
/// from another CA, with the openssl command.
pub fn certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (scripts/install-deps installs it)");
        assert!(
            o.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:switchd\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for ca in ["ca", "rogue-ca"] {
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
    }
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("rogue", "rogue-ca", "client.ext"),
    ] {
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
    }
}
