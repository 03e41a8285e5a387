//! Pod sync: bringing the sandboxes on this node in line with the pods the
//! API server binds to it.
//!
//! The pods come from a watch with `fieldSelector=spec.nodeName=<node>`
//! (the only pod list the Node authorizer allows a node). The sandboxes
//! come from the records in the state dir. Every pod or record is synced
//! when its watch event arrives and again every second, which is also how a
//! new CNI config is noticed. Nothing is torn down before the first full
//! listing has arrived: until then, a record without a pod may only mean
//! the pod has not been listed yet.
//!
//! Work is done one pod at a time. A lab node runs a handful of pods and a
//! CNI call takes milliseconds, so this keeps the state simple (one owner,
//! no locks) at no visible cost; a plugin that hangs is killed after its
//! timeout.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{json, Map, Value};

use super::cni::{self, NetworkConfig, NetworkNotReady};
use super::record::{PodRef, SandboxRecord};
use super::sandbox::PodRuntime;
use super::status::{self, PodReport, FAILED_CREATE_POD_SANDBOX, NETWORK_NOT_READY};

/// How often every pod is synced again without a watch event.
const RESYNC: Duration = Duration::from_secs(1);

/// The first retry delay after a failed sandbox creation or teardown;
/// doubled after every further failure, up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The longest retry delay.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// How long after asking for a pod's final deletion the kubelet asks again
/// if the pod is still there (e.g. held by a finalizer).
const DELETE_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// An Event's note is at most 1 kB.
const MAX_EVENT_NOTE: usize = 1024;

/// The pod side of the kubelet.
pub struct PodSync {
    client: Client,
    node_name: String,
    node_ips: Vec<IpAddr>,
    cni_conf_dir: PathBuf,
    runtime: PodRuntime,
    recorder: Recorder,
    /// The pods bound to this node, by UID, as the watch last said.
    pods: HashMap<String, Pod>,
    /// The sandboxes that exist or may exist half-made, by pod UID.
    sandboxes: HashMap<String, SandboxRecord>,
    /// What the kubelet remembers about each pod between syncs.
    states: HashMap<String, PodState>,
}

/// Per-pod memory of the sync loop.
#[derive(Debug, Default)]
struct PodState {
    /// The last status the API server accepted.
    /// The last report patched, and whether the pod's readiness gates
    /// were all True then (a gate's owner changing its condition makes
    /// Ready change too).
    reported: Option<(PodReport, bool)>,
    /// The `NetworkNotReady` Event has been sent for this pod.
    network_event_sent: bool,
    /// When the next sandbox creation or teardown may be tried.
    retry: Backoff,
    /// When the pod's final deletion was last asked for.
    deleted_at: Option<Instant>,
}

/// Exponential retry delays.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    not_before: Option<Instant>,
}

impl Backoff {
    fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// Records a failure; returns the delay before the next try.
    fn failed(&mut self, now: Instant) -> Duration {
        let delay = FIRST_RETRY_DELAY
            .saturating_mul(1u32 << self.failures.min(16))
            .min(MAX_RETRY_DELAY);
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + delay);
        delay
    }

    fn succeeded(&mut self) {
        *self = Backoff::default();
    }
}

impl PodSync {
    /// The pod sync of node `node_name`; `records` are the sandboxes found
    /// in the state dir at start.
    pub fn new(
        client: Client,
        node_name: &str,
        node_ips: &[IpAddr],
        cni_conf_dir: PathBuf,
        runtime: PodRuntime,
        records: Vec<SandboxRecord>,
    ) -> PodSync {
        let reporter = Reporter {
            controller: "kubelet".to_owned(),
            instance: Some(node_name.to_owned()),
        };
        PodSync {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            node_name: node_name.to_owned(),
            node_ips: node_ips.to_vec(),
            cni_conf_dir,
            runtime,
            pods: HashMap::new(),
            sandboxes: records
                .into_iter()
                .map(|r| (r.pod.uid.clone(), r))
                .collect(),
            states: HashMap::new(),
        }
    }

    /// Watches this node's pods and syncs them, forever.
    pub async fn run(mut self) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let config =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.node_name));
        let mut events = watcher(api, config).default_backoff().boxed();
        let mut resync = tokio::time::interval(RESYNC);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listing: Option<HashMap<String, Pod>> = None;
        let mut listed = false;
        loop {
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(event)) => self.on_event(event, &mut listing, &mut listed).await,
                    Some(Err(e)) => tracing::warn!("watching the node's pods: {e}"),
                    None => return,
                },
                _ = resync.tick(), if listed => self.sync_all().await,
            }
        }
    }

    async fn on_event(
        &mut self,
        event: watcher::Event<Pod>,
        listing: &mut Option<HashMap<String, Pod>>,
        listed: &mut bool,
    ) {
        match event {
            watcher::Event::Init => *listing = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => {
                if let (Some(listing), Some(uid)) = (listing.as_mut(), pod.uid()) {
                    listing.insert(uid, pod);
                }
            }
            watcher::Event::InitDone => {
                if let Some(listing) = listing.take() {
                    self.pods = listing;
                }
                if !*listed {
                    *listed = true;
                    tracing::info!(
                        "{} pod(s) bound to this node, {} sandbox record(s) found: reconciling",
                        self.pods.len(),
                        self.sandboxes.len()
                    );
                }
                self.sync_all().await;
            }
            watcher::Event::Apply(pod) => {
                let Some(uid) = pod.uid() else { return };
                self.pods.insert(uid.clone(), pod);
                if *listed {
                    let network = NetworkConfig::load(&self.cni_conf_dir);
                    self.sync_pod(&uid, &network).await;
                }
            }
            watcher::Event::Delete(pod) => {
                let Some(uid) = pod.uid() else { return };
                self.pods.remove(&uid);
                if *listed {
                    let network = NetworkConfig::load(&self.cni_conf_dir);
                    self.sync_pod(&uid, &network).await;
                }
            }
        }
    }

    /// Syncs every pod and every sandbox once.
    async fn sync_all(&mut self) {
        let network = NetworkConfig::load(&self.cni_conf_dir);
        self.runtime.reap();
        let uids: BTreeSet<String> = self
            .pods
            .keys()
            .chain(self.sandboxes.keys())
            .cloned()
            .collect();
        for uid in &uids {
            self.sync_pod(uid, &network).await;
        }
    }

    /// Brings pod `uid`'s sandbox in line with the pod.
    async fn sync_pod(&mut self, uid: &str, network: &Result<NetworkConfig, NetworkNotReady>) {
        let record = self.sandboxes.get(uid).cloned();
        let Some(pod) = self.pods.get(uid).cloned() else {
            // The pod is gone from the API (or its UID changed): its
            // sandbox goes too.
            if let Some(record) = record {
                self.tear_down(&record, "the pod no longer exists").await;
            }
            if !self.sandboxes.contains_key(uid) {
                self.states.remove(uid);
            }
            return;
        };
        let key = PodRef::of(&pod);

        if pod.metadata.deletion_timestamp.is_some() {
            if let Some(record) = record {
                if !self.tear_down(&record, "the pod is being deleted").await {
                    return;
                }
            }
            self.finish_deletion(&pod).await;
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return;
        }
        if is_host_network(&pod) {
            let report = PodReport::Running {
                pod_ips: self.node_ips.clone(),
                container_id: format!("lab://host-network-{uid}"),
                started: pod_start(&pod),
                restarts: 0,
            };
            self.report(&pod, report).await;
            return;
        }

        if let Some(mut record) = record {
            if record.result.is_some() && record.netns_path().exists() {
                match self.runtime.ensure_server(&mut record) {
                    Ok(true) if record.server_starts > 1 => {
                        tracing::warn!(pod = %key, "the pod server had died; restarted it");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(pod = %key, "{e}"),
                }
                let report = running_report(&record);
                self.sandboxes.insert(uid.to_owned(), record);
                self.report(&pod, report).await;
                return;
            }
            // Half-made by a kubelet that stopped mid-way, or its namespace
            // was deleted under it: start over.
            if !self
                .tear_down(&record, "the sandbox is incomplete; making it again")
                .await
            {
                return;
            }
        }

        if !self.state(uid).retry.ready(Instant::now()) {
            return;
        }
        let network = match network {
            Ok(network) => network.clone(),
            Err(not_ready) => {
                self.network_not_ready(&pod, not_ready).await;
                return;
            }
        };
        tracing::info!(pod = %key, "creating the sandbox on {network}");
        match self
            .runtime
            .create(&key, network, capability_args(&pod))
            .await
        {
            Ok(record) => {
                let ips = cni::result_ips(record.result.as_ref().unwrap_or(&Value::Null))
                    .unwrap_or_default();
                tracing::info!(
                    pod = %key,
                    "sandbox {} ready in {} with {:?}",
                    &record.sandbox_id[..12],
                    record.netns,
                    ips
                );
                self.state(uid).retry.succeeded();
                let report = running_report(&record);
                self.sandboxes.insert(uid.to_owned(), record);
                self.report(&pod, report).await;
            }
            Err(e) => {
                let message = format!("Failed to create pod sandbox: {e}");
                let delay = self.state(uid).retry.failed(Instant::now());
                tracing::warn!(pod = %key, "{message} (retrying in {}s)", delay.as_secs());
                self.event(
                    &pod,
                    FAILED_CREATE_POD_SANDBOX,
                    "CreatePodSandbox",
                    &message,
                )
                .await;
                let report = PodReport::Pending {
                    reason: FAILED_CREATE_POD_SANDBOX.to_owned(),
                    message,
                };
                self.report(&pod, report).await;
            }
        }
    }

    /// Reports the pod Pending for want of a network, with one Event per
    /// pod (not one per resync).
    async fn network_not_ready(&mut self, pod: &Pod, not_ready: &NetworkNotReady) {
        let message = format!("network is not ready: {not_ready}");
        let uid = pod.uid().unwrap_or_default();
        let already =
            self.state(&uid).network_event_sent || status::has_ready_reason(pod, NETWORK_NOT_READY);
        if !already {
            tracing::warn!(pod = %PodRef::of(pod), "{message}");
            self.event(pod, NETWORK_NOT_READY, "WaitForNetwork", &message)
                .await;
            self.state(&uid).network_event_sent = true;
        }
        let report = PodReport::Pending {
            reason: NETWORK_NOT_READY.to_owned(),
            message,
        };
        self.report(pod, report).await;
    }

    /// Tears `record`'s sandbox down; true when it is gone.
    async fn tear_down(&mut self, record: &SandboxRecord, why: &str) -> bool {
        let uid = record.pod.uid.clone();
        if !self.state(&uid).retry.ready(Instant::now()) {
            return false;
        }
        match self.runtime.teardown(record).await {
            Ok(()) => {
                tracing::info!(
                    pod = %record.pod,
                    "tore down sandbox {} ({why})",
                    &record.sandbox_id[..12.min(record.sandbox_id.len())]
                );
                self.sandboxes.remove(&uid);
                let state = self.state(&uid);
                state.retry.succeeded();
                state.reported = None;
                true
            }
            Err(e) => {
                let delay = self.state(&uid).retry.failed(Instant::now());
                tracing::warn!(pod = %record.pod, "{e} (retrying in {}s)", delay.as_secs());
                false
            }
        }
    }

    /// Deletes the pod object for good, as a kubelet does once a deleted
    /// pod's containers are gone.
    async fn finish_deletion(&mut self, pod: &Pod) {
        let uid = pod.uid().unwrap_or_default();
        let now = Instant::now();
        if self
            .state(&uid)
            .deleted_at
            .is_some_and(|t| now.duration_since(t) < DELETE_AGAIN_AFTER)
        {
            return;
        }
        self.state(&uid).deleted_at = Some(now);
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {
                tracing::info!(pod = %PodRef::of(pod), "deleted the pod object: nothing of it runs any more")
            }
            // Gone already, or replaced by a pod of the same name.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => tracing::warn!(pod = %PodRef::of(pod), "deleting the pod object: {e}"),
        }
    }

    /// Patches the pod's status unless it already says `report`.
    async fn report(&mut self, pod: &Pod, report: PodReport) {
        let uid = pod.uid().unwrap_or_default();
        let gates_ready = status::gate_not_true(pod).is_none();
        let now = (report.clone(), gates_ready);
        if self.state(&uid).reported.as_ref() == Some(&now) {
            return;
        }
        let patch = status::status_patch(pod, &self.node_ips, &report, Timestamp::now());
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(patch),
            )
            .await
        {
            Ok(_) => {
                if let PodReport::Running { pod_ips, .. } = &report {
                    tracing::info!(pod = %PodRef::of(pod), "reported Running with {pod_ips:?}");
                }
                self.state(&uid).reported = Some(now);
            }
            Err(e) => tracing::warn!(pod = %PodRef::of(pod), "reporting the pod's status: {e}"),
        }
    }

    /// Posts a Warning Event on `pod`.
    async fn event(&self, pod: &Pod, reason: &str, action: &str, note: &str) {
        let mut reference = pod.object_ref(&());
        // The Event is about the pod, not one version of it: without this,
        // repeats would not be counted as one series.
        reference.resource_version = None;
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(truncate(note, MAX_EVENT_NOTE)),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(pod = %PodRef::of(pod), "posting Event {reason}: {e}");
        }
    }

    fn state(&mut self, uid: &str) -> &mut PodState {
        self.states.entry(uid.to_owned()).or_default()
    }
}

fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// When a host-network pod started, which only its status remembers (it
/// has no sandbox record): its `startTime`, or now for a pod not reported
/// yet. Whole seconds, as the API stores it, so the next sync finds the
/// same value and reports nothing new.
fn pod_start(pod: &Pod) -> Timestamp {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or_else(
            || {
                let now = Timestamp::now();
                Timestamp::from_second(now.as_second()).unwrap_or(now)
            },
            |t| t.0,
        )
}

/// The Running report of a sandbox that is up.
fn running_report(record: &SandboxRecord) -> PodReport {
    PodReport::Running {
        pod_ips: record
            .result
            .as_ref()
            .and_then(|r| cni::result_ips(r).ok())
            .unwrap_or_default(),
        container_id: record.container_id(),
        started: record.created,
        restarts: record.server_starts.saturating_sub(1),
    }
}

/// The capability values containerd passes for a pod: its `hostPort`s as
/// `portMappings` (for the `portmap` plugin).
fn capability_args(pod: &Pod) -> Map<String, Value> {
    let mappings: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| {
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_deref().unwrap_or("TCP").to_lowercase(),
                "hostIP": p.host_ip.as_deref().unwrap_or(""),
            })
        })
        .collect();
    let mut args = Map::new();
    args.insert("portMappings".to_owned(), Value::Array(mappings));
    args
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_up_to_a_cap() {
        let mut backoff = Backoff::default();
        let start = Instant::now();
        assert!(backoff.ready(start));
        let delays: Vec<u64> = (0..7).map(|_| backoff.failed(start).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
        assert!(!backoff.ready(start));
        assert!(backoff.ready(start + MAX_RETRY_DELAY));
        backoff.succeeded();
        assert!(backoff.ready(start));
    }

    #[test]
    fn host_ports_become_port_mappings() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": [
                {"containerPort": 8080, "hostPort": 80},
                {"containerPort": 53, "protocol": "UDP"}]}]}
        }))
        .unwrap();
        assert_eq!(
            Value::Object(capability_args(&pod)),
            json!({"portMappings": [
                {"hostPort": 80, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}]})
        );
    }

    #[test]
    fn notes_are_cut_on_character_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
