//! A client for tailscaled's LocalAPI: HTTP/1.1 over tailscaled's unix socket.
//!
//! The agent keeps the node's tailnet settings right through it (its pod
//! route in AdvertiseRoutes, accept routes, SNAT off) and reads the node's
//! state. tailscaled serves any client on its socket, so there is no
//! authentication; it refuses a request that looks like it came from a
//! browser (a `Referer` or `Origin` header, or a Host other than
//! `local-tailscaled.sock`), and this client sends none of those.
//!
//! Every call opens its own connection: the socket is local, and a fresh
//! connection per call means no pooled connection can go stale when
//! tailscaled restarts.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tailroute_agent::localapi::LocalApiError> {
//! use tailroute_agent::localapi::{LocalApiClient, MaskedPrefs};
//!
//! let client = LocalApiClient::new(LocalApiClient::DEFAULT_SOCKET);
//! let status = client.status().await?;
//! println!("{}", status.backend_state);
//! let mut routes = client.prefs().await?.advertise_routes;
//! routes.push("10.244.1.0/24".parse().expect("a prefix"));
//! client
//!     .patch_prefs(&MaskedPrefs::new().advertise_routes(routes).no_snat(true))
//!     .await?;
//! # Ok(()) }
//! ```

mod error;
mod types;
mod watch;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

pub use error::LocalApiError;
pub use types::{BackendState, MaskedPrefs, PeerStatus, Prefs, Status, TailnetStatus};
pub use watch::{Notify, NotifyStream, WatchMask};

/// The Host header tailscaled requires on its socket (`apitype.LocalAPIHost`).
const LOCALAPI_HOST: &str = "local-tailscaled.sock";

/// Largest answer accepted from a request/response call: `/status` grows
/// with the tailnet, and a few hundred peers take well under a megabyte.
const MAX_BODY: usize = 32 << 20;

/// A LocalAPI client for one tailscaled. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl LocalApiClient {
    /// Where tailscaled puts its socket on Linux unless told otherwise.
    pub const DEFAULT_SOCKET: &'static str = "/var/run/tailscale/tailscaled.sock";

    /// How long one call may take, connecting included. tailscaled answers
    /// these calls in milliseconds; a prefs edit that reconfigures routes
    /// and netfilter may take a second or two.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A client for the tailscaled listening on `socket`. Nothing is
    /// opened until the first call.
    pub fn new(socket: impl Into<PathBuf>) -> LocalApiClient {
        LocalApiClient {
            socket: socket.into(),
            timeout: LocalApiClient::DEFAULT_TIMEOUT,
        }
    }

    /// The same client with another per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> LocalApiClient {
        self.timeout = timeout;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The node's state, with its peers (`GET /localapi/v0/status`).
    pub async fn status(&self) -> Result<Status, LocalApiError> {
        self.call(Method::GET, "/localapi/v0/status", None).await
    }

    /// The node's state without the peer map (`?peers=false`): cheaper on a
    /// large tailnet when only `Self` and the backend state matter.
    pub async fn status_without_peers(&self) -> Result<Status, LocalApiError> {
        self.call(Method::GET, "/localapi/v0/status?peers=false", None)
            .await
    }

    /// tailscaled's current prefs (`GET /localapi/v0/prefs`).
    pub async fn prefs(&self) -> Result<Prefs, LocalApiError> {
        self.call(Method::GET, "/localapi/v0/prefs", None).await
    }

    /// Changes the fields set in `edit`, leaves the rest, and returns the
    /// prefs as they are afterwards (`PATCH /localapi/v0/prefs`).
    ///
    /// Lists are replaced whole: to add a route, read [`prefs`](Self::prefs),
    /// merge, and send the complete list.
    pub async fn patch_prefs(&self, edit: &MaskedPrefs) -> Result<Prefs, LocalApiError> {
        let body = serde_json::to_vec(edit).map_err(|source| LocalApiError::Json {
            request: "PATCH /localapi/v0/prefs".to_owned(),
            source,
            snippet: String::new(),
        })?;
        self.call(Method::PATCH, "/localapi/v0/prefs", Some(body))
            .await
    }

    /// Watches the IPN bus (`GET /localapi/v0/watch-ipn-bus?mask=...`).
    ///
    /// The timeout covers connecting and tailscaled's response headers;
    /// the stream itself lives until tailscaled closes it or it is dropped.
    pub async fn watch_ipn_bus(&self, mask: WatchMask) -> Result<NotifyStream, LocalApiError> {
        let path = format!("/localapi/v0/watch-ipn-bus?mask={}", mask.bits());
        let request = describe(&Method::GET, &path);
        let opened = tokio::time::timeout(self.timeout, async {
            let (response, connection) = self.send(Method::GET, &path, None).await?;
            let response = self.expect_ok(&request, response).await?;
            Ok::<_, LocalApiError>((response, connection))
        })
        .await;
        let (response, connection) = opened.map_err(|_| self.timed_out(&request))??;
        Ok(NotifyStream::new(request, response.into_body(), connection))
    }

    /// One request/response call, decoded as `T`, all within the timeout.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, LocalApiError> {
        let request = describe(&method, path);
        let body = self.call_raw(method, path, body).await?;
        serde_json::from_slice(&body).map_err(|e| LocalApiError::json(request, e, &body))
    }

    /// One request; the body of a 2xx answer, undecoded.
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, LocalApiError> {
        let request = describe(&method, path);
        let exchange = async {
            let (response, _connection) = self.send(method, path, body).await?;
            let response = self.expect_ok(&request, response).await?;
            read_body(&request, response.into_body()).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.timed_out(&request))?
    }

    /// Logs the node out (`POST /localapi/v0/logout`): its node key is
    /// expired, and an ephemeral device is removed from the tailnet at
    /// once, with no API credential.
    pub async fn logout(&self) -> Result<(), LocalApiError> {
        self.call_raw(Method::POST, "/localapi/v0/logout", None)
            .await
            .map(drop)
    }

    /// Connects, sends one request, and returns the response head with the
    /// task driving the connection (aborted when the guard drops).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(Response<Incoming>, AbortOnDrop), LocalApiError> {
        let request_name = describe(&method, path);
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| LocalApiError::connect(&self.socket, e))?;
        let http_error = |source| LocalApiError::Http {
            request: request_name.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        // The connection's errors also surface through the request and the
        // body, which is where they are reported.
        let connection = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));

        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, LOCALAPI_HOST);
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| LocalApiError::InvalidRequest {
                request: request_name.clone(),
                reason: e.to_string(),
            })?;
        let response = sender.send_request(request).await.map_err(http_error)?;
        Ok((response, connection))
    }

    /// Passes a 200 through; turns anything else into the error it means,
    /// with tailscaled's explanation from the body.
    async fn expect_ok(
        &self,
        request: &str,
        response: Response<Incoming>,
    ) -> Result<Response<Incoming>, LocalApiError> {
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response);
        }
        let body = read_body(request, response.into_body()).await?;
        Err(LocalApiError::from_answer(
            request.to_owned(),
            status.as_u16(),
            &body,
        ))
    }

    fn timed_out(&self, request: &str) -> LocalApiError {
        LocalApiError::Timeout {
            request: request.to_owned(),
            timeout: self.timeout,
        }
    }
}

/// Reads a whole body, refusing more than [`MAX_BODY`] bytes.
async fn read_body(request: &str, body: Incoming) -> Result<Bytes, LocalApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => match e.downcast::<hyper::Error>() {
            Ok(source) => Err(LocalApiError::Http {
                request: request.to_owned(),
                source: *source,
            }),
            Err(_) => Err(LocalApiError::TooLarge {
                request: request.to_owned(),
                limit: MAX_BODY,
            }),
        },
    }
}

/// `GET /localapi/v0/status`: how errors name a request.
fn describe(method: &Method, path: &str) -> String {
    format!("{method} {path}")
}

/// Aborts the task driving a connection when dropped, so that a timed-out
/// call or a dropped watch closes its socket at once.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
