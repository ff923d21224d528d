//! The registry's unit tests: matching, sharing, re-sending and withdrawal, driven directly
//! without HTTP.

use super::*;
use std::thread;

fn registry() -> Arc<Registry> {
    crate::log::set_enabled(false);
    Arc::new(Registry::new(RegistryConfig {
        poll_hold: Duration::from_millis(200),
        ack_timeout: Duration::from_millis(300),
        camera_grace: Duration::from_secs(5),
        max_waiting_per_camera: 3,
        camera_forget: Duration::from_secs(3600),
        max_cameras: 100,
        arrival_window: Duration::ZERO,
    }))
}

fn entry(timestamp: f64) -> LogEntry {
    LogEntry {
        timestamp,
        description: format!("e{timestamp}"),
    }
}

fn answer(id: &str, logs: Vec<LogEntry>) -> SendLogsBody {
    SendLogsBody {
        request_id: Some(id.to_string()),
        logs,
    }
}

fn poll_until_command(registry: &Registry, camera: &str) -> (String, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Command::SendLogs {
            request_id,
            start_timestamp,
            end_timestamp,
        } = registry.poll(camera).unwrap()
        {
            return (request_id, start_timestamp, end_timestamp);
        }
    }
    panic!("no command within 20 s");
}

fn spawn_fetch(
    registry: &Arc<Registry>,
    range: TimeRange,
) -> thread::JoinHandle<Result<Vec<LogEntry>, ApiError>> {
    let registry = Arc::clone(registry);
    thread::spawn(move || {
        registry
            .fetch_logs("cam", range, Duration::from_secs(20))
            .map(|s| s.entries().to_vec())
    })
}

fn wait_for_waiting(registry: &Registry, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while registry.stats().waiting_requests != n {
        assert!(Instant::now() < deadline, "never saw {n} waiting");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_fresh_instance_waits_for_an_unknown_camera_to_arrive() {
    let registry = Arc::new(Registry::new(RegistryConfig {
        arrival_window: Duration::from_secs(20),
        ..*registry().config()
    }));
    let fetch = spawn_fetch(&registry, TimeRange::ALL);
    let deadline = Instant::now() + Duration::from_secs(20);
    while registry.stats().awaiting_arrival != 1 {
        assert!(
            Instant::now() < deadline,
            "the call never waited for the camera"
        );
        thread::sleep(Duration::from_millis(5));
    }
    // Its first poll carries the waiting call's command.
    let (id, ..) = poll_until_command(&registry, "cam");
    registry
        .complete("cam", answer(&id, vec![entry(1.0)]))
        .unwrap();
    assert_eq!(fetch.join().unwrap().unwrap(), vec![entry(1.0)]);
    assert_eq!(registry.stats().awaiting_arrival, 0);

    // A camera that never comes: 404 when the window ends, or 504 when the call's own
    // timeout comes first.
    let short = Registry::new(RegistryConfig {
        arrival_window: Duration::from_millis(300),
        ..*registry.config()
    });
    let started = Instant::now();
    let err = short
        .fetch_logs("nobody", TimeRange::ALL, Duration::from_secs(10))
        .unwrap_err();
    assert_eq!(err.status(), 404, "{err}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let err = registry
        .fetch_logs("nobody", TimeRange::ALL, Duration::from_millis(100))
        .unwrap_err();
    assert_eq!(err.status(), 504, "{err}");
    // Past the window: at once.
    let started = Instant::now();
    let err = short
        .fetch_logs("nobody", TimeRange::ALL, Duration::from_secs(10))
        .unwrap_err();
    assert_eq!(err.status(), 404, "{err}");
    assert!(started.elapsed() < Duration::from_millis(200));
    // Shutdown wakes a waiting call.
    let waiting = {
        let registry = Arc::clone(&registry);
        thread::spawn(move || registry.fetch_logs("late", TimeRange::ALL, Duration::from_secs(20)))
    };
    while registry.stats().awaiting_arrival != 1 {
        assert!(
            Instant::now() < deadline,
            "the call never waited for the camera"
        );
        thread::sleep(Duration::from_millis(5));
    }
    registry.shutdown();
    assert_eq!(waiting.join().unwrap().unwrap_err(), ApiError::ShuttingDown);
}

#[test]
fn unknown_camera_is_404_and_offline_camera_is_503() {
    let registry = registry();
    let err = registry
        .fetch_logs("nobody", TimeRange::ALL, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(err.status(), 404);

    let short = Registry::new(RegistryConfig {
        camera_grace: Duration::from_millis(1),
        ..*registry.config()
    });
    short.poll("cam").unwrap();
    thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    let err = short
        .fetch_logs("cam", TimeRange::ALL, Duration::from_secs(10))
        .unwrap_err();
    assert_eq!(err.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 comes at once"
    );
}

#[test]
fn callers_arriving_during_a_command_share_the_next_one() {
    let registry = registry();
    registry.poll("cam").unwrap(); // registers the camera
    let first = spawn_fetch(&registry, TimeRange::new(Some(2.0), Some(3.0)));
    let (id1, start, end) = poll_until_command(&registry, "cam");
    assert_eq!((start, end), (2.0, 3.0));

    // Two callers arrive while command 1 is out: they must not get its answer.
    let second = spawn_fetch(&registry, TimeRange::new(Some(1.0), Some(1.0)));
    let third = spawn_fetch(&registry, TimeRange::new(Some(4.0), None));
    wait_for_waiting(&registry, 3);
    let all: Vec<LogEntry> = [1.0, 2.0, 3.0, 4.0, 5.0].map(entry).to_vec();
    registry.complete("cam", answer(&id1, all.clone())).unwrap();
    assert_eq!(first.join().unwrap().unwrap(), vec![entry(2.0), entry(3.0)]);

    let (id2, start, end) = poll_until_command(&registry, "cam");
    assert_ne!(id1, id2);
    assert_eq!((start, end), (1.0, f64::MAX), "the union of both ranges");
    let reply = registry.complete("cam", answer(&id2, all)).unwrap();
    assert!(matches!(reply, Completion::Delivered { callers: 2, .. }));
    assert_eq!(second.join().unwrap().unwrap(), vec![entry(1.0)]);
    assert_eq!(third.join().unwrap().unwrap(), vec![entry(4.0), entry(5.0)]);
    assert_eq!(registry.stats().waiting_requests, 0);
}

#[test]
fn duplicate_and_foreign_answers() {
    let registry = registry();
    registry.poll("cam").unwrap();
    registry.poll("other").unwrap();
    let caller = spawn_fetch(&registry, TimeRange::ALL);
    let (id, _, _) = poll_until_command(&registry, "cam");
    let err = registry.complete("other", answer(&id, vec![])).unwrap_err();
    assert_eq!(err.status(), 404, "a request id is bound to its camera");
    registry
        .complete("cam", answer(&id, vec![entry(1.0)]))
        .unwrap();
    assert_eq!(
        registry.complete("cam", answer(&id, vec![])).unwrap(),
        Completion::Duplicate {
            request_id: id.clone()
        }
    );
    assert_eq!(
        registry
            .complete("cam", answer("nope", vec![]))
            .unwrap_err()
            .status(),
        404
    );
    assert_eq!(caller.join().unwrap().unwrap(), vec![entry(1.0)]);
}

#[test]
fn unanswered_command_is_sent_again_with_the_same_id() {
    let registry = registry();
    registry.poll("cam").unwrap();
    let caller = spawn_fetch(&registry, TimeRange::ALL);
    let (id, _, _) = poll_until_command(&registry, "cam"); // this "poll" dies: no answer
    thread::sleep(registry.config().ack_timeout);
    registry.tick();
    let (again, _, _) = poll_until_command(&registry, "cam");
    assert_eq!(id, again);
    registry
        .complete("cam", answer(&again, vec![entry(7.0)]))
        .unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), vec![entry(7.0)]);
}

#[test]
fn a_caller_that_times_out_leaves_nothing_behind() {
    let registry = registry();
    registry.poll("cam").unwrap();
    let err = registry
        .fetch_logs("cam", TimeRange::ALL, Duration::from_millis(50))
        .unwrap_err();
    assert_eq!(err.status(), 504);
    let stats = registry.stats();
    assert_eq!((stats.waiting_requests, stats.commands_in_flight), (0, 0));
    // The command queued for it is stale: a poll skips it and answers noop.
    assert_eq!(registry.poll("cam").unwrap(), Command::Noop);
    assert_eq!(registry.stats().queued_dispatches, 0);
}

#[test]
fn waiting_calls_are_bounded() {
    let registry = registry();
    registry.poll("cam").unwrap();
    let callers: Vec<_> = (0..3)
        .map(|_| spawn_fetch(&registry, TimeRange::ALL))
        .collect();
    wait_for_waiting(&registry, 3);
    let err = registry
        .fetch_logs("cam", TimeRange::ALL, Duration::from_secs(1))
        .unwrap_err();
    assert_eq!(err.status(), 429);
    registry.shutdown();
    for caller in callers {
        assert_eq!(caller.join().unwrap().unwrap_err().status(), 503);
    }
}

#[test]
fn request_ids_are_long_and_distinct() {
    let registry = registry();
    let ids: std::collections::HashSet<String> = (0..1000).map(|_| registry.ids.next()).collect();
    assert_eq!(ids.len(), 1000);
    assert!(ids.iter().all(|id| id.len() == 32));
}
