//! The camera registry: every camera that has polled, its open polls, its one command in flight
//! and the `/logs` calls waiting on it. All race handling of the system lives in this module;
//! one camera's state, changed only under its lock, is in `registry/camera.rs`.
//!
//! How a `/logs` call is served:
//! 1. The call becomes a [`Waiter`] with its own `bounded(1)` reply channel, stored in its
//!    camera's state under that camera's mutex (the cameras themselves sit in a mutex map).
//! 2. A camera has at most one command in flight. A call joins the in-flight command only while
//!    that command has never been sent, widening its range; otherwise it waits in `next_batch`,
//!    which becomes the next command (the union of the batch's ranges) when the current one ends.
//!    So a call never gets an answer to a command sent before it arrived.
//! 3. The command's request id goes down the camera's crossbeam channel; an open poll takes it
//!    with `recv_timeout` and marks the command sent. Ids found stale on the channel are skipped.
//! 4. `send_logs` sorts the events once, then (still under the lock) hands every waiter the slice
//!    of the shared answer that falls in its own range. Delivery and withdrawal both happen under
//!    the camera's lock, so a waiter that times out either finds itself still queued (and leaves
//!    no trace) or finds its answer already in its channel.
//! 5. The ticker re-queues a command that got no answer within the ack timeout (the poll that
//!    carried it may have died), fails waiters of a camera that went offline, and logs both.
//! 6. Memory is bounded: a poll for a new id beyond `max_cameras` is refused, and the ticker
//!    forgets a camera offline for `camera_forget` once no thread holds it (see
//!    [`Registry::forget_idle`]).
//! 7. In a fleet, an instance that has just (re)started does not know the cameras it will own
//!    until their polls held elsewhere end. For `arrival_window` after start, a call for an
//!    unknown camera waits for that camera's first poll instead of failing at once (see
//!    [`Registry::await_arrival`]).
//!
//! This module never touches HTTP: it takes ids, ranges and events, and returns protocol values
//! or an [`ApiError`].

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use parking_lot::{Condvar, Mutex};

mod camera;

use crate::error::ApiError;
use crate::log::epoch_secs;
use crate::log::{log_info, log_warn};
use crate::metrics::Metrics;
use crate::protocol::{sort_by_timestamp, CameraInfo, Command, LogEntry, SendLogsBody, TimeRange};
use camera::{Camera, CameraState, Counted, InFlight, OpenPoll, Waiter};

/// How many answered request ids a camera remembers, so a repeated answer is a harmless 200.
const REMEMBERED_ANSWERS: usize = 64;
/// Cameras named one by one in the log when they go offline in the same tick; the rest are
/// counted in one line, so a crowd of vanished ids cannot flood the log.
const OFFLINE_LINES_PER_TICK: usize = 5;
/// Cameras per `/cameras` page when the caller does not say.
pub const DEFAULT_PAGE: usize = 1000;
/// Calls that may wait for an unknown camera to arrive at once (each holds a handler thread);
/// beyond it such a call gets its 404 at once, as outside the arrival window.
const MAX_ARRIVAL_WAITERS: usize = 1024;

/// The timings and bounds the registry enforces.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    pub poll_hold: Duration,
    pub ack_timeout: Duration,
    pub camera_grace: Duration,
    pub max_waiting_per_camera: usize,
    /// A camera offline this long, with nothing waiting on it, is forgotten.
    pub camera_forget: Duration,
    /// Cameras known at most; a poll for a new id beyond it is refused.
    pub max_cameras: usize,
    /// For this long after start, a `/logs` call for an unknown camera waits for its first poll.
    pub arrival_window: Duration,
}

impl RegistryConfig {
    /// How often the ticker looks for overdue commands and offline cameras: often enough that a
    /// re-send or an offline verdict comes well within the configured timeouts.
    pub fn tick_interval(&self) -> Duration {
        (self.ack_timeout.min(self.camera_grace) / 4)
            .clamp(Duration::from_millis(20), Duration::from_millis(250))
    }
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
    Delivered {
        request_id: String,
        callers: usize,
        events: usize,
        elapsed: Duration,
    },
    /// The command was already answered; this copy is ignored.
    Duplicate { request_id: String },
}

/// Sizes of the internal state, for `/stats` and for leak tests: all return to zero when idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryStats {
    pub cameras: usize,
    pub cameras_online: usize,
    pub open_polls: usize,
    pub waiting_requests: usize,
    pub commands_in_flight: usize,
    pub queued_dispatches: usize,
    /// Calls waiting for a camera this instance does not know yet (see `arrival_window`).
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
        let high = self.keys.hash_one((n, 0u8));
        let low = self.keys.hash_one((n, 1u8));
        format!("{high:016x}{low:016x}")
    }
}

/// All cameras known to one server.
pub struct Registry {
    config: RegistryConfig,
    cameras: Mutex<HashMap<String, Arc<Camera>>>,
    ids: RequestIds,
    next_waiter: AtomicU64,
    /// `/logs` calls inside [`Registry::fetch_logs`] right now; cheap to read from other threads.
    callers_waiting: AtomicUsize,
    /// Round trips and re-sends are counted here, where they happen: a round trip before its
    /// callers are woken, so a caller that scrapes right after its answer sees it counted.
    metrics: Arc<Metrics>,
    /// Dropped at shutdown, which wakes every poll and waiter selecting on `shutdown_rx`.
    shutdown_tx: Mutex<Option<Sender<()>>>,
    shutdown_rx: Receiver<()>,
    started: Instant,
    /// Signalled (with the `cameras` lock held) when a new camera is registered, and at shutdown.
    arrived: Condvar,
    awaiting_arrival: AtomicUsize,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Registry {
        let (shutdown_tx, shutdown_rx) = bounded(0);
        Registry {
            config,
            cameras: Mutex::new(HashMap::new()),
            ids: RequestIds {
                keys: RandomState::new(),
                counter: AtomicU64::new(0),
            },
            next_waiter: AtomicU64::new(0),
            callers_waiting: AtomicUsize::new(0),
            metrics: Arc::new(Metrics::new()),
            shutdown_tx: Mutex::new(Some(shutdown_tx)),
            shutdown_rx,
            started: Instant::now(),
            arrived: Condvar::new(),
            awaiting_arrival: AtomicUsize::new(0),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// How many `/logs` calls are waiting for a camera right now (one atomic load).
    pub fn callers_waiting(&self) -> usize {
        self.callers_waiting.load(Ordering::Relaxed)
    }

    /// The server's counters, shared with the HTTP layer.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Holds a camera's poll open until a command is due, the hold ends, or the server stops.
    /// A new camera beyond `max_cameras` is refused at once.
    pub fn poll(&self, camera_id: &str) -> Result<Command, ApiError> {
        self.poll_from(camera_id, "")
    }

    /// [`Registry::poll`] from a known client address (`source`; empty when unknown). Polls
    /// for one id open from two addresses at once mean two cameras share the id, and each
    /// would answer the other's commands: that is logged, once a minute at most per id.
    pub fn poll_from(&self, camera_id: &str, source: &str) -> Result<Command, ApiError> {
        let camera = self.camera_for_poll(camera_id)?;
        let _open = OpenPoll::start(&camera, source);
        camera.lock_and(|state| self.redispatch_if_overdue(&camera, state, Instant::now()));

        let deadline = Instant::now() + self.config.poll_hold;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            select! {
                recv(camera.dispatch_rx) -> id => match id {
                    Ok(id) => if let Some(command) = camera.take_for_dispatch(&id) {
                        return Ok(command);
                    },
                    Err(_) => return Ok(Command::Noop),
                },
                recv(self.shutdown_rx) -> _ => return Ok(Command::Noop),
                default(left) => return Ok(Command::Noop),
            }
        }
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
            None => self.await_arrival(camera_id, called + timeout, timeout)?,
        };
        // The wait for arrival counts against the call's timeout.
        let timeout = timeout.saturating_sub(called.elapsed());
        let (reply, answer) = bounded(1);
        let waiter = Waiter {
            id: self.next_waiter.fetch_add(1, Ordering::Relaxed),
            range,
            reply,
        };
        let waiter_id = waiter.id;
        camera.lock_and(|state| self.enqueue(&camera, state, waiter))?;
        let _counted = Counted::new(&self.callers_waiting);

        select! {
            recv(answer) -> reply => reply.unwrap_or_else(|_| Err(ApiError::Internal("reply channel closed".into()))),
            recv(self.shutdown_rx) -> _ => self.give_up(&camera, waiter_id, &answer, ApiError::ShuttingDown),
            default(timeout) => self.give_up(&camera, waiter_id, &answer, ApiError::CameraTimeout {
                camera_id: camera_id.to_string(),
                after: timeout,
            }),
        }
    }

    /// A call for a camera this instance does not know: 404 at once, unless the instance
    /// started less than `arrival_window` ago. Then the camera is probably one that was held by
    /// another instance while this one was down, whose poll there has not ended yet: the call
    /// waits for its first poll here, until the window ends (404) or the call's own `deadline`
    /// (504). Answering 404 at once would send the call (through the edge's retry on 404) to
    /// the instance still holding the poll, which would hand the camera a command whose answer
    /// the edge then routes here, where nobody waits for it.
    fn await_arrival(
        &self,
        camera_id: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Arc<Camera>, ApiError> {
        let unknown = || ApiError::UnknownCamera(camera_id.to_string());
        let window_end = self.started + self.config.arrival_window;
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
                return Err(if until >= deadline {
                    ApiError::CameraTimeout {
                        camera_id: camera_id.to_string(),
                        after: timeout,
                    }
                } else {
                    unknown()
                });
            }
            self.arrived.wait_until(&mut cameras, until);
        }
    }

    /// Takes a camera's `send_logs` answer and hands each waiting call its own range of it.
    pub fn complete(&self, camera_id: &str, body: SendLogsBody) -> Result<Completion, ApiError> {
        let camera = self
            .camera(camera_id)
            .ok_or_else(|| ApiError::UnknownCamera(camera_id.to_string()))?;
        let mut logs = body.logs;
        if let Some(bad) = logs.iter().position(|e| !e.timestamp.is_finite()) {
            return Err(ApiError::BadRequest(format!(
                "logs[{bad}].timestamp is not a finite number"
            )));
        }
        sort_by_timestamp(&mut logs);
        let logs: Arc<[LogEntry]> = logs.into();
        camera.lock_and(|state| self.deliver(&camera, state, body.request_id, logs))
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
                    online: state.online(now, self.config.camera_grace),
                    last_seen: state.last_seen.map(epoch_secs).unwrap_or(0.0),
                    waiting_requests: state.waiting(),
                }
            })
            .collect();
        let next = more
            .then(|| rows.last().map(|row| row.camera_id.clone()))
            .flatten();
        (rows, next)
    }

    pub fn stats(&self) -> RegistryStats {
        let now = Instant::now();
        let mut stats = RegistryStats::default();
        for camera in self.all_cameras() {
            let state = camera.state.lock();
            stats.cameras += 1;
            stats.cameras_online += usize::from(state.online(now, self.config.camera_grace));
            stats.open_polls += state.open_polls;
            stats.waiting_requests += state.waiting();
            stats.commands_in_flight += usize::from(state.in_flight.is_some());
            stats.queued_dispatches += camera.dispatch_rx.len();
        }
        stats.awaiting_arrival = self.awaiting_arrival.load(Ordering::Relaxed);
        stats
    }

    /// Re-sends overdue commands, fails the callers of cameras that went offline, and forgets
    /// cameras offline for longer than `camera_forget`.
    pub fn tick(&self) {
        let now = Instant::now();
        let mut went_offline = 0;
        for camera in self.all_cameras() {
            camera.lock_and(|state| {
                self.redispatch_if_overdue(&camera, state, now);
                if self.check_offline(&camera, state, now, went_offline < OFFLINE_LINES_PER_TICK) {
                    went_offline += 1;
                }
            });
        }
        if went_offline > OFFLINE_LINES_PER_TICK {
            log_warn!(
                "{} more camera(s) went offline",
                went_offline - OFFLINE_LINES_PER_TICK
            );
        }
        self.forget_idle(now);
    }

    /// Forgets cameras offline for longer than `camera_forget` with nothing waiting on them.
    ///
    /// Only a camera that no thread holds is removed: every holder got its `Arc` from the map,
    /// under the map's lock, which is held here, so a strong count of one means that no poll,
    /// call or answer is using the camera and none can pick it up before it is gone. A camera
    /// that polls again later simply registers anew.
    pub fn forget_idle(&self, now: Instant) -> usize {
        let forget_after = self.config.camera_forget;
        let mut cameras = self.cameras.lock();
        let before = cameras.len();
        cameras.retain(|_, camera| {
            Arc::strong_count(camera) > 1 || !camera.state.lock().forgettable(now, forget_after)
        });
        let forgotten = before - cameras.len();
        // A crowd of one-off ids must not leave its table behind.
        if cameras.capacity() > 4 * cameras.len() + 64 {
            cameras.shrink_to_fit();
        }
        drop(cameras);
        if forgotten > 0 {
            log_info!(
                "forgot {forgotten} camera(s) offline for more than {} s",
                forget_after.as_secs()
            );
        }
        forgotten
    }

    /// Runs [`Registry::tick`] on its own thread until [`Registry::shutdown`].
    pub fn spawn_ticker(self: &Arc<Self>) -> std::io::Result<JoinHandle<()>> {
        let registry = Arc::clone(self);
        std::thread::Builder::new()
            .name("registry-ticker".into())
            .spawn(move || {
                let interval = registry.config.tick_interval();
                while registry.shutdown_rx.recv_timeout(interval).is_err() {
                    if registry.is_shut_down() {
                        return;
                    }
                    registry.tick();
                }
            })
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
        if cameras.len() >= self.config.max_cameras {
            return Err(ApiError::TooManyCameras {
                limit: self.config.max_cameras,
            });
        }
        log_info!("camera '{camera_id}' connected");
        let (dispatch_tx, dispatch_rx) = unbounded();
        let camera = Arc::new(Camera {
            id: camera_id.to_string(),
            dispatch_tx,
            dispatch_rx,
            // Seen just now: the ticker may look at it before its first poll is counted open.
            state: Mutex::new(CameraState {
                last_poll_end: Some(Instant::now()),
                last_seen: Some(SystemTime::now()),
                ..CameraState::default()
            }),
        });
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
        if !state.online(now, self.config.camera_grace) {
            return Err(state.offline_error(&camera.id, now));
        }
        if state.waiting() >= self.config.max_waiting_per_camera {
            return Err(ApiError::TooManyWaiting {
                camera_id: camera.id.clone(),
                limit: self.config.max_waiting_per_camera,
            });
        }
        match &mut state.in_flight {
            // Never sent yet: the camera has not looked at its log for it, so this call may share it.
            Some(command) if command.times_sent == 0 => {
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

    /// Turns `next_batch` into the command in flight, covering the union of the batch's ranges.
    fn start_next_command(&self, camera: &Camera, state: &mut CameraState) {
        let waiters = std::mem::take(&mut state.next_batch);
        let Some(first) = waiters.first() else {
            return;
        };
        let range = waiters
            .iter()
            .fold(first.range, |acc, w| acc.union(&w.range));
        let request_id = self.ids.next();
        // The receiver lives in `camera`, so this send cannot fail.
        let _ = camera.dispatch_tx.send(request_id.clone());
        state.in_flight = Some(InFlight {
            request_id,
            range,
            waiters,
            sent_at: None,
            times_sent: 0,
            created: Instant::now(),
        });
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
            // Cameras that predate request ids answer the oldest (only) command in flight, but
            // only once it was sent: a retried id-less answer to an earlier command must not
            // complete one the camera has not seen yet.
            (Some(command), None) => command.times_sent > 0,
            (None, _) => false,
        };
        if !matches {
            return match request_id {
                Some(id) if state.answered.contains(&id) => {
                    Ok(Completion::Duplicate { request_id: id })
                }
                Some(id) => Err(ApiError::UnknownRequest(format!(
                    "request '{id}' is unknown or expired for camera '{}'",
                    camera.id
                ))),
                None => Err(ApiError::UnknownRequest(format!(
                    "camera '{}' has no command in flight",
                    camera.id
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
            let _ = waiter.reply.try_send(Ok(LogSlice {
                logs: Arc::clone(&logs),
                range,
            }));
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
        let withdrawn = camera.lock_and(|state| self.withdraw(camera, state, waiter_id));
        if withdrawn {
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
            log_info!(
                "command {} to camera '{}' abandoned: every caller gave up",
                command.request_id,
                camera.id
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
        let Some(sent_at) = command.sent_at else {
            return;
        };
        let waited = now.saturating_duration_since(sent_at);
        if waited < self.config.ack_timeout {
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
        let _ = camera.dispatch_tx.send(command.request_id.clone());
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
        if state.online(now, self.config.camera_grace) {
            return false;
        }
        let went_offline = !state.reported_offline;
        if went_offline {
            state.reported_offline = true;
            if name_it {
                log_warn!(
                    "camera '{}' went offline: no poll for {:.1} s",
                    camera.id,
                    state.seconds_since_poll(now)
                );
            }
        }
        if state.waiting() == 0 {
            return went_offline;
        }
        let error = state.offline_error(&camera.id, now);
        let abandoned = state.in_flight.take();
        let waiters = abandoned
            .into_iter()
            .flat_map(|c| c.waiters)
            .chain(state.next_batch.drain(..));
        let mut failed = 0;
        for waiter in waiters {
            let _ = waiter.reply.try_send(Err(error.clone()));
            failed += 1;
        }
        log_warn!(
            "failed {failed} waiting call(s) for camera '{}': it is offline",
            camera.id
        );
        went_offline
    }
}

#[cfg(test)]
mod tests;
