//! The plugin's netlink layer in a real network namespace (root): the veth pair, names,
//! MACs, MTU, address and routes that ADD makes, CHECK's verdicts, DEL's idempotence.
#![allow(missing_docs)]

use control::cni::link::{self, Pod};
use control::cni::naming::{host_ifname, pod_mac};
use control::cni::spec::code;
use flowtable::wire::MacAddr;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

/// Not root: skipped here, but never in CI (which runs as root).
fn skip_unless_root() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    assert!(
        root || std::env::var_os("CI").is_none(),
        "CI runs the CNI netlink tests as root"
    );
    !root
}

/// A named netns, deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("nswt-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        Netns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn host_ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The attachment of a test pod 10.244.9.`host` named after `tag` in `netns`, MTU `mtu`.
fn test_pod(tag: &str, netns: PathBuf, host: u8, mtu: u32, route_mtu: Option<u32>) -> Pod {
    let id = format!("cni-{tag}-test-{}", std::process::id());
    Pod {
        host: host_ifname(&id, "eth0"),
        ifname: "eth0".into(),
        netns,
        mac: pod_mac(Ipv4Addr::new(10, 244, 9, host)),
        gateway_mac: MacAddr([0x02, 0x00, 0x0a, 0xf4, 0x09, 0x01]),
        ip: Ipv4Addr::new(10, 244, 9, host),
        prefix: 24,
        gateway: Ipv4Addr::new(10, 244, 9, 1),
        mtu,
        route_mtu,
    }
}

/// Deletes a test pod's host end (and so the veth) on every path; a leftover from a crashed
/// run would keep its host route.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = link::del(&self.0);
    }
}

#[test]
fn add_check_del_make_and_remove_exactly_the_attachment() {
    if skip_unless_root() {
        return;
    }
    let ns = Netns::new("link");
    let pod = test_pod("link", ns.path(), 5, 1450, None);
    let _c = Cleanup(pod.host.clone());

    link::add(&pod).unwrap();
    let eth0 = ns.ip(&["-o", "link", "show", "eth0"]);
    assert!(
        eth0.contains("mtu 1450") && eth0.contains("02:00:0a:f4:09:05"),
        "{eth0}"
    );
    assert!(eth0.contains("state UP") || eth0.contains(",UP"), "{eth0}");
    let addr = ns.ip(&["-o", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains("10.244.9.5/24"), "{addr}");
    let routes = ns.ip(&["route"]);
    assert!(
        routes.contains("default via 10.244.9.1 dev eth0"),
        "{routes}"
    );
    assert!(ns.ip(&["-o", "link", "show", "lo"]).contains("UP"));
    let host = host_ip(&["-o", "link", "show", &pod.host]);
    assert!(
        host.contains("mtu 1450") && host.contains("02:00:0a:f4:09:01"),
        "{host}"
    );
    let hr = host_ip(&["route", "show", "10.244.9.5/32"]);
    assert!(
        hr.contains(&format!("dev {}", pod.host)) && hr.contains("scope link"),
        "{hr}"
    );
    link::check(&pod).unwrap();

    // CHECK names what someone changed.
    let mut other = pod.clone();
    other.mtu = 1400;
    let e = link::check(&other).unwrap_err();
    assert_eq!(e.code, code::CHECK_MISMATCH);
    assert!(e.msg.contains("MTU"), "{e}");
    assert!(ns.ip(&["route", "del", "default"]).is_empty());
    let e = link::check(&pod).unwrap_err();
    assert_eq!(e.code, code::CHECK_MISMATCH);
    assert_eq!(
        e.msg,
        "the default route via 10.244.9.1 dev eth0 is missing"
    );

    // ADD again (a retry after a lost reply) replaces what is there.
    link::add(&pod).unwrap();
    link::check(&pod).unwrap();

    // DEL removes both ends and the host route; twice is fine.
    assert!(link::del(&pod.host).unwrap());
    assert!(!link::del(&pod.host).unwrap());
    assert!(ns.ip(&["-o", "link", "show", "eth0"]).is_empty());
    assert!(host_ip(&["route", "show", "10.244.9.5/32"]).is_empty());
    let e = link::check(&pod).unwrap_err();
    assert!(e.msg.contains("is missing"), "{e}");
}

#[test]
fn a_node_local_mtu_is_the_interfaces_and_the_default_route_keeps_the_overlays() {
    if skip_unless_root() {
        return;
    }
    let ns = Netns::new("lmtu");
    let pod = test_pod("lmtu", ns.path(), 7, 65000, Some(8950));
    let _c = Cleanup(pod.host.clone());
    link::add(&pod).unwrap();
    let eth0 = ns.ip(&["-o", "link", "show", "eth0"]);
    assert!(eth0.contains("mtu 65000"), "{eth0}");
    let host = host_ip(&["-o", "link", "show", &pod.host]);
    assert!(host.contains("mtu 65000"), "{host}");
    let routes = ns.ip(&["route"]);
    let default = routes
        .lines()
        .find(|l| l.starts_with("default via 10.244.9.1 dev eth0"))
        .unwrap_or_default();
    assert!(default.contains(" mtu 8950"), "{routes}");
    // Pods of the node (the connected /24) are reached at the interface's MTU.
    let local = ns.ip(&["route", "get", "10.244.9.8"]);
    assert!(
        !local.contains("mtu"),
        "no route MTU to a local pod: {local}"
    );
    let far = ns.ip(&["route", "get", "10.244.2.2"]);
    assert!(far.contains("mtu 8950"), "{far}");
    link::check(&pod).unwrap();
}

#[test]
fn a_missing_netns_is_error_3_and_leaves_nothing() {
    if skip_unless_root() {
        return;
    }
    let nowhere = PathBuf::from("/run/netns/nswt-does-not-exist");
    let pod = test_pod("gone", nowhere, 6, 1450, None);
    let e = link::add(&pod).unwrap_err();
    assert_eq!(e.code, code::UNKNOWN_CONTAINER, "{e}");
    assert!(host_ip(&["-o", "link", "show", &pod.host]).is_empty());
}
