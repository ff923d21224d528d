//! camera-logs: fetch the event log of a camera that has no open ports.
//!
//! The camera holds a long poll open to the API server; a user's `GET /logs` is answered by
//! sending the camera a command on that poll and relaying its `POST /send_logs` answer.
//!
//! The modules form a one-way chain, each using only those below it (a test checks it):
//!
//! - `server`: wires the rest together: the handler thread pool, start-up and shutdown.
//! - `routes`: HTTP routing, parsing, authentication; sees the server only through
//!   [`ServerView`].
//! - `registry`: cameras, commands in flight, waiting calls: all the race handling.
//! - `camera`: the camera client (one polling thread, one posting thread).
//! - `front_door`: the listening socket and the tiny_http servers on it, kept accepting; where
//!   tiny_http 0.12's gaps are closed.
//! - `event_log`: the camera's bounded, optionally persistent log of events.
//! - `metrics`: the counters behind `GET /metrics` and their Prometheus text rendering.
//! - `config`: every setting, read from the environment once at start-up, and `--help`.
//! - `error`: the one error enum, mapped to HTTP status and JSON in one place.
//! - `protocol`: the JSON on the wire, camera ids, and the inclusive time-range rules.
//! - `log`: log lines, and client text made safe to log.
//!
//! ARCHITECTURE.md follows one `/logs` call through them.

#![forbid(unsafe_code)]

mod log;

mod camera;
mod config;
mod error;
mod event_log;
mod front_door;
mod metrics;
mod protocol;
mod registry;
mod routes;
mod server;

pub use camera::{CameraHandle, CameraStats};
pub use config::{
    from_args_and_env, parse_ca_pem, parse_tokens, CaCerts, CameraAuth, CameraConfig, ConfigError,
    ServerConfig, Setting, CAMERA_SETTINGS, MAX_LOGS_TIMEOUT, SERVER_SETTINGS,
};
pub use error::ApiError;
pub use event_log::{EventLog, LoadReport};
pub use front_door::FrontDoorStats;
pub use log::{set_enabled as set_logging, utc_timestamp, Level};
pub use metrics::ROUTES;
pub use protocol::{
    valid_camera_id, CameraInfo, CamerasResponse, Command, LogEntry, LogsResponse, SendLogsBody,
    TimeRange, MAX_CAMERA_ID_LEN,
};
pub use registry::{Completion, LogSlice, Registry, RegistryConfig, RegistryStats, DEFAULT_PAGE};
pub use routes::{Query, ServerView};
pub use server::{ApiServer, PoolSnapshot};

#[cfg(test)]
mod layering {
    //! The one-way chain of the crate map above: a module may name only modules below it.

    /// Top to bottom, with each module's source (a module's files each have a line).
    const CHAIN: &[(&str, &str)] = &[
        ("server", include_str!("server.rs")),
        ("routes", include_str!("routes.rs")),
        ("registry", include_str!("registry.rs")),
        ("registry", include_str!("registry/camera.rs")),
        ("registry", include_str!("registry/tests.rs")),
        ("camera", include_str!("camera.rs")),
        ("front_door", include_str!("front_door.rs")),
        ("event_log", include_str!("event_log.rs")),
        ("metrics", include_str!("metrics.rs")),
        ("config", include_str!("config.rs")),
        ("config", include_str!("config/tests.rs")),
        ("error", include_str!("error.rs")),
        ("protocol", include_str!("protocol.rs")),
        ("log", include_str!("log.rs")),
    ];

    /// Every module `source` names as `crate::name`, including in `use crate::{a, b::c}`.
    fn modules_named(source: &str) -> Vec<String> {
        let mut named = Vec::new();
        for (at, _) in source.match_indices("crate::") {
            let rest = &source[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                named.extend(
                    inner
                        .split(',')
                        .filter_map(|item| item.trim().split("::").next())
                        .filter(|name| !name.is_empty())
                        .map(str::to_string),
                );
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                named.push(name);
            }
        }
        named
    }

    #[test]
    fn no_module_names_one_above_it() {
        let order: Vec<&str> = CHAIN.iter().map(|(name, _)| *name).collect();
        let mut violations = Vec::new();
        for (rank, (module, source)) in CHAIN.iter().enumerate() {
            for named in modules_named(source) {
                match order.iter().position(|m| *m == named) {
                    Some(other) if other < rank && named != *module => {
                        violations.push(format!("{module} names {named}"))
                    }
                    _ => {}
                }
            }
        }
        assert!(violations.is_empty(), "{violations:?}");
    }

    #[test]
    fn the_checker_sees_every_form_of_use() {
        let source = "use crate::log::{log_info};\nuse crate::{error::ApiError, protocol};\nfn f() { crate::registry::x(); }";
        assert_eq!(
            modules_named(source),
            ["log", "error", "protocol", "registry"]
        );
    }

    #[test]
    fn no_source_file_is_over_900_lines() {
        fn rust_files(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    rust_files(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    found.push(path);
                }
            }
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["src", "tests"] {
            rust_files(&root.join(dir), &mut files);
        }
        assert!(files.len() > 20, "found only {files:?}");
        for file in files {
            let lines = std::fs::read_to_string(&file).map_or(0, |s| s.lines().count());
            assert!(lines <= 900, "{} has {lines} lines", file.display());
        }
    }
}
