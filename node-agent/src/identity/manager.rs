//! Carries out the [`plan`](super::plan): starts, joins, adopts and removes
//! identities, and tells the pods.
//!
//! For each identity pod the agent reports, on the pod:
//! - annotations [`IDENTITY_IPS`] and [`IDENTITY_NAME`] once it is on the
//!   tailnet;
//! - the condition [`READY_CONDITION`] (`True` when on the tailnet, `False`
//!   with the reason while pending, failed or refused), which a pod can
//!   wait for with a readiness gate;
//! - a Warning Event when its request is refused or its identity fails, and
//!   a Normal Event when its identity is ready.
//!
//! Keys are minted only when a tailscaled has no valid login (a new
//! identity, or one whose device was removed while it was down); an
//! adopted, running identity costs one LocalAPI status call per pass.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::Notify;

use crate::config::{AgentConfig, IdentityConfig};
use crate::control::{AuthKeyRequest, ControlPlane, Device};
use crate::localapi::{BackendState, LocalApiClient, Status};
use crate::metrics::{KindLabel, Metrics};

use super::instance::{IdentityRecord, Instance, Launcher};
use super::plan::{plan, PodView, Step};
use super::policy::{Grant, Refusal};

/// The pod condition type a readiness gate can wait for.
pub const READY_CONDITION: &str = "tailroute.dev/identity-ready";
/// Annotation: the identity's tailnet addresses, comma-separated.
pub const IDENTITY_IPS: &str = "tailroute.dev/identity-ips";
/// Annotation: the identity's MagicDNS name (or device name).
pub const IDENTITY_NAME: &str = "tailroute.dev/identity-name";

/// How many identities are started or checked at once.
const PARALLEL: usize = 8;
/// How long a new tailscaled may take to answer on its socket.
const LOCALAPI_WAIT: Duration = Duration::from_secs(15);
/// How long a join may take to reach `Running`.
const JOIN_WAIT: Duration = Duration::from_secs(60);
/// SIGTERM to SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The reason for a name another device holds.
const HOSTNAME_TAKEN: &str = "IdentityHostnameTaken";

/// Why an identity is not up: the condition's and the Event's reason, and
/// what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Problem {
    reason: &'static str,
    message: String,
}

impl From<String> for Problem {
    /// A step that failed: `IdentityFailed`, the message naming the step.
    fn from(message: String) -> Problem {
        Problem {
            reason: "IdentityFailed",
            message,
        }
    }
}

/// The device, other than this identity's own (`own`: its recorded device
/// id and its tailscaled's node key), whose name on the tailnet is
/// `hostname`: Headscale's given name, or the first label of Tailscale's
/// MagicDNS name.
fn name_holder<'a>(
    devices: &'a [Device],
    hostname: &str,
    own: (Option<&str>, Option<&str>),
) -> Option<&'a Device> {
    let (own_id, own_key) = own;
    devices.iter().find(|d| {
        Some(d.id.as_str()) != own_id
            && Some(d.node_key.as_str()) != own_key
            && d.name
                .split('.')
                .next()
                .is_some_and(|label| label.eq_ignore_ascii_case(hostname))
    })
}

/// What one pass found, for the metrics and the loop's pacing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassSummary {
    /// Identities on the tailnet.
    pub ready: usize,
    /// Waiting for the pod's network.
    pub pending: usize,
    /// Failed this pass (retried next pass).
    pub failed: usize,
    /// Refused by the policy.
    pub refused: usize,
    /// Removed this pass.
    pub removed: usize,
}

/// The identities of one node.
pub struct IdentityManager {
    config: IdentityConfig,
    bridge_data_dir: PathBuf,
    control: Arc<ControlPlane>,
    launcher: Launcher,
    /// The conflist the agent writes: the pods' MTU is read from it.
    conflist: PathBuf,
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Events already published (pod uid, reason, message): one per cause.
    told: Mutex<HashSet<(String, String, String)>>,
    /// Pods whose first readiness was measured.
    timed: Mutex<HashSet<String>>,
    /// Pods whose identity failed: how many times in a row, and when to
    /// try again (so a failing join does not mint a key every second).
    backoff: Mutex<HashMap<String, (u32, Instant)>>,
    /// Pods whose identity a task is starting or checking.
    busy: Mutex<HashSet<String>>,
    /// Each identity pod's last known state, for the metrics.
    states: Mutex<HashMap<String, State>>,
    /// Wakes the identity loop when a task ends.
    wake: Arc<Notify>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Pending,
    Failed,
    Refused,
}

/// An identity on the tailnet.
struct Joined {
    record: IdentityRecord,
    fresh: bool,
}

impl IdentityManager {
    /// A manager for this node's identities, when the agent's configuration
    /// enables them; `agent` is the agent binary (for `run-in-pod`).
    pub fn new(
        agent_config: &AgentConfig,
        control: Arc<ControlPlane>,
        agent: PathBuf,
        client: Client,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Option<IdentityManager> {
        let config = agent_config.identity.clone()?;
        let bridge_data_dir = agent_config.bridge_data_dir.clone();
        let conflist = agent_config.conflist_path();
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let resolv_conf = super::launch::pod_resolv_conf(
            &read("/etc/resolv.conf"),
            Some(&read("/run/systemd/resolve/resolv.conf")),
        );
        let launcher = Launcher {
            agent,
            tailscaled: config.tailscaled.clone(),
            resolv_conf,
            go_memory_limit: config.go_memory_limit.clone(),
            pod_mtu: 1280,
        };
        let reporter = Reporter {
            controller: "tailroute-agent".into(),
            instance: None,
        };
        Some(IdentityManager {
            config,
            bridge_data_dir,
            control,
            launcher,
            conflist,
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            told: Mutex::new(HashSet::new()),
            timed: Mutex::new(HashSet::new()),
            backoff: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            states: Mutex::new(HashMap::new()),
            wake,
        })
    }

    /// One pass over this node's pods (as the watch holds them).
    pub async fn reconcile(self: &Arc<Self>, pods: &[Pod]) -> PassSummary {
        let views: Vec<PodView> = pods.iter().map(pod_view).collect();
        let attachments = tailroute_bridge::ipam::store::read_attachments(
            &self.bridge_data_dir,
            crate::conflist::NETWORK_NAME,
        )
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, "no CNI attachment records yet");
            Vec::new()
        });
        let (instances, broken) = match Instance::list(&self.config.state_dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(dir = %self.config.state_dir.display(), error = %e, "cannot read the identities' directory");
                (Vec::new(), Vec::new())
            }
        };
        for dir in broken {
            tracing::info!(dir = %dir.display(), "removing an identity directory without a record");
            let _ = std::fs::remove_dir_all(dir);
        }
        let by_uid: BTreeMap<&str, &Pod> = pods
            .iter()
            .filter_map(|p| Some((p.metadata.uid.as_deref()?, p)))
            .collect();
        let steps = plan(&self.config.policy, &views, &attachments, &instances);
        let mut inline = Vec::new();
        for step in steps {
            match step {
                Step::Ensure {
                    pod,
                    grant,
                    netns,
                    link,
                } => {
                    // Each pod's start or check is a task of its own: a
                    // slow join never holds up another pod or a removal.
                    if !self.claim(&pod.uid) {
                        continue;
                    }
                    if self.backing_off(&pod.uid) {
                        self.release(&pod.uid);
                        continue;
                    }
                    let existing = instances
                        .iter()
                        .find(|i| i.record.pod_uid == pod.uid)
                        .cloned();
                    let obj = by_uid.get(pod.uid.as_str()).map(|p| (*p).clone());
                    self.set_state(&pod.uid, State::Pending, false);
                    let me = Arc::clone(self);
                    tokio::spawn(async move {
                        let uid = pod.uid.clone();
                        me.ensure_and_report(pod, grant, (netns, link), existing, obj)
                            .await;
                        me.release(&uid);
                        me.wake.notify_one();
                    });
                }
                // Never under a running start: the next pass removes it.
                Step::Remove { ref instance, .. } if self.in_flight(&instance.record.pod_uid) => {}
                other => inline.push(other),
            }
        }
        let removed = futures::stream::iter(inline)
            .map(|step| self.carry_out(step, &by_uid))
            .buffer_unordered(PARALLEL)
            .filter(|removed| futures::future::ready(*removed))
            .count()
            .await;
        let present: HashSet<&str> = by_uid.keys().copied().collect();
        let mut summary = PassSummary {
            removed,
            ..PassSummary::default()
        };
        if let Ok(mut states) = self.states.lock() {
            states.retain(|uid, _| present.contains(uid.as_str()));
            for state in states.values() {
                match state {
                    State::Ready => summary.ready += 1,
                    State::Pending => summary.pending += 1,
                    State::Failed => summary.failed += 1,
                    State::Refused => summary.refused += 1,
                }
            }
        }
        for (state, count) in [
            ("ready", summary.ready),
            ("pending", summary.pending),
            ("failed", summary.failed),
            ("refused", summary.refused),
        ] {
            self.metrics
                .identities
                .get_or_create(&KindLabel {
                    kind: state.to_owned(),
                })
                .set(count as i64);
        }
        summary
    }

    /// Starts, adopts or checks one pod's identity and reports on the pod.
    async fn ensure_and_report(
        &self,
        pod: PodView,
        grant: Grant,
        (netns, link): (PathBuf, (String, String)),
        existing: Option<Instance>,
        obj: Option<Pod>,
    ) {
        let started = Instant::now();
        let result = self.ensure(&pod, &grant, &netns, &link, existing).await;
        // A taken name is waited for (it frees up when its holder goes),
        // so it is looked at again every 4 s at most, not every 64 s.
        let patience = match &result {
            Ok(_) => None,
            Err(problem) if problem.reason == HOSTNAME_TAKEN => Some(2),
            Err(_) => Some(6),
        };
        self.note_result(&pod.uid, patience);
        match result {
            Ok(joined) => {
                if joined.fresh {
                    tracing::info!(
                        pod = %format!("{}/{}", pod.namespace, pod.name),
                        ips = ?joined.record.ips,
                        name = %joined.record.dns_name,
                        seconds = started.elapsed().as_secs_f64(),
                        "identity ready"
                    );
                }
                self.set_state(&pod.uid, State::Ready, true);
                if let Some(obj) = &obj {
                    self.report_ready(obj, &joined.record).await;
                }
            }
            Err(Problem { reason, message }) => {
                tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), reason, "{message}");
                if reason == HOSTNAME_TAKEN {
                    self.set_state(&pod.uid, State::Pending, true);
                } else {
                    self.count("failed");
                    self.set_state(&pod.uid, State::Failed, true);
                }
                if let Some(obj) = &obj {
                    self.report_problem(obj, reason, &message).await;
                }
            }
        }
    }

    /// Carries out a refusal, a wait or a removal; true when an identity
    /// was removed.
    async fn carry_out(&self, step: Step, pods: &BTreeMap<&str, &Pod>) -> bool {
        match step {
            Step::Ensure { .. } => false,
            Step::Refuse { pod, refusal } => {
                self.set_state(&pod.uid, State::Refused, true);
                if let Some(obj) = pods.get(pod.uid.as_str()) {
                    self.report_refusal(obj, &refusal).await;
                }
                false
            }
            Step::Wait { pod } => {
                self.set_state(&pod.uid, State::Pending, true);
                if let Some(obj) = pods.get(pod.uid.as_str()) {
                    self.set_condition(
                        obj,
                        false,
                        "IdentityPending",
                        "waiting for the pod's network (the CNI plugin has not attached it yet)",
                    )
                    .await;
                }
                false
            }
            Step::Remove { instance, why } => {
                let name = instance.record.hostname.clone();
                let pod = format!("{}/{}", instance.record.namespace, instance.record.name);
                match self.remove(instance).await {
                    Ok(()) => {
                        tracing::info!(%pod, device = %name, "identity removed: {why}");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(%pod, device = %name, "cannot remove the identity ({why}): {e}; retrying");
                        false
                    }
                }
            }
        }
    }

    /// Marks a pod's identity as being worked on; false when it already is.
    fn claim(&self, uid: &str) -> bool {
        self.busy
            .lock()
            .map(|mut b| b.insert(uid.to_owned()))
            .unwrap_or(false)
    }

    fn release(&self, uid: &str) {
        if let Ok(mut b) = self.busy.lock() {
            b.remove(uid);
        }
    }

    fn in_flight(&self, uid: &str) -> bool {
        self.busy.lock().map(|b| b.contains(uid)).unwrap_or(true)
    }

    /// Records a pod's state; `overwrite` false keeps a known one (a check
    /// of a ready identity does not make it pending).
    fn set_state(&self, uid: &str, state: State, overwrite: bool) {
        if let Ok(mut states) = self.states.lock() {
            if overwrite || !states.contains_key(uid) {
                states.insert(uid.to_owned(), state);
            }
        }
    }

    /// Makes sure the pod's identity runs in `netns` and is on the tailnet.
    async fn ensure(
        &self,
        pod: &PodView,
        grant: &Grant,
        netns: &Path,
        link: &(String, String),
        existing: Option<Instance>,
    ) -> Result<Joined, Problem> {
        let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
        let mut instance = match existing {
            Some(instance) => instance,
            None => Instance::create(
                &self.config.state_dir,
                IdentityRecord {
                    pod_uid: pod.uid.clone(),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    hostname: grant.hostname.clone(),
                    tags: grant.tags.clone(),
                    netns: netns.to_path_buf(),
                    pid: None,
                    pid_start: None,
                    device_id: None,
                    ips: Vec::new(),
                    dns_name: String::new(),
                },
            )
            .map_err(|e| fail("cannot create the identity's directory", &e))?,
        };
        if instance.record.hostname != grant.hostname || instance.record.tags != grant.tags {
            self.event_once(
                pods_reference(pod),
                &pod.uid,
                false,
                "IdentityChangeNotApplied",
                format!(
                    "the identity keeps its name {} and tags {}: a device's name and tags are \
                     set when it joins; recreate the pod to apply the new ones",
                    instance.record.hostname,
                    instance.record.tags.join(",")
                ),
            )
            .await;
        }
        if instance.record.netns != netns {
            // A new sandbox: the old tailscaled is in a namespace that no
            // longer carries the pod's traffic. Same state, same device.
            instance.stop(STOP_GRACE).await;
            instance.record.netns = netns.to_path_buf();
            instance.record.pid = None;
            instance
                .save()
                .map_err(|e| fail("cannot save the identity's record", &e))?;
        }
        let mut fresh = false;
        if instance.is_running() {
            if instance.record.ips.is_empty() {
                fresh = true;
            }
        } else {
            let adopted_before = instance.record.pid.is_some();
            // The pods' MTU as the agent wrote it into the conflist, read
            // at each start: it follows the node's tailscale0.
            let launcher = Launcher {
                pod_mtu: conflist_mtu(&self.conflist).unwrap_or(1280),
                ..self.launcher.clone()
            };
            instance
                .widen_link(&launcher, link)
                .await
                .map_err(|e| fail("cannot make room for WireGuard on the pod's interface", &e))?;
            instance
                .start(&launcher)
                .map_err(|e| fail("cannot start tailscaled in the pod", &e))?;
            self.count(if adopted_before {
                "restarted"
            } else {
                "started"
            });
            fresh = true;
        }
        let localapi = LocalApiClient::new(instance.socket()).with_timeout(Duration::from_secs(5));
        let status = self.first_status(&localapi, &instance).await?;
        if needs_login(&status.backend_state) {
            let node_key = status
                .self_node
                .as_ref()
                .map(|s| s.public_key.as_str())
                .filter(|k| !k.is_empty());
            self.join(&instance, grant, node_key).await?;
            self.count("joined");
            fresh = true;
        }
        let status = wait_running(&localapi, JOIN_WAIT).await.map_err(|state| {
            format!(
                "the pod's tailscaled did not reach Running in {} s (it is {state}); see {}",
                JOIN_WAIT.as_secs(),
                instance.log().display()
            )
        })?;
        // Running always has Self.
        let self_node = status.self_node.as_ref();
        let record = IdentityRecord {
            device_id: self_node.map(|s| s.id.clone()).filter(|id| !id.is_empty()),
            ips: status.tailscale_ips.clone(),
            dns_name: self_node
                .map(|s| s.dns_name.trim_end_matches('.').to_owned())
                .unwrap_or_default(),
            ..instance.record.clone()
        };
        if record != instance.record {
            instance.record = record;
            instance
                .save()
                .map_err(|e| fail("cannot save the identity's record", &e))?;
        }
        Ok(Joined {
            record: instance.record,
            fresh,
        })
    }

    /// The first status of a (possibly just started) tailscaled that knows
    /// whether it is logged in.
    async fn first_status(
        &self,
        localapi: &LocalApiClient,
        instance: &Instance,
    ) -> Result<Status, String> {
        let deadline = Instant::now() + LOCALAPI_WAIT;
        loop {
            let last = match localapi.status_without_peers().await {
                Ok(status) if status.backend_state != BackendState::NoState => return Ok(status),
                Ok(_) => "it is still starting (NoState)".to_owned(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline || !instance.is_running() {
                return Err(format!(
                    "the pod's tailscaled does not answer on {} ({last}); its log: {}",
                    instance.socket().display(),
                    tail(&instance.log())
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Mints a single-use key for the grant and runs `tailscale up` with it,
    /// unless another device holds the name: the control plane would give
    /// this one a suffixed name (`web-1`), not the one asked for. A name
    /// held by the device of a pod being replaced (a StatefulSet's) frees
    /// up within seconds, so the pod waits (pending, not failed) and this
    /// is looked at again within 4 s.
    async fn join(
        &self,
        instance: &Instance,
        grant: &Grant,
        node_key: Option<&str>,
    ) -> Result<(), Problem> {
        let devices = self
            .control
            .list_devices()
            .await
            .map_err(|e| format!("cannot list the tailnet's devices to check the name: {e}"))?;
        let own = (instance.record.device_id.as_deref(), node_key);
        if let Some(holder) = name_holder(&devices, &grant.hostname, own) {
            let addresses: Vec<String> = holder.addresses.iter().map(ToString::to_string).collect();
            return Err(Problem {
                reason: HOSTNAME_TAKEN,
                message: format!(
                    "the tailnet already has a device named {} ({}, id {}); this pod joins once \
                     it is gone. Give the pod another tailroute.dev/identity-hostname, or \
                     remove that device if it is a leftover",
                    grant.hostname,
                    addresses.join(", "),
                    holder.id
                ),
            });
        }
        let mut description = format!(
            "tailroute {}/{}",
            instance.record.namespace, instance.record.name
        );
        // Tailscale limits key descriptions to 50 characters.
        description.truncate(
            (0..=50.min(description.len()))
                .rev()
                .find(|i| description.is_char_boundary(*i))
                .unwrap_or(0),
        );
        let key = self
            .control
            .mint_auth_key(&AuthKeyRequest {
                tags: grant.tags.clone(),
                ephemeral: self.config.ephemeral,
                valid_for: self.config.key_ttl,
                description,
            })
            .await
            .map_err(|e| format!("cannot mint an auth key for the pod: {e}"))?;
        let key_file = instance.dir.join("authkey");
        write_private(&key_file, key.key.expose())
            .map_err(|e| format!("cannot write the pod's auth key: {e}"))?;
        let mut command = tokio::process::Command::new(&self.config.tailscale);
        command
            .arg(format!("--socket={}", instance.socket().display()))
            .arg("up")
            .arg(format!("--auth-key=file:{}", key_file.display()))
            .arg(format!("--hostname={}", grant.hostname))
            // The pod keeps its own DNS and routes; the node's datapath
            // rules are the node's business.
            .args([
                "--accept-dns=false",
                "--accept-routes=false",
                "--netfilter-mode=off",
                "--reset",
            ])
            .arg(format!("--timeout={}s", JOIN_WAIT.as_secs()))
            .kill_on_drop(true);
        if let Some(url) = &self.config.login_server {
            command.arg(format!("--login-server={url}"));
        }
        let output =
            tokio::time::timeout(JOIN_WAIT + Duration::from_secs(10), command.output()).await;
        let _ = std::fs::remove_file(&key_file);
        let output = match output {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot run {}: {e} (identity.tailscale in the agent's configuration)",
                    self.config.tailscale.display()
                )
                .into())
            }
            Err(_) => {
                return Err("`tailscale up` for the pod did not finish"
                    .to_owned()
                    .into())
            }
        };
        if output.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&output.stderr);
        let said = key.key.scrub(said.trim());
        Err(Problem::from(format!(
            "`tailscale up` for the pod failed: {said}; the key carried tags {} (they must be \
             in the policy's tagOwners, owned by the agent's credential)",
            grant.tags.join(",")
        )))
    }

    /// Removes the device from the control plane, stops tailscaled and
    /// removes the directory. The device goes first: it is what the
    /// tailnet sees. When the control plane cannot be reached, tailscaled
    /// is still stopped (the pod is gone) and the directory kept, so the
    /// next pass retries the removal.
    async fn remove(&self, instance: Instance) -> Result<(), String> {
        let result = teardown(instance, Some(&self.control)).await;
        self.count(if result.is_ok() {
            "removed"
        } else {
            "remove_failed"
        });
        result
    }

    async fn report_ready(&self, pod: &Pod, record: &IdentityRecord) {
        let ips = record
            .ips
            .iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let name = if record.dns_name.is_empty() {
            record.hostname.clone()
        } else {
            record.dns_name.clone()
        };
        let annotations = pod.annotations();
        if annotations.get(IDENTITY_IPS) != Some(&ips)
            || annotations.get(IDENTITY_NAME) != Some(&name)
        {
            let patch =
                json!({"metadata": {"annotations": {IDENTITY_IPS: ips, IDENTITY_NAME: name}}});
            if let Err(e) = self
                .pods(pod)
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!(pod = %pod.name_any(), error = %e, "cannot annotate the pod");
            }
        }
        let message = format!("on the tailnet as {name} ({ips})");
        if self
            .set_condition(pod, true, "IdentityReady", &message)
            .await
        {
            self.event_once(
                pod_reference(pod),
                &record.pod_uid,
                false,
                "IdentityReady",
                message,
            )
            .await;
            self.time_first_ready(pod);
        }
    }

    async fn report_problem(&self, pod: &Pod, reason: &str, message: &str) {
        self.set_condition(pod, false, reason, message).await;
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.event_once(pod_reference(pod), &uid, true, reason, message.to_owned())
            .await;
    }

    async fn report_refusal(&self, pod: &Pod, refusal: &Refusal) {
        self.report_problem(pod, refusal.reason, &refusal.message)
            .await;
    }

    /// Writes the condition when it differs from the pod's; returns whether
    /// its status changed.
    async fn set_condition(&self, pod: &Pod, ready: bool, reason: &str, message: &str) -> bool {
        let status = if ready { "True" } else { "False" };
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == READY_CONDITION));
        if current.is_some_and(|c| {
            c.status == status
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message)
        }) {
            return false;
        }
        let transition = match current {
            Some(c) if c.status == status => c
                .last_transition_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_else(|| Timestamp::now().to_string()),
            _ => Timestamp::now().to_string(),
        };
        // A strategic merge on `conditions` (merge key `type`) changes this
        // condition only; the kubelet keeps conditions it does not own.
        let patch = json!({"status": {"conditions": [{
            "type": READY_CONDITION,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": transition,
        }]}});
        if let Err(e) = self
            .pods(pod)
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            tracing::warn!(pod = %pod.name_any(), error = %e, "cannot set the pod's {READY_CONDITION} condition");
            return false;
        }
        current.is_none_or(|c| c.status != status)
    }

    fn time_first_ready(&self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let first = self
            .timed
            .lock()
            .map(|mut t| t.insert(uid))
            .unwrap_or(false);
        if !first {
            return;
        }
        if let Some(created) = &pod.metadata.creation_timestamp {
            let seconds = Timestamp::now().duration_since(created.0).as_secs_f64();
            if seconds >= 0.0 {
                self.metrics.identity_ready_seconds.observe(seconds);
            }
        }
    }

    async fn event_once(
        &self,
        reference: ObjectReference,
        uid: &str,
        warning: bool,
        reason: &str,
        message: String,
    ) {
        let key = (uid.to_owned(), reason.to_owned(), message.clone());
        let new = self.told.lock().map(|mut t| t.insert(key)).unwrap_or(true);
        if !new {
            return;
        }
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(message.chars().take(1024).collect()),
            action: "Identity".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, "cannot publish an Event");
        }
    }

    fn pods(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default())
    }

    fn backing_off(&self, uid: &str) -> bool {
        self.backoff
            .lock()
            .map(|b| b.get(uid).is_some_and(|(_, next)| Instant::now() < *next))
            .unwrap_or(false)
    }

    /// Doubles the wait after each failure in a row, from 2 s up to
    /// `2^failed` s; `failed` is `None` after a success.
    fn note_result(&self, uid: &str, failed: Option<u32>) {
        if let Ok(mut backoff) = self.backoff.lock() {
            if let Some(most) = failed {
                let failures = backoff.get(uid).map_or(0, |(n, _)| *n) + 1;
                let wait = Duration::from_secs(1 << failures.min(most));
                backoff.insert(uid.to_owned(), (failures, Instant::now() + wait));
            } else {
                backoff.remove(uid);
            }
        }
    }

    fn count(&self, kind: &str) {
        self.metrics
            .identity_events
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
}

/// Removes one identity: its device (through the control plane's API when
/// there is a credential, else by logging the device out through its own
/// LocalAPI, which removes an ephemeral device at once), its tailscaled,
/// its directory. The device goes first: it is what the tailnet sees. When
/// it cannot be removed, tailscaled is still stopped (its pod is gone) and
/// the directory kept, so that a retry can finish the job.
pub async fn teardown(
    mut instance: Instance,
    control: Option<&ControlPlane>,
) -> Result<(), String> {
    let deleted = match (control, instance.record.device_id.clone()) {
        (Some(control), Some(id)) => control
            .delete_device_by_id(&id)
            .await
            .map_err(|e| format!("cannot remove its device from the control plane: {e}")),
        _ if instance.is_running() => LocalApiClient::new(instance.socket())
            .with_timeout(Duration::from_secs(5))
            .logout()
            .await
            .map_err(|e| format!("cannot log its device out: {e}")),
        // Never joined, or not running and no credential: an ephemeral
        // device expires on its own once offline.
        _ => Ok(()),
    };
    instance.stop(STOP_GRACE).await;
    deleted?;
    instance
        .remove()
        .map_err(|e| format!("cannot remove its directory: {e}"))
}

/// What identities need of a Pod.
pub fn pod_view(pod: &Pod) -> PodView {
    let spec = pod.spec.as_ref();
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    PodView {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        annotations: pod.annotations().clone(),
        finished: matches!(phase, Some("Succeeded" | "Failed")),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
    }
}

fn pod_reference(pod: &Pod) -> ObjectReference {
    pod.object_ref(&())
}

fn pods_reference(pod: &PodView) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        namespace: Some(pod.namespace.clone()),
        name: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()),
        ..ObjectReference::default()
    }
}

fn needs_login(state: &BackendState) -> bool {
    matches!(
        state,
        BackendState::NeedsLogin | BackendState::Stopped | BackendState::NoState
    )
}

/// Polls until tailscaled is `Running` with addresses; on timeout, the
/// state it was in.
async fn wait_running(localapi: &LocalApiClient, limit: Duration) -> Result<Status, String> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match localapi.status_without_peers().await {
            Ok(status)
                if status.backend_state == BackendState::Running
                    && !status.tailscale_ips.is_empty() =>
            {
                return Ok(status)
            }
            Ok(status) => status.backend_state.as_str().to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// The last lines of a log, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(5);
    lines[start..].join(" | ")
}

/// The `mtu` of the first plugin in a conflist.
fn conflist_mtu(path: &Path) -> Option<u32> {
    let text = std::fs::read(path).ok()?;
    let conflist: serde_json::Value = serde_json::from_slice(&text).ok()?;
    conflist["plugins"][0]["mtu"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, name: &str, node_key: &str) -> Device {
        Device {
            id: id.to_owned(),
            name: name.to_owned(),
            hostname: String::new(),
            node_key: node_key.to_owned(),
            addresses: Vec::new(),
            tags: Vec::new(),
            advertised_routes: Vec::new(),
            approved_routes: Vec::new(),
            online: None,
        }
    }

    #[test]
    fn a_name_is_held_by_another_device_not_by_this_identitys_own() {
        let devices = [
            device("1", "prod-default-web", "nodekey:aa"),
            device("n2", "db.tail1234.ts.net", "nodekey:bb"),
        ];
        // Headscale's given name, and the first label of a MagicDNS name.
        let held = |name, own| name_holder(&devices, name, own).map(|d| d.id.clone());
        assert_eq!(held("prod-default-web", (None, None)), Some("1".into()));
        assert_eq!(held("DB", (None, None)), Some("n2".into()));
        assert_eq!(held("tail1234", (None, None)), None);
        // Its own device, by recorded id or by its tailscaled's node key.
        assert_eq!(held("prod-default-web", (Some("1"), None)), None);
        assert_eq!(held("prod-default-web", (None, Some("nodekey:aa"))), None);
        assert_eq!(
            held("db", (Some("1"), Some("nodekey:aa"))),
            Some("n2".into())
        );
    }
}
