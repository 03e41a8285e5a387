//! Bringing a machine onto the tailnet and reading its tailnet state,
//! through the real `tailscale` CLI talking to the machine's tailscaled.
//!
//! This is the one code path for "this node joins the tailnet": the lab
//! uses it for every lab node (inside the node's namespace), and
//! `tailroute join` will use it on a real machine.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::lab::command::{CommandError, HostCommand};

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
