//! The one error type of the API server, and the one place where an error becomes an HTTP
//! status, headers and a JSON body `{"error": "..."}`.
//!
//! Messages are sentences a person can act on; they never echo secrets (tokens) back.

use std::fmt;
use std::time::Duration;

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
    /// No camera with this id has ever polled this server.
    UnknownCamera(String),
    /// A `send_logs` answer names a command that is not (or no longer) in flight for this camera.
    UnknownRequest(String),
    /// A request body larger than the configured limit.
    PayloadTooLarge { limit: usize },
    /// Too many `/logs` calls are already waiting for this camera.
    TooManyWaiting { camera_id: String, limit: usize },
    /// The camera is known but has no open poll and has not polled recently.
    CameraOffline {
        camera_id: String,
        seconds_since_seen: f64,
    },
    /// The camera did not answer within the caller's timeout.
    CameraTimeout { camera_id: String, after: Duration },
    /// A poll for a new camera id while `MAX_CAMERAS` are known.
    TooManyCameras { limit: usize },
    /// The server is stopping and will not start new work.
    ShuttingDown,
    /// A bug on our side; the request fails but the server keeps serving.
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::NoSuchPath(_) | ApiError::UnknownCamera(_) | ApiError::UnknownRequest(_) => {
                404
            }
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::TooManyWaiting { .. } => 429,
            ApiError::Internal(_) => 500,
            ApiError::CameraOffline { .. }
            | ApiError::TooManyCameras { .. }
            | ApiError::ShuttingDown => 503,
            ApiError::CameraTimeout { .. } => 504,
        }
    }

    /// Extra headers the status calls for (RFC 9110: `Allow` on 405, `Retry-After` on 429/503).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::MethodNotAllowed { allowed } => vec![("Allow", (*allowed).to_string())],
            ApiError::TooManyWaiting { .. } | ApiError::ShuttingDown => {
                vec![("Retry-After", "1".to_string())]
            }
            ApiError::CameraOffline { .. } => vec![("Retry-After", "5".to_string())],
            // Room is made only as offline cameras are forgotten: minutes, not seconds.
            ApiError::TooManyCameras { .. } => vec![("Retry-After", "60".to_string())],
            ApiError::Unauthorized => vec![("WWW-Authenticate", "Bearer".to_string())],
            _ => Vec::new(),
        }
    }

    /// The JSON body: `{"error": "<message>"}`.
    pub fn body(&self) -> Vec<u8> {
        let body = crate::protocol::ErrorBody {
            error: self.to_string(),
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| br#"{"error":"internal error"}"#.to_vec())
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::BadRequest(why) => write!(f, "{why}"),
            ApiError::Unauthorized => write!(f, "missing or wrong bearer token"),
            ApiError::NoSuchPath(path) => write!(f, "no such endpoint: {path}"),
            ApiError::MethodNotAllowed { allowed } => {
                write!(f, "method not allowed here; use {allowed}")
            }
            ApiError::UnknownCamera(id) => {
                write!(
                    f,
                    "camera '{id}' is unknown: it has never polled this server"
                )
            }
            ApiError::UnknownRequest(why) => write!(f, "{why}"),
            ApiError::PayloadTooLarge { limit } => {
                write!(f, "request body is larger than the limit of {limit} bytes")
            }
            ApiError::TooManyWaiting { camera_id, limit } => write!(
                f,
                "camera '{camera_id}' already has {limit} requests waiting; retry shortly"
            ),
            ApiError::CameraOffline {
                camera_id,
                seconds_since_seen,
            } => write!(
                f,
                "camera '{camera_id}' is offline: it has not polled for {seconds_since_seen:.1} s"
            ),
            ApiError::CameraTimeout { camera_id, after } => write!(
                f,
                "camera '{camera_id}' did not answer within {:.1} s",
                after.as_secs_f64()
            ),
            ApiError::TooManyCameras { limit } => write!(
                f,
                "this server already knows {limit} cameras (MAX_CAMERAS); retry later"
            ),
            ApiError::ShuttingDown => write!(f, "the server is shutting down"),
            ApiError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_json_with_its_status() {
        let errors = [
            (ApiError::BadRequest("bad".into()), 400),
            (ApiError::Unauthorized, 401),
            (ApiError::NoSuchPath("/x".into()), 404),
            (ApiError::UnknownCamera("c".into()), 404),
            (ApiError::UnknownRequest("r".into()), 404),
            (ApiError::MethodNotAllowed { allowed: "GET" }, 405),
            (ApiError::PayloadTooLarge { limit: 10 }, 413),
            (
                ApiError::TooManyWaiting {
                    camera_id: "c".into(),
                    limit: 1,
                },
                429,
            ),
            (ApiError::Internal("x".into()), 500),
            (ApiError::TooManyCameras { limit: 2 }, 503),
            (
                ApiError::CameraOffline {
                    camera_id: "c".into(),
                    seconds_since_seen: 9.0,
                },
                503,
            ),
            (
                ApiError::CameraTimeout {
                    camera_id: "c".into(),
                    after: Duration::from_secs(1),
                },
                504,
            ),
        ];
        for (error, status) in errors {
            assert_eq!(error.status(), status, "{error:?}");
            let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
            assert_eq!(body["error"].as_str(), Some(error.to_string().as_str()));
        }
    }

    #[test]
    fn statuses_carry_their_headers() {
        assert_eq!(
            ApiError::MethodNotAllowed { allowed: "POST" }.headers(),
            vec![("Allow", "POST".to_string())]
        );
        let too_many = ApiError::TooManyWaiting {
            camera_id: "c".into(),
            limit: 1,
        };
        assert_eq!(too_many.headers()[0].0, "Retry-After");
    }
}
