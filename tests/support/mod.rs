//! Helpers shared by tests/faults.rs and tests/hostile.rs: in-process systems (server and
//! cameras) that shut down when dropped, the built binaries as child processes that are killed
//! and reaped when dropped (with their stderr captured line by line), HTTP over ureq and over raw
//! TCP, a seeded xorshift generator, fixture events, and `wait_until`, which polls a condition
//! with a short interval and a generous deadline instead of sleeping.
//!
//! Set `CAMERA_LOGS_TEST_LOG=1` to see the in-process server's and cameras' log lines.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use camera_logs::event_log::EventLog;
use camera_logs::protocol::LogEntry;
use camera_logs::{ApiServer, CameraConfig, CameraHandle, ServerConfig};
use parking_lot::Mutex;
use serde_json::Value;

/// Generous bound for anything a test waits for (CI shares two cores).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How often `wait_until` looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// A realistic epoch second; fixture timestamps are `T0 + k / 4`, exact in an f64.
pub const T0: f64 = 1_700_000_000.0;

/// Silences the library's log lines (they go straight to stderr) unless asked for.
pub fn quiet() {
    if std::env::var_os("CAMERA_LOGS_TEST_LOG").is_none() {
        camera_logs::log::set_enabled(false);
    }
}

/// Polls `probe` every [`POLL_EVERY`] until it returns `Some`, or panics after `patience`.
pub fn wait_until<T>(what: &str, patience: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {patience:?} waiting for {what}"
        );
        thread::sleep(POLL_EVERY);
    }
}

/// Like [`wait_until`], for conditions that can say what is still missing: panics with the
/// last `Err` after `patience`.
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
pub struct StopOnDrop(pub std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Reproducible randomness

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
// Events

pub fn entry(timestamp: f64, description: &str) -> LogEntry {
    LogEntry {
        timestamp,
        description: description.to_string(),
    }
}

/// The timestamp of fixture event `k`.
pub fn ts(k: usize) -> f64 {
    T0 + k as f64 * 0.25
}

/// `n` events at `ts(0) .. ts(n-1)`, stored in a scrambled (but fixed) order.
pub fn fixture(n: usize) -> Vec<LogEntry> {
    let mut events: Vec<LogEntry> = (0..n)
        .map(|k| entry(ts(k), &format!("event {k}")))
        .collect();
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    for i in (1..events.len()).rev() {
        let j = rng.below(i + 1);
        events.swap(i, j);
    }
    events
}

/// What `/logs` must return for `[start, end]` (inclusive), ascending; computed independently.
pub fn expected(events: &[LogEntry], start: Option<f64>, end: Option<f64>) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = events
        .iter()
        .filter(|e| start.is_none_or(|s| s <= e.timestamp) && end.is_none_or(|x| e.timestamp <= x))
        .cloned()
        .collect();
    out.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
    out
}

/// The `logs` array of a `/logs` answer as entries.
pub fn logs_of(body: &Value) -> Vec<LogEntry> {
    serde_json::from_value(body["logs"].clone())
        .unwrap_or_else(|e| panic!("not a /logs answer ({e}): {body}"))
}

// ---------------------------------------------------------------------------------------------
// HTTP through ureq

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(500)])
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(500)]).into_owned()
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
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build(),
    )
}

fn finish(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>, what: &str) -> Resp {
    let mut response = result.unwrap_or_else(|e| panic!("{what}: {e}"));
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_vec()
        .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
    Resp {
        status: response.status().as_u16(),
        headers,
        body,
    }
}

/// `GET url`, optionally with `Authorization: Bearer <token>`. Panics on a transport error.
pub fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Resp {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    finish(request.call(), &format!("GET {url}"))
}

/// `GET url` that reports a transport error (connection refused, reset) as `None`.
pub fn try_get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Option<Resp> {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().ok()?;
    let body = response.body_mut().read_to_vec().ok()?;
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    Some(Resp {
        status: response.status().as_u16(),
        headers,
        body,
    })
}

/// `POST url` with a JSON body. Panics on a transport error.
pub fn post(agent: &ureq::Agent, url: &str, body: &[u8], token: Option<&str>) -> Resp {
    let mut request = agent.post(url).header("Content-Type", "application/json");
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    finish(request.send(body), &format!("POST {url}"))
}

// ---------------------------------------------------------------------------------------------
// HTTP over raw TCP, for what a well-behaved client cannot send

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn into_resp(self) -> Resp {
        Resp {
            status: self.status,
            headers: self.headers,
            body: self.body,
        }
    }
}

/// Writes `request` (then, if `half_close`, shuts down the write side) and reads one response.
/// `None` means the server closed the connection without answering. Write errors are tolerated:
/// a server may answer and close before reading everything.
pub fn raw_exchange(
    addr: SocketAddr,
    request: &[u8],
    half_close: bool,
    patience: Duration,
) -> Option<RawResponse> {
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
pub fn read_raw_response(stream: &mut TcpStream) -> Option<RawResponse> {
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_raw_head(&mut reader)?;
    let length = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
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
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

/// Reads a response's status line and headers; `None` if the connection ends first.
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
            headers.push((name.trim().to_string(), value.trim().to_string()));
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
// In-process systems

/// A camera for tests: in-process, fixed events, no generated ones, quick to reconnect.
pub fn camera_config(url: &str, camera_id: &str) -> CameraConfig {
    CameraConfig {
        api_base_url: url.to_string(),
        camera_id: camera_id.to_string(),
        event_interval: None,
        poll_timeout: Duration::from_secs(20),
        backoff_max: Duration::from_secs(1),
        ..CameraConfig::default()
    }
}

pub fn start_camera(config: CameraConfig, events: &[LogEntry]) -> CameraHandle {
    let log = EventLog::in_memory(events.len().max(1) + 1000);
    for e in events {
        log.push(e.clone()).unwrap();
    }
    CameraHandle::start_with_log(config, Arc::new(log)).expect("start camera")
}

/// An in-process server and its cameras; dropping it shuts the server down and stops them.
pub struct System {
    server: Option<ApiServer>,
    cameras: Vec<CameraHandle>,
    pub url: String,
    pub addr: SocketAddr,
}

impl System {
    pub fn start(config: ServerConfig) -> System {
        quiet();
        let server = ApiServer::start(config).expect("start the API server");
        let url = server.url();
        let addr = url.trim_start_matches("http://").parse().unwrap();
        System {
            server: Some(server),
            cameras: Vec::new(),
            url,
            addr,
        }
    }

    pub fn server(&self) -> &ApiServer {
        self.server.as_ref().unwrap()
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
            (get(&agent, &url, api_token).status == 200).then_some(())
        });
    }

    pub fn camera(&self, i: usize) -> &CameraHandle {
        &self.cameras[i]
    }
}

impl Drop for System {
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

// ---------------------------------------------------------------------------------------------
// The built binaries as child processes

/// A child process that is killed and reaped when dropped; its stderr is captured line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    drain: Option<JoinHandle<()>>,
    reaped: bool,
}

impl Proc {
    /// Starts `program` with exactly `envs` as its environment.
    pub fn spawn(name: &str, program: &str, envs: &[(&str, String)]) -> Proc {
        let mut command = Command::new(program);
        command
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

    /// SIGKILL, then reap; the stderr captured so far stays readable.
    pub fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
        self.join_drain();
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
