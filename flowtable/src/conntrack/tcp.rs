//! TCP connection tracking: the state machine and window tracking, as Linux's
//! `net/netfilter/nf_conntrack_proto_tcp.c` does them (written from its rules, not its text).
//!
//! Design: [`TcpConn`] is plain data (the state, and per direction the highest sequence sent,
//! the highest edge the peer allowed, the largest window and the window scale), and
//! [`TcpConn::packet`] is a pure function of it and one [`Segment`]: it returns a
//! [`TcpVerdict`] and mutates the connection only for segments it accepts. The transitions
//! are one `const` table indexed by direction, segment kind and current state ([`next`]);
//! the window checks are Guido van Rooij's ("Real Stateful TCP Packet Filtering in IP
//! Filter") with the kernel's bounds:
//!
//! - I. `seq <= sender.maxend` (the data starts inside what the receiver allowed);
//! - II. `end >= sender.end - receiver.maxwin` (not all of it acknowledged already);
//! - III. `sack <= receiver.end + 1` (no acknowledgement of data not sent);
//! - IV. `sack >= receiver.end - max(66000, sender.maxwin)` (not a very old ACK).
//!
//! A segment failing I or III is invalid (dropped, nothing changes); failing II (data
//! already acknowledged, sent again) or IV (a very old ACK) it passes without changing
//! anything, as in the kernel since 6.1. A connection
//! picked up mid-stream (the first segment seen is an ACK) is tracked liberally: window
//! failures pass, as the kernel does with `nf_conntrack_tcp_loose`.
//!
//! Where this differs from the kernel (all of it kept within the 96-byte entry):
//! - the highest ACK each side sent is not stored. An RST is exact when its sequence is the
//!   sender's next one (`seq == sender.end`); when everything the sender sent is
//!   acknowledged, an RST below that is invalid (the kernel's "invalid rst"); an in-window
//!   RST that is not exact keeps the state (the receiver answers with a challenge ACK);
//! - a SYN in the original direction on a TIME_WAIT or CLOSE connection always reopens it
//!   (the kernel also asks that the close started on this tuple);
//! - retransmission counting (the kernel's 5-minute `retrans` timer) is not done.
//!
//! Thread-safety: none needed here; the table runs [`TcpConn::packet`] on a copy it holds
//! exclusively (see `table.rs`).

use super::Timeouts;
use crate::wire::tcp::{flags as f, option};

/// TCP connection states, as the kernel names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum TcpState {
    /// Nothing seen yet (only before the first segment).
    #[default]
    None = 0,
    /// A SYN seen.
    SynSent = 1,
    /// The SYN-ACK answering it seen.
    SynRecv = 2,
    /// The handshake's last ACK (or any ACK of a connection picked up mid-stream) seen.
    Established = 3,
    /// A FIN seen.
    FinWait = 4,
    /// The FIN acknowledged.
    CloseWait = 5,
    /// A FIN seen from both sides.
    LastAck = 6,
    /// The last FIN acknowledged.
    TimeWait = 7,
    /// Closed by a RST.
    Close = 8,
    /// A SYN seen from both sides (simultaneous open).
    SynSent2 = 9,
}

impl TcpState {
    /// Every state, in numeric order.
    pub const ALL: [TcpState; 10] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::SynSent2,
    ];

    /// The state with this number (unknown numbers read as `None`).
    pub fn from_u8(v: u8) -> TcpState {
        TcpState::ALL
            .get(usize::from(v))
            .copied()
            .unwrap_or(TcpState::None)
    }

    /// The name `conntrack -L` prints, in lower case (`syn_sent`, `established`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "none",
            TcpState::SynSent => "syn_sent",
            TcpState::SynRecv => "syn_recv",
            TcpState::Established => "established",
            TcpState::FinWait => "fin_wait",
            TcpState::CloseWait => "close_wait",
            TcpState::LastAck => "last_ack",
            TcpState::TimeWait => "time_wait",
            TcpState::Close => "close",
            TcpState::SynSent2 => "syn_sent2",
        }
    }

    /// This state's timeout.
    pub fn timeout(self, t: &Timeouts) -> u32 {
        match self {
            TcpState::None | TcpState::SynSent | TcpState::SynSent2 => t.tcp_syn_sent,
            TcpState::SynRecv => t.tcp_syn_recv,
            TcpState::Established => t.tcp_established,
            TcpState::FinWait => t.tcp_fin_wait,
            TcpState::CloseWait => t.tcp_close_wait,
            TcpState::LastAck => t.tcp_last_ack,
            TcpState::TimeWait => t.tcp_time_wait,
            TcpState::Close => t.tcp_close,
        }
    }

    /// True for the states a closing connection passes through (the kernel lets these go
    /// first under pressure, assured or not).
    pub fn closing(self) -> bool {
        matches!(
            self,
            TcpState::FinWait
                | TcpState::CloseWait
                | TcpState::LastAck
                | TcpState::TimeWait
                | TcpState::Close
        )
    }
}

/// A segment's kind for the transition table (its flags, RST first, as the kernel ranks them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// SYN without ACK.
    Syn = 0,
    /// SYN with ACK.
    SynAck = 1,
    /// FIN (with or without ACK).
    Fin = 2,
    /// ACK only.
    Ack = 3,
    /// RST (with or without ACK).
    Rst = 4,
    /// None of SYN, FIN, ACK, RST.
    None = 5,
}

impl Kind {
    /// The kind of a segment with these flags.
    pub fn of(flags: u8) -> Kind {
        if flags & f::RST != 0 {
            Kind::Rst
        } else if flags & f::SYN != 0 {
            if flags & f::ACK != 0 {
                Kind::SynAck
            } else {
                Kind::Syn
            }
        } else if flags & f::FIN != 0 {
            Kind::Fin
        } else if flags & f::ACK != 0 {
            Kind::Ack
        } else {
            Kind::None
        }
    }
}

/// What the transition table says of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Go to this state (after the window checks).
    To(TcpState),
    /// Let it pass without changing anything: the tracker may be out of sync with the ends.
    Ignore,
    /// Invalid in this state.
    Invalid,
}

use Next::{Ignore as IG, Invalid as IV};
use TcpState as S;
const SS: Next = Next::To(S::SynSent);
const SR: Next = Next::To(S::SynRecv);
const ES: Next = Next::To(S::Established);
const FW: Next = Next::To(S::FinWait);
const CW: Next = Next::To(S::CloseWait);
const LA: Next = Next::To(S::LastAck);
const TW: Next = Next::To(S::TimeWait);
const CL: Next = Next::To(S::Close);
const S2: Next = Next::To(S::SynSent2);

/// The transitions: `TABLE[direction][kind][state]` (direction 0 is the original one).
/// Columns: none, syn_sent, syn_recv, established, fin_wait, close_wait, last_ack,
/// time_wait, close, syn_sent2.
const TABLE: [[[Next; 10]; 6]; 2] = [
    [
        // original direction
        /* syn    */ [SS, SS, IG, IG, IG, IG, IG, SS, SS, S2],
        /* synack */ [IV, IV, IG, IG, IG, IG, IG, IG, IG, SR],
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        /* ack    */ [ES, IV, ES, ES, CW, CW, TW, TW, CL, IV],
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* none   */ [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
    [
        // reply direction
        /* syn    */ [IV, S2, IV, IV, IV, IV, IV, IV, IV, S2],
        /* synack */ [IV, SR, IG, IG, IG, IG, IG, IG, IG, SR],
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        /* ack    */ [IV, IG, SR, ES, CW, CW, TW, TW, CL, IG],
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* none   */ [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
];

/// The table's entry for a segment of `kind` in direction `dir` (0 original, 1 reply).
pub fn next(dir: usize, kind: Kind, state: TcpState) -> Next {
    TABLE[dir & 1][kind as usize][state as usize]
}

/// Why a segment is invalid. Each is a drop reason of its own in the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// A flag combination no TCP sends (SYN+FIN, no flags, ...).
    Flags,
    /// A segment that cannot open a connection (SYN-ACK, FIN, RST) with none tracked.
    New,
    /// Invalid in the connection's state (for example an ACK after only a SYN).
    State,
    /// Starts beyond the receiver's window (rule I).
    SeqOverWindow,
    /// Acknowledges data the other side never sent (rule III).
    AckOverWindow,
    /// A RST below the sequence the receiver acknowledged.
    Rst,
}

/// What to do with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpVerdict {
    /// Valid: pass it; refresh the entry's timer to `timeout` seconds if given (a
    /// retransmitted SYN does not), mark the entry assured if `assured`, and delete the
    /// entry at once if `kill` (a RST before any reply).
    Accept {
        /// New timeout in seconds, if the timer is refreshed.
        timeout: Option<u32>,
        /// The connection is now assured (handshake complete).
        assured: bool,
        /// Delete the entry now.
        kill: bool,
    },
    /// Pass it, change nothing.
    Ignore,
    /// Drop it and change nothing.
    Invalid(Invalid),
    /// A new connection on the tuple of a closed one: delete the entry and decide afresh.
    Reopen,
}

/// Per-direction flags.
pub mod side_flags {
    /// This side sent the window-scale option in its SYN.
    pub const WINDOW_SCALE: u8 = 1;
    /// This side sent SACK-permitted in its SYN.
    pub const SACK_PERM: u8 = 2;
    /// This side sent the first FIN.
    pub const CLOSE_INIT: u8 = 4;
    /// This side has data the other has not acknowledged.
    pub const UNACKED: u8 = 8;
    /// This side has sent an ACK.
    pub const ACKED: u8 = 16;
    /// Window failures pass (a connection picked up mid-stream).
    pub const LIBERAL: u8 = 32;
}
use side_flags as sf;

/// What the tracker knows of one direction's sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Side {
    /// Highest `seq + len` sent (td_end).
    pub end: u32,
    /// Highest right edge the other side allowed: its `ack + window` (td_maxend).
    pub maxend: u32,
    /// Largest (scaled) window this side advertised (td_maxwin); 0 until it sent anything.
    pub maxwin: u32,
    /// Window scale shift (0..=14).
    pub scale: u8,
    /// [`side_flags`].
    pub flags: u8,
}

/// A tracked TCP connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpConn {
    /// Current state.
    pub state: TcpState,
    /// `sides[0]` is the original direction's sender, `sides[1]` the reply's.
    pub sides: [Side; 2],
    /// Kind of the last segment that changed the tracker (or was ignored).
    pub last_kind: u8,
    /// Its direction.
    pub last_dir: u8,
    /// Its `seq + len`.
    pub last_end: u32,
    /// A simultaneous open was seen.
    pub simultaneous: bool,
}

/// The entry flags a segment is judged with (the entry's, from before this segment).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// A reply-direction segment was seen before this one.
    pub replied: bool,
    /// The connection is assured.
    pub assured: bool,
}

/// The fields of a TCP segment the tracker reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// Flag byte.
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Window field (unscaled).
    pub win: u16,
    /// Payload bytes.
    pub len: u32,
    /// Window-scale option (SYNs).
    pub wscale: Option<u8>,
    /// SACK-permitted option (SYNs).
    pub sack_perm: bool,
    /// Highest right edge of the SACK blocks, if any.
    pub sack: Option<u32>,
}

/// `a` is before `b` in sequence space.
#[inline]
pub fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a` is after `b` in sequence space.
#[inline]
pub fn after(a: u32, b: u32) -> bool {
    before(b, a)
}

/// Lower bound of acceptable ACKs below the receiver's end (the kernel's MAXACKWINDOW).
pub(super) const MAX_ACK_WINDOW: u32 = 66000;

impl Segment {
    /// Reads a segment: `tcp` holds the TCP header (with options) and more, `l4_len` is the
    /// TCP length from the IP header. `None` if the header is short or its data offset
    /// is below 20 or beyond the segment.
    #[inline]
    pub fn parse(tcp: &[u8], l4_len: usize) -> Option<Segment> {
        let fixed: &[u8; 20] = tcp.get(..20)?.try_into().ok()?;
        Segment::from_header(fixed, &tcp[20..], l4_len)
    }

    /// As [`Segment::parse`], with the 20-byte fixed header apart: `options` is what
    /// follows it (at least up to the data offset), `l4_len` the TCP length.
    #[inline]
    pub fn from_header(fixed: &[u8; 20], options: &[u8], l4_len: usize) -> Option<Segment> {
        let hl = usize::from(fixed[12] >> 4) * 4;
        if hl < 20 || hl > l4_len {
            return None;
        }
        let mut s = Segment::fixed(fixed, hl, l4_len);
        if hl > 20 {
            s.read_options(options.get(..hl - 20)?);
        }
        Some(s)
    }

    /// The fields of the fixed header, no options: `hl` is the data offset in bytes, checked
    /// by the caller to be within 20..=`l4_len`.
    #[inline(always)]
    pub fn fixed(fixed: &[u8; 20], hl: usize, l4_len: usize) -> Segment {
        let be32 =
            |i: usize| u32::from_be_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        Segment {
            flags: fixed[13],
            seq: be32(4),
            ack: be32(8),
            win: u16::from_be_bytes([fixed[14], fixed[15]]),
            len: l4_len.saturating_sub(hl) as u32,
            wscale: None,
            sack_perm: false,
            sack: None,
        }
    }

    /// Reads window scale and SACK-permitted (SYNs) and SACK blocks (others). A malformed
    /// option ends the reading, as in the kernel; what was read stays.
    fn read_options(&mut self, mut o: &[u8]) {
        // Nearly every segment of an established Linux connection carries exactly
        // NOP NOP TIMESTAMP: nothing to read.
        if o.len() == 12 && o[..4] == [option::NOP, option::NOP, option::TIMESTAMP, 10] {
            return;
        }
        let syn = self.flags & f::SYN != 0;
        while let Some((&kind, rest)) = o.split_first() {
            match kind {
                option::EOL => return,
                option::NOP => {
                    o = rest;
                    continue;
                }
                _ => {}
            }
            let Some(&size) = rest.first() else { return };
            let size = usize::from(size);
            if size < 2 || size > o.len() {
                return;
            }
            let body = &o[2..size];
            match kind {
                option::WINDOW_SCALE if syn && size == 3 => self.wscale = Some(body[0].min(14)),
                option::SACK_PERMITTED if syn && size == 2 => self.sack_perm = true,
                option::SACK if !syn && size >= 10 && (size - 2) % 8 == 0 => {
                    for b in body.chunks_exact(8) {
                        let right = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                        if self.sack.is_none_or(|s| after(right, s)) {
                            self.sack = Some(right);
                        }
                    }
                }
                _ => {}
            }
            o = &o[size..];
        }
    }

    /// `seq` plus the sequence space it takes (payload, SYN and FIN count one each).
    #[inline]
    pub fn end(&self) -> u32 {
        self.seq
            .wrapping_add(self.len)
            .wrapping_add(u32::from(self.flags & f::SYN != 0))
            .wrapping_add(u32::from(self.flags & f::FIN != 0))
    }

    /// The segment's kind for the transition table.
    #[inline]
    pub fn kind(&self) -> Kind {
        Kind::of(self.flags)
    }

    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// True if a TCP stack may send this flag combination (ECE, CWR and PSH aside): the
/// kernel's `tcp_valid_flags`.
pub fn valid_flags(flags: u8) -> bool {
    let core = flags & !(f::ECE | f::CWR | f::PSH);
    const SYN: u8 = f::SYN;
    const SYNACK: u8 = f::SYN | f::ACK;
    const RST: u8 = f::RST;
    const RSTACK: u8 = f::RST | f::ACK;
    const FINACK: u8 = f::FIN | f::ACK;
    const ACK: u8 = f::ACK;
    matches!(core & !f::URG, SYN | SYNACK | RST | RSTACK | FINACK | ACK)
        && (core & f::URG == 0 || matches!(core & !f::URG, SYN | FINACK | ACK))
}

/// Checks that a segment with no connection tracked may open one (a SYN, or an ACK of a
/// connection picked up mid-stream) with flags a stack sends.
pub fn check_new(seg: &Segment) -> Result<(), Invalid> {
    if !valid_flags(seg.flags) {
        return Err(Invalid::Flags);
    }
    match next(0, seg.kind(), TcpState::None) {
        Next::To(_) => Ok(()),
        _ => Err(Invalid::New),
    }
}

impl Side {
    /// Starts tracking a sender from its SYN (or SYN-ACK): end, window, options.
    fn init(&mut self, seg: &Segment, end: u32) {
        self.end = end;
        self.maxend = end;
        self.maxwin = u32::from(seg.win).max(1);
        self.flags = 0;
        self.scale = 0;
        if let Some(s) = seg.wscale {
            self.scale = s;
            self.flags |= sf::WINDOW_SCALE;
        }
        if seg.sack_perm {
            self.flags |= sf::SACK_PERM;
        }
    }
}

/// What the window checks concluded.
enum Window {
    /// In the window: the tracker was updated.
    Ok,
    /// Passes without changing the state (or failed on a liberal connection).
    Pass,
    /// Passes, nothing else changes (rule IV, or a small overshoot).
    Ignore,
    /// Fails.
    Invalid(Invalid),
}

impl TcpConn {
    /// A connection whose first segment is `seg` (original direction), before
    /// [`TcpConn::packet`] judges it: `Err` if such a segment cannot open one.
    pub fn open(seg: &Segment) -> Result<TcpConn, Invalid> {
        let mut c = TcpConn {
            last_kind: Kind::None as u8,
            ..TcpConn::default()
        };
        let end = seg.end();
        match next(0, seg.kind(), TcpState::None) {
            Next::To(TcpState::SynSent) => c.sides[0].init(seg, end),
            Next::To(_) => {
                // Picked up mid-stream: take what the segment says, be liberal.
                let s = &mut c.sides[0];
                s.end = end;
                s.maxwin = u32::from(seg.win).max(1);
                s.maxend = end.wrapping_add(s.maxwin);
                s.flags = sf::SACK_PERM | sf::LIBERAL;
                c.sides[1].flags = sf::SACK_PERM | sf::LIBERAL;
            }
            _ => return Err(Invalid::New),
        }
        Ok(c)
    }

    /// Judges a segment travelling in `dir` (0 original, 1 reply) and, if it is accepted,
    /// moves the connection on. Invalid segments change nothing.
    pub fn packet(&mut self, dir: usize, seg: &Segment, st: Status, t: &Timeouts) -> TcpVerdict {
        let dir = dir & 1;
        if !valid_flags(seg.flags) {
            return TcpVerdict::Invalid(Invalid::Flags);
        }
        let old = self.state;
        let kind = seg.kind();
        let mut new = match next(dir, kind, old) {
            Next::To(s) => s,
            Next::Invalid => return TcpVerdict::Invalid(Invalid::State),
            Next::Ignore => return self.ignore(dir, kind, seg, t),
        };
        let mut check_window = true;
        match new {
            TcpState::SynSent if old >= TcpState::TimeWait => return TcpVerdict::Reopen,
            TcpState::SynSent2 => self.simultaneous = true,
            TcpState::SynRecv if dir == 1 && kind == Kind::Ack && self.simultaneous => {
                new = TcpState::Established
            }
            TcpState::Close if kind == Kind::Rst => {
                if old.closing() {
                    // The tuple may already be reused by the ends: no window checks.
                    check_window = false;
                } else if let Some(keep) = self.rst_rule(dir, seg, old, st) {
                    if keep {
                        new = old;
                    }
                } else {
                    return TcpVerdict::Invalid(Invalid::Rst);
                }
            }
            _ => {}
        }
        if check_window {
            match self.in_window(dir, seg, old) {
                Window::Ok | Window::Pass => {}
                Window::Ignore => return TcpVerdict::Ignore,
                Window::Invalid(r) => return TcpVerdict::Invalid(r),
            }
        }
        self.last_kind = kind as u8;
        self.last_dir = dir as u8;
        self.last_end = seg.end();
        self.state = new;
        if old != new && new == TcpState::FinWait {
            self.sides[dir].flags |= sf::CLOSE_INIT;
        }
        let unacked = (self.sides[0].flags | self.sides[1].flags) & sf::UNACKED != 0;
        let mut timeout = if kind == Kind::Rst {
            t.tcp_close
        } else if unacked && new.timeout(t) > t.tcp_unacknowledged {
            t.tcp_unacknowledged
        } else {
            new.timeout(t)
        };
        let mut assured = false;
        if !st.replied {
            if kind == Kind::Rst {
                // The only answer was a RST (a refused connection): nothing to keep.
                return TcpVerdict::Accept {
                    timeout: Some(timeout),
                    assured: false,
                    kill: true,
                };
            }
            if kind == Kind::Syn && old == TcpState::SynSent {
                // A retransmitted SYN does not extend the entry's life (a client reusing
                // its port could keep a stale translation alive for ever).
                return TcpVerdict::Accept {
                    timeout: None,
                    assured: false,
                    kill: false,
                };
            }
            if new == TcpState::Established {
                timeout = timeout.min(t.tcp_unacknowledged);
            }
        } else if !st.assured
            && matches!(old, TcpState::SynRecv | TcpState::Established)
            && new == TcpState::Established
        {
            assured = true;
        }
        TcpVerdict::Accept {
            timeout: Some(timeout),
            assured,
            kill: false,
        }
    }

    /// A segment the table ignores: remember it, in case it was right and the tracker is
    /// behind (a SYN-ACK answering it brings the tracker back in step).
    fn ignore(&mut self, dir: usize, kind: Kind, seg: &Segment, t: &Timeouts) -> TcpVerdict {
        let last = usize::from(self.last_dir & 1);
        if kind == Kind::SynAck
            && self.last_kind == Kind::Syn as u8
            && last != dir
            && seg.ack == self.last_end
        {
            // This SYN-ACK answers the SYN we ignored: both ends agree on a new connection
            // that the tracker missed. Start over from that SYN (its window is not kept:
            // take the largest an unscaled SYN can give).
            let s = &mut self.sides[last];
            s.end = self.last_end;
            s.maxend = self.last_end;
            s.maxwin = 65535;
            s.scale = 0;
            s.flags = 0;
            self.state = TcpState::SynSent;
            let sender = &mut self.sides[dir];
            sender.maxwin = 0;
            return match self.in_window(dir, seg, TcpState::SynSent) {
                Window::Invalid(r) => TcpVerdict::Invalid(r),
                _ => {
                    self.state = TcpState::SynRecv;
                    self.last_kind = kind as u8;
                    self.last_dir = dir as u8;
                    self.last_end = seg.end();
                    TcpVerdict::Accept {
                        timeout: Some(t.tcp_syn_recv),
                        assured: false,
                        kill: false,
                    }
                }
            };
        }
        self.last_kind = kind as u8;
        self.last_dir = dir as u8;
        self.last_end = seg.end();
        TcpVerdict::Ignore
    }

    /// The RST rules for a connection that is not closing: `None` if the RST is invalid,
    /// `Some(true)` to keep the state (an in-window RST that is not exact: the receiver
    /// will answer with a challenge ACK), `Some(false)` to close.
    fn rst_rule(&self, dir: usize, seg: &Segment, old: TcpState, st: Status) -> Option<bool> {
        let sender = &self.sides[dir];
        let receiver = &self.sides[1 - dir];
        if receiver.flags & sf::ACKED == 0 || self.last_kind == Kind::Syn as u8 {
            return Some(false);
        }
        let established = old == TcpState::Established && st.assured;
        if seg.seq == 0 && !established {
            return Some(false);
        }
        if seg.seq == sender.end {
            return Some(false);
        }
        if sender.flags & sf::UNACKED == 0 && before(seg.seq, sender.end) {
            // Everything the sender sent was acknowledged up to `end`: a RST below it
            // is old or forged.
            return None;
        }
        Some(established)
    }

    /// The window checks (rules I-IV) and, for a segment that passes, the update of both
    /// sides' records.
    fn in_window(&mut self, dir: usize, seg: &Segment, state: TcpState) -> Window {
        let (s, r) = (dir, 1 - dir);
        let mut ack = seg.ack;
        let mut sack = ack;
        if self.sides[r].flags & sf::SACK_PERM != 0 {
            if let Some(x) = seg.sack.filter(|x| after(*x, ack)) {
                sack = x;
            }
        }
        let mut win = u32::from(seg.win);
        let mut end = seg.end();
        let syn = seg.has(f::SYN);
        let liberal = self.sides[s].flags & sf::LIBERAL != 0;
        let fail = |r: Invalid| {
            if liberal {
                Window::Pass
            } else {
                Window::Invalid(r)
            }
        };

        if self.sides[s].maxwin == 0 {
            if syn {
                // The first segment of this direction: a SYN-ACK answering the SYN (or a
                // SYN of a simultaneous open).
                self.init_sender(s, seg, end);
                if !seg.has(f::ACK) {
                    return Window::Ok;
                }
            } else {
                // This direction's history is unknown (picked up mid-stream).
                let scale = self.sides[s].scale;
                let snd = &mut self.sides[s];
                snd.end = end;
                snd.maxwin = (win << scale).max(1);
                snd.maxend = end.wrapping_add(snd.maxwin);
                let rcv = &mut self.sides[r];
                if rcv.maxwin == 0 {
                    rcv.end = sack;
                    rcv.maxend = sack;
                } else if sack == rcv.end.wrapping_add(1) {
                    // Likely the answer to a keepalive.
                    rcv.end = rcv.end.wrapping_add(1);
                }
            }
        } else if syn
            && after(end, self.sides[s].end)
            && matches!(state, TcpState::SynSent | TcpState::SynRecv)
        {
            // A SYN (or SYN-ACK) sent again with a new sequence: the end was reset; track
            // it afresh (RFC 9293 allows it to reuse the connection).
            self.init_sender(s, seg, end);
            if dir == 1 && !seg.has(f::ACK) {
                return Window::Ok;
            }
        }

        let rcv_end = self.sides[r].end;
        if !seg.has(f::ACK) || (seg.flags & (f::ACK | f::RST) == (f::ACK | f::RST) && ack == 0) {
            // No ACK (or a broken stack's RST with ACK set and 0): take it as acking all.
            ack = rcv_end;
            sack = rcv_end;
        }
        let mut seq = seg.seq;
        if seg.has(f::RST) && seq == 0 && state == TcpState::SynSent {
            // A RST answering a SYN.
            seq = self.sides[s].end;
            end = seq;
        }

        let snd = self.sides[s];
        let rcv = self.sides[r];
        let max_ack_window = snd.maxwin.max(MAX_ACK_WINDOW);
        // I. Starts within what the receiver allowed.
        if !before(seq, snd.maxend.wrapping_add(1)) {
            let overshot = end.wrapping_sub(snd.maxend).wrapping_add(1);
            let ack_ok = after(sack, rcv.end.wrapping_sub(max_ack_window).wrapping_sub(1));
            let in_recv_win =
                rcv.maxwin != 0 && after(end, snd.end.wrapping_sub(rcv.maxwin).wrapping_sub(1));
            if in_recv_win
                && ack_ok
                && overshot <= rcv.maxwin
                && before(sack, rcv.end.wrapping_add(1))
            {
                // A stack that sends a little more than the window allows: keep track
                // of the data, so its acknowledgement is not judged beyond what was sent.
                let snd = &mut self.sides[s];
                snd.end = end;
                snd.flags |= sf::UNACKED;
                return if liberal {
                    Window::Pass
                } else {
                    Window::Ignore
                };
            }
            return fail(Invalid::SeqOverWindow);
        }
        // III. Acknowledges only what was sent.
        if !before(sack, rcv.end.wrapping_add(1)) {
            return fail(Invalid::AckOverWindow);
        }
        // II. Not entirely below what the receiver already acknowledged (if it is, it is a
        // harmless retransmission: it passes, nothing changes).
        if rcv.maxwin != 0 && !after(end, snd.end.wrapping_sub(rcv.maxwin).wrapping_sub(1)) {
            return if liberal {
                Window::Pass
            } else {
                Window::Ignore
            };
        }
        // IV. Not a very old ACK.
        if !after(sack, rcv.end.wrapping_sub(max_ack_window).wrapping_sub(1)) {
            return if liberal {
                Window::Pass
            } else {
                Window::Ignore
            };
        }

        if !syn {
            win <<= snd.scale;
        }
        let swin = win.wrapping_add(sack.wrapping_sub(ack));
        let snd = &mut self.sides[s];
        if snd.maxwin < swin {
            snd.maxwin = swin;
        }
        if after(end, snd.end) {
            snd.end = end;
            snd.flags |= sf::UNACKED;
        }
        if seg.has(f::ACK) {
            snd.flags |= sf::ACKED;
        }
        let snd_maxend = snd.maxend;
        let rcv = &mut self.sides[r];
        if rcv.maxwin != 0 && after(end, snd_maxend) {
            rcv.maxwin = rcv.maxwin.wrapping_add(end.wrapping_sub(snd_maxend));
        }
        let edge = sack.wrapping_add(win);
        if after(edge, rcv.maxend.wrapping_sub(1)) {
            rcv.maxend = edge.wrapping_add(u32::from(win == 0));
        }
        if ack == rcv.end {
            rcv.flags &= !sf::UNACKED;
        }
        Window::Ok
    }

    /// Starts tracking this direction's sender from its SYN; window scaling applies only if
    /// both sides offered it (RFC 7323).
    fn init_sender(&mut self, s: usize, seg: &Segment, end: u32) {
        self.sides[s].init(seg, end);
        let both = self.sides[0].flags & self.sides[1].flags & sf::WINDOW_SCALE != 0;
        if !both {
            self.sides[0].scale = 0;
            self.sides[1].scale = 0;
        }
    }
}

#[cfg(test)]
mod tests;
