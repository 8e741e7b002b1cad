//! Answers to the read-only queries: lists with Maglev distributions, conntrack entries with
//! filters, and `explain` (the decision chain a packet would take).
//!
//! Design: everything is computed from one snapshot (and the live conntrack table, read
//! lock-free), so an answer describes exactly one generation. `explain` does not re-implement
//! the pipeline: it builds the frame the packet would be, runs it through a [`Pipeline`] with a
//! private conntrack table (so the live one is not touched) and reports the pipeline's own
//! verdict and rewrite, with the table lookups that explain it. Pure functions of their inputs;
//! any thread may call them.

use crate::convert;
use crate::error::ApiError;
use crate::pb;
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use flowtable::conntrack::{Conntrack, EntryInfo, Timeouts};
use flowtable::egress::Leaving;
use flowtable::maglev;
use flowtable::packet::{Packet, PortId, DEFAULT_HEADROOM};
use flowtable::pipeline::{Pipeline, Verdict};
use flowtable::services::{FrontendKind, Selection, ServicePort};
use flowtable::snapshot::Snapshot;
use flowtable::state::ServiceSpec;
use std::net::Ipv4Addr;
use std::sync::Arc;

fn proto_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        132 => "SCTP".into(),
        255 => "affinity".into(),
        n => n.to_string(),
    }
}

fn shares(
    sp: &ServicePort,
    sel: &Selection,
    nodes: &dyn Fn(Ipv4Addr) -> String,
) -> Vec<pb::BackendShare> {
    let Some(m) = &sel.maglev else {
        return Vec::new();
    };
    let d = m.distribution(sel.members.len());
    sel.members
        .iter()
        .zip(d)
        .filter_map(|(&i, entries)| {
            let b = sp.backends.get(i as usize)?;
            Some(pb::BackendShare {
                ip: b.ip.to_string(),
                port: b.port.into(),
                node: nodes(b.ip),
                entries: entries as u32,
                percent: 100.0 * entries as f64 / m.len() as f64,
            })
        })
        .collect()
}

/// A Service with its ports' Maglev tables as the given snapshot has them.
pub fn service_info(spec: &ServiceSpec, snap: &Snapshot) -> pb::ServiceInfo {
    let t = &snap.services;
    let node_of = |ip: Ipv4Addr| {
        spec.endpoints
            .iter()
            .find(|e| e.ip == ip)
            .map(|e| e.node.clone())
            .unwrap_or_default()
    };
    let ports = t
        .service(&spec.name)
        .map(|s| {
            s.ports
                .iter()
                .filter_map(|&pi| t.ports.get(pi as usize))
                .map(|sp| pb::PortInfo {
                    name: sp.name.clone(),
                    protocol: proto_name(sp.protocol),
                    port: sp.port.into(),
                    target_port: sp.target_port.into(),
                    node_port: sp.node_port.map(u32::from).unwrap_or(0),
                    table_size: sp
                        .cluster
                        .maglev
                        .as_ref()
                        .map(|m| m.len() as u32)
                        .unwrap_or(0),
                    cluster: shares(sp, &sp.cluster, &node_of),
                    local: shares(sp, &sp.local, &node_of),
                })
                .collect()
        })
        .unwrap_or_default();
    pb::ServiceInfo {
        service: Some(convert::service_pb(spec)),
        ports,
    }
}

/// The endpoints of a Service, each with whether a Maglev table holds it.
pub fn endpoint_infos(spec: &ServiceSpec, snap: &Snapshot) -> Vec<pb::EndpointInfo> {
    let t = &snap.services;
    let first = t
        .service(&spec.name)
        .and_then(|s| s.ports.first())
        .and_then(|&pi| t.ports.get(pi as usize));
    spec.endpoints
        .iter()
        .map(|e| {
            let usable = first.is_some_and(|sp| {
                sp.cluster
                    .members
                    .iter()
                    .chain(sp.local.members.iter())
                    .any(|&i| sp.backends.get(i as usize).is_some_and(|b| b.ip == e.ip))
            });
            pb::EndpointInfo {
                service: spec.name.clone(),
                endpoint: Some(convert::endpoint_pb(e)),
                usable,
            }
        })
        .collect()
}

/// An entry's state as shown and filtered: the TCP state (`syn_sent`, `established`, ...),
/// else `unreplied` or `replied`.
fn state_name(e: &EntryInfo) -> &'static str {
    match (e.original.proto, e.replied) {
        (6, _) => e.state.name(),
        (_, false) => "unreplied",
        (_, true) => "replied",
    }
}

/// The states `ct list --state` accepts: any shown name, and the groups `new` (not yet
/// answered or half-open) and `closing` (FIN or RST seen).
fn state_matches(filter: &str, e: &EntryInfo) -> bool {
    let name = state_name(e);
    match filter {
        "new" => matches!(name, "syn_sent" | "syn_recv" | "syn_sent2" | "unreplied"),
        "closing" => e.original.proto == 6 && e.state.closing(),
        f => f == name,
    }
}

const STATE_FILTERS: &[&str] = &[
    "new",
    "closing",
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait",
    "close_wait",
    "last_ack",
    "time_wait",
    "close",
    "syn_sent2",
    "unreplied",
    "replied",
];

/// The live conntrack entries that match the request's filters.
pub fn conntrack(
    ct: &Conntrack,
    req: &pb::ListConntrackRequest,
) -> Result<pb::ListConntrackResponse, ApiError> {
    let addr = if req.address.is_empty() {
        None
    } else {
        Some(convert::ip("address", &req.address)?)
    };
    let proto = match req.protocol.to_ascii_uppercase().as_str() {
        "" => None,
        "TCP" => Some(6),
        "UDP" => Some(17),
        "ICMP" => Some(1),
        "SCTP" => Some(132),
        "AFFINITY" => Some(255),
        other => {
            return Err(ApiError::Invalid {
                field: "protocol".into(),
                reason: format!(
                    "unknown protocol {} (TCP, UDP, ICMP, SCTP or affinity)",
                    flowtable::names::quote(other)
                ),
            })
        }
    };
    let port = match req.port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| ApiError::Invalid {
            field: "port".into(),
            reason: format!("{p} is outside 1..=65535"),
        })?),
    };
    let state = match req.state.as_str() {
        "" => None,
        s if STATE_FILTERS.contains(&s) => Some(s),
        other => {
            let shown: String = other
                .chars()
                .take(40)
                .flat_map(char::escape_default)
                .collect();
            return Err(ApiError::Invalid {
                field: "state".into(),
                reason: format!(
                    "unknown state '{shown}' (one of {})",
                    STATE_FILTERS.join(", ")
                ),
            });
        }
    };
    let limit = if req.limit == 0 {
        1000
    } else {
        req.limit as usize
    };
    let all = ct.entries();
    let total = all.len() as u64;
    let mut matched = 0u64;
    let mut entries = Vec::new();
    for e in all {
        let (o, t) = (e.original, e.translated);
        let ok = addr.is_none_or(|a| [o.src, o.dst, t.src, t.dst].contains(&a))
            && proto.is_none_or(|p| o.proto == p)
            && port.is_none_or(|p| [o.sport, o.dport, t.sport, t.dport].contains(&p))
            && state.is_none_or(|x| state_matches(x, &e));
        if !ok {
            continue;
        }
        matched += 1;
        if entries.len() < limit {
            entries.push(pb::ConntrackEntry {
                protocol: proto_name(o.proto),
                src: o.src.to_string(),
                sport: o.sport.into(),
                dst: o.dst.to_string(),
                dport: o.dport.into(),
                translated_src: t.src.to_string(),
                translated_sport: t.sport.into(),
                translated_dst: t.dst.to_string(),
                translated_dport: t.dport.into(),
                state: state_name(&e).into(),
                replied: e.replied,
                assured: e.assured,
                expires_in: e.expires_in,
            });
        }
    }
    entries.sort_by(|a, b| (&a.src, a.sport, &a.dst).cmp(&(&b.src, b.sport, &b.dst)));
    Ok(pb::ListConntrackResponse {
        entries,
        matched,
        total,
        capacity: ct.capacity() as u64,
    })
}

fn step(table: &str, result: impl Into<String>) -> pb::ExplainStep {
    pb::ExplainStep {
        table: table.into(),
        result: result.into(),
    }
}

/// Where an address is, as the snapshot routes it.
fn locate(snap: &Snapshot, ip: Ipv4Addr) -> String {
    if ip == snap.node.ip {
        return format!("this node's address ({})", snap.node.name);
    }
    if let Some(p) = snap.pod_by_ip(ip) {
        let port = snap.port_name(p.port).unwrap_or("?");
        return format!("local pod {} on port {port}", p.name);
    }
    if snap.node.pod_cidr.contains(ip) {
        return format!(
            "in this node's pod CIDR {}, but no pod has it",
            snap.node.pod_cidr
        );
    }
    if let Some(r) = snap.remote_for(ip) {
        return format!(
            "node {}'s pod CIDR {} (VXLAN to {})",
            r.name, r.pod_cidr, r.ip
        );
    }
    if let Some(r) = snap.remote_by_vtep(ip) {
        return format!("node {}'s own address (over the underlay)", r.name);
    }
    match snap.egress.leaving(ip) {
        Leaving::Cluster => "in the cluster's ranges, but nothing has it".into(),
        Leaving::Routed => "outside the cluster: out of the uplink with the pod's address".into(),
        Leaving::Masqueraded => format!(
            "outside the cluster: masqueraded to {} (ports {}), out of the uplink",
            snap.node.ip, snap.egress.ports
        ),
    }
}

/// The decision chain for a packet through `snap`, with the live conntrack table consulted
/// (read only) for an existing flow.
pub fn explain(
    snap: &Snapshot,
    live: Option<&Arc<Conntrack>>,
    hops: Option<flowtable::egress::NextHopsCell>,
    req: &pb::ExplainRequest,
) -> Result<pb::ExplainResponse, ApiError> {
    let src = convert::ip("src", &req.src)?;
    let dst = convert::ip("dst", &req.dst)?;
    let proto = match req.protocol.to_ascii_uppercase().as_str() {
        "" | "TCP" => 6u8,
        "UDP" => 17,
        "ICMP" => 1,
        other => {
            return Err(ApiError::Invalid {
                field: "protocol".into(),
                reason: format!(
                    "unknown protocol {} (TCP, UDP or ICMP)",
                    flowtable::names::quote(other)
                ),
            })
        }
    };
    let port = |f: &str, n: u32| -> Result<u16, ApiError> {
        match u16::try_from(n) {
            Ok(p) if p > 0 || proto == 1 => Ok(p),
            _ => Err(ApiError::Invalid {
                field: f.into(),
                reason: format!("{n} is outside 1..=65535"),
            }),
        }
    };
    let sport = port("sport", req.sport)?;
    let dport = port("dport", req.dport)?;
    let mut steps = Vec::new();

    // Ingress: which port the frame arrives on, and what it looks like there.
    let from_pod = snap.pod_by_ip(src);
    let (in_port, desc) = if req.from.is_empty() {
        match from_pod {
            Some(p) => (
                p.port,
                format!(
                    "pod {} on port {}",
                    p.name,
                    snap.port_name(p.port).unwrap_or("?")
                ),
            ),
            None => (PortId::UPLINK, "the uplink".to_string()),
        }
    } else {
        let p = snap.port_id(&req.from).ok_or_else(|| ApiError::Invalid {
            field: "from".into(),
            reason: format!(
                "{} is not a port of this switch ({})",
                flowtable::names::quote(&req.from),
                snap.ports().join(", ")
            ),
        })?;
        (p, format!("port {}", req.from))
    };
    let remote_src = if in_port == PortId::UPLINK {
        snap.remote_for(src)
    } else {
        None
    };
    steps.push(step(
        "ingress",
        match remote_src {
            Some(r) => format!("{desc}, VXLAN from node {} ({})", r.name, r.ip),
            None => desc,
        },
    ));

    // Conntrack: an existing flow keeps its translation.
    let key = flowtable::conntrack::FlowKey {
        src,
        dst,
        sport,
        dport: if proto == 1 { 0 } else { dport },
        proto,
    };
    match live.and_then(|ct| ct.lookup(&key)) {
        Some(hit) => steps.push(step(
            "conntrack",
            format!(
                "tracked flow ({:?}): translated to {}:{} -> {}:{}",
                hit.dir,
                hit.translated.src,
                hit.translated.sport,
                hit.translated.dst,
                hit.translated.dport
            ),
        )),
        None => steps.push(step("conntrack", "no entry: a new flow")),
    }

    // Service frontend and backend choice.
    let t = &snap.services;
    if let Some(fe) = t.frontend(dst, dport, proto) {
        if let Some(sp) = t.ports.get(fe.port as usize) {
            let svc = t.services.get(sp.service as usize);
            let name = svc.map(|s| s.name.as_str()).unwrap_or("?");
            let kind = match fe.kind {
                FrontendKind::ClusterIp => "ClusterIP",
                FrontendKind::NodePort => "NodePort",
                FrontendKind::External => "LoadBalancer/external IP",
            };
            steps.push(step(
                "service",
                format!(
                    "{dst}:{dport}/{} is the {kind} of Service {name} port {}",
                    proto_name(proto),
                    if sp.name.is_empty() {
                        sp.port.to_string()
                    } else {
                        sp.name.clone()
                    }
                ),
            ));
            let local = svc.is_some_and(|s| match fe.kind {
                FrontendKind::ClusterIp => s.internal_local,
                _ => s.external_local,
            });
            let sel = if local { &sp.local } else { &sp.cluster };
            let affinity = svc.and_then(|s| s.affinity_timeout);
            let h = maglev::flow_hash(
                src,
                if affinity.is_some() { 0 } else { sport },
                dst,
                dport,
                proto,
            );
            let pick = sel.pick(h).and_then(|i| sp.backends.get(i as usize));
            steps.push(step(
                "backend",
                match (pick, &sel.maglev) {
                    (Some(b), Some(m)) => format!(
                        "Maglev over {} {} endpoint(s), table of {}: entry {} -> {}:{}{}{}",
                        sel.members.len(),
                        if local { "local" } else { "usable" },
                        m.len(),
                        h % m.len() as u64,
                        b.ip,
                        b.port,
                        if b.local { " (this node)" } else { "" },
                        if affinity.is_some() {
                            ", ClientIP affinity (an earlier pick for this client wins)"
                        } else {
                            ""
                        }
                    ),
                    _ => format!(
                        "no {} endpoint",
                        if local { "local usable" } else { "usable" }
                    ),
                },
            ));
        }
    } else {
        steps.push(step(
            "service",
            format!(
                "{dst}:{dport}/{} is not a Service frontend",
                proto_name(proto)
            ),
        ));
    }

    // Run the real pipeline on the frame, with a private conntrack table.
    let frame = build_frame(
        snap,
        in_port,
        remote_src.map(|r| (r.ip, r.next_hop_mac.unwrap_or_default(), r.vtep_mac)),
        src,
        dst,
        sport,
        dport,
        proto,
    )?;
    let mut pipeline =
        Pipeline::with_conntrack(Arc::new(Conntrack::new(1024, Timeouts::default())));
    if let Some(h) = hops {
        // The workers' next hops (a miss is noted for resolution, as theirs are).
        pipeline.set_next_hops(h);
    }
    let mut buf = vec![0u8; 4096];
    buf[DEFAULT_HEADROOM..DEFAULT_HEADROOM + frame.len()].copy_from_slice(&frame);
    let mut pkt =
        Packet::new(&mut buf, DEFAULT_HEADROOM, frame.len(), in_port).ok_or_else(|| {
            ApiError::Invalid {
                field: "src".into(),
                reason: "the packet does not fit in a frame".into(),
            }
        })?;
    let verdict = pipeline.process_one(snap, &mut pkt);
    let out = pkt.data().to_vec();
    let (out_dst, after) = describe_output(snap, &out);
    if let Some((s, sp, d, dp)) = after {
        if (s, d) != (src, dst) || (sp, dp) != (sport, dport) {
            steps.push(step(
                "nat",
                format!("{src}:{sport} -> {dst}:{dport} becomes {s}:{sp} -> {d}:{dp}"),
            ));
        }
        steps.push(step("route", format!("{d}: {}", locate(snap, d))));
    }
    let verdict = match verdict {
        Verdict::Transmit(p) => {
            let name = snap.port_name(p).unwrap_or("?");
            match out_dst {
                Some(outer) => format!("transmit on {name}, VXLAN-encapsulated to {outer}"),
                None => format!("transmit on {name}"),
            }
        }
        Verdict::Kernel => "to the node's kernel".into(),
        Verdict::Drop(r) => format!("drop ({})", r.name()),
    };
    Ok(pb::ExplainResponse {
        steps,
        verdict,
        generation: snap.generation,
    })
}

#[allow(clippy::too_many_arguments)]
fn build_frame(
    snap: &Snapshot,
    port: PortId,
    overlay: Option<(Ipv4Addr, flowtable::wire::MacAddr, flowtable::wire::MacAddr)>,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
) -> Result<Vec<u8>, ApiError> {
    let payload = [0u8; 16];
    let (smac, dmac) = match (snap.pod_on_port(port), overlay) {
        (Some(p), _) => (p.mac.0, snap.node.gateway_mac.0),
        (None, Some((_, _, vtep))) => (vtep.0, snap.node.vtep_mac.0),
        (None, None) => ([0x02, 0, 0, 0, 0xee, 0x01], snap.node.uplink_mac.0),
    };
    let b = PacketBuilder::ethernet2(smac, dmac).ipv4(src.octets(), dst.octets(), 64);
    let mut inner = Vec::new();
    let r = match proto {
        6 => b
            .tcp(sport, dport, 1000, 64240)
            .syn()
            .write(&mut inner, &payload[..0]),
        17 => b.udp(sport, dport).write(&mut inner, &payload),
        _ => b.icmpv4_echo_request(sport, 1).write(&mut inner, &payload),
    };
    r.map_err(|e| ApiError::Invalid {
        field: "src".into(),
        reason: format!("cannot build the packet: {e}"),
    })?;
    let Some((vtep_ip, mac, _)) = overlay else {
        return Ok(inner);
    };
    // As the other node would send it: VXLAN over UDP to this node.
    let mut vx = vec![0x08, 0, 0, 0];
    vx.extend_from_slice(&(snap.node.vni << 8).to_be_bytes());
    vx.extend_from_slice(&inner);
    let mut outer = Vec::new();
    PacketBuilder::ethernet2(mac.0, snap.node.uplink_mac.0)
        .ipv4(vtep_ip.octets(), snap.node.ip.octets(), 64)
        .udp(40000, snap.node.vxlan_port)
        .write(&mut outer, &vx)
        .map_err(|e| ApiError::Invalid {
            field: "src".into(),
            reason: format!("cannot build the packet: {e}"),
        })?;
    Ok(outer)
}

type Tuple = (Ipv4Addr, u16, Ipv4Addr, u16);

/// The outer destination if the frame is VXLAN to another node, and the (inner) 4-tuple.
fn describe_output(snap: &Snapshot, frame: &[u8]) -> (Option<Ipv4Addr>, Option<Tuple>) {
    let tuple = |p: &SlicedPacket| -> Option<Tuple> {
        let NetSlice::Ipv4(ip) = p.net.as_ref()? else {
            return None;
        };
        let (s, d) = (ip.header().source_addr(), ip.header().destination_addr());
        let (sp, dp) = match p.transport.as_ref()? {
            TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
            TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
            TransportSlice::Icmpv4(i) => match i.icmp_type() {
                etherparse::Icmpv4Type::EchoRequest(e) => (e.id, 0),
                _ => (0, 0),
            },
            _ => (0, 0),
        };
        Some((s, sp, d, dp))
    };
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return (None, None);
    };
    let Some(t) = tuple(&p) else {
        return (None, None);
    };
    if t.3 == snap.node.vxlan_port && t.0 == snap.node.ip {
        if let Some(TransportSlice::Udp(u)) = p.transport.as_ref() {
            if let Some(inner) = u.payload().get(8..) {
                if let Ok(ip) = SlicedPacket::from_ethernet(inner) {
                    return (Some(t.2), tuple(&ip));
                }
            }
        }
    }
    (None, Some(t))
}
