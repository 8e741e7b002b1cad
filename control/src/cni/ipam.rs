//! Delegating address management to the IPAM plugin the config names (`ipam.type`), as the
//! spec describes delegation: the plugin is found on `CNI_PATH`, run with this call's
//! environment (`CNI_COMMAND` set to the command delegated) and the network config on stdin,
//! and its result or error read from stdout.
//!
//! Design: the delegate is asked for its versions first; when it does not speak the config's
//! `cniVersion` (Debian's host-local 1.1.1 stops at 1.0.0, whose result has the same shape as
//! 1.1.0's) it gets the newest version both speak. Its errors are passed on with their code,
//! the message saying which plugin said it. Thread-safety: runs child processes; no shared
//! state.

use super::config::NetConf;
use super::result::CniResult;
use super::spec::{code, Env, Error, SUPPORTED};
use flowtable::names::quote;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Largest output read from a delegated plugin.
pub const MAX_OUTPUT: usize = 1 << 20;

/// A delegated IPAM plugin.
#[derive(Debug, Clone)]
pub struct Delegate {
    /// Its executable.
    pub path: PathBuf,
    /// Its name (`ipam.type`).
    pub name: String,
    /// The spec version it is spoken to in.
    pub version: String,
    config: Vec<u8>,
    vars: Vec<(String, String)>,
}

/// The `CNI_*` variables a delegate gets for `env`'s attachment (the spec: the same as ours).
pub fn vars(env: &Env) -> Vec<(String, String)> {
    let args: Vec<String> = env.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path: Vec<String> = env.path.iter().map(|p| p.display().to_string()).collect();
    vec![
        ("CNI_CONTAINERID".into(), env.container_id.clone()),
        (
            "CNI_NETNS".into(),
            env.netns
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
        ("CNI_IFNAME".into(), env.ifname.clone()),
        ("CNI_ARGS".into(), args.join(";")),
        ("CNI_PATH".into(), path.join(":")),
    ]
}

/// Finds plugin `name` in the `CNI_PATH` directories.
pub fn find(dirs: &[PathBuf], name: &str) -> Result<PathBuf, Error> {
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(Error::new(
        code::IPAM,
        format!("the IPAM plugin {} is not in CNI_PATH", quote(name)),
    )
    .details(format!(
        "looked in {}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    )))
}

/// Runs plugin `path` for `command` with `stdin`; its stdout on success, its error otherwise.
fn run(
    path: &Path,
    name: &str,
    command: &str,
    vars: &[(String, String)],
    stdin: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut child = Command::new(path)
        .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::new(
                code::IO_FAILURE,
                format!("could not run the IPAM plugin {}", quote(name)),
            )
            .details(format!("{}: {e}", path.display()))
        })?;
    if let Some(mut i) = child.stdin.take() {
        // A plugin that exits without reading its stdin is judged by its exit status.
        let _ = i.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(|e| {
        Error::new(
            code::IO_FAILURE,
            format!("the IPAM plugin {} could not be waited for", quote(name)),
        )
        .details(e.to_string())
    })?;
    let stdout = &out.stdout[..out.stdout.len().min(MAX_OUTPUT)];
    if out.status.success() {
        return Ok(stdout.to_vec());
    }
    // The spec's error object, passed on with its code.
    #[derive(serde::Deserialize)]
    struct Reply {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    match serde_json::from_slice::<Reply>(stdout) {
        Ok(r) => Err(Error::new(
            r.code,
            format!("IPAM plugin {} {command}: {}", quote(name), r.msg),
        )
        .details(r.details)),
        Err(_) => Err(Error::new(
            code::IPAM,
            format!(
                "IPAM plugin {} {command} failed ({})",
                quote(name),
                out.status
            ),
        )
        .details(
            String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(1024)])
                .trim()
                .to_string(),
        )),
    }
}

/// The newest version in [`SUPPORTED`] that `theirs` lists, preferring `want`.
pub fn negotiate(want: &str, theirs: &[String]) -> Option<String> {
    if theirs.iter().any(|v| v == want) {
        return Some(want.to_string());
    }
    SUPPORTED
        .iter()
        .rev()
        .find(|v| theirs.iter().any(|t| t == *v))
        .map(|v| v.to_string())
}

impl Delegate {
    /// Finds the config's IPAM plugin on `env`'s `CNI_PATH` and agrees on a version with it.
    pub fn new(conf: &NetConf, env: &Env) -> Result<Delegate, Error> {
        let path = find(&env.path, &conf.ipam_type)?;
        let name = conf.ipam_type.clone();
        let vars = vars(env);
        let ask = serde_json::json!({ "cniVersion": conf.cni_version });
        let out = run(&path, &name, "VERSION", &vars, ask.to_string().as_bytes())?;
        let theirs: Vec<String> = serde_json::from_slice::<Value>(&out)
            .ok()
            .and_then(|v| v.get("supportedVersions").cloned())
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| {
                Error::new(
                    code::DECODE_FAILURE,
                    format!("IPAM plugin {} VERSION: not a version reply", quote(&name)),
                )
            })?;
        let version = negotiate(&conf.cni_version, &theirs).ok_or_else(|| {
            Error::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "IPAM plugin {} speaks none of {}",
                    quote(&name),
                    SUPPORTED.join(", ")
                ),
            )
            .details(format!("it speaks {}", theirs.join(", ")))
        })?;
        let mut raw = conf.raw.clone();
        raw.insert("cniVersion".into(), Value::String(version.clone()));
        // The previous result is this plugin's own (with interfaces); IPAM has no use for it.
        raw.remove("prevResult");
        let config = serde_json::to_vec(&raw).map_err(|e| {
            Error::new(code::DECODE_FAILURE, "the config could not be re-encoded")
                .details(e.to_string())
        })?;
        Ok(Delegate {
            path,
            name,
            version,
            config,
            vars,
        })
    }

    /// ADD: an address for this attachment.
    pub fn add(&self) -> Result<CniResult, Error> {
        let out = run(&self.path, &self.name, "ADD", &self.vars, &self.config)?;
        serde_json::from_slice(&out).map_err(|e| {
            Error::new(
                code::DECODE_FAILURE,
                format!("IPAM plugin {} ADD: not a result", quote(&self.name)),
            )
            .details(e.to_string())
        })
    }

    /// DEL (or another command without a result: CHECK, GC) delegated.
    pub fn call(&self, command: &str) -> Result<(), Error> {
        run(&self.path, &self.name, command, &self.vars, &self.config).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake IPAM plugin: a shell script answering VERSION with `versions` and ADD with
    /// `add` (exit 1 and `add` as the error when `fail`); it logs the commands and stdin it got.
    fn fake(dir: &Path, versions: &str, add: &str, fail: bool) -> PathBuf {
        let p = dir.join("fake-ipam");
        let log = dir.join("log");
        let script = format!(
            "#!/bin/sh\nin=$(cat)\necho \"$CNI_COMMAND $in\" >> {log}\n\
             echo \"$CNI_CONTAINERID $CNI_IFNAME\" >> {log}.env\ncase $CNI_COMMAND in\n\
             VERSION) echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":{versions}}}' ;;\n\
             ADD) echo '{add}'; exit {code} ;;\nesac\n",
            log = log.display(),
            code = u8::from(fail)
        );
        // Written by a child process: were this process to hold the file open for writing,
        // a fork by a test on another thread would inherit that descriptor, and exec'ing the
        // script while that child lives fails with ETXTBSY (a flaky "IO failure").
        let mut w = std::process::Command::new("sh")
            .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
            .arg(&p)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut w.stdin.take().unwrap(), script.as_bytes()).unwrap();
        assert!(w.wait().unwrap().success(), "writing {}", p.display());
        dir.to_path_buf()
    }

    fn env(dirs: &[PathBuf]) -> Env {
        let path: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        let path = path.join(":");
        Env::from_lookup(|k| {
            Some(
                match k {
                    "CNI_COMMAND" => "ADD",
                    "CNI_CONTAINERID" => "c0ffee",
                    "CNI_NETNS" => "/run/netns/x",
                    "CNI_IFNAME" => "eth0",
                    "CNI_PATH" => &path,
                    _ => return None,
                }
                .to_string(),
            )
        })
        .unwrap()
    }

    fn conf(version: &str) -> NetConf {
        NetConf::parse(
            format!(
                r#"{{"cniVersion":"{version}","name":"n","type":"nodeswitch","ipam":{{"type":"fake-ipam","subnet":"10.244.1.0/24"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn the_delegate_gets_the_config_in_a_version_it_speaks() {
        let d = tempfile::tempdir().unwrap();
        let dir = fake(
            d.path(),
            r#"["0.4.0","1.0.0"]"#,
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.7/24","gateway":"10.244.1.1"}]}"#,
            false,
        );
        let del =
            Delegate::new(&conf("1.1.0"), &env(&[PathBuf::from("/nonexistent"), dir])).unwrap();
        assert_eq!(del.version, "1.0.0");
        let r = del.add().unwrap();
        assert_eq!(r.ips[0].address, "10.244.1.7/24");
        del.call("DEL").unwrap();
        let env_log = std::fs::read_to_string(d.path().join("log.env")).unwrap();
        assert!(env_log.lines().all(|l| l == "c0ffee eth0"), "{env_log}");
        let log = std::fs::read_to_string(d.path().join("log")).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert!(
            lines[0].starts_with("VERSION {\"cniVersion\":\"1.1.0\"}"),
            "{log}"
        );
        for (l, cmd) in lines[1..].iter().zip(["ADD", "DEL"]) {
            let (c, json) = l.split_once(' ').unwrap();
            assert_eq!(c, cmd);
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(v["cniVersion"], "1.0.0");
            assert_eq!(v["ipam"]["subnet"], "10.244.1.0/24");
        }
    }

    #[test]
    fn the_delegates_errors_and_absence_are_clear() {
        let d = tempfile::tempdir().unwrap();
        let dir = fake(
            d.path(),
            r#"["1.0.0"]"#,
            r#"{"cniVersion":"1.0.0","code":18,"msg":"no IP addresses available in range set"}"#,
            true,
        );
        let del = Delegate::new(&conf("1.0.0"), &env(std::slice::from_ref(&dir))).unwrap();
        let e = del.add().unwrap_err();
        assert_eq!(e.code, 18);
        assert_eq!(
            e.msg,
            "IPAM plugin 'fake-ipam' ADD: no IP addresses available in range set"
        );
        let e = Delegate::new(&conf("1.0.0"), &env(&[PathBuf::from("/nonexistent")])).unwrap_err();
        assert_eq!(e.code, code::IPAM);
        assert!(e.msg.contains("'fake-ipam' is not in CNI_PATH"), "{e}");
        let old = fake(d.path(), r#"["0.3.1"]"#, "{}", false);
        let e = Delegate::new(&conf("1.0.0"), &env(&[old])).unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    }

    #[test]
    fn negotiation_prefers_the_configs_version() {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate("1.0.0", &v(&["1.0.0", "1.1.0"])).unwrap(),
            "1.0.0"
        );
        assert_eq!(
            negotiate("1.1.0", &v(&["0.4.0", "1.0.0"])).unwrap(),
            "1.0.0"
        );
        assert_eq!(negotiate("1.1.0", &v(&["0.4.0"])), None);
    }
}
