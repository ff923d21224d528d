//! A command's life: a call joins it or the next batch, the batch becomes the command in
//! flight, the camera's answer is handed to every waiter in its own range, and a waiter that
//! gives up is withdrawn. All under the one camera's lock, which is what makes a call either
//! leave no trace or find its answer.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::answer::{Answer, LogSlice};
use super::camera::{Camera, CameraState, InFlight, RequestId, Waiter};
use super::{Registry, Reply};
use crate::log::{log_info, log_warn};
use crate::server::error::ApiError;

impl Registry {
    pub(super) fn enqueue(
        &self, camera: &Camera, state: &mut CameraState, waiter: Waiter,
    ) -> Result<(), ApiError> {
        let now = Instant::now();
        if !state.online(now, self.config.camera_grace) {
            return Err(state.offline_error(&camera.id, now));
        }
        let limit = self.config.max_waiting_per_camera;
        if state.waiting() >= limit {
            return Err(ApiError::TooManyWaiting { camera_id: camera.id.clone(), limit });
        }
        match &mut state.in_flight {
            // Never sent: the camera has not looked at its log for it, so this call may share it.
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

    /// Turns `next_batch` into the command in flight, covering the union of the batch's ranges,
    /// and hands it to the newest held poll if there is one.
    pub(super) fn start_next_command(&self, camera: &Camera, state: &mut CameraState) {
        let waiters = std::mem::take(&mut state.next_batch);
        let Some(range) = waiters.iter().map(|w| w.range).reduce(|a, b| a.union(&b)) else {
            return;
        };
        state.in_flight = Some(InFlight {
            request_id: self.request_id(),
            range,
            waiters,
            sent_at: None,
            times_sent: 0,
            created: Instant::now(),
        });
        state.dispatch(&camera.id);
    }

    /// Hands a camera's answer (or why it cannot be held) to the callers of the command it
    /// answers: the one `claimed` names, or, for a camera that sends no request id, the oldest
    /// command sent to it and not answered yet, since such a camera answers in the order it was
    /// sent commands. An answer to a command that is no longer in flight completes nothing.
    pub(super) fn deliver(
        &self, camera: &Camera, state: &mut CameraState, claimed: Option<&str>,
        answer: Result<Arc<Answer>, ApiError>,
    ) -> Result<(), ApiError> {
        let id = claimed.map_or_else(|| state.sent.0.front().copied(), RequestId::parse);
        if let Some(id) = id {
            state.sent.remove(id);
        }
        let camera_id = &camera.id;
        let Some(command) = state.in_flight.take_if(|c| Some(c.request_id) == id) else {
            return match (id, claimed) {
                (Some(id), _) if state.answered.0.contains(&id) => {
                    log_info!("camera '{camera_id}' answered command {id} again; ignored");
                    Ok(())
                }
                (_, Some(id)) => Err(ApiError::UnknownRequest(format!(
                    "request '{id}' is unknown or expired for camera '{camera_id}'"
                ))),
                (Some(id), None) => Err(ApiError::UnknownRequest(format!("an answer without requestId is taken for command {id}, the oldest sent to camera '{camera_id}' and not answered, which is no longer in flight"))),
                (None, None) => Err(ApiError::UnknownRequest(format!(
                    "camera '{camera_id}' has no command in flight"
                ))),
            };
        };
        self.metrics.round_trip(command.waiters.len());
        for waiter in &command.waiters {
            // bounded(1) and one send per waiter: never blocks. A gone receiver is a caller that
            // timed out in the instant before this lock; its answer is simply dropped.
            let _ = waiter.reply.try_send(answer.clone().map(|answer| {
                let events = waiter.range.slice_of(answer.timestamps());
                LogSlice { answer, events }
            }));
        }
        state.answered.push(command.request_id);
        self.start_next_command(camera, state);
        let (request_id, callers) = (command.request_id, command.waiters.len());
        let ms = command.created.elapsed().as_millis();
        match answer {
            Ok(answer) => {
                let events = answer.len();
                log_info!("camera '{camera_id}' answered command {request_id}: {events} event(s) for {callers} caller(s), {ms} ms after the command");
            }
            Err(error) => log_warn!("camera '{camera_id}' answered command {request_id}, {ms} ms after the command; failed its {callers} caller(s): {error}"),
        }
        Ok(())
    }

    /// The caller stops waiting. If its answer was delivered in the meantime, it gets it after all.
    pub(super) fn give_up(
        &self, camera: &Camera, waiter_id: u64, answer: &Receiver<Reply>, reason: ApiError,
    ) -> Result<LogSlice, ApiError> {
        if camera.lock_and(|state| self.withdraw(camera, state, waiter_id)) {
            return Err(reason);
        }
        // Not queued any more, so a reply was sent under the lock we just took.
        answer.try_recv().unwrap_or(Err(reason))
    }

    /// Removes a waiter; a command left with no waiters is abandoned, so nothing is sent for a
    /// caller that is gone. Returns whether the waiter was still queued.
    pub(super) fn withdraw(
        &self, camera: &Camera, state: &mut CameraState, waiter_id: u64,
    ) -> bool {
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
}
