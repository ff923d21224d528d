//! The registry's unit tests: matching, sharing, re-sending, withdrawal, and which process and
//! which poll a command goes to, driven directly without HTTP.

use super::*;
use crate::protocol::LogEntry;
use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::thread;

fn config() -> ServerConfig {
    crate::log::set_level(crate::log::Level::Off);
    ServerConfig {
        poll_hold: Duration::from_millis(200),
        ack_timeout: Duration::from_millis(300),
        max_waiting_per_camera: 3,
        camera_arrival: Duration::ZERO,
        ..ServerConfig::default()
    }
}

/// A registry where every peer counts as connected, unless `gone` says otherwise.
fn registry_with(config: ServerConfig, gone: Arc<AtomicBool>) -> Arc<Registry> {
    let alive = Box::new(move || gone.load(Ordering::SeqCst).then(Arc::default));
    Arc::new(Registry::new(&config, Arc::new(Metrics::new()), alive))
}

fn registry() -> Arc<Registry> {
    registry_with(config(), Arc::default())
}

fn entry(timestamp: f64) -> LogEntry {
    LogEntry { timestamp, description: format!("e{timestamp}") }
}

fn answer(id: &str, logs: Vec<LogEntry>) -> Received<'static> {
    let owned =
        |e: LogEntry| answer::Event { timestamp: e.timestamp, description: e.description.into() };
    Received {
        request_id: Some(id.to_string().into()),
        logs: logs.into_iter().map(owned).collect(),
    }
}

fn anonymous() -> PollFrom {
    PollFrom::default()
}

fn process(instance: &str, port: u16) -> PollFrom {
    PollFrom {
        instance: Some(instance.into()),
        peer: Some(SocketAddr::from(([127, 0, 0, 1], port))),
    }
}

fn poll_until_command(registry: &Registry, camera: &str) -> (String, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Command::SendLogs { request_id, start_timestamp, end_timestamp } =
            registry.poll(camera, &anonymous()).unwrap()
        {
            return (request_id, start_timestamp, end_timestamp);
        }
    }
    panic!("no command within 20 s");
}

fn spawn_fetch(
    registry: &Arc<Registry>, range: TimeRange,
) -> thread::JoinHandle<Result<Vec<LogEntry>, ApiError>> {
    let registry = Arc::clone(registry);
    thread::spawn(move || {
        registry.fetch_logs("cam", range, Duration::from_secs(20)).map(|s| s.entries())
    })
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "never saw {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_fresh_instance_waits_for_an_unknown_camera_to_arrive() {
    let registry = registry_with(
        ServerConfig { camera_arrival: Duration::from_secs(20), ..config() },
        Arc::default(),
    );
    let fetch = spawn_fetch(&registry, TimeRange::ALL);
    wait_until("the call waiting for the camera", || registry.stats().awaiting_arrival == 1);
    // Its first poll carries the waiting call's command.
    let (id, ..) = poll_until_command(&registry, "cam");
    registry.complete("cam", None, answer(&id, vec![entry(1.0)])).unwrap();
    assert_eq!(fetch.join().unwrap().unwrap(), vec![entry(1.0)]);
    assert_eq!(registry.stats().awaiting_arrival, 0);

    // A camera that never comes: 404 naming the wait when the window or the call ends first.
    let short = registry_with(
        ServerConfig { camera_arrival: Duration::from_millis(300), ..config() },
        Arc::default(),
    );
    let started = Instant::now();
    let err = short.fetch_logs("nobody", TimeRange::ALL, Duration::from_secs(10)).unwrap_err();
    assert_eq!(err.status(), 404, "{err}");
    assert!(err.to_string().contains("has not polled this instance since it started"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    let err =
        registry.fetch_logs("nobody", TimeRange::ALL, Duration::from_millis(100)).unwrap_err();
    assert_eq!(err.status(), 404, "{err}");
    // Past the window: at once.
    let started = Instant::now();
    let err = short.fetch_logs("nobody", TimeRange::ALL, Duration::from_secs(10)).unwrap_err();
    assert_eq!(err.status(), 404, "{err}");
    assert!(started.elapsed() < Duration::from_millis(200));
    // Shutdown wakes a waiting call.
    let waiting = {
        let registry = Arc::clone(&registry);
        thread::spawn(move || registry.fetch_logs("late", TimeRange::ALL, Duration::from_secs(20)))
    };
    wait_until("the call waiting for 'late'", || registry.stats().awaiting_arrival == 1);
    registry.shutdown();
    assert_eq!(waiting.join().unwrap().unwrap_err(), ApiError::ShuttingDown);
}

#[test]
fn unknown_camera_is_404_and_offline_camera_is_503() {
    let registry = registry();
    let err = registry.fetch_logs("nobody", TimeRange::ALL, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.status(), 404);
    assert!(err.to_string().contains("has never polled this server"), "{err}");

    let short = registry_with(
        ServerConfig { camera_grace: Duration::from_millis(1), ..config() },
        Arc::default(),
    );
    short.poll("cam", &anonymous()).unwrap();
    thread::sleep(Duration::from_millis(20));
    let started = Instant::now();
    let err = short.fetch_logs("cam", TimeRange::ALL, Duration::from_secs(10)).unwrap_err();
    assert_eq!(err.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "503 comes at once");
}

#[test]
fn callers_arriving_during_a_command_share_the_next_one() {
    let registry = registry();
    registry.poll("cam", &anonymous()).unwrap(); // registers the camera
    let first = spawn_fetch(&registry, TimeRange::new(Some(2.0), Some(3.0)));
    let (id1, start, end) = poll_until_command(&registry, "cam");
    assert_eq!((start, end), (2.0, 3.0));

    // Two callers arrive while command 1 is out: they must not get its answer.
    let second = spawn_fetch(&registry, TimeRange::new(Some(1.0), Some(1.0)));
    let third = spawn_fetch(&registry, TimeRange::new(Some(4.0), None));
    wait_until("3 waiting", || registry.stats().waiting_requests == 3);
    let all: Vec<LogEntry> = [1.0, 2.0, 3.0, 4.0, 5.0].map(entry).to_vec();
    registry.complete("cam", None, answer(&id1, all.clone())).unwrap();
    assert_eq!(first.join().unwrap().unwrap(), vec![entry(2.0), entry(3.0)]);

    let (id2, start, end) = poll_until_command(&registry, "cam");
    assert_ne!(id1, id2);
    assert_eq!((start, end), (1.0, f64::MAX), "the union of both ranges");
    registry.complete("cam", None, answer(&id2, all)).unwrap();
    assert_eq!(second.join().unwrap().unwrap(), vec![entry(1.0)]);
    assert_eq!(third.join().unwrap().unwrap(), vec![entry(4.0), entry(5.0)]);
    assert_eq!(registry.stats().waiting_requests, 0);
}

#[test]
fn duplicate_and_foreign_answers() {
    let registry = registry();
    registry.poll("cam", &anonymous()).unwrap();
    registry.poll("other", &anonymous()).unwrap();
    let caller = spawn_fetch(&registry, TimeRange::ALL);
    let (id, _, _) = poll_until_command(&registry, "cam");
    let err = registry.complete("other", None, answer(&id, vec![])).unwrap_err();
    assert_eq!(err.status(), 404, "a request id is bound to its camera");
    registry.complete("cam", None, answer(&id, vec![entry(1.0)])).unwrap();
    registry
        .complete("cam", None, answer(&id, vec![]))
        .expect("a repeated answer is a harmless 200");
    let err = registry.complete("cam", None, answer("nope", vec![])).unwrap_err();
    assert_eq!(err.status(), 404);
    assert_eq!(caller.join().unwrap().unwrap(), vec![entry(1.0)]);
}

#[test]
fn unanswered_command_is_sent_again_with_the_same_id() {
    let registry = registry();
    registry.poll("cam", &anonymous()).unwrap();
    let caller = spawn_fetch(&registry, TimeRange::ALL);
    let (id, _, _) = poll_until_command(&registry, "cam"); // this "poll" dies: no answer
    thread::sleep(Duration::from_millis(300));
    registry.tick();
    let (again, _, _) = poll_until_command(&registry, "cam");
    assert_eq!(id, again);
    registry.complete("cam", None, answer(&again, vec![entry(7.0)])).unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), vec![entry(7.0)]);
}

#[test]
fn a_caller_that_times_out_leaves_nothing_behind() {
    let registry = registry();
    registry.poll("cam", &anonymous()).unwrap();
    let err = registry.fetch_logs("cam", TimeRange::ALL, Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.status(), 504);
    let stats = registry.stats();
    assert_eq!((stats.waiting_requests, stats.commands_in_flight), (0, 0));
    // Nothing is left for a poll: it is held to its end and answered noop.
    assert_eq!(registry.poll("cam", &anonymous()).unwrap(), Command::Noop);
}

#[test]
fn waiting_calls_are_bounded() {
    let registry = registry();
    registry.poll("cam", &anonymous()).unwrap();
    let callers: Vec<_> = (0..3).map(|_| spawn_fetch(&registry, TimeRange::ALL)).collect();
    wait_until("3 waiting", || registry.stats().waiting_requests == 3);
    let err = registry.fetch_logs("cam", TimeRange::ALL, Duration::from_secs(1)).unwrap_err();
    assert_eq!(err.status(), 429);
    registry.shutdown();
    for caller in callers {
        assert_eq!(caller.join().unwrap().unwrap_err().status(), 503);
    }
}

#[test]
fn request_ids_are_long_and_distinct() {
    let registry = registry();
    let ids: std::collections::HashSet<String> =
        (0..1000).map(|_| registry.request_id().to_string()).collect();
    assert_eq!(ids.len(), 1000);
    assert!(ids.iter().all(|id| id.len() == 32));
}

/// Holds a poll of `from` for `camera` on its own thread (hold: 5 s).
fn spawn_poll(
    registry: &Arc<Registry>, camera: &'static str, from: PollFrom,
) -> thread::JoinHandle<Result<Command, ApiError>> {
    let registry = Arc::clone(registry);
    thread::spawn(move || registry.poll(camera, &from))
}

fn slow_config() -> ServerConfig {
    ServerConfig { poll_hold: Duration::from_secs(5), ..config() }
}

#[test]
fn a_command_goes_to_the_newest_poll_and_a_newer_poll_of_a_process_ends_the_older() {
    let registry = registry_with(slow_config(), Arc::default());
    let old = spawn_poll(&registry, "cam", process("a", 1000));
    wait_until("the first poll held", || registry.stats().open_polls == 1);
    let new = spawn_poll(&registry, "cam", process("a", 1001));
    let started = Instant::now();
    assert_eq!(old.join().unwrap().unwrap(), Command::Noop, "the older poll ends at once");
    assert!(started.elapsed() < Duration::from_secs(2));
    let caller = spawn_fetch(&registry, TimeRange::ALL);
    let Command::SendLogs { request_id, .. } = new.join().unwrap().unwrap() else {
        panic!("the newest poll carries the command");
    };
    registry.complete("cam", Some("a"), answer(&request_id, vec![entry(1.0)])).unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), vec![entry(1.0)]);

    // Without identity, a second live poll is not ended, but the command still goes to it.
    let older = spawn_poll(&registry, "anon", anonymous());
    wait_until("the anonymous poll held", || registry.stats().open_polls == 1);
    let newer = spawn_poll(&registry, "anon", anonymous());
    wait_until("two anonymous polls held", || registry.stats().open_polls == 2);
    let registry2 = Arc::clone(&registry);
    let caller = thread::spawn(move || {
        registry2.fetch_logs("anon", TimeRange::ALL, Duration::from_secs(20))
    });
    let Command::SendLogs { request_id, .. } = newer.join().unwrap().unwrap() else {
        panic!("the newest anonymous poll carries the command");
    };
    registry.complete("anon", None, answer(&request_id, vec![])).unwrap();
    assert!(caller.join().unwrap().is_ok());
    assert_eq!(older.join().unwrap().unwrap(), Command::Noop, "held to its end");
}

#[test]
fn a_second_process_is_refused_while_the_first_polls_and_takes_over_once_it_is_gone() {
    let gone = Arc::new(AtomicBool::new(false));
    let registry = registry_with(slow_config(), Arc::clone(&gone));
    let first = spawn_poll(&registry, "cam", process("a", 1000));
    wait_until("the first poll held", || registry.stats().open_polls == 1);
    let err = registry.poll("cam", &process("b", 2000)).unwrap_err();
    assert_eq!(err.status(), 409, "{err}");
    assert!(err
        .to_string()
        .contains("camera 'cam' is already polling from another running process"));
    let err = registry.complete("cam", Some("b"), answer("x", vec![])).unwrap_err();
    assert_eq!(err.status(), 409, "an answer from the second process is refused too");

    // The first process's connection is gone: the second takes over at once.
    gone.store(true, Ordering::SeqCst);
    let second = spawn_poll(&registry, "cam", process("b", 2001));
    assert_eq!(first.join().unwrap().unwrap(), Command::Noop, "the dead poll is ended");
    gone.store(false, Ordering::SeqCst);
    let caller = spawn_fetch(&registry, TimeRange::ALL);
    let Command::SendLogs { request_id, .. } = second.join().unwrap().unwrap() else {
        panic!("the new process gets the command");
    };
    registry.complete("cam", Some("b"), answer(&request_id, vec![entry(2.0)])).unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), vec![entry(2.0)]);
    // The first process, back between polls, is now the one refused.
    assert_eq!(registry.poll("cam", &process("a", 1002)).unwrap_err().status(), 409);
}

#[test]
fn a_holder_between_a_command_and_its_next_poll_keeps_its_id() {
    let registry = registry_with(slow_config(), Arc::default());
    let first = spawn_poll(&registry, "cam", process("a", 1000));
    wait_until("the first poll held", || registry.stats().open_polls == 1);
    let caller = spawn_fetch(&registry, TimeRange::ALL);
    let Command::SendLogs { request_id, .. } = first.join().unwrap().unwrap() else {
        panic!("the holder gets the command");
    };
    // Its answer is still on the way and its next poll not yet in: it is alive all the same.
    assert_eq!(registry.poll("cam", &process("b", 2000)).unwrap_err().status(), 409);
    registry.complete("cam", Some("a"), answer(&request_id, vec![entry(1.0)])).unwrap();
    assert_eq!(caller.join().unwrap().unwrap(), vec![entry(1.0)]);
}

#[test]
fn polls_whose_client_left_are_released() {
    let registry = registry_with(slow_config(), Arc::default());
    let poll = spawn_poll(&registry, "cam", process("a", 1000));
    wait_until("the poll held", || registry.stats().open_polls == 1);
    // A snapshot taken before the poll began says nothing about it.
    let nobody: Arc<Connections> = Arc::default();
    let before = Instant::now() - Duration::from_secs(60);
    assert_eq!(registry.release_polls(&(Arc::clone(&nobody), before)), 0);
    let started = Instant::now();
    assert_eq!(registry.release_polls(&(nobody, Instant::now())), 1);
    assert_eq!(poll.join().unwrap().unwrap(), Command::Noop);
    assert!(started.elapsed() < Duration::from_secs(2));
    wait_until("no poll open", || registry.stats().open_polls == 0);
}

#[test]
fn a_logs_body_is_read_in_one_piece_and_in_any_pieces_the_same() {
    let events = answer("r", (0..5).map(|k| entry(f64::from(k))).collect()).logs;
    let answer = Arc::new(Answer::new(events, &Arc::default(), usize::MAX).unwrap());
    let slice = LogSlice { answer, events: 1..3 };
    let expected = r#"{"cameraId":"cam","logs":[{"timestamp":1.0,"description":"e1"},{"timestamp":2.0,"description":"e2"}]}"#;
    // One read takes head, events and tail at once: a small body leaves in one write, not three.
    let (mut body, length) = slice.clone().body("cam");
    let mut whole = [0u8; 4096];
    assert_eq!(body.read(&mut whole).unwrap(), length);
    assert_eq!(&whole[..length], expected.as_bytes());
    assert_eq!(body.read(&mut whole).unwrap(), 0);
    // Read three bytes at a time, across the parts' edges, it is the same.
    let (mut body, _) = slice.clone().body("cam");
    let (mut pieces, mut piece) = (Vec::new(), [0u8; 3]);
    while let n @ 1.. = body.read(&mut piece).unwrap() {
        pieces.extend_from_slice(&piece[..n]);
    }
    assert_eq!(String::from_utf8(pieces).unwrap(), expected);
    let (mut body, length) = LogSlice { events: 2..2, ..slice }.body("cam");
    assert_eq!(body.read(&mut whole).unwrap(), length);
    assert_eq!(&whole[..length], br#"{"cameraId":"cam","logs":[]}"#);
}
