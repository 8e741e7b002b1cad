//! Service NAT: DNAT of new and tracked flows to a backend, reverse NAT of replies, rejection
//! when a Service has no endpoints, and reverse translation of ICMP errors about translated
//! packets.
//!
//! Design: runs on IPv4 frames before routing. A destination that is a Service frontend is
//! translated to a backend (picked by ClientIP affinity or Maglev; hairpin flows also get their
//! source translated) and tracked in the shared conntrack table; a packet from an endpoint IP
//! whose tuple is a tracked reply is translated back. Checksums (IPv4 header, TCP/UDP over the
//! pseudo-header) are updated incrementally; a UDP checksum of 0 stays 0. After translation
//! the packet is routed like any other, so a backend on another node is reached over VXLAN.

use super::{Hop, Outcome, Pipeline};
use crate::conntrack::tcp;
use crate::conntrack::{Dir, FlowKey, InsertError, NewFlow, Segment, Track};
use crate::counters::{Action, DropReason};
use crate::maglev;
use crate::packet::Packet;
use crate::services::{FrontendKind, Selection};
use crate::snapshot::Snapshot;
use crate::wire::checksum;
use crate::wire::ethernet::HEADER_LEN as ETH_LEN;
use crate::wire::icmp::{self, kind};
use crate::wire::ipv4::{self, protocol, Ipv4Packet, Ipv4Repr};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;

/// IP protocol number of SCTP.
const SCTP: u8 = 132;
/// Marks affinity records in the conntrack table (a protocol number no packet is tracked with).
const AFFINITY_PROTO: u8 = 255;
/// "Port unreachable".
const CODE_PORT_UNREACHABLE: u8 = 3;

/// What NAT needs of a packet's headers.
#[derive(Debug, Clone, Copy)]
pub(super) struct L4 {
    pub key: FlowKey,
    pub l4_off: usize,
    /// L4 length from the IP header (total length less the header).
    pub l4_len: u16,
    pub tcp_flags: Option<u8>,
    pub fragment: bool,
}

/// Reads the 5-tuple; `Err` with a drop reason if the L4 header is too short, `Ok(None)` for
/// protocols without ports.
#[inline]
pub(super) fn l4_of(data: &[u8]) -> Result<Option<L4>, DropReason> {
    // Callers have validated the IPv4 header at offset 14 and trimmed the frame to its total
    // length; every read below is still bounds-checked, so a caller's mistake cannot panic.
    let Some(ip) = data.get(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN) else {
        return Err(DropReason::Ipv4Truncated);
    };
    let proto = ip[9];
    if proto != protocol::TCP && proto != protocol::UDP && proto != SCTP {
        return Ok(None);
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let l4_off = ETH_LEN + hl;
    let l4_len = u16::from_be_bytes([ip[2], ip[3]]).saturating_sub(hl as u16);
    let flags_frag = u16::from_be_bytes([ip[6], ip[7]]);
    let fragment = flags_frag & 0x3fff != 0;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    if flags_frag & 0x1fff != 0 {
        // Later fragments carry no ports.
        let key = FlowKey {
            src,
            dst,
            sport: 0,
            dport: 0,
            proto,
        };
        return Ok(Some(L4 {
            key,
            l4_off,
            l4_len,
            tcp_flags: None,
            fragment,
        }));
    }
    let need = match proto {
        protocol::TCP => 20,
        protocol::UDP => 8,
        _ => 12,
    };
    let Some(p) = data.get(l4_off..l4_off + need) else {
        return Err(DropReason::L4Truncated);
    };
    let key = FlowKey {
        src,
        dst,
        sport: u16::from_be_bytes([p[0], p[1]]),
        dport: u16::from_be_bytes([p[2], p[3]]),
        proto,
    };
    let tcp_flags = (proto == protocol::TCP).then(|| p[13]);
    Ok(Some(L4 {
        key,
        l4_off,
        l4_len,
        tcp_flags,
        fragment,
    }))
}

/// The TCP fields conntrack judges a segment by; `Err` if the header is inconsistent with
/// the IP header (data offset below 20 or beyond the segment).
#[inline]
fn tcp_segment(data: &[u8], l4: &L4) -> Result<Segment, DropReason> {
    data.get(l4.l4_off..)
        .and_then(|t| Segment::parse(t, usize::from(l4.l4_len)))
        .ok_or(DropReason::L4Truncated)
}

/// What the flow cache made of a packet.
enum Cached {
    /// Not cached (or no longer valid): decide it the long way.
    Miss,
    /// Translated (or known to need nothing).
    Done,
    /// Dropped by conntrack.
    Drop(DropReason),
}

/// Offset of the L4 checksum from the L4 header's start, and whether 0 means "none".
fn l4_checksum_field(proto: u8) -> Option<(usize, bool)> {
    match proto {
        protocol::TCP => Some((16, false)),
        protocol::UDP => Some((6, true)),
        _ => None,
    }
}

use checksum::{apply_delta as apply, delta16, delta32};

/// Rewrites the packet's tuple from `from` to `to` (addresses and ports), updating the IPv4
/// and L4 checksums incrementally with one delta each. Works on packets quoted in ICMP errors
/// too (cut short after the ports: fields beyond the data are left alone).
pub(super) fn rewrite(data: &mut [u8], ip_off: usize, from: &FlowKey, to: &FlowKey) {
    let Some(ip) = data.get_mut(ip_off..) else {
        return;
    };
    if ip.len() < ipv4::MIN_HEADER_LEN {
        return;
    }
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let mut d_ip = 0u32;
    if from.src != to.src {
        d_ip += delta32(u32::from(from.src), u32::from(to.src));
        ip[12..16].copy_from_slice(&to.src.octets());
    }
    if from.dst != to.dst {
        d_ip += delta32(u32::from(from.dst), u32::from(to.dst));
        ip[16..20].copy_from_slice(&to.dst.octets());
    }
    if d_ip != 0 {
        let c = u16::from_be_bytes([ip[10], ip[11]]);
        ip[10..12].copy_from_slice(&apply(c, d_ip).to_be_bytes());
    }
    let Some(l4) = ip.get_mut(hl..) else {
        return;
    };
    if l4.len() < 4 {
        return;
    }
    let mut d = d_ip;
    if from.sport != to.sport {
        d += delta16(from.sport, to.sport);
        l4[0..2].copy_from_slice(&to.sport.to_be_bytes());
    }
    if from.dport != to.dport {
        d += delta16(from.dport, to.dport);
        l4[2..4].copy_from_slice(&to.dport.to_be_bytes());
    }
    let Some((off, zero_is_none)) = l4_checksum_field(from.proto) else {
        return;
    };
    let Some(field) = l4.get_mut(off..off + 2) else {
        return;
    };
    let c = u16::from_be_bytes([field[0], field[1]]);
    if zero_is_none && c == 0 {
        return;
    }
    let mut c = apply(c, d);
    if zero_is_none && c == 0 {
        c = 0xffff;
    }
    field.copy_from_slice(&c.to_be_bytes());
}

/// The cheap pre-check before any NAT lookup: Services exist, and the packet is ICMP (errors
/// may quote translated packets) or has an address the Service tables' filter knows. False
/// means no NAT can apply.
#[inline]
pub(super) fn may_need_nat(snap: &Snapshot, data: &[u8]) -> bool {
    if snap.services.frontends.is_empty() {
        return false;
    }
    let Some(ip) = data.get(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN) else {
        return false;
    };
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    ip[9] == protocol::ICMP || snap.services.may_translate(src, dst)
}

impl Pipeline {
    /// Service handling for a packet from a pod (before routing). `Some` if it is decided here.
    pub(super) fn nat_from_pod(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
    ) -> Option<Outcome> {
        let svc = &snap.services;
        if !may_need_nat(snap, pkt.data()) {
            return None;
        }
        let l4 = match l4_of(pkt.data()) {
            Ok(Some(l4)) => l4,
            Ok(None) => return self.nat_icmp_error(snap, pkt),
            Err(r) => {
                // Too short to tell: only a drop if it was aimed at a Service.
                return pkt
                    .data()
                    .get(ETH_LEN + 16..ETH_LEN + 20)
                    .map(|d| Ipv4Addr::new(d[0], d[1], d[2], d[3]))
                    .filter(|d| svc.frontends_ip(*d))
                    .map(|_| Outcome::Drop(r));
            }
        };
        if !l4.fragment {
            match self.apply_cached(snap, pkt, &l4) {
                Cached::Done => return None,
                Cached::Drop(r) => return Some(Outcome::Drop(r)),
                Cached::Miss => {}
            }
        }
        if let Some(fe) = svc.frontend(l4.key.dst, l4.key.dport, l4.key.proto) {
            return self.dnat(snap, pkt, &l4, fe.port, fe.kind, None);
        }
        let backend = svc.is_backend_ip(l4.key.src) || Some(l4.key.dst) == svc.hairpin_ip;
        self.reverse_or_pass(snap, pkt, &l4, backend)
    }

    /// Reverse NAT if the tuple is a tracked reply; otherwise remember that it needs nothing.
    fn reverse_or_pass(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
        l4: &L4,
        backend: bool,
    ) -> Option<Outcome> {
        // Read before the lookup: an insert that lands after it invalidates the pass entry.
        let epoch = self.ct.insert_epoch();
        if backend {
            let before = self.counters.reverse_nat;
            if let Some(o) = self.reverse_nat(snap, pkt, l4) {
                return Some(o);
            }
            if self.counters.reverse_nat != before {
                return None;
            }
        }
        if !l4.fragment {
            self.cache.put_pass(&l4.key, snap.generation, epoch);
        }
        None
    }

    /// Records a packet of a tracked connection (TCP: judged by state and window). `Err`
    /// with the drop reason if conntrack finds it invalid; `Ok(false)` if the entry is gone
    /// or the tuple is being reopened (decide it again).
    #[inline(always)]
    fn track(
        &mut self,
        pkt: &Packet<'_>,
        l4: &L4,
        entry: u32,
        version: u32,
        dir: Dir,
    ) -> Result<bool, DropReason> {
        let t = if l4.key.proto == protocol::TCP {
            let tcp = pkt.data().get(l4.l4_off..).unwrap_or(&[]);
            self.ct
                .track_tcp_bytes(entry, version, dir, tcp, usize::from(l4.l4_len))
                .ok_or(DropReason::L4Truncated)?
        } else {
            self.ct.track(entry, version, dir, None)
        };
        match t {
            Track::Accept => Ok(true),
            Track::Invalid(r) => Err(r.into()),
            Track::Reopen | Track::Gone => Ok(false),
        }
    }

    /// The flow-cache fast path: if this tuple's translation is cached and still valid,
    /// record the packet in conntrack and apply it (precomputed checksum deltas).
    #[inline]
    fn apply_cached(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>, l4: &L4) -> Cached {
        let Some(c) = self.cache.get(&l4.key, snap.generation) else {
            return Cached::Miss;
        };
        if c.pass {
            return if c.epoch == self.ct.insert_epoch() {
                Cached::Done
            } else {
                Cached::Miss
            };
        }
        let (entry, version, dir) = (c.entry, c.version, c.dir());
        let (to_src, to_dst, to_ports, d_ip, d_l4) =
            (c.to_src, c.to_dst, c.to_ports, c.d_ip, c.d_l4);
        match self.track(pkt, l4, entry, version, dir) {
            Ok(true) => {}
            Ok(false) => {
                self.cache.forget(&l4.key);
                return Cached::Miss;
            }
            Err(r) => return Cached::Drop(r),
        }
        let data = pkt.data_mut();
        let Some(ip) = data.get_mut(ETH_LEN..ETH_LEN + ipv4::MIN_HEADER_LEN) else {
            return Cached::Miss;
        };
        ip[12..16].copy_from_slice(&to_src.to_be_bytes());
        ip[16..20].copy_from_slice(&to_dst.to_be_bytes());
        if d_ip != 0 {
            let old = u16::from_be_bytes([ip[10], ip[11]]);
            ip[10..12].copy_from_slice(&apply(old, d_ip).to_be_bytes());
        }
        if let Some(t) = data.get_mut(l4.l4_off..l4.l4_off + 4) {
            t.copy_from_slice(&to_ports.to_be_bytes());
        }
        if let Some((off, zero_is_none)) = l4_checksum_field(l4.key.proto) {
            if let Some(f) = data.get_mut(l4.l4_off + off..l4.l4_off + off + 2) {
                let old = u16::from_be_bytes([f[0], f[1]]);
                if !(zero_is_none && old == 0) {
                    let mut n = apply(old, d_l4);
                    if zero_is_none && n == 0 {
                        n = 0xffff;
                    }
                    f.copy_from_slice(&n.to_be_bytes());
                }
            }
        }
        match dir {
            Dir::Original => self.counters.dnat += 1,
            Dir::Reply => self.counters.reverse_nat += 1,
        }
        Cached::Done
    }

    /// NodePort and LoadBalancer/external IP traffic arriving on the uplink. `None` if the
    /// frame is not for a Service (it then goes the uplink's usual way).
    pub(super) fn nat_from_uplink(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
    ) -> Option<Outcome> {
        let svc = &snap.services;
        let (dst, total, ok_sum, peer) = {
            let data = pkt.data();
            let ip = Ipv4Packet::new_checked(data.get(ETH_LEN..)?).ok()?;
            if !svc.frontends_ip(ip.dst()) {
                return None;
            }
            let mut peer = [0u8; 6];
            peer.copy_from_slice(&data[6..12]);
            (
                ip.dst(),
                usize::from(ip.total_len()),
                ip.verify_checksum(),
                peer,
            )
        };
        let l4 = match l4_of(pkt.data()) {
            Ok(Some(l4)) => l4,
            Ok(None) => return None,
            Err(r) => return Some(Outcome::Drop(r)),
        };
        let fe = svc.frontend(dst, l4.key.dport, l4.key.proto)?;
        if fe.kind == FrontendKind::ClusterIp {
            return None;
        }
        if !ok_sum {
            return Some(Outcome::Drop(DropReason::Ipv4BadChecksum));
        }
        pkt.set_len(ETH_LEN + total);
        if super::offload::complete_partial_checksum(&mut pkt.data_mut()[ETH_LEN..]) {
            self.counters.checksums_completed += 1;
        }
        if let Some(o) = self.dnat(snap, pkt, &l4, fe.port, fe.kind, Some(peer)) {
            return Some(o);
        }
        Some(self.route(snap, pkt, Hop::FromUplink))
    }

    /// Reverse NAT for a packet decapsulated from another node (replies of remote backends).
    pub(super) fn nat_from_overlay(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
    ) -> Option<Outcome> {
        let svc = &snap.services;
        if !may_need_nat(snap, pkt.data()) {
            return None;
        }
        match l4_of(pkt.data()) {
            Ok(Some(l4)) if !l4.fragment => match self.apply_cached(snap, pkt, &l4) {
                Cached::Done => None,
                Cached::Drop(r) => Some(Outcome::Drop(r)),
                Cached::Miss => {
                    let backend = svc.is_backend_ip(l4.key.src);
                    self.reverse_or_pass(snap, pkt, &l4, backend)
                }
            },
            Ok(Some(l4)) => {
                let backend = svc.is_backend_ip(l4.key.src);
                self.reverse_or_pass(snap, pkt, &l4, backend)
            }
            Ok(None) => self.nat_icmp_error(snap, pkt),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dnat(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
        l4: &L4,
        port: u32,
        kind: FrontendKind,
        peer: Option<[u8; 6]>,
    ) -> Option<Outcome> {
        if l4.fragment {
            return Some(Outcome::Drop(DropReason::ServiceFragment));
        }
        if l4.key.proto == SCTP {
            return Some(Outcome::Drop(DropReason::SctpUnsupported));
        }
        let svc = &snap.services;
        let sp = svc.ports.get(port as usize)?;
        let service = svc.services.get(sp.service as usize)?;
        let key = l4.key;
        let seg = if key.proto == protocol::TCP {
            match tcp_segment(pkt.data(), l4) {
                Ok(s) => Some(s),
                Err(r) => return Some(Outcome::Drop(r)),
            }
        } else {
            None
        };
        if let Some(hit) = self.ct.lookup(&key).filter(|h| h.dir == Dir::Original) {
            if seg.is_none() && !sp.has_backend(hit.translated.dst, hit.translated.dport) {
                // The stale-conntrack blackhole kube-proxy had: move the flow to a live backend.
                self.ct.remove_version(hit.entry, hit.version);
            } else {
                match self
                    .ct
                    .track(hit.entry, hit.version, Dir::Original, seg.as_ref())
                {
                    Track::Accept => {
                        rewrite(pkt.data_mut(), ETH_LEN, &key, &hit.translated);
                        self.counters.dnat += 1;
                        return None;
                    }
                    Track::Invalid(r) => return Some(Outcome::Drop(r.into())),
                    Track::Reopen => {
                        // Port reuse: a new connection on a closed one's tuple is decided
                        // afresh, from the endpoints there are now.
                        if self.ct.remove_version(hit.entry, hit.version) {
                            self.ct.counters.reopened.fetch_add(1, Relaxed);
                        }
                    }
                    Track::Gone => {}
                }
            }
        }
        if let Some(s) = &seg {
            // A segment that cannot open a connection picks no backend and leaves nothing.
            if let Err(r) = tcp::check_new(s) {
                return Some(Outcome::Drop(r.into()));
            }
        }
        let local = match kind {
            FrontendKind::ClusterIp => service.internal_local,
            FrontendKind::NodePort | FrontendKind::External => service.external_local,
        };
        let sel: &Selection = if local { &sp.local } else { &sp.cluster };
        if sel.is_empty() {
            if local && !sp.cluster.is_empty() {
                return Some(Outcome::Drop(DropReason::NoLocalEndpoints));
            }
            return Some(self.reject(snap, pkt, l4));
        }
        let backend_idx = match service.affinity_timeout {
            Some(timeout) => self.affinity_pick(&key, sel, sp, timeout)?,
            None => sel.pick(maglev::flow_hash(
                key.src, key.sport, key.dst, key.dport, key.proto,
            ))?,
        };
        let b = sp.backends.get(backend_idx as usize)?;
        let mut tr = FlowKey {
            dst: b.ip,
            dport: b.port,
            ..key
        };
        if b.ip == key.src {
            // Hairpin: the pod reaches itself through its Service; make the reply come back.
            tr.src = svc.hairpin_ip.unwrap_or(snap.node.gateway_ip);
        } else if b.ip == snap.node.ip {
            // A host-network endpoint on this node: its kernel would answer a pod straight
            // through the pod's veth, anyone else by its own routes, and itself not at all (a
            // packet from its own address). The gateway address is none of these and routed
            // into the host port, so the reply comes back through the switch.
            tr.src = snap.node.gateway_ip;
        }
        if peer.is_some() && !local && !b.local {
            // From outside to a backend on another node (externalTrafficPolicy Cluster): the
            // backend must reply through this node, so translate the source to an address
            // of this node's pod CIDR (as Flannel's masquerade to its flannel.1 address does).
            tr.src = snap.node.gateway_ip;
        }
        let mut flow = NewFlow {
            tcp: seg,
            peer,
            ..NewFlow::new(key, tr)
        };
        let mut attempt = 0u32;
        loop {
            match self.ct.insert_flow(&flow) {
                Ok((entry, version)) => {
                    if peer.is_none() {
                        self.cache.put(
                            &key,
                            &flow.translated,
                            Dir::Original,
                            entry,
                            version,
                            snap.generation,
                        );
                    }
                    break;
                }
                Err(InsertError::Full) => return Some(Outcome::Drop(DropReason::ConntrackFull)),
                Err(InsertError::Invalid(r)) => return Some(Outcome::Drop(r.into())),
                Err(InsertError::Clash) if attempt < 16 => {
                    // Another tracked flow already owns this reply tuple: move the source port
                    // (as netfilter's clash resolution does).
                    attempt += 1;
                    let h = maglev::flow_hash(key.src, key.sport, key.dst, key.dport, key.proto);
                    let span = 61000 - 32768;
                    flow.translated.sport =
                        32768 + ((h.wrapping_add(u64::from(attempt) * 7919)) % span) as u16;
                }
                Err(InsertError::Clash) => return Some(Outcome::Drop(DropReason::NatClash)),
            }
        }
        rewrite(pkt.data_mut(), ETH_LEN, &key, &flow.translated);
        self.counters.dnat += 1;
        self.counters.new_flows += 1;
        None
    }

    /// ClientIP affinity: the backend this client used within the timeout (each new
    /// connection it makes renews it), else a Maglev pick on the connection's whole 5-tuple
    /// (so past the timeout it may land on any backend), remembered in the conntrack table.
    fn affinity_pick(
        &mut self,
        key: &FlowKey,
        sel: &Selection,
        sp: &crate::services::ServicePort,
        timeout: u32,
    ) -> Option<u32> {
        let akey = FlowKey {
            src: key.src,
            dst: key.dst,
            sport: 0,
            dport: key.dport,
            proto: AFFINITY_PROTO,
        };
        if let Some(hit) = self.ct.lookup(&akey) {
            let usable = sel.members.iter().copied().find(|&i| {
                sp.backends
                    .get(i as usize)
                    .is_some_and(|b| b.ip == hit.translated.dst && b.port == hit.translated.dport)
            });
            if let Some(i) = usable {
                self.ct.refresh(hit.entry, hit.version, timeout);
                return Some(i);
            }
            self.ct.remove_version(hit.entry, hit.version);
        }
        let i = sel.pick(maglev::flow_hash(
            key.src, key.sport, key.dst, key.dport, key.proto,
        ))?;
        let b = sp.backends.get(i as usize)?;
        // The translated side names the Service too, so two Services' records never clash.
        let tr = FlowKey {
            src: key.dst,
            sport: key.dport,
            dst: b.ip,
            dport: b.port,
            proto: AFFINITY_PROTO,
        };
        // Looked up by client only: no reply index, so clients of one backend never clash.
        let _ = self.ct.insert_flow(&NewFlow {
            timeout: Some(timeout),
            index_reply: false,
            ..NewFlow::new(akey, tr)
        });
        Some(i)
    }

    fn reverse_nat(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>, l4: &L4) -> Option<Outcome> {
        let hit = self.ct.lookup(&l4.key)?;
        if hit.dir != Dir::Reply {
            return None;
        }
        if !l4.fragment {
            match self.track(pkt, l4, hit.entry, hit.version, Dir::Reply) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(r) => return Some(Outcome::Drop(r)),
            }
        }
        let back = hit.original.reversed();
        rewrite(pkt.data_mut(), ETH_LEN, &l4.key, &back);
        self.counters.reverse_nat += 1;
        let Some(mac) = self.ct.peer(hit.entry) else {
            self.cache.put(
                &l4.key,
                &back,
                Dir::Reply,
                hit.entry,
                hit.version,
                snap.generation,
            );
            return None;
        };
        // A reply to a client outside the cluster: straight back out of the uplink, to the
        // MAC the request came from.
        let data = pkt.data_mut();
        if data.get(ETH_LEN + 8).is_none_or(|t| *t <= 1) {
            return Some(Outcome::Drop(DropReason::TtlExceeded));
        }
        ipv4::decrement_ttl(&mut data[ETH_LEN..]);
        data[0..6].copy_from_slice(&mac);
        data[6..12].copy_from_slice(&snap.node.uplink_mac.0);
        Some(Outcome::Tx(
            crate::packet::PortId::UPLINK,
            Action::ToExternal,
        ))
    }

    /// An ICMP error about a translated packet: translate the error and the packet it quotes
    /// back, so the client sees the Service address (path-MTU discovery works through it).
    pub(super) fn nat_error_quote(
        &mut self,
        snap: &Snapshot,
        pkt: &mut Packet<'_>,
    ) -> Option<Outcome> {
        self.nat_icmp_error(snap, pkt)
    }

    fn nat_icmp_error(&mut self, _snap: &Snapshot, pkt: &mut Packet<'_>) -> Option<Outcome> {
        let data = pkt.data();
        let ip = Ipv4Packet::new_checked(data.get(ETH_LEN..)?).ok()?;
        if ip.protocol() != protocol::ICMP || ip.is_fragment() {
            return None;
        }
        let outer_hl = ip.header_len();
        let msg = ip.payload();
        if msg.len() < icmp::HEADER_LEN + ipv4::MIN_HEADER_LEN + 4 || !icmp::is_error(msg[0]) {
            return None;
        }
        let q_off = ETH_LEN + outer_hl + icmp::HEADER_LEN;
        let quoted = Ipv4Packet::new_checked_lenient(data.get(q_off..)?).ok()?;
        let qhl = quoted.header_len();
        let qp = data.get(q_off + qhl..q_off + qhl + 4)?;
        // The quoted packet went from the client to the backend: its reverse is a reply tuple.
        let inner = FlowKey {
            src: quoted.src(),
            dst: quoted.dst(),
            sport: u16::from_be_bytes([qp[0], qp[1]]),
            dport: u16::from_be_bytes([qp[2], qp[3]]),
            proto: quoted.protocol(),
        };
        let outer_src = ip.src();
        let outer_dst = ip.dst();
        if !checksum::verify(msg) {
            // Leave a corrupt error as it is: recomputing its checksum would make it valid.
            return None;
        }
        let hit = self.ct.lookup(&inner.reversed())?;
        // Reply hit: the quote is a client's packet after DNAT (client -> backend); undo it
        // for the client. Original hit: the quote is a backend's reply after reverse NAT
        // (VIP -> client); redo it for the backend.
        let (want, to) = match hit.dir {
            Dir::Reply => (hit.original, hit.original.src),
            Dir::Original => (hit.translated.reversed(), hit.translated.dst),
        };
        if outer_dst != inner.src {
            return None;
        }
        let data = pkt.data_mut();
        rewrite_quoted(data, q_off, &inner, &want);
        let mut outer = Ipv4Packet::new_checked(&mut data[ETH_LEN..]).ok()?;
        if outer_src == inner.dst {
            // The error came from the end the quote was sent to: make it come from that end
            // as the receiver knows it.
            outer.set_src(want.dst);
        }
        if outer.dst() != to {
            outer.set_dst(to);
        }
        let total = usize::from(outer.total_len());
        let m = &mut data[ETH_LEN + outer_hl..ETH_LEN + total];
        m[2] = 0;
        m[3] = 0;
        let c = checksum::checksum(m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        self.counters.reverse_nat += 1;
        None
    }

    /// Answers a flow to a Service without endpoints at once: TCP RST, or ICMP port unreachable.
    fn reject(&mut self, snap: &Snapshot, pkt: &mut Packet<'_>, l4: &L4) -> Outcome {
        let key = l4.key;
        if key.proto != protocol::TCP {
            return self
                .icmp_error_from(
                    snap,
                    pkt,
                    kind::DEST_UNREACHABLE,
                    CODE_PORT_UNREACHABLE,
                    0,
                    DropReason::NoRoute,
                    key.dst,
                )
                .as_action(Action::Rejected);
        }
        let flags = l4.tcp_flags.unwrap_or(0);
        if flags & 0x04 != 0 {
            // Never answer a RST.
            return Outcome::Drop(DropReason::NoRoute);
        }
        let (seq, ack, payload_len) = {
            let d = pkt.data();
            let t = &d[l4.l4_off..];
            let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            let ack = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
            let doff = usize::from(t[12] >> 4) * 4;
            (seq, ack, t.len().saturating_sub(doff))
        };
        let (rst_seq, rst_ack, rst_flags) = if flags & 0x10 != 0 {
            (ack, 0, 0x04)
        } else {
            let mut a = seq.wrapping_add(payload_len as u32);
            if flags & 0x02 != 0 {
                a = a.wrapping_add(1);
            }
            if flags & 0x01 != 0 {
                a = a.wrapping_add(1);
            }
            (0, a, 0x14)
        };
        let ident = self.next_ident();
        if !pkt.set_len(ETH_LEN + 40) {
            return Outcome::Drop(DropReason::NoTailroom);
        }
        let d = pkt.data_mut();
        ipv4::write_header(
            &mut d[ETH_LEN..],
            &Ipv4Repr {
                tos: 0,
                total_len: 40,
                ident,
                dont_frag: true,
                ttl: 64,
                protocol: protocol::TCP,
                src: key.dst.octets(),
                dst: key.src.octets(),
            },
        );
        let t = &mut d[ETH_LEN + 20..ETH_LEN + 40];
        t[0..2].copy_from_slice(&key.dport.to_be_bytes());
        t[2..4].copy_from_slice(&key.sport.to_be_bytes());
        t[4..8].copy_from_slice(&rst_seq.to_be_bytes());
        t[8..12].copy_from_slice(&rst_ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = rst_flags;
        t[14..20].fill(0);
        let sum =
            checksum::pseudo_header_sum(key.dst.octets(), key.src.octets(), protocol::TCP, 20)
                + checksum::sum(t);
        let c = !checksum::fold(sum);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        self.route(snap, pkt, Hop::Generated)
            .as_action(Action::Rejected)
    }
}

/// Rewrites a packet quoted inside an ICMP error (its IPv4 and L4 checksums incrementally;
/// the quote may be cut short after the ports).
fn rewrite_quoted(data: &mut [u8], q_off: usize, from: &FlowKey, to: &FlowKey) {
    rewrite(data, q_off, from, to);
}
