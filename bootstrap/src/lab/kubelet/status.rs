//! What the kubelet reports in `pods/status`: a strategic merge patch built
//! from the pod and what became of its sandbox.
//!
//! Conditions merge by `type`, so conditions other components own (a
//! readiness gate's, `DisruptionTarget`) are kept; the kubelet's own five
//! are always sent together. Address lists are replaced whole
//! (`$patch: replace`): merged by `ip`, a new sandbox's address would sit
//! next to the old one. A condition keeps its `lastTransitionTime` while its
//! status does not change, also across kubelet restarts.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

/// The condition reason while the node's CNI network is not ready.
pub const NETWORK_NOT_READY: &str = "NetworkNotReady";

/// The condition reason after a failed sandbox creation.
pub const FAILED_CREATE_POD_SANDBOX: &str = "FailedCreatePodSandBox";

/// What became of a pod on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodReport {
    /// Not started: the containers wait, and `reason`/`message` say why on
    /// the `PodReadyToStartContainers`, `ContainersReady` and `Ready`
    /// conditions.
    Pending {
        /// A CamelCase reason.
        reason: String,
        /// What an operator reads.
        message: String,
    },
    /// Running: every container is up and ready.
    Running {
        /// The pod's addresses, IPv4 first.
        pod_ips: Vec<IpAddr>,
        /// `lab://<sandbox id>`.
        container_id: String,
        /// When the sandbox started.
        started: Timestamp,
        /// Pod server restarts so far.
        restarts: u32,
    },
}

/// The first readiness gate of `pod` whose condition is not `True`.
pub fn gate_not_true(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .map(|g| g.condition_type.as_str())
        .find(|gate| {
            !pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| c.type_ == *gate && c.status == "True")
        })
}

/// The `pods/status` patch reporting `report` for `pod`, on a node with
/// `node_ips`, at `now`.
pub fn status_patch(pod: &Pod, node_ips: &[IpAddr], report: &PodReport, now: Timestamp) -> Value {
    let running = matches!(report, PodReport::Running { .. });
    let (reason, message) = match report {
        PodReport::Pending { reason, message } => (Some(reason.as_str()), Some(message.as_str())),
        PodReport::Running { .. } => (None, None),
    };
    let condition = |type_: &str, ok: bool, why: bool| {
        let status = if ok { "True" } else { "False" };
        let mut c = json!({
            "type": type_,
            "status": status,
            "lastProbeTime": null,
            "lastTransitionTime": transition_time(pod, type_, status, now),
        });
        if let Some(generation) = pod.metadata.generation {
            c["observedGeneration"] = json!(generation);
        }
        if why && !ok {
            c["reason"] = json!(reason);
            c["message"] = json!(message);
        } else if why {
            // null deletes a reason left from when it was False.
            c["reason"] = Value::Null;
            c["message"] = Value::Null;
        }
        c
    };
    // Ready also waits for every readiness gate's condition, set by its
    // owner (tailroute's agent for `tailroute.dev/identity-ready`), as
    // the real kubelet does (pkg/kubelet/status/generate.go).
    let gate_not_true = gate_not_true(pod);
    let mut ready = condition("Ready", running && gate_not_true.is_none(), true);
    if let (true, Some(gate)) = (running, gate_not_true) {
        ready["reason"] = json!("ReadinessGatesNotReady");
        ready["message"] = json!(format!(
            "the condition of pod readiness gate \"{gate}\" is not True"
        ));
    }
    let conditions = vec![
        condition("PodScheduled", true, false),
        condition("PodReadyToStartContainers", running, true),
        condition("Initialized", true, false),
        condition("ContainersReady", running, true),
        ready,
    ];

    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init_containers = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let container_statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let mut status = container_status(c, running, running);
            match report {
                PodReport::Running {
                    container_id,
                    started,
                    restarts,
                    ..
                } => {
                    status["containerID"] = json!(container_id);
                    status["restartCount"] = json!(restarts);
                    status["state"] = json!({"running": {"startedAt": time(*started)}});
                }
                PodReport::Pending { .. } => {
                    status["state"] = json!({"waiting": {"reason": "ContainerCreating"}});
                }
            }
            status
        })
        .collect();
    // The lab runs no init containers: they count as done the moment the
    // sandbox is up.
    let init_statuses: Vec<Value> = init_containers
        .iter()
        .map(|c| {
            let mut status = container_status(c, running, false);
            match report {
                PodReport::Running {
                    container_id,
                    started,
                    ..
                } => {
                    status["containerID"] = json!(container_id);
                    status["state"] = json!({"terminated": {
                        "exitCode": 0,
                        "reason": "Completed",
                        "startedAt": time(*started),
                        "finishedAt": time(*started),
                    }});
                }
                PodReport::Pending { .. } => {
                    status["state"] = json!({"waiting": {"reason": "PodInitializing"}});
                }
            }
            status
        })
        .collect();

    let host_ips: Vec<Value> = node_ips.iter().map(|ip| json!({"ip": ip})).collect();
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .map(|t| t.0)
        .unwrap_or(now);
    let mut status = json!({
        "phase": if running { "Running" } else { "Pending" },
        "conditions": conditions,
        "hostIP": node_ips.first(),
        "hostIPs": with_replace(host_ips),
        "startTime": time(start_time),
        "containerStatuses": container_statuses,
    });
    if !init_statuses.is_empty() {
        status["initContainerStatuses"] = json!(init_statuses);
    }
    if let Some(generation) = pod.metadata.generation {
        status["observedGeneration"] = json!(generation);
    }
    if let PodReport::Running { pod_ips, .. } = report {
        let ips: Vec<Value> = pod_ips.iter().map(|ip| json!({"ip": ip})).collect();
        status["podIP"] = json!(pod_ips.first());
        status["podIPs"] = with_replace(ips);
    }
    json!({ "status": status })
}

/// `list` with the strategic-merge directive that replaces the whole list.
fn with_replace(mut list: Vec<Value>) -> Value {
    list.push(json!({"$patch": "replace"}));
    Value::Array(list)
}

/// The pod's current `lastTransitionTime` for condition `type_` if its
/// status stays `status`, else `now`.
fn transition_time(pod: &Pod, type_: &str, status: &str, now: Timestamp) -> Value {
    let existing = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    time(existing.map_or(now, |t| t.0))
}

/// A timestamp as the API writes it.
fn time(at: Timestamp) -> Value {
    serde_json::to_value(Time(at)).unwrap_or(Value::Null)
}

/// True if `pod` already carries a `Ready` condition with `reason`: an
/// earlier kubelet reported it (so its Event was already sent).
pub fn has_ready_reason(pod: &Pod, reason: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.reason.as_deref() == Some(reason))
}

/// The fields every container status has; `state` and, once running,
/// `containerID` are added by the caller.
fn container_status(container: &Container, ready: bool, started: bool) -> Value {
    json!({
        "name": container.name,
        "image": container.image.clone().unwrap_or_default(),
        "imageID": "",
        "ready": ready,
        "started": started,
        "restartCount": 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": 1},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "lab/server"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "PodScheduled", "status": "True",
                 "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn now() -> Timestamp {
        "2026-02-02T02:02:02Z".parse().unwrap()
    }

    #[test]
    fn a_running_pod_reports_addresses_and_ready_containers() {
        let node_ips: Vec<IpAddr> = vec!["100.64.0.1".parse().unwrap()];
        let report = PodReport::Running {
            pod_ips: vec!["10.244.1.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            container_id: "lab://abc".into(),
            started: now(),
            restarts: 1,
        };
        let patch = status_patch(&pod(), &node_ips, &report, now());
        let status = &patch["status"];
        assert_eq!(status["phase"], "Running");
        assert_eq!(status["podIP"], "10.244.1.7");
        assert_eq!(
            status["podIPs"],
            json!([{"ip": "10.244.1.7"}, {"ip": "fd00::7"}, {"$patch": "replace"}])
        );
        assert_eq!(status["hostIP"], "100.64.0.1");
        assert_eq!(status["startTime"], "2026-02-02T02:02:02Z");
        let conditions = status["conditions"].as_array().unwrap();
        assert_eq!(conditions.len(), 5);
        assert!(
            conditions.iter().all(|c| c["status"] == "True"),
            "{conditions:?}"
        );
        // PodScheduled was already True: its transition time is kept.
        assert_eq!(conditions[0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(conditions[4]["lastTransitionTime"], "2026-02-02T02:02:02Z");
        assert_eq!(
            status["containerStatuses"],
            json!([{"name": "c", "image": "lab/server", "imageID": "", "ready": true,
                    "started": true, "restartCount": 1, "containerID": "lab://abc",
                    "state": {"running": {"startedAt": "2026-02-02T02:02:02Z"}}}])
        );
    }

    #[test]
    fn a_pending_pod_says_why_on_its_conditions() {
        let report = PodReport::Pending {
            reason: NETWORK_NOT_READY.into(),
            message: "network is not ready: cni config uninitialized".into(),
        };
        let patch = status_patch(&pod(), &[], &report, now());
        let status = &patch["status"];
        assert_eq!(status["phase"], "Pending");
        assert!(status.get("podIP").is_none());
        for c in status["conditions"].as_array().unwrap() {
            match c["type"].as_str().unwrap() {
                "PodScheduled" | "Initialized" => assert_eq!(c["status"], "True"),
                _ => {
                    assert_eq!(c["status"], "False");
                    assert_eq!(c["reason"], NETWORK_NOT_READY);
                    assert_eq!(
                        c["message"],
                        "network is not ready: cni config uninitialized"
                    );
                }
            }
        }
        assert_eq!(
            status["containerStatuses"][0]["state"],
            json!({"waiting": {"reason": "ContainerCreating"}})
        );
    }

    #[test]
    fn ready_waits_for_every_readiness_gate() {
        let mut pod = pod();
        pod.spec.as_mut().unwrap().readiness_gates =
            Some(vec![k8s_openapi::api::core::v1::PodReadinessGate {
                condition_type: "tailroute.dev/identity-ready".into(),
            }]);
        let report = PodReport::Running {
            pod_ips: vec!["10.244.1.7".parse().unwrap()],
            container_id: "lab://abc".into(),
            started: now(),
            restarts: 0,
        };
        let ready = |pod: &Pod| {
            let patch = status_patch(pod, &[], &report, now());
            patch["status"]["conditions"][4].clone()
        };
        let waiting = ready(&pod);
        assert_eq!(waiting["status"], "False");
        assert_eq!(waiting["reason"], "ReadinessGatesNotReady");
        assert_eq!(gate_not_true(&pod), Some("tailroute.dev/identity-ready"));
        let conditions = pod.status.as_mut().unwrap().conditions.as_mut().unwrap();
        conditions.push(
            serde_json::from_value(json!(
                {"type": "tailroute.dev/identity-ready", "status": "True"}
            ))
            .unwrap(),
        );
        let now_ready = ready(&pod);
        assert_eq!(now_ready["status"], "True");
        assert_eq!(now_ready["reason"], Value::Null);
        assert_eq!(gate_not_true(&pod), None);
    }
}
