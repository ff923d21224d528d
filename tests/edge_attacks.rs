//! Every attack of docs/reliability.md's table, through the nginx edge in front of the `api`
//! binary ([`System`]): each leaves the api's descriptors and threads at their baseline while a
//! legitimate camera and user keep working.
//!
//! Skips with a one-line reason where nginx is not installed; `.ci/run` installs it.
//! `bare_api_attack_table` (ignored: it leaves a bare api broken, which is its point) runs the
//! same attacks against the api with no edge, for the table in docs/reliability.md:
//! `cargo test --release --test tests -- --ignored --nocapture bare_api_attack_table`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::common::edge::{nginx_or_skip, settle, Usage, TEST_CLIENT_HEADER};
use crate::common::*;
use crate::edge::{in_parallel, open, System, ATTACKER, SLACK};
use camera_logs::LogEntry;

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

fn attack_and_measure(system: &System, attack: &Attack, within: Duration) -> Row {
    let before = system.usage();
    let legit = Legit::start(system.logs_url(), system.events_sorted());
    let outcome = (attack.run)(system.front_addr());
    let legit = legit.finish();
    let after = system.usage();
    let settled = settle(system.api.proc.pid(), before, SLACK, within);
    Row { attack: attack.name, outcome, legit, before, after, settled }
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
