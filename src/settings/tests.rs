//! The configuration's unit tests: defaults against the help tables, what is read, and how
//! malformed values and files are refused.

use super::*;
use std::collections::HashMap;

fn server(pairs: &[(&'static str, &str)]) -> Result<ServerConfig, ConfigError> {
    ServerConfig::from_lookup(&lookup_from(pairs))
}

fn camera(pairs: &[(&'static str, &str)]) -> Result<CameraConfig, ConfigError> {
    CameraConfig::from_lookup(&lookup_from(pairs))
}

fn lookup_from(
    pairs: &[(&'static str, &str)],
) -> impl Fn(&'static str) -> Result<Option<String>, ConfigError> {
    let map: HashMap<&'static str, String> =
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    move |name| Ok(map.get(name).cloned())
}

#[test]
fn defaults_match_the_help_table() {
    // Each default, given as a value, parses to what Default (built from the same table) holds.
    assert_eq!(server(&[]).unwrap(), ServerConfig::default());
    for s in SERVER_SETTINGS {
        if let Some(default) = s.default {
            assert_eq!(
                server(&[(s.name, default)]).unwrap(),
                ServerConfig::default(),
                "{}",
                s.name
            );
        }
    }
    for s in CAMERA_SETTINGS {
        if let Some(default) = s.default {
            assert_eq!(
                camera(&[(s.name, default)]).unwrap(),
                CameraConfig::default(),
                "{}",
                s.name
            );
        }
    }
    // The camera's poll-timeout message names the 30 s hold; the api's hold check, the 60 s.
    let defaults = ServerConfig::default();
    assert_eq!((defaults.port, defaults.poll_hold), (8080, Duration::from_secs(30)));
    assert_eq!(CameraConfig::default().poll_timeout, CAMERA_POLL_TIMEOUT);
    assert_eq!(CameraConfig::default().event_interval, Some(Duration::from_secs(10)));
}

#[test]
fn malformed_values_name_the_variable() {
    for (name, value) in [
        ("PORT", "80a"),
        ("PORT", "70000"),
        ("POLL_HOLD_SECS", "0"),
        ("ACK_TIMEOUT_SECS", "-1"),
        ("CAMERA_GRACE_SECS", "NaN"),
        ("LOGS_TIMEOUT_SECS", "301"),
        ("MAX_WAITING_PER_CAMERA", "0"),
        ("MAX_BODY_BYTES", "lots"),
        ("LOG_LEVEL", "loud"),
        ("API_TOKEN", ""),
        ("CAMERA_TOKEN", ""),
        ("CAMERA_TOKENS_FILE", ""),
        ("HOST", " "),
    ] {
        let err = server(&[(name, value)]).unwrap_err();
        assert_eq!(err.variable, name);
        assert!(err.to_string().contains(name));
    }
    for (name, value) in [
        ("API_BASE_URL", "ftp://x"),
        ("API_BASE_URL", "localhost:8080"),
        ("CAMERA_ID", "bad id"),
        ("EVENT_INTERVAL_SECS", "inf"),
        ("POLL_TIMEOUT_SECS", ""),
        ("MAX_EVENTS", "-3"),
        ("CAMERA_TOKEN", ""),
        ("LOG_FILE", ""),
        ("CA_CERT_FILE", ""),
    ] {
        let err = camera(&[(name, value)]).unwrap_err();
        assert_eq!(err.variable, name);
    }
}

#[test]
fn an_event_interval_of_zero_turns_events_off_and_token_files_are_exclusive() {
    assert_eq!(camera(&[("EVENT_INTERVAL_SECS", "0")]).unwrap().event_interval, None);
    let tokens = temp_file("tokens", "# cameras\nfront s3cret\nback other\n");
    let path = tokens.0.to_string_lossy().into_owned();
    let c = server(&[("CAMERA_TOKENS_FILE", &path)]).unwrap();
    assert_eq!(c.camera_tokens.unwrap().tokens.get("front").map(String::as_str), Some("s3cret"));
    let err = server(&[("CAMERA_TOKENS_FILE", &path), ("CAMERA_TOKEN", "x")]).unwrap_err();
    assert_eq!(err.variable, "CAMERA_TOKENS_FILE");
    for bad in ["", "front\n", "front a b\n", "bad/id tok\n", "front a\nfront b\n"] {
        assert!(parse_tokens(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn fractions_and_tokens_parse() {
    let c = camera(&[
        ("EVENT_INTERVAL_SECS", "0.25"),
        ("CAMERA_TOKEN", "s3cret"),
        ("API_BASE_URL", "http://api:8080/"),
    ])
    .unwrap();
    assert_eq!(c.event_interval, Some(Duration::from_millis(250)));
    assert_eq!(c.camera_token.as_deref(), Some("s3cret"));
    assert_eq!(c.api_base_url, "http://api:8080");
    let err = server(&[("API_TOKEN", "has space")]).unwrap_err();
    assert!(!err.to_string().contains("has space"), "tokens are never echoed");
}

#[test]
fn the_variables_read_are_exactly_the_help_table() {
    type LookupResult = Result<Option<String>, ConfigError>;
    /// Runs `read` with a lookup that records every name asked for and answers "unset".
    fn names_read(read: impl FnOnce(&dyn Fn(&'static str) -> LookupResult)) -> Vec<&'static str> {
        let asked = std::cell::RefCell::new(Vec::new());
        read(&|name| {
            asked.borrow_mut().push(name);
            Ok(None)
        });
        let mut asked = asked.into_inner();
        asked.sort_unstable();
        asked.dedup();
        asked
    }
    fn table(settings: &[Setting]) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = settings.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names
    }
    let server = names_read(|lookup| {
        ServerConfig::from_lookup(lookup).unwrap();
    });

    assert_eq!(server, table(SERVER_SETTINGS), "what the api reads vs its --help table");
    let camera = names_read(|lookup| {
        CameraConfig::from_lookup(lookup).unwrap();
    });
    assert_eq!(camera, table(CAMERA_SETTINGS), "what the camera reads vs its --help table");
}

/// A self-signed test CA (its key was thrown away): test data, trusted nowhere.
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBujCCAWGgAwIBAgIUCvAECHNp6tPHnbhQjep5+m2cr2kwCgYIKoZIzj0EAwIw
MjEwMC4GA1UEAwwnY2FtZXJhLWxvZ3MgdGVzdCBDQSAoY29uZmlnIHRlc3RzIG9u
bHkpMCAXDTI2MTEyMzIwMzAyMFoYDzIxMjYxMDMwMjAzMDIwWjAyMTAwLgYDVQQD
DCdjYW1lcmEtbG9ncyB0ZXN0IENBIChjb25maWcgdGVzdHMgb25seSkwWTATBgcq
hkjOPQIBBggqhkjOPQMBBwNCAAR+q0bXkDRJ6ARfES5EhluP8BPEmBh9UGjDdh2R
SNU4xl6yLqbVdkzdxALZRRqKhpo8wOISbEhVHoVa+iPIUwVho1MwUTAdBgNVHQ4E
FgQUv1FKnhTnUjo7XjD23UQa4KVuYokwHwYDVR0jBBgwFoAUv1FKnhTnUjo7XjD2
3UQa4KVuYokwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiBFB6fM
JIokNI2maB2tClNN3bi9OuKLrd6h7ytHd7D5TwIgG7Xx4HHqgDktRL/4JBQ5UroP
RG9HjNGlT/IrtPD/9RU=
-----END CERTIFICATE-----
";

/// A file of its own under the temporary directory, removed when dropped: also when the test
/// fails.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `contents` to a [`TempFile`].
fn temp_file(name: &str, contents: &str) -> TempFile {
    let path =
        std::env::temp_dir().join(format!("camera-logs-config-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).unwrap();
    TempFile(path)
}

#[test]
fn https_base_urls_are_accepted() {
    let c = camera(&[("API_BASE_URL", "https://edge.example:8443/")]).unwrap();
    assert_eq!(c.api_base_url, "https://edge.example:8443");
    let err = camera(&[("API_BASE_URL", "ftp://edge")]).unwrap_err();
    assert!(err.to_string().contains("https://"), "{err}");
}

#[test]
fn ca_cert_file_reads_every_certificate() {
    const FAKE_KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
    let two =
        temp_file("two.pem", &format!("# the edge's CA\n{TEST_CA_PEM}{TEST_CA_PEM}{FAKE_KEY}"));
    let c = camera(&[
        ("API_BASE_URL", "https://edge.example"),
        ("CA_CERT_FILE", &two.0.to_string_lossy()),
    ])
    .unwrap();
    let ca = c.ca_certs.unwrap();
    assert_eq!(ca.path, two.0);
    assert_eq!(ca.der.len(), 2, "both certificates, and not the key");
    assert_eq!(ca.der[0].first(), Some(&0x30));
    assert!(!format!("{ca:?}").contains("48,"), "Debug is short: {ca:?}");
}

#[test]
fn an_unusable_ca_cert_file_names_the_variable() {
    let missing = std::env::temp_dir().join("camera-logs-config-no-such-ca.pem");
    let garbage = temp_file("garbage.pem", "not a certificate\n");
    let bad_base64 = temp_file(
        "bad-base64.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    // Valid base64 ("hello world"), but no DER certificate.
    let not_der = temp_file(
        "not-der.pem",
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    );
    let truncated = temp_file("truncated.pem", &TEST_CA_PEM[..200]);
    let key_only =
        temp_file("key-only.pem", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let written = [&garbage, &bad_base64, &not_der, &truncated, &key_only].map(|file| &file.0);
    for path in std::iter::once(&missing).chain(written) {
        let value = path.to_string_lossy().into_owned();
        // With an http:// URL too: a set variable is checked even where it is unused.
        let err = camera(&[("CA_CERT_FILE", &value)]).unwrap_err();
        assert_eq!(err.variable, "CA_CERT_FILE", "{value}");
        assert_eq!(err.value, value);
        assert!(err.to_string().contains("CA_CERT_FILE"), "{err}");
        assert!(!err.to_string().contains("AAAA"), "the file is never quoted");
    }
}

#[test]
fn der_shape_check() {
    assert!(is_der_sequence(&[0x30, 0x00]));
    assert!(is_der_sequence(&[0x30, 0x02, 1, 2]));
    assert!(is_der_sequence(&[0x30, 0x81, 0x01, 9]));
    assert!(!is_der_sequence(&[0x30, 0x03, 1, 2]));
    assert!(!is_der_sequence(&[0x31, 0x00]));
    assert!(!is_der_sequence(&[0x30, 0x82, 0x01]));
    assert!(!is_der_sequence(&[0x30, 0x80, 0, 0]));
    assert!(!is_der_sequence(&[]));
}

#[test]
fn the_camera_table_lists_ca_cert_file_for_https() {
    let ca = CAMERA_SETTINGS.iter().find(|s| s.name == "CA_CERT_FILE").expect("CA_CERT_FILE");
    assert!(ca.default.is_none() && ca.help.contains("https://"), "{ca:?}");
}
