//! The query parser: unknown and repeated parameters, numbers, timeouts and ids, and thousands
//! of generated query strings that must never panic it and are refused only with a 400.

use super::*;

fn logs(raw: &str) -> Result<Query, ApiError> {
    Query::parse(raw, Route::Logs)
}

#[test]
fn unknown_and_repeated_parameters_are_named() {
    let err = logs("camera_id=front").unwrap_err().to_string();
    assert!(err.contains("'camera_id'") && err.contains("cameraId, startTimestamp"), "{err}");
    let err = Query::parse("x=1", Route::Health).unwrap_err().to_string();
    assert_eq!(err, "unknown query parameter 'x' for /health: it takes none");
    assert!(logs("cameraId=a&cameraId=b").is_err());
    let q = logs("cameraId=front-door&startTimestamp=1.5").unwrap();
    assert_eq!(q.camera_id().unwrap(), "front-door");
    assert_eq!(q.timestamp("startTimestamp").unwrap(), Some(1.5));
    assert_eq!(logs("").unwrap().camera_id().unwrap(), "default");
}

#[test]
fn numbers_must_be_plain_finite_seconds() {
    for bad in ["NaN", "nan", "inf", "-Infinity", "1e400", "0x10", "", " 1", "1,5", "abc", "%FF"] {
        let q = logs(&format!("startTimestamp={bad}")).unwrap();
        assert_eq!(q.timestamp("startTimestamp").unwrap_err().status(), 400, "{bad:?}");
    }
    for (good, value) in [
        ("-0", 0.0),
        ("1e3", 1000.0),
        ("%2B2.5", 2.5),
        (".5", 0.5),
        ("1732300000.25", 1_732_300_000.25),
    ] {
        let q = logs(&format!("startTimestamp={good}")).unwrap();
        assert_eq!(q.timestamp("startTimestamp").unwrap(), Some(value), "{good}");
    }
    let q = logs("startTimestamp=1796167040139").unwrap();
    let err = q.timestamp("startTimestamp").unwrap_err().to_string();
    assert!(err.contains("milliseconds") && err.contains("1796167040.139"), "{err}");
}

#[test]
fn timeouts_are_bounded() {
    let d = Duration::from_secs(30);
    assert_eq!(logs("").unwrap().timeout(d).unwrap(), d);
    assert_eq!(logs("timeout=0.5").unwrap().timeout(d).unwrap(), Duration::from_millis(500));
    for bad in ["0", "-1", "301", "NaN"] {
        assert!(logs(&format!("timeout={bad}")).unwrap().timeout(d).is_err(), "{bad}");
    }
    assert!(logs("timeout=300").unwrap().timeout(d).is_ok());
}

#[test]
fn ids_are_checked() {
    for bad in ["", "a b", "../etc", "é", &"x".repeat(65), "%FF%FE"] {
        let q = logs(&format!("cameraId={bad}")).unwrap();
        assert_eq!(q.camera_id().unwrap_err().status(), 400, "{bad:?}");
    }
    let q = Query::parse("cameraId=cam&instanceId=0123abcd", Route::Poll).unwrap();
    assert_eq!(q.instance().unwrap().as_deref(), Some("0123abcd"));
}

// ---------------------------------------------------------------------------------------------
// Generated queries
// ---------------------------------------------------------------------------------------------

/// Queries `/logs` takes, the seeds of the mutations.
const BASE_QUERIES: &[&str] = &[
    "cameraId=cam&startTimestamp=1700000000.25&endTimestamp=1700000004&timeout=5",
    "cameraId=front-door_1.a&startTimestamp=-0&timeout=0.5",
    "startTimestamp=1e3&endTimestamp=%2B2.5e3",
    "cameraId=cam&endTimestamp=.5&timeout=300",
    "cameraId=cam",
    "",
];

const QUERY_SPECIALS: &[&str] = &[
    "%",
    "%F",
    "%FF",
    "%FE%FF",
    "%C3%28",
    "%00",
    "&",
    "=",
    "&&",
    "==",
    "+",
    "%2B",
    "%20",
    "?",
    "#",
    ";",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "0x10",
    "-0",
    "-",
    ".",
    "e",
    "E5",
    "1_0",
    "9999999999999999999999999",
    "é",
    "\u{FFFD}",
    "\u{0}",
    "startTimestamp=",
    "endTimestamp=",
    "timeout=",
    "cameraId=",
    "&cameraId=cam",
    "&timeout=0",
    "&timeout=301",
    "&startTimestamp=1",
    "&endTimestamp=0",
];

/// xorshift64*: tiny, seeded, the same sequence on every run (as the integration tests' `Rng`).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One to four random mutations of `base`: byte flips, truncation, duplication, deletion and
/// insertion of special strings or raw bytes (the integration tests' `mutate`).
fn mutate(rng: &mut Rng, base: &[u8], specials: &[&str]) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = if out.is_empty() { 0 } else { rng.below(out.len() + 1) };
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.below(256) as u8;
            }
            2 => out.truncate(at),
            3 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = start + rng.below(out.len() - start) + 1;
                let copy = out[start..end].to_vec();
                out.splice(at..at, copy);
            }
            4 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.remove(i);
            }
            5 => {
                let number = format!("{}", rng.next_u64() as i64 as f64 / 7.0);
                out.splice(at..at, number.into_bytes());
            }
            _ => {
                let special = rng.pick(specials).as_bytes().to_vec();
                out.splice(at..at, special);
            }
        }
    }
    out
}

/// What `/logs` makes of a query: the same calls, in the same order.
type Parsed = Result<(String, Option<f64>, Option<f64>, Duration), ApiError>;

fn parse_logs_query(raw: &str) -> Parsed {
    let q = logs(raw)?;
    let camera = q.camera_id()?;
    let start = q.timestamp("startTimestamp")?;
    let end = q.timestamp("endTimestamp")?;
    let timeout = q.timeout(Duration::from_secs(20))?;
    Ok((camera, start, end, timeout))
}

#[test]
fn thousands_of_generated_queries_never_panic_the_parser_and_errors_are_400() {
    let mut rng = Rng(0xC0FF_EE00_0000_0001);
    let mut query_errors = 0;
    for i in 0..4000 {
        let base = rng.pick(BASE_QUERIES).as_bytes();
        let bytes = mutate(&mut rng, base, QUERY_SPECIALS);
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let extra = String::from_utf8_lossy(&mutate(&mut rng, b"x", QUERY_SPECIALS)).into_owned();
        let outcome = std::panic::catch_unwind(|| {
            let parsed = parse_logs_query(&raw);
            let extra = logs(&raw).map(|q| (q.number(&extra), q.get(&extra).is_some()));
            (parsed, extra)
        });
        let Ok((parsed, extra)) = outcome else {
            panic!("query #{i} panicked the parser: {raw:?}");
        };
        match parsed {
            Ok((camera, start, end, timeout)) => {
                assert!(valid_camera_id(&camera), "query #{i} {raw:?}: id {camera:?}");
                for bound in [start, end].into_iter().flatten() {
                    assert!(bound.is_finite(), "query #{i} {raw:?}");
                    assert!(bound <= LATEST_PLAUSIBLE_SECONDS, "query #{i} {raw:?}: {bound}");
                }
                assert!(
                    timeout > Duration::ZERO && timeout <= MAX_LOGS_TIMEOUT,
                    "query #{i} {raw:?}: {timeout:?}"
                );
            }
            Err(e) => {
                query_errors += 1;
                assert_eq!(e.status(), 400, "query #{i} {raw:?}: {e}");
            }
        }
        if let Err(e) | Ok((Err(e), _)) = extra {
            assert_eq!(e.status(), 400, "query #{i} {raw:?}: {e}");
        }
    }
    eprintln!("4000 queries: {query_errors} refused");
    // A mutation that garbles a parameter's name is refused (it names no parameter of /logs),
    // so most are: about 3,750 of the 4,000. Both outcomes must still be well exercised.
    assert!(query_errors > 400 && query_errors < 3900, "mutations too tame or too wild");
}
