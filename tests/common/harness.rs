//! An API server on 127.0.0.1:0 that shuts down when dropped, and real cameras serving known
//! events.

use super::*;

// ---------------------------------------------------------------------------------------------
// Servers and cameras
// ---------------------------------------------------------------------------------------------

/// The server settings the tests start from: loopback, an ephemeral port, short holds so tests
/// run fast, and no arrival window (a call for an unknown camera is 404 at once; the tests of
/// the window turn it on).
pub fn test_config() -> ServerConfig {
    ServerConfig {
        host: "127.0.0.1".to_string(),
        port: 0,
        poll_hold: Duration::from_secs(2),
        logs_timeout: Duration::from_secs(20),
        ack_timeout: Duration::from_millis(800),
        camera_grace: Duration::from_secs(2),
        camera_arrival: Duration::ZERO,
        ..ServerConfig::default()
    }
}

/// The registry section of `GET /stats`: sizes of the server's state, all back to zero when
/// idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub cameras: usize,
    pub cameras_online: usize,
    pub open_polls: usize,
    pub waiting_requests: usize,
    pub commands_in_flight: usize,
    pub awaiting_arrival: usize,
}

/// An API server on 127.0.0.1:0 and the real cameras added with [`TestServer::add_camera`];
/// dropping it (also when a test fails) shuts the server down and stops them.
pub struct TestServer {
    server: Option<ApiServer>,
    cameras: Vec<CameraHandle>,
    pub url: String,
    pub addr: SocketAddr,
    /// The server's `API_TOKEN`, sent by the helpers that read `/stats` and `/cameras`.
    api_token: Option<String>,
}

impl TestServer {
    pub fn start(config: ServerConfig) -> TestServer {
        quiet();
        let api_token = config.api_token.clone();
        let server = ApiServer::start(config).expect("the API server starts");
        let url = server.url();
        let addr = host_port(&url).parse().expect("a socket address");
        TestServer { server: Some(server), cameras: Vec::new(), url, addr, api_token }
    }

    /// `GET /stats` (with the API token, if the server has one), whole.
    pub fn stats_json(&self) -> Value {
        let agent = agent(PATIENCE);
        let resp = get_with(&agent, &format!("{}/stats", self.url), self.api_token.as_deref());
        resp.expect_json(200)
    }

    /// The registry section of `GET /stats`.
    pub fn stats(&self) -> Stats {
        let body = self.stats_json();
        serde_json::from_value(body["registry"].clone()).unwrap_or_else(|e| {
            panic!("/stats has no registry section of the known shape ({e}): {body}")
        })
    }

    /// The server section of `GET /stats` (handler threads, connections, ...).
    pub fn server_stats(&self) -> Value {
        let body = self.stats_json();
        let server = body["server"].clone();
        assert!(server.is_object(), "/stats has no server section: {body}");
        server
    }

    /// `GET /cameras` (this instance's own, with the API token if any), whole.
    pub fn cameras(&self) -> CamerasResponse {
        let agent = agent(PATIENCE);
        let url = format!("{}/cameras?scope=instance", self.url);
        let resp = get_with(&agent, &url, self.api_token.as_deref());
        serde_json::from_value(resp.expect_json(200)).expect("a /cameras answer")
    }

    /// Waits until `camera` has polled and counts as online (as `GET /cameras` reports it).
    pub fn wait_for_camera(&self, camera: &str) {
        wait_until(&format!("camera '{camera}' is online"), PATIENCE, || {
            self.cameras().cameras.iter().any(|c| c.camera_id == camera && c.online)
        });
    }

    pub fn wait_for_waiting(&self, n: usize) {
        wait_until(&format!("{n} calls are waiting"), PATIENCE, || {
            self.stats().waiting_requests == n
        });
    }

    /// Starts a real camera serving `events`, and waits until a `/logs` call to it succeeds
    /// (sent with `api_token`, if the server wants one).
    pub fn add_camera(
        &mut self, config: CameraConfig, events: &[LogEntry], api_token: Option<&str>,
    ) {
        let id = config.camera_id.clone();
        self.cameras.push(start_camera(config, events));
        self.wait_online(&id, api_token);
    }

    /// Waits until `GET /logs?cameraId=id` answers 200 (the camera has polled and answers).
    pub fn wait_online(&self, camera_id: &str, api_token: Option<&str>) {
        let agent = agent(Duration::from_secs(10));
        let url = format!("{}/logs?cameraId={camera_id}&timeout=5", self.url);
        wait_until(&format!("camera '{camera_id}' to answer"), PATIENCE, || {
            get_with(&agent, &url, api_token).status == 200
        });
    }

    pub fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The server first: it answers the cameras' held polls at once, so they stop quickly.
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        for camera in self.cameras.drain(..) {
            camera.stop(Duration::from_secs(5));
        }
    }
}

/// The camera settings the tests use: no generated events, quick retries.
pub fn camera_config(base: &str, camera: &str) -> CameraConfig {
    CameraConfig {
        api_base_url: base.to_string(),
        camera_id: camera.to_string(),
        event_interval: None,
        poll_timeout: Duration::from_secs(60),
        backoff_max: Duration::from_secs(1),
        ..Default::default()
    }
}

/// A real camera serving `events`, as a bare handle (see also [`Camera`]).
pub fn start_camera(config: CameraConfig, events: &[LogEntry]) -> CameraHandle {
    let log = EventLog::in_memory(events.len().max(1) + 1000);
    for e in events {
        log.push(e.clone()).unwrap();
    }
    CameraHandle::start_with_log(config, Arc::new(log)).expect("start camera")
}

/// A server and one real camera `camera_id` serving `events`, polling already.
pub fn server_with_camera(
    config: ServerConfig, camera_id: &str, events: &[LogEntry],
) -> (TestServer, Camera) {
    let server = TestServer::start(config);
    let camera = Camera::start(&server.url, camera_id, events);
    server.wait_for_camera(camera_id);
    (server, camera)
}

/// A real in-process camera; stopped (without waiting) when dropped.
pub struct Camera {
    handle: Option<CameraHandle>,
    pub log: Arc<EventLog>,
}

impl Camera {
    pub fn start(base: &str, camera: &str, events: &[LogEntry]) -> Camera {
        Camera::start_with(camera_config(base, camera), events)
    }

    pub fn start_with(config: CameraConfig, events: &[LogEntry]) -> Camera {
        quiet();
        let log = Arc::new(EventLog::in_memory(1_000_000));
        for event in events {
            log.push(event.clone()).unwrap();
        }
        let handle =
            CameraHandle::start_with_log(config, Arc::clone(&log)).expect("the camera starts");
        Camera { handle: Some(handle), log }
    }

    pub fn round_trips(&self) -> u64 {
        self.handle.as_ref().expect("running").round_trips()
    }
}

impl Drop for Camera {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            // Its threads end on their own once their poll is answered (the server's shutdown
            // answers every poll at once).
            handle.stop(Duration::ZERO);
        }
    }
}

/// A server with one real camera, `cam`, serving `fixture(20)`.
pub fn system_with_camera(config: ServerConfig) -> (TestServer, Vec<LogEntry>) {
    let mut system = TestServer::start(config);
    let events = fixture(20);
    system.add_camera(
        CameraConfig { poll_timeout: Duration::from_secs(20), ..camera_config(&system.url, "cam") },
        &events,
        None,
    );
    (system, events)
}

/// A normal `/logs` call still gets every event: the server survived whatever came before.
pub fn assert_serving(system: &TestServer, events: &[LogEntry], after: &str) {
    let agent = agent(Duration::from_secs(30));
    let resp = get_with(&agent, &format!("{}/logs?cameraId=cam&timeout=20", system.url), None);
    assert_eq!(resp.status, 200, "after {after}: {}", resp.text());
    assert_eq!(logs_of(&resp.json()), expected(events, None, None), "after {after}");
}
