//! `GET /metrics`: the server's counters and their rendering in the Prometheus text exposition
//! format, version 0.0.4, written by hand (no metrics crate is on the dependency list).
//!
//! Owns the counters (requests by route and status, rejections by reason, the `/logs` latency
//! histogram, camera round trips and re-sends) as plain atomics, so recording is lock-free on
//! every request; the registry records round trips and re-sends, the routes the rest. Gauges
//! (cameras, polls, waiting calls, threads, connections) are not stored here: they are read
//! from their owners at scrape time, so they cannot drift.
//! Its labels come from the tables that own them: routes from [`Route::ALL`], statuses and
//! rejection reasons from [`ApiError`]. It decides nothing (no status, no routing, no limits).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::ApiError;
use crate::protocol::Route;

/// The `Content-Type` of a scrape, as the 0.0.4 text format asks.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The label of a request whose path is no route, so a scanner trying paths cannot grow the
/// series.
const OTHER: &str = "other";

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
        let bucket =
            self.bounds.iter().position(|bound| value <= *bound).unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((value.max(0.0) * 1e6).round() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, "histogram", help);
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = self.bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
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
    /// Every status an [`ApiError`] has, and 200; a status not among them is rendered `other`.
    statuses: Vec<u16>,
    /// `(reason, status)` of every refusal an [`ApiError`] can be.
    rejections: Vec<(&'static str, u16)>,
    /// One cell per route (and `other`) and status (and `other`), route-major.
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
        let mut statuses = vec![200];
        let mut rejections = Vec::new();
        for error in ApiError::every_kind() {
            let (status, rejection) = error.status_and_rejection();
            if !statuses.contains(&status) {
                statuses.push(status);
            }
            if let Some(reason) = rejection.filter(|r| !rejections.iter().any(|(x, _)| x == r)) {
                rejections.push((reason, status));
            }
        }
        Metrics {
            requests: zeros((Route::ALL.len() + 1) * (statuses.len() + 1)),
            rejected: zeros(rejections.len()),
            statuses,
            rejections,
            logs_latency: Histogram::new(LATENCY_BUCKETS),
            round_trips: AtomicU64::new(0),
            calls_per_round_trip: Histogram::new(CALLS_BUCKETS),
            resends: AtomicU64::new(0),
        }
    }

    /// Counts one answered request (`route` is `None` for a path that is no route).
    pub fn request(
        &self,
        route: Option<Route>,
        status: u16,
        error: Option<&ApiError>,
        took: Duration,
    ) {
        let row = route.map_or(Route::ALL.len(), |r| r as usize);
        let column = self.statuses.iter().position(|s| *s == status);
        let column = column.unwrap_or(self.statuses.len());
        self.requests[row * (self.statuses.len() + 1) + column].fetch_add(1, Ordering::Relaxed);
        let rejection = error.and_then(|e| e.status_and_rejection().1);
        if let Some(i) = self.rejections.iter().position(|(r, _)| Some(*r) == rejection) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
        if route == Some(Route::Logs) {
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
        let labels = Route::ALL.iter().map(|r| r.path()).chain([OTHER]);
        let columns = self.statuses.len() + 1;
        for (r, route) in labels.enumerate() {
            for (c, status) in
                self.statuses.iter().map(u16::to_string).chain([OTHER.into()]).enumerate()
            {
                let n = self.requests[r * columns + c].load(Ordering::Relaxed);
                // Only series that happened: a hundred mostly-zero lines would bury the rest.
                if n > 0 {
                    let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{status}\"}} {n}");
                }
            }
        }

        let name = "camera_logs_rejected_requests_total";
        header(&mut out, name, "counter", "Requests refused, by reason and the status they got.");
        for (i, (reason, status)) in self.rejections.iter().enumerate() {
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
            ("camera_logs_open_polls", "Camera polls held open right now.", gauges.open_polls),
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
            m.request(Some(Route::Logs), 200, None, Duration::from_secs_f64(ms / 1000.0));
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
        let offline = ApiError::CameraOffline { camera_id: "c".into(), seconds_since_seen: 1.0 };
        m.request(Some(Route::Logs), 503, Some(&offline), Duration::ZERO);
        m.request(None, 404, Some(&ApiError::NoSuchPath("/wp-admin".into())), Duration::ZERO);
        m.request(Some(Route::Stats), 299, None, Duration::ZERO);
        m.round_trip(7);
        let text = m.render(&Gauges { open_polls: 3, ..Gauges::default() });
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
                    || ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{f}{s}"))),
                "{sample}"
            );
        }
        for family in families {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
    }

    #[test]
    fn every_refusal_is_listed_with_its_errors_status() {
        let text = Metrics::new().render(&Gauges::default());
        for error in ApiError::every_kind() {
            if let (status, Some(reason)) = error.status_and_rejection() {
                let row = format!(
                    "rejected_requests_total{{reason=\"{reason}\",status=\"{status}\"}} 0\n"
                );
                assert!(text.contains(&row), "{row} in\n{text}");
            }
        }
    }
}
