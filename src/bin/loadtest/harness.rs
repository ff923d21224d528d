//! The server under test and the means to watch it: `Harness` (start the api or take the
//! `--target`, check it answers, sample it, stop it), `Monitor` (its `/cameras`, `/stats`,
//! `/health` read through the API), the waits for cameras to come online (`wait_online`,
//! `wait_open_polls`), and the output both modes share (progress lines, `kib`, problems, JSON).
//!
//! It must not make `/logs` calls or judge answers (the clients do), nor decide pass or fail:
//! the scenarios do.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use camera_logs::CamerasResponse;
use serde::Serialize;

use crate::clients::client_agent;
use crate::endpoint::Endpoint;
use crate::fleet::Fleet;
use crate::options::Options;
use crate::raw_http::{body_excerpt, MAX_BODY};
use crate::server::{api_binary, SampledFigures, Sampler, ServerProcess};

/// Waiting for cameras to come online gives up after this long without progress.
const NO_PROGRESS_LIMIT: Duration = Duration::from_secs(15);
const ONLINE_CHECK_EVERY: Duration = Duration::from_millis(200);
/// After cameras come online, memory is measured once the server has settled.
pub(crate) const SETTLE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Watching the server through its API

pub(crate) struct Monitor {
    base: String,
    /// Where cameras are counted: the servers behind an edge, or just `base`.
    instances: Vec<String>,
    agent: ureq::Agent,
}

impl Monitor {
    fn new(base: &str, instances: &[String]) -> Monitor {
        Monitor {
            base: base.to_string(),
            instances: if instances.is_empty() {
                vec![base.to_string()]
            } else {
                instances.to_vec()
            },
            agent: client_agent(),
        }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        self.get_from(&self.base, path)
    }

    fn get_from<T: serde::de::DeserializeOwned>(
        &self, base: &str, path: &str,
    ) -> Result<T, String> {
        let url = format!("{base}{path}");
        let mut response = self
            .agent
            .get(&url)
            .header("Connection", "close")
            .call()
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY as u64)
            .read_to_vec()
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?;
        if status != 200 {
            return Err(format!("GET {url}: HTTP {status}: {}", body_excerpt(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: unreadable body: {e}"))
    }

    /// This run's cameras that the server (every one of `--instances`) counts as online.
    fn online(&self, prefix: &str) -> Result<usize, String> {
        let mut online = 0;
        for base in &self.instances {
            // Each server's own cameras: with PEERS, its plain /cameras is the whole fleet's.
            let mut path = "/cameras?scope=instance".to_string();
            loop {
                let page: CamerasResponse = self.get_from(base, &path)?;
                online += page
                    .cameras
                    .iter()
                    .filter(|c| c.online && c.camera_id.starts_with(prefix))
                    .count();
                match page.next_after {
                    Some(after) => path = format!("/cameras?scope=instance&after={after}"),
                    None => break,
                }
            }
        }
        Ok(online)
    }

    /// `registry.openPolls` from /stats, when the server has it.
    pub(crate) fn open_polls(&self) -> Option<u64> {
        let stats: serde_json::Value = self.get("/stats").ok()?;
        stats.get("registry")?.get("openPolls")?.as_u64()
    }
}

/// What to wait for: a count read from the server, and what it is called in messages.
struct Awaited<'a> {
    what: &'a str,
    want: usize,
    count: &'a dyn Fn() -> Result<usize, String>,
}

/// Waits until `want` of this run's cameras are online (polled within the server's grace).
pub(crate) fn wait_online(
    monitor: &Monitor, fleet: &Fleet, want: usize, server: &mut Option<ServerProcess>,
) -> Result<(), String> {
    let count = || monitor.online(&fleet.prefix);
    let awaited = Awaited { what: "cameras online", want, count: &count };
    wait_for(&awaited, fleet, server)
}

/// Waits until the server holds a poll open for (almost) every camera: `/stats` `openPolls`,
/// which also counts other cameras of a --target server. A camera between two polls holds
/// none, so 0.5 % may be missing at any instant.
pub(crate) fn wait_open_polls(
    monitor: &Monitor, fleet: &Fleet, cameras: usize, server: &mut Option<ServerProcess>,
) -> Result<(), String> {
    let count = || {
        monitor
            .open_polls()
            .map(|polls| polls as usize)
            .ok_or_else(|| "no registry.openPolls on /stats".to_string())
    };
    let awaited = Awaited { what: "polls held open", want: cameras - cameras / 200, count: &count };
    wait_for(&awaited, fleet, server)
}

/// Polls a count until it reaches `want`; fails after a stretch without progress, or when the
/// api this tool started has exited.
fn wait_for(
    awaited: &Awaited<'_>, fleet: &Fleet, server: &mut Option<ServerProcess>,
) -> Result<(), String> {
    let mut best = 0usize;
    let mut last_progress = Instant::now();
    let mut last_error = String::new();
    loop {
        if let Some(exited) = server.as_mut().and_then(ServerProcess::exited) {
            return Err(exited);
        }
        match (awaited.count)() {
            Ok(n) if n >= awaited.want => return Ok(()),
            Ok(n) if n > best => {
                best = n;
                last_progress = Instant::now();
            }
            Ok(_) => {}
            Err(e) => last_error = e,
        }
        if last_progress.elapsed() > NO_PROGRESS_LIMIT {
            return Err(format!(
                "timeout: {best} of {} {}, no progress for {} s; {}{}",
                awaited.want,
                awaited.what,
                NO_PROGRESS_LIMIT.as_secs(),
                fleet.trouble(),
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!("; last check failed: {last_error}")
                }
            ));
        }
        std::thread::sleep(ONLINE_CHECK_EVERY);
    }
}

// ---------------------------------------------------------------------------------------------
// Setting up either mode

/// The server under test and the means to watch it.
pub(crate) struct Harness {
    pub(crate) endpoint: Endpoint,
    pub(crate) server: Option<ServerProcess>,
    /// The api's pid, kept after the server is stopped.
    pub(crate) started_pid: Option<u32>,
    sampler: Option<Sampler>,
    pub(crate) monitor: Monitor,
}

impl Harness {
    pub(crate) fn start(options: &Options) -> Result<Harness, String> {
        warn_about_open_files(options);
        let (server, endpoint) = match &options.target {
            Some(url) => (None, Endpoint::from_url(url)?),
            None => {
                let (server, endpoint) = ServerProcess::start(options)?;
                progress(&format!(
                    "started {} (pid {}) on {}{}",
                    api_binary()?.display(),
                    server.pid,
                    endpoint.base,
                    server
                        .max_handlers
                        .map(|m| format!(" with MAX_HANDLERS={m}"))
                        .unwrap_or_default()
                ));
                (Some(server), endpoint)
            }
        };
        let sampler = match &server {
            Some(server) => Some(Sampler::start(server.pid)?),
            None => None,
        };
        let started_pid = server.as_ref().map(|s| s.pid);
        let monitor = Monitor::new(&endpoint.base, &options.instances);
        // The server must answer before cameras are thrown at it.
        let _: serde_json::Value =
            monitor.get("/health").map_err(|e| format!("the server is not answering: {e}"))?;
        Ok(Harness { endpoint, server, started_pid, sampler, monitor })
    }

    pub(crate) fn describe(&self) -> String {
        match &self.server {
            Some(server) => {
                format!("{} (api started by loadtest, pid {})", self.endpoint.base, server.pid)
            }
            None => format!("{} (--target)", self.endpoint.base),
        }
    }

    pub(crate) fn sample(&self) -> Option<SampledFigures> {
        self.sampler.as_ref().map(Sampler::now)
    }

    /// Kills the api (which also ends every camera's open poll) and collects its log counts.
    pub(crate) fn stop_server(&mut self) -> Option<ServerLogCounts> {
        self.sampler = None;
        let server = self.server.take()?;
        let log = Arc::clone(&server.log);
        drop(server);
        let recent: Vec<String> = log.recent_problems.lock().iter().cloned().collect();
        Some(ServerLogCounts {
            warnings: log.warnings.load(Ordering::Relaxed),
            errors: log.errors.load(Ordering::Relaxed),
            recent,
        })
    }
}

/// What the api wrote to stderr, counted.
pub(crate) struct ServerLogCounts {
    pub(crate) warnings: u64,
    pub(crate) errors: u64,
    pub(crate) recent: Vec<String>,
}

pub(crate) fn progress(message: &str) {
    eprintln!("loadtest: {message}");
}

/// Warns when the cameras and clients cannot all have a socket under `ulimit -n`.
fn warn_about_open_files(options: &Options) {
    let limit = std::fs::read_to_string("/proc/self/limits").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|soft| soft.parse::<usize>().ok())
    });
    let needed = options.cameras + options.clients + 64;
    if let Some(limit) = limit {
        if needed > limit {
            progress(&format!(
                "warning: {needed} sockets may be needed but ulimit -n is {limit}; expect connect errors"
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output both modes share

pub(crate) fn per_camera_kib(before_kib: u64, with_kib: u64, cameras: usize) -> f64 {
    (with_kib as f64 - before_kib as f64) / cameras.max(1) as f64
}

pub(crate) fn kib(value: u64) -> String {
    if value >= 10 * 1024 {
        format!("{:.1} MiB", value as f64 / 1024.0)
    } else {
        format!("{value} KiB")
    }
}

pub(crate) fn print_problems(problems: &[String]) {
    if problems.is_empty() {
        return;
    }
    println!("first problems:");
    for problem in problems {
        println!("  {problem}");
    }
}

pub(crate) fn print_json(value: &impl Serialize) -> Result<(), String> {
    let text =
        serde_json::to_string(value).map_err(|e| format!("cannot encode the summary: {e}"))?;
    println!("{text}");
    Ok(())
}
