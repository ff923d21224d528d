//! `api`: the API server. Configuration comes from the environment; see `api --help`.

use std::process::ExitCode;

use camera_logs::{set_log_level, ApiServer, ServerConfig};

#[path = "shared/cli.rs"]
mod cli;

fn main() -> ExitCode {
    without_thread_caches();
    let config: ServerConfig = match cli::config_from_env("api", "the camera-logs API server") {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    set_log_level(config.log_level);
    cli::exit_status("api", ApiServer::start(config).map(ApiServer::wait))
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
