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
  --instances URLS  with --target an edge in front of several servers: their own http://
                    roots, comma-separated, each asked directly which cameras it holds
                    (/cameras?scope=instance)
  --hold SECS       POLL_HOLD_SECS for the api this tool starts (not with --target)
  --idle-ramp       connect cameras in steps up to --cameras, probe /logs after each step, and
                    report the server's memory and threads; stops at the first failure
  --step N          cameras added per --idle-ramp step (default 500)
  --json            print the summary as one JSON object on stdout instead of a table
  -h, --help        this text

The api it starts inherits this environment (so any server setting can be given there), with
HOST=127.0.0.1 and PORT=0; MAX_HANDLERS, when not set, is raised to fit the cameras and clients.
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
    /// `--instances`: the servers behind a `--target` edge, each `http://host:port`.
    pub(crate) instances: Vec<String>,
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
            instances: Vec::new(),
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
                None => rest.next().cloned().ok_or_else(|| format!("{flag} needs a value")),
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
            "--instances" => {
                for raw in value()?.split(',').filter(|s| !s.trim().is_empty()) {
                    options.instances.push(Endpoint::from_url(raw.trim())?.base);
                }
            }
            "--json" | "--idle-ramp" if inline.is_some() => {
                return Err(format!("{flag} takes no value"))
            }
            "--json" => options.json = true,
            "--idle-ramp" => options.idle_ramp = true,
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if options.target.is_none() && !options.instances.is_empty() {
        return Err(
            "--instances names the servers behind a --target edge; give --target too".into()
        );
    }
    if options.target.is_some() && options.hold.is_some() {
        return Err("--hold sets the hold of the api this tool starts; it cannot change a --target server (set POLL_HOLD_SECS there)".into());
    }
    Ok(Parsed::Run(options))
}

fn parse_count(flag: &str, raw: &str) -> Result<usize, String> {
    match raw.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{flag} must be a whole number greater than 0; got {raw:?}")),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        parse_args(&args)
    }

    fn options(args: &[&str]) -> Options {
        match parse(args) {
            Ok(Parsed::Run(options)) => options,
            Ok(Parsed::Help) => panic!("{args:?}: help"),
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => e,
            Ok(_) => panic!("{args:?} was accepted"),
        }
    }

    #[test]
    fn no_arguments_give_the_documented_defaults() {
        let o = options(&[]);
        assert_eq!((o.cameras, o.clients, o.events, o.step), (1, 1, 100, 500));
        assert_eq!(o.duration, Duration::from_secs(10));
        assert!(o.target.is_none() && o.hold.is_none() && !o.json && !o.idle_ramp);
        for default in ["default 1;", "default 1)", "default 10)", "default 100)", "default 500)"] {
            assert!(USAGE.contains(default), "--help no longer says {default:?}");
        }
    }

    #[test]
    fn every_flag_is_read_with_a_separate_or_an_inline_value() {
        let o = options(&[
            "--cameras",
            "5",
            "--clients=8",
            "--duration",
            "2.5",
            "--events=200",
            "--hold",
            " 3 ",
            "--step",
            "7",
            "--json",
            "--idle-ramp",
        ]);
        assert_eq!((o.cameras, o.clients, o.events, o.step), (5, 8, 200, 7));
        assert_eq!(o.duration, Duration::from_millis(2500));
        assert_eq!(o.hold.as_deref(), Some("3"));
        assert!(o.json && o.idle_ramp);
        let o = options(&["--target", "http://127.0.0.1:8080/"]);
        assert_eq!(o.target.as_deref(), Some("http://127.0.0.1:8080/"));
    }

    #[test]
    fn help_wins_wherever_it_is() {
        assert!(matches!(parse(&["--cameras", "3", "-h"]), Ok(Parsed::Help)));
        assert!(matches!(parse(&["--help", "--bogus"]), Ok(Parsed::Help)));
    }

    #[test]
    fn a_bad_count_is_an_error_naming_the_flag_and_the_value() {
        for flag in ["--cameras", "--clients", "--events", "--step"] {
            for bad in ["0", "-1", "1.5", "many", ""] {
                let e = error(&[flag, bad]);
                assert!(e.starts_with(&format!("{flag} must be")), "{flag} {bad:?}: {e}");
                assert!(e.ends_with(&format!("got {bad:?}")), "{flag} {bad:?}: {e}");
            }
        }
    }

    #[test]
    fn bad_seconds_are_an_error_naming_the_flag_and_the_value() {
        for flag in ["--duration", "--hold"] {
            for bad in ["0", "-2", "86401", "NaN", "inf", "soon"] {
                let e = error(&[flag, bad]);
                assert!(e.starts_with(&format!("{flag} must be")), "{flag} {bad:?}: {e}");
                assert!(e.ends_with(&format!("got {bad:?}")), "{flag} {bad:?}: {e}");
            }
        }
        assert_eq!(options(&["--duration", "86400"]).duration.as_secs(), 86_400);
    }

    #[test]
    fn a_missing_value_is_an_error_naming_the_flag() {
        for flag in
            ["--cameras", "--clients", "--duration", "--events", "--target", "--hold", "--step"]
        {
            assert_eq!(error(&[flag]), format!("{flag} needs a value"));
        }
    }

    #[test]
    fn an_unknown_flag_is_an_error_naming_it() {
        assert_eq!(error(&["--camera", "3"]), "unknown option \"--camera\"");
        assert_eq!(error(&["-c"]), "unknown option \"-c\"");
        assert_eq!(error(&["5"]), "unknown option \"5\"");
        assert_eq!(error(&["--json", "--bogus=1"]), "unknown option \"--bogus\"");
    }

    #[test]
    fn a_switch_given_a_value_is_an_error_naming_it() {
        assert_eq!(error(&["--json=yes"]), "--json takes no value");
        assert_eq!(error(&["--idle-ramp=1"]), "--idle-ramp takes no value");
    }

    #[test]
    fn a_bad_target_is_an_error_naming_target() {
        for bad in [
            "127.0.0.1:8080",
            "https://127.0.0.1:8443",
            "http://127.0.0.1:8080/logs",
            "http://127.0.0.1:8080/?x=1",
            "not a url",
        ] {
            let e = error(&["--target", bad]);
            assert!(e.starts_with("--target "), "{bad}: {e}");
        }
    }

    #[test]
    fn hold_cannot_go_with_target() {
        let e = error(&["--target", "http://127.0.0.1:8080", "--hold", "5"]);
        assert!(e.starts_with("--hold sets the hold of the api this tool starts"), "{e}");
    }
}
