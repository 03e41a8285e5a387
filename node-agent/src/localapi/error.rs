//! What can go wrong talking to tailscaled, each case with what to do about it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A failed LocalAPI call. The message names the socket or endpoint and,
/// where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    /// The socket file does not exist.
    #[error(
        "tailscaled's LocalAPI socket {path} does not exist: is tailscaled running? \
         (if it runs with --socket=PATH, point tailroute-agent at that path)"
    )]
    SocketMissing {
        /// The socket path tried.
        path: PathBuf,
    },
    /// The socket exists but this process may not open it.
    #[error(
        "permission denied opening tailscaled's LocalAPI socket {path}: \
         run tailroute-agent as root (or mount the socket read-write into its container)"
    )]
    PermissionDenied {
        /// The socket path tried.
        path: PathBuf,
    },
    /// The socket file exists but nothing accepts on it.
    #[error(
        "nothing accepts connections on {path}: tailscaled stopped or crashed and left \
         its socket behind; restart tailscaled"
    )]
    NotListening {
        /// The socket path tried.
        path: PathBuf,
    },
    /// Any other failure to connect.
    #[error("cannot connect to tailscaled's LocalAPI socket {path}: {source}")]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// This client could not build the request (a bug in this client: the
    /// paths it sends are fixed).
    #[error("{request}: cannot build the request: {reason}")]
    InvalidRequest {
        /// Method and path.
        request: String,
        /// What was wrong with it.
        reason: String,
    },
    /// tailscaled did not answer in time.
    #[error(
        "{request} took longer than {timeout:?}: tailscaled is stuck or overloaded; \
         check its log (journalctl -u tailscaled)"
    )]
    Timeout {
        /// Method and path, e.g. `GET /localapi/v0/status`.
        request: String,
        /// The limit that was exceeded.
        timeout: Duration,
    },
    /// The HTTP exchange broke (connection reset, bad framing, ...).
    #[error("{request}: the HTTP exchange with tailscaled failed: {source}")]
    Http {
        /// Method and path.
        request: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// tailscaled refused the request (HTTP 403).
    #[error(
        "tailscaled refused {request} (403 Forbidden: {message}): \"invalid localapi request\" \
         means a client bug (a Referer, Origin or wrong Host header); \"access denied\" means \
         this process lacks the rights: run tailroute-agent as root"
    )]
    Forbidden {
        /// Method and path.
        request: String,
        /// tailscaled's explanation, from the body.
        message: String,
    },
    /// tailscaled answered with another non-success status.
    #[error("tailscaled answered {request} with HTTP {status}: {message}")]
    Status {
        /// Method and path.
        request: String,
        /// The HTTP status code.
        status: u16,
        /// tailscaled's explanation: the `Error` of a JSON body, or the text body.
        message: String,
    },
    /// The answer is not the JSON this client expects.
    #[error(
        "{request}: tailscaled's answer is not the expected JSON ({source}); it begins {snippet:?}; \
         is this tailscaled version supported?"
    )]
    Json {
        /// Method and path.
        request: String,
        /// serde's error, with line and column.
        source: serde_json::Error,
        /// The first bytes of the answer.
        snippet: String,
    },
    /// The answer is larger than this client accepts.
    #[error("{request}: tailscaled's answer exceeds {limit} bytes")]
    TooLarge {
        /// Method and path.
        request: String,
        /// The limit in bytes.
        limit: usize,
    },
}

impl LocalApiError {
    /// A short, stable name for the kind of failure: a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            LocalApiError::SocketMissing { .. } => "socket_missing",
            LocalApiError::PermissionDenied { .. } => "permission_denied",
            LocalApiError::NotListening { .. } => "not_listening",
            LocalApiError::Connect { .. } => "connect",
            LocalApiError::InvalidRequest { .. } => "invalid_request",
            LocalApiError::Timeout { .. } => "timeout",
            LocalApiError::Http { .. } => "http",
            LocalApiError::Forbidden { .. } => "forbidden",
            LocalApiError::Status { .. } => "status",
            LocalApiError::Json { .. } => "json",
            LocalApiError::TooLarge { .. } => "too_large",
        }
    }

    /// Sorts a failed `connect(2)` on the socket into the case an operator
    /// can act on.
    pub(crate) fn connect(path: &Path, source: io::Error) -> LocalApiError {
        let path = path.to_owned();
        match source.kind() {
            io::ErrorKind::NotFound => LocalApiError::SocketMissing { path },
            io::ErrorKind::PermissionDenied => LocalApiError::PermissionDenied { path },
            io::ErrorKind::ConnectionRefused => LocalApiError::NotListening { path },
            _ => LocalApiError::Connect { path, source },
        }
    }

    /// The error for a non-200 answer with body `body`.
    pub(crate) fn from_answer(request: String, status: u16, body: &[u8]) -> LocalApiError {
        let message = error_message(body);
        if status == 403 {
            LocalApiError::Forbidden { request, message }
        } else {
            LocalApiError::Status {
                request,
                status,
                message,
            }
        }
    }

    pub(crate) fn json(request: String, source: serde_json::Error, body: &[u8]) -> LocalApiError {
        LocalApiError::Json {
            request,
            source,
            snippet: snippet(body),
        }
    }
}

/// tailscaled explains a failure either as `{"Error": "..."}` (e.g. a prefs
/// edit it rejects) or as plain text (`http.Error`, e.g. a body it cannot
/// parse); take whichever it is.
fn error_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "Error")]
        error: String,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(parsed) => parsed.error,
        Err(_) => {
            let text = snippet(body);
            if text.is_empty() {
                "(empty body)".to_owned()
            } else {
                text
            }
        }
    }
}

/// At most 200 characters of `body`, trimmed, for an error message.
fn snippet(body: &[u8]) -> String {
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
    fn connect_errors_become_the_case_an_operator_can_act_on() {
        let path = Path::new("/run/ts.sock");
        let err = |kind| LocalApiError::connect(path, io::Error::from(kind));
        let missing = err(io::ErrorKind::NotFound);
        assert_eq!(missing.kind(), "socket_missing");
        assert!(missing.to_string().contains("is tailscaled running?"));
        assert!(missing.to_string().contains("/run/ts.sock"));
        let denied = err(io::ErrorKind::PermissionDenied);
        assert_eq!(denied.kind(), "permission_denied");
        assert!(denied.to_string().contains("run tailroute-agent as root"));
        assert_eq!(
            err(io::ErrorKind::ConnectionRefused).kind(),
            "not_listening"
        );
        assert_eq!(err(io::ErrorKind::Other).kind(), "connect");
    }

    #[test]
    fn error_bodies_are_read_as_json_or_text() {
        assert_eq!(error_message(br#"{"Error":"bad route"}"#), "bad route");
        assert_eq!(
            error_message(b"netip.ParsePrefix(\"bogus\"): no '/'\n"),
            "netip.ParsePrefix(\"bogus\"): no '/'"
        );
        assert_eq!(error_message(b""), "(empty body)");
        assert_eq!(snippet("é".repeat(300).as_bytes()).chars().count(), 203);
    }
}
