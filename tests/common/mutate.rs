//! Reproducible randomness and input mutation, shared by the integration tests (as
//! `common::mutate`) and the query parser's unit tests (by `#[path]`), so both generate the same
//! kinds of hostile input from one copy.
#![allow(dead_code)]

/// xorshift64*: tiny, seeded, the same sequence on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One to four random mutations of `base`: byte flips, truncation, duplication, deletion and
/// insertion of special strings or raw bytes.
pub fn mutate(rng: &mut Rng, base: &[u8], specials: &[&str]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = if out.is_empty() { 0 } else { rng.below(out.len() + 1) };
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.below(256) as u8;
            }
            2 => out.truncate(at),
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = start + rng.below(out.len() - start) + 1;
                let copy = out[start..end].to_vec();
                out.splice(at..at, copy);
            }
            4 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            5 => {
                let number = format!("{}", rng.next_u64() as i64 as f64 / 7.0);
                out.splice(at..at, number.into_bytes());
            }
            _ => {
                let special = rng.pick(specials).as_bytes().to_vec();
                out.splice(at..at, special);
            }
        }
    }
    out
}

/// Queries `/logs` takes, the seeds of the mutations.
pub const BASE_QUERIES: &[&str] = &[
    "cameraId=cam&startTimestamp=1700000000.25&endTimestamp=1700000004&timeout=5",
    "cameraId=front-door_1.a&startTimestamp=-0&timeout=0.5",
    "startTimestamp=1e3&endTimestamp=%2B2.5e3",
    "cameraId=cam&endTimestamp=.5&timeout=300",
    "cameraId=cam",
    "",
];

pub const QUERY_SPECIALS: &[&str] = &[
    "%",
    "%F",
    "%FF",
    "%FE%FF",
    "%C3%28",
    "%00",
    "&",
    "=",
    "&&",
    "==",
    "+",
    "%2B",
    "%20",
    "?",
    "#",
    ";",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "0x10",
    "-0",
    "-",
    ".",
    "e",
    "E5",
    "1_0",
    "9999999999999999999999999",
    "é",
    "\u{FFFD}",
    "\u{0}",
    "startTimestamp=",
    "endTimestamp=",
    "timeout=",
    "cameraId=",
    "&cameraId=cam",
    "&timeout=0",
    "&timeout=301",
    "&startTimestamp=1",
    "&endTimestamp=0",
];
