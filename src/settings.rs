//! Every setting of both binaries, read from the environment once at start-up.
//!
//! Each setting is one line of a table ([`SERVER_SETTINGS`], [`CAMERA_SETTINGS`]) that carries
//! its variable, default, parser and `--help` line; the config struct, its `Default`, the
//! parser and `--help` are all generated from that line, so they cannot drift apart. A
//! malformed value is a [`ConfigError`] naming the variable; the binaries print it and exit 2.
//! Nothing here reads the environment after start-up, and nothing here knows the server or the
//! camera beyond their settings.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::log::{log_info, log_warn, Level};
use crate::protocol::{valid_camera_id, ID_CHARACTERS};

/// One environment variable as `--help` shows it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    /// As the user would type it; `None` when unset by default.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

/// A variable whose value cannot be used.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (variable, value, expected) = (self.variable, &self.value, self.expected);
        write!(f, "invalid {variable}={value:?}: expected {expected}")
    }
}

impl std::error::Error for ConfigError {}

/// Where values come from: the process environment, or a map in tests.
pub type Lookup<'a> = &'a dyn Fn(&'static str) -> Result<Option<String>, ConfigError>;

/// A configuration read from one table of settings.
pub trait Settings: Sized {
    const TABLE: &'static [Setting];
    fn from_lookup(lookup: Lookup<'_>) -> Result<Self, ConfigError>;

    /// Reads every variable of the table from the process environment.
    fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&env_lookup)
    }
}

/// Declares a config struct and its table: one line per setting, `field: Type =
/// required("NAME", "default", parser, "help")` or `optional("NAME", parser, "help")` (an
/// `Option` field, unset by default; set but empty is an error), and `$check` for what no one
/// variable can say.
macro_rules! settings {
    ($(#[$doc:meta])* $config:ident, $table:ident, $check:expr, {
        $($(#[$fdoc:meta])* $field:ident: $ty:ty = $kind:ident($name:literal, $($rest:tt)*);)*
    }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $config {
            $($(#[$fdoc])* pub $field: $ty,)*
        }

        pub const $table: &[Setting] = &[
            $(settings!(@setting $kind $name, $($rest)*),)*
        ];

        impl Settings for $config {
            const TABLE: &'static [Setting] = $table;

            fn from_lookup(lookup: Lookup<'_>) -> Result<$config, ConfigError> {
                let config = $config {
                    $($field: settings!(@read lookup, $kind $name, $($rest)*),)*
                };
                ($check)(&config)?;
                Ok(config)
            }
        }

        impl Default for $config {
            /// Every default of the table, through the same parsers as a value from the
            /// environment (the `settings` unit tests parse each one).
            fn default() -> Self {
                match $config::from_lookup(&|_| Ok(None)) {
                    Ok(config) => config,
                    Err(e) => panic!("a default in the {} table is invalid: {e}", stringify!($table)),
                }
            }
        }
    };
    (@setting required $name:literal, $default:literal, $parse:expr, $help:literal) => {
        Setting { name: $name, default: Some($default), help: $help }
    };
    (@setting optional $name:literal, $parse:expr, $help:literal) => {
        Setting { name: $name, default: None, help: $help }
    };
    (@read $lookup:ident, required $name:literal, $default:literal, $parse:expr, $help:literal) => {
        read($lookup, $name, $parse)?.unwrap_or(parse_default($name, $default, $parse)?)
    };
    (@read $lookup:ident, optional $name:literal, $parse:expr, $help:literal) => {
        read($lookup, $name, $parse)?
    };
}

settings! {
    /// Settings of the API server.
    ServerConfig, SERVER_SETTINGS, ServerConfig::check_together, {
        host: String = required("HOST", "127.0.0.1", |raw| Ok(raw.into()), "address to listen on; 0.0.0.0 only behind the nginx edge (deploy/nginx.conf)");
        port: u16 = required("PORT", "8080", parse_port, "port to listen on (0 picks a free one)");
        poll_hold: Duration = required("POLL_HOLD_SECS", "30", parse_secs, "how long a camera's poll is held open before it is answered with noop");
        logs_timeout: Duration = required("LOGS_TIMEOUT_SECS", "30", parse_logs_timeout, "default bound on a GET /logs call (a call may ask for up to 300 s with ?timeout=)");
        ack_timeout: Duration = required("ACK_TIMEOUT_SECS", "5", parse_secs, "a command with no send_logs answer after this long is sent again, same requestId");
        camera_grace: Duration = required("CAMERA_GRACE_SECS", "5", parse_secs, "a camera with no open poll counts as online this long after its last poll ended");
        max_waiting_per_camera: usize = required("MAX_WAITING_PER_CAMERA", "1024", parse_count, "GET /logs calls that may wait for one camera; the next gets 429");
        max_body_bytes: usize = required("MAX_BODY_BYTES", "16777216", parse_count, "largest accepted request body; a larger one gets 413");
        max_answer_bytes: usize = required("MAX_ANSWER_BYTES", "268435456", parse_count, "bytes the cameras' answers may take together while their callers' responses are written; the callers of an answer beyond it get 503");
        header_timeout: Duration = required("HEADER_TIMEOUT_SECS", "10", parse_secs, "a connection that sends nothing for this long (idle, or stalled mid-request) is closed");
        max_handlers: usize = required("MAX_HANDLERS", "20000", parse_count, "requests served at once at most (each held poll and waiting /logs call is one); more wait in line. Three quarters of it is the cameras that may poll at once: a new camera beyond that gets 503");
        worker_idle: Duration = required("WORKER_IDLE_SECS", "30", parse_secs, "a handler thread idle this long exits (the most recently busy are used first)");
        camera_forget: Duration = required("CAMERA_FORGET_SECS", "3600", parse_secs, "a camera offline this long, with no call waiting for it, is forgotten (404 after)");
        max_cameras: usize = required("MAX_CAMERAS", "100000", parse_count, "cameras known at most; a poll for a new id beyond it gets 503 with Retry-After");
        camera_arrival: Duration = required("CAMERA_ARRIVAL_SECS", "70", parse_secs_or_zero, "for this long after start, /logs for a camera not seen yet waits for its first poll instead of 404: cameras backing off from a restart, or held by another instance of a fleet, come back (0: off)");
        camera_token: Option<String> = optional("CAMERA_TOKEN", parse_token, "when set, camera endpoints require 'Authorization: Bearer <token>' (one token shared by all cameras)");
        camera_tokens: Option<TokensFile> = optional("CAMERA_TOKENS_FILE", |raw| TokensFile::read(Path::new(raw)), "lines 'cameraId token': each camera may poll and answer only for its own id (instead of CAMERA_TOKEN); read again when the file changes, a malformed new one keeping the old tokens");
        peers: Option<Vec<String>> = optional("PEERS", parse_peers, "the other instances of a fleet, as comma-separated base URLs: /cameras then lists every instance's cameras");
        peers_dns: Option<String> = optional("PEERS_DNS", parse_base_url, "a base URL whose host name resolves to every instance of the fleet (a Kubernetes headless Service): each address is a peer, looked up again for every fleet view (with or instead of PEERS)");
        instance_name: Option<String> = optional("INSTANCE_NAME", |raw| Ok(raw.into()), "this instance's name in the fleet's /cameras (with PEERS, the URL its peers use for it; on Kubernetes, the pod's name)");
        drain_file: Option<PathBuf> = optional("DRAIN_FILE", |raw| Ok(raw.into()), "'api --drain' (a Kubernetes preStop hook) creates this file to drain the instance: polls are refused and held ones released, so the edge moves the cameras and the calls waiting here to the next instance; the server then removes it");
        drain_linger: Duration = required("DRAIN_SECS", "15", parse_secs, "how long 'api --drain' lets the drained instance go on answering before it returns: the edge's time to stop sending requests here");
        api_token: Option<String> = optional("API_TOKEN", parse_token, "when set, /logs, /cameras, /stats and /metrics require 'Authorization: Bearer <token>'");
        log_level: Level = required("LOG_LEVEL", "info", str::parse, "what is logged to stderr: info, warn, error or off");
    }
}

settings! {
    /// Settings of the camera.
    CameraConfig, CAMERA_SETTINGS, |_: &CameraConfig| Ok(()), {
        api_base_url: String = required("API_BASE_URL", "http://localhost:8080", parse_base_url, "where the API server is: http://, or https:// (e.g. through the nginx edge)");
        camera_id: String = required("CAMERA_ID", "default", parse_camera_id, "this camera's id (letters, digits, '.', '_', '-'; at most 64)");
        /// `None`: no generated events (a camera that serves only what its log holds).
        event_interval: Option<Duration> = required("EVENT_INTERVAL_SECS", "10", |raw| Ok(Some(parse_secs_or_zero(raw)?).filter(|d| !d.is_zero())), "a new event is logged this often (fractions allowed; 0: none)");
        poll_timeout: Duration = required("POLL_TIMEOUT_SECS", "60", parse_secs, "client-side timeout of one long poll");
        backoff_max: Duration = required("BACKOFF_MAX_SECS", "30", parse_secs, "cap of the exponential backoff (from 0.5 s) while the server is unreachable");
        camera_token: Option<String> = optional("CAMERA_TOKEN", parse_token, "bearer token sent to the server's camera endpoints");
        ca_certs: Option<CaCerts> = optional("CA_CERT_FILE", CaCerts::read, "PEM file of the CA certificate(s) an https:// server must chain to (a private CA or a self-signed edge), instead of the bundled webpki roots");
        log_file: Option<PathBuf> = optional("LOG_FILE", |raw| Ok(raw.into()), "when set, events are appended here as JSON lines and reloaded at start");
        max_events: usize = required("MAX_EVENTS", "100000", parse_count, "events kept in memory; the oldest go first");
        log_level: Level = required("LOG_LEVEL", "info", str::parse, "what is logged to stderr: info, warn, error or off");
    }
}

/// The camera protocol's client timeout of one poll (our camera's `POLL_TIMEOUT_SECS` default);
/// a hold must end well before it.
const CAMERA_POLL_TIMEOUT: Duration = Duration::from_secs(60);
/// The margin a hold leaves before that timeout: the answer must still reach the camera.
const HOLD_MARGIN: Duration = Duration::from_secs(5);

impl ServerConfig {
    fn check_together(&self) -> Result<(), ConfigError> {
        if self.poll_hold + HOLD_MARGIN > CAMERA_POLL_TIMEOUT {
            return Err(ConfigError {
                variable: "POLL_HOLD_SECS",
                value: format!("{}", self.poll_hold.as_secs_f64()),
                expected: "at most 55: a camera gives up on a poll after 60 s (its POLL_TIMEOUT_SECS), and the answer needs time to reach it",
            });
        }
        if self.camera_token.is_some() && self.camera_tokens.is_some() {
            return Err(ConfigError {
                variable: "CAMERA_TOKENS_FILE",
                value: "(set)".to_string(),
                expected: "CAMERA_TOKEN unset (use one of CAMERA_TOKEN and CAMERA_TOKENS_FILE)",
            });
        }
        Ok(())
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

/// The value of `name`, parsed; `None` when unset. Set but empty is an error: most often a
/// template or an `.env` line that lost its value, and taking it as unset would, say, turn
/// authentication off without a word.
fn read<T>(
    lookup: Lookup<'_>, name: &'static str, parse: Parser<T>,
) -> Result<Option<T>, ConfigError> {
    let Some(raw) = lookup(name)? else {
        return Ok(None);
    };
    // A token is never echoed, not even a malformed one.
    let shown = if name.ends_with("TOKEN") && !raw.is_empty() { "(hidden)" } else { &raw };
    let fail = |expected| ConfigError { variable: name, value: shown.to_string(), expected };
    if raw.trim().is_empty() {
        return Err(fail("a value (unset the variable for the default)"));
    }
    parse(raw.trim()).map(Some).map_err(fail)
}

fn parse_default<T>(
    name: &'static str, default: &'static str, parse: Parser<T>,
) -> Result<T, ConfigError> {
    parse(default).map_err(|expected| ConfigError {
        variable: name,
        value: default.into(),
        expected,
    })
}

/// Positive, finite seconds; fractions allowed. Capped at a day so a typo cannot overflow.
fn parse_secs(raw: &str) -> Result<Duration, &'static str> {
    let secs = raw.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0);
    secs.map(Duration::from_secs_f64).ok_or("a number of seconds greater than 0 and at most 86400")
}

/// Like [`parse_secs`], and 0 turns the feature off.
fn parse_secs_or_zero(raw: &str) -> Result<Duration, &'static str> {
    if raw.parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_secs(raw).map_err(|_| "0, or a number of seconds greater than 0 and at most 86400")
}

/// The upper bound on any `/logs` timeout, from the wire protocol.
pub const MAX_LOGS_TIMEOUT: Duration = Duration::from_secs(300);

fn parse_logs_timeout(raw: &str) -> Result<Duration, &'static str> {
    let timeout = parse_secs(raw).ok().filter(|d| *d <= MAX_LOGS_TIMEOUT);
    timeout.ok_or("a number of seconds greater than 0 and at most 300")
}

fn parse_port(raw: &str) -> Result<u16, &'static str> {
    raw.parse().map_err(|_| "a port number from 0 to 65535")
}

fn parse_count(raw: &str) -> Result<usize, &'static str> {
    raw.parse().ok().filter(|n| *n > 0).ok_or("a whole number greater than 0")
}

fn parse_camera_id(raw: &str) -> Result<String, &'static str> {
    valid_camera_id(raw).then(|| raw.to_string()).ok_or(ID_CHARACTERS)
}

/// An http:// or https:// URL with a host, kept without its trailing slash.
fn parse_base_url(raw: &str) -> Result<String, &'static str> {
    base_url(raw).map(|_| raw.trim_end_matches('/').to_string())
}

/// An http:// or https:// URL with a host, trailing slashes aside.
pub(crate) fn base_url(raw: &str) -> Result<url::Url, &'static str> {
    const EXPECTED: &str = "an http:// or https:// URL such as http://localhost:8080";
    let url = url::Url::parse(raw.trim_end_matches('/')).map_err(|_| EXPECTED)?;
    let usable = matches!(url.scheme(), "http" | "https") && url.host().is_some();
    usable.then_some(url).ok_or(EXPECTED)
}

fn parse_peers(raw: &str) -> Result<Vec<String>, &'static str> {
    let peers =
        raw.split(',').map(|peer| parse_base_url(peer.trim())).collect::<Result<Vec<_>, _>>();
    peers.map_err(|_| "comma-separated http:// or https:// base URLs such as http://api-2:8080")
}

fn parse_token(raw: &str) -> Result<String, &'static str> {
    let printable = raw.bytes().all(|b| b.is_ascii_graphic());
    printable.then(|| raw.to_string()).ok_or("printable ASCII with no spaces")
}

/// `CAMERA_TOKENS_FILE`: where it is, the tokens it held when it was read, and what its path
/// led to then (inode, modification time, size): a replaced or edited file differs.
#[derive(Debug, Clone, PartialEq)]
pub struct TokensFile {
    pub path: PathBuf,
    pub tokens: HashMap<String, String>,
    stamp: Option<(u64, SystemTime, u64)>,
}

impl TokensFile {
    pub fn read(path: &Path) -> Result<TokensFile, &'static str> {
        let (path, stamp) = (path.to_path_buf(), stamp(path));
        let text = std::fs::read_to_string(&path).map_err(|_| "a readable UTF-8 file")?;
        Ok(TokensFile { tokens: parse_tokens(&text)?, path, stamp })
    }

    /// Reads the file again if its path now leads to another file or another version of it
    /// (Kubernetes swaps a mounted Secret's files behind a `..data` symlink, which no watch on
    /// the old file sees). A new file that is not usable leaves the tokens read before, and the
    /// log says why, once.
    pub fn reread(&mut self) {
        let now = stamp(&self.path);
        if now != self.stamp {
            self.stamp = now;
            let path = self.path.display().to_string();
            match TokensFile::read(&self.path) {
                Ok(new) => *self = new,
                Err(why) => return log_warn!("CAMERA_TOKENS_FILE {path} changed but is not usable (expected {why}): the tokens read before stay"),
            }
            log_info!("CAMERA_TOKENS_FILE {path} read again: {} camera(s)", self.tokens.len());
        }
    }
}

fn stamp(path: &Path) -> Option<(u64, SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((std::os::unix::fs::MetadataExt::ino(&m), m.modified().ok()?, m.len()))
}

/// `cameraId token` per line; blank lines and lines starting with `#` are skipped. The error
/// never quotes a line, since it may hold a token.
fn parse_tokens(text: &str) -> Result<HashMap<String, String>, &'static str> {
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
    (!tokens.is_empty()).then_some(tokens).ok_or(EXPECTED)
}

/// The CA certificates of `CA_CERT_FILE`, in DER form. Certificates are public; any private
/// key in the same file is skipped, never kept.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCerts {
    pub path: PathBuf,
    pub der: Vec<Vec<u8>>,
}

impl fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaCerts({}, {} certificate(s))", self.path.display(), self.der.len())
    }
}

impl CaCerts {
    /// Every well-formed `CERTIFICATE` block of the PEM file at `path`.
    fn read(path: &str) -> Result<CaCerts, &'static str> {
        let pem = std::fs::read(path).map_err(|_| "a readable PEM file")?;
        Ok(CaCerts { path: PathBuf::from(path), der: parse_ca_pem(&pem)? })
    }
}

/// The DER of every certificate in `pem`. The error never quotes the file, which may hold a key.
fn parse_ca_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
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
    (!certs.is_empty()).then_some(certs).ok_or(EXPECTED)
}

/// A cheap shape check of a DER certificate (one SEQUENCE spanning exactly the bytes), so a
/// corrupted block fails at start-up rather than as "unknown issuer" on every connection.
fn is_der_sequence(der: &[u8]) -> bool {
    let (len, body) = match der {
        [0x30, n @ 0..=0x7f, body @ ..] => (usize::from(*n), body),
        [0x30, n @ 0x81..=0x84, rest @ ..] if rest.len() >= usize::from(n & 0x7f) => {
            let (len, body) = rest.split_at(usize::from(n & 0x7f));
            (len.iter().fold(0, |acc, b| (acc << 8) | usize::from(*b)), body)
        }
        _ => return false,
    };
    len == body.len()
}

#[cfg(test)]
mod tests;
