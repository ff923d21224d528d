//! Generated inputs over HTTP, from fixed seeds: thousands of mutated `send_logs` bodies are
//! each answered 400 when they are not a valid body and 404 when they are (no command is in
//! flight), never a 5xx, and the server keeps serving; a few hundred mutated `/logs` queries and
//! bodies get exactly the status predicted here from the contract (the parameters each endpoint
//! accepts are `Route::params`). The query parser's own fuzz is a unit test
//! (src/server/query/tests.rs).

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use crate::common::mutate::{mutate, BASE_QUERIES, QUERY_SPECIALS};
use crate::common::*;
use camera_logs::{valid_camera_id, Route, SendLogsBody};

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

/// The status `GET /logs?{query}` must get from a server that knows camera `cam` (and no
/// camera `default`), worked out from the contract rather than by the server's own parser: a
/// parameter `/logs` does not take, or one given twice, is 400; so is an invalid id, a bound or
/// timeout that is not a plain finite decimal, a bound above 1e11 (milliseconds), a start after
/// the end and a timeout outside (0, 300]. A short timeout may run out before the camera answers.
fn predict_logs(query: &str, default_timeout: Duration) -> Vec<u16> {
    let mut params = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if !Route::Logs.params().contains(&key.as_ref()) {
            return vec![400];
        }
        if params.insert(key.into_owned(), value.into_owned()).is_some() {
            return vec![400];
        }
    }
    let number = |name: &str| -> Result<Option<f64>, ()> {
        let Some(raw) = params.get(name) else {
            return Ok(None);
        };
        let plain = raw
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
        match raw.parse::<f64>() {
            Ok(value) if plain && value.is_finite() => Ok(Some(value)),
            _ => Err(()),
        }
    };
    let timestamp = |name: &str| {
        number(name).and_then(|t| match t {
            Some(seconds) if seconds > 1e11 => Err(()),
            t => Ok(t),
        })
    };
    let camera = params.get("cameraId").map_or("default", String::as_str);
    let (Ok(start), Ok(end), Ok(timeout)) =
        (timestamp("startTimestamp"), timestamp("endTimestamp"), number("timeout"))
    else {
        return vec![400];
    };
    if !valid_camera_id(camera) || start.zip(end).is_some_and(|(start, end)| start > end) {
        return vec![400];
    }
    let timeout = match timeout {
        None => default_timeout,
        Some(secs) if secs > 0.0 && secs <= 300.0 => Duration::from_secs_f64(secs),
        Some(_) => return vec![400],
    };
    if camera != "cam" {
        vec![404]
    } else if timeout < Duration::from_secs(5) {
        // A timeout that the camera's round trip may not fit in.
        vec![200, 504]
    } else {
        vec![200]
    }
}

/// The status a `send_logs` body must get for a known camera with no command in flight: 400 if
/// it is not a valid body (JSON of the documented shape), else 404 (no such command).
fn predict_send_logs(body: &[u8]) -> u16 {
    match serde_json::from_slice::<SendLogsBody>(body) {
        Ok(parsed) if parsed.logs.iter().all(|e| e.timestamp.is_finite()) => 404,
        _ => 400,
    }
}

/// Makes camera "sink" known with one poll that its client then leaves: it never has a command
/// in flight.
fn known_sink(system: &TestServer) {
    let sink_poll = b"GET /poll_for_command?cameraId=sink HTTP/1.1\r\nHost: x\r\n\r\n";
    let before = system.stats().cameras;
    let mut sink = TcpStream::connect(system.addr).unwrap();
    sink.write_all(sink_poll).unwrap();
    wait_until("camera 'sink' to be known", PATIENCE, || system.stats().cameras == before + 1);
    let _ = sink.shutdown(Shutdown::Both);
}

#[test]
fn thousands_of_generated_send_logs_bodies_get_400_or_404_and_never_a_5xx() {
    let (system, events) = system_with_camera(test_config());
    known_sink(&system);
    let agent = agent(PATIENCE);
    let url = format!("{}/send_logs?cameraId=sink", system.url);
    let mut rng = Rng::new(0xC0FF_EE00_0000_0001);
    let mut body_errors = 0;
    for i in 0..4000 {
        let base = rng.pick(BASE_BODIES).as_bytes();
        let body = mutate(&mut rng, base, BODY_SPECIALS);
        let what = format!("body #{i} {:?}", String::from_utf8_lossy(&body));
        let resp = post_with(&agent, &url, &body, None);
        assert!(resp.status < 500, "{what}: HTTP {} {}", resp.status, resp.text());
        assert_eq!(resp.status, predict_send_logs(&body), "{what}: {}", resp.text());
        resp.assert_is_json_error(&what);
        body_errors += usize::from(resp.status == 400);
    }
    eprintln!("4000 bodies: {body_errors} refused as malformed");
    assert!(body_errors > 400 && body_errors < 4000, "mutations too tame or too wild");
    assert_serving(&system, &events, "generated bodies");
}

#[test]
fn hundreds_of_generated_requests_get_exactly_the_predicted_json_answer() {
    let config = test_config();
    let default_timeout = config.logs_timeout;
    let (system, events) = system_with_camera(config);
    // "sink" is known (it polled once) and never has a command in flight.
    known_sink(&system);

    let mut rng = Rng::new(0xBAD_5EED);
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..300 {
        let (request, predicted, what) = if i % 2 == 0 {
            let base = rng.pick(BASE_QUERIES).as_bytes();
            let bytes = mutate(&mut rng, base, QUERY_SPECIALS);
            let query = request_line_safe(&bytes);
            let predicted = predict_logs(&query, default_timeout);
            let request =
                format!("GET /logs?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            (request.into_bytes(), predicted, format!("GET /logs?{query}"))
        } else {
            let base = rng.pick(BASE_BODIES).as_bytes();
            let body = mutate(&mut rng, base, BODY_SPECIALS);
            let predicted = vec![predict_send_logs(&body)];
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
