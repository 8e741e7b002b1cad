//! The established fast path: an ACK-only segment (data or not) of an assured, established
//! connection, judged and recorded on the entry's words in place.
//!
//! Design: `tcp.rs` is the rule book; this file applies the same rules to the one case that
//! nearly every packet is, without copying the connection out and back: rules I-IV
//! (see `tcp.rs`) on the six window words, then the same updates `TcpConn::in_window`
//! makes, storing only the words that change. Anything else (other flags, a liberal
//! connection, SACK blocks to read, a segment failing any rule) returns `None` and goes the
//! full way, which decides it as the kernel does. A property test checks that both ways
//! leave the same connection behind.
//!
//! Thread-safety: the caller holds the entry's BUSY bit.

use super::table::{Conntrack, Entry, ASSURED, LAST_SHIFT, REPLIED, SIDE_BITS};
use super::tcp::{after, before, side_flags as sf, Kind, Segment, TcpState, MAX_ACK_WINDOW};
use crate::wire::tcp::flags as f;
use std::sync::atomic::Ordering::Relaxed;

impl Conntrack {
    /// Tracks `seg` if it is an ACK of an assured, established connection that passes every
    /// window rule; returns the timeout to refresh the entry to. `None`: go the full way
    /// (nothing was changed). `m` is the entry's flag word, claimed by the caller.
    #[inline(always)]
    pub(super) fn established_ack(
        &self,
        e: &Entry,
        m: u32,
        dir: usize,
        seg: &Segment,
    ) -> Option<u32> {
        const WANT: u32 = REPLIED | ASSURED | ((TcpState::Established as u32) << 8);
        const MASK: u32 = REPLIED | ASSURED | (0xf << 8);
        if m & MASK != WANT || seg.flags & (f::SYN | f::FIN | f::RST | f::ACK) != f::ACK {
            return None;
        }
        // One copy per direction: constant indices and shifts.
        if dir == 0 {
            self.ack_from::<0>(e, seg)
        } else {
            self.ack_from::<1>(e, seg)
        }
    }

    #[inline(always)]
    fn ack_from<const S: usize>(&self, e: &Entry, seg: &Segment) -> Option<u32> {
        let (s, r) = (S, 1 - S);
        let meta = e.tcp_meta.load(Relaxed);
        let side = |x: usize| meta >> (SIDE_BITS * x as u32);
        let (s_scale, s_flags, r_flags) =
            (side(s) & 0xf, (side(s) >> 4) as u8, (side(r) >> 4) as u8);
        if (s_flags | r_flags) & sf::LIBERAL != 0
            || (seg.sack.is_some() && r_flags & sf::SACK_PERM != 0)
        {
            return None;
        }
        let w = &e.win;
        let (snd_end, snd_maxend, snd_maxwin) = (
            w[3 * s].load(Relaxed),
            w[3 * s + 1].load(Relaxed),
            w[3 * s + 2].load(Relaxed),
        );
        let (rcv_end, rcv_maxend, rcv_maxwin) = (
            w[3 * r].load(Relaxed),
            w[3 * r + 1].load(Relaxed),
            w[3 * r + 2].load(Relaxed),
        );
        let (seq, ack) = (seg.seq, seg.ack);
        let end = seg.seq.wrapping_add(seg.len);
        let ok = snd_maxwin != 0
            && before(seq, snd_maxend.wrapping_add(1))
            && before(ack, rcv_end.wrapping_add(1))
            && (rcv_maxwin == 0 || after(end, snd_end.wrapping_sub(rcv_maxwin).wrapping_sub(1)))
            && after(
                ack,
                rcv_end
                    .wrapping_sub(snd_maxwin.max(MAX_ACK_WINDOW))
                    .wrapping_sub(1),
            );
        if !ok {
            return None;
        }
        let win = u32::from(seg.win) << s_scale;
        let flag = |x: usize, fl: u8| u32::from(fl) << (SIDE_BITS * x as u32 + 4);
        let mut new = meta | flag(s, sf::ACKED);
        if snd_maxwin < win {
            w[3 * s + 2].store(win, Relaxed);
        }
        if after(end, snd_end) {
            w[3 * s].store(end, Relaxed);
            new |= flag(s, sf::UNACKED);
        }
        if rcv_maxwin != 0 && after(end, snd_maxend) {
            w[3 * r + 2].store(
                rcv_maxwin.wrapping_add(end.wrapping_sub(snd_maxend)),
                Relaxed,
            );
        }
        let edge = ack.wrapping_add(win);
        if after(edge, rcv_maxend.wrapping_sub(1)) {
            w[3 * r + 1].store(edge.wrapping_add(u32::from(win == 0)), Relaxed);
        }
        if ack == rcv_end {
            new &= !flag(r, sf::UNACKED);
        }
        new = (new & !(0xf << LAST_SHIFT))
            | ((Kind::Ack as u32) << LAST_SHIFT)
            | ((s as u32) << (LAST_SHIFT + 3));
        if new != meta {
            e.tcp_meta.store(new, Relaxed);
        }
        if e.last_end.load(Relaxed) != end {
            e.last_end.store(end, Relaxed);
        }
        let t = &self.timeouts;
        let unacked = flag(0, sf::UNACKED) | flag(1, sf::UNACKED);
        Some(if new & unacked != 0 {
            t.tcp_established.min(t.tcp_unacknowledged)
        } else {
            t.tcp_established
        })
    }
}
