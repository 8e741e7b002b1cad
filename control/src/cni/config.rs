//! The network config the runtime gives the plugin on stdin (one plugin object of a
//! conflist, with `name` and `cniVersion` filled in by the runtime).
//!
//! Design: parsed in one place, each field checked with the spec's error code, the IPAM
//! section kept as raw JSON for the delegated plugin (whose schema is its own). The fields
//! are documented in `docs/cni.md`. Thread-safety: plain data.

use super::spec::{check_version, code, Error};
use flowtable::names::quote;
use serde_json::{Map, Value};
use std::path::PathBuf;

/// Where switchd's control socket is unless the config says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/nodeswitch/switchd.sock";

/// The smallest and largest pod MTU accepted in the config.
pub const MTU_RANGE: std::ops::RangeInclusive<u32> = 576..=9166;
/// Largest `localMtu`: the largest MTU Linux gives an interface (and an IPv4 packet's size).
pub const LOCAL_MTU_MAX: u32 = 65535;

/// Largest network config read from stdin.
pub const MAX_CONFIG: usize = 1 << 20;

/// Fields the runtime or the spec may put in a plugin's config besides ours.
const SPEC_FIELDS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "args",
    "ipMasq",
    "ipam",
    "dns",
    "capabilities",
    "runtimeConfig",
    "prevResult",
];

/// This plugin's own fields.
const OUR_FIELDS: &[&str] = &["socket", "mtu", "localMtu"];

/// DNS settings handed to the container runtime in the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// The local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when nothing is set (the result then has no `dns`).
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// One attachment the runtime still holds (GC's `cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    /// The container ID.
    pub container_id: String,
    /// The interface inside it.
    pub ifname: String,
}

/// The network config, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The spec version the runtime speaks for this invocation.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// switchd's control socket.
    pub socket: PathBuf,
    /// The pod interface's MTU; `None`: switchd's uplink MTU - 50.
    pub mtu: Option<u32>,
    /// A node-local MTU: the pod's interface gets this one and its default route the `mtu`
    /// above, so that frames to pods of the same node (the pod subnet's connected route) may
    /// be this large while everything else leaves at the overlay's MTU. `None`: no such
    /// split. Needs switchd on multi-buffer AF_XDP (kernel 6.6+); the same on every pod of a
    /// node (a frame larger than its receiver's interface MTU is dropped by the kernel).
    pub local_mtu: Option<u32>,
    /// The IPAM section as given (its `type` is the plugin delegated to).
    pub ipam: Map<String, Value>,
    /// The IPAM plugin's name.
    pub ipam_type: String,
    /// DNS for the result.
    pub dns: Dns,
    /// The previous result (CHECK, DEL, and ADD in a chain), raw.
    pub prev_result: Option<Value>,
    /// GC: the attachments to keep.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The whole config as given, for delegation.
    pub raw: Map<String, Value>,
}

fn invalid(field: &str, why: impl Into<String>) -> Error {
    Error::new(code::INVALID_CONFIG, format!("{field}: {}", why.into()))
}

fn string<'a>(m: &'a Map<String, Value>, k: &str) -> Result<Option<&'a str>, Error> {
    match m.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(k, "is not a string")),
    }
}

/// Checks a network name as the spec describes it: alphanumerics, '_', '-' and '.'.
fn network_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is required".into());
    }
    if s.len() > 253
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(format!(
            "{} is not a network name (at most 253 of alphanumerics, '_', '-' and '.')",
            quote(s)
        ));
    }
    Ok(())
}

impl NetConf {
    /// Parses the config bytes read from stdin.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, Error> {
        if bytes.len() > MAX_CONFIG {
            return Err(Error::new(
                code::INVALID_CONFIG,
                format!("the network config is over {MAX_CONFIG} bytes"),
            ));
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| {
            Error::new(code::DECODE_FAILURE, "the network config is not valid JSON")
                .details(e.to_string())
        })?;
        let Value::Object(raw) = v else {
            return Err(Error::new(
                code::DECODE_FAILURE,
                "the network config is not a JSON object",
            ));
        };
        let cni_version = string(&raw, "cniVersion")?
            .ok_or_else(|| invalid("cniVersion", "is required"))?
            .to_string();
        check_version(&cni_version)?;
        for k in raw.keys() {
            let known = SPEC_FIELDS.contains(&k.as_str())
                || OUR_FIELDS.contains(&k.as_str())
                || k.starts_with("cni.dev/");
            if !known {
                return Err(Error::new(
                    code::UNSUPPORTED_FIELD,
                    format!("{}: is not a field of the nodeswitch plugin", quote(k)),
                )
                .details(format!(
                    "it takes {} besides the spec's fields",
                    OUR_FIELDS.join(", ")
                )));
            }
        }
        let name = string(&raw, "name")?.unwrap_or_default().to_string();
        network_name(&name).map_err(|r| invalid("name", r))?;
        let socket = match string(&raw, "socket")? {
            None => PathBuf::from(DEFAULT_SOCKET),
            Some(s) if s.starts_with('/') && !s.contains('\0') => PathBuf::from(s),
            Some(s) => {
                return Err(invalid(
                    "socket",
                    format!("{} is not an absolute path", quote(s)),
                ))
            }
        };
        let mtu = match raw.get("mtu") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(m) if (*MTU_RANGE.start() as u64..=*MTU_RANGE.end() as u64).contains(&m) => {
                    Some(m as u32)
                }
                _ => {
                    return Err(invalid(
                        "mtu",
                        format!("{n} is outside {}..={}", MTU_RANGE.start(), MTU_RANGE.end()),
                    ))
                }
            },
            Some(_) => return Err(invalid("mtu", "is not a number")),
        };
        let local_mtu = match raw.get("localMtu") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let lo = mtu.unwrap_or(*MTU_RANGE.start());
                match n.as_u64() {
                    Some(m) if (u64::from(lo)..=u64::from(LOCAL_MTU_MAX)).contains(&m) => {
                        Some(m as u32)
                    }
                    _ => {
                        return Err(invalid(
                            "localMtu",
                            format!("{n} is outside {lo}..={LOCAL_MTU_MAX} (at least mtu)"),
                        ))
                    }
                }
            }
            Some(_) => return Err(invalid("localMtu", "is not a number")),
        };
        let ipam = match raw.get("ipam") {
            Some(Value::Object(m)) => m.clone(),
            None | Some(Value::Null) => {
                return Err(invalid(
                    "ipam",
                    "is required (for example {\"type\": \"host-local\", ...})",
                ))
            }
            Some(_) => return Err(invalid("ipam", "is not an object")),
        };
        let ipam_type = string(&ipam, "type")
            .map_err(|_| invalid("ipam.type", "is not a string"))?
            .unwrap_or_default()
            .to_string();
        if ipam_type.is_empty()
            || ipam_type.contains('/')
            || ipam_type == "."
            || ipam_type == ".."
            || ipam_type.len() > 255
        {
            return Err(invalid(
                "ipam.type",
                if ipam_type.is_empty() {
                    "is required".to_string()
                } else {
                    format!("{} is not a plugin name", quote(&ipam_type))
                },
            ));
        }
        let dns = match raw.get("dns") {
            None | Some(Value::Null) => Dns::default(),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| invalid("dns", format!("is not a DNS object: {e}")))?,
        };
        let valid_attachments = match raw.get("cni.dev/valid-attachments") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, a) in items.iter().enumerate() {
                    let f = format!("cni.dev/valid-attachments[{i}]");
                    let Value::Object(m) = a else {
                        return Err(invalid(&f, "is not an object"));
                    };
                    let get = |k: &str| {
                        string(m, k)
                            .map_err(|_| invalid(&format!("{f}.{k}"), "is not a string"))?
                            .map(str::to_string)
                            .ok_or_else(|| invalid(&format!("{f}.{k}"), "is required"))
                    };
                    out.push(Attachment {
                        container_id: get("containerID")?,
                        ifname: get("ifname")?,
                    });
                }
                Some(out)
            }
            Some(_) => {
                return Err(invalid("cni.dev/valid-attachments", "is not an array"));
            }
        };
        Ok(NetConf {
            cni_version,
            name,
            socket,
            mtu,
            local_mtu,
            ipam,
            ipam_type,
            dns,
            prev_result: raw.get("prevResult").filter(|v| !v.is_null()).cloned(),
            valid_attachments,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: &str = r#"{
        "cniVersion": "1.0.0",
        "name": "nodeswitch",
        "type": "nodeswitch",
        "socket": "/run/nodeswitch/switchd.sock",
        "mtu": 1450,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]]},
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
    }"#;

    fn with(k: &str, v: Value) -> Vec<u8> {
        let mut m: Map<String, Value> = serde_json::from_str(CONF).unwrap();
        if v.is_null() {
            m.remove(k);
        } else {
            m.insert(k.into(), v);
        }
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn the_example_config_parses() {
        let c = NetConf::parse(CONF.as_bytes()).unwrap();
        assert_eq!(c.mtu, Some(1450));
        assert_eq!(c.ipam_type, "host-local");
        assert_eq!(c.dns.nameservers, vec!["10.96.0.10".to_string()]);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        let d = NetConf::parse(&with("mtu", Value::Null)).unwrap();
        assert_eq!(d.mtu, None);
        assert_eq!(d.local_mtu, None);
        let l = NetConf::parse(&with("localMtu", serde_json::json!(65000))).unwrap();
        assert_eq!((l.mtu, l.local_mtu), (Some(1450), Some(65000)));
    }

    #[test]
    fn each_bad_field_gets_its_code_and_name() {
        use serde_json::json;
        for (bytes, want, field) in [
            (b"{not json".to_vec(), code::DECODE_FAILURE, ""),
            (b"[1]".to_vec(), code::DECODE_FAILURE, ""),
            (
                with("cniVersion", json!("0.3.1")),
                code::INCOMPATIBLE_VERSION,
                "",
            ),
            (
                with("cniVersion", Value::Null),
                code::INVALID_CONFIG,
                "cniVersion",
            ),
            (with("name", json!("a b")), code::INVALID_CONFIG, "name"),
            (with("mtu", json!(100)), code::INVALID_CONFIG, "mtu"),
            (with("mtu", json!("1450")), code::INVALID_CONFIG, "mtu"),
            (
                with("localMtu", json!(1449)),
                code::INVALID_CONFIG,
                "localMtu",
            ),
            (
                with("localMtu", json!(65536)),
                code::INVALID_CONFIG,
                "localMtu",
            ),
            (
                with("localMtu", json!("65000")),
                code::INVALID_CONFIG,
                "localMtu",
            ),
            (
                with("socket", json!("relative.sock")),
                code::INVALID_CONFIG,
                "socket",
            ),
            (with("ipam", Value::Null), code::INVALID_CONFIG, "ipam"),
            (
                with("ipam", json!({"ranges": []})),
                code::INVALID_CONFIG,
                "ipam.type",
            ),
            (
                with("ipam", json!({"type": "../sh"})),
                code::INVALID_CONFIG,
                "ipam.type",
            ),
            (
                with("dns", json!({"nameservers": "x"})),
                code::INVALID_CONFIG,
                "dns",
            ),
            (with("vlan", json!(4)), code::UNSUPPORTED_FIELD, "'vlan'"),
            (
                with("cni.dev/valid-attachments", json!([{"containerID": "a"}])),
                code::INVALID_CONFIG,
                "cni.dev/valid-attachments[0].ifname",
            ),
        ] {
            let e = NetConf::parse(&bytes).unwrap_err();
            assert_eq!(e.code, want, "{e}");
            assert!(e.msg.starts_with(field), "{field}: {e}");
        }
        assert!(NetConf::parse(&vec![b' '; MAX_CONFIG + 1]).is_err());
    }

    #[test]
    fn gc_reads_the_valid_attachments() {
        let c = NetConf::parse(&with(
            "cni.dev/valid-attachments",
            serde_json::json!([{"containerID": "c1", "ifname": "eth0"}]),
        ))
        .unwrap();
        assert_eq!(
            c.valid_attachments,
            Some(vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }])
        );
    }
}
