//! What the agent tells Kubernetes about the node: the `NetworkUnavailable`
//! condition and Events on the Node.
//!
//! The condition is what the node lifecycle controller reads (True taints
//! the node `node.kubernetes.io/network-unavailable`, so no new pods land
//! where they could not talk to the rest of the cluster); its message is the
//! operator's first clue, so it carries the remedy. It is patched only when
//! its status, reason or message changes: a steady node costs no writes.
//! Conditions merge by `type` in a strategic-merge patch, so the kubelet's
//! own conditions are never touched.

use k8s_openapi::api::core::v1::{Node, NodeCondition, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use serde_json::json;

/// The condition type the agent owns.
pub const CONDITION_TYPE: &str = "NetworkUnavailable";
/// The reason when everything is in place.
pub const REASON_UP: &str = "TailrouteIsUp";
/// The name Events and patches are reported under.
pub const MANAGER: &str = "tailroute-agent";

/// The agent's verdict on the node's pod network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkCondition {
    /// True when pods on this node cannot (yet) reach the cluster.
    pub unavailable: bool,
    /// A CamelCase reason (`TailrouteIsUp`, `RouteNotApproved`, ...).
    pub reason: String,
    /// What is wrong and what to do, or what is in place.
    pub message: String,
}

impl NetworkCondition {
    /// Everything in place.
    pub fn up(message: impl Into<String>) -> NetworkCondition {
        NetworkCondition {
            unavailable: false,
            reason: REASON_UP.to_owned(),
            message: message.into(),
        }
    }

    /// Something is missing; `reason` says what, `message` how to fix it.
    pub fn down(reason: &str, message: impl Into<String>) -> NetworkCondition {
        NetworkCondition {
            unavailable: true,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }

    fn status(&self) -> &'static str {
        if self.unavailable {
            "True"
        } else {
            "False"
        }
    }

    /// Whether the Node already shows exactly this condition.
    pub fn is_shown_on(&self, node: &Node) -> bool {
        current(node).is_some_and(|c| {
            c.status == self.status()
                && c.reason.as_deref() == Some(self.reason.as_str())
                && c.message.as_deref() == Some(self.message.as_str())
        })
    }
}

fn current(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION_TYPE))
}

/// Writes the condition and Events for one Node.
#[derive(Clone)]
pub struct NodeReporter {
    nodes: Api<Node>,
    recorder: Recorder,
    node_name: String,
}

impl NodeReporter {
    /// A reporter for `node_name`, through `client`.
    pub fn new(client: Client, node_name: &str) -> NodeReporter {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: Some(format!("{MANAGER}-{node_name}")),
        };
        NodeReporter {
            nodes: Api::all(client.clone()),
            recorder: Recorder::new(client, reporter),
            node_name: node_name.to_owned(),
        }
    }

    /// Sets the condition on `node` unless it is already shown. Returns
    /// whether a patch was sent.
    pub async fn set_condition(
        &self,
        node: &Node,
        condition: &NetworkCondition,
    ) -> Result<bool, kube::Error> {
        if condition.is_shown_on(node) {
            return Ok(false);
        }
        let now = Time(Timestamp::now());
        // The transition time moves only when the status flips, as
        // Kubernetes conditions promise.
        let transition = match current(node) {
            Some(c) if c.status == condition.status() => c
                .last_transition_time
                .clone()
                .unwrap_or_else(|| now.clone()),
            _ => now.clone(),
        };
        let patch = json!({
            "status": {
                "conditions": [{
                    "type": CONDITION_TYPE,
                    "status": condition.status(),
                    "reason": condition.reason,
                    "message": condition.message,
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": transition,
                }]
            }
        });
        self.nodes
            .patch_status(
                &self.node_name,
                &PatchParams::apply(MANAGER),
                &Patch::Strategic(patch),
            )
            .await?;
        Ok(true)
    }

    /// Sets an annotation on the Node unless it already has this value.
    /// Returns whether a patch was sent.
    pub async fn set_annotation(
        &self,
        node: &Node,
        key: &str,
        value: &str,
    ) -> Result<bool, kube::Error> {
        let current = node.metadata.annotations.as_ref().and_then(|a| a.get(key));
        if current.map(String::as_str) == Some(value) {
            return Ok(false);
        }
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.nodes
            .patch(
                &self.node_name,
                &PatchParams::apply(MANAGER),
                &Patch::Merge(patch),
            )
            .await?;
        Ok(true)
    }

    /// Publishes an Event on the Node. Repeats of the same reason and note
    /// become one Event with a growing count.
    pub async fn event(
        &self,
        node: &Node,
        warning: bool,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        self.event_on(&node_reference(node), warning, reason, note)
            .await
    }

    /// Publishes an Event on any object (a deleted Node's pods, say).
    pub async fn event_on(
        &self,
        reference: &ObjectReference,
        warning: bool,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(truncate(note, 1024)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        self.recorder.publish(&event, reference).await
    }
}

/// A reference to a Node for Events: cluster-scoped, so Events land in
/// `default`, where `kubectl describe node` looks.
pub fn node_reference(node: &Node) -> ObjectReference {
    let mut reference = node.object_ref(&());
    // kubelet files node Events under the node's name as uid; kubectl
    // matches either.
    if reference.uid.is_none() {
        reference.uid = Some(node.meta().name.clone().unwrap_or_default());
    }
    reference
}

fn truncate(mut note: String, max: usize) -> String {
    if note.len() > max {
        let mut cut = max;
        while !note.is_char_boundary(cut) {
            cut -= 1;
        }
        note.truncate(cut);
    }
    note
}
