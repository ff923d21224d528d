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
//! 4. `send_logs` sorts the events once, then (still under the lock) hands every waiter the slice
//!    of the shared answer in its own range. Delivery and withdrawal both happen under the
//!    camera's lock, so a waiter that times out either finds itself still queued (and leaves no
//!    trace) or finds its answer already in its channel.
//! 5. The ticker re-sends a command with no answer after the ack timeout (the poll that carried it
//!    may have died), fails the calls of a camera that went offline, and forgets cameras offline
//!    for `CAMERA_FORGET_SECS`; the watcher ends held polls whose client left.
//! 6. A camera process that says who it is (`instanceId`) holds its id: a poll from another
//!    process is refused (409) while the holder has a live poll, and takes over at once when
//!    the holder's polls are gone. So `/logs` never alternates between two processes.
//! 7. For `CAMERA_ARRIVAL_SECS` after start, a call for an unknown camera waits for its first
//!    poll (a fleet's instance that has just started, cameras backing off to a restarted one).
//!
//! This module never touches HTTP or sockets: it takes ids, addresses, ranges and events, and
//! returns protocol values or an [`ApiError`].

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender};
use parking_lot::{Condvar, Mutex};

mod camera;

use super::error::ApiError;
use super::metrics::Metrics;
use crate::log::{epoch_secs, log_info, log_warn};
use crate::protocol::{sort_by_timestamp, CameraInfo, Command, LogEntry, SendLogsBody, TimeRange};
use crate::settings::ServerConfig;
use camera::{Camera, CameraState, Counted, HeldPoll, InFlight, Waiter};

/// How many answered request ids a camera remembers, so a repeated answer is a harmless 200.
const REMEMBERED_ANSWERS: usize = 64;
/// Cameras named one by one in the log when they go offline in the same tick.
const OFFLINE_LINES_PER_TICK: usize = 5;
/// Cameras per `/cameras` page when the caller does not say.
pub const DEFAULT_PAGE: usize = 1000;
/// Calls that may wait for an unknown camera at once (each holds a handler thread).
const MAX_ARRIVAL_WAITERS: usize = 1024;
/// At most one log line per camera id this often about a second process polling for it.
const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Whether the client at this address is still connected (the server reads it from the
/// kernel's connection table).
pub type ConnectionProbe = Box<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// Who is polling: the camera process, when it says, and the connection's peer.
#[derive(Debug, Clone, Default)]
pub struct PollFrom {
    pub instance: Option<String>,
    pub peer: Option<SocketAddr>,
}

/// The events one caller asked for: a window on an answer shared by every caller of a command.
#[derive(Debug, Clone)]
pub struct LogSlice {
    logs: Arc<[LogEntry]>,
    range: Range<usize>,
}

impl LogSlice {
    pub fn entries(&self) -> &[LogEntry] {
        &self.logs[self.range.clone()]
    }
}

/// What became of a `send_logs` answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// It answered the command in flight and reached `callers` waiting calls.
    Delivered { request_id: String, callers: usize, events: usize, elapsed: Duration },
    /// The command was already answered; this copy is ignored.
    Duplicate { request_id: String },
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
}

type Reply = Result<LogSlice, ApiError>;

/// Unguessable request ids without a random-number crate: SipHash keyed by `RandomState`, whose
/// keys std draws from the operating system's random source, applied to a counter.
struct RequestIds {
    keys: RandomState,
    counter: AtomicU64,
}

impl RequestIds {
    fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let (high, low) = (self.keys.hash_one((n, 0u8)), self.keys.hash_one((n, 1u8)));
        format!("{high:016x}{low:016x}")
    }
}

/// All cameras known to one server.
pub struct Registry {
    hold: Duration,
    ack_timeout: Duration,
    grace: Duration,
    max_waiting: usize,
    forget_after: Duration,
    max_cameras: usize,
    arrival_window: Duration,
    alive: ConnectionProbe,
    cameras: Mutex<HashMap<String, Arc<Camera>>>,
    ids: RequestIds,
    /// Ids of waiters and held polls.
    next_id: AtomicU64,
    /// `/logs` calls waiting right now; cheap to read from other threads.
    callers_waiting: AtomicUsize,
    /// Round trips and re-sends are counted where they happen, before the callers are woken.
    metrics: Arc<Metrics>,
    /// Dropped at shutdown, which wakes every poll and waiter selecting on `shutdown_rx`.
    shutdown_tx: Mutex<Option<Sender<()>>>,
    shutdown_rx: Receiver<()>,
    started: Instant,
    /// Signalled (with the `cameras` lock held) when a camera is registered, and at shutdown.
    arrived: Condvar,
    awaiting_arrival: AtomicUsize,
}

impl Registry {
    pub fn new(config: &ServerConfig, metrics: Arc<Metrics>, alive: ConnectionProbe) -> Registry {
        let (shutdown_tx, shutdown_rx) = bounded(0);
        Registry {
            hold: config.poll_hold,
            ack_timeout: config.ack_timeout,
            grace: config.camera_grace,
            max_waiting: config.max_waiting_per_camera,
            forget_after: config.camera_forget,
            max_cameras: config.max_cameras,
            arrival_window: config.camera_arrival,
            alive,
            cameras: Mutex::new(HashMap::new()),
            ids: RequestIds { keys: RandomState::new(), counter: AtomicU64::new(0) },
            next_id: AtomicU64::new(0),
            callers_waiting: AtomicUsize::new(0),
            metrics,
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            shutdown_rx,
            started: Instant::now(),
            arrived: Condvar::new(),
            awaiting_arrival: AtomicUsize::new(0),
        }
    }

    /// How often the ticker runs: often enough that a re-send or an offline verdict comes well
    /// within the configured timeouts.
    pub fn tick_interval(&self) -> Duration {
        (self.ack_timeout.min(self.grace) / 4)
            .clamp(Duration::from_millis(20), Duration::from_millis(250))
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
        let held = HeldPoll {
            id: poll_id,
            instance: from.instance.clone(),
            peer: from.peer,
            since: Instant::now(),
            wake,
        };
        let ready = camera.lock_and(|state| self.start_poll(&camera, state, held))?;
        let _open = OpenPoll(&camera, poll_id);
        if let Some(command) = ready {
            return Ok(command);
        }
        let handed = select! {
            recv(woken) -> id => id.ok(),
            recv(self.shutdown_rx) -> _ => None,
            default(self.hold) => None,
        };
        // Under the lock that dispatches: an id sent as the hold ended is still taken.
        let command = camera.lock_and(|state| {
            state.polls.retain(|p| p.id != poll_id);
            state.command_for(&handed.or_else(|| woken.try_recv().ok())?)
        });
        Ok(command.unwrap_or(Command::Noop))
    }

    fn start_poll(
        &self,
        camera: &Camera,
        state: &mut CameraState,
        poll: HeldPoll,
    ) -> Result<Option<Command>, ApiError> {
        let now = Instant::now();
        match &poll.instance {
            Some(instance) => {
                self.claim(camera, state, instance, now)?;
                // Newest wins: an older poll of the same process is one its client gave up on.
                state.polls.retain(|p| p.instance != poll.instance);
            }
            // Without identity, two processes may share the id: only dead polls are ended.
            None => {
                state.release(|p| p.instance.is_none() && p.peer.is_some_and(|a| !(self.alive)(a)));
            }
        }
        state.poll_started(&camera.id);
        self.redispatch_if_overdue(camera, state, now);
        if let Some(command) = state.in_flight.as_mut().filter(|c| c.sent_at.is_none()) {
            command.mark_sent(&camera.id);
            return Ok(Some(command.to_wire()));
        }
        state.polls.push(poll);
        Ok(None)
    }

    /// Lets `instance` hold the camera's id, unless another process holds it and is alive: it
    /// has a live poll, or its last poll ended normally within `CAMERA_GRACE_SECS`.
    fn claim(
        &self,
        camera: &Camera,
        state: &mut CameraState,
        instance: &str,
        now: Instant,
    ) -> Result<(), ApiError> {
        if let Some(current) = state.instance.clone().filter(|c| c != instance) {
            let holder = Some(current.as_str());
            let dead = state.release(|p| {
                p.instance.as_deref() == holder && p.peer.is_some_and(|a| !(self.alive)(a))
            });
            let polling = state.open_polls > dead;
            let recent = !state.instance_left
                && state
                    .last_poll_end
                    .is_some_and(|end| now.saturating_duration_since(end) <= self.grace);
            if polling || recent {
                if state.conflict_logged.is_none_or(|at| at.elapsed() >= CONFLICT_LOG_EVERY) {
                    state.conflict_logged = Some(now);
                    log_warn!(
                        "camera '{}': refused a poll from a second process (instance {instance}) while instance {current} is polling; two cameras may share this id (next line about it in {} s at the earliest)",
                        camera.id,
                        CONFLICT_LOG_EVERY.as_secs()
                    );
                }
                return Err(ApiError::Conflict { camera_id: camera.id.clone() });
            }
            log_info!(
                "camera '{}' is now served by process {instance} (process {current} is gone)",
                camera.id
            );
        }
        state.instance = Some(instance.to_string());
        state.instance_left = false;
        Ok(())
    }

    /// Serves one `/logs` call: blocks until its answer, its timeout, or an offline verdict.
    pub fn fetch_logs(
        &self,
        camera_id: &str,
        range: TimeRange,
        timeout: Duration,
    ) -> Result<LogSlice, ApiError> {
        let called = Instant::now();
        let camera = match self.camera(camera_id) {
            Some(camera) => camera,
            None => self.await_arrival(camera_id, called + timeout)?,
        };
        // The wait for arrival counts against the call's timeout.
        let timeout = timeout.saturating_sub(called.elapsed());
        let (reply, answer) = bounded(1);
        let waiter_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waiter = Waiter { id: waiter_id, range, reply };
        camera.lock_and(|state| self.enqueue(&camera, state, waiter))?;
        let _counted = Counted::new(&self.callers_waiting);
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
        let unknown = || ApiError::UnknownCamera {
            camera_id: camera_id.to_string(),
            since_start: (self.arrival_window > Duration::ZERO).then(|| self.started.elapsed()),
        };
        let window_end = self.started + self.arrival_window;
        if Instant::now() >= window_end {
            return Err(unknown());
        }
        let waiting = Counted::new(&self.awaiting_arrival);
        if waiting.0.load(Ordering::Relaxed) > MAX_ARRIVAL_WAITERS {
            return Err(unknown());
        }
        let _counted = Counted::new(&self.callers_waiting);
        let until = window_end.min(deadline);
        let mut cameras = self.cameras.lock();
        loop {
            if let Some(camera) = cameras.get(camera_id) {
                return Ok(Arc::clone(camera));
            }
            if self.is_shut_down() {
                return Err(ApiError::ShuttingDown);
            }
            if Instant::now() >= until {
                return Err(unknown());
            }
            self.arrived.wait_until(&mut cameras, until);
        }
    }

    /// Takes a camera's `send_logs` answer and hands each waiting call its own range of it.
    pub fn complete(
        &self,
        camera_id: &str,
        instance: Option<&str>,
        body: SendLogsBody,
    ) -> Result<Completion, ApiError> {
        let camera = self.camera(camera_id).ok_or_else(|| ApiError::UnknownCamera {
            camera_id: camera_id.to_string(),
            since_start: None,
        })?;
        let mut logs = body.logs;
        if let Some(bad) = logs.iter().position(|e| !e.timestamp.is_finite()) {
            return Err(ApiError::BadRequest(format!(
                "logs[{bad}].timestamp is not a finite number"
            )));
        }
        sort_by_timestamp(&mut logs);
        let logs: Arc<[LogEntry]> = logs.into();
        camera.lock_and(|state| {
            if instance.is_some()
                && state.instance.is_some()
                && state.instance.as_deref() != instance
            {
                return Err(ApiError::Conflict { camera_id: camera.id.clone() });
            }
            self.deliver(&camera, state, body.request_id, logs)
        })
    }

    /// One page of known cameras, sorted by id: at most `limit` ids after `after`, and the id to
    /// pass as `after` for the next page when more remain.
    pub fn cameras(&self, after: Option<&str>, limit: usize) -> (Vec<CameraInfo>, Option<String>) {
        let mut page: Vec<Arc<Camera>> = self
            .all_cameras()
            .into_iter()
            .filter(|camera| after.is_none_or(|after| camera.id.as_str() > after))
            .collect();
        page.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        let more = page.len() > limit;
        page.truncate(limit);
        let now = Instant::now();
        let rows: Vec<CameraInfo> = page
            .iter()
            .map(|camera| {
                let state = camera.state.lock();
                CameraInfo {
                    camera_id: camera.id.clone(),
                    online: state.online(now, self.grace),
                    last_seen: state.last_seen.map(epoch_secs).unwrap_or(0.0),
                    waiting_requests: state.waiting(),
                    instance: None,
                }
            })
            .collect();
        let next = more.then(|| rows.last().map(|row| row.camera_id.clone())).flatten();
        (rows, next)
    }

    pub fn stats(&self) -> RegistryStats {
        let now = Instant::now();
        let mut stats = RegistryStats::default();
        for camera in self.all_cameras() {
            let state = camera.state.lock();
            stats.cameras += 1;
            stats.cameras_online += usize::from(state.online(now, self.grace));
            stats.open_polls += state.open_polls;
            stats.waiting_requests += state.waiting();
            stats.commands_in_flight += usize::from(state.in_flight.is_some());
        }
        stats.awaiting_arrival = self.awaiting_arrival.load(Ordering::Relaxed);
        stats
    }

    /// Re-sends overdue commands, fails the callers of cameras that went offline, and forgets
    /// cameras offline for longer than `CAMERA_FORGET_SECS`.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut went_offline = 0;
        let mut forgettable = Vec::new();
        for camera in self.all_cameras() {
            camera.lock_and(|state| {
                self.redispatch_if_overdue(&camera, state, now);
                let name_it = went_offline < OFFLINE_LINES_PER_TICK;
                went_offline += usize::from(self.check_offline(&camera, state, now, name_it));
                if state.forgettable(now, self.forget_after) {
                    forgettable.push(Arc::clone(&camera));
                }
            });
        }
        if went_offline > OFFLINE_LINES_PER_TICK {
            let more = went_offline - OFFLINE_LINES_PER_TICK;
            log_warn!("{more} more camera(s) went offline");
        }
        if !forgettable.is_empty() {
            self.forget(forgettable, now);
        }
    }

    /// Forgets the candidates that nothing holds. Every holder got its `Arc` from the map under
    /// the map's lock, held here, so a count of two (the map's and the candidate's) means no
    /// poll, call or answer uses the camera, and none can pick it up before it is gone. Only
    /// the candidates are locked under the map's lock, never every camera.
    fn forget(&self, candidates: Vec<Arc<Camera>>, now: Instant) {
        let mut cameras = self.cameras.lock();
        let mut forgotten = 0;
        for camera in candidates {
            if Arc::strong_count(&camera) == 2
                && camera.state.lock().forgettable(now, self.forget_after)
            {
                cameras.remove(&camera.id);
                forgotten += 1;
            }
        }
        // A crowd of one-off ids must not leave its table behind.
        if cameras.capacity() > 4 * cameras.len() + 64 {
            cameras.shrink_to_fit();
        }
        drop(cameras);
        if forgotten > 0 {
            let after = self.forget_after.as_secs();
            log_info!("forgot {forgotten} camera(s) offline for more than {after} s");
        }
    }

    /// Ends the held polls whose client has left: those older than `connected` (a snapshot of
    /// the connected peers, taken at `taken`) whose peer is not in it. Returns how many.
    pub fn release_polls(&self, connected: impl Fn(&SocketAddr) -> bool, taken: Instant) -> usize {
        let mut released = 0;
        for camera in self.all_cameras() {
            released += camera.lock_and(|state| {
                state.release(|p| p.since < taken && p.peer.is_some_and(|peer| !connected(&peer)))
            });
        }
        if released > 0 {
            log_info!("released {released} held poll(s) whose client had left");
        }
        released
    }

    /// Answers every held poll with noop and every waiting call with 503, now.
    pub fn shutdown(&self) {
        self.shutdown_tx.lock().take();
        // Under the map's lock, so that no waiter is between its check and its wait.
        let _cameras = self.cameras.lock();
        self.arrived.notify_all();
    }

    pub fn is_shut_down(&self) -> bool {
        self.shutdown_tx.lock().is_none()
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
        if cameras.len() >= self.max_cameras {
            return Err(ApiError::TooManyCameras { limit: self.max_cameras });
        }
        log_info!("camera '{camera_id}' connected");
        let camera = Arc::new(Camera::new(camera_id));
        cameras.insert(camera_id.to_string(), Arc::clone(&camera));
        if self.awaiting_arrival.load(Ordering::Relaxed) > 0 {
            self.arrived.notify_all();
        }
        Ok(camera)
    }

    fn enqueue(
        &self,
        camera: &Camera,
        state: &mut CameraState,
        waiter: Waiter,
    ) -> Result<(), ApiError> {
        let now = Instant::now();
        if !state.online(now, self.grace) {
            return Err(state.offline_error(&camera.id, now));
        }
        if state.waiting() >= self.max_waiting {
            return Err(ApiError::TooManyWaiting {
                camera_id: camera.id.clone(),
                limit: self.max_waiting,
            });
        }
        match &mut state.in_flight {
            // Never sent yet: the camera has not looked at its log for it, so this call may share it.
            Some(command) if command.sent_at.is_none() && command.times_sent == 0 => {
                command.range = command.range.union(&waiter.range);
                command.waiters.push(waiter);
            }
            Some(_) => state.next_batch.push(waiter),
            None => {
                state.next_batch.push(waiter);
                self.start_next_command(camera, state);
            }
        }
        Ok(())
    }

    /// Turns `next_batch` into the command in flight, covering the union of the batch's ranges,
    /// and hands it to the newest held poll if there is one.
    fn start_next_command(&self, camera: &Camera, state: &mut CameraState) {
        let waiters = std::mem::take(&mut state.next_batch);
        let Some(first) = waiters.first() else {
            return;
        };
        let range = waiters.iter().fold(first.range, |acc, w| acc.union(&w.range));
        state.in_flight = Some(InFlight {
            request_id: self.ids.next(),
            range,
            waiters,
            sent_at: None,
            times_sent: 0,
            created: Instant::now(),
        });
        state.dispatch(&camera.id);
    }

    fn deliver(
        &self,
        camera: &Camera,
        state: &mut CameraState,
        request_id: Option<String>,
        logs: Arc<[LogEntry]>,
    ) -> Result<Completion, ApiError> {
        let matches = match (&state.in_flight, &request_id) {
            (Some(command), Some(id)) => &command.request_id == id,
            // Cameras that predate request ids answer the command in flight, but only once it
            // was sent: a retried id-less answer must not complete one the camera has not seen.
            (Some(command), None) => command.times_sent > 0,
            (None, _) => false,
        };
        if !matches {
            let camera_id = &camera.id;
            return match request_id {
                Some(id) if state.answered.contains(&id) => {
                    Ok(Completion::Duplicate { request_id: id })
                }
                Some(id) => Err(ApiError::UnknownRequest(format!(
                    "request '{id}' is unknown or expired for camera '{camera_id}'"
                ))),
                None => Err(ApiError::UnknownRequest(format!(
                    "camera '{camera_id}' has no command in flight"
                ))),
            };
        }
        let Some(command) = state.in_flight.take() else {
            return Err(ApiError::Internal("command vanished under the lock".into()));
        };
        self.metrics.round_trip(command.waiters.len());
        for waiter in &command.waiters {
            let range = waiter.range.slice_of(&logs);
            // bounded(1) and one send per waiter: never blocks. A gone receiver is a caller that
            // timed out in the instant before this lock; its answer is simply dropped.
            let _ = waiter.reply.try_send(Ok(LogSlice { logs: Arc::clone(&logs), range }));
        }
        if state.answered.len() == REMEMBERED_ANSWERS {
            state.answered.pop_front();
        }
        state.answered.push_back(command.request_id.clone());
        self.start_next_command(camera, state);
        Ok(Completion::Delivered {
            request_id: command.request_id,
            callers: command.waiters.len(),
            events: logs.len(),
            elapsed: command.created.elapsed(),
        })
    }

    /// The caller stops waiting. If its answer was delivered in the meantime, it gets it after all.
    fn give_up(
        &self,
        camera: &Camera,
        waiter_id: u64,
        answer: &Receiver<Reply>,
        reason: ApiError,
    ) -> Result<LogSlice, ApiError> {
        if camera.lock_and(|state| self.withdraw(camera, state, waiter_id)) {
            return Err(reason);
        }
        // Not queued any more, so a reply was sent under the lock we just took.
        answer.try_recv().unwrap_or(Err(reason))
    }

    /// Removes a waiter; a command left with no waiters is abandoned, so nothing is sent for a
    /// caller that is gone. Returns whether the waiter was still queued.
    fn withdraw(&self, camera: &Camera, state: &mut CameraState, waiter_id: u64) -> bool {
        if let Some(pos) = state.next_batch.iter().position(|w| w.id == waiter_id) {
            state.next_batch.swap_remove(pos);
            return true;
        }
        let Some(command) = &mut state.in_flight else {
            return false;
        };
        let Some(pos) = command.waiters.iter().position(|w| w.id == waiter_id) else {
            return false;
        };
        command.waiters.swap_remove(pos);
        if command.waiters.is_empty() {
            let (request_id, camera_id) = (&command.request_id, &camera.id);
            log_info!(
                "command {request_id} to camera '{camera_id}' abandoned: every caller gave up"
            );
            state.in_flight = None;
            self.start_next_command(camera, state);
        }
        true
    }

    fn redispatch_if_overdue(&self, camera: &Camera, state: &mut CameraState, now: Instant) {
        let Some(command) = &mut state.in_flight else {
            return;
        };
        let Some(waited) = command.sent_at.map(|at| now.saturating_duration_since(at)) else {
            return;
        };
        if waited < self.ack_timeout {
            return;
        }
        log_warn!(
            "camera '{}' did not answer command {} within {:.1} s (the poll may have died); sending it again",
            camera.id,
            command.request_id,
            waited.as_secs_f64()
        );
        command.sent_at = None;
        self.metrics.resend();
        state.dispatch(&camera.id);
    }

    /// Fails the waiting calls of a camera that is offline. Returns whether it went offline
    /// just now (logged by name when `name_it`).
    fn check_offline(
        &self,
        camera: &Camera,
        state: &mut CameraState,
        now: Instant,
        name_it: bool,
    ) -> bool {
        if state.online(now, self.grace) {
            return false;
        }
        let went_offline = !state.reported_offline;
        if went_offline {
            state.reported_offline = true;
            if name_it {
                let since = state.seconds_since_poll(now);
                log_warn!("camera '{}' went offline: no poll for {since:.1} s", camera.id);
            }
        }
        if state.waiting() == 0 {
            return went_offline;
        }
        let error = state.offline_error(&camera.id, now);
        let abandoned = state.in_flight.take();
        let waiters: Vec<Waiter> = abandoned
            .into_iter()
            .flat_map(|c| c.waiters)
            .chain(state.next_batch.drain(..))
            .collect();
        for waiter in &waiters {
            let _ = waiter.reply.try_send(Err(error.clone()));
        }
        let (failed, camera_id) = (waiters.len(), &camera.id);
        log_warn!("failed {failed} waiting call(s) for camera '{camera_id}': it is offline");
        went_offline
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
