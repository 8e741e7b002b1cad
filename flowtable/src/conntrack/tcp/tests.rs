//! The TCP tracker row by row: transitions, window rules and RST rules, with sequence numbers
//! as a real handshake produces them.

use super::*;

const A: u32 = 1_000_000; // client ISN
const B: u32 = 3_000_000_000; // server ISN (near the wrap, on purpose)
const ORIG: usize = 0;
const REPLY: usize = 1;

fn t() -> Timeouts {
    Timeouts::default()
}

fn seg(flags: u8, seq: u32, ack: u32, len: u32) -> Segment {
    Segment {
        flags,
        seq,
        ack,
        win: 64240,
        len,
        ..Segment::default()
    }
}

const SYN: u8 = f::SYN;
const SYNACK: u8 = f::SYN | f::ACK;
const ACK: u8 = f::ACK;
const PSHACK: u8 = f::PSH | f::ACK;
const FINACK: u8 = f::FIN | f::ACK;
const RST: u8 = f::RST;
const RSTACK: u8 = f::RST | f::ACK;

/// Runs a segment with the entry flags a table would keep, and keeps them.
struct Conn {
    c: TcpConn,
    st: Status,
}

impl Conn {
    fn open(s: Segment) -> Conn {
        let mut c = TcpConn::open(&s).unwrap();
        let v = c.packet(ORIG, &s, Status::default(), &t());
        assert!(matches!(v, TcpVerdict::Accept { .. }), "{v:?}");
        Conn {
            c,
            st: Status::default(),
        }
    }

    fn send(&mut self, dir: usize, s: Segment) -> TcpVerdict {
        let before = self.c;
        let v = self.c.packet(dir, &s, self.st, &t());
        match v {
            TcpVerdict::Accept { assured, .. } => {
                self.st.assured |= assured;
                self.st.replied |= dir == REPLY;
            }
            TcpVerdict::Ignore => self.st.replied |= dir == REPLY,
            TcpVerdict::Invalid(_) | TcpVerdict::Reopen => {
                assert_eq!(self.c, before, "a refused segment changes nothing")
            }
        }
        v
    }

    fn state(&self) -> TcpState {
        self.c.state
    }
}

fn established() -> Conn {
    let mut c = Conn::open(seg(SYN, A, 0, 0));
    assert_eq!(c.state(), TcpState::SynSent);
    accept(c.send(REPLY, seg(SYNACK, B, A + 1, 0)));
    assert_eq!(c.state(), TcpState::SynRecv);
    assert!(!c.st.assured);
    let v = c.send(ORIG, seg(ACK, A + 1, B + 1, 0));
    assert_eq!(
        v,
        TcpVerdict::Accept {
            timeout: Some(t().tcp_established),
            assured: true,
            kill: false
        }
    );
    assert_eq!(c.state(), TcpState::Established);
    c
}

fn accept(v: TcpVerdict) {
    assert!(matches!(v, TcpVerdict::Accept { .. }), "{v:?}");
}

#[test]
fn handshake_reaches_established_and_assured() {
    let mut c = established();
    // Data both ways.
    accept(c.send(ORIG, seg(PSHACK, A + 1, B + 1, 100)));
    accept(c.send(REPLY, seg(PSHACK, B + 1, A + 101, 1000)));
    accept(c.send(ORIG, seg(ACK, A + 101, B + 1001, 0)));
    assert_eq!(c.state(), TcpState::Established);
    assert!(c.st.assured);
}

#[test]
fn half_open_is_never_assured() {
    let mut c = Conn::open(seg(SYN, A, 0, 0));
    for _ in 0..5 {
        // The backend retransmits its SYN-ACK: the tracker ignores the copies.
        let v = c.send(REPLY, seg(SYNACK, B, A + 1, 0));
        assert!(matches!(v, TcpVerdict::Accept { .. } | TcpVerdict::Ignore));
        assert_eq!(c.state(), TcpState::SynRecv);
        assert!(!c.st.assured, "a SYN-ACK alone never assures");
    }
}

#[test]
fn syn_recv_has_its_timeout_and_a_syn_retransmit_does_not_refresh() {
    let mut c = Conn::open(seg(SYN, A, 0, 0));
    assert_eq!(
        c.send(ORIG, seg(SYN, A, 0, 0)),
        TcpVerdict::Accept {
            timeout: None,
            assured: false,
            kill: false
        },
        "a retransmitted SYN does not extend the entry"
    );
    let v = c.send(REPLY, seg(SYNACK, B, A + 1, 0));
    assert_eq!(
        v,
        TcpVerdict::Accept {
            timeout: Some(t().tcp_syn_recv),
            assured: false,
            kill: false
        }
    );
}

#[test]
fn refused_connection_is_deleted_at_once() {
    let mut c = Conn::open(seg(SYN, A, 0, 0));
    assert_eq!(
        c.send(REPLY, seg(RSTACK, 0, A + 1, 0)),
        TcpVerdict::Accept {
            timeout: Some(t().tcp_close),
            assured: false,
            kill: true
        }
    );
    assert_eq!(c.state(), TcpState::Close);
}

#[test]
fn data_beyond_the_window_is_invalid_and_old_data_is_ignored() {
    let mut c = established();
    let far = A + 1 + (1 << 30);
    assert_eq!(
        c.send(ORIG, seg(PSHACK, far, B + 1, 100)),
        TcpVerdict::Invalid(Invalid::SeqOverWindow)
    );
    // Already acknowledged data, sent again far below the window.
    accept(c.send(ORIG, seg(PSHACK, A + 1, B + 1, 100)));
    accept(c.send(REPLY, seg(ACK, B + 1, A + 101, 0)));
    for _ in 0..4 {
        // Fill and acknowledge enough to push the window's lower edge past it.
        let end = c.c.sides[0].end;
        accept(c.send(ORIG, seg(PSHACK, end, B + 1, 60000)));
        accept(c.send(REPLY, seg(ACK, B + 1, end + 60000, 0)));
    }
    let before = c.c;
    assert_eq!(
        c.send(ORIG, seg(PSHACK, A + 1, B + 1, 100)),
        TcpVerdict::Ignore,
        "acknowledged data sent again passes and changes nothing (the kernel's rule)"
    );
    assert_eq!((c.c, c.state()), (before, TcpState::Established));
}

#[test]
fn ack_of_data_never_sent_is_invalid() {
    let mut c = established();
    assert_eq!(
        c.send(ORIG, seg(ACK, A + 1, B + 1 + 5000, 0)),
        TcpVerdict::Invalid(Invalid::AckOverWindow)
    );
}

#[test]
fn very_old_ack_passes_without_changing_anything() {
    let mut c = established();
    let before = c.c;
    assert_eq!(
        c.send(ORIG, seg(ACK, A + 1, B.wrapping_sub(100_000), 0)),
        TcpVerdict::Ignore
    );
    assert_eq!(c.c, before);
}

#[test]
fn out_of_window_rst_changes_nothing() {
    let mut c = established();
    let before = c.c;
    for dir in [ORIG, REPLY] {
        let base = if dir == ORIG { A + 1 } else { B + 1 };
        let v = c.send(dir, seg(RST, base.wrapping_add(1 << 30), 0, 0));
        assert_eq!(v, TcpVerdict::Invalid(Invalid::SeqOverWindow));
    }
    assert_eq!((c.c, c.state()), (before, TcpState::Established));
}

#[test]
fn exact_rst_closes() {
    let mut c = established();
    accept(c.send(REPLY, seg(RST, B + 1, 0, 0)));
    assert_eq!(c.state(), TcpState::Close);
}

#[test]
fn in_window_rst_that_is_not_exact_keeps_the_state() {
    let mut c = established();
    accept(c.send(REPLY, seg(RST, B + 1 + 1000, 0, 0)));
    assert_eq!(
        c.state(),
        TcpState::Established,
        "the receiver answers with a challenge ACK; the client's exact RST closes"
    );
    accept(c.send(ORIG, seg(RST, A + 1, 0, 0)));
    assert_eq!(c.state(), TcpState::Close);
}

#[test]
fn rst_below_what_was_acknowledged_is_invalid() {
    let mut c = established();
    accept(c.send(ORIG, seg(PSHACK, A + 1, B + 1, 500)));
    accept(c.send(REPLY, seg(ACK, B + 1, A + 501, 0)));
    assert_eq!(
        c.send(ORIG, seg(RST, A + 100, 0, 0)),
        TcpVerdict::Invalid(Invalid::Rst)
    );
    assert_eq!(c.state(), TcpState::Established);
}

#[test]
fn fin_handshake_walks_the_closing_states() {
    let mut c = established();
    accept(c.send(ORIG, seg(FINACK, A + 1, B + 1, 0)));
    assert_eq!(c.state(), TcpState::FinWait);
    assert_ne!(c.c.sides[0].flags & side_flags::CLOSE_INIT, 0);
    accept(c.send(REPLY, seg(ACK, B + 1, A + 2, 0)));
    assert_eq!(c.state(), TcpState::CloseWait);
    accept(c.send(REPLY, seg(FINACK, B + 1, A + 2, 0)));
    assert_eq!(c.state(), TcpState::LastAck);
    let v = c.send(ORIG, seg(ACK, A + 2, B + 2, 0));
    assert_eq!(
        v,
        TcpVerdict::Accept {
            timeout: Some(t().tcp_time_wait),
            assured: false,
            kill: false
        }
    );
    assert_eq!(c.state(), TcpState::TimeWait);
    // A new SYN on the tuple: a new connection.
    assert_eq!(
        c.send(ORIG, seg(SYN, A + 100_000, 0, 0)),
        TcpVerdict::Reopen
    );
    // The server may not reopen it.
    assert_eq!(
        c.send(REPLY, seg(SYN, B + 100_000, 0, 0)),
        TcpVerdict::Invalid(Invalid::State)
    );
}

#[test]
fn syn_after_rst_reopens() {
    let mut c = established();
    accept(c.send(ORIG, seg(RST, A + 1, 0, 0)));
    assert_eq!(c.state(), TcpState::Close);
    assert_eq!(c.send(ORIG, seg(SYN, A + 7, 0, 0)), TcpVerdict::Reopen);
}

#[test]
fn syn_on_a_live_connection_is_ignored_and_resyncs_on_its_syn_ack() {
    let mut c = established();
    // The client lost its connection and reuses the port: the tracker lets the SYN pass.
    let new_isn = A + 77_777_777;
    assert_eq!(c.send(ORIG, seg(SYN, new_isn, 0, 0)), TcpVerdict::Ignore);
    assert_eq!(c.state(), TcpState::Established);
    // The server has forgotten the old one and answers the SYN: both ends agree.
    accept(c.send(REPLY, seg(SYNACK, B + 5, new_isn + 1, 0)));
    assert_eq!(c.state(), TcpState::SynRecv);
    accept(c.send(ORIG, seg(ACK, new_isn + 1, B + 6, 0)));
    accept(c.send(ORIG, seg(PSHACK, new_isn + 1, B + 6, 100)));
    assert_eq!(c.state(), TcpState::Established);
}

#[test]
fn invalid_transitions() {
    // An ACK from the client before the SYN-ACK.
    let mut c = Conn::open(seg(SYN, A, 0, 0));
    assert_eq!(
        c.send(ORIG, seg(ACK, A + 1, 0, 0)),
        TcpVerdict::Invalid(Invalid::State)
    );
    // A client sending a SYN-ACK.
    assert_eq!(
        c.send(ORIG, seg(SYNACK, A, 0, 0)),
        TcpVerdict::Invalid(Invalid::State)
    );
    // A FIN before the SYN-ACK.
    assert_eq!(
        c.send(ORIG, seg(FINACK, A + 1, 0, 0)),
        TcpVerdict::Invalid(Invalid::State)
    );
    // Flags no stack sends.
    assert_eq!(
        c.send(ORIG, seg(f::SYN | f::FIN, A, 0, 0)),
        TcpVerdict::Invalid(Invalid::Flags)
    );
    assert_eq!(
        c.send(ORIG, seg(0, A, 0, 0)),
        TcpVerdict::Invalid(Invalid::Flags)
    );
    assert_eq!(c.state(), TcpState::SynSent);
}

#[test]
fn what_may_open_a_connection() {
    assert_eq!(check_new(&seg(SYN, A, 0, 0)), Ok(()));
    assert_eq!(
        check_new(&seg(ACK, A, 7, 0)),
        Ok(()),
        "picked up mid-stream"
    );
    for fl in [SYNACK, FINACK, RST, RSTACK] {
        assert_eq!(check_new(&seg(fl, A, 7, 0)), Err(Invalid::New), "{fl:#x}");
    }
    assert_eq!(check_new(&seg(f::FIN, A, 0, 0)), Err(Invalid::Flags));
    assert_eq!(
        check_new(&seg(f::SYN | f::RST, A, 0, 0)),
        Err(Invalid::Flags)
    );
}

#[test]
fn valid_flag_combinations_are_the_kernels() {
    let ok = [
        SYN,
        SYN | f::URG,
        SYNACK,
        RST,
        RSTACK,
        FINACK,
        FINACK | f::URG,
        ACK,
        ACK | f::URG,
    ];
    for fl in 0..=255u8 {
        let core = fl & !(f::ECE | f::CWR | f::PSH);
        assert_eq!(valid_flags(fl), ok.contains(&core), "{fl:#04x}");
    }
}

#[test]
fn mid_stream_pickup_is_liberal_until_it_is_answered() {
    let mut c = Conn::open(seg(ACK, A, B, 100));
    assert_eq!(c.state(), TcpState::Established);
    // Far outside what the tracker could know: passes (liberal), as the kernel's loose mode.
    accept(c.send(ORIG, seg(PSHACK, A + (1 << 20), B, 100)));
    let v = c.send(REPLY, seg(ACK, B, A + (1 << 20) + 100, 0));
    assert!(matches!(v, TcpVerdict::Accept { .. }), "{v:?}");
    // Answered: assured on the next segment.
    let v = c.send(ORIG, seg(ACK, A + (1 << 20) + 100, B, 0));
    assert!(
        matches!(v, TcpVerdict::Accept { assured: true, .. }),
        "{v:?}"
    );
}

#[test]
fn unanswered_pickup_gets_the_short_timeout() {
    let mut c = TcpConn::open(&seg(ACK, A, B, 10)).unwrap();
    let v = c.packet(ORIG, &seg(ACK, A, B, 10), Status::default(), &t());
    assert_eq!(
        v,
        TcpVerdict::Accept {
            timeout: Some(t().tcp_unacknowledged),
            assured: false,
            kill: false
        }
    );
}

#[test]
fn window_scaling_widens_the_window() {
    let mut syn = seg(SYN, A, 0, 0);
    syn.wscale = Some(7);
    syn.sack_perm = true;
    let mut c = Conn::open(syn);
    let mut synack = seg(SYNACK, B, A + 1, 0);
    synack.wscale = Some(7);
    synack.win = 65535;
    accept(c.send(REPLY, synack));
    assert_eq!((c.c.sides[0].scale, c.c.sides[1].scale), (7, 7));
    // The server's window (scaled by 128) lets the client send far more than 64 KiB.
    let mut ack = seg(ACK, A + 1, B + 1, 0);
    ack.win = 65535;
    accept(c.send(ORIG, ack));
    let mut r = seg(ACK, B + 1, A + 1, 0);
    r.win = 8000; // 8000 << 7 = 1 MB
    accept(c.send(REPLY, r));
    accept(c.send(ORIG, seg(PSHACK, A + 1 + 900_000, B + 1, 1000)));
    // Without scaling on both sides there is none.
    let mut c = Conn::open(syn);
    accept(c.send(REPLY, seg(SYNACK, B, A + 1, 0)));
    assert_eq!((c.c.sides[0].scale, c.c.sides[1].scale), (0, 0));
    accept(c.send(ORIG, seg(ACK, A + 1, B + 1, 0)));
    assert_eq!(
        c.send(ORIG, seg(PSHACK, A + 1 + 900_000, B + 1, 1000)),
        TcpVerdict::Invalid(Invalid::SeqOverWindow)
    );
}

#[test]
fn sack_blocks_count_when_permitted() {
    let mut syn = seg(SYN, A, 0, 0);
    syn.sack_perm = true;
    let mut c = Conn::open(syn);
    let mut synack = seg(SYNACK, B, A + 1, 0);
    synack.sack_perm = true;
    accept(c.send(REPLY, synack));
    accept(c.send(ORIG, seg(ACK, A + 1, B + 1, 0)));
    accept(c.send(ORIG, seg(PSHACK, A + 1, B + 1, 3000)));
    // The server SACKs data above its cumulative ACK: within what was sent, fine.
    let mut s = seg(ACK, B + 1, A + 1, 0);
    s.sack = Some(A + 3001);
    accept(c.send(REPLY, s));
    // A SACK edge above anything sent is an ACK of data never sent.
    s.sack = Some(A + 9001);
    assert_eq!(
        c.send(REPLY, s),
        TcpVerdict::Invalid(Invalid::AckOverWindow)
    );
}

#[test]
fn simultaneous_open() {
    let mut c = Conn::open(seg(SYN, A, 0, 0));
    accept(c.send(REPLY, seg(SYN, B, 0, 0)));
    assert_eq!(c.state(), TcpState::SynSent2);
    accept(c.send(ORIG, seg(SYNACK, A, B + 1, 0)));
    assert_eq!(c.state(), TcpState::SynRecv);
    accept(c.send(REPLY, seg(ACK, B + 1, A + 1, 0)));
    assert_eq!(c.state(), TcpState::Established);
}

#[test]
fn the_table_rows() {
    use TcpState::*;
    let to = |s| Next::To(s);
    // Original direction.
    assert_eq!(next(0, Kind::Syn, None), to(SynSent));
    assert_eq!(next(0, Kind::Syn, Established), Next::Ignore);
    assert_eq!(next(0, Kind::Syn, TimeWait), to(SynSent));
    assert_eq!(next(0, Kind::Syn, Close), to(SynSent));
    assert_eq!(next(0, Kind::SynAck, SynSent), Next::Invalid);
    assert_eq!(next(0, Kind::Fin, Established), to(FinWait));
    assert_eq!(next(0, Kind::Ack, SynSent), Next::Invalid);
    assert_eq!(next(0, Kind::Ack, SynRecv), to(Established));
    assert_eq!(next(0, Kind::Ack, LastAck), to(TimeWait));
    assert_eq!(next(0, Kind::Rst, None), Next::Invalid);
    for s in TcpState::ALL {
        assert_eq!(next(0, Kind::None, s), Next::Invalid);
        assert_eq!(next(1, Kind::None, s), Next::Invalid);
        if s != None {
            assert_eq!(next(0, Kind::Rst, s), to(Close));
            assert_eq!(next(1, Kind::Rst, s), to(Close));
        }
    }
    // Reply direction.
    assert_eq!(next(1, Kind::SynAck, SynSent), to(SynRecv));
    assert_eq!(next(1, Kind::SynAck, SynRecv), Next::Ignore);
    assert_eq!(next(1, Kind::Syn, SynSent), to(SynSent2));
    assert_eq!(next(1, Kind::Syn, TimeWait), Next::Invalid);
    assert_eq!(next(1, Kind::Ack, SynSent), Next::Ignore);
    assert_eq!(next(1, Kind::Ack, FinWait), to(CloseWait));
    assert_eq!(next(1, Kind::Fin, CloseWait), to(LastAck));
}

#[test]
fn sequence_comparison_wraps() {
    assert!(before(u32::MAX, 0));
    assert!(after(5, u32::MAX - 5));
    assert!(!before(7, 7) && !after(7, 7));
}

fn header(flags: u8, opts: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[4..8].copy_from_slice(&A.to_be_bytes());
    h[8..12].copy_from_slice(&B.to_be_bytes());
    h[12] = (((20 + opts.len()) / 4) as u8) << 4;
    h[13] = flags;
    h[14..16].copy_from_slice(&1000u16.to_be_bytes());
    h.extend_from_slice(opts);
    h
}

#[test]
fn segment_parse_reads_options() {
    // A Linux SYN: MSS, SACK-permitted, timestamps, NOP, window scale 7.
    let opts = [
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    let h = header(SYN, &opts);
    let s = Segment::parse(&h, h.len()).unwrap();
    assert_eq!(
        (s.seq, s.ack, s.win, s.len, s.wscale, s.sack_perm),
        (A, B, 1000, 0, Some(7), true)
    );
    assert_eq!(s.end(), A + 1);
    // Window scale above 14 is taken as 14 (RFC 7323).
    let h = header(SYN, &[3, 3, 20, 0]);
    assert_eq!(Segment::parse(&h, h.len()).unwrap().wscale, Some(14));
    // Timestamps only: nothing to read.
    let h = header(ACK, &[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    let s = Segment::parse(&h, h.len() + 100).unwrap();
    assert_eq!((s.len, s.sack, s.end()), (100, Option::None, A + 100));
    // SACK blocks: the highest right edge.
    let mut o = vec![1, 1, 5, 18];
    for (l, r) in [(A + 10, A + 20), (A + 50, A + 90)] {
        o.extend_from_slice(&l.to_be_bytes());
        o.extend_from_slice(&r.to_be_bytes());
    }
    let h = header(ACK, &o);
    assert_eq!(Segment::parse(&h, h.len()).unwrap().sack, Some(A + 90));
    // Options are not read from a SYN as SACK, nor window scale from a non-SYN.
    let h = header(ACK, &[3, 3, 7, 0]);
    assert_eq!(Segment::parse(&h, h.len()).unwrap().wscale, Option::None);
}

#[test]
fn segment_parse_refuses_bad_headers_and_survives_bad_options() {
    let h = header(ACK, &[]);
    assert!(Segment::parse(&h[..19], 19).is_none(), "short");
    let mut bad = h.clone();
    bad[12] = 4 << 4;
    assert!(Segment::parse(&bad, 20).is_none(), "data offset below 20");
    let h = header(ACK, &[1, 1, 1, 1]);
    assert!(
        Segment::parse(&h, 20).is_none(),
        "header beyond the segment"
    );
    // Malformed options end the reading without a panic.
    for opts in [
        vec![3, 0, 0, 0],
        vec![3, 1, 0, 0],
        vec![5, 40, 0, 0],
        vec![8, 255, 0, 0],
        vec![4, 2, 3],
    ] {
        let mut o = opts.clone();
        while o.len() % 4 != 0 {
            o.push(0);
        }
        let h = header(SYN, &o);
        assert!(Segment::parse(&h, h.len()).is_some());
    }
}
