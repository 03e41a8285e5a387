//! The kinds of things a lab creates on the host, and how each is found and
//! removed again.
//!
//! Removal is idempotent: something that is already gone counts as removed
//! ([`Removal::AlreadyGone`]), because a teardown after a killed `up` meets
//! entries that were recorded but never created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::command::{CommandError, HostCommand};
use crate::lab::process::{self, ProcessId};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// How long a recorded process gets to exit after SIGTERM before SIGKILL.
const PROCESS_GRACE: Duration = Duration::from_secs(3);

/// Why a resource could not be checked or removed.
#[derive(Debug, thiserror::Error)]
pub enum RemovalError {
    /// A command (`ip`, `nft`, `kill`) failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// A process could not be stopped.
    #[error("could not stop process {pid}: {source}")]
    Stop {
        /// Its pid.
        pid: u32,
        /// The failure.
        source: std::io::Error,
    },
    /// A file-system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was attempted (`remove file`).
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// One thing the lab may have created on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// A named network namespace (`/run/netns/<name>`).
    Namespace {
        /// Its name.
        name: String,
    },
    /// A network interface inside a lab namespace (a bridge or one end of
    /// a veth pair; deleting one end deletes both).
    Link {
        /// The namespace it lives in.
        namespace: String,
        /// The interface name.
        name: String,
    },
    /// An nftables table inside a lab namespace.
    NftTable {
        /// The namespace it lives in.
        namespace: String,
        /// The table family (`inet`, `ip`, ...).
        family: String,
        /// The table name.
        name: String,
    },
    /// A regular file.
    File {
        /// Its path.
        path: PathBuf,
    },
    /// A directory, removed with everything in it.
    Directory {
        /// Its path.
        path: PathBuf,
    },
    /// A process the lab started. A pid cannot be known before the spawn,
    /// so this one is recorded right after; the start time guards against
    /// signalling an unrelated process that reused the pid later.
    Process {
        /// Its pid.
        pid: u32,
        /// Its start time, in clock ticks since boot (`/proc/<pid>/stat`
        /// field 22).
        start_time: u64,
        /// What it is, for reports (`tailscaled n1`).
        what: String,
    },
}

/// What removing a resource did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// It existed and was removed.
    Removed,
    /// It did not exist (never created, or removed with its namespace).
    AlreadyGone,
}

impl Resource {
    /// A [`Resource::Process`] for a process that runs now.
    ///
    /// Fails when the process is already gone (nothing to record then).
    pub fn process(pid: u32, what: impl Into<String>) -> std::io::Result<Resource> {
        let id = i32::try_from(pid)
            .ok()
            .and_then(ProcessId::of)
            .filter(ProcessId::is_running)
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("process {pid} exited before it could be recorded"),
                )
            })?;
        Ok(Resource::Process {
            pid,
            start_time: id.start_time,
            what: what.into(),
        })
    }

    /// True when the resource currently exists.
    pub fn exists(&self) -> Result<bool, RemovalError> {
        Ok(match self {
            Resource::Namespace { name } => namespace_exists(name),
            Resource::Link { namespace, name } => {
                namespace_exists(namespace)
                    && HostCommand::ip_in(namespace, &["link", "show", "dev", name])
                        .run()
                        .is_ok()
            }
            Resource::NftTable {
                namespace,
                family,
                name,
            } => {
                namespace_exists(namespace)
                    && HostCommand::exec_in(namespace, "nft", &["list", "table", family, name])
                        .run()
                        .is_ok()
            }
            Resource::File { path } | Resource::Directory { path } => {
                path.symlink_metadata().is_ok()
            }
            Resource::Process {
                pid, start_time, ..
            } => process_id(*pid, *start_time).is_running(),
        })
    }

    /// Removes the resource, or finds it already gone.
    ///
    /// A failed attempt is checked again: if the thing is gone anyway (e.g.
    /// its namespace vanished in between), that is success.
    pub fn remove(&self) -> Result<Removal, RemovalError> {
        if !self.exists()? {
            return Ok(Removal::AlreadyGone);
        }
        match self.try_remove() {
            Ok(()) => Ok(Removal::Removed),
            Err(_) if !self.exists()? => Ok(Removal::Removed),
            Err(e) => Err(e),
        }
    }

    fn try_remove(&self) -> Result<(), RemovalError> {
        match self {
            Resource::Namespace { name } => {
                HostCommand::new("ip", &["netns", "del", name]).run()?;
            }
            Resource::Link { namespace, name } => {
                HostCommand::ip_in(namespace, &["link", "del", "dev", name]).run()?;
            }
            Resource::NftTable {
                namespace,
                family,
                name,
            } => {
                HostCommand::exec_in(namespace, "nft", &["delete", "table", family, name]).run()?;
            }
            Resource::File { path } => {
                std::fs::remove_file(path).map_err(|source| RemovalError::Io {
                    action: "remove file",
                    path: path.clone(),
                    source,
                })?;
            }
            Resource::Directory { path } => {
                std::fs::remove_dir_all(path).map_err(|source| RemovalError::Io {
                    action: "remove directory",
                    path: path.clone(),
                    source,
                })?;
            }
            Resource::Process {
                pid, start_time, ..
            } => process::stop(&process_id(*pid, *start_time), PROCESS_GRACE)
                .map_err(|source| RemovalError::Stop { pid: *pid, source })?,
        }
        Ok(())
    }
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resource::Namespace { name } => write!(f, "namespace {name}"),
            Resource::Link { namespace, name } => write!(f, "link {name} in {namespace}"),
            Resource::NftTable {
                namespace,
                family,
                name,
            } => write!(f, "nft table {family} {name} in {namespace}"),
            Resource::File { path } => write!(f, "file {}", path.display()),
            Resource::Directory { path } => write!(f, "directory {}", path.display()),
            Resource::Process { pid, what, .. } => write!(f, "process {pid} ({what})"),
        }
    }
}

/// True when `/run/netns/<name>` exists.
pub fn namespace_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Names of every named network namespace starting with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The [`ProcessId`] of a recorded process (a pid that does not fit an
/// `i32` names no process: -1 is never a pid).
fn process_id(pid: u32, start_time: u64) -> ProcessId {
    ProcessId {
        pid: i32::try_from(pid).unwrap_or(-1),
        start_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_format_is_tagged_and_stable() {
        let r = Resource::Link {
            namespace: "trlx-ul".into(),
            name: "trlx-br".into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"link","namespace":"trlx-ul","name":"trlx-br"}"#
        );
        assert_eq!(serde_json::from_str::<Resource>(&json).unwrap(), r);
    }

    #[test]
    fn files_and_directories_are_removed_once_and_then_already_gone() {
        let dir = std::env::temp_dir().join(format!("trl-res-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, "x").unwrap();
        let file = Resource::File { path: file };
        let dir = Resource::Directory { path: dir };
        assert_eq!(file.remove().unwrap(), Removal::Removed);
        assert_eq!(file.remove().unwrap(), Removal::AlreadyGone);
        assert_eq!(dir.remove().unwrap(), Removal::Removed);
        assert!(!dir.exists().unwrap());
    }

    #[test]
    fn a_recorded_process_is_stopped_and_a_reused_pid_is_left_alone() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let recorded = Resource::process(child.id(), "sleep").unwrap();
        let Resource::Process {
            pid, start_time, ..
        } = recorded
        else {
            unreachable!()
        };
        // Same pid, other start time: must not be touched.
        let impostor = Resource::Process {
            pid,
            start_time: start_time + 1,
            what: "not ours".into(),
        };
        assert_eq!(impostor.remove().unwrap(), Removal::AlreadyGone);
        assert!(recorded.exists().unwrap());
        assert_eq!(recorded.remove().unwrap(), Removal::Removed);
        let status = child.wait().unwrap();
        assert!(!status.success(), "sleep was killed: {status}");
        assert_eq!(recorded.remove().unwrap(), Removal::AlreadyGone);
    }
}
