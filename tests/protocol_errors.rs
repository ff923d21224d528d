//! The wire protocol's rules and every error path, over real HTTP: 400 for each kind of bad
//! query, 404 / 405 (with `Allow`) / 401, the camera side (noop at the end of a hold, the shape
//! of a `send_logs` command with open sides as f64::MIN / f64::MAX, duplicate, unknown, foreign
//! and id-less answers, malformed bodies, 413 by Content-Length and by chunked transfer, and a
//! declared Content-Length of 99999999999999 that must not bring the server down). Every
//! response checked is `application/json` and every error is exactly `{"error": "<sentence>"}`;
//! after the error paths the same server still answers a normal `/logs` call exactly.

use std::io::{BufReader, Read, Write};
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

/// A normal call still gets its exact answer.
fn assert_still_serves(base: &str, camera: &str, events: &[camera_logs::LogEntry]) {
    let (start, end) = (Some(ts(2)), Some(ts(9)));
    let answer = get(&logs_url(base, camera, start, end, Some(20.0))).expect_logs();
    assert_eq!(answer.logs, expected(events, start, end));
}

#[test]
fn bad_query_parameters_are_400_with_a_json_error() {
    let events = fixture(20);
    let (server, _camera) = server_with_camera(test_config(), "front", &events);

    let not_numbers = [
        "NaN", "nan", "inf", "-inf", "Infinity", "1e400", "-1e400", "0x10", "", "abc", "1,5",
        "%201", "1%00",
    ];
    let mut cases: Vec<(String, &str)> = Vec::new();
    for bad in not_numbers {
        cases.push((format!("cameraId=front&startTimestamp={bad}"), "startTimestamp"));
        cases.push((format!("cameraId=front&endTimestamp={bad}"), "endTimestamp"));
        cases.push((format!("cameraId=front&timeout={bad}"), "timeout"));
    }
    for bad in ["0", "-0", "-1", "300.001", "301", "1e9"] {
        cases.push((format!("cameraId=front&timeout={bad}"), "timeout"));
    }
    cases.push((
        format!("cameraId=front&startTimestamp={}&endTimestamp={}", ts(5), ts(4)),
        "startTimestamp",
    ));
    for repeated in [
        "cameraId=front&cameraId=front",
        "cameraId=front&startTimestamp=1&startTimestamp=1",
        "cameraId=front&endTimestamp=1&endTimestamp=2",
        "cameraId=front&timeout=1&timeout=1",
    ] {
        cases.push((repeated.to_string(), "more than once"));
    }
    let too_long = "x".repeat(65);
    for bad_id in ["", "a%20b", "..%2Fetc", "caf%C3%A9", "%FF%FE", "a%00", too_long.as_str()] {
        cases.push((format!("cameraId={bad_id}"), "cameraId"));
    }

    // A parameter /logs does not take (a typo must not silently widen the answer).
    for (query, named) in [
        ("camera_id=front", "'camera_id'"),
        ("cameraId=front&start=1", "'start'"),
        ("cameraId=front&starttimestamp=1", "'starttimestamp'"),
        ("cameraId=front&limit=1", "'limit'"),
    ] {
        cases.push((query.to_string(), named));
    }
    // Milliseconds where seconds are due: after the year 5000.
    for bad in ["1796167040139", "100000000001", "1e12"] {
        cases.push((format!("cameraId=front&startTimestamp={bad}"), "milliseconds"));
        cases.push((format!("cameraId=front&endTimestamp={bad}"), "milliseconds"));
    }

    for (query, named) in &cases {
        let response = get(&format!("{}/logs?{query}", server.url));
        let message = response.expect_error(400);
        assert!(message.contains(named), "{query}: {message:?} should name {named}");
    }
    // Every endpoint refuses a parameter it does not take, naming it.
    for route in camera_logs::Route::ALL {
        let url = format!("{}{}?bogus=1", server.url, route.path());
        let body = (route.method() == "POST").then_some(&br#"{"logs":[]}"#[..]);
        let message = request(route.method(), &url, body).expect_error(400);
        assert!(message.contains("'bogus'"), "{} {url}: {message:?}", route.method());
    }
    get(&format!("{}/logs?cameraId=front&endTimestamp=100000000000", server.url)).expect_logs();
    // The bounds of what is accepted.
    get(&format!("{}/logs?cameraId=front&timeout=300", server.url)).expect_logs();
    get(&format!("{}/logs?cameraId=front&timeout=0.5e1", server.url)).expect_logs();
    get(&logs_url(&server.url, "front", Some(ts(3)), Some(ts(3)), None)).expect_logs();
    get(&format!("{}/logs?cameraId={}", server.url, "x".repeat(64))).expect_error(404);
    assert_still_serves(&server.url, "front", &events);
}

#[test]
fn unknown_cameras_and_paths_are_404() {
    let events = fixture(20);
    let server = TestServer::start(test_config());
    let message = get(&logs_url(&server.url, "ghost", None, None, Some(5.0))).expect_error(404);
    assert!(message.contains("ghost"), "{message}");
    let _camera = Camera::start(&server.url, "front", &events);
    server.wait_for_camera("front");
    get(&logs_url(&server.url, "ghost", None, None, None)).expect_error(404);
    get(&format!("{}/logs", server.url)).expect_error(404); // "default" never polled

    // Unknown paths ("/" is the web page: tests/web.rs).
    for path in ["/nope", "/logs/", "/LOGS", "/logs/front", "/health/x", "//logs"] {
        get(&format!("{}{path}", server.url)).expect_error(404);
    }
    request("POST", &format!("{}/nope", server.url), Some(&b"{}"[..])).expect_error(404);
    assert_eq!(server.stats().cameras, 1, "404s create no camera");
    assert_still_serves(&server.url, "front", &events);
}

#[test]
fn a_known_path_with_the_wrong_method_is_405_with_allow() {
    let server = TestServer::start(test_config());
    let cases = [
        ("POST", "/logs", "GET"),
        ("PUT", "/cameras", "GET"),
        ("DELETE", "/health", "GET"),
        ("POST", "/poll_for_command?cameraId=x", "GET"),
        ("GET", "/send_logs?cameraId=x", "POST"),
        ("DELETE", "/send_logs?cameraId=x", "POST"),
    ];
    for (method, path, allowed) in cases {
        let body = (method == "POST" || method == "PUT").then_some(&b"{}"[..]);
        let response = request(method, &format!("{}{path}", server.url), body);
        response.expect_error(405);
        assert_eq!(response.header("allow"), Some(allowed), "{method} {path}");
    }
    assert_eq!(server.stats().cameras, 0, "a refused poll registers no camera");
}

#[test]
fn tokens_are_required_when_configured() {
    let events = fixture(20);
    let mut config = test_config();
    config.api_token = Some("user-secret".into());
    config.camera_token = Some("camera-secret".into());
    let server = TestServer::start(config);

    let poll = get(&format!("{}/poll_for_command?cameraId=front", server.url));
    let message = poll.expect_error(401);
    assert!(!message.contains("camera-secret"), "tokens are never echoed");
    assert_eq!(poll.header("www-authenticate"), Some("Bearer"));
    let mut camera_config = camera_config(&server.url, "front");
    camera_config.camera_token = Some("camera-secret".into());
    let _camera = Camera::start_with(camera_config, &events);
    server.wait_for_camera("front");

    for path in ["/logs?cameraId=front", "/cameras", "/stats"] {
        get(&format!("{}{path}", server.url)).expect_error(401);
    }
    let with = |token: &str| {
        let response = agent(Duration::from_secs(30))
            .get(&logs_url(&server.url, "front", None, None, Some(20.0)))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap();
        (response.status().as_u16(), response)
    };
    assert_eq!(with("camera-secret").0, 401, "the camera's token is not the user's");
    assert_eq!(with("user-secret-").0, 401);
    let (status, mut response) = with("user-secret");
    assert_eq!(status, 200);
    let body: Value = response.body_mut().read_json().unwrap();
    assert_eq!(body["logs"].as_array().unwrap().len(), events.len());
    get(&format!("{}/health", server.url)).expect_json(200);
}

#[test]
fn a_poll_is_answered_noop_when_the_hold_ends() {
    let mut config = test_config();
    config.poll_hold = Duration::from_millis(400);
    let server = TestServer::start(config);
    let started = Instant::now();
    let response = get(&format!("{}/poll_for_command?cameraId=idle", server.url));
    let elapsed = started.elapsed();
    assert_eq!(response.expect_json(200), json!({"command": "noop"}));
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed < Duration::from_secs(5),
        "noop after {elapsed:?} for a 400 ms hold"
    );
    assert_eq!(server.stats().cameras, 1, "the poll registered the camera");
    get(&format!("{}/poll_for_command", server.url)).expect_json(200);
    let message = get(&format!("{}/poll_for_command?cameraId=a%20b", server.url)).expect_error(400);
    assert!(message.contains("cameraId"));
}

#[test]
fn send_logs_commands_carry_a_request_id_and_numeric_bounds() {
    let events = fixture(20);
    let server = TestServer::start(test_config());
    let fake = FakeCamera::silent(&server.url, "cam");
    server.wait_for_camera("cam");

    let cases = [
        (Some(ts(2)), Some(ts(8)), ts(2), ts(8)),
        (None, None, f64::MIN, f64::MAX),
        (Some(ts(5)), None, ts(5), f64::MAX),
        (None, Some(ts(5)), f64::MIN, ts(5)),
        (Some(-1.5), Some(-1.5), -1.5, -1.5),
    ];
    let mut ids = std::collections::HashSet::new();
    for (start, end, wire_start, wire_end) in cases {
        let call = spawn_get(logs_url(&server.url, "cam", start, end, Some(20.0)));
        let command = fake.next_command();
        let object = command.as_object().unwrap();
        let mut keys: Vec<&String> = object.keys().collect();
        keys.sort();
        assert_eq!(keys, ["command", "endTimestamp", "requestId", "startTimestamp"]);
        let id = command["requestId"].as_str().expect("requestId is a string");
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "requestId {id:?} is 32 lowercase hex digits"
        );
        assert!(ids.insert(id.to_string()), "request ids are distinct");
        assert!(command["startTimestamp"].is_number() && command["endTimestamp"].is_number());
        assert_eq!(command["startTimestamp"].as_f64(), Some(wire_start));
        assert_eq!(command["endTimestamp"].as_f64(), Some(wire_end));

        post_answer(&server.url, "cam", &json!({"requestId": id, "logs": events})).expect_json(200);
        let answer = call.join().unwrap().0.expect_logs();
        assert_eq!(answer.logs, expected(&events, start, end));
    }
}

#[test]
fn duplicate_unknown_foreign_and_id_less_answers() {
    let events = fixture(20);
    let server = TestServer::start(test_config());
    let a = FakeCamera::silent(&server.url, "cam-a");
    let b = FakeCamera::silent(&server.url, "cam-b");
    server.wait_for_camera("cam-a");
    server.wait_for_camera("cam-b");

    let call_a = spawn_get(logs_url(&server.url, "cam-a", Some(ts(1)), Some(ts(4)), Some(20.0)));
    let call_b = spawn_get(logs_url(&server.url, "cam-b", Some(ts(6)), None, Some(20.0)));
    let id_a = a.next_command()["requestId"].clone();
    b.next_command();
    let answer = |id: &Value| json!({"requestId": id, "logs": events});

    // Another camera's request id, and ids nobody issued: 404, and nothing is consumed.
    post_answer(&server.url, "cam-b", &answer(&id_a)).expect_error(404);
    post_answer(&server.url, "cam-a", &answer(&json!("0123456789abcdef0123456789abcdef")))
        .expect_error(404);
    post_answer(&server.url, "cam-a", &answer(&json!(""))).expect_error(404);
    post_answer(&server.url, "ghost", &answer(&id_a)).expect_error(404);

    assert_eq!(
        post_answer(&server.url, "cam-a", &answer(&id_a)).expect_json(200),
        json!({"status": "ok"})
    );
    assert_eq!(
        call_a.join().unwrap().0.expect_logs().logs,
        expected(&events, Some(ts(1)), Some(ts(4)))
    );
    // The same answer again (a retry after a lost response) is accepted and ignored.
    assert_eq!(
        post_answer(&server.url, "cam-a", &answer(&id_a)).expect_json(200),
        json!({"status": "ok"})
    );

    // No requestId: it answers the camera's command in flight.
    post_answer(&server.url, "cam-b", &json!({"logs": events})).expect_json(200);
    assert_eq!(call_b.join().unwrap().0.expect_logs().logs, expected(&events, Some(ts(6)), None));
    // ...and with nothing in flight there is nothing to answer.
    post_answer(&server.url, "cam-b", &json!({"logs": events})).expect_error(404);
    let stats = server.stats();
    assert_eq!((stats.waiting_requests, stats.commands_in_flight), (0, 0));
}

#[test]
fn an_id_less_answer_never_completes_a_command_the_camera_was_not_sent() {
    let mut config = test_config();
    config.poll_hold = Duration::from_secs(10);
    // The camera stays online between its polls, and nothing is sent again on its own.
    config.camera_grace = Duration::from_secs(25);
    config.ack_timeout = Duration::from_secs(25);
    let server = TestServer::start(config);
    let poll_url = format!("{}/poll_for_command?cameraId=legacy", server.url);

    // A camera that predates request ids polls once and gets the first caller's command.
    let first_poll = spawn_get(poll_url.clone());
    server.wait_for_camera("legacy");
    let first = spawn_get(logs_url(&server.url, "legacy", Some(ts(1)), Some(ts(2)), Some(20.0)));
    let command = first_poll.join().unwrap().0.expect_json(200);
    assert_eq!(command["command"], "send_logs");
    let second = spawn_get(logs_url(&server.url, "legacy", Some(ts(5)), Some(ts(6)), Some(20.0)));
    server.wait_for_waiting(2);

    let answer = json!({"logs": [entry(ts(1), "a"), entry(ts(2), "b")]});
    post_answer(&server.url, "legacy", &answer).expect_json(200);
    assert_eq!(
        first.join().unwrap().0.expect_logs().logs,
        vec![entry(ts(1), "a"), entry(ts(2), "b")]
    );

    // The second caller's command now exists, but no poll has carried it to the camera. The same
    // answer again (a retry after a lost response) cannot be the camera's answer to it.
    post_answer(&server.url, "legacy", &answer).json();
    assert_eq!(
        server.stats().waiting_requests,
        1,
        "an id-less answer completed a command that was never sent to the camera: the second \
         caller got the data of the first command (a command sent before it arrived)"
    );

    let command = get(&poll_url).expect_json(200);
    assert_eq!(command["startTimestamp"].as_f64(), Some(ts(5)));
    let logs = vec![entry(ts(5), "c"), entry(ts(6), "d")];
    post_answer(&server.url, "legacy", &json!({"logs": logs})).expect_json(200);
    assert_eq!(second.join().unwrap().0.expect_logs().logs, logs);
}

#[test]
fn malformed_answers_are_400_and_leave_the_command_in_flight() {
    let events = fixture(20);
    let server = TestServer::start(test_config());
    let fake = FakeCamera::silent(&server.url, "cam");
    server.wait_for_camera("cam");
    let call = spawn_get(logs_url(&server.url, "cam", Some(ts(3)), Some(ts(7)), Some(20.0)));
    let id = fake.next_command()["requestId"].as_str().unwrap().to_string();

    let bodies = [
        "".to_string(),
        "{".to_string(),
        "not json".to_string(),
        "null".to_string(),
        r#"[{"timestamp": 1, "description": "a"}]"#.to_string(),
        format!(r#"{{"requestId": "{id}"}}"#),
        format!(r#"{{"requestId": "{id}", "logs": null}}"#),
        format!(r#"{{"requestId": "{id}", "logs": {{}}}}"#),
        format!(r#"{{"requestId": "{id}", "logs": "x"}}"#),
        format!(r#"{{"requestId": "{id}", "logs": [1, 2]}}"#),
        format!(r#"{{"requestId": "{id}", "logs": [{{"timestamp": "1", "description": "a"}}]}}"#),
        format!(r#"{{"requestId": "{id}", "logs": [{{"timestamp": null, "description": "a"}}]}}"#),
        format!(r#"{{"requestId": "{id}", "logs": [{{"timestamp": 1e400, "description": "a"}}]}}"#),
        format!(r#"{{"requestId": "{id}", "logs": [{{"timestamp": 1}}]}}"#),
        format!(r#"{{"requestId": "{id}", "logs": [{{"description": "a"}}]}}"#),
        format!(r#"{{"requestId": "{id}", "logs": [{{"timestamp": 1, "description": 5}}]}}"#),
        r#"{"requestId": 5, "logs": []}"#.to_string(),
        format!(r#"{{"requestId": "{id}", "logs": []}} trailing"#),
    ];
    for body in &bodies {
        raw_post_answer(&server.url, "cam", body.as_bytes()).expect_error(400);
    }
    // An empty body with no Content-Length at all.
    let no_length = format!(
        "POST /send_logs?cameraId=cam HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        host_port(&server.url)
    );
    raw(&server.url, no_length.as_bytes()).expect_error(400);
    assert_eq!(server.stats().commands_in_flight, 1, "bad answers consume nothing");

    let good = json!({"requestId": id, "logs": events}).to_string();
    raw_post_answer(&server.url, "cam", good.as_bytes()).expect_json(200);
    assert_eq!(
        call.join().unwrap().0.expect_logs().logs,
        expected(&events, Some(ts(3)), Some(ts(7)))
    );
}

/// `body` sent with `Transfer-Encoding: chunked`, in chunks of at most 300 bytes.
fn chunked_post(base: &str, camera: &str, body: &[u8]) -> Resp {
    let mut request = format!(
        "POST /send_logs?cameraId={camera} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        host_port(base)
    )
    .into_bytes();
    for chunk in body.chunks(300) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    raw(base, &request)
}

/// A valid answer padded with spaces to exactly `size` bytes.
fn answer_of_size(id: &str, logs: &[camera_logs::LogEntry], size: usize) -> Vec<u8> {
    let mut body = json!({"requestId": id, "logs": logs}).to_string().into_bytes();
    assert!(body.len() <= size, "{} > {size}", body.len());
    body.resize(size, b' ');
    body
}

#[test]
fn bodies_over_max_body_bytes_are_413_by_length_and_chunked() {
    let events = fixture(8);
    let mut config = test_config();
    config.max_body_bytes = 1000;
    let server = TestServer::start(config);
    let fake = FakeCamera::silent(&server.url, "cam");
    server.wait_for_camera("cam");
    let call = spawn_get(logs_url(&server.url, "cam", None, None, Some(20.0)));
    let id = fake.next_command()["requestId"].as_str().unwrap().to_string();

    let over = answer_of_size(&id, &events, 1001);
    let message = raw_post_answer(&server.url, "cam", &over).expect_error(413);
    assert!(message.contains("1000"), "{message}");
    raw_post_answer(&server.url, "cam", &answer_of_size(&id, &events, 50_000)).expect_error(413);
    chunked_post(&server.url, "cam", &over).expect_error(413);
    chunked_post(&server.url, "cam", &answer_of_size(&id, &events, 50_000)).expect_error(413);
    // One chunk that claims to be enormous.
    let mut enormous = format!(
        "POST /send_logs?cameraId=cam HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffff\r\n",
        host_port(&server.url)
    )
    .into_bytes();
    enormous.extend_from_slice(&[b' '; 2000]);
    raw(&server.url, &enormous).expect_error(413);
    assert_eq!(server.stats().commands_in_flight, 1, "a refused body consumes nothing");

    // At the limit, chunked: accepted.
    let at_limit = answer_of_size(&id, &events, 1000);
    chunked_post(&server.url, "cam", &at_limit).expect_json(200);
    assert_eq!(call.join().unwrap().0.expect_logs().logs, expected(&events, None, None));
    // At the limit, by Content-Length: accepted (a duplicate now, so ignored).
    raw_post_answer(&server.url, "cam", &at_limit).expect_json(200);
}

#[test]
fn a_huge_declared_content_length_is_413_and_the_server_keeps_serving() {
    let events = fixture(20);
    // The default MAX_BODY_BYTES.
    let (server, _camera) = server_with_camera(test_config(), "front", &events);

    let mut liar = connect(&server.url);
    liar.write_all(
        format!(
            "POST /send_logs?cameraId=front HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: 99999999999999\r\n\r\n{{\"logs\": [",
            host_port(&server.url)
        )
        .as_bytes(),
    )
    .unwrap();
    let mut reader = BufReader::new(&mut liar);
    let mut response = read_head(&mut reader);
    assert_eq!(response.status, 413);

    // The process is alive and serving, with the liar's connection still open.
    get(&format!("{}/health", server.url)).expect_json(200);
    assert_still_serves(&server.url, "front", &events);

    // The 413 must be a complete response like every other error: a JSON body whose end the
    // client can find, by its Content-Length or by the connection closing.
    if response.header("content-length").is_some() {
        read_body(&mut reader, &mut response);
    } else {
        reader.get_ref().set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let ended = reader.read_to_end(&mut response.body);
        assert!(
            ended.is_ok(),
            "the 413 to a huge declared Content-Length has no Content-Length and the connection \
             stays open, so a client waits forever for its body (got {:?} so far); headers: {:?}",
            response.text(),
            response.headers
        );
    }
    response.expect_error(413);
    drop(reader);
    drop(liar);
    assert_still_serves(&server.url, "front", &events);
}

#[test]
fn a_malformed_request_line_is_refused_and_the_server_keeps_serving() {
    let events = fixture(20);
    let (server, _camera) = server_with_camera(test_config(), "front", &events);
    // Answered by the HTTP engine itself (tiny_http), before any route runs.
    let response = raw(&server.url, b"GARBAGE\r\n\r\n");
    assert!((400..500).contains(&response.status), "{response:?}");
    let response =
        raw(&server.url, b"GET /health HTTP/1.1\r\nExpect: nonsense\r\nConnection: close\r\n\r\n");
    assert!((400..500).contains(&response.status), "{response:?}");
    assert_still_serves(&server.url, "front", &events);
}
