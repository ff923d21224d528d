//! The events every simulated camera holds, as a pure function of (camera, index): the oracle
//! the cameras answer from and the clients check against (`EventSet`), the run's camera ids,
//! and the random `/logs` ranges asked of them (`Rng`, `random_range`).
//!
//! It must not know about HTTP, threads or the server: it stores nothing and computes the
//! expected subset independently of the server's own range code.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use camera_logs::protocol::LogEntry;

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
