//! The names and addresses the plugin chooses for an attachment.
//!
//! Design: derived, never stored: the host side of a pod's veth is named from the container
//! ID and the interface (so DEL and GC find it again with nothing but what the runtime
//! passes), and a pod's MAC from its IP (unique wherever its IP is). Thread-safety: pure
//! functions.

use flowtable::wire::MacAddr;
use std::net::Ipv4Addr;

/// Every host-side veth this plugin makes starts with this (GC removes only these).
pub const HOST_PREFIX: &str = "nsw";

/// 64-bit FNV-1a: stable across releases and platforms (the names it makes outlive the
/// plugin binary that made them).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The host-side veth of `container_id`'s `ifname`: `nsw` and 12 hex digits (15 bytes, the
/// most Linux takes).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut key = Vec::with_capacity(container_id.len() + ifname.len() + 1);
    key.extend_from_slice(container_id.as_bytes());
    key.push(0);
    key.extend_from_slice(ifname.as_bytes());
    format!("{HOST_PREFIX}{:012x}", fnv1a(&key) >> 16)
}

/// True for a name [`host_ifname`] could have made.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == HOST_PREFIX.len() + 12
        && name.starts_with(HOST_PREFIX)
        && name[HOST_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The MAC of a pod's interface: locally administered, unicast, `02:00` and the IPv4
/// address (as the demo's topology does).
pub fn pod_mac(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x02, 0x00, o[0], o[1], o[2], o[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_linux_and_are_stable() {
        let id = "a".repeat(64);
        let n = host_ifname(&id, "eth0");
        assert_eq!(n.len(), 15);
        assert!(is_host_ifname(&n), "{n}");
        // Fixed (FNV-1a of "0123abcd\0eth0", cross-checked in Python): a later release must
        // find the veths an earlier one made.
        assert_eq!(host_ifname("0123abcd", "eth0"), "nswd17f8471aecf");
        assert_ne!(host_ifname(&id, "eth0"), host_ifname(&id, "eth1"));
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
        for other in ["eth0", "nsw-host", "nsw0123456789ab0", "nswABCDEF012345"] {
            assert!(!is_host_ifname(other), "{other}");
        }
    }

    #[test]
    fn a_pod_mac_is_local_unicast_and_carries_the_ip() {
        let m = pod_mac(Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(m.to_string(), "02:00:0a:f4:01:02");
        assert_eq!(m.0[0] & 0x03, 0x02);
    }
}
