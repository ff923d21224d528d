//! `camera`: a camera that reaches the API server only through outgoing requests.
//! Configuration comes from the environment; see `camera --help`.

use std::process::ExitCode;

use camera_logs::{set_log_level, CameraConfig, CameraHandle};

#[path = "shared/cli.rs"]
mod cli;

fn main() -> ExitCode {
    let config: CameraConfig = match cli::config_from_env("camera", "a camera-logs camera client") {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    set_log_level(config.log_level);
    cli::exit_status("camera", CameraHandle::start(config).map(CameraHandle::wait))
}
