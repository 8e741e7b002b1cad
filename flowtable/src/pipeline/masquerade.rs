//! Egress: a pod's packet to a destination outside the cluster leaves the uplink towards the
//! next hop the node's routing table names, its source masqueraded to the node's IP; replies
//! to the node's IP on a masquerade port come back in on the uplink and are translated back.
//!
//! Design: routing sends here what is no pod, gateway, node or remote pod CIDR. The next hop
//! is resolved first (no port is taken for a packet that cannot leave), then TTL and MTU are
//! checked as a router does, then the flow is tracked in the shared conntrack table with
//! the same states, timeouts and limits as Service flows: original tuple pod:port -> dst,
//! translated node:P -> dst with P from `egress.port_range` (the ICMP echo identifier for
//! pings). P is the first port free for that destination from a hash of the tuple (the reply
//! tuple dst -> node:P must be untracked); none in the range is `snat_ports_exhausted`, and
//! existing flows are untouched. A packet whose source is already the node's IP was
//! translated before routing (the flow cache Service NAT shares) and leaves as it is. ICMP
//! errors about masqueraded flows are translated by the Service code's quote rewriting, in
//! both directions. What reaches the switch on the node's IP and is not a masqueraded flow's
//! (the XDP program sends every ICMP message and the range's ports here) is the node's own:
//! it goes to the kernel through the host port, as if the switch were not there.
//! Thread-safety: as the rest of the pipeline (one per worker; conntrack shared, lock-free).

use super::nat::{l4_of, rewrite, L4};
use super::{Hop, Outcome, Pipeline};
use crate::conntrack::{Dir, FlowKey, InsertError, NewFlow, Segment};
use crate::counters::{Action, DropReason};
use crate::egress::{Leaving, Miss};
use crate::maglev;
use crate::packet::{Packet, PortId};
use crate::snapshot::Snapshot;
use crate::wire::checksum::{apply_delta, delta16, delta32};
use crate::wire::ethernet::{ethertype, EthernetFrame, HEADER_LEN as ETH_LEN};
use crate::wire::icmp::{self, kind};
use crate::wire::ipv4::{self, protocol, Ipv4Packet};
use std::net::Ipv4Addr;

/// How many ports a new flow tries before it counts the range as exhausted (the whole range
/// when it is smaller).
const MAX_PROBES: u32 = 1024;
/// How many a new flow tries while its destination's range was recently found full (a port
/// may have been freed since): exhaustion must not make every new flow a long search.
const FULL_PROBES: u32 = 16;
/// Destinations remembered as full, per worker.
const FULL_SLOTS: usize = 64;

/// Destinations (address, port, protocol) whose range a worker recently found full, each
/// until a second of the conntrack clock (direct-mapped; a collision forgets the older).
#[derive(Debug)]
pub(super) struct FullRanges([(u64, u32); FULL_SLOTS]);

impl Default for FullRanges {
    fn default() -> Self {
        FullRanges([(0, 0); FULL_SLOTS])
    }
}

impl FullRanges {
    fn tag(k: &FlowKey) -> u64 {
        (u64::from(u32::from(k.dst)) << 24) | (u64::from(k.dport) << 8) | u64::from(k.proto)
    }

    fn slot(tag: u64) -> usize {
        (tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % FULL_SLOTS
    }

    fn is_full(&self, k: &FlowKey, now: u32) -> bool {
        let t = Self::tag(k);
        let (tag, until) = self.0[Self::slot(t)];
        tag == t && now < until
    }

    fn mark(&mut self, k: &FlowKey, now: u32) {
        let t = Self::tag(k);
        self.0[Self::slot(t)] = (t, now.saturating_add(1));
    }
}

/// An ICMP echo's tuple: the identifier is the "port" (sport for a request, dport for a
/// reply, so a reply's tuple is the request's reversed).
fn echo_key(data: &[u8], l4_off: usize) -> Option<FlowKey> {
    let ip = data.get(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN)?;
    let m = data.get(l4_off..l4_off + icmp::HEADER_LEN)?;
    let id = u16::from_be_bytes([m[4], m[5]]);
    let (sport, dport) = match m[0] {
        kind::ECHO_REQUEST => (id, 0),
        kind::ECHO_REPLY => (0, id),
        _ => return None,
    };
    Some(FlowKey {
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport,
        dport,
        proto: protocol::ICMP,
    })
}

/// Rewrites an ICMP echo from `from` to `to`: addresses (IPv4 checksum) and identifier (ICMP
/// checksum, which covers no pseudo-header).
fn rewrite_echo(data: &mut [u8], l4_off: usize, from: &FlowKey, to: &FlowKey) {
    let (from_id, to_id) = if from.sport != 0 || to.sport != 0 {
        (from.sport, to.sport)
    } else {
        (from.dport, to.dport)
    };
    if let Some(ip) = data.get_mut(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN) {
        let d = delta32(u32::from(from.src), u32::from(to.src))
            + delta32(u32::from(from.dst), u32::from(to.dst));
        ip[12..16].copy_from_slice(&to.src.octets());
        ip[16..20].copy_from_slice(&to.dst.octets());
        let c = u16::from_be_bytes([ip[10], ip[11]]);
        ip[10..12].copy_from_slice(&apply_delta(c, d).to_be_bytes());
    }
    if let Some(m) = data.get_mut(l4_off..l4_off + icmp::HEADER_LEN) {
        let c = u16::from_be_bytes([m[2], m[3]]);
        m[2..4].copy_from_slice(&apply_delta(c, delta16(from_id, to_id)).to_be_bytes());
        m[4..6].copy_from_slice(&to_id.to_be_bytes());
    }
}

/// The tuple a masqueraded flow is tracked by, and its TCP segment.
struct Flow {
    key: FlowKey,
    l4: Option<L4>,
    seg: Option<Segment>,
}

impl Pipeline {
    /// A pod's packet to a destination outside the cluster: out of the uplink to the next
    /// hop, masqueraded unless `egress` keeps its address.
    pub(super) fn egress(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>, hop: Hop) -> Outcome {
        let Some(ip) = pkt.data().get(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN) else {
            return Outcome::Drop(DropReason::Ipv4Truncated);
        };
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let proto = ip[9];
        let leaving = snap.egress.leaving(dst);
        if leaving == Leaving::Cluster {
            return Outcome::Drop(DropReason::NoRoute);
        }
        let next_hop = {
            let hops = self.hops.load();
            match hops.resolve(dst) {
                Ok(mac) => mac,
                Err(Miss::NoRoute) => return Outcome::Drop(DropReason::NoNextHop),
                Err(Miss::NoNeighbour(n)) => {
                    hops.note_miss(n);
                    return Outcome::Drop(DropReason::NeighbourUnresolved);
                }
            }
        };
        if let Some(o) = self.expire_ttl(snap, pkt, hop) {
            return o;
        }
        if let Some(o) = self.exceeds_uplink_mtu(snap, pkt, hop) {
            return o;
        }
        let node_ip = snap.node.ip;
        let action = if leaving == Leaving::Routed {
            Action::RoutedOut
        } else if src == node_ip {
            // Translated before routing: a pod's ICMP error about a masqueraded flow's reply,
            // whose quote and source the Service NAT's error translation already rewrote (a
            // pod cannot send from the node's address: anti-spoofing).
            Action::Masqueraded
        } else if proto == protocol::ICMP && self.is_icmp_error(pkt) {
            // An error the pod sends about a masqueraded flow's reply: its quote translated
            // back, it leaves from the node's address. One about anything else would speak
            // for the node's own flows: dropped.
            let before = self.counters.reverse_nat;
            let _ = self.nat_error_quote(snap, pkt);
            if self.counters.reverse_nat == before {
                return Outcome::Drop(DropReason::EgressIcmpUntracked);
            }
            masquerade_source(pkt.data_mut(), node_ip);
            Action::Masqueraded
        } else {
            if let Err(r) = self.snat(snap, pkt) {
                return Outcome::Drop(r);
            }
            Action::Masqueraded
        };
        let data = pkt.data_mut();
        let (eth_hdr, body) = data.split_at_mut(ETH_LEN);
        ipv4::decrement_ttl(body);
        if let Ok(mut eth) = EthernetFrame::new_checked(eth_hdr) {
            eth.set_dst(next_hop);
            eth.set_src(snap.node.uplink_mac);
            eth.set_ethertype(ethertype::IPV4);
        }
        Outcome::Tx(PortId::UPLINK, action)
    }

    fn is_icmp_error(&self, pkt: &Packet<'_>) -> bool {
        let hl = pkt
            .data()
            .get(ETH_LEN)
            .map_or(0, |b| usize::from(b & 0x0f) * 4);
        pkt.data()
            .get(ETH_LEN + hl)
            .is_some_and(|t| icmp::is_error(*t))
    }

    /// The flow's tuple: TCP/UDP ports or the ICMP echo identifier.
    fn flow_of(&self, pkt: &Packet<'_>) -> Result<Option<Flow>, DropReason> {
        let data = pkt.data();
        if data.get(ETH_LEN + 9) == Some(&protocol::ICMP) {
            let hl = usize::from(data[ETH_LEN] & 0x0f) * 4;
            let Some(key) = echo_key(data, ETH_LEN + hl) else {
                return Ok(None);
            };
            let fragment = data
                .get(ETH_LEN + 6..ETH_LEN + 8)
                .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x3fff != 0);
            if fragment {
                return Err(DropReason::EgressFragment);
            }
            return Ok(Some(Flow {
                key,
                l4: None,
                seg: None,
            }));
        }
        let Some(l4) = l4_of(data)? else {
            return Ok(None);
        };
        if l4.key.proto != protocol::TCP && l4.key.proto != protocol::UDP {
            // SCTP: its CRC32c covers the ports, and its replies are not steered here.
            return Err(DropReason::EgressUnsupported);
        }
        if l4.fragment {
            return Err(DropReason::EgressFragment);
        }
        let seg = if l4.key.proto == protocol::TCP {
            let s = data
                .get(l4.l4_off..)
                .and_then(|t| Segment::parse(t, usize::from(l4.l4_len)))
                .ok_or(DropReason::L4Truncated)?;
            Some(s)
        } else {
            None
        };
        Ok(Some(Flow {
            key: l4.key,
            l4: Some(l4),
            seg,
        }))
    }

    /// Source-translates a pod's packet to the node's IP: the tracked flow's port, or a new
    /// one from the range.
    fn snat(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>) -> Result<(), DropReason> {
        let Some(flow) = self.flow_of(pkt)? else {
            // A protocol without ports (nor an echo): it cannot be told apart on the way
            // back, so it does not leave.
            return Err(DropReason::EgressUnsupported);
        };
        let key = flow.key;
        if key.proto == protocol::ICMP && !is_echo_request(pkt.data()) {
            // An echo reply from a pod answers nothing from outside: there is no way in.
            return Err(DropReason::EgressUnsupported);
        }
        if let Some(hit) = self.ct.lookup(&key).filter(|h| h.dir == Dir::Original) {
            match self.track_flow(pkt, &flow, hit.entry, hit.version, Dir::Original) {
                Ok(true) => {
                    self.translate(pkt, &flow, &hit.translated);
                    return Ok(());
                }
                Ok(false) => {
                    self.ct.remove_version(hit.entry, hit.version);
                }
                Err(r) => return Err(r),
            }
        }
        if let Some(s) = &flow.seg {
            crate::conntrack::tcp::check_new(s).map_err(DropReason::from)?;
        }
        let range = snap.egress.ports;
        let n = range.len();
        let start = (maglev::flow_hash(key.src, key.sport, key.dst, key.dport, key.proto)
            % u64::from(n)) as u32;
        let node_ip = snap.node.ip;
        let now = self.ct.now();
        let probes = if self.full.is_full(&key, now) {
            FULL_PROBES
        } else {
            MAX_PROBES
        };
        let mut tries = 0;
        for i in 0..n.min(probes) {
            let port = range.first + ((start + i) % n) as u16;
            // (For an echo, `sport` is the identifier.)
            let tr = FlowKey {
                src: node_ip,
                sport: port,
                ..key
            };
            if self.ct.lookup(&tr.reversed()).is_some() {
                continue;
            }
            let new = NewFlow {
                tcp: flow.seg,
                ..NewFlow::new(key, tr)
            };
            match self.ct.insert_flow(&new) {
                Ok(_) => {
                    // Not in the flow cache: Service NAT before routing would apply it.
                    self.translate(pkt, &flow, &tr);
                    self.counters.new_flows += 1;
                    return Ok(());
                }
                Err(InsertError::Full) => return Err(DropReason::ConntrackFull),
                Err(InsertError::Invalid(r)) => return Err(r.into()),
                // Another worker took this port in between: the next one.
                Err(InsertError::Clash) if tries < 16 => tries += 1,
                Err(InsertError::Clash) => break,
            }
        }
        self.full.mark(&key, now);
        Err(DropReason::SnatPortsExhausted)
    }

    fn translate(&mut self, pkt: &mut Packet<'_>, flow: &Flow, to: &FlowKey) {
        match &flow.l4 {
            Some(_) => rewrite(pkt.data_mut(), ETH_LEN, &flow.key, to),
            None => {
                let hl = pkt
                    .data()
                    .get(ETH_LEN)
                    .map_or(20, |b| usize::from(b & 0x0f) * 4);
                rewrite_echo(pkt.data_mut(), ETH_LEN + hl, &flow.key, to);
            }
        }
        self.counters.snat += 1;
    }

    /// Conntrack's verdict on one packet of a tracked flow (see `nat.rs`'s `track`).
    fn track_flow(
        &mut self,
        pkt: &Packet<'_>,
        flow: &Flow,
        entry: u32,
        version: u32,
        dir: Dir,
    ) -> Result<bool, DropReason> {
        let t = match &flow.l4 {
            Some(l4) if l4.key.proto == protocol::TCP => {
                let tcp = pkt.data().get(l4.l4_off..).unwrap_or(&[]);
                self.ct
                    .track_tcp_bytes(entry, version, dir, tcp, usize::from(l4.l4_len))
                    .ok_or(DropReason::L4Truncated)?
            }
            _ => self.ct.track(entry, version, dir, None),
        };
        match t {
            crate::conntrack::Track::Accept => Ok(true),
            crate::conntrack::Track::Invalid(r) => Err(r.into()),
            crate::conntrack::Track::Reopen | crate::conntrack::Track::Gone => Ok(false),
        }
    }

    /// A frame from the uplink to the node's IP that the XDP program sent here because it may
    /// be a masqueraded flow's (a port in the range, any ICMP). `None` if it is not for the
    /// switch at all (the caller goes on as before).
    pub(super) fn unmasquerade(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
    ) -> Option<Outcome> {
        // A cheap look first: this runs for every frame of the uplink, VXLAN included.
        let range = snap.egress.ports;
        let ours = {
            let d = pkt.data();
            let ip = d.get(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN)?;
            if ip[16..20] != snap.node.ip.octets() || !snap.egress.masquerade {
                return None;
            }
            let l4 = d.get(ETH_LEN + usize::from(ip[0] & 0x0f) * 4..)?;
            let later_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
            match ip[9] {
                _ if later_fragment => false,
                // (The XDP program sends only echo replies and errors; the rest is the
                // kernel's.)
                protocol::ICMP => l4
                    .first()
                    .is_some_and(|t| *t == kind::ECHO_REPLY || icmp::is_error(*t)),
                protocol::TCP | protocol::UDP => l4
                    .get(2..4)
                    .is_some_and(|p| range.contains(u16::from_be_bytes([p[0], p[1]]))),
                _ => false,
            }
        };
        if !ours {
            return None;
        }
        let (total, ok_sum, proto) = {
            let ip = match Ipv4Packet::new_checked(pkt.data().get(ETH_LEN..)?) {
                Ok(ip) => ip,
                Err(e) => return Some(Outcome::Drop(e.into())),
            };
            (
                usize::from(ip.total_len()),
                ip.verify_checksum(),
                ip.protocol(),
            )
        };
        if !ok_sum {
            return Some(Outcome::Drop(DropReason::Ipv4BadChecksum));
        }
        pkt.set_len(ETH_LEN + total);
        if super::offload::complete_partial_checksum(&mut pkt.data_mut()[ETH_LEN..]) {
            self.counters.checksums_completed += 1;
        }
        if proto == protocol::ICMP && self.is_icmp_error(pkt) {
            let before = self.counters.reverse_nat;
            let _ = self.nat_error_quote(snap, pkt);
            if self.counters.reverse_nat != before {
                return Some(self.route(snap, pkt, Hop::FromUplink));
            }
            return Some(self.hand_to_kernel(snap, pkt));
        }
        let flow = match self.flow_of(pkt) {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return Some(self.hand_to_kernel(snap, pkt)),
        };
        let Some(hit) = self.ct.lookup(&flow.key).filter(|h| h.dir == Dir::Reply) else {
            return Some(self.hand_to_kernel(snap, pkt));
        };
        match self.track_flow(pkt, &flow, hit.entry, hit.version, Dir::Reply) {
            Ok(true) => {}
            Ok(false) => return Some(self.hand_to_kernel(snap, pkt)),
            Err(r) => return Some(Outcome::Drop(r)),
        }
        let back = hit.original.reversed();
        match &flow.l4 {
            Some(_) => rewrite(pkt.data_mut(), ETH_LEN, &flow.key, &back),
            None => {
                let hl = pkt
                    .data()
                    .get(ETH_LEN)
                    .map_or(20, |b| usize::from(b & 0x0f) * 4);
                rewrite_echo(pkt.data_mut(), ETH_LEN + hl, &flow.key, &back);
            }
        }
        self.counters.reverse_nat += 1;
        Some(self.route(snap, pkt, Hop::FromUplink))
    }

    /// The node's own frame, sent here by the XDP program because it might have been a
    /// masqueraded flow's: to the kernel through the host port (else dropped, counted).
    fn hand_to_kernel(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>) -> Outcome {
        let Some(host) = snap.host() else {
            return Outcome::Drop(DropReason::EgressNoFlow);
        };
        let (port, mac) = (host.port, host.mac);
        let data = pkt.data_mut();
        if let Ok(mut eth) = EthernetFrame::new_checked(&mut data[..]) {
            eth.set_dst(mac);
            eth.set_src(snap.node.gateway_mac);
        }
        Outcome::Tx(port, Action::ToKernel)
    }
}

/// Whether an IPv4 frame carries an ICMP echo request.
fn is_echo_request(data: &[u8]) -> bool {
    let hl = data.get(ETH_LEN).map_or(0, |b| usize::from(b & 0x0f) * 4);
    data.get(ETH_LEN + hl) == Some(&kind::ECHO_REQUEST)
}

/// Sets a packet's source address to `to` (IPv4 checksum updated; for ICMP, whose checksum
/// covers no pseudo-header, nothing else changes).
fn masquerade_source(data: &mut [u8], to: Ipv4Addr) {
    if let Some(ip) = data.get_mut(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN) {
        let from = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
        let c = u16::from_be_bytes([ip[10], ip[11]]);
        ip[12..16].copy_from_slice(&to.octets());
        ip[10..12].copy_from_slice(&apply_delta(c, delta32(from, u32::from(to))).to_be_bytes());
    }
}
