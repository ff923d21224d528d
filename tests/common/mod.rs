//! Helpers shared by the integration tests, by concern:
//!
//! - here: fixture events, a seeded xorshift generator, and `wait_until` / `wait_for`, which
//!   poll a condition with a short interval and a generous deadline instead of sleeping;
//! - [`http`]: requests over ureq and over raw TCP (one response reader), responses that check
//!   they are JSON;
//! - [`harness`]: a server on 127.0.0.1:0 that shuts down when dropped, real cameras with known
//!   events;
//! - [`fakes`]: cameras written in the test, and a relay that can hold a camera's answers back;
//! - [`procs`]: the built binaries as child processes that are stopped and reaped when dropped
//!   (stderr captured line by line), temporary directories, `/proc` probes;
//! - [`edge`]: the nginx edge, from `deploy/nginx.conf`.
//!
//! Set `CAMERA_LOGS_TEST_LOG=1` to see the log lines of the server, the cameras and the child
//! processes.

pub mod edge;
mod fakes;
mod harness;
mod http;
pub mod mutate;
mod procs;
mod throttle;

pub use fakes::*;
pub use harness::*;
pub use http::*;
pub use mutate::Rng;
pub use procs::*;
pub use throttle::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use camera_logs::EventLog;
use camera_logs::{ApiServer, CameraConfig, CameraHandle, ServerConfig};
use camera_logs::{CamerasResponse, LogEntry, LogsResponse};
use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// A realistic epoch second; every fixture timestamp is `T0 + k / 4`, exact in an f64.
pub const T0: f64 = 1_700_000_000.0;

/// Generous bound for anything the tests wait for (CI shares two cores).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often `wait_until` and `wait_for` look again.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// The timestamp of fixture event `k`.
pub fn ts(k: usize) -> f64 {
    T0 + k as f64 * 0.25
}

/// Silences the library's log lines unless `CAMERA_LOGS_TEST_LOG` is set.
pub fn quiet() {
    if std::env::var_os("CAMERA_LOGS_TEST_LOG").is_none() {
        camera_logs::set_log_level(camera_logs::Level::Off);
    }
}

pub fn entry(timestamp: f64, description: &str) -> LogEntry {
    LogEntry { timestamp, description: description.to_string() }
}

/// `n` events at `ts(0) .. ts(n-1)`, in a fixed scrambled order (a camera's log need not be
/// sorted, and the server must sort).
pub fn fixture(n: usize) -> Vec<LogEntry> {
    let mut events: Vec<LogEntry> = (0..n).map(|k| entry(ts(k), &format!("event {k}"))).collect();
    // Fisher-Yates with a fixed xorshift seed: the same order on every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..events.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        events.swap(i, (state % (i as u64 + 1)) as usize);
    }
    assert!(
        n < 3 || events.windows(2).any(|w| w[0].timestamp > w[1].timestamp),
        "the fixture is out of order"
    );
    events
}

/// What `/logs` must return: the events within `[start, end]` (inclusive), ascending by timestamp,
/// equal timestamps in the camera's order. Computed here independently of the crate.
pub fn expected(events: &[LogEntry], start: Option<f64>, end: Option<f64>) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = events
        .iter()
        .filter(|e| start.is_none_or(|s| s <= e.timestamp) && end.is_none_or(|x| e.timestamp <= x))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.timestamp.partial_cmp(&b.timestamp).unwrap());
    out
}

/// The `logs` array of a `/logs` answer as entries.
pub fn logs_of(body: &Value) -> Vec<LogEntry> {
    serde_json::from_value(body["logs"].clone())
        .unwrap_or_else(|e| panic!("not a /logs answer ({e}): {body}"))
}

/// Polls `condition` every [`POLL_EVERY`] until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting until {what}");
        thread::sleep(POLL_EVERY);
    }
}

/// Like [`wait_until`], for conditions that yield a value or say what is still missing: returns
/// the first `Ok`, or panics with the last `Err` after `patience`.
pub fn wait_for<T>(
    what: &str, patience: Duration, mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(why) => assert!(
                Instant::now() < deadline,
                "timed out after {patience:?} waiting for {what}: {why}"
            ),
        }
        thread::sleep(POLL_EVERY);
    }
}

/// Held by the tests that put an in-process server under heavy load or measure its handler
/// pool, so that they never run at the same time as each other.
pub static IN_PROCESS: Mutex<()> = Mutex::new(());

/// Sets a stop flag when dropped, so a helper thread ends even if its test panics.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}
