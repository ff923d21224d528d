//! `loadtest`: drives a real API server over loopback with simulated cameras and `/logs`
//! clients, checks every answer against the events the cameras are known to hold, and prints
//! one summary (a table, or one JSON object with `--json`).
//!
//! What this tool owns:
//! - Starting the `api` binary that sits next to it (HOST=127.0.0.1 PORT=0), learning its port
//!   from its stderr, draining that stderr, sampling its /proc status, and killing it at the end.
//!   With `--target URL` it drives a server that is already running instead; with
//!   `--instances` as well, that is an edge in front of several servers, each asked directly
//!   how many of this run's cameras it holds.
//! - Simulated cameras: one small-stack thread each, speaking the wire protocol over raw
//!   std::net HTTP/1.1 (`Connection: close`, as the real camera does), holding `--events`
//!   events whose timestamps are a pure function of (camera, index), so every answer can be
//!   checked without storing anything.
//! - Clients: keep-alive ureq agents calling `GET /logs` for random cameras and random ranges
//!   (open on either side, bounds on and between events) and comparing each 200 with the exact
//!   expected subset, computed here independently of the server's own range code.
//! - The idle-scale ramp (`--idle-ramp`): cameras added in steps, with a checked `/logs` probe
//!   and the server's memory and threads after each step, until the target or the first failure.
//!
//! It never changes the server's code or configuration beyond the environment it starts it with.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::ops::Range;
use std::process::{Child, ChildStderr, Command as Process, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use camera_logs::protocol::{CamerasResponse, Command, LogEntry, LogsResponse, SendLogsBody};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde::Serialize;

const USAGE: &str = "\
loadtest: drive a camera-logs API server with simulated cameras and /logs clients, check every
answer, and print one summary.

Usage: loadtest [options]

Options:
  --cameras N       simulated cameras (default 1; with --idle-ramp: the target maximum)
  --clients M       concurrent /logs clients (default 1)
  --duration SECS   how long the clients call, after every camera is online (default 10)
  --events K        events each simulated camera holds (default 100)
  --target URL      drive an already running server (http://HOST:PORT) instead of starting
                    the `api` binary found next to this executable
  --instances URLS  with --target an edge in front of several servers: their own http://
                    roots, comma-separated, asked directly which cameras are online (through
                    an edge, /cameras lists one server's cameras only)
  --hold SECS       POLL_HOLD_SECS for the api this tool starts (not with --target)
  --idle-ramp       connect cameras in steps up to --cameras, probe /logs after each step, and
                    report the server's memory and threads; stops at the first failure
  --step N          cameras added per --idle-ramp step (default 500)
  --json            print the summary as one JSON object on stdout instead of a table
  -h, --help        this text

The api it starts inherits this environment (so any server setting can be given there), with
HOST=127.0.0.1 and PORT=0; MAX_CONNECTIONS, when not set, is raised to fit the cameras and clients.
Progress goes to stderr; the summary to stdout.

Exit status: 0 when every call that should succeed did and every answer was right (with
--idle-ramp: when the target was reached), 1 otherwise, 2 for bad options.
";

/// Simulated camera threads only parse small JSON and format requests.
const CAMERA_STACK: usize = 64 * 1024;
/// Client threads run ureq and serde_json on whole answers.
const CLIENT_STACK: usize = 512 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds one long poll on the camera side; the server answers within its POLL_HOLD_SECS.
const POLL_READ_TIMEOUT: Duration = Duration::from_secs(120);
const POST_READ_TIMEOUT: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a camera waits for the server to close a `Connection: close` exchange, so that the
/// TIME_WAIT lands on the server's side and the tool does not run out of ephemeral ports.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT_SECS: u64 = 10;
/// Idle keep-alive connections are dropped before the server's 10 s header timeout closes them.
const CLIENT_MAX_IDLE: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_HEADER_LINE: u64 = 16 * 1024;
const CAMERA_BACKOFF_START: Duration = Duration::from_millis(50);
const CAMERA_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Event `i` of camera `c` is at `EVENT_BASE + i * EVENT_SPACING + c * CAMERA_OFFSET`.
const EVENT_BASE: f64 = 1_700_000_000.0;
const EVENT_SPACING: f64 = 10.0;
const CAMERA_OFFSET: f64 = 0.001;

/// Cameras are started this many at a time...
const RAMP_BATCH: usize = 50;
/// ...and no more than this many may be started but not yet connected, so the listen backlog
/// never overflows.
const RAMP_AHEAD: usize = 200;
const RAMP_BATCH_WAIT: Duration = Duration::from_secs(2);
/// Waiting for cameras to come online gives up after this long without progress.
const NO_PROGRESS_LIMIT: Duration = Duration::from_secs(15);
const ONLINE_CHECK_EVERY: Duration = Duration::from_millis(200);
/// After cameras come online, memory is measured once the server has settled.
const SETTLE: Duration = Duration::from_millis(300);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
const CAMERA_STOP_GRACE: Duration = Duration::from_secs(2);
const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Problems kept verbatim for the summary.
const KEPT_PROBLEMS: usize = 5;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(options)) => options,
        Err(message) => {
            eprintln!("loadtest: {message}\nRun 'loadtest --help' for the options.");
            return ExitCode::from(2);
        }
    };
    let outcome = if options.idle_ramp {
        run_idle_ramp(&options)
    } else {
        run_load(&options)
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("loadtest: {message}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Options {
    cameras: usize,
    clients: usize,
    duration: Duration,
    events: usize,
    target: Option<String>,
    /// `--instances`: the servers behind a `--target` edge, each `http://host:port`.
    instances: Vec<String>,
    /// As the user typed it (already checked), passed on as POLL_HOLD_SECS.
    hold: Option<String>,
    json: bool,
    idle_ramp: bool,
    step: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cameras: 1,
            clients: 1,
            duration: Duration::from_secs(10),
            events: 100,
            target: None,
            instances: Vec::new(),
            hold: None,
            json: false,
            idle_ramp: false,
            step: 500,
        }
    }
}

enum Parsed {
    Help,
    Run(Options),
}

fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut options = Options::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline): (&str, Option<&str>) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            match inline {
                Some(v) => Ok(v.to_string()),
                None => rest
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--cameras" => options.cameras = parse_count(flag, &value()?)?,
            "--clients" => options.clients = parse_count(flag, &value()?)?,
            "--events" => options.events = parse_count(flag, &value()?)?,
            "--step" => options.step = parse_count(flag, &value()?)?,
            "--duration" => options.duration = parse_seconds(flag, &value()?)?,
            "--hold" => {
                let raw = value()?;
                parse_seconds(flag, &raw)?;
                options.hold = Some(raw.trim().to_string());
            }
            "--target" => {
                let raw = value()?;
                Endpoint::from_url(&raw)?;
                options.target = Some(raw);
            }
            "--instances" => {
                for raw in value()?.split(',').filter(|s| !s.trim().is_empty()) {
                    options.instances.push(Endpoint::from_url(raw.trim())?.base);
                }
            }
            "--json" | "--idle-ramp" if inline.is_some() => {
                return Err(format!("{flag} takes no value"))
            }
            "--json" => options.json = true,
            "--idle-ramp" => options.idle_ramp = true,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if options.target.is_none() && !options.instances.is_empty() {
        return Err(
            "--instances names the servers behind a --target edge; give --target too".into(),
        );
    }
    if options.target.is_some() && options.hold.is_some() {
        return Err("--hold sets the hold of the api this tool starts; it cannot change a --target server (set POLL_HOLD_SECS there)".into());
    }
    Ok(Parsed::Run(options))
}

fn parse_count(flag: &str, raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{flag} must be a whole number greater than 0; got {raw:?}"
        )),
    }
}

fn parse_seconds(flag: &str, raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{flag} must be a number of seconds greater than 0 and at most 86400; got {raw:?}"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Where the server is

/// A server address in the three forms the tool needs.
#[derive(Debug, Clone)]
struct Endpoint {
    /// `http://host:port`, for ureq.
    base: String,
    /// For the raw camera connections.
    addr: SocketAddr,
    /// The `Host` header of the raw requests.
    host: String,
}

impl Endpoint {
    fn from_url(raw: &str) -> Result<Endpoint, String> {
        let url =
            url::Url::parse(raw).map_err(|e| format!("--target {raw:?} is not a URL: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!(
                "--target must be an http:// URL (the simulated cameras speak plain HTTP); got {raw:?}"
            ));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!(
                "--target must be the server's root, like http://127.0.0.1:8080; got {raw:?}"
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("--target {raw:?} has no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}:{port}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}:{port} resolves to no address"))?;
        Ok(Endpoint {
            base: format!("http://{host}:{port}"),
            addr,
            host: format!("{host}:{port}"),
        })
    }

    fn from_addr(addr: SocketAddr) -> Endpoint {
        Endpoint {
            base: format!("http://{addr}"),
            addr,
            host: addr.to_string(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The api process this tool starts

/// What the server wrote to stderr, beyond its address.
#[derive(Default)]
struct ServerLog {
    warnings: AtomicU64,
    errors: AtomicU64,
    /// The last WARN/ERROR lines.
    recent_problems: Mutex<VecDeque<String>>,
    /// The last lines of any kind, to explain a failed start.
    tail: Mutex<VecDeque<String>>,
}

impl ServerLog {
    fn take_line(&self, line: &str) {
        push_bounded(&mut self.tail.lock(), line.to_string(), 10);
        let level = line.split_whitespace().nth(1).unwrap_or("");
        let counter = match level {
            "WARN" => &self.warnings,
            "ERROR" => &self.errors,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        push_bounded(
            &mut self.recent_problems.lock(),
            line.to_string(),
            KEPT_PROBLEMS,
        );
    }
}

fn push_bounded(queue: &mut VecDeque<String>, line: String, max: usize) {
    if queue.len() == max {
        queue.pop_front();
    }
    queue.push_back(line);
}

/// The `api` child. Dropping it kills it, so no exit path leaves a server behind.
struct ServerProcess {
    child: Child,
    pid: u32,
    log: Arc<ServerLog>,
    max_connections: Option<usize>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `api` from this executable's directory and waits for its listening line.
    fn start(options: &Options) -> Result<(ServerProcess, Endpoint), String> {
        let api = api_binary()?;
        let mut command = Process::new(&api);
        command
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(hold) = &options.hold {
            command.env("POLL_HOLD_SECS", hold);
        }
        let max_connections = connections_needed(options);
        if let Some(max) = max_connections {
            command.env("MAX_CONNECTIONS", max.to_string());
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", api.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take();
        let log = Arc::new(ServerLog::default());
        let mut process = ServerProcess {
            child,
            pid,
            log: Arc::clone(&log),
            max_connections,
        };
        let stderr = stderr.ok_or("the api's stderr was not captured")?;
        let (addr_tx, addr_rx) = bounded::<SocketAddr>(1);
        std::thread::Builder::new()
            .name("api-stderr".into())
            .stack_size(CLIENT_STACK)
            .spawn(move || drain_stderr(stderr, &log, addr_tx))
            .map_err(|e| format!("cannot start the stderr reader: {e}"))?;
        match addr_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => Ok((process, Endpoint::from_addr(addr))),
            Err(_) => {
                let exited = process.exited().unwrap_or_default();
                let tail: Vec<String> = process.log.tail.lock().iter().cloned().collect();
                Err(format!(
                    "{} did not report 'API server listening on http://ADDR' within {} s{}; its last lines:\n  {}",
                    api.display(),
                    STARTUP_TIMEOUT.as_secs(),
                    if exited.is_empty() { String::new() } else { format!(" ({exited})") },
                    tail.join("\n  ")
                ))
            }
        }
    }

    /// `Some(description)` once the process has ended.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("the api server exited: {status}")),
            Ok(None) => None,
            Err(e) => Some(format!("cannot check the api server: {e}")),
        }
    }
}

fn api_binary() -> Result<std::path::PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this executable's path: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let api = dir.join(format!("api{}", std::env::consts::EXE_SUFFIX));
    if api.is_file() {
        Ok(api)
    } else {
        Err(format!(
            "no api binary at {} (build both: cargo build --release --bin api --bin loadtest), or pass --target URL",
            api.display()
        ))
    }
}

/// MAX_CONNECTIONS for the api, when the environment does not set it and the default is short.
fn connections_needed(options: &Options) -> Option<usize> {
    if std::env::var_os("MAX_CONNECTIONS").is_some() {
        return None;
    }
    // A camera holds one connection, briefly two while it answers; clients hold one each.
    let needed = options.cameras + options.cameras / 4 + options.clients + 64;
    (needed > DEFAULT_MAX_CONNECTIONS).then_some(needed)
}

/// Reads the api's stderr to its end: finds the listening address, counts warnings and errors.
fn drain_stderr(stderr: ChildStderr, log: &ServerLog, addr_tx: Sender<SocketAddr>) {
    const MARKER: &str = "API server listening on http://";
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    let mut found = false;
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end();
        log.take_line(line);
        if found {
            continue;
        }
        let addr = line
            .split_once(MARKER)
            .and_then(|(_, rest)| rest.trim().parse::<SocketAddr>().ok());
        if let Some(addr) = addr {
            found = true;
            let _ = addr_tx.send(addr);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc sampling of the api process

#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcSample {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
}

fn read_proc_status(pid: u32) -> Option<ProcSample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Some(ProcSample {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        threads: field("Threads:")?,
    })
}

#[derive(Debug, Clone, Copy, Default)]
struct SampledFigures {
    latest: ProcSample,
    peak_threads: u64,
}

/// Samples the api's /proc status every 100 ms on its own thread until dropped.
struct Sampler {
    pid: u32,
    figures: Arc<Mutex<SampledFigures>>,
    _stop: Sender<()>,
}

impl Sampler {
    fn start(pid: u32) -> Result<Sampler, String> {
        let figures = Arc::new(Mutex::new(SampledFigures::default()));
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let shared = Arc::clone(&figures);
        std::thread::Builder::new()
            .name("proc-sampler".into())
            .stack_size(CLIENT_STACK)
            .spawn(move || sample_until_stopped(pid, &shared, &stop_rx))
            .map_err(|e| format!("cannot start the /proc sampler: {e}"))?;
        Ok(Sampler {
            pid,
            figures,
            _stop: stop_tx,
        })
    }

    /// A fresh reading (and the peaks so far).
    fn now(&self) -> SampledFigures {
        let mut figures = self.figures.lock();
        if let Some(sample) = read_proc_status(self.pid) {
            record_sample(&mut figures, sample);
        }
        *figures
    }
}

fn sample_until_stopped(pid: u32, figures: &Mutex<SampledFigures>, stop: &Receiver<()>) {
    loop {
        if let Some(sample) = read_proc_status(pid) {
            record_sample(&mut figures.lock(), sample);
        }
        match stop.recv_timeout(SAMPLE_EVERY) {
            Err(RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

fn record_sample(figures: &mut SampledFigures, sample: ProcSample) {
    figures.latest = sample;
    figures.peak_threads = figures.peak_threads.max(sample.threads);
}

// ---------------------------------------------------------------------------------------------
// The events every simulated camera holds, as a pure function

/// The events of one camera: `count` of them, known to the camera and to every client.
#[derive(Debug, Clone, Copy)]
struct EventSet {
    camera: usize,
    count: usize,
}

impl EventSet {
    fn timestamp(&self, i: usize) -> f64 {
        EVENT_BASE + i as f64 * EVENT_SPACING + self.camera as f64 * CAMERA_OFFSET
    }

    fn entry(&self, i: usize) -> LogEntry {
        LogEntry {
            timestamp: self.timestamp(i),
            description: format!("camera {} event {i}", self.camera),
        }
    }

    /// Every event within the inclusive bounds, ascending (`None`: open on that side).
    fn within(&self, start: Option<f64>, end: Option<f64>) -> Vec<LogEntry> {
        (0..self.count)
            .filter(|&i| {
                let t = self.timestamp(i);
                start.is_none_or(|s| s <= t) && end.is_none_or(|e| t <= e)
            })
            .map(|i| self.entry(i))
            .collect()
    }
}

fn camera_id(prefix: &str, index: usize) -> String {
    format!("{prefix}{index}")
}

/// Ids unique to this run, so a --target server's other cameras are never counted or called.
fn camera_prefix() -> String {
    format!("lt{}-", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 for the cameras

struct RawResponse {
    status: u16,
    body: Vec<u8>,
}

/// Sends one request on a fresh connection with `Connection: close` and reads the answer.
fn raw_exchange(
    stream: TcpStream,
    request: &[u8],
    read_timeout: Duration,
) -> Result<RawResponse, String> {
    stream
        .set_read_timeout(Some(read_timeout))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("cannot configure the socket: {e}"))?;
    (&stream)
        .write_all(request)
        .map_err(|e| format!("cannot send the request: {}", describe_io(&e)))?;
    let mut reader = BufReader::with_capacity(4096, stream);
    let response = read_response(&mut reader)?;
    wait_for_close(reader.get_ref());
    Ok(response)
}

fn read_response(reader: &mut BufReader<TcpStream>) -> Result<RawResponse, String> {
    let status_line = read_line(reader)?;
    let status = parse_status_line(&status_line)?;
    let mut content_length: Option<usize> = None;
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("malformed header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length = value
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(format!("unsupported Transfer-Encoding {value:?}"));
        }
    }
    let body = match content_length {
        Some(length) if length > MAX_BODY => {
            return Err(format!("response body of {length} bytes is too large"))
        }
        Some(length) => {
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("truncated response body: {}", describe_io(&e)))?;
            body
        }
        None => {
            let mut body = Vec::new();
            reader
                .by_ref()
                .take(MAX_BODY as u64)
                .read_to_end(&mut body)
                .map_err(|e| format!("cannot read the response body: {}", describe_io(&e)))?;
            body
        }
    };
    Ok(RawResponse { status, body })
}

fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_HEADER_LINE)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the response: {}", describe_io(&e)))?;
    if read == 0 {
        return Err("the server closed the connection without a complete response".into());
    }
    if !line.ends_with(b"\n") {
        return Err("response head line too long or cut off".into());
    }
    let text = String::from_utf8(line).map_err(|_| "response head is not UTF-8".to_string())?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(status) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(format!("malformed status line {line:?}")),
    }
}

/// Reads until the server closes (it does after a `Connection: close` answer), briefly.
fn wait_for_close(stream: &TcpStream) {
    if stream.set_read_timeout(Some(CLOSE_WAIT)).is_err() {
        return;
    }
    let mut scratch = [0u8; 256];
    let mut reader = stream;
    for _ in 0..16 {
        match reader.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn describe_io(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => error.to_string(),
    }
}

fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 200 {
        let cut: String = text.chars().take(200).collect();
        format!("{cut}…")
    } else {
        text.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Simulated cameras

/// State shared by every simulated camera of one run.
struct Fleet {
    endpoint: Endpoint,
    prefix: String,
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
struct FleetCounts {
    polls: u64,
    commands: u64,
    round_trips: u64,
    connect_retries: u64,
    poll_errors: u64,
    post_errors: u64,
}

/// One failed step of a camera; the connect kind is retried without counting as an error.
enum CameraError {
    Connect(String),
    Poll(String),
    Post(String),
}

impl Fleet {
    fn new(endpoint: Endpoint, prefix: String, events: usize) -> Arc<Fleet> {
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

    fn counts(&self) -> FleetCounts {
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
    fn trouble(&self) -> String {
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
    fn spawn_cameras(self: &Arc<Self>, indices: Range<usize>) -> Result<(), String> {
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
        let spawned = std::thread::Builder::new()
            .stack_size(CAMERA_STACK)
            .spawn(move || camera.run());
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
    fn begin_stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Stops every camera; waits briefly for them to notice.
    fn stop(&self, grace: Duration) {
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
        let poll_request = format!(
            "GET /poll_for_command?cameraId={id} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        let send_head = format!(
            "POST /send_logs?cameraId={id} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nConnection: close\r\n"
        );
        SimCamera {
            events: EventSet {
                camera: index,
                count: fleet.events,
            },
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
            CameraError::Poll(format!(
                "unreadable command ({e}): {}",
                body_excerpt(&response.body)
            ))
        })
    }

    fn obey(&self, command: Command) -> Result<(), CameraError> {
        let Command::SendLogs {
            request_id,
            start_timestamp,
            end_timestamp,
        } = command
        else {
            return Ok(());
        };
        self.fleet.commands.fetch_add(1, Ordering::Relaxed);
        let body = SendLogsBody {
            request_id: Some(request_id),
            logs: self
                .events
                .within(Some(start_timestamp), Some(end_timestamp)),
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

// ---------------------------------------------------------------------------------------------
// Random numbers without a crate

/// xorshift64*, seeded from std's per-process random SipHash keys.
struct Rng(u64);

impl Rng {
    fn seeded(stream: u64) -> Rng {
        Rng(RandomState::new().hash_one(stream) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..n`; `n` must be greater than 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A `/logs` range: open on either side, bounds on events, between them, or outside them all.
fn random_range(rng: &mut Rng, events: &EventSet) -> (Option<f64>, Option<f64>) {
    match rng.below(10) {
        0 => (None, None),
        1 => (Some(random_bound(rng, events)), None),
        2 => (None, Some(random_bound(rng, events))),
        3 => {
            let exact = events.timestamp(rng.below(events.count));
            (Some(exact), Some(exact))
        }
        _ => {
            let a = random_bound(rng, events);
            let b = random_bound(rng, events);
            (Some(a.min(b)), Some(a.max(b)))
        }
    }
}

fn random_bound(rng: &mut Rng, events: &EventSet) -> f64 {
    let i = rng.below(events.count);
    match rng.below(8) {
        0..=3 => events.timestamp(i),
        4..=6 => events.timestamp(i) + EVENT_SPACING / 2.0,
        _ if rng.below(2) == 0 => events.timestamp(0) - 1000.0,
        _ => events.timestamp(events.count - 1) + 1000.0,
    }
}

// ---------------------------------------------------------------------------------------------
// /logs calls and their check

enum CallResult {
    Correct,
    Wrong(String),
    Status(u16, String),
    Transport(String),
}

fn client_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(CLIENT_TIMEOUT))
            .http_status_as_error(false)
            .max_idle_age(CLIENT_MAX_IDLE)
            .build(),
    )
}

fn logs_url(
    base: &str,
    camera: &str,
    (start, end): (Option<f64>, Option<f64>),
    extra: &str,
) -> String {
    // `{}` of an f64 is the shortest text that parses back to the same number.
    let start = start
        .map(|s| format!("&startTimestamp={s}"))
        .unwrap_or_default();
    let end = end
        .map(|e| format!("&endTimestamp={e}"))
        .unwrap_or_default();
    format!("{base}/logs?cameraId={camera}{start}{end}{extra}")
}

/// Calls `GET /logs` once and checks a 200 against the exact events expected.
fn call_logs(
    agent: &ureq::Agent,
    base: &str,
    prefix: &str,
    events: &EventSet,
    range: (Option<f64>, Option<f64>),
    extra: &str,
) -> CallResult {
    let id = camera_id(prefix, events.camera);
    let url = logs_url(base, &id, range, extra);
    let mut response = match agent.get(&url).call() {
        Ok(response) => response,
        Err(e) => return CallResult::Transport(format!("GET {url}: {e}")),
    };
    let status = response.status().as_u16();
    let body = match response
        .body_mut()
        .with_config()
        .limit(MAX_BODY as u64)
        .read_to_vec()
    {
        Ok(body) => body,
        Err(e) => return CallResult::Transport(format!("GET {url}: reading the body: {e}")),
    };
    if status != 200 {
        return CallResult::Status(status, format!("GET {url}: {}", body_excerpt(&body)));
    }
    check_answer(&body, &id, events, range, &url)
}

fn check_answer(
    body: &[u8],
    id: &str,
    events: &EventSet,
    (start, end): (Option<f64>, Option<f64>),
    url: &str,
) -> CallResult {
    let answer: LogsResponse = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) => return CallResult::Wrong(format!("GET {url}: unreadable 200 body: {e}")),
    };
    if answer.camera_id != id {
        return CallResult::Wrong(format!(
            "GET {url}: answer names camera {:?}",
            answer.camera_id
        ));
    }
    let expected = events.within(start, end);
    if answer.logs == expected {
        return CallResult::Correct;
    }
    let first_difference = expected
        .iter()
        .zip(&answer.logs)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(answer.logs.len()));
    CallResult::Wrong(format!(
        "GET {url}: expected {} event(s), got {}; first difference at index {first_difference}",
        expected.len(),
        answer.logs.len()
    ))
}

/// What one client thread saw.
#[derive(Debug, Default)]
struct ClientTally {
    calls: u64,
    correct: u64,
    wrong: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    /// Of every 200 answer, in microseconds.
    latencies_us: Vec<u64>,
    problems: Vec<String>,
}

impl ClientTally {
    fn add(&mut self, result: CallResult, elapsed: Duration) {
        self.calls += 1;
        let problem = match result {
            CallResult::Correct => {
                self.correct += 1;
                self.latencies_us.push(elapsed.as_micros() as u64);
                None
            }
            CallResult::Wrong(why) => {
                self.wrong += 1;
                self.latencies_us.push(elapsed.as_micros() as u64);
                Some(format!("wrong answer: {why}"))
            }
            CallResult::Status(status, why) => {
                *self.statuses.entry(status).or_default() += 1;
                Some(format!("HTTP {status}: {why}"))
            }
            CallResult::Transport(why) => {
                self.transport_errors += 1;
                Some(format!("transport error: {why}"))
            }
        };
        if let Some(problem) = problem {
            if self.problems.len() < KEPT_PROBLEMS {
                self.problems.push(problem);
            }
        }
    }

    fn merge(&mut self, other: ClientTally) {
        self.calls += other.calls;
        self.correct += other.correct;
        self.wrong += other.wrong;
        self.transport_errors += other.transport_errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.latencies_us.extend(other.latencies_us);
        for problem in other.problems {
            if self.problems.len() < KEPT_PROBLEMS {
                self.problems.push(problem);
            }
        }
    }
}

/// What every client thread needs to know.
#[derive(Clone)]
struct ClientPlan {
    base: String,
    prefix: String,
    cameras: usize,
    events: usize,
    deadline: Instant,
}

fn run_client(plan: &ClientPlan, seed: u64) -> ClientTally {
    let agent = client_agent();
    let mut rng = Rng::seeded(seed);
    let mut tally = ClientTally::default();
    while Instant::now() < plan.deadline {
        let events = EventSet {
            camera: rng.below(plan.cameras),
            count: plan.events,
        };
        let range = random_range(&mut rng, &events);
        let started = Instant::now();
        let result = call_logs(&agent, &plan.base, &plan.prefix, &events, range, "");
        tally.add(result, started.elapsed());
    }
    tally
}

fn run_clients(plan: &ClientPlan, clients: usize) -> Result<ClientTally, String> {
    let mut handles: Vec<JoinHandle<ClientTally>> = Vec::with_capacity(clients);
    for n in 0..clients {
        let plan = plan.clone();
        let handle = std::thread::Builder::new()
            .name(format!("client-{n}"))
            .stack_size(CLIENT_STACK)
            .spawn(move || run_client(&plan, n as u64))
            .map_err(|e| format!("could not start client thread {n}: {e}"))?;
        handles.push(handle);
    }
    let mut total = ClientTally::default();
    for handle in handles {
        match handle.join() {
            Ok(tally) => total.merge(tally),
            Err(_) => return Err("a client thread panicked".into()),
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Watching the server through its API

struct Monitor {
    base: String,
    /// Where cameras are counted: the servers behind an edge, or just `base`.
    instances: Vec<String>,
    agent: ureq::Agent,
}

impl Monitor {
    fn new(base: &str, instances: &[String]) -> Monitor {
        Monitor {
            base: base.to_string(),
            instances: if instances.is_empty() {
                vec![base.to_string()]
            } else {
                instances.to_vec()
            },
            agent: client_agent(),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.get_from(&self.base, path)
    }

    fn get_from<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
    ) -> Result<T, String> {
        let url = format!("{base}{path}");
        let mut response = self
            .agent
            .get(&url)
            .header("Connection", "close")
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64)
            .read_to_vec()
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        if status != 200 {
            return Err(format!("GET {url}: HTTP {status}: {}", body_excerpt(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: unreadable body: {e}"))
    }

    /// This run's cameras that the server (every one of `--instances`) counts as online.
    fn online(&self, prefix: &str) -> Result<usize, String> {
        let mut online = 0;
        for base in &self.instances {
            let mut path = "/cameras".to_string();
            loop {
                let page: CamerasResponse = self.get_from(base, &path)?;
                online += page
                    .cameras
                    .iter()
                    .filter(|c| c.online && c.camera_id.starts_with(prefix))
                    .count();
                match page.next_after {
                    Some(after) => path = format!("/cameras?after={after}"),
                    None => break,
                }
            }
        }
        Ok(online)
    }

    /// `registry.openPolls` from /stats, when the server has it.
    fn open_polls(&self) -> Option<u64> {
        let stats: serde_json::Value = self.get("/stats").ok()?;
        stats.get("registry")?.get("openPolls")?.as_u64()
    }
}

/// What to wait for: a count read from the server, and what it is called in messages.
struct Awaited<'a> {
    what: &'a str,
    want: usize,
    count: &'a dyn Fn() -> Result<usize, String>,
}

/// Waits until `want` of this run's cameras are online (polled within the server's grace).
fn wait_online(
    monitor: &Monitor,
    fleet: &Fleet,
    want: usize,
    server: &mut Option<ServerProcess>,
) -> Result<(), String> {
    let count = || monitor.online(&fleet.prefix);
    let awaited = Awaited {
        what: "cameras online",
        want,
        count: &count,
    };
    wait_for(&awaited, fleet, server)
}

/// Waits until the server holds a poll open for (almost) every camera: `/stats` `openPolls`,
/// which also counts other cameras of a --target server. A camera between two polls holds
/// none, so 0.5 % may be missing at any instant.
fn wait_open_polls(
    monitor: &Monitor,
    fleet: &Fleet,
    cameras: usize,
    server: &mut Option<ServerProcess>,
) -> Result<(), String> {
    let count = || {
        monitor
            .open_polls()
            .map(|polls| polls as usize)
            .ok_or_else(|| "no registry.openPolls on /stats".to_string())
    };
    let awaited = Awaited {
        what: "polls held open",
        want: cameras - cameras / 200,
        count: &count,
    };
    wait_for(&awaited, fleet, server)
}

/// Polls a count until it reaches `want`; fails after a stretch without progress, or when the
/// api this tool started has exited.
fn wait_for(
    awaited: &Awaited<'_>,
    fleet: &Fleet,
    server: &mut Option<ServerProcess>,
) -> Result<(), String> {
    let mut best = 0usize;
    let mut last_progress = Instant::now();
    let mut last_error = String::new();
    loop {
        if let Some(exited) = server.as_mut().and_then(ServerProcess::exited) {
            return Err(exited);
        }
        match (awaited.count)() {
            Ok(n) if n >= awaited.want => return Ok(()),
            Ok(n) if n > best => {
                best = n;
                last_progress = Instant::now();
            }
            Ok(_) => {}
            Err(e) => last_error = e,
        }
        if last_progress.elapsed() > NO_PROGRESS_LIMIT {
            return Err(format!(
                "timeout: {best} of {} {}, no progress for {} s; {}{}",
                awaited.want,
                awaited.what,
                NO_PROGRESS_LIMIT.as_secs(),
                fleet.trouble(),
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!("; last check failed: {last_error}")
                }
            ));
        }
        std::thread::sleep(ONLINE_CHECK_EVERY);
    }
}

// ---------------------------------------------------------------------------------------------
// Setting up either mode

/// The server under test and the means to watch it.
struct Harness {
    endpoint: Endpoint,
    server: Option<ServerProcess>,
    /// The api's pid, kept after the server is stopped.
    started_pid: Option<u32>,
    sampler: Option<Sampler>,
    monitor: Monitor,
}

impl Harness {
    fn start(options: &Options) -> Result<Harness, String> {
        warn_about_open_files(options);
        let (server, endpoint) = match &options.target {
            Some(url) => (None, Endpoint::from_url(url)?),
            None => {
                let (server, endpoint) = ServerProcess::start(options)?;
                progress(&format!(
                    "started {} (pid {}) on {}{}",
                    api_binary()?.display(),
                    server.pid,
                    endpoint.base,
                    server
                        .max_connections
                        .map(|m| format!(" with MAX_CONNECTIONS={m}"))
                        .unwrap_or_default()
                ));
                (Some(server), endpoint)
            }
        };
        let sampler = match &server {
            Some(server) => Some(Sampler::start(server.pid)?),
            None => None,
        };
        let started_pid = server.as_ref().map(|s| s.pid);
        let monitor = Monitor::new(&endpoint.base, &options.instances);
        // The server must answer before cameras are thrown at it.
        let _: serde_json::Value = monitor
            .get("/health")
            .map_err(|e| format!("the server is not answering: {e}"))?;
        Ok(Harness {
            endpoint,
            server,
            started_pid,
            sampler,
            monitor,
        })
    }

    fn describe(&self) -> String {
        match &self.server {
            Some(server) => format!(
                "{} (api started by loadtest, pid {})",
                self.endpoint.base, server.pid
            ),
            None => format!("{} (--target)", self.endpoint.base),
        }
    }

    fn sample(&self) -> Option<SampledFigures> {
        self.sampler.as_ref().map(Sampler::now)
    }

    /// Kills the api (which also ends every camera's open poll) and collects its log counts.
    fn stop_server(&mut self) -> Option<ServerLogCounts> {
        self.sampler = None;
        let server = self.server.take()?;
        let log = Arc::clone(&server.log);
        drop(server);
        let recent: Vec<String> = log.recent_problems.lock().iter().cloned().collect();
        Some(ServerLogCounts {
            warnings: log.warnings.load(Ordering::Relaxed),
            errors: log.errors.load(Ordering::Relaxed),
            recent,
        })
    }
}

/// What the api wrote to stderr, counted.
struct ServerLogCounts {
    warnings: u64,
    errors: u64,
    recent: Vec<String>,
}

fn progress(message: &str) {
    eprintln!("loadtest: {message}");
}

/// Warns when the cameras and clients cannot all have a socket under `ulimit -n`.
fn warn_about_open_files(options: &Options) {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Max open files"))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|soft| soft.parse::<usize>().ok())
        });
    let needed = options.cameras + options.clients + 64;
    if let Some(limit) = limit {
        if needed > limit {
            progress(&format!(
                "warning: {needed} sockets may be needed but ulimit -n is {limit}; expect connect errors"
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load run

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LatencyMs {
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn latency_ms(latencies_us: &mut [u64]) -> Option<LatencyMs> {
    if latencies_us.is_empty() {
        return None;
    }
    latencies_us.sort_unstable();
    let at = |p: f64| -> f64 {
        let rank = ((p / 100.0) * latencies_us.len() as f64).ceil() as usize;
        latencies_us[rank.clamp(1, latencies_us.len()) - 1] as f64 / 1000.0
    };
    Some(LatencyMs {
        min: at(0.0),
        p50: at(50.0),
        p90: at(90.0),
        p99: at(99.0),
        max: at(100.0),
    })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerFigures {
    pid: u32,
    rss_before_cameras_kib: u64,
    rss_with_cameras_kib: u64,
    rss_per_camera_kib: f64,
    peak_rss_kib: u64,
    rss_at_end_kib: u64,
    threads_with_cameras: u64,
    threads_at_end: u64,
    peak_threads: u64,
    warnings: u64,
    errors: u64,
    recent_problems: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadSummary {
    mode: &'static str,
    server_url: String,
    server_started_by_loadtest: bool,
    cameras: usize,
    clients: usize,
    events_per_camera: usize,
    duration_secs: f64,
    elapsed_secs: f64,
    cameras_online_after_secs: f64,
    calls: u64,
    correct: u64,
    wrong_answers: u64,
    errors_by_status: BTreeMap<String, u64>,
    transport_errors: u64,
    calls_per_sec: f64,
    /// Of the 200 answers.
    latency_ms: Option<LatencyMs>,
    camera: FleetCounts,
    round_trips_per_call: Option<f64>,
    server: Option<ServerFigures>,
    problems: Vec<String>,
    passed: bool,
}

fn run_load(options: &Options) -> Result<bool, String> {
    let mut harness = Harness::start(options)?;
    let before = harness.sample();
    let fleet = Fleet::new(harness.endpoint.clone(), camera_prefix(), options.events);
    progress(&format!(
        "connecting {} camera(s) with {} event(s) each",
        options.cameras, options.events
    ));
    let outcome = load_phase(options, &mut harness, &fleet);
    let final_sample = harness.sample();
    fleet.begin_stop();
    let logs = harness.stop_server();
    fleet.stop(CAMERA_STOP_GRACE);
    let (tally, online_after, elapsed, with_cameras) = outcome?;
    let figures = match (
        harness.started_pid,
        before,
        with_cameras,
        final_sample,
        logs,
    ) {
        (Some(pid), Some(before), Some(with), Some(end), Some(logs)) => Some(server_figures(
            pid,
            options.cameras,
            [before, with, end],
            logs,
        )),
        _ => None,
    };
    let summary = load_summary(
        options,
        &harness,
        &fleet,
        tally,
        online_after,
        elapsed,
        figures,
    );
    print_load_summary(&summary, options.json)?;
    Ok(summary.passed)
}

type LoadOutcome = (ClientTally, Duration, Duration, Option<SampledFigures>);

/// Connects the cameras, waits for them, measures, then runs the clients for the duration.
fn load_phase(
    options: &Options,
    harness: &mut Harness,
    fleet: &Arc<Fleet>,
) -> Result<LoadOutcome, String> {
    let connecting = Instant::now();
    fleet.spawn_cameras(0..options.cameras)?;
    wait_online(
        &harness.monitor,
        fleet,
        options.cameras,
        &mut harness.server,
    )?;
    let online_after = connecting.elapsed();
    std::thread::sleep(SETTLE);
    let with_cameras = harness.sample();
    progress(&format!(
        "{} camera(s) online after {:.1} s; {} client(s) calling /logs for {:.1} s",
        options.cameras,
        online_after.as_secs_f64(),
        options.clients,
        options.duration.as_secs_f64()
    ));
    let started = Instant::now();
    let plan = ClientPlan {
        base: harness.endpoint.base.clone(),
        prefix: fleet.prefix.clone(),
        cameras: options.cameras,
        events: options.events,
        deadline: started + options.duration,
    };
    let tally = run_clients(&plan, options.clients)?;
    Ok((tally, online_after, started.elapsed(), with_cameras))
}

fn server_figures(
    pid: u32,
    cameras: usize,
    [before, with, end]: [SampledFigures; 3],
    logs: ServerLogCounts,
) -> ServerFigures {
    ServerFigures {
        pid,
        rss_before_cameras_kib: before.latest.rss_kib,
        rss_with_cameras_kib: with.latest.rss_kib,
        rss_per_camera_kib: per_camera_kib(before.latest.rss_kib, with.latest.rss_kib, cameras),
        peak_rss_kib: end.latest.hwm_kib,
        rss_at_end_kib: end.latest.rss_kib,
        threads_with_cameras: with.latest.threads,
        threads_at_end: end.latest.threads,
        peak_threads: end.peak_threads,
        warnings: logs.warnings,
        errors: logs.errors,
        recent_problems: logs.recent,
    }
}

fn per_camera_kib(before_kib: u64, with_kib: u64, cameras: usize) -> f64 {
    (with_kib as f64 - before_kib as f64) / cameras.max(1) as f64
}

fn load_summary(
    options: &Options,
    harness: &Harness,
    fleet: &Fleet,
    mut tally: ClientTally,
    online_after: Duration,
    elapsed: Duration,
    server: Option<ServerFigures>,
) -> LoadSummary {
    let camera = fleet.counts();
    let errors_by_status: BTreeMap<String, u64> = tally
        .statuses
        .iter()
        .map(|(status, n)| (status.to_string(), *n))
        .collect();
    let camera_errors = camera.poll_errors + camera.post_errors;
    let mut problems = std::mem::take(&mut tally.problems);
    if camera_errors > 0 {
        problems.push(fleet.trouble());
    }
    let answered = tally.correct + tally.wrong;
    let passed = tally.wrong == 0
        && errors_by_status.is_empty()
        && tally.transport_errors == 0
        && camera_errors == 0
        && tally.correct > 0;
    LoadSummary {
        mode: "load",
        server_url: harness.endpoint.base.clone(),
        server_started_by_loadtest: harness.started_pid.is_some(),
        cameras: options.cameras,
        clients: options.clients,
        events_per_camera: options.events,
        duration_secs: options.duration.as_secs_f64(),
        elapsed_secs: elapsed.as_secs_f64(),
        cameras_online_after_secs: online_after.as_secs_f64(),
        calls: tally.calls,
        correct: tally.correct,
        wrong_answers: tally.wrong,
        errors_by_status,
        transport_errors: tally.transport_errors,
        calls_per_sec: tally.calls as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: latency_ms(&mut tally.latencies_us),
        round_trips_per_call: (answered > 0).then(|| camera.round_trips as f64 / answered as f64),
        camera,
        server,
        problems,
        passed,
    }
}

fn print_load_summary(summary: &LoadSummary, json: bool) -> Result<(), String> {
    if json {
        return print_json(summary);
    }
    let mut rows: Vec<(&str, String)> = vec![
        ("server", summary.server_url.clone()),
        (
            "load",
            format!(
                "{} camera(s) x {} event(s), {} client(s), {:.1} s",
                summary.cameras, summary.events_per_camera, summary.clients, summary.duration_secs
            ),
        ),
        (
            "cameras online after",
            format!("{:.2} s", summary.cameras_online_after_secs),
        ),
        ("calls", summary.calls.to_string()),
        ("calls/s", format!("{:.1}", summary.calls_per_sec)),
        ("correct answers", summary.correct.to_string()),
        ("wrong answers", summary.wrong_answers.to_string()),
        ("errors by status", status_list(&summary.errors_by_status)),
        ("transport errors", summary.transport_errors.to_string()),
        (
            "latency ms (200s)",
            summary
                .latency_ms
                .as_ref()
                .map(|l| {
                    format!(
                        "min {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                        l.min, l.p50, l.p90, l.p99, l.max
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "camera round trips",
            format!(
                "{} ({} polls, {} commands)",
                summary.camera.round_trips, summary.camera.polls, summary.camera.commands
            ),
        ),
        (
            "round trips per call",
            summary
                .round_trips_per_call
                .map(|r| format!("{r:.3}"))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "camera errors",
            format!(
                "poll {}, send_logs {}, connect retries {}",
                summary.camera.poll_errors,
                summary.camera.post_errors,
                summary.camera.connect_retries
            ),
        ),
    ];
    if let Some(server) = &summary.server {
        rows.extend(server_rows(server));
    }
    rows.push((
        "result",
        if summary.passed { "PASS" } else { "FAIL" }.to_string(),
    ));
    print_table("loadtest summary", &rows);
    print_problems(&summary.problems);
    Ok(())
}

fn server_rows(server: &ServerFigures) -> Vec<(&'static str, String)> {
    vec![
        (
            "server RSS",
            format!(
                "{} before cameras, {} with cameras, {} at end",
                kib(server.rss_before_cameras_kib),
                kib(server.rss_with_cameras_kib),
                kib(server.rss_at_end_kib)
            ),
        ),
        (
            "server RSS per camera",
            format!("{:.1} KiB", server.rss_per_camera_kib),
        ),
        ("server peak RSS (VmHWM)", kib(server.peak_rss_kib)),
        (
            "server threads",
            format!(
                "{} with cameras, {} at end, {} peak",
                server.threads_with_cameras, server.threads_at_end, server.peak_threads
            ),
        ),
        (
            "server log",
            format!("{} WARN, {} ERROR", server.warnings, server.errors),
        ),
    ]
}

fn status_list(statuses: &BTreeMap<String, u64>) -> String {
    if statuses.is_empty() {
        return "none".into();
    }
    statuses
        .iter()
        .map(|(status, n)| format!("{status}: {n}"))
        .collect::<Vec<String>>()
        .join(", ")
}

fn kib(value: u64) -> String {
    if value >= 10 * 1024 {
        format!("{:.1} MiB", value as f64 / 1024.0)
    } else {
        format!("{value} KiB")
    }
}

fn print_table(title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!("{title}");
    for (name, value) in rows {
        println!("  {name:<width$}  {value}");
    }
}

fn print_problems(problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    println!("first problems:");
    for problem in problems {
        println!("  {problem}");
    }
}

fn print_json(value: &impl Serialize) -> Result<(), String> {
    let text =
        serde_json::to_string(value).map_err(|e| format!("cannot encode the summary: {e}"))?;
    println!("{text}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The idle-scale ramp

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RampStep {
    cameras: usize,
    online_after_secs: f64,
    rss_kib: Option<u64>,
    rss_per_camera_kib: Option<f64>,
    threads: Option<u64>,
    open_polls: Option<u64>,
    probe_ms: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RampSummary {
    mode: &'static str,
    server_url: String,
    server_started_by_loadtest: bool,
    target_cameras: usize,
    step: usize,
    events_per_camera: usize,
    rss_before_cameras_kib: Option<u64>,
    steps: Vec<RampStep>,
    cameras_held: usize,
    reached_target: bool,
    stopped_because: String,
    peak_rss_kib: Option<u64>,
    peak_threads: Option<u64>,
    server_warnings: Option<u64>,
    server_errors: Option<u64>,
    recent_server_problems: Vec<String>,
}

fn run_idle_ramp(options: &Options) -> Result<bool, String> {
    let mut harness = Harness::start(options)?;
    let before = harness.sample();
    let fleet = Fleet::new(harness.endpoint.clone(), camera_prefix(), options.events);
    if !options.json {
        println!(
            "idle ramp against {}: steps of {} up to {} camera(s)",
            harness.describe(),
            options.step,
            options.cameras
        );
        println!(
            "  {:>8}  {:>9}  {:>11}  {:>11}  {:>8}  {:>10}  {:>9}",
            "cameras", "online in", "server RSS", "RSS/camera", "threads", "open polls", "probe"
        );
    }
    let mut rng = Rng::seeded(u64::MAX);
    let mut steps: Vec<RampStep> = Vec::new();
    let mut held = 0usize;
    let stopped_because = loop {
        if held >= options.cameras {
            break format!("reached the target of {} camera(s)", options.cameras);
        }
        let next = (held + options.step).min(options.cameras);
        match ramp_step(options, &mut harness, &fleet, held..next, &mut rng, before) {
            Ok(step) => {
                if !options.json {
                    print_ramp_row(&step);
                }
                steps.push(step);
                held = next;
            }
            Err(why) => {
                break format!("stopped with {held} camera(s) held, adding up to {next}: {why}")
            }
        }
    };
    let end = harness.sample();
    fleet.begin_stop();
    let logs = harness.stop_server();
    fleet.stop(CAMERA_STOP_GRACE);
    let summary = RampSummary {
        mode: "idle-ramp",
        server_url: harness.endpoint.base.clone(),
        server_started_by_loadtest: harness.started_pid.is_some(),
        target_cameras: options.cameras,
        step: options.step,
        events_per_camera: options.events,
        rss_before_cameras_kib: before.map(|b| b.latest.rss_kib),
        reached_target: held >= options.cameras,
        cameras_held: held,
        steps,
        stopped_because,
        peak_rss_kib: end.map(|e| e.latest.hwm_kib),
        peak_threads: end.map(|e| e.peak_threads),
        server_warnings: logs.as_ref().map(|l| l.warnings),
        server_errors: logs.as_ref().map(|l| l.errors),
        recent_server_problems: logs.map(|l| l.recent).unwrap_or_default(),
    };
    if options.json {
        print_json(&summary)?;
    } else {
        print_ramp_end(&summary);
    }
    Ok(summary.reached_target)
}

/// Adds cameras `indices`, waits for them, measures the server and checks one `/logs` call.
fn ramp_step(
    options: &Options,
    harness: &mut Harness,
    fleet: &Arc<Fleet>,
    indices: Range<usize>,
    rng: &mut Rng,
    before: Option<SampledFigures>,
) -> Result<RampStep, String> {
    let held = indices.end;
    let connecting = Instant::now();
    fleet.spawn_cameras(indices)?;
    wait_online(&harness.monitor, fleet, held, &mut harness.server)?;
    wait_open_polls(&harness.monitor, fleet, held, &mut harness.server)?;
    let online_after = connecting.elapsed();
    let counts = fleet.counts();
    if counts.poll_errors + counts.post_errors > 0 {
        return Err(format!("camera errors: {}", fleet.trouble()));
    }
    std::thread::sleep(SETTLE);
    let sample = harness.sample();
    let probe_ms = probe(harness, fleet, held, options.events, rng)?;
    Ok(RampStep {
        cameras: held,
        online_after_secs: online_after.as_secs_f64(),
        rss_kib: sample.map(|s| s.latest.rss_kib),
        rss_per_camera_kib: before
            .zip(sample)
            .map(|(b, s)| per_camera_kib(b.latest.rss_kib, s.latest.rss_kib, held)),
        threads: sample.map(|s| s.latest.threads),
        open_polls: harness.monitor.open_polls(),
        probe_ms,
    })
}

/// One checked `/logs` call to a random connected camera; its latency in ms.
fn probe(
    harness: &Harness,
    fleet: &Fleet,
    held: usize,
    events: usize,
    rng: &mut Rng,
) -> Result<f64, String> {
    let events = EventSet {
        camera: rng.below(held),
        count: events,
    };
    let range = random_range(rng, &events);
    let started = Instant::now();
    let result = call_logs(
        &client_agent(),
        &harness.endpoint.base,
        &fleet.prefix,
        &events,
        range,
        &format!("&timeout={PROBE_TIMEOUT_SECS}"),
    );
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        CallResult::Correct => Ok(elapsed_ms),
        CallResult::Wrong(why) => Err(format!("/logs wrong answer: {why}")),
        CallResult::Status(status, why) => Err(format!("/logs error: HTTP {status}: {why}")),
        CallResult::Transport(why) => Err(format!("/logs transport error: {why}")),
    }
}

fn print_ramp_row(step: &RampStep) {
    let dash = || "-".to_string();
    println!(
        "  {:>8}  {:>9}  {:>11}  {:>11}  {:>8}  {:>10}  {:>9}",
        step.cameras,
        format!("{:.1} s", step.online_after_secs),
        step.rss_kib.map(kib).unwrap_or_else(dash),
        step.rss_per_camera_kib
            .map(|r| format!("{r:.1} KiB"))
            .unwrap_or_else(dash),
        step.threads.map(|t| t.to_string()).unwrap_or_else(dash),
        step.open_polls.map(|p| p.to_string()).unwrap_or_else(dash),
        format!("{:.1} ms", step.probe_ms),
    );
}

fn print_ramp_end(summary: &RampSummary) {
    println!("{}", summary.stopped_because);
    if let (Some(peak_rss), Some(peak_threads)) = (summary.peak_rss_kib, summary.peak_threads) {
        println!(
            "server peak RSS (VmHWM) {}, peak threads {}, log {} WARN / {} ERROR",
            kib(peak_rss),
            peak_threads,
            summary.server_warnings.unwrap_or(0),
            summary.server_errors.unwrap_or(0)
        );
    }
    print_problems(&summary.recent_server_problems);
}
