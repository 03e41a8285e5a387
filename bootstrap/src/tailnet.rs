//! Bringing a machine onto the tailnet and reading its tailnet state,
//! through the real `tailscale` CLI talking to the machine's tailscaled.
//!
//! [`TailscaleCli::ensure_joined`] is the one code path for "this node
//! joins the tailnet": `tailroute init` and `tailroute join` use it on a
//! real machine, and the lab uses it for every lab node (inside the node's
//! namespace).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::command::{CommandError, HostCommand};

/// How a node joins the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinOptions {
    /// The control server (`http://198.18.0.2:8080` for Headscale); `None`
    /// for Tailscale's own.
    pub login_server: Option<String>,
    /// A file holding the auth key: the key itself never appears on a
    /// command line (`--auth-key=file:...`).
    pub auth_key_file: PathBuf,
    /// The device name on the tailnet.
    pub hostname: String,
    /// Tags to request (empty: the ones the key carries).
    pub advertise_tags: Vec<String>,
    /// How long `tailscale up` may take.
    pub timeout: Duration,
}

impl JoinOptions {
    /// The arguments of `tailscale up` for these options.
    ///
    /// Every node of a tailroute cluster accepts the other nodes' pod
    /// routes, keeps pod source addresses (no SNAT on subnet routes), and
    /// leaves DNS alone (cluster DNS is Kubernetes' business).
    pub fn up_args(&self) -> Vec<String> {
        let mut args = vec!["up".to_owned()];
        if let Some(server) = &self.login_server {
            args.push(format!("--login-server={server}"));
        }
        args.push(format!("--auth-key=file:{}", self.auth_key_file.display()));
        args.push(format!("--hostname={}", self.hostname));
        if !self.advertise_tags.is_empty() {
            args.push(format!(
                "--advertise-tags={}",
                self.advertise_tags.join(",")
            ));
        }
        args.extend(
            [
                "--accept-dns=false",
                "--accept-routes",
                "--snat-subnet-routes=false",
            ]
            .map(str::to_owned),
        );
        args.push(format!("--timeout={}s", self.timeout.as_secs().max(1)));
        args
    }
}

/// The `tailscale` CLI for one tailscaled.
#[derive(Debug, Clone)]
pub struct TailscaleCli {
    /// The `tailscale` program.
    pub program: PathBuf,
    /// tailscaled's socket.
    pub socket: PathBuf,
    /// The network namespace to run the CLI in (`None`: the host's).
    pub namespace: Option<String>,
}

/// What went wrong talking to tailscaled.
#[derive(Debug, thiserror::Error)]
pub enum TailnetError {
    /// The CLI failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Its JSON did not parse.
    #[error("could not read `tailscale status --json` output: {0}")]
    Status(String),
    /// `tailscale up` returned but tailscaled never reached `Running`.
    #[error(
        "tailscaled is {0}, not Running, after `tailscale up`; see `tailscale status` and \
         tailscaled's log (journalctl -u tailscaled)"
    )]
    NotRunning(String),
}

impl TailscaleCli {
    fn command(&self, args: &[String]) -> HostCommand {
        let mut full = vec![format!("--socket={}", self.socket.display())];
        full.extend_from_slice(args);
        let program = self.program.display().to_string();
        match &self.namespace {
            Some(ns) => HostCommand::exec_in(ns, &program, &full),
            None => HostCommand::new(&program, &full),
        }
    }

    /// `tailscale up` with `options`.
    pub fn up(&self, options: &JoinOptions) -> Result<(), TailnetError> {
        self.command(&options.up_args()).run()?;
        Ok(())
    }

    /// `tailscale status --json`, parsed.
    pub fn status(&self) -> Result<TailnetStatus, TailnetError> {
        let json = self.command(&["status".into(), "--json".into()]).run()?;
        serde_json::from_str(&json).map_err(|e| TailnetError::Status(e.to_string()))
    }

    /// Brings this machine onto the tailnet unless it already is there:
    /// a device that is `Running` with addresses is left exactly as it is
    /// (a second `tailroute join` changes nothing); otherwise `tailscale
    /// up` runs and this waits until tailscaled reports `Running` with
    /// addresses.
    pub fn ensure_joined(&self, options: &JoinOptions) -> Result<Joined, TailnetError> {
        if let Ok(status) = self.status() {
            if let Some(identity) = status.running_identity() {
                return Ok(Joined::Already(identity));
            }
        }
        self.up(options)?;
        let deadline = std::time::Instant::now() + options.timeout;
        loop {
            let status = self.status()?;
            if let Some(identity) = status.running_identity() {
                return Ok(Joined::Now(identity));
            }
            if std::time::Instant::now() >= deadline {
                return Err(TailnetError::NotRunning(status.backend_state));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The outcome of [`TailscaleCli::ensure_joined`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The machine was already on the tailnet; nothing was changed.
    Already(TailnetIdentity),
    /// `tailscale up` brought it on.
    Now(TailnetIdentity),
}

impl Joined {
    /// The machine's tailnet identity either way.
    pub fn identity(&self) -> &TailnetIdentity {
        match self {
            Joined::Already(identity) | Joined::Now(identity) => identity,
        }
    }
}

/// Who this machine is on the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailnetIdentity {
    /// Its device name (also the Kubernetes node name).
    pub hostname: String,
    /// Its tailnet addresses, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// Its MagicDNS name, without the trailing dot, when the tailnet has
    /// one.
    pub dns_name: Option<String>,
}

/// The parts of `tailscale status --json` tailroute reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TailnetStatus {
    /// `Running`, `NeedsLogin`, `Starting`, ...
    pub backend_state: String,
    /// This device.
    #[serde(rename = "Self")]
    pub self_: Option<PeerStatus>,
    /// Every peer, keyed by public key.
    #[serde(default)]
    pub peer: Option<std::collections::BTreeMap<String, PeerStatus>>,
}

/// One device in [`TailnetStatus`].
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerStatus {
    /// Its name on the tailnet.
    #[serde(default)]
    pub host_name: String,
    /// Its tailnet addresses.
    #[serde(rename = "TailscaleIPs", default)]
    pub tailscale_ips: Option<Vec<IpAddr>>,
    /// Connected to the control server.
    #[serde(default)]
    pub online: bool,
    /// The direct `ip:port` in use, empty when relayed or idle.
    #[serde(default)]
    pub cur_addr: String,
    /// The DERP region relaying, if any.
    #[serde(default)]
    pub relay: String,
    /// Its MagicDNS name (`n1.tail1234.ts.net.`), empty without MagicDNS.
    #[serde(rename = "DNSName", default)]
    pub dns_name: String,
}

impl TailnetStatus {
    /// This device's tailnet addresses, IPv4 first.
    pub fn self_ips(&self) -> Vec<IpAddr> {
        let mut ips = self
            .self_
            .as_ref()
            .and_then(|s| s.tailscale_ips.clone())
            .unwrap_or_default();
        ips.sort_by_key(|ip| ip.is_ipv6());
        ips
    }

    /// This device's identity when it is `Running` with addresses.
    pub fn running_identity(&self) -> Option<TailnetIdentity> {
        let me = self.self_.as_ref()?;
        let ips = self.self_ips();
        if self.backend_state != "Running" || ips.is_empty() {
            return None;
        }
        let dns_name = me.dns_name.trim_end_matches('.');
        Some(TailnetIdentity {
            hostname: me.host_name.clone(),
            ips,
            dns_name: (!dns_name.is_empty()).then(|| dns_name.to_owned()),
        })
    }

    /// The peers, sorted by name.
    pub fn peers(&self) -> Vec<&PeerStatus> {
        let mut peers: Vec<&PeerStatus> = self.peer.iter().flat_map(|m| m.values()).collect();
        peers.sort_by(|a, b| a.host_name.cmp(&b.host_name));
        peers
    }
}

/// tailscaled's socket path under a state directory.
pub fn socket_in(state_dir: &Path) -> PathBuf {
    state_dir.join("tailscaled.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_keeps_the_key_off_the_command_line_and_pod_sources_intact() {
        let options = JoinOptions {
            login_server: Some("http://198.18.0.2:8080".into()),
            auth_key_file: "/run/k".into(),
            hostname: "n1".into(),
            advertise_tags: vec![],
            timeout: Duration::from_secs(60),
        };
        let args = options.up_args();
        assert!(
            args.contains(&"--auth-key=file:/run/k".to_owned()),
            "{args:?}"
        );
        assert!(args.contains(&"--snat-subnet-routes=false".to_owned()));
        assert!(args.contains(&"--accept-routes".to_owned()));
        assert!(!args.iter().any(|a| a.starts_with("--advertise-tags")));
    }

    #[test]
    fn status_json_is_read() {
        let json = r#"{"BackendState":"Running","Self":{"HostName":"n1","TailscaleIPs":["fd7a:115c:a1e0::1","100.64.0.1"],"Online":true},
            "Peer":{"k":{"HostName":"n2","TailscaleIPs":["100.64.0.2"],"Online":true,"CurAddr":"198.18.0.12:41641","Relay":"headscale"}}}"#;
        let status: TailnetStatus = serde_json::from_str(json).unwrap();
        assert_eq!(status.backend_state, "Running");
        assert_eq!(
            status.self_ips()[0],
            "100.64.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(status.peers()[0].host_name, "n2");
        assert!(status.peers()[0].online);
    }
}
