//! What users trip over: a mistyped parameter, two camera processes with one id, a camera that
//! restarts, polls whose client left, a fleet seen through one instance, and messages that must
//! say what is going on. Real binaries, and real nginx where the edge matters.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::edge::{free_port, nginx_or_skip, settle, Edge, Usage};
use crate::common::*;
use camera_logs::{LogEntry, Route};

fn env(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// A camera binary whose log holds one marker event (timestamp 1) naming it, and no others;
/// it retries within a second.
fn camera_with_marker(url: &str, id: &str, marker: &str, dir: &TempDir) -> Proc {
    camera_backing_off(url, id, marker, dir, "1")
}

/// Like [`camera_with_marker`], with a backoff that grows up to `backoff_max` seconds.
fn camera_backing_off(url: &str, id: &str, marker: &str, dir: &TempDir, backoff_max: &str) -> Proc {
    let file = dir.0.join(format!("{marker}.jsonl"));
    let line = serde_json::to_string(&entry(1.0, marker)).unwrap();
    std::fs::write(&file, format!("{line}\n")).unwrap();
    let log_file = file.to_string_lossy().into_owned();
    let envs = env(&[
        ("CAMERA_ID", id),
        ("LOG_FILE", &log_file),
        ("EVENT_INTERVAL_SECS", "0"),
        ("BACKOFF_MAX_SECS", backoff_max),
    ]);
    start_camera_bin(url, &envs)
}

/// The marker of whichever process answered `/logs` for `id`, and how long the call took.
fn marker(url: &str, id: &str) -> (Option<String>, Duration) {
    let started = Instant::now();
    let resp = get(&format!("{url}/logs?cameraId={id}&startTimestamp=0&endTimestamp=2&timeout=20"));
    let took = started.elapsed();
    if resp.status != 200 {
        return (None, took);
    }
    let logs: Vec<LogEntry> = logs_of(&resp.json());
    (logs.first().map(|e| e.description.clone()), took)
}

fn wait_for_marker(url: &str, id: &str, expected: &str) {
    wait_until(&format!("camera '{id}' answers as {expected}"), PATIENCE, || {
        marker(url, id).0.as_deref() == Some(expected)
    });
}

#[test]
fn a_parameter_an_endpoint_does_not_take_is_400_naming_it() {
    let (system, _) = system_with_camera(test_config());
    let resp = get(&format!("{}/logs?camera_id=front", system.url));
    let error = resp.expect_error(400);
    assert!(error.contains("'camera_id'") && error.contains("cameraId"), "{error}");
    for route in Route::ALL {
        let url = format!("{}{}?bogus=1", system.url, route.path());
        let resp = request(route.method(), &url, (route.method() == "POST").then_some(&b"{}"[..]));
        let error = resp.expect_error(400);
        assert!(
            error.contains("'bogus'") && error.contains(route.path()),
            "{}: {error}",
            route.path()
        );
    }
    let url = format!("{}/logs?cameraId=cam&startTimestamp=1796167040139", system.url);
    let error = get(&url).expect_error(400);
    assert!(error.contains("milliseconds") && error.contains("1796167040.139"), "{error}");
}

#[test]
fn a_second_process_with_the_same_id_is_refused_and_takes_over_once_the_first_is_gone() {
    let api = start_api(&[]);
    let dir = TempDir::new("two-processes");
    let mut first = camera_with_marker(&api.url, "twin", "process A", &dir);
    wait_for_marker(&api.url, "twin", "process A");
    // The second runs with the default backoff (up to 30 s): it retries at the pace the 409
    // names instead, however long it has been refused (six times here).
    let second = camera_backing_off(&api.url, "twin", "process B", &dir, "30");
    wait_until("the second process is refused with 409", PATIENCE, || {
        second.stderr_lines().iter().any(|l| l.contains("ERROR") && l.contains("HTTP 409"))
    });
    wait_until("six refusals", PATIENCE, || {
        let metrics = get(&format!("{}/metrics", api.url)).text();
        let refused = metrics.lines().find(|l| l.contains("reason=\"instance_conflict\""));
        refused.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()) >= Some(6.0)
    });
    for call in 0..6 {
        assert_eq!(marker(&api.url, "twin").0.as_deref(), Some("process A"), "call {call}");
    }
    let refusals = |proc: &Proc| {
        proc.stderr_lines()
            .iter()
            .filter(|l| l.contains("refused a poll from a second process"))
            .count()
    };
    assert_eq!(refusals(&api.proc), 1, "logged once a minute:\n{}", api.proc.stderr_text());

    // The first process dies: the second is served from its next poll on, not after a grace.
    first.kill();
    let killed = Instant::now();
    wait_for_marker(&api.url, "twin", "process B");
    let took = killed.elapsed();
    eprintln!("the second process answered {took:?} after the first was killed");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    for call in 0..6 {
        assert_eq!(marker(&api.url, "twin").0.as_deref(), Some("process B"), "call {call}");
    }
}

/// Kills the camera, starts it again with the same id and log, and times the first `/logs`
/// once the server says the new process holds the id.
fn restart_and_time_the_next_call(api: &ApiProc, front: &str, dir: &TempDir) -> Duration {
    let mut camera = camera_with_marker(front, "door", "door", dir);
    wait_for_marker(front, "door", "door");
    camera.kill();
    let _again = camera_with_marker(front, "door", "door", dir);
    wait_until("the restarted process holds the id", PATIENCE, || {
        api.proc.stderr_lines().iter().any(|l| l.contains("camera 'door' is now served by process"))
    });
    let (answer, took) = marker(front, "door");
    assert_eq!(answer.as_deref(), Some("door"));
    took
}

#[test]
fn after_a_camera_restarts_the_next_call_is_as_fast_as_any_bare_and_through_the_edge() {
    let dir = TempDir::new("restart");
    let api = start_api(&[]);
    let took = restart_and_time_the_next_call(&api, &api.url, &dir);
    eprintln!("bare: the first /logs after a camera restart took {took:?}");
    assert!(took < Duration::from_millis(500), "bare: {took:?}");

    let Some(nginx) = nginx_or_skip("the edge half of the camera restart test") else {
        return;
    };
    let api = start_api(&[]);
    let edge = Edge::start(&nginx, &[format!("127.0.0.1:{}", api.port)]);
    let took = restart_and_time_the_next_call(&api, &edge.url, &dir);
    eprintln!("through the edge: the first /logs after a camera restart took {took:?}");
    assert!(took < Duration::from_millis(500), "through the edge: {took:?}");
}

/// 5,000 polls from one client, each abandoned after 0.2 s, 100 at a time; meanwhile `/health`
/// on a fresh connection every 50 ms. Returns (connections refused, health failures).
fn abandon_polls(target: &str) -> (usize, usize) {
    let refused = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let health = {
        let (target, done) = (target.to_string(), Arc::clone(&done));
        thread::spawn(move || {
            let mut failures = 0;
            while !done.load(Ordering::SeqCst) {
                let agent = agent(Duration::from_secs(5));
                let started = Instant::now();
                let answer = try_get(&agent, &format!("{target}/health"), None);
                if answer.as_ref().is_none_or(|r| r.status != 200) {
                    eprintln!(
                        "/health failed after {:?}: {:?}",
                        started.elapsed(),
                        answer.map(|r| r.status)
                    );
                    failures += 1;
                }
                thread::sleep(Duration::from_millis(50));
            }
            failures
        })
    };
    let workers: Vec<_> = (0..100)
        .map(|worker| {
            let (target, refused) = (target.to_string(), Arc::clone(&refused));
            thread::spawn(move || {
                for i in 0..50 {
                    let Ok(mut stream) = TcpStream::connect(host_port(&target)) else {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    let id = format!("gone{}", (worker * 50 + i) % 500);
                    let poll =
                        format!("GET /poll_for_command?cameraId={id} HTTP/1.1\r\nHost: t\r\n\r\n");
                    let _ = stream.write_all(poll.as_bytes());
                    thread::sleep(Duration::from_millis(200));
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    (refused.load(Ordering::SeqCst), health.join().unwrap())
}

#[test]
fn five_thousand_abandoned_polls_are_released_bare_and_through_the_edge() {
    let api = start_api(&env(&[("LOG_LEVEL", "warn"), ("WORKER_IDLE_SECS", "1")]));
    let baseline = Usage::of(api.proc.pid());
    let connections =
        || get(&format!("{}/stats", api.url)).json()["server"]["connections"].as_u64();
    let before = connections().unwrap_or(0);
    let (refused, unhealthy) = abandon_polls(&api.url);
    let last = Instant::now();
    assert_eq!((refused, unhealthy), (0, 0), "bare: connections refused, /health failures");
    // The /stats call itself is one connection.
    wait_until("the api's connections are back to the baseline", PATIENCE, || {
        connections().is_some_and(|now| now <= before + 1)
    });
    let took = last.elapsed();
    eprintln!("bare: connections back to the baseline {took:?} after the last abandoned poll");
    assert!(took < Duration::from_secs(4), "bare: {took:?} (the watcher looks every second)");
    let settled = settle(api.proc.pid(), baseline, 6, PATIENCE);
    assert!(settled.is_ok(), "bare: descriptors and threads not back: {settled:?} vs {baseline:?}");

    let Some(nginx) = nginx_or_skip("the edge half of the abandoned polls test") else {
        return;
    };
    let api = start_api(&env(&[("LOG_LEVEL", "warn"), ("WORKER_IDLE_SECS", "1")]));
    let edge = Edge::start(&nginx, &[format!("127.0.0.1:{}", api.port)]);
    assert_eq!(get(&format!("{}/health", edge.url)).status, 200);
    let baseline = Usage::of(api.proc.pid());
    let (refused, unhealthy) = abandon_polls(&edge.url);
    assert_eq!((refused, unhealthy), (0, 0), "edge: connections refused, /health failures");
    let last = Instant::now();
    wait_until("the api's descriptors are back to the baseline", PATIENCE, || {
        Usage::of(api.proc.pid()).fds <= baseline.fds + 6
    });
    let took = last.elapsed();
    eprintln!("through the edge: the api's descriptors back to the baseline {took:?} after the last abandoned poll");
    assert!(took < Duration::from_secs(4), "edge: {took:?} (the watcher looks every second)");
    // Threads follow: idle handlers exit after WORKER_IDLE_SECS, tiny_http's own after 5 s.
    let settled = settle(api.proc.pid(), baseline, 6, PATIENCE);
    assert!(settled.is_ok(), "edge: not back: {settled:?} vs {baseline:?}");
}

#[test]
fn cameras_lists_every_instance_of_a_fleet_and_names_the_ones_that_did_not_answer() {
    let (p1, p2) = (free_port(), free_port());
    let (url1, url2) = (format!("http://127.0.0.1:{p1}"), format!("http://127.0.0.1:{p2}"));
    let fleet = |own: &str, other: &str| env(&[("PEERS", other), ("INSTANCE_NAME", own)]);
    let api1 = try_start_api(p1, &fleet(&url1, &url2)).expect("instance 1 starts");
    let mut api2 = try_start_api(p2, &fleet(&url2, &url1)).expect("instance 2 starts");
    let events = fixture(3);
    let cameras: Vec<Camera> = ["a", "b", "c"]
        .map(|id| Camera::start(&api1.url, id, &events))
        .into_iter()
        .chain(["d", "e"].map(|id| Camera::start(&api2.url, id, &events)))
        .collect();
    let listed = |url: &str, query: &str| get(&format!("{url}/cameras{query}")).expect_json(200);
    let fleet_view = wait_for("all five cameras in the fleet view", PATIENCE, || {
        let body = listed(&api1.url, "");
        let n = body["cameras"].as_array().map_or(0, Vec::len);
        if n == 5 {
            Ok(body)
        } else {
            Err(body.to_string())
        }
    });
    assert_eq!(fleet_view["scope"], "fleet");
    let holders: Vec<(String, String)> = fleet_view["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cameraId"].as_str().unwrap().to_string(),
                c["instance"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> =
        [("a", &url1), ("b", &url1), ("c", &url1), ("d", &url2), ("e", &url2)]
            .map(|(c, i)| (c.to_string(), i.clone()))
            .to_vec();
    assert_eq!(holders, expected);
    let own = listed(&api1.url, "?scope=instance");
    assert_eq!(
        (own["scope"].as_str(), own["cameras"].as_array().map(Vec::len)),
        (Some("instance"), Some(3))
    );
    // Paging runs across the fleet.
    let page = listed(&api1.url, "?limit=2&after=b");
    let ids: Vec<&str> =
        page["cameras"].as_array().unwrap().iter().filter_map(|c| c["cameraId"].as_str()).collect();
    assert_eq!((ids, page["nextAfter"].as_str()), (vec!["c", "d"], Some("d")));

    api2.proc.kill();
    let partial = listed(&api1.url, "");
    assert_eq!(partial["cameras"].as_array().map(Vec::len), Some(3), "{partial}");
    assert_eq!(partial["unreachable"], serde_json::json!([url2]));
    drop(cameras);

    // Without peers, the list says it is this instance's own.
    let alone = start_api(&[]);
    assert_eq!(listed(&alone.url, "")["scope"], "instance");
}

#[test]
fn messages_say_what_is_going_on() {
    // Right after start, an id that has not polled waits (cameras may be on their way back),
    // and says so when it gives up: not "did not answer", and not 504. (The harness turns the
    // window off unless told; 70 s is the default.)
    let api = start_api(&env(&[("CAMERA_ARRIVAL_SECS", "70")]));
    let resp = get(&format!("{}/logs?cameraId=nosuch&timeout=1", api.url));
    let error = resp.expect_error(404);
    assert!(error.contains("has not polled this instance since it started"), "{error}");
    // After the window, an unknown id is 404 at once.
    let api = start_api(&env(&[("CAMERA_ARRIVAL_SECS", "0.5")]));
    thread::sleep(Duration::from_millis(600));
    let started = Instant::now();
    let error = get(&format!("{}/logs?cameraId=nosuch", api.url)).expect_error(404);
    assert!(
        started.elapsed() < Duration::from_secs(1) && error.contains("never polled"),
        "{error}"
    );

    // A hold that leaves the camera's 60 s client timeout no room is refused at start.
    let mut refused = Proc::spawn(
        "api",
        env!("CARGO_BIN_EXE_api"),
        &env(&[("POLL_HOLD_SECS", "56"), ("PORT", "0")]),
    );
    wait_until("the api exits", PATIENCE, || refused.exited());
    let stderr = refused.stderr_text();
    assert!(stderr.contains("POLL_HOLD_SECS") && stderr.contains("POLL_TIMEOUT_SECS"), "{stderr}");

    // A camera whose poll timeout is shorter than the server's hold names both settings.
    let api = start_api(&env(&[("POLL_HOLD_SECS", "3")]));
    let camera = start_camera_bin(
        &api.url,
        &env(&[("POLL_TIMEOUT_SECS", "1"), ("EVENT_INTERVAL_SECS", "0")]),
    );
    wait_until("the camera names both timeouts", PATIENCE, || {
        camera
            .stderr_lines()
            .iter()
            .any(|l| l.contains("POLL_TIMEOUT_SECS") && l.contains("POLL_HOLD_SECS"))
    });
}

#[test]
fn after_the_api_restarts_a_camera_still_backing_off_is_waited_for_not_unknown() {
    let mut api = start_api(&[]);
    let port = api.port;
    let dir = TempDir::new("api-restart");
    let camera = camera_with_marker(&api.url, "back", "back", &dir);
    wait_for_marker(&api.url, "back", "back");
    api.proc.kill();
    wait_until("the camera is backing off", PATIENCE, || {
        camera.stderr_lines().iter().any(|l| l.contains("could not poll the API server"))
    });
    let api = try_start_api(port, &env(&[("CAMERA_ARRIVAL_SECS", "70")]))
        .expect("the api starts again on its port");
    // Called before the camera is back: the call waits for it instead of answering 404.
    let (answer, took) = marker(&api.url, "back");
    assert_eq!(answer.as_deref(), Some("back"), "after {took:?}");
}

#[test]
fn the_license_the_manifest_names_is_there() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("license = \"MIT\""));
    let license = std::fs::read_to_string(root.join("LICENSE")).expect("a LICENSE file");
    assert!(license.starts_with("MIT License"), "{license}");
}

#[test]
fn a_late_answer_without_request_id_never_completes_a_newer_call_with_the_wrong_range() {
    let server = TestServer::start(test_config());
    // A camera that predates request ids, and polls while it answers: this one records the
    // commands, and the test answers them.
    let camera = FakeCamera::silent(&server.url, "legacy");
    server.wait_for_camera("legacy");
    let events: Vec<LogEntry> = (0..=100).map(|k| entry(ts(k), &format!("event {k}"))).collect();
    let answer =
        |end: usize| serde_json::json!({"logs": expected(&events, Some(ts(0)), Some(ts(end)))});

    // Call A asks for [0, 10] and gives up before the camera answers.
    let a = spawn_get(logs_url(&server.url, "legacy", Some(ts(0)), Some(ts(10)), Some(1.0)));
    let command_a = camera.next_command();
    assert_eq!(a.join().unwrap().0.status, 504);
    // Call B asks for [0, 100]; its command goes out (re-sends of A may come first).
    let b = spawn_get(logs_url(&server.url, "legacy", Some(ts(0)), Some(ts(100)), Some(20.0)));
    wait_for("B's command", PATIENCE, || {
        let command = camera.next_command();
        (command["requestId"] != command_a["requestId"]).then_some(()).ok_or("A again".into())
    });
    // A's late answer arrives: it is not B's.
    let late = post_answer(&server.url, "legacy", &answer(10));
    assert_eq!(late.status, 404, "A's late answer was taken for B's: {}", late.text());
    post_answer(&server.url, "legacy", &answer(100)).expect_json(200);
    let logs = b.join().unwrap().0.expect_logs().logs;
    assert_eq!(logs, expected(&events, Some(ts(0)), Some(ts(100))), "B got exactly its range");
}

#[test]
fn a_camera_that_cannot_reach_the_server_says_so_at_a_steady_pace_and_when_it_can_again() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let camera = start_camera_bin(&url, &env(&[("CAMERA_ID", "lost"), ("BACKOFF_MAX_SECS", "2")]));
    let lines = |what: &str| camera.stderr_lines().into_iter().filter(|l| l.contains(what)).count();
    // Before, one line in 75 s and nothing after.
    wait_until("a reminder", Duration::from_secs(60), || lines("still cannot poll") >= 1);
    let reminder = camera.stderr_lines().into_iter().find(|l| l.contains("still cannot poll"));
    assert!(reminder.is_some_and(|l| l.contains("attempts over") && l.contains("so far")));

    // The server comes up, holding polls for 50 s: the recovery is logged at the first answer
    // (a /health), not when a held poll ends.
    let Ok(_api) = try_start_api(port, &env(&[("POLL_HOLD_SECS", "50")])) else {
        return eprintln!("skipped the rest: port {port} was taken meanwhile");
    };
    let up = Instant::now();
    wait_until("the recovery line", PATIENCE, || lines("could poll the API server again") >= 1);
    let took = up.elapsed();
    assert!(took < Duration::from_secs(10), "recovery logged {took:?} after the server came up");
}
