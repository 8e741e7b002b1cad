//! Capture and monitor over the API: requests to tap sessions, and the streams that carry a
//! session's frames and events to the caller.
//!
//! Design: a request is converted here and only here (field-named errors), the session opened
//! in the dataplane's `Taps`, and a blocking task drains its rings into the response stream:
//! batches of at most [`BATCH`] frames or events, sorted by time, and a message with only the
//! loss count at least once a second, which is also how a caller that went away is noticed
//! (the send fails, the task ends, the session closes and the workers stop copying).
//!
//! Thread-safety: each stream's task owns its session handle; the rings are lock-free.

use crate::error::ApiError;
use crate::pb;
use flowtable::tap::{
    CaptureSpec, Event, Filter, Flow, Layers, MonitorSpec, Outcome, Point, Spec, Tap,
};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Sender;
use tonic::Status;

/// Most frames or events in one response.
pub const BATCH: usize = 128;
/// How often a stream with nothing to send says how many it lost (and notices a caller gone).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long the reader sleeps when the rings are empty.
const IDLE: Duration = Duration::from_millis(5);

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Every named port must be one of `known` (the switch's ports).
fn ports(named: &[String], known: &[String]) -> Result<Vec<String>, ApiError> {
    for (i, p) in named.iter().enumerate() {
        flowtable::names::interface_name(p).map_err(|e| invalid(&format!("ports[{i}]"), e))?;
        if !known.iter().any(|k| k == p) {
            let some: Vec<&str> = known.iter().take(10).map(String::as_str).collect();
            let more = if known.len() > 10 { ", ..." } else { "" };
            return Err(invalid(
                &format!("ports[{i}]"),
                format!(
                    "{} is not a port of this switch (its ports: {}{more})",
                    flowtable::names::quote(p),
                    some.join(", ")
                ),
            ));
        }
    }
    Ok(named.to_vec())
}

fn filter(text: &str) -> Result<Filter, ApiError> {
    Filter::parse(text).map_err(|e| invalid("filter", e))
}

fn checked(spec: Spec) -> Result<Spec, ApiError> {
    spec.check().map_err(|(f, r)| invalid(f, r))?;
    Ok(spec)
}

/// The capture `req` asks for, on a switch with ports `known`; and the ports it takes now.
pub fn capture_spec(
    req: &pb::CaptureRequest,
    known: &[String],
) -> Result<(Spec, Vec<String>), ApiError> {
    let named = ports(&req.ports, known)?;
    let (rx, tx) = match req.point.as_str() {
        "" | "both" => (true, true),
        "rx" => (true, false),
        "tx" => (false, true),
        other => {
            return Err(invalid(
                "point",
                format!("{} is not rx, tx or both", flowtable::names::quote(other)),
            ))
        }
    };
    let now = if named.is_empty() {
        known.to_vec()
    } else {
        named.clone()
    };
    let spec = checked(Spec::Capture(CaptureSpec {
        ports: named,
        rx,
        tx,
        filter: filter(&req.filter)?,
    }))?;
    Ok((spec, now))
}

/// The monitor `req` asks for, on a switch with ports `known`.
pub fn monitor_spec(req: &pb::MonitorRequest, known: &[String]) -> Result<Spec, ApiError> {
    let (drops, traces) = match req.r#type.as_str() {
        "" | "drop" => (true, false),
        "trace" => (false, true),
        "all" => (true, true),
        other => {
            return Err(invalid(
                "type",
                format!(
                    "{} is not drop, trace or all",
                    flowtable::names::quote(other)
                ),
            ))
        }
    };
    checked(Spec::Monitor(MonitorSpec {
        drops,
        traces,
        ports: ports(&req.ports, known)?,
        filter: filter(&req.filter)?,
    }))
}

/// A flow as the API shows it.
pub fn flow_pb(f: &Flow) -> pb::Flow {
    pb::Flow {
        protocol: f.proto_name(),
        source: f.src.to_string(),
        destination: f.dst.to_string(),
        source_port: u32::from(f.sport),
        destination_port: u32::from(f.dport),
    }
}

/// The flow a user means and, for a VXLAN frame, its tunnel's.
fn flows(l: &Layers) -> (Option<pb::Flow>, Option<pb::Flow>) {
    let tunnel = l.inner.and(l.outer);
    (
        l.innermost().as_ref().map(flow_pb),
        tunnel.as_ref().map(flow_pb),
    )
}

/// A monitor event as the API shows it.
pub fn event_pb(e: &Event) -> pb::MonitorEvent {
    let (before, before_tunnel) = flows(&e.before);
    let (after, after_tunnel) = flows(&e.after);
    let (kind, reason, to) = match e.outcome {
        Outcome::Drop(r) => ("drop", r.to_string(), String::new()),
        Outcome::Forward(p) => ("trace", String::new(), p.as_str().to_string()),
    };
    pb::MonitorEvent {
        time_ns: e.ts_ns,
        worker: u32::from(e.worker),
        port: e.port.as_str().to_string(),
        r#type: kind.into(),
        reason,
        to_port: to,
        before,
        after,
        generation: e.generation,
        before_tunnel,
        after_tunnel,
    }
}

type Out<T> = Sender<Result<T, Status>>;

/// Streams `tap`'s frames to `out` until the caller goes away; `now` (the ports taken when it
/// opened) goes in the first message.
pub fn pump_frames(tap: Tap, now: Vec<String>, out: Out<pb::CaptureResponse>) {
    let first = pb::CaptureResponse {
        ports: now,
        frames: Vec::new(),
        lost: 0,
    };
    if out.blocking_send(Ok(first)).is_err() {
        return;
    }
    let mut taken = Vec::with_capacity(BATCH);
    let mut last = Instant::now();
    loop {
        tap.take_frames(BATCH, &mut taken);
        if taken.is_empty() && last.elapsed() < HEARTBEAT {
            std::thread::sleep(IDLE);
            continue;
        }
        taken.sort_by_key(|f| f.ts_ns);
        let frames = taken
            .drain(..)
            .map(|f| {
                let p = pb::CapturedFrame {
                    port: f.port.as_str().to_string(),
                    sent: f.point == Point::Tx,
                    time_ns: f.ts_ns,
                    original_length: f.orig_len,
                    data: f.data.clone(),
                    worker: u32::from(f.worker),
                };
                tap.recycle(f);
                p
            })
            .collect();
        let msg = pb::CaptureResponse {
            ports: Vec::new(),
            frames,
            lost: tap.lost(),
        };
        if out.blocking_send(Ok(msg)).is_err() {
            return; // the caller went away: dropping `tap` closes the session
        }
        last = Instant::now();
    }
}

/// Streams `tap`'s events to `out` until the caller goes away.
pub fn pump_events(tap: Tap, out: Out<pb::MonitorResponse>) {
    let mut taken = Vec::with_capacity(BATCH);
    let mut last = Instant::now();
    loop {
        tap.take_events(BATCH, &mut taken);
        if taken.is_empty() && last.elapsed() < HEARTBEAT {
            std::thread::sleep(IDLE);
            continue;
        }
        taken.sort_by_key(|e| e.ts_ns);
        let msg = pb::MonitorResponse {
            events: taken.drain(..).map(|e| event_pb(&e)).collect(),
            lost: tap.lost(),
        };
        if out.blocking_send(Ok(msg)).is_err() {
            return;
        }
        last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        vec!["uplink".into(), "pod-a".into()]
    }

    #[test]
    fn a_capture_request_is_checked_field_by_field() {
        let req = |ports: &[&str], point: &str, filter: &str| pb::CaptureRequest {
            ports: ports.iter().map(|s| s.to_string()).collect(),
            point: point.into(),
            filter: filter.into(),
        };
        let (spec, now) = capture_spec(&req(&[], "", "tcp"), &known()).unwrap();
        assert_eq!(now, known(), "every port");
        let Spec::Capture(c) = spec else { panic!() };
        assert!(c.rx && c.tx && c.ports.is_empty());
        let (_, now) = capture_spec(&req(&["pod-a"], "rx", ""), &known()).unwrap();
        assert_eq!(now, vec!["pod-a".to_string()]);
        for (r, want) in [
            (
                req(&["nope"], "", ""),
                "ports[0]: 'nope' is not a port of this switch (its ports: uplink, pod-a)",
            ),
            (
                req(&["a/b"], "", ""),
                "ports[0]: 'a/b' is not a usable interface name",
            ),
            (req(&[], "in", ""), "point: 'in' is not rx, tx or both"),
            (req(&[], "", "port x"), "filter: port 'x': not a port"),
        ] {
            let e = capture_spec(&r, &known()).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }

    #[test]
    fn a_monitor_request_is_checked_field_by_field() {
        let req = |t: &str| pb::MonitorRequest {
            r#type: t.into(),
            ports: vec![],
            filter: String::new(),
        };
        let Spec::Monitor(m) = monitor_spec(&req(""), &known()).unwrap() else {
            panic!()
        };
        assert!(m.drops && !m.traces, "drops by default");
        let Spec::Monitor(m) = monitor_spec(&req("all"), &known()).unwrap() else {
            panic!()
        };
        assert!(m.drops && m.traces);
        let e = monitor_spec(&req("drops\n"), &known())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "type: 'drops\\n' is not drop, trace or all");
    }

    #[test]
    fn an_event_shows_the_inner_flow_and_its_tunnel() {
        let inner = Flow {
            arp: false,
            proto: 6,
            src: [10, 244, 1, 5].into(),
            dst: [10, 244, 2, 7].into(),
            sport: 4000,
            dport: 80,
        };
        let outer = Flow {
            proto: 17,
            src: [192, 168, 0, 1].into(),
            dst: [192, 168, 0, 2].into(),
            sport: 5,
            dport: 4789,
            ..inner
        };
        let e = Event {
            outcome: Outcome::Forward(flowtable::tap::IfName::new("uplink")),
            before: Layers {
                outer: Some(inner),
                inner: None,
            },
            after: Layers {
                outer: Some(outer),
                inner: Some(inner),
            },
            ..Event::default()
        };
        let p = event_pb(&e);
        assert_eq!((p.r#type.as_str(), p.to_port.as_str()), ("trace", "uplink"));
        assert_eq!(p.before.as_ref().unwrap().destination_port, 80);
        assert!(p.before_tunnel.is_none());
        assert_eq!(p.after.unwrap().protocol, "tcp");
        assert_eq!(p.after_tunnel.unwrap().destination_port, 4789);
    }
}
