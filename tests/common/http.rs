//! HTTP for tests: ureq calls whose responses check they are JSON, and raw TCP requests
//! read back by one response reader.

use super::*;

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A response, from ureq or from a raw socket.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts `Content-Type: application/json` and a JSON body, and returns it.
    pub fn json(&self) -> Value {
        let content_type = self.header("content-type").unwrap_or_else(|| {
            panic!("HTTP {} without a Content-Type; body {:?}", self.status, self.text())
        });
        assert_eq!(
            content_type.split(';').next().unwrap().trim(),
            "application/json",
            "HTTP {} body {:?}",
            self.status,
            self.text()
        );
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("HTTP {}: body is not JSON ({e}): {:?}", self.status, self.text())
        })
    }

    /// Asserts the status and a JSON body, and returns the body.
    pub fn expect_json(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "unexpected status; body {:?}", self.text());
        self.json()
    }

    /// Asserts the status and that the body is exactly `{"error": "<non-empty sentence>"}`;
    /// returns the sentence.
    pub fn expect_error(&self, status: u16) -> String {
        let body = self.expect_json(status);
        let object =
            body.as_object().unwrap_or_else(|| panic!("error body is not an object: {body}"));
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            vec!["error"],
            "error body has exactly one key, \"error\": {body}"
        );
        let message =
            object["error"].as_str().unwrap_or_else(|| panic!("\"error\" is not a string: {body}"));
        assert!(message.trim().len() > 3, "the error is a sentence: {message:?}");
        message.to_string()
    }

    /// Asserts an error of one of `statuses` with a JSON `{"error": "<non-empty>"}` body.
    pub fn assert_json_error(&self, statuses: &[u16], context: &str) {
        assert!(
            statuses.contains(&self.status),
            "{context}: expected one of {statuses:?}, got HTTP {} {}",
            self.status,
            self.text()
        );
        self.assert_is_json_error(context);
    }

    /// Asserts the body is `{"error": "<non-empty>"}` served as JSON.
    pub fn assert_is_json_error(&self, context: &str) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{context}: HTTP {} {}",
            self.status,
            self.text()
        );
        let body = self.json();
        let message = body["error"].as_str().unwrap_or("");
        assert!(
            !message.is_empty() && body.as_object().is_some_and(|o| o.len() == 1),
            "{context}: not a JSON error: HTTP {} {body}",
            self.status
        );
    }

    /// Asserts a 200 `/logs` answer of the documented shape and returns it.
    pub fn expect_logs(&self) -> LogsResponse {
        let body = self.expect_json(200);
        let object = body.as_object().expect("an object");
        let mut keys: Vec<&String> = object.keys().collect();
        keys.sort();
        assert_eq!(keys, vec!["cameraId", "logs"], "{body}");
        for event in body["logs"].as_array().expect("logs is a list") {
            let mut keys: Vec<&String> =
                event.as_object().expect("an event object").keys().collect();
            keys.sort();
            assert_eq!(keys, vec!["description", "timestamp"], "{event}");
        }
        serde_json::from_value(body).expect("a LogsResponse")
    }
}

pub fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build(),
    )
}

/// The status and headers of a ureq response; the body is left unread.
fn from_ureq_head(response: &ureq::http::Response<ureq::Body>) -> Resp {
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| {
            (n.as_str().to_ascii_lowercase(), String::from_utf8_lossy(v.as_bytes()).into_owned())
        })
        .collect();
    Resp { status: response.status().as_u16(), headers, body: Vec::new() }
}

pub fn from_ureq(mut response: ureq::http::Response<ureq::Body>) -> Resp {
    let mut resp = from_ureq_head(&response);
    resp.body = response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_to_vec()
        .expect("a readable body");
    resp
}

/// Any method, a fresh connection (`Connection: close`), a 60 s client timeout.
pub fn request(method: &str, url: &str, body: Option<&[u8]>) -> Resp {
    let agent = agent(Duration::from_secs(60));
    let result = match (method, body) {
        ("GET", None) => agent.get(url).header("Connection", "close").call(),
        ("DELETE", None) => agent.delete(url).header("Connection", "close").call(),
        ("POST", body) => agent
            .post(url)
            .header("Connection", "close")
            .header("Content-Type", "application/json")
            .send(body.unwrap_or(b"")),
        ("PUT", body) => agent.put(url).header("Connection", "close").send(body.unwrap_or(b"")),
        other => panic!("request() does not do {other:?}"),
    };
    from_ureq(result.unwrap_or_else(|e| panic!("{method} {url} failed: {e}")))
}

pub fn get(url: &str) -> Resp {
    request("GET", url, None)
}

/// `GET url` on another thread; yields the response and how long it took.
pub fn spawn_get(url: String) -> JoinHandle<(Resp, Duration)> {
    thread::spawn(move || {
        let started = Instant::now();
        let response = get(&url);
        (response, started.elapsed())
    })
}

/// `GET url` on another thread through an agent of its own (keep-alive, a 120 s client
/// timeout); yields the response and how long it took.
pub fn spawn_logs(url: String) -> JoinHandle<(Resp, Duration)> {
    thread::spawn(move || {
        let agent = agent(Duration::from_secs(120));
        let started = Instant::now();
        let resp = get_with(&agent, &url, None);
        (resp, started.elapsed())
    })
}

/// `POST /send_logs?cameraId=camera` with a JSON body.
pub fn post_answer(base: &str, camera: &str, body: &Value) -> Resp {
    request(
        "POST",
        &format!("{base}/send_logs?cameraId={camera}"),
        Some(body.to_string().as_bytes()),
    )
}

/// `GET url` through `agent`, optionally with `Authorization: Bearer <token>`. Panics on a
/// transport error.
pub fn get_with(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Resp {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    from_ureq(request.call().unwrap_or_else(|e| panic!("GET {url}: {e}")))
}

/// Like [`get_with`], but reports a transport error (connection refused, reset) as `None`.
pub fn try_get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Option<Resp> {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    let mut response = request.call().ok()?;
    let body = response.body_mut().read_to_vec().ok()?;
    let mut resp = from_ureq_head(&response);
    resp.body = body;
    Some(resp)
}

/// `POST url` through `agent` with a JSON body, optionally with `Authorization: Bearer <token>`.
/// Panics on a transport error.
pub fn post_with(agent: &ureq::Agent, url: &str, body: &[u8], token: Option<&str>) -> Resp {
    let mut request = agent.post(url).header("Content-Type", "application/json");
    if let Some(token) = token {
        request = request.header("Authorization", format!("Bearer {token}"));
    }
    from_ureq(request.send(body).unwrap_or_else(|e| panic!("POST {url}: {e}")))
}

/// `/logs` URL with the given optional parameters.
pub fn logs_url(
    base: &str, camera: &str, start: Option<f64>, end: Option<f64>, timeout: Option<f64>,
) -> String {
    let mut url = format!("{base}/logs?cameraId={camera}");
    if let Some(start) = start {
        url.push_str(&format!("&startTimestamp={start}"));
    }
    if let Some(end) = end {
        url.push_str(&format!("&endTimestamp={end}"));
    }
    if let Some(timeout) = timeout {
        url.push_str(&format!("&timeout={timeout}"));
    }
    url
}

/// `host:port` of an `http://host:port` URL.
pub fn host_port(base: &str) -> &str {
    base.strip_prefix("http://").expect("an http:// URL")
}

/// Reads one HTTP response (head, then a Content-Length body, or up to EOF without one).
pub fn read_response(stream: &mut TcpStream) -> Resp {
    read_raw_response(stream).expect("a whole response within the read timeout")
}

/// Reads the status line and headers of a response; the body is left unread.
pub fn read_head(reader: &mut impl BufRead) -> Resp {
    let (status, headers) =
        read_raw_head(reader).expect("a status line and headers within the read timeout");
    Resp { status, headers, body: Vec::new() }
}

/// Reads the body of `resp`: Content-Length bytes, or up to EOF without a Content-Length.
pub fn read_body(reader: &mut impl BufRead, resp: &mut Resp) {
    resp.body = read_raw_body(reader, &resp.headers).expect("the whole body");
}

/// Opens a connection with 30 s read and write timeouts.
pub fn connect(base: &str) -> TcpStream {
    let stream = TcpStream::connect(host_port(base)).expect("connect to the server");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.set_write_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// Writes `request` as is on a fresh connection and reads the response.
pub fn raw(base: &str, request: &[u8]) -> Resp {
    let mut stream = connect(base);
    stream.write_all(request).expect("write the request");
    read_response(&mut stream)
}

/// A raw `POST /send_logs` with an exact Content-Length.
pub fn raw_post_answer(base: &str, camera: &str, body: &[u8]) -> Resp {
    let mut request = format!(
        "POST /send_logs?cameraId={camera} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        host_port(base),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    raw(base, &request)
}

/// Writes `request` (then, if `half_close`, shuts down the write side) and reads one response.
/// `None` means the server closed the connection without answering. Write errors are tolerated:
/// a server may answer and close before reading everything.
pub fn raw_exchange(
    addr: SocketAddr, request: &[u8], half_close: bool, patience: Duration,
) -> Option<Resp> {
    let mut stream = TcpStream::connect(addr).expect("connect to the server");
    stream.set_read_timeout(Some(patience)).unwrap();
    stream.set_write_timeout(Some(patience)).unwrap();
    let _ = stream.write_all(request);
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    read_raw_response(&mut stream)
}

/// Reads one HTTP/1.1 response (head, then `Content-Length` bytes or up to EOF).
/// `None` if the connection ends (or times out) before a complete status line and head.
pub fn read_raw_response(stream: &mut TcpStream) -> Option<Resp> {
    let mut reader = BufReader::new(stream);
    let (status, headers) = read_raw_head(&mut reader)?;
    let body = read_raw_body(&mut reader, &headers)?;
    Some(Resp { status, headers, body })
}

/// A body after `headers`: Content-Length bytes, or up to EOF without one; `None` if a declared
/// body ends early.
fn read_raw_body(reader: &mut impl BufRead, headers: &[(String, String)]) -> Option<Vec<u8>> {
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).ok()?;
        }
        None => {
            let _ = reader.read_to_end(&mut body);
        }
    }
    Some(body)
}

/// Reads a response's status line and headers (names lower-cased); `None` if the connection
/// ends first.
pub fn read_raw_head(reader: &mut impl BufRead) -> Option<(u16, Vec<(String, String)>)> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).ok()? == 0 {
        return None;
    }
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    Some((status, headers))
}

/// Percent-encodes the bytes that cannot appear raw in a request line (controls, space,
/// non-ASCII); everything else, including `%`, `#` and quotes, goes through as is.
pub fn request_line_safe(raw: &[u8]) -> String {
    let mut out = String::new();
    for &b in raw {
        if b <= b' ' || b >= 0x7F {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}
