//! The `/logs` clients: one checked call (`call_logs`, judged by `check_answer` against the
//! oracle's exact expected subset), what a client thread saw (`ClientTally`), and running the
//! client threads until the deadline (`run_clients`).
//!
//! It must not start or stop cameras or the server, nor print: the scenarios report the tally.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use camera_logs::{LogsResponse, Route};

use crate::events::{camera_id, random_range, EventSet, Rng};
use crate::raw_http::{body_excerpt, MAX_BODY};

/// Client threads run ureq and serde_json on whole answers.
const CLIENT_STACK: usize = 512 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle keep-alive connections are dropped before the server's 10 s header timeout closes them.
const CLIENT_MAX_IDLE: Duration = Duration::from_secs(5);
/// Problems kept verbatim for the summary.
const KEPT_PROBLEMS: usize = 5;

/// One `/logs` call, judged.
#[derive(Debug)]
pub(crate) enum CallResult {
    Correct,
    Wrong(String),
    Status(u16, String),
    Transport(String),
}

/// Bounded per phase, not with `timeout_global`: with any timeout that covers name resolution,
/// ureq 3 resolves every request's host on a freshly spawned thread, pooled connection or not.
/// At thousands of calls a second those spawns (and their stacks' mmap/munmap, with TLB
/// shootdowns across both cores) were the biggest single cost of the tool, on the cores the
/// server shares. The target is an IP literal here, which resolves without any lookup.
pub(crate) fn client_agent() -> ureq::Agent {
    let limit = Some(CLIENT_TIMEOUT);
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_connect(limit)
            .timeout_send_request(limit)
            .timeout_send_body(limit)
            .timeout_recv_response(limit)
            .timeout_recv_body(limit)
            .http_status_as_error(false)
            .max_idle_age(CLIENT_MAX_IDLE)
            .build(),
    )
}

fn logs_url(
    base: &str, camera: &str, (start, end): (Option<f64>, Option<f64>), extra: &str,
) -> String {
    // `{}` of an f64 is the shortest text that parses back to the same number.
    let start = start.map(|s| format!("&startTimestamp={s}")).unwrap_or_default();
    let end = end.map(|e| format!("&endTimestamp={e}")).unwrap_or_default();
    format!("{base}{}?cameraId={camera}{start}{end}{extra}", Route::Logs.path())
}

/// Calls `GET /logs` once and checks a 200 against the exact events expected.
pub(crate) fn call_logs(
    agent: &ureq::Agent, base: &str, prefix: &str, events: &EventSet,
    range: (Option<f64>, Option<f64>), extra: &str,
) -> CallResult {
    let id = camera_id(prefix, events.camera);
    let url = logs_url(base, &id, range, extra);
    let mut response = match agent.get(&url).call() {
        Ok(response) => response,
        Err(e) => return CallResult::Transport(format!("GET {url}: {e}")),
    };
    let status = response.status().as_u16();
    let body = match response.body_mut().with_config().limit(MAX_BODY as u64).read_to_vec() {
        Ok(body) => body,
        Err(e) => return CallResult::Transport(format!("GET {url}: reading the body: {e}")),
    };
    judge(status, &body, &id, events, range, &url)
}

/// What one `/logs` response amounts to: any status but 200 is an error by status; a 200 is
/// checked against the events expected.
fn judge(
    status: u16, body: &[u8], id: &str, events: &EventSet, range: (Option<f64>, Option<f64>),
    url: &str,
) -> CallResult {
    if status != 200 {
        return CallResult::Status(status, format!("GET {url}: {}", body_excerpt(body)));
    }
    check_answer(body, id, events, range, url)
}

fn check_answer(
    body: &[u8], id: &str, events: &EventSet, (start, end): (Option<f64>, Option<f64>), url: &str,
) -> CallResult {
    let answer: LogsResponse = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) => return CallResult::Wrong(format!("GET {url}: unreadable 200 body: {e}")),
    };
    if answer.camera_id != id {
        return CallResult::Wrong(format!("GET {url}: answer names camera {:?}", answer.camera_id));
    }
    let expected = events.within(start, end);
    if answer.logs == expected {
        return CallResult::Correct;
    }
    let first_difference = expected
        .iter()
        .zip(&answer.logs)
        .position(|(a, b)| a != b)
        .unwrap_or(expected.len().min(answer.logs.len()));
    CallResult::Wrong(format!(
        "GET {url}: expected {} event(s), got {}; first difference at index {first_difference}",
        expected.len(),
        answer.logs.len()
    ))
}

/// What one client thread saw.
#[derive(Debug, Default)]
pub(crate) struct ClientTally {
    pub(crate) calls: u64,
    pub(crate) correct: u64,
    pub(crate) wrong: u64,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) transport_errors: u64,
    /// Of every 200 answer, in microseconds.
    pub(crate) latencies_us: Vec<u64>,
    pub(crate) problems: Vec<String>,
}

impl ClientTally {
    fn add(&mut self, result: CallResult, elapsed: Duration) {
        self.calls += 1;
        let problem = match result {
            CallResult::Correct => {
                self.correct += 1;
                self.latencies_us.push(elapsed.as_micros() as u64);
                None
            }
            CallResult::Wrong(why) => {
                self.wrong += 1;
                self.latencies_us.push(elapsed.as_micros() as u64);
                Some(format!("wrong answer: {why}"))
            }
            CallResult::Status(status, why) => {
                *self.statuses.entry(status).or_default() += 1;
                Some(format!("HTTP {status}: {why}"))
            }
            CallResult::Transport(why) => {
                self.transport_errors += 1;
                Some(format!("transport error: {why}"))
            }
        };
        if let Some(problem) = problem {
            if self.problems.len() < KEPT_PROBLEMS {
                self.problems.push(problem);
            }
        }
    }

    fn merge(&mut self, other: ClientTally) {
        self.calls += other.calls;
        self.correct += other.correct;
        self.wrong += other.wrong;
        self.transport_errors += other.transport_errors;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.latencies_us.extend(other.latencies_us);
        for problem in other.problems {
            if self.problems.len() < KEPT_PROBLEMS {
                self.problems.push(problem);
            }
        }
    }
}

/// What every client thread needs to know.
#[derive(Clone)]
pub(crate) struct ClientPlan {
    pub(crate) base: String,
    pub(crate) prefix: String,
    pub(crate) cameras: usize,
    pub(crate) events: usize,
    pub(crate) deadline: Instant,
}

fn run_client(plan: &ClientPlan, seed: u64) -> ClientTally {
    let agent = client_agent();
    let mut rng = Rng::seeded(seed);
    let mut tally = ClientTally::default();
    while Instant::now() < plan.deadline {
        let events = EventSet { camera: rng.below(plan.cameras), count: plan.events };
        let range = random_range(&mut rng, &events);
        let started = Instant::now();
        let result = call_logs(&agent, &plan.base, &plan.prefix, &events, range, "");
        tally.add(result, started.elapsed());
    }
    tally
}

pub(crate) fn run_clients(plan: &ClientPlan, clients: usize) -> Result<ClientTally, String> {
    let mut handles: Vec<JoinHandle<ClientTally>> = Vec::with_capacity(clients);
    for n in 0..clients {
        let plan = plan.clone();
        let handle = std::thread::Builder::new()
            .name(format!("client-{n}"))
            .stack_size(CLIENT_STACK)
            .spawn(move || run_client(&plan, n as u64))
            .map_err(|e| format!("could not start client thread {n}: {e}"))?;
        handles.push(handle);
    }
    let mut total = ClientTally::default();
    for handle in handles {
        match handle.join() {
            Ok(tally) => total.merge(tally),
            Err(_) => return Err("a client thread panicked".into()),
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use camera_logs::LogEntry;

    use super::*;

    const ID: &str = "lt1-2";
    const URL: &str = "http://127.0.0.1:1/logs?cameraId=lt1-2";
    /// Camera 2's ten events; the range asked is events 3 to 6, bounds on both.
    const EVENTS: EventSet = EventSet { camera: 2, count: 10 };

    fn all() -> Vec<LogEntry> {
        EVENTS.within(None, None)
    }

    fn range() -> (Option<f64>, Option<f64>) {
        let all = all();
        (Some(all[3].timestamp), Some(all[6].timestamp))
    }

    /// The exact answer for `range()`.
    fn expected() -> Vec<LogEntry> {
        all()[3..=6].to_vec()
    }

    fn body(camera_id: &str, logs: Vec<LogEntry>) -> Vec<u8> {
        let answer = LogsResponse { camera_id: camera_id.to_string(), logs };
        serde_json::to_vec(&answer).expect("a LogsResponse encodes")
    }

    fn check(logs: Vec<LogEntry>) -> CallResult {
        check_answer(&body(ID, logs), ID, &EVENTS, range(), URL)
    }

    /// The reason of a wrong answer; panics on any other result.
    fn wrong(result: CallResult) -> String {
        match result {
            CallResult::Wrong(why) => {
                assert!(why.starts_with(&format!("GET {URL}: ")), "{why}");
                why
            }
            other => panic!("expected a wrong answer, got {other:?}"),
        }
    }

    #[test]
    fn the_exact_answer_is_correct() {
        assert!(matches!(check(expected()), CallResult::Correct));
    }

    #[test]
    fn exact_answers_to_open_and_empty_ranges_are_correct() {
        let open = check_answer(&body(ID, all()), ID, &EVENTS, (None, None), URL);
        assert!(matches!(open, CallResult::Correct), "{open:?}");
        let before_all = (None, Some(all()[0].timestamp - 1.0));
        let empty = check_answer(&body(ID, Vec::new()), ID, &EVENTS, before_all, URL);
        assert!(matches!(empty, CallResult::Correct), "{empty:?}");
    }

    #[test]
    fn a_missing_event_is_a_wrong_answer() {
        let mut logs = expected();
        logs.remove(1);
        let why = wrong(check(logs));
        assert!(why.ends_with("expected 4 event(s), got 3; first difference at index 1"), "{why}");
        let why = wrong(check(expected()[..3].to_vec()));
        assert!(why.ends_with("expected 4 event(s), got 3; first difference at index 3"), "{why}");
        let why = wrong(check(Vec::new()));
        assert!(why.contains("expected 4 event(s), got 0"), "{why}");
    }

    #[test]
    fn an_extra_event_is_a_wrong_answer() {
        // Event 7 lies just outside the range, after it; event 2 just before it.
        let mut after = expected();
        after.push(all()[7].clone());
        let why = wrong(check(after));
        assert!(why.contains("expected 4 event(s), got 5"), "{why}");
        let mut before = expected();
        before.insert(0, all()[2].clone());
        let why = wrong(check(before));
        assert!(why.ends_with("got 5; first difference at index 0"), "{why}");
        let mut twice = expected();
        twice.insert(2, twice[2].clone());
        let why = wrong(check(twice));
        assert!(why.ends_with("got 5; first difference at index 3"), "{why}");
    }

    #[test]
    fn events_in_the_wrong_order_are_a_wrong_answer() {
        let mut swapped = expected();
        swapped.swap(1, 2);
        let why = wrong(check(swapped));
        assert!(why.ends_with("expected 4 event(s), got 4; first difference at index 1"), "{why}");
        let mut reversed = expected();
        reversed.reverse();
        let why = wrong(check(reversed));
        assert!(why.ends_with("first difference at index 0"), "{why}");
    }

    #[test]
    fn another_cameras_event_is_a_wrong_answer() {
        let other = EventSet { camera: 3, count: 10 };
        // Camera 3's event 4 in place of camera 2's: timestamp 0.001 s off, other description.
        let mut logs = expected();
        logs[1] = other.within(None, None)[4].clone();
        let why = wrong(check(logs));
        assert!(why.ends_with("first difference at index 1"), "{why}");
        // Either field alone differing is enough.
        let mut same_time = expected();
        same_time[2].description = other.within(None, None)[5].description.clone();
        wrong(check(same_time));
        let mut same_text = expected();
        same_text[2].timestamp = other.within(None, None)[5].timestamp;
        wrong(check(same_text));
    }

    #[test]
    fn an_answer_naming_another_camera_is_wrong() {
        let result = check_answer(&body("lt1-3", expected()), ID, &EVENTS, range(), URL);
        let why = wrong(result);
        assert!(why.ends_with("answer names camera \"lt1-3\""), "{why}");
    }

    #[test]
    fn an_unreadable_200_is_a_wrong_answer() {
        let result = check_answer(b"{\"cameraId\":", ID, &EVENTS, range(), URL);
        assert!(wrong(result).contains("unreadable 200 body"));
        let result = check_answer(b"[]", ID, &EVENTS, range(), URL);
        assert!(wrong(result).contains("unreadable 200 body"));
    }

    #[test]
    fn a_status_other_than_200_is_an_error_by_status_even_with_a_right_body() {
        let right = body(ID, expected());
        for status in [201, 204, 404, 500, 503, 504] {
            match judge(status, &right, ID, &EVENTS, range(), URL) {
                CallResult::Status(got, why) => {
                    assert_eq!(got, status);
                    assert!(why.starts_with(&format!("GET {URL}: {{")), "{why}");
                }
                other => panic!("HTTP {status}: {other:?}"),
            }
        }
        let result = judge(200, &right, ID, &EVENTS, range(), URL);
        assert!(matches!(result, CallResult::Correct), "{result:?}");
        let mut missing = expected();
        missing.pop();
        let result = judge(200, &body(ID, missing), ID, &EVENTS, range(), URL);
        wrong(result);
    }

    #[test]
    fn the_tally_counts_each_result_in_its_own_column() {
        let mut tally = ClientTally::default();
        let ms = Duration::from_millis;
        tally.add(CallResult::Correct, ms(1));
        tally.add(CallResult::Correct, ms(2));
        tally.add(CallResult::Wrong("w".into()), ms(3));
        tally.add(CallResult::Status(503, "s".into()), ms(4));
        tally.add(CallResult::Status(503, "s".into()), ms(5));
        tally.add(CallResult::Status(404, "n".into()), ms(6));
        tally.add(CallResult::Transport("t".into()), ms(7));
        assert_eq!(tally.calls, 7);
        assert_eq!(tally.correct, 2);
        assert_eq!(tally.wrong, 1);
        assert_eq!(tally.statuses, BTreeMap::from([(404, 1), (503, 2)]));
        assert_eq!(tally.transport_errors, 1);
        // Latencies are of the 200 answers, right or wrong.
        assert_eq!(tally.latencies_us, [1000, 2000, 3000]);
        assert_eq!(
            tally.problems,
            ["wrong answer: w", "HTTP 503: s", "HTTP 503: s", "HTTP 404: n", "transport error: t"]
        );
    }

    #[test]
    fn tallies_merge_and_keep_only_the_first_problems() {
        let mut first = ClientTally::default();
        let mut second = ClientTally::default();
        for n in 0..4 {
            first.add(CallResult::Wrong(format!("first {n}")), Duration::ZERO);
            second.add(CallResult::Status(500, format!("second {n}")), Duration::ZERO);
        }
        second.add(CallResult::Correct, Duration::ZERO);
        first.merge(second);
        assert_eq!(first.calls, 9);
        assert_eq!((first.correct, first.wrong), (1, 4));
        assert_eq!(first.statuses, BTreeMap::from([(500, 4)]));
        assert_eq!(first.latencies_us.len(), 5);
        assert_eq!(first.problems.len(), KEPT_PROBLEMS);
        assert_eq!(first.problems[3], "wrong answer: first 3");
        assert_eq!(first.problems[4], "HTTP 500: second 0");
    }

    #[test]
    fn logs_urls_carry_bounds_that_parse_back_exactly() {
        let base = "http://h:1";
        assert_eq!(logs_url(base, ID, (None, None), ""), "http://h:1/logs?cameraId=lt1-2");
        assert_eq!(
            logs_url(base, ID, (Some(1.5), None), "&timeout=10"),
            "http://h:1/logs?cameraId=lt1-2&startTimestamp=1.5&timeout=10"
        );
        for entry in all() {
            let t = entry.timestamp;
            let url = logs_url(base, ID, (Some(t), Some(t.next_up())), "");
            let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
            let bounds: Vec<f64> = query
                .split('&')
                .filter_map(|pair| pair.split_once('='))
                .filter(|(name, _)| name.ends_with("Timestamp"))
                .filter_map(|(_, value)| value.parse().ok())
                .collect();
            assert_eq!(bounds, [t, t.next_up()], "{url}");
        }
    }
}
