//! Interoperability with the Linux kernel's own vxlan device, set up the way Flannel sets it
//! up (VNI 1, UDP 8472, static FDB and neighbour entries for the other node's VTEP).
//!
//! A network namespace plays node2: its kernel has a flannel.1 vxlan device and a "pod"
//! address 10.244.2.7. The switch (node1, in memory) encapsulates pod-a's ping to 10.244.2.7;
//! the frame is injected into node2's uplink; node2's kernel must accept it, decapsulate it
//! and answer over its own vxlan device; that answer, captured on the wire, is given to the
//! switch, which must decapsulate it and deliver the echo reply to pod-a.
//!
//! Needs root (network namespaces). In CI it runs as root and is never skipped.

#![allow(missing_docs)]

mod common;

use common::*;
use flowtable::{Packet, Pipeline, PortId, Snapshot, StateFile, Verdict};
use std::process::Command;

struct Netns {
    names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Sends `frame` out of `dev` in `ns` and returns the first frame that comes back which is
/// VXLAN (UDP 8472) from 198.18.0.2, within 5 seconds.
const EXCHANGE: &str = r#"
import socket, sys, time
dev, frame = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((dev, 0))
s.settimeout(0.5)
s.send(frame)
deadline = time.time() + 5
while time.time() < deadline:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    if len(data) > 50 and data[12:14] == b"\x08\x00" and data[23] == 17 and data[26:30] == bytes([198,18,0,2]) and data[36:38] == (8472).to_bytes(2, "big"):
        print(data.hex())
        sys.exit(0)
sys.exit(1)
"#;

#[test]
fn kernel_vxlan_accepts_our_frames_and_we_accept_its() {
    if !is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs this test as root"
        );
        eprintln!("note: not root; skipping the kernel vxlan interoperability test");
        return;
    }
    let id = std::process::id();
    let (n1, n2) = (format!("ns-n1-{id}"), format!("ns-n2-{id}"));
    let _guard = Netns {
        names: vec![n1.clone(), n2.clone()],
    };
    sh(&["ip", "netns", "add", &n1]);
    sh(&["ip", "netns", "add", &n2]);
    let (up1, up2) = (format!("u1-{id}"), format!("u2-{id}"));
    let (up1, up2) = (&up1[..up1.len().min(15)], &up2[..up2.len().min(15)]);
    sh(&[
        "ip", "link", "add", up1, "netns", &n1, "type", "veth", "peer", "name", up2, "netns", &n2,
    ]);
    let x1 = |a: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &n1];
        v.extend_from_slice(a);
        sh(&v);
    };
    let x2 = |a: &[&str]| {
        let mut v = vec!["ip", "netns", "exec", &n2];
        v.extend_from_slice(a);
        sh(&v);
    };
    x1(&[
        "ip",
        "link",
        "set",
        up1,
        "address",
        "02:00:c6:12:00:01",
        "up",
    ]);
    // node2, as Flannel programs it.
    x2(&["ip", "link", "set", "lo", "up"]);
    x2(&[
        "ip",
        "link",
        "set",
        up2,
        "address",
        "02:00:c6:12:00:02",
        "up",
    ]);
    x2(&["ip", "addr", "add", "198.18.0.2/24", "dev", up2]);
    x2(&[
        "ip",
        "neigh",
        "replace",
        "198.18.0.1",
        "lladdr",
        "02:00:c6:12:00:01",
        "dev",
        up2,
        "nud",
        "permanent",
    ]);
    x2(&[
        "ip",
        "link",
        "add",
        "flannel.1",
        "address",
        "02:00:00:00:ff:02",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        "198.18.0.2",
        "dev",
        up2,
        "dstport",
        "8472",
        "nolearning",
    ]);
    x2(&["ip", "addr", "add", "10.244.2.0/32", "dev", "flannel.1"]);
    x2(&["ip", "link", "set", "flannel.1", "up"]);
    x2(&[
        "ip",
        "neigh",
        "replace",
        "10.244.1.0",
        "lladdr",
        "02:00:00:00:ff:01",
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ]);
    x2(&[
        "bridge",
        "fdb",
        "append",
        "02:00:00:00:ff:01",
        "dev",
        "flannel.1",
        "dst",
        "198.18.0.1",
    ]);
    x2(&[
        "ip",
        "route",
        "add",
        "10.244.1.0/24",
        "via",
        "10.244.1.0",
        "dev",
        "flannel.1",
        "onlink",
    ]);
    // The "pod" on node2: a local address of its kernel.
    x2(&["ip", "addr", "add", "10.244.2.7/32", "dev", "lo"]);
    x2(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
    x2(&["sysctl", "-qw", "net/ipv4/conf/flannel.1/rp_filter=0"]);

    // node1's switch encapsulates pod-a's ping.
    let snap = Snapshot::build(
        &StateFile::parse(&std::fs::read_to_string(STATE).unwrap()).unwrap(),
        1,
    )
    .unwrap();
    let mut p = Pipeline::new();
    let ping = echo(MAC_A, GW_MAC, POD_A, REMOTE_POD, 64);
    let mut buf = vec![0u8; 2048];
    buf[256..256 + ping.len()].copy_from_slice(&ping);
    let mut pkt = Packet::new(&mut buf, 256, ping.len(), PortId(1)).unwrap();
    assert_eq!(
        p.process_one(&snap, &mut pkt),
        Verdict::Transmit(PortId::UPLINK)
    );
    let ours = pkt.data().to_vec();

    // node2's kernel must take it and answer over its vxlan device.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &n1,
            "/usr/bin/python3",
            "-c",
            EXCHANGE,
            up1,
            &hex(&ours),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the kernel's vxlan did not answer our frame: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = unhex(String::from_utf8_lossy(&out.stdout).trim());
    // Its wire format is Flannel's: VNI 1 with the I flag, inner MACs the VTEPs'.
    assert_eq!(&theirs[42..50], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
    assert_eq!(&theirs[50..56], &VTEP1);

    // And the switch must take the kernel's frame: decapsulate and deliver to pod-a.
    let mut buf = vec![0u8; 2048];
    buf[256..256 + theirs.len()].copy_from_slice(&theirs);
    let mut pkt = Packet::new(&mut buf, 256, theirs.len(), PortId::UPLINK).unwrap();
    assert_eq!(p.process_one(&snap, &mut pkt), Verdict::Transmit(PortId(1)));
    let reply = pkt.data();
    assert_eq!(&reply[0..6], &MAC_A);
    assert_eq!(
        (&reply[26..30], &reply[30..34]),
        (&REMOTE_POD[..], &POD_A[..])
    );
    assert_eq!(reply[34], 0, "ICMP echo reply");
    assert!(csum_ok(&reply[14..34]) && csum_ok(&reply[34..]));
}
