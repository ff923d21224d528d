//! Helpers shared by the integration tests: a server on 127.0.0.1:0 (optionally with real
//! cameras of its own) that shuts down when dropped, real cameras with known events, fake cameras
//! written with ureq, a relay that can hold a camera's answers back, HTTP helpers over ureq and
//! over raw TCP whose responses check they are JSON, the built binaries as child processes that
//! are killed and reaped when dropped (with their stderr captured line by line), a seeded
//! xorshift generator, fixture events, temporary directories, `/proc` probes (threads,
//! connections, CPU time), and `wait_until` / `wait_for`, which poll a condition with a short
//! interval and a generous deadline instead of sleeping.
//!
//! Set `CAMERA_LOGS_TEST_LOG=1` to see the log lines of the server, the cameras and the child
//! processes.

#![allow(dead_code)]

pub mod edge;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use camera_logs::event_log::EventLog;
use camera_logs::protocol::{LogEntry, LogsResponse};
use camera_logs::registry::{Registry, RegistryStats};
use camera_logs::{ApiServer, CameraConfig, CameraHandle, ServerConfig};
use crossbeam_channel::{unbounded, Receiver, Sender};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// A realistic epoch second; every fixture timestamp is `T0 + k / 4`, exact in an f64.
pub const T0: f64 = 1_700_000_000.0;

/// Generous bound for anything the tests wait for (CI shares two cores).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often `wait_until` and `wait_for` look again.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// The timestamp of fixture event `k`.
pub fn ts(k: usize) -> f64 {
    T0 + k as f64 * 0.25
}

/// Silences the library's log lines unless `CAMERA_LOGS_TEST_LOG` is set.
pub fn quiet() {
    if std::env::var_os("CAMERA_LOGS_TEST_LOG").is_none() {
        camera_logs::log::set_enabled(false);
    }
}

pub fn entry(timestamp: f64, description: &str) -> LogEntry {
    LogEntry {
        timestamp,
        description: description.to_string(),
    }
}

/// `n` events at `ts(0) .. ts(n-1)`, in a fixed scrambled order (a camera's log need not be
/// sorted, and the server must sort).
pub fn fixture(n: usize) -> Vec<LogEntry> {
    let mut events: Vec<LogEntry> = (0..n)
        .map(|k| entry(ts(k), &format!("event {k}")))
        .collect();
    // Fisher-Yates with a fixed xorshift seed: the same order on every run.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..events.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        events.swap(i, (state % (i as u64 + 1)) as usize);
    }
    assert!(
        n < 3 || events.windows(2).any(|w| w[0].timestamp > w[1].timestamp),
        "the fixture is out of order"
    );
    events
}

/// What `/logs` must return: the events within `[start, end]` (inclusive), ascending by timestamp,
/// equal timestamps in the camera's order. Computed here independently of the crate.
pub fn expected(events: &[LogEntry], start: Option<f64>, end: Option<f64>) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = events
        .iter()
        .filter(|e| start.is_none_or(|s| s <= e.timestamp) && end.is_none_or(|x| e.timestamp <= x))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.timestamp.partial_cmp(&b.timestamp).unwrap());
    out
}

/// The `logs` array of a `/logs` answer as entries.
pub fn logs_of(body: &Value) -> Vec<LogEntry> {
    serde_json::from_value(body["logs"].clone())
        .unwrap_or_else(|e| panic!("not a /logs answer ({e}): {body}"))
}

/// Polls `condition` every [`POLL_EVERY`] until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        thread::sleep(POLL_EVERY);
    }
}

/// Like [`wait_until`], for conditions that yield a value or say what is still missing: returns
/// the first `Ok`, or panics with the last `Err` after `patience`.
pub fn wait_for<T>(
    what: &str,
    patience: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + patience;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(why) => assert!(
                Instant::now() < deadline,
                "timed out after {patience:?} waiting for {what}: {why}"
            ),
        }
        thread::sleep(POLL_EVERY);
    }
}

/// Sets a stop flag when dropped, so a helper thread ends even if its test panics.
pub struct StopOnDrop(pub Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Reproducible randomness
// ---------------------------------------------------------------------------------------------

/// xorshift64*: tiny, seeded, the same sequence on every run.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A response, from ureq or from a raw socket.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts `Content-Type: application/json` and a JSON body, and returns it.
    pub fn json(&self) -> Value {
        let content_type = self.header("content-type").unwrap_or_else(|| {
            panic!(
                "HTTP {} without a Content-Type; body {:?}",
                self.status,
                self.text()
            )
        });
        assert_eq!(
            content_type.split(';').next().unwrap().trim(),
            "application/json",
            "HTTP {} body {:?}",
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {}: body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts the status and a JSON body, and returns the body.
    pub fn expect_json(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body {:?}",
            self.text()
        );
        self.json()
    }

    /// Asserts the status and that the body is exactly `{"error": "<non-empty sentence>"}`;
    /// returns the sentence.
    pub fn expect_error(&self, status: u16) -> String {
        let body = self.expect_json(status);
        let object = body
            .as_object()
            .unwrap_or_else(|| panic!("error body is not an object: {body}"));
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            vec!["error"],
            "error body has exactly one key, \"error\": {body}"
        );
        let message = object["error"]
            .as_str()
            .unwrap_or_else(|| panic!("\"error\" is not a string: {body}"));
        assert!(
            message.trim().len() > 3,
            "the error is a sentence: {message:?}"
        );
        message.to_string()
    }

    /// Asserts an error of one of `statuses` with a JSON `{"error": "<non-empty>"}` body.
    pub fn assert_json_error(&self, statuses: &[u16], context: &str) {
        assert!(
            statuses.contains(&self.status),
            "{context}: expected one of {statuses:?}, got HTTP {} {}",
            self.status,
            self.text()
        );
        self.assert_is_json_error(context);
    }

    /// Asserts the body is `{"error": "<non-empty>"}` served as JSON.
    pub fn assert_is_json_error(&self, context: &str) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{context}: HTTP {} {}",
            self.status,
            self.text()
        );
        let body = self.json();
        let message = body["error"].as_str().unwrap_or("");
        assert!(
            !message.is_empty() && body.as_object().is_some_and(|o| o.len() == 1),
            "{context}: not a JSON error: HTTP {} {body}",
            self.status
        );
    }

    /// Asserts a 200 `/logs` answer of the documented shape and returns it.
    pub fn expect_logs(&self) -> LogsResponse {
        let body = self.expect_json(200);
        let object = body.as_object().expect("an object");
        let mut keys: Vec<&String> = object.keys().collect();
        keys.sort();
        assert_eq!(keys, vec!["cameraId", "logs"], "{body}");
        for event in body["logs"].as_array().expect("logs is a list") {
            let mut keys: Vec<&String> =
                event.as_object().expect("an event object").keys().collect();
            keys.sort();
            assert_eq!(keys, vec!["description", "timestamp"], "{event}");
        }
        serde_json::from_value(body).expect("a LogsResponse")
    }
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build(),
    )
}

/// The status and headers of a ureq response; the body is left unread.
fn from_ureq_head(response: &ureq::http::Response<ureq::Body>) -> Resp {
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Resp {
        status: response.status().as_u16(),
        headers,
        body: Vec::new(),
    }
}

fn from_ureq(mut response: ureq::http::Response<ureq::Body>) -> Resp {
    let mut resp = from_ureq_head(&response);
    resp.body = response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_vec()
        .expect("a readable body");
    resp
}

/// Any method, a fresh connection (`Connection: close`), a 60 s client timeout.
pub fn request(method: &str, url: &str, body: Option<&[u8]>) -> Resp {
    let agent = agent(Duration::from_secs(60));
    let result = match (method, body) {
        ("GET", None) => agent.get(url).header("Connection", "close").call(),
        ("DELETE", None) => agent.delete(url).header("Connection", "close").call(),
        ("POST", body) => agent
            .post(url)
            .header("Connection", "close")
            .header("Content-Type", "application/json")
            .send(body.unwrap_or(b"")),
        ("PUT", body) => agent
            .put(url)
            .header("Connection", "close")
            .send(body.unwrap_or(b"")),
        other => panic!("request() does not do {other:?}"),
    };
    from_ureq(result.unwrap_or_else(|e| panic!("{method} {url} failed: {e}")))
}

pub fn get(url: &str) -> Resp {
    request("GET", url, None)
}

/// `GET url` on another thread; yields the response and how long it took.
pub fn spawn_get(url: String) -> JoinHandle<(Resp, Duration)> {
    thread::spawn(move || {
        let started = Instant::now();
        let response = get(&url);
        (response, started.elapsed())
    })
}

/// `POST /send_logs?cameraId=camera` with a JSON body.
pub fn post_answer(base: &str, camera: &str, body: &Value) -> Resp {
    request(
        "POST",
        &format!("{base}/send_logs?cameraId={camera}"),
        Some(body.to_string().as_bytes()),
    )
}

/// `GET url` through `agent`, optionally with `Authorization: Bearer <token>`. Panics on a
/// transport error.
pub fn get_with(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Resp {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    from_ureq(request.call().unwrap_or_else(|e| panic!("GET {url}: {e}")))
}

/// Like [`get_with`], but reports a transport error (connection refused, reset) as `None`.
pub fn try_get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Option<Resp> {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().ok()?;
    let body = response.body_mut().read_to_vec().ok()?;
    let mut resp = from_ureq_head(&response);
    resp.body = body;
    Some(resp)
}

/// `POST url` through `agent` with a JSON body, optionally with `Authorization: Bearer <token>`.
/// Panics on a transport error.
pub fn post_with(agent: &ureq::Agent, url: &str, body: &[u8], token: Option<&str>) -> Resp {
    let mut request = agent.post(url).header("Content-Type", "application/json");
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    from_ureq(
        request
            .send(body)
            .unwrap_or_else(|e| panic!("POST {url}: {e}")),
    )
}

/// `/logs` URL with the given optional parameters.
pub fn logs_url(
    base: &str,
    camera: &str,
    start: Option<f64>,
    end: Option<f64>,
    timeout: Option<f64>,
) -> String {
    let mut url = format!("{base}/logs?cameraId={camera}");
    if let Some(start) = start {
        url.push_str(&format!("&startTimestamp={start}"));
    }
    if let Some(end) = end {
        url.push_str(&format!("&endTimestamp={end}"));
    }
    if let Some(timeout) = timeout {
        url.push_str(&format!("&timeout={timeout}"));
    }
    url
}

/// `host:port` of an `http://host:port` URL.
pub fn host_port(base: &str) -> &str {
    base.strip_prefix("http://").expect("an http:// URL")
}

/// Reads one HTTP response (head, then a Content-Length body, or up to EOF without one).
pub fn read_response(stream: &mut TcpStream) -> Resp {
    let mut reader = BufReader::new(stream);
    let mut resp = read_head(&mut reader);
    read_body(&mut reader, &mut resp);
    resp
}

/// Reads the status line and headers of a response; the body is left unread.
pub fn read_head(reader: &mut impl BufRead) -> Resp {
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .expect("a status line within the read timeout");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("a header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').expect("a header");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Resp {
        status,
        headers,
        body: Vec::new(),
    }
}

/// Reads the body of `resp`: Content-Length bytes, or up to EOF without a Content-Length.
pub fn read_body(reader: &mut impl BufRead, resp: &mut Resp) {
    match resp.header("content-length").map(|n| n.parse::<usize>()) {
        Some(Ok(length)) => {
            resp.body = vec![0; length];
            reader.read_exact(&mut resp.body).expect("the whole body");
        }
        _ => {
            reader
                .read_to_end(&mut resp.body)
                .expect("a body up to EOF");
        }
    }
}

/// Opens a connection with 30 s read and write timeouts.
pub fn connect(base: &str) -> TcpStream {
    let stream = TcpStream::connect(host_port(base)).expect("connect to the server");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Writes `request` as is on a fresh connection and reads the response.
pub fn raw(base: &str, request: &[u8]) -> Resp {
    let mut stream = connect(base);
    stream.write_all(request).expect("write the request");
    read_response(&mut stream)
}

/// A raw `POST /send_logs` with an exact Content-Length.
pub fn raw_post_answer(base: &str, camera: &str, body: &[u8]) -> Resp {
    let mut request = format!(
        "POST /send_logs?cameraId={camera} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        host_port(base),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw(base, &request)
}

/// Writes `request` (then, if `half_close`, shuts down the write side) and reads one response.
/// `None` means the server closed the connection without answering. Write errors are tolerated:
/// a server may answer and close before reading everything.
pub fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    half_close: bool,
    patience: Duration,
) -> Option<Resp> {
    let mut stream = TcpStream::connect(addr).expect("connect to the server");
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.set_write_timeout(Some(patience)).unwrap();
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    read_raw_response(&mut stream)
}

/// Reads one HTTP/1.1 response (head, then `Content-Length` bytes or up to EOF).
/// `None` if the connection ends (or times out) before a complete status line and head.
pub fn read_raw_response(stream: &mut TcpStream) -> Option<Resp> {
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_raw_head(&mut reader)?;
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).ok()?;
        }
        None => {
            let _ = reader.read_to_end(&mut body);
        }
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// Reads a response's status line and headers (names lower-cased); `None` if the connection
/// ends first.
pub fn read_raw_head(reader: &mut impl BufRead) -> Option<(u16, Vec<(String, String)>)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).ok()? == 0 {
        return None;
    }
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    Some((status, headers))
}

/// Percent-encodes the bytes that cannot appear raw in a request line (controls, space,
/// non-ASCII); everything else, including `%`, `#` and quotes, goes through as is.
pub fn request_line_safe(raw: &[u8]) -> String {
    let mut out = String::new();
    for &b in raw {
        if b <= b' ' || b >= 0x7F {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Servers and cameras
// ---------------------------------------------------------------------------------------------

/// An API server on 127.0.0.1:0 and the real cameras added with [`TestServer::add_camera`];
/// dropping it (also when a test fails) shuts the server down and stops them.
pub struct TestServer {
    server: Option<ApiServer>,
    cameras: Vec<CameraHandle>,
    pub url: String,
    pub addr: SocketAddr,
}

impl TestServer {
    pub fn start(config: ServerConfig) -> TestServer {
        quiet();
        let server = ApiServer::start(config).expect("the API server starts");
        let url = server.url();
        let addr = host_port(&url).parse().expect("a socket address");
        TestServer {
            server: Some(server),
            cameras: Vec::new(),
            url,
            addr,
        }
    }

    pub fn server(&self) -> &ApiServer {
        self.server.as_ref().expect("running")
    }

    pub fn registry(&self) -> &Arc<Registry> {
        self.server().registry()
    }

    pub fn stats(&self) -> RegistryStats {
        self.registry().stats()
    }

    /// Waits until `camera` has polled and counts as online.
    pub fn wait_for_camera(&self, camera: &str) {
        wait_until(&format!("camera '{camera}' is online"), PATIENCE, || {
            self.registry()
                .cameras(None, usize::MAX)
                .0
                .iter()
                .any(|c| c.camera_id == camera && c.online)
        });
    }

    pub fn wait_for_waiting(&self, n: usize) {
        wait_until(&format!("{n} calls are waiting"), PATIENCE, || {
            self.stats().waiting_requests == n
        });
    }

    /// Starts a real camera serving `events`, and waits until a `/logs` call to it succeeds
    /// (sent with `api_token`, if the server wants one).
    pub fn add_camera(
        &mut self,
        config: CameraConfig,
        events: &[LogEntry],
        api_token: Option<&str>,
    ) {
        let id = config.camera_id.clone();
        self.cameras.push(start_camera(config, events));
        self.wait_online(&id, api_token);
    }

    /// Waits until `GET /logs?cameraId=id` answers 200 (the camera has polled and answers).
    pub fn wait_online(&self, camera_id: &str, api_token: Option<&str>) {
        let agent = agent(Duration::from_secs(10));
        let url = format!("{}/logs?cameraId={camera_id}&timeout=5", self.url);
        wait_until(&format!("camera '{camera_id}' to answer"), PATIENCE, || {
            get_with(&agent, &url, api_token).status == 200
        });
    }

    pub fn camera(&self, i: usize) -> &CameraHandle {
        &self.cameras[i]
    }

    pub fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The server first: it answers the cameras' held polls at once, so they stop quickly.
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        for camera in self.cameras.drain(..) {
            camera.stop(Duration::from_secs(5));
        }
    }
}

/// The camera settings the tests use: no generated events, quick retries.
pub fn camera_config(base: &str, camera: &str) -> CameraConfig {
    CameraConfig {
        api_base_url: base.to_string(),
        camera_id: camera.to_string(),
        event_interval: None,
        poll_timeout: Duration::from_secs(60),
        backoff_max: Duration::from_secs(1),
        ..Default::default()
    }
}

/// A real camera serving `events`, as a bare handle (see also [`Camera`]).
pub fn start_camera(config: CameraConfig, events: &[LogEntry]) -> CameraHandle {
    let log = EventLog::in_memory(events.len().max(1) + 1000);
    for e in events {
        log.push(e.clone()).unwrap();
    }
    CameraHandle::start_with_log(config, Arc::new(log)).expect("start camera")
}

/// A server and one real camera `camera_id` serving `events`, polling already.
pub fn server_with_camera(
    config: ServerConfig,
    camera_id: &str,
    events: &[LogEntry],
) -> (TestServer, Camera) {
    let server = TestServer::start(config);
    let camera = Camera::start(&server.url, camera_id, events);
    server.wait_for_camera(camera_id);
    (server, camera)
}

/// A real in-process camera; stopped (without waiting) when dropped.
pub struct Camera {
    handle: Option<CameraHandle>,
    pub log: Arc<EventLog>,
}

impl Camera {
    pub fn start(base: &str, camera: &str, events: &[LogEntry]) -> Camera {
        Camera::start_with(camera_config(base, camera), events)
    }

    pub fn start_with(config: CameraConfig, events: &[LogEntry]) -> Camera {
        quiet();
        let log = Arc::new(EventLog::in_memory(1_000_000));
        for event in events {
            log.push(event.clone()).unwrap();
        }
        let handle =
            CameraHandle::start_with_log(config, Arc::clone(&log)).expect("the camera starts");
        Camera {
            handle: Some(handle),
            log,
        }
    }

    pub fn round_trips(&self) -> u64 {
        self.handle.as_ref().expect("running").round_trips()
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Its threads end on their own once their poll is answered (the server's shutdown
            // answers every poll at once).
            handle.stop(Duration::ZERO);
        }
    }
}

/// A camera written in the test: it polls with ureq, reports every `send_logs` command on
/// `commands`, and does whatever `on_command` says (answer, lie, or nothing). It stops polling
/// when dropped or told to, and when the server goes away.
pub struct FakeCamera {
    stop: Arc<AtomicBool>,
    pub commands: Receiver<Value>,
}

impl FakeCamera {
    pub fn start(
        base: &str,
        camera: &str,
        mut on_command: impl FnMut(&Value) + Send + 'static,
    ) -> FakeCamera {
        let stop = Arc::new(AtomicBool::new(false));
        let (commands_tx, commands) = unbounded();
        let poll_url = format!("{base}/poll_for_command?cameraId={camera}");
        let stopping = Arc::clone(&stop);
        thread::spawn(move || {
            let agent = agent(Duration::from_secs(60));
            while !stopping.load(Ordering::SeqCst) {
                let Ok(mut response) = agent.get(&poll_url).header("Connection", "close").call()
                else {
                    return;
                };
                if response.status().as_u16() != 200 {
                    return;
                }
                let Ok(command) = response.body_mut().read_json::<Value>() else {
                    return;
                };
                if command["command"] == "send_logs" {
                    let _ = commands_tx.send(command.clone());
                    on_command(&command);
                }
            }
        });
        FakeCamera { stop, commands }
    }

    /// Receives commands and never answers them.
    pub fn silent(base: &str, camera: &str) -> FakeCamera {
        FakeCamera::start(base, camera, |_| {})
    }

    /// Answers every command with all of `events`, in the given order, ignoring its bounds.
    pub fn answering_everything(base: &str, camera: &str, events: Vec<LogEntry>) -> FakeCamera {
        let (base_url, id) = (base.to_string(), camera.to_string());
        FakeCamera::start(base, camera, move |command| {
            let body = json!({"requestId": command["requestId"], "logs": events});
            let response = post_answer(&base_url, &id, &body);
            assert_eq!(response.status, 200, "{}", response.text());
        })
    }

    /// The next command, within the test's patience.
    pub fn next_command(&self) -> Value {
        self.commands
            .recv_timeout(PATIENCE)
            .expect("the fake camera received a command")
    }

    /// Stops after the poll in progress.
    pub fn stop_polling(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for FakeCamera {
    fn drop(&mut self) {
        self.stop_polling();
    }
}

// ---------------------------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------------------------

/// An HTTP relay between a real camera and the API server that reports every `send_logs` body on
/// `posts` and, while gated, holds each one until the test allows it through. It lets a test
/// decide exactly when a real camera's answer reaches the server.
pub struct Relay {
    pub url: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    permits: Option<Sender<()>>,
    pub posts: Receiver<Value>,
}

impl Relay {
    /// `gated`: every `send_logs` waits for [`Relay::allow_one`] or [`Relay::open_gate`].
    pub fn start(upstream: &str, gated: bool) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let (permits_tx, permits_rx) = unbounded::<()>();
        let (posts_tx, posts) = unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let upstream = upstream.to_string();
        thread::spawn(move || {
            for connection in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(connection) = connection else { continue };
                let (upstream, permits, posts) =
                    (upstream.clone(), permits_rx.clone(), posts_tx.clone());
                thread::spawn(move || relay_one(connection, &upstream, &permits, &posts));
            }
        });
        Relay {
            url: format!("http://{addr}"),
            addr,
            stop,
            permits: gated.then_some(permits_tx),
            posts,
        }
    }

    pub fn allow_one(&self) {
        if let Some(permits) = &self.permits {
            permits.send(()).unwrap();
        }
    }

    /// Lets every held and future answer through.
    pub fn open_gate(&mut self) {
        self.permits.take();
    }

    pub fn next_post(&self) -> Value {
        self.posts
            .recv_timeout(PATIENCE)
            .expect("the camera posted an answer")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.permits.take();
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn relay_one(
    mut connection: TcpStream,
    upstream: &str,
    permits: &Receiver<()>,
    posts: &Sender<Value>,
) {
    let _ = connection.set_read_timeout(Some(Duration::from_secs(60)));
    let Some((method, target, body)) = read_request(&mut connection) else {
        return;
    };
    if method == "POST" && target.starts_with("/send_logs") {
        let _ = posts.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
        // A permit, or the gate opened (sender dropped): either way, go on.
        let _ = permits.recv();
    }
    let agent = agent(Duration::from_secs(60));
    let url = format!("{upstream}{target}");
    let result = if method == "POST" {
        agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
    } else {
        agent.get(&url).call()
    };
    let (status, body) = match result {
        Ok(response) => {
            let response = from_ureq(response);
            (response.status, response.body)
        }
        Err(e) => (
            502,
            json!({"error": e.to_string()}).to_string().into_bytes(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status} Relayed\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = connection.write_all(head.as_bytes());
    let _ = connection.write_all(&body);
}

/// Reads one request: method, target and a Content-Length body.
fn read_request(connection: &mut TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut reader = BufReader::new(connection);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, target, body))
}

// ---------------------------------------------------------------------------------------------
// The built binaries as child processes
// ---------------------------------------------------------------------------------------------

/// A child process that is killed and reaped when dropped; its stderr is captured line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    drain: Option<JoinHandle<()>>,
    reaped: bool,
    /// Started as the leader of its own process group, whose members are stopped with it.
    group: bool,
}

impl Proc {
    /// Starts `program` with exactly `envs` as its environment.
    pub fn spawn(name: &str, program: &str, envs: &[(&str, String)]) -> Proc {
        Proc::spawn_args(name, program, &[], envs)
    }

    /// Starts `program` with `args` and exactly `envs` as its environment.
    pub fn spawn_args(name: &str, program: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
        Proc::start(name, program, args, envs, false)
    }

    /// Like [`Proc::spawn_args`], for a program that forks workers (nginx): it leads a process
    /// group of its own, and stopping it stops the whole group. Killing only the leader would
    /// leave its workers serving, and holding the stderr pipe open for ever.
    pub fn spawn_group(name: &str, program: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
        Proc::start(name, program, args, envs, true)
    }

    fn start(
        name: &str,
        program: &str,
        args: &[&str],
        envs: &[(&str, String)],
        group: bool,
    ) -> Proc {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(program);
        if group {
            command.process_group(0);
        }
        command
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let drain = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(line) => {
                        if std::env::var_os("CAMERA_LOGS_TEST_LOG").is_some() {
                            eprintln!("[child] {line}");
                        }
                        sink.lock().push(line)
                    }
                    Err(_) => break,
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines,
            drain: Some(drain),
            reaped: false,
            group,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stderr line so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.lines.lock().clone()
    }

    pub fn stderr_len(&self) -> usize {
        self.lines.lock().len()
    }

    pub fn stderr_text(&self) -> String {
        self.lines.lock().join("\n")
    }

    /// Whether the process has exited (and reaps it if so).
    pub fn exited(&mut self) -> bool {
        if self.reaped {
            return true;
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            self.reaped = true;
            self.join_drain();
        }
        self.reaped
    }

    /// SIGKILL, then reap; the stderr captured so far stays readable. A group leader's group
    /// gets SIGTERM first (nginx's fast shutdown, which ends its workers), and SIGKILL if it is
    /// still there after a few seconds.
    pub fn kill(&mut self) {
        if !self.reaped {
            if self.group {
                self.signal_group("TERM");
                let deadline = Instant::now() + Duration::from_secs(5);
                while !self.exited() && Instant::now() < deadline {
                    thread::sleep(POLL_EVERY);
                }
                self.signal_group("KILL");
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
        self.join_drain();
    }

    /// Sends `signal` to this process's group (only for a group leader this harness started).
    fn signal_group(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{}", self.pid())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn join_drain(&mut self) {
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
    }

    /// User plus system CPU time so far, from /proc/PID/stat (fields 14 and 15, 100 Hz ticks).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read /proc/PID/stat");
        // The command name (field 2) may hold spaces; fields after it are plain.
        let after_name = &stat[stat.rfind(')').expect("stat format") + 1..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // fields[0] is field 3 (state), so field N is fields[N - 3].
        let utime: u64 = fields[14 - 3].parse().unwrap();
        let stime: u64 = fields[15 - 3].parse().unwrap();
        Duration::from_millis((utime + stime) * 10)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `api` binary, listening on 127.0.0.1.
pub struct ApiProc {
    pub proc: Proc,
    pub url: String,
    pub port: u16,
}

/// Starts the `api` binary with `HOST=127.0.0.1`, `PORT=port` and `envs`, and waits for its
/// "listening" line. `Err` (with its stderr) if it exits first, e.g. when the port is taken.
pub fn try_start_api(port: u16, envs: &[(&str, String)]) -> Result<ApiProc, String> {
    let mut all: Vec<(&str, String)> = vec![
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", port.to_string()),
    ];
    all.extend(envs.iter().cloned());
    let mut proc = Proc::spawn("api", env!("CARGO_BIN_EXE_api"), &all);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let found = proc.stderr_lines().iter().find_map(|line| {
            line.split("API server listening on http://")
                .nth(1)
                .map(|addr| addr.trim().to_string())
        });
        if let Some(addr) = found {
            let port = addr
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port in the listening line");
            return Ok(ApiProc {
                url: format!("http://{addr}"),
                port,
                proc,
            });
        }
        if proc.exited() {
            return Err(proc.stderr_text());
        }
        assert!(
            Instant::now() < deadline,
            "api did not report listening within {PATIENCE:?}; stderr:\n{}",
            proc.stderr_text()
        );
        thread::sleep(POLL_EVERY);
    }
}

pub fn start_api(envs: &[(&str, String)]) -> ApiProc {
    try_start_api(0, envs).unwrap_or_else(|stderr| panic!("api exited at start:\n{stderr}"))
}

/// Starts the `camera` binary with `API_BASE_URL=url` and `envs`.
pub fn start_camera_bin(url: &str, envs: &[(&str, String)]) -> Proc {
    let mut all: Vec<(&str, String)> = vec![("API_BASE_URL", url.to_string())];
    all.extend(envs.iter().cloned());
    Proc::spawn("camera", env!("CARGO_BIN_EXE_camera"), &all)
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("camera-logs-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This process's threads by name (from /proc/self/task), for diagnosing thread-count checks.
pub fn thread_names() -> std::collections::BTreeMap<String, usize> {
    let mut names = std::collections::BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            *names.entry(name.trim().to_string()).or_insert(0) += 1;
        }
    }
    names
}

/// Threads of this process that carry the calling thread's name. Linux gives a new thread its
/// creator's name unless it is named, so for a test these are the test's own thread and every
/// unnamed thread started on its behalf (tiny_http's accept and connection-pool threads of a
/// server the test started, its unnamed helper threads), and none of a parallel test's.
pub fn threads_named_as_current() -> usize {
    let me = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| std::fs::read_to_string(task.path().join("comm")).ok() == Some(me.clone()))
        .count()
}

/// Connections to local `port` in state ESTABLISHED or CLOSE_WAIT, from /proc/net/tcp{,6}.
pub fn open_connections(port: u16) -> usize {
    let mut total = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        total += text
            .lines()
            .skip(1)
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port = fields
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|hex| u16::from_str_radix(hex, 16).ok());
                local_port == Some(port) && matches!(fields.get(3), Some(&"01" | &"08"))
            })
            .count();
    }
    total
}
