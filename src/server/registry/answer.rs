//! A camera's answer as its callers are sent it: read without an allocation per event, sorted
//! once and serialized once into one JSON buffer, which every caller's response is cut from and
//! streamed out of, so 50 callers of a 9 MB answer hold 9 MB, not 450. What all answers hold
//! together is bounded (`MAX_ANSWER_BYTES`); the bytes are given back when the last caller's
//! response is written. Knows nothing of HTTP beyond the bytes of a `/logs` body.

use std::borrow::Cow;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::camera::Counted;

/// A `send_logs` body ([`crate::protocol::SendLogsBody`]) as the server reads it: each string
/// borrowed from the body's bytes (unless it holds an escape), so reading 100,000 events
/// allocates once, not 100,000 times; and freed at once, not kept in a thread's heap.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Received<'a> {
    #[serde(default, borrow)]
    pub request_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub logs: Vec<Event<'a>>,
}

/// A [`crate::protocol::LogEntry`], borrowed; serialized exactly as one.
#[derive(Deserialize, Serialize)]
pub struct Event<'a> {
    pub timestamp: f64,
    #[serde(borrow)]
    pub description: Cow<'a, str>,
}

/// Per event, besides its JSON: where it starts, and its timestamp.
const INDEX_BYTES: usize = std::mem::size_of::<usize>() + std::mem::size_of::<f64>();

/// One answer: its events, ascending by timestamp, as JSON objects separated by commas.
pub struct Answer {
    json: Vec<u8>,
    /// Where each event starts in `json`.
    starts: Vec<usize>,
    timestamps: Vec<f64>,
    /// Its share of `MAX_ANSWER_BYTES`, given back when the answer is dropped.
    _held: Counted,
}

impl Answer {
    /// Sorts `events` by timestamp (equal ones keep the camera's order) and serializes them
    /// once; `None` when the bytes would take `held` past `limit`.
    pub fn new(mut events: Vec<Event>, held: &Arc<AtomicUsize>, limit: usize) -> Option<Answer> {
        events.sort_by(|a, b| a.timestamp.total_cmp(&b.timestamp));
        // An event's JSON is its description and about 50 bytes: sized once, not grown by copies.
        let estimate = events.iter().map(|e| e.description.len() + 64).sum();
        let mut json = Vec::with_capacity(estimate);
        let mut starts = Vec::with_capacity(events.len());
        for entry in &events {
            if !starts.is_empty() {
                json.push(b',');
            }
            starts.push(json.len());
            // Writing a struct of a number and a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut json, entry);
        }
        json.shrink_to_fit();
        let timestamps = events.iter().map(|e| e.timestamp).collect();
        let held = Counted::within(held, json.len() + INDEX_BYTES * starts.len(), limit)?;
        Some(Answer { json, starts, timestamps, _held: held })
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn timestamps(&self) -> &[f64] {
        &self.timestamps
    }
}

/// The events one caller asked for: a window of events on an answer every caller of a command
/// shares.
#[derive(Clone)]
pub struct LogSlice {
    pub(super) answer: Arc<Answer>,
    pub(super) events: Range<usize>,
}

impl LogSlice {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// The body of `GET /logs` for `camera_id`, `{"cameraId": ..., "logs": [...]}`, read straight
    /// from the shared answer, and its length in bytes.
    pub fn body(self, camera_id: &str) -> (impl Read + Send + 'static, usize) {
        let id = serde_json::to_string(camera_id).unwrap_or_default();
        let head = format!("{{\"cameraId\":{id},\"logs\":[").into_bytes();
        let Range { start, end } = self.events;
        let (starts, json_end) = (&self.answer.starts, self.answer.json.len());
        // The last event ends before the comma that starts the next, if there is one.
        let last_end = |end: usize| starts.get(end).map_or(json_end, |next| next - 1);
        let (at, to) = if start < end { (starts[start], last_end(end)) } else { (0, 0) };
        let length = head.len() + (to - at) + TAIL.len();
        (Body { head, answer: self.answer, bytes: at..to, read: 0 }, length)
    }
}

const TAIL: &[u8] = b"]}";

/// A `/logs` body: `head`, bytes of a shared answer (kept alive until the last one is read),
/// and [`TAIL`], read as one: a read fills the buffer across the three, so that a body leaves
/// in as few writes as one buffer would (read as three, it took 2.64 sends per call in load
/// scenario 2a against 1.95; `tests::a_logs_body_is_read_in_one_piece_and_in_any_pieces_the_same`).
struct Body {
    head: Vec<u8>,
    answer: Arc<Answer>,
    bytes: Range<usize>,
    read: usize,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (mut skip, mut filled) = (self.read, 0);
        for part in [&self.head[..], &self.answer.json[self.bytes.clone()], TAIL] {
            let rest = part.get(skip..).unwrap_or_default();
            skip = skip.saturating_sub(part.len());
            let n = rest.len().min(buf.len() - filled);
            buf[filled..filled + n].copy_from_slice(&rest[..n]);
            filled += n;
        }
        self.read += filled;
        Ok(filled)
    }
}

#[cfg(test)]
impl LogSlice {
    /// The events, parsed back from the JSON callers are sent.
    pub fn entries(&self) -> Vec<crate::protocol::LogEntry> {
        let mut body = Vec::new();
        let _ = self.clone().body("c").0.read_to_end(&mut body);
        let parsed: crate::protocol::LogsResponse = serde_json::from_slice(&body).expect("JSON");
        parsed.logs
    }
}

#[cfg(test)]
impl std::fmt::Debug for LogSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LogSlice({:?})", self.entries())
    }
}
