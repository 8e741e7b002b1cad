//! switchd's resident memory after a large state: the real daemon on node1 of the two-node
//! topology is given 8,000 Services with 80,000 endpoints through `switchctl apply` (the
//! API's Replace), then the demo's state again; within a few seconds its resident memory is
//! back within 10% of what it was before (every thread that planned the change hands back
//! what its allocator kept: `switch::alloc`), and it still forwards. Needs root.

#![allow(missing_docs)]
mod common;

use common::topo::{skip_unless_root, state, Topo};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Resident memory of `pid`, in bytes (VmRSS).
fn rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb << 10
}

/// node1's state plus `services` Services of 10 endpoints each, on nodes of their own.
fn big_state(services: usize) -> String {
    let mut s = std::fs::read_to_string(state(1)).expect("node1 state");
    let per_node = 250;
    let nodes = (services * 10).div_ceil(per_node);
    for k in 0..nodes {
        write!(
            s,
            "\n[[nodes]]\nname = \"mem-node-{k}\"\nip = \"198.19.{}.{}\"\npod_cidr = \"172.{}.{}.0/24\"\n\
             vtep_mac = \"02:01:00:00:{:02x}:{:02x}\"\nmac = \"02:02:00:00:{:02x}:{:02x}\"\n",
            k / 250,
            1 + k % 250,
            16 + k / 256,
            k % 256,
            k / 256,
            k % 256,
            k / 256,
            k % 256
        )
        .unwrap();
    }
    for i in 0..services {
        write!(
            s,
            "\n[[services]]\nname = \"mem/svc-{i}\"\ncluster_ip = \"10.100.{}.{}\"\n\
             ports = [{{ name = \"http\", protocol = \"TCP\", port = 80, target_port = 8080 }}]\n\
             endpoints = [",
            i / 256,
            i % 256
        )
        .unwrap();
        for j in 0..10 {
            let e = i * 10 + j;
            write!(
                s,
                "{{ ip = \"172.{}.{}.{}\", node = \"mem-node-{}\" }}, ",
                16 + e / per_node / 256,
                e / per_node % 256,
                2 + e % per_node,
                e / per_node
            )
            .unwrap();
        }
        s.push_str("]\n");
    }
    s
}

#[test]
fn memory_a_large_state_took_comes_back_once_it_is_gone() {
    if skip_unless_root("the memory test") {
        return;
    }
    let mut t = Topo::up(["switch", "kernel"]);
    let d = t.switchd(1, &state(1));
    let pid = t.daemons[d].child.id();
    std::thread::sleep(Duration::from_secs(1));
    let before = rss(pid);
    let big = t.dir.path().join("big.toml");
    std::fs::write(&big, big_state(8000)).expect("write the big state");
    let (code, _, err) = t.ctl(1, &["apply", "-f", big.to_str().unwrap()]);
    assert_eq!(code, 0, "the big state: {err}");
    let peak = rss(pid);
    let (code, _, err) = t.ctl(1, &["apply", "-f", state(1).to_str().unwrap()]);
    assert_eq!(code, 0, "the demo's state again: {err}");
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    assert!(
        peak > before + (30 << 20),
        "the large state took memory: {:.1} MB before, {:.1} MB with it",
        mb(before),
        mb(peak)
    );
    // Trimmed 0.5 s and 3 s after the change (the API's planning threads end after 1 s).
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut after = rss(pid);
    while after * 10 > before * 11 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        after = rss(pid);
    }
    eprintln!(
        "switchd rss: {:.1} MB before, {:.1} MB with 8,000 Services, {:.1} MB after",
        mb(before),
        mb(peak),
        mb(after)
    );
    assert!(
        after * 10 <= before * 11,
        "rss {:.1} MB 8 s after the small state, {:.1} MB before, {:.1} MB with the large one",
        mb(after),
        mb(before),
        mb(peak)
    );
    assert!(t.ping("a", "10.244.2.3", &[]), "pod-a reaches pod-d after");
}
