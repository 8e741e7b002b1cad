//! The CNI result (1.0.0 and 1.1.0 share its shape): what ADD prints, what an IPAM plugin
//! returns, and what CHECK and DEL get back as `prevResult`.
//!
//! Design: serde types of the spec's fields; an IPAM result is reduced to the one IPv4
//! address, gateway and routes the plugin uses ([`Ipam::from_result`]), every other shape
//! refused with the field named. Thread-safety: plain data.

use super::config::Dns;
use super::spec::{code, Error};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// An interface of the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Its MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path it lives in; absent for the host side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address of the attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `address/prefix`.
    pub address: String,
    /// The default gateway on that subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The index in `interfaces` of the interface that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<u32>,
}

/// A route inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination `address/prefix`.
    pub dst: String,
    /// The next hop (absent: the IP's gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// A result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// The version it is in.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// What the plugin takes from an IPAM result: one IPv4 address with its prefix, a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipam {
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The gateway (the IPAM's, else the first address of the subnet).
    pub gateway: Ipv4Addr,
}

fn ipam_error(field: &str, why: impl Into<String>) -> Error {
    Error::new(
        code::IPAM,
        format!("the IPAM result's {field}: {}", why.into()),
    )
}

/// Parses `a.b.c.d/n`.
pub fn parse_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let ip: Ipv4Addr = a.parse().ok()?;
    let p: u8 = p.parse().ok()?;
    (p <= 32).then_some((ip, p))
}

impl Ipam {
    /// The first IPv4 address of an IPAM plugin's result (IPv6 addresses are skipped: the
    /// switch is IPv4 only).
    pub fn from_result(r: &CniResult) -> Result<Ipam, Error> {
        for (i, c) in r.ips.iter().enumerate() {
            if c.address.contains(':') {
                continue;
            }
            let (ip, prefix) = parse_cidr(&c.address).ok_or_else(|| {
                ipam_error(
                    &format!("ips[{i}].address"),
                    format!(
                        "{} is not address/prefix",
                        flowtable::names::quote(&c.address)
                    ),
                )
            })?;
            if prefix == 0 || prefix > 30 {
                return Err(ipam_error(
                    &format!("ips[{i}].address"),
                    format!("/{prefix} leaves no room for a gateway and a pod"),
                ));
            }
            let mask = u32::MAX << (32 - prefix);
            let net = u32::from(ip) & mask;
            let gateway = match &c.gateway {
                Some(g) => g.parse::<Ipv4Addr>().map_err(|_| {
                    ipam_error(
                        &format!("ips[{i}].gateway"),
                        format!("{} is not an IPv4 address", flowtable::names::quote(g)),
                    )
                })?,
                None => Ipv4Addr::from(net + 1),
            };
            if u32::from(gateway) & mask != net || gateway == ip {
                return Err(ipam_error(
                    &format!("ips[{i}].gateway"),
                    format!("{gateway} is not another address of {ip}/{prefix}"),
                ));
            }
            return Ok(Ipam {
                ip,
                prefix,
                gateway,
            });
        }
        Err(ipam_error("ips", "hold no IPv4 address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> CniResult {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn host_locals_result_gives_address_and_gateway() {
        let r = parse(
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.1"}],"dns":{}}"#,
        );
        assert_eq!(
            Ipam::from_result(&r).unwrap(),
            Ipam {
                ip: Ipv4Addr::new(10, 244, 1, 5),
                prefix: 24,
                gateway: Ipv4Addr::new(10, 244, 1, 1)
            }
        );
        let no_gw = parse(
            r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64"},{"address":"10.244.1.5/24"}]}"#,
        );
        assert_eq!(
            Ipam::from_result(&no_gw).unwrap().gateway,
            Ipv4Addr::new(10, 244, 1, 1)
        );
    }

    #[test]
    fn unusable_ipam_results_are_error_102_naming_the_field() {
        for (s, field) in [
            (r#"{"cniVersion":"1.0.0","ips":[]}"#, "ips"),
            (
                r#"{"cniVersion":"1.0.0","ips":[{"address":"fd00::5/64"}]}"#,
                "ips",
            ),
            (
                r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5"}]}"#,
                "ips[0].address",
            ),
            (
                r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5/32"}]}"#,
                "ips[0].address",
            ),
            (
                r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5/24","gateway":"10.9.9.9"}]}"#,
                "ips[0].gateway",
            ),
            (
                r#"{"cniVersion":"1.0.0","ips":[{"address":"10.244.1.5/24","gateway":"10.244.1.5"}]}"#,
                "ips[0].gateway",
            ),
        ] {
            let e = Ipam::from_result(&parse(s)).unwrap_err();
            assert_eq!(e.code, code::IPAM);
            assert!(
                e.msg.starts_with(&format!("the IPAM result's {field}:")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_result_prints_only_what_is_set() {
        let r = CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "nsw0123456789ab".into(),
                    mac: "02:00:0a:f4:01:01".into(),
                    mtu: None,
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:0a:f4:01:05".into(),
                    mtu: Some(1450),
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![IpConfig {
                address: "10.244.1.5/24".into(),
                gateway: Some("10.244.1.1".into()),
                interface: Some(1),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: Some("10.244.1.1".into()),
            }],
            dns: Dns::default(),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "nsw0123456789ab", "mac": "02:00:0a:f4:01:01"},
                    {"name": "eth0", "mac": "02:00:0a:f4:01:05", "mtu": 1450, "sandbox": "/run/netns/p"}
                ],
                "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
            })
        );
    }
}
