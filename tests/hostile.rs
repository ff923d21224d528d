//! Hostile input: malformed, oversized, mistyped and unauthenticated requests.
//!
//! Proves that every kind of malformed query or body gets a 4xx JSON error (or, where the HTTP
//! engine cannot read a request at all, a closed connection) and that the server keeps serving
//! real `/logs` calls afterwards; that thousands of generated inputs never panic the pure parsers
//! and always map to 400, and a few hundred of them over HTTP get exactly the status the parsers
//! predict. Who may do what (tokens, forgery, the registry's bounds) is `access`.

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use camera_logs::ApiError;
use camera_logs::ServerConfig;
use camera_logs::{valid_camera_id, Query};
use camera_logs::{LogEntry, SendLogsBody};
use camera_logs::{Registry, RegistryConfig};

fn raw_post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_queries_get_400_json_errors() {
    let (system, events) = system_with_camera(test_config());
    let agent = agent(Duration::from_secs(30));
    let bad = [
        // Bad UTF-8, percent-encoded.
        "/logs?cameraId=%FF%FE",
        "/logs?cameraId=cam&startTimestamp=%FF%FE",
        "/logs?cameraId=cam&endTimestamp=%C3%28",
        "/poll_for_command?cameraId=%FF%FE",
        // Repeated parameters.
        "/logs?cameraId=cam&cameraId=cam",
        "/logs?cameraId=cam&startTimestamp=1&startTimestamp=1",
        "/logs?cameraId=cam&timeout=5&timeout=5",
        "/poll_for_command?cameraId=a&cameraId=a",
        // Numbers that are not plain finite decimals.
        "/logs?cameraId=cam&startTimestamp=1e400",
        "/logs?cameraId=cam&endTimestamp=-1e400",
        "/logs?cameraId=cam&startTimestamp=NaN",
        "/logs?cameraId=cam&startTimestamp=nan",
        "/logs?cameraId=cam&startTimestamp=inf",
        "/logs?cameraId=cam&endTimestamp=-Infinity",
        "/logs?cameraId=cam&startTimestamp=0x10",
        "/logs?cameraId=cam&startTimestamp=",
        "/logs?cameraId=cam&startTimestamp=%201",
        "/logs?cameraId=cam&startTimestamp=1_000",
        "/logs?cameraId=cam&startTimestamp=1.2.3",
        "/logs?cameraId=cam&startTimestamp=--1",
        "/logs?cameraId=cam&startTimestamp=1e",
        "/logs?cameraId=cam&startTimestamp=%E2%88%9E",
        "/logs?cameraId=cam&startTimestamp=2&endTimestamp=1",
        // Timeouts out of (0, 300].
        "/logs?cameraId=cam&timeout=0",
        "/logs?cameraId=cam&timeout=-0",
        "/logs?cameraId=cam&timeout=-1",
        "/logs?cameraId=cam&timeout=300.001",
        "/logs?cameraId=cam&timeout=NaN",
        "/logs?cameraId=cam&timeout=1e400",
        "/logs?cameraId=cam&timeout=0x10",
        // Camera ids.
        "/logs?cameraId=",
        "/logs?cameraId=a/b",
        "/logs?cameraId=%00",
        "/logs?cameraId=a%20b",
        "/logs?cameraId=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ];
    for path in bad {
        let resp = get_with(&agent, &format!("{}{path}", system.url), None);
        resp.assert_json_error(&[400], path);
    }
    let resp = post_with(
        &agent,
        &format!("{}/send_logs?cameraId=%FF%FE", system.url),
        br#"{"logs":[]}"#,
        None,
    );
    resp.assert_json_error(&[400], "send_logs with a bad-UTF-8 cameraId");
    assert_serving(&system, &events, "malformed queries");

    // -0 is a plain finite number: valid.
    for (query, start, end) in [
        ("startTimestamp=-0", Some(0.0), None),
        ("endTimestamp=-0", None, Some(0.0)),
        ("startTimestamp=-0&endTimestamp=0", Some(0.0), Some(0.0)),
    ] {
        let resp = get_with(&agent, &format!("{}/logs?cameraId=cam&{query}", system.url), None);
        assert_eq!(resp.status, 200, "{query}: {}", resp.text());
        assert_eq!(logs_of(&resp.json()), expected(&events, start, end), "{query}");
    }
    assert_serving(&system, &events, "-0 bounds");
}

#[test]
fn raw_non_ascii_bytes_in_the_request_line_do_not_hurt_the_server() {
    let (system, events) = system_with_camera(test_config());
    let mut request = b"GET /logs?cameraId=".to_vec();
    request.extend_from_slice(&[0xFF, 0xFE, b'x', 0x80]);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // tiny_http cannot read a non-ASCII request line, so this never reaches the server's code:
    // an answer must be a 4xx, and a closed connection is acceptable.
    match raw_exchange(system.addr, &request, false, PATIENCE) {
        Some(resp) => {
            eprintln!(
                "raw bytes 0xFF 0xFE in the request line: HTTP {} {:?}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
            assert!((400..500).contains(&resp.status), "HTTP {}", resp.status);
        }
        None => eprintln!("raw bytes 0xFF 0xFE in the request line: connection closed, no answer"),
    }
    assert_serving(&system, &events, "raw non-ASCII bytes");
}

#[test]
fn a_ten_megabyte_query_string_is_refused_and_the_server_survives() {
    let (system, events) = system_with_camera(test_config());
    let mut request = b"GET /logs?cameraId=".to_vec();
    request.resize(request.len() + 10 * 1024 * 1024, b'a');
    request.extend_from_slice(b"&timeout=5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let started = Instant::now();
    let outcome = raw_exchange(system.addr, &request, false, PATIENCE);
    let took = started.elapsed();
    match outcome {
        Some(resp) => {
            eprintln!(
                "10 MB query string: HTTP {} after {took:?}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
            resp.assert_json_error(&[400, 413, 414, 431], "10 MB query string");
        }
        None => eprintln!("10 MB query string: connection closed without an answer after {took:?}"),
    }
    assert_serving(&system, &events, "a 10 MB query string");
    let agent = agent(Duration::from_secs(10));
    assert_eq!(get_with(&agent, &format!("{}/health", system.url), None).status, 200);
}

// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_and_mistyped_send_logs_bodies_get_400() {
    let (system, events) = system_with_camera(test_config());
    let agent = agent(Duration::from_secs(30));
    let url = format!("{}/send_logs?cameraId=cam", system.url);
    let deep_array = "[".repeat(100_000);
    let deep_logs = format!("{{\"logs\":{}", "[".repeat(100_000));
    let deep_object = format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("100,000 '['", deep_array.into_bytes()),
        ("logs: 100,000 '['", deep_logs.into_bytes()),
        ("100,000 nested objects", deep_object.into_bytes()),
        ("empty body", Vec::new()),
        ("whitespace", b"  \n ".to_vec()),
        ("null", b"null".to_vec()),
        ("a string", br#""logs""#.to_vec()),
        ("an array", b"[]".to_vec()),
        ("no logs", br#"{"requestId":"0123"}"#.to_vec()),
        ("logs null", br#"{"logs":null}"#.to_vec()),
        ("logs an object", br#"{"logs":{"timestamp":1,"description":"x"}}"#.to_vec()),
        ("logs a string", br#"{"logs":"[]"}"#.to_vec()),
        ("timestamp a string", br#"{"logs":[{"timestamp":"1","description":"x"}]}"#.to_vec()),
        ("timestamp null", br#"{"logs":[{"timestamp":null,"description":"x"}]}"#.to_vec()),
        ("timestamp bool", br#"{"logs":[{"timestamp":true,"description":"x"}]}"#.to_vec()),
        ("timestamp 1e400", br#"{"logs":[{"timestamp":1e400,"description":"x"}]}"#.to_vec()),
        ("timestamp NaN", br#"{"logs":[{"timestamp":NaN,"description":"x"}]}"#.to_vec()),
        ("timestamp 0x10", br#"{"logs":[{"timestamp":0x10,"description":"x"}]}"#.to_vec()),
        ("description a number", br#"{"logs":[{"timestamp":1,"description":5}]}"#.to_vec()),
        ("description missing", br#"{"logs":[{"timestamp":1}]}"#.to_vec()),
        ("entry an array", br#"{"logs":[[1,"x",3]]}"#.to_vec()),
        ("requestId a number", br#"{"requestId":7,"logs":[]}"#.to_vec()),
        ("requestId an object", br#"{"requestId":{},"logs":[]}"#.to_vec()),
        (
            "bad UTF-8 in a string",
            b"{\"logs\":[{\"timestamp\":1,\"description\":\"\xff\xfe\"}]}".to_vec(),
        ),
        ("lone surrogate", br#"{"logs":[{"timestamp":1,"description":"\ud800"}]}"#.to_vec()),
        ("trailing garbage", br#"{"logs":[]} {"logs":[]}"#.to_vec()),
        ("truncated", br#"{"requestId":"ab","logs":[{"timestamp":1,"descr"#.to_vec()),
        ("duplicate field", br#"{"logs":[],"logs":[]}"#.to_vec()),
    ];
    for (what, body) in &bodies {
        let resp = post_with(&agent, &url, body, None);
        resp.assert_json_error(&[400], what);
    }
    assert_serving(&system, &events, "malformed bodies");

    // Deep nesting inside a field the server ignores: parsed (or refused) without harm.
    let ignored_deep =
        format!("{{\"logs\":[],\"extra\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let resp = post_with(&agent, &url, ignored_deep.as_bytes(), None);
    resp.assert_json_error(&[400, 404], "deep nesting in an ignored field");
    assert_serving(&system, &events, "deep nesting in an ignored field");
}

#[test]
fn a_million_item_logs_array_is_answered_within_a_deadline() {
    let (system, events) =
        system_with_camera(ServerConfig { max_body_bytes: 64 * 1024 * 1024, ..test_config() });
    let mut body = String::from(r#"{"requestId":"REQUEST","logs":["#);
    for i in 0..1_000_000u32 {
        if i > 0 {
            body.push(',');
        }
        // Descending timestamps, so the server has to sort.
        body.push_str(&format!(r#"{{"timestamp":{},"description":"e"}}"#, 1_000_000 - i));
    }
    body.push_str("]}");
    eprintln!("million-item body: {} bytes", body.len());
    let agent = agent(Duration::from_secs(120));

    // A fake camera "big" whose command is answered with the million items. Like a real camera
    // it keeps polling while the answer uploads (or the server would count it offline).
    let (commands_tx, commands) = crossbeam_channel::unbounded();
    let poll_url = format!("{}/poll_for_command?cameraId=big", system.url);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (agent, stop) = (agent.clone(), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Some(resp) = try_get(&agent, &poll_url, None) else {
                    return;
                };
                let command = resp.json();
                if command["command"] == "send_logs" {
                    let _ = commands_tx.send(command["requestId"].as_str().unwrap().to_string());
                }
            }
        })
    };
    wait_until("camera 'big' to poll", PATIENCE, || {
        system.server().registry().stats().cameras == 2
    });

    // An unknown request id: parsed, sorted, then 404.
    let send_url = format!("{}/send_logs?cameraId=big", system.url);
    let started = Instant::now();
    let resp = post_with(&agent, &send_url, body.as_bytes(), None);
    let took = started.elapsed();
    eprintln!("million items, unknown requestId: HTTP {} in {took:?}", resp.status);
    resp.assert_json_error(&[404], "a million items for an unknown request");
    assert!(took < PATIENCE, "took {took:?}");

    // The same answer to a real command: the caller gets exactly its own range of it.
    let logs_url =
        format!("{}/logs?cameraId=big&startTimestamp=10&endTimestamp=12&timeout=60", system.url);
    let caller = {
        let agent = agent.clone();
        thread::spawn(move || get_with(&agent, &logs_url, None))
    };
    let request_id = commands.recv_timeout(PATIENCE).expect("a command for the fake camera");
    let body = body.replacen("REQUEST", &request_id, 1);
    let started = Instant::now();
    let resp = post_with(&agent, &send_url, body.as_bytes(), None);
    let took = started.elapsed();
    eprintln!("million items, matching requestId: HTTP {} in {took:?}", resp.status);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let answer = caller.join().unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let want: Vec<LogEntry> = [10.0, 11.0, 12.0].map(|t| entry(t, "e")).to_vec();
    assert_eq!(logs_of(&answer.json()), want);
    stop.store(true, Ordering::SeqCst);
    poller.join().unwrap();
    assert_serving(&system, &events, "a million-item body");
}

/// Declares `declared` body bytes, sends fewer, closes the write side; returns the answer.
fn short_body_then_half_close(system: &TestServer, declared: usize) -> Option<Resp> {
    let sent = br#"{"logs":[{"timestamp":1,"descr"#;
    let mut request = format!(
        "POST /send_logs?cameraId=cam HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {declared}\r\n\r\n"
    )
    .into_bytes();
    request.extend_from_slice(sent);
    let started = Instant::now();
    let outcome = raw_exchange(system.addr, &request, true, PATIENCE);
    match &outcome {
        Some(resp) => eprintln!(
            "Content-Length {declared}, {} bytes sent, write side closed: HTTP {} after {:?}",
            sent.len(),
            resp.status,
            started.elapsed()
        ),
        None => eprintln!(
            "Content-Length {declared}, {} bytes sent, write side closed: connection closed \
             without an answer after {:?}",
            sent.len(),
            started.elapsed()
        ),
    }
    outcome
}

#[test]
fn a_long_body_cut_short_then_half_closed_gets_400() {
    let (system, events) = system_with_camera(test_config());
    // Over 1024 declared bytes, tiny_http leaves the body to the handler, which reads to EOF.
    let outcome = short_body_then_half_close(&system, 2000);
    assert_serving(&system, &events, "a short body");
    outcome
        .expect("no answer to a body cut short")
        .assert_json_error(&[400], "Content-Length 2000, short body");
}

#[test]
fn a_small_body_cut_short_is_refused_and_the_server_keeps_serving() {
    let (system, events) = system_with_camera(test_config());
    // Up to 1024 declared bytes, tiny_http 0.12 reads the body itself before the request reaches
    // the server's code, and on an early EOF closes the connection without an answer. That is
    // the one outcome besides a 400 JSON error that is acceptable: no hang, no crash.
    let outcome = short_body_then_half_close(&system, 100);
    if let Some(response) = outcome {
        response.assert_json_error(&[400], "Content-Length 100, short body");
    }
    assert_serving(&system, &events, "a short body");
}

#[test]
fn an_absurd_content_length_is_413_and_the_server_survives() {
    let (system, events) = system_with_camera(test_config());
    let agent = agent(Duration::from_secs(10));
    let stats_url = format!("{}/stats", system.url);
    let parked = || {
        get_with(&agent, &stats_url, None).json()["server"]["parkedConnections"].as_u64().unwrap()
    };
    let parked_before = parked();

    // Kept open until the end: a parked connection must not cost the server anything else.
    let mut held = Vec::new();
    let mut answers = Vec::new();
    for path in ["/send_logs?cameraId=cam", "/send_logs?cameraId=nobody"] {
        let mut stream = TcpStream::connect(system.addr).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 99999999999999\r\n\r\n{{\"logs\":["
        )
        .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let (status, headers) = read_raw_head(&mut reader)
            .unwrap_or_else(|| panic!("{path}: no answer to a 99999999999999-byte body"));
        let length = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        // Without a length the body ends only when the connection closes, and a parked
        // connection never does: reading on would hang.
        let body = length.map(|n| {
            let mut body = vec![0; n];
            reader.read_exact(&mut body).map(|_| body)
        });
        answers.push((path, status, headers, body));
        held.push(stream);
    }
    assert_serving(&system, &events, "a 99999999999999-byte Content-Length");
    assert_eq!(parked(), parked_before + 2, "parked connections are counted");

    // A Content-Length beyond u64: tiny_http ignores it, so the body is empty: 400.
    let request = "POST /send_logs?cameraId=cam HTTP/1.1\r\nHost: x\r\n\
                   Content-Length: 99999999999999999999999999\r\nConnection: close\r\n\r\n";
    match raw_exchange(system.addr, request.as_bytes(), false, PATIENCE) {
        Some(resp) => resp.assert_json_error(&[400, 413], "a Content-Length beyond u64"),
        None => eprintln!("a Content-Length beyond u64: connection closed without an answer"),
    }
    assert_serving(&system, &events, "a Content-Length beyond u64");
    drop(held);

    for (path, status, headers, body) in answers {
        let context = format!("{path} with Content-Length 99999999999999");
        let Some(body) = body else {
            panic!(
                "{context}: HTTP {status} has no Content-Length (nor a body), and the parked \
                 connection never closes, so a client waiting for the body hangs; headers: \
                 {headers:?}"
            );
        };
        let body = body.unwrap_or_else(|e| panic!("{context}: reading the body: {e}"));
        Resp { status, headers, body }.assert_json_error(&[413], &context);
    }
}

// ---------------------------------------------------------------------------------------------

const BASE_QUERIES: &[&str] = &[
    "cameraId=cam&startTimestamp=1700000000.25&endTimestamp=1700000004&timeout=5",
    "cameraId=front-door_1.a&startTimestamp=-0&timeout=0.5",
    "startTimestamp=1e3&endTimestamp=%2B2.5e3",
    "cameraId=cam&endTimestamp=.5&timeout=300",
    "cameraId=cam",
    "",
];

const QUERY_SPECIALS: &[&str] = &[
    "%",
    "%F",
    "%FF",
    "%FE%FF",
    "%C3%28",
    "%00",
    "&",
    "=",
    "&&",
    "==",
    "+",
    "%2B",
    "%20",
    "?",
    "#",
    ";",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "0x10",
    "-0",
    "-",
    ".",
    "e",
    "E5",
    "1_0",
    "9999999999999999999999999",
    "é",
    "\u{FFFD}",
    "\u{0}",
    "startTimestamp=",
    "endTimestamp=",
    "timeout=",
    "cameraId=",
    "&cameraId=cam",
    "&timeout=0",
    "&timeout=301",
    "&startTimestamp=1",
    "&endTimestamp=0",
];

const BASE_BODIES: &[&str] = &[
    r#"{"requestId":"0123456789abcdef0123456789abcdef","logs":[{"timestamp":1700000000.25,"description":"motion detected at (812, 403)"}]}"#,
    r#"{"logs":[]}"#,
    r#"{"requestId":null,"logs":[{"timestamp":-0,"description":""},{"timestamp":1e308,"description":"\u00e9 \"q\" \\"}]}"#,
    r#"{"logs":[{"timestamp":2,"description":"b"},{"timestamp":1,"description":"a"}],"requestId":"x"}"#,
];

const BODY_SPECIALS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "\"",
    "\\",
    "\\u",
    "\\ud800",
    "\\u0000",
    ",",
    ":",
    "null",
    "true",
    "NaN",
    "Infinity",
    "-",
    "1e400",
    "-1e400",
    "0x10",
    "-0",
    "1.",
    ".5",
    "\u{FFFD}",
    "é",
    "[[[[[[[[",
    "{\"logs\":",
    "\"timestamp\":",
    "\"description\":",
    "\"requestId\":",
    "99999999999999999999",
];

/// One to four random mutations of `base`: byte flips, truncation, duplication, deletion and
/// insertion of special strings or raw bytes.
fn mutate(rng: &mut Rng, base: &[u8], specials: &[&str]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = if out.is_empty() { 0 } else { rng.below(out.len() + 1) };
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.below(256) as u8;
            }
            2 => out.truncate(at),
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = start + rng.below(out.len() - start) + 1;
                let copy = out[start..end].to_vec();
                out.splice(at..at, copy);
            }
            4 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            5 => {
                let number = format!("{}", rng.next_u64() as i64 as f64 / 7.0);
                out.splice(at..at, number.into_bytes());
            }
            _ => {
                let special = rng.pick(specials).as_bytes().to_vec();
                out.splice(at..at, special);
            }
        }
    }
    out
}

/// What the server's parsers make of a query: the same calls, in the same order, as `/logs`.
type Parsed = Result<(String, Option<f64>, Option<f64>, Duration), ApiError>;

fn parse_query(raw: &str) -> Parsed {
    let q = Query::parse(raw)?;
    let camera = q.camera_id()?;
    let start = q.number("startTimestamp")?;
    let end = q.number("endTimestamp")?;
    let timeout = q.timeout(Duration::from_secs(20))?;
    Ok((camera, start, end, timeout))
}

#[test]
fn thousands_of_generated_inputs_never_panic_the_parsers_and_errors_are_400() {
    quiet();
    let mut rng = Rng::new(0xC0FF_EE00_0000_0001);
    let registry = Registry::new(RegistryConfig {
        poll_hold: Duration::from_millis(1),
        ack_timeout: Duration::from_secs(1),
        camera_grace: Duration::from_secs(60),
        max_waiting_per_camera: 8,
        camera_forget: Duration::from_secs(3600),
        max_cameras: 10,
        arrival_window: Duration::ZERO,
    });
    registry.poll("cam").unwrap();
    let (mut query_errors, mut body_errors) = (0, 0);

    for i in 0..4000 {
        let base = rng.pick(BASE_QUERIES).as_bytes();
        let bytes = mutate(&mut rng, base, QUERY_SPECIALS);
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let extra = String::from_utf8_lossy(&mutate(&mut rng, b"x", QUERY_SPECIALS)).into_owned();
        let outcome = catch_unwind(|| {
            let parsed = parse_query(&raw);
            let extra = Query::parse(&raw).map(|q| (q.number(&extra), q.get(&extra).is_some()));
            (parsed, extra)
        });
        let Ok((parsed, extra)) = outcome else {
            panic!("query #{i} panicked the parser: {raw:?}");
        };
        match parsed {
            Ok((camera, start, end, timeout)) => {
                assert!(valid_camera_id(&camera), "query #{i} {raw:?}: id {camera:?}");
                assert!(start.is_none_or(f64::is_finite), "query #{i} {raw:?}");
                assert!(end.is_none_or(f64::is_finite), "query #{i} {raw:?}");
                assert!(
                    timeout > Duration::ZERO && timeout <= Duration::from_secs(300),
                    "query #{i} {raw:?}: {timeout:?}"
                );
            }
            Err(e) => {
                query_errors += 1;
                assert_eq!(e.status(), 400, "query #{i} {raw:?}: {e}");
            }
        }
        if let Ok((Err(e), _)) = extra {
            assert_eq!(e.status(), 400, "query #{i} {raw:?}: {e}");
        }

        let base = rng.pick(BASE_BODIES).as_bytes();
        let body = mutate(&mut rng, base, BODY_SPECIALS);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            serde_json::from_slice::<SendLogsBody>(&body)
                .map_err(|e| ApiError::BadRequest(format!("malformed send_logs body: {e}")))
                .and_then(|parsed| registry.complete("cam", parsed))
        }));
        let Ok(result) = outcome else {
            panic!(
                "body #{i} panicked the parser or the registry: {:?}",
                String::from_utf8_lossy(&body)
            );
        };
        let status = result.map_or_else(|e| e.status(), |_| 200);
        // No command is in flight, so a body that parses is an unknown request: 404.
        assert!(
            [400, 404].contains(&status),
            "body #{i} {:?}: HTTP {status}",
            String::from_utf8_lossy(&body)
        );
        body_errors += usize::from(status == 400);
    }
    eprintln!("4000 queries: {query_errors} refused; 4000 bodies: {body_errors} refused");
    assert!(query_errors > 400 && query_errors < 3600, "mutations too tame or too wild");
    assert!(body_errors > 400 && body_errors < 4000, "mutations too tame or too wild");
}

#[test]
fn hundreds_of_generated_requests_get_exactly_the_predicted_json_answer() {
    let (system, events) = system_with_camera(test_config());
    // "sink" is known (it polled once) and never has a command in flight.
    let sink_poll = b"GET /poll_for_command?cameraId=sink HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut sink = TcpStream::connect(system.addr).unwrap();
    sink.write_all(sink_poll).unwrap();
    wait_until("camera 'sink' to be known", PATIENCE, || {
        system.server().registry().stats().cameras == 2
    });
    let _ = sink.shutdown(Shutdown::Both);

    let mut rng = Rng::new(0xBAD_5EED);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..300 {
        let (request, predicted, what) = if i % 2 == 0 {
            let base = rng.pick(BASE_QUERIES).as_bytes();
            let bytes = mutate(&mut rng, base, QUERY_SPECIALS);
            let query = request_line_safe(&bytes);
            let predicted = match parse_query(&query) {
                Err(e) => vec![e.status()],
                Ok((_, Some(start), Some(end), _)) if start > end => vec![400],
                Ok((camera, ..)) if camera != "cam" => vec![404],
                // A timeout that the camera's round trip may not fit in.
                Ok((.., timeout)) if timeout < Duration::from_secs(5) => vec![200, 504],
                Ok(_) => vec![200],
            };
            let request =
                format!("GET /logs?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            (request.into_bytes(), predicted, format!("GET /logs?{query}"))
        } else {
            let base = rng.pick(BASE_BODIES).as_bytes();
            let body = mutate(&mut rng, base, BODY_SPECIALS);
            let predicted = match serde_json::from_slice::<SendLogsBody>(&body) {
                Err(_) => vec![400],
                Ok(_) => vec![404],
            };
            let what = format!("POST /send_logs {:?}", String::from_utf8_lossy(&body));
            (raw_post("/send_logs?cameraId=sink", &body), predicted, what)
        };
        let resp = raw_exchange(system.addr, &request, false, PATIENCE)
            .unwrap_or_else(|| panic!("request #{i} got no answer: {what}"));
        assert!(
            predicted.contains(&resp.status),
            "request #{i}: {what}: expected {predicted:?}, got HTTP {} {}",
            resp.status,
            resp.text()
        );
        if resp.status == 200 {
            assert!(resp.json()["logs"].is_array(), "request #{i}: {what}");
        } else {
            resp.assert_is_json_error(&format!("request #{i}: {what}"));
        }
        *statuses.entry(resp.status).or_insert(0) += 1;
    }
    eprintln!("300 generated requests: {statuses:?}");
    let agent = agent(Duration::from_secs(10));
    let health = get_with(&agent, &format!("{}/health", system.url), None);
    assert_eq!((health.status, health.json()), (200, serde_json::json!({"status": "ok"})));
    assert_serving(&system, &events, "generated requests");
}
