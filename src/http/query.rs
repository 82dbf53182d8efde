//! What every endpoint shares: query parameters, errors as JSON naming the parameter, and
//! blocking reads (`index`, `wait`), which wait on the registry's version channel rather than
//! polling.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::State;

/// A refused request: the status, the parameter at fault if any, and a sentence.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    parameter: Option<&'static str>,
    message: String,
}

impl HttpError {
    /// 400, naming `parameter`.
    pub fn bad(parameter: &'static str, message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::BAD_REQUEST,
            parameter: Some(parameter),
            message: message.into(),
        }
    }

    /// Any other status.
    pub fn status(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            parameter: None,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'static str>,
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            parameter: self.parameter,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// The query string's parameters, in order, repeated ones included (`tag=a&tag=b`).
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses the raw query string (none: no parameters).
    pub fn parse(raw: Option<&str>) -> Result<Params, HttpError> {
        match raw {
            None | Some("") => Ok(Params(Vec::new())),
            Some(raw) => serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
                .map(Params)
                .map_err(|e| {
                    HttpError::bad("query", format!("the query string does not parse: {e}"))
                }),
        }
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A flag as Consul's clients send it: present with no value, or `1`, `true`; `0` and
    /// `false` turn it off; anything else is an error naming it.
    pub fn flag(&self, name: &'static str) -> Result<bool, HttpError> {
        match self.get(name) {
            None => Ok(false),
            Some("" | "1" | "true") => Ok(true),
            Some("0" | "false") => Ok(false),
            Some(other) => Err(HttpError::bad(
                name,
                format!("{name}={other:?}: expected no value, 1, true, 0 or false"),
            )),
        }
    }

    /// Refuses parameters this endpoint does not know, naming the first.
    pub fn only(&self, known: &[&str]) -> Result<(), HttpError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(HttpError {
                status: StatusCode::BAD_REQUEST,
                parameter: None,
                message: format!(
                    "unknown parameter {k:?}; this endpoint takes {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            }),
            None => Ok(()),
        }
    }

    /// A blocking read's `index` and `wait`: `None` unless `index` is given and above 0
    /// (`index=0` answers at once, as Consul does).
    pub fn blocking(&self) -> Result<Option<Blocking>, HttpError> {
        let index = match self.get("index") {
            None => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                HttpError::bad(
                    "index",
                    format!("index={text:?} is not a non-negative integer"),
                )
            })?),
        };
        let wait = match self.get("wait") {
            None => DEFAULT_WAIT,
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| {
                    HttpError::bad(
                        "wait",
                        format!("wait={text:?} is not a duration such as 30s or 120000ms: {e}"),
                    )
                })?
                .min(MAX_WAIT),
        };
        Ok(index
            .filter(|i| *i > 0)
            .map(|index| Blocking { index, wait }))
    }
}

/// How long a blocking read waits when `wait` is not given (Consul's default).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// The longest wait granted; longer ones are cut to it (as Consul does).
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// A blocking read: answer once the index passes `index`, or after `wait`.
#[derive(Debug, Clone, Copy)]
pub struct Blocking {
    /// The index the client has seen.
    pub index: u64,
    /// How long to wait at most.
    pub wait: Duration,
}

/// Waits, if `blocking` asks for it, until `current()` differs from the index the client saw
/// (greater: a change; smaller: the registry restarted and counts again, so the client must
/// start over), or its wait runs out, or the server shuts down. Returns `current()` then.
///
/// Woken by the registry's version channel, which moves with every change of the live set and
/// never with a renewal: an idle blocking read costs nothing until its wait runs out.
pub async fn wait_for_change(
    state: &State,
    blocking: Option<Blocking>,
    current: impl Fn() -> u64,
) -> u64 {
    let Some(blocking) = blocking else {
        return current();
    };
    let mut versions = state.registry.subscribe();
    let deadline = tokio::time::Instant::now() + blocking.wait;
    loop {
        let now = current();
        if now != blocking.index {
            return now;
        }
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return current() },
            _ = tokio::time::sleep_until(deadline) => return current(),
            _ = state.shutdown.cancelled() => return current(),
        }
    }
}

/// A header value from a number.
pub fn index_header(headers: &mut HeaderMap, name: &'static str, index: u64) {
    if let Ok(value) = HeaderValue::from_str(&index.to_string()) {
        headers.insert(HeaderName::from_static(name), value);
    }
}
