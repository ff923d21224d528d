//! The events every simulated camera holds, as a pure function of (camera, index): the oracle
//! the cameras answer from and the clients check against (`EventSet`), the run's camera ids,
//! and the random `/logs` ranges asked of them (`Rng`, `random_range`).
//!
//! It must not know about HTTP, threads or the server: it stores nothing and computes the
//! expected subset independently of the server's own range code.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use camera_logs::LogEntry;

/// Event `i` of camera `c` is at `EVENT_BASE + i * EVENT_SPACING + c * CAMERA_OFFSET`.
const EVENT_BASE: f64 = 1_700_000_000.0;
const EVENT_SPACING: f64 = 10.0;
const CAMERA_OFFSET: f64 = 0.001;

/// The events of one camera: `count` of them, known to the camera and to every client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventSet {
    pub(crate) camera: usize,
    pub(crate) count: usize,
}

impl EventSet {
    fn timestamp(&self, i: usize) -> f64 {
        EVENT_BASE + i as f64 * EVENT_SPACING + self.camera as f64 * CAMERA_OFFSET
    }

    fn entry(&self, i: usize) -> LogEntry {
        LogEntry {
            timestamp: self.timestamp(i),
            description: format!("camera {} event {i}", self.camera),
        }
    }

    /// Every event within the inclusive bounds, ascending (`None`: open on that side).
    pub(crate) fn within(&self, start: Option<f64>, end: Option<f64>) -> Vec<LogEntry> {
        (0..self.count)
            .filter(|&i| {
                let t = self.timestamp(i);
                start.is_none_or(|s| s <= t) && end.is_none_or(|e| t <= e)
            })
            .map(|i| self.entry(i))
            .collect()
    }
}

pub(crate) fn camera_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index}")
}

/// Ids unique to this run, so a --target server's other cameras are never counted or called.
pub(crate) fn camera_prefix() -> String {
    format!("lt{}-", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Random numbers without a crate

/// xorshift64*, seeded from std's per-process random SipHash keys.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded(stream: u64) -> Rng {
        Rng(RandomState::new().hash_one(stream) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n`; `n` must be greater than 0.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A `/logs` range: open on either side, bounds on events, between them, or outside them all.
pub(crate) fn random_range(rng: &mut Rng, events: &EventSet) -> (Option<f64>, Option<f64>) {
    match rng.below(10) {
        0 => (None, None),
        1 => (Some(random_bound(rng, events)), None),
        2 => (None, Some(random_bound(rng, events))),
        3 => {
            let exact = events.timestamp(rng.below(events.count));
            (Some(exact), Some(exact))
        }
        _ => {
            let a = random_bound(rng, events);
            let b = random_bound(rng, events);
            (Some(a.min(b)), Some(a.max(b)))
        }
    }
}

fn random_bound(rng: &mut Rng, events: &EventSet) -> f64 {
    let i = rng.below(events.count);
    match rng.below(8) {
        0..=3 => events.timestamp(i),
        4..=6 => events.timestamp(i) + EVENT_SPACING / 2.0,
        _ if rng.below(2) == 0 => events.timestamp(0) - 1000.0,
        _ => events.timestamp(events.count - 1) + 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Camera 3's five events: at `t(0) < t(1) < ... < t(4)`, 10 s apart.
    const SET: EventSet = EventSet { camera: 3, count: 5 };

    fn t(i: usize) -> f64 {
        SET.timestamp(i)
    }

    fn entries(indices: &[usize]) -> Vec<LogEntry> {
        indices.iter().map(|&i| SET.entry(i)).collect()
    }

    #[test]
    fn a_closed_range_holds_exactly_the_events_between_its_bounds() {
        let between_1_and_2 = t(1) + EVENT_SPACING / 2.0;
        let between_3_and_4 = t(3) + EVENT_SPACING / 2.0;
        assert_eq!(SET.within(Some(between_1_and_2), Some(between_3_and_4)), entries(&[2, 3]));
    }

    #[test]
    fn bounds_exactly_on_an_event_include_it() {
        assert_eq!(SET.within(Some(t(1)), Some(t(3))), entries(&[1, 2, 3]));
        assert_eq!(SET.within(Some(t(2)), Some(t(2))), entries(&[2]));
        assert_eq!(SET.within(Some(t(0)), Some(t(4))), entries(&[0, 1, 2, 3, 4]));
    }

    #[test]
    fn bounds_one_step_past_an_event_exclude_it() {
        assert_eq!(SET.within(Some(t(1).next_up()), Some(t(3).next_down())), entries(&[2]));
        assert_eq!(SET.within(Some(t(2).next_up()), Some(t(3).next_down())), []);
    }

    #[test]
    fn open_sides_reach_the_first_and_the_last_event() {
        assert_eq!(SET.within(None, None), entries(&[0, 1, 2, 3, 4]));
        assert_eq!(SET.within(Some(t(3)), None), entries(&[3, 4]));
        assert_eq!(SET.within(None, Some(t(1))), entries(&[0, 1]));
        assert_eq!(SET.within(None, Some(t(0).next_down())), []);
        assert_eq!(SET.within(Some(t(4).next_up()), None), []);
    }

    #[test]
    fn a_range_beside_or_across_no_event_is_empty() {
        assert_eq!(SET.within(Some(t(0) - 1000.0), Some(t(0) - 1.0)), []);
        assert_eq!(SET.within(Some(t(4) + 1.0), Some(t(4) + 1000.0)), []);
        assert_eq!(SET.within(Some(t(1) + 1.0), Some(t(2) - 1.0)), []);
        // Reversed bounds hold nothing, even around events.
        assert_eq!(SET.within(Some(t(3)), Some(t(1))), []);
    }

    #[test]
    fn events_ascend_and_name_their_camera_and_index() {
        let all = SET.within(None, None);
        assert!(all.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
        assert_eq!(all[4].description, "camera 3 event 4");
        assert_eq!(all[4].timestamp, 1_700_000_040.003);
    }

    #[test]
    fn per_camera_offsets_keep_cameras_events_distinct() {
        let cameras: Vec<EventSet> =
            [0, 1, 2, 999].iter().map(|&camera| EventSet { camera, count: 200 }).collect();
        for a in &cameras {
            for b in &cameras {
                if a.camera == b.camera {
                    continue;
                }
                for i in 0..a.count {
                    // No event of one camera sits on an event of another...
                    assert_ne!(a.timestamp(i), b.timestamp(i), "cameras {a:?} {b:?}");
                    // ...so an exact range on one camera's event finds nothing of the other's.
                    let exact = Some(a.timestamp(i));
                    assert_eq!(b.within(exact, exact), [], "cameras {a:?} {b:?}, event {i}");
                    assert_eq!(a.within(exact, exact), [a.entry(i)]);
                }
            }
        }
    }

    #[test]
    fn camera_ids_join_the_prefix_and_the_index() {
        assert_eq!(camera_id("lt42-", 7), "lt42-7");
        let prefix = camera_prefix();
        assert!(prefix.starts_with("lt") && prefix.ends_with('-'), "{prefix}");
        assert!(prefix.contains(&std::process::id().to_string()), "{prefix}");
    }

    #[test]
    fn rng_below_stays_below_and_varies() {
        let mut rng = Rng::seeded(1);
        let draws: Vec<usize> = (0..1000).map(|_| rng.below(7)).collect();
        assert!(draws.iter().all(|&n| n < 7));
        for n in 0..7 {
            assert!(draws.contains(&n), "{n} never drawn");
        }
    }

    #[test]
    fn random_ranges_are_ordered_and_cover_every_kind() {
        let mut rng = Rng::seeded(2);
        let (mut open, mut only_start, mut only_end, mut exact, mut empty, mut some) =
            (0, 0, 0, 0, 0, 0);
        for _ in 0..2000 {
            let (start, end) = random_range(&mut rng, &SET);
            match (start, end) {
                (None, None) => open += 1,
                (Some(_), None) => only_start += 1,
                (None, Some(_)) => only_end += 1,
                (Some(s), Some(e)) => {
                    assert!(s <= e, "{s} > {e}");
                    if s == e {
                        exact += 1;
                    }
                }
            }
            match SET.within(start, end).len() {
                0 => empty += 1,
                _ => some += 1,
            }
        }
        for (kind, n) in [
            ("open", open),
            ("start only", only_start),
            ("end only", only_end),
            ("exact", exact),
            ("empty", empty),
            ("non-empty", some),
        ] {
            assert!(n > 0, "no {kind} range in 2000");
        }
    }
}
