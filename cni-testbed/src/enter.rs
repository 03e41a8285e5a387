//! Running a program inside a network namespace without `ip netns exec`.
//!
//! `ip netns exec` costs an extra exec and a mount namespace per call, which
//! would pollute plugin timings. Instead the namespace file is opened in the
//! parent and the child joins it with `setns(2)` between `fork` and `exec`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// Arranges for `cmd` to run inside the network namespace at `netns_path`
/// (a `/run/netns/<name>` or `/proc/<pid>/ns/net` file).
///
/// The namespace file is opened here, in the parent, so a bad path is
/// reported right away and the child does nothing but one `setns` syscall
/// (async-signal-safe, as required after `fork`). The descriptor is owned by
/// the closure, hence by `cmd`: it stays valid for as many spawns as `cmd`
/// is used for, and is closed when `cmd` is dropped. It is opened
/// close-on-exec, so the spawned program never inherits it.
pub fn enter_netns_on_spawn(cmd: &mut Command, netns_path: &Path) -> io::Result<()> {
    let fd: OwnedFd = File::open(netns_path)?.into();
    // SAFETY: the closure runs in the forked child before exec and only
    // performs the setns syscall on a descriptor that the closure itself
    // keeps alive; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
    Ok(())
}

/// A [`Command`] for `program` that will run inside the network namespace at
/// `netns_path`; see [`enter_netns_on_spawn`].
pub fn command_in(netns_path: &Path, program: impl AsRef<OsStr>) -> io::Result<Command> {
    let mut cmd = Command::new(program);
    enter_netns_on_spawn(&mut cmd, netns_path)?;
    Ok(cmd)
}
