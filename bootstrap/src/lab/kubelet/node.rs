//! The Node object: registering it and keeping its status fresh.
//!
//! Only what a real kubelet may do under the Node authorizer and
//! `NodeRestriction` is done: create its own Node (with only the labels a
//! kubelet may set on itself), read it, and patch `nodes/status`.
//!
//! The lab node always reports `Ready`. A real kubelet reports `NotReady`
//! while the container runtime has no CNI config, and kube-scheduler then
//! places no pods on it. The lab kubelet deliberately stays Ready so that
//! pods are scheduled and wait on the node instead (Pending with
//! `NetworkNotReady`), which is exactly what the lab wants to show while
//! tailroute-agent has not yet written the conflist.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

/// Pods a lab node takes, as a kubelet's default `--max-pods`.
const MAX_PODS: &str = "110";

/// The kubelet version reported: the control plane's minor, marked as the
/// lab's (build metadata keeps it a valid, non-prerelease semver).
pub const KUBELET_VERSION: &str = "v1.35.0+tailroute-lab";

/// The Node of this kubelet.
#[derive(Debug, Clone)]
pub struct NodeRegistration {
    api: Api<Node>,
    name: String,
    ips: Vec<IpAddr>,
    host: HostFacts,
    /// When `Ready` turned True: kept across heartbeats.
    ready_since: Timestamp,
}

/// Facts about the machine, read once.
#[derive(Debug, Clone, PartialEq)]
struct HostFacts {
    cpus: usize,
    memory_kib: u64,
    machine_id: String,
    system_uuid: String,
    boot_id: String,
    kernel_version: String,
    os_image: String,
}

impl NodeRegistration {
    /// The Node `name` with addresses `ips`.
    pub fn new(client: Client, name: &str, ips: &[IpAddr]) -> NodeRegistration {
        NodeRegistration {
            api: Api::all(client),
            name: name.to_owned(),
            ips: ips.to_vec(),
            host: HostFacts::read(),
            ready_since: Timestamp::now(),
        }
    }

    /// The Node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Creates the Node if it does not exist, then reports its full status.
    /// Returns the Node's UID (the Lease's owner).
    pub async fn register(&mut self) -> Result<String, kube::Error> {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels()},
        }))
        .map_err(kube::Error::SerdeError)?;
        let node = match self.api.create(&PostParams::default(), &node).await {
            Ok(node) => {
                tracing::info!(node = %self.name, "registered the Node");
                node
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let node = self.api.get(&self.name).await?;
                tracing::info!(node = %self.name, "the Node exists already; taking it over");
                node
            }
            Err(e) => return Err(e),
        };
        // A Ready condition that is already True keeps its transition time.
        if let Some(since) = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .and_then(|c| c.last_transition_time.clone())
        {
            self.ready_since = since.0;
        }
        self.heartbeat().await?;
        Ok(node.metadata.uid.unwrap_or_default())
    }

    /// Patches the Node's full status with fresh heartbeat times.
    pub async fn heartbeat(&self) -> Result<(), kube::Error> {
        let patch = node_status(
            &self.name,
            &self.ips,
            &self.host,
            self.ready_since,
            Timestamp::now(),
        );
        self.api
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await?;
        Ok(())
    }

    /// The labels a kubelet sets on its own Node (all allowed by
    /// `NodeRestriction`).
    fn labels(&self) -> Value {
        json!({
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": go_arch(),
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": go_arch(),
        })
    }
}

/// The `nodes/status` patch of Node `name`, Ready since `ready_since`, at
/// `now`.
fn node_status(
    name: &str,
    ips: &[IpAddr],
    host: &HostFacts,
    ready_since: Timestamp,
    now: Timestamp,
) -> Value {
    let now = time(now);
    let since = time(ready_since);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": since,
        })
    };
    let mut addresses: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": name}));
    // Addresses merge by `type`, which two InternalIPs share: the list
    // is replaced whole instead.
    addresses.push(json!({"$patch": "replace"}));
    let resources = json!({
        "cpu": host.cpus.to_string(),
        "memory": format!("{}Ki", host.memory_kib),
        "pods": MAX_PODS,
    });
    json!({
        "status": {
            "addresses": addresses,
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory",
                          "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure",
                          "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID",
                          "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady",
                          "kubelet is posting ready status"),
            ],
            "nodeInfo": {
                "machineID": host.machine_id,
                "systemUUID": host.system_uuid,
                "bootID": host.boot_id,
                "kernelVersion": host.kernel_version,
                "osImage": host.os_image,
                "containerRuntimeVersion": concat!("tailroute-lab://", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": go_arch(),
            },
        }
    })
}

impl HostFacts {
    fn read() -> HostFacts {
        let first_line = |path: &str| {
            std::fs::read_to_string(path)
                .map(|s| s.lines().next().unwrap_or_default().trim().to_owned())
                .unwrap_or_default()
        };
        HostFacts {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_kib: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total_kib(&m))
                .unwrap_or(0),
            machine_id: first_line("/etc/machine-id"),
            system_uuid: first_line("/sys/class/dmi/id/product_uuid"),
            boot_id: first_line("/proc/sys/kernel/random/boot_id"),
            kernel_version: first_line("/proc/sys/kernel/osrelease"),
            os_image: std::fs::read_to_string("/etc/os-release")
                .ok()
                .and_then(|r| pretty_name(&r))
                .unwrap_or_else(|| "Linux".to_owned()),
        }
    }
}

/// `MemTotal` of `/proc/meminfo`, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `PRETTY_NAME` of `/etc/os-release`, unquoted.
fn pretty_name(os_release: &str) -> Option<String> {
    let value = os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    Some(value.trim().trim_matches('"').to_owned())
}

/// The architecture as Go (and so Kubernetes) names it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A timestamp as the API writes it.
fn time(at: Timestamp) -> Value {
    serde_json::to_value(Time(at)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_reports_ready_with_every_address() {
        let host = HostFacts {
            cpus: 2,
            memory_kib: 1024,
            machine_id: "m".into(),
            system_uuid: "s".into(),
            boot_id: "b".into(),
            kernel_version: "6.1".into(),
            os_image: "Debian".into(),
        };
        let since: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-01-01T00:00:10Z".parse().unwrap();
        let ips: Vec<IpAddr> = vec!["100.64.0.1".parse().unwrap(), "fd7a::1".parse().unwrap()];
        let patch = node_status("n1", &ips, &host, since, now);
        let status = &patch["status"];
        assert_eq!(
            status["addresses"],
            json!([{"type": "InternalIP", "address": "100.64.0.1"},
                   {"type": "InternalIP", "address": "fd7a::1"},
                   {"type": "Hostname", "address": "n1"},
                   {"$patch": "replace"}])
        );
        assert_eq!(
            status["capacity"],
            json!({"cpu": "2", "memory": "1024Ki", "pods": "110"})
        );
        let ready = &status["conditions"][3];
        assert_eq!(ready["type"], "Ready");
        assert_eq!(ready["status"], "True");
        assert_eq!(ready["reason"], "KubeletReady");
        assert_eq!(ready["lastHeartbeatTime"], "2026-01-01T00:00:10Z");
        assert_eq!(ready["lastTransitionTime"], "2026-01-01T00:00:00Z");
        assert_eq!(status["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
    }

    #[test]
    fn host_facts_are_parsed() {
        assert_eq!(
            mem_total_kib("MemTotal:       24570000 kB\nMemFree: 1 kB\n"),
            Some(24_570_000)
        );
        assert_eq!(
            pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n"),
            Some("Debian GNU/Linux 12 (bookworm)".to_owned())
        );
        let facts = HostFacts::read();
        assert!(facts.cpus >= 1 && facts.memory_kib > 0, "{facts:?}");
    }
}
