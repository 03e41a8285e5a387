//! Sandbox records: one JSON file per pod sandbox in the state dir,
//! written *before* anything of the sandbox is created.
//!
//! A record names the pod, the sandbox id, the network namespace, the
//! network config ADD is run with and, as the sandbox comes up, the cached
//! ADD result and the pod server process. A kubelet killed at any instant
//! therefore leaves a record for everything it made, and the next kubelet
//! (or the lab's teardown) can undo it: stop the processes in the
//! namespace, run DEL with the same config and result, delete the
//! namespace. Each write replaces the file atomically (temp file, fsync,
//! rename), so a reader sees the old record or the new one, never half.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::cni::NetworkConfig;
use super::process::ProcessId;

/// The on-disk format's version; bump it on incompatible changes.
const FORMAT_VERSION: u32 = 1;

/// Where, under the state dir, the records live.
const RECORDS_DIR: &str = "sandboxes";

/// Where, under the state dir, the pod servers' logs go.
const LOGS_DIR: &str = "logs";

/// The pod a sandbox belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID: a pod recreated under the same name is another pod.
    pub uid: String,
}

impl PodRef {
    /// The reference of `pod`.
    pub fn of(pod: &Pod) -> PodRef {
        PodRef {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            uid: pod.uid().unwrap_or_default(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One pod sandbox, as far as it has been made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    /// The format version.
    pub version: u32,
    /// The pod.
    pub pod: PodRef,
    /// `CNI_CONTAINERID`: 64 hex digits, new for every attempt.
    pub sandbox_id: String,
    /// The network namespace's name in `/run/netns`.
    pub netns: String,
    /// When the sandbox was started (the containers' `startedAt`).
    pub created: Timestamp,
    /// The network config ADD is run with; DEL uses the same, even if the
    /// conf dir has changed since.
    pub network: NetworkConfig,
    /// The capability values ADD was given; DEL gets the same.
    pub capability_args: Map<String, Value>,
    /// The cached ADD result: present once the pod's network is up.
    pub result: Option<Value>,
    /// The pod server, once started.
    pub server: Option<ProcessId>,
    /// How often the pod server was started (restarts + 1).
    pub server_starts: u32,
}

impl SandboxRecord {
    /// A record for a sandbox about to be made.
    pub fn new(
        pod: PodRef,
        netns_prefix: &str,
        network: NetworkConfig,
        capability_args: Map<String, Value>,
    ) -> std::io::Result<SandboxRecord> {
        Ok(SandboxRecord {
            version: FORMAT_VERSION,
            netns: netns_name(netns_prefix, &pod.uid),
            pod,
            sandbox_id: new_sandbox_id()?,
            created: Timestamp::now(),
            network,
            capability_args,
            result: None,
            server: None,
            server_starts: 0,
        })
    }

    /// The namespace file: `CNI_NETNS`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }

    /// The containers' id as the pod status shows it.
    pub fn container_id(&self) -> String {
        format!("lab://{}", self.sandbox_id)
    }
}

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing failed.
    #[error("sandbox record {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a record this version understands.
    #[error(
        "sandbox record {} is unreadable ({reason}); undo what it describes by hand \
         (its pod server, `ip netns del`, CNI DEL) and remove it",
        path.display()
    )]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The state dir's records and logs.
#[derive(Debug, Clone)]
pub struct SandboxStore {
    records: PathBuf,
    logs: PathBuf,
}

impl SandboxStore {
    /// The store in `state_dir`, created if needed.
    pub fn open(state_dir: &Path) -> Result<SandboxStore, RecordError> {
        let store = SandboxStore {
            records: state_dir.join(RECORDS_DIR),
            logs: state_dir.join(LOGS_DIR),
        };
        for dir in [&store.records, &store.logs] {
            std::fs::create_dir_all(dir).map_err(|source| RecordError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        Ok(store)
    }

    /// Every record, or why one could not be read.
    pub fn load_all(&self) -> Result<Vec<Result<SandboxRecord, RecordError>>, RecordError> {
        let io = |source| RecordError::Io {
            path: self.records.clone(),
            source,
        };
        let mut records = Vec::new();
        for entry in std::fs::read_dir(&self.records).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                records.push(read_record(&path));
            }
        }
        Ok(records)
    }

    /// Writes `record`, replacing the previous version atomically.
    pub fn save(&self, record: &SandboxRecord) -> Result<(), RecordError> {
        let path = self.record_path(&record.pod.uid);
        let tmp = path.with_extension("json.tmp");
        let io = |source| RecordError::Io {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(record).map_err(|e| io(e.into()))?;
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Removes the record of pod `uid` (gone already is fine).
    pub fn remove(&self, uid: &str) -> Result<(), RecordError> {
        let path = self.record_path(uid);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Io { path, source }),
        }
    }

    /// The pod server's log file: `<namespace>_<name>_<uid>.log`, like
    /// `/var/log/pods`.
    pub fn log_path(&self, pod: &PodRef) -> PathBuf {
        self.logs
            .join(format!("{}_{}_{}.log", pod.namespace, pod.name, pod.uid))
    }

    fn record_path(&self, uid: &str) -> PathBuf {
        // UIDs are UUIDs; anything else is hashed rather than trusted as a
        // file name.
        let safe = !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        let stem = if safe {
            uid.to_owned()
        } else {
            format!("uid-{:016x}", fnv1a64(uid.as_bytes()))
        };
        self.records.join(format!("{stem}.json"))
    }
}

fn read_record(path: &Path) -> Result<SandboxRecord, RecordError> {
    let text = std::fs::read(path).map_err(|source| RecordError::Io {
        path: path.to_owned(),
        source,
    })?;
    let unreadable = |reason: String| RecordError::Unreadable {
        path: path.to_owned(),
        reason,
    };
    let record: SandboxRecord =
        serde_json::from_slice(&text).map_err(|e| unreadable(e.to_string()))?;
    if record.version != FORMAT_VERSION {
        return Err(unreadable(format!(
            "format version {}, expected {FORMAT_VERSION}",
            record.version
        )));
    }
    Ok(record)
}

/// `<prefix><12 hex digits of a hash of the pod UID>`: stable for a pod,
/// so a namespace can be traced back to its pod by name alone.
pub fn netns_name(prefix: &str, uid: &str) -> String {
    let hash = format!("{:016x}", fnv1a64(uid.as_bytes()));
    format!("{prefix}{}", &hash[..12])
}

/// 64 random hex digits, as containerd's sandbox ids.
fn new_sandbox_id() -> std::io::Result<String> {
    crate::lab::pki::random_hex(32)
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust releases
/// (namespace names outlive the binary that made them).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network() -> NetworkConfig {
        NetworkConfig::parse(
            "/etc/cni/net.d/10-x.conflist".into(),
            r#"{"cniVersion": "1.1.0", "name": "x", "plugins": [{"type": "tailroute-bridge"}]}"#,
            true,
        )
        .unwrap()
    }

    fn pod(uid: &str) -> PodRef {
        PodRef {
            namespace: "default".into(),
            name: "web".into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn names_are_stable_and_distinct() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let a = netns_name("trln-n1-", "5f1c0d6e-0000-4000-8000-000000000001");
        let b = netns_name("trln-n1-", "5f1c0d6e-0000-4000-8000-000000000002");
        assert_eq!(a.len(), "trln-n1-".len() + 12);
        assert!(a.starts_with("trln-n1-"));
        assert_ne!(a, b);
        assert_eq!(
            a,
            netns_name("trln-n1-", "5f1c0d6e-0000-4000-8000-000000000001")
        );
        let id = new_sandbox_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_sandbox_id().unwrap());
    }

    #[test]
    fn records_round_trip_and_are_removed() {
        let dir = std::env::temp_dir().join(format!("tailroute-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = SandboxStore::open(&dir).unwrap();
        let mut record = SandboxRecord::new(pod("uid-1"), "p-", network(), Map::new()).unwrap();
        store.save(&record).unwrap();
        record.result = Some(serde_json::json!({"ips": []}));
        record.server = Some(ProcessId {
            pid: 42,
            start_time: 7,
        });
        store.save(&record).unwrap();
        let loaded: Vec<_> = store
            .load_all()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(loaded, vec![record.clone()]);
        assert_eq!(
            store.log_path(&record.pod),
            dir.join("logs/default_web_uid-1.log")
        );

        std::fs::write(dir.join("sandboxes/bad.json"), "{").unwrap();
        let errors = store
            .load_all()
            .unwrap()
            .into_iter()
            .filter_map(Result::err)
            .map(|e| e.to_string())
            .collect::<Vec<_>>();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("bad.json is unreadable"), "{errors:?}");

        store.remove("uid-1").unwrap();
        store.remove("uid-1").unwrap();
        assert_eq!(store.load_all().unwrap().len(), 1);
        assert!(store
            .record_path("../x")
            .ends_with(format!("uid-{:016x}.json", fnv1a64(b"../x"))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
