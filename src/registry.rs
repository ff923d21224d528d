//! The camera registry: every camera that has polled, its open polls, its one command in flight
//! and the `/logs` calls waiting on it. All race handling of the system lives in this file.
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
//!
//! This module never touches HTTP: it takes ids, ranges and events, and returns protocol values
//! or an [`ApiError`].

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, select, unbounded, Receiver, Sender};
use parking_lot::Mutex;

use crate::error::ApiError;
use crate::log::epoch_secs;
use crate::metrics::Metrics;
use crate::protocol::{sort_by_timestamp, CameraInfo, Command, LogEntry, SendLogsBody, TimeRange};
use crate::{info, warn};

/// How many answered request ids a camera remembers, so a repeated answer is a harmless 200.
const REMEMBERED_ANSWERS: usize = 64;
/// Cameras named one by one in the log when they go offline in the same tick; the rest are
/// counted in one line, so a crowd of vanished ids cannot flood the log.
const OFFLINE_LINES_PER_TICK: usize = 5;
/// At most one warning per camera id this often about polls from two addresses at once.
const SHARED_ID_WARNING_EVERY: Duration = Duration::from_secs(60);
/// Cameras per `/cameras` page when the caller does not say.
pub const DEFAULT_PAGE: usize = 1000;

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
}

type Reply = Result<LogSlice, ApiError>;

struct Waiter {
    id: u64,
    range: TimeRange,
    reply: Sender<Reply>,
}

struct InFlight {
    request_id: String,
    range: TimeRange,
    waiters: Vec<Waiter>,
    /// `None` while queued for a poll; set when a poll carries it out.
    sent_at: Option<Instant>,
    times_sent: u32,
    created: Instant,
}

#[derive(Default)]
struct CameraState {
    in_flight: Option<InFlight>,
    next_batch: Vec<Waiter>,
    open_polls: usize,
    last_poll_end: Option<Instant>,
    last_seen: Option<SystemTime>,
    reported_offline: bool,
    answered: VecDeque<String>,
    /// Open polls by client address (only known addresses).
    poll_sources: HashMap<String, usize>,
    shared_id_warned: Option<Instant>,
}

struct Camera {
    id: String,
    dispatch_tx: Sender<String>,
    dispatch_rx: Receiver<String>,
    state: Mutex<CameraState>,
}

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
        let camera = self
            .camera(camera_id)
            .ok_or_else(|| ApiError::UnknownCamera(camera_id.to_string()))?;
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
            warn!(
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
            info!(
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
        info!("camera '{camera_id}' connected");
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
            info!(
                "command {} to camera '{}' abandoned: every caller gave up",
                command.request_id, camera.id
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
        warn!(
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
                warn!(
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
        warn!(
            "failed {failed} waiting call(s) for camera '{}': it is offline",
            camera.id
        );
        went_offline
    }
}

impl Camera {
    fn lock_and<T>(&self, f: impl FnOnce(&mut CameraState) -> T) -> T {
        f(&mut self.state.lock())
    }

    /// Claims the command with this id for the calling poll, unless the id is stale.
    fn take_for_dispatch(&self, request_id: &str) -> Option<Command> {
        let mut state = self.state.lock();
        let command = state.in_flight.as_mut()?;
        if command.request_id != request_id || command.sent_at.is_some() {
            return None;
        }
        command.sent_at = Some(Instant::now());
        command.times_sent += 1;
        let (start_timestamp, end_timestamp) = command.range.wire_bounds();
        info!(
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
            warn!(
                "camera '{camera_id}' is polling from two addresses at once ({other} and {source}): two cameras may share this id, and each would answer the other's commands; give each camera its own CAMERA_ID (next warning for this id in {} s at the earliest)",
                SHARED_ID_WARNING_EVERY.as_secs()
            );
        }
    }

    fn online(&self, now: Instant, grace: Duration) -> bool {
        self.open_polls > 0
            || self
                .last_poll_end
                .is_some_and(|end| now.saturating_duration_since(end) <= grace)
    }

    /// Offline for longer than `forget_after`, with no poll, call or command on it.
    fn forgettable(&self, now: Instant, forget_after: Duration) -> bool {
        self.open_polls == 0
            && self.in_flight.is_none()
            && self.next_batch.is_empty()
            && self
                .last_poll_end
                .is_some_and(|end| now.saturating_duration_since(end) > forget_after)
    }

    fn waiting(&self) -> usize {
        self.next_batch.len() + self.in_flight.as_ref().map_or(0, |c| c.waiters.len())
    }

    fn seconds_since_poll(&self, now: Instant) -> f64 {
        self.last_poll_end
            .map_or(0.0, |end| now.saturating_duration_since(end).as_secs_f64())
    }

    fn offline_error(&self, camera_id: &str, now: Instant) -> ApiError {
        ApiError::CameraOffline {
            camera_id: camera_id.to_string(),
            seconds_since_seen: self.seconds_since_poll(now),
        }
    }
}

/// Adds one to a counter for as long as it lives.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Counted<'a> {
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
struct OpenPoll<'a> {
    camera: &'a Camera,
    source: &'a str,
}

impl<'a> OpenPoll<'a> {
    fn start(camera: &'a Camera, source: &'a str) -> OpenPoll<'a> {
        let mut state = camera.state.lock();
        if !source.is_empty() {
            state.note_poll_source(&camera.id, source);
        }
        state.open_polls += 1;
        state.last_seen = Some(SystemTime::now());
        if state.reported_offline {
            state.reported_offline = false;
            info!("camera '{}' is back online", camera.id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn registry() -> Arc<Registry> {
        crate::log::set_enabled(false);
        Arc::new(Registry::new(RegistryConfig {
            poll_hold: Duration::from_millis(200),
            ack_timeout: Duration::from_millis(300),
            camera_grace: Duration::from_secs(5),
            max_waiting_per_camera: 3,
            camera_forget: Duration::from_secs(3600),
            max_cameras: 100,
        }))
    }

    fn entry(timestamp: f64) -> LogEntry {
        LogEntry {
            timestamp,
            description: format!("e{timestamp}"),
        }
    }

    fn answer(id: &str, logs: Vec<LogEntry>) -> SendLogsBody {
        SendLogsBody {
            request_id: Some(id.to_string()),
            logs,
        }
    }

    fn poll_until_command(registry: &Registry, camera: &str) -> (String, f64, f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Command::SendLogs {
                request_id,
                start_timestamp,
                end_timestamp,
            } = registry.poll(camera).unwrap()
            {
                return (request_id, start_timestamp, end_timestamp);
            }
        }
        panic!("no command within 20 s");
    }

    fn spawn_fetch(
        registry: &Arc<Registry>,
        range: TimeRange,
    ) -> thread::JoinHandle<Result<Vec<LogEntry>, ApiError>> {
        let registry = Arc::clone(registry);
        thread::spawn(move || {
            registry
                .fetch_logs("cam", range, Duration::from_secs(20))
                .map(|s| s.entries().to_vec())
        })
    }

    fn wait_for_waiting(registry: &Registry, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while registry.stats().waiting_requests != n {
            assert!(Instant::now() < deadline, "never saw {n} waiting");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn unknown_camera_is_404_and_offline_camera_is_503() {
        let registry = registry();
        let err = registry
            .fetch_logs("nobody", TimeRange::ALL, Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(err.status(), 404);

        let short = Registry::new(RegistryConfig {
            camera_grace: Duration::from_millis(1),
            ..*registry.config()
        });
        short.poll("cam").unwrap();
        thread::sleep(Duration::from_millis(20));
        let started = Instant::now();
        let err = short
            .fetch_logs("cam", TimeRange::ALL, Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(err.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "503 comes at once"
        );
    }

    #[test]
    fn callers_arriving_during_a_command_share_the_next_one() {
        let registry = registry();
        registry.poll("cam").unwrap(); // registers the camera
        let first = spawn_fetch(&registry, TimeRange::new(Some(2.0), Some(3.0)));
        let (id1, start, end) = poll_until_command(&registry, "cam");
        assert_eq!((start, end), (2.0, 3.0));

        // Two callers arrive while command 1 is out: they must not get its answer.
        let second = spawn_fetch(&registry, TimeRange::new(Some(1.0), Some(1.0)));
        let third = spawn_fetch(&registry, TimeRange::new(Some(4.0), None));
        wait_for_waiting(&registry, 3);
        let all: Vec<LogEntry> = [1.0, 2.0, 3.0, 4.0, 5.0].map(entry).to_vec();
        registry.complete("cam", answer(&id1, all.clone())).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), vec![entry(2.0), entry(3.0)]);

        let (id2, start, end) = poll_until_command(&registry, "cam");
        assert_ne!(id1, id2);
        assert_eq!((start, end), (1.0, f64::MAX), "the union of both ranges");
        let reply = registry.complete("cam", answer(&id2, all)).unwrap();
        assert!(matches!(reply, Completion::Delivered { callers: 2, .. }));
        assert_eq!(second.join().unwrap().unwrap(), vec![entry(1.0)]);
        assert_eq!(third.join().unwrap().unwrap(), vec![entry(4.0), entry(5.0)]);
        assert_eq!(registry.stats().waiting_requests, 0);
    }

    #[test]
    fn duplicate_and_foreign_answers() {
        let registry = registry();
        registry.poll("cam").unwrap();
        registry.poll("other").unwrap();
        let caller = spawn_fetch(&registry, TimeRange::ALL);
        let (id, _, _) = poll_until_command(&registry, "cam");
        let err = registry.complete("other", answer(&id, vec![])).unwrap_err();
        assert_eq!(err.status(), 404, "a request id is bound to its camera");
        registry
            .complete("cam", answer(&id, vec![entry(1.0)]))
            .unwrap();
        assert_eq!(
            registry.complete("cam", answer(&id, vec![])).unwrap(),
            Completion::Duplicate {
                request_id: id.clone()
            }
        );
        assert_eq!(
            registry
                .complete("cam", answer("nope", vec![]))
                .unwrap_err()
                .status(),
            404
        );
        assert_eq!(caller.join().unwrap().unwrap(), vec![entry(1.0)]);
    }

    #[test]
    fn unanswered_command_is_sent_again_with_the_same_id() {
        let registry = registry();
        registry.poll("cam").unwrap();
        let caller = spawn_fetch(&registry, TimeRange::ALL);
        let (id, _, _) = poll_until_command(&registry, "cam"); // this "poll" dies: no answer
        thread::sleep(registry.config().ack_timeout);
        registry.tick();
        let (again, _, _) = poll_until_command(&registry, "cam");
        assert_eq!(id, again);
        registry
            .complete("cam", answer(&again, vec![entry(7.0)]))
            .unwrap();
        assert_eq!(caller.join().unwrap().unwrap(), vec![entry(7.0)]);
    }

    #[test]
    fn a_caller_that_times_out_leaves_nothing_behind() {
        let registry = registry();
        registry.poll("cam").unwrap();
        let err = registry
            .fetch_logs("cam", TimeRange::ALL, Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(err.status(), 504);
        let stats = registry.stats();
        assert_eq!((stats.waiting_requests, stats.commands_in_flight), (0, 0));
        // The command queued for it is stale: a poll skips it and answers noop.
        assert_eq!(registry.poll("cam").unwrap(), Command::Noop);
        assert_eq!(registry.stats().queued_dispatches, 0);
    }

    #[test]
    fn waiting_calls_are_bounded() {
        let registry = registry();
        registry.poll("cam").unwrap();
        let callers: Vec<_> = (0..3)
            .map(|_| spawn_fetch(&registry, TimeRange::ALL))
            .collect();
        wait_for_waiting(&registry, 3);
        let err = registry
            .fetch_logs("cam", TimeRange::ALL, Duration::from_secs(1))
            .unwrap_err();
        assert_eq!(err.status(), 429);
        registry.shutdown();
        for caller in callers {
            assert_eq!(caller.join().unwrap().unwrap_err().status(), 503);
        }
    }

    #[test]
    fn request_ids_are_long_and_distinct() {
        let registry = registry();
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| registry.ids.next()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(ids.iter().all(|id| id.len() == 32));
    }
}
