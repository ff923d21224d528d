//! The simulated camera fleet: `Fleet` (the state every camera of one run shares, its counters,
//! and starting and stopping the camera threads) and `SimCamera` (one camera: long-poll, answer
//! `send_logs` with exactly its events in range, repeat, back off on errors).
//!
//! It must not judge answers or talk to `/logs` (the clients do), nor decide when a run is over:
//! the scenario calls `begin_stop`/`stop`.

use std::net::TcpStream;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use camera_logs::{Command, Route, SendLogsBody};
use parking_lot::Mutex;
use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::events::{camera_id, EventSet};
use crate::raw_http::{body_excerpt, describe_io, raw_exchange};

/// Simulated camera threads only parse small JSON and format requests.
const CAMERA_STACK: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds one long poll on the camera side; the server answers within its POLL_HOLD_SECS.
const POLL_READ_TIMEOUT: Duration = Duration::from_secs(120);
const POST_READ_TIMEOUT: Duration = Duration::from_secs(30);
const CAMERA_BACKOFF_START: Duration = Duration::from_millis(50);
const CAMERA_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Cameras are started this many at a time...
const RAMP_BATCH: usize = 50;
/// ...and no more than this many may be started but not yet connected, so the listen backlog
/// never overflows.
const RAMP_AHEAD: usize = 200;
const RAMP_BATCH_WAIT: Duration = Duration::from_secs(2);
/// How long `stop` waits for the camera threads to notice.
pub(crate) const CAMERA_STOP_GRACE: Duration = Duration::from_secs(2);

/// State shared by every simulated camera of one run.
pub(crate) struct Fleet {
    endpoint: Endpoint,
    pub(crate) prefix: String,
    events: usize,
    stopping: AtomicBool,
    /// Cameras that have sent their first poll.
    connected: AtomicUsize,
    /// Camera threads still running.
    running: AtomicUsize,
    polls: AtomicU64,
    commands: AtomicU64,
    /// `send_logs` answers the server accepted: the cameras' round trips.
    round_trips: AtomicU64,
    connect_retries: AtomicU64,
    poll_errors: AtomicU64,
    post_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FleetCounts {
    pub(crate) polls: u64,
    pub(crate) commands: u64,
    pub(crate) round_trips: u64,
    pub(crate) connect_retries: u64,
    pub(crate) poll_errors: u64,
    pub(crate) post_errors: u64,
}

/// One failed step of a camera; the connect kind is retried without counting as an error.
enum CameraError {
    Connect(String),
    Poll(String),
    Post(String),
}

impl Fleet {
    pub(crate) fn new(endpoint: Endpoint, prefix: String, events: usize) -> Arc<Fleet> {
        Arc::new(Fleet {
            endpoint,
            prefix,
            events,
            stopping: AtomicBool::new(false),
            connected: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            polls: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            connect_retries: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            post_errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn counts(&self) -> FleetCounts {
        FleetCounts {
            polls: self.polls.load(Ordering::SeqCst),
            commands: self.commands.load(Ordering::SeqCst),
            round_trips: self.round_trips.load(Ordering::SeqCst),
            connect_retries: self.connect_retries.load(Ordering::SeqCst),
            poll_errors: self.poll_errors.load(Ordering::SeqCst),
            post_errors: self.post_errors.load(Ordering::SeqCst),
        }
    }

    /// One line on what the cameras have run into, for failure messages.
    pub(crate) fn trouble(&self) -> String {
        let counts = self.counts();
        let last = self.last_error.lock().clone();
        format!(
            "camera connect retries {}, poll errors {}, post errors {}{}",
            counts.connect_retries,
            counts.poll_errors,
            counts.post_errors,
            last.map(|e| format!(" (last: {e})")).unwrap_or_default()
        )
    }

    /// Starts cameras `indices`, paced so that few are ever waiting to be accepted.
    pub(crate) fn spawn_cameras(self: &Arc<Self>, indices: Range<usize>) -> Result<(), String> {
        let first = indices.start;
        for index in indices {
            if (index - first).is_multiple_of(RAMP_BATCH) {
                self.wait_for_connects(index);
            }
            self.spawn_camera(index)?;
        }
        Ok(())
    }

    fn wait_for_connects(&self, started: usize) {
        let deadline = Instant::now() + RAMP_BATCH_WAIT;
        while started.saturating_sub(self.connected.load(Ordering::SeqCst)) > RAMP_AHEAD
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn spawn_camera(self: &Arc<Self>, index: usize) -> Result<(), String> {
        let camera = SimCamera::new(Arc::clone(self), index);
        self.running.fetch_add(1, Ordering::SeqCst);
        let spawned =
            std::thread::Builder::new().stack_size(CAMERA_STACK).spawn(move || camera.run());
        match spawned {
            Ok(handle) => {
                drop::<JoinHandle<()>>(handle);
                Ok(())
            }
            Err(e) => {
                self.running.fetch_sub(1, Ordering::SeqCst);
                Err(format!("could not start camera thread {index}: {e}"))
            }
        }
    }

    /// Tells every camera to stop after its current exchange; errors from now on are not counted
    /// (killing the api ends their open polls).
    pub(crate) fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops every camera; waits briefly for them to notice.
    pub(crate) fn stop(&self, grace: Duration) {
        self.begin_stop();
        let deadline = Instant::now() + grace;
        while self.running.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One simulated camera: polls, answers `send_logs` with exactly its events in range, repeats.
struct SimCamera {
    fleet: Arc<Fleet>,
    events: EventSet,
    poll_request: Vec<u8>,
    send_head: String,
    id: String,
}

impl SimCamera {
    fn new(fleet: Arc<Fleet>, index: usize) -> SimCamera {
        let id = camera_id(&fleet.prefix, index);
        let host = &fleet.endpoint.host;
        let (poll, send) = (Route::Poll.path(), Route::SendLogs.path());
        let poll_request = format!(
            "GET {poll}?cameraId={id} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        let send_head = format!(
            "POST {send}?cameraId={id} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nConnection: close\r\n"
        );
        SimCamera {
            events: EventSet { camera: index, count: fleet.events },
            fleet,
            poll_request,
            send_head,
            id,
        }
    }

    fn run(self) {
        let mut announced = false;
        let mut backoff = CAMERA_BACKOFF_START;
        while !self.fleet.stopping() {
            let step = self.poll(&mut announced).and_then(|command| {
                if self.fleet.stopping() {
                    return Ok(());
                }
                self.obey(command)
            });
            match step {
                Ok(()) => backoff = CAMERA_BACKOFF_START,
                Err(error) => {
                    if self.fleet.stopping() {
                        break;
                    }
                    self.record(error);
                    self.sleep(backoff);
                    backoff = (backoff * 2).min(CAMERA_BACKOFF_MAX);
                }
            }
        }
        self.fleet.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn connect(&self) -> Result<TcpStream, CameraError> {
        TcpStream::connect_timeout(&self.fleet.endpoint.addr, CONNECT_TIMEOUT)
            .map_err(|e| CameraError::Connect(describe_io(&e)))
    }

    fn poll(&self, announced: &mut bool) -> Result<Command, CameraError> {
        let stream = self.connect()?;
        if !*announced {
            *announced = true;
            self.fleet.connected.fetch_add(1, Ordering::SeqCst);
        }
        self.fleet.polls.fetch_add(1, Ordering::Relaxed);
        let response = raw_exchange(stream, &self.poll_request, POLL_READ_TIMEOUT)
            .map_err(CameraError::Poll)?;
        if response.status != 200 {
            return Err(CameraError::Poll(format!(
                "HTTP {}: {}",
                response.status,
                body_excerpt(&response.body)
            )));
        }
        serde_json::from_slice::<Command>(&response.body).map_err(|e| {
            CameraError::Poll(format!("unreadable command ({e}): {}", body_excerpt(&response.body)))
        })
    }

    fn obey(&self, command: Command) -> Result<(), CameraError> {
        let Command::SendLogs { request_id, start_timestamp, end_timestamp } = command else {
            return Ok(());
        };
        self.fleet.commands.fetch_add(1, Ordering::Relaxed);
        let body = SendLogsBody {
            request_id: Some(request_id),
            logs: self.events.within(Some(start_timestamp), Some(end_timestamp)),
        };
        let json = serde_json::to_vec(&body)
            .map_err(|e| CameraError::Post(format!("cannot encode the answer: {e}")))?;
        let mut request =
            format!("{}Content-Length: {}\r\n\r\n", self.send_head, json.len()).into_bytes();
        request.extend_from_slice(&json);
        let stream = self.connect()?;
        let response =
            raw_exchange(stream, &request, POST_READ_TIMEOUT).map_err(CameraError::Post)?;
        if response.status != 200 {
            return Err(CameraError::Post(format!(
                "HTTP {}: {}",
                response.status,
                body_excerpt(&response.body)
            )));
        }
        self.fleet.round_trips.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn record(&self, error: CameraError) {
        let (counter, what, message) = match error {
            CameraError::Connect(m) => (&self.fleet.connect_retries, "connect", m),
            CameraError::Poll(m) => (&self.fleet.poll_errors, "poll", m),
            CameraError::Post(m) => (&self.fleet.post_errors, "send_logs", m),
        };
        counter.fetch_add(1, Ordering::SeqCst);
        *self.fleet.last_error.lock() = Some(format!("camera {} {what}: {message}", self.id));
    }

    /// Sleeps, waking early when the run stops.
    fn sleep(&self, total: Duration) {
        let deadline = Instant::now() + total;
        while !self.fleet.stopping() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}
