//! Which of tailscaled's advertised routes are the agent's.
//!
//! AdvertiseRoutes is one list shared by everyone who runs `tailscale set`
//! on the node. The agent adds its podCIDR(s) to it and must never drop a
//! route someone else put there (k3s's cleanup wiping every advertised
//! route is a reported failure). So it remembers, in a small file, the
//! routes it added itself: a changed podCIDR withdraws only the old one,
//! and `--cleanup` withdraws only these.
//!
//! A podCIDR that was already advertised before the agent got to it is not
//! claimed: someone else put it there, and it stays theirs.
//!
//! The ledger is written *before* the prefs change that it describes
//! (routes about to be added are claimed first, routes being withdrawn are
//! released only after), so a crash between the two never leaves one of the
//! agent's routes unclaimed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The file name under the agent's state directory.
pub const LEDGER_FILE: &str = "advertised-routes.json";

/// The routes the agent added to AdvertiseRoutes, persisted.
#[derive(Debug, Clone)]
pub struct RouteLedger {
    path: PathBuf,
    routes: BTreeSet<IpNet>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerFile {
    version: u32,
    routes: Vec<IpNet>,
}

/// What to send to tailscaled and what to remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    /// The whole AdvertiseRoutes list to set.
    pub advertise: Vec<IpNet>,
    /// Routes the agent adds now.
    pub added: Vec<IpNet>,
    /// Routes the agent added earlier and withdraws now.
    pub withdrawn: Vec<IpNet>,
    /// The agent's routes once the change is made.
    pub owned_after: BTreeSet<IpNet>,
}

impl RoutePlan {
    /// Whether AdvertiseRoutes must change.
    pub fn changes_prefs(&self) -> bool {
        !self.added.is_empty() || !self.withdrawn.is_empty()
    }
}

/// The ledger could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing the file failed.
    #[error("the route ledger {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not what this agent writes.
    #[error(
        "the route ledger {path} is unreadable ({reason}); it lists the routes the agent \
         advertised. Check AdvertiseRoutes with `tailscale debug prefs`, then delete the \
         file and restart the agent"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

impl RouteLedger {
    /// Opens the ledger in `state_dir`; a missing file is an empty ledger.
    pub fn open(state_dir: &Path) -> Result<RouteLedger, LedgerError> {
        let path = state_dir.join(LEDGER_FILE);
        let routes = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: LedgerFile =
                    serde_json::from_slice(&bytes).map_err(|e| LedgerError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if file.version != 1 {
                    return Err(LedgerError::Corrupt {
                        path,
                        reason: format!("version {} is not 1", file.version),
                    });
                }
                file.routes.into_iter().collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => return Err(LedgerError::Io { path, source }),
        };
        Ok(RouteLedger { path, routes })
    }

    /// The routes the agent added.
    pub fn routes(&self) -> &BTreeSet<IpNet> {
        &self.routes
    }

    /// Plans the move from `current` AdvertiseRoutes to one that carries
    /// `desired` (this node's podCIDRs) and none of the agent's other routes.
    pub fn plan(&self, current: &[IpNet], desired: &[IpNet]) -> RoutePlan {
        let desired: BTreeSet<IpNet> = desired.iter().copied().collect();
        let withdrawn: Vec<IpNet> = self
            .routes
            .iter()
            .filter(|r| !desired.contains(r) && current.contains(r))
            .copied()
            .collect();
        let added: Vec<IpNet> = desired
            .iter()
            .filter(|r| !current.contains(r))
            .copied()
            .collect();
        // Ours afterwards: what we add now, plus what we added before and
        // still want. A desired route already advertised by someone else
        // stays theirs.
        let owned_after = desired
            .iter()
            .filter(|r| added.contains(r) || self.routes.contains(r))
            .copied()
            .collect();
        let mut advertise: Vec<IpNet> = current
            .iter()
            .filter(|r| !withdrawn.contains(r))
            .copied()
            .collect();
        advertise.extend(added.iter().copied());
        RoutePlan {
            advertise,
            added,
            withdrawn,
            owned_after,
        }
    }

    /// Records the routes about to be added (call before changing prefs).
    pub fn claim(&mut self, plan: &RoutePlan) -> Result<(), LedgerError> {
        let mut routes = self.routes.clone();
        routes.extend(plan.added.iter().copied());
        self.store(routes)
    }

    /// Records the state after the change went through.
    pub fn settle(&mut self, plan: &RoutePlan) -> Result<(), LedgerError> {
        self.store(plan.owned_after.clone())
    }

    /// Forgets every route (after `--cleanup` withdrew them).
    pub fn clear(&mut self) -> Result<(), LedgerError> {
        self.store(BTreeSet::new())
    }

    fn store(&mut self, routes: BTreeSet<IpNet>) -> Result<(), LedgerError> {
        if routes == self.routes && self.path.exists() {
            return Ok(());
        }
        let body = serde_json::to_vec_pretty(&LedgerFile {
            version: 1,
            routes: routes.iter().copied().collect(),
        })
        .map_err(|e| LedgerError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomically(&self.path, &body).map_err(|source| LedgerError::Io {
            path: self.path.clone(),
            source,
        })?;
        self.routes = routes;
        Ok(())
    }
}

/// Writes `body` to `path` through a temporary file in the same directory
/// and a rename, so a reader sees the old file or the new one, never half.
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A leading dot and no .conf/.conflist suffix: a CNI runtime scanning
    // the directory never picks up the half-written file.
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tempdir;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|r| r.parse().expect("prefix")).collect()
    }

    fn ledger_with(dir: &Path, owned: &[&str]) -> RouteLedger {
        let mut ledger = RouteLedger::open(dir).expect("open");
        ledger
            .store(nets(owned).into_iter().collect())
            .expect("store");
        ledger
    }

    #[test]
    fn adds_the_pod_cidr_and_keeps_the_users_routes() {
        let dir = tempdir();
        let ledger = RouteLedger::open(dir.path()).expect("open");
        let plan = ledger.plan(&nets(&["192.168.1.0/24"]), &nets(&["10.244.1.0/24"]));
        assert_eq!(plan.advertise, nets(&["192.168.1.0/24", "10.244.1.0/24"]));
        assert_eq!(plan.added, nets(&["10.244.1.0/24"]));
        assert!(plan.withdrawn.is_empty());
        assert!(plan.changes_prefs());
    }

    #[test]
    fn a_changed_pod_cidr_withdraws_only_the_old_one() {
        let dir = tempdir();
        let ledger = ledger_with(dir.path(), &["10.244.1.0/24"]);
        let current = nets(&["10.244.1.0/24", "192.168.1.0/24", "10.244.9.0/24"]);
        let plan = ledger.plan(&current, &nets(&["10.244.2.0/24"]));
        assert_eq!(
            plan.advertise,
            nets(&["192.168.1.0/24", "10.244.9.0/24", "10.244.2.0/24"])
        );
        assert_eq!(plan.withdrawn, nets(&["10.244.1.0/24"]));
        assert_eq!(
            plan.owned_after,
            nets(&["10.244.2.0/24"]).into_iter().collect()
        );
    }

    #[test]
    fn nothing_to_do_when_everything_is_in_place() {
        let dir = tempdir();
        let ledger = ledger_with(dir.path(), &["10.244.1.0/24"]);
        let plan = ledger.plan(
            &nets(&["192.168.1.0/24", "10.244.1.0/24"]),
            &nets(&["10.244.1.0/24"]),
        );
        assert!(!plan.changes_prefs());
        assert_eq!(plan.advertise, nets(&["192.168.1.0/24", "10.244.1.0/24"]));
    }

    #[test]
    fn a_route_someone_else_advertised_stays_theirs() {
        let dir = tempdir();
        let ledger = RouteLedger::open(dir.path()).expect("open");
        let plan = ledger.plan(&nets(&["10.244.1.0/24"]), &nets(&["10.244.1.0/24"]));
        assert!(!plan.changes_prefs());
        assert!(plan.owned_after.is_empty(), "not ours: {plan:?}");
    }

    #[test]
    fn a_route_wiped_by_a_reset_is_added_again_and_stays_ours() {
        let dir = tempdir();
        let ledger = ledger_with(dir.path(), &["10.244.1.0/24"]);
        let plan = ledger.plan(&[], &nets(&["10.244.1.0/24"]));
        assert_eq!(plan.added, nets(&["10.244.1.0/24"]));
        assert_eq!(
            plan.owned_after,
            nets(&["10.244.1.0/24"]).into_iter().collect()
        );
    }

    #[test]
    fn claims_before_and_settles_after() {
        let dir = tempdir();
        let mut ledger = ledger_with(dir.path(), &["10.244.1.0/24"]);
        let plan = ledger.plan(&nets(&["10.244.1.0/24"]), &nets(&["10.244.2.0/24"]));
        ledger.claim(&plan).expect("claim");
        // A crash here: a new agent still owns both.
        let reopened = RouteLedger::open(dir.path()).expect("reopen");
        assert_eq!(reopened.routes().len(), 2);
        ledger.settle(&plan).expect("settle");
        let reopened = RouteLedger::open(dir.path()).expect("reopen");
        assert_eq!(
            reopened.routes(),
            &nets(&["10.244.2.0/24"]).into_iter().collect()
        );
    }

    #[test]
    fn a_corrupt_ledger_says_what_to_do() {
        let dir = tempdir();
        std::fs::write(
            dir.path().join(LEDGER_FILE),
            b"{\"version\":1,\"routes\":[\"x\"]}",
        )
        .expect("write");
        let msg = RouteLedger::open(dir.path())
            .expect_err("corrupt")
            .to_string();
        assert!(msg.contains("delete the file"), "{msg}");
    }
}
