//! Human-readable log lines on stderr: `2026-11-23T12:00:00.123Z INFO  camera 'front' connected`.
//!
//! Deliberately tiny (no logging framework is on the dependency list). It must never be given a
//! secret: tokens are checked, not printed. Text a client chose (a method, a path, an address
//! header) goes through [`clean`] first, so it can neither forge a line nor make one huge.
//!
//! A line is never written by the thread that logs it: it goes through a bounded queue to one
//! writer thread, so a stuck stderr (a pipe nobody reads) never stalls a request, even one that
//! logs under a lock. While the sink is stuck, lines beyond the queue are dropped and counted,
//! and the count is logged once it moves again.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Sender};

/// How much is logged: each level includes the ones above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
}

impl std::str::FromStr for Level {
    type Err = &'static str;

    fn from_str(raw: &str) -> Result<Level, Self::Err> {
        let levels = [Level::Off, Level::Error, Level::Warn, Level::Info];
        let level = levels.into_iter().find(|level| format!("{level:?}").eq_ignore_ascii_case(raw));
        level.ok_or("one of info, warn, error, off")
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets what is logged from now on (the binaries set it once from `LOG_LEVEL`).
pub fn set_level(level: Level) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Writes a line that matters at any level but `off` (where a server is listening), marked INFO.
pub fn announce(args: fmt::Arguments<'_>) {
    if LEVEL.load(Ordering::Relaxed) != Level::Off as u8 {
        write_line("INFO", args);
    }
}

/// Writes one line at `level`; used through the `info!`, `warn!` and `error!` macros.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if level as u8 > LEVEL.load(Ordering::Relaxed) {
        return;
    }
    // Indexed by level; `off` is never written.
    write_line(["ERROR", "ERROR", "WARN", "INFO"][level as usize], args);
}

/// Lines waiting for the writer, at most (about 1 MiB of text).
const QUEUE: usize = 4096;
/// Lines dropped because the queue was full, not yet reported.
static DROPPED: AtomicUsize = AtomicUsize::new(0);
/// Lines queued or being written: [`flush`] waits for none.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// The queue to the writer thread, started with the first line. Without its thread every line
/// is dropped (and counted): the process serves on either way.
fn sink() -> &'static Sender<String> {
    static SINK: OnceLock<Sender<String>> = OnceLock::new();
    SINK.get_or_init(|| {
        let (lines, queued) = bounded::<String>(QUEUE);
        let writer = move || {
            for line in queued {
                // One write call per line keeps lines whole.
                let _ = std::io::stderr().write_all(line.as_bytes());
                PENDING.fetch_sub(1, Ordering::Relaxed);
                if let n @ 1.. = DROPPED.swap(0, Ordering::Relaxed) {
                    let args = format_args!("{n} log line(s) dropped: stderr did not take them");
                    let _ = std::io::stderr().write_all(line_of("WARN", args).as_bytes());
                }
            }
        };
        let _ = std::thread::Builder::new().name("log-writer".into()).spawn(writer);
        lines
    })
}

fn line_of(level: &str, args: fmt::Arguments<'_>) -> String {
    format!("{} {level:<5} {args}\n", utc_timestamp(SystemTime::now()))
}

fn write_line(level: &str, args: fmt::Arguments<'_>) {
    PENDING.fetch_add(1, Ordering::Relaxed);
    if sink().try_send(line_of(level, args)).is_err() {
        PENDING.fetch_sub(1, Ordering::Relaxed);
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Waits (2 s at most: a stuck sink must not hold an exit) until the lines logged so far are
/// written, before the process exits.
pub fn flush() {
    let deadline = Instant::now() + Duration::from_secs(2);
    while PENDING.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Client-supplied text made safe for one log line (and for an error message): control bytes
/// (NUL, CR, LF, ESC, ...) are escaped as `\u{..}`, and the text is cut to `max_chars`
/// characters, with `…` marking the cut.
pub fn clean(text: &str, max_chars: usize) -> String {
    // One pass over the kept characters; the next one only says whether there was a cut.
    let (mut out, mut chars) = (String::with_capacity(text.len().min(max_chars + 8)), text.chars());
    for c in chars.by_ref().take(max_chars) {
        match c.is_control() {
            true => out.extend(c.escape_default()),
            false => out.push(c),
        }
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// Seconds since the Unix epoch as f64, the unit of every timestamp on the wire.
pub fn epoch_secs(t: SystemTime) -> f64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(before) => -before.duration().as_secs_f64(),
    }
}

/// RFC 3339 UTC with milliseconds, computed by hand (civil-from-days, H. Hinnant's algorithm).
pub fn utc_timestamp(t: SystemTime) -> String {
    let millis = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let secs = (millis / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute, second, ms) = (rem / 3600, rem / 60 % 60, rem % 60, millis % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}Z")
}

/// `log_info!("...", args)`: a line at [`Level::Info`]. The `log_` prefix keeps the macros'
/// names apart from the `error` module's.
macro_rules! log_info {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($arg)*)) };
}

/// `log_warn!`: a line at [`Level::Warn`].
macro_rules! log_warn {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($arg)*)) };
}

/// `log_error!`: a line at [`Level::Error`].
macro_rules! log_error {
    ($($arg:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($arg)*)) };
}

pub(crate) use {log_error, log_info, log_warn};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn clean_escapes_control_bytes_and_cuts_long_text() {
        assert_eq!(clean("GET", 16), "GET");
        assert_eq!(clean("GET", 3), "GET");
        assert_eq!(
            clean("a\nINFO  forged\r\0\x1b[31m", 64),
            "a\\nINFO  forged\\r\\u{0}\\u{1b}[31m"
        );
        assert_eq!(clean(&"x".repeat(1_000_000), 8), "xxxxxxxx…");
        assert_eq!(clean("ééé", 2), "éé…");
        assert_eq!(clean("", 4), "");
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_732_300_000_250);
        assert_eq!(utc_timestamp(t), "2024-11-22T18:26:40.250Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_timestamp(leap), "2000-02-29T00:00:00.000Z");
    }
}
