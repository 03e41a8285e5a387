//! The lab's tailnet control server: Headscale with its embedded DERP
//! relay, in the control-plane namespace, and the tagged pre-auth key the
//! lab nodes join with.
//!
//! Nodes join as `tag:k8s-node`. The policy lets that tag own itself and
//! allows all traffic; it does *not* auto-approve pod routes, because
//! noticing an unapproved route and saying what to do about it is the node
//! agent's job, and the lab must be able to show it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command::HostCommand;
use crate::lab::daemon::{wait_ready, DaemonError, DaemonSpec, Entry};
use crate::lab::kubernetes::write_private;
use crate::lab::probe;

/// Headscale's HTTP port (control protocol, DERP, REST API).
pub const PORT: u16 = 8080;
/// The embedded DERP's STUN port.
pub const STUN_PORT: u16 = 3478;
/// The tag every lab node joins with.
pub const NODE_TAG: &str = "tag:k8s-node";
/// The Headscale user that owns the tag.
const USER: &str = "lab";

/// A running Headscale.
#[derive(Debug, Clone)]
pub struct Headscale {
    /// The `headscale` program (its CLI talks to the server's unix socket).
    pub program: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// `http://<address>:8080`: the login server for tailscaled.
    pub url: String,
    /// Its pid.
    pub pid: u32,
}

/// Why Headscale could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HeadscaleError {
    /// Writing its files or running its CLI failed.
    #[error("headscale: {0}")]
    Setup(String),
    /// The server did not start.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// The configuration file for a Headscale listening on `address`.
pub fn config_yaml(dir: &Path, address: IpAddr) -> String {
    let d = dir.display();
    let listen = SocketAddr::new(address, PORT);
    let stun = SocketAddr::new(address, STUN_PORT);
    let family = if address.is_ipv4() { "ipv4" } else { "ipv6" };
    format!(
        "server_url: http://{listen}\n\
         listen_addr: {listen}\n\
         metrics_listen_addr: 127.0.0.1:9090\n\
         grpc_listen_addr: 127.0.0.1:50443\n\
         noise:\n  private_key_path: {d}/noise_private.key\n\
         prefixes:\n  v4: 100.64.0.0/10\n  v6: fd7a:115c:a1e0::/48\n  allocation: sequential\n\
         derp:\n  server:\n    enabled: true\n    region_id: 999\n    region_code: lab\n    region_name: tailroute lab DERP\n\
         \x20   stun_listen_addr: {stun}\n    private_key_path: {d}/derp_server_private.key\n\
         \x20   automatically_add_embedded_derp_region: true\n    {family}: {address}\n\
         \x20 urls: []\n  auto_update_enabled: false\n\
         disable_check_updates: true\n\
         database:\n  type: sqlite\n  sqlite:\n    path: {d}/db.sqlite\n\
         policy:\n  mode: file\n  path: {d}/policy.hujson\n\
         dns:\n  magic_dns: false\n  override_local_dns: false\n\
         unix_socket: {d}/headscale.sock\n\
         unix_socket_permission: \"0700\"\n\
         log:\n  level: info\n"
    )
}

/// The policy: `tag:k8s-node` and the identity pods' tags owned by the
/// lab user, everything allowed.
pub fn policy_hujson(auto_approve: &[String]) -> String {
    let auto = if auto_approve.is_empty() {
        String::new()
    } else {
        let routes: Vec<String> = auto_approve
            .iter()
            .map(|cidr| format!("\"{cidr}\": [\"{NODE_TAG}\"]"))
            .collect();
        format!(
            ",\n  \"autoApprovers\": {{ \"routes\": {{ {} }} }}",
            routes.join(", ")
        )
    };
    format!(
        "{{\n  \"tagOwners\": {{ \"{NODE_TAG}\": [\"{USER}@\"], \"{pod}\": [\"{USER}@\"], \"{web}\": [\"{USER}@\"] }},\n  \
         \"acls\": [ {{ \"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"] }} ]{auto}\n}}\n",
        pod = crate::lab::agent::POD_TAG,
        web = crate::lab::agent::WEB_TAG,
    )
}

/// Starts Headscale in `namespace` at `address`, waits for `/health`, and
/// creates the lab user.
pub fn start(
    program: &Path,
    namespace: &str,
    dir: &Path,
    address: IpAddr,
    auto_approve: &[String],
    record: &mut dyn FnMut(u32, &str) -> Result<(), String>,
) -> Result<Headscale, HeadscaleError> {
    let setup =
        |what: &str, e: &dyn std::fmt::Display| HeadscaleError::Setup(format!("{what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| setup("create its directory", &e))?;
    let config = dir.join("config.yaml");
    std::fs::write(&config, config_yaml(dir, address))
        .map_err(|e| setup("write config.yaml", &e))?;
    std::fs::write(dir.join("policy.hujson"), policy_hujson(auto_approve))
        .map_err(|e| setup("write policy.hujson", &e))?;
    let log = dir.join("headscale.log");
    let pid = DaemonSpec {
        namespace: Some(namespace),
        entry: Entry::Setns,
        program,
        args: vec!["-c".into(), config.display().to_string(), "serve".into()],
        env: vec![],
        log: log.clone(),
    }
    .spawn()?;
    record(pid, "headscale").map_err(HeadscaleError::Setup)?;
    let listen = SocketAddr::new(address, PORT);
    wait_ready(
        "headscale",
        Some(pid),
        &log,
        Duration::from_secs(30),
        || match probe::http_get_in(namespace, listen, "/health")? {
            (200, _) => Ok(()),
            (code, body) => Err(format!("/health answered {code}: {body}")),
        },
    )?;
    let headscale = Headscale {
        program: program.to_owned(),
        config,
        url: format!("http://{listen}"),
        pid,
    };
    headscale.cli(&["users", "create", USER])?;
    Ok(headscale)
}

impl Headscale {
    /// Runs the headscale CLI (it reaches the server over its unix socket).
    pub fn cli(&self, args: &[&str]) -> Result<String, HeadscaleError> {
        let mut full = vec!["-c", self.config.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        HostCommand::new(&self.program.display().to_string(), &full)
            .run()
            .map_err(|e| HeadscaleError::Setup(e.to_string()))
    }

    /// An API key for the node agents (route approval), valid for a day,
    /// written to `path` (owner-only).
    pub fn api_key(&self, path: &Path) -> Result<(), HeadscaleError> {
        let out = self.cli(&["apikeys", "create", "--expiration", "24h"])?;
        let key = out.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(HeadscaleError::Setup(format!(
                "apikeys create printed no key: {out:?}"
            )));
        }
        write_private(path, key)
            .map_err(|e| HeadscaleError::Setup(format!("write {}: {e}", path.display())))
    }

    /// A reusable pre-auth key, valid for `ttl`, whose nodes join tagged
    /// [`NODE_TAG`], written to `path` (owner-only).
    pub fn node_key(&self, path: &Path, ttl: Duration) -> Result<(), HeadscaleError> {
        self.preauth_key(path, ttl, Some(NODE_TAG))
    }

    /// A pre-auth key for a device of the lab user with no tag (a
    /// "laptop": on the tailnet, not a cluster node), written to `path`.
    pub fn user_key(&self, path: &Path, ttl: Duration) -> Result<(), HeadscaleError> {
        self.preauth_key(path, ttl, None)
    }

    fn preauth_key(
        &self,
        path: &Path,
        ttl: Duration,
        tag: Option<&str>,
    ) -> Result<(), HeadscaleError> {
        let expiration = format!("{}s", ttl.as_secs());
        let mut args = vec![
            "preauthkeys",
            "create",
            "--user",
            "1",
            "--reusable",
            "--expiration",
            &expiration,
            "-o",
            "json",
        ];
        if let Some(tag) = tag {
            args.extend(["--tags", tag]);
        }
        let json = self.cli(&args)?;
        let value: serde_json::Value = serde_json::from_str(&json).map_err(|e| {
            HeadscaleError::Setup(format!("preauthkeys create printed no JSON ({e}): {json}"))
        })?;
        let key = value["key"]
            .as_str()
            .ok_or_else(|| HeadscaleError::Setup(format!("no key in {json}")))?;
        write_private(path, key)
            .map_err(|e| HeadscaleError::Setup(format!("write {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_serves_the_control_protocol_and_derp_on_the_namespace_address() {
        let yaml = config_yaml(Path::new("/s"), "198.18.0.2".parse().unwrap());
        assert!(
            yaml.contains("server_url: http://198.18.0.2:8080\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("stun_listen_addr: 198.18.0.2:3478\n"),
            "{yaml}"
        );
        assert!(yaml.contains("    ipv4: 198.18.0.2\n"), "{yaml}");
        assert!(yaml.contains("  urls: []\n"), "{yaml}");
    }

    #[test]
    fn the_policy_lets_the_lab_user_own_the_node_tag_and_approves_nothing() {
        let policy: serde_json::Value = serde_json::from_str(&policy_hujson(&[])).unwrap();
        assert_eq!(policy["tagOwners"][NODE_TAG][0], "lab@");
        assert!(policy.get("autoApprovers").is_none());
    }

    #[test]
    fn with_auto_approvers_the_node_tag_owns_the_cluster_pod_cidrs() {
        let cidrs = ["10.244.0.0/16".to_owned(), "fd00:10:244::/56".to_owned()];
        let policy: serde_json::Value = serde_json::from_str(&policy_hujson(&cidrs)).unwrap();
        assert_eq!(
            policy["autoApprovers"]["routes"]["10.244.0.0/16"][0],
            NODE_TAG
        );
        assert_eq!(
            policy["autoApprovers"]["routes"]["fd00:10:244::/56"][0],
            NODE_TAG
        );
    }
}
