//! `camera`: a camera that reaches the API server only through outgoing requests.
//! Configuration comes from the environment; see `camera --help`.

use std::process::ExitCode;

use camera_logs::{from_args_and_env, CameraConfig, CameraHandle};

fn main() -> ExitCode {
    let config: CameraConfig = match from_args_and_env() {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    match CameraHandle::start(config).map(CameraHandle::wait) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("camera: stopped: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("camera: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
