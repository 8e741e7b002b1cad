//! Host-network Service endpoints through the pipeline: an endpoint at another node's own
//! address is reached over the underlay (not VXLAN) and its reply, which that node's switch
//! sends back over VXLAN, is translated back; an endpoint at this node's address is the
//! node's kernel behind the host port, for pods and for the node itself.

use super::*;
use crate::state::StateFile;
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

const STATE: &str = include_str!("../../../examples/demo/node1.toml");
const SERVICES: &str = r#"
[[services]]
name = "default/kubernetes"
cluster_ip = "10.96.0.1"
ports = [{ name = "https", protocol = "TCP", port = 443, target_port = 6443, node_port = 30443 }]
endpoints = [{ ip = "198.18.0.2", node = "node2" }]

[[services]]
name = "default/local-api"
cluster_ip = "10.96.0.2"
ports = [{ protocol = "TCP", port = 443, target_port = 6443, node_port = 30444 }]
endpoints = [{ ip = "198.18.0.1", node = "node1" }]
"#;
const POD_A: [u8; 4] = [10, 244, 1, 2];
const MAC_A: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 2];
const GW_MAC: [u8; 6] = [2, 0, 0x0a, 0xf4, 1, 1];
const GW: [u8; 4] = [10, 244, 1, 1];
const NODE1: [u8; 4] = [198, 18, 0, 1];
const NODE1_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 1];
const NODE2: [u8; 4] = [198, 18, 0, 2];
const NODE2_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 0, 2];
const HOST_MAC: [u8; 6] = [2, 0, 0xc6, 0x12, 1, 1];
const KUBERNETES: [u8; 4] = [10, 96, 0, 1];
const LOCAL_API: [u8; 4] = [10, 96, 0, 2];
const PORT_A: PortId = PortId(1);

fn state() -> StateFile {
    StateFile::parse(&format!("{STATE}{SERVICES}")).unwrap()
}

struct H {
    snap: Snapshot,
    p: Pipeline,
    host: PortId,
    host_ip: [u8; 4],
}

impl H {
    fn new() -> H {
        let snap = Snapshot::build(&state(), 1).unwrap();
        let host = snap.host().unwrap();
        let (port, ip) = (host.port, host.ip.octets());
        H {
            snap,
            p: Pipeline::new(),
            host: port,
            host_ip: ip,
        }
    }

    fn send(&mut self, port: PortId, frame: &[u8]) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; 2048];
        buf[256..256 + frame.len()].copy_from_slice(frame);
        let mut pkt = Packet::new(&mut buf, 256, frame.len(), port).unwrap();
        let v = self.p.process_one(&self.snap, &mut pkt);
        assert_eq!(self.p.counters().received, self.p.counters().decided());
        (v, pkt.data().to_vec())
    }
}

fn tcp(
    mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ports: (u16, u16),
    syn: bool,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac, dst_mac)
        .ipv4(src, dst, 64)
        .tcp(ports.0, ports.1, 1000, 64240);
    let b = if syn { b.syn() } else { b.syn().ack(1001) };
    let mut v = Vec::new();
    b.write(&mut v, b"").unwrap();
    v
}

fn vxlan_from_node2(inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![8, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(inner);
    let mut f = Vec::new();
    PacketBuilder::ethernet2(NODE2_MAC, NODE1_MAC)
        .ipv4(NODE2, NODE1, 64)
        .udp(40000, 8472)
        .write(&mut f, &vx)
        .unwrap();
    f
}

/// (source, source port, destination, destination port, TTL), checksums verified.
fn decode(frame: &[u8]) -> ([u8; 4], u16, [u8; 4], u16, u8) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let etherparse::NetSlice::Ipv4(ip) = p.net.unwrap() else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
    let TransportSlice::Tcp(t) = p.transport.unwrap() else {
        panic!("not TCP")
    };
    let want = t.to_header().calc_checksum_ipv4(&h, t.payload()).unwrap();
    assert_eq!(t.checksum(), want, "TCP checksum");
    (
        h.source,
        t.source_port(),
        h.destination,
        t.destination_port(),
        h.time_to_live,
    )
}

#[test]
fn endpoints_at_node_addresses_are_accepted_and_others_named() {
    assert!(Snapshot::build(&state(), 1).is_ok());
    for (ep, field) in [
        (
            r#"{ ip = "198.18.0.3", node = "node2" }"#,
            "198.18.0.3 is neither",
        ),
        (
            r#"{ ip = "198.18.0.2", node = "node1" }"#,
            "198.18.0.2 is neither",
        ),
    ] {
        let text = format!(
            "{STATE}[[services]]\nname = \"default/x\"\ncluster_ip = \"10.96.0.9\"\n\
             ports = [{{ port = 443 }}]\nendpoints = [{ep}]\n"
        );
        let e = Snapshot::build(&StateFile::parse(&text).unwrap(), 1).unwrap_err();
        assert_eq!(e.field, "services[default/x].endpoints[0].ip");
        assert!(e.reason.contains(field), "{}", e.reason);
    }
}

#[test]
fn an_endpoint_on_this_nodes_address_needs_a_host_port() {
    let no_host = STATE
        .lines()
        .filter(|l| !l.starts_with("host_port") && !l.starts_with("host_mac"))
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(no_host.len(), STATE.len());
    let text = format!("{no_host}\n{SERVICES}");
    let e = Snapshot::build(&StateFile::parse(&text).unwrap(), 1).unwrap_err();
    assert_eq!(e.field, "services[default/local-api].endpoints[0].ip");
    assert!(e.reason.contains("needs a host port"), "{}", e.reason);
}

#[test]
fn a_pod_reaches_an_endpoint_on_another_nodes_address_over_the_underlay() {
    let mut h = H::new();
    let (v, out) = h.send(
        PORT_A,
        &tcp(MAC_A, GW_MAC, POD_A, KUBERNETES, (40001, 443), true),
    );
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    // Not VXLAN: the pod's packet itself, to node2's MAC from the uplink's.
    assert_eq!((&out[0..6], &out[6..12]), (&NODE2_MAC[..], &NODE1_MAC[..]));
    assert_eq!(decode(&out), (POD_A, 40001, NODE2, 6443, 63));
    assert_eq!(h.p.counters().actions(Action::ToNode), 1);
    // node2's kernel answers the pod; node2's switch sends that over VXLAN.
    let reply = tcp(
        [2, 0, 0, 0, 0xff, 2],
        [2, 0, 0, 0, 0xff, 1],
        NODE2,
        POD_A,
        (6443, 40001),
        false,
    );
    let (v, back) = h.send(PortId::UPLINK, &vxlan_from_node2(&reply));
    assert_eq!(v, Verdict::Transmit(PORT_A));
    assert_eq!(&back[0..6], &MAC_A);
    let (s, sp, d, dp, _) = decode(&back);
    assert_eq!((s, sp, d, dp), (KUBERNETES, 443, POD_A, 40001));
}

#[test]
fn the_node_itself_reaches_an_endpoint_on_another_nodes_address() {
    let mut h = H::new();
    let host_ip = h.host_ip;
    let (v, out) = h.send(
        h.host,
        &tcp(HOST_MAC, GW_MAC, host_ip, KUBERNETES, (50001, 443), true),
    );
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(decode(&out).2, NODE2);
    let reply = tcp(
        [2, 0, 0, 0, 0xff, 2],
        [2, 0, 0, 0, 0xff, 1],
        NODE2,
        host_ip,
        (6443, 50001),
        false,
    );
    let (v, back) = h.send(PortId::UPLINK, &vxlan_from_node2(&reply));
    assert_eq!(v, Verdict::Transmit(h.host));
    let (s, sp, d, dp, _) = decode(&back);
    assert_eq!((s, sp, d, dp), (KUBERNETES, 443, host_ip, 50001));
}

#[test]
fn an_endpoint_on_this_nodes_address_is_the_kernel_behind_the_host_port() {
    let mut h = H::new();
    let (v, out) = h.send(
        PORT_A,
        &tcp(MAC_A, GW_MAC, POD_A, LOCAL_API, (40002, 443), true),
    );
    assert_eq!(v, Verdict::Transmit(h.host));
    assert_eq!(&out[0..6], &HOST_MAC);
    // From the gateway address: the kernel's reply to the pod itself would leave by the
    // pod's veth, past the switch and its reverse translation.
    let (s, sp, d, dp, ttl) = decode(&out);
    assert_eq!((s, d, dp, ttl), (GW, NODE1, 6443, 63));
    // The kernel answers from the node's address through the host port.
    let (v, back) = h.send(h.host, &tcp(HOST_MAC, GW_MAC, NODE1, GW, (6443, sp), false));
    assert_eq!(v, Verdict::Transmit(PORT_A));
    let (s, sp, d, dp, _) = decode(&back);
    assert_eq!((s, sp, d, dp), (LOCAL_API, 443, POD_A, 40002));
    // Only the host port may send from the node's address.
    let (v, _) = h.send(
        PORT_A,
        &tcp(MAC_A, GW_MAC, NODE1, POD_A, (6443, 40002), false),
    );
    assert_eq!(v, Verdict::Drop(DropReason::SpoofedSource));
}

#[test]
fn the_node_reaches_a_host_network_endpoint_on_itself_through_a_hairpin() {
    let mut h = H::new();
    let host_ip = h.host_ip;
    let (v, out) = h.send(
        h.host,
        &tcp(HOST_MAC, GW_MAC, host_ip, LOCAL_API, (50002, 443), true),
    );
    // Back to the kernel, from an address that is not its own (else it would drop it as a
    // martian), to its own address.
    assert_eq!(v, Verdict::Transmit(h.host));
    let (s, _, d, dp, _) = decode(&out);
    assert_eq!((s, d, dp), (GW, NODE1, 6443));
    let sp = decode(&out).1;
    let (v, back) = h.send(h.host, &tcp(HOST_MAC, GW_MAC, NODE1, GW, (6443, sp), false));
    assert_eq!(v, Verdict::Transmit(h.host));
    let (s, sp2, d, dp, _) = decode(&back);
    assert_eq!((s, sp2, d, dp), (LOCAL_API, 443, host_ip, 50002));
}

#[test]
fn nodeport_reaches_host_network_endpoints_here_and_on_another_node() {
    const CLIENT: [u8; 4] = [198, 18, 0, 100];
    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x64];
    let mut h = H::new();
    // To this node's own endpoint: through the host port, from the gateway address (the
    // kernel would answer the client by its own routes, past the reverse translation).
    let (v, out) = h.send(
        PortId::UPLINK,
        &tcp(CLIENT_MAC, NODE1_MAC, CLIENT, NODE1, (41000, 30444), true),
    );
    assert_eq!(v, Verdict::Transmit(h.host));
    let (s, sp, d, dp, _) = decode(&out);
    assert_eq!((s, d, dp), (GW, NODE1, 6443));
    let (v, back) = h.send(h.host, &tcp(HOST_MAC, GW_MAC, NODE1, GW, (6443, sp), false));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(&back[0..6], &CLIENT_MAC);
    let (s, sp, d, dp, _) = decode(&back);
    assert_eq!((s, sp, d, dp), (NODE1, 30444, CLIENT, 41000));

    // To node2's endpoint: over the underlay, from the gateway address (node2 answers it
    // through its switch, over VXLAN).
    let (v, out) = h.send(
        PortId::UPLINK,
        &tcp(CLIENT_MAC, NODE1_MAC, CLIENT, NODE1, (41001, 30443), true),
    );
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(&out[0..6], &NODE2_MAC);
    let (s, sp, d, dp, _) = decode(&out);
    assert_eq!((s, d, dp), (GW, NODE2, 6443));
    let reply = tcp(
        [2, 0, 0, 0, 0xff, 2],
        [2, 0, 0, 0, 0xff, 1],
        NODE2,
        GW,
        (6443, sp),
        false,
    );
    let (v, back) = h.send(PortId::UPLINK, &vxlan_from_node2(&reply));
    assert_eq!(v, Verdict::Transmit(PortId::UPLINK));
    assert_eq!(&back[0..6], &CLIENT_MAC);
    let (s, sp, d, dp, _) = decode(&back);
    assert_eq!((s, sp, d, dp), (NODE1, 30443, CLIENT, 41001));
}
