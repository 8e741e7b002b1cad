//! The stand-in Kubernetes API server (`tests/tools/apiserver.py`) as a test drives it:
//! started on a free port (in a network namespace, or here), its test controls called over
//! plain HTTP. Shared by `tests/tests/netns_agent.rs` and `control/tests/agent.rs`.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running stand-in server; killed when dropped.
pub struct Api {
    child: Child,
    /// Its port on 127.0.0.1 (of the namespace it runs in).
    pub port: u16,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api {
    /// Starts it (`root` is the repository), in the network namespace `netns` if given.
    pub fn start(root: &Path, netns: Option<&str>) -> Api {
        let script = root.join("tests/tools/apiserver.py");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        let mut child = cmd
            .arg(script)
            .arg("0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the server's first line");
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("apiserver.py said {line:?}"));
        Api { child, port }
    }

    /// Its process id (to freeze it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One request from this namespace: (status, JSON body or null).
    pub fn call(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        let data = body.to_string();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{data}",
            data.len()
        )
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// Creates or replaces an object.
    pub fn put(&self, obj: Value) {
        let (code, _) = self.call("POST", "/_test/put", &obj);
        assert_eq!(code, 200, "{obj}");
    }
}
