//! The wire protocol shared by the API server, the camera and the load test: the endpoints
//! ([`Route`], one table), the JSON shapes on each, and the inclusive time range that decides
//! which events a caller sees.
//!
//! Pure data: no I/O, no locks, nothing of either side, so both ends of the wire (and the
//! tests) rely on exactly the same paths, parameters, encoding and filtering rules.

use serde::{Deserialize, Serialize};

/// Declares [`Route`] from one line per endpoint: its path, method and the query parameters it
/// accepts.
macro_rules! routes {
    ($($route:ident = ($path:literal, $method:literal, [$($param:expr),*]);)*) => {
        /// Every endpoint of the API server, in one table of paths, methods and query parameters:
        /// the server routes by it (404, 405 with `Allow`, 400 for a parameter the endpoint does
        /// not take), labels its metrics by it, and the camera builds its URLs from it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Route { $($route),* }

        impl Route {
            pub const ALL: &[Route] = &[$(Route::$route),*];

            pub fn path(self) -> &'static str {
                match self { $(Route::$route => $path,)* }
            }

            pub fn method(self) -> &'static str {
                match self { $(Route::$route => $method,)* }
            }

            /// The query parameters the endpoint accepts.
            pub fn params(self) -> &'static [&'static str] {
                match self { $(Route::$route => &[$($param),*],)* }
            }
        }
    };
}

routes! {
    Page = ("/", "GET", []);
    Contract = ("/openapi.yaml", "GET", []);
    Logs = ("/logs", "GET", [CAMERA_ID, "startTimestamp", "endTimestamp", "timeout"]);
    Cameras = ("/cameras", "GET", ["after", "limit", "scope"]);
    Health = ("/health", "GET", []);
    Stats = ("/stats", "GET", []);
    Metrics = ("/metrics", "GET", []);
    Poll = ("/poll_for_command", "GET", [CAMERA_ID, INSTANCE_ID]);
    SendLogs = ("/send_logs", "POST", [CAMERA_ID, INSTANCE_ID]);
}

/// The query parameter naming a camera, on every camera-scoped endpoint.
pub const CAMERA_ID: &str = "cameraId";
/// The query parameter naming a camera process (see [`Route::Poll`]).
pub const INSTANCE_ID: &str = "instanceId";

impl Route {
    /// The endpoint under `base` (which may have a path of its own), with `query` encoded.
    pub fn url(self, base: &url::Url, query: &[(&str, &str)]) -> url::Url {
        let mut url = base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push(self.path().trim_start_matches('/'));
        }
        url.query_pairs_mut().extend_pairs(query);
        url
    }

    pub fn from_path(path: &str) -> Option<Route> {
        Route::ALL.iter().copied().find(|route| route.path() == path)
    }
}

/// One event in a camera's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Seconds since the Unix epoch, with fractions.
    pub timestamp: f64,
    pub description: String,
}

/// What the server answers to `GET /poll_for_command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum Command {
    /// The hold ended with nothing to do: poll again.
    Noop,
    /// Send the events within `[start_timestamp, end_timestamp]` to `POST /send_logs`.
    SendLogs { request_id: String, start_timestamp: f64, end_timestamp: f64 },
}

/// The body of `POST /send_logs`.
///
/// `request_id` is optional so that cameras written before request ids existed still work:
/// their answer is matched to the camera's oldest command in flight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SendLogsBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub logs: Vec<LogEntry>,
}

/// The body of a successful `GET /logs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsResponse {
    pub camera_id: String,
    pub logs: Vec<LogEntry>,
}

/// One row of `GET /cameras`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CameraInfo {
    pub camera_id: String,
    pub online: bool,
    /// Epoch seconds of the last poll that started or ended.
    pub last_seen: f64,
    pub waiting_requests: usize,
    /// In a fleet's view, the instance that holds the camera.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// The body of `GET /cameras`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CamerasResponse {
    pub cameras: Vec<CameraInfo>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
    /// `instance`: this instance's own cameras only; `fleet`: every instance's (`PEERS`).
    #[serde(default)]
    pub scope: String,
    /// In the fleet view, the instances that did not answer: their cameras are missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

impl CamerasResponse {
    /// One page of `rows`, sorted by id: at most `limit` after `after`, and `nextAfter` when more
    /// remain (`more`: a source of the rows had more than it gave).
    pub fn page(mut rows: Vec<CameraInfo>, after: Option<&str>, limit: usize, more: bool) -> Self {
        rows.retain(|row| after.is_none_or(|after| row.camera_id.as_str() > after));
        rows.sort_by(|a, b| a.camera_id.cmp(&b.camera_id));
        let more = more || rows.len() > limit;
        rows.truncate(limit);
        let next_after = more.then(|| rows.last().map(|row| row.camera_id.clone())).flatten();
        let scope = "instance".to_string();
        CamerasResponse { cameras: rows, next_after, scope, unreachable: Vec::new() }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// An inclusive time range; `None` on a side means "unbounded on that side".
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TimeRange {
    pub start: Option<f64>,
    pub end: Option<f64>,
}

impl TimeRange {
    /// Everything, from the first event to the last.
    pub const ALL: TimeRange = TimeRange { start: None, end: None };

    pub fn new(start: Option<f64>, end: Option<f64>) -> TimeRange {
        TimeRange { start, end }
    }

    /// Inclusive on both sides, as the user asked.
    pub fn contains(&self, timestamp: f64) -> bool {
        self.start.is_none_or(|start| start <= timestamp)
            && self.end.is_none_or(|end| timestamp <= end)
    }

    /// The smallest range that covers both, so one camera round trip can serve many callers.
    pub fn union(&self, other: &TimeRange) -> TimeRange {
        let start = self.start.zip(other.start).map(|(a, b)| a.min(b));
        TimeRange { start, end: self.end.zip(other.end).map(|(a, b)| a.max(b)) }
    }

    /// The bounds as sent to a camera: an open side becomes the most extreme finite f64, so a
    /// camera that filters inclusively returns everything on that side.
    pub fn wire_bounds(&self) -> (f64, f64) {
        (self.start.unwrap_or(f64::MIN), self.end.unwrap_or(f64::MAX))
    }

    /// The index range of `sorted` (timestamps, ascending) that falls within this range.
    /// Two binary searches, so every caller sharing one camera answer costs O(log n), not a copy.
    pub fn slice_of(&self, sorted: &[f64]) -> std::ops::Range<usize> {
        let lo = self.start.map_or(0, |start| sorted.partition_point(|t| *t < start));
        let hi = self.end.map_or(sorted.len(), |end| sorted.partition_point(|t| *t <= end));
        lo..hi.max(lo)
    }
}

/// Longest camera id accepted, so ids stay readable in logs and cheap as map keys.
pub const MAX_CAMERA_ID_LEN: usize = 64;

/// What [`valid_camera_id`] accepts, for error messages.
pub const ID_CHARACTERS: &str = "1 to 64 letters, digits, '.', '_' or '-'";

/// Camera ids are 1 to 64 of `[A-Za-z0-9._-]`: safe in logs, URLs, file lines and map keys.
pub fn valid_camera_id(id: &str) -> bool {
    (1..=MAX_CAMERA_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(timestamp: f64) -> LogEntry {
        LogEntry { timestamp, description: format!("event at {timestamp}") }
    }

    #[test]
    fn bounds_are_inclusive() {
        let range = TimeRange::new(Some(10.0), Some(20.0));
        assert!(range.contains(10.0));
        assert!(range.contains(20.0));
        assert!(!range.contains(9.999));
        assert!(!range.contains(20.001));
        assert!(TimeRange::ALL.contains(f64::MIN));
        assert!(TimeRange::new(None, Some(5.0)).contains(-1e300));
    }

    #[test]
    fn slice_matches_contains() {
        let logs: Vec<LogEntry> = [1.0, 2.0, 2.0, 3.5, 7.0, 10.0].map(entry).to_vec();
        let ranges = [
            TimeRange::ALL,
            TimeRange::new(Some(2.0), Some(7.0)),
            TimeRange::new(Some(2.0), Some(2.0)),
            TimeRange::new(Some(2.1), Some(3.4)),
            TimeRange::new(None, Some(0.5)),
            TimeRange::new(Some(10.0), None),
            TimeRange::new(Some(11.0), None),
        ];
        for range in ranges {
            let expected: Vec<&LogEntry> =
                logs.iter().filter(|e| range.contains(e.timestamp)).collect();
            let stamps: Vec<f64> = logs.iter().map(|e| e.timestamp).collect();
            let got: Vec<&LogEntry> = logs[range.slice_of(&stamps)].iter().collect();
            assert_eq!(got, expected, "range {range:?}");
        }
    }

    #[test]
    fn union_widens_and_open_sides_win() {
        let a = TimeRange::new(Some(5.0), Some(10.0));
        let b = TimeRange::new(Some(1.0), Some(7.0));
        assert_eq!(a.union(&b), TimeRange::new(Some(1.0), Some(10.0)));
        assert_eq!(a.union(&TimeRange::new(None, Some(3.0))), TimeRange::new(None, Some(10.0)));
        assert_eq!(a.union(&TimeRange::new(Some(6.0), None)), TimeRange::new(Some(5.0), None));
    }

    #[test]
    fn open_sides_go_out_as_extreme_finite_numbers() {
        let (start, end) = TimeRange::ALL.wire_bounds();
        assert!(start.is_finite() && end.is_finite());
        assert_eq!((start, end), (f64::MIN, f64::MAX));
        let json = serde_json::to_string(&Command::SendLogs {
            request_id: "r1".into(),
            start_timestamp: start,
            end_timestamp: end,
        })
        .unwrap();
        let back: Command = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back,
            Command::SendLogs {
                request_id: "r1".into(),
                start_timestamp: f64::MIN,
                end_timestamp: f64::MAX
            }
        );
    }

    #[test]
    fn command_json_shape() {
        assert_eq!(serde_json::to_string(&Command::Noop).unwrap(), r#"{"command":"noop"}"#);
        let v: serde_json::Value = serde_json::to_value(Command::SendLogs {
            request_id: "abc".into(),
            start_timestamp: 1.5,
            end_timestamp: 2.5,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"command": "send_logs", "requestId": "abc", "startTimestamp": 1.5, "endTimestamp": 2.5})
        );
    }
}
