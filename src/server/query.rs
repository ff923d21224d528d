//! A request's query string, checked against the parameters its endpoint accepts
//! ([`Route::params`]): a parameter the endpoint does not know, or one given twice, is a 400
//! that names it, so a typo never silently changes the answer. Values are checked here too.

use std::collections::HashMap;
use std::time::Duration;

use super::error::ApiError;
use super::registry::DEFAULT_PAGE;
use crate::log::clean;
use crate::protocol::{valid_camera_id, Route, CAMERA_ID, ID_CHARACTERS, INSTANCE_ID};
use crate::settings::MAX_LOGS_TIMEOUT;

/// Epoch seconds beyond this (the year 5138) can only be milliseconds.
const LATEST_PLAUSIBLE_SECONDS: f64 = 1e11;

#[derive(Debug, Default)]
pub struct Query {
    params: HashMap<String, String>,
}

impl Query {
    pub fn parse(raw: &str, route: Route) -> Result<Query, ApiError> {
        let mut params = HashMap::new();
        for (key, value) in url::form_urlencoded::parse(raw.as_bytes()) {
            if !route.params().contains(&key.as_ref()) {
                let accepted = match route.params() {
                    [] => "it takes none".to_string(),
                    names => format!("it accepts {}", names.join(", ")),
                };
                let (key, path) = (clean(&key, 64), route.path());
                let why = format!("unknown query parameter '{key}' for {path}: {accepted}");
                return Err(ApiError::BadRequest(why));
            }
            if params.insert(key.to_string(), value.into_owned()).is_some() {
                let why = format!("query parameter '{}' is given more than once", clean(&key, 64));
                return Err(ApiError::BadRequest(why));
            }
        }
        Ok(Query { params })
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// `cameraId`, defaulting to `default`.
    pub fn camera_id(&self) -> Result<String, ApiError> {
        Ok(self.id(CAMERA_ID)?.unwrap_or_else(|| "default".to_string()))
    }

    /// `instanceId`: which camera process polls or answers, when it says.
    pub fn instance(&self) -> Result<Option<String>, ApiError> {
        self.id(INSTANCE_ID)
    }

    /// `scope` of `/cameras`: the fleet's cameras (the default), or this instance's own.
    pub fn fleet_scope(&self) -> Result<bool, ApiError> {
        match self.get("scope") {
            None | Some("fleet") => Ok(true),
            Some("instance") => Ok(false),
            Some(other) => Err(invalid("scope", "'fleet' or 'instance'", other)),
        }
    }

    /// An id parameter (`after` of `/cameras` among them): 1 to 64 of `[A-Za-z0-9._-]`.
    pub fn id(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(id) if valid_camera_id(id) => Ok(Some(id.to_string())),
            Some(id) => Err(invalid(name, ID_CHARACTERS, id)),
        }
    }

    /// `limit` of `/cameras`: 1 to `DEFAULT_PAGE` (the default).
    pub fn limit(&self) -> Result<usize, ApiError> {
        let Some(raw) = self.get("limit") else {
            return Ok(DEFAULT_PAGE);
        };
        match raw.parse::<usize>() {
            Ok(n) if (1..=DEFAULT_PAGE).contains(&n) => Ok(n),
            _ => Err(invalid("limit", &format!("a whole number from 1 to {DEFAULT_PAGE}"), raw)),
        }
    }

    /// An optional timestamp in epoch seconds: a plain finite number, and not milliseconds.
    pub fn timestamp(&self, name: &str) -> Result<Option<f64>, ApiError> {
        let Some(seconds) = self.number(name)? else {
            return Ok(None);
        };
        if seconds > LATEST_PLAUSIBLE_SECONDS {
            let seconds_meant = seconds / 1000.0;
            return Err(ApiError::BadRequest(format!("{name}={seconds} is after the year 5000: it looks like milliseconds; send seconds since the epoch (e.g. {seconds_meant})")));
        }
        Ok(Some(seconds))
    }

    /// `timeout` in seconds, in (0, 300]; `default` when absent.
    pub fn timeout(&self, default: Duration) -> Result<Duration, ApiError> {
        match self.number("timeout")? {
            None => Ok(default),
            Some(secs) if secs > 0.0 && secs <= MAX_LOGS_TIMEOUT.as_secs_f64() => {
                Ok(Duration::from_secs_f64(secs))
            }
            Some(secs) => {
                let expected =
                    format!("greater than 0 and at most {} seconds", MAX_LOGS_TIMEOUT.as_secs());
                Err(invalid("timeout", &expected, &secs.to_string()))
            }
        }
    }

    /// An optional finite number; anything else (NaN, inf, 1e400, 0x10, empty) is a 400.
    fn number(&self, name: &str) -> Result<Option<f64>, ApiError> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        // Plain decimal only: Rust's parser also takes "inf" and "NaN".
        let plain = raw
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'));
        let value = raw.parse::<f64>().ok().filter(|v| plain && v.is_finite());
        value.map(Some).ok_or_else(|| invalid(name, "a finite number of seconds", raw))
    }
}

/// `{name} must be {expected}; got '{raw}'`, with the client's text made safe to echo.
fn invalid(name: &str, expected: &str, raw: &str) -> ApiError {
    ApiError::BadRequest(format!("{name} must be {expected}; got '{}'", clean(raw, 64)))
}

#[cfg(test)]
mod tests;
