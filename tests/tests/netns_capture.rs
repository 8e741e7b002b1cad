//! `switchctl capture` and `switchctl monitor` through the real daemon on the two-node
//! topology. A capture of a ping and a 1 MB TCP transfer across nodes is read by tshark:
//! the uplink's frames are VXLAN with the inner TCP intact (checksums good), the pod port's
//! are the pod's own, and every frame switchd counted on those ports is in the file or
//! counted as lost. A filtered capture piped into `tshark -r -` holds only matching frames;
//! bad requests are refused naming the field. A monitor shows a frame a pod sends with a
//! forged source as a `spoofed_source` drop with its 5-tuple, and a ClusterIP connection's
//! translation as a trace. Needs root; tshark and scapy come with scripts/install-deps.

#![allow(missing_docs)]
mod common;

use common::topo::{skip_unless_root, state, switchd_bin, Topo};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `switchctl ARGS` against node1's daemon with stdout to `out` (or piped when
/// `None`) and stderr to `err`.
fn switchctl(t: &Topo, args: &[&str], out: Option<&Path>, err: &Path) -> Child {
    let mut c = Command::new(switchd_bin().with_file_name("switchctl"));
    c.arg("--socket")
        .arg(t.dir.path().join("n1.sock"))
        .args(args)
        .stderr(std::fs::File::create(err).expect("stderr file"));
    match out {
        Some(p) => c.stdout(std::fs::File::create(p).expect("stdout file")),
        None => c.stdout(Stdio::piped()),
    };
    c.spawn().expect("start switchctl")
}

/// Waits until `file` holds `needle` (a capture has written its interface blocks once its
/// session is open).
fn wait_for(file: &Path, needle: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = std::fs::read(file).unwrap_or_default();
        if b.windows(needle.len()).any(|w| w == needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {needle:?}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a switchctl with SIGINT (as Ctrl-C) and returns its stderr.
fn interrupt(mut c: Child, err: &Path) -> String {
    let pid = c.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let st = c.wait().unwrap();
    let text = std::fs::read_to_string(err).unwrap_or_default();
    assert!(st.success(), "switchctl ended with {st}: {text}");
    text
}

/// "N frames captured, M lost" from switchctl's summary.
fn summary(err: &str) -> (u64, u64) {
    let words: Vec<&str> = err.split_whitespace().collect();
    let at = |w: &str, back: usize| -> u64 {
        let i = words
            .iter()
            .position(|x| x.trim_end_matches([',', ';']) == w)
            .unwrap_or_else(|| panic!("no '{w}' in {err}"));
        words[i - back]
            .parse()
            .unwrap_or_else(|e| panic!("{e}: {err}"))
    };
    (at("captured", 2), at("lost", 1))
}

/// tshark's fields of every frame in `file`, tab-separated, VXLAN decoded on 8472 and
/// every checksum verified.
fn dissect(file: &str, fields: &[&str]) -> Vec<Vec<String>> {
    let mut args = vec![
        "-r",
        file,
        "-d",
        "udp.port==8472,vxlan",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ];
    for f in fields {
        args.extend(["-e", f]);
    }
    let out = Command::new("tshark")
        .args(&args)
        .output()
        .expect("tshark (scripts/install-deps installs it)");
    assert!(
        out.status.success(),
        "tshark -r {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

fn port_counter(s: &serde_json::Value, port: &str, dir: &str) -> u64 {
    s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == port)
        .unwrap_or_else(|| panic!("no port {port}: {s}"))[dir]
        .as_u64()
        .unwrap()
}

#[test]
fn a_capture_across_nodes_is_read_by_tshark_and_holds_every_counted_frame() {
    if skip_unless_root("the capture namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd(1, &state(1));
    t.switchd(2, &state(2));
    t.serve("d", "tcp", 8080);
    assert!(t.ping("a", "10.244.2.3", &[]), "pod-a reaches pod-d");

    let file = t.dir.path().join("cap.pcapng");
    let err = t.dir.path().join("cap.err");
    let cap = switchctl(
        &t,
        &[
            "capture",
            "--port",
            "uplink",
            "--port",
            "veth-a",
            "-w",
            file.to_str().unwrap(),
        ],
        None,
        &err,
    );
    wait_for(&file, b"veth-a");
    let s0 = t.stats(1);
    assert!(t.ping("a", "10.244.2.3", &["-c", "3"]));
    t.echo("a", "tcp", "10.244.2.3", 8080, 1_000_000);
    let s1 = t.stats(1);
    let text = interrupt(cap, &err);
    let (captured, lost) = summary(&text);

    let rows = dissect(
        file.to_str().unwrap(),
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "eth.type",
            "vxlan.vni",
            "ip.src",
            "ip.dst",
            "ip.checksum.status",
            "udp.checksum.status",
            "tcp.checksum.status",
            "icmp.checksum.status",
            "tcp.len",
        ],
    );
    assert_eq!(rows.len() as u64, captured, "{text}");
    // Every frame switchd counted on the two ports meanwhile is in the file or lost; a
    // stray ARP before the first or after the last read of the counters may be extra.
    let mut counted = 0;
    let mut by: HashMap<(String, String), u64> = HashMap::new();
    for r in &rows {
        *by.entry((r[0].clone(), r[1].clone())).or_default() += 1;
    }
    for port in ["uplink", "veth-a"] {
        for (dir, flag) in [("rx", "0x00000001"), ("tx", "0x00000002")] {
            let n = port_counter(&s1, port, dir) - port_counter(&s0, port, dir);
            counted += n;
            let got = by
                .get(&(port.to_string(), flag.to_string()))
                .copied()
                .unwrap_or(0);
            if lost == 0 {
                let arp = rows
                    .iter()
                    .filter(|r| r[0] == port && r[1] == flag && r[2] == "0x0806")
                    .count() as u64;
                assert!(
                    got >= n && got <= n + arp,
                    "{port} {dir}: switchd counted {n}, the capture holds {got} ({arp} ARP): {by:?}"
                );
            }
        }
    }
    let arp = rows.iter().filter(|r| r[2] == "0x0806").count() as u64;
    assert!(
        captured + lost >= counted && captured + lost <= counted + arp,
        "counted {counted}, captured {captured} + lost {lost} ({arp} ARP): {text}"
    );
    assert!(
        counted > 1400,
        "a 1 MB echo is over 700 segments each way: {counted}"
    );

    // The uplink carries the overlay: VXLAN VNI 1 between the nodes around the pods'
    // packets; the pod port carries them bare. Every checksum tshark can check is good
    // (1), none bad (0), except the TCP and UDP ones of what the pod sent: its kernel
    // offloads them (CHECKSUM_PARTIAL, as tcpdump on the sender shows) and the switch
    // completes them, so the same packet leaves on the uplink with a good one.
    let mut payload = 0u64;
    for r in &rows {
        if r[2] == "0x0806" {
            continue;
        }
        let from_pod = r[0] == "veth-a" && r[1] == "0x00000001";
        for (i, what) in [(6, "ip"), (7, "udp"), (8, "tcp"), (9, "icmp")] {
            if from_pod && (what == "tcp" || what == "udp") && r[i] == "0" {
                continue;
            }
            assert!(
                !r[i].split(',').any(|s| s == "0"),
                "a bad {what} checksum: {r:?}"
            );
        }
        let (srcs, dsts): (Vec<&str>, Vec<&str>) =
            (r[4].split(',').collect(), r[5].split(',').collect());
        if r[0] == "uplink" {
            assert_eq!(r[3], "1", "VXLAN VNI 1: {r:?}");
            assert_eq!(srcs.len(), 2, "outer and inner IPv4: {r:?}");
            let outer = [srcs[0], dsts[0]];
            assert!(
                outer == ["198.18.0.1", "198.18.0.2"] || outer == ["198.18.0.2", "198.18.0.1"],
                "{r:?}"
            );
            assert!(
                r[8].is_empty() || r[8] == "1",
                "inner TCP checksum good: {r:?}"
            );
        } else {
            assert!(r[3].is_empty(), "no VXLAN on the pod port: {r:?}");
            let pair = [srcs[0], dsts[0]];
            assert!(
                pair == ["10.244.1.2", "10.244.2.3"] || pair == ["10.244.2.3", "10.244.1.2"],
                "{r:?}"
            );
            if r[1] == "0x00000001" && !r[10].is_empty() {
                payload += r[10].parse::<u64>().unwrap();
            }
        }
    }
    if lost == 0 {
        assert!(payload >= 1_000_000, "pod-a sent the whole 1 MB: {payload}");
    }
    assert!(
        rows.iter().any(|r| r[9] == "1"),
        "the pings are in the capture with good ICMP checksums"
    );

    // A filter keeps only what matches (the inner packet of a VXLAN frame counts); the
    // stream pipes into tshark.
    t.serve("b", "udp", 5353);
    let err2 = t.dir.path().join("cap2.err");
    let mut cap = switchctl(
        &t,
        &[
            "capture",
            "--filter",
            "host",
            "10.244.2.3",
            "tcp",
            "port",
            "8080",
            "-c",
            "40",
            "-w",
            "-",
        ],
        None,
        &err2,
    );
    let piped = t.dir.path().join("piped.pcapng");
    let mut tshark = Command::new("tshark")
        .args(["-r", "-", "-w", piped.to_str().unwrap()])
        .stdin(cap.stdout.take().unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("tshark");
    std::thread::sleep(Duration::from_millis(500));
    assert!(t.ping("a", "10.244.2.3", &[]));
    t.echo("a", "udp", "10.244.1.3", 5353, 100);
    t.echo("a", "tcp", "10.244.2.3", 8080, 20_000);
    let st = cap.wait().unwrap();
    let text = std::fs::read_to_string(&err2).unwrap();
    assert!(st.success(), "{text}");
    assert!(tshark.wait().unwrap().success(), "tshark read the stream");
    let (captured, _) = summary(&text);
    assert_eq!(captured, 40, "{text}");
    let rows = dissect(
        piped.to_str().unwrap(),
        &[
            "ip.src",
            "ip.dst",
            "tcp.srcport",
            "tcp.dstport",
            "frame.interface_name",
        ],
    );
    assert_eq!(rows.len(), 40, "tshark read every frame of the pipe");
    for r in &rows {
        // The last address pair and the TCP ports are the innermost packet's.
        let (src, dst) = (
            r[0].rsplit(',').next().unwrap(),
            r[1].rsplit(',').next().unwrap(),
        );
        assert!(src == "10.244.2.3" || dst == "10.244.2.3", "{r:?}");
        assert!(r[2] == "8080" || r[3] == "8080", "{r:?}");
    }
    assert!(rows.iter().any(|r| r[4] == "uplink") && rows.iter().any(|r| r[4] == "veth-a"));

    // Bad requests are refused, naming the field.
    for (args, field) in [
        (vec!["--port", "nope"], "ports[0]"),
        (vec!["--filter", "host", "10.0.0.300"], "filter"),
        (vec!["--filter", "portt", "80"], "filter"),
    ] {
        let mut a = vec!["capture", "-c", "1", "-w", "/dev/null"];
        a.extend(args);
        let (rc, _, err) = t.ctl(1, &a);
        assert_ne!(rc, 0, "{a:?} was refused");
        assert!(err.contains(field), "{a:?}: {err}");
    }
    let (rc, _, err) = t.ctl(1, &["stats"]);
    assert_eq!(rc, 0, "switchd still serves: {err}");
}

#[test]
fn a_monitor_shows_a_spoofed_frame_and_a_translation() {
    if skip_unless_root("the monitor namespace test") {
        return;
    }
    let mut t = Topo::up(["switch", "switch"]);
    t.switchd(1, &state(1));
    t.switchd(2, &state(2));
    t.serve("b", "tcp", 8080);
    t.serve("d", "tcp", 8080);
    assert!(t.ping("a", "10.244.2.3", &[]));

    let out = t.dir.path().join("mon.json");
    let err = t.dir.path().join("mon.err");
    let mon = switchctl(
        &t,
        &["monitor", "--type", "all", "-o", "json"],
        Some(&out),
        &err,
    );
    std::thread::sleep(Duration::from_millis(500));
    // A frame from pod-a with pod-a's MAC but another pod's address.
    let send = "from scapy.all import *\n\
        sendp(Ether(dst='02:00:0a:f4:01:01')/IP(src='10.244.1.99',dst='10.244.2.3')\
        /UDP(sport=4242,dport=5353)/b'x', iface='eth0', verbose=0)";
    t.ok("a", &["/usr/bin/python3", "-c", send]);
    t.echo("a", "tcp", "10.96.0.10", 80, 100);
    std::thread::sleep(Duration::from_millis(500));
    let text = interrupt(mon, &err);
    let events: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!text.contains(" 0 events"), "{text}");
    let spoofed = events
        .iter()
        .find(|e| e["reason"] == "spoofed_source")
        .unwrap_or_else(|| panic!("no spoofed_source drop in {events:?}"));
    assert_eq!(spoofed["type"], "drop");
    assert_eq!(spoofed["port"], "veth-a");
    assert_eq!(spoofed["generation"], 1);
    assert_eq!(
        spoofed["before"],
        serde_json::json!({"protocol": "udp", "source": "10.244.1.99",
            "destination": "10.244.2.3", "source_port": 4242, "destination_port": 5353})
    );
    // The ClusterIP connection's first packet, before and after DNAT, to either endpoint.
    let dnat = events
        .iter()
        .find(|e| {
            e["type"] == "trace"
                && e["before"]["destination"] == "10.96.0.10"
                && e["before"]["protocol"] == "tcp"
        })
        .unwrap_or_else(|| panic!("no trace of the ClusterIP connection in {events:?}"));
    assert_eq!(dnat["port"], "veth-a");
    assert_eq!(dnat["before"]["destination_port"], 80);
    assert_eq!(dnat["after"]["destination_port"], 8080);
    let to = dnat["after"]["destination"].as_str().unwrap();
    match to {
        "10.244.1.3" => assert_eq!(dnat["to_port"], "veth-b", "{dnat}"),
        "10.244.2.3" => {
            assert_eq!(dnat["to_port"], "uplink", "{dnat}");
            assert_eq!(dnat["after_tunnel"]["destination"], "198.18.0.2", "{dnat}");
        }
        _ => panic!("DNAT to an endpoint of web: {dnat}"),
    }
}
