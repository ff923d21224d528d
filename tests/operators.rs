//! What an operator sees of the built binaries and the scripts: start-up lines that say whether
//! each token is on, an empty token refused (exit 2, naming it), a taken port and an
//! unresolvable HOST named, curl_parallel.sh firing its burst and counting the round trips it
//! cost (also for a URL written without `http://`, as curl takes it), or saying it cannot when
//! the /metrics it reads is another server's, and views that can be scraped as often as anyone
//! likes.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn exit_of(envs: &[(&str, &str)], program: &str) -> (Option<i32>, String) {
    let output = Command::new(program)
        .env_clear()
        .envs(envs.iter().copied())
        .output()
        .expect("run the binary");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn start_up_says_which_tokens_are_on() {
    let open = start_api(&[]);
    let lines = open.proc.stderr_text();
    assert!(lines.contains("authentication: API_TOKEN off"), "{lines}");
    assert!(lines.contains("authentication: CAMERA_TOKEN/CAMERA_TOKENS_FILE off"), "{lines}");

    let guarded = start_api(&[
        ("API_TOKEN", "user-secret".to_string()),
        ("CAMERA_TOKEN", "camera-secret".to_string()),
        // Shown at warn too: which endpoints are open is not a detail.
        ("LOG_LEVEL", "warn".to_string()),
    ]);
    let lines = guarded.proc.stderr_text();
    assert!(lines.contains("authentication: API_TOKEN on"), "{lines}");
    assert!(lines.contains("authentication: CAMERA_TOKEN on"), "{lines}");
    assert!(
        !lines.contains("user-secret") && !lines.contains("camera-secret"),
        "tokens are never printed: {lines}"
    );
}

#[test]
fn an_empty_token_is_a_configuration_error_naming_it() {
    for (program, variable) in [
        (env!("CARGO_BIN_EXE_api"), "API_TOKEN"),
        (env!("CARGO_BIN_EXE_api"), "CAMERA_TOKEN"),
        (env!("CARGO_BIN_EXE_api"), "CAMERA_TOKENS_FILE"),
        (env!("CARGO_BIN_EXE_camera"), "CAMERA_TOKEN"),
    ] {
        let (code, stderr) = exit_of(&[(variable, "")], program);
        assert_eq!(code, Some(2), "{program} {variable}=: {stderr}");
        // Named, with what is expected; a token's value is never echoed, not even an empty one.
        assert!(stderr.contains(&format!("invalid {variable}=")), "{stderr}");
        assert!(stderr.contains("expected a value"), "{stderr}");
    }
}

#[test]
fn a_taken_port_and_an_unresolvable_host_are_named() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().unwrap().port();
    let stderr = match try_start_api(port, &[]) {
        Ok(_) => panic!("the api started on a port in use"),
        Err(stderr) => stderr,
    };
    assert!(stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("PORT"), "says what to change: {stderr}");

    let stderr = match try_start_api(0, &[("HOST", "no-such-host.invalid".to_string())]) {
        Ok(_) => panic!("the api started on an unresolvable HOST"),
        Err(stderr) => stderr,
    };
    assert!(stderr.contains("HOST=\"no-such-host.invalid\" does not resolve"), "{stderr}");
}

fn curl_or_skip() -> bool {
    let found = Command::new("curl").arg("--version").output().is_ok();
    if !found {
        println!("skipped: curl is not installed");
    }
    found
}

#[test]
fn curl_parallel_fires_one_burst_and_counts_its_round_trips() {
    if !curl_or_skip() {
        return;
    }
    let token = "burst-token";
    let api = start_api(&[("API_TOKEN", token.to_string())]);
    let _camera = start_camera_bin(&api.url, &[("CAMERA_ID", "front".to_string())]);
    let agent = agent(Duration::from_secs(10));
    let url = format!("{}/logs?cameraId=front&timeout=20", api.url);
    wait_until("the camera answers", PATIENCE, || {
        get_with(&agent, &url, Some(token)).status == 200
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/curl_parallel.sh");

    let output = Command::new("bash")
        .args([script, "10", &url])
        .env("API_TOKEN", token)
        .output()
        .expect("run curl_parallel.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    for i in 1..=10 {
        let prefix = format!("#{i:<4} HTTP 200 in ");
        assert!(
            stdout.lines().any(|l| l.starts_with(&prefix) && l.contains("\"cameraId\":\"front\"")),
            "call {i}: {stdout}"
        );
    }
    assert!(stdout.contains("10 of 10 succeeded"), "{stdout}");
    let trips: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("camera round trips for the burst: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no round-trip count: {stdout}"));
    assert!((1..=10).contains(&trips), "{stdout}");

    // Without the token: every call fails, the exit status says so, and the count is unknown.
    let output = Command::new("bash")
        .args([script, "3", &url])
        .env_remove("API_TOKEN")
        .output()
        .expect("run curl_parallel.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.matches(" HTTP 401 in ").count(), 3, "{stdout}");
    assert!(stdout.contains("0 of 3 succeeded"), "{stdout}");
    assert!(stdout.contains("round trips for the burst: unknown"), "{stdout}");
}

/// Behind a fleet's edge, /metrics is one instance's, not necessarily the camera's: a count that
/// did not move while calls were answered is said to be unknown, not "0".
#[test]
fn curl_parallel_says_unknown_when_metrics_is_another_servers() {
    if !curl_or_skip() {
        return;
    }
    // /metrics with a counter that never moves, as another instance's would.
    let url = |port| format!("http://127.0.0.1:{port}/logs?cameraId=cam-2");
    let output =
        curl_parallel_at_a_fake(url, |_| "camera_logs_camera_round_trips_total 7\n".into());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("3 of 3 succeeded"), "{stdout}");
    assert!(
        stdout.contains("round trips for the burst: unknown")
            && stdout.contains("another instance's"),
        "{stdout}"
    );
}

#[test]
fn stats_and_metrics_read_the_kernels_connection_table_at_most_once_a_second() {
    let server = TestServer::start(test_config());
    let reads = || server.server_stats()["connectionTableReads"].as_u64().expect("a count");
    let (before, started) = (reads(), std::time::Instant::now());
    for _ in 0..100 {
        assert_eq!(get(&format!("{}/metrics", server.url)).status, 200);
        reads();
    }
    let (read, seconds) = (reads() - before, started.elapsed().as_secs());
    assert!(read <= seconds + 2, "{read} readings in {seconds} s for 200 views");
}

#[test]
fn a_thread_limit_below_what_max_handlers_needs_lowers_it_and_says_so() {
    // ulimit -u as a lower limit than 20,000 handlers (and their connections) need.
    let script = format!("ulimit -u 1000 && exec {}", env!("CARGO_BIN_EXE_api"));
    let proc = Proc::spawn_args("api", "/bin/bash", &["-c", &script], &[("PORT", "0".to_string())]);
    wait_until("the start-up lines", PATIENCE, || proc.stderr_text().contains("capacity:"));
    let lines = proc.stderr_text();
    assert!(
        lines.contains("MAX_HANDLERS=20000 needs about") && lines.contains("(1000: ulimit -u"),
        "{lines}"
    );
    assert!(lines.contains("serving with MAX_HANDLERS=468"), "{lines}");
    assert!(lines.contains("capacity: 351 cameras may poll at once"), "{lines}");
}

/// A URL typed as the README's curl lines are, without `http://`: curl takes it as http, and so
/// does the script, for the burst and for the /metrics it counts round trips from.
#[test]
fn curl_parallel_takes_a_url_without_a_scheme_as_curl_does() {
    if !curl_or_skip() {
        return;
    }
    // /metrics with one round trip per /logs call answered so far.
    let url = |port| format!("127.0.0.1:{port}/logs?cameraId=cam-3");
    let output =
        curl_parallel_at_a_fake(url, |n| format!("camera_logs_camera_round_trips_total {n}\n"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("3 of 3 succeeded"), "{stdout}");
    assert!(stdout.contains("camera round trips for the burst: 3 "), "{stdout}");
}

/// `curl_parallel.sh 3` at `url(port)` of a fake server that answers `/logs` with no events and
/// `/metrics` with `metrics(the /logs calls answered so far)`.
fn curl_parallel_at_a_fake(
    url: impl Fn(u16) -> String, metrics: fn(usize) -> String,
) -> std::process::Output {
    let server = std::sync::Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind"));
    let port = server.server_addr().to_ip().expect("an IP listener").port();
    let serving = std::sync::Arc::clone(&server);
    let thread = std::thread::spawn(move || {
        let mut answered = 0;
        for request in serving.incoming_requests() {
            let body = if request.url().starts_with("/metrics") {
                metrics(answered)
            } else {
                answered += 1;
                r#"{"logs":[]}"#.to_string()
            };
            let _ = request.respond(tiny_http::Response::from_string(body));
        }
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/curl_parallel.sh");
    let output = Command::new("bash")
        .args([script, "3", &url(port)])
        .env_remove("API_TOKEN")
        .output()
        .expect("run curl_parallel.sh");
    server.unblock();
    thread.join().expect("the fake server's thread");
    output
}
