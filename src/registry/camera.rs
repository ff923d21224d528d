//! One camera's state: its dispatch channel, the command in flight with its waiters, the next
//! batch, its polls and the answers it gave. Everything here is read and changed under the
//! camera's own lock; deciding what happens to a call (the races) is the registry's.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use super::Reply;

/// At most one warning per camera id this often about polls from two addresses at once.
const SHARED_ID_WARNING_EVERY: Duration = Duration::from_secs(60);
use crate::error::ApiError;
use crate::log::{log_info, log_warn};
use crate::protocol::{Command, TimeRange};

pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) range: TimeRange,
    pub(super) reply: Sender<Reply>,
}

pub(super) struct InFlight {
    pub(super) request_id: String,
    pub(super) range: TimeRange,
    pub(super) waiters: Vec<Waiter>,
    /// `None` while queued for a poll; set when a poll carries it out.
    pub(super) sent_at: Option<Instant>,
    pub(super) times_sent: u32,
    pub(super) created: Instant,
}

#[derive(Default)]
pub(super) struct CameraState {
    pub(super) in_flight: Option<InFlight>,
    pub(super) next_batch: Vec<Waiter>,
    pub(super) open_polls: usize,
    pub(super) last_poll_end: Option<Instant>,
    pub(super) last_seen: Option<SystemTime>,
    pub(super) reported_offline: bool,
    pub(super) answered: VecDeque<String>,
    /// Open polls by client address (only known addresses).
    pub(super) poll_sources: HashMap<String, usize>,
    pub(super) shared_id_warned: Option<Instant>,
}

pub(super) struct Camera {
    pub(super) id: String,
    pub(super) dispatch_tx: Sender<String>,
    pub(super) dispatch_rx: Receiver<String>,
    pub(super) state: Mutex<CameraState>,
}

impl Camera {
    pub(super) fn lock_and<T>(&self, f: impl FnOnce(&mut CameraState) -> T) -> T {
        f(&mut self.state.lock())
    }

    /// Claims the command with this id for the calling poll, unless the id is stale.
    pub(super) fn take_for_dispatch(&self, request_id: &str) -> Option<Command> {
        let mut state = self.state.lock();
        let command = state.in_flight.as_mut()?;
        if command.request_id != request_id || command.sent_at.is_some() {
            return None;
        }
        command.sent_at = Some(Instant::now());
        command.times_sent += 1;
        let (start_timestamp, end_timestamp) = command.range.wire_bounds();
        log_info!(
            "command {} sent to camera '{}' for {} caller(s){}",
            command.request_id,
            self.id,
            command.waiters.len(),
            if command.times_sent > 1 {
                format!(" (attempt {})", command.times_sent)
            } else {
                String::new()
            }
        );
        Some(Command::SendLogs {
            request_id: command.request_id.clone(),
            start_timestamp,
            end_timestamp,
        })
    }
}

impl CameraState {
    /// Counts a poll from `source` as open, and warns (rate-limited) when another address has
    /// one open too.
    fn note_poll_source(&mut self, camera_id: &str, source: &str) {
        let other = self
            .poll_sources
            .iter()
            .find(|(address, open)| **open > 0 && address.as_str() != source)
            .map(|(address, _)| address.clone());
        *self.poll_sources.entry(source.to_string()).or_insert(0) += 1;
        let Some(other) = other else {
            return;
        };
        let due = self
            .shared_id_warned
            .is_none_or(|at| at.elapsed() >= SHARED_ID_WARNING_EVERY);
        if due {
            self.shared_id_warned = Some(Instant::now());
            log_warn!(
                "camera '{camera_id}' is polling from two addresses at once ({other} and {source}): two cameras may share this id, and each would answer the other's commands; give each camera its own CAMERA_ID (next warning for this id in {} s at the earliest)",
                SHARED_ID_WARNING_EVERY.as_secs()
            );
        }
    }

    pub(super) fn online(&self, now: Instant, grace: Duration) -> bool {
        self.open_polls > 0
            || self
                .last_poll_end
                .is_some_and(|end| now.saturating_duration_since(end) <= grace)
    }

    /// Offline for longer than `forget_after`, with no poll, call or command on it.
    pub(super) fn forgettable(&self, now: Instant, forget_after: Duration) -> bool {
        self.open_polls == 0
            && self.in_flight.is_none()
            && self.next_batch.is_empty()
            && self
                .last_poll_end
                .is_some_and(|end| now.saturating_duration_since(end) > forget_after)
    }

    pub(super) fn waiting(&self) -> usize {
        self.next_batch.len() + self.in_flight.as_ref().map_or(0, |c| c.waiters.len())
    }

    pub(super) fn seconds_since_poll(&self, now: Instant) -> f64 {
        self.last_poll_end
            .map_or(0.0, |end| now.saturating_duration_since(end).as_secs_f64())
    }

    pub(super) fn offline_error(&self, camera_id: &str, now: Instant) -> ApiError {
        ApiError::CameraOffline {
            camera_id: camera_id.to_string(),
            seconds_since_seen: self.seconds_since_poll(now),
        }
    }
}

/// Adds one to a counter for as long as it lives.
pub(super) struct Counted<'a>(pub(super) &'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(super) fn new(counter: &'a AtomicUsize) -> Counted<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a poll as open for as long as it lives, even if its handler unwinds.
pub(super) struct OpenPoll<'a> {
    camera: &'a Camera,
    source: &'a str,
}

impl<'a> OpenPoll<'a> {
    pub(super) fn start(camera: &'a Camera, source: &'a str) -> OpenPoll<'a> {
        let mut state = camera.state.lock();
        if !source.is_empty() {
            state.note_poll_source(&camera.id, source);
        }
        state.open_polls += 1;
        state.last_seen = Some(SystemTime::now());
        if state.reported_offline {
            state.reported_offline = false;
            log_info!("camera '{}' is back online", camera.id);
        }
        OpenPoll { camera, source }
    }
}

impl Drop for OpenPoll<'_> {
    fn drop(&mut self) {
        let mut state = self.camera.state.lock();
        if let Some(open) = state.poll_sources.get_mut(self.source) {
            *open -= 1;
            if *open == 0 {
                state.poll_sources.remove(self.source);
            }
        }
        state.open_polls = state.open_polls.saturating_sub(1);
        state.last_poll_end = Some(Instant::now());
        state.last_seen = Some(SystemTime::now());
    }
}
