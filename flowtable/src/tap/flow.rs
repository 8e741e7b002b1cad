//! The addresses and ports of a frame, as capture filters and monitor events see them: the
//! outer packet and, for a VXLAN frame, the inner one.
//!
//! Design: one allocation-free pass over the headers with bounds checks at every step; a
//! frame too short for a layer simply has no such layer (never an error: captures show bad
//! frames too). Plain functions over byte slices; no state.

use std::fmt;
use std::net::Ipv4Addr;

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_VLAN: u16 = 0x8100;
/// IP protocol numbers the display names.
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const VXLAN_LEN: usize = 8;

/// One packet's identity: its protocol, addresses and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// An ARP frame (`src`/`dst` are the sender's and target's protocol addresses).
    pub arp: bool,
    /// IP protocol (0 for ARP).
    pub proto: u8,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// TCP/UDP source port; ICMP type; 0 otherwise (and for non-first fragments).
    pub sport: u16,
    /// TCP/UDP destination port; ICMP code; 0 otherwise.
    pub dport: u16,
}

impl Flow {
    /// Whether this protocol has ports (TCP, UDP).
    pub fn has_ports(&self) -> bool {
        !self.arp && (self.proto == TCP || self.proto == UDP)
    }

    /// The protocol's name: `tcp`, `udp`, `icmp`, `arp` or the number.
    pub fn proto_name(&self) -> String {
        match (self.arp, self.proto) {
            (true, _) => "arp".into(),
            (_, TCP) => "tcp".into(),
            (_, UDP) => "udp".into(),
            (_, ICMP) => "icmp".into(),
            (_, p) => p.to_string(),
        }
    }
}

impl fmt::Display for Flow {
    /// `tcp 10.0.0.1:80 -> 10.0.0.2:4000`, `icmp 10.0.0.1 -> 10.0.0.2 type 8 code 0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.proto_name();
        if self.has_ports() {
            write!(
                f,
                "{p} {}:{} -> {}:{}",
                self.src, self.sport, self.dst, self.dport
            )
        } else if !self.arp && self.proto == ICMP {
            write!(
                f,
                "{p} {} -> {} type {} code {}",
                self.src, self.dst, self.sport, self.dport
            )
        } else {
            write!(f, "{p} {} -> {}", self.src, self.dst)
        }
    }
}

/// A frame's flows: the outer packet's and, for VXLAN on `vxlan_port`, the inner one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layers {
    /// The frame's own packet.
    pub outer: Option<Flow>,
    /// The encapsulated packet of a VXLAN frame.
    pub inner: Option<Flow>,
}

impl Layers {
    /// The flow a user means by "the packet": the inner one of a VXLAN frame, else the outer.
    pub fn innermost(&self) -> Option<Flow> {
        self.inner.or(self.outer)
    }
}

/// Parses `frame` (an Ethernet frame) down to its transport ports, and into a VXLAN frame's
/// inner frame when its UDP destination port is `vxlan_port`.
pub fn layers(frame: &[u8], vxlan_port: u16) -> Layers {
    let Some((outer, payload)) = parse(frame) else {
        return Layers::default();
    };
    let inner = if !outer.arp && outer.proto == UDP && outer.dport == vxlan_port && outer.dport != 0
    {
        payload
            .and_then(|p| p.get(VXLAN_LEN..))
            .and_then(parse)
            .map(|(f, _)| f)
    } else {
        None
    };
    Layers {
        outer: Some(outer),
        inner,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ip(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s = b.get(at..at + 4)?;
    Some(Ipv4Addr::new(s[0], s[1], s[2], s[3]))
}

/// One Ethernet frame's flow and, for UDP, the UDP payload.
fn parse(frame: &[u8]) -> Option<(Flow, Option<&[u8]>)> {
    let mut at = ETH_LEN;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETHERTYPE_VLAN {
        ethertype = be16(frame, 16)?;
        at += 4;
    }
    let l3 = frame.get(at..)?;
    match ethertype {
        ETHERTYPE_ARP => Some((
            Flow {
                arp: true,
                proto: 0,
                src: ip(l3, 14)?,
                dst: ip(l3, 24)?,
                sport: 0,
                dport: 0,
            },
            None,
        )),
        ETHERTYPE_IPV4 => {
            let vihl = *l3.first()?;
            if vihl >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(vihl & 0x0f) * 4;
            if ihl < 20 {
                return None;
            }
            let proto = *l3.get(9)?;
            let mut flow = Flow {
                arp: false,
                proto,
                src: ip(l3, 12)?,
                dst: ip(l3, 16)?,
                sport: 0,
                dport: 0,
            };
            let first_fragment = be16(l3, 6)? & 0x1fff == 0;
            let l4 = match l3.get(ihl..) {
                Some(l4) if first_fragment => l4,
                _ => return Some((flow, None)),
            };
            match proto {
                TCP | UDP => {
                    if let (Some(s), Some(d)) = (be16(l4, 0), be16(l4, 2)) {
                        flow.sport = s;
                        flow.dport = d;
                    }
                }
                ICMP => {
                    if let (Some(&t), Some(&c)) = (l4.first(), l4.get(1)) {
                        flow.sport = u16::from(t);
                        flow.dport = u16::from(c);
                    }
                }
                _ => {}
            }
            let payload = if proto == UDP { l4.get(8..) } else { None };
            Some((flow, payload))
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame from `src:sport` to `dst:dport` with `payload`.
    pub(crate) fn udp(
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = 20 + 8 + payload.len();
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            UDP,
            0,
            0,
        ]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn a_udp_frame_has_its_ports_and_no_inner_flow() {
        let f = udp([10, 0, 0, 1], [10, 0, 0, 2], 4000, 53, b"q");
        let l = layers(&f, 4789);
        let o = l.outer.unwrap();
        assert_eq!((o.proto, o.sport, o.dport), (UDP, 4000, 53));
        assert_eq!(o.to_string(), "udp 10.0.0.1:4000 -> 10.0.0.2:53");
        assert_eq!(l.inner, None);
        assert_eq!(l.innermost(), Some(o));
    }

    #[test]
    fn a_vxlan_frame_shows_its_inner_packet() {
        let inner = udp([10, 244, 1, 5], [10, 244, 2, 7], 1234, 80, b"hello");
        let mut vx = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        vx.extend_from_slice(&inner);
        let f = udp([192, 168, 0, 1], [192, 168, 0, 2], 50000, 4789, &vx);
        let l = layers(&f, 4789);
        assert_eq!(l.outer.unwrap().dport, 4789);
        let i = l.inner.unwrap();
        assert_eq!(
            (i.src, i.dst, i.dport),
            ([10, 244, 1, 5].into(), [10, 244, 2, 7].into(), 80)
        );
        assert_eq!(
            layers(&f, 8472).inner,
            None,
            "another VXLAN port: not decapsulated"
        );
    }

    #[test]
    fn short_and_odd_frames_give_what_they_have_and_never_panic() {
        let f = udp([10, 0, 0, 1], [10, 0, 0, 2], 4000, 53, b"");
        for n in 0..f.len() {
            let l = layers(&f[..n], 53);
            if n < 34 {
                assert_eq!(l.outer, None, "cut at {n}");
            }
        }
        let mut frag = f.clone();
        frag[14 + 6] = 0x00;
        frag[14 + 7] = 0x10; // fragment offset 16: no ports
        assert_eq!(layers(&frag, 4789).outer.unwrap().sport, 0);
        let mut v6 = f.clone();
        v6[14] = 0x60;
        assert_eq!(layers(&v6, 4789).outer, None);
    }

    #[test]
    fn arp_and_icmp_are_shown_by_name() {
        let mut arp = vec![0u8; 12];
        arp.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 9]);
        let a = layers(&arp, 4789).outer.unwrap();
        assert!(a.arp);
        assert_eq!(a.to_string(), "arp 10.0.0.1 -> 10.0.0.9");
        let mut icmp = udp([10, 0, 0, 1], [10, 0, 0, 2], 0x0800, 0, b"");
        icmp[14 + 9] = ICMP;
        let i = layers(&icmp, 4789).outer.unwrap();
        assert_eq!(i.to_string(), "icmp 10.0.0.1 -> 10.0.0.2 type 8 code 0");
    }
}
