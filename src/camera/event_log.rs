//! The camera's own log of events: bounded in memory, optionally persisted as JSON lines.
//!
//! With a file, an event is written to it before it becomes visible to any command, so an event
//! a user could have seen survives the camera being killed. On start the file is reloaded; a
//! torn last line (the process died mid-write) is skipped and reported. The file is compacted by
//! writing a new file and renaming it over the old one, never by truncating in place.
//!
//! This module does no networking and knows nothing of the API server.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::protocol::{LogEntry, TimeRange};

/// What was found when reloading a log file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub loaded: usize,
    /// Lines that were not a valid event (a torn last line, or damage elsewhere).
    pub skipped_lines: usize,
}

/// A camera's events, oldest first.
pub struct EventLog {
    inner: Mutex<Inner>,
}

struct Inner {
    events: VecDeque<LogEntry>,
    max_events: usize,
    file: Option<Persisted>,
}

struct Persisted {
    path: PathBuf,
    file: File,
    lines: usize,
}

impl EventLog {
    /// A log kept only in memory, holding at most `max_events` (at least 1).
    pub fn in_memory(max_events: usize) -> EventLog {
        let inner = Inner { events: VecDeque::new(), max_events: max_events.max(1), file: None };
        EventLog { inner: Mutex::new(inner) }
    }

    /// A log backed by `path`: reloads what is there, then appends to it.
    pub fn open(path: &Path, max_events: usize) -> io::Result<(EventLog, LoadReport)> {
        let max_events = max_events.max(1);
        let (mut events, mut report) = load(path)?;
        events.drain(..events.len().saturating_sub(max_events));
        report.loaded = events.len();
        // Rewritten whole at every start: a torn last line is gone, the next append starts on
        // a fresh line, and the file holds no more than it should.
        let file = rewrite(path, &events)?;
        let log = EventLog { inner: Mutex::new(Inner { events, max_events, file: Some(file) }) };
        Ok((log, report))
    }

    /// Records an event. With a file, the line is written before the event is visible; if the
    /// write fails the event is still kept in memory and the error is returned for reporting.
    pub fn push(&self, entry: LogEntry) -> io::Result<()> {
        let mut inner = self.inner.lock();
        let Inner { events, max_events, file } = &mut *inner;
        let written = file.as_mut().map_or(Ok(()), |file| file.append(&entry));
        events.push_back(entry);
        if events.len() > *max_events {
            events.pop_front();
        }
        // The file may hold up to twice `max_events` lines before it is rewritten.
        let compacted = match file {
            Some(file) if file.lines > max_events.saturating_mul(2) => {
                rewrite(&file.path.clone(), events).map(|rewritten| *file = rewritten)
            }
            _ => Ok(()),
        };
        written.and(compacted)
    }

    /// The events within `range` (inclusive), in log order.
    pub fn in_range(&self, range: TimeRange) -> Vec<LogEntry> {
        let inner = self.inner.lock();
        inner.events.iter().filter(|e| range.contains(e.timestamp)).cloned().collect()
    }
}

impl Persisted {
    fn append(&mut self, entry: &LogEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        // One write per line: a crash leaves at most one torn line, at the end.
        self.file.write_all(&line)?;
        self.file.flush()?;
        self.lines += 1;
        Ok(())
    }
}

/// Reads every line; returns the events, and the report of what was found.
fn load(path: &Path) -> io::Result<(VecDeque<LogEntry>, LoadReport)> {
    // At most twice MAX_EVENTS lines (it is compacted past that): read whole.
    let text = match fs::read(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        text => text?,
    };
    let mut events = VecDeque::new();
    let mut report = LoadReport::default();
    for line in text.split_inclusive(|b| *b == b'\n') {
        let complete = line.last() == Some(&b'\n');
        match serde_json::from_slice::<LogEntry>(line) {
            Ok(entry) if complete && entry.timestamp.is_finite() => events.push_back(entry),
            _ => report.skipped_lines += 1,
        }
    }
    Ok((events, report))
}

/// Writes `events` to a temporary file beside `path`, syncs it and renames it over `path`.
fn rewrite(path: &Path, events: &VecDeque<LogEntry>) -> io::Result<Persisted> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".compacting");
    let tmp = PathBuf::from(tmp);
    let mut out = io::BufWriter::new(File::create(&tmp)?);
    for entry in events {
        serde_json::to_writer(&mut out, entry).map_err(io::Error::other)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&tmp, path)?;
    let file = OpenOptions::new().append(true).open(path)?;
    Ok(Persisted { path: path.to_path_buf(), file, lines: events.len() })
}

#[cfg(test)]
impl EventLog {
    pub fn snapshot(&self) -> Vec<LogEntry> {
        self.in_range(TimeRange::ALL)
    }

    pub fn len(&self) -> usize {
        self.inner.lock().events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines in the backing file (0 without one); for compaction tests.
    pub fn file_lines(&self) -> usize {
        self.inner.lock().file.as_ref().map_or(0, |f| f.lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(timestamp: f64) -> LogEntry {
        LogEntry { timestamp, description: format!("event {timestamp}") }
    }

    /// A test's own directory, removed when dropped: also when the test fails.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("camera-logs-test-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn log_file(&self) -> PathBuf {
            self.0.join("events.jsonl")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn memory_log_is_bounded_and_drops_the_oldest() {
        let log = EventLog::in_memory(3);
        for t in 1..=5 {
            log.push(entry(t as f64)).unwrap();
        }
        assert_eq!(log.snapshot(), vec![entry(3.0), entry(4.0), entry(5.0)]);
        assert_eq!(log.in_range(TimeRange::new(Some(4.0), Some(4.0))), vec![entry(4.0)]);
    }

    #[test]
    fn file_survives_reopen_and_a_torn_line_is_skipped() {
        let dir = TempDir::new("torn");
        let path = dir.log_file();
        {
            let (log, report) = EventLog::open(&path, 100).unwrap();
            assert_eq!(report, LoadReport::default());
            log.push(entry(1.0)).unwrap();
            log.push(entry(2.0)).unwrap();
        }
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"timestamp": 3.0, "descr"#).unwrap();
        drop(file);

        let (log, report) = EventLog::open(&path, 100).unwrap();
        assert_eq!(report, LoadReport { loaded: 2, skipped_lines: 1 });
        log.push(entry(4.0)).unwrap();
        drop(log);
        let (log, report) = EventLog::open(&path, 100).unwrap();
        assert_eq!(report.skipped_lines, 0, "the torn line was rewritten away, not appended to");
        assert_eq!(log.snapshot(), vec![entry(1.0), entry(2.0), entry(4.0)]);
    }

    #[test]
    fn file_is_compacted_past_twice_the_bound() {
        let dir = TempDir::new("compact");
        let path = dir.log_file();
        let (log, _) = EventLog::open(&path, 10).unwrap();
        for t in 0..21 {
            log.push(entry(t as f64)).unwrap();
        }
        assert_eq!(log.file_lines(), 10, "21 lines > 2 x 10: rewritten with the 10 kept");
        assert_eq!(fs::read_to_string(&path).unwrap().lines().count(), 10);
        let (reopened, report) = EventLog::open(&path, 10).unwrap();
        assert_eq!(report.loaded, 10);
        assert_eq!(reopened.snapshot(), log.snapshot());
    }
}
