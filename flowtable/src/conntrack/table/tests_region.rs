//! Taking a table over from memory an earlier owner left: every stable connection kept with
//! its state and windows, half-written entries dropped, a foreign region refused and wiped.

use super::super::region::{Identity, Memory, Opened};
use super::super::tcp::TcpState;
use super::tests::{dnat, seg, tcp_flow};
use super::*;
use std::net::Ipv4Addr;

fn id(node: &str) -> Identity {
    Identity {
        node: node.into(),
        boot: [7; 16],
        pid: 1,
    }
}

fn k(a: u8, sp: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::new(10, 244, 1, a),
        dst: Ipv4Addr::new(10, 96, 0, 10),
        sport: sp,
        dport: 80,
        proto,
    }
}

fn tr(o: FlowKey) -> FlowKey {
    dnat(o, 9)
}

/// A table of 64 with `n` established TCP connections, one UDP flow and one affinity record.
fn populated(n: u16) -> (Conntrack, Vec<FlowKey>) {
    let (ct, opened) = Conntrack::open(Memory::owned(64), Timeouts::default(), &id("node1"));
    assert_eq!(opened, Opened::Fresh);
    ct.set_now(1000);
    let mut keys = Vec::new();
    for i in 0..n {
        let o = k(2, 40000 + i, 6);
        tcp_flow(&ct, o, true);
        keys.push(o);
    }
    let u = k(3, 5353, 17);
    ct.insert(u, tr(u)).unwrap();
    let a = k(4, 0, 253);
    ct.insert_flow(&NewFlow {
        timeout: Some(600),
        index_reply: false,
        ..NewFlow::new(a, tr(a))
    })
    .unwrap();
    (ct, keys)
}

fn reopen(ct: Conntrack, who: &str) -> (Conntrack, Opened) {
    let (ct, opened) = Conntrack::open(ct.into_memory(), Timeouts::default(), &id(who));
    ct.set_now(1001);
    (ct, opened)
}

#[test]
fn a_takeover_keeps_every_connection_with_its_state() {
    let (ct, keys) = populated(5);
    let before = ct.entries();
    let windows: Vec<_> = keys
        .iter()
        .map(|o| ct.tcp(ct.lookup(o).unwrap().entry).unwrap())
        .collect();
    let (ct, opened) = reopen(ct, "node1");
    let Opened::Resumed(r) = opened else {
        panic!("not resumed: {opened:?}");
    };
    assert_eq!((r.kept, r.torn, r.busy, r.unindexed), (7, 0, 0, 0));
    assert!(!r.clean, "never closed: the previous owner died");
    assert_eq!(r.takeovers, 1);
    assert_eq!(ct.len(), 7);
    assert_eq!(ct.assured(), 5);
    let mut after = ct.entries();
    let mut before = before;
    for v in [&mut before, &mut after] {
        v.sort_by_key(|e| (e.original.src, e.original.sport));
        for e in v.iter_mut() {
            e.expires_in = 0; // the clock moved on by a second
        }
    }
    assert_eq!(before, after);
    for (o, w) in keys.iter().zip(&windows) {
        let hit = ct
            .lookup(&tr(*o).reversed())
            .expect("reply direction indexed");
        assert_eq!(hit.state, TcpState::Established);
        assert_eq!(ct.tcp(hit.entry).unwrap(), *w, "window tracking survives");
        // The next segment of the stream is judged against the kept windows.
        assert_eq!(
            ct.track(
                hit.entry,
                hit.version,
                Dir::Reply,
                Some(&seg(0x10, 501, 101))
            ),
            Track::Accept
        );
        assert_eq!(
            ct.track(
                hit.entry,
                hit.version,
                Dir::Reply,
                Some(&seg(0x14, 501 + 3_000_000, 101))
            ),
            Track::Invalid(Invalid::SeqOverWindow),
        );
    }
    // The affinity record is found one way only, as before.
    let a = k(4, 0, 253);
    assert!(ct.lookup(&a).is_some());
    assert!(ct.lookup(&tr(a).reversed()).is_none());
    // Room for new flows is exactly what was free.
    for n in 0..57 {
        ct.insert(k(9, n, 17), tr(k(9, n, 17))).unwrap();
    }
    assert_eq!(ct.len(), 64);
    assert_eq!(ct.counters.evicted.load(Relaxed), 0);
}

#[test]
fn a_closed_table_is_found_clean_and_removal_still_works() {
    let (ct, keys) = populated(2);
    ct.close();
    let (ct, opened) = reopen(ct, "node1");
    let Opened::Resumed(r) = opened else {
        panic!("{opened:?}")
    };
    assert!(r.clean);
    let hit = ct.lookup(&keys[0]).unwrap();
    assert!(ct.remove(hit.entry));
    assert!(ct.lookup(&keys[0]).is_none());
    assert!(ct.lookup(&tr(keys[0]).reversed()).is_none());
    // The second takeover counts, and a region in use again is dirty.
    let (_, opened) = reopen(ct, "node1");
    let Opened::Resumed(r) = opened else {
        panic!("{opened:?}")
    };
    assert_eq!((r.kept, r.takeovers, r.clean), (3, 2, false));
}

#[test]
fn entries_a_dead_writer_was_in_the_middle_of_are_dropped() {
    let (ct, keys) = populated(4);
    let free = (0..64)
        .find(|&i| flags(ct.entries[i].st.load(Relaxed)) & ALIVE == 0)
        .unwrap();
    // keys[0]: an insert that had begun (odd version, not yet published).
    let e0 = ct.lookup(&keys[0]).unwrap().entry as usize;
    let st = ct.entries[e0].st.load(Relaxed);
    ct.entries[e0].st.store(pack(ver(st) | 1, 0), Relaxed);
    // keys[1]: a tracker holding the busy bit, its window words half stored.
    let e1 = ct.lookup(&keys[1]).unwrap().entry as usize;
    ct.entries[e1].st.fetch_or(u64::from(BUSY), Relaxed);
    ct.entries[e1].win[0].store(0xdead_beef, Relaxed);
    // A free entry whose insert never got past the version bump.
    ct.entries[free].st.store(pack(5, 0), Relaxed);
    let (ct, opened) = reopen(ct, "node1");
    let Opened::Resumed(r) = opened else {
        panic!("{opened:?}")
    };
    assert_eq!((r.kept, r.torn, r.busy), (4, 2, 1));
    assert_eq!(ct.len(), 4);
    for o in &keys[..2] {
        assert!(ct.lookup(o).is_none(), "{o:?} was half written");
        assert!(ct.lookup(&tr(*o).reversed()).is_none());
    }
    for o in &keys[2..] {
        assert_eq!(ct.lookup(o).unwrap().state, TcpState::Established);
    }
    // The dropped connections come back as new flows; versions moved on (even).
    assert!(ct.insert(keys[0], tr(keys[0])).is_ok());
    for e in ct.entries.iter() {
        assert_eq!(ver(e.st.load(Relaxed)) & 1, 0);
    }
}

#[test]
fn a_region_of_another_node_or_boot_is_wiped() {
    let (ct, keys) = populated(3);
    let (ct, opened) = reopen(ct, "node2");
    assert_eq!(
        opened,
        Opened::Replaced("it belongs to node 'node1', this is 'node2'".into())
    );
    assert!(ct.is_empty());
    assert!(ct.lookup(&keys[0]).is_none());
    assert!(ct.entries().is_empty());
    // The wiped region now belongs to node2; another boot is refused too.
    ct.insert(keys[0], tr(keys[0])).unwrap();
    let other_boot = Identity {
        boot: [8; 16],
        ..id("node2")
    };
    let (ct, opened) = Conntrack::open(ct.into_memory(), Timeouts::default(), &other_boot);
    assert_eq!(
        opened,
        Opened::Replaced("made before the kernel last booted".into())
    );
    assert_eq!(ct.len(), 0);
    assert_eq!(ct.capacity(), 64);
}
