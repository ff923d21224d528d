//! The page at `GET /` in a real browser: Debian's headless chromium driven by chromedriver over
//! WebDriver (HTTP JSON, spoken here with ureq and serde_json). With `API_TOKEN` set, the page
//! first says the token is missing, then lists the cameras once it is typed in; for each range
//! (last 5 minutes, last hour, all, custom local dates) the rows it renders must be exactly
//! `/logs`' answer for that range, newest first, in local time and epoch seconds; a backwards
//! range and an offline camera are explained in sentences. Opening the page asks the server for
//! nothing it lacks (no `/favicon.ico`: no warning in its log) and leaves no error in the browser's
//! console. A screenshot is saved under target/tmp.
//!
//! Skips, with one line saying why, where chromium or chromedriver is not installed
//! (`apt-get install chromium chromium-driver`). Chromedriver is stopped by its pid.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use camera_logs::LogEntry;
use camera_logs::ServerConfig;
use serde_json::{json, Value};

const TOKEN: &str = "web-test-token";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn find(candidates: &[&str], env: &str) -> Option<PathBuf> {
    match std::env::var_os(env) {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => candidates.iter().map(PathBuf::from).find(|p| p.is_file()),
    }
}

/// chromedriver and chromium, or `None` after a line saying the test is skipped.
fn chromedriver_and_chromium() -> Option<(PathBuf, PathBuf)> {
    let found = (
        find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"], "CHROMEDRIVER"),
        find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"], "CHROMIUM"),
    );
    if let (Some(chromedriver), Some(chromium)) = found {
        return Some((chromedriver, chromium));
    }
    println!("skipped: chromium or chromedriver is not installed (apt-get install chromium chromium-driver)");
    None
}

/// A chromedriver process with one chromium session; both end when it is dropped.
struct Browser {
    driver: Child,
    url: String,
    session: String,
    agent: ureq::Agent,
    profile: TempDir,
}

impl Browser {
    fn start(chromedriver: &Path, chromium: &Path) -> Browser {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().unwrap().port()
        };
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            // Local time on the page is then UTC, which the test can compute independently.
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = TempDir::new("chromium-profile");
        let mut browser = Browser {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent: agent(Duration::from_secs(60)),
            profile,
        };
        wait_until("chromedriver is ready", PATIENCE, || {
            browser
                .agent
                .get(&format!("{}/status", browser.url))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true)
        });
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,760",
            &format!("--user-data-dir={}", browser.profile.0.display()),
        ];
        let created = browser.post(
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args},
                "goog:loggingPrefs": {"browser": "ALL"},
            }}}),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        browser
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.url);
        let response = match body {
            Some(body) => self.agent.post(&url).send_json(body),
            None if method == "DELETE" => self.agent.delete(&url).call(),
            None => self.agent.get(&url).call(),
        };
        let mut response = response.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status().as_u16();
        let value: Value = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_json()
            .expect("WebDriver answers JSON");
        assert_eq!(status, 200, "WebDriver {method} {path}: {value}");
        value["value"].clone()
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.send("POST", path, Some(body))
    }

    fn session_path(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    fn open(&self, url: &str) {
        self.post(&self.session_path("/url"), json!({ "url": url }));
    }

    fn element(&self, css: &str) -> String {
        let found = self
            .post(&self.session_path("/element"), json!({"using": "css selector", "value": css}));
        found[ELEMENT].as_str().unwrap_or_else(|| panic!("no element {css}: {found}")).to_string()
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.post(&self.session_path(&format!("/element/{id}/click")), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.post(&self.session_path(&format!("/element/{id}/value")), json!({ "text": text }));
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.post(&self.session_path("/execute/sync"), json!({"script": script, "args": args}))
    }

    fn text(&self, css: &str) -> String {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .as_str()
        .unwrap_or("")
        .to_string()
    }

    /// The console's messages of level SEVERE (errors, refused loads) since the last call.
    fn console_errors(&self) -> Vec<Value> {
        let entries = self.post(&self.session_path("/se/log"), json!({"type": "browser"}));
        let entries = entries.as_array().cloned().unwrap_or_default();
        entries.into_iter().filter(|e| e["level"] == "SEVERE").collect()
    }

    /// Every row of a table body as its cells' text.
    fn rows(&self, css: &str) -> Vec<Vec<String>> {
        let value = self.script(
            "return [...document.querySelectorAll(arguments[0] + ' tbody tr')].map(r => [...r.cells].map(c => c.textContent));",
            json!([css]),
        );
        serde_json::from_value(value).expect("rows of text")
    }

    fn screenshot(&self, to: &Path) {
        let encoded = self.send("GET", &self.session_path("/screenshot"), None);
        let png = base64_decode(encoded.as_str().expect("base64 text"));
        assert_eq!(&png[1..4], b"PNG");
        std::fs::write(to, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Quits chromium; errors are moot while tearing down.
            let _ = self.agent.delete(&format!("{}/session/{}", self.url, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        other => panic!("not base64: {other}"),
    };
    let digits: Vec<u8> =
        text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n =
            chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// What the page must show for an event, computed here: UTC (the browser's zone in this test)
/// as `YYYY-MM-DD HH:MM:SS.mmm`, the epoch seconds, the description.
fn row_of(event: &LogEntry) -> Vec<String> {
    let utc = utc_timestamp(event.timestamp);
    vec![
        utc.trim_end_matches('Z').replacen('T', " ", 1),
        event.timestamp.to_string(),
        event.description.clone(),
    ]
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC, as a datetime-local input takes it.
fn datetime_local(epoch_secs: f64) -> String {
    let utc = utc_timestamp(epoch_secs);
    utc[..19].to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time at or after the epoch (milliseconds truncated),
/// counted out year by year and month by month: independent of the crate's and the page's
/// own date arithmetic.
fn utc_timestamp(epoch_secs: f64) -> String {
    let millis = Duration::from_secs_f64(epoch_secs).as_millis();
    let (mut days, rem) = ((millis / 86_400_000) as u64, (millis % 86_400_000) as u64);
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut year = 1970;
    while days >= if leap(year) { 366 } else { 365 } {
        days -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let lengths = [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 0;
    while days >= lengths[month] {
        days -= lengths[month];
        month += 1;
    }
    let (secs, ms) = (rem / 1000, rem % 1000);
    format!(
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        month + 1,
        days + 1,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[test]
fn utc_timestamps_are_counted_right() {
    assert_eq!(utc_timestamp(0.0), "1970-01-01T00:00:00.000Z");
    assert_eq!(utc_timestamp(951_782_400.5), "2000-02-29T00:00:00.500Z");
    assert_eq!(utc_timestamp(1_700_000_000.25), "2023-11-14T22:13:20.250Z");
    assert_eq!(utc_timestamp(4_107_542_399.75), "2100-02-28T23:59:59.750Z");
}

/// Chooses a range on the page, presses the button and waits for the answer; returns the rows.
fn show(browser: &Browser, range: &str) -> Vec<Vec<String>> {
    browser.script(
        "document.querySelector('#events-info').textContent = ''; document.querySelector('#events-error').textContent = '';",
        json!([]),
    );
    browser.click(&format!("#range option[value=\"{range}\"]"));
    browser.click("#show");
    wait_for("the page to show events", PATIENCE, || {
        let info = browser.text("#events-info");
        let error = browser.text("#events-error");
        if !error.is_empty() {
            panic!("the page shows an error for range {range}: {error}");
        }
        if info.contains("event(s)") {
            Ok(())
        } else {
            Err(format!("info {info:?}"))
        }
    });
    browser.rows("#events")
}

#[test]
fn the_page_lists_cameras_and_shows_exactly_the_events_of_each_range() {
    let Some((chromedriver, chromium)) = chromedriver_and_chromium() else {
        return;
    };

    let t = now().floor();
    // Ages in seconds, none near a range edge (5 min, 1 h), all exact in an f64 with .25.
    let ages = [4, 40, 120, 250, 420, 900, 1800, 2900, 3500, 4000, 7300, 90_000];
    let front: Vec<LogEntry> = ages
        .iter()
        .enumerate()
        .map(|(i, age)| {
            let what = match i % 4 {
                0 => format!("motion detected at ({}, {})", 97 + i * 61, 655 - i * 37),
                1 => "user started viewing live video".to_string(),
                2 => format!("brightness adjusted +{}", i % 5 + 1),
                _ => "user stopped viewing live video".to_string(),
            };
            // The oldest one carries markup, which must be shown as text.
            let what = if *age == 90_000 { "<b>not bold</b>".to_string() } else { what };
            entry(t - f64::from(*age) + 0.25, &what)
        })
        .collect();
    let config = ServerConfig { api_token: Some(TOKEN.to_string()), ..test_config() };
    let server = TestServer::start(config);
    let base = server.url.clone();
    let _front = Camera::start(&base, "front", &front);
    server.wait_for_camera("front");
    let api = agent(Duration::from_secs(60));
    // The page shows `/logs`' answer newest first.
    let logs = |query: &str| -> Vec<Vec<String>> {
        get_with(&api, &format!("{base}/logs?cameraId=front{query}"), Some(TOKEN))
            .expect_logs()
            .logs
            .iter()
            .rev()
            .map(row_of)
            .collect()
    };

    let browser = Browser::start(&chromedriver, &chromium);
    browser.open(&format!("{base}/"));
    wait_for("the page to ask for the token", PATIENCE, || {
        let error = browser.text("#cameras-error");
        if error.contains("API token is missing or wrong") {
            Ok(())
        } else {
            Err(format!("cameras-error {error:?}"))
        }
    });
    browser.type_into("#token", TOKEN);
    // A lone camera is chosen for the user; the list says it is this instance's own.
    wait_until("'front' chosen", PATIENCE, || {
        browser.script("return document.getElementById('camera').value;", json!([])) == "front"
    });
    assert!(
        browser.text("#scope").contains("This instance's own cameras"),
        "{}",
        browser.text("#scope")
    );
    let back = Camera::start(&base, "back", &[entry(t - 10.0, "back event")]);
    server.wait_for_camera("back");
    let cameras = wait_for("the camera list", PATIENCE, || {
        let rows = browser.rows("#cameras");
        if rows.len() == 2 {
            Ok(rows)
        } else {
            Err(format!("rows {rows:?}"))
        }
    });
    wait_until("the token error is gone", PATIENCE, || browser.text("#cameras-error").is_empty());
    assert_eq!(cameras[0][0], "back", "sorted by id: {cameras:?}");
    assert_eq!(cameras[1][0], "front");
    for row in &cameras {
        assert_eq!(row[1], "online", "{row:?}");
        assert!(row[2].contains(" s ago)"), "last seen: {row:?}");
        assert_eq!(row[3], "0", "waiting calls: {row:?}");
    }
    assert_eq!(
        browser.script("return sessionStorage.getItem('camera-logs-api-token');", json!([])),
        TOKEN,
        "the token is kept for the tab"
    );

    // A click on a camera shows its events, for the range chosen (the last 5 minutes).
    browser.click("#cameras tr[data-camera-id=\"front\"]");
    wait_until("the click shows front's events", PATIENCE, || {
        browser.text("#events-info").contains("from camera 'front' for the last 5 minutes")
    });
    assert_eq!(browser.rows("#events"), logs(&format!("&startTimestamp={}", now() - 300.0)));
    let last_hour = show(&browser, "1h");
    assert_eq!(last_hour, logs(&format!("&startTimestamp={}", now() - 3600.0)));
    assert_eq!(last_hour.len(), 9, "{last_hour:?}");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-page.png");
    browser.screenshot(&shot);
    println!("screenshot: {}", shot.display());
    let last_5_min = show(&browser, "5m");
    assert_eq!(last_5_min, logs(&format!("&startTimestamp={}", now() - 300.0)));
    assert_eq!(last_5_min.len(), 4);
    let all = show(&browser, "all");
    assert_eq!(all, logs(""));
    assert_eq!(all.len(), front.len());
    assert_eq!(all[all.len() - 1][2], "<b>not bold</b>", "descriptions are text, not HTML");

    // Custom dates, typed as local time (UTC here), whole seconds.
    let (from, to) = (t - 3000.0, t - 100.0);
    browser.click("#range option[value=\"custom\"]");
    browser.script(
        "const [s, e] = arguments; for (const [id, v] of [['start', s], ['end', e]]) { const i = document.getElementById(id); i.value = v; i.dispatchEvent(new Event('input')); }",
        json!([datetime_local(from), datetime_local(to)]),
    );
    let custom = show(&browser, "custom");
    assert_eq!(custom, logs(&format!("&startTimestamp={from}&endTimestamp={to}")));
    assert_eq!(custom.len(), 6, "{custom:?}");

    // Backwards: explained, and no request made.
    browser.script(
        "document.getElementById('start').value = arguments[0];",
        json!([datetime_local(to + 60.0)]),
    );
    browser.click("#show");
    let error = browser.text("#events-error");
    assert!(error.contains("backwards"), "{error:?}");

    // An offline camera, explained.
    drop(back);
    wait_for("'back' shown offline", PATIENCE, || {
        let rows = browser.rows("#cameras");
        match rows.iter().find(|r| r[0] == "back") {
            Some(row) if row[1] == "offline" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    browser.click("#camera option[value=\"back\"]");
    browser.click("#range option[value=\"all\"]");
    browser.click("#show");
    let error = wait_for("the offline explanation", PATIENCE, || {
        let error = browser.text("#events-error");
        if error.is_empty() {
            Err("no error yet".into())
        } else {
            Ok(error)
        }
    });
    assert!(error.starts_with("Camera 'back' is offline"), "{error:?}");
}

#[test]
fn the_page_shows_the_fleet_with_the_instance_holding_each_camera() {
    let Some((chromedriver, chromium)) = chromedriver_and_chromium() else {
        return;
    };
    let (p1, p2) = (crate::common::edge::free_port(), crate::common::edge::free_port());
    let (url1, url2) = (format!("http://127.0.0.1:{p1}"), format!("http://127.0.0.1:{p2}"));
    let fleet = |port: u16, own: &str, peer: &str| ServerConfig {
        port,
        peers: Some(vec![peer.to_string()]),
        instance_name: Some(own.to_string()),
        ..test_config()
    };
    let one = TestServer::start(fleet(p1, &url1, &url2));
    let two = TestServer::start(fleet(p2, &url2, &url1));
    let _a = Camera::start(&one.url, "a", &[entry(1.0, "a")]);
    let _b = Camera::start(&two.url, "b", &[entry(1.0, "b")]);
    one.wait_for_camera("a");
    two.wait_for_camera("b");

    let browser = Browser::start(&chromedriver, &chromium);
    browser.open(&format!("{}/", one.url));
    let rows = wait_for("both instances' cameras", PATIENCE, || {
        let rows = browser.rows("#cameras");
        if rows.len() == 2 {
            Ok(rows)
        } else {
            Err(format!("rows {rows:?}"))
        }
    });
    assert_eq!((rows[0][0].as_str(), rows[0][4].as_str()), ("a", url1.as_str()), "{rows:?}");
    assert_eq!((rows[1][0].as_str(), rows[1][4].as_str()), ("b", url2.as_str()), "{rows:?}");
    assert!(browser.text("#scope").contains("The whole fleet"), "{}", browser.text("#scope"));

    // An instance that stops answering is named, and its cameras are said to be missing.
    two.shutdown();
    wait_for("the missing instance named", PATIENCE, || {
        let text = browser.text("#unreachable");
        if text.contains(&url2) {
            Ok(())
        } else {
            Err(text)
        }
    });
    assert_eq!(browser.rows("#cameras").len(), 1);
}

/// A browser opening the page asks for its icon unless the page brings one: the page's is a
/// `data:` URL its Content-Security-Policy allows, so the server logs no `GET /favicon.ico -> 404`
/// warning (nor any other) and the console shows no refused load.
#[test]
fn opening_the_page_costs_no_warning_and_no_console_error() {
    let Some((chromedriver, chromium)) = chromedriver_and_chromium() else {
        return;
    };
    let api = start_api(&[]);
    let _front = Camera::start(&api.url, "front", &[entry(now() - 10.0, "front event")]);
    let browser = Browser::start(&chromedriver, &chromium);
    browser.open(&format!("{}/", api.url));
    // The browser asks for an icon once the page has loaded; the page's next refresh of the list
    // (3 s after the first) comes after that.
    let first = wait_for("the page to list the camera", PATIENCE, || {
        let refreshed = browser.text("#refreshed");
        if refreshed.starts_with("1 camera(s)") {
            Ok(refreshed)
        } else {
            Err(refreshed)
        }
    });
    wait_until("the page's next refresh", PATIENCE, || browser.text("#refreshed") != first);

    let lines = api.proc.stderr_lines();
    let warnings: Vec<&String> =
        lines.iter().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(warnings.is_empty(), "opening the page logged {warnings:#?}");
    let errors = browser.console_errors();
    assert!(errors.is_empty(), "the console shows {errors:#?}");
}
