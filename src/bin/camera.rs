//! `camera`: a camera that reaches the API server only through outgoing requests.
//! Configuration comes from the environment; see `camera --help`.

use std::process::ExitCode;

use camera_logs::config::{help_text, CameraConfig, CAMERA_SETTINGS};
use camera_logs::CameraHandle;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!(
            "{}",
            help_text("camera", "a camera-logs camera client", CAMERA_SETTINGS)
        );
        return ExitCode::SUCCESS;
    }
    if let Some(arg) = args.first() {
        eprintln!("camera: unexpected argument {arg:?}; configuration comes from the environment (see --help)");
        return ExitCode::from(2);
    }
    let config = match CameraConfig::from_env() {
        Ok(config) => {
            camera_logs::log::set_level(config.log_level);
            config
        }
        Err(e) => {
            eprintln!("camera: {e}");
            return ExitCode::from(2);
        }
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
