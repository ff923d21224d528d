//! `GET /metrics`: the server's counters and their rendering in the Prometheus text exposition
//! format, version 0.0.4, written by hand (no metrics crate is on the dependency list).
//!
//! Owns the counters (requests by route and status, rejections by reason, the `/logs` latency
//! histogram, camera round trips and re-sends) as plain atomics, so recording is lock-free on
//! every request; the registry records round trips and re-sends, the routes the rest. Gauges
//! (cameras, polls, waiting calls, threads, connections) are not stored here: they are read
//! from their owners at scrape time, so they cannot drift.
//! It must not decide anything: no status, no routing, no limits; it only counts and renders.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::ApiError;

/// The `Content-Type` of a scrape, as the 0.0.4 text format asks.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Route labels. Anything else is `other`, so a scanner trying paths cannot grow the series.
pub const ROUTES: &[&str] = &[
    "/",
    "/openapi.yaml",
    "/logs",
    "/cameras",
    "/health",
    "/stats",
    "/metrics",
    "/poll_for_command",
    "/send_logs",
    "other",
];

/// Every status the server answers with; `0` collects anything unforeseen (rendered as `other`).
const STATUSES: &[u16] = &[200, 400, 401, 404, 405, 413, 429, 500, 503, 504, 0];

/// Why a request was refused, with the status it got: every [`ApiError`] that is a rejection.
pub const REJECTIONS: &[(&str, u16)] = &[
    ("bad_request", 400),
    ("unauthorized", 401),
    ("body_too_large", 413),
    ("too_many_waiting", 429),
    ("camera_offline", 503),
    ("too_many_cameras", 503),
    ("shutting_down", 503),
];

/// Upper bounds of the `/logs` latency buckets, in seconds (`+Inf` is implied).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Upper bounds of the calls-per-round-trip buckets.
pub const CALLS_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// A cumulative histogram: a count per bucket (plus `+Inf`), the sum and the count.
struct Histogram {
    bounds: &'static [f64],
    /// Non-cumulative counts; one more than `bounds` for `+Inf`. Made cumulative when rendered.
    counts: Vec<AtomicU64>,
    /// The sum in millionths of the unit: integral, so it can be an atomic.
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((value.max(0.0) * 1e6).round() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// The values read from their owners at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub cameras_known: usize,
    pub cameras_online: usize,
    pub open_polls: usize,
    pub waiting_calls: usize,
    pub handler_threads: usize,
    pub open_connections: usize,
}

/// Counters of one server.
pub struct Metrics {
    /// `ROUTES.len() * STATUSES.len()` cells, route-major.
    requests: Vec<AtomicU64>,
    rejected: Vec<AtomicU64>,
    logs_latency: Histogram,
    round_trips: AtomicU64,
    calls_per_round_trip: Histogram,
    resends: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Metrics {
            requests: zeros(ROUTES.len() * STATUSES.len()),
            rejected: zeros(REJECTIONS.len()),
            logs_latency: Histogram::new(LATENCY_BUCKETS),
            round_trips: AtomicU64::new(0),
            calls_per_round_trip: Histogram::new(CALLS_BUCKETS),
            resends: AtomicU64::new(0),
        }
    }

    /// Counts one answered request; `path` is the raw path (mapped to a route label here).
    pub fn request(&self, path: &str, status: u16, error: Option<&ApiError>, took: Duration) {
        let route = ROUTES
            .iter()
            .position(|r| *r == path)
            .unwrap_or(ROUTES.len() - 1);
        let status_index = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.requests[route * STATUSES.len() + status_index].fetch_add(1, Ordering::Relaxed);
        if let Some(reason) = error.and_then(rejection_reason) {
            if let Some(i) = REJECTIONS.iter().position(|(r, _)| *r == reason) {
                self.rejected[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        if path == "/logs" {
            self.logs_latency.observe(took.as_secs_f64());
        }
    }

    /// Counts one command the camera answered, and how many `/logs` calls that answer served.
    pub fn round_trip(&self, callers: usize) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.calls_per_round_trip.observe(callers as f64);
    }

    /// Counts one command sent again after the ack timeout.
    pub fn resend(&self) {
        self.resends.fetch_add(1, Ordering::Relaxed);
    }

    /// Commands answered so far.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// The whole exposition.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let name = "camera_logs_http_requests_total";
        header(
            &mut out,
            name,
            "counter",
            "HTTP requests answered, by route (unknown paths are 'other') and status.",
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let n = self.requests[r * STATUSES.len() + s].load(Ordering::Relaxed);
                // Only series that happened: 110 mostly-zero lines would bury the useful ones.
                if n > 0 {
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
                }
            }
        }

        let name = "camera_logs_rejected_requests_total";
        header(
            &mut out,
            name,
            "counter",
            "Requests refused, by reason and the status they got.",
        );
        for (i, (reason, status)) in REJECTIONS.iter().enumerate() {
            let n = self.rejected[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{reason=\"{reason}\",status=\"{status}\"}} {n}");
        }

        self.logs_latency.render(
            &mut out,
            "camera_logs_logs_request_duration_seconds",
            "Time to answer GET /logs, whatever the status, in seconds.",
        );

        counter(
            &mut out,
            "camera_logs_camera_round_trips_total",
            "Commands a camera answered (one round trip serves every call it carried).",
            self.round_trips.load(Ordering::Relaxed),
        );
        self.calls_per_round_trip.render(
            &mut out,
            "camera_logs_calls_per_round_trip",
            "GET /logs calls served by one camera round trip.",
        );
        counter(
            &mut out,
            "camera_logs_command_resends_total",
            "Commands sent again because no answer came within ACK_TIMEOUT_SECS.",
            self.resends.load(Ordering::Relaxed),
        );

        for (name, help, value) in [
            (
                "camera_logs_cameras_known",
                "Cameras that have polled and are not yet forgotten.",
                gauges.cameras_known,
            ),
            (
                "camera_logs_cameras_online",
                "Cameras with an open poll, or one that ended within CAMERA_GRACE_SECS.",
                gauges.cameras_online,
            ),
            (
                "camera_logs_open_polls",
                "Camera polls held open right now.",
                gauges.open_polls,
            ),
            (
                "camera_logs_waiting_calls",
                "GET /logs calls waiting for a camera's answer right now.",
                gauges.waiting_calls,
            ),
            (
                "camera_logs_handler_threads",
                "Request handler threads alive (idle and busy).",
                gauges.handler_threads,
            ),
            (
                "camera_logs_open_connections",
                "Client connections open on the listening port (ESTABLISHED or CLOSE_WAIT).",
                gauges.open_connections,
            ),
        ] {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

/// The rejection label of an error, or `None` when the error is not a refusal (404, 405, 500,
/// and 504, which is a camera that did not answer in time).
pub fn rejection_reason(error: &ApiError) -> Option<&'static str> {
    match error {
        ApiError::BadRequest(_) => Some("bad_request"),
        ApiError::Unauthorized => Some("unauthorized"),
        ApiError::PayloadTooLarge { .. } => Some("body_too_large"),
        ApiError::TooManyWaiting { .. } => Some("too_many_waiting"),
        ApiError::CameraOffline { .. } => Some("camera_offline"),
        ApiError::TooManyCameras { .. } => Some("too_many_cameras"),
        ApiError::ShuttingDown => Some("shutting_down"),
        ApiError::NoSuchPath(_)
        | ApiError::MethodNotAllowed { .. }
        | ApiError::UnknownCamera(_)
        | ApiError::UnknownRequest(_)
        | ApiError::CameraTimeout { .. }
        | ApiError::Internal(_) => None,
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{text}"))
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        for ms in [0.1, 3.0, 3.0, 70_000.0] {
            m.request("/logs", 200, None, Duration::from_secs_f64(ms / 1000.0));
        }
        let text = m.render(&Gauges::default());
        let name = "camera_logs_logs_request_duration_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        assert_eq!(
            line(&text, &format!("{name}_bucket{{le=\"0.0005\"}}")),
            format!("{name}_bucket{{le=\"0.0005\"}} 1")
        );
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.005\"}} 3\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"60\"}} 3\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 4\n")));
        assert!(text.contains(&format!("{name}_count 4\n")));
        assert!(text.contains(&format!("{name}_sum 70.0061\n")), "{text}");
    }

    #[test]
    fn requests_and_rejections_are_labelled() {
        let m = Metrics::new();
        let offline = ApiError::CameraOffline {
            camera_id: "c".into(),
            seconds_since_seen: 1.0,
        };
        m.request("/logs", 503, Some(&offline), Duration::ZERO);
        m.request(
            "/wp-admin",
            404,
            Some(&ApiError::NoSuchPath("/wp-admin".into())),
            Duration::ZERO,
        );
        m.request("/stats", 299, None, Duration::ZERO);
        m.round_trip(7);
        let text = m.render(&Gauges {
            open_polls: 3,
            ..Gauges::default()
        });
        assert!(
            text.contains("camera_logs_http_requests_total{route=\"/logs\",status=\"503\"} 1\n")
        );
        assert!(
            text.contains("camera_logs_http_requests_total{route=\"other\",status=\"404\"} 1\n")
        );
        assert!(
            text.contains("camera_logs_http_requests_total{route=\"/stats\",status=\"other\"} 1\n")
        );
        assert!(text.contains(
            "camera_logs_rejected_requests_total{reason=\"camera_offline\",status=\"503\"} 1\n"
        ));
        assert!(text.contains(
            "camera_logs_rejected_requests_total{reason=\"unauthorized\",status=\"401\"} 0\n"
        ));
        assert!(text.contains("camera_logs_camera_round_trips_total 1\n"));
        assert!(text.contains("camera_logs_calls_per_round_trip_bucket{le=\"5\"} 0\n"));
        assert!(text.contains("camera_logs_calls_per_round_trip_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("camera_logs_open_polls 3\n"));
        // Every family has HELP and TYPE, and every sample belongs to a declared family.
        let families: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for sample in text.lines().filter(|l| !l.starts_with('#')) {
            let name = sample.split(['{', ' ']).next().unwrap();
            assert!(
                families.iter().any(|f| name == *f
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name == format!("{f}{s}"))),
                "{sample}"
            );
        }
        for family in families {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
    }

    #[test]
    fn every_rejection_status_matches_the_error() {
        let errors = [
            ApiError::BadRequest("x".into()),
            ApiError::Unauthorized,
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::TooManyWaiting {
                camera_id: "c".into(),
                limit: 1,
            },
            ApiError::CameraOffline {
                camera_id: "c".into(),
                seconds_since_seen: 1.0,
            },
            ApiError::TooManyCameras { limit: 1 },
            ApiError::ShuttingDown,
        ];
        for error in errors {
            let reason = rejection_reason(&error).unwrap();
            let (_, status) = REJECTIONS.iter().find(|(r, _)| *r == reason).unwrap();
            assert_eq!(*status, error.status(), "{reason}");
        }
    }
}
