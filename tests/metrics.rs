//! `GET /metrics` against a real server: known traffic first (answers, a 10-call burst, 400,
//! 401, 404, 413, 503, 504 with a re-send), then one scrape whose counters must be exactly that
//! traffic, in the Prometheus text format with its content type, behind `API_TOKEN`.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::*;
use camera_logs::ServerConfig;

const TOKEN: &str = "metrics-test-token";

/// Samples of an exposition, keyed by `name{labels}` exactly as written; checks that every
/// sample's family was declared with HELP and TYPE first.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut declared: Vec<String> = Vec::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no HELP");
            declared.push(name);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("name and value");
        let name = key.split('{').next().unwrap();
        let family = declared.last().expect("a TYPE line before any sample");
        assert!(
            name == family
                || name
                    .strip_prefix(family.as_str())
                    .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s)),
            "sample {line:?} outside its family {family}"
        );
        assert!(name.starts_with("camera_logs_"), "{line}");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
        assert!(samples.insert(key.to_string(), value).is_none(), "duplicate {key}");
    }
    samples
}

fn scrape(base: &str) -> HashMap<String, f64> {
    let agent = agent(Duration::from_secs(30));
    let resp = get_with(&agent, &format!("{base}/metrics"), Some(TOKEN));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    parse(&resp.text())
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples.get(key).unwrap_or_else(|| panic!("no sample {key}; have {:#?}", sorted(samples)))
}

fn sorted(samples: &HashMap<String, f64>) -> Vec<(&String, &f64)> {
    let mut all: Vec<_> = samples.iter().collect();
    all.sort_by(|a, b| a.0.cmp(b.0));
    all
}

fn requests(samples: &HashMap<String, f64>, route: &str, status: &str) -> f64 {
    samples
        .get(&format!("camera_logs_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"))
        .copied()
        .unwrap_or(0.0)
}

#[test]
fn a_scrape_counts_exactly_the_traffic_before_it() {
    let config = ServerConfig {
        api_token: Some(TOKEN.to_string()),
        max_body_bytes: 4096,
        // Short enough that the mute camera's command is re-sent within its call's 3 s.
        ack_timeout: Duration::from_secs(1),
        ..test_config()
    };
    let server = TestServer::start(config);
    let base = server.url.clone();
    let events = fixture(20);
    let _cam = FakeCamera::answering_everything(&base, "cam", events.clone());
    let mute = FakeCamera::silent(&base, "mute");
    server.wait_for_camera("cam");
    server.wait_for_camera("mute");
    let agent = agent(Duration::from_secs(60));
    let with_token = |url: &str| get_with(&agent, url, Some(TOKEN));

    // 401 without the token, on /metrics itself.
    assert_eq!(get(&format!("{base}/metrics")).status, 401);
    // Three calls one after another: three round trips of one call each.
    for (start, end) in [(None, None), (Some(ts(3)), Some(ts(9))), (Some(ts(15)), None)] {
        let answer = with_token(&logs_url(&base, "cam", start, end, None)).expect_logs();
        assert_eq!(answer.logs, expected(&events, start, end));
    }
    // Ten at once: at most two round trips, serving ten calls between them.
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let url = logs_url(&base, "cam", None, None, None);
            std::thread::spawn(move || {
                get_with(&crate::common::agent(Duration::from_secs(60)), &url, Some(TOKEN)).status
            })
        })
        .collect();
    for call in burst {
        assert_eq!(call.join().unwrap(), 200);
    }
    // 400, 404 (not a rejection), an unknown path, 413.
    assert_eq!(with_token(&format!("{base}/logs?cameraId=cam&startTimestamp=NaN")).status, 400);
    assert_eq!(with_token(&format!("{base}/logs?cameraId=nobody")).status, 404);
    assert_eq!(with_token(&format!("{base}/no/such/path")).status, 404);
    assert_eq!(
        post_answer(&base, "cam", &serde_json::json!({"logs": [], "pad": "x".repeat(5000)})).status,
        413
    );
    // 504 from a camera that takes the command and never answers: re-sent after the ack timeout.
    let started = std::time::Instant::now();
    assert_eq!(with_token(&logs_url(&base, "mute", None, None, Some(3.0))).status, 504);
    assert!(started.elapsed() >= Duration::from_secs(3));
    // 503 once it stops polling.
    mute.stop_polling();
    wait_until("'mute' is offline", PATIENCE, || {
        !server.cameras().cameras.iter().any(|c| c.camera_id == "mute" && c.online)
    });
    assert_eq!(with_token(&logs_url(&base, "mute", None, None, None)).status, 503);

    let m = scrape(&base);
    assert_eq!(requests(&m, "/logs", "200"), 13.0);
    assert_eq!(requests(&m, "/logs", "400"), 1.0);
    assert_eq!(requests(&m, "/logs", "404"), 1.0);
    assert_eq!(requests(&m, "/logs", "503"), 1.0);
    assert_eq!(requests(&m, "/logs", "504"), 1.0);
    assert_eq!(requests(&m, "other", "404"), 1.0);
    assert_eq!(requests(&m, "/send_logs", "413"), 1.0);
    assert_eq!(requests(&m, "/metrics", "401"), 1.0);
    assert_eq!(requests(&m, "/metrics", "200"), 0.0, "a scrape does not count itself");
    // Every round trip was "cam"'s: 3 single calls, then the burst of 10 (in one to ten: a
    // camera on loopback answers faster than threads start). A re-sent command can be answered
    // twice, counted once.
    let round_trips = value(&m, "camera_logs_camera_round_trips_total");
    assert!((4.0..=13.0).contains(&round_trips), "{round_trips}");
    assert!(requests(&m, "/send_logs", "200") >= round_trips, "{:#?}", sorted(&m));
    assert_eq!(value(&m, "camera_logs_calls_per_round_trip_count"), round_trips);
    assert_eq!(value(&m, "camera_logs_calls_per_round_trip_sum"), 13.0);
    assert!(value(&m, "camera_logs_calls_per_round_trip_bucket{le=\"1\"}") >= 3.0);
    assert_eq!(value(&m, "camera_logs_calls_per_round_trip_bucket{le=\"+Inf\"}"), round_trips);
    assert!(value(&m, "camera_logs_command_resends_total") >= 1.0);

    for (reason, status, n) in [
        ("bad_request", 400, 1.0),
        ("unauthorized", 401, 1.0),
        ("body_too_large", 413, 1.0),
        ("too_many_waiting", 429, 0.0),
        ("camera_offline", 503, 1.0),
        ("too_many_cameras", 503, 0.0),
        ("shutting_down", 503, 0.0),
    ] {
        let key = format!(
            "camera_logs_rejected_requests_total{{reason=\"{reason}\",status=\"{status}\"}}"
        );
        // A series appears with its first rejection: absent is none.
        assert_eq!(m.get(&key).copied().unwrap_or(0.0), n, "{key}");
    }

    let latency = "camera_logs_logs_request_duration_seconds";
    assert_eq!(value(&m, &format!("{latency}_count")), 17.0);
    assert_eq!(value(&m, &format!("{latency}_bucket{{le=\"+Inf\"}}")), 17.0);
    assert_eq!(value(&m, &format!("{latency}_bucket{{le=\"60\"}}")), 17.0);
    assert!(value(&m, &format!("{latency}_bucket{{le=\"1\"}}")) <= 16.0, "the 504 took 3 s");
    assert!(value(&m, &format!("{latency}_sum")) >= 3.0);
    assert!(m.contains_key(&format!("{latency}_bucket{{le=\"0.0005\"}}")));

    assert_eq!(value(&m, "camera_logs_cameras_known"), 2.0);
    assert_eq!(value(&m, "camera_logs_cameras_online"), 1.0);
    assert_eq!(value(&m, "camera_logs_waiting_calls"), 0.0);
    assert!(value(&m, "camera_logs_open_polls") <= 1.0);
    assert!(value(&m, "camera_logs_handler_threads") >= 4.0);
    assert!(value(&m, "camera_logs_open_connections") >= 1.0, "the scrape's own");

    // The next scrape shows the previous one.
    let again = scrape(&base);
    assert_eq!(requests(&again, "/metrics", "200"), 1.0);
}
