//! The lab kubelet: registers one lab node with the API server, keeps it
//! Ready, and runs the pods bound to it as network namespaces with a small
//! built-in server, calling the node's CNI plugin exactly as containerd does.
//!
//! `lab up` starts one per node, as root, inside the node's network
//! namespace (and the host's mount namespace, so `/run/netns` is shared).
//! It authenticates as `system:node:<name>` and does only what the Node
//! authorizer and `NodeRestriction` allow a real kubelet.
//!
//! The concepts, one module each:
//!
//! - [`node`]: the Node object, its registration and status heartbeat;
//! - [`lease`]: the node's Lease in `kube-node-lease`;
//! - [`pods`]: the pod watch and the per-pod sync loop (statuses, Events,
//!   deletion);
//! - [`status`]: what goes into `pods/status`;
//! - [`sandbox`]: making and undoing a pod's namespace, network and server;
//! - [`record`]: the sandbox records, written before anything is made;
//! - [`cni`]: the CNI config dir and plugin calls;
//! - [`process`]: pod server processes, recognised by pid and start time.
//!
//! The node reports Ready even while the CNI conf dir is empty, unlike a
//! real kubelet, so that kube-scheduler places pods on it and they wait
//! there, Pending with `NetworkNotReady` (see [`node`]).
//!
//! Stopping the kubelet (SIGTERM, SIGINT) leaves the pods running, as a
//! kubelet restart does on a real node; the next kubelet finds them through
//! their records. The lab's own teardown removes pod servers and pod
//! namespaces.

pub mod cni;
pub mod lease;
pub mod node;
pub mod pods;
pub mod process;
pub mod record;
pub mod sandbox;
pub mod status;

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::Client;
use tokio::signal::unix::{signal, SignalKind};

use lease::{NodeLease, LEASE_DURATION_SECONDS};
use node::NodeRegistration;
use pods::PodSync;
use record::SandboxStore;
use sandbox::PodRuntime;

/// Command-line arguments of `tailroute lab kubelet` (started by `lab up`
/// inside a node's network namespace).
#[derive(Debug, Clone, clap::Args)]
pub struct KubeletArgs {
    /// The Node's name.
    #[arg(long)]
    pub node_name: String,
    /// Kubeconfig with this node's credentials.
    #[arg(long)]
    pub kubeconfig: PathBuf,
    /// The node's addresses (its tailnet IPs), reported as InternalIP.
    #[arg(long = "node-ip", required = true)]
    pub node_ips: Vec<IpAddr>,
    /// The node's `/etc/cni/net.d` equivalent.
    #[arg(long)]
    pub cni_conf_dir: PathBuf,
    /// The node's `/opt/cni/bin` equivalent.
    #[arg(long)]
    pub cni_bin_dir: PathBuf,
    /// Where the kubelet keeps its per-pod records.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Pod network namespaces are named `<prefix><hash>` in `/run/netns`.
    #[arg(long)]
    pub pod_netns_prefix: String,
    /// The TCP port the built-in pod server listens on.
    #[arg(long, default_value_t = 8080)]
    pub pod_port: u16,
    /// Seconds between node status heartbeats and Lease renewals (a
    /// kubelet's `--node-status-update-frequency`).
    #[arg(long, default_value_t = 10)]
    pub heartbeat_interval_secs: u64,
}

/// Arguments that cannot work, caught before anything is touched.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// Not a Node name the API server would accept.
    #[error("--node-name {0:?} is not a valid Node name: lowercase letters, digits, '-' and '.', at most 253")]
    NodeName(String),
    /// More than one address of a family.
    #[error("--node-ip: at most one IPv4 and one IPv6 address (got {0:?})")]
    NodeIps(Vec<IpAddr>),
    /// A prefix that would make odd or unsafe file names.
    #[error(
        "--pod-netns-prefix {0:?}: use letters, digits, '-', '_' and '.' only (and at least one)"
    )]
    NetnsPrefix(String),
    /// Port 0.
    #[error("--pod-port must not be 0")]
    PodPort,
    /// A heartbeat too rare for the Lease to stay valid.
    #[error("--heartbeat-interval-secs must be between 1 and {} (the Lease lasts {LEASE_DURATION_SECONDS} s)", LEASE_DURATION_SECONDS / 4)]
    Heartbeat,
}

impl KubeletArgs {
    /// Checks the arguments.
    pub fn validate(&self) -> Result<(), ArgsError> {
        if !is_dns_subdomain(&self.node_name) {
            return Err(ArgsError::NodeName(self.node_name.clone()));
        }
        let v4 = self.node_ips.iter().filter(|ip| ip.is_ipv4()).count();
        let v6 = self.node_ips.len() - v4;
        if v4 > 1 || v6 > 1 || self.node_ips.is_empty() {
            return Err(ArgsError::NodeIps(self.node_ips.clone()));
        }
        let prefix_ok = !self.pod_netns_prefix.is_empty()
            && self
                .pod_netns_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !prefix_ok {
            return Err(ArgsError::NetnsPrefix(self.pod_netns_prefix.clone()));
        }
        if self.pod_port == 0 {
            return Err(ArgsError::PodPort);
        }
        let max_heartbeat = u64::try_from(LEASE_DURATION_SECONDS / 4).unwrap_or(10);
        if !(1..=max_heartbeat).contains(&self.heartbeat_interval_secs) {
            return Err(ArgsError::Heartbeat);
        }
        Ok(())
    }
}

/// Runs the kubelet until SIGTERM.
pub fn run(args: KubeletArgs) -> Result<(), Box<dyn std::error::Error>> {
    init_logging();
    args.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(args));
    // Whatever is in flight (a watch, an API call) is abandoned; the pods
    // keep running.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The kubelet, until a signal says stop.
async fn serve(args: KubeletArgs) -> Result<(), Box<dyn std::error::Error>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        result = kubelet(args) => result,
        _ = terminate.recv() => {
            tracing::info!("SIGTERM: stopping; the pods keep running");
            Ok(())
        }
        _ = interrupt.recv() => {
            tracing::info!("SIGINT: stopping; the pods keep running");
            Ok(())
        }
    }
}

async fn kubelet(args: KubeletArgs) -> Result<(), Box<dyn std::error::Error>> {
    let client = connect(&args).await?;
    let store = SandboxStore::open(&args.state_dir)?;
    let mut records = Vec::new();
    for record in store.load_all()? {
        match record {
            Ok(record) => records.push(record),
            // Left alone: guessing what it describes could tear down the
            // wrong thing.
            Err(e) => tracing::error!("{e}"),
        }
    }

    let mut node = NodeRegistration::new(client.clone(), &args.node_name, &args.node_ips);
    let node_uid = register(&mut node).await;
    let interval = Duration::from_secs(args.heartbeat_interval_secs);
    tokio::spawn(heartbeat(node, node_uid, client.clone(), interval));

    let runtime = PodRuntime::new(
        args.cni_bin_dir.clone(),
        args.pod_netns_prefix.clone(),
        args.pod_port,
        PathBuf::from("/proc/self/exe"),
        store,
    );
    PodSync::new(
        client,
        &args.node_name,
        &args.node_ips,
        args.cni_conf_dir.clone(),
        runtime,
        records,
    )
    .run()
    .await;
    Err("the pod watch ended".into())
}

/// A client with the node's credentials.
async fn connect(args: &KubeletArgs) -> Result<Client, Box<dyn std::error::Error>> {
    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .map_err(|e| format!("reading --kubeconfig {}: {e}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("--kubeconfig {}: {e}", args.kubeconfig.display()))?;
    Ok(Client::try_from(config)?)
}

/// Registers the Node, retrying until the API server takes it (it may
/// still be starting); returns the Node's UID.
async fn register(node: &mut NodeRegistration) -> String {
    loop {
        match node.register().await {
            Ok(uid) => return uid,
            Err(e) => {
                tracing::warn!("registering the Node (retrying in 2s): {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Keeps the Node Ready and its Lease renewed. A Node deleted under the
/// kubelet is registered again (with a new UID, so a new Lease owner).
async fn heartbeat(mut node: NodeRegistration, node_uid: String, client: Client, every: Duration) {
    let name = node.name().to_owned();
    let mut lease = NodeLease::new(client.clone(), &name, &node_uid);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = lease.renew().await {
            tracing::warn!(node = %name, "renewing the node Lease: {e}");
        }
        match node.heartbeat().await {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {
                tracing::warn!(node = %name, "the Node was deleted; registering it again");
                let uid = register(&mut node).await;
                lease = NodeLease::new(client.clone(), &name, &uid);
            }
            Err(e) => tracing::warn!(node = %name, "node status heartbeat: {e}"),
        }
    }
}

/// Logs to stderr: human text, coloured on a terminal; `RUST_LOG` filters.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A subscriber set already (a test harness) is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A lowercase RFC 1123 subdomain, as Node names must be.
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
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: KubeletArgs,
    }

    fn parse(extra: &[&str]) -> Result<KubeletArgs, String> {
        let mut argv = vec![
            "kubelet",
            "--node-name",
            "n1",
            "--kubeconfig",
            "/k",
            "--cni-conf-dir",
            "/c",
            "--cni-bin-dir",
            "/b",
            "--state-dir",
            "/s",
            "--pod-netns-prefix",
            "trl-n1-",
        ];
        argv.extend_from_slice(extra);
        let args = Cli::try_parse_from(argv).map_err(|e| e.to_string())?.args;
        args.validate().map_err(|e| e.to_string())?;
        Ok(args)
    }

    #[test]
    fn arguments_are_checked_before_anything_is_touched() {
        let args = parse(&["--node-ip", "100.64.0.1", "--node-ip", "fd7a:115c:a1e0::1"]).unwrap();
        assert_eq!(args.node_ips.len(), 2);
        assert_eq!(args.pod_port, 8080);
        assert_eq!(args.heartbeat_interval_secs, 10);
        assert!(parse(&[]).is_err(), "--node-ip is required");
        let two_v4 = parse(&["--node-ip", "100.64.0.1", "--node-ip", "100.64.0.2"]);
        assert!(two_v4.unwrap_err().contains("at most one IPv4"));
        let slow = parse(&["--node-ip", "100.64.0.1", "--heartbeat-interval-secs", "30"]);
        assert!(slow.unwrap_err().contains("between 1 and 10"));
    }

    #[test]
    fn node_names_are_dns_subdomains() {
        assert!(is_dns_subdomain("lab-n1"));
        assert!(is_dns_subdomain("n1.lab"));
        assert!(!is_dns_subdomain("Lab"));
        assert!(!is_dns_subdomain("-n1"));
        assert!(!is_dns_subdomain("n1..lab"));
        assert!(!is_dns_subdomain(""));
    }
}
