//! The agent's Prometheus metrics, all prefixed `tailroute_`.
//!
//! The classic silent failure of a subnet router is "advertised minus
//! approved > 0", so both counts are gauges of their own; the rest says
//! whether the node's peers are reachable, how reconciles go, and which
//! kinds of errors happen (labels are the error kinds, a small fixed set).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// How a reconcile ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// Everything in place.
    Ok,
    /// Something is not in place (the condition says what).
    Degraded,
    /// A step failed.
    Error,
}

/// Label set for [`Metrics::reconciles`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// How it ended.
    pub outcome: Outcome,
}

/// Label set for per-kind counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// A fixed, small vocabulary (`localapi`, `kubernetes`, `datapath`, ...).
    pub kind: String,
}

/// Label set for per-peer gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's Kubernetes node name.
    pub node: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// This node's pod routes present in AdvertiseRoutes.
    pub routes_advertised: Gauge,
    /// This node's pod routes the control plane approved.
    pub routes_approved: Gauge,
    /// 1 while the node's NetworkUnavailable condition is True.
    pub network_unavailable: Gauge,
    /// Other cluster nodes whose pod routes are reachable.
    pub peers_reachable: Gauge,
    /// Other cluster nodes with a pod CIDR.
    pub peers_total: Gauge,
    /// 1 per peer that is reachable, 0 otherwise.
    pub peer_reachable: Family<PeerLabel, Gauge>,
    /// Reconciles by outcome.
    pub reconciles: Family<OutcomeLabel, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Errors by kind.
    pub errors: Family<KindLabel, Counter>,
    /// Calls to the control plane's approval API, by result.
    pub approval_api_calls: Family<KindLabel, Counter>,
    /// Prefs edits sent to tailscaled.
    pub prefs_edits: Counter,
    /// Times the nftables table or a sysctl had to be changed.
    pub datapath_changes: Counter,
    /// Times the conflist was written.
    pub conflist_writes: Counter,
    /// The tailnet interface's MTU, as written into the conflist.
    pub pod_mtu: Gauge,
    /// 1 while this agent holds the leader Lease.
    pub leader: Gauge,
    /// Deleted Nodes handled by the leader, by what became of their device.
    pub departed_nodes: Family<KindLabel, Counter>,
    /// Identities of deleted Nodes' pods handled by the leader, by what
    /// became of their device.
    pub departed_identities: Family<KindLabel, Counter>,
    /// Identity pods on this node by state (`ready`, `pending`, `failed`,
    /// `refused`).
    pub identities: Family<KindLabel, Gauge>,
    /// Identity lifecycle events (`started`, `adopted`, `joined`,
    /// `removed`, `remove_failed`).
    pub identity_events: Family<KindLabel, Counter>,
    /// Seconds from a pod's creation to its identity being ready (first
    /// time only).
    pub identity_ready_seconds: Histogram,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tailroute");
        let metrics = Metrics {
            routes_advertised: Gauge::default(),
            routes_approved: Gauge::default(),
            network_unavailable: Gauge::default(),
            peers_reachable: Gauge::default(),
            peers_total: Gauge::default(),
            peer_reachable: Family::default(),
            reconciles: Family::default(),
            reconcile_duration: Histogram::new([
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            errors: Family::default(),
            approval_api_calls: Family::default(),
            prefs_edits: Counter::default(),
            datapath_changes: Counter::default(),
            conflist_writes: Counter::default(),
            pod_mtu: Gauge::default(),
            leader: Gauge::default(),
            departed_nodes: Family::default(),
            departed_identities: Family::default(),
            identities: Family::default(),
            identity_events: Family::default(),
            identity_ready_seconds: Histogram::new([
                0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0,
            ]),
            registry: Registry::default(),
        };
        registry.register(
            "routes_advertised",
            "This node's pod routes present in tailscaled's AdvertiseRoutes",
            metrics.routes_advertised.clone(),
        );
        registry.register(
            "routes_approved",
            "This node's pod routes the control plane approved (advertised minus approved > 0 means traffic cannot flow)",
            metrics.routes_approved.clone(),
        );
        registry.register(
            "network_unavailable",
            "1 while the Node's NetworkUnavailable condition is True",
            metrics.network_unavailable.clone(),
        );
        registry.register(
            "peers_reachable",
            "Other cluster nodes whose pod routes are approved, online and routed through the tailnet",
            metrics.peers_reachable.clone(),
        );
        registry.register(
            "peers",
            "Other cluster nodes with a pod CIDR",
            metrics.peers_total.clone(),
        );
        registry.register(
            "peer_reachable",
            "1 when the peer node's pod routes are reachable through the tailnet",
            metrics.peer_reachable.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by outcome",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took",
            metrics.reconcile_duration.clone(),
        );
        registry.register("errors", "Errors by kind", metrics.errors.clone());
        registry.register(
            "approval_api_calls",
            "Calls to the control plane's API to approve routes, by result",
            metrics.approval_api_calls.clone(),
        );
        registry.register(
            "prefs_edits",
            "Edits of tailscaled's prefs (advertised routes, accept routes, SNAT, stateful filtering)",
            metrics.prefs_edits.clone(),
        );
        registry.register(
            "datapath_changes",
            "Changes to the agent's nftables table or the forwarding sysctls",
            metrics.datapath_changes.clone(),
        );
        registry.register(
            "conflist_writes",
            "Writes of the CNI conflist",
            metrics.conflist_writes.clone(),
        );
        registry.register(
            "pod_mtu",
            "The pod interface MTU written into the conflist",
            metrics.pod_mtu.clone(),
        );
        registry.register(
            "leader",
            "1 while this agent holds the leader Lease (it cleans up after deleted Nodes)",
            metrics.leader.clone(),
        );
        registry.register(
            "departed_nodes",
            "Deleted Nodes handled by the leader, by what became of their tailnet device",
            metrics.departed_nodes.clone(),
        );
        registry.register(
            "departed_identities",
            "Tailnet identities of deleted Nodes' pods handled by the leader, by what became \
             of their device",
            metrics.departed_identities.clone(),
        );
        registry.register(
            "identities",
            "Identity pods on this node by state: ready, pending, failed, refused",
            metrics.identities.clone(),
        );
        registry.register(
            "identity_events",
            "Identity lifecycle events: started, adopted, joined, removed, remove_failed",
            metrics.identity_events.clone(),
        );
        registry.register(
            "identity_ready_seconds",
            "Seconds from an identity pod's creation to its identity being ready",
            metrics.identity_ready_seconds.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_prefixed_and_rendered() {
        let metrics = Metrics::new();
        metrics.routes_advertised.set(1);
        metrics.error("localapi");
        metrics
            .reconciles
            .get_or_create(&OutcomeLabel {
                outcome: Outcome::Ok,
            })
            .inc();
        let text = metrics.render();
        assert!(text.contains("tailroute_routes_advertised 1"), "{text}");
        assert!(
            text.contains("tailroute_errors_total{kind=\"localapi\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tailroute_reconciles_total{outcome=\"Ok\"} 1"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("tailroute_"), "unprefixed: {line}");
        }
    }
}
