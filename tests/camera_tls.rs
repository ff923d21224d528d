//! The `camera` binary against an https:// `API_BASE_URL` it cannot use, run as a child process
//! (no nginx here; the HTTPS end-to-end test lives elsewhere):
//!
//! * a plain TCP listener that does not speak TLS: the camera logs one line naming a failed TLS
//!   handshake, keeps running, and reconnects at the backoff's pace, not in a busy loop;
//! * an `openssl s_server` with a certificate from a throwaway CA (skipped when the `openssl`
//!   command is missing): without `CA_CERT_FILE` the camera names the untrusted certificate and
//!   points at `CA_CERT_FILE`; with it the handshake succeeds; under a host name the
//!   certificate does not cover, the camera says so.
//!
//! Every child is killed and reaped by its own handle; temporary files go when the test ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{openssl, TempDir};
use camera_logs::{CAMERA_SETTINGS, SERVER_SETTINGS};
use crossbeam_channel::{unbounded, Receiver};

const CAMERA: &str = env!("CARGO_BIN_EXE_camera");
/// How long to wait for a line that should come within a second or two.
const PATIENCE: Duration = Duration::from_secs(20);

/// A child process, killed and reaped when dropped, with its `stream` (stdout or stderr) sent
/// line by line on `lines` from a draining thread.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn spawn(mut command: Command, stderr: bool) -> Running {
        command.stdin(Stdio::null());
        if stderr {
            command.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            command.stdout(Stdio::piped()).stderr(Stdio::null());
        }
        let mut child = command.spawn().expect("spawn the child process");
        let pipe: Box<dyn Read + Send> = if stderr {
            Box::new(child.stderr.take().expect("piped stderr"))
        } else {
            Box::new(child.stdout.take().expect("piped stdout"))
        };
        let (tx, lines) = unbounded();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Running { child, lines }
    }

    /// The first line for which `wanted` holds, with every line read up to it.
    fn wait_for(&self, what: &str, wanted: impl Fn(&str) -> bool) -> (String, Vec<String>) {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return (line, seen),
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with {what} within {PATIENCE:?}; got {seen:#?}"),
            }
        }
    }

    /// Every line that arrives within `window`.
    fn lines_within(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut lines = Vec::new();
        while let Ok(line) =
            self.lines.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            lines.push(line);
        }
        lines
    }

    fn assert_running(&mut self) {
        match self.child.try_wait() {
            Ok(None) => {}
            other => panic!("the child should still be running: {other:?}"),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A camera polling `base`, with no generated events, quick backoff and none of the test's own
/// environment variables.
fn camera(base: &str, ca_cert_file: Option<&Path>) -> Running {
    let mut command = Command::new(CAMERA);
    for setting in SERVER_SETTINGS.iter().chain(CAMERA_SETTINGS) {
        command.env_remove(setting.name);
    }
    command
        .env("API_BASE_URL", base)
        .env("CAMERA_ID", "tls-cam")
        .env("EVENT_INTERVAL_SECS", "3600")
        .env("POLL_TIMEOUT_SECS", "5")
        .env("BACKOFF_MAX_SECS", "1")
        .env("LOG_LEVEL", "info");
    if let Some(path) = ca_cert_file {
        command.env("CA_CERT_FILE", path);
    }
    Running::spawn(command, true)
}

const POLL_FAILED: &str = "could not poll the API server";

#[test]
fn a_server_that_does_not_speak_tls_is_named_and_retried_with_backoff() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a plain TCP listener");
    let port = listener.local_addr().expect("listener address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    // Answers whatever arrives (a TLS ClientHello) the way a plain HTTP server would. The thread
    // ends with the test process.
    thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut hello = [0u8; 2048];
            let _ = stream.read(&mut hello);
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });

    let base = format!("https://127.0.0.1:{port}");
    let mut camera = camera(&base, None);
    let (line, _) = camera.wait_for("a failed poll", |l| l.contains(POLL_FAILED));
    assert!(
        line.contains(&format!("TLS handshake with {base} failed"))
            && line.contains("is the server speaking https://"),
        "the line names the failed handshake: {line}"
    );

    // Backing off from 0.5 s to a 1 s cap with jitter in the upper half: 3 to 13 attempts in
    // 4 s. A busy loop would make hundreds.
    let before = accepted.load(Ordering::SeqCst);
    let later = camera.lines_within(Duration::from_secs(4));
    let attempts = accepted.load(Ordering::SeqCst) - before;
    assert!(
        (2..=13).contains(&attempts),
        "{attempts} connections in 4 s: the camera should retry at the backoff's pace"
    );
    assert!(
        !later.iter().any(|l| l.contains(POLL_FAILED)),
        "one line per failure streak, got more: {later:#?}"
    );
    camera.assert_running();
}

#[test]
fn a_certificate_the_camera_does_not_trust_is_named_with_a_hint() {
    let dir = TempDir::new("tls");
    const KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    let made_ca = openssl(
        &dir.0,
        &format!(
            "req -x509 {KEY} -keyout ca.key -out ca.pem -days 2 -subj /CN=camera-logs-test-CA"
        ),
    );
    if !made_ca {
        eprintln!("skipped: no openssl command to make certificates and serve TLS");
        return;
    }
    assert!(openssl(&dir.0, &format!("req {KEY} -keyout edge.key -out edge.csr -subj /CN=edge")));
    std::fs::write(
        dir.0.join("edge.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write the extensions file");
    assert!(openssl(
        &dir.0,
        "x509 -req -in edge.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
         -extfile edge.ext -out edge.pem",
    ));

    // An edge for 127.0.0.1 only; it answers any request with its HTML status page.
    let mut edge = Command::new("openssl");
    edge.args("s_server -accept 0 -cert edge.pem -key edge.key -www".split_whitespace())
        .current_dir(&dir.0);
    let edge = Running::spawn(edge, false);
    let (accept, _) =
        edge.wait_for("the ACCEPT line of openssl s_server", |l| l.starts_with("ACCEPT"));
    let port = accept
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or_else(|| panic!("no port in {accept:?}"));

    // Only the bundled webpki roots: the test CA is unknown.
    let base = format!("https://127.0.0.1:{port}");
    let mut untrusting = camera(&base, None);
    let (line, _) = untrusting.wait_for("a failed poll", |l| l.contains(POLL_FAILED));
    assert!(
        line.contains(&format!("TLS certificate of {base} not trusted: UnknownIssuer"))
            && line.contains("set CA_CERT_FILE"),
        "the line names the untrusted certificate and the fix: {line}"
    );
    thread::sleep(Duration::from_secs(1));
    untrusting.assert_running();
    drop(untrusting);

    // Trusting the test CA, the handshake succeeds: whatever goes wrong now is not TLS (the
    // status page is no command).
    let ca_pem = dir.0.join("ca.pem");
    let trusting = camera(&base, Some(&ca_pem));
    let (started, _) = trusting.wait_for("the start-up line", |l| l.contains("starting"));
    assert!(started.contains("trusting only the 1 CA certificate(s)"), "{started}");
    let (line, _) = trusting.wait_for("a failed poll", |l| l.contains(POLL_FAILED));
    assert!(!line.contains("TLS"), "the handshake should succeed: {line}");
    drop(trusting);

    // Same CA, but a host name the certificate was not issued for.
    let by_name = format!("https://localhost:{port}");
    let misnamed = camera(&by_name, Some(&ca_pem));
    let (line, _) = misnamed.wait_for("a failed poll", |l| l.contains(POLL_FAILED));
    assert!(
        line.contains(&format!("TLS certificate of {by_name} not trusted"))
            && line.contains("API_BASE_URL must use a host name"),
        "the line names the wrong host name: {line}"
    );
}
