//! The IPN bus: tailscaled's stream of state changes (`watch-ipn-bus`).

use std::fmt;
use std::ops::BitOr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use futures::Stream;
use hyper::body::Body;
use hyper::body::Incoming;
use serde::de::{Deserializer, IgnoredAny};
use serde::Deserialize;

use super::error::LocalApiError;
use super::types::{BackendState, Prefs};
use super::AbortOnDrop;

/// Which messages to receive from the IPN bus (`ipn.NotifyWatchOpt`).
///
/// Without an `INITIAL_*` bit, the bus sends nothing until something
/// changes; with one, the first message carries the current value.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchMask(u64);

impl WatchMask {
    /// Periodic WireGuard engine statistics.
    pub const ENGINE_UPDATES: WatchMask = WatchMask(1 << 0);
    /// The first message carries the current backend state.
    pub const INITIAL_STATE: WatchMask = WatchMask(1 << 1);
    /// The first message carries the current prefs.
    pub const INITIAL_PREFS: WatchMask = WatchMask(1 << 2);
    /// The first message carries the current netmap (if there is one).
    pub const INITIAL_NETMAP: WatchMask = WatchMask(1 << 3);
    /// The first message carries the current health state.
    pub const INITIAL_HEALTH_STATE: WatchMask = WatchMask(1 << 7);
    /// Netmap updates at most every few seconds.
    pub const RATE_LIMIT: WatchMask = WatchMask(1 << 8);

    /// No options: only changes, nothing initial.
    pub const fn empty() -> WatchMask {
        WatchMask(0)
    }

    /// The mask as the `mask` query parameter carries it.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// True if every bit of `other` is set here.
    pub const fn contains(self, other: WatchMask) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for WatchMask {
    type Output = WatchMask;
    fn bitor(self, rhs: WatchMask) -> WatchMask {
        WatchMask(self.0 | rhs.0)
    }
}

impl fmt::Debug for WatchMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WatchMask({:#x})", self.0)
    }
}

/// One message from the IPN bus (`ipn.Notify`): each field is present only
/// when it changed (or is initial, as the mask asked).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Notify {
    /// tailscaled's version.
    #[serde(rename = "Version", default)]
    pub version: String,
    /// Identifies this watch; only in the first message of a watch that
    /// asked for [`WatchMask::INITIAL_STATE`].
    #[serde(rename = "SessionID", default)]
    pub session_id: Option<String>,
    /// A critical error from the backend.
    #[serde(rename = "ErrMessage", default)]
    pub err_message: Option<String>,
    /// A login just succeeded.
    #[serde(rename = "LoginFinished", default, deserialize_with = "present")]
    pub login_finished: bool,
    /// The new (or initial) backend state.
    #[serde(rename = "State", default)]
    pub state: Option<BackendState>,
    /// The new (or initial) prefs.
    #[serde(rename = "Prefs", default)]
    pub prefs: Option<Prefs>,
    /// A new netmap arrived (its content is not decoded: ask `status()`).
    #[serde(rename = "NetMap", default, deserialize_with = "present")]
    pub netmap: bool,
    /// This node's own record changed: addresses, name, key expiry, ...
    #[serde(rename = "SelfChange", default, deserialize_with = "present")]
    pub self_change: bool,
    /// The health state changed (its content is not decoded: ask `status()`).
    #[serde(rename = "Health", default, deserialize_with = "present")]
    pub health: bool,
    /// A URL the user should open to log in.
    #[serde(rename = "BrowseToURL", default)]
    pub browse_to_url: Option<String>,
}

/// Reads whether a field is there and not `null`, without decoding it: a
/// netmap can be megabytes that this client has no use for.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Option::<IgnoredAny>::deserialize(deserializer).map(|v| v.is_some())
}

/// The messages of one IPN bus watch, in order.
///
/// tailscaled writes one JSON object per line. The stream ends (`None`, or
/// an error from a broken connection first) when tailscaled closes the
/// watch, which it does when it stops or restarts: a caller that keeps
/// watching reconnects and asks for [`WatchMask::INITIAL_STATE`] and
/// [`WatchMask::INITIAL_PREFS`] to learn what changed meanwhile. There is
/// no idle timeout: a quiet tailscaled sends nothing. Dropping the stream
/// closes the connection.
pub struct NotifyStream {
    request: String,
    body: Incoming,
    buffer: BytesMut,
    done: bool,
    _connection: AbortOnDrop,
}

impl NotifyStream {
    /// Longest line accepted: a netmap of a large tailnet is big, but not this big.
    pub const MAX_LINE: usize = 64 << 20;

    pub(crate) fn new(request: String, body: Incoming, connection: AbortOnDrop) -> NotifyStream {
        NotifyStream {
            request,
            body,
            buffer: BytesMut::new(),
            done: false,
            _connection: connection,
        }
    }

    /// The next complete line in the buffer, decoded; `None` if there is no
    /// complete line yet. Blank lines are skipped.
    fn next_buffered(&mut self) -> Option<Result<Notify, LocalApiError>> {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line = self.buffer.split_to(end + 1);
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(
                serde_json::from_slice(line)
                    .map_err(|e| LocalApiError::json(self.request.clone(), e, line)),
            );
        }
        None
    }
}

impl Stream for NotifyStream {
    type Item = Result<Notify, LocalApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(item) = this.next_buffered() {
                return Poll::Ready(Some(item));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.buffer.len() > NotifyStream::MAX_LINE {
                this.done = true;
                return Poll::Ready(Some(Err(LocalApiError::TooLarge {
                    request: this.request.clone(),
                    limit: NotifyStream::MAX_LINE,
                })));
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    // A last line without its newline still counts.
                    this.done = true;
                    if !this.buffer.iter().all(u8::is_ascii_whitespace) {
                        this.buffer.extend_from_slice(b"\n");
                    }
                }
                Poll::Ready(Some(Err(source))) => {
                    this.done = true;
                    this.buffer.clear();
                    return Poll::Ready(Some(Err(LocalApiError::Http {
                        request: this.request.clone(),
                        source,
                    })));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            let len = chunk.len();
                            this.buffer.extend_from_slice(chunk);
                            data.advance(len);
                        }
                    }
                }
            }
        }
    }
}

impl fmt::Debug for NotifyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyStream")
            .field("request", &self.request)
            .field("buffered", &self.buffer.len())
            .field("done", &self.done)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_bus_messages_decode() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/localapi/v1.98.10/watch-initial-state-prefs-then-patch.jsonl"
        );
        let text = std::fs::read_to_string(path).expect("fixture");
        let all: Vec<Notify> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("decodes"))
            .collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].state, Some(BackendState::NeedsLogin));
        assert!(all[0].session_id.is_some());
        assert!(all[0]
            .prefs
            .as_ref()
            .is_some_and(|p| p.advertise_routes.is_empty()));
        assert!(!all[0].netmap);
        assert_eq!(all[1].state, None);
        let routes = &all[1]
            .prefs
            .as_ref()
            .expect("prefs change")
            .advertise_routes;
        assert_eq!(routes.len(), 1);
        assert!(all[2].health && all[2].prefs.is_none());
    }

    #[test]
    fn masks_combine_as_bits() {
        let mask = WatchMask::INITIAL_STATE | WatchMask::INITIAL_PREFS;
        assert_eq!(mask.bits(), 6);
        assert!(mask.contains(WatchMask::INITIAL_PREFS));
        assert!(!mask.contains(WatchMask::INITIAL_NETMAP));
        assert_eq!(WatchMask::empty().bits(), 0);
    }
}
