//! One agent in the cluster acts for all: a `coordination.k8s.io` Lease.
//!
//! Cluster-wide chores (removing the tailnet device of a deleted Node) must
//! be done once, not by every node. The agent that holds the Lease does
//! them. Holding it is renewed on every pass; another agent takes it over
//! only once it has gone unrenewed for its whole duration, and every write
//! carries the Lease's resourceVersion, so two agents can never both
//! believe they won the same round (the loser's write is refused with 409).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

/// The Lease's name.
pub const LEASE_NAME: &str = "tailroute-agent-leader";
/// Where it lives (always there: the apiserver creates it).
pub const LEASE_NAMESPACE: &str = "kube-system";

/// This agent's claim on the Lease.
pub struct LeaderLease {
    leases: Api<Lease>,
    identity: String,
    duration: Duration,
}

impl LeaderLease {
    /// A claim by `identity` (the node name) that lapses after `duration`
    /// without renewal.
    pub fn new(client: Client, identity: &str, duration: Duration) -> LeaderLease {
        LeaderLease {
            leases: Api::namespaced(client, LEASE_NAMESPACE),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// Takes or renews the Lease when possible. Returns whether this agent
    /// leads now.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.leases.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                // Another agent created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let lapsed = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(MicroTime(renewed)), Some(secs)) => {
                *renewed + SignedDuration::from_secs(i64::from(secs)) < now
            }
            _ => true,
        };
        if !mine && !lapsed {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(seconds);
        // `replace` sends the resourceVersion read above: a concurrent
        // winner makes this a 409, and this agent does not lead.
        match self
            .leases
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{ApiCall, MockApiserver};
    use serde_json::json;

    const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

    fn lease(holder: &str, renewed: &str) -> serde_json::Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": LEASE_NAMESPACE, "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 30,
                     "renewTime": renewed, "leaseTransitions": 2},
        })
    }

    #[tokio::test]
    async fn the_first_agent_creates_the_lease_and_leads() {
        let (client, api) = MockApiserver::start(vec![
            ApiCall::new("GET", &format!("{PATH}/{LEASE_NAME}"), json!({})).status(404),
            ApiCall::new("POST", PATH, lease("n1", "2026-11-21T10:00:00Z")).body(|b| {
                assert_eq!(b["spec"]["holderIdentity"], "n1");
                assert_eq!(b["spec"]["leaseDurationSeconds"], 30);
            }),
        ]);
        let lead = LeaderLease::new(client, "n1", Duration::from_secs(30));
        assert!(lead.try_lead().await.expect("lead"));
        api.finish();
    }

    #[tokio::test]
    async fn a_live_holder_keeps_it_and_a_lapsed_one_loses_it() {
        let fresh = Timestamp::now().to_string();
        let (client, api) = MockApiserver::start(vec![
            ApiCall::new("GET", &format!("{PATH}/{LEASE_NAME}"), lease("n2", &fresh)),
            ApiCall::new(
                "GET",
                &format!("{PATH}/{LEASE_NAME}"),
                lease("n2", "2026-01-01T00:00:00Z"),
            ),
            ApiCall::new("PUT", &format!("{PATH}/{LEASE_NAME}"), lease("n1", &fresh)).body(|b| {
                assert_eq!(b["spec"]["holderIdentity"], "n1");
                assert_eq!(b["spec"]["leaseTransitions"], 3);
                assert_eq!(b["metadata"]["resourceVersion"], "7");
            }),
        ]);
        let lead = LeaderLease::new(client, "n1", Duration::from_secs(30));
        assert!(
            !lead.try_lead().await.expect("n2 holds it"),
            "a live holder keeps it"
        );
        assert!(
            lead.try_lead().await.expect("take over"),
            "a lapsed holder loses it"
        );
        api.finish();
    }
}
