//! The agent's configuration: a TOML file, flags and environment merged
//! into one validated [`AgentConfig`] at start.
//!
//! Precedence, highest first: a flag, its environment variable (clap reads
//! both), the file, the default. Secrets are never flags: the approval
//! credential is read from a file named in the configuration or from an
//! environment variable, and only its *source* is kept here (see
//! [`SecretSource`]), so printing the configuration cannot leak it.
//!
//! Validation refuses, with the field and the fix, anything the agent
//! cannot work with: no node name, a cluster CIDR overlapping the tailnet's
//! own address ranges, a half-configured credential, a typo in the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;
use serde::Deserialize;

pub use crate::control::SecretSource;
use crate::identity::policy::{IdentityPolicy, NamespaceAllowance};

/// Tailscale's address ranges for devices: a pod or service CIDR inside
/// (or around) one of them would collide with tailnet addresses.
pub const TAILNET_RANGES: [&str; 2] = [
    tailroute_bridge::config::TAILNET_V4,
    tailroute_bridge::config::TAILNET_V6,
];

/// [`TAILNET_RANGES`], parsed.
pub fn tailnet_ranges() -> Vec<IpNet> {
    TAILNET_RANGES
        .iter()
        .filter_map(|r| r.parse().ok())
        .collect()
}

/// Where the DaemonSet mounts the configuration file.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/tailroute/agent.toml";

/// The environment variable holding a Headscale or Tailscale API key when
/// no key file is configured.
pub const API_KEY_ENV: &str = "TAILROUTE_API_KEY";
/// The environment variable holding a Tailscale OAuth client secret when no
/// secret file is configured.
pub const OAUTH_SECRET_ENV: &str = "TAILROUTE_OAUTH_CLIENT_SECRET";

/// tailroute's node agent: keeps this node's pod route advertised, approved
/// and working on the tailnet.
///
/// Every flag can also be set in the TOML file (`--config`); flags win.
/// Secrets are read only from files or the environment.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "tailroute-agent", version, about)]
pub struct Args {
    /// The TOML configuration file. Without this flag the agent reads
    /// /etc/tailroute/agent.toml when it exists.
    #[arg(long, env = "TAILROUTE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's name in Kubernetes (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// A kubeconfig; without one the agent uses its in-cluster service account.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// tailscaled's LocalAPI socket.
    #[arg(long, env = "TAILROUTE_LOCALAPI_SOCKET", value_name = "PATH")]
    pub localapi_socket: Option<PathBuf>,
    /// Where the CNI runtime reads network configurations.
    #[arg(long, value_name = "DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// tailroute-bridge's data directory (written into the conflist).
    #[arg(long, value_name = "DIR")]
    pub bridge_data_dir: Option<PathBuf>,
    /// Where the agent remembers which routes it advertised.
    #[arg(long, env = "TAILROUTE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The cluster's pod network (kubeadm's --pod-network-cidr); repeat
    /// for dual-stack.
    #[arg(long = "cluster-pod-cidr", value_name = "CIDR")]
    pub cluster_pod_cidrs: Vec<IpNet>,
    /// The cluster's service network; repeat for dual-stack.
    #[arg(long = "service-cidr", value_name = "CIDR")]
    pub service_cidrs: Vec<IpNet>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "TAILROUTE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "TAILROUTE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Undo everything the agent set up on this node (conflist, its routes
    /// in AdvertiseRoutes, its nftables table) and exit.
    #[arg(long)]
    pub cleanup: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (a terminal, the lab).
    Text,
    /// One JSON object per line (the DaemonSet).
    Json,
}

/// The TOML file, as written. Every key is optional; unknown keys are
/// errors, so a typo is refused instead of silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_name: Option<String>,
    kubeconfig: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    log_format: Option<LogFormat>,
    resync_seconds: Option<u64>,
    #[serde(default)]
    tailscale: FileTailscale,
    #[serde(default)]
    cni: FileCni,
    #[serde(default)]
    cluster: FileCluster,
    #[serde(default)]
    datapath: FileDatapath,
    #[serde(default)]
    approval: FileApproval,
    #[serde(default)]
    identity: FileIdentity,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdentity {
    enabled: Option<bool>,
    cluster_name: Option<String>,
    tailscaled: Option<PathBuf>,
    tailscale: Option<PathBuf>,
    login_server: Option<String>,
    ephemeral: Option<bool>,
    key_ttl_seconds: Option<u64>,
    go_memory_limit: Option<String>,
    #[serde(default)]
    namespaces: std::collections::BTreeMap<String, NamespaceAllowance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTailscale {
    socket: Option<PathBuf>,
    interface: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCni {
    conf_dir: Option<PathBuf>,
    conflist_name: Option<String>,
    bridge: Option<String>,
    data_dir: Option<PathBuf>,
    bin_dir: Option<PathBuf>,
    portmap: Option<bool>,
    mtu: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    pod_cidrs: Option<Vec<IpNet>>,
    service_cidrs: Option<Vec<IpNet>>,
    node_tag: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatapath {
    manage: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApproval {
    control: Option<ControlKind>,
    url: Option<String>,
    api_key_file: Option<PathBuf>,
    oauth_client_id: Option<String>,
    oauth_client_secret_file: Option<PathBuf>,
    tailnet: Option<String>,
}

/// Which control plane's admin API approves routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlKind {
    /// No credential: the agent only detects approval and reports.
    None,
    /// Headscale's REST API with an API key.
    Headscale,
    /// Tailscale's API v2 with an OAuth client or an API key.
    Tailscale,
}

/// The credential the agent may use to approve routes and remove devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalConfig {
    /// None configured: detect and report only.
    DetectOnly,
    /// Headscale's API.
    Headscale {
        /// Headscale's base URL (`https://headscale.example.com`).
        url: String,
        /// The API key.
        api_key: SecretSource,
    },
    /// Tailscale's API v2 with an OAuth client (preferred: scoped, does not expire).
    TailscaleOAuth {
        /// The OAuth client id (not secret).
        client_id: String,
        /// The OAuth client secret.
        client_secret: SecretSource,
        /// The tailnet (`-` for the credential's own).
        tailnet: String,
        /// The API's base URL.
        base_url: String,
    },
    /// Tailscale's API v2 with an API key (expires; an OAuth client is better).
    TailscaleApiKey {
        /// The API key.
        api_key: SecretSource,
        /// The tailnet (`-` for the credential's own).
        tailnet: String,
        /// The API's base URL.
        base_url: String,
    },
}

/// Per-pod tailnet identities ([`crate::identity`]): who may have one, and
/// how the agent runs them.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// Which namespaces may opt in, with which tags; the device names'
    /// cluster prefix.
    pub policy: IdentityPolicy,
    /// The tailscaled run inside each identity pod's network namespace.
    pub tailscaled: PathBuf,
    /// The tailscale CLI that joins it.
    pub tailscale: PathBuf,
    /// The control server the pods join (`--login-server`); `None`:
    /// Tailscale's own.
    pub login_server: Option<String>,
    /// Whether pod devices are ephemeral (removed by the control plane once
    /// offline for a while: a lost node's identities disappear).
    pub ephemeral: bool,
    /// How long a minted per-pod key may be used to join.
    pub key_ttl: Duration,
    /// `GOMEMLIMIT` for each identity's tailscaled (`64MiB` by default;
    /// `off` leaves it unset). Without it, wireguard-go's packet buffers
    /// stay allocated after a burst of traffic (measured: 170-200 MiB).
    pub go_memory_limit: Option<String>,
    /// One directory per identity: tailscaled's state, socket and log.
    pub state_dir: PathBuf,
}

/// Everything the agent runs with, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// This node's name in Kubernetes.
    pub node_name: String,
    /// A kubeconfig, or `None` for the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// tailscaled's LocalAPI socket.
    pub localapi_socket: PathBuf,
    /// The tailnet interface (`tailscale0`).
    pub tailnet_interface: String,
    /// Where the conflist goes.
    pub cni_conf_dir: PathBuf,
    /// The conflist's file name (sorted first among the runtime's configs).
    pub conflist_name: String,
    /// The bridge tailroute-bridge creates.
    pub bridge: String,
    /// tailroute-bridge's data directory.
    pub bridge_data_dir: PathBuf,
    /// An MTU for pods instead of tailscale0's (rarely right; see docs).
    pub mtu_override: Option<u32>,
    /// Where the runtime looks for CNI plugins.
    pub cni_bin_dir: PathBuf,
    /// Whether to chain `portmap` (hostPort); `None`: when it is installed.
    pub portmap: Option<bool>,
    /// The cluster's pod network(s).
    pub cluster_pod_cidrs: Vec<IpNet>,
    /// The cluster's service network(s).
    pub service_cidrs: Vec<IpNet>,
    /// The tag cluster nodes carry on the tailnet (for the policy snippet).
    pub node_tag: String,
    /// Whether the agent owns forwarding sysctls and its nftables table.
    pub manage_datapath: bool,
    /// How routes get approved.
    pub approval: ApprovalConfig,
    /// Per-pod identities, when enabled.
    pub identity: Option<IdentityConfig>,
    /// Where the agent keeps its state (the routes it added).
    pub state_dir: PathBuf,
    /// Address of the health and metrics server.
    pub listen: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// How often the agent re-checks everything without being woken.
    pub resync: Duration,
    /// Undo and exit.
    pub cleanup: bool,
}

/// A configuration the agent refuses to run with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a bad value.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message: line, column and what was expected.
        message: String,
    },
    /// A value is missing or wrong; the message names the field and the fix.
    #[error("{0}")]
    Invalid(String),
}

impl AgentConfig {
    /// The default resync period.
    pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);
    /// The default address of the health and metrics server.
    pub const DEFAULT_LISTEN: &'static str = "0.0.0.0:9740";
    /// The conflist's default name: `10-` sorts it before most others.
    pub const DEFAULT_CONFLIST: &'static str = "10-tailroute.conflist";

    /// Reads the file (the one named in `args`, else the default path when
    /// it exists), merges `args` over it, and validates the result.
    pub fn load(args: &Args) -> Result<AgentConfig, ConfigError> {
        let path = match &args.config {
            Some(path) => Some(path.clone()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let text = match &path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.unwrap_or_else(|| PathBuf::from("(no configuration file)"));
        AgentConfig::from_parts(&text, &origin, args)
    }

    /// Merges `args` over the TOML `text` (read from `origin`) and validates.
    pub fn from_parts(text: &str, origin: &Path, args: &Args) -> Result<AgentConfig, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |msg: String| ConfigError::Invalid(msg);

        let node_name = args
            .node_name
            .clone()
            .or(file.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                invalid(
                    "no node name: pass --node-name or set NODE_NAME (the DaemonSet sets it \
                     from spec.nodeName)"
                        .to_owned(),
                )
            })?;
        if !is_dns_subdomain(&node_name) {
            return Err(invalid(format!(
                "node name {node_name:?} is not a valid Kubernetes node name \
                 (lowercase letters, digits, '-' and '.', at most 253 characters)"
            )));
        }

        let cluster_pod_cidrs =
            match nonempty_or(args.cluster_pod_cidrs.clone(), file.cluster.pod_cidrs) {
                Some(cidrs) => cidrs,
                // Cleanup works from the route ledger (`tailroute reset` on a
                // host without the DaemonSet's ConfigMap): no CIDRs needed.
                None if args.cleanup => Vec::new(),
                None => {
                    return Err(invalid(
                        "no cluster pod CIDR: set cluster.pod_cidrs in the file or pass \
                         --cluster-pod-cidr (kubeadm's --pod-network-cidr, e.g. 10.244.0.0/16)"
                            .to_owned(),
                    ))
                }
            };
        let service_cidrs = nonempty_or(args.service_cidrs.clone(), file.cluster.service_cidrs)
            .unwrap_or_else(|| vec![net("10.96.0.0/12")]);
        check_cidrs("pod", &cluster_pod_cidrs)?;
        check_cidrs("service", &service_cidrs)?;
        for pod in &cluster_pod_cidrs {
            if let Some(svc) = service_cidrs.iter().find(|s| overlaps(pod, s)) {
                return Err(invalid(format!(
                    "the pod CIDR {pod} overlaps the service CIDR {svc}: they must be disjoint \
                     (kubeadm's defaults are 10.244.0.0/16 and 10.96.0.0/12)"
                )));
            }
        }

        let mtu_override = file.cni.mtu;
        if let Some(mtu) = mtu_override {
            if !(576..=65535).contains(&mtu) {
                return Err(invalid(format!(
                    "cni.mtu = {mtu} is out of range 576..65535; leave it unset to use \
                     the tailnet interface's MTU"
                )));
            }
        }
        let node_tag = file
            .cluster
            .node_tag
            .unwrap_or_else(|| "tag:k8s-node".to_owned());
        if !node_tag.starts_with("tag:") || node_tag.len() <= 4 {
            return Err(invalid(format!(
                "cluster.node_tag = {node_tag:?}: a tag looks like \"tag:k8s-node\""
            )));
        }
        let conflist_name = file
            .cni
            .conflist_name
            .unwrap_or_else(|| AgentConfig::DEFAULT_CONFLIST.to_owned());
        if !conflist_name.ends_with(".conflist") || conflist_name.contains('/') {
            return Err(invalid(format!(
                "cni.conflist_name = {conflist_name:?}: must be a file name ending in \
                 .conflist (the runtime ignores other names)"
            )));
        }
        let resync = Duration::from_secs(file.resync_seconds.unwrap_or(30));
        if resync.is_zero() {
            return Err(invalid(
                "resync_seconds = 0: set at least 1 (30 is the default)".to_owned(),
            ));
        }

        let approval = approval_config(file.approval)?;
        let state_dir = args
            .state_dir
            .clone()
            .or(file.state_dir)
            .unwrap_or_else(|| "/var/lib/tailroute".into());
        let identity = identity_config(file.identity, &approval, &node_tag, &state_dir)?;

        Ok(AgentConfig {
            node_name,
            kubeconfig: args.kubeconfig.clone().or(file.kubeconfig),
            localapi_socket: args
                .localapi_socket
                .clone()
                .or(file.tailscale.socket)
                .unwrap_or_else(|| crate::localapi::LocalApiClient::DEFAULT_SOCKET.into()),
            tailnet_interface: file
                .tailscale
                .interface
                .unwrap_or_else(|| "tailscale0".to_owned()),
            cni_conf_dir: args
                .cni_conf_dir
                .clone()
                .or(file.cni.conf_dir)
                .unwrap_or_else(|| "/etc/cni/net.d".into()),
            conflist_name,
            bridge: file
                .cni
                .bridge
                .unwrap_or_else(|| tailroute_bridge::config::DEFAULT_BRIDGE.to_owned()),
            bridge_data_dir: args
                .bridge_data_dir
                .clone()
                .or(file.cni.data_dir)
                .unwrap_or_else(|| tailroute_bridge::config::DEFAULT_DATA_DIR.into()),
            mtu_override,
            cni_bin_dir: file.cni.bin_dir.unwrap_or_else(|| "/opt/cni/bin".into()),
            portmap: file.cni.portmap,
            cluster_pod_cidrs,
            service_cidrs,
            node_tag,
            manage_datapath: file.datapath.manage.unwrap_or(true),
            approval,
            identity,
            state_dir,
            listen: args.listen.or(file.listen).unwrap_or_else(|| {
                AgentConfig::DEFAULT_LISTEN
                    .parse()
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 9740)))
            }),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            resync,
            cleanup: args.cleanup,
        })
    }

    /// The conflist's full path.
    pub fn conflist_path(&self) -> PathBuf {
        self.cni_conf_dir.join(&self.conflist_name)
    }

    /// Whether the conflist chains `portmap`: as configured, else when the
    /// plugin is installed (chaining a missing plugin would fail every pod).
    pub fn chain_portmap(&self) -> bool {
        self.portmap
            .unwrap_or_else(|| self.cni_bin_dir.join("portmap").exists())
    }
}

fn approval_config(file: FileApproval) -> Result<ApprovalConfig, ConfigError> {
    let invalid = |msg: String| Err(ConfigError::Invalid(msg));
    let api_key = |file: Option<PathBuf>| match file {
        Some(path) => SecretSource::File(path),
        None => SecretSource::Env(API_KEY_ENV.to_owned()),
    };
    let tailnet = file.tailnet.unwrap_or_else(|| "-".to_owned());
    match file.control.unwrap_or(ControlKind::None) {
        ControlKind::None => {
            if file.url.is_some() || file.api_key_file.is_some() || file.oauth_client_id.is_some() {
                return invalid(
                    "approval: a URL or credential is set but approval.control is not: set \
                     approval.control = \"headscale\" or \"tailscale\""
                        .to_owned(),
                );
            }
            Ok(ApprovalConfig::DetectOnly)
        }
        ControlKind::Headscale => {
            let Some(url) = file.url else {
                return invalid(
                    "approval.control = \"headscale\" needs approval.url, Headscale's address \
                     (the same as tailscale up --login-server)"
                        .to_owned(),
                );
            };
            check_url("approval.url", &url)?;
            if file.oauth_client_id.is_some() {
                return invalid(
                    "approval.oauth_client_id is for Tailscale; Headscale takes an API key \
                     (approval.api_key_file or TAILROUTE_API_KEY)"
                        .to_owned(),
                );
            }
            Ok(ApprovalConfig::Headscale {
                url,
                api_key: api_key(file.api_key_file),
            })
        }
        ControlKind::Tailscale => {
            let base_url = file
                .url
                .unwrap_or_else(|| "https://api.tailscale.com".to_owned());
            check_url("approval.url", &base_url)?;
            match (
                file.oauth_client_id,
                file.oauth_client_secret_file,
                file.api_key_file,
            ) {
                (Some(_), _, Some(_)) => invalid(
                    "approval: set either an OAuth client (oauth_client_id) or an API key \
                     (api_key_file), not both"
                        .to_owned(),
                ),
                (Some(client_id), secret, None) => Ok(ApprovalConfig::TailscaleOAuth {
                    client_id,
                    client_secret: match secret {
                        Some(path) => SecretSource::File(path),
                        None => SecretSource::Env(OAUTH_SECRET_ENV.to_owned()),
                    },
                    tailnet,
                    base_url,
                }),
                (None, Some(_), _) => invalid(
                    "approval.oauth_client_secret_file is set without approval.oauth_client_id"
                        .to_owned(),
                ),
                (None, None, key) => Ok(ApprovalConfig::TailscaleApiKey {
                    api_key: api_key(key),
                    tailnet,
                    base_url,
                }),
            }
        }
    }
}

fn identity_config(
    file: FileIdentity,
    approval: &ApprovalConfig,
    node_tag: &str,
    state_dir: &Path,
) -> Result<Option<IdentityConfig>, ConfigError> {
    let invalid = |msg: String| Err(ConfigError::Invalid(msg));
    if !file.enabled.unwrap_or(false) {
        return Ok(None);
    }
    let login_server = match (approval, file.login_server) {
        (ApprovalConfig::DetectOnly, _) => {
            return invalid(
                "identity.enabled needs a control-plane credential to mint a key per pod: set \
                 approval.control and its credential (see docs/per-pod-identity.md)"
                    .to_owned(),
            )
        }
        (_, Some(url)) => {
            check_url("identity.login_server", &url)?;
            Some(url)
        }
        (ApprovalConfig::Headscale { url, .. }, None) => Some(url.clone()),
        (_, None) => None,
    };
    let cluster_name = file.cluster_name.unwrap_or_default();
    if cluster_name.is_empty()
        || cluster_name.len() > 20
        || !cluster_name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid(format!(
            "identity.cluster_name = {cluster_name:?}: give a short name for this cluster \
             (1-20 of a-z, 0-9, '-'); pod devices are named <cluster>-<namespace>-<pod>"
        ));
    }
    if file.namespaces.is_empty() {
        return invalid(
            "identity.enabled with no [identity.namespaces.<name>]: no pod could ever have an \
             identity; allow a namespace and its tags"
                .to_owned(),
        );
    }
    let key_ttl = Duration::from_secs(file.key_ttl_seconds.unwrap_or(600));
    if !(60..=86_400).contains(&key_ttl.as_secs()) {
        return invalid(format!(
            "identity.key_ttl_seconds = {}: keys must live 60 s to a day (600 is the default); \
             they are single-use and only needed while a pod joins",
            key_ttl.as_secs()
        ));
    }
    let go_memory_limit = match file.go_memory_limit.as_deref().unwrap_or("64MiB") {
        "off" => None,
        limit if is_go_memory_limit(limit) => Some(limit.to_owned()),
        other => {
            return invalid(format!(
                "identity.go_memory_limit = {other:?}: give a size such as \"64MiB\" (units B, \
                 KiB, MiB, GiB) or \"off\"; below about 50MiB tailscaled's garbage collector runs \
                 constantly"
            ))
        }
    };
    let policy = IdentityPolicy {
        cluster_name,
        node_tag: node_tag.to_owned(),
        namespaces: file.namespaces,
    };
    policy.check().map_err(ConfigError::Invalid)?;
    Ok(Some(IdentityConfig {
        policy,
        tailscaled: file.tailscaled.unwrap_or_else(|| "tailscaled".into()),
        tailscale: file.tailscale.unwrap_or_else(|| "tailscale".into()),
        login_server,
        ephemeral: file.ephemeral.unwrap_or(true),
        key_ttl,
        go_memory_limit,
        state_dir: state_dir.join("identities"),
    }))
}

/// A Go `GOMEMLIMIT` value: digits and an optional unit.
fn is_go_memory_limit(text: &str) -> bool {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0 && ["", "B", "KiB", "MiB", "GiB", "TiB"].contains(&&text[digits..])
}

fn check_url(field: &str, url: &str) -> Result<(), ConfigError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(ConfigError::Invalid(format!(
            "{field} = {url:?} is not an http:// or https:// URL"
        ))),
    }
}

fn check_cidrs(what: &str, cidrs: &[IpNet]) -> Result<(), ConfigError> {
    for cidr in cidrs {
        if cidr.network() != cidr.addr() {
            return Err(ConfigError::Invalid(format!(
                "the {what} CIDR {cidr} has host bits set: did you mean {}?",
                cidr.trunc()
            )));
        }
        for tailnet in tailnet_ranges() {
            if overlaps(cidr, &tailnet) {
                return Err(ConfigError::Invalid(format!(
                    "the {what} CIDR {cidr} overlaps the tailnet's address range {tailnet}: \
                     tailnet devices use those addresses, so routing would break; pick a \
                     range outside 100.64.0.0/10 and fd7a:115c:a1e0::/48 (kubeadm's \
                     default pod CIDR 10.244.0.0/16 is fine)"
                )));
            }
        }
    }
    Ok(())
}

/// Whether two prefixes share any address (one contains the other).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn nonempty_or(flags: Vec<IpNet>, file: Option<Vec<IpNet>>) -> Option<Vec<IpNet>> {
    if flags.is_empty() {
        file.filter(|v| !v.is_empty())
    } else {
        Some(flags)
    }
}

fn net(s: &str) -> IpNet {
    // Only ever called on the constants above.
    s.parse().unwrap_or_else(|_| IpNet::default())
}

/// RFC 1123 subdomain, as Kubernetes requires of node names.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(node: &str) -> Args {
        Args {
            node_name: Some(node.to_owned()),
            ..Args::default()
        }
    }

    fn load(text: &str, args: &Args) -> Result<AgentConfig, ConfigError> {
        AgentConfig::from_parts(text, Path::new("agent.toml"), args)
    }

    const MINIMAL: &str = "[cluster]\npod_cidrs = [\"10.244.0.0/16\"]\n";

    #[test]
    fn defaults_fill_everything_but_the_node_and_the_pod_network() {
        let config = load(MINIMAL, &args("n1")).expect("valid");
        assert_eq!(config.node_name, "n1");
        assert_eq!(
            config.localapi_socket,
            Path::new("/var/run/tailscale/tailscaled.sock")
        );
        assert_eq!(
            config.conflist_path(),
            Path::new("/etc/cni/net.d/10-tailroute.conflist")
        );
        assert_eq!(config.service_cidrs, vec![net("10.96.0.0/12")]);
        assert_eq!(config.approval, ApprovalConfig::DetectOnly);
        assert_eq!(config.listen.port(), 9740);
        assert_eq!(config.resync, Duration::from_secs(30));
        assert!(config.manage_datapath);
    }

    #[test]
    fn flags_win_over_the_file() {
        let text = "node_name = \"from-file\"\nstate_dir = \"/file\"\n[cluster]\n\
                    pod_cidrs = [\"10.244.0.0/16\"]\n";
        let mut a = args("from-flag");
        a.state_dir = Some("/flag".into());
        a.cluster_pod_cidrs = vec![net("10.32.0.0/16"), net("fd00:10:32::/56")];
        let config = load(text, &a).expect("valid");
        assert_eq!(config.node_name, "from-flag");
        assert_eq!(config.state_dir, Path::new("/flag"));
        assert_eq!(config.cluster_pod_cidrs.len(), 2);
        let config = load(text, &Args::default()).expect("valid");
        assert_eq!(config.node_name, "from-file");
    }

    #[test]
    fn a_typo_in_the_file_is_named() {
        let err =
            load("[cluster]\npod_cidr = [\"10.244.0.0/16\"]\n", &args("n1")).expect_err("typo");
        let msg = err.to_string();
        assert!(msg.contains("agent.toml"), "{msg}");
        assert!(msg.contains("pod_cidr"), "{msg}");
        assert!(msg.contains("pod_cidrs"), "expected the valid keys: {msg}");
    }

    #[test]
    fn cidrs_overlapping_the_tailnet_are_refused() {
        for (cidr, range) in [
            ("100.64.0.0/16", "100.64.0.0/10"),
            ("100.0.0.0/8", "100.64.0.0/10"),
            ("fd7a:115c:a1e0:ab::/64", "fd7a:115c:a1e0::/48"),
        ] {
            let text = format!("[cluster]\npod_cidrs = [\"{cidr}\"]\n");
            let msg = load(&text, &args("n1")).expect_err(cidr).to_string();
            assert!(msg.contains(cidr) && msg.contains(range), "{msg}");
            let text = format!("{MINIMAL}service_cidrs = [\"{cidr}\"]\n");
            let msg = load(&text, &args("n1")).expect_err(cidr).to_string();
            assert!(msg.contains("service CIDR"), "{msg}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_fix() {
        let cases = [
            ("", "no node name", Args::default()),
            ("", "no cluster pod CIDR", args("n1")),
            (MINIMAL, "not a valid Kubernetes node name", args("Node_1")),
            ("[cluster]\npod_cidrs = [\"10.244.1.0/16\"]\n", "did you mean 10.244.0.0/16", args("n1")),
            (
                "[cluster]\npod_cidrs = [\"10.96.0.0/16\"]\n",
                "overlaps the service CIDR 10.96.0.0/12",
                args("n1"),
            ),
            (&format!("{MINIMAL}[cni]\nmtu = 100\n"), "cni.mtu = 100", args("n1")),
            (
                &format!("{MINIMAL}[approval]\ncontrol = \"headscale\"\n"),
                "needs approval.url",
                args("n1"),
            ),
            (
                &format!("{MINIMAL}[approval]\nurl = \"http://h\"\n"),
                "approval.control is not",
                args("n1"),
            ),
            (
                &format!("{MINIMAL}[approval]\ncontrol = \"headscale\"\nurl = \"h:8080\"\n"),
                "not an http:// or https:// URL",
                args("n1"),
            ),
            (
                &format!("{MINIMAL}[approval]\ncontrol = \"tailscale\"\noauth_client_id = \"k\"\napi_key_file = \"/k\"\n"),
                "not both",
                args("n1"),
            ),
        ];
        for (text, expected, a) in cases {
            let msg = load(text, &a).expect_err(expected).to_string();
            assert!(msg.contains(expected), "{expected:?} not in {msg:?}");
        }
    }

    #[test]
    fn credentials_are_sources_never_values() {
        let text = format!(
            "{MINIMAL}[approval]\ncontrol = \"headscale\"\nurl = \"http://198.18.0.2:8080\"\n\
             api_key_file = \"/etc/tailroute/secrets/api-key\"\n"
        );
        let config = load(&text, &args("n1")).expect("valid");
        assert_eq!(
            config.approval,
            ApprovalConfig::Headscale {
                url: "http://198.18.0.2:8080".to_owned(),
                api_key: SecretSource::File("/etc/tailroute/secrets/api-key".into()),
            }
        );
        let text =
            format!("{MINIMAL}[approval]\ncontrol = \"tailscale\"\noauth_client_id = \"kXYZ\"\n");
        match load(&text, &args("n1")).expect("valid").approval {
            ApprovalConfig::TailscaleOAuth {
                client_secret,
                tailnet,
                base_url,
                ..
            } => {
                assert_eq!(
                    client_secret,
                    SecretSource::Env(OAUTH_SECRET_ENV.to_owned())
                );
                assert_eq!(tailnet, "-");
                assert_eq!(base_url, "https://api.tailscale.com");
            }
            other => panic!("{other:?}"),
        }
    }

    const HEADSCALE: &str =
        "[approval]\ncontrol = \"headscale\"\nurl = \"http://198.18.0.2:8080\"\n";

    #[test]
    fn identity_is_off_by_default_and_read_with_its_policy() {
        assert_eq!(load(MINIMAL, &args("n1")).expect("valid").identity, None);
        let text = format!(
            "{MINIMAL}{HEADSCALE}[identity]\nenabled = true\ncluster_name = \"lab\"\n\
             [identity.namespaces.default]\ntags = [\"tag:k8s-pod\", \"tag:web\"]\n\
             default_tags = [\"tag:k8s-pod\"]\n"
        );
        let identity = load(&text, &args("n1"))
            .expect("valid")
            .identity
            .expect("enabled");
        assert_eq!(identity.policy.cluster_name, "lab");
        assert_eq!(identity.policy.node_tag, "tag:k8s-node");
        assert_eq!(identity.policy.namespaces["default"].tags.len(), 2);
        // Pods join the Headscale the agent approves routes on.
        assert_eq!(
            identity.login_server.as_deref(),
            Some("http://198.18.0.2:8080")
        );
        assert!(identity.ephemeral);
        assert_eq!(identity.key_ttl, Duration::from_secs(600));
        assert_eq!(identity.go_memory_limit.as_deref(), Some("64MiB"));
        assert_eq!(
            identity.state_dir,
            Path::new("/var/lib/tailroute/identities")
        );
    }

    #[test]
    fn identity_refuses_what_cannot_work_and_says_what_to_do() {
        let ns = "[identity.namespaces.default]\ntags = [\"tag:k8s-pod\"]\ndefault_tags = [\"tag:k8s-pod\"]\n";
        let cases = [
            // No credential: no way to mint keys.
            (format!("{MINIMAL}[identity]\nenabled = true\ncluster_name = \"lab\"\n{ns}"), "credential"),
            (format!("{MINIMAL}{HEADSCALE}[identity]\nenabled = true\n{ns}"), "cluster_name"),
            (format!("{MINIMAL}{HEADSCALE}[identity]\nenabled = true\ncluster_name = \"Lab_1\"\n{ns}"), "cluster_name"),
            (format!("{MINIMAL}{HEADSCALE}[identity]\nenabled = true\ncluster_name = \"lab\"\n"), "allow a namespace"),
            (
                format!(
                    "{MINIMAL}{HEADSCALE}[identity]\nenabled = true\ncluster_name = \"lab\"\n\
                     [identity.namespaces.default]\ntags = [\"tag:k8s-node\"]\ndefault_tags = [\"tag:k8s-node\"]\n"
                ),
                "node tag",
            ),
            (
                format!("{MINIMAL}{HEADSCALE}[identity]\nenabled = true\ncluster_name = \"lab\"\nkey_ttl_seconds = 5\n{ns}"),
                "60 s to a day",
            ),
            (
                format!("{MINIMAL}{HEADSCALE}[identity]\nenabled = true\ncluster_name = \"lab\"\ngo_memory_limit = \"64MB\"\n{ns}"),
                "units B, KiB",
            ),
            (
                format!("{MINIMAL}{HEADSCALE}[identity]\nenabled = true\ncluster_name = \"lab\"\nephemerl = true\n{ns}"),
                "unknown field `ephemerl`",
            ),
        ];
        for (text, expected) in cases {
            let err = load(&text, &args("n1")).expect_err(&text).to_string();
            assert!(err.contains(expected), "{text}\n=> {err}");
        }
    }
}
