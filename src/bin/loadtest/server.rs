//! The `api` process this tool starts: `ServerProcess` (start it from this executable's
//! directory, learn its address from its stderr, kill it on drop), `ServerLog` (its WARN/ERROR
//! lines, counted), and the /proc sampling of it (`Sampler`, `ProcSample`).
//!
//! It must not talk to the server over HTTP (the harness does) nor print anything: it only
//! reports what it saw, to whoever asks.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStderr, Command as Process, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use serde::Serialize;

use crate::endpoint::Endpoint;
use crate::options::Options;

/// The stderr reader and the /proc sampler get the stack of a client thread.
const HELPER_STACK: usize = 512 * 1024;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// WARN/ERROR lines kept verbatim for the summary.
const KEPT_PROBLEMS: usize = 5;

// ---------------------------------------------------------------------------------------------
// The api process this tool starts

/// What the server wrote to stderr, beyond its address.
#[derive(Default)]
pub(crate) struct ServerLog {
    pub(crate) warnings: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// The last WARN/ERROR lines.
    pub(crate) recent_problems: Mutex<VecDeque<String>>,
    /// The last lines of any kind, to explain a failed start.
    tail: Mutex<VecDeque<String>>,
}

impl ServerLog {
    fn take_line(&self, line: &str) {
        push_bounded(&mut self.tail.lock(), line.to_string(), 10);
        let level = line.split_whitespace().nth(1).unwrap_or("");
        let counter = match level {
            "WARN" => &self.warnings,
            "ERROR" => &self.errors,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        push_bounded(&mut self.recent_problems.lock(), line.to_string(), KEPT_PROBLEMS);
    }
}

fn push_bounded(queue: &mut VecDeque<String>, line: String, max: usize) {
    if queue.len() == max {
        queue.pop_front();
    }
    queue.push_back(line);
}

/// The `api` child. Dropping it kills it, so no exit path leaves a server behind.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) log: Arc<ServerLog>,
    /// MAX_HANDLERS, when this tool raised it.
    pub(crate) max_handlers: Option<usize>,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Starts `api` from this executable's directory and waits for its listening line.
    pub(crate) fn start(options: &Options) -> Result<(ServerProcess, Endpoint), String> {
        let api = api_binary()?;
        let mut command = Process::new(&api);
        command
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(hold) = &options.hold {
            command.env("POLL_HOLD_SECS", hold);
        }
        let max_handlers = handlers_needed(options);
        if let Some(max) = max_handlers {
            command.env("MAX_HANDLERS", max.to_string());
        }
        let mut child =
            command.spawn().map_err(|e| format!("cannot start {}: {e}", api.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take();
        let log = Arc::new(ServerLog::default());
        let mut process = ServerProcess { child, pid, log: Arc::clone(&log), max_handlers };
        let stderr = stderr.ok_or("the api's stderr was not captured")?;
        let (addr_tx, addr_rx) = bounded::<SocketAddr>(1);
        std::thread::Builder::new()
            .name("api-stderr".into())
            .stack_size(HELPER_STACK)
            .spawn(move || drain_stderr(stderr, &log, addr_tx))
            .map_err(|e| format!("cannot start the stderr reader: {e}"))?;
        match addr_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => Ok((process, Endpoint::from_addr(addr))),
            Err(_) => {
                let exited = process.exited().unwrap_or_default();
                let tail: Vec<String> = process.log.tail.lock().iter().cloned().collect();
                Err(format!(
                    "{} did not report 'API server listening on http://ADDR' within {} s{}; its last lines:\n  {}",
                    api.display(),
                    STARTUP_TIMEOUT.as_secs(),
                    if exited.is_empty() { String::new() } else { format!(" ({exited})") },
                    tail.join("\n  ")
                ))
            }
        }
    }

    /// `Some(description)` once the process has ended.
    pub(crate) fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("the api server exited: {status}")),
            Ok(None) => None,
            Err(e) => Some(format!("cannot check the api server: {e}")),
        }
    }
}

pub(crate) fn api_binary() -> Result<std::path::PathBuf, String> {
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find this executable's path: {e}"))?;
    let dir = exe.parent().ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let api = dir.join(format!("api{}", std::env::consts::EXE_SUFFIX));
    if api.is_file() {
        Ok(api)
    } else {
        Err(format!(
            "no api binary at {} (build both: cargo build --release --bin api --bin loadtest), or pass --target URL",
            api.display()
        ))
    }
}

/// MAX_HANDLERS for the api, when the environment does not set it and the default is short:
/// requests beyond it wait in line, and every held poll and waiting call is one.
fn handlers_needed(options: &Options) -> Option<usize> {
    if std::env::var_os("MAX_HANDLERS").is_some() {
        return None;
    }
    // A camera holds one poll, and briefly a second request while it answers; each client
    // waits in one call at a time. Polls may take three quarters of the handlers.
    let needed = (options.cameras + options.cameras / 4 + options.clients + 64) * 4 / 3;
    (needed > camera_logs::ServerConfig::default().max_handlers).then_some(needed)
}

/// Reads the api's stderr to its end: finds the listening address, counts warnings and errors.
fn drain_stderr(stderr: ChildStderr, log: &ServerLog, addr_tx: Sender<SocketAddr>) {
    const MARKER: &str = "API server listening on http://";
    let mut reader = BufReader::new(stderr);
    let mut raw = Vec::new();
    let mut found = false;
    loop {
        raw.clear();
        match reader.read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end();
        log.take_line(line);
        if found {
            continue;
        }
        let addr =
            line.split_once(MARKER).and_then(|(_, rest)| rest.trim().parse::<SocketAddr>().ok());
        if let Some(addr) = addr {
            found = true;
            let _ = addr_tx.send(addr);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc sampling of the api process

#[derive(Debug, Clone, Copy, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProcSample {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
    pub(crate) threads: u64,
}

fn read_proc_status(pid: u32) -> Option<ProcSample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    Some(ProcSample {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
        threads: field("Threads:")?,
    })
}

/// Linux's `USER_HZ`: /proc reports CPU times in these ticks, 100 a second on every
/// architecture (the kernel converts from its own HZ), so no sysconf call is needed.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system, all threads) process `pid` has used so far, from /proc/PID/stat.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_secs_of_stat(&text)
}

fn cpu_secs_of_stat(text: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    // utime and stime are fields 14 and 15, so the 12th and 13th after the name.
    let mut fields = text.get(text.rfind(')')? + 1..)?.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / TICKS_PER_SEC)
}

#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SampledFigures {
    pub(crate) latest: ProcSample,
    pub(crate) peak_threads: u64,
}

/// Samples the api's /proc status every 100 ms on its own thread until dropped.
pub(crate) struct Sampler {
    pid: u32,
    figures: Arc<Mutex<SampledFigures>>,
    _stop: Sender<()>,
}

impl Sampler {
    pub(crate) fn start(pid: u32) -> Result<Sampler, String> {
        let figures = Arc::new(Mutex::new(SampledFigures::default()));
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let shared = Arc::clone(&figures);
        std::thread::Builder::new()
            .name("proc-sampler".into())
            .stack_size(HELPER_STACK)
            .spawn(move || sample_until_stopped(pid, &shared, &stop_rx))
            .map_err(|e| format!("cannot start the /proc sampler: {e}"))?;
        Ok(Sampler { pid, figures, _stop: stop_tx })
    }

    /// A fresh reading (and the peaks so far).
    pub(crate) fn now(&self) -> SampledFigures {
        let mut figures = self.figures.lock();
        if let Some(sample) = read_proc_status(self.pid) {
            record_sample(&mut figures, sample);
        }
        *figures
    }
}

fn sample_until_stopped(pid: u32, figures: &Mutex<SampledFigures>, stop: &Receiver<()>) {
    loop {
        if let Some(sample) = read_proc_status(pid) {
            record_sample(&mut figures.lock(), sample);
        }
        match stop.recv_timeout(SAMPLE_EVERY) {
            Err(RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

fn record_sample(figures: &mut SampledFigures, sample: ProcSample) {
    figures.latest = sample;
    figures.peak_threads = figures.peak_threads.max(sample.threads);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_log_counts_warnings_and_errors_and_keeps_the_last_lines() {
        let log = ServerLog::default();
        log.take_line("2026-12-01T09:00:00Z INFO camera-logs: API server listening on http://x");
        for n in 0..7 {
            log.take_line(&format!("2026-12-01T09:00:01Z WARN poll {n} dropped"));
        }
        log.take_line("2026-12-01T09:00:02Z ERROR registry: full");
        log.take_line("ERROR at the start is not a level");
        log.take_line("");
        for n in 0..3 {
            log.take_line(&format!("2026-12-01T09:00:03Z INFO step {n}"));
        }
        assert_eq!(log.warnings.load(Ordering::Relaxed), 7);
        assert_eq!(log.errors.load(Ordering::Relaxed), 1);
        let recent: Vec<String> = log.recent_problems.lock().iter().cloned().collect();
        assert_eq!(recent.len(), KEPT_PROBLEMS);
        assert_eq!(recent[0], "2026-12-01T09:00:01Z WARN poll 3 dropped");
        assert_eq!(recent[4], "2026-12-01T09:00:02Z ERROR registry: full");
        let tail = log.tail.lock();
        assert_eq!(tail.len(), 10);
        assert_eq!(tail.back().map(String::as_str), Some("2026-12-01T09:00:03Z INFO step 2"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn proc_status_reads_this_process() {
        let sample = read_proc_status(std::process::id());
        let sample = sample.unwrap_or_else(|| panic!("no /proc status for this process"));
        assert!(sample.rss_kib > 0 && sample.hwm_kib >= sample.rss_kib, "{sample:?}");
        assert!(sample.threads >= 1, "{sample:?}");
        assert!(read_proc_status(u32::MAX).is_none());
    }

    #[test]
    fn cpu_seconds_come_from_utime_and_stime() {
        let stat = "4242 (api (x) y) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_secs_of_stat(stat), Some(3.25));
        assert_eq!(cpu_secs_of_stat("4242 (api) S 1"), None);
        #[cfg(target_os = "linux")]
        assert!(cpu_secs(std::process::id()).is_some());
    }

    #[test]
    fn the_sampler_keeps_the_peak_thread_count() {
        let mut figures = SampledFigures::default();
        for threads in [3, 9, 4] {
            let sample = ProcSample { rss_kib: threads * 100, hwm_kib: 900, threads };
            record_sample(&mut figures, sample);
        }
        assert_eq!(figures.latest.threads, 4);
        assert_eq!(figures.latest.rss_kib, 400);
        assert_eq!(figures.peak_threads, 9);
    }
}
