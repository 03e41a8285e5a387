//! Throwaway network namespaces and CNI plugin invocation for tailroute's
//! tests and benchmarks.
//!
//! Everything runs inside namespaces created here: a "node" namespace stands
//! in for the host (plugins are spawned inside it with `setns`), and pod
//! namespaces are what `CNI_NETNS` points at. Namespaces are deleted on
//! drop, so the real host's network is never touched and a panicking test
//! leaves nothing behind.
//!
//! ```no_run
//! use cni_testbed::{invoke, Netns, PluginCall};
//! use std::path::Path;
//!
//! let node = Netns::create("node")?;
//! let pod = Netns::create("pod")?;
//! let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "t", "type": "bridge"});
//! let pod_path = pod.path().to_string_lossy().into_owned();
//! let call = PluginCall::add("c1", &pod_path, "eth0", conf);
//! let out = invoke(Path::new("/usr/lib/cni/bridge"), &node, &call)?;
//! println!("{} in {:?}: {:?}", out.exit_code, out.elapsed, out.json());
//! # Ok::<(), std::io::Error>(())
//! ```

// Every public item is documented; keep it that way.
#![warn(missing_docs)]

mod call;
mod child;
mod enter;
mod invoke;
mod names;
mod netns;
mod stats;

pub use call::{PluginCall, Stdin, DEFAULT_CNI_PATH, DEFAULT_TIMEOUT};
pub use enter::{command_in, enter_netns_on_spawn};
pub use invoke::{invoke, invoke_argv, PluginOutput};
pub use names::{netns_name, unique_suffix, NETNS_PREFIX, SUFFIX_LEN};
pub use netns::{reap_stale, set_lo_up, Netns, NETNS_DIR};
pub use stats::percentile;

/// True if the process runs as root (needed for namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Panics with a clear message unless running as root.
///
/// For tests that need namespaces: they must fail, never silently pass,
/// when run unprivileged.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (it creates network namespaces); \
         run it as root, e.g. `sudo -E make test`"
    );
}
