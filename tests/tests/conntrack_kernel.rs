//! Differential test of the connection tracker against the kernel's nf_conntrack: the same
//! TCP segment sequences (tests/data/ct_scenarios.json: handshake, data, out-of-window data
//! and RST, in-window RSTs, FIN/ACK closing, SYN reuse in TIME_WAIT, retransmitted SYN-ACKs,
//! stray segments, window scaling) go through a namespace whose kernel forwards them with
//! `--ctstate INVALID` counted (tests/tools/ctdiff.py), and through the pipeline as Service
//! traffic. Every segment must get the same verdict, and every scenario end in the same state
//! (`conntrack -L`'s).
//!
//! Needs root (namespaces, iptables, conntrack). In CI it runs as root and is never skipped.

#![allow(missing_docs)]

mod common;

use common::topo::{root_dir, sh, skip_unless_root, unique_prefix, DelNs};
use etherparse::{PacketBuilder, TcpOptionElement};
use flowtable::conntrack::FlowKey;
use flowtable::{Packet, Pipeline, PortId, Snapshot, StateFile, Verdict};
use serde_json::Value;
use std::process::Command;

const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/ct_scenarios.json");
const CLIENT: [u8; 4] = [10, 244, 1, 2];
const BACKEND: [u8; 4] = [10, 244, 1, 3];
const VIP: [u8; 4] = [10, 96, 0, 10];

fn number(v: &Value) -> u32 {
    let base: u64 = match v[0].as_str().unwrap() {
        "c" => 1_000_000,
        "s" => 3_000_000_000,
        _ => 0,
    };
    ((base + v[1].as_u64().unwrap()) % (1 << 32)) as u32
}

/// The segment as the pipeline sees it: a client of web's ClusterIP, or its one backend.
fn frame(seg: &Value, sport: u16) -> (PortId, Vec<u8>) {
    let o = seg["dir"] == "o";
    let (smac, src, dst, sp, dp, port) = if o {
        (common::MAC_A, CLIENT, VIP, sport, 80, PortId(1))
    } else {
        (common::MAC_B, BACKEND, CLIENT, 8080, sport, PortId(2))
    };
    let win = seg["win"].as_u64().unwrap_or(64240) as u16;
    let mut b = PacketBuilder::ethernet2(smac, common::GW_MAC)
        .ipv4(src, dst, 64)
        .tcp(sp, dp, number(&seg["seq"]), win);
    let mut opts = Vec::new();
    if let Some(w) = seg["wscale"].as_u64() {
        opts.push(TcpOptionElement::WindowScale(w as u8));
    }
    if seg["sackperm"] == true {
        opts.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
    }
    if let Some(blocks) = seg["sack"].as_array() {
        let b: Vec<(u32, u32)> = blocks
            .iter()
            .map(|x| (number(&x[0]), number(&x[1])))
            .collect();
        let mut rest = [None; 3];
        for (i, x) in b.iter().skip(1).enumerate() {
            rest[i] = Some(*x);
        }
        opts.push(TcpOptionElement::SelectiveAcknowledgement(b[0], rest));
    }
    if !opts.is_empty() {
        b = b.options(&opts).unwrap();
    }
    let flags = seg["flags"].as_str().unwrap();
    for c in flags.chars() {
        b = match c {
            'S' => b.syn(),
            'A' => b.ack(number(&seg["ack"])),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            other => panic!("flag {other}"),
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, &vec![b'x'; seg["len"].as_u64().unwrap() as usize])
        .unwrap();
    (port, v)
}

/// web with pod-b as its only endpoint.
fn snapshot() -> Snapshot {
    let text = std::fs::read_to_string(common::STATE).unwrap();
    let text = text.replace("  { ip = \"10.244.2.7\", node = \"node2\" },\n]", "]");
    Snapshot::build(&StateFile::parse(&text).unwrap(), 1).unwrap()
}

/// The pipeline's verdicts (true: invalid) and final state for one scenario.
fn ours(snap: &Snapshot, sc: &Value, sport: u16) -> (Vec<bool>, String) {
    let mut p = Pipeline::new();
    let mut verdicts = Vec::new();
    for seg in sc["segments"].as_array().unwrap() {
        let (port, f) = frame(seg, sport);
        let mut buf = vec![0u8; 2048];
        buf[256..256 + f.len()].copy_from_slice(&f);
        let mut pkt = Packet::new(&mut buf, 256, f.len(), port).unwrap();
        verdicts.push(match p.process_one(snap, &mut pkt) {
            Verdict::Transmit(_) => false,
            Verdict::Drop(r) if r.name().starts_with("ct_invalid") => true,
            other => panic!("{}: {seg} got {other:?}", sc["name"]),
        });
    }
    let key = FlowKey {
        src: CLIENT.into(),
        dst: VIP.into(),
        sport,
        dport: 80,
        proto: 6,
    };
    let state = p
        .conntrack()
        .lookup(&key)
        .map(|h| h.state.name().to_uppercase())
        .unwrap_or_default();
    (verdicts, state)
}

/// Client, server and a forwarding router with nf_conntrack, in namespaces of their own.
fn kernel_verdicts() -> (Vec<DelNs>, Value) {
    let p = unique_prefix();
    let (c, s, k) = (format!("{p}-c"), format!("{p}-s"), format!("{p}-k"));
    let mut guards = Vec::new();
    for ns in [&c, &s, &k] {
        sh(&["ip", "netns", "add", ns]);
        guards.push(DelNs(ns.clone()));
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    for (end, peer, net) in [(&c, "toc", "0"), (&s, "tos", "1")] {
        sh(&[
            "ip", "link", "add", "eth0", "netns", end, "type", "veth", "peer", "name", peer,
            "netns", &k,
        ]);
        sh(&[
            "ip",
            "-n",
            end,
            "addr",
            "add",
            &format!("10.77.{net}.2/24"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", end, "link", "set", "eth0", "up"]);
        sh(&[
            "ip",
            "-n",
            end,
            "route",
            "add",
            "default",
            "via",
            &format!("10.77.{net}.1"),
        ]);
        sh(&[
            "ip",
            "-n",
            &k,
            "addr",
            "add",
            &format!("10.77.{net}.1/24"),
            "dev",
            peer,
        ]);
        sh(&["ip", "-n", &k, "link", "set", peer, "up"]);
        // The ends never answer: the segments are the test's alone.
        sh(&[
            "ip", "netns", "exec", end, "iptables", "-A", "INPUT", "-p", "tcp", "-j", "DROP",
        ]);
    }
    sh(&[
        "ip",
        "netns",
        "exec",
        &k,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &k,
        "iptables",
        "-A",
        "FORWARD",
        "-m",
        "conntrack",
        "--ctstate",
        "INVALID",
        "-j",
        "DROP",
    ]);
    let tool = root_dir().join("tests/tools/ctdiff.py");
    let out = Command::new("python3")
        .arg(tool)
        .args([SCENARIOS, &c, &s, &k])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctdiff.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (guards, v)
}

#[test]
fn same_verdicts_and_states_as_nf_conntrack() {
    if skip_unless_root("the nf_conntrack differential test") {
        return;
    }
    let (_guards, kernel) = kernel_verdicts();
    eprintln!("kernel: {kernel}");
    let file: Value = serde_json::from_str(&std::fs::read_to_string(SCENARIOS).unwrap()).unwrap();
    let snap = snapshot();
    let mut invalid_seen = 0;
    let mut differ = Vec::new();
    for (i, sc) in file["scenarios"].as_array().unwrap().iter().enumerate() {
        let name = sc["name"].as_str().unwrap();
        let k = &kernel[name];
        let k_verdicts: Vec<bool> = k["invalid"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_bool().unwrap())
            .collect();
        let k_final = k["final"].as_str().unwrap().to_string();
        assert_eq!(
            k_final, sc["final"],
            "{name}: the kernel ended in {k_final}, the scenario file says {}",
            sc["final"]
        );
        invalid_seen += k_verdicts.iter().filter(|v| **v).count();
        let (v, state) = ours(&snap, sc, 40000 + i as u16);
        if v != k_verdicts || state != k_final {
            differ.push(format!(
                "{name}: kernel invalid={k_verdicts:?} final={k_final}, \
                 ours invalid={v:?} final={state}"
            ));
        }
    }
    assert!(
        invalid_seen >= 10,
        "the scenarios exercise invalid segments ({invalid_seen})"
    );
    assert!(differ.is_empty(), "differences:\n{}", differ.join("\n"));
}
