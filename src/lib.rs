//! camera-logs: fetch the event log of a camera that has no open ports.
//!
//! The camera holds a long poll open to the API server; a user's `GET /logs` is answered by
//! sending the camera a command on that poll and relaying its `POST /send_logs` answer.
//!
//! The crate is three parts and two helpers; the server and the camera never name each other,
//! and share only the protocol and the settings:
//!
//! - `server`: the API server ([`ApiServer`]): the listener around tiny_http, the handler pool,
//!   routes, the camera registry where the races are handled, metrics.
//! - `camera`: the camera client ([`CameraHandle`]): a polling thread, a posting thread, and
//!   its [`EventLog`].
//! - `protocol`: the wire: endpoints ([`Route`]), JSON shapes, camera ids, the time range.
//! - `settings`: both binaries' settings, one table each ([`SERVER_SETTINGS`],
//!   [`CAMERA_SETTINGS`]), read from the environment once at start-up.
//! - `log`: log lines, and client text made safe to log.
//!
//! ARCHITECTURE.md follows one `/logs` call through them.

#![forbid(unsafe_code)]

mod log;

mod camera;
mod protocol;
mod server;
mod settings;

pub use camera::{CameraHandle, EventLog};
pub use log::{flush as flush_log, set_level as set_log_level, Level};
pub use protocol::{
    valid_camera_id, CameraInfo, CamerasResponse, Command, ErrorBody, LogEntry, LogsResponse,
    Route, SendLogsBody,
};
pub use server::ApiServer;
pub use settings::{
    CaCerts, CameraConfig, ConfigError, ServerConfig, Setting, Settings, TokensFile,
    CAMERA_SETTINGS, SERVER_SETTINGS,
};
