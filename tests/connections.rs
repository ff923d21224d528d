//! The front door under hostile connections (src/front_door.rs): idle and stalled connections are
//! closed after HEADER_TIMEOUT_SECS while normal calls keep being answered; at MAX_CONNECTIONS
//! new connections are refused while open ones are served, and the server accepts again (on a
//! fresh accept loop) once the count falls.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::common::*;
use camera_logs::ServerConfig;

fn config(header_timeout: Duration, max_connections: usize) -> ServerConfig {
    ServerConfig { header_timeout, max_connections, ..test_config() }
}

fn addr(base: &str) -> String {
    host_port(base).to_string()
}

/// Whether the server has closed this connection: a read sees EOF or a reset (not a timeout).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// One request on an existing keep-alive connection; the status, or None if the server is gone.
fn keep_alive_get(stream: &mut TcpStream, path: &str) -> Option<u16> {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut reader = std::io::BufReader::new(stream.try_clone().ok()?);
    let mut resp = read_head(&mut reader);
    read_body(&mut reader, &mut resp);
    Some(resp.status)
}

/// A fresh connection gets `200` for `/health`; false (never a panic) when refused or unanswered.
fn new_connection_served(base: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr(base)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let sent = stream.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    sent.is_ok() && stream.read_to_end(&mut answer).is_ok() && answer.starts_with(b"HTTP/1.1 200")
}

#[test]
fn five_hundred_idle_connections_neither_block_calls_nor_outlive_the_header_timeout() {
    let events = fixture(20);
    let (server, _camera) =
        server_with_camera(config(Duration::from_secs(2), 4096), "front", &events);

    let opened = Instant::now();
    let mut idle: Vec<TcpStream> =
        (0..500).map(|_| TcpStream::connect(addr(&server.url)).expect("idle connection")).collect();

    // A normal call is answered, exactly, while the 500 sit there.
    let answer = get(&logs_url(&server.url, "front", Some(ts(3)), Some(ts(6)), None)).expect_logs();
    assert_eq!(answer.logs, expected(&events, Some(ts(3)), Some(ts(6))));

    // Every idle connection is closed by the server, and not before the timeout.
    wait_until("all 500 idle connections are closed", PATIENCE, || {
        idle.retain_mut(|stream| !closed_by_server(stream));
        idle.is_empty()
    });
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}, before the 2 s header timeout",
        opened.elapsed()
    );
    let answer = get(&logs_url(&server.url, "front", None, None, None)).expect_logs();
    assert_eq!(answer.logs.len(), 20, "still serving afterwards");
}

#[test]
fn a_request_head_that_stalls_is_dropped_and_a_body_that_stalls_gets_no_thread_forever() {
    let server = TestServer::start(config(Duration::from_secs(1), 4096));
    let mut stalled_head = TcpStream::connect(addr(&server.url)).unwrap();
    stalled_head.write_all(b"GET /health HTTP/1.1\r\nHost: te").unwrap();
    let mut stalled_body = TcpStream::connect(addr(&server.url)).unwrap();
    stalled_body
        .write_all(b"POST /send_logs?cameraId=x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n{\"logs\":")
        .unwrap();
    wait_until("both stalled connections are closed", PATIENCE, || {
        closed_by_server(&mut stalled_head) && closed_by_server(&mut stalled_body)
    });
    wait_until("no handler is left busy", PATIENCE, || {
        server.server().pool_stats().busy_handlers == 0
    });
    assert_eq!(get(&format!("{}/health", server.url)).status, 200);
}

#[test]
fn beyond_max_connections_new_ones_are_refused_open_ones_served_and_accepting_resumes() {
    let server = TestServer::start(config(Duration::from_secs(3), 40));
    let mut open = TcpStream::connect(addr(&server.url)).unwrap();
    assert_eq!(keep_alive_get(&mut open, "/health"), Some(200));

    // Fill the server well past its limit with connections that say nothing.
    let mut flood: Vec<TcpStream> = Vec::new();
    for _ in 0..120 {
        if let Ok(stream) =
            TcpStream::connect_timeout(&addr(&server.url).parse().unwrap(), Duration::from_secs(1))
        {
            flood.push(stream);
        }
    }
    wait_until("the front door stops accepting", PATIENCE, || {
        !server.server().front_door_stats().accepting
    });
    // A new connection now gets no service: refused at connect, or closed unanswered.
    let refused = match TcpStream::connect_timeout(
        &addr(&server.url).parse().unwrap(),
        Duration::from_secs(2),
    ) {
        Err(_) => true,
        Ok(mut late) => {
            let _ = late.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
            let _ = late.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 64];
            !matches!(late.read(&mut buf), Ok(n) if n > 0)
        }
    };
    assert!(refused, "a connection beyond MAX_CONNECTIONS was served");
    // The connection that was already open is still served.
    assert_eq!(keep_alive_get(&mut open, "/health"), Some(200));

    drop(flood);
    wait_until("the front door accepts again", PATIENCE, || {
        server.server().front_door_stats().accepting
    });
    wait_until("a new connection is served again", PATIENCE, || new_connection_served(&server.url));
    let stats = server.server().front_door_stats();
    assert!(stats.times_paused >= 1 && stats.accept_loop_restarts >= 1, "{stats:?}");
}
