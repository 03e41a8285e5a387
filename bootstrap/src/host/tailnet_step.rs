//! The "bring this machine onto the tailnet" step of `tailroute init` and
//! `join`: decided from what tailscaled says now, carried out through
//! [`TailscaleCli::ensure_joined`] (the code the lab uses for its nodes).
//!
//! Keys never appear on a command line or in output: a key given in the
//! environment, or built from an OAuth client secret, is written to a
//! root-only file under /run/tailroute for `tailscale up --auth-key=file:`
//! and removed afterwards.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::paths;
use crate::host::preflight::{problem, Outcome};
use crate::host::Machine;
use crate::tailnet::{JoinOptions, Joined, TailnetIdentity, TailscaleCli};

/// The environment variable an auth key may come from.
pub const AUTH_KEY_ENV: &str = "TAILROUTE_AUTH_KEY";
/// The tag nodes request on Tailscale SaaS when none is given.
pub const DEFAULT_NODE_TAG: &str = "tag:k8s-node";

/// How the machine may authenticate to the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// None given: fine only when the machine is already on the tailnet.
    None,
    /// An auth key (Tailscale) or pre-auth key (Headscale) in a file.
    AuthKeyFile(PathBuf),
    /// An auth key in `TAILROUTE_AUTH_KEY`.
    AuthKeyEnv,
    /// A Tailscale OAuth client secret in a file (scope `auth_keys`):
    /// `tailscale up` mints a tagged, non-ephemeral key from it.
    OAuthClientSecretFile(PathBuf),
}

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailnetRequest {
    /// Headscale's URL; `None` for Tailscale SaaS.
    pub login_server: Option<String>,
    /// The credential.
    pub credential: Credential,
    /// Tags to request; empty means the default (see [`TailnetRequest::tags`]).
    pub advertise_tags: Vec<String>,
    /// The device (and node) name; `None`: the machine's hostname.
    pub hostname: Option<String>,
}

impl TailnetRequest {
    /// The tags `tailscale up` will request: the given ones; on Tailscale
    /// SaaS `tag:k8s-node` by default; on Headscale none (the pre-auth
    /// key's tags apply).
    pub fn tags(&self) -> Vec<String> {
        if !self.advertise_tags.is_empty() || self.login_server.is_some() {
            self.advertise_tags.clone()
        } else {
            vec![DEFAULT_NODE_TAG.to_owned()]
        }
    }
}

/// What the tailnet step will do on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TailnetPlan {
    /// Already `Running` on a tailnet: left exactly as it is.
    Already(TailnetIdentity),
    /// `tailscale up` with these options; the key comes from `key`.
    Join {
        /// The options (`auth_key_file` is where the key will be read).
        options: JoinOptions,
        /// Where the key comes from.
        key: Credential,
        /// What tailscaled said (`NeedsLogin`, `Stopped`, ...).
        state: String,
    },
    /// tailscaled did not answer.
    Unreachable(String),
    /// Not on the tailnet and no way to join given.
    NoCredential(String),
    /// The credential cannot be used (the reason).
    BadCredential(String),
}

impl TailnetPlan {
    /// Decides from tailscaled's current state.
    pub fn new(machine: &dyn Machine, request: &TailnetRequest) -> TailnetPlan {
        let status = match machine.tailnet_status() {
            Ok(status) => status,
            Err(e) => return TailnetPlan::Unreachable(e),
        };
        if let Some(identity) = status.running_identity() {
            return TailnetPlan::Already(identity);
        }
        let key_file = match &request.credential {
            Credential::None => return TailnetPlan::NoCredential(status.backend_state),
            Credential::AuthKeyFile(path) | Credential::OAuthClientSecretFile(path) => {
                if machine.read(path).is_none_or(|k| k.trim().is_empty()) {
                    return TailnetPlan::BadCredential(format!(
                        "{} cannot be read or is empty",
                        path.display()
                    ));
                }
                match &request.credential {
                    Credential::AuthKeyFile(_) => path.clone(),
                    _ => temporary_key_file(),
                }
            }
            Credential::AuthKeyEnv => {
                if !machine.has_env(AUTH_KEY_ENV) {
                    return TailnetPlan::BadCredential(format!("{AUTH_KEY_ENV} is empty"));
                }
                temporary_key_file()
            }
        };
        if matches!(request.credential, Credential::OAuthClientSecretFile(_))
            && request.tags().is_empty()
        {
            return TailnetPlan::BadCredential(
                "an OAuth client can only create tagged devices: pass --advertise-tags".into(),
            );
        }
        TailnetPlan::Join {
            options: JoinOptions {
                login_server: request.login_server.clone(),
                auth_key_file: key_file,
                hostname: request
                    .hostname
                    .clone()
                    .unwrap_or_else(|| machine.hostname()),
                advertise_tags: request.tags(),
                timeout: Duration::from_secs(90),
            },
            key: request.credential.clone(),
            state: status.backend_state,
        }
    }

    /// The machine's identity when it is already known.
    pub fn identity(&self) -> Option<&TailnetIdentity> {
        match self {
            TailnetPlan::Already(identity) => Some(identity),
            _ => None,
        }
    }

    /// The preflight finding for this plan.
    pub fn finding(&self) -> Outcome {
        match self {
            TailnetPlan::Already(id) => Outcome::Ok(format!(
                "on the tailnet as {} ({}); left as it is",
                id.hostname,
                ips(id)
            )),
            TailnetPlan::Join { state, options, .. } => Outcome::Ok(format!(
                "tailscaled is {state}; will join as {}",
                options.hostname
            )),
            TailnetPlan::Unreachable(e) => problem(
                &format!("tailscaled does not answer: {e}"),
                "systemctl enable --now tailscaled (or pass --tailscale-socket)",
            ),
            TailnetPlan::NoCredential(state) => problem(
                &format!("this machine is not on the tailnet (tailscaled is {state}) and no key was given"),
                "pass --auth-key-file FILE (or set TAILROUTE_AUTH_KEY), or \
                 --oauth-client-secret-file FILE with --advertise-tags; on Headscale: \
                 headscale preauthkeys create --user USER --tags tag:k8s-node --expiration 1h",
            ),
            TailnetPlan::BadCredential(why) => problem(
                why,
                "give a file holding the key (one line), readable by root",
            ),
        }
    }

    /// One line for the plan.
    pub fn describe(&self) -> String {
        match self {
            TailnetPlan::Already(id) => format!(
                "tailnet: already on it as {} ({}); nothing to do",
                id.hostname,
                ips(id)
            ),
            TailnetPlan::Join { options, key, .. } => {
                let key_note = match key {
                    Credential::AuthKeyEnv => format!(
                        " (the key from {AUTH_KEY_ENV}, written to this root-only file and removed after)"
                    ),
                    Credential::OAuthClientSecretFile(path) => format!(
                        " (a non-ephemeral, preauthorized key from the OAuth client secret in {}, \
                         written to this root-only file and removed after)",
                        path.display()
                    ),
                    _ => String::new(),
                };
                format!(
                    "tailnet: run tailscale {}{key_note}",
                    options.up_args().join(" ")
                )
            }
            other => format!("tailnet: cannot join ({:?})", other.finding()),
        }
    }

    /// Carries the step out: writes a temporary key file when needed, runs
    /// `tailscale up` (unless already on the tailnet), and removes the
    /// temporary file whatever happens.
    pub fn execute(&self, cli: &TailscaleCli) -> Result<Joined, String> {
        let (options, key) = match self {
            TailnetPlan::Already(identity) => return Ok(Joined::Already(identity.clone())),
            TailnetPlan::Join { options, key, .. } => (options, key),
            other => {
                return Err(match other.finding() {
                    Outcome::Problem { what, remedy } => format!("{what}; {remedy}"),
                    Outcome::Ok(found) => found,
                })
            }
        };
        let temporary = match key {
            Credential::AuthKeyEnv => Some(
                std::env::var(AUTH_KEY_ENV)
                    .map_err(|_| format!("{AUTH_KEY_ENV} is not set"))?
                    .trim()
                    .to_owned(),
            ),
            Credential::OAuthClientSecretFile(path) => {
                let secret = std::fs::read_to_string(path)
                    .map_err(|e| format!("reading {}: {e}", path.display()))?;
                Some(oauth_auth_key(secret.trim()))
            }
            _ => None,
        };
        if let Some(key) = &temporary {
            write_private(&options.auth_key_file, key)?;
        }
        let result = cli.ensure_joined(options).map_err(|e| {
            format!(
                "{e}. If the key expired, was already used or was revoked, make a new one \
                 (Tailscale: admin console > Settings > Keys, or the OAuth client; Headscale: \
                 headscale preauthkeys create --user USER --tags tag:k8s-node --expiration 1h)"
            )
        });
        if temporary.is_some() {
            let _ = std::fs::remove_file(&options.auth_key_file);
        }
        result
    }
}

/// The auth key `tailscale up` derives from an OAuth client secret: a
/// node must survive restarts (not ephemeral) and join without a manual
/// approval (preauthorized).
pub fn oauth_auth_key(secret: &str) -> String {
    format!("{secret}?ephemeral=false&preauthorized=true")
}

fn temporary_key_file() -> PathBuf {
    Path::new(paths::RUN_DIR).join(format!("auth-key-{}", std::process::id()))
}

fn write_private(path: &Path, contents: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

fn ips(identity: &TailnetIdentity) -> String {
    identity
        .ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
