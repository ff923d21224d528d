//! End-to-end behaviour of `GET /logs` against real servers on 127.0.0.1:0, with real in-process
//! cameras and fake cameras written here: exact inclusive ranges in ascending order, the server's
//! own re-filtering, parallel calls (10 and 100) with exact answers, coalescing (at most two
//! camera round trips for ten calls, and never an answer to a command sent before a call
//! arrived), a poll that dies holding a command, 503 / 504 / 429 with nothing left behind, and
//! the shapes of `/cameras` and `/health`.

use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use camera_logs::LogEntry;
use serde_json::{json, Value};

fn assert_ascending(logs: &[LogEntry]) {
    assert!(logs.windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "not ascending: {logs:?}");
}

/// Ranges over `fixture(n)` (n >= 40), each with a reason.
fn ranges() -> Vec<(Option<f64>, Option<f64>, &'static str)> {
    vec![
        (Some(ts(5)), Some(ts(12)), "both bounds equal to event timestamps"),
        (Some(ts(7)), Some(ts(7)), "a single instant holding one event"),
        (Some(ts(5) + 0.01), Some(ts(12) - 0.01), "bounds just inside events"),
        (Some(ts(5) - 0.01), Some(ts(12) + 0.01), "bounds just outside events"),
        (None, Some(ts(3)), "open start, end on an event"),
        (Some(ts(36)), None, "start on an event, open end"),
        (None, None, "everything"),
        (Some(ts(10) + 0.01), Some(ts(10) + 0.2), "between two events: nothing"),
        (Some(T0 - 100.0), Some(T0 - 1.0), "before every event"),
        (Some(ts(39)), Some(ts(39) + 1e6), "starts on the last event"),
    ]
}

#[test]
fn logs_are_exactly_the_inclusive_range_in_ascending_order() {
    let events = fixture(40);
    let (server, _camera) = server_with_camera(test_config(), "front", &events);

    for (start, end, why) in ranges() {
        let answer = get(&logs_url(&server.url, "front", start, end, Some(20.0))).expect_logs();
        assert_eq!(answer.camera_id, "front");
        assert_eq!(answer.logs, expected(&events, start, end), "{why}");
        assert_ascending(&answer.logs);
    }
    // The inclusive bounds, spelled out.
    let answer =
        get(&logs_url(&server.url, "front", Some(ts(5)), Some(ts(12)), None)).expect_logs();
    assert_eq!(answer.logs.len(), 8);
    assert_eq!(answer.logs.first().unwrap().timestamp, ts(5));
    assert_eq!(answer.logs.last().unwrap().timestamp, ts(12));
}

#[test]
fn the_server_refilters_a_camera_that_ignores_the_bounds() {
    // Out of order, with two events sharing a timestamp: they keep the camera's order.
    let mut events = fixture(40);
    events.insert(3, entry(ts(20), "second event at ts(20)"));
    let server = TestServer::start(test_config());
    let liar = FakeCamera::answering_everything(&server.url, "liar", events.clone());
    server.wait_for_camera("liar");

    for (start, end, why) in ranges() {
        let answer = get(&logs_url(&server.url, "liar", start, end, Some(20.0))).expect_logs();
        assert_eq!(answer.logs, expected(&events, start, end), "{why}");
        assert_ascending(&answer.logs);
    }
    let at_20 = get(&logs_url(&server.url, "liar", Some(ts(20)), Some(ts(20)), None)).expect_logs();
    let descriptions: Vec<&str> = at_20.logs.iter().map(|e| e.description.as_str()).collect();
    let camera_order: Vec<&str> =
        events.iter().filter(|e| e.timestamp == ts(20)).map(|e| e.description.as_str()).collect();
    assert_eq!(descriptions, camera_order, "equal timestamps keep the camera's order");
    // It really was sent everything: the filtering was the server's.
    assert!(liar.commands.try_iter().count() >= ranges().len());
}

#[test]
fn a_camera_timestamp_used_as_both_bounds_returns_its_event() {
    // Timestamps like a real camera's: the wall clock in epoch seconds with microsecond-ish
    // fractions (the fixture's quarter seconds are exact in binary; these are not).
    let events: Vec<LogEntry> = (0..60)
        .map(|k| entry(1_795_439_797.0 + k as f64 * 0.200_113_7, &format!("event {k}")))
        .collect();
    let (server, _camera) = server_with_camera(test_config(), "clock", &events);

    // Descriptions are compared, so the test's own float parsing plays no part. Rust prints
    // each bound as the shortest text that parses back to exactly the same f64.
    let mut missing = Vec::new();
    for (k, event) in events.iter().enumerate() {
        let t = event.timestamp;
        let answer =
            get(&logs_url(&server.url, "clock", Some(t), Some(t), Some(20.0))).expect_logs();
        let got: Vec<&str> = answer.logs.iter().map(|e| e.description.as_str()).collect();
        if got != [format!("event {k}")] {
            missing.push(format!("{t} -> {got:?}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} events are not returned by startTimestamp=endTimestamp=<their timestamp>: {missing:?}",
        missing.len(),
        events.len()
    );
    let (first, last) = (events[5].timestamp, events[50].timestamp);
    let answer = get(&logs_url(&server.url, "clock", Some(first), Some(last), None)).expect_logs();
    let got: Vec<&str> = answer.logs.iter().map(|e| e.description.as_str()).collect();
    let want: Vec<String> = (5..=50).map(|k| format!("event {k}")).collect();
    assert_eq!(got, want, "both bounds on events are inclusive");
}

/// Distinct ranges for `n` callers over `fixture(events)`, some open-ended.
fn caller_ranges(n: usize, events: usize) -> Vec<(Option<f64>, Option<f64>)> {
    (0..n)
        .map(|k| {
            let first = (k * 3) % events;
            let last = (first + k % 9 + 1).min(events - 1);
            match k % 10 {
                0 => (None, Some(ts(first))),
                1 => (Some(ts(first) + 0.1), None),
                2 => (Some(ts(first) - 0.1), Some(ts(last) + 0.1)),
                _ => (Some(ts(first)), Some(ts(last) + k as f64 * 1e-6)),
            }
        })
        .collect()
}

/// Fires one call per range at once; returns each answer with its range.
fn call_in_parallel(
    base: &str, camera: &str, ranges: &[(Option<f64>, Option<f64>)],
) -> Vec<(Option<f64>, Option<f64>, Resp)> {
    let barrier = Arc::new(Barrier::new(ranges.len()));
    let calls: Vec<_> = ranges
        .iter()
        .map(|&(start, end)| {
            let url = logs_url(base, camera, start, end, Some(30.0));
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                (start, end, get(&url))
            })
        })
        .collect();
    calls.into_iter().map(|c| c.join().unwrap()).collect()
}

#[test]
fn ten_parallel_calls_get_exact_answers_for_at_most_two_round_trips() {
    let events = fixture(60);
    let mut config = test_config();
    // No re-send while the relay holds the first answer back.
    config.ack_timeout = Duration::from_secs(25);
    let server = TestServer::start(config);
    // The camera's answers pass a gate, so all ten calls are surely waiting before the first
    // answer lands: the bound is then a property of the server, not of thread timing.
    let mut relay = Relay::start(&server.url, true);
    let camera = Camera::start(&relay.url, "front", &events);
    server.wait_for_camera("front");

    let ranges = caller_ranges(10, events.len());
    let base = server.url.clone();
    let all_calls = {
        let ranges = ranges.clone();
        thread::spawn(move || call_in_parallel(&base, "front", &ranges))
    };
    server.wait_for_waiting(10);
    relay.open_gate();
    let answers = all_calls.join().unwrap();

    for (start, end, response) in answers {
        let answer = response.expect_logs();
        assert_eq!(answer.logs, expected(&events, start, end), "range {start:?}..={end:?}");
    }
    // Every answer passed the relay; the camera counts one when it reads the server's 200,
    // which may be a moment after the callers got theirs.
    let posted = relay.posts.try_iter().count() as u64;
    assert!((1..=2).contains(&posted), "10 parallel calls cost {posted} round trips");
    wait_until("the camera counted its round trips", PATIENCE, || camera.round_trips() == posted);
    let stats = server.stats();
    assert_eq!((stats.waiting_requests, stats.commands_in_flight), (0, 0));
}

#[test]
fn a_hundred_parallel_calls_each_get_their_exact_range() {
    let events = fixture(400);
    let (server, camera) = server_with_camera(test_config(), "busy", &events);

    let ranges = caller_ranges(100, events.len());
    for (start, end, response) in call_in_parallel(&server.url, "busy", &ranges) {
        let answer = response.expect_logs();
        assert_eq!(answer.camera_id, "busy");
        assert_eq!(answer.logs, expected(&events, start, end), "range {start:?}..={end:?}");
    }
    assert!(camera.round_trips() >= 1);
    let stats = server.stats();
    assert_eq!((stats.waiting_requests, stats.commands_in_flight), (0, 0));
}

#[test]
fn a_call_arriving_while_a_command_is_out_sees_events_logged_after_it() {
    let events = fixture(20);
    let mut config = test_config();
    config.ack_timeout = Duration::from_secs(25);
    let server = TestServer::start(config);
    let mut relay = Relay::start(&server.url, true);
    let camera = Camera::start(&relay.url, "front", &events);
    server.wait_for_camera("front");

    let first = spawn_get(logs_url(&server.url, "front", None, None, Some(30.0)));
    // The camera has read its log for the first command and posted; the relay holds the answer.
    let held = relay.next_post();
    assert_eq!(held["logs"].as_array().unwrap().len(), events.len());

    let second = spawn_get(logs_url(&server.url, "front", Some(T0), None, Some(30.0)));
    server.wait_for_waiting(2);
    let late = entry(ts(1000), "logged after the first command was answered");
    camera.log.push(late.clone()).unwrap();
    relay.open_gate();

    let first = first.join().unwrap().0.expect_logs();
    assert_eq!(
        first.logs,
        expected(&events, None, None),
        "the first call gets its own command's answer"
    );
    let second = second.join().unwrap().0.expect_logs();
    let mut all = events.clone();
    all.push(late);
    assert_eq!(
        second.logs,
        expected(&all, Some(T0), None),
        "the later call never gets the answer to a command sent before it arrived"
    );
    wait_until("the camera made exactly two round trips", PATIENCE, || camera.round_trips() == 2);
    assert_eq!(relay.posts.try_iter().count(), 1, "one more answer after the held one");
}

#[test]
fn a_later_caller_waits_for_a_command_of_its_own() {
    let server = TestServer::start(test_config());
    let fake = FakeCamera::silent(&server.url, "slow");
    server.wait_for_camera("slow");

    let first = spawn_get(logs_url(&server.url, "slow", None, None, Some(30.0)));
    let command = fake.next_command();
    let second = spawn_get(logs_url(&server.url, "slow", None, None, Some(30.0)));
    server.wait_for_waiting(2);

    let old = vec![entry(ts(1), "old")];
    post_answer(&server.url, "slow", &json!({"requestId": command["requestId"], "logs": old}))
        .expect_json(200);
    assert_eq!(first.join().unwrap().0.expect_logs().logs, old);

    let next = fake.next_command();
    assert_ne!(next["requestId"], command["requestId"]);
    assert_eq!(server.stats().waiting_requests, 1, "the second call is still waiting");
    let new = vec![entry(ts(1), "old"), entry(ts(2), "new")];
    post_answer(&server.url, "slow", &json!({"requestId": next["requestId"], "logs": new}))
        .expect_json(200);
    assert_eq!(second.join().unwrap().0.expect_logs().logs, new);
}

#[test]
fn a_command_carried_by_a_dead_poll_is_sent_again_and_answered() {
    let events = fixture(30);
    let mut config = test_config();
    // The dead poll stays open until it takes the command (it cannot end with a noop first).
    config.poll_hold = Duration::from_secs(15);
    let server = TestServer::start(config);

    let mut dead = connect(&server.url);
    std::io::Write::write_all(
        &mut dead,
        format!(
            "GET /poll_for_command?cameraId=racy HTTP/1.1\r\nHost: {}\r\n\r\n",
            host_port(&server.url)
        )
        .as_bytes(),
    )
    .unwrap();
    server.wait_for_camera("racy");
    drop(dead); // gone before the server answers

    let (start, end) = (Some(ts(4)), Some(ts(17)));
    let call = spawn_get(logs_url(&server.url, "racy", start, end, Some(15.0)));
    // The command went out on the dead poll: it is in flight and that poll has ended.
    wait_until("the dead poll took the command", PATIENCE, || {
        let stats = server.stats();
        stats.commands_in_flight == 1 && stats.open_polls == 0
    });

    let camera = Camera::start(&server.url, "racy", &events);
    let (response, elapsed) = call.join().unwrap();
    assert_eq!(response.expect_logs().logs, expected(&events, start, end));
    assert!(elapsed < Duration::from_secs(15), "answered within its timeout");
    wait_until("the camera made one round trip", PATIENCE, || camera.round_trips() == 1);
}

#[test]
fn an_unanswered_command_is_sent_again_with_the_same_request_id() {
    let mut config = test_config();
    config.ack_timeout = Duration::from_millis(500);
    let server = TestServer::start(config);
    let fake = FakeCamera::silent(&server.url, "flaky");
    server.wait_for_camera("flaky");

    let call = spawn_get(logs_url(&server.url, "flaky", Some(ts(1)), Some(ts(2)), Some(30.0)));
    let first = fake.next_command();
    let again = fake.next_command(); // not answered: it comes back
    assert_eq!(again, first, "same requestId, same bounds");
    let logs = vec![entry(ts(1), "a"), entry(ts(2), "b"), entry(ts(3), "outside")];
    post_answer(&server.url, "flaky", &json!({"requestId": again["requestId"], "logs": logs}))
        .expect_json(200);
    assert_eq!(call.join().unwrap().0.expect_logs().logs, logs[..2].to_vec());
}

#[test]
fn a_camera_that_never_answers_is_504_at_the_timeout_and_leaves_nothing() {
    let server = TestServer::start(test_config());
    let fake = FakeCamera::silent(&server.url, "mute");
    server.wait_for_camera("mute");

    let started = Instant::now();
    let response = get(&logs_url(&server.url, "mute", None, None, Some(1.0)));
    let elapsed = started.elapsed();
    response.expect_error(504);
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(8),
        "504 after {elapsed:?} for timeout=1"
    );
    let received: Vec<_> = fake.commands.try_iter().collect();
    assert!(!received.is_empty(), "the camera did receive the command");
    assert!(received.iter().all(|c| c["requestId"] == received[0]["requestId"]));

    let stats = server.stats();
    assert_eq!(stats.waiting_requests, 0, "{stats:?}");
    assert_eq!(stats.commands_in_flight, 0, "{stats:?}");
}

#[test]
fn a_camera_that_stopped_polling_is_503_at_once() {
    let mut config = test_config();
    config.poll_hold = Duration::from_millis(300);
    config.camera_grace = Duration::from_millis(300);
    let server = TestServer::start(config);
    let poll = get(&format!("{}/poll_for_command?cameraId=gone", server.url));
    assert_eq!(poll.expect_json(200), json!({"command": "noop"}));
    wait_until("the camera counts as offline", PATIENCE, || {
        get(&format!("{}/cameras", server.url)).expect_json(200)["cameras"][0]["online"] == false
    });

    let started = Instant::now();
    let response = get(&logs_url(&server.url, "gone", None, None, Some(20.0)));
    let elapsed = started.elapsed();
    let message = response.expect_error(503);
    assert!(message.contains("gone"), "{message}");
    assert!(response.header("retry-after").is_some());
    assert!(elapsed < Duration::from_secs(3), "503 came after {elapsed:?}");
    assert_eq!(server.stats().waiting_requests, 0);
}

#[test]
fn waiting_calls_get_503_when_their_camera_goes_offline() {
    let mut config = test_config();
    config.poll_hold = Duration::from_millis(500);
    config.camera_grace = Duration::from_millis(500);
    config.ack_timeout = Duration::from_secs(25);
    let server = TestServer::start(config);
    let fake = FakeCamera::silent(&server.url, "vanishing");
    server.wait_for_camera("vanishing");

    let call = spawn_get(logs_url(&server.url, "vanishing", None, None, Some(25.0)));
    fake.next_command();
    fake.stop_polling();
    let (response, elapsed) = call.join().unwrap();
    response.expect_error(503);
    assert!(elapsed < Duration::from_secs(15), "503 after {elapsed:?}, not at the timeout");
    let stats = server.stats();
    assert_eq!((stats.waiting_requests, stats.commands_in_flight), (0, 0));
}

#[test]
fn too_many_waiting_calls_get_429_with_retry_after() {
    let mut config = test_config();
    config.max_waiting_per_camera = 3;
    let server = TestServer::start(config);
    let _fake = FakeCamera::silent(&server.url, "popular");
    server.wait_for_camera("popular");

    let waiting: Vec<_> = (0..3)
        .map(|_| spawn_get(logs_url(&server.url, "popular", None, None, Some(25.0))))
        .collect();
    server.wait_for_waiting(3);
    let started = Instant::now();
    let response = get(&logs_url(&server.url, "popular", None, None, Some(25.0)));
    response.expect_error(429);
    let retry_after = response.header("retry-after").expect("Retry-After");
    assert!(retry_after.parse::<u64>().is_ok(), "Retry-After: {retry_after}");
    assert!(started.elapsed() < Duration::from_secs(5), "429 at once");
    assert_eq!(server.stats().waiting_requests, 3);

    server.shutdown();
    for call in waiting {
        call.join().unwrap().0.expect_error(503);
    }
}

#[test]
fn cameras_and_health_have_their_documented_shapes() {
    let server = TestServer::start(test_config());
    assert_eq!(get(&format!("{}/health", server.url)).expect_json(200), json!({"status": "ok"}));
    assert_eq!(
        get(&format!("{}/cameras", server.url)).expect_json(200),
        json!({"cameras": [], "nextAfter": null, "scope": "instance"})
    );
    let stats = get(&format!("{}/stats", server.url)).expect_json(200);
    assert_eq!(stats["registry"]["waitingRequests"], 0, "{stats}");
    let _b = Camera::start(&server.url, "b.cam", &[]);
    let _a = Camera::start(&server.url, "a-cam", &[]);
    server.wait_for_camera("a-cam");
    server.wait_for_camera("b.cam");

    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let body = get(&format!("{}/cameras", server.url)).expect_json(200);
    let rows = body["cameras"].as_array().expect("a list");
    let ids: Vec<&str> = rows.iter().map(|r| r["cameraId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a-cam", "b.cam"], "sorted by id");
    for row in rows {
        let mut keys: Vec<&String> = row.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["cameraId", "lastSeen", "online", "waitingRequests"]);
        assert_eq!(row["online"], true);
        assert_eq!(row["waitingRequests"], 0);
        let last_seen = row["lastSeen"].as_f64().expect("lastSeen is a number");
        assert!((now - last_seen).abs() < 60.0, "lastSeen {last_seen} vs now {now}");
    }
    assert_eq!(body["nextAfter"], Value::Null, "one page holds both");

    // Pages: one id at a time, each page naming where the next one starts.
    let first = get(&format!("{}/cameras?limit=1", server.url)).expect_json(200);
    assert_eq!(first["cameras"][0]["cameraId"], "a-cam");
    assert_eq!(first["nextAfter"], "a-cam");
    let second = get(&format!("{}/cameras?limit=1&after=a-cam", server.url)).expect_json(200);
    assert_eq!(second["cameras"][0]["cameraId"], "b.cam");
    assert_eq!(second["nextAfter"], Value::Null);
    for bad in ["limit=0", "limit=1001", "limit=x", "after=a%20b"] {
        get(&format!("{}/cameras?{bad}", server.url)).expect_error(400);
    }
}
