//! HTTP routing: turns a tiny_http request into a call on the [`Registry`] and its result into
//! a JSON response, and logs one line per meaningful event.
//!
//! Owns the endpoints' handlers, body reading and authentication. It holds no state of its own
//! and does not know how commands are matched to answers (that is the registry's).

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use tiny_http::{Header, Request, Response, ResponseBox};

use super::error::ApiError;
use super::listener::{self, ConnectionTable};
use super::metrics::{self, Metrics};
use super::peers;
use super::query::Query;
use super::registry::{PollFrom, Received, Registry};
use super::ServerStats;
use crate::log::{clean, log_info, log_warn};
use crate::protocol::{CameraInfo, CamerasResponse, Route, TimeRange};
use crate::settings::{ServerConfig, TokensFile};

/// Everything a handler needs, shared by all handler threads.
pub struct App {
    pub config: ServerConfig,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub stats: Arc<ServerStats>,
    pub connections: Arc<ConnectionTable>,
    /// `CAMERA_TOKENS_FILE`, read again when it changes.
    pub camera_tokens: Option<Mutex<TokensFile>>,
    /// Set for good by a drain (`DRAIN_FILE`, see `server::drain`).
    pub draining: AtomicBool,
}

/// A response ready to be written: its body is read as it is sent.
type Reply = ResponseBox;

const JSON: &str = "application/json";

/// A response of `content_type`, with one more header when `extra` says.
fn reply(status: u16, content_type: &str, body: Vec<u8>, extra: Option<(&str, &str)>) -> Reply {
    let length = body.len();
    streamed(status, content_type, std::io::Cursor::new(body), length, extra)
}

/// Like [`reply`], for a body of `length` bytes read from `body` in pieces as it is written.
fn streamed(
    status: u16, content_type: &str, body: impl Read + Send + 'static, length: usize,
    extra: Option<(&str, &str)>,
) -> Reply {
    let mut response = Response::new(status.into(), Vec::new(), body, Some(length), None).boxed();
    for (name, value) in std::iter::once(("Content-Type", content_type)).chain(extra) {
        // Names and values are ours and plain ASCII, so conversion cannot fail in practice.
        if let Ok(header) = Header::from_bytes(name, value) {
            response.add_header(header);
        }
    }
    response
}

fn json(value: &impl Serialize) -> Result<Reply, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(reply(200, JSON, body, None))
}

/// Serves one request to completion: route, respond, log. Never panics on client input.
pub fn handle(app: &App, mut request: Request) {
    let started = Instant::now();
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    let route = Route::from_path(path);
    // Cleaned only for a log line: a cleaned method equals GET or POST only if the raw one does.
    let method = request.method().clone();
    let result = match route {
        None => Err(ApiError::NoSuchPath(clean(path, 64))),
        Some(route) if method.as_str() != route.method() => {
            Err(ApiError::MethodNotAllowed { allowed: route.method() })
        }
        Some(route) => Query::parse(query, route).and_then(|q| serve(app, &mut request, route, &q)),
    };
    let (reply, error) = match result {
        Ok(reply) => (reply, None),
        Err(error) => {
            // Draining, a call this instance could not serve (its camera was handed on) is 404:
            // the edge asks the next instance on its ring, where the camera polls now.
            let moved = route == Some(Route::Logs) && app.draining.load(Ordering::Relaxed);
            let error = if moved && error.status() >= 503 { ApiError::Moved } else { error };
            let (status, path, client) =
                (error.status(), clean(path, 64), client_address(&request));
            let method = clean(method.as_str(), 16);
            let ms = started.elapsed().as_millis();
            // A second camera process polls for as long as it runs: the registry says so once a
            // minute instead.
            if !(route == Some(Route::Poll) && matches!(error, ApiError::Conflict { .. })) {
                log_warn!("{method} {path} from {client} -> {status}: {error} ({ms} ms)");
            }
            (reply(status, JSON, error.body(), error.header()), Some(error))
        }
    };
    // Counted before the write: a scrape then shows every request answered before it began.
    app.metrics.request(route, reply.status_code().0, error.as_ref(), started.elapsed());
    if let Err(e) = listener::respond(request, reply, &app.stats, app.config.max_body_bytes) {
        let (method, path) = (clean(method.as_str(), 16), clean(path, 64));
        log_warn!("{method} {path}: could not write the response: {e}");
    }
}

/// The answer of `/health` and of an accepted `/send_logs`.
const OK: &[u8] = br#"{"status":"ok"}"#;
/// The operator's page: one static file, embedded so the binary is all there is to deploy.
const PAGE: &str = include_str!("page.html");
/// The browser enforces what the page promises: nothing loaded from anywhere else (`data:` is
/// the page's own icon).
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
/// The contract, served as written: docs/openapi.yaml is the one copy.
const CONTRACT: &str = include_str!("../../docs/openapi.yaml");

/// The users' endpoints: they need API_TOKEN when it is set. The page, the contract and
/// `/health` carry no data; the cameras' endpoints have tokens of their own.
const USER_ROUTES: [Route; 4] = [Route::Logs, Route::Cameras, Route::Stats, Route::Metrics];

fn serve(app: &App, request: &mut Request, route: Route, query: &Query) -> Result<Reply, ApiError> {
    if USER_ROUTES.contains(&route) {
        authorize(request, app.config.api_token.as_deref())?;
    }
    match route {
        Route::Page => {
            let policy = Some(("Content-Security-Policy", PAGE_POLICY));
            Ok(reply(200, "text/html; charset=utf-8", PAGE.as_bytes().to_vec(), policy))
        }
        Route::Contract => Ok(reply(200, "application/yaml", CONTRACT.as_bytes().to_vec(), None)),
        Route::Health => Ok(reply(200, JSON, OK.to_vec(), None)),
        Route::Logs => logs(app, query, &client_address(request)),
        Route::Cameras => {
            let (after, limit, fleet) = (query.id("after")?, query.limit()?, query.fleet_scope()?);
            // Named here, so that a fleet view that reached this instance by its address
            // (PEERS_DNS) still names it.
            let name = &app.config.instance_name;
            let own = app.registry.cameras().into_iter();
            let own = own.map(|row| CameraInfo { instance: name.clone(), ..row }).collect();
            match peers::of(&app.config) {
                Some(peers) if fleet => {
                    let name = name.as_deref().unwrap_or("self");
                    let auth = header(request, "Authorization");
                    let page = (after.as_deref(), limit);
                    json(&peers::fleet_page((name, own), &peers, page, auth.as_deref()))
                }
                _ => json(&CamerasResponse::page(own, after.as_deref(), limit, false)),
            }
        }
        Route::Stats => json(&stats(app)),
        Route::Metrics => Ok(reply(200, metrics::CONTENT_TYPE, scrape(app).into_bytes(), None)),
        Route::Poll if app.draining.load(Ordering::Relaxed) => Err(ApiError::ShuttingDown),
        Route::Poll => {
            let camera_id = authorize_camera(app, request, query)?;
            let from =
                PollFrom { instance: query.instance()?, peer: request.remote_addr().copied() };
            json(&app.registry.poll(&camera_id, &from)?)
        }
        Route::SendLogs => {
            let camera_id = authorize_camera(app, request, query)?;
            send_logs(app, request, &camera_id, query.instance()?.as_deref())
        }
    }
}

/// `/stats`: the sizes of the registry, the pool and the listener, for operators and leak tests.
fn stats(app: &App) -> serde_json::Value {
    let connections = app.connections.read(ConnectionTable::VIEW_AGE).unwrap_or_default();
    let mut server = serde_json::to_value(&*app.stats).unwrap_or_default();
    server["connections"] = connections.established.len().into();
    server["connectionsClientLeft"] = connections.client_left.into();
    serde_json::json!({"registry": app.registry.stats(), "server": server})
}

/// The exposition, with the gauges read from their owners now.
fn scrape(app: &App) -> String {
    let (r, threads) = (app.registry.stats(), app.stats.handler_threads.load(Ordering::Relaxed));
    let open = app.connections.read(ConnectionTable::VIEW_AGE).map_or(0, |c| c.established.len());
    app.metrics.render([
        r.cameras,
        r.cameras_online,
        r.open_polls,
        r.waiting_requests,
        threads,
        open,
    ])
}

fn logs(app: &App, query: &Query, client: &str) -> Result<Reply, ApiError> {
    let started = Instant::now();
    let camera_id = query.camera_id()?;
    let range =
        TimeRange::new(query.timestamp("startTimestamp")?, query.timestamp("endTimestamp")?);
    if let (Some(start), Some(end)) = (range.start, range.end) {
        if start > end {
            let why = format!("startTimestamp ({start}) is after endTimestamp ({end})");
            return Err(ApiError::BadRequest(why));
        }
    }
    let timeout = query.timeout(app.config.logs_timeout)?;
    let slice = app.registry.fetch_logs(&camera_id, range, timeout)?;
    let (count, ms) = (slice.len(), started.elapsed().as_millis());
    let (body, length) = slice.body(&camera_id);
    log_info!("logs returned for camera '{camera_id}' to {client}: {count} event(s) in {ms} ms");
    Ok(streamed(200, JSON, body, length, None))
}

fn send_logs(
    app: &App, request: &mut Request, camera_id: &str, instance: Option<&str>,
) -> Result<Reply, ApiError> {
    let body = read_body(request, app.config.max_body_bytes)?;
    let answer: Received = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("malformed send_logs body: {e}")))?;
    app.registry.complete(camera_id, instance, answer)?;
    Ok(reply(200, JSON, OK.to_vec(), None))
}

/// Reads at most `limit` bytes; a declared or actual larger body is 413 without buffering it.
fn read_body(request: &mut Request, limit: usize) -> Result<Vec<u8>, ApiError> {
    if request.body_length().is_some_and(|len| len > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    // As declared (within the limit): a body of megabytes is not copied as its buffer grows, and
    // pages no byte was read into take no memory.
    let mut body = Vec::with_capacity(request.body_length().unwrap_or(0));
    request
        .as_reader()
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut body)
        .map_err(|e| ApiError::BadRequest(format!("could not read the request body: {e}")))?;
    if body.len() > limit {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    Ok(body)
}

/// The camera id of a camera endpoint, once its caller has proved it may act for that id:
/// with `CAMERA_TOKEN`, any camera may act as any id; with `CAMERA_TOKENS_FILE`, only as its own,
/// and an id without a line is refused whatever it presents.
fn authorize_camera(app: &App, request: &Request, query: &Query) -> Result<String, ApiError> {
    let camera_id = query.camera_id()?;
    let per_camera = app.camera_tokens.as_ref().map(|file| {
        let mut file = file.lock();
        file.reread();
        file.tokens.get(&camera_id).cloned()
    });
    match per_camera {
        Some(None) => return Err(ApiError::Unauthorized),
        Some(own) => authorize(request, own.as_deref())?,
        None => authorize(request, app.config.camera_token.as_deref())?,
    }
    Ok(camera_id)
}

/// For the start-up lines: who may call which endpoints.
pub fn describe_authentication(config: &ServerConfig) -> [String; 2] {
    let users = USER_ROUTES.map(Route::path).join(", ");
    let users = match config.api_token {
        Some(_) => format!("API_TOKEN on: {users} need it"),
        None => format!("API_TOKEN off: {users} are open to anyone who reaches this port"),
    };
    let cameras = match (&config.camera_token, &config.camera_tokens) {
        (Some(_), _) => "CAMERA_TOKEN on: /poll_for_command and /send_logs need it (one token shared by all cameras)".to_string(),
        (None, Some(file)) => format!("CAMERA_TOKENS_FILE on: /poll_for_command and /send_logs need the camera's own token ({} cameras; the file is read again when it changes)", file.tokens.len()),
        (None, None) => "CAMERA_TOKEN/CAMERA_TOKENS_FILE off: any client may poll and answer as any camera id".to_string(),
    };
    [users, cameras]
}

/// Checks `Authorization: Bearer <token>` when a token is configured, in constant time.
fn authorize(request: &Request, expected: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let value = header(request, "Authorization").unwrap_or_default();
    // The scheme name is case-insensitive (RFC 9110, section 11.1).
    let presented =
        value.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
    let token = presented.map_or("", |(_, token)| token.trim());
    constant_time_eq(token.as_bytes(), expected.as_bytes())
        .then_some(())
        .ok_or(ApiError::Unauthorized)
}

/// Compares without an early exit, so the time taken does not reveal how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let byte = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let diff = (0..a.len().max(b.len()))
        .fold(a.len() ^ b.len(), |diff, i| diff | usize::from(byte(a, i) ^ byte(b, i)));
    std::hint::black_box(diff) == 0
}

fn header(request: &Request, name: &'static str) -> Option<String> {
    let found = request.headers().iter().find(|h| h.field.equiv(name));
    found.map(|h| h.value.as_str().trim().to_string())
}

/// Who sent the request, for log lines: the address the edge vouches for (`X-Real-IP`, set by
/// deploy/nginx.conf from the connection it accepted), else the connection's own peer.
fn client_address(request: &Request) -> String {
    let forwarded = header(request, "X-Real-IP").map(|ip| clean(&ip, 64));
    let peer = request.remote_addr().map(SocketAddr::ip);
    forwarded.or(peer.map(|ip| ip.to_string())).unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_up_line_names_the_routes_api_token_guards() {
        let [users, _] = describe_authentication(&ServerConfig::default());
        assert_eq!(users, "API_TOKEN off: /logs, /cameras, /stats, /metrics are open to anyone who reaches this port");
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
