//! The integration tests, as one binary with a module per concern (ripgrep's layout). They start
//! real servers on 127.0.0.1:0, in-process or as the built binaries, with real or fake cameras,
//! and stop everything they start; `common` holds the helpers.

mod common;

mod access;
mod api;
mod binaries;
mod camera_tls;
mod capacity;
mod connections;
mod contract;
mod edge;
mod edge_attacks;
mod faults;
mod fleet;
mod fuzz;
mod hostile;
mod kubernetes;
mod leaks;
mod links;
mod metrics;
mod operators;
mod protocol_errors;
mod users;
mod web;
