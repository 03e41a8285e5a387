//! One pass of the agent's work, level-triggered: from what the Node,
//! tailscaled and the kernel look like now to what they should look like,
//! then a report of where things stand.
//!
//! The order follows the dependencies: a podCIDR first (nothing to do
//! without one), tailscaled running, the route advertised with the subnet
//! router prefs, the datapath, then the conflist (pods may start only once
//! the node can carry their traffic), approval, and the peers. The first
//! step that cannot be done decides the `NetworkUnavailable` condition, and
//! its message says what to do.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use serde::{Deserialize, Serialize};

use crate::advertiser::RouteAdvertiser;
use crate::approval::{
    approved_in_netmap, not_approved_message, witness_value, witnessed_by_others,
    witnessed_on_peers, WITNESS_ANNOTATION,
};
use crate::config::{overlaps, tailnet_ranges, AgentConfig};
use crate::conflist::{self, ConflistSpec};
use crate::datapath::DatapathSpec;
use crate::localapi::{BackendState, LocalApiClient, Status};
use crate::metrics::{Metrics, Outcome, OutcomeLabel, PeerLabel};
use crate::node_network::NodeNetwork;
use crate::node_report::{NetworkCondition, NodeReporter};
use crate::peers::{self, join, PeerReport};

/// The cluster as the agent last saw it.
#[derive(Debug, Clone)]
pub struct ClusterView {
    /// This node.
    pub own: Node,
    /// Every Node, this one included.
    pub nodes: Vec<Node>,
}

/// How long the API's "approved" stands in for the node's netmap before the
/// API is asked again (Headscale may not update a node's own view for long).
const API_WORD_TRUSTED: Duration = Duration::from_secs(300);

/// Approving routes through the control plane's API.
pub trait RouteApprover: Send + Sync {
    /// Approves `routes` on the device with node key `node_key` (falling
    /// back to its `tailnet_ips`), keeping every approval already there.
    /// Returns the device's approved routes afterwards.
    fn approve(
        &self,
        node_key: &str,
        tailnet_ips: &[IpAddr],
        routes: &[IpNet],
    ) -> impl Future<Output = Result<Vec<IpNet>, ApprovalFailure>> + Send;
}

impl<T: RouteApprover> RouteApprover for Arc<T> {
    async fn approve(
        &self,
        node_key: &str,
        tailnet_ips: &[IpAddr],
        routes: &[IpNet],
    ) -> Result<Vec<IpNet>, ApprovalFailure> {
        (**self).approve(node_key, tailnet_ips, routes).await
    }
}

/// An approval the API refused or could not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalFailure {
    /// A metric label (`credential_rejected`, `missing_scope`, ...).
    pub kind: &'static str,
    /// What happened and what to do; never a secret.
    pub message: String,
}

/// Where the node stands after a pass: served as JSON on `/status` and
/// read by `tailroute status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// Its podCIDR(s).
    pub pod_cidrs: Vec<IpNet>,
    /// Its tailnet addresses.
    pub tailnet_ips: Vec<IpAddr>,
    /// Its podCIDRs present in AdvertiseRoutes.
    pub advertised: Vec<IpNet>,
    /// Its podCIDRs approved by the control plane.
    pub approved: Vec<IpNet>,
    /// The MTU written into the conflist, once known.
    pub mtu: Option<u32>,
    /// Whether the conflist is in place.
    pub conflist_written: bool,
    /// `NetworkUnavailable`.
    pub network_unavailable: bool,
    /// The condition's reason.
    pub reason: String,
    /// The condition's message.
    pub message: String,
    /// Every other node.
    pub peers: Vec<PeerReport>,
    /// What is wrong with the peers and what to do.
    pub problems: Vec<String>,
}

/// The agent's reconciler.
pub struct Reconciler<N, A> {
    config: Arc<AgentConfig>,
    localapi: LocalApiClient,
    advertiser: RouteAdvertiser,
    network: N,
    approver: Option<A>,
    reporter: NodeReporter,
    metrics: Arc<Metrics>,
    /// Routes the API said it approved, trusted until the node's netmap
    /// catches up (Headscale sends a node its own approvals late).
    api_approved: BTreeMap<IpNet, Instant>,
    /// The last condition, to publish an Event only on a change.
    last: Option<NetworkCondition>,
}

/// A step that stopped the pass: the condition it sets, and an error kind
/// for the metrics when it was a failure rather than a wait.
struct Stop {
    condition: NetworkCondition,
    error_kind: Option<&'static str>,
}

impl Stop {
    fn waiting(reason: &str, message: String) -> Stop {
        Stop {
            condition: NetworkCondition::down(reason, message),
            error_kind: None,
        }
    }

    fn failed(kind: &'static str, reason: &str, message: String) -> Stop {
        Stop {
            condition: NetworkCondition::down(reason, message),
            error_kind: Some(kind),
        }
    }
}

impl<N: NodeNetwork, A: RouteApprover> Reconciler<N, A> {
    /// A reconciler for the configured node.
    pub fn new(
        config: Arc<AgentConfig>,
        localapi: LocalApiClient,
        advertiser: RouteAdvertiser,
        network: N,
        approver: Option<A>,
        reporter: NodeReporter,
        metrics: Arc<Metrics>,
    ) -> Reconciler<N, A> {
        Reconciler {
            config,
            localapi,
            advertiser,
            network,
            approver,
            reporter,
            metrics,
            api_approved: BTreeMap::new(),
            last: None,
        }
    }

    /// One pass. Never fails: what went wrong is in the report, the
    /// condition, the Events, the metrics and the log.
    pub async fn reconcile(&mut self, view: &ClusterView) -> NodeReport {
        let started = Instant::now();
        let mut report = NodeReport {
            node: self.config.node_name.clone(),
            pod_cidrs: peers::pod_cidrs(&view.own),
            tailnet_ips: Vec::new(),
            advertised: Vec::new(),
            approved: Vec::new(),
            mtu: None,
            conflist_written: false,
            network_unavailable: true,
            reason: String::new(),
            message: String::new(),
            peers: Vec::new(),
            problems: Vec::new(),
        };
        let result = self.steps(view, &mut report).await;
        let (condition, outcome) = match result {
            Ok(condition) => (condition, Outcome::Ok),
            Err(stop) => {
                if let Some(kind) = stop.error_kind {
                    self.metrics.error(kind);
                }
                let outcome = if stop.error_kind.is_some() {
                    Outcome::Error
                } else {
                    Outcome::Degraded
                };
                (stop.condition, outcome)
            }
        };
        report.network_unavailable = condition.unavailable;
        report.reason.clone_from(&condition.reason);
        report.message.clone_from(&condition.message);
        self.publish(view, &condition).await;
        self.record_metrics(&report, outcome, started);
        report
    }

    async fn steps(
        &mut self,
        view: &ClusterView,
        report: &mut NodeReport,
    ) -> Result<NetworkCondition, Stop> {
        let pod_cidrs = report.pod_cidrs.clone();
        self.check_pod_cidrs(&pod_cidrs)?;

        let status = self.tailnet_status().await?;
        report.tailnet_ips.clone_from(&status.tailscale_ips);

        let advertised = self.advertise(view, &pod_cidrs).await?;
        report.advertised = pod_cidrs
            .iter()
            .filter(|c| advertised.contains(c))
            .copied()
            .collect();

        if self.config.manage_datapath {
            self.apply_datapath(view, &pod_cidrs).await?;
        }

        let mtu = self.pod_mtu().await?;
        report.mtu = Some(mtu);
        self.write_conflist(view, &pod_cidrs, mtu).await?;
        report.conflist_written = true;

        report.peers = self.assess_peers(view, &status).await;
        report.problems = report
            .peers
            .iter()
            .filter_map(|p| peers::remedy(p, &self.config.tailnet_interface))
            .collect();

        self.witness(view, &status).await;
        report.approved = self.ensure_approved(view, &status, &pod_cidrs).await?;

        let cidrs: Vec<String> = pod_cidrs.iter().map(ToString::to_string).collect();
        Ok(NetworkCondition::up(format!(
            "pod route {} advertised and approved on the tailnet; pods get MTU {mtu} on {}",
            cidrs.join(", "),
            self.config.bridge
        )))
    }

    fn check_pod_cidrs(&self, pod_cidrs: &[IpNet]) -> Result<(), Stop> {
        if pod_cidrs.is_empty() {
            return Err(Stop::waiting(
                "NoPodCIDR",
                "the Node has no spec.podCIDR yet: kube-controller-manager allocates one when \
                 it runs with --allocate-node-cidrs and --cluster-cidr (kubeadm init \
                 --pod-network-cidr); check its log if this lasts"
                    .to_owned(),
            ));
        }
        for cidr in pod_cidrs {
            if let Some(range) = tailnet_ranges().into_iter().find(|r| overlaps(cidr, r)) {
                return Err(Stop::failed(
                    "config",
                    "PodCIDROverlapsTailnet",
                    format!(
                        "the Node's podCIDR {cidr} overlaps the tailnet's range {range}: pods \
                         would collide with tailnet devices; rebuild the cluster with a \
                         --pod-network-cidr outside 100.64.0.0/10 and fd7a:115c:a1e0::/48"
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn tailnet_status(&self) -> Result<Status, Stop> {
        let status = self
            .localapi
            .status()
            .await
            .map_err(|e| Stop::failed("localapi", "TailscaleUnreachable", e.to_string()))?;
        match &status.backend_state {
            BackendState::Running => Ok(status),
            state => Err(Stop::waiting(
                "TailscaleNotRunning",
                format!(
                    "tailscaled is {}, not Running: bring the node onto the tailnet \
                     (`tailroute join`, or `tailscale up`){}",
                    state.as_str(),
                    if status.auth_url.is_empty() {
                        String::new()
                    } else {
                        format!("; it waits for a login at {}", status.auth_url)
                    }
                ),
            )),
        }
    }

    async fn advertise(
        &mut self,
        view: &ClusterView,
        pod_cidrs: &[IpNet],
    ) -> Result<Vec<IpNet>, Stop> {
        let outcome = self.advertiser.ensure(pod_cidrs).await.map_err(|e| {
            Stop::failed(
                "localapi",
                "RouteNotAdvertised",
                format!("cannot advertise the pod route: {e}"),
            )
        })?;
        if outcome.changed() {
            self.metrics.prefs_edits.inc();
        }
        if !outcome.added.is_empty() {
            let note = format!(
                "advertised pod route {} on the tailnet",
                join(&outcome.added)
            );
            tracing::info!(routes = %join(&outcome.added), "advertised pod route");
            self.event(view, false, "RouteAdvertised", note).await;
        }
        if !outcome.withdrawn.is_empty() {
            let note = format!("withdrew the old pod route {}", join(&outcome.withdrawn));
            tracing::info!(routes = %join(&outcome.withdrawn), "withdrew old pod route");
            self.event(view, false, "RouteWithdrawn", note).await;
        }
        if !outcome.fixed.is_empty() && outcome.added.is_empty() {
            // Routes already in place but a subnet-router pref was off:
            // someone ran `tailscale up --reset` or `tailscale set`.
            let note =
                format!(
                "tailscaled's {} {} off; turned back on (a subnet router of pod routes needs them)",
                outcome.fixed.join(", "),
                if outcome.fixed.len() == 1 { "was" } else { "were" }
            );
            tracing::warn!(prefs = %outcome.fixed.join(","), "restored tailscaled prefs");
            self.event(view, true, "TailscalePrefsRestored", note).await;
        }
        Ok(outcome.advertised)
    }

    async fn apply_datapath(&self, view: &ClusterView, pod_cidrs: &[IpNet]) -> Result<(), Stop> {
        let mut node_ips: Vec<IpAddr> = view
            .nodes
            .iter()
            .flat_map(peers::tailnet_addresses)
            .collect();
        node_ips.sort();
        node_ips.dedup();
        let spec = DatapathSpec {
            bridge: self.config.bridge.clone(),
            tailnet_iface: self.config.tailnet_interface.clone(),
            node_pod_cidrs: pod_cidrs.to_vec(),
            cluster_pod_cidrs: self.config.cluster_pod_cidrs.clone(),
            service_cidrs: self.config.service_cidrs.clone(),
            cluster_node_tailnet_ips: node_ips,
        };
        let changes = self.network.apply(&spec).await.map_err(|e| {
            Stop::failed(
                "datapath",
                "DatapathNotReady",
                format!("cannot set up the node datapath: {e}"),
            )
        })?;
        if !changes.is_empty() {
            self.metrics.datapath_changes.inc();
            tracing::info!(changes = %changes.join("; "), "datapath updated");
        }
        Ok(())
    }

    async fn pod_mtu(&self) -> Result<u32, Stop> {
        if let Some(mtu) = self.config.mtu_override {
            return Ok(mtu);
        }
        let interface = &self.config.tailnet_interface;
        self.network.mtu(interface).await.map_err(|e| {
            Stop::failed(
                "datapath",
                "NoTailnetInterface",
                format!(
                    "cannot read the MTU of {interface}: {e}; tailscaled must run with a kernel \
                     TUN device (not --tun=userspace-networking)"
                ),
            )
        })
    }

    async fn write_conflist(
        &self,
        view: &ClusterView,
        pod_cidrs: &[IpNet],
        mtu: u32,
    ) -> Result<(), Stop> {
        let spec = ConflistSpec {
            bridge: self.config.bridge.clone(),
            mtu,
            pod_cidrs: pod_cidrs.to_vec(),
            data_dir: self.config.bridge_data_dir.clone(),
            portmap: self.config.chain_portmap(),
        };
        let path = self.config.conflist_path();
        let changed = conflist::write(&path, &spec).map_err(|e| {
            Stop::failed(
                "conflist",
                "ConflistNotWritten",
                format!("cannot write the CNI config {}: {e}", path.display()),
            )
        })?;
        if changed {
            self.metrics.conflist_writes.inc();
            tracing::info!(path = %path.display(), mtu, "wrote CNI config");
            let note = format!(
                "wrote {} for pod network {} (MTU {mtu})",
                path.display(),
                join(pod_cidrs)
            );
            self.event(view, false, "CNIConfigWritten", note).await;
        }
        Ok(())
    }

    async fn ensure_approved(
        &mut self,
        view: &ClusterView,
        status: &Status,
        pod_cidrs: &[IpNet],
    ) -> Result<Vec<IpNet>, Stop> {
        let mut in_netmap = approved_in_netmap(status, pod_cidrs);
        // Peers' witness is the best a node without a credential has; it can
        // lag a withdrawal by one of their passes, so with a credential the
        // API, which knows, is asked instead.
        if self.approver.is_none() {
            for route in witnessed_by_others(&view.nodes, &self.config.node_name, pod_cidrs) {
                if !in_netmap.contains(&route) {
                    in_netmap.push(route);
                }
            }
        }
        let approved_now = |api: &BTreeMap<IpNet, Instant>| -> Vec<IpNet> {
            pod_cidrs
                .iter()
                .filter(|c| in_netmap.contains(c) || api.contains_key(c))
                .copied()
                .collect()
        };
        // Once the netmap shows a route, the API's word is no longer needed;
        // and it is asked again after a while, in case someone revoked the
        // approval since.
        self.api_approved.retain(|r, at| {
            pod_cidrs.contains(r) && !in_netmap.contains(r) && at.elapsed() < API_WORD_TRUSTED
        });
        let approved = approved_now(&self.api_approved);
        let missing: Vec<IpNet> = pod_cidrs
            .iter()
            .filter(|c| !approved.contains(c))
            .copied()
            .collect();
        if missing.is_empty() {
            return Ok(approved);
        }
        let config = &self.config;
        let Some(approver) = &self.approver else {
            return Err(Stop::waiting(
                "RouteNotApproved",
                not_approved_message(
                    &missing,
                    &config.cluster_pod_cidrs,
                    &config.node_tag,
                    "no API credential is configured, so the agent cannot approve it",
                ),
            ));
        };
        let node_key = status
            .self_node
            .as_ref()
            .map(|s| s.public_key.clone())
            .unwrap_or_default();
        let result = approver
            .approve(&node_key, &status.tailscale_ips, &missing)
            .await;
        let label = |kind: &str| crate::metrics::KindLabel {
            kind: kind.to_owned(),
        };
        match result {
            Ok(now_approved) => {
                self.metrics
                    .approval_api_calls
                    .get_or_create(&label("ok"))
                    .inc();
                let newly: Vec<IpNet> = missing
                    .iter()
                    .filter(|m| now_approved.contains(m))
                    .copied()
                    .collect();
                let now = Instant::now();
                self.api_approved.extend(newly.iter().map(|r| (*r, now)));
                if !newly.is_empty() {
                    tracing::info!(routes = %join(&newly), "approved pod route through the control plane's API");
                    let note = format!(
                        "approved pod route {} through the control plane's API",
                        join(&newly)
                    );
                    self.event(view, false, "RouteApproved", note).await;
                }
                let approved = approved_now(&self.api_approved);
                if approved.len() == pod_cidrs.len() {
                    Ok(approved)
                } else {
                    let still: Vec<IpNet> = missing
                        .into_iter()
                        .filter(|m| !approved.contains(m))
                        .collect();
                    Err(Stop::failed(
                        "approval",
                        "RouteNotApproved",
                        not_approved_message(
                            &still,
                            &config.cluster_pod_cidrs,
                            &config.node_tag,
                            "the control plane's API accepted the approval but does not list it",
                        ),
                    ))
                }
            }
            Err(failure) => {
                self.metrics
                    .approval_api_calls
                    .get_or_create(&label(failure.kind))
                    .inc();
                Err(Stop::failed(
                    "approval",
                    "RouteNotApproved",
                    not_approved_message(
                        &missing,
                        &config.cluster_pod_cidrs,
                        &config.node_tag,
                        &format!("approving it through the API failed: {}", failure.message),
                    ),
                ))
            }
        }
    }

    /// Publishes the pod routes this node sees approved on its peers, so
    /// that their agents learn of their approval even when the control
    /// plane is slow to tell them (see [`crate::approval`]).
    async fn witness(&self, view: &ClusterView, status: &Status) {
        let seen = witness_value(&witnessed_on_peers(status, &self.config.cluster_pod_cidrs));
        if let Err(e) = self
            .reporter
            .set_annotation(&view.own, WITNESS_ANNOTATION, &seen)
            .await
        {
            self.metrics.error("kubernetes");
            tracing::warn!(error = %e, "cannot annotate the Node with the peer routes it sees");
        }
    }

    async fn assess_peers(&self, view: &ClusterView, status: &Status) -> Vec<PeerReport> {
        let mut kernel = BTreeMap::new();
        for node in &view.nodes {
            if node.metadata.name.as_deref() == Some(self.config.node_name.as_str()) {
                continue;
            }
            for cidr in peers::pod_cidrs(node) {
                let via = match self
                    .network
                    .route_interface(peers::probe_address(&cidr))
                    .await
                {
                    Ok(via) => via,
                    Err(e) => {
                        tracing::debug!(%cidr, error = %e, "route lookup failed");
                        None
                    }
                };
                kernel.insert(cidr, via);
            }
        }
        peers::assess(
            &self.config.node_name,
            &view.nodes,
            status,
            &self.config.tailnet_interface,
            &kernel,
        )
    }

    async fn publish(&mut self, view: &ClusterView, condition: &NetworkCondition) {
        match self.reporter.set_condition(&view.own, condition).await {
            Ok(true) => tracing::info!(
                unavailable = condition.unavailable,
                reason = %condition.reason,
                message = %condition.message,
                "NetworkUnavailable updated"
            ),
            Ok(false) => {}
            Err(e) => {
                self.metrics.error("kubernetes");
                tracing::warn!(error = %e, "cannot update the Node's NetworkUnavailable condition");
            }
        }
        let changed = self.last.as_ref().is_none_or(|last| {
            last.reason != condition.reason || last.unavailable != condition.unavailable
        });
        if changed {
            if condition.unavailable {
                tracing::warn!(reason = %condition.reason, "{}", condition.message);
            }
            self.event(
                view,
                condition.unavailable,
                &condition.reason,
                condition.message.clone(),
            )
            .await;
        }
        self.last = Some(condition.clone());
    }

    async fn event(&self, view: &ClusterView, warning: bool, reason: &str, note: String) {
        if let Err(e) = self.reporter.event(&view.own, warning, reason, note).await {
            self.metrics.error("kubernetes");
            tracing::warn!(error = %e, reason, "cannot publish an Event on the Node");
        }
    }

    fn record_metrics(&self, report: &NodeReport, outcome: Outcome, started: Instant) {
        let m = &self.metrics;
        m.reconciles.get_or_create(&OutcomeLabel { outcome }).inc();
        m.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        m.routes_advertised.set(count(&report.advertised));
        m.routes_approved.set(count(&report.approved));
        m.network_unavailable
            .set(i64::from(report.network_unavailable));
        m.peers_total.set(count(&report.peers));
        m.peers_reachable.set(count(
            &report
                .peers
                .iter()
                .filter(|p| p.reachable())
                .collect::<Vec<_>>(),
        ));
        for peer in &report.peers {
            m.peer_reachable
                .get_or_create(&PeerLabel {
                    node: peer.node.clone(),
                })
                .set(i64::from(peer.reachable()));
        }
        if let Some(mtu) = report.mtu {
            m.pod_mtu.set(i64::from(mtu));
        }
    }
}

fn count<T>(items: &[T]) -> i64 {
    i64::try_from(items.len()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
