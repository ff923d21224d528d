//! The camera: it only ever makes outgoing requests, from two threads. One holds a long poll
//! open and hands each command to the other, which posts the matching events, so the camera
//! keeps polling while a large answer is still uploading, and the server sees it online. The
//! hand-off never blocks the polling thread: a command the camera is already answering (the
//! server sends it again after `ACK_TIMEOUT_SECS`, which a slow upload outlasts) is not
//! answered twice, and a queued one the server has given up on is replaced by the next.
//!
//! The posting thread also records an event every `EVENT_INTERVAL_SECS`, scheduled on the
//! monotonic clock and stamped with the wall clock when it was due: a wall clock that jumps (set
//! by NTP after a boot in 1970) records no backlog. While it is busy with an upload the due
//! events wait, and they are recorded before the next command is answered, so an answer never
//! misses an event that was due before it.
//!
//! Each process picks a random instance id at start and sends it with every poll and answer,
//! so the server can tell two processes with one `CAMERA_ID` apart (it refuses the second with
//! 409, which is logged as an error and retried with the backoff).
//!
//! When the server is unreachable or answers with an error, both threads back off exponentially
//! with jitter and log once per failure streak, never spinning. This module knows the server
//! only through the wire protocol.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, select, Receiver, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;

mod backoff;
mod client;
mod event_log;

pub use event_log::EventLog;

use crate::log::{epoch_secs, log_error, log_info};
use crate::protocol::{Command, LogEntry, SendLogsBody, TimeRange};
use crate::settings::CameraConfig;
use backoff::{Backoff, Jitter};
use client::{Client, Delivery};

/// Attempts to deliver one answer before leaving it to the server's re-send.
const POST_ATTEMPTS: u32 = 4;

/// A running camera. [`CameraHandle::stop`] ends it.
pub struct CameraHandle {
    /// What the threads share: the handle reads the log and the count of answers from it.
    side: Arc<Side>,
    /// Never sent on; dropped on stop, which wakes every thread waiting on its receiver.
    stop: Option<Sender<()>>,
    /// Disconnected once both threads have ended: each holds a sender it never uses.
    done: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

impl CameraHandle {
    /// Opens the event log (reloading `LOG_FILE` if set) and starts the camera's threads.
    pub fn start(config: CameraConfig) -> std::io::Result<CameraHandle> {
        let log = match &config.log_file {
            Some(path) => {
                let (log, report) = EventLog::open(path, config.max_events)?;
                let (loaded, path, n) = (report.loaded, path.display(), report.skipped_lines);
                log_info!("reloaded {loaded} event(s) from {path}; skipped {n} damaged line(s) (a torn last write leaves one)");
                log
            }
            None => EventLog::in_memory(config.max_events),
        };
        CameraHandle::start_with_log(config, Arc::new(log))
    }

    /// Starts a camera serving an existing log (for example one filled with known events).
    pub fn start_with_log(
        config: CameraConfig, log: Arc<EventLog>,
    ) -> std::io::Result<CameraHandle> {
        let instance = format!("{:016x}{:016x}", Jitter::new().next(), Jitter::new().next());
        let client = Client::new(&config, &instance)?;
        let token =
            if config.camera_token.is_some() { "on (sent as a bearer token)" } else { "off" };
        let (id, url) = (&config.camera_id, &config.api_base_url);
        let trust = client.describe_trust(config.ca_certs.as_ref());
        log_info!("camera '{id}' (process {instance}) starting; API server at {url}{trust}; authentication: CAMERA_TOKEN {token}");
        let (stop, stop_rx) = bounded::<()>(0);
        let (done_tx, done) = bounded::<()>(0);
        let side = Arc::new(Side {
            client,
            log,
            answers: AtomicU64::new(0),
            latest: Mutex::default(),
            stop: stop_rx,
            backoff_max: config.backoff_max,
        });
        // One command at a time: the server sends the next only once this one is answered or
        // given up, so a slot of one bounds the hand-off (and a command still in it is replaced).
        let (commands_tx, commands) = bounded(1);
        let (poller, poster) = (Arc::clone(&side), Arc::clone(&side));
        let handoff = (commands_tx, commands.clone());
        let events = config.event_interval.map(EventClock::new);
        let threads = vec![
            spawn("camera-poller", &done_tx, move || poller.poll_loop(&handoff))?,
            spawn("camera-poster", &done_tx, move || poster.post_loop(&commands, events))?,
        ];
        Ok(CameraHandle { side, stop: Some(stop), done, threads })
    }

    /// Answers the server accepted so far: the camera's round trips.
    pub fn round_trips(&self) -> u64 {
        self.side.answers.load(Ordering::SeqCst)
    }

    /// Blocks while the camera runs (the `camera` binary's main thread). An error means one of
    /// its threads panicked.
    pub fn wait(self) -> std::io::Result<()> {
        if self.threads.into_iter().any(|thread| thread.join().is_err()) {
            return Err(std::io::Error::other("a camera thread panicked"));
        }
        Ok(())
    }

    /// Stops polling and posting. A poll already open ends when the server answers it; threads
    /// still busy after `grace` are left to finish on their own.
    pub fn stop(mut self, grace: Duration) {
        self.stop.take();
        let _ = self.done.recv_timeout(grace);
        for thread in self.threads.drain(..).filter(|t| t.is_finished()) {
            let _ = thread.join();
        }
    }
}

/// Starts a camera thread holding a clone of `done` until it ends.
fn spawn(
    name: &str, done: &Sender<()>, f: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let done = done.clone();
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        let _alive = done;
        f();
    })
}

/// What both camera threads share.
struct Side {
    client: Client,
    log: Arc<EventLog>,
    answers: AtomicU64,
    /// The request id of the command taken last: queued, being answered, or answered.
    latest: Mutex<Option<String>>,
    /// Disconnected when the camera stops.
    stop: Receiver<()>,
    backoff_max: Duration,
}

impl Side {
    fn poll_loop(&self, handoff: &(Sender<Command>, Receiver<Command>)) {
        let mut backoff = Backoff::new(self.backoff_max, "poll the API server");
        while !matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected)) {
            let attempt = Instant::now();
            // A server that did not answer at all is asked /health until it does, so the
            // recovery is known (and logged) at once, not when a held poll ends.
            let answer =
                if backoff.unreachable() { self.client.reach() } else { self.client.poll() };
            match answer {
                Ok(command) => {
                    backoff.succeeded(attempt);
                    self.hand_off(command, handoff);
                }
                Err(why) if !backoff.failed(&why, &self.stop) => return,
                Err(_) => {}
            }
        }
    }

    /// Hands a command to the posting thread without waiting for it, unless it is the one the
    /// camera took last (sent again while its answer is in hand). One still queued is replaced:
    /// the server sends a new command only once it wants the old one no more.
    fn hand_off(&self, mut command: Command, (tx, rx): &(Sender<Command>, Receiver<Command>)) {
        let Command::SendLogs { request_id, .. } = &command else { return };
        if self.latest.lock().replace(request_id.clone()).as_ref() == Some(request_id) {
            return log_info!(
                "command {request_id} came again while its answer is in hand; not answered twice"
            );
        }
        while let Err(TrySendError::Full(back)) = tx.try_send(command) {
            let _ = rx.try_recv();
            command = back;
        }
    }

    /// Answers commands, and records each simulated event (see the module comment).
    fn post_loop(&self, commands: &Receiver<Command>, mut events: Option<EventClock>) {
        loop {
            let wait = events.as_ref().map_or(Duration::MAX, EventClock::until_due);
            let command = select! {
                recv(commands) -> command => match command {
                    Ok(command) => Some(command),
                    Err(_) => return,
                },
                recv(self.stop) -> _ => return,
                default(wait) => None,
            };
            if let Some(clock) = &mut events {
                clock.record_due(&self.log);
            }
            if let Some(Command::SendLogs { request_id, start_timestamp, end_timestamp }) = command
            {
                let range = TimeRange::new(Some(start_timestamp), Some(end_timestamp));
                self.answer(SendLogsBody {
                    request_id: Some(request_id),
                    logs: self.log.in_range(range),
                });
            }
        }
    }

    /// Posts `body`, retrying with the backoff up to `POST_ATTEMPTS` times.
    fn answer(&self, body: SendLogsBody) {
        let request_id = body.request_id.as_deref().unwrap_or_default();
        let mut backoff = Backoff::new(self.backoff_max, "send logs to the API server");
        for _ in 0..POST_ATTEMPTS {
            match self.client.send(&body) {
                Ok(Delivery::Accepted) => {
                    self.answers.fetch_add(1, Ordering::SeqCst);
                    return log_info!("sent {} event(s) for command {request_id}", body.logs.len());
                }
                Ok(Delivery::Refused) => return,
                Err(why) if !backoff.failed(&why, &self.stop) => return,
                Err(_) => {}
            }
        }
        // Not in hand any more: the server's re-send is answered again.
        self.latest.lock().take_if(|id| id == request_id);
        log_error!("gave up sending logs for command {request_id}; the server will ask again if it still needs them");
    }
}

/// When the next simulated event is due, on the monotonic clock, and the state of recording them.
struct EventClock {
    interval: Duration,
    next_due: Instant,
    jitter: Jitter,
    /// Whether the last write to `LOG_FILE` failed (logged once per streak).
    failing: bool,
}

impl EventClock {
    fn new(interval: Duration) -> EventClock {
        EventClock {
            interval,
            next_due: Instant::now() + interval,
            jitter: Jitter::new(),
            failing: false,
        }
    }

    fn until_due(&self) -> Duration {
        self.next_due.saturating_duration_since(Instant::now())
    }

    /// Records every event due by now, each stamped with the wall clock's time when it was due
    /// (now, less how long ago it was due): only the monotonic clock says how many are due.
    fn record_due(&mut self, log: &EventLog) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        while self.next_due <= now {
            let late = now - self.next_due;
            let due = wall.checked_sub(late).unwrap_or(wall);
            self.next_due += self.interval;
            let description = describe_event(self.jitter.next());
            let written = log.push(LogEntry { timestamp: epoch_secs(due), description });
            match (&written, self.failing) {
                (Ok(()), true) => log_info!("the event log file is writable again"),
                (Err(e), false) => log_error!("could not persist an event (kept in memory): {e}"),
                _ => {}
            }
            self.failing = written.is_err();
        }
    }
}

/// Events of the kinds a real camera logs, from a random number `n`.
fn describe_event(n: u64) -> String {
    match n % 6 {
        0 | 1 => format!("motion detected at ({}, {})", (n >> 8) % 1920, (n >> 20) % 1080),
        2 => "user started viewing live video".to_string(),
        3 => "user stopped viewing live video".to_string(),
        4 => {
            let sign = if (n >> 16).is_multiple_of(2) { '+' } else { '-' };
            format!("brightness adjusted {sign}{}", (n >> 8) % 10 + 1)
        }
        _ => format!("person detected with confidence 0.{:02}", (n >> 8) % 100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_events_are_recorded_at_the_times_they_were_due() {
        let log = EventLog::in_memory(100);
        let mut clock = EventClock::new(Duration::from_secs(1));
        let first_due = SystemTime::now() - Duration::from_millis(2500);
        clock.next_due = Instant::now() - Duration::from_millis(2500);
        clock.record_due(&log);
        let stamps: Vec<f64> = log.snapshot().iter().map(|e| e.timestamp).collect();
        assert_eq!(stamps.len(), 3, "the three events due by now");
        for (k, stamp) in stamps.iter().enumerate() {
            let due = epoch_secs(first_due + Duration::from_secs(k as u64));
            assert!((stamp - due).abs() < 0.1, "event {k} at {stamp}, due at {due}");
        }
        assert!(clock.until_due() > Duration::ZERO, "the next one is still ahead");
        clock.record_due(&log);
        assert_eq!(log.len(), 3, "nothing new is due");
    }

    #[test]
    fn events_read_like_a_camera() {
        let mut jitter = Jitter::new();
        for _ in 0..100 {
            let text = describe_event(jitter.next());
            let kinds =
                ["motion detected at (", "user st", "brightness adjusted ", "person detected"];
            assert!(kinds.iter().any(|p| text.starts_with(p)), "{text}");
        }
    }
}
