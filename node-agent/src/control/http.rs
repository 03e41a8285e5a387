//! The HTTP exchange both backends share: one reqwest client (rustls on
//! ring, HTTP/1.1, no redirects), a per-call timeout, a body limit, and the
//! mapping of transport failures to [`ControlError`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, Url};
use rustls_platform_verifier::BuilderVerifierExt;

use super::credential::Secret;
use super::error::{snippet, ControlError, ErrorKind};

/// Largest answer accepted: a device list grows with the tailnet, and some
/// thousands of devices with all fields take a few megabytes.
const MAX_BODY: usize = 32 << 20;

/// What a request carries.
pub(crate) enum Body<'a> {
    /// Nothing.
    Empty,
    /// A JSON document.
    Json(serde_json::Value),
    /// An `application/x-www-form-urlencoded` form (the OAuth token request).
    Form(&'a [(&'a str, &'a str)]),
}

/// An answer with any status; the backends decide what a status means.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
    /// The `Location` of a redirect, for the message.
    pub(crate) location: Option<String>,
}

/// One control plane's HTTP endpoint.
#[derive(Debug)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    /// `Headscale at http://...`: how messages name the server.
    target: String,
    timeout: Duration,
}

impl Http {
    /// A client for the API at `base_url`, named `what` in messages.
    pub(crate) fn new(what: &str, base_url: &str, timeout: Duration) -> Result<Http, ControlError> {
        let url = Url::parse(base_url).map_err(|e| {
            ControlError::config(format!("the {what} URL {base_url:?} is not a URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ControlError::config(format!(
                "the {what} URL {base_url:?} must start with http:// or https://"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            // A credential in the URL would end up in every message.
            return Err(ControlError::config(format!(
                "the {what} URL must not carry a user or password; \
                 configure the credential through its file or variable"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ControlError::config(format!(
                "the {what} URL {url} must not have a query or fragment"
            )));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .connect_timeout(timeout)
            .timeout(timeout)
            // A redirect would carry the Authorization header somewhere the
            // operator did not configure; say where it points instead.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tailroute-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ControlError::config(format!("cannot set up the HTTP client for {what}: {e}"))
            })?;
        Ok(Http {
            client,
            target: format!("{what} at {base}"),
            base,
            timeout,
        })
    }

    /// How messages name this server.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// Sends one request, reads the whole answer, all within the timeout.
    /// Only a transport failure is an error here.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&Secret>,
        body: Body<'_>,
    ) -> Result<Answer, ControlError> {
        let request = describe(&method, path);
        let exchange = async {
            let mut builder = self
                .client
                .request(method, format!("{}{path}", self.base))
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(secret) = bearer {
                builder = builder.bearer_auth(secret.expose());
            }
            builder = match body {
                Body::Empty => builder,
                Body::Json(value) => builder.json(&value),
                Body::Form(fields) => builder.form(fields),
            };
            let mut response = builder
                .send()
                .await
                .map_err(|e| self.transport(&request, e))?;
            let status = response.status().as_u16();
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| self.transport(&request, e))?
            {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ControlError::new(
                        ErrorKind::Protocol,
                        &self.target,
                        &request,
                        format!("the answer exceeds {MAX_BODY} bytes"),
                        String::new(),
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer {
                status,
                body,
                location,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ControlError::timeout(&self.target, &request, self.timeout))?
    }

    /// Decodes a 2xx answer as `T`.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        &self,
        request: &str,
        body: &[u8],
    ) -> Result<T, ControlError> {
        serde_json::from_slice(body).map_err(|e| {
            ControlError::new(
                ErrorKind::Protocol,
                &self.target,
                request,
                format!(
                    "the answer is not the documented JSON ({e}); it begins {:?}",
                    snippet(body)
                ),
                "is this a supported version, and is the URL the API's own (not a proxy's \
                 login page)?"
                    .to_owned(),
            )
        })
    }

    /// A non-2xx answer as an error of the kind its status means, with the
    /// server's explanation (scrubbed of `secrets`) and `remedy`.
    pub(crate) fn status_error(
        &self,
        request: &str,
        answer: &Answer,
        secrets: &[&Secret],
        remedy: String,
    ) -> ControlError {
        let status = answer.status;
        let reason = reqwest::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut explanation = server_message(&answer.body);
        for secret in secrets {
            explanation = secret.scrub(&explanation);
        }
        let mut what = format!("answered {status} {reason} ({explanation})");
        let kind = if (300..400).contains(&status) {
            if let Some(location) = &answer.location {
                what.push_str(&format!(", a redirect to {location}"));
            }
            ErrorKind::Rejected
        } else {
            ErrorKind::from_status(status)
        };
        ControlError::new(kind, &self.target, request, what, remedy).with_status(status)
    }

    fn transport(&self, request: &str, e: reqwest::Error) -> ControlError {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Unreachable
        };
        // reqwest's message names the URL, which holds no secret (checked
        // in `new`); its source chain says connect/TLS/reset.
        let mut what = format!("the request failed: {e}");
        let mut source: Option<&dyn std::error::Error> = std::error::Error::source(&e);
        while let Some(cause) = source {
            what.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        let remedy = if kind == ErrorKind::Timeout {
            "the control plane is slow or a firewall drops the traffic; the agent retries"
        } else {
            "check the URL, DNS, the network path from this node, and (for https) that \
             the system's CA roots are mounted (SSL_CERT_FILE)"
        };
        ControlError::new(kind, &self.target, request, what, remedy.to_owned()).with_source(e)
    }
}

/// `GET /api/v1/node`: how messages name a request (never with a query
/// string, which might one day hold something private).
pub(crate) fn describe(method: &Method, path: &str) -> String {
    let path = path.split('?').next().unwrap_or(path);
    format!("{method} {path}")
}

/// One URL path segment, percent-encoded (tailnet names may hold `@`).
pub(crate) fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The server's explanation: `message` (grpc-gateway, Tailscale),
/// `error_description`/`error` (OAuth), else the text.
fn server_message(body: &[u8]) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(body) {
        for field in ["message", "error_description", "error"] {
            if let Some(serde_json::Value::String(text)) = map.get(field) {
                if !text.is_empty() {
                    return snippet(text.as_bytes());
                }
            }
        }
    }
    let text = snippet(body);
    if text.is_empty() {
        "empty body".to_owned()
    } else {
        text
    }
}

/// TLS with the ring provider and the system's roots.
fn tls_config() -> Result<rustls::ClientConfig, ControlError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: rustls::Error| ControlError::config(format!("cannot set up TLS: {e}"));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?
        .with_platform_verifier()
        .map_err(tls_error)?
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("-"), "-");
        assert_eq!(segment("me@example.com"), "me%40example.com");
        assert_eq!(segment("a/b"), "a%2Fb");
    }

    #[test]
    fn server_messages_come_from_json_or_text() {
        assert_eq!(
            server_message(br#"{"code":5,"message":"node not found","details":[]}"#),
            "node not found"
        );
        assert_eq!(
            server_message(br#"{"error":"invalid_client","error_description":"bad secret"}"#),
            "bad secret"
        );
        assert_eq!(server_message(b"Unauthorized"), "Unauthorized");
        assert_eq!(server_message(b""), "empty body");
    }

    #[test]
    fn urls_with_credentials_or_odd_schemes_are_refused() {
        let t = Duration::from_secs(1);
        for bad in ["ftp://h", "http://u:p@h", "not a url", "http://h/?q=1"] {
            let err = Http::new("Headscale", bad, t).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
            assert!(!err.to_string().contains("u:p"), "{err}");
        }
        let ok = Http::new("Headscale", "https://hs.example.com/", t).expect("a URL");
        assert_eq!(ok.target(), "Headscale at https://hs.example.com");
    }
}
