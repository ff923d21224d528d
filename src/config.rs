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
        help: "a handler thread beyond the minimum that has been idle this long exits",
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

    /// A server for tests: loopback, an ephemeral port, short holds so tests run fast.
    pub fn for_tests() -> ServerConfig {
        ServerConfig {
            host: "127.0.0.1".to_string(),
            port: 0,
            poll_hold: Duration::from_secs(2),
            logs_timeout: Duration::from_secs(20),
            ack_timeout: Duration::from_millis(800),
            camera_grace: Duration::from_secs(2),
            ..ServerConfig::default()
        }
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
            Some(raw) if crate::routes::valid_camera_id(&raw) => raw,
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
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup_from(
        pairs: &[(&'static str, &str)],
    ) -> impl Fn(&'static str) -> Result<Option<String>, ConfigError> {
        let map: HashMap<&'static str, String> =
            pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
        move |name| Ok(map.get(name).cloned())
    }

    #[test]
    fn defaults_match_the_help_table() {
        let config = ServerConfig::from_lookup(lookup_from(&[])).unwrap();
        assert_eq!(config, ServerConfig::default());
        for s in SERVER_SETTINGS
            .iter()
            .filter(|s| !s.default.starts_with('('))
        {
            let from_default =
                ServerConfig::from_lookup(lookup_from(&[(s.name, s.default)])).unwrap();
            assert_eq!(from_default, ServerConfig::default(), "{}", s.name);
        }
        for s in CAMERA_SETTINGS
            .iter()
            .filter(|s| !s.default.starts_with('('))
        {
            let from_default =
                CameraConfig::from_lookup(lookup_from(&[(s.name, s.default)])).unwrap();
            assert_eq!(from_default, CameraConfig::default(), "{}", s.name);
        }
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (name, value) in [
            ("PORT", "80a"),
            ("PORT", "70000"),
            ("POLL_HOLD_SECS", "0"),
            ("ACK_TIMEOUT_SECS", "-1"),
            ("CAMERA_GRACE_SECS", "NaN"),
            ("LOGS_TIMEOUT_SECS", "301"),
            ("MAX_WAITING_PER_CAMERA", "0"),
            ("MAX_BODY_BYTES", "lots"),
            ("LOG_LEVEL", "loud"),
            ("API_TOKEN", ""),
            ("CAMERA_TOKEN", ""),
            ("CAMERA_TOKENS_FILE", ""),
        ] {
            let err = ServerConfig::from_lookup(lookup_from(&[(name, value)])).unwrap_err();
            assert_eq!(err.variable, name);
            assert!(err.to_string().contains(name));
        }
        for (name, value) in [
            ("API_BASE_URL", "ftp://x"),
            ("API_BASE_URL", "localhost:8080"),
            ("CAMERA_ID", "bad id"),
            ("EVENT_INTERVAL_SECS", "inf"),
            ("POLL_TIMEOUT_SECS", ""),
            ("MAX_EVENTS", "-3"),
            ("CAMERA_TOKEN", ""),
        ] {
            let err = CameraConfig::from_lookup(lookup_from(&[(name, value)])).unwrap_err();
            assert_eq!(err.variable, name);
        }
    }

    #[test]
    fn fractions_and_tokens_parse() {
        let c = CameraConfig::from_lookup(lookup_from(&[
            ("EVENT_INTERVAL_SECS", "0.25"),
            ("CAMERA_TOKEN", "s3cret"),
            ("API_BASE_URL", "http://api:8080/"),
        ]))
        .unwrap();
        assert_eq!(c.event_interval, Some(Duration::from_millis(250)));
        assert_eq!(c.camera_token.as_deref(), Some("s3cret"));
        assert_eq!(c.api_base_url, "http://api:8080");
        let err =
            ServerConfig::from_lookup(lookup_from(&[("API_TOKEN", "has space")])).unwrap_err();
        assert!(
            !err.to_string().contains("has space"),
            "tokens are never echoed"
        );
    }

    #[test]
    fn help_lists_every_variable() {
        let help = help_text("api", "about", SERVER_SETTINGS);
        for s in SERVER_SETTINGS {
            assert!(help.contains(s.name) && help.contains(s.default));
        }
    }

    /// A self-signed test CA (its key was thrown away): test data, trusted nowhere.
    const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBujCCAWGgAwIBAgIUCvAECHNp6tPHnbhQjep5+m2cr2kwCgYIKoZIzj0EAwIw
MjEwMC4GA1UEAwwnY2FtZXJhLWxvZ3MgdGVzdCBDQSAoY29uZmlnIHRlc3RzIG9u
bHkpMCAXDTI2MTEyMzIwMzAyMFoYDzIxMjYxMDMwMjAzMDIwWjAyMTAwLgYDVQQD
DCdjYW1lcmEtbG9ncyB0ZXN0IENBIChjb25maWcgdGVzdHMgb25seSkwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAR+q0bXkDRJ6ARfES5EhluP8BPEmBh9UGjDdh2R
SNU4xl6yLqbVdkzdxALZRRqKhpo8wOISbEhVHoVa+iPIUwVho1MwUTAdBgNVHQ4E
FgQUv1FKnhTnUjo7XjD23UQa4KVuYokwHwYDVR0jBBgwFoAUv1FKnhTnUjo7XjD2
3UQa4KVuYokwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBFB6fM
JIokNI2maB2tClNN3bi9OuKLrd6h7ytHd7D5TwIgG7Xx4HHqgDktRL/4JBQ5UroP
RG9HjNGlT/IrtPD/9RU=
-----END CERTIFICATE-----
";

    /// Writes `contents` to a file of its own under the temporary directory.
    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("camera-logs-config-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn https_base_urls_are_accepted() {
        let c = CameraConfig::from_lookup(lookup_from(&[(
            "API_BASE_URL",
            "https://edge.example:8443/",
        )]))
        .unwrap();
        assert_eq!(c.api_base_url, "https://edge.example:8443");
        let err =
            CameraConfig::from_lookup(lookup_from(&[("API_BASE_URL", "ftp://edge")])).unwrap_err();
        assert!(err.to_string().contains("https://"), "{err}");
    }

    #[test]
    fn ca_cert_file_reads_every_certificate() {
        const FAKE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let two = temp_file(
            "two.pem",
            &format!("# the edge's CA\n{TEST_CA_PEM}{TEST_CA_PEM}{FAKE_KEY}"),
        );
        let c = CameraConfig::from_lookup(lookup_from(&[
            ("API_BASE_URL", "https://edge.example"),
            ("CA_CERT_FILE", &two.to_string_lossy()),
        ]))
        .unwrap();
        let _ = std::fs::remove_file(&two);
        let ca = c.ca_certs.unwrap();
        assert_eq!(ca.path, two);
        assert_eq!(ca.der.len(), 2, "both certificates, and not the key");
        assert_eq!(ca.der[0].first(), Some(&0x30));
        assert!(!format!("{ca:?}").contains("48,"), "Debug is short: {ca:?}");

        // Empty means unset: the bundled roots.
        let c = CameraConfig::from_lookup(lookup_from(&[("CA_CERT_FILE", "")])).unwrap();
        assert_eq!(c.ca_certs, None);
    }

    #[test]
    fn an_unusable_ca_cert_file_names_the_variable() {
        let missing = std::env::temp_dir().join("camera-logs-config-no-such-ca.pem");
        let garbage = temp_file("garbage.pem", "not a certificate\n");
        let bad_base64 = temp_file(
            "bad-base64.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        // Valid base64 ("hello world"), but no DER certificate.
        let not_der = temp_file(
            "not-der.pem",
            "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
        );
        let truncated = temp_file("truncated.pem", &TEST_CA_PEM[..200]);
        let key_only = temp_file(
            "key-only.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        for path in [
            &missing,
            &garbage,
            &bad_base64,
            &not_der,
            &truncated,
            &key_only,
        ] {
            let value = path.to_string_lossy().into_owned();
            // With an http:// URL too: a set variable is checked even where it is unused.
            let err =
                CameraConfig::from_lookup(lookup_from(&[("CA_CERT_FILE", &value)])).unwrap_err();
            assert_eq!(err.variable, "CA_CERT_FILE", "{value}");
            assert_eq!(err.value, value);
            assert!(err.to_string().contains("CA_CERT_FILE"), "{err}");
            assert!(
                !err.to_string().contains("AAAA"),
                "the file is never quoted"
            );
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn der_shape_check() {
        assert!(is_der_sequence(&[0x30, 0x00]));
        assert!(is_der_sequence(&[0x30, 0x02, 1, 2]));
        assert!(is_der_sequence(&[0x30, 0x81, 0x01, 9]));
        assert!(!is_der_sequence(&[0x30, 0x03, 1, 2]));
        assert!(!is_der_sequence(&[0x31, 0x00]));
        assert!(!is_der_sequence(&[0x30, 0x82, 0x01]));
        assert!(!is_der_sequence(&[0x30, 0x80, 0, 0]));
        assert!(!is_der_sequence(&[]));
    }

    #[test]
    fn camera_help_lists_ca_cert_file() {
        let help = help_text("camera", "about", CAMERA_SETTINGS);
        for s in CAMERA_SETTINGS {
            assert!(help.contains(s.name) && help.contains(s.default));
        }
        assert!(help.contains("CA_CERT_FILE") && help.contains("https://"));
    }
}
