//! Taps: packet capture and the event monitor, fed by the workers only while someone listens.
//!
//! Design: `switchctl capture` or `switchctl monitor` opens a [`Session`] in the switch's
//! [`Taps`]; a session holds one bounded ring per worker, allocated when it opens (`ring`).
//! Each worker keeps a [`WorkerTaps`] and checks the taps' version once per round: one
//! relaxed atomic load is all a switch with no session open pays. While sessions are open the
//! worker copies each frame a capture wants into its own ring of that session (received
//! frames before the pipeline, sent frames once queued for transmit, after NAT and
//! encapsulation), and writes a monitor's events (a drop with its reason, a forwarded frame
//! with its flow before and after the pipeline). A full ring loses the frame or event and
//! counts it; the worker never waits for a reader. Sessions close when their [`Tap`] handle
//! is dropped (the API stream ends); workers let go of them at their next round.
//!
//! Limits: [`MAX_SESSIONS`] open at once, [`FRAME_SLOTS`] frames of at most
//! [`BUFFER_BYTES`] bytes and [`EVENT_SLOTS`] events per worker and session, [`MAX_PORTS`]
//! named ports, filters as in `filter`.
//!
//! Thread-safety: each ring has one producer (its worker) and one consumer (the session's
//! reader), both lock-free. The session list is replaced whole (`ArcSwap`) under a mutex that
//! only opening and closing take; workers read it without locking.

pub mod filter;
pub mod flow;
pub mod ring;

pub use filter::Filter;
pub use flow::{layers, Flow, Layers};
pub use ring::{Captured, EventRing, FrameRing};

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most sessions (captures and monitors together) open at once.
pub const MAX_SESSIONS: usize = 8;
/// Frames one worker can hold for one capture before it loses them.
pub const FRAME_SLOTS: usize = 2048;
/// Bytes kept of each captured frame (one UMEM frame: every frame fits).
pub const BUFFER_BYTES: usize = 4096;
/// Events one worker can hold for one monitor before it loses them.
pub const EVENT_SLOTS: usize = 4096;
/// Most ports one session may name.
pub const MAX_PORTS: usize = 64;

/// A port's interface name, stored inline (at most 15 bytes, as Linux allows).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct IfName {
    bytes: [u8; 16],
    len: u8,
}

impl IfName {
    /// `s`, cut to 15 bytes at a character boundary.
    pub fn new(s: &str) -> IfName {
        let mut n = s.len().min(15);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        let mut bytes = [0u8; 16];
        bytes[..n].copy_from_slice(&s.as_bytes()[..n]);
        IfName {
            bytes,
            len: n as u8,
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl std::fmt::Debug for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// Where on a port a frame was captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Point {
    /// Received from the port, before the pipeline.
    #[default]
    Rx,
    /// Queued for transmit on the port, after the pipeline.
    Tx,
}

/// What happened to a frame, as a monitor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Dropped, for this reason (a `drops` or `worker_drops` counter's name).
    Drop(&'static str),
    /// Sent to this port.
    Forward(IfName),
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome::Drop("")
    }
}

/// One monitor event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Event {
    /// When, in nanoseconds since the epoch (taken once per batch).
    pub ts_ns: u64,
    /// The worker that decided the frame.
    pub worker: u16,
    /// The snapshot generation it decided with.
    pub generation: u64,
    /// The port the frame came in on.
    pub port: IfName,
    /// What became of it.
    pub outcome: Outcome,
    /// The frame as received.
    pub before: Layers,
    /// The frame as sent (empty for a drop).
    pub after: Layers,
}

/// What a capture takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// The ports (empty: every port, also those added while it runs).
    pub ports: Vec<String>,
    /// Take received frames.
    pub rx: bool,
    /// Take sent frames.
    pub tx: bool,
    /// Which frames.
    pub filter: Filter,
}

/// What a monitor reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    /// Report drops.
    pub drops: bool,
    /// Report forwarded frames.
    pub traces: bool,
    /// The receiving ports (empty: every port).
    pub ports: Vec<String>,
    /// Which frames (matched against the frame as received or as sent).
    pub filter: Filter,
}

/// A session's kind and its choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Spec {
    /// Packet capture.
    Capture(CaptureSpec),
    /// Event monitor.
    Monitor(MonitorSpec),
}

impl Spec {
    /// The ports it names.
    pub fn ports(&self) -> &[String] {
        match self {
            Spec::Capture(c) => &c.ports,
            Spec::Monitor(m) => &m.ports,
        }
    }

    /// Checks the limits and the port names' form (whether they are ports of this switch is
    /// the switch's to check); the error names the field (`ports`, `point`, `type`).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let ports = self.ports();
        if ports.len() > MAX_PORTS {
            return Err((
                "ports",
                format!("{} named; at most {MAX_PORTS}", ports.len()),
            ));
        }
        for p in ports {
            crate::names::interface_name(p).map_err(|e| ("ports", e))?;
        }
        match self {
            Spec::Capture(c) if !c.rx && !c.tx => {
                Err(("point", "neither received nor sent frames chosen".into()))
            }
            Spec::Monitor(m) if !m.drops && !m.traces => {
                Err(("type", "neither drops nor traces chosen".into()))
            }
            _ => Ok(()),
        }
    }
}

/// One open capture or monitor: its choices and one ring per worker.
#[derive(Debug)]
pub struct Session {
    /// Unique among the switch's sessions.
    pub id: u64,
    /// What it takes.
    pub spec: Spec,
    frames: Vec<FrameRing>,
    events: Vec<EventRing>,
}

impl Session {
    /// Whether it takes frames of port `name`.
    pub fn wants_port(&self, name: &str) -> bool {
        let p = self.spec.ports();
        p.is_empty() || p.iter().any(|n| n == name)
    }

    /// Worker `w`'s frame ring (captures only).
    pub fn frame_ring(&self, w: usize) -> Option<&FrameRing> {
        self.frames.get(w)
    }

    /// Worker `w`'s event ring (monitors only).
    pub fn event_ring(&self, w: usize) -> Option<&EventRing> {
        self.events.get(w)
    }

    /// Takes up to `max` captured frames, oldest first per worker, into `out`.
    pub fn take_frames(&self, max: usize, out: &mut Vec<Box<Captured>>) {
        for r in &self.frames {
            while out.len() < max {
                match r.take() {
                    Some(f) => out.push(f),
                    None => break,
                }
            }
        }
    }

    /// Gives a frame from [`take_frames`](Self::take_frames) back to its worker's ring.
    pub fn recycle(&self, f: Box<Captured>) {
        if let Some(r) = self.frames.get(usize::from(f.worker)) {
            r.recycle(f);
        }
    }

    /// Takes up to `max` events into `out`.
    pub fn take_events(&self, max: usize, out: &mut Vec<Event>) {
        for r in &self.events {
            while out.len() < max {
                match r.take() {
                    Some(e) => out.push(e),
                    None => break,
                }
            }
        }
    }

    /// Frames or events lost so far because a ring was full.
    pub fn lost(&self) -> u64 {
        self.frames.iter().map(FrameRing::lost).sum::<u64>()
            + self.events.iter().map(EventRing::lost).sum::<u64>()
    }
}

/// A switch's open sessions.
#[derive(Debug)]
pub struct Taps {
    version: AtomicU64,
    list: ArcSwap<Vec<Arc<Session>>>,
    edit: Mutex<()>,
    workers: usize,
    next_id: AtomicU64,
}

impl Taps {
    /// No sessions, for `workers` workers.
    pub fn new(workers: usize) -> Arc<Taps> {
        Arc::new(Taps {
            version: AtomicU64::new(0),
            list: ArcSwap::from_pointee(Vec::new()),
            edit: Mutex::new(()),
            workers: workers.max(1),
            next_id: AtomicU64::new(1),
        })
    }

    /// Changes whenever a session opens or closes.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The open sessions.
    pub fn sessions(&self) -> Arc<Vec<Arc<Session>>> {
        self.list.load_full()
    }

    /// Opens a session (its rings allocated now); refused if the spec breaks a limit or
    /// [`MAX_SESSIONS`] are open.
    pub fn open(self: &Arc<Self>, spec: Spec) -> Result<Tap, String> {
        spec.check().map_err(|(f, r)| format!("{f}: {r}"))?;
        let _g = self.edit.lock().map_err(|_| "taps: poisoned".to_string())?;
        let now = self.list.load_full();
        if now.len() >= MAX_SESSIONS {
            return Err(format!(
                "{MAX_SESSIONS} captures and monitors are open already; close one first"
            ));
        }
        let (frames, events) = match &spec {
            Spec::Capture(_) => (
                (0..self.workers)
                    .map(|_| FrameRing::new(FRAME_SLOTS, BUFFER_BYTES))
                    .collect(),
                Vec::new(),
            ),
            Spec::Monitor(_) => (
                Vec::new(),
                (0..self.workers)
                    .map(|_| EventRing::new(EVENT_SLOTS))
                    .collect(),
            ),
        };
        let session = Arc::new(Session {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            spec,
            frames,
            events,
        });
        let mut next = (*now).clone();
        next.push(Arc::clone(&session));
        self.list.store(Arc::new(next));
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(Tap {
            taps: Arc::clone(self),
            session,
        })
    }

    fn close(&self, id: u64) {
        let Ok(_g) = self.edit.lock() else { return };
        let mut next = (*self.list.load_full()).clone();
        next.retain(|s| s.id != id);
        self.list.store(Arc::new(next));
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// An open session; closing it (dropping this) removes it from the switch.
#[derive(Debug)]
pub struct Tap {
    taps: Arc<Taps>,
    session: Arc<Session>,
}

impl std::ops::Deref for Tap {
    type Target = Session;
    fn deref(&self) -> &Session {
        &self.session
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.taps.close(self.session.id);
    }
}

/// Session bitmasks of one port, as a worker keeps them per port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortTaps {
    /// Captures taking its received frames.
    pub rx: u8,
    /// Captures taking its sent frames.
    pub tx: u8,
    /// Monitors reporting frames received on it.
    pub monitor: u8,
}

/// One worker's view of the open sessions (owned by the worker thread).
#[derive(Debug)]
pub struct WorkerTaps {
    worker: u16,
    version: u64,
    sessions: Arc<Vec<Arc<Session>>>,
}

impl WorkerTaps {
    /// Worker `worker`'s view, with no session yet.
    pub fn new(worker: u16) -> WorkerTaps {
        WorkerTaps {
            worker,
            version: 0,
            sessions: Arc::new(Vec::new()),
        }
    }

    /// Takes up the taps' sessions if they changed; true if they did (then the worker
    /// recomputes its ports' [`PortTaps`]).
    pub fn refresh(&mut self, taps: &Taps) -> bool {
        let v = taps.version();
        if v == self.version {
            return false;
        }
        self.version = v;
        self.sessions = taps.sessions();
        true
    }

    /// Whether any session is open.
    pub fn any(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// Whether any monitor is open.
    pub fn monitoring(&self) -> bool {
        self.sessions
            .iter()
            .any(|s| matches!(s.spec, Spec::Monitor(_)))
    }

    /// Which sessions want port `name`.
    pub fn port(&self, name: &str) -> PortTaps {
        let mut t = PortTaps::default();
        for (i, s) in self.sessions.iter().enumerate().take(8) {
            if !s.wants_port(name) {
                continue;
            }
            let bit = 1u8 << i;
            match &s.spec {
                Spec::Capture(c) => {
                    if c.rx {
                        t.rx |= bit;
                    }
                    if c.tx {
                        t.tx |= bit;
                    }
                }
                Spec::Monitor(_) => t.monitor |= bit,
            }
        }
        t
    }

    /// Offers `frame` to the captures in `mask` whose filter it matches.
    pub fn capture(
        &self,
        mask: u8,
        ts_ns: u64,
        port: IfName,
        point: Point,
        frame: &[u8],
        vxlan_port: u16,
    ) {
        let mut l = None;
        for (i, s) in self.sessions.iter().enumerate().take(8) {
            if mask & (1 << i) == 0 {
                continue;
            }
            let Spec::Capture(c) = &s.spec else { continue };
            if !c.filter.terms().is_empty() {
                let l = l.get_or_insert_with(|| layers(frame, vxlan_port));
                if !c.filter.matches(l) {
                    continue;
                }
            }
            if let Some(r) = s.frame_ring(usize::from(self.worker)) {
                r.offer(ts_ns, self.worker, port, point, frame);
            }
        }
    }

    /// Offers `e` to the monitors in `mask` that report its kind and whose filter matches.
    pub fn event(&self, mask: u8, e: &Event) {
        for (i, s) in self.sessions.iter().enumerate().take(8) {
            if mask & (1 << i) == 0 {
                continue;
            }
            let Spec::Monitor(m) = &s.spec else { continue };
            let wanted = match e.outcome {
                Outcome::Drop(_) => m.drops,
                Outcome::Forward(_) => m.traces,
            };
            if !wanted || !(m.filter.matches(&e.before) || m.filter.matches(&e.after)) {
                continue;
            }
            if let Some(r) = s.event_ring(usize::from(self.worker)) {
                let mut e = *e;
                e.worker = self.worker;
                r.offer(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(ports: &[&str], filter: &str) -> Spec {
        Spec::Capture(CaptureSpec {
            ports: ports.iter().map(|s| s.to_string()).collect(),
            rx: true,
            tx: false,
            filter: Filter::parse(filter).unwrap(),
        })
    }

    #[test]
    fn a_worker_sees_sessions_open_and_close_and_fills_only_its_own_ring() {
        let taps = Taps::new(2);
        let mut w = WorkerTaps::new(1);
        assert!(!w.refresh(&taps), "nothing changed");
        assert!(!w.any());
        let tap = taps.open(capture(&["pod-a"], "udp")).unwrap();
        assert!(w.refresh(&taps));
        assert!(w.any() && !w.monitoring());
        assert_eq!(
            w.port("pod-a"),
            PortTaps {
                rx: 1,
                tx: 0,
                monitor: 0
            }
        );
        assert_eq!(w.port("uplink"), PortTaps::default());
        let frame = flow::tests::udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"x");
        w.capture(1, 7, IfName::new("pod-a"), Point::Rx, &frame, 4789);
        let mut tcp = frame.clone();
        tcp[14 + 9] = 6;
        w.capture(1, 8, IfName::new("pod-a"), Point::Rx, &tcp, 4789);
        let mut got = Vec::new();
        tap.take_frames(10, &mut got);
        assert_eq!(got.len(), 1, "the filter kept the TCP frame out");
        assert_eq!((got[0].worker, got[0].ts_ns), (1, 7));
        assert!(
            tap.frame_ring(0).unwrap().take().is_none(),
            "worker 0's ring untouched"
        );
        tap.recycle(got.pop().unwrap());
        drop(tap);
        assert!(w.refresh(&taps));
        assert!(!w.any(), "closed");
    }

    #[test]
    fn limits_are_enforced_with_a_reason() {
        let taps = Taps::new(1);
        let open: Vec<_> = (0..MAX_SESSIONS)
            .map(|_| taps.open(capture(&[], "")).unwrap())
            .collect();
        let e = taps.open(capture(&[], "")).unwrap_err();
        assert!(e.contains("8 captures and monitors are open"), "{e}");
        drop(open);
        let many: Vec<String> = (0..=MAX_PORTS).map(|i| format!("p{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(taps
            .open(capture(&refs, ""))
            .unwrap_err()
            .contains("at most 64"));
        assert!(taps
            .open(capture(&["a/b"], ""))
            .unwrap_err()
            .starts_with("ports: "));
        let none = Spec::Monitor(MonitorSpec {
            drops: false,
            traces: false,
            ports: vec![],
            filter: Filter::default(),
        });
        assert!(taps.open(none).unwrap_err().contains("type"));
        assert!(taps.open(capture(&[], "")).is_ok(), "closing made room");
    }

    #[test]
    fn a_monitor_gets_the_kinds_it_asked_for() {
        let taps = Taps::new(1);
        let tap = taps
            .open(Spec::Monitor(MonitorSpec {
                drops: true,
                traces: false,
                ports: vec![],
                filter: Filter::parse("host 10.0.0.1").unwrap(),
            }))
            .unwrap();
        let mut w = WorkerTaps::new(0);
        w.refresh(&taps);
        let mask = w.port("pod-a").monitor;
        assert_eq!(mask, 1);
        let frame = flow::tests::udp([10, 0, 0, 1], [10, 0, 0, 2], 1, 2, b"x");
        let before = layers(&frame, 4789);
        let drop = Event {
            outcome: Outcome::Drop("spoofed_source"),
            before,
            ..Event::default()
        };
        w.event(mask, &drop);
        w.event(
            mask,
            &Event {
                outcome: Outcome::Forward(IfName::new("x")),
                ..drop
            },
        );
        w.event(
            mask,
            &Event {
                before: Layers::default(),
                ..drop
            },
        );
        let mut got = Vec::new();
        tap.take_events(10, &mut got);
        assert_eq!(got, vec![drop], "only the matching drop");
    }

    #[test]
    fn interface_names_are_kept_whole_up_to_fifteen_bytes() {
        assert_eq!(IfName::new("uplink").as_str(), "uplink");
        assert_eq!(IfName::new("0123456789abcdefg").as_str(), "0123456789abcde");
        assert_eq!(IfName::new("ééééééééé").as_str(), "ééééééé");
    }
}
