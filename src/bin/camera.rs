//! `camera`: a camera that reaches the API server only through outgoing requests.
//! Configuration comes from the environment; see `camera --help`.

use std::process::ExitCode;

use camera_logs::CameraHandle;
use camera_logs::{from_args_and_env, CameraConfig, CAMERA_SETTINGS};

fn main() -> ExitCode {
    let config = match from_args_and_env(
        "camera",
        "a camera-logs camera client",
        CAMERA_SETTINGS,
        CameraConfig::from_env,
        |c| c.log_level,
    ) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    match CameraHandle::start(config) {
        Ok(camera) => {
            camera.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("camera: cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}
