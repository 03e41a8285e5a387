//! A Node deleted from the cluster leaves its tailnet device behind unless
//! someone removes it: a ghost that keeps its name, its address and, worse,
//! its approved pod route. The agent holding the leader Lease removes it
//! through the control plane's API; when the credential may not delete
//! devices (no `devices:core` scope) it at least withdraws the approval of
//! the node's pod routes; without a credential it says what to do.
//!
//! The same goes for the per-pod identities that lived on the Node: their
//! tailscaleds went with the machine, or are cut off with it, and nothing
//! on that node will ever log them out. Ephemeral devices disappear by
//! themselves once the control plane sees them offline, but a machine cut
//! off from the cluster yet not from the tailnet keeps them online, and
//! Headscale waits two minutes even for an offline one. So the leader
//! removes them too, found by the addresses the Node's agent recorded on
//! each pod (`tailroute.dev/identity-ips`).
//!
//! Deletions are seen as they happen (the Node watch); a deletion while no
//! agent runs is not caught up later, because telling a ghost from a
//! machine that joined the tailnet but has not registered its Node yet
//! needs a human.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;

use crate::control::{ControlError, ControlPlane, Device, DeviceQuery, ErrorKind};
use crate::identity::manager::IDENTITY_IPS;
use crate::peers::{join, pod_cidrs};

/// What became of a deleted Node's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Departure {
    /// The device was deleted from the control plane.
    DeviceRemoved {
        /// Its name there.
        device: String,
    },
    /// Only the approval of its pod routes was withdrawn.
    ApprovalWithdrawn {
        /// Its name there.
        device: String,
        /// Why the device itself stays.
        why: String,
    },
    /// No device has the Node's tailnet addresses (already gone).
    NoDevice,
    /// Nothing could be done; the message says what to do.
    LeftBehind(String),
}

impl Departure {
    /// A metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Departure::DeviceRemoved { .. } => "removed",
            Departure::ApprovalWithdrawn { .. } => "approval_withdrawn",
            Departure::NoDevice => "no_device",
            Departure::LeftBehind(_) => "left_behind",
        }
    }

    /// The Event note for `node`.
    pub fn note(&self, node: &str, addresses: &[IpAddr]) -> String {
        let addrs: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        match self {
            Departure::DeviceRemoved { device } => format!(
                "Node {node} was deleted: removed its tailnet device {device} ({})",
                addrs.join(", ")
            ),
            Departure::ApprovalWithdrawn { device, why } => format!(
                "Node {node} was deleted: withdrew the approval of its pod routes on tailnet \
                 device {device}, which stays because {why}"
            ),
            Departure::NoDevice => format!(
                "Node {node} was deleted; no tailnet device has its addresses ({})",
                addrs.join(", ")
            ),
            Departure::LeftBehind(why) => format!(
                "Node {node} was deleted but its tailnet device ({}) stays: {why}",
                addrs.join(", ")
            ),
        }
    }

    /// The Event note for an identity `pod` that lived on the deleted `node`.
    pub fn identity_note(&self, node: &str, pod: &str, addresses: &[IpAddr]) -> String {
        let addrs: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        let addrs = addrs.join(", ");
        match self {
            Departure::DeviceRemoved { device } => format!(
                "Node {node} was deleted: removed pod {pod}'s tailnet identity {device} ({addrs})"
            ),
            Departure::ApprovalWithdrawn { device, why } => format!(
                "Node {node} was deleted: pod {pod}'s tailnet identity {device} stays because \
                 {why}"
            ),
            Departure::NoDevice => format!(
                "Node {node} was deleted; no tailnet device has pod {pod}'s identity addresses \
                 ({addrs})"
            ),
            Departure::LeftBehind(why) => format!(
                "Node {node} was deleted but pod {pod}'s tailnet identity ({addrs}) stays: {why}"
            ),
        }
    }
}

pub use crate::peers::tailnet_addresses;

/// Removes the device of a deleted `node`, or its approval, or explains.
pub async fn clean_up(control: Option<&ControlPlane>, node: &Node) -> Departure {
    let addresses = tailnet_addresses(node);
    let Some(control) = control else {
        return Departure::LeftBehind(
            "the agent has no API credential; remove it from the control plane by hand \
             (Headscale: `headscale nodes delete`; Tailscale: the admin console), or configure \
             one (docs/agent-credentials.md)"
                .to_owned(),
        );
    };
    if addresses.is_empty() {
        return Departure::LeftBehind(
            "the Node had no address in the tailnet's ranges to find its device by".to_owned(),
        );
    }
    let (device, name, e) = match delete_device_at(control, &addresses).await {
        Ok(outcome) => return outcome,
        Err(refused) => refused,
    };
    if e.kind() != ErrorKind::Forbidden {
        return Departure::LeftBehind(format!("deleting {name} failed: {e}"));
    }
    let routes = pod_cidrs(node);
    match control.withdraw_approval(&device, &routes).await {
        Ok(_) => Departure::ApprovalWithdrawn {
            device: name,
            why: format!("the credential may not delete devices ({e})"),
        },
        Err(e2) => Departure::LeftBehind(format!(
            "deleting it was refused ({e}) and withdrawing the approval of {} failed ({e2})",
            join(&routes)
        )),
    }
}

/// The addresses a pod's tailnet identity was given, as its node's agent
/// recorded them; empty for a pod without an identity.
pub fn identity_addresses(pod: &Pod) -> Vec<IpAddr> {
    pod.annotations()
        .get(IDENTITY_IPS)
        .map(|ips| {
            ips.split(',')
                .filter_map(|ip| ip.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the tailnet identity of `pod`, which lived on a deleted Node, or
/// explains why it stays. Pods without an identity are not asked about.
pub async fn remove_identity(control: Option<&ControlPlane>, pod: &Pod) -> Departure {
    let addresses = identity_addresses(pod);
    let Some(control) = control else {
        return Departure::LeftBehind(
            "the agent has no API credential to remove it with; it goes by itself once the \
             control plane sees it offline (it is ephemeral)"
                .to_owned(),
        );
    };
    match delete_device_at(control, &addresses).await {
        Ok(outcome) => outcome,
        Err((_, name, e)) => Departure::LeftBehind(format!(
            "deleting {name} failed: {e}; it goes by itself once the control plane sees it \
             offline (it is ephemeral)"
        )),
    }
}

/// Finds the device holding one of `addresses` and deletes it. A refusal
/// comes back with the device and its name, for the caller to decide.
async fn delete_device_at(
    control: &ControlPlane,
    addresses: &[IpAddr],
) -> Result<Departure, (Device, String, ControlError)> {
    let query = DeviceQuery {
        node_key: None,
        addresses: addresses.to_vec(),
    };
    let device = match control.find_device(&query).await {
        Ok(Some(device)) => device,
        Ok(None) => return Ok(Departure::NoDevice),
        Err(e) => return Ok(Departure::LeftBehind(format!("finding it failed: {e}"))),
    };
    let name = if device.name.is_empty() {
        device.hostname.clone()
    } else {
        device.name.clone()
    };
    match control.delete_device(&device).await {
        Ok(()) => Ok(Departure::DeviceRemoved { device: name }),
        Err(e) => Err((device, name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tailnet_addresses_identify_the_device() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n3"},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "100.64.0.3"},
                {"type": "InternalIP", "address": "fd7a:115c:a1e0::3"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
                {"type": "Hostname", "address": "n3"},
            ]},
        }))
        .expect("node");
        let found: Vec<String> = tailnet_addresses(&node)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found, vec!["100.64.0.3", "fd7a:115c:a1e0::3"]);
    }

    #[test]
    fn an_identity_is_found_by_the_addresses_recorded_on_its_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "annotations": {
                IDENTITY_IPS: "100.64.0.9,fd7a:115c:a1e0::9, not-an-ip",
            }},
        }))
        .expect("pod");
        let found: Vec<String> = identity_addresses(&pod)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found, vec!["100.64.0.9", "fd7a:115c:a1e0::9"]);
        let plain: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "plain"}}))
            .expect("pod");
        assert!(identity_addresses(&plain).is_empty());
    }

    #[tokio::test]
    async fn an_identity_without_a_credential_is_left_to_the_ephemeral_timeout() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "annotations": {IDENTITY_IPS: "100.64.0.9"}},
        }))
        .expect("pod");
        let outcome = remove_identity(None, &pod).await;
        let note = outcome.identity_note("n3", "default/web", &identity_addresses(&pod));
        assert_eq!(outcome.label(), "left_behind");
        assert!(
            note.contains("pod default/web's tailnet identity (100.64.0.9)"),
            "{note}"
        );
        assert!(note.contains("ephemeral"), "{note}");
    }

    #[tokio::test]
    async fn without_a_credential_the_note_says_what_to_do() {
        let node: Node =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "n3"}})).expect("node");
        let outcome = clean_up(None, &node).await;
        assert_eq!(outcome.label(), "left_behind");
        let note = outcome.note("n3", &[]);
        assert!(note.contains("headscale nodes delete"), "{note}");
    }
}
