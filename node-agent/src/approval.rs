//! Whether the control plane approved this node's pod routes, and what to
//! tell the operator when it did not.
//!
//! Approval is read from the node's own tailnet state, which needs no
//! credential: the control plane puts a node's approved routes into its own
//! `AllowedIPs` (and `PrimaryRoutes`) in the netmap it sends the node. One
//! caveat, measured with Headscale v0.29.2: an approval made through its
//! API reaches the *peers* at once but the node itself only with its next
//! self update (the next prefs or endpoint change), so when the agent
//! approves through an API it also trusts the API's answer.

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
