//! Invoking a CNI plugin "on the node" and measuring it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::call::PluginCall;
use crate::child::{communicate, kill_and_reap, reap};
use crate::enter::enter_netns_on_spawn;
use crate::netns::Netns;

/// What one plugin invocation produced and cost.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginOutput {
    /// Exit code; 128 + N if the plugin was killed by signal N.
    pub exit_code: i32,
    /// Everything the plugin wrote to stdout (lossily decoded as UTF-8).
    pub stdout: String,
    /// Everything the plugin wrote to stderr (lossily decoded as UTF-8).
    pub stderr: String,
    /// Wall-clock time from just before spawning to having reaped it.
    pub elapsed: Duration,
    /// Peak resident set size in KiB, including descendants the plugin
    /// waited for (e.g. the IPAM plugin the reference bridge execs).
    pub max_rss_kib: u64,
}

impl PluginOutput {
    /// True if the plugin exited with status 0.
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// Stdout parsed as JSON (the CNI result or error object), if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }
}

/// Runs `plugin` inside the `node` namespace as a container runtime would:
/// environment = the call's `CNI_*` variables, `PATH` and its extra env only;
/// stdin = the call's config.
///
/// The namespace is joined with `setns` in the child (no `ip netns exec`), so
/// `elapsed` is the plugin's own cost plus fork/exec. An error is returned
/// only if the harness failed (spawn, pipes, wait) or the call's timeout
/// expired (the plugin is then killed; `ErrorKind::TimedOut`); a failing
/// plugin is an `Ok` output with a non-zero `exit_code`.
pub fn invoke(plugin: &Path, node: &Netns, call: &PluginCall) -> io::Result<PluginOutput> {
    invoke_argv(&[plugin.as_os_str()], node, call)
}

/// Like [`invoke`], but runs `argv` (a wrapper such as `/usr/bin/time` and
/// its arguments, then the plugin); the wrapper must pass the environment
/// and the standard streams through.
pub fn invoke_argv(argv: &[&OsStr], node: &Netns, call: &PluginCall) -> io::Result<PluginOutput> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(call.environment())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: on timeout the plugin and its helpers can be
        // killed together, and a Ctrl-C meant for the harness does not kill
        // plugins half-way (the harness then cleans up in order).
        .process_group(0);
    // Opened before the clock starts: it is harness work, not plugin work.
    enter_netns_on_spawn(&mut cmd, node.path())?;
    let input = call.stdin.to_bytes();

    let start = Instant::now();
    let mut child = cmd.spawn()?;
    let io_result = communicate(
        child.stdin.take(),
        &input,
        child.stdout.take(),
        child.stderr.take(),
        start + call.timeout,
    );
    let (stdout, stderr) = match io_result {
        Ok(v) => v,
        Err(e) => {
            kill_and_reap(&mut child);
            return Err(e);
        }
    };
    let reaped = reap(&child)?;
    let elapsed = start.elapsed();

    Ok(PluginOutput {
        exit_code: reaped.exit_code,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed,
        max_rss_kib: reaped.max_rss_kib,
    })
}
