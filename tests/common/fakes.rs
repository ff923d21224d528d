//! Cameras written in the test (they poll with ureq and answer as told), and a relay that can
//! hold a camera's answers back.

use super::*;

/// A camera written in the test: it polls with ureq, reports every `send_logs` command on
/// `commands`, and does whatever `on_command` says (answer, lie, or nothing). It stops polling
/// when dropped or told to, and when the server goes away.
pub struct FakeCamera {
    stop: Arc<AtomicBool>,
    pub commands: Receiver<Value>,
}

impl FakeCamera {
    pub fn start(
        base: &str, camera: &str, mut on_command: impl FnMut(&Value) + Send + 'static,
    ) -> FakeCamera {
        let stop = Arc::new(AtomicBool::new(false));
        let (commands_tx, commands) = unbounded();
        let poll_url = format!("{base}/poll_for_command?cameraId={camera}");
        let stopping = Arc::clone(&stop);
        thread::spawn(move || {
            let agent = agent(Duration::from_secs(60));
            while !stopping.load(Ordering::SeqCst) {
                let Ok(mut response) = agent.get(&poll_url).header("Connection", "close").call()
                else {
                    return;
                };
                if response.status().as_u16() != 200 {
                    return;
                }
                let Ok(command) = response.body_mut().read_json::<Value>() else {
                    return;
                };
                if command["command"] == "send_logs" {
                    let _ = commands_tx.send(command.clone());
                    on_command(&command);
                }
            }
        });
        FakeCamera { stop, commands }
    }

    /// Receives commands and never answers them.
    pub fn silent(base: &str, camera: &str) -> FakeCamera {
        FakeCamera::start(base, camera, |_| {})
    }

    /// Answers every command with all of `events`, in the given order, ignoring its bounds.
    pub fn answering_everything(base: &str, camera: &str, events: Vec<LogEntry>) -> FakeCamera {
        let (base_url, id) = (base.to_string(), camera.to_string());
        FakeCamera::start(base, camera, move |command| {
            let body = json!({"requestId": command["requestId"], "logs": events});
            let response = post_answer(&base_url, &id, &body);
            assert_eq!(response.status, 200, "{}", response.text());
        })
    }

    /// The next command, within the test's patience.
    pub fn next_command(&self) -> Value {
        self.commands.recv_timeout(PATIENCE).expect("the fake camera received a command")
    }

    /// Stops after the poll in progress.
    pub fn stop_polling(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for FakeCamera {
    fn drop(&mut self) {
        self.stop_polling();
    }
}

// ---------------------------------------------------------------------------------------------
// Relay
// ---------------------------------------------------------------------------------------------

/// An HTTP relay between a real camera and the API server that reports every `send_logs` body on
/// `posts` and, while gated, holds each one until the test allows it through. It lets a test
/// decide exactly when a real camera's answer reaches the server.
pub struct Relay {
    pub url: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    permits: Option<Sender<()>>,
    pub posts: Receiver<Value>,
}

impl Relay {
    /// `gated`: every `send_logs` waits for [`Relay::allow_one`] or [`Relay::open_gate`].
    pub fn start(upstream: &str, gated: bool) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let (permits_tx, permits_rx) = unbounded::<()>();
        let (posts_tx, posts) = unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let upstream = upstream.to_string();
        thread::spawn(move || {
            for connection in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(connection) = connection else { continue };
                let (upstream, permits, posts) =
                    (upstream.clone(), permits_rx.clone(), posts_tx.clone());
                thread::spawn(move || relay_one(connection, &upstream, &permits, &posts));
            }
        });
        Relay {
            url: format!("http://{addr}"),
            addr,
            stop,
            permits: gated.then_some(permits_tx),
            posts,
        }
    }

    /// Lets every held and future answer through.
    pub fn open_gate(&mut self) {
        self.permits.take();
    }

    pub fn next_post(&self) -> Value {
        self.posts.recv_timeout(PATIENCE).expect("the camera posted an answer")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.permits.take();
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn relay_one(
    mut connection: TcpStream, upstream: &str, permits: &Receiver<()>, posts: &Sender<Value>,
) {
    let _ = connection.set_read_timeout(Some(Duration::from_secs(60)));
    let Some((method, target, body)) = read_request(&mut connection) else {
        return;
    };
    if method == "POST" && target.starts_with("/send_logs") {
        let _ = posts.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
        // A permit, or the gate opened (sender dropped): either way, go on.
        let _ = permits.recv();
    }
    let agent = agent(Duration::from_secs(60));
    let url = format!("{upstream}{target}");
    let result = if method == "POST" {
        agent.post(&url).header("Content-Type", "application/json").send(&body[..])
    } else {
        agent.get(&url).call()
    };
    let (status, body) = match result {
        Ok(response) => {
            let response = from_ureq(response);
            (response.status, response.body)
        }
        Err(e) => (502, json!({"error": e.to_string()}).to_string().into_bytes()),
    };
    let head = format!(
        "HTTP/1.1 {status} Relayed\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = connection.write_all(head.as_bytes());
    let _ = connection.write_all(&body);
}

/// Reads one request: method, target and a Content-Length body.
fn read_request(connection: &mut TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut reader = BufReader::new(connection);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some((method, target, body))
}
