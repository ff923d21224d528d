//! Fault injection: what the system does when its parts die or misbehave at the worst moment.
//!
//! Proves that (1) a camera process SIGKILLed with a command in flight fails its waiting callers
//! with 503/504 by their timeout, never a hang, and a restarted camera serves again; (2) an API
//! server killed and restarted on the same port is rejoined by the camera within seconds, and
//! while it is down the camera neither spins (CPU time) nor floods its log; (3) polls that die
//! at random moments while many calls with distinct ranges arrive never make a call receive
//! another call's range; (4) a camera with `LOG_FILE`, SIGKILLed and restarted, still serves
//! every event a user saw, also after a torn line was appended to its file, and reports the
//! skipped line. What load leaves behind (state, threads, the handler pool) is `leaks`.
//!
//! Test 3 runs an in-process server under load and holds [`IN_PROCESS`]; the others drive the
//! built binaries.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use camera_logs::LogEntry;
use camera_logs::{CameraConfig, ServerConfig};

/// Waits until `/logs` on `url` answers 200 and returns its events.
fn wait_for_logs(what: &str, url: &str) -> Vec<LogEntry> {
    let agent = agent(Duration::from_secs(20));
    wait_for(what, PATIENCE, || {
        let resp = try_get(&agent, url, None).ok_or("no answer")?;
        if resp.status != 200 {
            return Err(format!("HTTP {}", resp.status));
        }
        Ok(logs_of(&resp.json()))
    })
}

// ---------------------------------------------------------------------------------------------

#[test]
fn camera_killed_with_a_command_in_flight_fails_callers_by_their_timeout() {
    let api = start_api(&envs(&[
        ("ACK_TIMEOUT_SECS", "0.5"),
        ("CAMERA_GRACE_SECS", "1"),
        ("POLL_HOLD_SECS", "20"),
    ]));
    let camera_env =
        envs(&[("CAMERA_ID", "doomed"), ("EVENT_INTERVAL_SECS", "0.2"), ("BACKOFF_MAX_SECS", "1")]);
    let mut camera = start_camera_bin(&api.url, &camera_env);
    let logs = |timeout: f64| format!("{}/logs?cameraId=doomed&timeout={timeout}", api.url);
    wait_for_logs("the camera to answer", &logs(5.0));

    // One call right before the kill (it may still be answered), then calls that can only be
    // served by a camera that is gone: the first of them hands its command to the dead poll.
    let before = spawn_logs(logs(10.0));
    camera.kill();
    let timeouts = [0.3, 8.0, 20.0];
    let after: Vec<_> = timeouts.iter().map(|&t| (t, spawn_logs(logs(t)))).collect();
    let agent = agent(Duration::from_secs(10));
    let stats_url = format!("{}/stats", api.url);
    wait_until("a command in flight to the killed camera", PATIENCE, || {
        let stats = get_with(&agent, &stats_url, None).json();
        stats["registry"]["commandsInFlight"] == 1
    });

    let (resp, took) = before.join().unwrap();
    assert!(took < Duration::from_secs(10 + 5), "call before the kill hung");
    if resp.status != 200 {
        resp.assert_json_error(&[503, 504], "call made just before the kill");
    }
    for (timeout, call) in after {
        let (resp, took) = call.join().unwrap();
        let context = format!("call with timeout={timeout} after the kill ({took:?})");
        resp.assert_json_error(&[503, 504], &context);
        assert!(
            took < Duration::from_secs_f64(timeout) + Duration::from_secs(5),
            "{context}: answered too late"
        );
        if timeout >= 8.0 {
            // Offline after ACK_TIMEOUT (0.5 s) + CAMERA_GRACE (1 s): 503 long before the timeout.
            assert_eq!(resp.status, 503, "{context}: {}", resp.text());
            assert!(took < Duration::from_secs(7), "{context}: not at once");
        }
    }

    let failed = wait_for("the server to report the camera offline", PATIENCE, || {
        api.proc
            .stderr_lines()
            .into_iter()
            .find(|l| l.contains("waiting call(s) for camera 'doomed'"))
            .ok_or_else(|| "no such line yet".to_string())
    });
    eprintln!("api: {failed}");

    let _camera = start_camera_bin(&api.url, &camera_env);
    let started = Instant::now();
    wait_for_logs("the restarted camera to answer", &logs(5.0));
    eprintln!("restarted camera served /logs after {:?}", started.elapsed());
    let stats = get_with(&agent, &stats_url, None).json();
    assert_eq!(stats["registry"]["waitingRequests"], 0, "{stats}");
    assert_eq!(stats["registry"]["commandsInFlight"], 0, "{stats}");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn api_restarted_on_the_same_port_is_rejoined_and_the_camera_idles_while_it_is_down() {
    let api_env = envs(&[("ACK_TIMEOUT_SECS", "1"), ("CAMERA_GRACE_SECS", "2")]);
    let mut api = start_api(&api_env);
    let port = api.port;
    let camera = start_camera_bin(
        &api.url,
        &envs(&[
            ("CAMERA_ID", "phoenix"),
            ("EVENT_INTERVAL_SECS", "0.5"),
            ("BACKOFF_MAX_SECS", "1"),
        ]),
    );
    let logs = format!("{}/logs?cameraId=phoenix&timeout=5", api.url);
    wait_for_logs("the camera to answer", &logs);

    let lines_before = camera.stderr_len();
    api.proc.kill();
    let cpu_before = camera.cpu_time();
    // Measuring behaviour over a span of downtime: this sleep is the measurement window.
    thread::sleep(Duration::from_secs(5));
    let cpu_used = camera.cpu_time().saturating_sub(cpu_before);
    let downtime_lines: Vec<String> = camera.stderr_lines()[lines_before..].to_vec();
    eprintln!(
        "camera during 5 s of downtime: {cpu_used:?} CPU, {} log line(s): {downtime_lines:#?}",
        downtime_lines.len()
    );
    assert!(
        cpu_used < Duration::from_millis(500),
        "the camera spun while the server was down: {cpu_used:?} of CPU in 5 s"
    );
    assert!(
        downtime_lines.iter().any(|l| l.contains("could not poll")),
        "the outage was not reported: {downtime_lines:#?}"
    );
    assert!(
        downtime_lines.len() <= 3,
        "more than one line per failure streak: {downtime_lines:#?}"
    );

    // The port was this server's; another process could in theory take it meanwhile, so a
    // failed bind is retried until the deadline.
    let restarted_at = Instant::now();
    let api =
        wait_for("the api to restart on its port", PATIENCE, || try_start_api(port, &api_env));
    assert_eq!(api.port, port);
    wait_for_logs("the camera to rejoin the restarted server", &logs);
    let rejoined = restarted_at.elapsed();
    eprintln!("camera rejoined {rejoined:?} after the restart");
    assert!(
        rejoined < Duration::from_secs(10),
        "the camera took {rejoined:?} to rejoin with BACKOFF_MAX_SECS=1"
    );
    wait_until("the camera to log its recovery", PATIENCE, || {
        camera.stderr_lines().iter().any(|l| l.contains("could poll the API server again"))
    });
}

// ---------------------------------------------------------------------------------------------

/// A poll that dies at a random moment: it connects after `delay`, and closes `life` later;
/// if a command reached it before that, the command is swallowed. Returns whether it was.
fn dead_poll(addr: std::net::SocketAddr, camera: &str, delay: Duration, life: Duration) -> bool {
    thread::sleep(delay);
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let request = format!("GET /poll_for_command?cameraId={camera} HTTP/1.1\r\nHost: x\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    stream.set_read_timeout(Some(life)).unwrap();
    match read_raw_response(&mut stream) {
        Some(resp) => String::from_utf8_lossy(&resp.body).contains("send_logs"),
        None => false,
    }
}

#[test]
fn polls_dying_at_random_moments_never_cross_answers() {
    let _serial = IN_PROCESS.lock();
    let mut system = TestServer::start(ServerConfig {
        ack_timeout: Duration::from_millis(500),
        // A dead poll is held until a command reaches it or the hold ends: a short hold keeps
        // one round's dead polls from swallowing the next round's commands too.
        poll_hold: Duration::from_secs(1),
        ..test_config()
    });
    let events = fixture(400);
    system.add_camera(
        CameraConfig {
            poll_timeout: Duration::from_secs(20),
            ..camera_config(&system.url, "race")
        },
        &events,
        None,
    );
    let mut rng = Rng::new(0x5EED_0003);
    let swallowed = Arc::new(AtomicUsize::new(0));
    let (mut ok, mut errors, mut slow_rounds) = (0, 0, 0);
    let started = Instant::now();

    for round in 0..20 {
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        while ranges.len() < 5 {
            let a = rng.below(380);
            let range = (a, a + 1 + rng.below(20));
            if !ranges.contains(&range) {
                ranges.push(range);
            }
        }
        let round_started = Instant::now();
        let pollers: Vec<_> = (0..1 + rng.below(2))
            .map(|_| {
                let (addr, swallowed) = (system.addr, Arc::clone(&swallowed));
                let delay = Duration::from_millis(rng.below(50) as u64);
                let life = Duration::from_millis(1 + rng.below(50) as u64);
                thread::spawn(move || {
                    if dead_poll(addr, "race", delay, life) {
                        swallowed.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let calls: Vec<_> = ranges
            .iter()
            .map(|&(a, b)| {
                let url = format!(
                    "{}/logs?cameraId=race&startTimestamp={}&endTimestamp={}&timeout=8",
                    system.url,
                    ts(a),
                    ts(b)
                );
                let delay = Duration::from_millis(rng.below(50) as u64);
                (
                    (a, b),
                    thread::spawn(move || {
                        thread::sleep(delay);
                        let agent = agent(Duration::from_secs(60));
                        let started = Instant::now();
                        (get_with(&agent, &url, None), started.elapsed())
                    }),
                )
            })
            .collect();
        for ((a, b), call) in calls {
            let (resp, took) = call.join().unwrap();
            let context = format!("round {round}, range ts({a})..=ts({b}), {took:?}");
            if resp.status == 200 {
                let got = logs_of(&resp.json());
                assert_eq!(
                    got,
                    expected(&events, Some(ts(a)), Some(ts(b))),
                    "{context}: not exactly this call's range"
                );
                ok += 1;
            } else {
                resp.assert_json_error(&[503, 504], &context);
                assert!(took < Duration::from_secs(8 + 5), "{context}: too late");
                errors += 1;
            }
        }
        for poller in pollers {
            poller.join().unwrap();
        }
        // A round that took longer than the ack timeout had a command swallowed by a dead
        // poll and sent again.
        slow_rounds += usize::from(round_started.elapsed() >= Duration::from_millis(500));
    }
    let swallowed = swallowed.load(Ordering::SeqCst);
    eprintln!(
        "100 calls in {:?}: {ok} answered, {errors} errors; {slow_rounds} rounds had a command \
         re-sent; dead polls read {swallowed} command(s) before closing",
        started.elapsed()
    );
    assert!(slow_rounds > 0, "no command was ever lost to a dead poll: the race was not exercised");
    assert!(ok >= 90, "only {ok} of 100 calls were answered (timeout 8 s, ack timeout 0.5 s)");
}

// ---------------------------------------------------------------------------------------------

#[test]
fn log_file_survives_sigkill_and_a_torn_line() {
    let api = start_api(&envs(&[("ACK_TIMEOUT_SECS", "0.5"), ("CAMERA_GRACE_SECS", "1")]));
    let dir = TempDir::new("faults-log-file");
    let file = dir.0.join("events.jsonl");
    let camera_env = envs(&[
        ("CAMERA_ID", "persistent"),
        ("EVENT_INTERVAL_SECS", "0.1"),
        ("BACKOFF_MAX_SECS", "1"),
        ("LOG_FILE", file.to_str().unwrap()),
    ]);
    let logs = format!("{}/logs?cameraId=persistent&timeout=5", api.url);

    let mut first = start_camera_bin(&api.url, &camera_env);
    let agent = agent(Duration::from_secs(20));
    let seen = wait_for("10 events served by the camera", PATIENCE, || {
        let resp = try_get(&agent, &logs, None).ok_or("no answer")?;
        let events = if resp.status == 200 { logs_of(&resp.json()) } else { Vec::new() };
        if events.len() < 10 {
            return Err(format!("{} events so far", events.len()));
        }
        Ok(events)
    });
    first.kill();

    let mut second = start_camera_bin(&api.url, &camera_env);
    let served = wait_for_logs("the restarted camera to answer", &logs);
    let missing: Vec<&LogEntry> = seen.iter().filter(|e| !served.contains(e)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events seen before the kill are gone after the restart: {missing:?}",
        missing.len(),
        seen.len()
    );
    let seen = served;
    second.kill();

    // A write torn by a crash: half a JSON object and no newline.
    let torn = format!("{{\"timestamp\": {}, \"descri", T0);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap()
        .write_all(torn.as_bytes())
        .unwrap();

    let third = start_camera_bin(&api.url, &camera_env);
    let served = wait_for_logs("the camera to answer after the torn line", &logs);
    let missing: Vec<&LogEntry> = seen.iter().filter(|e| !served.contains(e)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} events are gone after a torn line: {missing:?}",
        missing.len(),
        seen.len()
    );
    assert!(served.iter().all(|e| e.timestamp != T0), "the torn event was served");
    let report = third
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("reloaded"))
        .unwrap_or_else(|| panic!("no reload report:\n{}", third.stderr_text()));
    let skipped: usize = report
        .split("skipped ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the torn line is not reported: {report}"));
    assert!(skipped >= 1, "{report}");
    eprintln!(
        "{} events before the torn line, {} served after; report: {report}",
        seen.len(),
        served.len()
    );
}
