//! What can go wrong talking to the control plane, each case with what an
//! operator does about it. No message ever holds a secret: the requests
//! named are method and path (secrets travel only in headers and forms),
//! and what a server says back is scrubbed of the credential before it is
//! kept.

use std::fmt;
use std::time::Duration;

/// The kind of a [`ControlError`]: small, stable, a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The configuration is unusable (a credential file missing or empty,
    /// a bad URL). Nothing was sent.
    Config,
    /// The control plane could not be reached (DNS, connect, TLS, reset).
    Unreachable,
    /// The control plane did not answer in time.
    Timeout,
    /// The credential was rejected (HTTP 401, or an OAuth client the token
    /// endpoint refuses).
    CredentialRejected,
    /// The credential is valid but may not do this (HTTP 403): a missing
    /// OAuth scope, or a tag the client does not own.
    Forbidden,
    /// The device (or the tailnet) does not exist (HTTP 404).
    NotFound,
    /// The control plane refused the request as invalid (another 4xx).
    Rejected,
    /// The control plane failed (HTTP 5xx).
    ServerError,
    /// The answer is not what the API documents (not JSON, wrong shape).
    Protocol,
}

impl ErrorKind {
    /// The metric label: `config`, `unreachable`, `timeout`,
    /// `credential_rejected`, `forbidden`, `not_found`, `rejected`,
    /// `server_error` or `protocol`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::CredentialRejected => "credential_rejected",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Rejected => "rejected",
            ErrorKind::ServerError => "server_error",
            ErrorKind::Protocol => "protocol",
        }
    }

    /// The kind an HTTP status other than 2xx means.
    pub(crate) fn from_status(status: u16) -> ErrorKind {
        match status {
            401 => ErrorKind::CredentialRejected,
            403 => ErrorKind::Forbidden,
            404 => ErrorKind::NotFound,
            408 => ErrorKind::Timeout,
            500..=599 => ErrorKind::ServerError,
            _ => ErrorKind::Rejected,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed call to the control plane's admin API (or an unusable
/// credential). Its message reads `<where>: <what happened>: <remedy>`.
#[derive(Debug)]
pub struct ControlError {
    kind: ErrorKind,
    /// `Headscale at http://...` / `the Tailscale API at https://...`; empty
    /// for configuration errors.
    target: String,
    /// `GET /api/v1/node` and the like; empty when no request was made.
    request: String,
    status: Option<u16>,
    /// What happened, including the server's explanation (scrubbed).
    what: String,
    remedy: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ControlError {
    /// What kind of failure this is (a metric label).
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What an operator can do about it; empty when there is nothing
    /// specific to say.
    pub fn remedy(&self) -> &str {
        &self.remedy
    }

    /// The HTTP status the control plane answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The request that failed (`METHOD /path`), if one was made.
    pub fn request(&self) -> &str {
        &self.request
    }

    /// An unusable configuration.
    pub(crate) fn config(what: String) -> ControlError {
        ControlError {
            kind: ErrorKind::Config,
            target: String::new(),
            request: String::new(),
            status: None,
            what,
            remedy: String::new(),
            source: None,
        }
    }

    pub(crate) fn new(
        kind: ErrorKind,
        target: &str,
        request: &str,
        what: String,
        remedy: String,
    ) -> ControlError {
        ControlError {
            kind,
            target: target.to_owned(),
            request: request.to_owned(),
            status: None,
            what,
            remedy,
            source: None,
        }
    }

    pub(crate) fn with_status(mut self, status: u16) -> ControlError {
        self.status = Some(status);
        self
    }

    /// The same error, counted as another kind (an answer whose status
    /// says less than its body).
    pub(crate) fn with_kind(mut self, kind: ErrorKind) -> ControlError {
        self.kind = kind;
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> ControlError {
        self.source = Some(Box::new(source));
        self
    }

    pub(crate) fn timeout(target: &str, request: &str, limit: Duration) -> ControlError {
        ControlError::new(
            ErrorKind::Timeout,
            target,
            request,
            format!("no answer within {limit:?}"),
            "the control plane is slow or a firewall drops the traffic; \
             the agent retries"
                .to_owned(),
        )
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.target.is_empty(), self.request.is_empty()) {
            (true, _) => {}
            (false, true) => write!(f, "{}: ", self.target)?,
            (false, false) => write!(f, "{} {}: ", self.target, self.request)?,
        }
        f.write_str(&self.what)?;
        if !self.remedy.is_empty() {
            write!(f, ": {}", self.remedy)?;
        }
        Ok(())
    }
}

impl std::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// At most 200 characters of a server's answer, trimmed, for a message.
pub(crate) fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(ErrorKind::from_status(401), ErrorKind::CredentialRejected);
        assert_eq!(ErrorKind::from_status(403), ErrorKind::Forbidden);
        assert_eq!(ErrorKind::from_status(404), ErrorKind::NotFound);
        assert_eq!(ErrorKind::from_status(400), ErrorKind::Rejected);
        assert_eq!(ErrorKind::from_status(503), ErrorKind::ServerError);
        assert_eq!(
            ErrorKind::CredentialRejected.as_str(),
            "credential_rejected"
        );
    }

    #[test]
    fn the_message_reads_where_what_remedy() {
        let err = ControlError::new(
            ErrorKind::NotFound,
            "Headscale at http://h:8080",
            "GET /api/v1/node/7",
            "answered 404 Not Found (node not found)".to_owned(),
            "the device is gone".to_owned(),
        );
        assert_eq!(
            err.to_string(),
            "Headscale at http://h:8080 GET /api/v1/node/7: answered 404 Not Found \
             (node not found): the device is gone"
        );
        assert_eq!(ControlError::config("bad".to_owned()).to_string(), "bad");
        assert_eq!(snippet("é".repeat(300).as_bytes()).chars().count(), 203);
    }
}
