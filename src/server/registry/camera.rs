//! One camera's state: its held polls, its one command in flight with the calls waiting on it,
//! the next batch, which process holds its id, and the commands it was sent and answered. Read
//! and changed only under the camera's own lock; deciding what happens to a call (the races)
//! is the registry's.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::{PollFrom, Reply, Seen};
use crate::log::log_info;
use crate::protocol::{Command, TimeRange};
use crate::server::error::ApiError;

/// A command's id: 128 unguessable bits, 32 hex digits on the wire (16 bytes remembered, not a
/// string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RequestId(pub(super) u128);

impl RequestId {
    /// The id a camera sent back, if it is one this server could have issued.
    pub(super) fn parse(wire: &str) -> Option<RequestId> {
        let hex = wire.len() == 32 && wire.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| u128::from_str_radix(wire, 16).ok().map(RequestId)).flatten()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The `N` most recent ids, oldest first, each once.
#[derive(Default)]
pub(super) struct Remembered<const N: usize>(pub(super) VecDeque<RequestId>);

impl<const N: usize> Remembered<N> {
    pub(super) fn push(&mut self, id: RequestId) {
        if !self.0.contains(&id) {
            if self.0.len() == N {
                self.0.pop_front();
            }
            self.0.push_back(id);
        }
    }

    pub(super) fn remove(&mut self, id: RequestId) {
        self.0.retain(|kept| *kept != id);
    }
}

/// A `/logs` call waiting for an answer, with its own `bounded(1)` reply channel.
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) range: TimeRange,
    pub(super) reply: Sender<Reply>,
}

/// The camera's one command: sent to a poll, or waiting for one (`sent_at` is `None`).
pub(super) struct InFlight {
    pub(super) request_id: RequestId,
    pub(super) range: TimeRange,
    pub(super) waiters: Vec<Waiter>,
    pub(super) sent_at: Option<Instant>,
    pub(super) times_sent: u32,
    pub(super) created: Instant,
}

/// A poll held open: its handler waits on the other end of `wake` for a request id. Dropping
/// the sender ends the poll with noop (a newer poll took over, or its client left).
pub(super) struct HeldPoll {
    pub(super) id: u64,
    pub(super) from: PollFrom,
    pub(super) since: Instant,
    pub(super) wake: Sender<RequestId>,
}

impl HeldPoll {
    /// Whether its client has left, by the kernel's table as `seen` at the time it gives: a poll
    /// begun after that reading cannot be judged by it.
    pub(super) fn client_left(&self, (table, taken): &Seen) -> bool {
        self.since < *taken && self.from.peer.is_some_and(|peer| !table.established.contains(&peer))
    }
}

#[derive(Default)]
pub(super) struct CameraState {
    pub(super) in_flight: Option<InFlight>,
    pub(super) next_batch: Vec<Waiter>,
    /// Held polls, oldest first; a command goes to the newest.
    pub(super) polls: Vec<HeldPoll>,
    /// Polls being served, held or not (a poll that took a command is still being answered).
    pub(super) open_polls: usize,
    pub(super) last_poll_end: Option<Instant>,
    pub(super) last_seen: Option<SystemTime>,
    pub(super) reported_offline: bool,
    /// Its place among the cameras polling this instance (see `Registry::poll_capacity`),
    /// taken at its first poll and given back when it goes offline.
    pub(super) place: Option<Counted>,
    /// Sent and not answered yet, in the order sent: a camera without request ids answers them
    /// in that order. A few: one that never reached the camera costs its successor a re-send.
    pub(super) sent: Remembered<4>,
    /// Answered: a repeat of one of these is a harmless 200.
    pub(super) answered: Remembered<64>,
    /// The camera process that holds this id (cameras that send no identity leave it alone).
    pub(super) instance: Option<String>,
    /// Whether that process's last poll ended because its client left: then a new process may
    /// take over at once instead of after `CAMERA_GRACE_SECS`.
    pub(super) instance_left: bool,
    /// When the kernel's table, read for a poll from a second process, last found the holder
    /// alive.
    pub(super) looked: Option<Instant>,
    /// When a poll from a second process was last logged (once a minute per id).
    pub(super) conflict_logged: Option<Instant>,
}

pub(super) struct Camera {
    pub(super) id: String,
    pub(super) state: Mutex<CameraState>,
}

impl Camera {
    pub(super) fn new(id: &str, place: Counted) -> Camera {
        Camera {
            id: id.to_string(),
            // Seen just now: the ticker may look at it before its first poll is counted open.
            state: Mutex::new(CameraState {
                last_poll_end: Some(Instant::now()),
                last_seen: Some(SystemTime::now()),
                place: Some(place),
                ..CameraState::default()
            }),
        }
    }

    pub(super) fn lock_and<T>(&self, f: impl FnOnce(&mut CameraState) -> T) -> T {
        f(&mut self.state.lock())
    }
}

impl CameraState {
    /// Hands the command that waits for a poll to the newest held poll, if there is one.
    pub(super) fn dispatch(&mut self, camera_id: &str) {
        if self.polls.is_empty() {
            return;
        }
        if let Some(request_id) = self.command_waiting(camera_id) {
            // A fresh bounded(1) channel whose poll is no longer listed: the one message fits.
            let _ = self.polls.pop().map(|poll| poll.wake.try_send(request_id));
        }
    }

    /// Marks the command waiting for a poll as sent, if one waits, and returns its id.
    pub(super) fn command_waiting(&mut self, camera_id: &str) -> Option<RequestId> {
        let command = self.in_flight.as_mut().filter(|c| c.sent_at.is_none())?;
        command.mark_sent(camera_id);
        self.sent.push(command.request_id);
        Some(command.request_id)
    }

    /// The command for a poll that was handed `request_id` (or that finds a command waiting),
    /// unless it was abandoned in the meantime.
    pub(super) fn command_for(&mut self, request_id: RequestId) -> Option<Command> {
        let command = self.in_flight.as_ref()?;
        (command.request_id == request_id).then(|| command.to_wire())
    }

    pub(super) fn online(&self, now: Instant, grace: Duration) -> bool {
        self.open_polls > 0
            || self.last_poll_end.is_some_and(|end| now.saturating_duration_since(end) <= grace)
    }

    /// Offline for longer than `forget_after`, with no poll, call or command on it.
    pub(super) fn forgettable(&self, now: Instant, forget_after: Duration) -> bool {
        !self.online(now, forget_after) && self.in_flight.is_none() && self.next_batch.is_empty()
    }

    pub(super) fn waiting(&self) -> usize {
        self.next_batch.len() + self.in_flight.as_ref().map_or(0, |c| c.waiters.len())
    }

    pub(super) fn seconds_since_poll(&self, now: Instant) -> f64 {
        self.last_poll_end.map_or(0.0, |end| now.saturating_duration_since(end).as_secs_f64())
    }

    pub(super) fn offline_error(&self, camera_id: &str, now: Instant) -> ApiError {
        ApiError::CameraOffline {
            camera_id: camera_id.to_string(),
            seconds_since_seen: self.seconds_since_poll(now),
        }
    }

    pub(super) fn poll_started(&mut self, camera_id: &str) {
        self.open_polls += 1;
        self.last_seen = Some(SystemTime::now());
        if self.reported_offline {
            self.reported_offline = false;
            log_info!("camera '{camera_id}' is back online");
        }
    }

    pub(super) fn poll_ended(&mut self, poll_id: u64) {
        self.polls.retain(|p| p.id != poll_id);
        self.open_polls = self.open_polls.saturating_sub(1);
        self.last_poll_end = Some(Instant::now());
        self.last_seen = Some(SystemTime::now());
    }

    /// Ends the held polls `dead` says are gone; returns how many.
    pub(super) fn release(&mut self, mut dead: impl FnMut(&HeldPoll) -> bool) -> usize {
        let before = self.polls.len();
        let instance = &self.instance;
        let mut holder_left = false;
        self.polls.retain(|poll| {
            let gone = dead(poll);
            holder_left |= gone && poll.from.instance.is_some() && poll.from.instance == *instance;
            !gone
        });
        self.instance_left |= holder_left;
        before - self.polls.len()
    }
}

impl InFlight {
    pub(super) fn mark_sent(&mut self, camera_id: &str) {
        self.sent_at = Some(Instant::now());
        self.times_sent += 1;
        let (id, callers, n) = (self.request_id, self.waiters.len(), self.times_sent);
        let attempt = if n > 1 { format!(" (attempt {n})") } else { String::new() };
        log_info!("command {id} sent to camera '{camera_id}' for {callers} caller(s){attempt}");
    }

    pub(super) fn to_wire(&self) -> Command {
        let (start_timestamp, end_timestamp) = self.range.wire_bounds();
        let request_id = self.request_id.to_string();
        Command::SendLogs { request_id, start_timestamp, end_timestamp }
    }
}

/// Adds to a shared counter for as long as it lives, even if its holder unwinds.
pub(super) struct Counted(Arc<AtomicUsize>, usize);

impl Counted {
    pub(super) fn one(counter: &Arc<AtomicUsize>) -> Counted {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(Arc::clone(counter), 1)
    }

    /// Adds `n` if the total stays within `limit`, checked and added in one step, so that two
    /// takers can never both take the last place.
    pub(super) fn within(counter: &Arc<AtomicUsize>, n: usize, limit: usize) -> Option<Counted> {
        let take = |held: usize| held.checked_add(n).filter(|total| *total <= limit);
        counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, take).ok()?;
        Some(Counted(Arc::clone(counter), n))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}
