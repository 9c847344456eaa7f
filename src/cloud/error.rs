//! Errors of the Customer API client.
//!
//! Owns: the typed error every client operation returns, problem+json decoding, and the
//! one-line hint that tells a user what to do about each kind of failure.

use super::validate::Violation;
use serde::Deserialize;
use std::fmt;

/// An RFC 7807 problem document (`application/problem+json`), as the API sends on errors.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct Problem {
    #[serde(deserialize_with = "super::model::lenient::int")]
    pub status: i64,
    #[serde(rename = "type", deserialize_with = "super::model::lenient::string")]
    pub kind: String,
    #[serde(deserialize_with = "super::model::lenient::string")]
    pub title: String,
    #[serde(deserialize_with = "super::model::lenient::string")]
    pub detail: String,
}

impl Problem {
    /// Decode a problem body; anything else becomes a problem whose detail is the body's start.
    pub fn from_body(status: u16, body: &[u8]) -> Problem {
        let mut p = serde_json::from_slice::<Problem>(body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            let cut = (0..=text.len().min(200))
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            Problem {
                detail: text[..cut].to_string(),
                ..Problem::default()
            }
        });
        if p.status == 0 {
            p.status = i64::from(status);
        }
        if p.title.is_empty() {
            p.title = reason(status).to_string();
        }
        p
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// What to do about an HTTP status.
pub fn hint(op: &str, status: u16) -> &'static str {
    let login = op.starts_with("auth_login") || op.starts_with("authenticate");
    match status {
        401 | 403 if login => {
            "the connector UUID or the pincode is wrong: check cloud.connector_uuid and the pincode (cloud.pincode_file, or the systemd credential `pincode`)"
        }
        400 | 422 => "check the arguments against `obdgw api <group> <operation> --help`",
        401 => "log in again with `obdgw login`, and check cloud.connector_uuid and the pincode",
        403 => "this account is not allowed to do this; ask the service provider",
        404 => "check the id (list the resources first), or the route in cloud.routes",
        409 => {
            "the resource is busy (e.g. an active ticket on the connector); wait until it is closed, or ask the service provider to close it (the API has no cancel operation)"
        }
        429 => "too many requests; wait and try again",
        500..=599 => "the service failed; try again later",
        _ => "see the detail above",
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request breaks a documented rule; nothing was sent.
    #[error("{op}: invalid request: {violation}; nothing was sent")]
    Invalid { op: String, violation: Violation },
    /// The server answered with an error status.
    #[error("{op}: the service answered {status} {}{}; {}", problem.title,
        if problem.detail.is_empty() { String::new() } else { format!(": {}", problem.detail) },
        hint(op, *status))]
    Status {
        op: String,
        status: u16,
        problem: Problem,
    },
    /// The request did not complete (connect, timeout, dropped connection).
    #[error("{op}: {what} {url}: {message}; check cloud.base_url and the network")]
    Transport {
        op: String,
        url: String,
        what: &'static str,
        message: String,
        timeout: bool,
    },
    /// The answer was not what the API documents.
    #[error("{op}: unexpected answer from the service: {message}")]
    Decode { op: String, message: String },
    /// No usable token and no way to get one.
    #[error("not logged in: {0}")]
    Auth(String),
    /// The route table cannot produce a path.
    #[error("route of {op}: {message}; check cloud.routes")]
    Route { op: String, message: String },
}

impl ApiError {
    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether repeating might succeed (5xx, transport).
    pub fn is_transient(&self) -> bool {
        matches!(self, ApiError::Transport { .. }) || self.status().is_some_and(|s| s >= 500)
    }
}

/// A violation as an error.
pub(crate) fn invalid(op: &str, violation: Violation) -> ApiError {
    ApiError::Invalid {
        op: op.to_string(),
        violation,
    }
}

impl fmt::Display for super::spec::Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_bodies() {
        let p = Problem::from_body(
            404,
            br#"{"status":404,"type":"about:blank","title":"Not Found","detail":"no ticket"}"#,
        );
        assert_eq!(
            (p.status, p.title.as_str(), p.detail.as_str()),
            (404, "Not Found", "no ticket")
        );
        let p = Problem::from_body(502, b"<html>bad gateway</html>");
        assert_eq!(p.status, 502);
        assert_eq!(p.title, "Bad Gateway");
        assert!(p.detail.contains("bad gateway"));
        let e = ApiError::Status {
            op: "tickets_create".into(),
            status: 409,
            problem: Problem::from_body(409, b"{}"),
        };
        let s = e.to_string();
        assert!(
            s.contains("409 Conflict") && s.contains("active ticket") && s.contains("no cancel"),
            "{s}"
        );
        // A refused login names the credentials, not "log in again".
        let e = ApiError::Status {
            op: "auth_login_uuid".into(),
            status: 401,
            problem: Problem::from_body(401, b"{}"),
        };
        let s = e.to_string();
        assert!(
            s.contains("pincode is wrong") && !s.contains("obdgw login"),
            "{s}"
        );
    }
}
