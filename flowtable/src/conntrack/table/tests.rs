//! The table: both-way lookups, deadlines enforced on lookup and by GC, early drop of
//! non-assured entries only, memory per entry, and concurrent use.

use super::super::tcp::TcpState;
use super::*;
use std::net::Ipv4Addr;

fn k(a: u8, sp: u16, b: [u8; 4], dp: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::new(10, 244, 1, a),
        dst: Ipv4Addr::from(b),
        sport: sp,
        dport: dp,
        proto,
    }
}

pub(super) fn dnat(o: FlowKey, backend: u8) -> FlowKey {
    FlowKey {
        dst: Ipv4Addr::new(10, 244, 2, backend),
        dport: 8080,
        ..o
    }
}

pub(super) fn seg(flags: u8, seq: u32, ack: u32) -> Segment {
    Segment {
        flags,
        seq,
        ack,
        win: 64240,
        ..Segment::default()
    }
}

/// A TCP flow through the SYN (and, if `handshake`, the SYN-ACK and the last ACK).
pub(super) fn tcp_flow(ct: &Conntrack, o: FlowKey, handshake: bool) -> (u32, u32) {
    let (e, v) = ct
        .insert_flow(&NewFlow {
            tcp: Some(seg(0x02, 100, 0)),
            ..NewFlow::new(o, dnat(o, 9))
        })
        .unwrap();
    if handshake {
        assert_eq!(
            ct.track(e, v, Dir::Reply, Some(&seg(0x12, 500, 101))),
            Track::Accept
        );
        assert_eq!(
            ct.track(e, v, Dir::Original, Some(&seg(0x10, 101, 501))),
            Track::Accept
        );
    }
    (e, v)
}

#[test]
fn both_directions_find_the_entry() {
    let ct = Conntrack::new(16, Timeouts::default());
    let o = k(2, 40000, [10, 96, 0, 10], 80, 6);
    let t = dnat(o, 9);
    let e = ct.insert(o, t).unwrap();
    let h = ct.lookup(&o).unwrap();
    assert_eq!(
        (h.entry, h.dir, h.translated, h.replied, h.assured),
        (e, Dir::Original, t, false, false)
    );
    let r = ct.lookup(&t.reversed()).unwrap();
    assert_eq!((r.dir, r.original), (Dir::Reply, o));
    assert!(
        ct.lookup(&t).is_none(),
        "the translated tuple itself is not a key"
    );
    assert_eq!(ct.len(), 1);
}

#[test]
fn tcp_tracking_through_the_table() {
    let ct = Conntrack::new(16, Timeouts::default());
    let o = k(2, 40000, [10, 96, 0, 10], 80, 6);
    let (e, v) = tcp_flow(&ct, o, false);
    let h = ct.lookup(&o).unwrap();
    assert_eq!(
        (h.state, h.replied, h.assured),
        (TcpState::SynSent, false, false)
    );
    ct.track(e, v, Dir::Reply, Some(&seg(0x12, 500, 101)));
    let h = ct.lookup(&o).unwrap();
    assert_eq!(
        (h.state, h.replied, h.assured),
        (TcpState::SynRecv, true, false)
    );
    ct.track(e, v, Dir::Original, Some(&seg(0x10, 101, 501)));
    let h = ct.lookup(&o).unwrap();
    assert_eq!((h.state, h.assured), (TcpState::Established, true));
    // The tracker's numbers are stored and read back whole.
    let c = ct.tcp(e).unwrap();
    assert_eq!((c.sides[0].end, c.sides[1].end), (101, 501));
    // Invalid: refused, nothing changes.
    assert_eq!(
        ct.track(e, v, Dir::Original, Some(&seg(0x10, 101 + (1 << 30), 501))),
        Track::Invalid(Invalid::SeqOverWindow)
    );
    assert_eq!(ct.tcp(e).unwrap(), c);
    // A FIN exchange, then a SYN on the TIME_WAIT tuple: reopen.
    for (dir, s) in [
        (Dir::Original, seg(0x11, 101, 501)),
        (Dir::Reply, seg(0x11, 501, 102)),
        (Dir::Original, seg(0x10, 102, 502)),
    ] {
        assert_eq!(ct.track(e, v, dir, Some(&s)), Track::Accept);
    }
    assert_eq!(ct.lookup(&o).unwrap().state, TcpState::TimeWait);
    assert_eq!(
        ct.track(e, v, Dir::Original, Some(&seg(0x02, 9000, 0))),
        Track::Reopen
    );
    // A stale version is gone.
    assert!(ct.remove_version(e, v));
    assert_eq!(
        ct.track(e, v, Dir::Original, Some(&seg(0x10, 1, 1))),
        Track::Gone
    );
}

#[test]
fn a_segment_that_cannot_open_takes_no_entry() {
    let ct = Conntrack::new(4, Timeouts::default());
    let o = k(2, 1, [10, 96, 0, 10], 80, 6);
    for flags in [0x12, 0x11, 0x04, 0x00, 0x03] {
        let r = ct.insert_flow(&NewFlow {
            tcp: Some(seg(flags, 1, 1)),
            ..NewFlow::new(o, dnat(o, 9))
        });
        assert!(
            matches!(r, Err(InsertError::Invalid(_))),
            "{flags:#x}: {r:?}"
        );
    }
    assert!(ct.is_empty());
}

#[test]
fn refused_connection_is_removed_at_once() {
    let ct = Conntrack::new(4, Timeouts::default());
    let o = k(2, 1, [10, 96, 0, 10], 80, 6);
    let (e, v) = tcp_flow(&ct, o, false);
    assert_eq!(
        ct.track(e, v, Dir::Reply, Some(&seg(0x14, 0, 101))),
        Track::Accept
    );
    assert!(ct.lookup(&o).is_none() && ct.is_empty());
}

#[test]
fn lookups_treat_entries_past_their_deadline_as_absent() {
    let t = Timeouts::default();
    let ct = Conntrack::new(16, t);
    ct.set_now(1000);
    let o = k(2, 40000, [10, 96, 0, 10], 80, 6);
    tcp_flow(&ct, o, false);
    ct.set_now(1000 + t.tcp_syn_sent);
    assert!(ct.lookup(&o).is_some(), "alive up to its deadline");
    ct.set_now(1001 + t.tcp_syn_sent);
    assert!(ct.lookup(&o).is_none(), "gone past it, without any GC");
    assert!(ct.is_empty(), "and removed by the lookup");
    assert_eq!(ct.counters.expired.load(Relaxed), 1);
}

#[test]
fn timeouts_follow_the_state() {
    let t = Timeouts::default();
    let ct = Conntrack::new(16, t);
    ct.set_now(10);
    let o = k(2, 40000, [10, 96, 0, 10], 80, 6);
    let (e, v) = tcp_flow(&ct, o, true);
    let left = |ct: &Conntrack| ct.entries()[0].expires_in;
    assert_eq!(left(&ct), t.tcp_established);
    ct.track(e, v, Dir::Original, Some(&seg(0x14, 101, 501)));
    assert_eq!(left(&ct), t.tcp_close);
    // UDP: unreplied, then assured once traffic follows the reply.
    let u = k(3, 1, [10, 96, 0, 53], 53, 17);
    let ct = Conntrack::new(16, t);
    let (e, v) = ct.insert_flow(&NewFlow::new(u, dnat(u, 9))).unwrap();
    assert_eq!(left(&ct), t.udp_unreplied);
    ct.track(e, v, Dir::Reply, None);
    assert!(
        !ct.lookup(&u).unwrap().assured,
        "a single answer is a probe's"
    );
    assert_eq!(left(&ct), t.udp_unreplied);
    ct.track(e, v, Dir::Original, None);
    assert!(ct.lookup(&u).unwrap().assured);
    assert_eq!(left(&ct), t.udp_assured);
}

#[test]
fn gc_covers_the_table_with_its_budget() {
    let ct = Conntrack::new(1000, Timeouts::default());
    for i in 0..1000u32 {
        let o = k(
            (i % 250) as u8,
            (i / 250) as u16 + 1,
            [10, 96, 0, 10],
            53,
            17,
        );
        ct.insert(o, dnat(o, 9)).unwrap();
    }
    ct.set_now(31);
    let budget = ct.gc_budget(10);
    assert_eq!(budget, 100);
    let mut expired = 0;
    for _ in 0..10 {
        expired += ct.gc(budget).expired;
    }
    assert_eq!(expired, 1000, "ten calls cover every entry once");
    assert!(ct.is_empty());
}

#[test]
fn clash_on_reply_tuple_is_reported() {
    let ct = Conntrack::new(16, Timeouts::default());
    // Two Services, same backend, same client port: the translated tuples collide.
    let a = k(2, 40000, [10, 96, 0, 10], 80, 6);
    let b = k(2, 40000, [10, 96, 0, 11], 80, 6);
    ct.insert(a, dnat(a, 9)).unwrap();
    assert_eq!(ct.insert(b, dnat(b, 9)), Err(InsertError::Clash));
    let b2 = FlowKey {
        sport: 40001,
        ..dnat(b, 9)
    };
    assert!(ct.insert(b, b2).is_ok());
}

#[test]
fn full_table_evicts_only_non_assured_oldest_first() {
    let ct = Conntrack::new(4, Timeouts::default());
    ct.set_now(100);
    let keys: Vec<FlowKey> = (0..4)
        .map(|i| k(10 + i, 1000, [10, 96, 0, 10], 80, 6))
        .collect();
    for key in &keys {
        tcp_flow(&ct, *key, true);
    }
    let new = k(99, 1000, [10, 96, 0, 10], 80, 6);
    assert_eq!(
        ct.insert_flow(&NewFlow {
            tcp: Some(seg(0x02, 1, 0)),
            ..NewFlow::new(new, dnat(new, 9))
        }),
        Err(InsertError::Full)
    );
    assert!(
        keys.iter().all(|k| ct.lookup(k).is_some()),
        "assured flows are never evicted"
    );
    assert_eq!(ct.counters.full.load(Relaxed), 1);
    // Two half-open entries (SYN and SYN-ACK, never the last ACK): evictable, the least
    // recently refreshed first.
    ct.remove(ct.lookup(&keys[2]).unwrap().entry);
    ct.remove(ct.lookup(&keys[3]).unwrap().entry);
    let old = k(50, 1000, [10, 96, 0, 10], 80, 6);
    let (e, v) = tcp_flow(&ct, old, false);
    ct.track(e, v, Dir::Reply, Some(&seg(0x12, 500, 101)));
    ct.set_now(110);
    let young = k(51, 1000, [10, 96, 0, 10], 80, 6);
    let (e, v) = tcp_flow(&ct, young, false);
    ct.track(e, v, Dir::Reply, Some(&seg(0x12, 500, 101)));
    assert!(!ct.lookup(&old).unwrap().assured);
    tcp_flow(&ct, new, false);
    assert!(ct.lookup(&old).is_none(), "the oldest half-open entry went");
    assert!(ct.lookup(&young).is_some() && ct.lookup(&new).is_some());
    assert_eq!(ct.counters.evicted.load(Relaxed), 1);
    assert_eq!(ct.assured(), 2, "the two handshakes left");
    // Pressure ends: everything expires and new flows are admitted again.
    ct.set_now(1_000_000);
    ct.gc(4);
    assert!(ct.is_empty());
    assert_eq!(ct.assured(), 0);
    assert!(ct.insert(old, dnat(old, 9)).is_ok());
}

#[test]
fn an_expired_entry_is_reused_before_any_eviction() {
    let ct = Conntrack::new(2, Timeouts::default());
    let a = k(1, 1, [10, 96, 0, 53], 53, 17);
    let b = k(2, 1, [10, 96, 0, 53], 53, 17);
    ct.insert(a, dnat(a, 9)).unwrap();
    ct.set_now(20);
    ct.insert(b, dnat(b, 9)).unwrap();
    ct.set_now(35);
    let c = k(3, 1, [10, 96, 0, 53], 53, 17);
    ct.insert(c, dnat(c, 9)).unwrap();
    assert!(ct.lookup(&b).is_some(), "the live one stays");
    assert_eq!(ct.counters.evicted.load(Relaxed), 0);
    assert_eq!(ct.counters.expired.load(Relaxed), 1);
}

#[test]
fn memory_per_connection() {
    let ct = Conntrack::new(1 << 20, Timeouts::default());
    assert_eq!(std::mem::size_of::<Entry>(), 80);
    assert!(ct.bytes_per_entry() <= 96, "{}", ct.bytes_per_entry());
}

#[test]
fn timeouts_are_set_by_name_within_bounds() {
    let mut t = Timeouts::default();
    t.set_from("tcp_established=3600").unwrap();
    assert_eq!(t.tcp_established, 3600);
    for bad in [
        "tcp_established=0",
        "nope=5",
        "tcp_close",
        "tcp_close=x",
        "udp_assured=99999999",
    ] {
        assert!(t.set_from(bad).is_err(), "{bad}");
    }
    let e = t.set_from("\n\u{1b}[31m=5").unwrap_err();
    assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
}

#[test]
fn two_workers_on_one_connection_never_tear_it() {
    // The two directions of one connection on two threads: every segment is in the
    // window, so nothing may be judged invalid, and the state stays established.
    let ct = std::sync::Arc::new(Conntrack::new(16, Timeouts::default()));
    let o = k(2, 40000, [10, 96, 0, 10], 80, 6);
    let (e, v) = tcp_flow(&ct, o, true);
    let threads: Vec<_> = [Dir::Original, Dir::Reply]
        .into_iter()
        .map(|dir| {
            let ct = ct.clone();
            std::thread::spawn(move || {
                let mut invalid = 0;
                for i in 0..20_000u32 {
                    // Each side sends data and acknowledges what the other could have sent
                    // so far (never beyond it).
                    let s = match dir {
                        Dir::Original => seg(0x18, 101 + i, 501),
                        Dir::Reply => seg(0x18, 501, 101),
                    };
                    let s = Segment { len: 1, ..s };
                    if let Track::Invalid(_) = ct.track(e, v, dir, Some(&s)) {
                        invalid += 1;
                    }
                }
                invalid
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 0);
    }
    assert_eq!(ct.lookup(&o).unwrap().state, TcpState::Established);
}

#[test]
fn churn_under_eviction_never_returns_a_torn_translation() {
    // A small table, four threads inserting non-assured flows (so inserts evict each
    // other's), and every hit checked against the translation its key must have.
    let ct = std::sync::Arc::new(Conntrack::new(64, Timeouts::default()));
    let tr_of = |o: &FlowKey| FlowKey {
        dst: Ipv4Addr::from(u32::from(o.src) ^ u32::from(o.sport)),
        dport: o.sport ^ 0x5a5a,
        ..*o
    };
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let ct = ct.clone();
            std::thread::spawn(move || {
                for n in 0..20_000u32 {
                    let o = FlowKey {
                        src: Ipv4Addr::new(10, 244, t, (n % 200) as u8),
                        dst: Ipv4Addr::new(10, 96, 0, 1),
                        sport: (n % 5000) as u16,
                        dport: 80,
                        proto: 17,
                    };
                    let _ = ct.insert(o, tr_of(&o));
                    let probe = FlowKey {
                        sport: ((n * 7) % 5000) as u16,
                        ..o
                    };
                    if let Some(h) = ct.lookup(&probe) {
                        assert_eq!(h.original, probe);
                        assert_eq!(h.translated, tr_of(&probe), "torn entry");
                        if n % 3 == 0 {
                            ct.remove(h.entry);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Nothing leaked: every entry is either live and findable, or free.
    let live = ct.entries();
    assert_eq!(live.len(), ct.len());
    for e in live {
        assert_eq!(ct.lookup(&e.original).unwrap().translated, e.translated);
        assert_eq!(
            ct.lookup(&e.translated.reversed()).unwrap().original,
            e.original
        );
    }
    ct.set_now(1_000_000);
    ct.gc(64);
    assert!(ct.is_empty());
    let probe = FlowKey {
        src: Ipv4Addr::new(1, 2, 3, 4),
        dst: Ipv4Addr::new(5, 6, 7, 8),
        sport: 1,
        dport: 2,
        proto: 6,
    };
    assert!(
        ct.insert(probe, tr_of(&probe)).is_ok(),
        "index slots were not leaked"
    );
}

#[test]
fn concurrent_insert_lookup_remove() {
    let ct = std::sync::Arc::new(Conntrack::new(4096, Timeouts::default()));
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let ct = ct.clone();
            std::thread::spawn(move || {
                for round in 0..200u16 {
                    let mut mine = Vec::new();
                    for i in 0..16u16 {
                        let o = FlowKey {
                            src: Ipv4Addr::new(10, 244, 1, t),
                            dst: Ipv4Addr::new(10, 96, 0, 1),
                            sport: round * 16 + i,
                            dport: 80,
                            proto: 17,
                        };
                        let tr = FlowKey {
                            dst: Ipv4Addr::new(10, 244, 2, t),
                            dport: 8080,
                            ..o
                        };
                        let e = ct.insert(o, tr).unwrap();
                        mine.push((o, tr, e));
                    }
                    for (o, tr, e) in &mine {
                        let h = ct.lookup(o).unwrap();
                        assert_eq!((h.entry, h.translated), (*e, *tr));
                        assert_eq!(ct.lookup(&tr.reversed()).unwrap().original, *o);
                    }
                    for (_, _, e) in mine {
                        assert!(ct.remove(e));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(ct.is_empty());
}

mod fast_path {
    //! The established fast path leaves exactly what the full rules leave.
    use super::*;
    use crate::conntrack::tcp::{Status, TcpVerdict};
    use proptest::prelude::*;

    fn handshake(
        ct: &Conntrack,
        isn: (u32, u32),
        win: (u16, u16),
        scale: Option<(u8, u8)>,
    ) -> (u32, u32) {
        let o = k(2, 40000, [10, 96, 0, 10], 80, 6);
        let mut syn = seg(0x02, isn.0, 0);
        syn.win = win.0;
        syn.wscale = scale.map(|s| s.0);
        syn.sack_perm = true;
        let (e, v) = ct
            .insert_flow(&NewFlow {
                tcp: Some(syn),
                ..NewFlow::new(o, dnat(o, 9))
            })
            .unwrap();
        let mut synack = seg(0x12, isn.1, isn.0.wrapping_add(1));
        synack.win = win.1;
        synack.wscale = scale.map(|s| s.1);
        ct.track(e, v, Dir::Reply, Some(&synack));
        let mut ack = seg(0x10, isn.0.wrapping_add(1), isn.1.wrapping_add(1));
        ack.win = win.0;
        assert_eq!(ct.track(e, v, Dir::Original, Some(&ack)), Track::Accept);
        (e, v)
    }

    proptest! {
        #[test]
        fn same_as_the_full_rules(
            isn in (any::<u32>(), any::<u32>()),
            win in (1u16.., 1u16..),
            scale in proptest::option::of((0u8..=14, 0u8..=14)),
            segs in proptest::collection::vec(
                (
                    any::<bool>(),
                    -200_000i64..200_000,
                    -200_000i64..200_000,
                    0u32..3000,
                    any::<u16>(),
                    any::<bool>(),
                    proptest::option::of(0i64..5000),
                ),
                1..40,
            ),
        ) {
            let ct = Conntrack::new(4, Timeouts::default());
            ct.set_now(100);
            let (e, v) = handshake(&ct, isn, win, scale);
            let t = *ct.timeouts();
            for (reply, dseq, dack, len, w, psh, sack) in segs {
                let dir = if reply { Dir::Reply } else { Dir::Original };
                let before = ct.tcp(e).unwrap();
                let (s, r) = (dir.index(), 1 - dir.index());
                let seq = before.sides[s].end.wrapping_add(dseq as u32);
                let ack = before.sides[r].end.wrapping_add(dack as u32);
                let mut sg = seg(if psh { 0x18 } else { 0x10 }, seq, ack);
                sg.len = len;
                sg.win = w;
                sg.sack = sack.map(|x| ack.wrapping_add(x as u32));
                let h = ct.lookup(&k(2, 40000, [10, 96, 0, 10], 80, 6)).unwrap();
                let status = Status { replied: h.replied, assured: h.assured };
                let mut want = before;
                let verdict = want.packet(s, &sg, status, &t);
                let got = ct.track(e, v, dir, Some(&sg));
                match verdict {
                    TcpVerdict::Accept { timeout, .. } => {
                        prop_assert_eq!(got, Track::Accept);
                        if let Some(secs) = timeout {
                            prop_assert_eq!(ct.entries()[0].expires_in, secs);
                        }
                    }
                    TcpVerdict::Ignore => prop_assert_eq!(got, Track::Accept),
                    TcpVerdict::Invalid(r) => {
                        prop_assert_eq!(got, Track::Invalid(r));
                        want = before;
                    }
                    TcpVerdict::Reopen => prop_assert_eq!(got, Track::Reopen),
                }
                prop_assert_eq!(ct.tcp(e).unwrap(), want);
            }
        }
    }
}

#[test]
fn the_census_counts_live_entries_by_kind_and_state() {
    let ct = Conntrack::new(64, Timeouts::default());
    tcp_flow(&ct, k(2, 40000, [10, 96, 0, 10], 80, 6), true);
    tcp_flow(&ct, k(2, 40001, [10, 96, 0, 10], 80, 6), false);
    ct.insert(
        k(2, 5000, [10, 96, 0, 53], 53, 17),
        dnat(k(2, 5000, [10, 96, 0, 53], 53, 17), 3),
    )
    .unwrap();
    let c = ct.census();
    assert_eq!(c.tcp[TcpState::Established as usize], 1);
    assert_eq!(c.tcp[TcpState::SynSent as usize], 1);
    assert_eq!(c.udp, 1);
    assert_eq!(
        c.tcp.iter().sum::<u64>() + c.udp + c.icmp + c.other + c.affinity,
        ct.len() as u64
    );
    // Expired entries are not counted, even before they are collected.
    ct.set_now(1_000_000);
    assert_eq!(ct.census(), Census::default());
}
