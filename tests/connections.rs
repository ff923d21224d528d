//! The listener and the pool under hostile or unlucky connections (src/server/listener.rs,
//! src/server/pool.rs): each test here but the pipelining one is the one that fails without a
//! workaround for a tiny_http 0.12 gap, and is named beside that workaround; pipelined requests,
//! which tiny_http answers in order itself, are checked to stay so.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use camera_logs::ServerConfig;

fn config(header_timeout: Duration) -> ServerConfig {
    ServerConfig { header_timeout, ..test_config() }
}

/// Whether the server has closed this connection: a read sees EOF or a reset (not a timeout).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// A fresh connection gets `200` for `/health`; false (never a panic) when refused or unanswered.
fn new_connection_served(base: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(host_port(base)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let sent = stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut answer = Vec::new();
    sent.is_ok() && stream.read_to_end(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200")
}

/// The `server` section of `/stats`, field `name`, as a number.
fn server_stat(base: &str, name: &str) -> u64 {
    let stats = get(&format!("{base}/stats")).expect_json(200);
    stats["server"][name].as_u64().unwrap_or_else(|| panic!("no server.{name} in {stats}"))
}

#[test]
fn idle_connections_are_closed_after_the_header_timeout() {
    let events = fixture(20);
    let (server, _camera) = server_with_camera(config(Duration::from_secs(2)), "front", &events);
    let opened = Instant::now();
    let mut idle: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect(host_port(&server.url)).expect("idle connection"))
        .collect();

    // A normal call is answered, exactly, while the 500 sit there.
    let answer = get(&logs_url(&server.url, "front", Some(ts(3)), Some(ts(6)), None)).expect_logs();
    assert_eq!(answer.logs, expected(&events, Some(ts(3)), Some(ts(6))));

    // Every idle connection is closed by the server, and not before the timeout.
    wait_until("all 500 idle connections are closed", PATIENCE, || {
        idle.retain_mut(|stream| !closed_by_server(stream));
        idle.is_empty()
    });
    let took = opened.elapsed();
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}, before the 2 s timeout");
    let answer = get(&logs_url(&server.url, "front", None, None, None)).expect_logs();
    assert_eq!(answer.logs.len(), 20, "still serving afterwards");

    // A head or a body that stalls is dropped too, and leaves no handler busy.
    let mut stalled_head = TcpStream::connect(host_port(&server.url)).unwrap();
    stalled_head.write_all(b"GET /health HTTP/1.1\r\nHost: te").unwrap();
    let mut stalled_body = TcpStream::connect(host_port(&server.url)).unwrap();
    let head =
        "POST /send_logs?cameraId=x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{\"logs\":";
    stalled_body.write_all(head.as_bytes()).unwrap();
    wait_until("both stalled connections are closed", PATIENCE, || {
        closed_by_server(&mut stalled_head) && closed_by_server(&mut stalled_body)
    });
    // The only request in service is this /stats call itself; the camera's held poll is one more.
    wait_until("no handler busy but the poll and this call", PATIENCE, || {
        server_stat(&server.url, "busyHandlers") <= 2
    });
}

#[test]
fn an_idle_server_keeps_its_accept_loop() {
    // accept() on the listening socket times out after HEADER_TIMEOUT_SECS too (the option that
    // gives accepted sockets their timeout is the listener's own), which ends tiny_http's accept
    // loop; an empty loopback connection every half timeout keeps it from ever waiting that long.
    let server = TestServer::start(config(Duration::from_secs(1)));
    // What is measured is a quiet period itself: any connection, /stats included, would reset
    // accept()'s clock, so the server is looked at only once it is over.
    let quiet = Duration::from_secs(6);
    thread::sleep(quiet);
    let restarts = server_stat(&server.url, "acceptLoopRestarts");
    // Without the nudge: a restart per idle second. A nudge made late by a loaded machine may
    // cost one or two.
    assert!(restarts <= 2, "{restarts} accept loop restarts in {quiet:?} of quiet");
    assert!(new_connection_served(&server.url));
}

/// The `api` binary under `ulimit -n limit`, listening on 127.0.0.1.
fn api_with_fd_limit(limit: u32) -> (Proc, String) {
    let script = format!("ulimit -n {limit} && exec {}", env!("CARGO_BIN_EXE_api"));
    let envs = [
        ("HOST", "127.0.0.1".to_string()),
        ("PORT", "0".to_string()),
        ("HEADER_TIMEOUT_SECS", "2".to_string()),
    ];
    let mut proc = Proc::spawn_args("api", "/bin/sh", &["-c", &script], &envs);
    let url = wait_for("the api's listening line", PATIENCE, || {
        let lines = proc.stderr_lines();
        let found =
            lines.iter().find_map(|l| l.split("API server listening on ").nth(1).map(str::trim));
        match found {
            Some(url) => Ok(url.to_string()),
            None if proc.exited() => panic!("api exited: {}", proc.stderr_text()),
            None => Err("not yet".to_string()),
        }
    });
    (proc, url)
}

#[test]
fn the_server_accepts_again_after_running_out_of_descriptors() {
    let (api, url) = api_with_fd_limit(64);
    assert!(new_connection_served(&url));
    // Connections that say nothing, well past the descriptors the api has: accept() fails with
    // EMFILE, or the copy of an accepted socket does (tiny_http panics): either ends tiny_http's
    // accept loop for good.
    let flood: Vec<TcpStream> =
        (0..100).filter_map(|_| TcpStream::connect(host_port(&url)).ok()).collect();
    wait_for("the api to run out of descriptors", PATIENCE, || {
        let logged = api
            .stderr_lines()
            .iter()
            .any(|l| l.contains("accept loop") && l.contains("starting another"));
        if logged {
            Ok(())
        } else {
            Err(api.stderr_text())
        }
    });
    drop(flood);
    // Once descriptors are free, a new accept loop takes connections again.
    wait_until("a new connection is served again", PATIENCE, || new_connection_served(&url));
    assert!(server_stat(&url, "acceptLoopRestarts") >= 1);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    // tiny_http hands over every pipelined request at once and writes each answer only after
    // the one before: a held poll's noop comes first, then the 200 answers behind it. (Each
    // waits on a handler thread meanwhile; the edge does not pipeline to the api.)
    let server =
        TestServer::start(ServerConfig { poll_hold: Duration::from_secs(2), ..test_config() });
    let mut stream = TcpStream::connect(host_port(&server.url)).unwrap();
    let mut requests = b"GET /poll_for_command?cameraId=piped HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    for _ in 0..200 {
        requests.extend_from_slice(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    stream.write_all(&requests).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reader = std::io::BufReader::new(stream);
    for i in 0..201 {
        let mut resp = read_head(&mut reader);
        read_body(&mut reader, &mut resp);
        assert_eq!(resp.status, 200, "answer {i}");
        let expected = if i == 0 { r#"{"command":"noop"}"# } else { r#"{"status":"ok"}"# };
        assert_eq!(resp.text(), expected, "answer {i}");
    }
    // And the threads they took are let go (the /stats call itself is the one busy).
    wait_until("the handlers are free", PATIENCE, || server_stat(&server.url, "busyHandlers") == 1);
}

/// The slowest of 20 bursts of `size` `request`s at once, each on a fresh connection kept open
/// until the whole burst is answered (as the edge keeps its upstream connections).
fn slowest_of_bursts(base: &str, size: usize, request: &'static [u8]) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let calls: Vec<_> = (0..size)
            .map(|_| {
                let base = base.to_string();
                thread::spawn(move || {
                    let started = Instant::now();
                    let mut stream = connect(&base);
                    stream.write_all(request).expect("write the request");
                    (read_response(&mut stream), started.elapsed(), stream)
                })
            })
            .collect();
        let mut open = Vec::new();
        for call in calls {
            let (resp, took, stream) = call.join().unwrap();
            assert_eq!(resp.status, 200, "{}", resp.text());
            slowest = slowest.max(took);
            open.push(stream);
        }
    }
    slowest
}

#[test]
fn bursts_of_calls_on_fresh_connections_are_taken_at_once() {
    // tiny_http's connection pool can lose a wake-up when connections arrive together, leaving
    // one queued until some other connection arrives. When every call waits for the camera, the
    // queued one may be the camera's: the pool is nudged every 100 ms while calls wait.
    let events = fixture(20);
    let (server, _camera) = server_with_camera(test_config(), "cam", &events);
    let request = b"GET /logs?cameraId=cam HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let slowest = slowest_of_bursts(&server.url, 30, request);
    // Without the nudge the stuck call waits for the quiet nudge (4 s) or the next connection.
    assert!(slowest < Duration::from_secs(3), "the slowest call of 600 took {slowest:?}");
}

#[test]
fn bursts_of_calls_that_wait_for_nothing_are_taken_at_once() {
    // The same lost wake-up, with no call waiting for a camera (a burst through the edge opens
    // fresh upstream connections, as for `curl_parallel.sh 10`; the calls the pool took are
    // answered at once): the pool is nudged every 100 ms for a second after any request, and
    // each nudge frees one.
    let server = TestServer::start(test_config());
    let request = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    let slowest = slowest_of_bursts(&server.url, 10, request);
    // Without it, the quiet nudge (4 s) frees one at a time.
    assert!(slowest < Duration::from_secs(3), "the slowest call of 200 took {slowest:?}");
}
