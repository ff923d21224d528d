//! `api`: the API server. Configuration comes from the environment; see `api --help`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use camera_logs::{set_log_level, ApiServer, ServerConfig, Settings};

#[path = "shared/cli.rs"]
mod cli;

/// What `--help` says besides the variables.
const ABOUT: &str = "the camera-logs API server.\n\n`api --drain` drains the server running with the same DRAIN_FILE (a Kubernetes preStop\nhook): it returns once that server has handed its cameras and calls on, DRAIN_SECS later";

fn main() -> ExitCode {
    if std::env::args().skip(1).eq(["--drain"]) {
        return drain();
    }
    without_thread_caches();
    let config: ServerConfig = match cli::config_from_env("api", ABOUT) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    set_log_level(config.log_level);
    cli::exit_status("api", ApiServer::start(config).map(ApiServer::wait))
}

/// `api --drain`: the binaries have no signal handling, so a drain is asked for with a file only
/// this container can write (DRAIN_FILE), not with a signal or a route anyone could call. The
/// server removes the file once drained; it then goes on answering for DRAIN_SECS, refusing
/// what it cannot finish so that the edge asks the next instance, until the edge has stopped
/// sending requests here.
fn drain() -> ExitCode {
    let config = match ServerConfig::from_env() {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string(), 2),
    };
    let Some(path) = config.drain_file else {
        return fail("DRAIN_FILE is not set, so no server can be asked to drain", 2);
    };
    if let Err(e) = std::fs::write(&path, b"") {
        return fail(&format!("cannot create {}: {e}", path.display()), 1);
    }
    // A running server drains within a second; this bounds anything it could wait for.
    let deadline = Instant::now() + config.poll_hold + config.logs_timeout;
    while path.exists() {
        if Instant::now() > deadline {
            let why = format!("no server removed {} (is one running with it?)", path.display());
            return fail(&why, 1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let linger = config.drain_linger.as_secs_f64();
    eprintln!("api --drain: drained; the server answers for {linger} s more, while the edge stops sending requests to it");
    std::thread::sleep(config.drain_linger);
    ExitCode::SUCCESS
}

fn fail(why: &str, status: u8) -> ExitCode {
    eprintln!("api --drain: {why}");
    ExitCode::from(status)
}

/// glibc gives every thread a cache of the small blocks it frees (tcache). A handler frees the
/// request tiny_http's connection thread allocated, so with a thread per held poll those blocks
/// pile up in a thousand caches: 1,000 cameras and 50 clients peaked at 119 MiB with it and
/// 44 MiB without (BENCHMARKS.md, scenario 3). The cache can only be turned off before the
/// process starts, so the api starts itself once more without it, in place (same pid), unless
/// GLIBC_TUNABLES already says something (a choice of the operator's, or this second start).
fn without_thread_caches() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")
        .exec();
    eprintln!(
        "api: could not restart without glibc's thread caches ({error}); carrying on with them"
    );
}
