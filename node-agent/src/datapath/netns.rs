//! Which network namespace the datapath lives in, and entering it safely.
//!
//! In production the agent owns the datapath of the namespace it runs in
//! (the host's). Tests, and anything that manages another namespace, name
//! a namespace file instead. Sysctls under `/proc/sys/net` and netlink
//! sockets belong to the namespace of the *thread* that opens them, so the
//! work is done on the calling thread inside a [`NetnsGuard`]; `nft` is
//! started inside the namespace instead, without moving any thread.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use super::DatapathError;

/// The network namespace whose datapath is managed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetnsTarget {
    /// The namespace of the calling thread (the agent on the host).
    #[default]
    Current,
    /// The namespace behind a file such as `/run/netns/<name>` or
    /// `/proc/<pid>/ns/net`.
    Path(PathBuf),
}

impl NetnsTarget {
    /// The namespace at `path`.
    pub fn path(path: impl Into<PathBuf>) -> NetnsTarget {
        NetnsTarget::Path(path.into())
    }

    /// Moves the calling thread into this namespace until the returned
    /// guard drops; for [`NetnsTarget::Current`] nothing moves and there is
    /// no guard.
    ///
    /// Never hold the guard across an `.await`: the task could resume on
    /// another thread while this one stays in the wrong namespace.
    pub fn enter(&self) -> Result<Option<NetnsGuard>, DatapathError> {
        match self {
            NetnsTarget::Current => Ok(None),
            NetnsTarget::Path(path) => NetnsGuard::enter(path).map(Some),
        }
    }

    /// Arranges for `cmd` to start inside this namespace (`setns` in the
    /// child between fork and exec), leaving the calling thread alone.
    pub(crate) fn prepare(&self, cmd: &mut Command) -> Result<(), DatapathError> {
        let NetnsTarget::Path(path) = self else {
            return Ok(());
        };
        let file = File::open(path).map_err(|source| DatapathError::Netns {
            path: path.clone(),
            source,
        })?;
        // SAFETY: the closure runs in the forked child before exec and only
        // makes one setns syscall on a descriptor the closure owns; it
        // allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(move || setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Into::into));
        }
        Ok(())
    }
}

/// While alive, the calling thread is in another network namespace;
/// dropping it puts the thread back where it was, also on an early return
/// with `?` or a panic.
#[derive(Debug)]
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    /// Moves the calling thread into the namespace at `path`.
    pub fn enter(path: &Path) -> Result<NetnsGuard, DatapathError> {
        let netns_error = |path: &Path, source| DatapathError::Netns {
            path: path.to_owned(),
            source,
        };
        // Opened before moving: it is the way back.
        let here = Path::new("/proc/thread-self/ns/net");
        let original = File::open(here).map_err(|e| netns_error(here, e))?;
        let target = File::open(path).map_err(|e| netns_error(path, e))?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| netns_error(path, e.into()))?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A thread left in the wrong namespace would go on to program
            // the wrong host (or the host instead of a test namespace);
            // stopping is the only safe answer.
            eprintln!("tailroute-agent: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}
