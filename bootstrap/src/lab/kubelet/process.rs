//! Pod server processes: starting one inside a pod's network namespace and
//! finding what runs in one. They are recognised and stopped as every lab
//! process is ([`crate::lab::process`]).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub use crate::lab::process::{stop, ProcessId};

/// Every process whose network namespace is the one at `netns_path`: what
/// must be stopped before a pod's namespace goes, whatever the records say.
pub fn in_netns(netns_path: &Path) -> io::Result<Vec<ProcessId>> {
    Ok(crate::lab::daemon::pids_in_netns(netns_path)?
        .into_iter()
        .filter_map(|pid| i32::try_from(pid).ok().and_then(ProcessId::of))
        .collect())
}

/// What the pod server is started with.
#[derive(Debug, Clone)]
pub struct PodServerSpawn<'a> {
    /// The `tailroute` binary (`/proc/self/exe`).
    pub exe: &'a Path,
    /// The pod's network namespace file.
    pub netns: &'a Path,
    /// `namespace/name`.
    pub pod: &'a str,
    /// Its TCP port.
    pub port: u16,
    /// Where its stdout and stderr go (appended).
    pub log: &'a Path,
}

/// Starts `tailroute lab pod-server` inside the pod's namespace, in a
/// session of its own (so it outlives the kubelet, as containers outlive a
/// kubelet restart). The caller keeps the [`Child`] to reap it.
pub fn spawn_pod_server(spawn: &PodServerSpawn<'_>) -> io::Result<(ProcessId, Child)> {
    let netns: OwnedFd = File::open(spawn.netns)?.into();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spawn.log)?;
    let mut cmd = Command::new(spawn.exe);
    // `ps` shows `tailroute lab pod-server ...`, not `/proc/self/exe ...`.
    cmd.arg0("tailroute")
        .args(["lab", "pod-server", "--pod", spawn.pod, "--port"])
        .arg(spawn.port.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: the closure runs in the forked child before exec and makes
    // two async-signal-safe syscalls on a descriptor the closure owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = i32::try_from(child.id()).map_err(|_| io::Error::other("pid out of range"))?;
    // The child exists (unreaped) until we wait for it, so its stat is
    // there to read.
    let id = ProcessId::of(pid).ok_or_else(|| {
        io::Error::other(format!("pod server {pid} vanished right after starting"))
    })?;
    Ok((id, child))
}
