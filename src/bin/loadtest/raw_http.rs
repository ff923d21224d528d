//! Raw HTTP/1.1 for the simulated cameras: one request on a fresh `Connection: close` socket,
//! its response read back by hand (`raw_exchange`, `read_response`), and the small helpers every
//! caller shares for describing I/O errors and quoting bodies.
//!
//! It must not know the wire protocol's paths or JSON, nor retry: a failed exchange is an error
//! message for the caller to count.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a camera waits for the server to close a `Connection: close` exchange, so that the
/// TIME_WAIT lands on the server's side and the tool does not run out of ephemeral ports.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// The largest response body any part of the tool reads.
pub(crate) const MAX_BODY: usize = 64 * 1024 * 1024;
const MAX_HEADER_LINE: u64 = 16 * 1024;

pub(crate) struct RawResponse {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

/// Sends one request on a fresh connection with `Connection: close` and reads the answer.
pub(crate) fn raw_exchange(
    stream: TcpStream, request: &[u8], read_timeout: Duration,
) -> Result<RawResponse, String> {
    stream
        .set_read_timeout(Some(read_timeout))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .and_then(|()| stream.set_nodelay(true))
        .map_err(|e| format!("cannot configure the socket: {e}"))?;
    (&stream)
        .write_all(request)
        .map_err(|e| format!("cannot send the request: {}", describe_io(&e)))?;
    let mut reader = BufReader::with_capacity(4096, stream);
    let response = read_response(&mut reader)?;
    wait_for_close(reader.get_ref());
    Ok(response)
}

fn read_response(reader: &mut BufReader<TcpStream>) -> Result<RawResponse, String> {
    let status_line = read_line(reader)?;
    let status = parse_status_line(&status_line)?;
    let mut content_length: Option<usize> = None;
    loop {
        let line = read_line(reader)?;
        if line.is_empty() {
            break;
        }
        let (name, value) =
            line.split_once(':').ok_or_else(|| format!("malformed header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let length =
                value.parse::<usize>().map_err(|_| format!("bad Content-Length {value:?}"))?;
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && !value.eq_ignore_ascii_case("identity")
        {
            return Err(format!("unsupported Transfer-Encoding {value:?}"));
        }
    }
    let body = match content_length {
        Some(length) if length > MAX_BODY => {
            return Err(format!("response body of {length} bytes is too large"))
        }
        Some(length) => {
            let mut body = vec![0; length];
            reader
                .read_exact(&mut body)
                .map_err(|e| format!("truncated response body: {}", describe_io(&e)))?;
            body
        }
        None => {
            let mut body = Vec::new();
            reader
                .by_ref()
                .take(MAX_BODY as u64)
                .read_to_end(&mut body)
                .map_err(|e| format!("cannot read the response body: {}", describe_io(&e)))?;
            body
        }
    };
    Ok(RawResponse { status, body })
}

fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    let read = reader
        .by_ref()
        .take(MAX_HEADER_LINE)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("cannot read the response: {}", describe_io(&e)))?;
    if read == 0 {
        return Err("the server closed the connection without a complete response".into());
    }
    if !line.ends_with(b"\n") {
        return Err("response head line too long or cut off".into());
    }
    let text = String::from_utf8(line).map_err(|_| "response head is not UTF-8".to_string())?;
    Ok(text.trim_end_matches(['\r', '\n']).to_string())
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(status) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(format!("malformed status line {line:?}")),
    }
}

/// Reads until the server closes (it does after a `Connection: close` answer), briefly.
fn wait_for_close(stream: &TcpStream) {
    if stream.set_read_timeout(Some(CLOSE_WAIT)).is_err() {
        return;
    }
    let mut scratch = [0u8; 256];
    let mut reader = stream;
    for _ in 0..16 {
        match reader.read(&mut scratch) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

pub(crate) fn describe_io(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".to_string(),
        _ => error.to_string(),
    }
}

pub(crate) fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.chars().count() > 200 {
        let cut: String = text.chars().take(200).collect();
        format!("{cut}…")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_of_http_1_give_their_status() {
        assert_eq!(parse_status_line("HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status_line("HTTP/1.0 503 Service Unavailable"), Ok(503));
        assert_eq!(parse_status_line("HTTP/1.1 204"), Ok(204));
    }

    #[test]
    fn other_status_lines_are_errors_quoting_them() {
        for bad in ["", "HTTP/1.1", "HTTP/1.1 OK 200", "HTTP/2 200 OK", "SSH-2.0 200"] {
            assert_eq!(parse_status_line(bad), Err(format!("malformed status line {bad:?}")));
        }
    }

    #[test]
    fn body_excerpts_are_trimmed_and_cut_at_200_characters() {
        assert_eq!(body_excerpt(b"  {\"error\":\"x\"}\n"), "{\"error\":\"x\"}");
        let long = "é".repeat(250);
        let excerpt = body_excerpt(long.as_bytes());
        assert_eq!(excerpt.chars().count(), 201);
        assert!(excerpt.ends_with("é…"));
        assert_eq!(body_excerpt(&[0xff, b'a']), "\u{fffd}a");
    }

    #[test]
    fn timeouts_are_described_as_timeouts() {
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let would_block = std::io::Error::from(std::io::ErrorKind::WouldBlock);
        assert_eq!(describe_io(&timed_out), "timed out");
        assert_eq!(describe_io(&would_block), "timed out");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(describe_io(&refused), refused.to_string());
    }
}
