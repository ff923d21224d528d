//! The one error type of the API server, and the one place where an error becomes an HTTP
//! status, a rejection label for `/metrics`, headers and a JSON body `{"error": "..."}`.
//!
//! Messages are sentences a person can act on; they never echo secrets (tokens) back.

use std::fmt;
use std::time::Duration;

use crate::protocol::ErrorBody;

/// Everything a request to the API server can fail with.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// Input that cannot be understood: a bad number, a bad id, malformed JSON.
    BadRequest(String),
    /// A token was required and the request did not carry the right one.
    Unauthorized,
    /// No route has this path.
    NoSuchPath(String),
    /// The route exists but not for this method.
    MethodNotAllowed { allowed: &'static str },
    /// No camera with this id has polled this server; `since_start` is set while the server
    /// waits for cameras to arrive after its start (`CAMERA_ARRIVAL_SECS`).
    UnknownCamera { camera_id: String, since_start: Option<Duration> },
    /// A second camera process polls or answers for an id another running process holds.
    Conflict { camera_id: String },
    /// A `send_logs` answer names a command that is not (or no longer) in flight for this camera.
    UnknownRequest(String),
    /// A request body larger than the configured limit.
    PayloadTooLarge { limit: usize },
    /// Too many `/logs` calls are already waiting for this camera.
    TooManyWaiting { camera_id: String, limit: usize },
    /// The camera is known but has no open poll and has not polled recently.
    CameraOffline { camera_id: String, seconds_since_seen: f64 },
    /// The camera did not answer within the caller's timeout.
    CameraTimeout { camera_id: String, after: Duration },
    /// A poll for a new camera id while `MAX_CAMERAS` are known.
    TooManyCameras { limit: usize },
    /// A poll of a camera without a place while `limit` cameras hold one.
    PollCapacity { limit: usize },
    /// A camera's answer that would take the answers held past `MAX_ANSWER_BYTES`.
    AnswersFull { held: usize, limit: usize },
    /// The server is stopping and will not start new work.
    ShuttingDown,
    /// A draining instance could not serve a call: its camera now polls another instance.
    Moved,
    /// A bug on our side; the request fails but the server keeps serving.
    Internal(String),
}

impl ApiError {
    /// The status, and the reason a refusal is counted under on `/metrics` (`None` for what is
    /// not a refusal: 404, 405, 500, and 504, a camera that did not answer in time). The one
    /// place that knows either.
    pub fn status_and_rejection(&self) -> (u16, Option<&'static str>) {
        match self {
            ApiError::BadRequest(_) => (400, Some("bad_request")),
            ApiError::Unauthorized => (401, Some("unauthorized")),
            ApiError::NoSuchPath(_)
            | ApiError::UnknownCamera { .. }
            | ApiError::UnknownRequest(_)
            | ApiError::Moved => (404, None),
            ApiError::MethodNotAllowed { .. } => (405, None),
            ApiError::Conflict { .. } => (409, Some("instance_conflict")),
            ApiError::PayloadTooLarge { .. } => (413, Some("body_too_large")),
            ApiError::TooManyWaiting { .. } => (429, Some("too_many_waiting")),
            ApiError::Internal(_) => (500, None),
            ApiError::CameraOffline { .. } => (503, Some("camera_offline")),
            ApiError::TooManyCameras { .. } => (503, Some("too_many_cameras")),
            ApiError::PollCapacity { .. } => (503, Some("poll_capacity")),
            ApiError::AnswersFull { .. } => (503, Some("answers_full")),
            ApiError::ShuttingDown => (503, Some("shutting_down")),
            ApiError::CameraTimeout { .. } => (504, None),
        }
    }

    pub fn status(&self) -> u16 {
        self.status_and_rejection().0
    }

    /// The header the status calls for (RFC 9110: `Allow` on 405, `Retry-After` on 429/503).
    pub fn header(&self) -> Option<(&'static str, &'static str)> {
        match self {
            ApiError::MethodNotAllowed { allowed } => Some(("Allow", allowed)),
            // A second camera process retries at this pace, so it takes over within a second or
            // two of the first one's end, whatever its backoff has grown to.
            ApiError::TooManyWaiting { .. }
            | ApiError::ShuttingDown
            | ApiError::Conflict { .. } => Some(("Retry-After", "1")),
            ApiError::CameraOffline { .. } | ApiError::AnswersFull { .. } => {
                Some(("Retry-After", "5"))
            }
            // A place frees when a polling camera goes offline: rarely, so not every second.
            ApiError::PollCapacity { .. } => Some(("Retry-After", "10")),
            // Room is made only as offline cameras are forgotten: minutes, not seconds.
            ApiError::TooManyCameras { .. } => Some(("Retry-After", "60")),
            ApiError::Unauthorized => Some(("WWW-Authenticate", "Bearer")),
            _ => None,
        }
    }

    /// The JSON body: `{"error": "<message>"}`.
    pub fn body(&self) -> Vec<u8> {
        let body = ErrorBody { error: self.to_string() };
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ApiError as E;
        match self {
            E::BadRequest(why) | E::UnknownRequest(why) => write!(f, "{why}"),
            E::Unauthorized => write!(f, "missing or wrong bearer token"),
            E::NoSuchPath(path) => write!(f, "no such endpoint: {path}"),
            E::MethodNotAllowed { allowed } => write!(f, "method not allowed here; use {allowed}"),
            E::UnknownCamera { camera_id: id, since_start: None } => {
                write!(f, "camera '{id}' is unknown: it has never polled this server")
            }
            E::UnknownCamera { camera_id: id, since_start: Some(since) } => {
                let since = since.as_secs_f64();
                write!(f, "camera '{id}' has not polled this instance since it started {since:.0} s ago (cameras that were backing off may still arrive; CAMERA_ARRIVAL_SECS)")
            }
            E::Conflict { camera_id: id } => write!(f, "camera '{id}' is already polling from another running process: two cameras share this id; give each camera its own CAMERA_ID"),
            E::PayloadTooLarge { limit } => {
                write!(f, "request body is larger than the limit of {limit} bytes")
            }
            E::TooManyWaiting { camera_id: id, limit } => {
                write!(f, "camera '{id}' already has {limit} requests waiting; retry shortly")
            }
            E::CameraOffline { camera_id: id, seconds_since_seen: s } => {
                write!(f, "camera '{id}' is offline: it has not polled for {s:.1} s")
            }
            E::CameraTimeout { camera_id: id, after } => {
                write!(f, "camera '{id}' did not answer within {:.1} s", after.as_secs_f64())
            }
            E::TooManyCameras { limit } => {
                write!(f, "this server already knows {limit} cameras (MAX_CAMERAS); retry later")
            }
            E::PollCapacity { limit } => write!(f, "this instance already has {limit} cameras polling, all it takes (three quarters of MAX_HANDLERS); retry later, or add an instance"),
            E::AnswersFull { held, limit } => write!(f, "the camera answered, but the answers held for their callers already take {held} of {limit} bytes (MAX_ANSWER_BYTES); retry shortly"),
            E::ShuttingDown => write!(f, "the server is shutting down"),
            E::Moved => write!(f, "this instance is draining and its cameras have moved: ask again (through the edge, the next instance answers)"),
            E::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
impl ApiError {
    /// One error of every kind.
    pub fn every_kind() -> Vec<ApiError> {
        let camera_id = || "c".to_string();
        vec![
            ApiError::BadRequest("bad".into()),
            ApiError::Unauthorized,
            ApiError::NoSuchPath("/x".into()),
            ApiError::MethodNotAllowed { allowed: "GET" },
            ApiError::UnknownCamera { camera_id: camera_id(), since_start: None },
            ApiError::Conflict { camera_id: camera_id() },
            ApiError::UnknownRequest("r".into()),
            ApiError::PayloadTooLarge { limit: 10 },
            ApiError::TooManyWaiting { camera_id: camera_id(), limit: 1 },
            ApiError::CameraOffline { camera_id: camera_id(), seconds_since_seen: 9.0 },
            ApiError::CameraTimeout { camera_id: camera_id(), after: Duration::from_secs(1) },
            ApiError::TooManyCameras { limit: 2 },
            ApiError::PollCapacity { limit: 3 },
            ApiError::AnswersFull { held: 1, limit: 2 },
            ApiError::ShuttingDown,
            ApiError::Moved,
            ApiError::Internal("x".into()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_status() {
        let statuses: Vec<u16> = ApiError::every_kind().iter().map(ApiError::status).collect();
        assert_eq!(
            statuses,
            [400, 401, 404, 405, 404, 409, 404, 413, 429, 503, 504, 503, 503, 503, 503, 404, 500]
        );
        for error in ApiError::every_kind() {
            let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
            assert_eq!(body["error"].as_str(), Some(error.to_string().as_str()));
        }
    }

    #[test]
    fn statuses_carry_their_headers() {
        assert_eq!(
            ApiError::MethodNotAllowed { allowed: "POST" }.header(),
            Some(("Allow", "POST"))
        );
        let too_many = ApiError::TooManyWaiting { camera_id: "c".into(), limit: 1 };
        assert_eq!(too_many.header(), Some(("Retry-After", "1")));
    }
}
