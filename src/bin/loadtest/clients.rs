//! The `/logs` clients: one checked call (`call_logs`, judged by `check_answer` against the
//! oracle's exact expected subset), what a client thread saw (`ClientTally`), and running the
//! client threads until the deadline (`run_clients`).
//!
//! It must not start or stop cameras or the server, nor print: the scenarios report the tally.

use std::collections::BTreeMap;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use camera_logs::protocol::LogsResponse;

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

pub(crate) fn client_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(CLIENT_TIMEOUT))
            .http_status_as_error(false)
            .max_idle_age(CLIENT_MAX_IDLE)
            .build(),
    )
}

fn logs_url(
    base: &str,
    camera: &str,
    (start, end): (Option<f64>, Option<f64>),
    extra: &str,
) -> String {
    // `{}` of an f64 is the shortest text that parses back to the same number.
    let start = start
        .map(|s| format!("&startTimestamp={s}"))
        .unwrap_or_default();
    let end = end
        .map(|e| format!("&endTimestamp={e}"))
        .unwrap_or_default();
    format!("{base}/logs?cameraId={camera}{start}{end}{extra}")
}

/// Calls `GET /logs` once and checks a 200 against the exact events expected.
pub(crate) fn call_logs(
    agent: &ureq::Agent,
    base: &str,
    prefix: &str,
    events: &EventSet,
    range: (Option<f64>, Option<f64>),
    extra: &str,
) -> CallResult {
    let id = camera_id(prefix, events.camera);
    let url = logs_url(base, &id, range, extra);
    let mut response = match agent.get(&url).call() {
        Ok(response) => response,
        Err(e) => return CallResult::Transport(format!("GET {url}: {e}")),
    };
    let status = response.status().as_u16();
    let body = match response
        .body_mut()
        .with_config()
        .limit(MAX_BODY as u64)
        .read_to_vec()
    {
        Ok(body) => body,
        Err(e) => return CallResult::Transport(format!("GET {url}: reading the body: {e}")),
    };
    judge(status, &body, &id, events, range, &url)
}

/// What one `/logs` response amounts to: any status but 200 is an error by status; a 200 is
/// checked against the events expected.
fn judge(
    status: u16,
    body: &[u8],
    id: &str,
    events: &EventSet,
    range: (Option<f64>, Option<f64>),
    url: &str,
) -> CallResult {
    if status != 200 {
        return CallResult::Status(status, format!("GET {url}: {}", body_excerpt(body)));
    }
    check_answer(body, id, events, range, url)
}

fn check_answer(
    body: &[u8],
    id: &str,
    events: &EventSet,
    (start, end): (Option<f64>, Option<f64>),
    url: &str,
) -> CallResult {
    let answer: LogsResponse = match serde_json::from_slice(body) {
        Ok(answer) => answer,
        Err(e) => return CallResult::Wrong(format!("GET {url}: unreadable 200 body: {e}")),
    };
    if answer.camera_id != id {
        return CallResult::Wrong(format!(
            "GET {url}: answer names camera {:?}",
            answer.camera_id
        ));
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
        let events = EventSet {
            camera: rng.below(plan.cameras),
            count: plan.events,
        };
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
