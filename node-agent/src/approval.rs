//! Whether the control plane approved this node's pod routes, and what to
//! tell the operator when it did not.
//!
//! Approval is read from tailnet state, which needs no credential: the
//! control plane puts a node's approved routes into that node's
//! `AllowedIPs` (and `PrimaryRoutes`) in every netmap it sends, the node's
//! own included.
//!
//! The node's own netmap is not always enough. Measured with Headscale
//! v0.29.2: an approval (by autoApprovers or through the API) reaches the
//! *peers* at once, but the node itself only with its next self update
//! (`SetApprovedRoutes` fans out a policy change that leaves the node's own
//! entry alone), which may be minutes away. So every agent also publishes,
//! in an annotation on its own Node ([`WITNESS_ANNOTATION`]), the pod
//! routes it sees approved on its peers; a route is approved when the
//! node's netmap shows it, when another node's agent witnessed it, or when
//! the agent's own API call just approved it.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::config::ApprovalConfig;
use crate::control::{ControlError, ControlPlane, Credential, DeviceQuery};
use crate::localapi::Status;
use crate::reconcile::{ApprovalFailure, RouteApprover};

/// The control plane client for the configured credential, with the secret
/// read from its file or environment variable; `None` when none is
/// configured (detect and report only).
pub fn control_plane(config: &ApprovalConfig) -> Result<Option<ControlPlane>, ControlError> {
    let credential = match config {
        ApprovalConfig::DetectOnly => return Ok(None),
        ApprovalConfig::Headscale { url, api_key } => Credential::headscale(url, api_key.load()?),
        ApprovalConfig::TailscaleOAuth {
            client_id,
            client_secret,
            tailnet,
            base_url,
        } => Credential::tailscale_oauth(client_id, client_secret.load()?)
            .with_tailnet(tailnet)
            .with_base_url(base_url),
        ApprovalConfig::TailscaleApiKey {
            api_key,
            tailnet,
            base_url,
        } => Credential::tailscale_api_key(api_key.load()?)
            .with_tailnet(tailnet)
            .with_base_url(base_url),
    };
    ControlPlane::new(credential).map(Some)
}

impl RouteApprover for ControlPlane {
    async fn approve(
        &self,
        node_key: &str,
        tailnet_ips: &[IpAddr],
        routes: &[IpNet],
    ) -> Result<Vec<IpNet>, ApprovalFailure> {
        let failed = |e: ControlError| ApprovalFailure {
            kind: e.kind().as_str(),
            message: e.to_string(),
        };
        let query = DeviceQuery::by_node_key(node_key).or_address(tailnet_ips.iter().copied());
        let Some(device) = self.find_device(&query).await.map_err(failed)? else {
            return Err(ApprovalFailure {
                kind: "not_found",
                message: format!(
                    "{} lists no device with node key {node_key} or addresses {tailnet_ips:?}",
                    self.target()
                ),
            });
        };
        let update = self.approve_routes(&device, routes).await.map_err(failed)?;
        Ok(update.approved)
    }
}

/// The Node annotation in which an agent lists the cluster pod routes it
/// sees approved on its peers (comma-separated, sorted).
pub const WITNESS_ANNOTATION: &str = "tailroute.dev/peer-routes-approved";

/// The cluster pod routes this node sees approved on its peers: those in a
/// peer's `AllowedIPs` that lie inside the cluster's pod network.
pub fn witnessed_on_peers(status: &Status, cluster_pod_cidrs: &[IpNet]) -> Vec<IpNet> {
    let mut seen: Vec<IpNet> = status
        .peers
        .values()
        .flat_map(|p| p.allowed_ips.iter())
        .filter(|r| cluster_pod_cidrs.iter().any(|c| c.contains(*r)))
        .copied()
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

/// The annotation value for `routes`.
pub fn witness_value(routes: &[IpNet]) -> String {
    routes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Which of `routes` other nodes' agents witnessed as approved, read from
/// their Nodes' annotations (`own` excluded: a node cannot vouch for itself).
pub fn witnessed_by_others(
    nodes: &[k8s_openapi::api::core::v1::Node],
    own: &str,
    routes: &[IpNet],
) -> Vec<IpNet> {
    let witnessed: Vec<IpNet> = nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(own))
        .filter_map(|n| n.metadata.annotations.as_ref()?.get(WITNESS_ANNOTATION))
        .flat_map(|v| v.split(',').filter_map(|r| r.trim().parse::<IpNet>().ok()))
        .collect();
    routes
        .iter()
        .filter(|r| witnessed.contains(r))
        .copied()
        .collect()
}

/// Which of `routes` the node's own netmap shows as approved.
pub fn approved_in_netmap(status: &Status, routes: &[IpNet]) -> Vec<IpNet> {
    let Some(me) = &status.self_node else {
        return Vec::new();
    };
    routes
        .iter()
        .filter(|r| me.allowed_ips.contains(r) || me.primary_routes.contains(r))
        .copied()
        .collect()
}

/// The policy snippet that makes the control plane approve every node's
/// pod route as soon as it is advertised.
pub fn auto_approvers_snippet(cluster_pod_cidrs: &[IpNet], node_tag: &str) -> String {
    let routes: Vec<String> = cluster_pod_cidrs
        .iter()
        .map(|cidr| format!("\"{cidr}\": [\"{node_tag}\"]"))
        .collect();
    format!(
        "\"autoApprovers\": {{\"routes\": {{{}}}}}",
        routes.join(", ")
    )
}

/// The condition message for routes advertised but not approved, with
/// both remedies (a policy change, or a credential for the agent).
pub fn not_approved_message(
    missing: &[IpNet],
    cluster_pod_cidrs: &[IpNet],
    node_tag: &str,
    why_no_api: &str,
) -> String {
    let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
    format!(
        "route {} advertised but not approved by the control plane, so no other node can \
         reach this node's pods; {why_no_api}. Fix: add to the tailnet policy \
         {} (nodes must carry {node_tag}), or give the agent an API credential \
         (docs/agent-credentials.md)",
        missing.join(", "),
        auto_approvers_snippet(cluster_pod_cidrs, node_tag)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn status_with(allowed: &[&str], primary: &[&str]) -> Status {
        let mut status: Status = serde_json::from_str(&crate::localapi::fake::recorded(
            "status-running-synthesized.json",
        ))
        .expect("status");
        let me = status.self_node.as_mut().expect("self");
        me.allowed_ips = allowed.iter().map(|s| net(s)).collect();
        me.primary_routes = primary.iter().map(|s| net(s)).collect();
        status
    }

    #[test]
    fn approval_is_read_from_the_nodes_own_netmap() {
        let routes = [net("10.244.1.0/24"), net("fd00:10:244:1::/64")];
        let status = status_with(&["100.64.0.2/32", "10.244.1.0/24"], &[]);
        assert_eq!(
            approved_in_netmap(&status, &routes),
            vec![net("10.244.1.0/24")]
        );
        let status = status_with(&["100.64.0.2/32"], &["10.244.1.0/24", "fd00:10:244:1::/64"]);
        assert_eq!(approved_in_netmap(&status, &routes), routes.to_vec());
        let status = status_with(&["100.64.0.2/32"], &[]);
        assert!(approved_in_netmap(&status, &routes).is_empty());
    }

    #[test]
    fn peers_vouch_for_a_route_the_nodes_own_netmap_does_not_show_yet() {
        let mut status = status_with(&["100.64.0.2/32"], &[]);
        let peer = status.peers.values_mut().next().expect("a peer");
        peer.allowed_ips = vec![
            net("100.64.0.3/32"),
            net("10.244.3.0/24"),
            net("192.168.1.0/24"),
        ];
        let cluster = [net("10.244.0.0/16")];
        assert_eq!(
            witnessed_on_peers(&status, &cluster),
            vec![net("10.244.3.0/24")]
        );

        let node = |name: &str, seen: Option<&str>| -> k8s_openapi::api::core::v1::Node {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "annotations": seen.map(|v| {
                    serde_json::json!({WITNESS_ANNOTATION: v})
                })},
            }))
            .expect("node")
        };
        let nodes = [
            node("n1", Some("10.244.1.0/24")),
            node("n2", Some("10.244.1.0/24,10.244.3.0/24")),
            node("n3", None),
        ];
        let mine = [net("10.244.1.0/24"), net("10.244.9.0/24")];
        assert_eq!(
            witnessed_by_others(&nodes, "n1", &mine),
            vec![net("10.244.1.0/24")]
        );
        // A node's word about itself does not count.
        assert!(witnessed_by_others(&nodes[..1], "n1", &mine).is_empty());
    }

    #[test]
    fn the_message_carries_the_exact_policy_snippet() {
        let msg = not_approved_message(
            &[net("10.244.1.0/24")],
            &[net("10.244.0.0/16"), net("fd00:10:244::/56")],
            "tag:k8s-node",
            "no API credential is configured",
        );
        assert!(
            msg.contains("route 10.244.1.0/24 advertised but not approved"),
            "{msg}"
        );
        assert!(
            msg.contains(
                "\"autoApprovers\": {\"routes\": {\"10.244.0.0/16\": [\"tag:k8s-node\"], \
                 \"fd00:10:244::/56\": [\"tag:k8s-node\"]}}"
            ),
            "{msg}"
        );
    }
}
