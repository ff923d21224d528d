//! The command line: `Options` and their defaults, `parse_args`, and the `--help` text.
//!
//! Owns turning arguments into checked `Options` (or `Help`, or an error message naming the
//! offending flag). It must not start anything, print, or exit: `main` does that with the result.

use std::time::Duration;

use crate::endpoint::Endpoint;

pub(crate) const USAGE: &str = "\
loadtest: drive a camera-logs API server with simulated cameras and /logs clients, check every
answer, and print one summary.

Usage: loadtest [options]

Options:
  --cameras N       simulated cameras (default 1; with --idle-ramp: the target maximum)
  --clients M       concurrent /logs clients (default 1)
  --duration SECS   how long the clients call, after every camera is online (default 10)
  --events K        events each simulated camera holds (default 100)
  --target URL      drive an already running server (http://HOST:PORT) instead of starting
                    the `api` binary found next to this executable
  --hold SECS       POLL_HOLD_SECS for the api this tool starts (not with --target)
  --idle-ramp       connect cameras in steps up to --cameras, probe /logs after each step, and
                    report the server's memory and threads; stops at the first failure
  --step N          cameras added per --idle-ramp step (default 500)
  --json            print the summary as one JSON object on stdout instead of a table
  -h, --help        this text

The api it starts inherits this environment (so any server setting can be given there), with
HOST=127.0.0.1 and PORT=0; MAX_CONNECTIONS, when not set, is raised to fit the cameras and clients.
Progress goes to stderr; the summary to stdout.

Exit status: 0 when every call that should succeed did and every answer was right (with
--idle-ramp: when the target was reached), 1 otherwise, 2 for bad options.
";

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) cameras: usize,
    pub(crate) clients: usize,
    pub(crate) duration: Duration,
    pub(crate) events: usize,
    pub(crate) target: Option<String>,
    /// As the user typed it (already checked), passed on as POLL_HOLD_SECS.
    pub(crate) hold: Option<String>,
    pub(crate) json: bool,
    pub(crate) idle_ramp: bool,
    pub(crate) step: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cameras: 1,
            clients: 1,
            duration: Duration::from_secs(10),
            events: 100,
            target: None,
            hold: None,
            json: false,
            idle_ramp: false,
            step: 500,
        }
    }
}

pub(crate) enum Parsed {
    Help,
    Run(Options),
}

pub(crate) fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut options = Options::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline): (&str, Option<&str>) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            match inline {
                Some(v) => Ok(v.to_string()),
                None => rest
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--cameras" => options.cameras = parse_count(flag, &value()?)?,
            "--clients" => options.clients = parse_count(flag, &value()?)?,
            "--events" => options.events = parse_count(flag, &value()?)?,
            "--step" => options.step = parse_count(flag, &value()?)?,
            "--duration" => options.duration = parse_seconds(flag, &value()?)?,
            "--hold" => {
                let raw = value()?;
                parse_seconds(flag, &raw)?;
                options.hold = Some(raw.trim().to_string());
            }
            "--target" => {
                let raw = value()?;
                Endpoint::from_url(&raw)?;
                options.target = Some(raw);
            }
            "--json" | "--idle-ramp" if inline.is_some() => {
                return Err(format!("{flag} takes no value"))
            }
            "--json" => options.json = true,
            "--idle-ramp" => options.idle_ramp = true,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if options.target.is_some() && options.hold.is_some() {
        return Err("--hold sets the hold of the api this tool starts; it cannot change a --target server (set POLL_HOLD_SECS there)".into());
    }
    Ok(Parsed::Run(options))
}

fn parse_count(flag: &str, raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{flag} must be a whole number greater than 0; got {raw:?}"
        )),
    }
}

fn parse_seconds(flag: &str, raw: &str) -> Result<Duration, String> {
    match raw.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(format!(
            "{flag} must be a number of seconds greater than 0 and at most 86400; got {raw:?}"
        )),
    }
}
