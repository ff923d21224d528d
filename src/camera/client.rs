//! The camera's HTTP side: the two endpoints' URLs (built with `url` from the protocol's
//! [`Route`] table), the bearer token, TLS trust, and a [`CallError`] that names the cause of a
//! failure and the fix. It holds no state between calls and knows nothing of the server's code.

use std::time::Duration;

use crate::log::log_warn;
use crate::protocol::{
    valid_camera_id, Command, Route, SendLogsBody, CAMERA_ID, ID_CHARACTERS, INSTANCE_ID,
};
use crate::settings::{base_url, CaCerts, CameraConfig};

/// An upload that makes no progress for this long fails: on a slow uplink a large answer takes
/// minutes, and only a stall means the link is gone.
const UPLOAD_STALL: Duration = Duration::from_secs(30);
/// How long the server may take to answer a post once its body is sent.
const POST_ANSWER: Duration = Duration::from_secs(60);
/// A kept-alive connection idle this long is not used again: the server closes idle ones after
/// its `HEADER_TIMEOUT_SECS` (10 s unless set; nginx's after 60 s).
const IDLE_REUSE: Duration = Duration::from_secs(4);

/// What became of an answer the server received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// Refused for good (a 4xx other than 408, 409 and 429): retrying cannot help.
    Refused,
}

/// Why a call to the API server failed. Every kind is retried with the backoff; the TLS kinds
/// need a fix on one side, not just a retry, so a streak that turns into one is logged again.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// The server's certificate is not trusted, with a hint at the fix.
    Untrusted { origin: String, cause: String, hint: &'static str },
    /// The TLS handshake failed: the other end may not speak TLS.
    Handshake { origin: String, error: String },
    /// The server held the poll longer than this camera waits for it.
    PollTimeout(Duration),
    /// No response (refused, reset, ...): ureq's own words.
    Unreachable(String),
    /// An error status (with the start of its body, and the pace its `Retry-After` asks for).
    Status { status: u16, body: String, retry_after: Option<Duration> },
    /// A 200 whose body is not a command.
    Unreadable(String),
}

impl CallError {
    pub fn is_tls(&self) -> bool {
        matches!(self, CallError::Untrusted { .. } | CallError::Handshake { .. })
    }

    /// No answer came at all: until one does, the camera asks `/health`, which answers at once,
    /// rather than a poll, which answers only when its hold ends.
    pub fn is_unreachable(&self) -> bool {
        self.is_tls() || matches!(self, CallError::Unreachable(_))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Untrusted { origin, cause, hint } => {
                write!(f, "TLS certificate of {origin} not trusted: {cause}; {hint}")
            }
            CallError::Handshake { origin, error } => write!(f, "TLS handshake with {origin} failed: {error}; is the server speaking https:// on that port?"),
            CallError::PollTimeout(after) => {
                let after = after.as_secs_f64();
                write!(f, "no answer to a poll within POLL_TIMEOUT_SECS ({after} s): the server's POLL_HOLD_SECS must be shorter (it is 30 s unless set)")
            }
            CallError::Unreachable(error) => write!(f, "{error}"),
            CallError::Status { status, body, .. } => write!(f, "HTTP {status}: {body}"),
            CallError::Unreadable(error) => write!(f, "unreadable command: {error}"),
        }
    }
}

/// The camera's two endpoints.
pub struct Client {
    poll_url: String,
    send_url: String,
    health_url: String,
    /// `scheme://host:port` of the server, for failure messages (never any user:password).
    origin: String,
    authorization: Option<String>,
    poll_timeout: Duration,
    poll_agent: ureq::Agent,
    post_agent: ureq::Agent,
}

impl Client {
    /// Checks the id and the URL (a library caller may build a config by hand) and builds the
    /// endpoints' URLs; `instance` names this process to the server.
    pub fn new(config: &CameraConfig, instance: &str) -> std::io::Result<Client> {
        let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
        let id = &config.camera_id;
        if !valid_camera_id(id) {
            return Err(invalid(format!("invalid camera id {id:?}: {ID_CHARACTERS}")));
        }
        let base = base_url(&config.api_base_url).map_err(|e| {
            invalid(format!("invalid API base URL {:?}: expected {e}", config.api_base_url))
        })?;
        let query = [(CAMERA_ID, config.camera_id.as_str()), (INSTANCE_ID, instance)];
        let tls = tls_config(config.ca_certs.as_ref());
        // Each agent keeps its connection (one TLS handshake per connection through the edge).
        let config_of = || {
            let builder = ureq::Agent::config_builder().http_status_as_error(false);
            builder.max_idle_age(IDLE_REUSE).tls_config(tls.clone())
        };
        let poll = config_of().timeout_global(Some(config.poll_timeout));
        let post = config_of()
            .timeout_connect(Some(UPLOAD_STALL))
            .timeout_per_write(Some(UPLOAD_STALL))
            .timeout_recv_response(Some(POST_ANSWER));
        Ok(Client {
            poll_url: Route::Poll.url(&base, &query).to_string(),
            health_url: Route::Health.url(&base, &[]).to_string(),
            send_url: Route::SendLogs.url(&base, &query).to_string(),
            origin: base.origin().ascii_serialization(),
            authorization: config.camera_token.as_ref().map(|t| format!("Bearer {t}")),
            poll_timeout: config.poll_timeout,
            poll_agent: ureq::Agent::new_with_config(poll.build()),
            post_agent: ureq::Agent::new_with_config(post.build()),
        })
    }

    /// The start-up line's note on what an https:// server is trusted by (empty for plain
    /// http); from the parsed URL, which spells the scheme in lower case whatever was typed.
    pub fn describe_trust(&self, ca_certs: Option<&CaCerts>) -> String {
        match (ca_certs, self.origin.starts_with("https://")) {
            (Some(CaCerts { path, der }), true) => {
                format!("; trusting only the {} CA certificate(s) of {}", der.len(), path.display())
            }
            (None, true) => "; trusting the bundled webpki roots".to_string(),
            (Some(_), false) => "; CA_CERT_FILE unused (the URL is not https://)".to_string(),
            (None, false) => String::new(),
        }
    }

    pub fn poll(&self) -> Result<Command, CallError> {
        self.get(&self.poll_url)?
            .body_mut()
            .read_json()
            .map_err(|e| CallError::Unreadable(e.to_string()))
    }

    /// `GET /health`: whether the server answers at all (a noop when it does).
    pub fn reach(&self) -> Result<Command, CallError> {
        let mut response = self.get(&self.health_url)?;
        let _ = response.body_mut().with_config().limit(4096).read_to_vec();
        Ok(Command::Noop)
    }

    /// A 200 to a GET on the poll agent, or why not.
    fn get(&self, url: &str) -> Result<ureq::http::Response<ureq::Body>, CallError> {
        let request = self.headers(self.poll_agent.get(url));
        let mut response = request.call().map_err(|e| match e {
            ureq::Error::Timeout(_) => CallError::PollTimeout(self.poll_timeout),
            e => describe_call_error(&self.origin, &e.to_string()),
        })?;
        match response.status().as_u16() {
            200 => Ok(response),
            status => Err(describe_status(status, &mut response)),
        }
    }

    fn headers<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.authorization {
            Some(auth) => request.header("Authorization", auth),
            None => request,
        }
    }

    /// `Err` is retried with the backoff; `Refused` is for good. The JSON is compact: ureq's
    /// `send_json` pretty-prints, a quarter more bytes over a slow uplink, and 150,000 events
    /// past `MAX_BODY_BYTES` (links::slow_and_large_uploads_are_answered_once_bare_and_through_the_edge).
    pub fn send(&self, body: &SendLogsBody) -> Result<Delivery, CallError> {
        let failed = |e: String| describe_call_error(&self.origin, &e);
        let json = serde_json::to_vec(body).map_err(|e| failed(e.to_string()))?;
        let mut response = self
            .headers(self.post_agent.post(&self.send_url))
            .content_type("application/json")
            .send(&json[..])
            .map_err(|e| failed(e.to_string()))?;
        match response.status().as_u16() {
            200 => {
                // Read to its end, so the connection goes back to the agent to be used again.
                let _ = response.body_mut().with_config().limit(4096).read_to_vec();
                Ok(Delivery::Accepted)
            }
            status @ 400..=499 if !matches!(status, 408 | 409 | 429) => {
                log_warn!("server refused the answer: {}", describe_status(status, &mut response));
                Ok(Delivery::Refused)
            }
            status => Err(describe_status(status, &mut response)),
        }
    }
}

/// TLS for an https:// server: exactly the roots of `CA_CERT_FILE` when set, else webpki's.
fn tls_config(ca_certs: Option<&CaCerts>) -> ureq::tls::TlsConfig {
    use ureq::tls::{Certificate, RootCerts};
    let roots = ca_certs.map_or(RootCerts::WebPki, |ca| {
        RootCerts::new_with_certs(
            &ca.der.iter().map(|der| Certificate::from_der(der).to_owned()).collect::<Vec<_>>(),
        )
    });
    ureq::tls::TlsConfig::builder().root_certs(roots).build()
}

/// Names the cause of a failed call to `origin` (ureq's error text, `error`): a certificate the
/// camera does not trust, with a hint at the fix; a handshake that failed because the other end
/// does not speak TLS; or else ureq's own text, unchanged.
pub fn describe_call_error(origin: &str, error: &str) -> CallError {
    // rustls's wording (`rustls::Error`'s Display, reached through ureq's io or rustls error).
    if let Some(at) = error.find("invalid peer certificate: ") {
        let cause = &error[at + "invalid peer certificate: ".len()..];
        let names = |words: &[&str]| words.iter().any(|w| cause.contains(w));
        let hint = if names(&["UnknownIssuer", "BadSignature"]) {
            "set CA_CERT_FILE to the edge's CA (or check that it holds the CA that signed the edge's certificate)"
        } else if names(&["not valid for name", "NotValidForName"]) {
            "API_BASE_URL must use a host name the certificate was issued for"
        } else if names(&["expired", "not valid yet", "Expired", "NotValidYet"]) {
            "renew the edge's certificate, or check this camera's clock"
        } else if cause.contains("CaUsedAsEndEntity") {
            "the edge presents a CA certificate as its own; give it one with basicConstraints CA:FALSE (self-signed, or signed by the CA in CA_CERT_FILE)"
        } else {
            "check the edge's certificate and CA_CERT_FILE"
        };
        return CallError::Untrusted { origin: origin.to_string(), cause: cause.to_string(), hint };
    }
    const NOT_TLS: [&str; 6] = [
        "received corrupt message",
        "received unexpected",
        "peer is incompatible",
        "peer misbehaved",
        "received fatal alert",
        "tls handshake eof",
    ];
    if origin.starts_with("https://") && NOT_TLS.iter().any(|m| error.contains(m)) {
        return CallError::Handshake { origin: origin.to_string(), error: error.to_string() };
    }
    CallError::Unreachable(error.to_string())
}

fn describe_status(status: u16, response: &mut ureq::http::Response<ureq::Body>) -> CallError {
    let retry_after = response.headers().get("Retry-After").and_then(|v| v.to_str().ok());
    let retry_after = retry_after.and_then(|v| v.trim().parse().ok()).map(Duration::from_secs);
    let body = response.body_mut().with_config().limit(4096).read_to_string().unwrap_or_default();
    CallError::Status { status, body: body.trim().to_string(), retry_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_come_from_the_route_table_and_are_encoded() {
        let config = CameraConfig {
            api_base_url: "https://edge.example:8443/cams/".to_string(),
            camera_id: "front-1".to_string(),
            ..CameraConfig::default()
        };
        let client = Client::new(&config, "abc").unwrap();
        assert_eq!(
            client.poll_url,
            "https://edge.example:8443/cams/poll_for_command?cameraId=front-1&instanceId=abc"
        );
        assert_eq!(
            client.send_url,
            "https://edge.example:8443/cams/send_logs?cameraId=front-1&instanceId=abc"
        );
        assert_eq!(client.origin, "https://edge.example:8443");
        for (url, id) in [("http://x", "bad id"), ("ftp://x", "ok"), ("localhost:8080", "ok")] {
            let config = CameraConfig {
                api_base_url: url.to_string(),
                camera_id: id.to_string(),
                ..CameraConfig::default()
            };
            let err = Client::new(&config, "abc").err().unwrap();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{url} {id}");
        }
    }

    #[test]
    fn certificate_failures_name_the_cause_and_the_fix() {
        let origin = "https://edge.example:8443";
        for (error, cause, hint) in [
            ("io: invalid peer certificate: UnknownIssuer", "UnknownIssuer", "set CA_CERT_FILE"),
            ("rustls: invalid peer certificate: BadSignature", "BadSignature", "set CA_CERT_FILE"),
            (
                "io: invalid peer certificate: certificate not valid for name \"edge\"; certificate is only valid for IpAddress(127.0.0.1)",
                "not valid for name",
                "API_BASE_URL must use a host name",
            ),
            (
                "io: invalid peer certificate: certificate expired: verification time 2 (UNIX), but certificate is not valid after 1 (1 seconds ago)",
                "certificate expired",
                "renew the edge's certificate",
            ),
            ("io: invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))", "CaUsedAsEndEntity", "CA:FALSE"),
            ("io: invalid peer certificate: UnsupportedSignatureAlgorithm", "UnsupportedSignatureAlgorithm", "check the edge's certificate"),
        ] {
            let described = describe_call_error(origin, error);
            assert!(described.is_tls(), "{described:?}");
            let text = described.to_string();
            assert!(text.starts_with(&format!("TLS certificate of {origin} not trusted: ")), "{text}");
            assert!(text.contains(cause) && text.contains(hint), "{text}");
        }
    }

    #[test]
    fn a_server_that_does_not_speak_tls_is_named() {
        let error = "io: received corrupt message of type InvalidContentType";
        let described = describe_call_error("https://edge:8443", error);
        assert!(described.is_tls(), "{described:?}");
        assert!(described
            .to_string()
            .starts_with("TLS handshake with https://edge:8443 failed: io: received corrupt"));
        // Other failures keep ureq's own text, over https as over http.
        for origin in ["https://edge:8443", "http://edge:8080"] {
            let refused = "io: Connection refused (os error 111)";
            assert_eq!(
                describe_call_error(origin, refused),
                CallError::Unreachable(refused.to_string())
            );
        }
        assert_eq!(
            describe_call_error("http://edge:8080", error),
            CallError::Unreachable(error.to_string())
        );
    }

    #[test]
    fn a_poll_timeout_names_both_settings() {
        let text = CallError::PollTimeout(Duration::from_secs(60)).to_string();
        assert!(
            text.contains("POLL_TIMEOUT_SECS (60 s)") && text.contains("POLL_HOLD_SECS"),
            "{text}"
        );
    }

    #[test]
    fn ca_cert_file_replaces_the_webpki_roots() {
        assert!(matches!(tls_config(None).root_certs(), ureq::tls::RootCerts::WebPki));
        let ca =
            CaCerts { path: "ca.pem".into(), der: vec![vec![0x30, 0x00], vec![0x30, 0x01, 0x00]] };
        match tls_config(Some(&ca)).root_certs() {
            ureq::tls::RootCerts::Specific(certs) => {
                let der: Vec<&[u8]> = certs.iter().map(|c| c.der()).collect();
                assert_eq!(der, [&[0x30, 0x00][..], &[0x30, 0x01, 0x00][..]]);
            }
            other => panic!("expected exactly the CA_CERT_FILE roots, got {other:?}"),
        }
        let https = CameraConfig {
            api_base_url: "https://edge".to_string(),
            ca_certs: Some(ca.clone()),
            ..CameraConfig::default()
        };
        let trust = |config: &CameraConfig| {
            let client = Client::new(config, "instance").expect("a valid config");
            client.describe_trust(config.ca_certs.as_ref())
        };
        assert!(trust(&https).contains("trusting only the 2 CA certificate(s) of ca.pem"));
        // The scheme as the URL parser reads it, whatever its case.
        let upper = CameraConfig { api_base_url: "HTTPS://edge".to_string(), ..https.clone() };
        assert!(trust(&upper).contains("trusting only the 2 CA certificate(s) of ca.pem"));
        let http = CameraConfig { ca_certs: Some(ca), ..CameraConfig::default() };
        assert!(trust(&http).contains("unused"));
        assert_eq!(trust(&CameraConfig::default()), "");
    }
}
