//! The load run (the default mode): start the harness, connect every camera, run the clients
//! for `--duration`, then stop everything and report: `LoadSummary` as a table or one JSON
//! object, with the server's memory and threads when this tool started it.
//!
//! It must not check answers itself (the clients' tally says what was right) nor print progress
//! other than through the harness; the summary is its only stdout.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::clients::{run_clients, ClientPlan, ClientTally};
use crate::events::camera_prefix;
use crate::fleet::{Fleet, FleetCounts, CAMERA_STOP_GRACE};
use crate::harness::{
    kib, per_camera_kib, print_json, print_problems, progress, wait_online, Harness,
    ServerLogCounts, SETTLE,
};
use crate::options::Options;
use crate::server::{cpu_secs, SampledFigures};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LatencyMs {
    min: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn latency_ms(latencies_us: &mut [u64]) -> Option<LatencyMs> {
    if latencies_us.is_empty() {
        return None;
    }
    latencies_us.sort_unstable();
    let at = |p: f64| -> f64 {
        let rank = ((p / 100.0) * latencies_us.len() as f64).ceil() as usize;
        latencies_us[rank.clamp(1, latencies_us.len()) - 1] as f64 / 1000.0
    };
    Some(LatencyMs { min: at(0.0), p50: at(50.0), p90: at(90.0), p99: at(99.0), max: at(100.0) })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ServerFigures {
    pid: u32,
    rss_before_cameras_kib: u64,
    rss_with_cameras_kib: u64,
    rss_per_camera_kib: f64,
    peak_rss_kib: u64,
    rss_at_end_kib: u64,
    threads_with_cameras: u64,
    threads_at_end: u64,
    peak_threads: u64,
    warnings: u64,
    errors: u64,
    recent_problems: Vec<String>,
}

/// CPU seconds each side used while the clients called (user + system, from /proc), next to
/// what the machine had: the tool and the server share the cores, so a tool near saturation
/// means the figures above measure the tool as much as the server.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
struct CpuSplit {
    loadtest_secs: f64,
    /// `None` with `--target`: the server is not this tool's child.
    server_secs: Option<f64>,
    wall_secs: f64,
    cores: usize,
}

impl CpuSplit {
    /// Reads both processes' CPU times now (the wall time is filled in by [`CpuSplit::since`]).
    fn now(server: Option<u32>) -> Option<CpuSplit> {
        Some(CpuSplit {
            loadtest_secs: cpu_secs(std::process::id())?,
            server_secs: server.and_then(cpu_secs),
            wall_secs: 0.0,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    fn since(self, start: CpuSplit, wall: Duration) -> CpuSplit {
        CpuSplit {
            loadtest_secs: self.loadtest_secs - start.loadtest_secs,
            server_secs: self.server_secs.zip(start.server_secs).map(|(b, a)| b - a),
            wall_secs: wall.as_secs_f64(),
            cores: self.cores,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadSummary {
    mode: &'static str,
    server_url: String,
    server_started_by_loadtest: bool,
    cameras: usize,
    clients: usize,
    events_per_camera: usize,
    duration_secs: f64,
    elapsed_secs: f64,
    cameras_online_after_secs: f64,
    calls: u64,
    correct: u64,
    wrong_answers: u64,
    errors_by_status: BTreeMap<String, u64>,
    transport_errors: u64,
    calls_per_sec: f64,
    /// Of the 200 answers.
    latency_ms: Option<LatencyMs>,
    camera: FleetCounts,
    round_trips_per_call: Option<f64>,
    /// While the clients called.
    cpu: Option<CpuSplit>,
    server: Option<ServerFigures>,
    problems: Vec<String>,
    passed: bool,
}

pub(crate) fn run_load(options: &Options) -> Result<bool, String> {
    let mut harness = Harness::start(options)?;
    let before = harness.sample();
    let fleet = Fleet::new(harness.endpoint.clone(), camera_prefix(), options.events);
    progress(&format!(
        "connecting {} camera(s) with {} event(s) each",
        options.cameras, options.events
    ));
    let outcome = load_phase(options, &mut harness, &fleet);
    let final_sample = harness.sample();
    fleet.begin_stop();
    let logs = harness.stop_server();
    fleet.stop(CAMERA_STOP_GRACE);
    let (tally, online_after, elapsed, with_cameras, cpu) = outcome?;
    let figures = match (harness.started_pid, before, with_cameras, final_sample, logs) {
        (Some(pid), Some(before), Some(with), Some(end), Some(logs)) => {
            Some(server_figures(pid, options.cameras, [before, with, end], logs))
        }
        _ => None,
    };
    let summary = load_summary(options, &harness, &fleet, tally, online_after, elapsed, figures);
    let summary = LoadSummary { cpu, ..summary };
    print_load_summary(&summary, options.json)?;
    Ok(summary.passed)
}

type LoadOutcome = (ClientTally, Duration, Duration, Option<SampledFigures>, Option<CpuSplit>);

/// Connects the cameras, waits for them, measures, then runs the clients for the duration.
fn load_phase(
    options: &Options, harness: &mut Harness, fleet: &Arc<Fleet>,
) -> Result<LoadOutcome, String> {
    let connecting = Instant::now();
    fleet.spawn_cameras(0..options.cameras)?;
    wait_online(&harness.monitor, fleet, options.cameras, &mut harness.server)?;
    let online_after = connecting.elapsed();
    std::thread::sleep(SETTLE);
    let with_cameras = harness.sample();
    progress(&format!(
        "{} camera(s) online after {:.1} s; {} client(s) calling /logs for {:.1} s",
        options.cameras,
        online_after.as_secs_f64(),
        options.clients,
        options.duration.as_secs_f64()
    ));
    let started = Instant::now();
    let plan = ClientPlan {
        base: harness.endpoint.base.clone(),
        prefix: fleet.prefix.clone(),
        cameras: options.cameras,
        events: options.events,
        deadline: started + options.duration,
    };
    let cpu_before = CpuSplit::now(harness.started_pid);
    let tally = run_clients(&plan, options.clients)?;
    let elapsed = started.elapsed();
    let cpu = CpuSplit::now(harness.started_pid)
        .zip(cpu_before)
        .map(|(end, start)| end.since(start, elapsed));
    Ok((tally, online_after, elapsed, with_cameras, cpu))
}

fn server_figures(
    pid: u32, cameras: usize, [before, with, end]: [SampledFigures; 3], logs: ServerLogCounts,
) -> ServerFigures {
    ServerFigures {
        pid,
        rss_before_cameras_kib: before.latest.rss_kib,
        rss_with_cameras_kib: with.latest.rss_kib,
        rss_per_camera_kib: per_camera_kib(before.latest.rss_kib, with.latest.rss_kib, cameras),
        peak_rss_kib: end.latest.hwm_kib,
        rss_at_end_kib: end.latest.rss_kib,
        threads_with_cameras: with.latest.threads,
        threads_at_end: end.latest.threads,
        peak_threads: end.peak_threads,
        warnings: logs.warnings,
        errors: logs.errors,
        recent_problems: logs.recent,
    }
}

fn load_summary(
    options: &Options, harness: &Harness, fleet: &Fleet, mut tally: ClientTally,
    online_after: Duration, elapsed: Duration, server: Option<ServerFigures>,
) -> LoadSummary {
    let camera = fleet.counts();
    let errors_by_status: BTreeMap<String, u64> =
        tally.statuses.iter().map(|(status, n)| (status.to_string(), *n)).collect();
    let camera_errors = camera.poll_errors + camera.post_errors;
    let mut problems = std::mem::take(&mut tally.problems);
    if camera_errors > 0 {
        problems.push(fleet.trouble());
    }
    let answered = tally.correct + tally.wrong;
    let passed = tally.wrong == 0
        && errors_by_status.is_empty()
        && tally.transport_errors == 0
        && camera_errors == 0
        && tally.correct > 0;
    LoadSummary {
        mode: "load",
        server_url: harness.endpoint.base.clone(),
        server_started_by_loadtest: harness.started_pid.is_some(),
        cameras: options.cameras,
        clients: options.clients,
        events_per_camera: options.events,
        duration_secs: options.duration.as_secs_f64(),
        elapsed_secs: elapsed.as_secs_f64(),
        cameras_online_after_secs: online_after.as_secs_f64(),
        calls: tally.calls,
        correct: tally.correct,
        wrong_answers: tally.wrong,
        errors_by_status,
        transport_errors: tally.transport_errors,
        calls_per_sec: tally.calls as f64 / elapsed.as_secs_f64().max(1e-9),
        latency_ms: latency_ms(&mut tally.latencies_us),
        round_trips_per_call: (answered > 0).then(|| camera.round_trips as f64 / answered as f64),
        camera,
        cpu: None,
        server,
        problems,
        passed,
    }
}

fn print_load_summary(summary: &LoadSummary, json: bool) -> Result<(), String> {
    if json {
        return print_json(summary);
    }
    let mut rows: Vec<(&str, String)> = vec![
        ("server", summary.server_url.clone()),
        (
            "load",
            format!(
                "{} camera(s) x {} event(s), {} client(s), {:.1} s",
                summary.cameras, summary.events_per_camera, summary.clients, summary.duration_secs
            ),
        ),
        ("cameras online after", format!("{:.2} s", summary.cameras_online_after_secs)),
        ("calls", summary.calls.to_string()),
        ("calls/s", format!("{:.1}", summary.calls_per_sec)),
        ("correct answers", summary.correct.to_string()),
        ("wrong answers", summary.wrong_answers.to_string()),
        ("errors by status", status_list(&summary.errors_by_status)),
        ("transport errors", summary.transport_errors.to_string()),
        (
            "latency ms (200s)",
            summary
                .latency_ms
                .as_ref()
                .map(|l| {
                    format!(
                        "min {:.2}  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                        l.min, l.p50, l.p90, l.p99, l.max
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "camera round trips",
            format!(
                "{} ({} polls, {} commands)",
                summary.camera.round_trips, summary.camera.polls, summary.camera.commands
            ),
        ),
        (
            "round trips per call",
            summary.round_trips_per_call.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into()),
        ),
        (
            "camera errors",
            format!(
                "poll {}, send_logs {}, connect retries {}",
                summary.camera.poll_errors,
                summary.camera.post_errors,
                summary.camera.connect_retries
            ),
        ),
    ];
    if let Some(cpu) = summary.cpu {
        rows.push(("CPU s while calling", cpu_row(cpu)));
    }
    if let Some(server) = &summary.server {
        rows.extend(server_rows(server));
    }
    rows.push(("result", if summary.passed { "PASS" } else { "FAIL" }.to_string()));
    print_table("loadtest summary", &rows);
    print_problems(&summary.problems);
    Ok(())
}

fn server_rows(server: &ServerFigures) -> Vec<(&'static str, String)> {
    vec![
        (
            "server RSS",
            format!(
                "{} before cameras, {} with cameras, {} at end",
                kib(server.rss_before_cameras_kib),
                kib(server.rss_with_cameras_kib),
                kib(server.rss_at_end_kib)
            ),
        ),
        ("server RSS per camera", format!("{:.1} KiB", server.rss_per_camera_kib)),
        ("server peak RSS (VmHWM)", kib(server.peak_rss_kib)),
        (
            "server threads",
            format!(
                "{} with cameras, {} at end, {} peak",
                server.threads_with_cameras, server.threads_at_end, server.peak_threads
            ),
        ),
        ("server log", format!("{} WARN, {} ERROR", server.warnings, server.errors)),
    ]
}

fn cpu_row(cpu: CpuSplit) -> String {
    let available = cpu.wall_secs * cpu.cores as f64;
    let share = |secs: f64| 100.0 * secs / available.max(1e-9);
    let server = cpu
        .server_secs
        .map_or("server -".to_string(), |secs| format!("server {secs:.1} ({:.0} %)", share(secs)));
    format!(
        "loadtest {:.1} ({:.0} %), {server}, of {available:.1} ({} cores x {:.1} s)",
        cpu.loadtest_secs,
        share(cpu.loadtest_secs),
        cpu.cores,
        cpu.wall_secs
    )
}

fn status_list(statuses: &BTreeMap<String, u64>) -> String {
    if statuses.is_empty() {
        return "none".into();
    }
    statuses.iter().map(|(status, n)| format!("{status}: {n}")).collect::<Vec<String>>().join(", ")
}

fn print_table(title: &str, rows: &[(&str, String)]) {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!("{title}");
    for (name, value) in rows {
        println!("  {name:<width$}  {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_are_nearest_rank() {
        assert!(latency_ms(&mut []).is_none());
        // 1..=100 ms, shuffled.
        let mut us: Vec<u64> = (1..=100).map(|ms| (ms * 37 % 101) * 1000).collect();
        let l = latency_ms(&mut us).unwrap_or_else(|| panic!("no latencies"));
        assert_eq!((l.min, l.p50, l.p90, l.p99, l.max), (1.0, 50.0, 90.0, 99.0, 100.0));
        let l = latency_ms(&mut [2500]).unwrap_or_else(|| panic!("no latencies"));
        assert_eq!((l.min, l.p50, l.max), (2.5, 2.5, 2.5));
    }

    #[test]
    fn status_lists_and_sizes_read_as_in_the_table() {
        assert_eq!(status_list(&BTreeMap::new()), "none");
        let statuses = BTreeMap::from([("503".to_string(), 4), ("404".to_string(), 1)]);
        assert_eq!(status_list(&statuses), "404: 1, 503: 4");
        assert_eq!(kib(10 * 1024 - 1), "10239 KiB");
        assert_eq!(kib(10 * 1024), "10.0 MiB");
        assert_eq!(per_camera_kib(3000, 3500, 4), 125.0);
        assert_eq!(per_camera_kib(3000, 2900, 0), -100.0);
    }
}
