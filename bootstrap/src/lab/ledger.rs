//! The record-before-create ledger: a file listing everything a lab may
//! have created, so that `down` can remove it all, also after an `up` that
//! was killed half-way.
//!
//! Every entry is written to disk *before* the thing it names is created.
//! A crash can therefore only leave an entry for something that does not
//! exist (teardown tolerates that), never something that exists without an
//! entry. Each write replaces the whole file atomically (temp file, fsync,
//! rename), so a reader sees the old list or the new one, never half.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lab::resource::{Removal, RemovalError, Resource};

/// Where labs keep their state by default: `/run/tailroute-lab/<name>/`.
/// On tmpfs, so a reboot (which also removes every namespace) clears it.
pub const DEFAULT_STATE_ROOT: &str = "/run/tailroute-lab";

/// The ledger's file name inside the state directory.
pub const LEDGER_FILE: &str = "ledger.json";

/// The on-disk format's version; bump it on incompatible changes.
const FORMAT_VERSION: u32 = 1;

/// Why the ledger could not be created, read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A ledger already exists: the lab is up, or a killed `up` left it.
    #[error(
        "lab state already exists at {}: the lab is up, or an earlier `up` was interrupted; \
         run `tailroute lab down` for it first",
        path.display()
    )]
    LabExists {
        /// The existing ledger file.
        path: PathBuf,
    },
    /// Reading or writing the state directory failed.
    #[error("lab state {}: {source}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The ledger file is not a ledger this version understands.
    #[error(
        "lab ledger {} is unreadable ({reason}); remove what it lists by hand \
         (`ip netns list`, look for the lab's `trl<tag>-` prefix), then delete the file",
        path.display()
    )]
    Unreadable {
        /// The ledger file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The ledger file's content.
#[derive(Debug, Serialize, Deserialize)]
struct LedgerFile {
    version: u32,
    resources: Vec<Resource>,
}

/// A lab's ledger: the state directory and the resources recorded in it,
/// in creation order.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    resources: Vec<Resource>,
}

/// What a successful [`Ledger::teardown`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Teardown {
    /// Resources that existed and were removed, in removal order.
    pub removed: Vec<Resource>,
    /// Resources that were already gone.
    pub already_gone: Vec<Resource>,
}

/// A teardown that could not remove everything. The ledger is kept,
/// listing what is left, so `down` can simply be run again.
#[derive(Debug, thiserror::Error)]
#[error(
    "lab teardown left {} thing(s) behind (still listed in {}; fix the cause and run `down` again): {}",
    failures.len(),
    ledger.display(),
    failures.iter().map(|(r, e)| format!("{r}: {e}")).collect::<Vec<_>>().join("; ")
)]
pub struct TeardownError {
    /// Every resource that could not be removed, with why.
    pub failures: Vec<(Resource, RemovalError)>,
    /// The ledger that still lists them.
    pub ledger: PathBuf,
    /// What was done before the failures.
    pub partial: Teardown,
}

impl Ledger {
    /// The default state directory of lab `name`.
    pub fn default_dir(name: &str) -> PathBuf {
        Path::new(DEFAULT_STATE_ROOT).join(name)
    }

    /// Starts a new, empty ledger in `dir` (created if needed).
    ///
    /// Fails with [`LedgerError::LabExists`] when `dir` already has one: a
    /// second `up` must not forget what the first one created.
    pub fn create(dir: impl Into<PathBuf>) -> Result<Ledger, LedgerError> {
        let ledger = Ledger {
            dir: dir.into(),
            resources: Vec::new(),
        };
        fs::create_dir_all(&ledger.dir).map_err(|source| LedgerError::Io {
            path: ledger.dir.clone(),
            source,
        })?;
        // Claim the name with a hard link of a complete file: atomic, fails
        // if a ledger exists, and never leaves an empty ledger behind.
        let claim = ledger
            .dir
            .join(format!("{LEDGER_FILE}.new-{}", std::process::id()));
        ledger.write_file(&claim)?;
        let linked = fs::hard_link(&claim, ledger.path());
        let _ = fs::remove_file(&claim);
        match linked {
            Ok(()) => Ok(ledger),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(LedgerError::LabExists {
                    path: ledger.path(),
                })
            }
            Err(source) => Err(LedgerError::Io {
                path: ledger.path(),
                source,
            }),
        }
    }

    /// Opens the ledger in `dir`; `None` when there is no state directory
    /// (nothing to tear down).
    ///
    /// A state directory without a ledger file (an `up` killed before its
    /// first entry) opens as an empty ledger, so teardown removes the
    /// directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Option<Ledger>, LedgerError> {
        let dir = dir.into();
        if !dir.is_dir() {
            return Ok(None);
        }
        let path = dir.join(LEDGER_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(Ledger {
                    dir,
                    resources: Vec::new(),
                }))
            }
            Err(source) => return Err(LedgerError::Io { path, source }),
        };
        let file: LedgerFile =
            serde_json::from_slice(&bytes).map_err(|e| LedgerError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if file.version != FORMAT_VERSION {
            return Err(LedgerError::Unreadable {
                path,
                reason: format!(
                    "format version {}, this tailroute reads {FORMAT_VERSION}",
                    file.version
                ),
            });
        }
        Ok(Some(Ledger {
            dir,
            resources: file.resources,
        }))
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ledger file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LEDGER_FILE)
    }

    /// Everything recorded, in creation order.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// Records `resource` durably. Call it *before* creating the resource.
    pub fn record(&mut self, resource: Resource) -> Result<(), LedgerError> {
        self.resources.push(resource);
        let result = self.persist();
        if result.is_err() {
            // Not on disk, so the caller must not create it: keep memory and
            // disk telling the same story.
            self.resources.pop();
        }
        result
    }

    /// Writes the whole list to a temp file and renames it over the ledger.
    fn persist(&self) -> Result<(), LedgerError> {
        let temp = self.dir.join(format!("{LEDGER_FILE}.tmp"));
        self.write_file(&temp)?;
        fs::rename(&temp, self.path()).map_err(|source| LedgerError::Io {
            path: self.path(),
            source,
        })?;
        // Make the rename itself durable (matters on a persistent state dir).
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Writes the ledger's content to `path`, fsynced.
    fn write_file(&self, path: &Path) -> Result<(), LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.to_owned(),
            source,
        };
        let content = LedgerFile {
            version: FORMAT_VERSION,
            resources: self.resources.clone(),
        };
        let json = serde_json::to_vec_pretty(&content).map_err(|e| LedgerError::Io {
            path: path.to_owned(),
            source: std::io::Error::other(e),
        })?;
        let mut file = File::create(path).map_err(io)?;
        file.write_all(&json).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Removes everything recorded, newest first, then the state directory.
    ///
    /// Things already gone are fine. A failure does not stop the teardown:
    /// every resource is tried and every failure reported. When something
    /// could not be removed, the ledger is rewritten to list exactly what
    /// is left and the state directory is kept, so running `down` again
    /// picks up where this one stopped.
    pub fn teardown(mut self) -> Result<Teardown, TeardownError> {
        let mut done = Teardown::default();
        let mut failures = Vec::new();
        for resource in self.resources.iter().rev() {
            match resource.remove() {
                Ok(Removal::Removed) => done.removed.push(resource.clone()),
                Ok(Removal::AlreadyGone) => done.already_gone.push(resource.clone()),
                Err(e) => failures.push((resource.clone(), e)),
            }
        }
        if failures.is_empty() {
            return match fs::remove_dir_all(&self.dir) {
                Ok(()) => Ok(done),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(done),
                Err(source) => {
                    let dir = Resource::Directory {
                        path: self.dir.clone(),
                    };
                    let error = RemovalError::Io {
                        action: "remove the lab state directory",
                        path: self.dir.clone(),
                        source,
                    };
                    Err(TeardownError {
                        failures: vec![(dir, error)],
                        ledger: self.path(),
                        partial: done,
                    })
                }
            };
        }
        // Keep creation order for what is left.
        self.resources
            .retain(|r| failures.iter().any(|(failed, _)| failed == r));
        // If even this write fails, the old (longer) ledger stays, which is
        // still a safe over-approximation of what exists.
        let _ = self.persist();
        Err(TeardownError {
            failures,
            ledger: self.path(),
            partial: done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("trl-ledger-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn file(dir: &Path, name: &str) -> Resource {
        Resource::File {
            path: dir.join(name),
        }
    }

    #[test]
    fn every_record_is_on_disk_before_it_returns() {
        let dir = scratch("record");
        let mut ledger = Ledger::create(&dir).unwrap();
        for i in 0..5 {
            ledger.record(file(&dir, &format!("f{i}"))).unwrap();
            let reread = Ledger::open(&dir).unwrap().unwrap();
            assert_eq!(reread.resources(), ledger.resources());
            assert_eq!(reread.resources().len(), i + 1);
        }
        // Only the ledger itself: no temp or claim files left around.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [LEDGER_FILE]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_create_is_refused_and_says_what_to_do() {
        let dir = scratch("twice");
        let _first = Ledger::create(&dir).unwrap();
        let err = Ledger::create(&dir).unwrap_err();
        assert!(matches!(err, LedgerError::LabExists { .. }), "{err}");
        assert!(err.to_string().contains("lab down"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn teardown_goes_newest_first_tolerates_missing_and_removes_the_state_dir() {
        let dir = scratch("teardown");
        let mut ledger = Ledger::create(&dir).unwrap();
        let sub = dir.join("sub");
        ledger
            .record(Resource::Directory { path: sub.clone() })
            .unwrap();
        fs::create_dir(&sub).unwrap();
        ledger.record(file(&sub, "a")).unwrap();
        fs::write(sub.join("a"), "a").unwrap();
        // Recorded, never created: what a killed `up` leaves.
        ledger.record(file(&sub, "never")).unwrap();
        let done = Ledger::open(&dir).unwrap().unwrap().teardown().unwrap();
        assert_eq!(done.already_gone, [file(&sub, "never")]);
        // The file went before its directory (reverse order): removing the
        // directory first would have made the file "already gone".
        assert_eq!(
            done.removed,
            [file(&sub, "a"), Resource::Directory { path: sub }]
        );
        assert!(!dir.exists());
        assert!(Ledger::open(&dir).unwrap().is_none());
    }

    #[test]
    fn a_failed_teardown_keeps_going_and_keeps_what_is_left_in_the_ledger() {
        let dir = scratch("failing");
        let mut ledger = Ledger::create(&dir).unwrap();
        // Removing a directory as a File fails (EISDIR), twice.
        for name in ["d1", "ok", "d2"] {
            ledger.record(file(&dir, name)).unwrap();
        }
        fs::create_dir(dir.join("d1")).unwrap();
        fs::write(dir.join("ok"), "x").unwrap();
        fs::create_dir(dir.join("d2")).unwrap();
        let err = ledger.teardown().unwrap_err();
        assert_eq!(err.failures.len(), 2, "{err}");
        assert_eq!(err.partial.removed, [file(&dir, "ok")]);
        let text = err.to_string();
        assert!(
            text.contains("d1") && text.contains("d2") && text.contains("run `down` again"),
            "{text}"
        );
        let left = Ledger::open(&dir).unwrap().unwrap();
        assert_eq!(left.resources(), [file(&dir, "d1"), file(&dir, "d2")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_state_dir_without_ledger_tears_down_to_nothing() {
        let dir = scratch("empty");
        fs::create_dir_all(&dir).unwrap();
        let ledger = Ledger::open(&dir).unwrap().unwrap();
        assert!(ledger.resources().is_empty());
        ledger.teardown().unwrap();
        assert!(!dir.exists());
    }

    #[test]
    fn an_unreadable_ledger_is_an_error_that_says_what_to_do() {
        let dir = scratch("corrupt");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LEDGER_FILE), "{not json").unwrap();
        let err = Ledger::open(&dir).unwrap_err();
        assert!(err.to_string().contains("ip netns list"), "{err}");
        fs::write(dir.join(LEDGER_FILE), r#"{"version":99,"resources":[]}"#).unwrap();
        let err = Ledger::open(&dir).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
