//! Coalescing checked against segmentation: a packet cut by `gso::Segments` and joined again
//! is the packet it was (headers, payload, a partial checksum that completes right), and
//! every segment that does not continue a packet exactly is refused.

use super::*;
use crate::gso::{GsoKind, GsoRequest, Segments};
use crate::wire::tcp::flags::{FIN, RST, SYN};
use etherparse::PacketBuilder;
use proptest::prelude::*;

const SRC: [u8; 4] = [10, 244, 2, 3];
const DST: [u8; 4] = [10, 244, 1, 3];

/// A TCP packet (timestamps), DF set, checksums complete, sequence `seq`.
fn packet(len: usize, seq: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..len).map(|i| (i * 13 + i / 509) as u8).collect();
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], [2, 0, 0, 0, 0, 3])
        .ipv4(SRC, DST, 63)
        .tcp(5201, 40000, seq, 502)
        .options(&[etherparse::TcpOptionElement::Timestamp(9, 8)])
        .expect("options")
        .ack(77);
    let mut f = Vec::new();
    b.write(&mut f, &data).expect("build");
    f[IP + 6] |= DF;
    fix_ip(&mut f);
    f
}

fn fix_ip(f: &mut [u8]) {
    f[IP + 10..IP + 12].fill(0);
    let c = checksum::checksum(&f[IP..TCP]);
    f[IP + 10..IP + 12].copy_from_slice(&c.to_be_bytes());
}

fn fix_tcp(f: &mut [u8]) {
    f[TCP + 16..TCP + 18].fill(0);
    let pseudo = checksum::pseudo_header_sum(SRC, DST, 6, (f.len() - TCP) as u16);
    let c = !checksum::fold(pseudo + checksum::sum(&f[TCP..]));
    f[TCP + 16..TCP + 18].copy_from_slice(&c.to_be_bytes());
}

/// The segments a sender's GSO would make of `p` at `mss`.
fn cut(p: &[u8], mss: u16) -> Vec<Vec<u8>> {
    let req = GsoRequest {
        kind: GsoKind::Tcp,
        size: mss,
    };
    let s = Segments::new(p, req).expect("segmentable");
    (0..s.count())
        .map(|i| {
            let mut out = vec![0u8; s.len(i)];
            s.write(i, &mut out);
            out
        })
        .collect()
}

/// A packet handed over: its frame, its segments (0: sent alone), where it is partial.
type Out = (Vec<u8>, u16, Option<(u16, u16)>);

/// Joins `segs` in order; returns the packets handed over.
fn join(segs: &[Vec<u8>]) -> Vec<Out> {
    fn take(c: &mut Coalescer, out: &mut Vec<Out>) {
        if let Some(j) = c.finish() {
            out.push((j.frame.to_vec(), j.segments, j.partial));
        }
    }
    let mut c = Coalescer::new();
    let mut out = Vec::new();
    for s in segs {
        match c.push(s, false) {
            Push::Joined => continue,
            Push::Complete => take(&mut c, &mut out),
            Push::Other => {
                take(&mut c, &mut out);
                if !c.start(s, false) {
                    out.push((s.clone(), 0, None)); // alone
                }
            }
        }
    }
    take(&mut c, &mut out);
    out
}

/// The partial TCP checksum of a joined packet, completed as the receiver would.
fn completed(f: &[u8]) -> bool {
    let pseudo_in_field = f[TCP + 16..TCP + 18].to_vec();
    let mut g = f.to_vec();
    g[TCP + 16..TCP + 18].fill(0);
    let pseudo = checksum::pseudo_header_sum(SRC, DST, 6, (g.len() - TCP) as u16);
    let want = checksum::fold(pseudo).to_be_bytes();
    if pseudo_in_field != want {
        return false;
    }
    fix_tcp(&mut g);
    checksum::verify(&g[IP..TCP])
        && checksum::fold(
            checksum::pseudo_header_sum(SRC, DST, 6, (g.len() - TCP) as u16)
                + checksum::sum(&g[TCP..]),
        ) == 0xffff
}

#[test]
fn segments_join_back_into_the_packet_they_were_cut_from() {
    let p = packet(64_000, 1_000_000);
    let segs = cut(&p, 1448);
    assert_eq!(segs.len(), 45);
    let out = join(&segs);
    assert_eq!(out.len(), 1, "one packet");
    let (f, n, partial) = &out[0];
    assert_eq!(*n, 45);
    assert_eq!(*partial, Some((34, 16)));
    assert_eq!(f.len(), p.len());
    // Everything but the TCP checksum (now partial) and PSH as the last segment had it.
    assert_eq!(f[..TCP + 13], p[..TCP + 13]);
    assert_eq!(f[TCP + 14..TCP + 16], p[TCP + 14..TCP + 16]);
    assert_eq!(f[TCP + 18..], p[TCP + 18..]);
    assert!(completed(f), "the partial checksum completes right");
}

#[test]
fn a_short_or_pushed_segment_ends_the_packet() {
    let p = packet(3 * 1448 + 100, 5);
    let segs = cut(&p, 1448);
    let mut c = Coalescer::new();
    assert!(c.start(&segs[0], false));
    assert_eq!(c.push(&segs[1], false), Push::Joined);
    assert_eq!(c.push(&segs[2], false), Push::Joined);
    assert_eq!(
        c.push(&segs[3], false),
        Push::Complete,
        "100 bytes: the last"
    );
    assert_eq!(c.push(&segs[3], false), Push::Other, "nothing after it");
    let j = c.finish().expect("open");
    assert_eq!((j.segments, j.gso_size, j.hdr_len), (4, 1448, 66));
    assert!(c.finish().is_none());

    let mut pushed = segs[1].clone();
    pushed[TCP + 13] |= PSH;
    fix_tcp(&mut pushed);
    assert!(c.start(&segs[0], false));
    assert_eq!(c.push(&pushed, false), Push::Complete);
    let j = c.finish().expect("open");
    assert_eq!(j.frame[TCP + 13] & PSH, PSH, "PSH carried");
    assert!(
        !c.start(&pushed, false),
        "a pushed segment is complete by itself"
    );
}

#[test]
fn a_lone_segment_comes_out_as_it_went_in() {
    let p = packet(1000, 5);
    let mut c = Coalescer::new();
    assert!(c.start(&p, false));
    let j = c.finish().expect("open");
    assert_eq!((j.frame, j.segments, j.partial), (&p[..], 1, None));
    assert!(c.start(&p, true));
    assert_eq!(c.finish().expect("open").partial, Some((34, 16)));
}

#[test]
fn what_does_not_continue_the_packet_exactly_is_refused() {
    let p = packet(4 * 1448, 5);
    let segs = cut(&p, 1448);
    let mut c = Coalescer::new();
    assert!(c.start(&segs[0], false));
    assert_eq!(
        c.push(&segs[2], false),
        Push::Other,
        "a gap in the sequence"
    );
    assert_eq!(c.push(&segs[0], false), Push::Other, "a retransmission");
    let edit = |at: usize, v: u8| {
        let mut s = segs[1].clone();
        s[at] ^= v;
        if at >= TCP {
            fix_tcp(&mut s);
        } else {
            fix_ip(&mut s);
            fix_tcp(&mut s);
        }
        s
    };
    for (at, v, what) in [
        (0, 1, "another destination MAC"),
        (IP + 1, 4, "another TOS (ECN)"),
        (IP + 8, 1, "another TTL"),
        (IP + 15, 1, "another source"),
        (TCP + 1, 1, "another port"),
        (TCP + 11, 1, "another acknowledgment"),
        (TCP + 15, 1, "another window"),
        (TCP + 25, 1, "another timestamp"),
    ] {
        assert_eq!(c.push(&edit(at, v), false), Push::Other, "{what}");
    }
    let mut bad = segs[1].clone();
    bad[TCP + 30] ^= 0xff;
    assert_eq!(c.push(&bad, false), Push::Other, "a wrong checksum");
    assert_eq!(
        c.push(&segs[1], false),
        Push::Joined,
        "the right one still joins"
    );

    // Not even a start: flags, options, fragments, no payload, a wrong checksum.
    let mut c = Coalescer::new();
    for flag in [SYN, FIN, RST] {
        let mut s = segs[0].clone();
        s[TCP + 13] |= flag;
        fix_tcp(&mut s);
        assert!(!c.start(&s, false), "flag {flag:#x}");
    }
    let mut frag = segs[0].clone();
    frag[IP + 6] |= 0x20;
    fix_ip(&mut frag);
    assert!(!c.start(&frag, false), "more fragments");
    assert!(!c.start(&packet(0, 5), false), "no payload");
    assert!(!c.start(&bad, false), "a wrong checksum");
    assert!(
        c.start(&bad, true),
        "... unless it is partial (not summed yet)"
    );
}

#[test]
fn a_packet_knows_its_flow() {
    let segs = cut(&packet(3 * 1448, 5), 1448);
    let mut c = Coalescer::new();
    assert!(!c.same_flow(&segs[0]), "nothing open");
    assert!(c.start(&segs[0], false));
    assert!(c.same_flow(&segs[2]), "a later segment of it");
    assert!(
        c.same_flow(&packet(0, 5)),
        "a pure ACK of the same direction"
    );
    let mut other = segs[1].clone();
    other[TCP + 1] ^= 1;
    assert!(!c.same_flow(&other), "another port");
    assert!(!c.same_flow(&segs[1][..20]), "too short");
}

#[test]
fn without_df_the_identifications_must_follow_each_other() {
    let mut p = packet(3 * 1448, 5);
    p[IP + 6] &= !DF;
    fix_ip(&mut p);
    let segs = cut(&p, 1448);
    let mut c = Coalescer::new();
    assert!(c.start(&segs[0], false));
    assert_eq!(c.push(&segs[2], false), Push::Other);
    assert_eq!(c.push(&segs[1], false), Push::Joined, "id + 1");
}

#[test]
fn a_packet_never_exceeds_64_kb() {
    // 60 segments of 1448: more than one packet can hold.
    let first = packet(45 * 1448, 5);
    let second = packet(15 * 1448, 5 + 45 * 1448);
    let mut segs = cut(&first, 1448);
    segs.extend(cut(&second, 1448));
    let out = join(&segs);
    assert!(out.len() >= 2, "split into packets of at most 64 KB");
    for (f, n, _) in &out {
        assert!(f.len() - ETH_LEN <= MAX_IP_LEN);
        assert!(*n >= 1);
        assert!(*n == 1 || completed(f));
    }
    let total: usize = out.iter().map(|(f, _, _)| f.len() - 66).sum();
    assert_eq!(total, 60 * 1448, "every byte once");
}

proptest! {
    #[test]
    fn any_cut_joins_back(len in 1usize..64_000, mss in 536u16..9000) {
        let p = packet(len, 0xffff_0000);
        let segs = cut(&p, mss);
        let out = join(&segs);
        prop_assert_eq!(out.len(), 1);
        let (f, n, _) = &out[0];
        prop_assert_eq!(usize::from(*n), segs.len());
        prop_assert_eq!(&f[TCP + 18..], &p[TCP + 18..]);
        prop_assert_eq!(&f[..TCP + 4], &p[..TCP + 4]);
        if *n > 1 {
            prop_assert!(completed(f));
        } else {
            prop_assert_eq!(&f[..], &p[..]);
        }
    }

    #[test]
    fn any_bytes_are_refused_or_taken_without_panic(
        a in proptest::collection::vec(any::<u8>(), 0..200),
        b in proptest::collection::vec(any::<u8>(), 0..200),
        partial in any::<bool>(),
    ) {
        let mut c = Coalescer::new();
        let _ = c.start(&a, partial);
        let _ = c.push(&b, partial);
        let _ = c.finish();
    }
}
