//! The nginx edge for tests: `deploy/nginx.conf`, byte for byte, in a temporary prefix beside
//! the test's own `listen.conf` and `upstreams.conf`, started as a child process in the
//! foreground and stopped by its pid when dropped.
//!
//! Tests stand in for remote clients by naming an address in an `X-Test-Client` header: the
//! test's `listen.conf` (never the shipped one) lets nginx's realip module take the client's
//! address from it, so per-address limits apply to "192.0.2.66" while the test's own calls,
//! from loopback, are exempt as they are in production.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Proc, TempDir, PATIENCE, POLL_EVERY};

/// The header a test uses to speak as a remote client (see the module comment).
pub const TEST_CLIENT_HEADER: &str = "X-Test-Client";

/// Where nginx is: `$NGINX`, else the usual system paths, else `PATH`.
pub fn nginx_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NGINX") {
        return Some(PathBuf::from(path));
    }
    let system = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from);
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nginx")).collect::<Vec<_>>())
        .unwrap_or_default();
    system.chain(on_path).find(|path| path.is_file())
}

/// `Some(nginx)`, or `None` after printing why the calling test skips.
pub fn nginx_or_skip(test: &str) -> Option<PathBuf> {
    let found = nginx_binary();
    if found.is_none() {
        eprintln!(
            "skipped {test}: nginx is not installed (apt-get install nginx-light; .ci/run does it)"
        );
    }
    found
}

/// The shipped edge configuration, relative to this crate.
pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf")
}

/// A running nginx in front of `upstreams`.
pub struct Edge {
    pub url: String,
    pub addr: SocketAddr,
    /// nginx itself, stopped with its workers when the edge is dropped.
    _nginx: Proc,
    /// The prefix nginx runs from, removed when the edge is dropped.
    _dir: TempDir,
}

/// What to put in the test's `listen.conf` besides the `listen` line.
#[derive(Default, Clone)]
pub struct EdgeOptions {
    /// `(certificate, key)` PEM paths: listen with TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Parameters of every `server` line; `None`: [`DEFAULT_SERVER_PARAMS`].
    pub server_params: Option<String>,
}

/// Those of deploy/upstreams.conf.
pub const DEFAULT_SERVER_PARAMS: &str = "max_fails=1 fail_timeout=2s";

fn servers(upstreams: &[String], params: &str) -> String {
    upstreams.iter().map(|u| format!("server {u} {params};\n")).collect()
}

impl Edge {
    /// nginx on 127.0.0.1 (a free port) in front of `upstreams` (`host:port` each).
    pub fn start(nginx: &Path, upstreams: &[String]) -> Edge {
        Edge::start_with(nginx, upstreams, &EdgeOptions::default())
    }

    pub fn start_with(nginx: &Path, upstreams: &[String], options: &EdgeOptions) -> Edge {
        let dir = TempDir::new("edge");
        std::fs::copy(shipped_config(), dir.0.join("nginx.conf")).expect("copy deploy/nginx.conf");
        std::fs::create_dir_all(dir.0.join("temp")).expect("temp dir");
        let server_params =
            options.server_params.clone().unwrap_or_else(|| DEFAULT_SERVER_PARAMS.to_string());
        std::fs::write(dir.0.join("upstreams.conf"), servers(upstreams, &server_params))
            .expect("write upstreams.conf");
        // A port that was free a moment ago can be taken by the time nginx binds it: try again.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            write_listen(&dir.0, port, options);
            match launch(nginx, &dir.0, port) {
                Ok(proc) => {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    let scheme = if options.tls.is_some() { "https" } else { "http" };
                    return Edge {
                        url: format!("{scheme}://127.0.0.1:{port}"),
                        addr,
                        _nginx: proc,
                        _dir: dir,
                    };
                }
                Err(stderr) => last_error = stderr,
            }
        }
        panic!("nginx would not start:\n{last_error}");
    }
}

fn write_listen(dir: &Path, port: u16, options: &EdgeOptions) {
    let mut listen = match &options.tls {
        None => format!("listen 127.0.0.1:{port};\n"),
        Some((cert, key)) => format!(
            "listen 127.0.0.1:{port} ssl;\nssl_certificate {};\nssl_certificate_key {};\n",
            cert.display(),
            key.display()
        ),
    };
    listen.push_str(&format!(
        "# Tests only: a request may name the remote client it stands for.\nset_real_ip_from 127.0.0.1;\nreal_ip_header {TEST_CLIENT_HEADER};\n"
    ));
    std::fs::write(dir.join("listen.conf"), listen).expect("write listen.conf");
}

/// Starts nginx in the foreground and waits until its port accepts connections. `Err` with its
/// stderr when it exits first (a port taken in the meantime, a configuration error).
fn launch(nginx: &Path, dir: &Path, port: u16) -> Result<Proc, String> {
    let prefix = format!("{}/", dir.display());
    let conf = dir.join("nginx.conf");
    let conf = conf.to_string_lossy();
    let mut proc = Proc::spawn_group(
        "nginx",
        &nginx.to_string_lossy(),
        &["-p", &prefix, "-c", &conf, "-g", "daemon off;"],
        &[],
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        if proc.exited() {
            return Err(proc.stderr_text());
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            return Err(format!("not listening within {PATIENCE:?}:\n{}", proc.stderr_text()));
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// What a process holds, from /proc/PID.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: usize,
}

impl Usage {
    pub fn of(pid: u32) -> Usage {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> usize {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        Usage { fds, threads: field("Threads:"), rss_kib: field("VmRSS:") }
    }
}

/// Waits until `pid` holds no more descriptors and threads than `baseline` plus `slack` each;
/// the time it took, or `None` with the last reading if `within` passes first.
pub fn settle(
    pid: u32, baseline: Usage, slack: usize, within: Duration,
) -> Result<Duration, Usage> {
    let started = Instant::now();
    loop {
        let now = Usage::of(pid);
        if now.fds <= baseline.fds + slack && now.threads <= baseline.threads + slack {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(now);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
