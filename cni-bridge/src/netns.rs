//! Entering a network namespace for as long as a guard lives.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// While alive, the calling thread is in another network namespace; dropping
/// it returns the thread to where it was, even on an early return or panic.
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    /// Move the calling thread into `target` (an open namespace file).
    pub fn enter(target: &File) -> io::Result<Self> {
        let original = File::open("/proc/thread-self/ns/net")?;
        setns(target.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.original.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Carrying on in the wrong namespace would configure the wrong
            // host; stopping is the only safe answer.
            eprintln!("tailroute-bridge: cannot return to the original network namespace: {e}");
            std::process::abort();
        }
    }
}

/// Open a network namespace file such as `/run/netns/x` or `/proc/PID/ns/net`.
pub fn open_netns(path: &Path) -> io::Result<File> {
    File::open(path)
}
