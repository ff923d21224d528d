//! The idle-scale ramp (`--idle-ramp`): cameras added in steps of `--step` up to `--cameras`,
//! after each step a wait for them to be online and holding polls, the server's memory and
//! threads, and one checked `/logs` probe; it stops at the target or the first failure.
//!
//! It must not run the load clients; one probe per step is its only `/logs` traffic.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::clients::{call_logs, client_agent, CallResult};
use crate::events::{camera_prefix, random_range, EventSet, Rng};
use crate::fleet::{Fleet, CAMERA_STOP_GRACE};
use crate::harness::{
    kib, per_camera_kib, print_json, print_problems, wait_online, wait_open_polls, Harness, SETTLE,
};
use crate::options::Options;
use crate::server::SampledFigures;

/// The `timeout` of each probe's `/logs` call, in seconds.
const PROBE_TIMEOUT_SECS: u64 = 10;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RampStep {
    cameras: usize,
    online_after_secs: f64,
    rss_kib: Option<u64>,
    rss_per_camera_kib: Option<f64>,
    threads: Option<u64>,
    open_polls: Option<u64>,
    probe_ms: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RampSummary {
    mode: &'static str,
    server_url: String,
    server_started_by_loadtest: bool,
    target_cameras: usize,
    step: usize,
    events_per_camera: usize,
    rss_before_cameras_kib: Option<u64>,
    steps: Vec<RampStep>,
    cameras_held: usize,
    reached_target: bool,
    stopped_because: String,
    peak_rss_kib: Option<u64>,
    peak_threads: Option<u64>,
    server_warnings: Option<u64>,
    server_errors: Option<u64>,
    recent_server_problems: Vec<String>,
}

pub(crate) fn run_idle_ramp(options: &Options) -> Result<bool, String> {
    let mut harness = Harness::start(options)?;
    let before = harness.sample();
    let fleet = Fleet::new(harness.endpoint.clone(), camera_prefix(), options.events);
    if !options.json {
        println!(
            "idle ramp against {}: steps of {} up to {} camera(s)",
            harness.describe(),
            options.step,
            options.cameras
        );
        println!(
            "  {:>8}  {:>9}  {:>11}  {:>11}  {:>8}  {:>10}  {:>9}",
            "cameras", "online in", "server RSS", "RSS/camera", "threads", "open polls", "probe"
        );
    }
    let mut rng = Rng::seeded(u64::MAX);
    let mut steps: Vec<RampStep> = Vec::new();
    let mut held = 0usize;
    let stopped_because = loop {
        if held >= options.cameras {
            break format!("reached the target of {} camera(s)", options.cameras);
        }
        let next = (held + options.step).min(options.cameras);
        match ramp_step(options, &mut harness, &fleet, held..next, &mut rng, before) {
            Ok(step) => {
                if !options.json {
                    print_ramp_row(&step);
                }
                steps.push(step);
                held = next;
            }
            Err(why) => {
                break format!("stopped with {held} camera(s) held, adding up to {next}: {why}")
            }
        }
    };
    let end = harness.sample();
    fleet.begin_stop();
    let logs = harness.stop_server();
    fleet.stop(CAMERA_STOP_GRACE);
    let summary = RampSummary {
        mode: "idle-ramp",
        server_url: harness.endpoint.base.clone(),
        server_started_by_loadtest: harness.started_pid.is_some(),
        target_cameras: options.cameras,
        step: options.step,
        events_per_camera: options.events,
        rss_before_cameras_kib: before.map(|b| b.latest.rss_kib),
        reached_target: held >= options.cameras,
        cameras_held: held,
        steps,
        stopped_because,
        peak_rss_kib: end.map(|e| e.latest.hwm_kib),
        peak_threads: end.map(|e| e.peak_threads),
        server_warnings: logs.as_ref().map(|l| l.warnings),
        server_errors: logs.as_ref().map(|l| l.errors),
        recent_server_problems: logs.map(|l| l.recent).unwrap_or_default(),
    };
    if options.json {
        print_json(&summary)?;
    } else {
        print_ramp_end(&summary);
    }
    Ok(summary.reached_target)
}

/// Adds cameras `indices`, waits for them, measures the server and checks one `/logs` call.
fn ramp_step(
    options: &Options, harness: &mut Harness, fleet: &Arc<Fleet>, indices: Range<usize>,
    rng: &mut Rng, before: Option<SampledFigures>,
) -> Result<RampStep, String> {
    let held = indices.end;
    let connecting = Instant::now();
    fleet.spawn_cameras(indices)?;
    wait_online(&harness.monitor, fleet, held, &mut harness.server)?;
    wait_open_polls(&harness.monitor, fleet, held, &mut harness.server)?;
    let online_after = connecting.elapsed();
    let counts = fleet.counts();
    if counts.poll_errors + counts.post_errors > 0 {
        return Err(format!("camera errors: {}", fleet.trouble()));
    }
    std::thread::sleep(SETTLE);
    let sample = harness.sample();
    let probe_ms = probe(harness, fleet, held, options.events, rng)?;
    Ok(RampStep {
        cameras: held,
        online_after_secs: online_after.as_secs_f64(),
        rss_kib: sample.map(|s| s.latest.rss_kib),
        rss_per_camera_kib: before
            .zip(sample)
            .map(|(b, s)| per_camera_kib(b.latest.rss_kib, s.latest.rss_kib, held)),
        threads: sample.map(|s| s.latest.threads),
        open_polls: harness.monitor.open_polls(),
        probe_ms,
    })
}

/// One checked `/logs` call to a random connected camera; its latency in ms.
fn probe(
    harness: &Harness, fleet: &Fleet, held: usize, events: usize, rng: &mut Rng,
) -> Result<f64, String> {
    let events = EventSet { camera: rng.below(held), count: events };
    let range = random_range(rng, &events);
    let started = Instant::now();
    let result = call_logs(
        &client_agent(),
        &harness.endpoint.base,
        &fleet.prefix,
        &events,
        range,
        &format!("&timeout={PROBE_TIMEOUT_SECS}"),
    );
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        CallResult::Correct => Ok(elapsed_ms),
        CallResult::Wrong(why) => Err(format!("/logs wrong answer: {why}")),
        CallResult::Status(status, why) => Err(format!("/logs error: HTTP {status}: {why}")),
        CallResult::Transport(why) => Err(format!("/logs transport error: {why}")),
    }
}

fn print_ramp_row(step: &RampStep) {
    let dash = || "-".to_string();
    println!(
        "  {:>8}  {:>9}  {:>11}  {:>11}  {:>8}  {:>10}  {:>9}",
        step.cameras,
        format!("{:.1} s", step.online_after_secs),
        step.rss_kib.map(kib).unwrap_or_else(dash),
        step.rss_per_camera_kib.map(|r| format!("{r:.1} KiB")).unwrap_or_else(dash),
        step.threads.map(|t| t.to_string()).unwrap_or_else(dash),
        step.open_polls.map(|p| p.to_string()).unwrap_or_else(dash),
        format!("{:.1} ms", step.probe_ms),
    );
}

fn print_ramp_end(summary: &RampSummary) {
    println!("{}", summary.stopped_because);
    if let (Some(peak_rss), Some(peak_threads)) = (summary.peak_rss_kib, summary.peak_threads) {
        println!(
            "server peak RSS (VmHWM) {}, peak threads {}, log {} WARN / {} ERROR",
            kib(peak_rss),
            peak_threads,
            summary.server_warnings.unwrap_or(0),
            summary.server_errors.unwrap_or(0)
        );
    }
    print_problems(&summary.recent_server_problems);
}
