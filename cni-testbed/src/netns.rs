//! Throwaway named network namespaces.
//!
//! Everything the tests and the benchmark do happens inside namespaces made
//! here (the "node" included), so the real host's network is never touched.
//! Deletion is tied to `Drop`, so a panicking test still cleans up.

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::enter::command_in;
use crate::names::{creator_pid, netns_name};

/// Directory where `ip netns` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace created with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a fresh namespace named `trtb-<tag>-<pid>-<counter>`.
    ///
    /// Needs root (CAP_SYS_ADMIN). The error carries `ip`'s stderr.
    pub fn create(tag: &str) -> io::Result<Netns> {
        let name = netns_name(tag);
        run_ip(&["netns", "add", &name])?;
        let path = Path::new(NETNS_DIR).join(&name);
        Ok(Netns { name, path })
    }

    /// The namespace's name, as shown by `ip netns list`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, `/run/netns/<name>`: what `CNI_NETNS` points at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `ip netns exec <name> <args...>` and returns its output, whatever
    /// the exit status (e.g. a failing `ping` is an answer, not an error).
    ///
    /// Convenient for ad-hoc tools; it is slower than [`Netns::command`]
    /// because `ip` sets up a mount namespace first.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
    }

    /// A [`Command`] for `program` that will run inside this namespace via
    /// `setns` in the child: no extra process, suitable for timing.
    pub fn command(&self, program: impl AsRef<OsStr>) -> io::Result<Command> {
        command_in(&self.path, program)
    }

    /// Runs `ip -j -n <name> <args...>` and parses its JSON output, e.g.
    /// `["link", "show"]`, `["-d", "link", "show", "veth"]`,
    /// `["-6", "route", "show"]`.
    ///
    /// Empty output (some `ip` versions print nothing when there is nothing
    /// to list) becomes an empty JSON array. A non-zero exit (e.g. no such
    /// device) is an error carrying `ip`'s stderr.
    pub fn ip_json(&self, args: &[&str]) -> io::Result<Value> {
        let mut full = vec!["-j", "-n", self.name.as_str()];
        full.extend_from_slice(args);
        let out = run_ip(&full)?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.trim().is_empty() {
            return Ok(Value::Array(Vec::new()));
        }
        serde_json::from_str(&text).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("ip {}: bad JSON ({e}): {text}", full.join(" ")),
            )
        })
    }

    /// Names of all interfaces in this namespace (`ip link show`).
    pub fn link_names(&self) -> io::Result<Vec<String>> {
        let links = self.ip_json(&["link", "show"])?;
        Ok(links
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Errors are ignored on purpose: drop may run during a panic, and a
        // namespace that is already gone is exactly what we want.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Sets the loopback interface of `ns` up (new namespaces start with `lo`
/// down, and some tools, e.g. `ping 127.0.0.1`, need it).
pub fn set_lo_up(ns: &Netns) -> io::Result<()> {
    run_ip(&["-n", ns.name(), "link", "set", "lo", "up"]).map(drop)
}

/// Deletes namespaces left behind by crashed or SIGKILLed runs of this
/// crate's users: names made by [`Netns::create`] whose creating process no
/// longer exists. Namespaces of live processes (e.g. a concurrently running
/// test) are left alone. Returns the names deleted.
pub fn reap_stale() -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut reaped = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pid) = creator_pid(&name) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        if run_ip(&["netns", "del", &name]).is_ok() {
            reaped.push(name);
        }
    }
    Ok(reaped)
}

/// Runs `ip <args>`, turning a non-zero exit into an error with its stderr.
fn run_ip(args: &[&str]) -> io::Result<Output> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
