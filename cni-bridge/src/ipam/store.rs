//! The IPAM store: one JSON state file per network, changed only under an
//! exclusive lock and replaced atomically (temp file + rename), so a plugin
//! killed at any instant leaves either the old or the new state.
//!
//! Reboots: every state is stamped with the kernel's boot id. A state from
//! an earlier boot describes pods that no longer exist, so it is discarded,
//! even when `dataDir` is on disk rather than the default tmpfs. That is why
//! no fsync is needed: a write lost to power loss belongs to a boot whose
//! reservations are void anyway (and an fsync costs 0.5 ms per ADD on ext4).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::attachment::{Attachment, AttachmentKey};
use crate::error::CniError;

const STATE_FILE: &str = "state.json";
const TEMP_FILE: &str = "state.json.tmp";
const LOCK_FILE: &str = "lock";
/// Format version of the state file; bumped on incompatible changes.
pub const STATE_VERSION: u32 = 1;

/// Everything the store keeps for one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// [`STATE_VERSION`].
    pub version: u32,
    /// Every live attachment: its addresses are reserved.
    pub attachments: Vec<Attachment>,
    /// Last address handed out per range set, so addresses rotate instead of
    /// being reused at once (a just-freed IP may still sit in peers' caches).
    #[serde(default)]
    pub last_reserved: BTreeMap<String, IpAddr>,
    /// The kernel boot id when the state was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            attachments: Vec::new(),
            last_reserved: BTreeMap::new(),
            boot_id: None,
        }
    }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`); `None` if unreadable.
pub fn current_boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

impl State {
    /// The record for `key`, if any.
    pub fn find(&self, key: &AttachmentKey) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.is(key))
    }

    /// Remove and return the record for `key`.
    pub fn remove(&mut self, key: &AttachmentKey) -> Option<Attachment> {
        let i = self.attachments.iter().position(|a| a.is(key))?;
        Some(self.attachments.swap_remove(i))
    }
}

/// The store of one network, locked for as long as this value lives.
pub struct LockedStore {
    dir: PathBuf,
    // Held for the flock; the kernel drops the lock if the process dies.
    _lock: File,
    /// The state as read under the lock; change it, then [`LockedStore::commit`].
    pub state: State,
}

impl LockedStore {
    /// Create the directory if needed, take the exclusive lock and read the state.
    pub fn open(dir: &Path) -> Result<Self, CniError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| CniError::io(format!("creating IPAM store {}", dir.display()), e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| CniError::io(format!("opening {}", lock_path.display()), e))?;
        lock.lock()
            .map_err(|e| CniError::io(format!("locking {}", lock_path.display()), e))?;
        let state = read_state(dir)?;
        Ok(LockedStore {
            dir: dir.to_owned(),
            _lock: lock,
            state,
        })
    }

    /// Like [`LockedStore::open`], but `None` when the store was never
    /// created: DEL and GC then have nothing to release and create nothing.
    pub fn open_existing(dir: &Path) -> Result<Option<Self>, CniError> {
        if dir.join(LOCK_FILE).exists() {
            Self::open(dir).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Write the state atomically, stamped with this boot's id.
    pub fn commit(&mut self) -> Result<(), CniError> {
        self.state.boot_id = current_boot_id();
        let tmp = self.dir.join(TEMP_FILE);
        let path = self.dir.join(STATE_FILE);
        let bytes =
            serde_json::to_vec(&self.state).map_err(|e| CniError::io("encoding IPAM state", e))?;
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| CniError::io(format!("writing {}", path.display()), e))
    }
}

/// Read the state without locking (the file is only ever replaced whole).
/// A missing file is an empty state; a damaged one is an error, never a reset,
/// because resetting would hand out addresses that pods still hold.
pub fn read_state(dir: &Path) -> Result<State, CniError> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(CniError::io(format!("reading {}", path.display()), e)),
    };
    let state: State = match serde_json::from_slice(&bytes) {
        Ok(state) => state,
        // Written before this boot (power loss mid-write on a disk dataDir):
        // its pods are gone, so start afresh and keep the file for inspection.
        Err(_) if written_before_this_boot(&path) => {
            let aside = dir.join("state.json.damaged");
            let _ = fs::rename(&path, &aside);
            return Ok(State::default());
        }
        Err(e) => {
            return Err(
                CniError::io(format!("IPAM state {} is damaged", path.display()), e).details(
                    "tailroute-bridge never writes a partial file, so something else changed it; \
                 move it aside only after every pod on this node is gone, or restore it",
                ),
            )
        }
    };
    if state.boot_id.is_some() && state.boot_id != current_boot_id() {
        return Ok(State::default());
    }
    if state.version != STATE_VERSION {
        return Err(CniError::io(
            format!(
                "IPAM state {} has format version {}",
                path.display(),
                state.version
            ),
            format!("this tailroute-bridge reads version {STATE_VERSION}"),
        ));
    }
    Ok(state)
}

fn written_before_this_boot(path: &Path) -> bool {
    let boot_time = fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines().find_map(|l| {
            l.strip_prefix("btime ")
                .and_then(|t| t.trim().parse::<i64>().ok())
        })
    });
    match (boot_time, fs::metadata(path)) {
        (Some(boot), Ok(meta)) => meta.mtime() < boot,
        _ => false,
    }
}

/// Every attachment of a network, for the node agent and for tools.
pub fn read_attachments(data_dir: &Path, network: &str) -> Result<Vec<Attachment>, CniError> {
    Ok(read_state(&data_dir.join(network))?.attachments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trb-store-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn record(id: &str, ip: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: None,
            host_veth: "trv".into(),
            ips: vec![ip.parse().expect("cidr")],
            pod: None,
            created_unix: 0,
        }
    }

    #[test]
    fn commit_then_reopen_sees_the_same_state_and_leaves_no_temp_file() {
        let dir = temp_dir("roundtrip");
        {
            let mut s = LockedStore::open(&dir).expect("open");
            assert!(s.state.attachments.is_empty());
            s.state.attachments.push(record("a", "10.0.0.2/24"));
            s.commit().expect("commit");
        }
        let s = LockedStore::open(&dir).expect("reopen");
        assert_eq!(s.state.attachments.len(), 1);
        assert!(!dir.join(TEMP_FILE).exists());
        drop(s);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_damaged_state_file_is_an_error_not_a_reset() {
        let dir = temp_dir("damaged");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(STATE_FILE), b"{\"version\":1,\"attach").expect("write");
        let err = LockedStore::open(&dir).err().expect("damaged");
        assert!(err.msg.contains("damaged"), "{err}");
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn a_state_from_an_earlier_boot_is_discarded() {
        let dir = temp_dir("boot");
        fs::create_dir_all(&dir).expect("mkdir");
        let mut old = State {
            boot_id: Some("an-earlier-boot".into()),
            ..State::default()
        };
        old.attachments.push(record("gone", "10.0.0.2/24"));
        fs::write(
            dir.join(STATE_FILE),
            serde_json::to_vec(&old).expect("json"),
        )
        .expect("write");
        assert!(read_state(&dir).expect("read").attachments.is_empty());

        let mut s = LockedStore::open(&dir).expect("open");
        s.state.attachments.push(record("live", "10.0.0.3/24"));
        s.commit().expect("commit");
        drop(s);
        let now = read_state(&dir).expect("read");
        assert_eq!(now.attachments.len(), 1, "this boot's state is kept");
        assert_eq!(now.boot_id, current_boot_id());
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_lock_excludes_a_second_holder() {
        let dir = temp_dir("lock");
        let first = LockedStore::open(&dir).expect("open");
        let other = File::open(dir.join(LOCK_FILE)).expect("lock file");
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(first);
        assert!(other.try_lock().is_ok());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
