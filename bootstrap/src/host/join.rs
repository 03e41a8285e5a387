//! `tailroute join`: every machine after the first.

use std::path::Path;

use crate::host::kubeadm::{Discovery, JoinConfig, NodeRegistration};
use crate::host::network::{ClusterNetwork, Family};
use crate::host::plan::{Action, Plan};
use crate::host::{deferred, paths, plugin_step, write_step, Machine};
use crate::tailnet::TailnetIdentity;

/// What `tailroute join` was asked for (the tailnet part aside).
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Where and how to join.
    pub discovery: Discovery,
    /// HA: join as another control plane with this certificate key.
    pub certificate_key: Option<String>,
    /// The cluster's networks (from the join command `init` printed):
    /// which families the node-ip needs. `None`: IPv4 only.
    pub network: Option<ClusterNetwork>,
    /// The CRI endpoint; `None`: kubeadm detects it.
    pub cri_socket: Option<String>,
}

/// The steps after the tailnet step.
pub fn plan(
    machine: &dyn Machine,
    request: &JoinRequest,
    identity: Option<&TailnetIdentity>,
) -> Result<Plan, String> {
    let mut plan = Plan::default();
    if let Some(server) = joined_server(machine) {
        let wanted = &request.discovery.api_endpoint;
        if !server_matches(&server, wanted) {
            return Err(format!(
                "this machine already belongs to the cluster at {server} ({} exists), not to \
                 {wanted}; run `tailroute reset` first to leave it",
                paths::KUBELET_CONF
            ));
        }
        plan.push(
            format!("already joined the cluster at {server}; nothing to do"),
            Action::Nothing,
        );
        let (summary, action) = plugin_step(machine);
        plan.push(summary, action);
        return Ok(plan);
    }

    let families = request
        .network
        .as_ref()
        .map(ClusterNetwork::families)
        .unwrap_or_else(|| vec![Family::V4]);
    let (summary, action) = match identity {
        Some(identity) => {
            let config = JoinConfig {
                node: NodeRegistration {
                    identity,
                    families: &families,
                    cri_socket: request.cri_socket.as_deref(),
                },
                discovery: &request.discovery,
                certificate_key: request.certificate_key.as_deref(),
            };
            // The token is a secret: root-only, and redacted when shown.
            write_step(
                machine,
                paths::JOIN_CONFIG,
                config.render(false)?,
                0o600,
                config.render(true)?,
            )
        }
        None => deferred(format!("write {}", paths::JOIN_CONFIG)),
    };
    plan.push(summary, action);
    let argv: Vec<String> = ["kubeadm", "join", "--config", paths::JOIN_CONFIG]
        .map(str::to_owned)
        .into();
    plan.push(format!("run {}", argv.join(" ")), Action::Run(argv));
    let (summary, action) = plugin_step(machine);
    plan.push(summary, action);
    Ok(plan)
}

/// The API server the kubelet's kubeconfig names, when this machine is
/// already in a cluster.
fn joined_server(machine: &dyn Machine) -> Option<String> {
    let kubeconfig = machine.read(Path::new(paths::KUBELET_CONF))?;
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .map(|s| s.trim().trim_matches('"').to_owned())
        .or_else(|| Some("(unknown server)".into()))
}

/// Whether `https://host:port` names `endpoint` (`host:port`).
fn server_matches(server: &str, endpoint: &str) -> bool {
    let server = server.trim_start_matches("https://").trim_end_matches('/');
    server == endpoint || server == format!("{endpoint}:6443")
}
