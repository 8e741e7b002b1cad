//! How many frames each port's fill ring holds: a floor for every port, more for a port that
//! receives bursts, taken back from a port that went quiet.
//!
//! Design: a frame in a fill ring comes back only when its port receives, so frames given
//! to a port that then goes idle stay there. Fixed shares split over the ports there are
//! now fail both ways: large shares handed out while there were few ports leave later ports
//! none (an idle port keeps its share), and small shares drop a TCP sender's bursts (a veth
//! delivers a whole window while the worker is not running). So every port starts at a
//! *floor* sized as if the worker had [`FILL_PORTS`] ports (1/`FILL_PORTS` of half its frames;
//! the uplink, which carries every other node's traffic, an eighth of them), more while the
//! pool holds more than half the frames (out of that surplus only, so that what idle ports
//! were given at their start never exceeds half the frames besides the floors). A port whose
//! fill ring the kernel more than half emptied before a receive batch gets the whole ring
//! ([`FILL_TARGET`], at once: a TCP sender's next burst is larger) while the worker still has
//! a quarter of its frames free; a port
//! that did not receive its target's worth in a report period halves it back towards the
//! floor; above the floor a ring is topped up only while an eighth of the frames is free.
//! The free pool, not a sum of shares, decides: frames stuck in idle rings stop growth
//! instead of starving new ports.
//!
//! Thread-safety: pure functions; each worker applies them to its own slots.

use crate::xsk;
use flowtable::pipeline::BATCH_SIZE;

/// Most frames one port keeps in its fill ring.
pub const FILL_TARGET: u32 = xsk::RING_SIZE - BATCH_SIZE as u32;

/// The ports (besides the uplink) a worker's floors are sized for: kubelet's default is 110
/// pods a node. Past this many the floor shrinks (never below 16).
pub const FILL_PORTS: u32 = 128;

/// The fill floors of a worker with `home` frames and `ports` ports besides the uplink:
/// (the uplink's, every other port's).
pub fn floors(home: u32, ports: u32) -> (u32, u32) {
    let uplink = (home / 8).clamp(16, FILL_TARGET);
    let other = (home / 2 / ports.max(FILL_PORTS)).clamp(16, FILL_TARGET);
    (uplink, other)
}

/// A new port's target: its `floor`, more out of what the pool (`free` of `home` frames)
/// holds beyond half the frames (up to [`FILL_TARGET`]).
pub fn initial(floor: u32, free: u32, home: u32) -> u32 {
    free.saturating_sub(home / 2).clamp(floor, FILL_TARGET)
}

/// A port's target after a receive batch, its fill ring holding `left` frames the kernel has
/// not received into yet: the whole ring ([`FILL_TARGET`]) if that is less than half of it
/// and `free` of the worker's `home` frames are more than a quarter.
pub fn grown(target: u32, left: u32, free: u32, home: u32) -> u32 {
    if left < target / 2 && free > home / 4 {
        FILL_TARGET
    } else {
        target
    }
}

/// A port's target after a report period in which it received `rx` frames: halved (down to
/// `floor`) if that was less than the target.
pub fn decayed(target: u32, rx: u64, floor: u32) -> u32 {
    if rx < u64::from(target) {
        (target / 2).max(floor)
    } else {
        target
    }
}

/// How many frames to give a ring that holds `filled` of its `target` (floor `floor`), with
/// `free` of `home` frames in the pool: up to the target, but above the floor only while an
/// eighth of the frames is free.
pub fn want(target: u32, floor: u32, filled: u32, free: u32, home: u32) -> u32 {
    let to = if free < home / 8 {
        floor.min(target)
    } else {
        target
    };
    to.saturating_sub(filled).min(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: u32 = 16_384;

    /// Ports come one by one, each filled to its floor and then idle: up to `FILL_PORTS` of
    /// them hold at most half the frames besides the uplink's eighth, and every one gets
    /// frames (at least 16) however many there are.
    #[test]
    fn idle_ports_never_take_the_frames_later_ports_need() {
        let (uplink, floor) = floors(HOME, 1);
        assert_eq!((uplink, floor), (1984.min(HOME / 8), 64));
        let mut held = uplink;
        for n in 1..=FILL_PORTS {
            let (_, f) = floors(HOME, n);
            held += f;
        }
        assert!(held <= HOME / 2 + HOME / 8, "{held}");
        assert_eq!(floors(1024, 500), (128, 16));
    }

    /// The same with every port given its initial target from the pool: the first ones get
    /// the surplus over half the frames, later ones their floor, and every one of
    /// `FILL_PORTS` ports gets at least its floor.
    #[test]
    fn first_ports_get_the_surplus_and_every_port_its_floor() {
        let (uplink, _) = floors(HOME, 1);
        let mut free = HOME - uplink;
        let mut given = Vec::new();
        for n in 1..=FILL_PORTS {
            let (_, floor) = floors(HOME, n);
            let t = initial(floor, free, HOME).min(free);
            assert!(t >= floor, "port {n} gets {t} of its floor {floor}");
            free -= t;
            given.push(t);
        }
        assert_eq!(&given[..3], &[FILL_TARGET, FILL_TARGET, FILL_TARGET]);
        assert_eq!(given[FILL_PORTS as usize - 1], 64);
    }

    /// A TCP sender's bursts: a port whose batch emptied its ring gets the full ring at
    /// once, and goes back to the floor once quiet.
    #[test]
    fn a_busy_port_grows_to_the_full_ring_and_a_quiet_one_shrinks_back() {
        let (_, floor) = floors(HOME, 3);
        let mut t = floor;
        let mut batches = 0;
        while t < FILL_TARGET {
            t = grown(t, 0, HOME / 2, HOME);
            batches += 1;
        }
        assert_eq!((t, batches), (FILL_TARGET, 1));
        // A trickle does not grow it.
        assert_eq!(grown(floor, floor - 3, HOME, HOME), floor);
        assert_eq!(grown(floor, floor / 2, HOME, HOME), floor);
        // Busy but the pool is low: no growth.
        assert_eq!(grown(floor, 0, HOME / 4, HOME), floor);
        // Quiet periods: back to the floor; a busy one keeps it.
        assert_eq!(decayed(FILL_TARGET, 5000, floor), FILL_TARGET);
        let mut t = FILL_TARGET;
        for _ in 0..10 {
            t = decayed(t, 10, floor);
        }
        assert_eq!(t, floor);
    }

    #[test]
    fn above_the_floor_only_while_frames_are_plentiful() {
        assert_eq!(want(1024, 64, 100, HOME, HOME), 924);
        assert_eq!(want(1024, 64, 10, HOME / 16, HOME), 54);
        assert_eq!(want(1024, 64, 100, HOME / 16, HOME), 0);
        assert_eq!(
            want(1024, 64, 0, 20, HOME),
            20,
            "never more than the pool has"
        );
    }
}
