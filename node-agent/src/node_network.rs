//! The seam between the reconcile loop and the kernel: what the agent asks
//! of the node's datapath, as a trait, so the loop's logic is tested without
//! root and the real implementation ([`crate::datapath`]) is tested on its
//! own in throwaway namespaces.

use std::future::Future;
use std::net::IpAddr;

use ipnet::IpNet;

/// What the node's datapath must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The pods' bridge.
    pub bridge: String,
    /// The tailnet interface.
    pub tailnet_interface: String,
    /// This node's podCIDR(s).
    pub node_pod_cidrs: Vec<IpNet>,
    /// The cluster's pod network(s).
    pub cluster_pod_cidrs: Vec<IpNet>,
    /// The cluster's service network(s).
    pub service_cidrs: Vec<IpNet>,
    /// Every cluster node's tailnet addresses (not masqueraded to).
    pub cluster_node_tailnet_ips: Vec<IpAddr>,
}

/// A datapath operation that failed; the message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetworkError(pub String);

/// The node's datapath as the agent drives it.
pub trait NodeNetwork: Send + Sync {
    /// Puts forwarding, reverse-path filtering and the agent's nftables
    /// table in place; returns what had to change (empty when nothing did).
    fn apply(
        &self,
        spec: &NetworkSpec,
    ) -> impl Future<Output = Result<Vec<String>, NetworkError>> + Send;

    /// Removes the agent's nftables table (uninstall).
    fn remove(&self) -> impl Future<Output = Result<(), NetworkError>> + Send;

    /// The MTU of `interface`.
    fn mtu(&self, interface: &str) -> impl Future<Output = Result<u32, NetworkError>> + Send;

    /// The interface the kernel would send a packet for `destination`
    /// through (policy routing included), or `None` without a route.
    fn route_interface(
        &self,
        destination: IpAddr,
    ) -> impl Future<Output = Result<Option<String>, NetworkError>> + Send;
}
