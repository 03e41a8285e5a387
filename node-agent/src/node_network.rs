//! The seam between the reconcile loop and the kernel: what the agent asks
//! of the node's datapath, as a trait, so the loop's logic is tested without
//! root and the real implementation ([`crate::datapath`]) is tested on its
//! own in throwaway namespaces.

use std::future::Future;
use std::net::IpAddr;

use ipnet::IpNet;
use tokio::sync::Mutex;

use crate::datapath::{
    apply_sysctls, interface_facts, verify_peer_routes, DatapathSpec, DatapathTable, NetnsTarget,
    RouteVerdict,
};

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
        spec: &DatapathSpec,
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

/// The real datapath: sysctls and the nftables table through
/// [`crate::datapath`], in the agent's own network namespace.
pub struct KernelNetwork {
    table: Mutex<DatapathTable>,
    tailnet_interface: String,
}

impl KernelNetwork {
    /// The datapath of the namespace the agent runs in, whose tailnet
    /// interface is `tailnet_interface`.
    pub fn new(tailnet_interface: &str) -> KernelNetwork {
        KernelNetwork {
            table: Mutex::new(DatapathTable::new(NetnsTarget::Current)),
            tailnet_interface: tailnet_interface.to_owned(),
        }
    }
}

impl NodeNetwork for KernelNetwork {
    async fn apply(&self, spec: &DatapathSpec) -> Result<Vec<String>, NetworkError> {
        let failed = |e: crate::datapath::DatapathError| NetworkError(e.to_string());
        let sysctls = apply_sysctls(spec, &NetnsTarget::Current).map_err(failed)?;
        let mut changes: Vec<String> = sysctls.changes.iter().map(ToString::to_string).collect();
        let outcome = self.table.lock().await.apply(spec).await.map_err(failed)?;
        if outcome.changed {
            changes
                .push(format!("nftables table inet tailroute {:?}", outcome.reason).to_lowercase());
        }
        Ok(changes)
    }

    async fn remove(&self) -> Result<(), NetworkError> {
        self.table
            .lock()
            .await
            .remove()
            .await
            .map(|_| ())
            .map_err(|e| NetworkError(e.to_string()))
    }

    async fn mtu(&self, interface: &str) -> Result<u32, NetworkError> {
        interface_facts(&NetnsTarget::Current, interface)
            .map(|facts| facts.mtu)
            .map_err(|e| NetworkError(e.to_string()))
    }

    async fn route_interface(&self, destination: IpAddr) -> Result<Option<String>, NetworkError> {
        let host = IpNet::from(destination);
        let tailnet = &self.tailnet_interface;
        let report = verify_peer_routes(&NetnsTarget::Current, tailnet, &[host])
            .map_err(|e| NetworkError(e.to_string()))?;
        Ok(report.peers.first().and_then(|p| match &p.verdict {
            RouteVerdict::ViaTailnet | RouteVerdict::TailnetOtherTable { .. } => {
                Some(tailnet.clone())
            }
            RouteVerdict::OtherInterface { interface, .. } => Some(interface.clone()),
            RouteVerdict::NoRoute { .. } => None,
        }))
    }
}
