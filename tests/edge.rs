//! The nginx edge (`deploy/nginx.conf`, as shipped) in front of the `api` binary, with real
//! nginx: a camera and a user work through it, its own refusals are JSON, and every attack of
//! docs/reliability.md's table leaves the api's descriptors and threads at their baseline while
//! a legitimate camera and user keep working.
//!
//! Each test skips with a one-line reason where nginx is not installed; `.ci/run` installs it.
//! `bare_api_attack_table` (ignored: it leaves a bare api broken, which is its point) runs the
//! same attacks against the api with no edge, for the table in docs/reliability.md:
//! `cargo test --release --test edge -- --ignored --nocapture`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::edge::{nginx_or_skip, settle, Edge, Usage, TEST_CLIENT_HEADER};
use crate::common::*;
use camera_logs::LogEntry;

/// The address attacks claim to come from (TEST-NET-1: never a real host).
const ATTACKER: &str = "192.0.2.66";

/// The api's settings in these tests: short holds and idle times, so that what an attack left
/// behind drains within seconds rather than minutes.
fn api_env() -> Vec<(&'static str, String)> {
    vec![
        ("POLL_HOLD_SECS", "3".to_string()),
        ("WORKER_IDLE_SECS", "1".to_string()),
        ("CAMERA_FORGET_SECS", "2".to_string()),
        ("CAMERA_GRACE_SECS", "5".to_string()),
        ("LOG_LEVEL", "warn".to_string()),
    ]
}

/// The api binary, optionally behind the edge, with an in-process camera `front` serving
/// fixed events through the same front the users use.
struct System {
    api: ApiProc,
    edge: Option<Edge>,
    events: Vec<LogEntry>,
    _camera: Camera,
}

impl System {
    fn start(nginx: Option<&std::path::Path>) -> System {
        let api = start_api(&api_env());
        let edge = nginx.map(|nginx| Edge::start(nginx, &[host_port(&api.url).to_string()]));
        let front = edge.as_ref().map_or(api.url.clone(), |e| e.url.clone());
        let events = fixture(40);
        let camera = Camera::start(&front, "front", &events);
        let system = System { api, edge, events, _camera: camera };
        let agent = agent(Duration::from_secs(10));
        wait_until("the camera answers through the front", PATIENCE, || {
            try_get(&agent, &system.logs_url(), None).is_some_and(|r| r.status == 200)
        });
        system
    }

    /// Where clients connect: the edge, or the bare api.
    fn front(&self) -> String {
        self.edge.as_ref().map_or(self.api.url.clone(), |e| e.url.clone())
    }

    fn front_addr(&self) -> SocketAddr {
        self.edge
            .as_ref()
            .map_or_else(|| host_port(&self.api.url).parse().expect("api address"), |e| e.addr)
    }

    fn logs_url(&self) -> String {
        logs_url(&self.front(), "front", None, None, Some(10.0))
    }

    fn usage(&self) -> Usage {
        Usage::of(self.api.proc.pid())
    }
}

// ---------------------------------------------------------------------------------------------
// The legitimate user: calls /logs every 20 ms while an attack runs
// ---------------------------------------------------------------------------------------------

struct Legit {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<LegitReport>,
}

#[derive(Debug, Default)]
struct LegitReport {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

impl LegitReport {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let Some(last) = sorted.len().checked_sub(1) else {
            return Duration::ZERO;
        };
        sorted[((last as f64) * p).round() as usize]
    }

    fn summary(&self) -> String {
        let first_error = self.errors.first().map_or(String::new(), |e| {
            format!(" (first: {})", e.chars().take(120).collect::<String>())
        });
        format!(
            "{} calls, {} errors{first_error}, p50 {:.1} ms, p99 {:.1} ms",
            self.latencies.len() + self.errors.len(),
            self.errors.len(),
            self.percentile(0.5).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3
        )
    }
}

/// A legitimate user's calls counted for an attack: at least this many, however quickly the
/// attack itself is over, so that "served during it" is never a claim made on one call.
const LEGIT_MIN_CALLS: usize = 20;

impl Legit {
    fn start(url: String, expected: Vec<LogEntry>) -> Legit {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let worker = thread::spawn(move || {
            let agent = agent(Duration::from_secs(15));
            let mut report = LegitReport::default();
            let give_up = Instant::now() + PATIENCE;
            let calls = |r: &LegitReport| r.latencies.len() + r.errors.len();
            while (!stopped.load(Ordering::SeqCst) || calls(&report) < LEGIT_MIN_CALLS)
                && Instant::now() < give_up
            {
                let started = Instant::now();
                match try_get(&agent, &url, None) {
                    Some(r) if r.status == 200 && logs_of(&r.json()) == expected => {
                        report.latencies.push(started.elapsed())
                    }
                    Some(r) => report.errors.push(format!("HTTP {}: {}", r.status, r.text())),
                    None => report.errors.push("no answer".to_string()),
                }
                thread::sleep(Duration::from_millis(20));
            }
            report
        });
        Legit { stop, worker }
    }

    /// Stops the user once it has made [`LEGIT_MIN_CALLS`] calls.
    fn finish(self) -> LegitReport {
        self.stop.store(true, Ordering::SeqCst);
        self.worker.join().expect("the legitimate user's thread")
    }
}

// ---------------------------------------------------------------------------------------------
// The attacks (bounded in count and time; loopback only)
// ---------------------------------------------------------------------------------------------

struct Attack {
    name: &'static str,
    run: fn(SocketAddr) -> String,
}

const ATTACKS: &[Attack] = &[
    Attack { name: "400 x `GET / HTTP/2.0` and 100 x the h2 preface", run: http2_request_lines },
    Attack {
        name: "200 x POST /send_logs with Content-Length: 99999999999999, then close",
        run: absurd_content_length,
    },
    Attack { name: "500 connections trickling a head at 1 byte/s for 12 s", run: trickled_heads },
    Attack {
        name: "one poll, then 2,000 pipelined GET /health on the same connection",
        run: pipelined_behind_a_poll,
    },
    Attack { name: "1,000 polls with fresh cameraIds, each closed at once", run: dead_polls },
    Attack { name: "one unterminated 64 MiB header", run: huge_header },
    Attack { name: "a 1 MB method with control bytes", run: huge_method },
    Attack { name: "500 connections reset (RST) after their request", run: resets },
];

/// Runs `f(i)` for `i` in `0..n` on `threads` threads; how many returned true.
fn in_parallel(
    n: usize,
    threads: usize,
    f: fn(usize, SocketAddr) -> bool,
    target: SocketAddr,
) -> usize {
    let workers: Vec<JoinHandle<usize>> = (0..threads)
        .map(|t| thread::spawn(move || (t..n).step_by(threads).filter(|&i| f(i, target)).count()))
        .collect();
    workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
}

fn open(target: SocketAddr, read_timeout: Duration) -> Option<TcpStream> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(read_timeout)).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(stream)
}

/// Whether the peer answered with a status line within the read timeout.
fn answered(stream: &mut TcpStream) -> bool {
    let mut status = [0u8; 12];
    stream.read_exact(&mut status).is_ok() && status.starts_with(b"HTTP/1.")
}

fn http2_request_lines(target: SocketAddr) -> String {
    let answers = in_parallel(
        500,
        50,
        |i, target| {
            let line: &[u8] = if i % 5 == 0 {
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
            } else {
                b"GET / HTTP/2.0\r\n\r\n"
            };
            let Some(mut stream) = open(target, Duration::from_secs(2)) else {
                return false;
            };
            stream.write_all(line).is_ok() && answered(&mut stream)
        },
        target,
    );
    format!("{answers} of 500 answered")
}

fn absurd_content_length(target: SocketAddr) -> String {
    let answers = in_parallel(
        200,
        20,
        |_, target| {
            let Some(mut stream) = open(target, Duration::from_secs(5)) else {
                return false;
            };
            let head = format!(
                "POST /send_logs?cameraId=x HTTP/1.1\r\nHost: edge\r\n{TEST_CLIENT_HEADER}: {ATTACKER}\r\nContent-Type: application/json\r\nContent-Length: 99999999999999\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).is_ok() && answered(&mut stream)
        },
        target,
    );
    format!("{answers} of 200 answered")
}

fn trickled_heads(target: SocketAddr) -> String {
    let head = b"GET /health HTTP/1.1\r\nHost: edge\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut streams: Vec<TcpStream> =
        (0..500).filter_map(|_| open(target, Duration::from_millis(1))).collect();
    let opened = streams.len();
    for second in 0..12 {
        let byte = &head[second % head.len()..][..1];
        for stream in &mut streams {
            let _ = stream.write_all(byte);
        }
        thread::sleep(Duration::from_secs(1));
    }
    // A connection the server gave up on reads as closed (0) or answered (408), not "would block".
    let dropped = streams
        .iter()
        .filter(|s| {
            let mut buf = [0u8; 64];
            let mut stream: &TcpStream = s;
            let still_open = matches!(stream.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
            !still_open
        })
        .count();
    format!("{opened} opened, {dropped} dropped by the server within 12 s")
}

fn pipelined_behind_a_poll(target: SocketAddr) -> String {
    let Some(mut stream) = open(target, Duration::from_secs(15)) else {
        return "could not connect".to_string();
    };
    let mut burst = format!(
        "GET /poll_for_command?cameraId=pipeline HTTP/1.1\r\nHost: edge\r\n{TEST_CLIENT_HEADER}: {ATTACKER}\r\n\r\n"
    );
    for _ in 0..2000 {
        burst.push_str(&format!(
            "GET /health HTTP/1.1\r\nHost: edge\r\n{TEST_CLIENT_HEADER}: {ATTACKER}\r\n\r\n"
        ));
    }
    if stream.write_all(burst.as_bytes()).is_err() {
        return "the server refused the burst".to_string();
    }
    // Read answers until 2,001 status lines or 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
        if count(&seen, b"HTTP/1.1 ") >= 2001 {
            break;
        }
    }
    format!("{} answers read", count(&seen, b"HTTP/1.1 "))
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

fn dead_polls(target: SocketAddr) -> String {
    let sent = in_parallel(
        1000,
        8,
        |i, target| {
            let Some(mut stream) = open(target, Duration::from_millis(1)) else {
                return false;
            };
            let request = format!(
                "GET /poll_for_command?cameraId=dead-{i} HTTP/1.1\r\nHost: edge\r\n{TEST_CLIENT_HEADER}: {ATTACKER}\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).is_ok()
        },
        target,
    );
    format!("{sent} of 1000 sent and closed")
}

fn huge_header(target: SocketAddr) -> String {
    let Some(mut stream) = open(target, Duration::from_secs(1)) else {
        return "could not connect".to_string();
    };
    let _ = stream.write_all(b"GET /health HTTP/1.1\r\nHost: edge\r\nX-Big: ");
    let chunk = vec![b'a'; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0usize;
    while sent < 64 << 20 && Instant::now() < deadline {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    if sent >= 64 << 20 {
        format!("all {} MiB accepted", sent >> 20)
    } else {
        format!("cut off after {} KiB", sent >> 10)
    }
}

fn huge_method(target: SocketAddr) -> String {
    let Some(mut stream) = open(target, Duration::from_secs(10)) else {
        return "could not connect".to_string();
    };
    let mut request = vec![b'A'; 1 << 20];
    request[100] = 0x1b;
    request[200] = b'\r';
    request.extend_from_slice(b" /health HTTP/1.1\r\nHost: edge\r\n\r\n");
    let _ = stream.write_all(&request);
    let mut status = [0u8; 12];
    match stream.read_exact(&mut status) {
        Ok(()) => format!("answered {}", String::from_utf8_lossy(&status[9..12])),
        Err(_) => "closed without an answer".to_string(),
    }
}

fn resets(target: SocketAddr) -> String {
    let reset = in_parallel(
        500,
        10,
        |_, target| {
            let Some(stream) = open(target, Duration::from_secs(2)) else {
                return false;
            };
            let request = format!(
                "GET /health HTTP/1.1\r\nHost: edge\r\n{TEST_CLIENT_HEADER}: {ATTACKER}\r\n\r\n"
            );
            if (&stream).write_all(request.as_bytes()).is_err() {
                return false;
            }
            // Closing with unread bytes in the receive buffer makes the kernel send RST, not FIN.
            let mut one = [0u8; 1];
            stream.peek(&mut one).is_ok()
        },
        target,
    );
    format!("{reset} of 500 reset")
}

// ---------------------------------------------------------------------------------------------
// Running an attack and measuring the api
// ---------------------------------------------------------------------------------------------

struct Row {
    attack: &'static str,
    outcome: String,
    legit: LegitReport,
    before: Usage,
    after: Usage,
    settled: Result<Duration, Usage>,
}

impl Row {
    fn print(&self) {
        let settled = match &self.settled {
            Ok(took) => format!("back to baseline in {:.1} s", took.as_secs_f64()),
            Err(last) => {
                format!("NOT back to baseline: {} fds, {} threads", last.fds, last.threads)
            }
        };
        eprintln!(
            "| {} | {} | {} | fds {} -> {}, threads {} -> {}, RSS {} -> {} MiB | {} |",
            self.attack,
            self.outcome,
            self.legit.summary(),
            self.before.fds,
            self.after.fds,
            self.before.threads,
            self.after.threads,
            self.before.rss_kib / 1024,
            self.after.rss_kib / 1024,
            settled
        );
    }
}

/// Descriptors and threads the api may hold above its baseline and still count as "at
/// baseline": the legitimate user's and the camera's own connections come and go.
const SLACK: usize = 6;

fn attack_and_measure(system: &System, attack: &Attack, within: Duration) -> Row {
    let before = system.usage();
    let legit = Legit::start(system.logs_url(), system.events_sorted());
    let outcome = (attack.run)(system.front_addr());
    let legit = legit.finish();
    let after = system.usage();
    let settled = settle(system.api.proc.pid(), before, SLACK, within);
    Row { attack: attack.name, outcome, legit, before, after, settled }
}

impl System {
    fn events_sorted(&self) -> Vec<LogEntry> {
        expected(&self.events, None, None)
    }

    /// Lets the pool and nginx's kept-alive upstream connections reach their resting state.
    fn baseline(&self) -> Usage {
        let mut last = self.usage();
        let deadline = Instant::now() + PATIENCE;
        loop {
            thread::sleep(Duration::from_millis(1500));
            let now = self.usage();
            if (now.fds == last.fds && now.threads == last.threads) || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }
}

#[test]
fn every_attack_through_the_edge_leaves_the_api_at_baseline_and_users_served() {
    let Some(nginx) = nginx_or_skip("every_attack_through_the_edge") else {
        return;
    };
    let system = System::start(Some(&nginx));
    let mut failures = Vec::new();
    eprintln!("| attack (through the edge) | outcome | legitimate /logs during it | api before -> right after | recovery |");
    for attack in ATTACKS {
        system.baseline();
        let row = attack_and_measure(&system, attack, Duration::from_secs(60));
        row.print();
        if !row.legit.errors.is_empty() {
            failures.push(format!(
                "{}: legitimate calls failed: {:?}",
                attack.name,
                &row.legit.errors[..row.legit.errors.len().min(3)]
            ));
        }
        if row.legit.latencies.is_empty() {
            failures.push(format!("{}: no legitimate call succeeded", attack.name));
        }
        if let Err(last) = row.settled {
            failures.push(format!(
                "{}: the api stayed above its baseline {:?}: {last:?}",
                attack.name, row.before
            ));
        }
    }
    let api_log = system.api.proc.stderr_text();
    assert!(
        !api_log.contains("parked the connection"),
        "nothing may reach the api's parking path through the edge:\n{api_log}"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[ignore = "leaves a bare api broken on purpose; run by hand for docs/reliability.md"]
fn bare_api_attack_table() {
    eprintln!("| attack (bare api) | outcome | legitimate /logs during it | api before -> right after | recovery |");
    for attack in ATTACKS {
        let system = System::start(None);
        system.baseline();
        attack_and_measure(&system, attack, Duration::from_secs(30)).print();
    }
}

// ---------------------------------------------------------------------------------------------
// The edge's own answers and its per-address limits
// ---------------------------------------------------------------------------------------------

/// Sends `request` to the edge as `client` on a connection of its own and reads the answer.
fn exchange(edge: SocketAddr, request: &[u8]) -> Resp {
    let mut stream = open(edge, Duration::from_secs(20)).expect("connect to the edge");
    // nginx may answer and close before it has read all of a refused request.
    let _ = stream.write_all(request);
    read_raw_response(&mut stream).expect("an answer from the edge")
}

#[test]
fn the_edges_own_refusals_are_json_errors_and_never_reach_the_api() {
    let Some(nginx) = nginx_or_skip("the_edges_own_refusals_are_json_errors") else {
        return;
    };
    let system = System::start(Some(&nginx));
    let edge = system.front_addr();
    let as_attacker = format!("{TEST_CLIENT_HEADER}: {ATTACKER}\r\n");
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: e\r\n\r\n", "a".repeat(9000));
    let long_header =
        format!("GET /health HTTP/1.1\r\nHost: e\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let huge_body = format!(
        "POST /send_logs?cameraId=front HTTP/1.1\r\nHost: e\r\n{as_attacker}Content-Length: 99999999999999\r\n\r\n"
    );
    let mut garbled = vec![b'A'; 1 << 20];
    garbled[100] = 0x1b;
    garbled.extend_from_slice(b" /health HTTP/1.1\r\nHost: e\r\n\r\n");
    let cases: [(&str, Vec<u8>, u16, &str); 5] = [
        ("a 9,000-byte request line", long_path.into_bytes(), 414, "request line too long"),
        ("a 9,000-byte header line", long_header.into_bytes(), 400, "bad request"),
        (
            "a body declared larger than memory",
            huge_body.into_bytes(),
            413,
            "larger than the limit",
        ),
        ("a 1 MB method with control bytes", garbled, 400, "bad request"),
        (
            "an unknown path of nginx's own",
            b"GET /.edge-error HTTP/1.1\r\nHost: e\r\n\r\n".to_vec(),
            404,
            "no such path",
        ),
    ];
    for (what, request, status, says) in cases {
        let resp = exchange(edge, &request);
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"), "{what}");
        let error = resp.json()["error"].as_str().map(str::to_string);
        assert!(error.as_deref().is_some_and(|e| e.contains(says)), "{what}: {}", resp.text());
    }
    // HTTP/2.0 request lines: nginx answers 505 itself (tiny_http would deadlock on them).
    let resp = exchange(edge, b"GET / HTTP/2.0\r\n\r\n");
    assert_eq!(resp.status, 505, "{}", resp.text());

    // Past the users' burst from one address: 429 with Retry-After, as JSON.
    let health = format!("GET /health HTTP/1.1\r\nHost: e\r\n{as_attacker}\r\n");
    let mut stream = open(edge, Duration::from_secs(20)).expect("connect to the edge");
    let mut refused = None;
    for _ in 0..400 {
        stream.write_all(health.as_bytes()).expect("send /health");
        let resp = read_raw_response(&mut stream).expect("an answer");
        if resp.status != 200 {
            refused = Some(resp);
            break;
        }
    }
    let refused = refused.expect("400 requests at once from one address were all served");
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("too many requests"), "{}", refused.text());

    let api_log = system.api.proc.stderr_text();
    assert!(
        !api_log.contains("parked") && !api_log.contains("-> 413"),
        "a refusal reached the api:\n{api_log}"
    );
    // And the camera and its user never noticed.
    let agent = agent(Duration::from_secs(15));
    let resp = get_with(&agent, &system.logs_url(), None);
    assert_eq!(logs_of(&resp.json()), system.events_sorted());
}

#[test]
fn three_hundred_cameras_behind_one_address_all_hold_their_polls_through_the_edge() {
    let Some(nginx) = nginx_or_skip("three_hundred_cameras_behind_one_address") else {
        return;
    };
    const CAMERAS: usize = 300;
    let system = System::start(Some(&nginx));
    let edge = system.front_addr();
    let polls: Vec<JoinHandle<Option<u16>>> = (0..CAMERAS)
        .map(|i| {
            thread::spawn(move || {
                let mut stream = open(edge, Duration::from_secs(30))?;
                let request = format!(
                    "GET /poll_for_command?cameraId=nat-{i} HTTP/1.1\r\nHost: e\r\n{TEST_CLIENT_HEADER}: {ATTACKER}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).ok()?;
                read_raw_response(&mut stream).map(|r| r.status)
            })
        })
        .collect();
    let statuses: Vec<Option<u16>> = polls.into_iter().map(|p| p.join().unwrap_or(None)).collect();
    let held = statuses.iter().filter(|s| **s == Some(200)).count();
    assert_eq!(
        held,
        CAMERAS,
        "every poll from one NAT address is held and answered: {:?}",
        statuses.iter().filter(|s| **s != Some(200)).collect::<Vec<_>>()
    );
    // A 200 is the api's own noop at the end of the hold: nginx's refusals keep their status.
    let api_log = system.api.proc.stderr_text();
    assert!(!api_log.contains("-> 429"), "{api_log}");
}

/// The figure for docs/reliability.md: two waves of 50,000 polls with distinct `cameraId`s
/// against a bare api, each poll closed at once, and the api's RSS once each wave is forgotten.
/// The memory of forgotten cameras goes back to the allocator, which keeps it for the next
/// wave: the second wave must not grow the process. Run by hand:
/// `cargo test --release --test edge -- --ignored --nocapture fifty_thousand`.
#[test]
#[ignore = "a measurement (about three minutes); run by hand for docs/reliability.md"]
fn fifty_thousand_camera_ids_are_forgotten_and_memory_returns() {
    const IDS: usize = 50_000;
    let mut env = api_env();
    env.retain(|(name, _)| !matches!(*name, "POLL_HOLD_SECS" | "CAMERA_GRACE_SECS"));
    env.extend([("POLL_HOLD_SECS", "1".to_string()), ("CAMERA_GRACE_SECS", "1".to_string())]);
    let api = start_api(&env);
    let target: SocketAddr = host_port(&api.url).parse().expect("api address");
    let before = Usage::of(api.proc.pid());
    let mut after_waves = Vec::new();
    for wave in 0..2 {
        let started = Instant::now();
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done, pid) = (Arc::clone(&peak), Arc::clone(&done), api.proc.pid());
            thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    peak.fetch_max(Usage::of(pid).rss_kib, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let send = if wave == 0 { first_wave } else { second_wave };
        let sent = in_parallel(IDS, 16, send, target);
        wait_until("every camera to be forgotten", Duration::from_secs(180), || {
            get(&format!("{}/stats", api.url)).expect_json(200)["registry"]["cameras"] == 0
        });
        done.store(true, Ordering::SeqCst);
        let _ = sampler.join();
        let settled = settle(api.proc.pid(), before, SLACK, Duration::from_secs(60));
        let after = Usage::of(api.proc.pid());
        eprintln!(
            "| wave {}: {IDS} distinct cameraIds ({sent} polls sent and closed) | RSS {} KiB before, {} KiB peak, {} KiB once all forgotten ({:.1} s after the first poll); threads {} -> {}; back to baseline threads and fds: {settled:?} |",
            wave + 1,
            before.rss_kib,
            peak.load(Ordering::SeqCst),
            after.rss_kib,
            started.elapsed().as_secs_f64(),
            before.threads,
            after.threads,
        );
        after_waves.push(after.rss_kib);
    }
    assert!(
        after_waves[1] <= after_waves[0] + after_waves[0] / 4,
        "the second wave grew the process: {after_waves:?} KiB"
    );
}

fn first_wave(i: usize, target: SocketAddr) -> bool {
    dead_poll(&format!("wave1-{i}"), target)
}

fn second_wave(i: usize, target: SocketAddr) -> bool {
    dead_poll(&format!("wave2-{i}"), target)
}

/// A poll for `camera`, closed as soon as it is sent.
fn dead_poll(camera: &str, target: SocketAddr) -> bool {
    let Some(mut stream) = open(target, Duration::from_millis(1)) else {
        return false;
    };
    let request = format!("GET /poll_for_command?cameraId={camera} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).is_ok()
}
