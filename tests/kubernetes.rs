//! What the api does for Kubernetes (docs/kubernetes.md), with the `api` binary:
//!
//! * camera tokens rotate without a restart when `CAMERA_TOKENS_FILE` is replaced the way the
//!   kubelet replaces a mounted Secret's files (a new directory, then a `..data` symlink
//!   swapped onto it): a removed camera is refused within 10 s, a new token takes effect, and a
//!   malformed new file keeps the old tokens with a log line that says why (and no token);
//! * `api --drain` (the preStop hook): the held poll is answered at once, new polls are 503,
//!   a call for the camera is 404 (through the edge: asked at the next instance), the hook
//!   returns DRAIN_SECS after the server removed the file; a file left from before the server
//!   started is no drain, and no server means the hook fails;
//! * `PEERS_DNS`: the fleet view asks every address a name resolves to, and names each
//!   instance by its own INSTANCE_NAME.
//!
//! The scaling of a whole fleet behind nginx is .ci/kubernetes-check's. Everything listens on
//! 127.0.0.1 and is stopped by its own handle.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Lays out `dir` as the kubelet does for a Secret volume: `tokens` -> `..data/tokens`, with
/// `..data` -> `..<version>`, swapped in one rename; the version before is removed.
fn project_secret(dir: &Path, version: u32, tokens: &str) {
    let data = dir.join(format!("..v{version}"));
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("tokens"), tokens).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..v{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    if version == 1 {
        std::os::unix::fs::symlink("..data/tokens", dir.join("tokens")).unwrap();
    } else {
        std::fs::remove_dir_all(dir.join(format!("..v{}", version - 1))).unwrap();
    }
}

#[test]
fn camera_tokens_rotate_when_the_secret_is_swapped_as_kubernetes_does() {
    let dir = TempDir::new("secret");
    project_secret(&dir.0, 1, "a token-a1\nb token-b1\n");
    let file = dir.0.join("tokens").display().to_string();
    let mut api = start_api(&envs(&[("CAMERA_TOKENS_FILE", &file), ("POLL_HOLD_SECS", "0.2")]));
    let agent = agent(Duration::from_secs(10));
    let poll = |camera: &str, token: &str| {
        let url = format!("{}/poll_for_command?cameraId={camera}", api.url);
        get_with(&agent, &url, Some(token)).status
    };
    assert_eq!((poll("a", "token-a1"), poll("b", "token-b1")), (200, 200));

    // b's line removed, a's token changed.
    project_secret(&dir.0, 2, "a token-a2\n");
    let rotated = Instant::now();
    wait_until("b refused and a's new token taken", Duration::from_secs(10), || {
        poll("b", "token-b1") == 401 && poll("a", "token-a2") == 200
    });
    println!("tokens rotated: b refused {:?} after the swap", rotated.elapsed());
    assert_eq!(poll("a", "token-a1"), 401, "the old token is gone");

    // A malformed file keeps the tokens read before; the log says why and quotes no line.
    project_secret(&dir.0, 3, "a token-a3 and-more\n");
    wait_until("the malformed file reported", PATIENCE, || {
        poll("a", "token-a2");
        api.proc.stderr_text().contains("changed but is not usable")
    });
    assert_eq!((poll("a", "token-a2"), poll("a", "token-a3")), (200, 401));
    let log = api.proc.stderr_text();
    assert!(log.contains("read again: 1 camera(s)"), "{log}");
    assert!(!log.contains("token-a3") && !log.contains("token-a2"), "a token in the log:\n{log}");
    api.proc.kill();
}

/// `api --drain` with exactly `envs`, started now.
fn drain_hook(envs: &[(&str, String)]) -> std::process::Child {
    let mut hook = Command::new(env!("CARGO_BIN_EXE_api"));
    hook.arg("--drain").env_clear().stdin(Stdio::null()).stdout(Stdio::null());
    hook.envs(envs.iter().map(|(k, v)| (k, v))).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn a_drain_hands_the_cameras_and_their_calls_on_and_only_the_file_starts_it() {
    let dir = TempDir::new("drain");
    let drain = dir.0.join("drain");
    let path = drain.display().to_string();
    // Left by an earlier process (an emptyDir outlives a container): not a drain of this one.
    std::fs::write(&drain, "").unwrap();
    let settings = envs(&[
        ("DRAIN_FILE", &path),
        ("DRAIN_SECS", "1"),
        ("POLL_HOLD_SECS", "20"),
        ("CAMERA_GRACE_SECS", "30"),
    ]);
    let mut api = start_api(&settings);
    assert!(!drain.exists(), "the server removes a file from before it started");
    let poll_url = format!("{}/poll_for_command?cameraId=c&instanceId=p1", api.url);
    let held = spawn_get(poll_url.clone());
    wait_until("the poll held", PATIENCE, || {
        get(&format!("{}/stats", api.url)).json()["registry"]["openPolls"] == 1
    });

    let asked = Instant::now();
    let hook = drain_hook(&settings);
    let (answer, _) = held.join().unwrap();
    assert_eq!(answer.expect_json(200)["command"], "noop");
    let released = asked.elapsed();
    assert!(released < Duration::from_secs(10), "the poll was released after {released:?}");
    // Polls are refused: the edge sends them to the next instance on its ring.
    assert_eq!(get(&poll_url).expect_error(503), "the server is shutting down");
    // A call for the camera is handed on (404: the edge asks the next instance).
    let call = get(&logs_url(&api.url, "c", None, None, Some(10.0)));
    assert!(call.expect_error(404).contains("draining"), "{}", call.text());
    // An answer to a command this instance did not send stays 404 (the edge passes it on).
    let answer = post_answer(&api.url, "c", &serde_json::json!({"requestId": "x", "logs": []}));
    assert_eq!(answer.status, 404);

    let output = hook.wait_with_output().unwrap();
    let took = asked.elapsed();
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "api --drain failed: {said}");
    assert!(took >= Duration::from_secs(1), "api --drain returned before DRAIN_SECS: {took:?}");
    assert!(!drain.exists(), "the server removes the file once drained");
    println!("drain: the held poll released after {released:?}, the hook returned after {took:?}");
    let log = api.proc.stderr_text();
    assert!(log.contains("draining: polls are refused") && log.contains("drained:"), "{log}");
    api.proc.kill();

    // No server removes the file: the hook fails (after POLL_HOLD_SECS + LOGS_TIMEOUT_SECS).
    let quick =
        envs(&[("DRAIN_FILE", &path), ("POLL_HOLD_SECS", "0.2"), ("LOGS_TIMEOUT_SECS", "0.2")]);
    let alone = drain_hook(&quick).wait_with_output().unwrap();
    assert_eq!(alone.status.code(), Some(1), "{}", String::from_utf8_lossy(&alone.stderr));
    let unset = drain_hook(&[]).wait_with_output().unwrap();
    assert_eq!(unset.status.code(), Some(2), "{}", String::from_utf8_lossy(&unset.stderr));
}

#[test]
fn peers_from_dns_are_every_address_and_each_names_itself() {
    let far = start_api(&envs(&[("INSTANCE_NAME", "b"), ("POLL_HOLD_SECS", "5")]));
    let held = spawn_get(format!("{}/poll_for_command?cameraId=far", far.url));
    let dns = format!("http://localhost:{}", far.port);
    let near = start_api(&envs(&[("INSTANCE_NAME", "a"), ("PEERS_DNS", &dns)]));
    let view = wait_for("the fleet view naming b", PATIENCE, || {
        let view = get(&format!("{}/cameras", near.url)).expect_json(200);
        let row = view["cameras"].as_array().and_then(|rows| rows.first().cloned());
        match row {
            Some(row) if row["cameraId"] == "far" && row["instance"] == "b" => Ok(view),
            _ => Err(view.to_string()),
        }
    });
    assert_eq!(view["scope"], "fleet");
    // localhost may also be ::1, where nothing listens: only that address is unreachable.
    let unreachable = view["unreachable"].as_array().cloned().unwrap_or_default();
    assert!(unreachable.iter().all(|u| !u.as_str().unwrap_or("").contains("127.0.0.1")), "{view}");
    held.join().unwrap();
}
