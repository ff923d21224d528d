//! The built `api` and `camera` binaries, run as child processes: the API server reports its
//! address on stderr, a camera started against it gets its generated events served by `/logs`,
//! `--help` lists every environment variable and exits 0, and a malformed value (or a stray
//! argument) exits with code 2 and names the variable. Every child is killed by its own handle.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use camera_logs::{Setting, CAMERA_SETTINGS, SERVER_SETTINGS};
use crossbeam_channel::{unbounded, Receiver};
use parking_lot::Mutex;

const API: &str = env!("CARGO_BIN_EXE_api");
const CAMERA: &str = env!("CARGO_BIN_EXE_camera");

/// A command with none of the binaries' variables inherited from the test's environment.
fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    for setting in SERVER_SETTINGS.iter().chain(CAMERA_SETTINGS) {
        command.env_remove(setting.name);
    }
    command.stdin(Stdio::null());
    command
}

/// A running child, killed and reaped when dropped; its stderr is drained on a thread (so it
/// can never block on a full pipe), kept for failure messages and sent line by line on `lines`.
struct Running {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
    lines: Receiver<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child =
            command.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn the binary");
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = unbounded();
        let kept = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                kept.lock().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Running { child, stderr, lines }
    }

    /// Waits for a stderr line containing `marker` and returns it.
    fn wait_for_line(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(marker) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no stderr line with {marker:?} within {PATIENCE:?}; exit status {:?}; stderr:\n{}",
                    self.child.try_wait(),
                    self.stderr()
                ),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `api` on 127.0.0.1 with an ephemeral port; returns it with its base URL.
fn start_api() -> (Running, String) {
    let mut api = command(API);
    api.env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("POLL_HOLD_SECS", "2")
        .env("ACK_TIMEOUT_SECS", "1")
        .env("CAMERA_GRACE_SECS", "3")
        // "Not polled yet" is a 404 at once, as the test expects on the way.
        .env("CAMERA_ARRIVAL_SECS", "0");
    let mut api = Running::spawn(api);
    let line = api.wait_for_line("API server listening on http://");
    let address =
        line.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    assert!(address.starts_with("http://127.0.0.1:"), "{line}");
    (api, address)
}

/// Runs a command to completion (killed after the test's patience); returns its exit status,
/// stdout and stderr.
fn run_to_exit(mut command: Command) -> (ExitStatus, String, String) {
    let mut child =
        command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn the binary");
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {PATIENCE:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

#[test]
fn the_binaries_serve_a_cameras_generated_events() {
    let (_api, url) = start_api();
    let mut camera = command(CAMERA);
    camera
        .env("API_BASE_URL", &url)
        .env("CAMERA_ID", "bin-cam")
        .env("EVENT_INTERVAL_SECS", "0.2")
        .env("BACKOFF_MAX_SECS", "1");
    let camera = Running::spawn(camera);

    let all_url = logs_url(&url, "bin-cam", None, None, Some(5.0));
    let mut events = Vec::new();
    wait_until("/logs returns at least 3 events", PATIENCE, || {
        let response = get(&all_url);
        if response.status != 200 {
            // Only "not polled yet" is expected on the way.
            response.expect_error(404);
            return false;
        }
        events = response.expect_logs().logs;
        events.len() >= 3
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "ascending: {events:?}");
    for event in &events {
        assert!(!event.description.is_empty());
        assert!((now - event.timestamp).abs() < 120.0, "{event:?} vs now {now}");
    }

    // A past window: exactly the events already seen in it. (The bounds sit 50 ms outside the
    // events, 0.2 s apart: exact-timestamp bounds are checked in tests/api.rs.)
    let (start, end) = (events[0].timestamp - 0.05, events[2].timestamp + 0.05);
    let window =
        get(&logs_url(&url, "bin-cam", Some(start), Some(end), Some(5.0))).expect_logs().logs;
    assert_eq!(window, events[..3].to_vec());
    assert!(
        camera.stderr().contains("bin-cam"),
        "the camera logs what it does:\n{}",
        camera.stderr()
    );
}

fn assert_help_lists(program: &str, settings: &[Setting]) {
    let mut help = command(program);
    help.arg("--help");
    let (status, stdout, _) = run_to_exit(help);
    assert_eq!(status.code(), Some(0), "{program} --help exits 0");
    for setting in settings {
        assert!(
            stdout.contains(setting.name),
            "{program} --help lists {}:\n{stdout}",
            setting.name
        );
    }
}

#[test]
fn help_lists_every_variable_and_exits_0() {
    assert_help_lists(API, SERVER_SETTINGS);
    assert_help_lists(CAMERA, CAMERA_SETTINGS);
}

/// A value each setting must refuse, by the setting's kind. Those the binaries take as they are
/// (an address resolved, a file opened, only when used; a name) refuse only an empty value.
fn malformed_value(setting: &Setting) -> Option<&'static str> {
    match setting.name {
        "HOST" | "LOG_FILE" | "INSTANCE_NAME" | "DRAIN_FILE" => Some(""),
        "API_BASE_URL" | "PEERS" | "PEERS_DNS" => Some("ftp://example"),
        "CAMERA_ID" => Some("bad id"),
        "LOG_LEVEL" => Some("loud"),
        name if name.ends_with("_TOKEN") => Some("two words"),
        name if name.ends_with("_FILE") => Some("/nonexistent/camera-logs/file"),
        _ if setting.default.is_some_and(|d| d.parse::<f64>().is_ok()) => Some("abc"),
        name => panic!("no malformed value known for {name}: add one here"),
    }
}

/// Each variable of each binary's `--help` table is read by that binary: a malformed value makes
/// it exit 2 naming the variable. (Which variables the configuration code reads at all is
/// checked against the same tables in src/settings.rs.)
#[test]
fn every_variable_in_the_help_tables_is_read_by_its_binary() {
    let mut checked = 0;
    for (program, settings) in [(API, SERVER_SETTINGS), (CAMERA, CAMERA_SETTINGS)] {
        for setting in settings {
            let Some(value) = malformed_value(setting) else {
                continue;
            };
            let (status, stderr) = run_with(program, setting.name, value);
            let context = format!("{program} with {}={value:?}: {stderr}", setting.name);
            assert_eq!(status.code(), Some(2), "{context}");
            assert!(stderr.contains(setting.name), "{context}");
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} variables checked");
}

/// Runs `program` with `variable=value` (the rest harmless if the value were wrongly accepted:
/// a free port, nothing listening) until it exits; its exit status and stderr.
fn run_with(program: &str, variable: &str, value: &str) -> (ExitStatus, String) {
    let mut bad = command(program);
    if program == API {
        bad.env("HOST", "127.0.0.1").env("PORT", "0");
    } else {
        bad.env("API_BASE_URL", "http://127.0.0.1:9");
    }
    bad.env(variable, value);
    let (status, _, stderr) = run_to_exit(bad);
    (status, stderr)
}

/// Set but empty is never "unset": a template or an `.env` line that lost its value must not,
/// say, turn authentication off without a word. Every variable of both tables exits 2 on it.
#[test]
fn an_empty_value_of_any_variable_exits_2_naming_it() {
    for (program, settings) in [(API, SERVER_SETTINGS), (CAMERA, CAMERA_SETTINGS)] {
        for setting in settings {
            for value in ["", "  "] {
                let (status, stderr) = run_with(program, setting.name, value);
                let context = format!("{program} with {}={value:?}: {stderr}", setting.name);
                assert_eq!(status.code(), Some(2), "{context}");
                assert!(stderr.contains(setting.name), "{context}");
            }
        }
    }
}

#[test]
fn malformed_settings_exit_2_naming_the_variable() {
    let cases = [
        (API, "PORT", "abc"),
        (API, "POLL_HOLD_SECS", "0"),
        (API, "POLL_HOLD_SECS", "56"),
        (CAMERA, "LOG_FILE", ""),
        (CAMERA, "CA_CERT_FILE", ""),
        (API, "LOGS_TIMEOUT_SECS", "301"),
        (CAMERA, "EVENT_INTERVAL_SECS", "-1"),
        (CAMERA, "API_BASE_URL", "ftp://example"),
        (CAMERA, "CAMERA_ID", "bad id"),
    ];
    for (program, variable, value) in cases {
        let (status, stderr) = run_with(program, variable, value);
        assert_eq!(status.code(), Some(2), "{variable}={value}: {stderr}");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
    for program in [API, CAMERA] {
        let mut stray = command(program);
        stray.arg("--port=8080");
        let (status, _, stderr) = run_to_exit(stray);
        assert_eq!(status.code(), Some(2), "a stray argument: {stderr}");
    }
}
