//! Exponential backoff with jitter (or the pace a `Retry-After` asks for), logged when a failure
//! streak starts, reminded of while it lasts, and reported when it ends; and the cheap
//! randomness it and the simulated events use (std's randomly keyed SipHash: no random-number
//! crate).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::client::CallError;
use crate::log::{self, log_info, Level};

/// First retry delay after a failure; doubles per failure up to the cap.
const BACKOFF_START: Duration = Duration::from_millis(500);
/// While a streak lasts, a reminder this often: a camera that cannot reach its server says so.
const REMIND_EVERY: Duration = Duration::from_secs(30);

/// A failure streak: logged when it starts, again if it turns into a TLS failure (which a retry
/// alone will not fix), every [`REMIND_EVERY`] while it lasts, and when it ends.
pub struct Backoff {
    what: &'static str,
    max: Duration,
    failures: u32,
    /// When the streak began, and when it was last logged.
    started: Option<(Instant, Instant)>,
    logged_tls: bool,
    /// Whether the last failure had no answer at all (see [`CallError::is_unreachable`]).
    unreachable: bool,
    jitter: Jitter,
}

impl Backoff {
    pub fn new(max: Duration, what: &'static str) -> Backoff {
        let (failures, started, logged_tls, unreachable) = (0, None, false, false);
        Backoff { what, max, failures, started, logged_tls, unreachable, jitter: Jitter::new() }
    }

    /// The delay before retry number `failures` (1-based): doubling from 0.5 s up to the cap,
    /// then a random point in its upper half so that many cameras do not retry in lockstep; or,
    /// when the server named a pace (`Retry-After`), up to half as long again as that.
    fn delay(&mut self, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after + after.mul_f64(self.jitter.unit() / 2.0);
        }
        let doublings = self.failures.saturating_sub(1).min(16);
        let full = BACKOFF_START.saturating_mul(1 << doublings).min(self.max);
        full / 2 + full.mul_f64(self.jitter.unit() / 2.0)
    }

    /// Whether the last failure had no answer at all.
    pub fn unreachable(&self) -> bool {
        self.unreachable
    }

    /// Records a failure and sleeps; returns false if the camera is stopping (`stop` disconnected).
    pub fn failed(&mut self, why: &CallError, stop: &Receiver<()>) -> bool {
        self.failures += 1;
        self.unreachable = why.is_unreachable();
        let now = Instant::now();
        let (began, logged) = self.started.get_or_insert((now, now));
        let (what, max, failures) = (self.what, self.max.as_secs_f64(), self.failures);
        let tls = why.is_tls();
        if failures == 1 || (tls && !self.logged_tls) {
            self.logged_tls |= tls;
            // Another process holding this camera's id is a mistake to fix, not a network fault.
            let conflict = matches!(why, CallError::Status { status: 409, .. });
            let level = if conflict { Level::Error } else { Level::Warn };
            log::write(
                level,
                format_args!("could not {what}: {why}; retrying with backoff (up to {max:.0} s)"),
            );
            *logged = now;
        } else if now.duration_since(*logged) >= REMIND_EVERY {
            let over = now.duration_since(*began).as_secs_f64();
            log::write(Level::Warn, format_args!("still cannot {what}: {failures} attempts over {over:.0} s so far; the last: {why}"));
            *logged = now;
        }
        let retry_after = match why {
            CallError::Status { retry_after, .. } => *retry_after,
            _ => None,
        };
        !matches!(stop.recv_timeout(self.delay(retry_after)), Err(RecvTimeoutError::Disconnected))
    }

    /// Ends a streak with the attempt begun at `attempt`: the time reported runs up to that
    /// attempt, not to its answer (a poll's answer may come only when its hold ends).
    pub fn succeeded(&mut self, attempt: Instant) {
        if let Some((began, _)) = self.started.take() {
            let down = attempt.saturating_duration_since(began).as_secs_f64();
            let (what, failures) = (self.what, self.failures);
            log_info!("could {what} again after {failures} failed attempt(s) over {down:.1} s");
        }
        self.failures = 0;
        self.logged_tls = false;
        self.unreachable = false;
    }
}

/// Cheap, unpredictable numbers: SipHash keyed by `RandomState`, whose keys std draws from the
/// operating system's random source, applied to a counter.
pub struct Jitter {
    keys: RandomState,
    n: u64,
}

impl Jitter {
    pub fn new() -> Jitter {
        Jitter { keys: RandomState::new(), n: 0 }
    }

    pub fn next(&mut self) -> u64 {
        self.n += 1;
        self.keys.hash_one(self.n)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::camera::client::describe_call_error;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let mut backoff = Backoff::new(Duration::from_secs(30), "test");
        let mut previous_full = Duration::ZERO;
        for failure in 1..=12u32 {
            backoff.failures = failure;
            let full = BACKOFF_START
                .saturating_mul(1 << (failure - 1).min(16))
                .min(Duration::from_secs(30));
            let delay = backoff.delay(None);
            assert!(delay >= full / 2 && delay <= full, "failure {failure}: {delay:?} vs {full:?}");
            assert!(full >= previous_full);
            previous_full = full;
        }
        assert_eq!(previous_full, Duration::from_secs(30));
        assert!(backoff.delay(None) >= Duration::from_millis(250), "never a busy loop");
        // The pace a server names wins over the doubling, however long the streak.
        let paced = backoff.delay(Some(Duration::from_secs(1)));
        assert!(
            paced >= Duration::from_secs(1) && paced <= Duration::from_millis(1500),
            "{paced:?}"
        );
        let u = Jitter::new().unit();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn a_streak_that_turns_into_a_tls_failure_is_logged_once_more() {
        // A dropped sender: `failed` returns at once instead of sleeping.
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        drop(stop_tx);
        let mut backoff = Backoff::new(Duration::from_secs(1), "test");
        let refused = CallError::Unreachable("io: Connection refused".to_string());
        assert!(!backoff.failed(&refused, &stop_rx));
        assert!(!backoff.logged_tls);
        let tls =
            describe_call_error("https://edge", "io: invalid peer certificate: UnknownIssuer");
        assert!(!backoff.failed(&tls, &stop_rx));
        assert!(backoff.logged_tls);
        assert_eq!(backoff.failures, 2);
        assert!(backoff.unreachable(), "a TLS failure had no answer to speak of");
        backoff.succeeded(Instant::now());
        assert!(!backoff.logged_tls && backoff.failures == 0 && !backoff.unreachable());
    }
}
