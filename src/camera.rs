//! The camera client: it only ever makes outgoing requests, from two threads. One holds a long
//! poll open and hands each command to the other, which posts the matching events, so the camera
//! is back on a poll at once while a large answer is still uploading. The posting thread also
//! records an event every `EVENT_INTERVAL_SECS`, stamped with the time it was due: while it is
//! busy with an upload the due events wait, and they are recorded before the next command is
//! answered, so an answer never misses an event that was due before it.
//!
//! When the server is unreachable or answers with an error, both threads back off exponentially
//! with jitter (0.5 s doubling to a cap) and log once per failure streak, never spinning.
//!
//! An https:// `API_BASE_URL` is reached through rustls, trusting only the certificates of
//! `CA_CERT_FILE` when it is set, else the bundled webpki roots. A certificate the camera does
//! not trust (or a server that does not speak TLS) is logged with its cause and a hint, and
//! retried with the same backoff: a streak that turns into a TLS failure is logged once more.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{unbounded, Receiver, Sender};

use crate::config::{CaCerts, CameraConfig};
use crate::event_log::EventLog;
use crate::log::epoch_secs;
use crate::log::{log_error, log_info, log_warn};
use crate::protocol::{Command, LogEntry, SendLogsBody, TimeRange};

/// First retry delay after a failure; doubles per failure up to `backoff_max`.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// Attempts to deliver one answer before leaving it to the server's re-send.
const POST_ATTEMPTS: u32 = 4;

/// Counters a test or the load tool can read.
#[derive(Debug, Default)]
pub struct CameraStats {
    pub polls: AtomicU64,
    pub commands: AtomicU64,
    /// Answers the server accepted: the camera's round trips.
    pub answers: AtomicU64,
    pub failures: AtomicU64,
}

/// A running camera. [`CameraHandle::stop`] ends it.
pub struct CameraHandle {
    log: Arc<EventLog>,
    stats: Arc<CameraStats>,
    stopping: Arc<AtomicBool>,
    /// Dropped on stop: wakes every thread sleeping on the matching receiver.
    stop_tx: Option<Sender<()>>,
    /// Disconnected once every thread has ended: each holds a sender it never uses.
    done_rx: Receiver<()>,
    threads: Vec<JoinHandle<()>>,
}

impl CameraHandle {
    /// Opens the event log (reloading `LOG_FILE` if set) and starts the camera's threads.
    pub fn start(config: CameraConfig) -> std::io::Result<CameraHandle> {
        let log = match &config.log_file {
            Some(path) => {
                let (log, report) = EventLog::open(path, config.max_events)?;
                log_info!(
                    "reloaded {} event(s) from {}{}",
                    report.loaded,
                    path.display(),
                    if report.skipped_lines > 0 {
                        format!(
                            "; skipped {} damaged line(s) (a torn last write)",
                            report.skipped_lines
                        )
                    } else {
                        String::new()
                    }
                );
                log
            }
            None => EventLog::in_memory(config.max_events),
        };
        CameraHandle::start_with_log(config, Arc::new(log))
    }

    /// Starts a camera serving an existing log (tests fill it with known events).
    pub fn start_with_log(
        config: CameraConfig,
        log: Arc<EventLog>,
    ) -> std::io::Result<CameraHandle> {
        let stats = Arc::new(CameraStats::default());
        let stopping = Arc::new(AtomicBool::new(false));
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (commands_tx, commands_rx) = unbounded();
        let client = Client::new(&config);
        log_info!(
            "camera '{}' starting; API server at {}{}; authentication: CAMERA_TOKEN {}",
            config.camera_id,
            config.api_base_url,
            describe_trust(&config),
            if config.camera_token.is_some() {
                "on (sent as a bearer token)"
            } else {
                "off"
            }
        );

        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let mut threads = Vec::new();
        let poller = Poller {
            client: client.clone(),
            commands: commands_tx,
            stats: Arc::clone(&stats),
            stopping: Arc::clone(&stopping),
            stop_rx: stop_rx.clone(),
            backoff_max: config.backoff_max,
        };
        threads.push(spawn("camera-poller", &done_tx, move || poller.run())?);
        let poster = Poster {
            client,
            log: Arc::clone(&log),
            commands: commands_rx,
            stats: Arc::clone(&stats),
            stop_rx,
            backoff_max: config.backoff_max,
            events: config.event_interval.map(EventClock::new),
        };
        threads.push(spawn("camera-poster", &done_tx, move || poster.run())?);
        Ok(CameraHandle {
            log,
            stats,
            stopping,
            stop_tx: Some(stop_tx),
            done_rx,
            threads,
        })
    }

    pub fn log(&self) -> &Arc<EventLog> {
        &self.log
    }

    pub fn stats(&self) -> &Arc<CameraStats> {
        &self.stats
    }

    /// Answers the server accepted so far.
    pub fn round_trips(&self) -> u64 {
        self.stats.answers.load(Ordering::SeqCst)
    }

    /// Blocks the calling thread while the camera runs (the `camera` binary's main thread).
    pub fn wait(mut self) {
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }

    /// Stops polling and posting. A poll already open ends when the server answers it; threads
    /// still busy after `grace` are left to finish on their own.
    pub fn stop(mut self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop_tx.take();
        // Returns `Disconnected` as soon as the last thread has dropped its sender.
        let _ = self.done_rx.recv_timeout(grace);
        for thread in self.threads.drain(..).filter(|t| t.is_finished()) {
            let _ = thread.join();
        }
    }
}

/// Starts a camera thread holding a clone of `done` until it ends.
fn spawn(
    name: &str,
    done: &Sender<()>,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let done = done.clone();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            f();
            drop(done);
        })
}

/// The start-up line's note on what an https:// server is trusted by (empty for plain http).
fn describe_trust(config: &CameraConfig) -> String {
    let https = config.api_base_url.starts_with("https://");
    match (&config.ca_certs, https) {
        (Some(ca), true) => format!(
            "; trusting only the {} CA certificate(s) of {}",
            ca.der.len(),
            ca.path.display()
        ),
        (None, true) => "; trusting the bundled webpki roots".to_string(),
        (Some(_), false) => "; CA_CERT_FILE unused (the URL is not https://)".to_string(),
        (None, false) => String::new(),
    }
}

/// TLS for an https:// server: exactly the roots of `CA_CERT_FILE` when set, else webpki's.
fn tls_config(ca_certs: Option<&CaCerts>) -> ureq::tls::TlsConfig {
    let roots = match ca_certs {
        Some(ca) => ureq::tls::RootCerts::new_with_certs(
            &ca.der
                .iter()
                .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
                .collect::<Vec<_>>(),
        ),
        None => ureq::tls::RootCerts::WebPki,
    };
    ureq::tls::TlsConfig::builder().root_certs(roots).build()
}

/// The HTTP side of the camera: URLs, the bearer token and a ureq agent.
#[derive(Clone)]
struct Client {
    poll_url: String,
    send_url: String,
    /// `scheme://host:port` of the server, for failure messages (never any user:password).
    origin: String,
    camera_id: String,
    authorization: Option<String>,
    poll_agent: ureq::Agent,
    post_agent: ureq::Agent,
}

impl Client {
    fn new(config: &CameraConfig) -> Client {
        let tls = tls_config(config.ca_certs.as_ref());
        let agent = |timeout: Duration| {
            ureq::Agent::new_with_config(
                ureq::Agent::config_builder()
                    .timeout_global(Some(timeout))
                    .http_status_as_error(false)
                    .tls_config(tls.clone())
                    .build(),
            )
        };
        let base = config.api_base_url.trim_end_matches('/');
        let origin = url::Url::parse(base).map_or_else(
            |_| base.to_string(),
            |url| url.origin().ascii_serialization(),
        );
        Client {
            poll_url: format!("{base}/poll_for_command?cameraId={}", config.camera_id),
            send_url: format!("{base}/send_logs?cameraId={}", config.camera_id),
            origin,
            camera_id: config.camera_id.clone(),
            authorization: config.camera_token.as_ref().map(|t| format!("Bearer {t}")),
            poll_agent: agent(config.poll_timeout),
            post_agent: agent(Duration::from_secs(60)),
        }
    }

    /// A request that got no response, by its cause.
    fn describe_error(&self, e: &ureq::Error) -> CallError {
        describe_call_error(&self.origin, &e.to_string())
    }

    fn poll(&self) -> Result<Command, CallError> {
        // Connection: close on every request: the server drops idle connections after its header
        // timeout, and a fresh connection per poll can never be caught reusing a closed one.
        let mut request = self
            .poll_agent
            .get(&self.poll_url)
            .header("Connection", "close");
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let mut response = request.call().map_err(|e| self.describe_error(&e))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(describe_status(status, &mut response));
        }
        response
            .body_mut()
            .read_json::<Command>()
            .map_err(|e| CallError::Unreadable(e.to_string()))
    }

    /// `Refused` is for good (a 4xx other than 408 and 429): retrying cannot help. An `Err` is
    /// retried with the backoff.
    fn send(&self, body: &SendLogsBody) -> Result<Delivery, CallError> {
        let mut request = self
            .post_agent
            .post(&self.send_url)
            .header("Connection", "close");
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let mut response = request
            .send_json(body)
            .map_err(|e| self.describe_error(&e))?;
        match response.status().as_u16() {
            200 => Ok(Delivery::Accepted),
            status @ (408 | 429) => Err(describe_status(status, &mut response)),
            status @ 400..=499 => {
                log_warn!(
                    "server refused the answer: {}",
                    describe_status(status, &mut response)
                );
                Ok(Delivery::Refused)
            }
            status => Err(describe_status(status, &mut response)),
        }
    }
}

/// What became of an answer the server received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Accepted,
    /// Refused for good (a 4xx other than 408 and 429).
    Refused,
}

/// Why a call to the API server failed. Every kind is retried with the backoff; the TLS kinds
/// need a fix on one side, not just a retry, so a streak that turns into one is logged again.
#[derive(Debug, Clone, PartialEq)]
enum CallError {
    /// The server's certificate is not trusted, with a hint at the fix.
    Untrusted {
        origin: String,
        cause: String,
        hint: &'static str,
    },
    /// The TLS handshake failed: the other end may not speak TLS.
    Handshake { origin: String, error: String },
    /// No response (refused, reset, timed out, ...): ureq's own words.
    Unreachable(String),
    /// An error status (with the start of its body).
    Status { status: u16, body: String },
    /// A 200 whose body is not a command.
    Unreadable(String),
}

impl CallError {
    fn is_tls(&self) -> bool {
        matches!(
            self,
            CallError::Untrusted { .. } | CallError::Handshake { .. }
        )
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Untrusted {
                origin,
                cause,
                hint,
            } => write!(f, "TLS certificate of {origin} not trusted: {cause}; {hint}"),
            CallError::Handshake { origin, error } => write!(
                f,
                "TLS handshake with {origin} failed: {error}; is the server speaking https:// on that port?"
            ),
            CallError::Unreachable(error) => write!(f, "{error}"),
            CallError::Status { status, body } => write!(f, "HTTP {status}: {body}"),
            CallError::Unreadable(error) => write!(f, "unreadable command: {error}"),
        }
    }
}

/// Names the cause of a failed call to `origin` (ureq's error text, `error`): a certificate the
/// camera does not trust, with a hint at the fix; a handshake that failed because the other end
/// does not speak TLS; or else ureq's own text, unchanged.
fn describe_call_error(origin: &str, error: &str) -> CallError {
    // rustls's wording (`rustls::Error`'s Display, reached through ureq's io or rustls error).
    if let Some(at) = error.find("invalid peer certificate: ") {
        let cause = &error[at + "invalid peer certificate: ".len()..];
        let hint = if cause.contains("UnknownIssuer") || cause.contains("BadSignature") {
            "set CA_CERT_FILE to the edge's CA (or check that it holds the CA that signed the edge's certificate)"
        } else if cause.contains("not valid for name") || cause.contains("NotValidForName") {
            "API_BASE_URL must use a host name the certificate was issued for"
        } else if cause.contains("expired")
            || cause.contains("not valid yet")
            || cause.contains("Expired")
            || cause.contains("NotValidYet")
        {
            "renew the edge's certificate, or check this camera's clock"
        } else if cause.contains("CaUsedAsEndEntity") {
            "the edge presents a CA certificate as its own; give it one with basicConstraints CA:FALSE (self-signed, or signed by the CA in CA_CERT_FILE)"
        } else {
            "check the edge's certificate and CA_CERT_FILE"
        };
        return CallError::Untrusted {
            origin: origin.to_string(),
            cause: cause.to_string(),
            hint,
        };
    }
    const NOT_TLS: [&str; 6] = [
        "received corrupt message",
        "received unexpected",
        "peer is incompatible",
        "peer misbehaved",
        "received fatal alert",
        "tls handshake eof",
    ];
    if origin.starts_with("https://") && NOT_TLS.iter().any(|m| error.contains(m)) {
        return CallError::Handshake {
            origin: origin.to_string(),
            error: error.to_string(),
        };
    }
    CallError::Unreachable(error.to_string())
}

fn describe_status(status: u16, response: &mut ureq::http::Response<ureq::Body>) -> CallError {
    let body = response
        .body_mut()
        .with_config()
        .limit(4096)
        .read_to_string()
        .unwrap_or_default();
    CallError::Status {
        status,
        body: body.trim().to_string(),
    }
}

struct Poller {
    client: Client,
    commands: Sender<Command>,
    stats: Arc<CameraStats>,
    stopping: Arc<AtomicBool>,
    stop_rx: Receiver<()>,
    backoff_max: Duration,
}

impl Poller {
    fn run(self) {
        let mut backoff = Backoff::new(self.backoff_max, "poll the API server");
        while !self.stopping.load(Ordering::SeqCst) {
            self.stats.polls.fetch_add(1, Ordering::Relaxed);
            match self.client.poll() {
                Ok(command) => {
                    backoff.succeeded();
                    if let Command::SendLogs { .. } = command {
                        self.stats.commands.fetch_add(1, Ordering::Relaxed);
                        if self.commands.send(command).is_err() {
                            return;
                        }
                    }
                }
                Err(why) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if !backoff.failed(&why, &self.stop_rx) {
                        return;
                    }
                }
            }
        }
    }
}

struct Poster {
    client: Client,
    log: Arc<EventLog>,
    commands: Receiver<Command>,
    stats: Arc<CameraStats>,
    stop_rx: Receiver<()>,
    backoff_max: Duration,
    /// Records an event every interval, when set (see the module comment).
    events: Option<EventClock>,
}

impl Poster {
    fn run(mut self) {
        loop {
            let wait = self
                .events
                .as_ref()
                .map_or(Duration::MAX, EventClock::until_due);
            crossbeam_channel::select! {
                recv(self.commands) -> command => match command {
                    Ok(command) => {
                        self.record_due_events();
                        self.answer(command);
                    }
                    Err(_) => return,
                },
                recv(self.stop_rx) -> _ => return,
                default(wait) => {}
            }
            self.record_due_events();
        }
    }

    fn record_due_events(&mut self) {
        if let Some(clock) = &mut self.events {
            clock.record_due(&self.log);
        }
    }

    fn answer(&self, command: Command) {
        let Command::SendLogs {
            request_id,
            start_timestamp,
            end_timestamp,
        } = command
        else {
            return;
        };
        let range = TimeRange::new(Some(start_timestamp), Some(end_timestamp));
        let body = SendLogsBody {
            request_id: Some(request_id.clone()),
            logs: self.log.in_range(range),
        };
        let mut backoff = Backoff::new(self.backoff_max, "send logs to the API server");
        for _ in 0..POST_ATTEMPTS {
            match self.client.send(&body) {
                Ok(delivery) => {
                    if delivery == Delivery::Accepted {
                        self.stats.answers.fetch_add(1, Ordering::SeqCst);
                        log_info!(
                            "camera '{}' sent {} event(s) for command {request_id}",
                            self.client.camera_id,
                            body.logs.len()
                        );
                    }
                    return;
                }
                Err(why) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    if !backoff.failed(&why, &self.stop_rx) {
                        return;
                    }
                }
            }
        }
        log_error!("gave up sending logs for command {request_id}; the server will ask again if it still needs them");
    }
}

/// Exponential backoff with jitter that logs a failure streak once, and its end once; a streak
/// that turns into a TLS failure (which retrying alone will not fix) is logged once more.
struct Backoff {
    what: &'static str,
    max: Duration,
    failures: u32,
    started: Option<Instant>,
    /// Whether this streak has logged a TLS failure.
    logged_tls: bool,
    jitter: Jitter,
}

impl Backoff {
    fn new(max: Duration, what: &'static str) -> Backoff {
        Backoff {
            what,
            max,
            failures: 0,
            started: None,
            logged_tls: false,
            jitter: Jitter::new(),
        }
    }

    /// The delay before retry number `failures` (1-based): doubling from 0.5 s up to the cap,
    /// then a random point in its upper half so that many cameras do not retry in lockstep.
    fn delay(&mut self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        let full = BACKOFF_START.saturating_mul(1 << doublings).min(self.max);
        full / 2 + full.mul_f64(self.jitter.unit() / 2.0)
    }

    /// Records a failure and sleeps; returns false if the camera is stopping.
    fn failed(&mut self, why: &CallError, stop: &Receiver<()>) -> bool {
        self.failures += 1;
        let tls = why.is_tls();
        if self.failures == 1 || (tls && !self.logged_tls) {
            if self.failures == 1 {
                self.started = Some(Instant::now());
            }
            self.logged_tls |= tls;
            log_warn!(
                "could not {}: {why}; retrying with backoff (up to {:.0} s)",
                self.what,
                self.max.as_secs_f64()
            );
        }
        let delay = self.delay();
        // Wakes early only when the stop sender is dropped.
        !matches!(
            stop.recv_timeout(delay),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        )
    }

    fn succeeded(&mut self) {
        if self.failures > 0 {
            let down = self.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
            log_info!(
                "could {} again after {} failed attempt(s) over {down:.1} s",
                self.what,
                self.failures
            );
        }
        self.failures = 0;
        self.started = None;
        self.logged_tls = false;
    }
}

/// Cheap, unpredictable numbers from std's randomly keyed SipHash (no random-number crate).
struct Jitter {
    keys: RandomState,
    n: u64,
}

impl Jitter {
    fn new() -> Jitter {
        Jitter {
            keys: RandomState::new(),
            n: 0,
        }
    }

    fn next(&mut self) -> u64 {
        self.n += 1;
        self.keys.hash_one(self.n)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// When the next simulated event is due, and the state of recording them.
struct EventClock {
    interval: Duration,
    next_due: SystemTime,
    jitter: Jitter,
    /// Whether the last write to `LOG_FILE` failed (logged once per streak).
    failing: bool,
}

impl EventClock {
    fn new(interval: Duration) -> EventClock {
        EventClock {
            interval,
            next_due: SystemTime::now() + interval,
            jitter: Jitter::new(),
            failing: false,
        }
    }

    fn until_due(&self) -> Duration {
        self.next_due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    }

    /// Records every event due by now, each stamped with the time it was due.
    fn record_due(&mut self, log: &EventLog) {
        while self.next_due <= SystemTime::now() {
            let entry = LogEntry {
                timestamp: epoch_secs(self.next_due),
                description: describe_event(&mut self.jitter),
            };
            self.next_due += self.interval;
            match log.push(entry) {
                Ok(()) if self.failing => {
                    self.failing = false;
                    log_info!("the event log file is writable again");
                }
                Ok(()) => {}
                Err(e) if !self.failing => {
                    self.failing = true;
                    log_error!("could not persist an event (kept in memory): {e}");
                }
                Err(_) => {}
            }
        }
    }
}

/// Events of the kinds a real camera logs.
fn describe_event(jitter: &mut Jitter) -> String {
    let n = jitter.next();
    match n % 6 {
        0 | 1 => format!(
            "motion detected at ({}, {})",
            (n >> 8) % 1920,
            (n >> 20) % 1080
        ),
        2 => "user started viewing live video".to_string(),
        3 => "user stopped viewing live video".to_string(),
        4 => {
            let step = (n >> 8) % 10 + 1;
            if (n >> 16).is_multiple_of(2) {
                format!("brightness adjusted +{step}")
            } else {
                format!("brightness adjusted -{step}")
            }
        }
        _ => format!("person detected with confidence 0.{:02}", (n >> 8) % 100),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_secs(30), "test");
        let mut previous_full = Duration::ZERO;
        for failure in 1..=12u32 {
            backoff.failures = failure;
            let full = BACKOFF_START
                .saturating_mul(1 << (failure - 1).min(16))
                .min(Duration::from_secs(30));
            let delay = backoff.delay();
            assert!(
                delay >= full / 2 && delay <= full,
                "failure {failure}: {delay:?} vs {full:?}"
            );
            assert!(full >= previous_full);
            previous_full = full;
        }
        assert_eq!(previous_full, Duration::from_secs(30));
        assert!(
            backoff.delay() >= Duration::from_millis(250),
            "never a busy loop"
        );
    }

    #[test]
    fn certificate_failures_name_the_cause_and_the_fix() {
        let origin = "https://edge.example:8443";
        for (error, cause, hint) in [
            (
                "io: invalid peer certificate: UnknownIssuer",
                "UnknownIssuer",
                "set CA_CERT_FILE",
            ),
            (
                "rustls: invalid peer certificate: BadSignature",
                "BadSignature",
                "set CA_CERT_FILE",
            ),
            (
                "io: invalid peer certificate: certificate not valid for name \"edge\"; certificate is only valid for IpAddress(127.0.0.1)",
                "not valid for name",
                "API_BASE_URL must use a host name",
            ),
            (
                "io: invalid peer certificate: certificate expired: verification time 2 (UNIX), but certificate is not valid after 1 (1 seconds ago)",
                "certificate expired",
                "renew the edge's certificate",
            ),
            (
                "io: invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))",
                "CaUsedAsEndEntity",
                "CA:FALSE",
            ),
            (
                "io: invalid peer certificate: UnsupportedSignatureAlgorithm",
                "UnsupportedSignatureAlgorithm",
                "check the edge's certificate",
            ),
        ] {
            let described = describe_call_error(origin, error);
            assert!(described.is_tls(), "{described:?}");
            let text = described.to_string();
            assert!(
                text.starts_with(&format!("TLS certificate of {origin} not trusted: ")),
                "{text}"
            );
            assert!(text.contains(cause) && text.contains(hint), "{text}");
        }
    }

    #[test]
    fn a_server_that_does_not_speak_tls_is_named() {
        let error = "io: received corrupt message of type InvalidContentType";
        let described = describe_call_error("https://edge:8443", error);
        assert!(described.is_tls(), "{described:?}");
        let text = described.to_string();
        assert!(
            text.starts_with("TLS handshake with https://edge:8443 failed: io: received corrupt"),
            "{text}"
        );
        // Other failures keep ureq's own text, over https as over http.
        for origin in ["https://edge:8443", "http://edge:8080"] {
            let refused = "io: Connection refused (os error 111)";
            assert_eq!(
                describe_call_error(origin, refused),
                CallError::Unreachable(refused.to_string())
            );
        }
        assert_eq!(
            describe_call_error("http://edge:8080", error),
            CallError::Unreachable(error.to_string())
        );
    }

    #[test]
    fn a_streak_that_turns_into_a_tls_failure_is_logged_once_more() {
        // A dropped sender: `failed` returns at once instead of sleeping.
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        drop(stop_tx);
        let mut backoff = Backoff::new(Duration::from_secs(1), "test");
        let refused = CallError::Unreachable("io: Connection refused".to_string());
        assert!(!backoff.failed(&refused, &stop_rx));
        assert!(!backoff.logged_tls);
        let tls = describe_call_error(
            "https://edge",
            "io: invalid peer certificate: UnknownIssuer",
        );
        assert!(!backoff.failed(&tls, &stop_rx));
        assert!(backoff.logged_tls);
        assert_eq!(backoff.failures, 2);
        backoff.succeeded();
        assert!(!backoff.logged_tls && backoff.failures == 0);
    }

    #[test]
    fn ca_cert_file_replaces_the_webpki_roots() {
        let default = tls_config(None);
        assert!(matches!(default.root_certs(), ureq::tls::RootCerts::WebPki));
        let ca = CaCerts {
            path: "ca.pem".into(),
            der: vec![vec![0x30, 0x00], vec![0x30, 0x01, 0x00]],
        };
        match tls_config(Some(&ca)).root_certs() {
            ureq::tls::RootCerts::Specific(certs) => {
                let der: Vec<&[u8]> = certs.iter().map(|c| c.der()).collect();
                assert_eq!(der, [&[0x30, 0x00][..], &[0x30, 0x01, 0x00][..]]);
            }
            other => panic!("expected exactly the CA_CERT_FILE roots, got {other:?}"),
        }
        let https = CameraConfig {
            api_base_url: "https://edge".to_string(),
            ca_certs: Some(ca.clone()),
            ..CameraConfig::default()
        };
        assert!(describe_trust(&https).contains("trusting only the 2 CA certificate(s) of ca.pem"));
        let http = CameraConfig {
            ca_certs: Some(ca),
            ..CameraConfig::default()
        };
        assert!(describe_trust(&http).contains("unused"));
        assert_eq!(describe_trust(&CameraConfig::default()), "");
    }

    #[test]
    fn due_events_are_recorded_at_the_times_they_were_due() {
        let log = EventLog::in_memory(100);
        let mut clock = EventClock::new(Duration::from_secs(1));
        let first_due = SystemTime::now() - Duration::from_millis(2500);
        clock.next_due = first_due;
        clock.record_due(&log);
        let recorded = log.in_range(TimeRange::new(None, None));
        let stamps: Vec<f64> = recorded.iter().map(|e| e.timestamp).collect();
        let expected: Vec<f64> = (0..3)
            .map(|k| epoch_secs(first_due + Duration::from_secs(k)))
            .collect();
        assert_eq!(
            stamps, expected,
            "the three events due by now, each at its due time"
        );
        assert!(
            clock.until_due() > Duration::ZERO,
            "the next one is still ahead"
        );
        clock.record_due(&log);
        assert_eq!(
            log.in_range(TimeRange::new(None, None)).len(),
            3,
            "nothing new is due"
        );
    }

    #[test]
    fn events_read_like_a_camera() {
        let mut jitter = Jitter::new();
        for _ in 0..100 {
            let text = describe_event(&mut jitter);
            assert!(
                [
                    "motion detected at (",
                    "user st",
                    "brightness adjusted ",
                    "person detected"
                ]
                .iter()
                .any(|p| text.starts_with(p)),
                "{text}"
            );
        }
        let u = jitter.unit();
        assert!((0.0..1.0).contains(&u));
    }
}
