//! Deleting a link without making the runtime wait for it.
//!
//! The kernel takes about 20 ms to unregister a veth (an RCU barrier and a
//! wait for device references), far more than everything else DEL does.
//! DEL therefore first isolates the pod (host end down: no frame crosses
//! the bridge, so its addresses may be handed out again at once), releases
//! the addresses, and leaves the deletion to a detached grandchild process.
//! If that process never runs, the down link is harmless and is removed by
//! the namespace's own teardown, by GC, or by the next ADD into that namespace.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;

use nix::sys::wait::waitpid;
use nix::unistd::{fork, setsid, ForkResult};

use crate::netlink::Netlink;

/// Delete `link` (in the calling thread's namespace) from a detached
/// grandchild. Returns once the grandchild exists; `Err` means no process
/// could be made and the caller should delete the link itself.
///
/// Only for the single-threaded plugin binary: forking a multi-threaded
/// process and continuing to run Rust code in the child is not safe.
pub fn delete_link_detached(link: &str) -> io::Result<()> {
    // SAFETY: the plugin is single-threaded; the children only make
    // syscalls (netlink, dup2, setsid, fork) and leave through _exit.
    match unsafe { fork() }.map_err(io::Error::from)? {
        ForkResult::Parent { child } => {
            // The intermediate child exits at once; reap it so no zombie stays.
            let _ = waitpid(child, None);
            Ok(())
        }
        ForkResult::Child => {
            let _ = setsid();
            // SAFETY: as above.
            if let Ok(ForkResult::Child) = unsafe { fork() } {
                detach_stdio();
                if let Ok(mut nl) = Netlink::new() {
                    let _ = nl.delete_link(link);
                }
            }
            // SAFETY: leaving without running the parent's destructors or
            // flushing its buffered output twice.
            unsafe { libc::_exit(0) }
        }
    }
}

/// The runtime reads the plugin's stdout to EOF: the grandchild must not
/// hold it (or stderr) open while the kernel works.
fn detach_stdio() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..=2 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
