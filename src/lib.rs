//! camera-logs: fetch the event log of a camera that has no open ports.
//!
//! The camera holds a long poll open to the API server; a user's `GET /logs` is answered by
//! sending the camera a command on that poll and relaying its `POST /send_logs` answer.
//!
//! - [`protocol`]: the JSON on the wire and the inclusive time-range rules.
//! - [`registry`]: cameras, commands in flight, waiting calls: all the race handling.
//! - [`routes`]: HTTP routing, parsing, authentication.
//! - [`listener`]: the listening socket and the tiny_http servers on it, kept accepting.
//! - [`server`]: the handler thread pool and shutdown.
//! - [`metrics`]: the counters behind `GET /metrics` and their Prometheus text rendering.
//! - [`camera`]: the camera client (one polling thread, one posting thread).
//! - [`event_log`]: the camera's bounded, optionally persistent log of events.
//! - [`config`], [`error`], [`log`]: settings from the environment, the error enum, log lines.

pub mod log;

pub mod camera;
pub mod config;
pub mod error;
pub mod event_log;
pub mod listener;
pub mod metrics;
pub mod protocol;
pub mod registry;
pub mod routes;
pub mod server;

pub use camera::CameraHandle;
pub use config::{CameraConfig, ServerConfig};
pub use server::ApiServer;
