//! The CNI specification's wire types (1.0.0 and 1.1.0): the environment a runtime sets, the
//! errors a plugin prints, and version negotiation.
//!
//! Design: everything a plugin invocation decides from its inputs is a pure function over
//! strings here, so it is tested without a runtime. No CNI crate on crates.io is maintained
//! and covers 1.1 (STATUS, GC), so the types are ours, written from the specification.
//! Thread-safety: plain data.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The specification versions this plugin speaks; the last is the newest.
pub const SUPPORTED: &[&str] = &["1.0.0", "1.1.0"];

/// The newest version this plugin speaks.
pub const NEWEST: &str = "1.1.0";

/// Longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Longest container ID accepted (runtimes use 64 hex digits).
pub const MAX_CONTAINER_ID: usize = 256;

/// The spec's error codes (1-99 are the spec's; 100 and up are this plugin's, documented in
/// `docs/cni.md`).
pub mod code {
    /// The config's `cniVersion` is not one this plugin speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The config has a field this plugin does not support.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container does not exist (its netns is gone).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A required `CNI_*` variable is missing or invalid.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// An I/O failure (reading stdin, running the IPAM plugin).
    pub const IO_FAILURE: u32 = 5;
    /// The config or a delegated plugin's output is not valid JSON of the expected shape.
    pub const DECODE_FAILURE: u32 = 6;
    /// The network config is valid JSON but not a valid config.
    pub const INVALID_CONFIG: u32 = 7;
    /// switchd is unreachable or busy: the runtime may retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD (switchd does not answer).
    pub const NOT_AVAILABLE: u32 = 50;
    /// switchd refused the pod (the message names the field and the reason).
    pub const SWITCH_REFUSED: u32 = 100;
    /// Creating, moving or configuring an interface, address or route failed.
    pub const NETLINK: u32 = 101;
    /// The delegated IPAM plugin failed or returned no usable IPv4 address.
    pub const IPAM: u32 = 102;
    /// CHECK: the interface, address, route or switchd's pod differs from what ADD made.
    pub const CHECK_MISMATCH: u32 = 103;
}

/// An error as the spec prints it on stdout (with exit status 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Error {
    /// The version the reply is in.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// One of [`code`].
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// Longer details (may be empty).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    /// An error with `code` and `msg` (the version is filled in when printed).
    pub fn new(code: u32, msg: impl Into<String>) -> Error {
        Error {
            cni_version: NEWEST.into(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with details.
    pub fn details(mut self, d: impl Into<String>) -> Error {
        self.details = d.into();
        self
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (idempotent).
    Del,
    /// Verify an attachment.
    Check,
    /// Report the versions spoken.
    Version,
    /// 1.1: whether ADD can be served now.
    Status,
    /// 1.1: remove attachments not in `cni.dev/valid-attachments`.
    Gc,
}

impl Command {
    /// The command named by `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation, checked as the spec requires per command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS`: a path to the container's network namespace (required by ADD and CHECK;
    /// DEL may come without it when the namespace is gone).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface to create inside the container.
    pub ifname: String,
    /// `CNI_ARGS`, as key/value pairs.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`: where to look for delegated plugins (IPAM).
    pub path: Vec<PathBuf>,
}

fn invalid_env(var: &str, why: impl Into<String>) -> Error {
    Error::new(code::INVALID_ENVIRONMENT, format!("{var}: {}", why.into()))
}

/// Checks a container ID as the spec describes it: alphanumerics, '_', '-' and '.', starting
/// with an alphanumeric.
pub fn container_id(s: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if s.is_empty() {
        return Err("is required".into());
    }
    if s.len() > MAX_CONTAINER_ID {
        return Err(format!("is longer than {MAX_CONTAINER_ID} characters"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) || !s.chars().all(ok_char) {
        return Err(format!(
            "{} is not a container ID (alphanumerics, '_', '-' and '.', starting with an \
             alphanumeric)",
            flowtable::names::quote(s)
        ));
    }
    Ok(())
}

/// Checks an interface name as the spec and Linux take it: 1-15 bytes, not `.` or `..`, no
/// '/', ':' or whitespace.
pub fn ifname(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    if s.len() > MAX_IFNAME
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{} is not an interface name (1-{MAX_IFNAME} bytes, not '.' or '..', no '/', ':' or \
             whitespace)",
            flowtable::names::quote(s)
        ));
    }
    Ok(())
}

/// Parses `CNI_ARGS` (`K1=V1;K2=V2`).
pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for kv in s.split(';').filter(|x| !x.is_empty()) {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(format!("{} is not KEY=VALUE", flowtable::names::quote(kv)));
        };
        if k.is_empty() {
            return Err(format!("{} has no key", flowtable::names::quote(kv)));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

impl Env {
    /// Reads and checks the environment given by `var` (a lookup, `std::env::var` in the
    /// binary).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Env, Error> {
        let raw = var("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&raw).ok_or_else(|| {
            invalid_env(
                "CNI_COMMAND",
                format!(
                    "{} is not a command (ADD, DEL, CHECK, VERSION, STATUS, GC)",
                    flowtable::names::quote(&raw)
                ),
            )
        })?;
        let attach = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut env = Env {
            command,
            container_id: String::new(),
            netns: None,
            ifname: String::new(),
            args: BTreeMap::new(),
            path: Vec::new(),
        };
        if attach {
            let id = var("CNI_CONTAINERID").unwrap_or_default();
            container_id(&id).map_err(|r| invalid_env("CNI_CONTAINERID", r))?;
            env.container_id = id;
            let ifn = var("CNI_IFNAME").unwrap_or_default();
            ifname(&ifn).map_err(|r| invalid_env("CNI_IFNAME", r))?;
            env.ifname = ifn;
            let ns = var("CNI_NETNS").unwrap_or_default();
            if ns.is_empty() {
                if command != Command::Del {
                    return Err(invalid_env("CNI_NETNS", "is required"));
                }
            } else if !ns.starts_with('/') {
                return Err(invalid_env(
                    "CNI_NETNS",
                    format!("{} is not an absolute path", flowtable::names::quote(&ns)),
                ));
            } else {
                env.netns = Some(PathBuf::from(ns));
            }
            env.args = parse_args(&var("CNI_ARGS").unwrap_or_default())
                .map_err(|r| invalid_env("CNI_ARGS", r))?;
        }
        if command != Command::Version {
            let p = var("CNI_PATH").unwrap_or_default();
            env.path = p
                .split(':')
                .filter(|x| !x.is_empty())
                .map(PathBuf::from)
                .collect();
            if env.path.is_empty()
                && matches!(command, Command::Add | Command::Del | Command::Check)
            {
                return Err(invalid_env("CNI_PATH", "is required"));
            }
        }
        Ok(env)
    }

    /// The pod's name for switchd: `K8S_POD_NAMESPACE/K8S_POD_NAME` from `CNI_ARGS`, else the
    /// container ID.
    pub fn pod_name(&self) -> String {
        match (
            self.args.get("K8S_POD_NAMESPACE"),
            self.args.get("K8S_POD_NAME"),
        ) {
            (Some(ns), Some(n)) if !ns.is_empty() && !n.is_empty() => format!("{ns}/{n}"),
            _ => self.container_id.clone(),
        }
    }
}

/// Checks a config's `cniVersion` against [`SUPPORTED`].
pub fn check_version(v: &str) -> Result<(), Error> {
    if SUPPORTED.contains(&v) {
        return Ok(());
    }
    Err(Error::new(
        code::INCOMPATIBLE_VERSION,
        format!("cniVersion {} is not supported", flowtable::names::quote(v)),
    )
    .details(format!("this plugin speaks {}", SUPPORTED.join(", "))))
}

/// What VERSION prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    /// The version of this reply.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version spoken.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// The VERSION reply.
pub fn version_info() -> VersionInfo {
    VersionInfo {
        cni_version: NEWEST.into(),
        supported_versions: SUPPORTED.iter().map(|s| s.to_string()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, Error> {
        let m: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "0123abcd"),
        ("CNI_NETNS", "/run/netns/pod"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1",
        ),
    ];

    #[test]
    fn an_add_environment_is_read_whole() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.netns, Some(PathBuf::from("/run/netns/pod")));
        assert_eq!(
            e.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(e.pod_name(), "default/web-1");
    }

    #[test]
    fn a_missing_or_bad_variable_is_error_4_naming_it() {
        let without = |k: &str| -> Vec<(&str, &str)> {
            ADD.iter().copied().filter(|(x, _)| *x != k).collect()
        };
        let with = |k: &'static str, v: &'static str| -> Vec<(&'static str, &'static str)> {
            let mut e: Vec<_> = ADD.iter().copied().filter(|(x, _)| *x != k).collect();
            e.push((k, v));
            e
        };
        for (vars, var) in [
            (without("CNI_CONTAINERID"), "CNI_CONTAINERID"),
            (without("CNI_NETNS"), "CNI_NETNS"),
            (without("CNI_IFNAME"), "CNI_IFNAME"),
            (without("CNI_PATH"), "CNI_PATH"),
            (without("CNI_COMMAND"), "CNI_COMMAND"),
            (with("CNI_COMMAND", "INIT"), "CNI_COMMAND"),
            (with("CNI_IFNAME", "a-name-over-15-bytes"), "CNI_IFNAME"),
            (with("CNI_IFNAME", "eth/0"), "CNI_IFNAME"),
            (with("CNI_CONTAINERID", "-x"), "CNI_CONTAINERID"),
            (with("CNI_CONTAINERID", "a b"), "CNI_CONTAINERID"),
            (with("CNI_NETNS", "relative/ns"), "CNI_NETNS"),
            (with("CNI_ARGS", "novalue"), "CNI_ARGS"),
        ] {
            let e = env(&vars).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENVIRONMENT, "{e}");
            assert!(e.msg.starts_with(&format!("{var}: ")), "{e}");
        }
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_nothing() {
        let del: Vec<_> = ADD
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .collect();
        let e = env(&del).unwrap();
        assert_eq!((e.command, e.netns), (Command::Del, None));
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "STATUS")]).unwrap().command,
            Command::Status
        );
        assert_eq!(
            env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "x")])
                .unwrap_err()
                .code,
            code::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn the_pod_name_falls_back_to_the_container_id() {
        let mut vars = ADD.to_vec();
        vars.retain(|(k, _)| *k != "CNI_ARGS");
        assert_eq!(env(&vars).unwrap().pod_name(), "0123abcd");
    }

    #[test]
    fn versions_and_errors_print_as_the_spec_shows() {
        assert!(check_version("1.0.0").is_ok() && check_version("1.1.0").is_ok());
        let e = check_version("0.4.0").unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({
                "cniVersion": "1.1.0",
                "code": 1,
                "msg": "cniVersion '0.4.0' is not supported",
                "details": "this plugin speaks 1.0.0, 1.1.0"
            })
        );
        assert_eq!(
            serde_json::to_value(version_info()).unwrap(),
            serde_json::json!({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]})
        );
        let plain = serde_json::to_value(Error::new(code::TRY_AGAIN_LATER, "busy")).unwrap();
        assert!(plain.get("details").is_none(), "{plain}");
    }
}
