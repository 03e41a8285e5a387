//! Pod sandboxes: making a pod's network namespace, attaching it through
//! the CNI chain and starting its server; and undoing all of it.
//!
//! This is the part a real node leaves to containerd. The order is the
//! ledger's: the record is written first, then the namespace is made, the
//! chain's ADD run, its result recorded, the server started and recorded.
//! Teardown runs backwards from whatever the record says and keeps going on
//! errors, so one failing step does not leave the others undone; the
//! record is removed only when everything succeeded, so a failed teardown
//! is retried.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::{Map, Value};

use super::cni::{self, Attachment, NetworkConfig, PluginError};
use super::process::{self, PodServerSpawn, ProcessId};
use super::record::{PodRef, RecordError, SandboxRecord, SandboxStore};

/// How long a pod server gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Why a sandbox could not be made. The sandbox has been undone (or its
/// record kept for a retry of the undo) by the time this is returned.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No sandbox id could be drawn: nothing was created.
    #[error("failed to make a sandbox id (reading /dev/urandom): {0}")]
    Id(std::io::Error),
    /// The record could not be written: nothing was created.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// `ip netns` failed.
    #[error("failed to create network namespace {netns}: {reason}")]
    Netns {
        /// The namespace.
        netns: String,
        /// `ip`'s error.
        reason: String,
    },
    /// The CNI chain refused or failed.
    #[error("failed to set up network for sandbox {sandbox_id:?}: {source}")]
    Network {
        /// The sandbox.
        sandbox_id: String,
        /// The plugin's error.
        source: Box<PluginError>,
    },
    /// ADD succeeded but its result gives the pod no address.
    #[error("failed to set up network for sandbox {sandbox_id:?}: unusable CNI result: {reason}")]
    Result {
        /// The sandbox.
        sandbox_id: String,
        /// What is wrong with the result.
        reason: String,
    },
    /// The pod server could not be started.
    #[error("failed to start the pod server in {netns}: {source}")]
    Server {
        /// The namespace.
        netns: String,
        /// The error.
        source: std::io::Error,
    },
}

/// A teardown that could not undo everything; the record is kept.
#[derive(Debug)]
pub struct TeardownError {
    /// Every step that failed.
    pub failures: Vec<String>,
}

impl fmt::Display for TeardownError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "teardown incomplete (record kept, will retry): {}",
            self.failures.join("; ")
        )
    }
}

impl std::error::Error for TeardownError {}

/// The node's pod runtime: the CNI bin dir, the records, and the pod
/// servers it started.
#[derive(Debug)]
pub struct PodRuntime {
    cni_bin_dir: PathBuf,
    netns_prefix: String,
    pod_port: u16,
    exe: PathBuf,
    store: SandboxStore,
    /// Pod servers this process started, kept to be reaped. Those of an
    /// earlier kubelet were reparented and are reaped by init.
    children: HashMap<i32, Child>,
}

impl PodRuntime {
    /// A runtime keeping records in `store`, starting pod servers from
    /// `exe` on `pod_port`.
    pub fn new(
        cni_bin_dir: PathBuf,
        netns_prefix: String,
        pod_port: u16,
        exe: PathBuf,
        store: SandboxStore,
    ) -> PodRuntime {
        PodRuntime {
            cni_bin_dir,
            netns_prefix,
            pod_port,
            exe,
            store,
            children: HashMap::new(),
        }
    }

    /// The record store.
    pub fn store(&self) -> &SandboxStore {
        &self.store
    }

    /// Makes `pod`'s sandbox on `network`. On failure, what was made is
    /// undone before returning.
    pub async fn create(
        &mut self,
        pod: &PodRef,
        network: NetworkConfig,
        capability_args: Map<String, Value>,
    ) -> Result<SandboxRecord, SandboxError> {
        let mut record =
            SandboxRecord::new(pod.clone(), &self.netns_prefix, network, capability_args)
                .map_err(SandboxError::Id)?;
        self.store.save(&record)?;
        match self.bring_up(&mut record).await {
            Ok(()) => Ok(record),
            Err(e) => {
                if let Err(undo) = self.teardown(&record).await {
                    tracing::warn!(pod = %pod, "undoing the failed sandbox: {undo}");
                }
                Err(e)
            }
        }
    }

    async fn bring_up(&mut self, record: &mut SandboxRecord) -> Result<(), SandboxError> {
        let netns_error = |reason| SandboxError::Netns {
            netns: record.netns.clone(),
            reason,
        };
        ip(&["netns", "add", &record.netns])
            .await
            .map_err(netns_error)?;
        ip(&["-n", &record.netns, "link", "set", "lo", "up"])
            .await
            .map_err(netns_error)?;

        let netns_path = record.netns_path();
        let result = cni::plugin::add(
            &self.cni_bin_dir,
            &record.network,
            &attachment(record, &netns_path),
        )
        .await
        .map_err(|source| SandboxError::Network {
            sandbox_id: record.sandbox_id.clone(),
            source: Box::new(source),
        })?;
        // Recorded before it is judged: DEL needs it either way.
        record.result = Some(result.clone());
        self.store.save(record)?;
        cni::result_ips(&result).map_err(|reason| SandboxError::Result {
            sandbox_id: record.sandbox_id.clone(),
            reason,
        })?;

        self.start_server(record)
    }

    /// Makes sure the pod server of `record` runs, starting it again if it
    /// died; true if it was (re)started.
    ///
    /// Blocking, briefly: a check in `/proc` when the server runs; when it
    /// does not, up to a stop grace period for strays plus a spawn.
    pub fn ensure_server(&mut self, record: &mut SandboxRecord) -> Result<bool, SandboxError> {
        if record.server.is_some_and(|s| s.is_running()) {
            return Ok(false);
        }
        self.start_server(record)?;
        Ok(true)
    }

    fn start_server(&mut self, record: &mut SandboxRecord) -> Result<(), SandboxError> {
        let netns_path = record.netns_path();
        let server_error = |source| SandboxError::Server {
            netns: record.netns.clone(),
            source,
        };
        // A server started by a kubelet that died before recording it would
        // hold the port: whatever runs in the pod's namespace goes first.
        for stray in process::in_netns(&netns_path).map_err(server_error)? {
            process::stop(&stray, STOP_GRACE).map_err(server_error)?;
        }
        self.reap();
        let pod = record.pod.to_string();
        let log = self.store.log_path(&record.pod);
        let (id, child) = process::spawn_pod_server(&PodServerSpawn {
            exe: &self.exe,
            netns: &netns_path,
            pod: &pod,
            port: self.pod_port,
            log: &log,
        })
        .map_err(server_error)?;
        self.children.insert(id.pid, child);
        record.server = Some(id);
        record.server_starts += 1;
        self.store.save(record)?;
        Ok(())
    }

    /// Undoes everything `record` describes: stops the processes in the
    /// pod's namespace, runs DEL through the chain, deletes the namespace,
    /// then removes the record. Succeeds when all of it is already gone.
    pub async fn teardown(&mut self, record: &SandboxRecord) -> Result<(), TeardownError> {
        let mut failures = Vec::new();
        let netns_path = record.netns_path();

        let server = record.server;
        let path = netns_path.clone();
        let stopped = tokio::task::spawn_blocking(move || stop_all(server, &path)).await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("stopping the pod's processes: {e}")),
            Err(e) => failures.push(format!("stopping the pod's processes: {e}")),
        }
        self.reap();

        match cni::plugin::del(
            &self.cni_bin_dir,
            &record.network,
            &attachment(record, &netns_path),
            record.result.as_ref(),
        )
        .await
        {
            Ok(refusals) => {
                for refusal in refusals {
                    tracing::warn!(pod = %record.pod, "{refusal} (taken as nothing to delete)");
                }
            }
            Err(e) => failures.push(e.to_string()),
        }

        if netns_path.exists() {
            if let Err(e) = ip(&["netns", "del", &record.netns]).await {
                failures.push(format!("deleting network namespace {}: {e}", record.netns));
            }
        }

        if failures.is_empty() {
            if let Err(e) = self.store.remove(&record.pod.uid) {
                failures.push(e.to_string());
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(TeardownError { failures })
        }
    }

    /// Reaps pod servers of ours that have exited.
    pub fn reap(&mut self) {
        self.children
            .retain(|_, child| matches!(child.try_wait(), Ok(None)));
    }
}

/// The attachment `record` describes, for ADD and DEL alike.
fn attachment<'a>(record: &'a SandboxRecord, netns_path: &'a Path) -> Attachment<'a> {
    Attachment {
        container_id: &record.sandbox_id,
        netns: netns_path,
        pod_namespace: &record.pod.namespace,
        pod_name: &record.pod.name,
        pod_uid: &record.pod.uid,
        capability_args: &record.capability_args,
    }
}

/// Stops the recorded server, then anything else in the namespace.
fn stop_all(server: Option<ProcessId>, netns_path: &Path) -> std::io::Result<()> {
    if let Some(server) = server {
        process::stop(&server, STOP_GRACE)?;
    }
    for stray in process::in_netns(netns_path)? {
        process::stop(&stray, STOP_GRACE)?;
    }
    Ok(())
}

/// Runs `ip <args>`; the error is `ip`'s own message.
async fn ip(args: &[&str]) -> Result<(), String> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run `ip` (is iproute2 installed?): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
