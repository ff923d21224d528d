//! `loadtest`: drives a real API server over loopback with simulated cameras and `/logs`
//! clients, checks every answer against the events the cameras are known to hold, and prints
//! one summary (a table, or one JSON object with `--json`).
//!
//! What this tool owns:
//! - Starting the `api` binary that sits next to it (HOST=127.0.0.1 PORT=0), learning its port
//!   from its stderr, draining that stderr, sampling its /proc status, and killing it at the end.
//!   With `--target URL` it drives a server that is already running instead; with
//!   `--instances` as well, that is an edge in front of several servers, each asked directly
//!   how many of this run's cameras it holds.
//! - Simulated cameras: one small-stack thread each, speaking the wire protocol over raw
//!   std::net HTTP/1.1 (`Connection: close`: a connection per request, the server's costlier
//!   case; the real camera keeps its connection), holding `--events`
//!   events whose timestamps are a pure function of (camera, index), so every answer can be
//!   checked without storing anything.
//! - Clients: keep-alive ureq agents calling `GET /logs` for random cameras and random ranges
//!   (open on either side, bounds on and between events) and comparing each 200 with the exact
//!   expected subset, computed here independently of the server's own range code.
//! - The idle-scale ramp (`--idle-ramp`): cameras added in steps, with a checked `/logs` probe
//!   and the server's memory and threads after each step, until the target or the first failure.
//!
//! It never changes the server's code or configuration beyond the environment it starts it with.
//!
//! The modules, each using only those listed before it:
//! - [`raw_http`]: one raw HTTP/1.1 exchange on a `Connection: close` socket (the cameras' wire).
//! - [`events`]: the events every camera holds, as a pure function (the oracle), and the random
//!   ranges asked of them.
//! - [`endpoint`]: where the server is, in the forms ureq and the raw sockets need.
//! - [`options`]: the command line.
//! - [`server`]: the `api` process this tool starts, its stderr, and its /proc figures.
//! - [`fleet`]: the simulated cameras.
//! - [`clients`]: `/logs` calls and the check of every answer.
//! - [`harness`]: the server under test, watched through its API, and the output both modes share.
//! - [`load`]: the load run and its summary.
//! - [`ramp`]: the idle-scale ramp and its summary.

mod clients;
mod endpoint;
mod events;
mod fleet;
mod harness;
mod load;
mod options;
mod ramp;
mod raw_http;
mod server;

use std::process::ExitCode;

use options::{parse_args, Parsed, USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Parsed::Help) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Run(options)) => options,
        Err(message) => {
            eprintln!("loadtest: {message}\nRun 'loadtest --help' for the options.");
            return ExitCode::from(2);
        }
    };
    let outcome =
        if options.idle_ramp { ramp::run_idle_ramp(&options) } else { load::run_load(&options) };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("loadtest: {message}");
            ExitCode::FAILURE
        }
    }
}
