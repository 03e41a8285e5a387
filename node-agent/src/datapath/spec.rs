//! What the node datapath must look like, as one typed value.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::DatapathError;

/// Everything the datapath (sysctls and the nftables table) is rendered
/// from. The agent builds it from its Node, the cluster's Nodes and its
/// configuration; order and duplicates in the lists do not matter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathSpec {
    /// The pods' bridge, made by the CNI plugin (`tailroute0`).
    pub bridge: String,
    /// tailscaled's interface (`tailscale0`).
    pub tailnet_iface: String,
    /// This node's pod CIDRs (`Node.spec.podCIDRs`): traffic from these
    /// is pod traffic.
    pub node_pod_cidrs: Vec<IpNet>,
    /// The whole cluster's pod CIDRs (kubeadm's podSubnet): never
    /// masqueraded toward.
    pub cluster_pod_cidrs: Vec<IpNet>,
    /// The Service CIDRs: never masqueraded toward (kube-proxy has
    /// normally rewritten such destinations before postrouting; this
    /// covers what it leaves alone).
    pub service_cidrs: Vec<IpNet>,
    /// Every cluster node's tailnet IPs: never masqueraded toward, so
    /// nodes see pod IPs (kubelet probes, NetworkPolicy, logs).
    pub cluster_node_tailnet_ips: Vec<IpAddr>,
}

impl DatapathSpec {
    /// A spec for the usual interface names (`tailroute0`, `tailscale0`)
    /// with empty lists.
    pub fn new() -> DatapathSpec {
        DatapathSpec {
            bridge: "tailroute0".to_owned(),
            tailnet_iface: "tailscale0".to_owned(),
            node_pod_cidrs: Vec::new(),
            cluster_pod_cidrs: Vec::new(),
            service_cidrs: Vec::new(),
            cluster_node_tailnet_ips: Vec::new(),
        }
    }

    /// True if this node has an IPv6 pod CIDR (then IPv6 forwarding is on).
    pub fn has_ipv6_pods(&self) -> bool {
        self.node_pod_cidrs
            .iter()
            .any(|c| matches!(c, IpNet::V6(_)))
    }

    /// Checks the spec and returns it in canonical form: host bits cleared,
    /// prefixes merged (nftables refuses overlapping intervals in a set),
    /// lists sorted and deduplicated, so that equal specs render equal
    /// rulesets whatever the order the agent saw its Nodes in.
    pub fn canonical(&self) -> Result<DatapathSpec, DatapathError> {
        check_ifname("bridge", &self.bridge)?;
        check_ifname("tailnet_iface", &self.tailnet_iface)?;
        if self.bridge == self.tailnet_iface {
            return Err(DatapathError::invalid_spec(format!(
                "bridge and tailnet interface are both {:?}",
                self.bridge
            )));
        }
        if self.node_pod_cidrs.is_empty() {
            return Err(DatapathError::invalid_spec(
                "no node pod CIDRs: the Node has no spec.podCIDRs yet \
                 (is kube-controller-manager running with --allocate-node-cidrs?)",
            ));
        }
        let node_pod_cidrs = IpNet::aggregate(&self.node_pod_cidrs);
        let cluster_pod_cidrs = IpNet::aggregate(&self.cluster_pod_cidrs);
        for cidr in &node_pod_cidrs {
            if !cluster_pod_cidrs.iter().any(|c| c.contains(cidr)) {
                return Err(DatapathError::invalid_spec(format!(
                    "node pod CIDR {cidr} is not inside the cluster pod CIDRs {}: \
                     pod-to-pod traffic would be masqueraded; set the cluster pod CIDR \
                     to kubeadm's podSubnet",
                    list(&cluster_pod_cidrs)
                )));
            }
        }
        let nodes: BTreeSet<IpAddr> = self.cluster_node_tailnet_ips.iter().copied().collect();
        Ok(DatapathSpec {
            bridge: self.bridge.clone(),
            tailnet_iface: self.tailnet_iface.clone(),
            node_pod_cidrs,
            cluster_pod_cidrs,
            service_cidrs: IpNet::aggregate(&self.service_cidrs),
            cluster_node_tailnet_ips: nodes.into_iter().collect(),
        })
    }
}

impl Default for DatapathSpec {
    fn default() -> DatapathSpec {
        DatapathSpec::new()
    }
}

/// Interface names go into the ruleset text and into `/proc/sys` paths, so
/// only what Linux allows in a name that is also harmless there passes.
fn check_ifname(field: &str, name: &str) -> Result<(), DatapathError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(DatapathError::invalid_spec(format!(
            "{field} {name:?} is not a usable interface name \
             (1-15 of A-Z a-z 0-9 - _ . @)"
        )))
    }
}

fn list(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "(none)".to_owned();
    }
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("a test prefix")
    }

    #[test]
    fn canonical_sorts_merges_and_clears_host_bits() {
        let mut spec = DatapathSpec::new();
        spec.node_pod_cidrs = vec![net("10.244.1.7/24")];
        spec.cluster_pod_cidrs = vec![net("10.244.1.0/24"), net("10.244.0.0/16")];
        spec.cluster_node_tailnet_ips = vec![
            "100.64.0.3".parse().expect("ip"),
            "100.64.0.2".parse().expect("ip"),
            "100.64.0.3".parse().expect("ip"),
        ];
        let c = spec.canonical().expect("valid");
        assert_eq!(c.node_pod_cidrs, vec![net("10.244.1.0/24")]);
        assert_eq!(c.cluster_pod_cidrs, vec![net("10.244.0.0/16")]);
        assert_eq!(c.cluster_node_tailnet_ips.len(), 2);
        assert_eq!(c.cluster_node_tailnet_ips[0].to_string(), "100.64.0.2");
    }

    #[test]
    fn node_cidr_outside_cluster_is_refused_with_the_fix() {
        let mut spec = DatapathSpec::new();
        spec.node_pod_cidrs = vec![net("10.244.1.0/24")];
        spec.cluster_pod_cidrs = vec![net("10.245.0.0/16")];
        let e = spec.canonical().expect_err("outside");
        assert_eq!(e.kind(), "invalid_spec");
        assert!(e.to_string().contains("podSubnet"), "{e}");
    }

    #[test]
    fn interface_names_cannot_inject_ruleset_text() {
        let mut spec = DatapathSpec::new();
        spec.node_pod_cidrs = vec![net("10.244.1.0/24")];
        spec.cluster_pod_cidrs = vec![net("10.244.0.0/16")];
        for bad in ["", "a\" accept", "x/y", "sixteen-chars-xx", ".."] {
            spec.bridge = bad.to_owned();
            assert!(spec.canonical().is_err(), "{bad:?} accepted");
        }
        spec.bridge = "tailscale0".to_owned();
        assert!(spec.canonical().is_err(), "same interface twice accepted");
    }

    #[test]
    fn missing_pod_cidrs_are_an_error() {
        let e = DatapathSpec::new().canonical().expect_err("empty");
        assert!(e.to_string().contains("podCIDRs"), "{e}");
    }
}
