//! The camera registry: every camera that has polled, its held polls, its one command in
//! flight and the `/logs` calls waiting on it. All race handling of the system lives here; one
//! camera's state, changed only under its lock, is in `camera.rs`.
//!
//! How a `/logs` call is served:
//! 1. The call becomes a waiter with its own `bounded(1)` reply channel, stored in its camera's
//!    state under that camera's mutex (the cameras themselves sit in a mutex map).
//! 2. A camera has at most one command in flight. A call joins it only while it has not been
//!    sent, widening its range; otherwise it waits in `next_batch`, which becomes the next
//!    command (the union of the batch's ranges) when the current one ends. So a call never gets
//!    an answer to a command sent before it arrived.
//! 3. Each held poll waits with `recv_timeout` on a `bounded(1)` channel of its own. The command
//!    goes to the newest held poll (or to the next poll to arrive), so a poll whose client has
//!    gone, but that the watcher has not released yet, is never chosen over a fresh one.
//! 4. `send_logs` sorts and serializes the events once (`answer.rs`), then (still under the
//!    lock) hands every waiter the slice of the shared answer in its own range. Delivery and
//!    withdrawal both happen under the camera's lock, so a waiter that times out either finds
//!    itself still queued (and leaves no trace) or finds its answer already in its channel.
//! 5. The ticker re-sends a command with no answer after the ack timeout (the poll that carried it
//!    may have died), fails the calls of a camera that went offline, and forgets cameras offline
//!    for `CAMERA_FORGET_SECS`; the watcher ends held polls whose client left.
//! 6. A camera process that says who it is (`instanceId`) holds its id: a poll from another
//!    process is refused (409) while the holder has a live poll, and takes over at once when
//!    the holder's polls are gone. So `/logs` never alternates between two processes.
//! 7. For `CAMERA_ARRIVAL_SECS` after start, a call for an unknown camera waits for its first
//!    poll (a fleet's instance that has just started, cameras backing off to a restarted one).
//! 8. Polls are admitted, not discovered: a camera takes a place at its first poll and keeps it
//!    while online; beyond the places (three quarters of `MAX_HANDLERS`), a new camera's poll
//!    is 503 at once, so held polls never take the handlers users, answers and `/health` need.
//!
//! This module never touches HTTP or sockets: it takes ids, addresses, ranges and events, and
//! returns protocol values or an [`ApiError`].

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

mod answer;
mod camera;
mod commands;
mod upkeep;

pub use answer::{LogSlice, Received};

use super::error::ApiError;
use super::listener::Connections;
use super::metrics::Metrics;
use crate::log::{log_info, log_warn};
use crate::protocol::{Command, TimeRange};
use crate::settings::ServerConfig;
use answer::Answer;
use camera::{Camera, CameraState, Counted, HeldPoll, RequestId, Waiter};

/// Cameras named one by one in the log when they go offline in the same tick.
const OFFLINE_LINES_PER_TICK: usize = 5;
/// Cameras per `/cameras` page when the caller does not say.
pub const DEFAULT_PAGE: usize = 1000;
/// A live camera polls again within milliseconds of its last poll's end: a process whose last
/// poll ended longer ago than this (or left a command unanswered) may have died, and a new one
/// takes over. A restart caught between two polls costs at most this.
const REPOLL_WITHIN: Duration = Duration::from_secs(1);
/// At most one log line per camera id this often about a second process polling for it.
const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(60);

/// The kernel's connection table, read now; `None` where it cannot be read (then every client
/// counts as connected).
pub type ConnectionProbe = Box<dyn Fn() -> Option<Arc<Connections>> + Send + Sync>;

/// The kernel's connection table, and when it was read.
type Seen = (Arc<Connections>, Instant);

/// Who is polling: the camera process, when it says, and the connection's peer.
#[derive(Debug, Clone, Default)]
pub struct PollFrom {
    pub instance: Option<String>,
    pub peer: Option<SocketAddr>,
}

/// Sizes of the internal state, for `/stats` and leak tests: all return to zero when idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStats {
    pub cameras: usize,
    pub cameras_online: usize,
    pub open_polls: usize,
    pub waiting_requests: usize,
    pub commands_in_flight: usize,
    /// Calls waiting for a camera this instance does not know yet.
    pub awaiting_arrival: usize,
    /// Bytes the cameras' answers take while their callers' responses are written.
    pub answer_bytes: usize,
    /// Polls of new cameras refused because every place for a polling camera was taken.
    pub polls_refused_for_capacity: u64,
}

type Reply = Result<LogSlice, ApiError>;

/// All cameras known to one server.
pub struct Registry {
    config: ServerConfig,
    alive: ConnectionProbe,
    cameras: Mutex<HashMap<String, Arc<Camera>>>,
    /// Keys request ids: unguessable without a random-number crate, as SipHash keyed from the
    /// operating system's random source (`RandomState`) applied to a counter.
    id_keys: RandomState,
    /// Numbers waiters, held polls and request ids.
    next_id: AtomicU64,
    /// `/logs` calls waiting right now; cheap to read from other threads.
    callers_waiting: Arc<AtomicUsize>,
    /// Cameras holding a place to poll (see [`Registry::poll_capacity`]).
    polling: Arc<AtomicUsize>,
    polls_refused: AtomicU64,
    /// Bytes all answers hold, within `MAX_ANSWER_BYTES`.
    answer_bytes: Arc<AtomicUsize>,
    /// Round trips and re-sends are counted where they happen, before the callers are woken.
    metrics: Arc<Metrics>,
    /// Dropped at shutdown, which wakes every poll and waiter selecting on `shutdown_rx`.
    shutdown_tx: Mutex<Option<Sender<()>>>,
    shutdown_rx: Receiver<()>,
    started: Instant,
    awaiting_arrival: Arc<AtomicUsize>,
}

impl Registry {
    pub fn new(config: &ServerConfig, metrics: Arc<Metrics>, alive: ConnectionProbe) -> Registry {
        let (shutdown_tx, shutdown_rx) = bounded(0);
        Registry {
            config: config.clone(),
            alive,
            cameras: Mutex::new(HashMap::new()),
            id_keys: RandomState::new(),
            next_id: AtomicU64::new(0),
            callers_waiting: Arc::default(),
            polling: Arc::default(),
            polls_refused: AtomicU64::new(0),
            answer_bytes: Arc::default(),
            metrics,
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            shutdown_rx,
            started: Instant::now(),
            awaiting_arrival: Arc::default(),
        }
    }

    /// How often the ticker runs: often enough that a re-send or an offline verdict comes well
    /// within the configured timeouts.
    pub fn tick_interval(&self) -> Duration {
        (self.config.ack_timeout.min(self.config.camera_grace) / 4)
            .clamp(Duration::from_millis(20), Duration::from_millis(250))
    }

    fn request_id(&self) -> RequestId {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (high, low) = (self.id_keys.hash_one((n, 0u8)), self.id_keys.hash_one((n, 1u8)));
        RequestId(u128::from(high) << 64 | u128::from(low))
    }

    /// Cameras that may poll this instance at once: three quarters of the handlers, so that
    /// held polls always leave a quarter (one at least) to users, answers and `/health`.
    pub fn poll_capacity(&self) -> usize {
        let handlers = self.config.max_handlers;
        handlers.saturating_sub((handlers / 4).max(1)).max(1)
    }

    /// How many `/logs` calls are waiting for a camera right now (one atomic load).
    pub fn callers_waiting(&self) -> usize {
        self.callers_waiting.load(Ordering::Relaxed)
    }

    /// Holds a camera's poll open until a command is due, the hold ends, a newer poll of the
    /// same process takes over, its client leaves, or the server stops.
    pub fn poll(&self, camera_id: &str, from: &PollFrom) -> Result<Command, ApiError> {
        let camera = self.camera_for_poll(camera_id)?;
        let poll_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (wake, woken) = bounded(1);
        let connected = self.look_at_rival(&camera, from);
        let held = HeldPoll { id: poll_id, from: from.clone(), since: Instant::now(), wake };
        let ready =
            camera.lock_and(|state| self.start_poll(&camera, state, held, connected.as_ref()))?;
        let _open = OpenPoll(&camera, poll_id);
        if let Some(command) = ready {
            return Ok(command);
        }
        let handed = select! {
            recv(woken) -> id => id.ok(),
            recv(self.shutdown_rx) -> _ => None,
            default(self.config.poll_hold) => None,
        };
        // Under the lock that dispatches: an id sent as the hold ended is still taken.
        let command = camera.lock_and(|state| {
            state.polls.retain(|p| p.id != poll_id);
            state.command_for(handed.or_else(|| woken.try_recv().ok())?)
        });
        Ok(command.unwrap_or(Command::Noop))
    }

    fn start_poll(
        &self, camera: &Camera, state: &mut CameraState, poll: HeldPoll, connected: Option<&Seen>,
    ) -> Result<Option<Command>, ApiError> {
        let now = Instant::now();
        // Newest wins: an older poll of the same process is one its client gave up on. Without
        // identity, two processes may share the id: an older poll is left to the watcher, and
        // gets no command meanwhile (commands go to the newest).
        if let Some(instance) = &poll.from.instance {
            self.claim(camera, state, instance, now, connected)?;
            state.polls.retain(|p| p.from.instance != poll.from.instance);
        }
        if state.place.is_none() {
            state.place = Some(self.take_place()?);
        }
        state.poll_started(&camera.id);
        // A command waiting for a poll, or overdue, goes to this one: the newest.
        self.resend_if_overdue(camera, state, now);
        if let Some(request_id) = state.command_waiting(&camera.id) {
            return Ok(state.command_for(request_id));
        }
        state.polls.push(poll);
        Ok(None)
    }

    /// The kernel's table when a poll comes from a second process while the holder has polls
    /// held: read before the camera's lock (it takes milliseconds), with when it was read; once
    /// it found the holder alive, not again for a second.
    fn look_at_rival(&self, camera: &Camera, from: &PollFrom) -> Option<Seen> {
        let instance = from.instance.as_deref()?;
        let look = camera.lock_and(|state| {
            let rival = state.instance.as_deref().is_some_and(|c| c != instance);
            let due = state.looked.is_none_or(|at| at.elapsed() >= REPOLL_WITHIN);
            rival && due && !state.polls.is_empty()
        });
        let taken = Instant::now();
        look.then(|| (self.alive)().map(|connected| (connected, taken))).flatten()
    }

    /// Lets `instance` hold the camera's id, unless another process holds it and is alive: it
    /// has a live poll (its client still connected, as `connected` saw it), or its last poll
    /// ended within [`REPOLL_WITHIN`]. A command sent to the process it replaces is sent again.
    fn claim(
        &self, camera: &Camera, state: &mut CameraState, instance: &str, now: Instant,
        connected: Option<&Seen>,
    ) -> Result<(), ApiError> {
        // Copied only when another process holds the id: not on every poll.
        let rival = state.instance.as_deref().filter(|c| *c != instance).map(str::to_owned);
        if let Some(current) = rival {
            let holder = Some(current.as_str());
            let dead = connected.map_or(0, |seen| {
                state.release(|p| p.from.instance.as_deref() == holder && p.client_left(seen))
            });
            let polling = state.open_polls > dead;
            let recent = !state.instance_left
                && state.last_poll_end.is_some_and(|end| {
                    now.saturating_duration_since(end)
                        <= REPOLL_WITHIN.min(self.config.camera_grace)
                });
            if polling || recent {
                state.looked = connected.map(|_| now).or(state.looked);
                if state.conflict_logged.is_none_or(|at| at.elapsed() >= CONFLICT_LOG_EVERY) {
                    state.conflict_logged = Some(now);
                    let (id, every) = (&camera.id, CONFLICT_LOG_EVERY.as_secs());
                    log_warn!("camera '{id}': refused a poll from a second process (instance {instance}) while instance {current} is polling; two cameras may share this id (next line about it in {every} s at the earliest)");
                }
                return Err(ApiError::Conflict { camera_id: camera.id.clone() });
            }
            let id = &camera.id;
            log_info!(
                "camera '{id}' is now served by process {instance} (process {current} is gone)"
            );
            if let Some(command) = state.in_flight.as_mut() {
                command.sent_at = None;
            }
        }
        state.instance = Some(instance.to_string());
        state.instance_left = false;
        Ok(())
    }

    /// Serves one `/logs` call: blocks until its answer, its timeout, or an offline verdict.
    pub fn fetch_logs(
        &self, camera_id: &str, range: TimeRange, timeout: Duration,
    ) -> Result<LogSlice, ApiError> {
        let called = Instant::now();
        let arrival = || self.await_arrival(camera_id, called + timeout);
        let camera = self.camera(camera_id).map_or_else(arrival, Ok)?;
        // The wait for arrival counts against the call's timeout.
        let timeout = timeout.saturating_sub(called.elapsed());
        let (reply, answer) = bounded(1);
        let waiter_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiter = Waiter { id: waiter_id, range, reply };
        camera.lock_and(|state| self.enqueue(&camera, state, waiter))?;
        let _counted = Counted::one(&self.callers_waiting);
        let timed_out =
            || ApiError::CameraTimeout { camera_id: camera_id.to_string(), after: timeout };
        select! {
            recv(answer) -> reply => reply.unwrap_or_else(|_| Err(ApiError::Internal("reply channel closed".into()))),
            recv(self.shutdown_rx) -> _ => self.give_up(&camera, waiter_id, &answer, ApiError::ShuttingDown),
            default(timeout) => self.give_up(&camera, waiter_id, &answer, timed_out()),
        }
    }

    /// A call for a camera this instance does not know: 404 at once, unless the instance
    /// started less than `CAMERA_ARRIVAL_SECS` ago. Then the camera may be on its way (backing
    /// off from when this server was down, or still held by another instance of a fleet): the
    /// call waits for its first poll, until the window or the call's `deadline` ends.
    fn await_arrival(&self, camera_id: &str, deadline: Instant) -> Result<Arc<Camera>, ApiError> {
        let unknown = |waited: bool| ApiError::UnknownCamera {
            camera_id: camera_id.to_string(),
            since_start: waited.then(|| self.started.elapsed()),
        };
        let window_end = self.started + self.config.camera_arrival;
        if Instant::now() >= window_end {
            return Err(unknown(false));
        }
        // Bounded like the calls for one camera: a crowd of made-up ids cannot take every handler.
        let limit = self.config.max_waiting_per_camera;
        let _waiting = Counted::within(&self.awaiting_arrival, 1, limit)
            .ok_or_else(|| ApiError::TooManyWaiting { camera_id: camera_id.to_string(), limit })?;
        let _counted = Counted::one(&self.callers_waiting);
        let until = window_end.min(deadline);
        loop {
            if let Some(camera) = self.camera(camera_id) {
                return Ok(camera);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(unknown(true));
            }
            // Looked for again every 50 ms: a window after start, not a hot path.
            let wait = left.min(Duration::from_millis(50));
            if let Err(RecvTimeoutError::Disconnected) = self.shutdown_rx.recv_timeout(wait) {
                return Err(ApiError::ShuttingDown);
            }
        }
    }

    /// Takes a camera's `send_logs` answer and hands each waiting call its own range of it.
    pub fn complete(
        &self, camera_id: &str, instance: Option<&str>, body: Received,
    ) -> Result<(), ApiError> {
        let camera = self.camera(camera_id).ok_or_else(|| ApiError::UnknownCamera {
            camera_id: camera_id.to_string(),
            since_start: None,
        })?;
        let Received { request_id, logs } = body;
        if let Some(bad) = logs.iter().position(|e| !e.timestamp.is_finite()) {
            let why = format!("logs[{bad}].timestamp is not a finite number");
            return Err(ApiError::BadRequest(why));
        }
        let limit = self.config.max_answer_bytes;
        let answer = Answer::new(logs, &self.answer_bytes, limit).map(Arc::new).ok_or_else(|| {
            let held = self.answer_bytes.load(Ordering::Relaxed);
            ApiError::AnswersFull { held, limit }
        });
        camera.lock_and(|state| {
            // An answer from a process that no longer holds the id (one that names itself).
            if instance.zip(state.instance.as_deref()).is_some_and(|(from, holder)| from != holder)
            {
                return Err(ApiError::Conflict { camera_id: camera.id.clone() });
            }
            self.deliver(&camera, state, request_id.as_deref(), answer)
        })
    }

    /// Answers every held poll with noop and every waiting call with 503, now.
    pub fn shutdown(&self) {
        self.shutdown_tx.lock().take();
    }

    fn camera(&self, camera_id: &str) -> Option<Arc<Camera>> {
        self.cameras.lock().get(camera_id).cloned()
    }

    fn all_cameras(&self) -> Vec<Arc<Camera>> {
        self.cameras.lock().values().cloned().collect()
    }

    fn camera_for_poll(&self, camera_id: &str) -> Result<Arc<Camera>, ApiError> {
        let mut cameras = self.cameras.lock();
        if let Some(camera) = cameras.get(camera_id) {
            return Ok(Arc::clone(camera));
        }
        if cameras.len() >= self.config.max_cameras {
            return Err(ApiError::TooManyCameras { limit: self.config.max_cameras });
        }
        // A camera that cannot poll is not known either.
        let camera = Arc::new(Camera::new(camera_id, self.take_place()?));
        log_info!("camera '{camera_id}' connected");
        cameras.insert(camera_id.to_string(), Arc::clone(&camera));
        Ok(camera)
    }

    /// A place among the cameras polling this instance, or 503 at once when all are taken.
    fn take_place(&self) -> Result<Counted, ApiError> {
        let limit = self.poll_capacity();
        Counted::within(&self.polling, 1, limit).ok_or_else(|| {
            self.polls_refused.fetch_add(1, Ordering::Relaxed);
            ApiError::PollCapacity { limit }
        })
    }
}

/// Counts a poll as open for as long as it lives, even if its handler unwinds.
struct OpenPoll<'a>(&'a Camera, u64);

impl Drop for OpenPoll<'_> {
    fn drop(&mut self) {
        self.0.lock_and(|state| state.poll_ended(self.1));
    }
}

#[cfg(test)]
mod tests;
