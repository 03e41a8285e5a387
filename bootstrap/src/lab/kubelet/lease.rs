//! The node's Lease in `kube-node-lease`: the cheap heartbeat that the node
//! lifecycle controller watches to decide whether a node is alive.
//!
//! As a real kubelet, the lab kubelet holds a Lease named after its node,
//! owned by the Node (so it goes when the Node is deleted), and renews it
//! well within `leaseDurationSeconds`.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

/// Where node leases live.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// How long a renewal holds, as a kubelet's default
/// `--node-lease-duration-seconds`.
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// The Lease of one node.
#[derive(Debug, Clone)]
pub struct NodeLease {
    api: Api<Lease>,
    node_name: String,
    node_uid: String,
}

impl NodeLease {
    /// The Lease of Node `node_name` (UID `node_uid`, its owner).
    pub fn new(client: Client, node_name: &str, node_uid: &str) -> NodeLease {
        NodeLease {
            api: Api::namespaced(client, NODE_LEASE_NAMESPACE),
            node_name: node_name.to_owned(),
            node_uid: node_uid.to_owned(),
        }
    }

    /// Renews the Lease, creating it if it does not exist.
    pub async fn renew(&self) -> Result<(), kube::Error> {
        let spec = self.spec(Timestamp::now());
        let renewed = self
            .api
            .patch(
                &self.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": spec })),
            )
            .await;
        match renewed {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                let lease: Lease = serde_json::from_value(json!({
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {
                        "name": self.node_name,
                        "namespace": NODE_LEASE_NAMESPACE,
                        "ownerReferences": [{
                            "apiVersion": "v1",
                            "kind": "Node",
                            "name": self.node_name,
                            "uid": self.node_uid,
                        }],
                    },
                    "spec": spec,
                }))
                .map_err(kube::Error::SerdeError)?;
                self.api.create(&PostParams::default(), &lease).await?;
                tracing::info!(node = %self.node_name, "created the node Lease");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: Timestamp) -> Value {
        json!({
            "holderIdentity": self.node_name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": serde_json::to_value(MicroTime(now)).unwrap_or(Value::Null),
        })
    }
}
