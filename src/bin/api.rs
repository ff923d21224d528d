//! `api`: the API server. Configuration comes from the environment; see `api --help`.

use std::process::ExitCode;

use camera_logs::ApiServer;
use camera_logs::{from_args_and_env, ServerConfig, SERVER_SETTINGS};

fn main() -> ExitCode {
    let config = match from_args_and_env(
        "api",
        "the camera-logs API server",
        SERVER_SETTINGS,
        ServerConfig::from_env,
        |c| c.log_level,
    ) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    match ApiServer::start(config) {
        Ok(server) => {
            server.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("api: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
