//! Per-peer state: can this node reach every other node's pods?
//!
//! For each other Node with a podCIDR the agent checks, from the node's own
//! point of view, every link of the chain that has failed silently for
//! users before: the peer is on the tailnet and online, its pod route is
//! approved (it is in the peer's AllowedIPs in this node's netmap), and the
//! kernel sends traffic for it into the tailnet interface (accept-routes on,
//! no other route or policy rule winning).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};

use crate::localapi::{PeerStatus, Status};

/// Where one peer stands, worst first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum PeerState {
    /// No tailnet device matches the Node (by address, route or hostname).
    NotOnTailnet,
    /// The device exists but is offline.
    Offline,
    /// The device is online but its pod route is not in its AllowedIPs:
    /// not approved, or not advertised.
    RouteNotApproved {
        /// The routes missing.
        missing: Vec<IpNet>,
    },
    /// The kernel sends the peer's pod traffic somewhere other than the
    /// tailnet interface.
    NotRoutedThroughTailnet {
        /// The interface the kernel picked, if any.
        via: Option<String>,
    },
    /// Every check passed.
    Reachable,
}

/// One other cluster node as seen from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReport {
    /// The Node's name.
    pub node: String,
    /// Its podCIDR(s).
    pub pod_cidrs: Vec<IpNet>,
    /// Its tailnet addresses, when found.
    pub tailnet_ips: Vec<IpAddr>,
    /// `direct <addr>`, `relay <region>`, or empty when idle or unknown.
    pub path: String,
    /// The verdict.
    #[serde(flatten)]
    pub state: PeerState,
}

impl PeerReport {
    /// Whether pods on this peer are reachable.
    pub fn reachable(&self) -> bool {
        self.state == PeerState::Reachable
    }
}

/// A Node's podCIDRs (`spec.podCIDRs`, or the single `spec.podCIDR` of
/// older clusters). Unparseable entries are skipped.
pub fn pod_cidrs(node: &Node) -> Vec<IpNet> {
    let Some(spec) = &node.spec else {
        return Vec::new();
    };
    let listed = spec.pod_cidrs.clone().unwrap_or_default();
    let raw = if listed.is_empty() {
        spec.pod_cidr.iter().cloned().collect()
    } else {
        listed
    };
    raw.iter().filter_map(|c| c.parse().ok()).collect()
}

/// A Node's addresses (InternalIP, ExternalIP) that parse as IPs.
pub fn node_addresses(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A Node's addresses inside the tailnet's ranges: the kubelet's node-ip
/// is the node's tailnet IP, so these identify its tailnet device.
pub fn tailnet_addresses(node: &Node) -> Vec<IpAddr> {
    let ranges = crate::config::tailnet_ranges();
    node_addresses(node)
        .into_iter()
        .filter(|ip| ranges.iter().any(|r| r.contains(ip)))
        .collect()
}

fn node_name(node: &Node) -> &str {
    node.metadata.name.as_deref().unwrap_or("")
}

/// The tailnet device of `node`: one sharing an address with it, else one
/// carrying one of its pod routes, else one with its hostname.
pub fn find_peer<'s>(status: &'s Status, node: &Node) -> Option<&'s PeerStatus> {
    let addresses = node_addresses(node);
    let cidrs = pod_cidrs(node);
    let peers = || status.peers.values();
    peers()
        .find(|p| p.tailscale_ips.iter().any(|ip| addresses.contains(ip)))
        .or_else(|| peers().find(|p| cidrs.iter().any(|c| p.allowed_ips.contains(c))))
        .or_else(|| peers().find(|p| p.host_name.eq_ignore_ascii_case(node_name(node))))
}

/// An address inside `cidr` to ask the kernel about (its first host).
pub fn probe_address(cidr: &IpNet) -> IpAddr {
    cidr.hosts().next().unwrap_or(cidr.network())
}

/// Assesses every other Node with a podCIDR. `kernel_routes` maps each
/// podCIDR to the interface the kernel routes its [`probe_address`] through
/// (`None`: no route, or not looked up).
pub fn assess(
    own_node: &str,
    nodes: &[Node],
    status: &Status,
    tailnet_interface: &str,
    kernel_routes: &BTreeMap<IpNet, Option<String>>,
) -> Vec<PeerReport> {
    let mut reports: Vec<PeerReport> = nodes
        .iter()
        .filter(|n| node_name(n) != own_node)
        .filter_map(|node| {
            let cidrs = pod_cidrs(node);
            if cidrs.is_empty() {
                return None;
            }
            let peer = find_peer(status, node);
            let state = match peer {
                None => PeerState::NotOnTailnet,
                Some(p) if !p.online => PeerState::Offline,
                Some(p) => {
                    let missing: Vec<IpNet> = cidrs
                        .iter()
                        .filter(|c| !p.allowed_ips.contains(c))
                        .copied()
                        .collect();
                    let misrouted = cidrs.iter().find_map(|c| match kernel_routes.get(c) {
                        Some(Some(dev)) if dev == tailnet_interface => None,
                        Some(via) => Some(via.clone()),
                        None => Some(None),
                    });
                    if !missing.is_empty() {
                        PeerState::RouteNotApproved { missing }
                    } else if let Some(via) = misrouted {
                        PeerState::NotRoutedThroughTailnet { via }
                    } else {
                        PeerState::Reachable
                    }
                }
            };
            Some(PeerReport {
                node: node_name(node).to_owned(),
                pod_cidrs: cidrs,
                tailnet_ips: peer.map(|p| p.tailscale_ips.clone()).unwrap_or_default(),
                path: peer.map(path_of).unwrap_or_default(),
                state,
            })
        })
        .collect();
    reports.sort_by(|a, b| a.node.cmp(&b.node));
    reports
}

fn path_of(peer: &PeerStatus) -> String {
    if !peer.cur_addr.is_empty() {
        format!("direct {}", peer.cur_addr)
    } else if !peer.relay.is_empty() {
        format!("relay {}", peer.relay)
    } else {
        String::new()
    }
}

/// One line per unreachable peer, saying what to check.
pub fn remedy(report: &PeerReport, tailnet_interface: &str) -> Option<String> {
    let node = &report.node;
    Some(match &report.state {
        PeerState::Reachable => return None,
        PeerState::NotOnTailnet => format!(
            "node {node} has no device on this tailnet: join it with `tailroute join`, and \
             check that its InternalIP is its tailnet address"
        ),
        PeerState::Offline => format!(
            "node {node}'s tailnet device is offline: check tailscaled on {node} \
             (`tailscale status` there)"
        ),
        PeerState::RouteNotApproved { missing } => format!(
            "node {node}'s pod route {} is not approved (or not advertised): see the \
             NetworkUnavailable condition on {node}",
            join(missing)
        ),
        PeerState::NotRoutedThroughTailnet { via } => format!(
            "traffic for node {node}'s pods {} leaves through {} instead of \
             {tailnet_interface}: is accept-routes on (tailscale set --accept-routes), or \
             does another route or rule win? (`ip route get {}`)",
            join(&report.pod_cidrs),
            via.as_deref().unwrap_or("no interface"),
            report
                .pod_cidrs
                .first()
                .map(probe_address)
                .map(|a| a.to_string())
                .unwrap_or_default()
        ),
    })
}

/// `10.244.1.0/24, fd00:10:244:1::/64`: prefixes as a message shows them.
pub fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidrs: &[&str], ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
            "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
        }))
        .expect("node")
    }

    fn status(peers: serde_json::Value) -> Status {
        serde_json::from_value(json!({
            "BackendState": "Running",
            "TailscaleIPs": ["100.64.0.1"],
            "Self": {"ID": "1", "HostName": "n1", "TailscaleIPs": ["100.64.0.1"]},
            "Peer": peers,
        }))
        .expect("status")
    }

    fn routes(entries: &[(&str, Option<&str>)]) -> BTreeMap<IpNet, Option<String>> {
        entries
            .iter()
            .map(|(c, d)| (c.parse().expect("cidr"), d.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn every_failure_on_the_way_to_a_peer_has_its_own_state() {
        let nodes = vec![
            node("n1", &["10.244.0.0/24"], "100.64.0.1"),
            node("n2", &["10.244.1.0/24"], "100.64.0.2"),
            node("n3", &["10.244.2.0/24"], "100.64.0.3"),
            node("n4", &["10.244.3.0/24"], "100.64.0.4"),
            node("n5", &["10.244.4.0/24"], "100.64.0.5"),
            node("n6", &["10.244.5.0/24"], "100.64.0.6"),
            node("n7", &[], "100.64.0.7"),
        ];
        let st = status(json!({
            "k2": {"HostName": "n2", "TailscaleIPs": ["100.64.0.2"], "Online": true,
                   "AllowedIPs": ["100.64.0.2/32", "10.244.1.0/24"], "CurAddr": "198.51.100.2:41641"},
            "k3": {"HostName": "n3", "TailscaleIPs": ["100.64.0.3"], "Online": false,
                   "AllowedIPs": ["100.64.0.3/32", "10.244.2.0/24"]},
            "k4": {"HostName": "n4", "TailscaleIPs": ["100.64.0.4"], "Online": true,
                   "AllowedIPs": ["100.64.0.4/32"], "Relay": "lab"},
            "k5": {"HostName": "n5", "TailscaleIPs": ["100.64.0.5"], "Online": true,
                   "AllowedIPs": ["100.64.0.5/32", "10.244.4.0/24"]},
        }));
        let kernel = routes(&[
            ("10.244.1.0/24", Some("tailscale0")),
            ("10.244.4.0/24", Some("eth0")),
        ]);
        let reports = assess("n1", &nodes, &st, "tailscale0", &kernel);
        let states: Vec<(&str, &PeerState)> = reports
            .iter()
            .map(|r| (r.node.as_str(), &r.state))
            .collect();
        assert_eq!(
            states,
            vec![
                ("n2", &PeerState::Reachable),
                ("n3", &PeerState::Offline),
                (
                    "n4",
                    &PeerState::RouteNotApproved {
                        missing: vec!["10.244.3.0/24".parse().expect("cidr")]
                    }
                ),
                (
                    "n5",
                    &PeerState::NotRoutedThroughTailnet {
                        via: Some("eth0".to_owned())
                    }
                ),
                ("n6", &PeerState::NotOnTailnet),
            ]
        );
        assert_eq!(reports[0].path, "direct 198.51.100.2:41641");
        assert_eq!(reports[2].path, "relay lab");
        assert!(remedy(&reports[0], "tailscale0").is_none());
        let advice = remedy(&reports[3], "tailscale0").expect("advice");
        assert!(
            advice.contains("accept-routes") && advice.contains("eth0"),
            "{advice}"
        );
    }
}
