//! The registry's upkeep and views: the ticker's work (re-sending overdue commands, failing the
//! calls of cameras gone offline, forgetting cameras long gone), the watcher's (ending polls
//! whose client left), and the pages and counts `/cameras` and `/stats` show. Each takes one
//! camera's lock at a time; the map's lock only to copy its list, or to forget candidates.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::camera::{Camera, CameraState};
use super::{Registry, RegistryStats, Seen, OFFLINE_LINES_PER_TICK};
use crate::log::{epoch_secs, log_info, log_warn};
use crate::protocol::CameraInfo;

impl Registry {
    /// Every known camera, as `/cameras` shows it.
    pub fn cameras(&self) -> Vec<CameraInfo> {
        let now = Instant::now();
        let rows = self.all_cameras().into_iter().map(|camera| {
            let state = camera.state.lock();
            CameraInfo {
                camera_id: camera.id.clone(),
                online: state.online(now, self.config.camera_grace),
                last_seen: state.last_seen.map(epoch_secs).unwrap_or(0.0),
                waiting_requests: state.waiting(),
                instance: None,
            }
        });
        rows.collect()
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
        }
        stats.awaiting_arrival = self.awaiting_arrival.load(Ordering::Relaxed);
        stats.answer_bytes = self.answer_bytes.load(Ordering::Relaxed);
        stats.polls_refused_for_capacity = self.polls_refused.load(Ordering::Relaxed);
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
                self.resend_if_overdue(&camera, state, now);
                state.dispatch(&camera.id);
                let name_it = went_offline < OFFLINE_LINES_PER_TICK;
                went_offline += usize::from(self.check_offline(&camera, state, now, name_it));
                if state.forgettable(now, self.config.camera_forget) {
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
                && camera.state.lock().forgettable(now, self.config.camera_forget)
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
            let after = self.config.camera_forget.as_secs();
            log_info!("forgot {forgotten} camera(s) offline for more than {after} s");
        }
    }

    /// Whether a poll held since before `since` is still held.
    pub fn holds_polls_since(&self, since: Instant) -> bool {
        let cameras = self.all_cameras();
        cameras.iter().any(|camera| camera.state.lock().polls.iter().any(|p| p.since < since))
    }

    /// Ends the held polls whose client has left, by the kernel's table as it is now (the probe
    /// the registry was made with); `false` when the table cannot be read.
    pub fn release_gone_polls(&self) -> bool {
        let taken = Instant::now();
        (self.alive)().map(|table| self.release_polls(&(table, taken))).is_some()
    }

    /// Ends the held polls whose client has left: those older than the reading `seen` whose
    /// peer it does not list as connected. Returns how many.
    pub(in crate::server) fn release_polls(&self, seen: &Seen) -> usize {
        let mut released = 0;
        for camera in self.all_cameras() {
            released += camera.lock_and(|state| state.release(|p| p.client_left(seen)));
        }
        if released > 0 {
            log_info!("released {released} held poll(s) whose client had left");
        }
        released
    }

    /// Marks a command unanswered for `ACK_TIMEOUT_SECS` as due again (the next dispatch sends
    /// it, same request id).
    pub(super) fn resend_if_overdue(&self, camera: &Camera, state: &mut CameraState, now: Instant) {
        let Some(command) = &mut state.in_flight else {
            return;
        };
        let waited = command.sent_at.map(|at| now.saturating_duration_since(at));
        let Some(waited) = waited.filter(|waited| *waited >= self.config.ack_timeout) else {
            return;
        };
        let (id, request_id, waited) = (&camera.id, &command.request_id, waited.as_secs_f64());
        log_warn!("camera '{id}' did not answer command {request_id} within {waited:.1} s (the poll may have died); sending it again");
        command.sent_at = None;
        self.metrics.resend();
    }

    /// Fails the waiting calls of a camera that is offline. Returns whether it went offline
    /// just now (logged by name when `name_it`).
    fn check_offline(
        &self, camera: &Camera, state: &mut CameraState, now: Instant, name_it: bool,
    ) -> bool {
        if state.online(now, self.config.camera_grace) {
            return false;
        }
        let went_offline = !state.reported_offline;
        if went_offline {
            state.reported_offline = true;
            // Its place goes to the next camera that polls.
            state.place = None;
            if name_it {
                let since = state.seconds_since_poll(now);
                log_warn!("camera '{}' went offline: no poll for {since:.1} s", camera.id);
            }
        }
        if state.waiting() == 0 {
            return went_offline;
        }
        let (error, failed) = (state.offline_error(&camera.id, now), state.waiting());
        let in_flight = state.in_flight.take().map(|c| c.waiters).unwrap_or_default();
        for waiter in in_flight.into_iter().chain(state.next_batch.drain(..)) {
            let _ = waiter.reply.try_send(Err(error.clone()));
        }
        let camera_id = &camera.id;
        log_warn!("failed {failed} waiting call(s) for camera '{camera_id}': it is offline");
        went_offline
    }
}
