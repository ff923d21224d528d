//! `GET /metrics`: the server's counters, rendered in the Prometheus text exposition format
//! 0.0.4 by hand (no metrics crate is on the dependency list).
//!
//! Every series is one entry of a map under a mutex (a request costs one uncontended lock and a
//! short string); the families, with their type and help, are one table. Labels come from the
//! tables that own them: routes from [`Route`], statuses and rejection reasons from [`ApiError`].
//! Gauges are read from their owners at scrape time, so they cannot drift. It decides nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use parking_lot::Mutex;

use super::error::ApiError;
use crate::protocol::Route;

/// The `Content-Type` of a scrape, as the 0.0.4 text format asks.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family, in the order of the exposition: name (after `camera_logs_`), type, help.
#[rustfmt::skip]
const FAMILIES: [(&str, &str, &str); 12] = [
    ("http_requests_total", "counter", "HTTP requests answered, by route (unknown paths are 'other') and status."),
    ("rejected_requests_total", "counter", "Requests refused, by reason and the status they got."),
    ("logs_request_duration_seconds", "histogram", "Time to answer GET /logs, whatever the status, in seconds."),
    ("camera_round_trips_total", "counter", "Commands a camera answered (one round trip serves every call it carried)."),
    ("calls_per_round_trip", "histogram", "GET /logs calls served by one camera round trip."),
    ("command_resends_total", "counter", "Commands sent again because no answer came within ACK_TIMEOUT_SECS."),
    ("cameras_known", "gauge", "Cameras that have polled and are not yet forgotten."),
    ("cameras_online", "gauge", "Cameras with an open poll, or one that ended within CAMERA_GRACE_SECS."),
    ("open_polls", "gauge", "Camera polls held open right now."),
    ("waiting_calls", "gauge", "GET /logs calls waiting for a camera's answer right now."),
    ("handler_threads", "gauge", "Request handler threads alive (idle and busy)."),
    ("open_connections", "gauge", "Client connections open on the listening port."),
];
// Places in FAMILIES.
const REQUESTS: usize = 0;
const REJECTED: usize = 1;
const LATENCY: usize = 2;
const ROUND_TRIPS: usize = 3;
const CALLS: usize = 4;
const RESENDS: usize = 5;
const FIRST_GAUGE: usize = 6;

/// Upper bounds of the `/logs` latency buckets, in seconds (`+Inf` is implied).
#[rustfmt::skip]
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
/// Upper bounds of the calls-per-round-trip buckets.
const CALLS_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];

/// A series: its family's index, its place among the family's series, and the text after the
/// family's name (`{labels}`, or `_bucket{le="..."}`, `_sum`, `_count`).
type Key = (usize, usize, String);

/// The server's counters.
pub struct Metrics {
    series: Mutex<BTreeMap<Key, f64>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut series = BTreeMap::new();
        // Histograms list every bucket from the start, and their sum and count: an observation
        // then only adds to series that are there.
        for (family, bounds) in [(LATENCY, LATENCY_BUCKETS), (CALLS, CALLS_BUCKETS)] {
            let les = bounds.iter().map(f64::to_string).chain(["+Inf".to_string()]);
            for (i, le) in les.enumerate() {
                series.insert((family, i, format!("_bucket{{le=\"{le}\"}}")), 0.0);
            }
            series.insert((family, bounds.len() + 1, "_sum".into()), 0.0);
            series.insert((family, bounds.len() + 2, "_count".into()), 0.0);
        }
        for family in [ROUND_TRIPS, RESENDS] {
            series.insert((family, 0, String::new()), 0.0);
        }
        Metrics { series: Mutex::new(series) }
    }

    /// Counts one answered request (`route` is `None` for a path that is no route).
    pub fn request(
        &self, route: Option<Route>, status: u16, error: Option<&ApiError>, took: Duration,
    ) {
        let labels =
            format!("{{route=\"{}\",status=\"{status}\"}}", route.map_or("other", Route::path));
        let mut series = self.series.lock();
        *series.entry((REQUESTS, 0, labels)).or_default() += 1.0;
        if let Some((status, Some(reason))) = error.map(ApiError::status_and_rejection) {
            let labels = format!("{{reason=\"{reason}\",status=\"{status}\"}}");
            *series.entry((REJECTED, 0, labels)).or_default() += 1.0;
        }
        if route == Some(Route::Logs) {
            observe(&mut series, LATENCY, LATENCY_BUCKETS, took.as_secs_f64());
        }
    }

    /// Counts one command the camera answered, and how many `/logs` calls that answer served.
    pub fn round_trip(&self, callers: usize) {
        let mut series = self.series.lock();
        *series.entry((ROUND_TRIPS, 0, String::new())).or_default() += 1.0;
        observe(&mut series, CALLS, CALLS_BUCKETS, callers as f64);
    }

    /// Counts one command sent again after the ack timeout.
    pub fn resend(&self) {
        *self.series.lock().entry((RESENDS, 0, String::new())).or_default() += 1.0;
    }

    /// The whole exposition, with the gauges (in the table's order, from `cameras_known`).
    pub fn render(&self, gauges: [usize; 6]) -> String {
        let mut series = self.series.lock().clone();
        for (i, value) in gauges.into_iter().enumerate() {
            series.insert((FIRST_GAUGE + i, 0, String::new()), value as f64);
        }
        let mut out = String::with_capacity(8 * 1024);
        for (family, (name, kind, help)) in FAMILIES.iter().enumerate() {
            let _ =
                writeln!(out, "# HELP camera_logs_{name} {help}\n# TYPE camera_logs_{name} {kind}");
            for ((_, _, rest), value) in
                series.range((family, 0, String::new())..(family + 1, 0, String::new()))
            {
                let _ = writeln!(out, "camera_logs_{name}{rest} {value}");
            }
        }
        out
    }
}

/// Adds `value` to a histogram, by the places [`Metrics::new`] gave its series: its buckets are
/// cumulative, so every bucket whose bound it is within counts it (`+Inf` always), then the sum
/// and the count.
fn observe(series: &mut BTreeMap<Key, f64>, family: usize, bounds: &[f64], value: f64) {
    let range = (family, 0, String::new())..(family + 1, 0, String::new());
    for ((_, place, _), total) in series.range_mut(range) {
        *total += match bounds.get(*place) {
            Some(bound) => f64::from(u8::from(value <= *bound)),
            None if *place == bounds.len() + 1 => value,
            None => 1.0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let m = Metrics::new();
        for ms in [0.1, 3.0, 3.0, 70_000.0] {
            m.request(Some(Route::Logs), 200, None, Duration::from_secs_f64(ms / 1000.0));
        }
        let text = m.render([0; 6]);
        let name = "camera_logs_logs_request_duration_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.0005\"}} 1\n")), "{text}");
        assert!(text.contains(&format!("{name}_bucket{{le=\"0.005\"}} 3\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"60\"}} 3\n")));
        assert!(text.contains(&format!("{name}_bucket{{le=\"+Inf\"}} 4\n")));
        assert!(text.contains(&format!("{name}_count 4\n")));
        assert!(text.contains(&format!("{name}_sum 70.0061")), "{text}");
        let le = |line: &str| {
            line.split("le=\"").nth(1).map(|v| v.split('"').next().unwrap_or("").to_string())
        };
        let bounds: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket")))
            .filter_map(le)
            .collect();
        assert_eq!(bounds.first().map(String::as_str), Some("0.0005"));
        assert_eq!(bounds.last().map(String::as_str), Some("+Inf"), "buckets in increasing order");
    }

    #[test]
    fn requests_and_rejections_are_labelled() {
        let m = Metrics::new();
        let offline = ApiError::CameraOffline { camera_id: "c".into(), seconds_since_seen: 1.0 };
        m.request(Some(Route::Logs), 503, Some(&offline), Duration::ZERO);
        m.request(None, 404, Some(&ApiError::NoSuchPath("/wp-admin".into())), Duration::ZERO);
        m.round_trip(7);
        let text = m.render([0, 0, 3, 0, 0, 0]);
        assert!(
            text.contains("camera_logs_http_requests_total{route=\"/logs\",status=\"503\"} 1\n")
        );
        assert!(
            text.contains("camera_logs_http_requests_total{route=\"other\",status=\"404\"} 1\n")
        );
        let offline =
            "camera_logs_rejected_requests_total{reason=\"camera_offline\",status=\"503\"} 1\n";
        assert!(text.contains(offline), "{text}");
        assert!(text.contains("camera_logs_camera_round_trips_total 1\n"));
        assert!(text.contains("camera_logs_command_resends_total 0\n"));
        assert!(text.contains("camera_logs_calls_per_round_trip_bucket{le=\"5\"} 0\n"));
        assert!(text.contains("camera_logs_calls_per_round_trip_bucket{le=\"10\"} 1\n"));
        assert!(text.contains("camera_logs_open_polls 3\n"));
        // Every sample belongs to a family declared before it, with HELP and TYPE.
        let mut declared = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("# TYPE ") {
                Some(family) => declared.push(family.split(' ').next().unwrap_or("")),
                None if line.starts_with('#') => {}
                None => {
                    let name = line.split(['{', ' ']).next().unwrap_or("");
                    let family = declared.last().copied().unwrap_or("-");
                    assert!(name.starts_with(family), "{line} outside its family");
                }
            }
        }
    }
}
