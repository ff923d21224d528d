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

#[path = "../../../tests/common/mutate.rs"]
mod mutate;
use mutate::{mutate, Rng, BASE_QUERIES, QUERY_SPECIALS};

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
    let mut rng = Rng::new(0xC0FF_EE00_0000_0001);
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
