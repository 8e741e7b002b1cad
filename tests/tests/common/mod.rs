//! Shared helpers for the integration tests: frame builders (etherparse), pcap writing, an
//! RFC 1071 checksum written again here so that checks do not trust the code under test, and
//! tshark.

#![allow(dead_code, missing_docs, clippy::too_many_arguments)]

use etherparse::PacketBuilder;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::DataLink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const STATE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/node1.toml");
pub const POD_A: [u8; 4] = [10, 244, 1, 2];
pub const POD_B: [u8; 4] = [10, 244, 1, 3];
pub const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
pub const MAC_B: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 3];
pub const GW: [u8; 4] = [10, 244, 1, 1];
pub const GW_MAC: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 1];
pub const REMOTE_POD: [u8; 4] = [10, 244, 2, 7];
pub const NODE1: [u8; 4] = [198, 18, 0, 1];
pub const NODE2: [u8; 4] = [198, 18, 0, 2];
pub const NODE1_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 1];
pub const NODE2_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 2];
pub const VTEP1: [u8; 6] = [2, 0, 0, 0, 0xff, 1];
pub const VTEP2: [u8; 6] = [2, 0, 0, 0, 0xff, 2];

/// RFC 1071, independent of flowtable's implementation: true if `data` sums to 0xffff.
pub fn csum_ok(data: &[u8]) -> bool {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        s += u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s == 0xffff
}

pub fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

pub fn tcp_syn(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, GW_MAC)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut v, &[])
        .unwrap();
    v
}

pub fn echo(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .icmpv4_echo_request(0x77, 1)
        .write(&mut v, b"0123456789abcdef")
        .unwrap();
    v
}

pub fn arp_request(sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&sha);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa);
    f.resize(60, 0);
    f
}

/// A VXLAN frame from node2 to node1 carrying `inner`.
pub fn vxlan_from_node2(inner: &[u8], vni: u32) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend_from_slice(inner);
    udp(
        NODE2_MAC, NODE1_MAC, NODE2, NODE1, 64, 50123, 8472, &payload,
    )
}

pub fn write_pcap(path: &Path, frames: &[(u64, Vec<u8>)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = PcapWriter::with_header(
        f,
        PcapHeader {
            datalink: DataLink::ETHERNET,
            ..Default::default()
        },
    )
    .unwrap();
    for (ms, d) in frames {
        w.write_packet(&PcapPacket::new(
            Duration::from_millis(*ms),
            d.len() as u32,
            d,
        ))
        .unwrap();
    }
}

pub fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let mut r = PcapReader::new(std::fs::File::open(path).unwrap()).unwrap();
    assert_eq!(r.header().datalink, DataLink::ETHERNET);
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        assert_eq!(p.orig_len as usize, p.data.len());
        out.push(p.data.into_owned());
    }
    out
}

/// True if tshark must be present (CI installs it; locally its checks are skipped with a note).
pub fn tshark() -> Option<PathBuf> {
    let found = Command::new("tshark")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "tshark is required in CI (the test command installs it)"
        );
        eprintln!("note: tshark not installed; skipping its checks");
        return None;
    }
    Some(PathBuf::from("tshark"))
}

/// Runs tshark over a file with checksum validation on; returns the verbose dissection.
/// Panics if tshark reports anything on stderr (other than running as root) or finds
/// malformed packets or bad checksums.
pub fn tshark_verbose(tshark: &Path, file: &Path) -> String {
    let out = Command::new(tshark)
        .args(["-n", "-r"])
        .arg(file)
        .args([
            "-d",
            "udp.port==8472,vxlan",
            // Payloads are random bytes: on port 8080 Wireshark's HTTP dissector now and
            // then reads one as a malformed request line. We check our headers, not theirs.
            "--disable-protocol",
            "http",
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
            "-o",
            "tcp.check_checksum:TRUE",
            "-V",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "tshark failed on {}", file.display());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("Running as user") && !l.trim().is_empty())
        .collect();
    assert!(
        complaints.is_empty(),
        "tshark warned on {}: {complaints:?}",
        file.display()
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for bad in [
        "Malformed",
        "[Checksum Status: Bad]",
        "Bad checksum",
        "incorrect",
    ] {
        if let Some(at) = text.find(bad) {
            let from = text[..at].rfind("\nFrame ").unwrap_or(0);
            panic!(
                "tshark found '{bad}' in {}:\n{}",
                file.display(),
                &text[from..(at + 200).min(text.len())]
            );
        }
    }
    text
}

/// tshark `-T fields` output, one line per frame, fields separated by tabs.
pub fn tshark_fields(tshark: &Path, file: &Path, fields: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(tshark);
    cmd.args(["-n", "-r"]).arg(file).args([
        "-d",
        "udp.port==8472,vxlan",
        "-o",
        "ip.check_checksum:TRUE",
        "-T",
        "fields",
    ]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
pub mod apiserver;
pub mod topo;
