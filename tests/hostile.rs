//! Hostile input: malformed, oversized, mistyped and unauthenticated requests.
//!
//! Proves that every kind of malformed query or body gets a 4xx JSON error (or, where the HTTP
//! engine cannot read a request at all, a closed connection) and that the server keeps serving
//! real `/logs` calls afterwards. Generated inputs are `fuzz`; who may do what (tokens, forgery,
//! the registry's bounds) is `access`.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use camera_logs::LogEntry;
use camera_logs::ServerConfig;

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
    wait_until("camera 'big' to poll", PATIENCE, || system.stats().cameras == 2);

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
    let parked = || system.server_stats()["parkedConnections"].as_u64().unwrap();
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
