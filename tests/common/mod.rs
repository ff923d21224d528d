//! Helpers shared by the integration tests: a server on 127.0.0.1:0 that shuts down when dropped,
//! real cameras with known events, fake cameras written with ureq, a relay that can hold a
//! camera's answers back, HTTP helpers that check every response is JSON, and `wait_until`.
//!
//! Set `CAMERA_LOGS_TEST_LOG=1` to see the server's and the cameras' log lines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use camera_logs::event_log::EventLog;
use camera_logs::protocol::{LogEntry, LogsResponse};
use camera_logs::registry::{Registry, RegistryStats};
use camera_logs::{ApiServer, CameraConfig, CameraHandle, ServerConfig};
use crossbeam_channel::{unbounded, Receiver, Sender};
use serde_json::{json, Value};

/// A realistic epoch second; every fixture timestamp is `T0 + k / 4`, exact in an f64.
pub const T0: f64 = 1_700_000_000.0;

/// Generous bound for anything the tests wait for (CI shares two cores).
pub const PATIENCE: Duration = Duration::from_secs(30);

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

/// Polls `condition` every 10 ms until it holds; panics naming `what` after `within`.
pub fn wait_until(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(10));
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

fn from_ureq(mut response: ureq::http::Response<ureq::Body>) -> Resp {
    let status = response.status().as_u16();
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
    let body = response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_vec()
        .expect("a readable body");
    Resp {
        status,
        headers,
        body,
    }
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

// ---------------------------------------------------------------------------------------------
// Servers and cameras
// ---------------------------------------------------------------------------------------------

/// An API server on 127.0.0.1:0, shut down when dropped (also when a test fails).
pub struct TestServer {
    server: Option<ApiServer>,
    pub url: String,
}

impl TestServer {
    pub fn start(config: ServerConfig) -> TestServer {
        quiet();
        let server = ApiServer::start(config).expect("the API server starts");
        let url = server.url();
        TestServer {
            server: Some(server),
            url,
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
                .cameras()
                .iter()
                .any(|c| c.camera_id == camera && c.online)
        });
    }

    pub fn wait_for_waiting(&self, n: usize) {
        wait_until(&format!("{n} calls are waiting"), PATIENCE, || {
            self.stats().waiting_requests == n
        });
    }

    pub fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
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
