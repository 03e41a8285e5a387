//! The credential the agent holds for the control plane's admin API, and the
//! [`Secret`] wrapper that keeps it out of logs and error messages.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::ControlError;

/// The public Tailscale API.
pub const TAILSCALE_API: &str = "https://api.tailscale.com";

/// A secret string (API key, OAuth client secret, access token).
///
/// Its `Debug` and `Display` print `[redacted]`; the value is reachable only
/// through [`Secret::expose`], which the HTTP layer calls to build a header
/// or a form. It remembers where it came from, so that a message about a
/// rejected credential can name the file or variable to fix.
#[derive(Clone)]
pub struct Secret {
    value: String,
    origin: String,
}

impl Secret {
    /// A secret given directly (in a test, or built by the caller); its
    /// origin reads `inline`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret {
            value: value.into(),
            origin: "inline".to_owned(),
        }
    }

    /// Reads a secret from `path`: the whole file, less trailing whitespace
    /// (the newline `echo` or an editor adds). A missing, unreadable or
    /// empty file is an error that names the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Secret, ControlError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            let reason = match e.kind() {
                std::io::ErrorKind::NotFound => "it does not exist".to_owned(),
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied (the agent runs as root; check the mount)".to_owned()
                }
                std::io::ErrorKind::InvalidData => "it is not UTF-8 text".to_owned(),
                _ => e.to_string(),
            };
            ControlError::config(format!(
                "cannot read the credential file {}: {reason}",
                path.display()
            ))
        })?;
        let value = text.trim_end();
        if value.is_empty() {
            return Err(ControlError::config(format!(
                "the credential file {} is empty: write the key into it (no quotes)",
                path.display()
            )));
        }
        Ok(Secret {
            value: value.to_owned(),
            origin: format!("file {}", path.display()),
        })
    }

    /// Reads a secret from the environment variable `var`, less trailing
    /// whitespace. An unset, non-UTF-8 or empty variable is an error that
    /// names it.
    pub fn from_env(var: &str) -> Result<Secret, ControlError> {
        let raw = std::env::var(var).map_err(|e| {
            let reason = match e {
                std::env::VarError::NotPresent => "it is not set",
                std::env::VarError::NotUnicode(_) => "it is not UTF-8",
            };
            ControlError::config(format!("cannot read the credential from ${var}: {reason}"))
        })?;
        let value = raw.trim_end();
        if value.is_empty() {
            return Err(ControlError::config(format!(
                "the credential variable ${var} is empty"
            )));
        }
        Ok(Secret {
            value: value.to_owned(),
            origin: format!("${var}"),
        })
    }

    /// The secret itself. Only the HTTP layer should need this.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the secret came from: `file /path`, `$VAR` or `inline`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `text` with every occurrence of the secret replaced by `[redacted]`:
    /// for anything a server sends back that ends up in an error.
    pub(crate) fn scrub(&self, text: &str) -> String {
        if self.value.is_empty() {
            text.to_owned()
        } else {
            text.replace(&self.value, "[redacted]")
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Which control plane the agent talks to, and how it proves who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A Headscale server and one of its API keys (`headscale apikeys
    /// create`). Headscale's keys are all-powerful; there are no scopes.
    Headscale {
        /// Headscale's URL, e.g. `http://198.18.0.2:8080` (its `server_url`).
        url: String,
        /// The API key.
        api_key: Secret,
    },
    /// A Tailscale OAuth client (client-credentials flow). The agent trades
    /// it for an access token that lives about an hour and renews it.
    TailscaleOAuth {
        /// The client ID (not secret, but not logged either).
        client_id: String,
        /// The client secret (`tskey-client-...`).
        client_secret: Secret,
        /// Scopes to ask for; empty asks for all the client's scopes.
        scopes: Vec<String>,
        /// The tailnet name; `-` means the client's own tailnet.
        tailnet: String,
        /// The API's base URL, [`TAILSCALE_API`] unless testing.
        base_url: String,
    },
    /// A Tailscale API access token (`tskey-api-...`): a user's full rights,
    /// for at most 90 days. An OAuth client is the better choice.
    TailscaleApiKey {
        /// The access token.
        key: Secret,
        /// The tailnet name; `-` means the key's own tailnet.
        tailnet: String,
        /// The API's base URL, [`TAILSCALE_API`] unless testing.
        base_url: String,
    },
}

impl Credential {
    /// A Headscale credential.
    pub fn headscale(url: impl Into<String>, api_key: Secret) -> Credential {
        Credential::Headscale {
            url: url.into(),
            api_key,
        }
    }

    /// A Tailscale OAuth client for the public API and the client's own
    /// tailnet, asking for all its scopes.
    pub fn tailscale_oauth(client_id: impl Into<String>, client_secret: Secret) -> Credential {
        Credential::TailscaleOAuth {
            client_id: client_id.into(),
            client_secret,
            scopes: Vec::new(),
            tailnet: "-".to_owned(),
            base_url: TAILSCALE_API.to_owned(),
        }
    }

    /// A Tailscale API access token for the public API and its own tailnet.
    pub fn tailscale_api_key(key: Secret) -> Credential {
        Credential::TailscaleApiKey {
            key,
            tailnet: "-".to_owned(),
            base_url: TAILSCALE_API.to_owned(),
        }
    }

    /// The same credential against another API base URL (a test server, a
    /// proxy). For Headscale this is its URL.
    pub fn with_base_url(mut self, url: impl Into<String>) -> Credential {
        let url = url.into();
        match &mut self {
            Credential::Headscale { url: u, .. } => *u = url,
            Credential::TailscaleOAuth { base_url, .. }
            | Credential::TailscaleApiKey { base_url, .. } => *base_url = url,
        }
        self
    }

    /// The same credential for another tailnet (Tailscale only; Headscale
    /// has one).
    pub fn with_tailnet(mut self, name: impl Into<String>) -> Credential {
        match &mut self {
            Credential::Headscale { .. } => {}
            Credential::TailscaleOAuth { tailnet, .. }
            | Credential::TailscaleApiKey { tailnet, .. } => *tailnet = name.into(),
        }
        self
    }
}

/// Where a secret may be read from: the agent's configuration names one of
/// these, never the secret itself (a flag would show in `ps`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file, typically a mounted Kubernetes Secret.
    File(PathBuf),
    /// An environment variable, typically `valueFrom.secretKeyRef`.
    Env(String),
}

impl SecretSource {
    /// Reads the secret.
    pub fn load(&self) -> Result<Secret, ControlError> {
        match self {
            SecretSource::File(path) => Secret::from_file(path),
            SecretSource::Env(var) => Secret::from_env(var),
        }
    }
}
