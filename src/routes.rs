//! HTTP routing: turns a tiny_http request into a call on the [`Registry`] and its result into
//! a JSON response, and logs one line per meaningful event.
//!
//! Owns query and body parsing, authentication and the route table. It must not hold any state
//! of its own and must not know how commands are matched to answers (that is the registry's).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tiny_http::{Header, Method, Request, Response};

use crate::config::{ServerConfig, MAX_LOGS_TIMEOUT};
use crate::error::ApiError;
use crate::log::{log_info, log_warn};
use crate::metrics::{self, Metrics};
use crate::protocol::valid_camera_id;
use crate::protocol::{CamerasResponse, LogEntry, SendLogsBody, TimeRange, MAX_CAMERA_ID_LEN};
use crate::registry::{Completion, Registry, DEFAULT_PAGE};

/// What routes may ask of the server that runs them. `server` implements it; routes must not
/// import `server` (it sits above them).
pub trait ServerView: Send + Sync {
    /// The `server` and `frontDoor` sections of `/stats`, as one JSON object.
    fn stats(&self) -> serde_json::Value;
    /// Counts a connection answered and then parked (see [`park`]).
    fn connection_parked(&self);
    /// Handler threads now, for `/metrics`.
    fn handler_threads(&self) -> usize;
    /// Connections open on the port now, for `/metrics`.
    fn open_connections(&self) -> usize;
}

/// Everything a request handler needs: the settings, the registry, and a narrow view of the
/// server. Shared by all handler threads.
pub struct Context {
    pub config: ServerConfig,
    pub registry: Arc<Registry>,
    pub server: Arc<dyn ServerView>,
    /// The registry's, shared: it counts round trips, the routes count requests.
    pub metrics: Arc<Metrics>,
}

/// A response ready to be written.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

const JSON: &str = "application/json";

impl Reply {
    fn json(value: &impl Serialize) -> Result<Reply, ApiError> {
        let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Reply::ok(JSON, body))
    }

    fn ok(content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status: 200,
            content_type,
            body,
            headers: Vec::new(),
        }
    }

    fn from_error(error: &ApiError) -> Reply {
        Reply {
            status: error.status(),
            content_type: JSON,
            body: error.body(),
            headers: error.headers(),
        }
    }
}

/// Serves one request to completion: route, respond, log. Never panics on client input.
pub fn handle(app: &Context, mut request: Request) {
    let started = Instant::now();
    let method = request.method().clone();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let (reply, error) = match route(app, &mut request, &method, path, query) {
        Ok(reply) => (reply, None),
        Err(error) => {
            log_warn!(
                "{} {} from {} -> {}: {error} ({} ms)",
                truncate(method.as_str(), 16),
                truncate(path, 64),
                client_address(&request),
                error.status(),
                started.elapsed().as_millis()
            );
            (Reply::from_error(&error), Some(error))
        }
    };
    // Counted before the write: a scrape then shows every request answered before it began.
    app.metrics
        .request(path, reply.status, error.as_ref(), started.elapsed());
    respond(app, request, reply, &method, path);
}

/// tiny_http 0.12 discards an unread request body, when the request is dropped, by allocating a
/// buffer of the body's *declared* remaining length in one piece; a hostile `Content-Length`
/// larger than memory aborts the whole process. Up to this size the allocation is lazy and cheap
/// (and the discard is bounded by the socket read timeout).
const SAFE_TO_DISCARD: usize = 64 * 1024 * 1024;

fn respond(app: &Context, request: Request, reply: Reply, method: &Method, path: &str) {
    let declared = request.body_length().unwrap_or(0);
    if declared > SAFE_TO_DISCARD && declared > app.config.max_body_bytes {
        let status = reply.status;
        let client = client_address(&request);
        park(app, request, reply);
        log_warn!(
            "{} {} from {client} declared a {declared}-byte body; answered {status} and parked the connection",
            truncate(method.as_str(), 16),
            truncate(path, 64),
        );
        return;
    }
    if let Err(e) = request.respond(to_response(reply)) {
        log_warn!(
            "{} {}: could not write the response: {e}",
            truncate(method.as_str(), 16),
            truncate(path, 64)
        );
    }
}

/// Answers without ever dropping the request's body reader (dropping it is what would abort):
/// `upgrade` hands over the raw stream, the answer is written whole, and the stream is then
/// leaked. tiny_http's upgrade path writes no framing headers and forbids setting them, so the
/// `Content-Length` and `Connection: close` lines ride in one header value of our own; they are
/// fixed text, never client input. Cost per parked connection: one idle thread and one socket,
/// counted on /stats; the peer is told to close it.
fn park(app: &Context, request: Request, reply: Reply) {
    use std::io::Write;
    let framing = format!(
        "1\r\nContent-Length: {}\r\nConnection: close",
        reply.body.len()
    );
    let mut response = Response::empty(reply.status);
    for (name, value) in [
        ("Content-Type", reply.content_type),
        ("X-Parked", framing.as_str()),
    ] {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    let mut stream = request.upgrade("none", response);
    let _ = stream.write_all(&reply.body).and_then(|()| stream.flush());
    std::mem::forget(stream);
    app.server.connection_parked();
}

/// The operator's page: one static file, embedded so the binary is all there is to deploy.
const WEB_PAGE: &str = include_str!("web/index.html");
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The contract, served as written: docs/openapi.yaml is the one copy.
const OPENAPI: &str = include_str!("../docs/openapi.yaml");

/// The route table. A known path with the wrong method is 405; anything else unknown is 404.
fn route(
    app: &Context,
    request: &mut Request,
    method: &Method,
    path: &str,
    query: &str,
) -> Result<Reply, ApiError> {
    let allowed = match path {
        "/" | "/openapi.yaml" | "/logs" | "/cameras" | "/health" | "/stats" | "/metrics"
        | "/poll_for_command" => "GET",
        "/send_logs" => "POST",
        _ => return Err(ApiError::NoSuchPath(truncate(path, 64))),
    };
    if method.as_str() != allowed {
        return Err(ApiError::MethodNotAllowed { allowed });
    }
    let query = Query::parse(query)?;
    match path {
        // The page carries no data; it asks for the token and sends it with its own calls.
        "/" => Ok(Reply {
            // The browser enforces what the page promises: nothing loaded from anywhere else.
            headers: vec![("Content-Security-Policy", PAGE_POLICY.to_string())],
            ..Reply::ok("text/html; charset=utf-8", WEB_PAGE.as_bytes().to_vec())
        }),
        "/openapi.yaml" => Ok(Reply::ok("application/yaml", OPENAPI.as_bytes().to_vec())),
        "/health" => Reply::json(&serde_json::json!({"status": "ok"})),
        "/logs" => {
            authorize(request, app.config.api_token.as_deref())?;
            get_logs(app, &query, &client_address(request))
        }
        "/cameras" => {
            authorize(request, app.config.api_token.as_deref())?;
            let (cameras, next_after) = app
                .registry
                .cameras(query.after()?.as_deref(), query.limit()?);
            Reply::json(&CamerasResponse {
                cameras,
                next_after,
            })
        }
        "/stats" => {
            authorize(request, app.config.api_token.as_deref())?;
            let mut stats = app.server.stats();
            let registry = serde_json::to_value(app.registry.stats())
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            if let Some(sections) = stats.as_object_mut() {
                sections.insert("registry".to_string(), registry);
            }
            Reply::json(&stats)
        }
        "/metrics" => {
            authorize(request, app.config.api_token.as_deref())?;
            Ok(Reply::ok(metrics::CONTENT_TYPE, scrape(app).into_bytes()))
        }
        "/poll_for_command" => {
            let camera_id = authorize_camera(app, request, &query)?;
            Reply::json(
                &app.registry
                    .poll_from(&camera_id, &client_address(request))?,
            )
        }
        _ => {
            let camera_id = authorize_camera(app, request, &query)?;
            send_logs(app, request, &camera_id)
        }
    }
}

/// The exposition, with the gauges read from their owners now.
fn scrape(app: &Context) -> String {
    let registry = app.registry.stats();
    app.metrics.render(&metrics::Gauges {
        cameras_known: registry.cameras,
        cameras_online: registry.cameras_online,
        open_polls: registry.open_polls,
        waiting_calls: registry.waiting_requests,
        handler_threads: app.server.handler_threads(),
        open_connections: app.server.open_connections(),
    })
}

#[derive(Serialize)]
struct LogsBody<'a> {
    #[serde(rename = "cameraId")]
    camera_id: &'a str,
    logs: &'a [LogEntry],
}

fn get_logs(app: &Context, query: &Query, client: &str) -> Result<Reply, ApiError> {
    let started = Instant::now();
    let camera_id = query.camera_id()?;
    let range = TimeRange::new(
        query.number("startTimestamp")?,
        query.number("endTimestamp")?,
    );
    if let (Some(start), Some(end)) = (range.start, range.end) {
        if start > end {
            return Err(ApiError::BadRequest(format!(
                "startTimestamp ({start}) is after endTimestamp ({end})"
            )));
        }
    }
    let timeout = query.timeout(app.config.logs_timeout)?;
    let slice = app.registry.fetch_logs(&camera_id, range, timeout)?;
    let reply = Reply::json(&LogsBody {
        camera_id: &camera_id,
        logs: slice.entries(),
    })?;
    log_info!(
        "logs returned for camera '{camera_id}' to {client}: {} event(s) in {} ms",
        slice.entries().len(),
        started.elapsed().as_millis()
    );
    Ok(reply)
}

fn send_logs(app: &Context, request: &mut Request, camera_id: &str) -> Result<Reply, ApiError> {
    let body = read_body(request, app.config.max_body_bytes)?;
    let answer: SendLogsBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed send_logs body: {e}")))?;
    match app.registry.complete(camera_id, answer)? {
        Completion::Delivered {
            request_id,
            callers,
            events,
            elapsed,
        } => log_info!(
            "camera '{camera_id}' answered command {request_id}: {events} event(s) for {callers} caller(s), {} ms after the command",
            elapsed.as_millis()
        ),
        Completion::Duplicate { request_id } => {
            log_info!("camera '{camera_id}' answered command {request_id} again; ignored")
        }
    }
    Reply::json(&serde_json::json!({"status": "ok"}))
}

/// Reads at most `limit` bytes; a declared or actual larger body is 413 without buffering it.
fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let capacity = request.body_length().unwrap_or(0).min(64 * 1024);
    let mut body = Vec::with_capacity(capacity);
    request
        .as_reader()
        .take(limit as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
    if body.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(body)
}

/// The camera id of a camera endpoint, once its caller has proved it may act for that id.
fn authorize_camera(app: &Context, request: &Request, query: &Query) -> Result<String, ApiError> {
    let camera_id = query.camera_id()?;
    match app.config.camera_auth.expected_for(&camera_id) {
        None => {}
        Some(Some(token)) => authorize(request, Some(token))?,
        // An id with no line in the tokens file: nothing a caller presents is accepted.
        Some(None) => return Err(ApiError::Unauthorized),
    }
    Ok(camera_id)
}

/// Checks `Authorization: Bearer <token>` when a token is configured, in constant time.
fn authorize(request: &Request, expected: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let presented = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().trim().split_once(' '))
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map_or("", |(_, token)| token);
    if constant_time_eq(presented.trim().as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Compares without an early exit, so the time taken does not reveal how much of a guess matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = a.len() ^ b.len();
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// A parsed query string. Every parameter may appear once; unknown parameters are ignored.
#[derive(Debug, Default)]
pub struct Query {
    params: HashMap<String, String>,
}

impl Query {
    pub fn parse(raw: &str) -> Result<Query, ApiError> {
        let mut params = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            if params.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(ApiError::BadRequest(format!(
                    "query parameter '{}' is given more than once",
                    truncate(&key, 64)
                )));
            }
        }
        Ok(Query { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `cameraId`, defaulting to `default`, checked against [`valid_camera_id`].
    pub fn camera_id(&self) -> Result<String, ApiError> {
        let id = self.get("cameraId").unwrap_or("default");
        if valid_camera_id(id) {
            Ok(id.to_string())
        } else {
            Err(ApiError::BadRequest(format!(
                "cameraId must be 1 to {MAX_CAMERA_ID_LEN} letters, digits, '.', '_' or '-'; got '{}'",
                truncate(id, 64)
            )))
        }
    }

    /// `after` of `/cameras`: a camera id, when given.
    pub fn after(&self) -> Result<Option<String>, ApiError> {
        match self.get("after") {
            None => Ok(None),
            Some(id) if valid_camera_id(id) => Ok(Some(id.to_string())),
            Some(id) => Err(ApiError::BadRequest(format!(
                "after must be a camera id; got '{}'",
                truncate(id, 64)
            ))),
        }
    }

    /// `limit` of `/cameras`: 1 to `DEFAULT_PAGE` (the default).
    pub fn limit(&self) -> Result<usize, ApiError> {
        let Some(raw) = self.get("limit") else {
            return Ok(DEFAULT_PAGE);
        };
        match raw.parse::<usize>() {
            Ok(n) if (1..=DEFAULT_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "limit must be a whole number from 1 to {DEFAULT_PAGE}; got '{}'",
                truncate(raw, 64)
            ))),
        }
    }

    /// An optional finite number; anything else (NaN, inf, 1e400, 0x10, empty) is a 400.
    pub fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        match parse_finite(raw) {
            Some(value) => Ok(Some(value)),
            None => Err(ApiError::BadRequest(format!(
                "{name} must be a finite number of seconds since the epoch; got '{}'",
                truncate(raw, 64)
            ))),
        }
    }

    /// `timeout` in seconds, in (0, 300]; the configured default when absent.
    pub fn timeout(&self, default: Duration) -> Result<Duration, ApiError> {
        match self.number("timeout")? {
            None => Ok(default),
            Some(secs) if secs > 0.0 && secs <= MAX_LOGS_TIMEOUT.as_secs_f64() => {
                Ok(Duration::from_secs_f64(secs))
            }
            Some(secs) => Err(ApiError::BadRequest(format!(
                "timeout must be greater than 0 and at most {} seconds; got {secs}",
                MAX_LOGS_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Plain decimal numbers only: Rust's parser also takes "inf" and "NaN", which are rejected here.
fn parse_finite(raw: &str) -> Option<f64> {
    let plain = raw
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
    raw.parse::<f64>().ok().filter(|v| plain && v.is_finite())
}

/// Client text quoted in an error message or a log line: escaped and bounded.
fn truncate(text: &str, max_chars: usize) -> String {
    crate::log::clean(text, max_chars)
}

/// Who sent the request, for log lines: the address the edge vouches for (`X-Real-IP`, set by
/// deploy/nginx.conf from the connection it accepted), else the connection's own peer.
fn client_address(request: &Request) -> String {
    let forwarded = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("X-Real-IP"))
        .map(|h| truncate(h.value.as_str().trim(), 64));
    match (forwarded, request.remote_addr()) {
        (Some(client), _) => client,
        (None, Some(peer)) => peer.ip().to_string(),
        (None, None) => "unknown".to_string(),
    }
}

fn to_response(reply: Reply) -> Response<std::io::Cursor<Vec<u8>>> {
    let mut response = Response::from_data(reply.body).with_status_code(reply.status);
    let headers =
        std::iter::once(("Content-Type", reply.content_type.to_string())).chain(reply.headers);
    for (name, value) in headers {
        // Names and values are ours and plain ASCII, so conversion cannot fail in practice.
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_rejects_repeats_and_decodes() {
        assert!(Query::parse("a=1&a=2").is_err());
        let q = Query::parse("cameraId=front-door&startTimestamp=1.5&x=%20y").unwrap();
        assert_eq!(q.camera_id().unwrap(), "front-door");
        assert_eq!(q.number("startTimestamp").unwrap(), Some(1.5));
        assert_eq!(q.get("x"), Some(" y"));
        assert_eq!(Query::parse("").unwrap().camera_id().unwrap(), "default");
    }

    #[test]
    fn numbers_must_be_plain_and_finite() {
        for bad in [
            "NaN",
            "nan",
            "inf",
            "-Infinity",
            "1e400",
            "0x10",
            "",
            " 1",
            "1,5",
            "abc",
            "%FF",
        ] {
            let q = Query::parse(&format!("startTimestamp={bad}")).unwrap();
            assert_eq!(
                q.number("startTimestamp").unwrap_err().status(),
                400,
                "{bad:?}"
            );
        }
        for (good, value) in [
            ("-0", 0.0),
            ("1e3", 1000.0),
            ("+2.5", 2.5),
            (".5", 0.5),
            ("1732300000.25", 1_732_300_000.25),
        ] {
            let q = Query::parse(&format!("startTimestamp={}", good.replace('+', "%2B"))).unwrap();
            assert_eq!(q.number("startTimestamp").unwrap(), Some(value), "{good}");
        }
    }

    #[test]
    fn timeouts_are_bounded() {
        let d = Duration::from_secs(30);
        assert_eq!(Query::parse("").unwrap().timeout(d).unwrap(), d);
        assert_eq!(
            Query::parse("timeout=0.5").unwrap().timeout(d).unwrap(),
            Duration::from_millis(500)
        );
        for bad in ["0", "-1", "301", "NaN"] {
            assert!(
                Query::parse(&format!("timeout={bad}"))
                    .unwrap()
                    .timeout(d)
                    .is_err(),
                "{bad}"
            );
        }
        assert!(Query::parse("timeout=300").unwrap().timeout(d).is_ok());
    }

    #[test]
    fn camera_ids_are_checked() {
        for bad in ["", "a b", "../etc", "é", &"x".repeat(65)] {
            assert!(!valid_camera_id(bad), "{bad:?}");
        }
        for good in ["default", "cam-1", "Front_Door.2", &"x".repeat(64)] {
            assert!(valid_camera_id(good), "{good:?}");
        }
        let q = Query::parse("cameraId=%FF%FE").unwrap();
        assert_eq!(
            q.camera_id().unwrap_err().status(),
            400,
            "bad UTF-8 is a 400"
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
