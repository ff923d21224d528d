//! Configuration of both binaries, read from the environment once at start-up.
//!
//! Every variable lives in one table per binary ([`SERVER_SETTINGS`], [`CAMERA_SETTINGS`]) so
//! `--help` and the parser cannot drift apart. A malformed value is a [`ConfigError`] that names
//! the variable; the binaries print it and exit with code 2. Nothing here reads the environment
//! after start-up.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::log::Level;
use crate::protocol::valid_camera_id;

/// One environment variable: its name, default (as the user would type it) and meaning.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

pub const SERVER_SETTINGS: &[Setting] = &[
    Setting {
        name: "HOST",
        default: "127.0.0.1",
        help: "address to listen on; 0.0.0.0 only behind the nginx edge (deploy/nginx.conf)",
    },
    Setting {
        name: "PORT",
        default: "8080",
        help: "port to listen on (0 picks a free one)",
    },
    Setting {
        name: "POLL_HOLD_SECS",
        default: "30",
        help: "how long a camera's poll is held open before it is answered with noop",
    },
    Setting {
        name: "LOGS_TIMEOUT_SECS",
        default: "30",
        help: "default bound on a GET /logs call (a call may ask for up to 300 s with ?timeout=)",
    },
    Setting {
        name: "ACK_TIMEOUT_SECS",
        default: "5",
        help: "a command with no send_logs answer after this long is sent again, same requestId",
    },
    Setting {
        name: "CAMERA_GRACE_SECS",
        default: "5",
        help: "a camera with no open poll counts as online this long after its last poll ended",
    },
    Setting {
        name: "MAX_WAITING_PER_CAMERA",
        default: "1024",
        help: "GET /logs calls that may wait for one camera; the next gets 429",
    },
    Setting {
        name: "MAX_BODY_BYTES",
        default: "16777216",
        help: "largest accepted request body; a larger one gets 413",
    },
    Setting {
        name: "HEADER_TIMEOUT_SECS",
        default: "10",
        help:
            "a connection that sends nothing for this long (idle, or stalled mid-request) is closed",
    },
    Setting {
        name: "MAX_CONNECTIONS",
        default: "4096",
        help: "open connections at most; beyond it new ones are refused until the count falls",
    },
    Setting {
        name: "WORKER_IDLE_SECS",
        default: "30",
        help: "handler threads beyond the minimum that were all left idle, together, for this long exit (also while requests keep coming)",
    },
    Setting {
        name: "CAMERA_FORGET_SECS",
        default: "3600",
        help: "a camera offline this long, with no call waiting for it, is forgotten (404 after)",
    },
    Setting {
        name: "MAX_CAMERAS",
        default: "100000",
        help: "cameras known at most; a poll for a new id beyond it gets 503 with Retry-After",
    },
    Setting {
        name: "CAMERA_ARRIVAL_SECS",
        default: "0",
        help: "in a fleet: for this long after start, /logs for a camera not seen yet waits for its first poll instead of 404 (2 x POLL_HOLD_SECS + 10 fits)",
    },
    Setting {
        name: "CAMERA_TOKEN",
        default: "(unset)",
        help: "when set, camera endpoints require 'Authorization: Bearer <token>' (one token shared by all cameras)",
    },
    Setting {
        name: "CAMERA_TOKENS_FILE",
        default: "(unset)",
        help: "lines 'cameraId token': each camera may poll and answer only for its own id (instead of CAMERA_TOKEN)",
    },
    Setting {
        name: "API_TOKEN",
        default: "(unset)",
        help: "when set, /logs, /cameras, /stats and /metrics require 'Authorization: Bearer <token>'",
    },
    Setting {
        name: "LOG_LEVEL",
        default: "info",
        help: "what is logged to stderr: info, warn, error or off",
    },
];

pub const CAMERA_SETTINGS: &[Setting] = &[
    Setting {
        name: "API_BASE_URL",
        default: "http://localhost:8080",
        help: "where the API server is: http://, or https:// (e.g. through the nginx edge)",
    },
    Setting {
        name: "CAMERA_ID",
        default: "default",
        help: "this camera's id (letters, digits, '.', '_', '-'; at most 64)",
    },
    Setting {
        name: "EVENT_INTERVAL_SECS",
        default: "10",
        help: "a new event is logged this often (fractions allowed)",
    },
    Setting {
        name: "POLL_TIMEOUT_SECS",
        default: "60",
        help: "client-side timeout of one long poll",
    },
    Setting {
        name: "BACKOFF_MAX_SECS",
        default: "30",
        help: "cap of the exponential backoff (from 0.5 s) while the server is unreachable",
    },
    Setting {
        name: "CAMERA_TOKEN",
        default: "(unset)",
        help: "bearer token sent to the server's camera endpoints",
    },
    Setting {
        name: "CA_CERT_FILE",
        default: "(unset)",
        help: "PEM file of the CA certificate(s) an https:// server must chain to (a private CA or a self-signed edge), instead of the bundled webpki roots",
    },
    Setting {
        name: "LOG_FILE",
        default: "(unset)",
        help: "when set, events are appended here as JSON lines and reloaded at start",
    },
    Setting {
        name: "MAX_EVENTS",
        default: "100000",
        help: "events kept in memory; the oldest go first",
    },
    Setting {
        name: "LOG_LEVEL",
        default: "info",
        help: "what is logged to stderr: info, warn, error or off",
    },
];

/// A variable whose value cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.variable, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

/// The `--help` text: what the program is, then every variable with its default.
pub fn help_text(program: &str, about: &str, settings: &[Setting]) -> String {
    let mut text =
        format!("{program}: {about}\n\nUsage: {program} [--help]\n\nEnvironment variables:\n");
    for s in settings {
        text.push_str(&format!(
            "  {:<24} default {:<24} {}\n",
            s.name, s.default, s.help
        ));
    }
    text
}

/// The start both binaries share: `--help` prints every variable and exits 0; a stray argument
/// or a malformed variable is reported and exits 2; otherwise the configuration is read once
/// and the log level applied.
pub fn from_args_and_env<T>(
    program: &str,
    about: &str,
    settings: &[Setting],
    read: impl FnOnce() -> Result<T, ConfigError>,
    log_level: impl FnOnce(&T) -> Level,
) -> Result<T, std::process::ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", help_text(program, about, settings));
        return Err(std::process::ExitCode::SUCCESS);
    }
    if let Some(arg) = args.first() {
        eprintln!("{program}: unexpected argument {arg:?}; configuration comes from the environment (see --help)");
        return Err(std::process::ExitCode::from(2));
    }
    match read() {
        Ok(config) => {
            crate::log::set_level(log_level(&config));
            Ok(config)
        }
        Err(e) => {
            eprintln!("{program}: {e}");
            Err(std::process::ExitCode::from(2))
        }
    }
}

/// Settings of the API server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub poll_hold: Duration,
    pub logs_timeout: Duration,
    pub ack_timeout: Duration,
    pub camera_grace: Duration,
    pub max_waiting_per_camera: usize,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub max_connections: usize,
    pub camera_forget: Duration,
    pub max_cameras: usize,
    /// For this long after start, `/logs` for an unknown camera waits for its first poll.
    pub camera_arrival: Duration,
    pub camera_auth: CameraAuth,
    pub api_token: Option<String>,
    /// An idle handler thread beyond the minimum exits after this long.
    pub worker_idle_exit: Duration,
    /// Applied by the binaries at start-up (the level is process-wide).
    pub log_level: Level,
}

/// The upper bound on any `/logs` timeout, from the wire protocol.
pub const MAX_LOGS_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".to_string(),
            port: 8080,
            poll_hold: Duration::from_secs(30),
            logs_timeout: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(5),
            camera_grace: Duration::from_secs(5),
            max_waiting_per_camera: 1024,
            max_body_bytes: 16 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            camera_forget: Duration::from_secs(3600),
            max_cameras: 100_000,
            camera_arrival: Duration::ZERO,
            camera_auth: CameraAuth::Open,
            api_token: None,
            worker_idle_exit: Duration::from_secs(30),
            log_level: Level::Info,
        }
    }
}

impl ServerConfig {
    /// Reads every variable of [`SERVER_SETTINGS`] from the process environment.
    pub fn from_env() -> Result<ServerConfig, ConfigError> {
        ServerConfig::from_lookup(env_lookup)
    }

    /// Same as [`ServerConfig::from_env`] with any source of variables (tests pass a map).
    pub fn from_lookup(
        lookup: impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<ServerConfig, ConfigError> {
        let d = ServerConfig::default();
        Ok(ServerConfig {
            host: lookup("HOST")?.unwrap_or(d.host),
            port: parse_or(&lookup, "PORT", d.port, parse_port)?,
            poll_hold: parse_or(&lookup, "POLL_HOLD_SECS", d.poll_hold, parse_secs)?,
            logs_timeout: parse_or(
                &lookup,
                "LOGS_TIMEOUT_SECS",
                d.logs_timeout,
                parse_logs_timeout,
            )?,
            ack_timeout: parse_or(&lookup, "ACK_TIMEOUT_SECS", d.ack_timeout, parse_secs)?,
            camera_grace: parse_or(&lookup, "CAMERA_GRACE_SECS", d.camera_grace, parse_secs)?,
            max_waiting_per_camera: parse_or(
                &lookup,
                "MAX_WAITING_PER_CAMERA",
                d.max_waiting_per_camera,
                parse_count,
            )?,
            max_body_bytes: parse_or(&lookup, "MAX_BODY_BYTES", d.max_body_bytes, parse_count)?,
            header_timeout: parse_or(&lookup, "HEADER_TIMEOUT_SECS", d.header_timeout, parse_secs)?,
            max_connections: parse_or(&lookup, "MAX_CONNECTIONS", d.max_connections, parse_count)?,
            camera_forget: parse_or(&lookup, "CAMERA_FORGET_SECS", d.camera_forget, parse_secs)?,
            max_cameras: parse_or(&lookup, "MAX_CAMERAS", d.max_cameras, parse_count)?,
            camera_arrival: parse_or(
                &lookup,
                "CAMERA_ARRIVAL_SECS",
                d.camera_arrival,
                parse_secs_or_zero,
            )?,
            camera_auth: camera_auth(&lookup)?,
            api_token: token(&lookup, "API_TOKEN")?,
            worker_idle_exit: parse_or(
                &lookup,
                "WORKER_IDLE_SECS",
                d.worker_idle_exit,
                parse_secs,
            )?,
            log_level: parse_or(&lookup, "LOG_LEVEL", d.log_level, str::parse)?,
        })
    }
}

/// Who may use the camera endpoints (`/poll_for_command`, `/send_logs`).
#[derive(Clone, PartialEq)]
pub enum CameraAuth {
    /// Anyone: for loopback and trusted networks.
    Open,
    /// One bearer token shared by every camera (`CAMERA_TOKEN`). Any holder can poll or answer
    /// as any camera id, so one leaked camera can forge every camera's answers.
    Shared(String),
    /// A token per camera id (`CAMERA_TOKENS_FILE`): a camera may poll and answer only for its
    /// own id.
    PerCamera(HashMap<String, String>),
}

impl fmt::Debug for CameraAuth {
    /// Never prints a token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CameraAuth::Open => write!(f, "Open"),
            CameraAuth::Shared(_) => write!(f, "Shared(<hidden>)"),
            CameraAuth::PerCamera(tokens) => write!(f, "PerCamera({} cameras)", tokens.len()),
        }
    }
}

impl CameraAuth {
    /// The token that camera `camera_id` must present, or `None` when none is needed. An id
    /// missing from the tokens file has no token at all: nothing it presents is accepted.
    pub fn expected_for(&self, camera_id: &str) -> Option<Option<&str>> {
        match self {
            CameraAuth::Open => None,
            CameraAuth::Shared(token) => Some(Some(token)),
            CameraAuth::PerCamera(tokens) => Some(tokens.get(camera_id).map(String::as_str)),
        }
    }

    /// For the start-up line: what protects the camera endpoints.
    pub fn describe(&self) -> String {
        match self {
            CameraAuth::Open => "CAMERA_TOKEN/CAMERA_TOKENS_FILE off: any client may poll and answer as any camera id".to_string(),
            CameraAuth::Shared(_) => "CAMERA_TOKEN on: /poll_for_command and /send_logs need it (one token shared by all cameras)".to_string(),
            CameraAuth::PerCamera(tokens) => format!(
                "CAMERA_TOKENS_FILE on: /poll_for_command and /send_logs need the camera's own token ({} cameras)",
                tokens.len()
            ),
        }
    }
}

/// Reads `CAMERA_TOKEN` or `CAMERA_TOKENS_FILE` (setting both is an error: which one wins
/// would be a guess, and the weaker one would undo the stronger).
fn camera_auth(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
) -> Result<CameraAuth, ConfigError> {
    let shared = token(lookup, "CAMERA_TOKEN")?;
    let file = match lookup("CAMERA_TOKENS_FILE")? {
        Some(path) if path.is_empty() => {
            return Err(ConfigError {
                variable: "CAMERA_TOKENS_FILE",
                value: path,
                expected: "a file path (unset the variable to turn per-camera tokens off)",
            })
        }
        file => file,
    };
    match (shared, file) {
        (Some(_), Some(path)) => Err(ConfigError {
            variable: "CAMERA_TOKENS_FILE",
            value: path,
            expected: "CAMERA_TOKEN unset (use one of CAMERA_TOKEN and CAMERA_TOKENS_FILE)",
        }),
        (Some(token), None) => Ok(CameraAuth::Shared(token)),
        (None, Some(path)) => read_tokens_file(&path).map(CameraAuth::PerCamera),
        (None, None) => Ok(CameraAuth::Open),
    }
}

fn read_tokens_file(path: &str) -> Result<HashMap<String, String>, ConfigError> {
    let fail = |expected: &'static str| ConfigError {
        variable: "CAMERA_TOKENS_FILE",
        value: path.to_string(),
        expected,
    };
    let text = std::fs::read_to_string(path).map_err(|_| fail("a readable UTF-8 file"))?;
    parse_tokens(&text).map_err(fail)
}

/// `cameraId token` per line; blank lines and lines starting with `#` are skipped. The error
/// never quotes a line, since it may hold a token.
pub fn parse_tokens(text: &str) -> Result<HashMap<String, String>, &'static str> {
    const EXPECTED: &str = "lines 'cameraId token' (a valid camera id, one token of printable ASCII, each id once), and at least one";
    let mut tokens = HashMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(id), Some(token), None) = (words.next(), words.next(), words.next()) else {
            return Err(EXPECTED);
        };
        if !valid_camera_id(id) || tokens.insert(id.to_string(), token.to_string()).is_some() {
            return Err(EXPECTED);
        }
    }
    if tokens.is_empty() {
        return Err(EXPECTED);
    }
    Ok(tokens)
}

/// Settings of the camera.
#[derive(Debug, Clone, PartialEq)]
pub struct CameraConfig {
    pub api_base_url: String,
    pub camera_id: String,
    /// `None` generates no events (tests that need an exact, fixed log use it).
    pub event_interval: Option<Duration>,
    pub poll_timeout: Duration,
    pub backoff_max: Duration,
    pub camera_token: Option<String>,
    /// `CA_CERT_FILE`: the only roots trusted for an https:// server; `None` trusts the bundled
    /// webpki roots. Unused with an http:// URL.
    pub ca_certs: Option<CaCerts>,
    pub log_file: Option<PathBuf>,
    pub max_events: usize,
    /// Applied by the binary at start-up (the level is process-wide).
    pub log_level: Level,
}

/// The CA certificates read from `CA_CERT_FILE` at start-up, in DER form. Certificates are
/// public; any private key in the same file is skipped, never kept.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCerts {
    pub path: PathBuf,
    pub der: Vec<Vec<u8>>,
}

impl fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaCerts({}, {} certificate(s))",
            self.path.display(),
            self.der.len()
        )
    }
}

impl CaCerts {
    /// Reads every `CERTIFICATE` block of the PEM file at `path`; a file that cannot be read,
    /// is not PEM, or holds no well-formed certificate is a [`ConfigError`] on `CA_CERT_FILE`.
    pub fn read(path: &str) -> Result<CaCerts, ConfigError> {
        let fail = |expected: &'static str| ConfigError {
            variable: "CA_CERT_FILE",
            value: path.to_string(),
            expected,
        };
        let pem = std::fs::read(path).map_err(|_| fail("a readable PEM file"))?;
        let der = parse_ca_pem(&pem).map_err(fail)?;
        Ok(CaCerts {
            path: PathBuf::from(path),
            der,
        })
    }
}

/// The DER of every certificate in `pem`. The error never quotes the file, which may hold a key.
pub fn parse_ca_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    const EXPECTED: &str =
        "a PEM file with one or more CA certificates (-----BEGIN CERTIFICATE-----)";
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) if is_der_sequence(cert.der()) => {
                certs.push(cert.der().to_vec())
            }
            Ok(ureq::tls::PemItem::Certificate(_)) | Err(_) => return Err(EXPECTED),
            // A private key (or any other item) is not a trust root: skipped, never kept.
            Ok(_) => {}
        }
    }
    if certs.is_empty() {
        return Err(EXPECTED);
    }
    Ok(certs)
}

/// A cheap shape check of a DER certificate (one SEQUENCE spanning exactly the bytes), so a
/// corrupted block fails at start-up rather than as "unknown issuer" on every connection.
fn is_der_sequence(der: &[u8]) -> bool {
    let [0x30, first, rest @ ..] = der else {
        return false;
    };
    let (len, body) = match *first {
        n @ 0..=0x7f => (usize::from(n), rest),
        n @ 0x81..=0x84 => {
            let count = usize::from(n & 0x7f);
            if rest.len() < count {
                return false;
            }
            let (len_bytes, body) = rest.split_at(count);
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, body)
        }
        _ => return false,
    };
    len == body.len()
}

impl Default for CameraConfig {
    fn default() -> Self {
        CameraConfig {
            api_base_url: "http://localhost:8080".to_string(),
            camera_id: "default".to_string(),
            event_interval: Some(Duration::from_secs(10)),
            poll_timeout: Duration::from_secs(60),
            backoff_max: Duration::from_secs(30),
            camera_token: None,
            ca_certs: None,
            log_file: None,
            max_events: 100_000,
            log_level: Level::Info,
        }
    }
}

impl CameraConfig {
    /// Reads every variable of [`CAMERA_SETTINGS`] from the process environment.
    pub fn from_env() -> Result<CameraConfig, ConfigError> {
        CameraConfig::from_lookup(env_lookup)
    }

    pub fn from_lookup(
        lookup: impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    ) -> Result<CameraConfig, ConfigError> {
        let d = CameraConfig::default();
        let api_base_url = match lookup("API_BASE_URL")? {
            Some(raw) => parse_base_url(&raw).ok_or(ConfigError {
                variable: "API_BASE_URL",
                value: raw,
                expected: "an http:// or https:// URL such as http://localhost:8080",
            })?,
            None => d.api_base_url,
        };
        let camera_id = match lookup("CAMERA_ID")? {
            Some(raw) if valid_camera_id(&raw) => raw,
            Some(raw) => {
                return Err(ConfigError {
                    variable: "CAMERA_ID",
                    value: raw,
                    expected: "1 to 64 letters, digits, '.', '_' or '-'",
                })
            }
            None => d.camera_id,
        };
        let log_file = lookup("LOG_FILE")?
            .filter(|p| !p.is_empty())
            .map(PathBuf::from);
        // Read (and checked) even with an http:// URL, where it is then unused.
        let ca_certs = match lookup("CA_CERT_FILE")?.filter(|p| !p.is_empty()) {
            Some(path) => Some(CaCerts::read(&path)?),
            None => None,
        };
        Ok(CameraConfig {
            api_base_url,
            camera_id,
            event_interval: Some(parse_or(
                &lookup,
                "EVENT_INTERVAL_SECS",
                Duration::from_secs(10),
                parse_secs,
            )?),
            poll_timeout: parse_or(&lookup, "POLL_TIMEOUT_SECS", d.poll_timeout, parse_secs)?,
            backoff_max: parse_or(&lookup, "BACKOFF_MAX_SECS", d.backoff_max, parse_secs)?,
            camera_token: token(&lookup, "CAMERA_TOKEN")?,
            ca_certs,
            log_file,
            max_events: parse_or(&lookup, "MAX_EVENTS", d.max_events, parse_count)?,
            log_level: parse_or(&lookup, "LOG_LEVEL", d.log_level, str::parse)?,
        })
    }
}

fn env_lookup(name: &'static str) -> Result<Option<String>, ConfigError> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(raw)) => Err(ConfigError {
            variable: name,
            value: raw.to_string_lossy().into_owned(),
            expected: "valid UTF-8",
        }),
    }
}

type Parser<T> = fn(&str) -> Result<T, &'static str>;

fn parse_or<T>(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    name: &'static str,
    default: T,
    parse: Parser<T>,
) -> Result<T, ConfigError> {
    match lookup(name)? {
        None => Ok(default),
        Some(raw) => parse(raw.trim()).map_err(|expected| ConfigError {
            variable: name,
            value: raw,
            expected,
        }),
    }
}

fn token(
    lookup: &impl Fn(&'static str) -> Result<Option<String>, ConfigError>,
    name: &'static str,
) -> Result<Option<String>, ConfigError> {
    match lookup(name)? {
        None => Ok(None),
        // Set but empty is most often a template or an .env line that lost its value; taking it
        // as "no token" would turn authentication off without a word.
        Some(t) if t.is_empty() => Err(ConfigError {
            variable: name,
            value: String::new(),
            expected: "a non-empty token (unset the variable to turn authentication off)",
        }),
        Some(t) if t.bytes().all(|b| b.is_ascii_graphic()) => Ok(Some(t)),
        Some(_) => Err(ConfigError {
            variable: name,
            value: "(hidden)".to_string(),
            expected: "printable ASCII with no spaces",
        }),
    }
}

/// Positive, finite seconds; fractions allowed. Capped at a day so a typo cannot overflow.
pub fn parse_secs(raw: &str) -> Result<Duration, &'static str> {
    match raw.parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err("a number of seconds greater than 0 and at most 86400"),
    }
}

/// Like [`parse_secs`], and 0 turns the feature off.
fn parse_secs_or_zero(raw: &str) -> Result<Duration, &'static str> {
    match raw.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_secs(raw)
            .map_err(|_| "0, or a number of seconds greater than 0 and at most 86400"),
    }
}

fn parse_logs_timeout(raw: &str) -> Result<Duration, &'static str> {
    match parse_secs(raw) {
        Ok(d) if d <= MAX_LOGS_TIMEOUT => Ok(d),
        _ => Err("a number of seconds greater than 0 and at most 300"),
    }
}

fn parse_port(raw: &str) -> Result<u16, &'static str> {
    raw.parse().map_err(|_| "a port number from 0 to 65535")
}

fn parse_count(raw: &str) -> Result<usize, &'static str> {
    match raw.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("a whole number greater than 0"),
    }
}

fn parse_base_url(raw: &str) -> Option<String> {
    let url = url::Url::parse(raw).ok()?;
    (matches!(url.scheme(), "http" | "https") && url.host().is_some())
        .then(|| raw.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests;
