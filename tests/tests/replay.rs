//! pcap replay through the real pipeline: inputs built with etherparse, outputs decoded field
#![allow(clippy::too_many_arguments)]
#![allow(missing_docs)]
//! by field with etherparse and an independent checksum, and dissected by tshark.

mod common;

use common::*;
use etherparse::{Ethernet2Header, Icmpv4Type, NetSlice, SlicedPacket, TransportSlice};
use std::path::Path;
use switch::replay::{self, Input};

fn ipv4<'a>(p: &'a SlicedPacket<'a>) -> &'a etherparse::Ipv4Slice<'a> {
    match p.net.as_ref().unwrap() {
        NetSlice::Ipv4(i) => i,
        _ => panic!("not IPv4"),
    }
}

struct Run {
    dir: tempfile::TempDir,
    report: replay::Report,
}

impl Run {
    fn out(&self, name: &str) -> Vec<Vec<u8>> {
        read_pcap(&self.dir.path().join(name))
    }
    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

fn replay_inputs(pod_a: &[(u64, Vec<u8>)], uplink: &[(u64, Vec<u8>)]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("in-pod-a.pcap");
    let u = dir.path().join("in-uplink.pcap");
    write_pcap(&a, pod_a);
    write_pcap(&u, uplink);
    let out = dir.path().join("out");
    let inputs = [
        Input {
            port: "default/pod-a".into(),
            path: a,
        },
        Input {
            port: "uplink".into(),
            path: u,
        },
    ];
    let report = replay::run(Path::new(STATE), &inputs, &out).unwrap();
    let dir2 = dir;
    // Keep inputs and outputs together in one temp dir.
    Run {
        report,
        dir: move_out(dir2),
    }
}

fn move_out(d: tempfile::TempDir) -> tempfile::TempDir {
    // Outputs live in d/out; tests read them through this helper.
    let out = d.path().join("out");
    for e in std::fs::read_dir(&out).unwrap() {
        let e = e.unwrap();
        std::fs::rename(e.path(), d.path().join(e.file_name())).unwrap();
    }
    d
}

#[test]
fn every_verdict_replayed_and_decoded() {
    let pod_a = vec![
        (1, arp_request(MAC_A, POD_A, GW)),
        (2, echo(MAC_A, GW_MAC, POD_A, GW, 64)),
        (
            3,
            udp(MAC_A, GW_MAC, POD_A, POD_B, 64, 4000, 5000, b"local hello"),
        ),
        (4, tcp_syn(MAC_A, POD_A, REMOTE_POD, 45000, 80)),
        (
            5,
            udp(MAC_A, GW_MAC, POD_A, POD_B, 1, 33434, 33434, b"traceroute"),
        ),
        (6, udp(MAC_A, GW_MAC, POD_B, REMOTE_POD, 64, 1, 2, b"spoof")),
        (7, {
            let mut f = udp(MAC_A, GW_MAC, POD_A, POD_B, 64, 1, 2, b"v6");
            f[12..14].copy_from_slice(&[0x86, 0xdd]);
            f
        }),
        (
            8,
            udp(MAC_A, GW_MAC, POD_A, NODE1, 64, 47001, 47002, b"to node"),
        ),
    ];
    let inner = udp(
        VTEP2,
        VTEP1,
        REMOTE_POD,
        POD_B,
        63,
        7000,
        8000,
        b"from node2",
    );
    let uplink = vec![
        (9, vxlan_from_node2(&inner, 1)),
        (10, vxlan_from_node2(&inner, 42)),
        (
            11,
            udp(
                NODE2_MAC,
                NODE1_MAC,
                NODE2,
                NODE1,
                64,
                47003,
                47004,
                b"not for us",
            ),
        ),
        (12, {
            let mut a = arp_request(NODE2_MAC, NODE2, NODE1);
            a[0..6].copy_from_slice(&[0xff; 6]);
            a
        }),
    ];
    let run = replay_inputs(&pod_a, &uplink);
    let r = &run.report;

    // Counters: everything accounted for.
    assert_eq!(r.received, 12);
    assert_eq!(r.actions["arp_replied"], 1);
    assert_eq!(r.actions["echo_replied"], 1);
    assert_eq!(r.actions["delivered_local"], 2);
    assert_eq!(r.actions["encapsulated"], 1);
    assert_eq!(r.actions["decapsulated"], 1);
    assert_eq!(r.actions["icmp_error_sent"], 1);
    assert_eq!(r.actions["to_kernel"], 3);
    assert_eq!(r.drops["spoofed_source"], 1);
    assert_eq!(r.drops["ipv6_unsupported"], 1);
    assert_eq!(r.drops["vxlan_bad_vni"], 1);
    assert_eq!(r.dropped, 3);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.path("counters.json")).unwrap()).unwrap();
    assert_eq!(json["drops"]["vxlan_bad_vni"], 1);
    assert_eq!(json["output"]["uplink"], 1);

    // pod-a's port: ARP reply, echo reply, time exceeded, in input order.
    let a = run.out("veth-a.pcap");
    assert_eq!(a.len(), 3);
    let (eth, _) = Ethernet2Header::from_slice(&a[0]).unwrap();
    assert_eq!((eth.source, eth.destination), (GW_MAC, MAC_A));
    let arp = etherparse::ArpPacketSlice::from_slice(&a[0][14..]).unwrap();
    assert_eq!(arp.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(
        (arp.sender_hw_addr(), arp.sender_protocol_addr()),
        (&GW_MAC[..], &GW[..])
    );
    assert_eq!(
        (arp.target_hw_addr(), arp.target_protocol_addr()),
        (&MAC_A[..], &POD_A[..])
    );

    let p = SlicedPacket::from_ethernet(&a[1]).unwrap();
    let ip = ipv4(&p);
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (GW, POD_A)
    );
    assert!(csum_ok(ip.header().slice()));
    let TransportSlice::Icmpv4(icmp) = p.transport.as_ref().unwrap() else {
        panic!()
    };
    assert!(matches!(icmp.icmp_type(), Icmpv4Type::EchoReply(e) if e.id == 0x77 && e.seq == 1));
    assert!(csum_ok(icmp.slice()));
    assert_eq!(icmp.payload(), b"0123456789abcdef");

    let p = SlicedPacket::from_ethernet(&a[2]).unwrap();
    let ip = ipv4(&p);
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (GW, POD_A)
    );
    assert!(csum_ok(ip.header().slice()));
    let TransportSlice::Icmpv4(icmp) = p.transport.as_ref().unwrap() else {
        panic!()
    };
    assert!(matches!(icmp.icmp_type(), Icmpv4Type::TimeExceeded(_)));
    assert!(csum_ok(icmp.slice()));
    assert_eq!(
        icmp.payload(),
        &pod_a[4].1[14..],
        "quotes the whole original datagram"
    );

    // pod-b's port: the local UDP and the decapsulated one, TTL decremented, no NAT.
    let b = run.out("veth-b.pcap");
    assert_eq!(b.len(), 2);
    for (frame, src, ttl, payload) in [
        (&b[0], POD_A, 63, &b"local hello"[..]),
        (&b[1], REMOTE_POD, 62, &b"from node2"[..]),
    ] {
        let (eth, _) = Ethernet2Header::from_slice(frame).unwrap();
        assert_eq!((eth.source, eth.destination), (GW_MAC, MAC_B));
        let p = SlicedPacket::from_ethernet(frame).unwrap();
        let ip = ipv4(&p);
        assert_eq!(
            (
                ip.header().source(),
                ip.header().destination(),
                ip.header().ttl()
            ),
            (src, POD_B, ttl)
        );
        assert!(csum_ok(ip.header().slice()));
        let TransportSlice::Udp(u) = p.transport.as_ref().unwrap() else {
            panic!()
        };
        assert_eq!(u.payload(), payload);
        // The UDP checksum the sender computed is still valid (nothing it covers changed).
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&POD_B);
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(u.slice().len() as u16).to_be_bytes());
        pseudo.extend_from_slice(u.slice());
        assert!(csum_ok(&pseudo));
    }

    // The uplink: one VXLAN frame to node2 carrying the TCP SYN.
    let up = run.out("uplink.pcap");
    assert_eq!(up.len(), 1);
    let (eth, _) = Ethernet2Header::from_slice(&up[0]).unwrap();
    assert_eq!((eth.source, eth.destination), (NODE1_MAC, NODE2_MAC));
    let p = SlicedPacket::from_ethernet(&up[0]).unwrap();
    let ip = ipv4(&p);
    assert_eq!(
        (
            ip.header().source(),
            ip.header().destination(),
            ip.header().ttl()
        ),
        (NODE1, NODE2, 64)
    );
    assert!(csum_ok(ip.header().slice()));
    let TransportSlice::Udp(u) = p.transport.as_ref().unwrap() else {
        panic!()
    };
    assert_eq!(u.destination_port(), 8472);
    assert_eq!(u.checksum(), 0);
    let vx = u.payload();
    assert_eq!(vx[0], 0x08);
    assert_eq!(u32::from_be_bytes([0, vx[4], vx[5], vx[6]]), 1, "VNI");
    let (ieth, _) = Ethernet2Header::from_slice(&vx[8..]).unwrap();
    assert_eq!((ieth.source, ieth.destination), (VTEP1, VTEP2));
    let inner_p = SlicedPacket::from_ethernet(&vx[8..]).unwrap();
    let iip = ipv4(&inner_p);
    assert_eq!(
        (
            iip.header().source(),
            iip.header().destination(),
            iip.header().ttl()
        ),
        (POD_A, REMOTE_POD, 63)
    );
    assert!(csum_ok(iip.header().slice()));
    let TransportSlice::Tcp(t) = inner_p.transport.as_ref().unwrap() else {
        panic!()
    };
    assert!(t.syn() && !t.ack());
    assert_eq!(
        &vx[8 + 14..],
        &pod_a[3].1[14..]
            .iter()
            .enumerate()
            .map(|(i, b)| match i {
                8 => 63,
                10 | 11 => iip.header().slice()[i],
                _ => *b,
            })
            .collect::<Vec<u8>>()[..],
        "inner packet is the original but for TTL and its checksum"
    );

    // The kernel: the node's own traffic, unchanged.
    let k = run.out("kernel.pcap");
    assert_eq!(
        k,
        vec![pod_a[7].1.clone(), uplink[2].1.clone(), uplink[3].1.clone()]
    );

    // tshark agrees: no malformed frames, all checksums good, and the VXLAN fields.
    if let Some(ts) = tshark() {
        for f in ["veth-a.pcap", "veth-b.pcap", "uplink.pcap", "kernel.pcap"] {
            tshark_verbose(&ts, &run.path(f));
        }
        let text = tshark_verbose(&ts, &run.path("uplink.pcap"));
        assert!(
            text.contains("Virtual eXtensible Local Area Network"),
            "{text}"
        );
        let fields = tshark_fields(
            &ts,
            &run.path("uplink.pcap"),
            &[
                "vxlan.vni",
                "ip.src",
                "ip.dst",
                "tcp.dstport",
                "ip.checksum.status",
            ],
        );
        assert_eq!(
            fields,
            vec!["1\t198.18.0.1,10.244.1.2\t198.18.0.2,10.244.2.7\t80\t1,1"]
        );
        let fields = tshark_fields(
            &ts,
            &run.path("veth-a.pcap"),
            &["arp.opcode", "icmp.type", "icmp.checksum.status"],
        );
        assert_eq!(fields, vec!["2\t\t", "\t0\t1", "\t11\t1"]);
    }
}

#[test]
fn pcapng_input_and_truncated_captures() {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock;
    use pcap_file::pcapng::PcapNgWriter;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("a.pcapng");
    {
        let f = std::fs::File::create(&input).unwrap();
        let mut w = PcapNgWriter::new(f).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: pcap_file::DataLink::ETHERNET,
            snaplen: 0,
            options: vec![],
        })
        .unwrap();
        let frame = udp(MAC_A, GW_MAC, POD_A, POD_B, 64, 1, 2, b"ng");
        for orig in [frame.len(), frame.len() + 100] {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: std::time::Duration::from_secs(1),
                original_len: orig as u32,
                data: frame.clone().into(),
                options: vec![],
            })
            .unwrap();
        }
    }
    let out = dir.path().join("out");
    let r = replay::run(
        Path::new(STATE),
        &[Input {
            port: "veth-a".into(),
            path: input,
        }],
        &out,
    )
    .unwrap();
    assert_eq!(r.input.frames, 2);
    assert_eq!(r.input.skipped_truncated_capture, 1);
    assert_eq!(r.actions["delivered_local"], 1);
    assert_eq!(read_pcap(&out.join("veth-b.pcap")).len(), 1);
}

#[test]
fn errors_name_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.pcap");
    write_pcap(&p, &[]);
    let e = replay::run(
        Path::new(STATE),
        &[Input {
            port: "eth9".into(),
            path: p.clone(),
        }],
        dir.path(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "--in eth9=...: no such port or pod in the state file (ports: uplink, veth-a, veth-b)"
    );
    let missing = dir.path().join("missing.pcap");
    let e = replay::run(
        Path::new(STATE),
        &[Input {
            port: "veth-a".into(),
            path: missing,
        }],
        dir.path(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("missing.pcap") && e.to_string().contains("No such file"),
        "{e}"
    );
    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture").unwrap();
    let e = replay::run(
        Path::new(STATE),
        &[Input {
            port: "veth-a".into(),
            path: junk,
        }],
        dir.path(),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("junk.pcap: not a readable pcap"),
        "{e}"
    );
    let state = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(STATE)
        .unwrap()
        .replace("ip = \"10.244.1.3\"", "ip = \"10.244.1.2\"");
    std::fs::write(&state, text).unwrap();
    let e = replay::run(
        &state,
        &[Input {
            port: "veth-a".into(),
            path: p,
        }],
        dir.path(),
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .ends_with("pods[1].ip: 10.244.1.2 is also the address of pods[0]"),
        "{e}"
    );
}

fn tcp_from(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    syn: bool,
    ack: bool,
) -> Vec<u8> {
    let mut v = Vec::new();
    let b = etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64240);
    let b = if syn { b.syn() } else { b };
    // Every segment starts at 1000: a SYN-ACK acknowledges the other side's SYN (1001), as
    // conntrack requires.
    let b = if ack { b.ack(1001) } else { b };
    b.write(&mut v, &[]).unwrap();
    v
}

/// L4 checksum over the pseudo-header, independently of the code under test.
fn l4_ok(frame: &[u8]) -> bool {
    let hl = usize::from(frame[14] & 0xf) * 4;
    let tl = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    let l4 = &frame[14 + hl..14 + tl];
    let mut p = Vec::new();
    p.extend_from_slice(&frame[26..34]);
    p.extend_from_slice(&[0, frame[23]]);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(l4);
    csum_ok(&p)
}

#[test]
fn services_replayed_and_decoded() {
    const DNS: [u8; 4] = [10, 96, 0, 53];
    const EMPTY: [u8; 4] = [10, 96, 0, 99];
    const EXT: [u8; 4] = [198, 18, 0, 100];
    const EXT_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 100];
    // Well-formed DNS messages, so that tshark's dissector has nothing to complain about.
    let query: &[u8] = &[
        0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
    ];
    let response: &[u8] = &[
        0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'a', 0, 0, 1, 0, 1,
    ];
    let pod_a = vec![
        (1, udp(MAC_A, GW_MAC, POD_A, DNS, 64, 5000, 53, query)),
        (
            2,
            tcp_from(MAC_A, GW_MAC, POD_A, EMPTY, 40001, 80, true, false),
        ),
        (
            3,
            udp(MAC_A, GW_MAC, POD_A, EMPTY, 64, 5001, 80, b"anyone?"),
        ),
    ];
    let answer = udp(
        VTEP2,
        VTEP1,
        [10, 244, 2, 8],
        POD_A,
        63,
        5353,
        5000,
        response,
    );
    let uplink = vec![
        (4, vxlan_from_node2(&answer, 1)),
        (
            5,
            tcp_from(EXT_MAC, NODE1_MAC, EXT, NODE1, 20000, 30090, true, false),
        ),
    ];
    let pod_b = vec![(
        6,
        tcp_from(MAC_B, GW_MAC, POD_B, EXT, 8443, 20000, true, true),
    )];

    let dir = tempfile::tempdir().unwrap();
    let (a, u, b) = (
        dir.path().join("a.pcap"),
        dir.path().join("u.pcap"),
        dir.path().join("b.pcap"),
    );
    write_pcap(&a, &pod_a);
    write_pcap(&u, &uplink);
    write_pcap(&b, &pod_b);
    let out = dir.path().join("out");
    let inputs = [
        Input {
            port: "veth-a".into(),
            path: a,
        },
        Input {
            port: "uplink".into(),
            path: u,
        },
        Input {
            port: "veth-b".into(),
            path: b,
        },
    ];
    let r = replay::run(Path::new(STATE), &inputs, &out).unwrap();
    assert_eq!(r.received, 6);
    assert_eq!(r.dropped, 0);
    assert_eq!(r.actions["rejected"], 2);
    assert_eq!(r.actions["to_external"], 1);
    assert_eq!((r.nat.new_flows, r.nat.dnat, r.nat.reverse_nat), (2, 2, 2));
    assert_eq!(r.conntrack.entries, 2);

    // Uplink: the DNS query encapsulated to node2, translated to the backend; then the
    // NodePort reply to the outside client, from the node's address and NodePort.
    let up = read_pcap(&out.join("uplink.pcap"));
    assert_eq!(up.len(), 2);
    let inner = &up[0][50..];
    assert_eq!(&inner[26..30], &POD_A, "client IP kept");
    assert_eq!(&inner[30..34], &[10, 244, 2, 8]);
    assert_eq!(u16::from_be_bytes([inner[36], inner[37]]), 5353);
    assert!(csum_ok(&inner[14..34]) && l4_ok(inner));
    let ext = &up[1];
    assert_eq!((&ext[0..6], &ext[6..12]), (&EXT_MAC[..], &NODE1_MAC[..]));
    assert_eq!((&ext[26..30], &ext[30..34]), (&NODE1[..], &EXT[..]));
    assert_eq!(
        (
            u16::from_be_bytes([ext[34], ext[35]]),
            u16::from_be_bytes([ext[36], ext[37]])
        ),
        (30090, 20000)
    );
    assert!(csum_ok(&ext[14..34]) && l4_ok(ext));

    // pod-a: RST from the empty Service, ICMP port unreachable from it, the DNS answer from the Service.
    let a = read_pcap(&out.join("veth-a.pcap"));
    assert_eq!(a.len(), 3);
    assert_eq!(
        (&a[0][26..30], a[0][23], a[0][47] & 0x04),
        (&EMPTY[..], 6, 0x04)
    );
    assert!(csum_ok(&a[0][14..34]) && l4_ok(&a[0]));
    assert_eq!((&a[1][26..30], a[1][34], a[1][35]), (&EMPTY[..], 3, 3));
    assert!(csum_ok(&a[1][34..]));
    assert_eq!(&a[2][26..30], &DNS);
    assert_eq!(u16::from_be_bytes([a[2][34], a[2][35]]), 53);
    assert!(csum_ok(&a[2][14..34]) && l4_ok(&a[2]));

    // pod-b: the outside client's SYN, translated to pod-b:8443 with the client's IP.
    let b = read_pcap(&out.join("veth-b.pcap"));
    assert_eq!(b.len(), 1);
    assert_eq!((&b[0][26..30], &b[0][30..34]), (&EXT[..], &POD_B[..]));
    assert_eq!(u16::from_be_bytes([b[0][36], b[0][37]]), 8443);
    assert!(csum_ok(&b[0][14..34]) && l4_ok(&b[0]));

    if let Some(ts) = tshark() {
        for f in ["uplink.pcap", "veth-a.pcap", "veth-b.pcap"] {
            tshark_verbose(&ts, &out.join(f));
        }
        let fields = tshark_fields(
            &ts,
            &out.join("veth-a.pcap"),
            &[
                "ip.src",
                "tcp.flags.reset",
                "icmp.type",
                "udp.srcport",
                "udp.checksum.status",
            ],
        );
        assert_eq!(
            fields[0].split('\t').take(2).collect::<Vec<_>>(),
            vec!["10.96.0.99", "1"]
        );
        assert!(fields[2].starts_with("10.96.0.53\t\t\t53"), "{fields:?}");
    }
}
