//! `api`: the API server. Configuration comes from the environment; see `api --help`.

use std::process::ExitCode;

use camera_logs::{from_args_and_env, ApiServer, ServerConfig};

fn main() -> ExitCode {
    let config: ServerConfig = match from_args_and_env() {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    match ApiServer::start(config).map(ApiServer::wait) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("api: stopped: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("api: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
