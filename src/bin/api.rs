//! `api`: the API server. Configuration comes from the environment; see `api --help`.

use std::process::ExitCode;

use camera_logs::config::{help_text, ServerConfig, SERVER_SETTINGS};
use camera_logs::ApiServer;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!(
            "{}",
            help_text("api", "the camera-logs API server", SERVER_SETTINGS)
        );
        return ExitCode::SUCCESS;
    }
    if let Some(arg) = args.first() {
        eprintln!("api: unexpected argument {arg:?}; configuration comes from the environment (see --help)");
        return ExitCode::from(2);
    }
    let config = match ServerConfig::from_env() {
        Ok(config) => {
            camera_logs::log::set_level(config.log_level);
            config
        }
        Err(e) => {
            eprintln!("api: {e}");
            return ExitCode::from(2);
        }
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
