//! Frames and snapshots shared by the benchmarks in `benches/`.
//!
//! Design: every benchmark decides a batch of [`flowtable::BATCH_SIZE`] frames laid out as the
//! daemon lays them out (one buffer per frame, [`flowtable::packet::DEFAULT_HEADROOM`] bytes of
//! headroom). Frames are built with etherparse, independently of the code measured.

use etherparse::PacketBuilder;
use flowtable::{Snapshot, StateFile};

/// The example node's state file.
pub const STATE: &str = include_str!("../../examples/node1.toml");
/// Size of one frame buffer, as a UMEM frame.
pub const FRAME_SIZE: usize = 2048;

/// The example node's snapshot, with its Services (both example pods are Service endpoints,
/// so every packet between them consults the NAT flow cache).
pub fn snapshot() -> Snapshot {
    let s = StateFile::parse(STATE).unwrap_or_else(|e| panic!("example state: {e}"));
    Snapshot::build(&s, 1).unwrap_or_else(|e| panic!("example state: {e}"))
}

/// The example node's snapshot without any Service: forwarding alone.
pub fn snapshot_without_services() -> Snapshot {
    let mut s = StateFile::parse(STATE).unwrap_or_else(|e| panic!("example state: {e}"));
    s.services.clear();
    Snapshot::build(&s, 1).unwrap_or_else(|e| panic!("example state: {e}"))
}

/// A pod-a frame: UDP with `payload` bytes to `dst`.
pub fn pod_udp(dst: [u8; 4], payload: usize) -> Vec<u8> {
    let mut v = Vec::new();
    let b = PacketBuilder::ethernet2([2, 0, 0x0a, 0xf4, 1, 2], [2, 0, 0x0a, 0xf4, 1, 1])
        .ipv4([10, 244, 1, 2], dst, 64)
        .udp(40000, 5201);
    b.write(&mut v, &vec![0x5a; payload])
        .unwrap_or_else(|e| panic!("{e}"));
    v
}

/// A VXLAN frame from node2 carrying UDP to pod-b.
pub fn uplink_vxlan(payload: usize) -> Vec<u8> {
    let mut inner = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0xff, 2], [2, 0, 0, 0, 0xff, 1])
        .ipv4([10, 244, 2, 7], [10, 244, 1, 3], 63)
        .udp(40000, 5201)
        .write(&mut inner, &vec![0x5a; payload])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut vx = vec![8, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(&inner);
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0xc6, 0x12, 0, 2], [2, 0, 0xc6, 0x12, 0, 1])
        .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .udp(50000, 8472)
        .write(&mut v, &vx)
        .unwrap_or_else(|e| panic!("{e}"));
    v
}

/// `inner` (an Ethernet frame) in VXLAN from node2 to node1.
pub fn vxlan_from_node2(inner: &[u8]) -> Vec<u8> {
    let mut vx = vec![8, 0, 0, 0, 0, 0, 1, 0];
    vx.extend_from_slice(inner);
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0xc6, 0x12, 0, 2], [2, 0, 0xc6, 0x12, 0, 1])
        .ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .udp(50000, 8472)
        .write(&mut v, &vx)
        .unwrap_or_else(|e| panic!("{e}"));
    v
}

/// A TCP segment from a backend pod on node2 (port 8080) to pod-a, in VXLAN from node2,
/// as [`pod_tcp_seg`].
pub fn remote_backend_tcp_seg(
    backend: std::net::Ipv4Addr,
    dport: u16,
    flags: &str,
    seq: u32,
    ack: u32,
    len: usize,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0xff, 2], [2, 0, 0, 0, 0xff, 1])
        .ipv4(backend.octets(), [10, 244, 1, 2], 63)
        .tcp(8080, dport, seq, 64240);
    vxlan_from_node2(&tcp_flags(b, flags, ack, len))
}

/// An ARP request from pod-a for its gateway.
pub fn arp_request() -> Vec<u8> {
    let a = [2, 0, 0x0a, 0xf4, 1, 2];
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&a);
    f.extend_from_slice(&[8, 6, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&a);
    f.extend_from_slice(&[10, 244, 1, 2, 0, 0, 0, 0, 0, 0, 10, 244, 1, 1]);
    f
}

/// A state file for node1 with 10 local pods, pod-a as the client, and `n` Services of 10
/// endpoints each: even-numbered Services have their endpoints on this node (10.244.1.10-19),
/// odd-numbered ones on node2 (10.244.2.10-19). Service i has ClusterIP 10.96.(i/250).(i%250+1).
pub fn services_state(n: usize) -> String {
    let mut s = String::from(
        r#"[node]
name = "node1"
ip = "198.18.0.1"
pod_cidr = "10.244.1.0/24"
gateway_mac = "02:00:0a:f4:01:01"
uplink_mac = "02:00:c6:12:00:01"
vtep_mac = "02:00:00:00:ff:01"

[[pods]]
name = "default/pod-a"
ip = "10.244.1.2"
mac = "02:00:0a:f4:01:02"
port = "veth-a"

[[nodes]]
name = "node2"
ip = "198.18.0.2"
pod_cidr = "10.244.2.0/24"
vtep_mac = "02:00:00:00:ff:02"
mac = "02:00:c6:12:00:02"
"#,
    );
    for p in 0..10 {
        s += &format!(
            "\n[[pods]]\nname = \"default/backend-{p}\"\nip = \"10.244.1.{}\"\nmac = \"02:00:0a:f4:01:{:02x}\"\nport = \"veth-{p}\"\n",
            10 + p,
            0x10 + p
        );
    }
    for i in 0..n {
        let node = if i % 2 == 0 {
            (1, "node1")
        } else {
            (2, "node2")
        };
        let eps: Vec<String> = (0..10)
            .map(|e| {
                format!(
                    "{{ ip = \"10.244.{}.{}\", node = \"{}\" }}",
                    node.0,
                    10 + e,
                    node.1
                )
            })
            .collect();
        s += &format!(
            "\n[[services]]\nname = \"default/svc-{i}\"\ncluster_ip = \"{}\"\nports = [{{ protocol = \"TCP\", port = 80, target_port = 8080 }}]\nendpoints = [{}]\n",
            service_ip(i),
            eps.join(", ")
        );
    }
    s
}

/// The ClusterIP of Service `i` in [`services_state`].
pub fn service_ip(i: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// A TCP segment from pod-a to a Service.
pub fn pod_tcp_to(vip: std::net::Ipv4Addr, sport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0x0a, 0xf4, 1, 2], [2, 0, 0x0a, 0xf4, 1, 1])
        .ipv4([10, 244, 1, 2], vip.octets(), 64)
        .tcp(sport, 80, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &[0u8; 6]).unwrap_or_else(|e| panic!("{e}"));
    v
}

/// A TCP segment from pod-a (10.244.1.2) to `vip`:80 with these flags (`S` SYN, `A` ACK,
/// `F` FIN, `R` RST), sequence and acknowledgement numbers, and `len` bytes of payload.
pub fn pod_tcp_seg(
    vip: std::net::Ipv4Addr,
    sport: u16,
    flags: &str,
    seq: u32,
    ack: u32,
    len: usize,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0x0a, 0xf4, 1, 2], [2, 0, 0x0a, 0xf4, 1, 1])
        .ipv4([10, 244, 1, 2], vip.octets(), 64)
        .tcp(sport, 80, seq, 64240);
    tcp_flags(b, flags, ack, len)
}

/// A TCP segment from a backend pod (port 8080) back to pod-a, as [`pod_tcp_seg`].
pub fn backend_tcp_seg(
    backend: std::net::Ipv4Addr,
    dport: u16,
    flags: &str,
    seq: u32,
    ack: u32,
    len: usize,
) -> Vec<u8> {
    let last = backend.octets()[3];
    let b = PacketBuilder::ethernet2([2, 0, 0x0a, 0xf4, 1, last + 6], [2, 0, 0x0a, 0xf4, 1, 1])
        .ipv4(backend.octets(), [10, 244, 1, 2], 64)
        .tcp(8080, dport, seq, 64240);
    tcp_flags(b, flags, ack, len)
}

fn tcp_flags(
    mut b: etherparse::PacketBuilderStep<etherparse::TcpHeader>,
    flags: &str,
    ack: u32,
    len: usize,
) -> Vec<u8> {
    for c in flags.chars() {
        b = match c {
            'S' => b.syn(),
            'A' => b.ack(ack),
            'F' => b.fin(),
            'R' => b.rst(),
            'P' => b.psh(),
            _ => b,
        };
    }
    let mut v = Vec::new();
    b.write(&mut v, &vec![0u8; len])
        .unwrap_or_else(|e| panic!("{e}"));
    v
}

/// Remote node k's pod CIDR for the control-plane benchmarks: 10.128.0.0/9 carved into /24s
/// (away from the demo's 10.244/16).
pub fn node_cidr(k: usize) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(10, 128 + (k / 256) as u8, (k % 256) as u8, 0)
}

/// The `p` quantile (0..=1) of `v`, which it sorts.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// `d` in milliseconds.
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
