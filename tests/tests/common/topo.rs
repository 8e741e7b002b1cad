//! The namespace tests' topology: `scripts/topology` under a unique prefix, switchd daemons
//! in its nodes, helpers to run commands in its hosts, and removal of everything on drop
//! (also when a test fails).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/<profile>/switchd`, built by `cargo test --workspace` (the switch package's CLI
/// tests need it too).
pub fn switchd_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("switchd");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build -p switch` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

pub fn skip_unless_root(what: &str) -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false);
    if !root {
        assert!(std::env::var_os("CI").is_none(), "CI runs {what} as root");
        eprintln!("note: not root; skipping {what}");
    }
    !root
}

pub fn unique_prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    // 1-8 characters: 'q', the pid in base 36 (at most 5), a per-test letter.
    let mut pid = std::process::id();
    let mut s = String::new();
    while pid > 0 {
        s.insert(0, std::char::from_digit(pid % 36, 36).unwrap());
        pid /= 36;
    }
    format!("q{s}{}", (b'a' + n as u8) as char)
}

/// Runs a command on the host; panics with its error output unless it succeeds.
pub fn sh(args: &[&str]) {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Deletes a namespace the topology script does not know, on every path.
pub struct DelNs(pub String);

impl Drop for DelNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// The namespace tests push real traffic through debug builds on a small machine: one at a
/// time, so that a test's TCP stream is never starved by another test's load.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A topology; removed on drop, daemons and helper processes first.
pub struct Topo {
    _serial: std::sync::MutexGuard<'static, ()>,
    pub p: String,
    pub children: Vec<Child>,
    pub daemons: Vec<Daemon>,
    pub dir: tempfile::TempDir,
    /// A bpffs of this topology's own (in the root mount namespace, so pins outlive every
    /// `ip netns exec`): every switchd's --bpf-dir.
    pub bpf: PathBuf,
    /// Every switchd's --run-dir (the conntrack regions).
    pub run_dir: PathBuf,
    /// Environment variables every switchd started from now on gets.
    pub switchd_env: Vec<(String, String)>,
}

pub struct Daemon {
    pub node: u8,
    pub child: Child,
    pub stats: PathBuf,
    pub log: PathBuf,
}

impl Topo {
    pub fn up(modes: [&str; 2]) -> Topo {
        Self::up_env(modes, &[])
    }

    /// The topology with scripts/topology's environment `env` (TOPO_MTU, TOPO_LOCAL_MTU).
    pub fn up_env(modes: [&str; 2], env: &[(&str, &str)]) -> Topo {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let p = unique_prefix();
        let out = Command::new(root_dir().join("scripts/topology"))
            .args(["up", &p, modes[0], modes[1]])
            .envs(env.iter().copied())
            .output()
            .expect("run scripts/topology");
        let dir = tempfile::tempdir().expect("tempdir");
        let bpf = dir.path().join("bpf");
        let run_dir = dir.path().join("run");
        std::fs::create_dir_all(&bpf).expect("bpf dir");
        let t = Topo {
            _serial: serial,
            p,
            children: Vec::new(),
            switchd_env: Vec::new(),
            daemons: Vec::new(),
            dir,
            bpf,
            run_dir,
        };
        assert!(
            out.status.success(),
            "scripts/topology up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        sh(&["mount", "-t", "bpf", "bpf", t.bpf.to_str().unwrap()]);
        t
    }

    /// The `--bpf-dir`/`--run-dir` arguments every switchd of this topology gets.
    pub fn persist_args(&self) -> Vec<String> {
        vec![
            "--bpf-dir".into(),
            self.bpf.display().to_string(),
            "--run-dir".into(),
            self.run_dir.display().to_string(),
        ]
    }

    /// Files left under the topology's bpffs and run directory (pins, regions).
    pub fn persisted(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in [&self.bpf, &self.run_dir] {
            let mut stack = vec![d.clone()];
            while let Some(p) = stack.pop() {
                for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                    let path = e.path();
                    let name = e.file_name().to_string_lossy().into_owned();
                    // bpffs's own iterator files are not ours.
                    if name.ends_with(".debug") {
                        continue;
                    }
                    if path.is_dir() {
                        stack.push(path.clone());
                    }
                    out.push(path.display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.p)
    }

    /// Runs a command in namespace `host` and returns its output.
    pub fn run(&self, host: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Runs a command in `host`; panics with its output unless it succeeds.
    pub fn ok(&self, host: &str, args: &[&str]) -> String {
        let o = self.run(host, args);
        assert!(
            o.status.success(),
            "in {host}: {args:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts a background process in `host`, stopped when the topology goes.
    pub fn spawn(&mut self, host: &str, args: &[&str]) {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        self.children.push(c);
    }

    /// Starts switchd for node `n` with `state`; waits until it forwards.
    pub fn switchd(&mut self, n: u8, state: &Path) -> usize {
        self.switchd_with(n, state, &[])
    }

    /// Starts switchd for node `n` with `state` and extra arguments.
    pub fn switchd_with(&mut self, n: u8, state: &Path, extra: &[&str]) -> usize {
        self.switchd_bin_with(n, &switchd_bin(), state, extra)
    }

    /// Starts the switchd binary `bin` for node `n` (the daemon of a node that had one
    /// takes its place in `daemons`); waits until it forwards.
    pub fn switchd_bin_with(&mut self, n: u8, bin: &Path, state: &Path, extra: &[&str]) -> usize {
        let stats = self.dir.path().join(format!("n{n}.json"));
        let log = self.dir.path().join(format!("n{n}.log"));
        let _ = std::fs::remove_file(&stats);
        // A node's daemon that has exited is replaced in place (indices stay valid); its
        // log is kept in nN.all.log.
        let slot = self
            .daemons
            .iter_mut()
            .position(|d| d.node == n && matches!(d.child.try_wait(), Ok(Some(_))));
        if slot.is_some() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut all = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(format!("n{n}.all.log")))
                .expect("log");
            let _ = std::io::Write::write_all(&mut all, text.as_bytes());
        }
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(&format!("n{n}"))])
            .arg(bin)
            .args(["run", "--state"])
            .arg(state)
            .arg("--stats")
            .arg(&stats)
            .arg("--control-socket")
            .arg(self.dir.path().join(format!("n{n}.sock")))
            .args(self.persist_args())
            .args(extra)
            .envs(self.switchd_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start switchd");
        let d = Daemon {
            node: n,
            child,
            stats: stats.clone(),
            log: log.clone(),
        };
        let i = match slot {
            Some(i) => {
                self.daemons[i] = d;
                i
            }
            None => {
                self.daemons.push(d);
                self.daemons.len() - 1
            }
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        // Ready once it logs that it forwards and has written its counters once.
        let ready = || {
            stats.exists()
                && std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains(" forwarding: ")
        };
        while !ready() {
            let d = &mut self.daemons[i];
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!(
                    "switchd for node{n} exited ({st}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "switchd for node{n} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        i
    }

    /// A new pod-e (10.244.1.4, port veth-e) wired to node1 but in no state yet; its
    /// namespace goes when the guard is dropped.
    pub fn add_pod_e(&self) -> DelNs {
        let e = self.ns("e");
        let n1 = self.ns("n1");
        // Removed on every path (the topology script does not know this namespace).
        let guard = DelNs(e.clone());
        sh(&["ip", "netns", "add", &e]);
        sh(&["ip", "-n", &e, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "link",
            "add",
            "eth0",
            "netns",
            &e,
            "address",
            "02:00:0a:f4:01:04",
            "mtu",
            "1450",
            "type",
            "veth",
            "peer",
            "name",
            "veth-e",
            "netns",
            &n1,
        ]);
        sh(&[
            "ip",
            "-n",
            &e,
            "addr",
            "add",
            "10.244.1.4/24",
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &e, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            &e,
            "route",
            "add",
            "default",
            "via",
            "10.244.1.1",
        ]);
        sh(&[
            "ip",
            "-n",
            &n1,
            "link",
            "set",
            "veth-e",
            "address",
            "02:00:0a:f4:01:01",
            "mtu",
            "1450",
            "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &n1,
            "route",
            "add",
            "10.244.1.4/32",
            "dev",
            "veth-e",
        ]);
        guard
    }

    /// Runs switchctl against node `n`'s daemon: (exit code, stdout, stderr).
    pub fn ctl(&self, n: u8, args: &[&str]) -> (i32, String, String) {
        let bin = switchd_bin().with_file_name("switchctl");
        let o = Command::new(bin)
            .arg("--socket")
            .arg(self.dir.path().join(format!("n{n}.sock")))
            .args(args)
            .output()
            .expect("switchctl");
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    pub fn stats(&self, n: u8) -> serde_json::Value {
        let d = self.daemons.iter().find(|d| d.node == n).expect("daemon");
        // Written twice a second: wait for a fresh one.
        std::thread::sleep(Duration::from_millis(1100));
        let text = std::fs::read_to_string(&d.stats).expect("stats file");
        serde_json::from_str(&text).expect("stats JSON")
    }

    pub fn xdp_attached(&self, host: &str) -> usize {
        let out = self.ok(host, &["ip", "-d", "link", "show"]);
        out.matches("prog/xdp").count()
    }

    pub fn ping(&self, from: &str, to: &str, extra: &[&str]) -> bool {
        let mut args = vec!["ping", "-c", "2", "-i", "0.2", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(to);
        self.run(from, &args).status.success()
    }

    pub fn echo(&self, from: &str, proto: &str, host: &str, port: u16, size: usize) {
        let script = root_dir().join("tests/tools/echo.py");
        let out = self.run(
            from,
            &[
                "python3",
                script.to_str().unwrap(),
                proto,
                host,
                &port.to_string(),
                &size.to_string(),
            ],
        );
        assert!(
            out.status.success(),
            "{proto} echo {from} -> {host}:{port} ({size} bytes) failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts capturing every TCP RST on `host`'s eth0 (seen or sent) into a file of the
    /// topology's dir, for [`resets`]; returns the file.
    pub fn capture_resets(&mut self, host: &str) -> PathBuf {
        let cap = self.dir.path().join(format!("rst-{host}.pcap"));
        let file = cap.display().to_string();
        self.spawn(
            host,
            &[
                "tcpdump",
                "-U",
                "-nn",
                "-i",
                "eth0",
                "-w",
                &file,
                "tcp[tcpflags] & tcp-rst != 0",
            ],
        );
        cap
    }

    /// Starts an echo server in `host` and waits until it listens.
    pub fn serve(&mut self, host: &str, proto: &str, port: u16) {
        let script = root_dir().join("tests/tools/echo.py");
        let cmd = format!("serve-{proto}");
        self.spawn(
            host,
            &["python3", script.to_str().unwrap(), &cmd, &port.to_string()],
        );
        self.wait_listening(host, port);
    }

    pub fn wait_listening(&self, host: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ok(host, &["ss", "-lntu"]);
            if out.contains(&format!(":{port} ")) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nothing listens on {host}:{port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Pins go with their bpffs (detaching what a killed switchd left attached).
        let _ = Command::new("umount").arg("-l").arg(&self.bpf).status();
        let _ = Command::new(root_dir().join("scripts/topology"))
            .args(["down", &self.p])
            .status();
    }
}

pub fn state(n: u8) -> PathBuf {
    root_dir().join(format!("examples/demo/node{n}.toml"))
}

pub fn drops(s: &serde_json::Value) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for key in ["drops", "worker_drops"] {
        for (k, n) in s[key].as_object().unwrap() {
            if n.as_u64().unwrap() > 0 {
                v.push((k.clone(), n.as_u64().unwrap()));
            }
        }
    }
    v
}

/// The counter `key` of port `name` in a stats document.
pub fn port(s: &serde_json::Value, name: &str, key: &str) -> u64 {
    s["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no port {name}: {s}"))[key]
        .as_u64()
        .unwrap_or_else(|| panic!("port {name} has no counter {key}: {s}"))
}

/// The RSTs in a capture file (tcpdump -r), one line each.
pub fn resets(pcap: &Path) -> Vec<String> {
    let o = Command::new("tcpdump")
        .args(["-nn", "-r"])
        .arg(pcap)
        .output()
        .expect("tcpdump");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("Flags [R"))
        .map(str::to_string)
        .collect()
}
