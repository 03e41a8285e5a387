//! `tailroute status`: one screen for an operator. Every Node (podCIDR,
//! tailnet address, whether its route is advertised and approved, its
//! MTU, its agent's verdict), whether this node reaches each of them, and
//! every problem with its remedy.
//!
//! Sources: the Nodes from the API server; each node's agent report
//! (`/status`, port 9740), asked over the tailnet at the node's tailnet
//! address (this machine is a node, or a tailnet device), else through the
//! API server's node proxy; and this node's own agent at `--agent`, which
//! also says whether each peer is reachable from here. A source that
//! cannot be read becomes a problem line, never a silent gap.

use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::{Api, Client};
use serde::Serialize;
use tailroute_agent::peers::{self, PeerReport};
use tailroute_agent::reconcile::NodeReport;

/// The agent's port (the DaemonSet's hostPort, the default `listen`).
pub const AGENT_PORT: u16 = 9740;

/// Everything `tailroute status` shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// The node this runs on, when it is a cluster node.
    pub this_node: Option<String>,
    /// Every node.
    pub nodes: Vec<NodeStatus>,
    /// What is wrong, each with what to do.
    pub problems: Vec<String>,
}

/// One node's row.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The Node's name.
    pub name: String,
    /// Its podCIDR(s).
    pub pod_cidrs: Vec<String>,
    /// Its tailnet addresses.
    pub tailnet_ips: Vec<String>,
    /// Its podCIDRs all advertised (from its agent; `None`: unknown).
    pub advertised: Option<bool>,
    /// Its podCIDRs all approved (from its agent; `None`: unknown).
    pub approved: Option<bool>,
    /// Whether this node reaches its pods (`None`: this node, or unknown).
    pub reachable_from_here: Option<bool>,
    /// The pod MTU its agent wrote.
    pub mtu: Option<u32>,
    /// The `NetworkUnavailable` reason (`TailrouteIsUp` when all is well).
    pub reason: String,
    /// The condition's message.
    pub message: String,
    /// Its agent's full report, when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<NodeReport>,
}

/// Where `tailroute status` looks.
#[derive(Clone)]
pub struct StatusSources {
    /// The API server.
    pub client: Client,
    /// This node's name (its agent is asked directly).
    pub this_node: Option<String>,
    /// This node's agent.
    pub local_agent: SocketAddr,
}

/// Gathers the status.
pub async fn gather(sources: &StatusSources) -> Result<ClusterStatus, String> {
    let nodes: Api<Node> = Api::all(sources.client.clone());
    let list = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("cannot list Nodes: {e}; is the kubeconfig right (--kubeconfig)?"))?;
    let mut problems = Vec::new();

    let local = match &sources.this_node {
        Some(_) => match read_agent(sources.local_agent).await {
            Ok(report) => Some(report),
            Err(e) => {
                problems.push(format!(
                    "this node's agent at {}: {e}; is the tailroute-agent pod running here \
                     (kubectl -n tailroute-system get pods -o wide)?",
                    sources.local_agent
                ));
                None
            }
        },
        None => None,
    };

    let reports = futures::future::join_all(list.items.iter().map(|node| {
        let client = sources.client.clone();
        let name = node.metadata.name.clone().unwrap_or_default();
        let local = local.clone().filter(|r| r.node == name);
        let addresses = peers::tailnet_addresses(node);
        async move {
            if let Some(report) = local {
                return Ok(report);
            }
            let mut failures = Vec::new();
            for ip in addresses {
                match read_agent(SocketAddr::new(ip, AGENT_PORT)).await {
                    Ok(report) => return Ok(report),
                    Err(e) => failures.push(format!("{ip}: {e}")),
                }
            }
            match read_agent_through_proxy(&client, &name).await {
                Ok(report) => Ok(report),
                Err(e) => {
                    failures.push(format!("through the API server: {e}"));
                    Err(failures.join("; "))
                }
            }
        }
    }))
    .await;

    let mut rows = Vec::new();
    for (node, report) in list.items.iter().zip(reports) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let (reason, message) = network_condition(node);
        let peer = local
            .as_ref()
            .and_then(|l| l.peers.iter().find(|p| p.node == name));
        let report = match report {
            Ok(report) => Some(report),
            Err(e) => {
                problems.push(format!(
                    "{name}: its agent's report could not be read ({e}); `kubectl -n \
                     tailroute-system get pods -o wide --field-selector spec.nodeName={name}` \
                     shows whether its agent runs"
                ));
                None
            }
        };
        if reason != "TailrouteIsUp" {
            problems.push(format!("{name}: {reason}: {message}"));
        }
        if let Some(peer) = peer {
            if let Some(remedy) = peers::remedy(peer, "tailscale0") {
                problems.push(format!(
                    "{} -> {name}: {}",
                    sources.this_node.as_deref().unwrap_or("here"),
                    remedy
                ));
            }
        }
        rows.push(row(node, name, reason, message, report, peer));
    }
    if let Some(local) = &local {
        problems.extend(
            local
                .problems
                .iter()
                .map(|p| format!("{}: {p}", local.node)),
        );
    }
    problems.dedup();
    Ok(ClusterStatus {
        this_node: sources.this_node.clone(),
        nodes: rows,
        problems,
    })
}

fn row(
    node: &Node,
    name: String,
    reason: String,
    message: String,
    report: Option<NodeReport>,
    peer: Option<&PeerReport>,
) -> NodeStatus {
    let covered = |list: &[ipnet::IpNet], r: &NodeReport| {
        !r.pod_cidrs.is_empty() && r.pod_cidrs.iter().all(|c| list.contains(c))
    };
    NodeStatus {
        pod_cidrs: peers::pod_cidrs(node)
            .iter()
            .map(ToString::to_string)
            .collect(),
        tailnet_ips: peers::tailnet_addresses(node)
            .iter()
            .map(ToString::to_string)
            .collect(),
        advertised: report.as_ref().map(|r| covered(&r.advertised, r)),
        approved: report.as_ref().map(|r| covered(&r.approved, r)),
        reachable_from_here: peer.map(PeerReport::reachable),
        mtu: report.as_ref().and_then(|r| r.mtu),
        name,
        reason,
        message,
        agent: report,
    }
}

/// The Node's `NetworkUnavailable` reason and message.
fn network_condition(node: &Node) -> (String, String) {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "NetworkUnavailable"))
        .map(|c| {
            (
                c.reason.clone().unwrap_or_default(),
                c.message.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_else(|| {
            (
                "NoAgentReport".to_owned(),
                "no NetworkUnavailable condition: tailroute-agent has not run on this node; \
                 check the DaemonSet (kubectl -n tailroute-system get ds tailroute-agent)"
                    .to_owned(),
            )
        })
}

async fn read_agent(addr: SocketAddr) -> Result<NodeReport, String> {
    let (code, body) = tokio::task::spawn_blocking(move || crate::http::get(addr, "/status"))
        .await
        .map_err(|e| e.to_string())??;
    if code != 200 {
        return Err(format!("/status answered {code}: {}", body.trim()));
    }
    serde_json::from_str(&body).map_err(|e| format!("unreadable /status: {e}"))
}

async fn read_agent_through_proxy(client: &Client, node: &str) -> Result<NodeReport, String> {
    let request = http::Request::get(format!("/api/v1/nodes/{node}:{AGENT_PORT}/proxy/status"))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
        .await
        .map_err(|_| "no answer in 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("unreadable /status: {e}"))
}

impl ClusterStatus {
    /// The human-readable screen.
    pub fn render(&self) -> String {
        let yes_no = |v: Option<bool>| match v {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "?",
        };
        let mut rows = vec![[
            "NODE".to_owned(),
            "PODCIDR".to_owned(),
            "TAILNET IP".to_owned(),
            "ADVERTISED".to_owned(),
            "APPROVED".to_owned(),
            "REACHABLE".to_owned(),
            "MTU".to_owned(),
            "STATE".to_owned(),
        ]];
        for n in &self.nodes {
            let here = self.this_node.as_deref() == Some(n.name.as_str());
            rows.push([
                if here {
                    format!("{} (here)", n.name)
                } else {
                    n.name.clone()
                },
                n.pod_cidrs.join(","),
                n.tailnet_ips.join(","),
                yes_no(n.advertised).to_owned(),
                yes_no(n.approved).to_owned(),
                if here {
                    "-".to_owned()
                } else {
                    yes_no(n.reachable_from_here).to_owned()
                },
                n.mtu.map(|m| m.to_string()).unwrap_or_else(|| "?".into()),
                n.reason.clone(),
            ]);
        }
        let widths: Vec<usize> = (0..8)
            .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        if self.problems.is_empty() {
            out.push_str("\nno problems found\n");
        } else {
            out.push_str("\nproblems:\n");
            for p in &self.problems {
                out.push_str(&format!("  - {p}\n"));
            }
        }
        out
    }
}
