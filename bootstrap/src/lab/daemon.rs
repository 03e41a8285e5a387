//! Long-running lab processes: started inside a lab namespace, detached
//! from the `tailroute lab up` that started them, and found again by
//! namespace when the lab goes down.
//!
//! A daemon enters its namespace in one of two ways:
//!
//! - [`Entry::Setns`]: `setns(2)` in the child before `exec`, keeping the
//!   host's mount namespace. The lab kubelet needs that: the pod namespaces
//!   it creates are bind mounts in `/run/netns` that the host must see.
//! - [`Entry::IpNetnsExec`]: `ip netns exec`, which also gives the program a
//!   private mount namespace with `/sys` remounted for the network namespace,
//!   as tailscaled expects when it looks up its interfaces in `/sys/class/net`.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::process::ProcessId;
use crate::lab::resource::NETNS_DIR;

/// How a daemon enters its network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `setns(2)` only; the host's mount namespace.
    Setns,
    /// `ip netns exec`: a private mount namespace with the namespace's `/sys`.
    IpNetnsExec,
}

/// A process to start in a lab namespace.
#[derive(Debug)]
pub struct DaemonSpec<'a> {
    /// The network namespace (`None`: the host's).
    pub namespace: Option<&'a str>,
    /// How to enter it.
    pub entry: Entry,
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Standard output and error go here (appended).
    pub log: PathBuf,
}

/// Why a daemon could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The namespace or log file could not be opened, or exec failed.
    #[error("could not start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The failure.
        source: std::io::Error,
    },
    /// It did not become ready in time.
    #[error("{what} did not become ready within {timeout:?}: {detail} (logs: {})", log.display())]
    NotReady {
        /// What was waited for.
        what: String,
        /// How long.
        timeout: Duration,
        /// The last probe failure, or that the process exited.
        detail: String,
        /// Where to look.
        log: PathBuf,
    },
}

impl DaemonSpec<'_> {
    /// Starts the process in a session of its own (no terminal signals reach
    /// it, and it outlives `lab up`) and returns its pid.
    pub fn spawn(&self) -> Result<u32, DaemonError> {
        let error = |source| DaemonError::Spawn {
            program: self.program.display().to_string(),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(error)?;
        let mut command = match (self.namespace, self.entry) {
            (Some(ns), Entry::IpNetnsExec) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(self.program);
                c
            }
            _ => Command::new(self.program),
        };
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(error)?)
            .stderr(log);
        let netns = match (self.namespace, self.entry) {
            (Some(ns), Entry::Setns) => Some(open_netns(ns).map_err(error)?),
            _ => None,
        };
        let netns_fd = netns.as_ref().map(AsRawFd::as_raw_fd);
        // SAFETY: only async-signal-safe calls (setns, setsid) between fork
        // and exec; the fd stays open in the parent until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = netns_fd {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(error)?;
        // Not waited for: when `lab up` exits, init adopts and reaps it.
        Ok(child.id())
    }
}

/// Opens `/run/netns/<name>`.
pub fn open_netns(name: &str) -> std::io::Result<File> {
    File::open(Path::new(NETNS_DIR).join(name))
}

/// Polls `probe` every 100 ms until it returns `Ok`, `timeout` passes, or
/// `pid` exits.
pub fn wait_ready<T>(
    what: &str,
    pid: Option<u32>,
    log: &Path,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> Result<T, DaemonError> {
    let deadline = Instant::now() + timeout;
    loop {
        let detail = match probe() {
            Ok(value) => return Ok(value),
            Err(detail) => detail,
        };
        let exited = pid.is_some_and(|p| !process_alive(p));
        if exited || Instant::now() >= deadline {
            return Err(DaemonError::NotReady {
                what: what.to_owned(),
                timeout,
                detail: if exited {
                    format!("the process exited ({detail})")
                } else {
                    detail
                },
                log: log.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True while `pid` runs (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(ProcessId::of)
        .is_some_and(|p| p.is_running())
}

/// Resident memory of `pid` in KiB (`VmRSS`), if it runs.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The pids of every live process whose network namespace is the one at
/// `netns_path` (a `/run/netns` entry or a `/proc/<pid>/ns/net` link). An
/// absent path has no processes.
pub fn pids_in_netns(netns_path: &Path) -> std::io::Result<Vec<u32>> {
    let target = match std::fs::metadata(netns_path) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we look: a vanished one is skipped.
        let Ok(ns) = std::fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if (ns.dev(), ns.ino()) == target && process_alive(pid) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// Every process whose network namespace is one of `namespaces` (names in
/// `/run/netns`), with the namespace it is in.
pub fn processes_in(namespaces: &[String]) -> Vec<(u32, String)> {
    namespaces
        .iter()
        .flat_map(|ns| {
            pids_in_netns(&Path::new(NETNS_DIR).join(ns))
                .unwrap_or_default()
                .into_iter()
                .map(move |pid| (pid, ns.clone()))
        })
        .collect()
}

/// Every tailscaled whose `--statedir` is inside `dir`: the identity pods'
/// tailscaleds a lab's agents started. They run in pod namespaces that may
/// be gone from `/run/netns` already (the pod was deleted), so a sweep by
/// namespace name would miss them.
pub fn tailscaleds_under(dir: &Path) -> Vec<u32> {
    let prefix = format!("--statedir={}/", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|b| *b == 0)
                    .any(|arg| arg.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
}

/// SIGTERM to every process in `namespaces` and every tailscaled kept in
/// `state_dir`, then SIGKILL to what is left after `grace`. Returns how
/// many were signalled.
pub fn stop_processes_in(namespaces: &[String], state_dir: &Path, grace: Duration) -> usize {
    let processes_in = |namespaces: &[String]| {
        let mut found = processes_in(namespaces);
        found.extend(
            tailscaleds_under(state_dir)
                .into_iter()
                .map(|pid| (pid, String::new())),
        );
        found.sort();
        found.dedup_by_key(|(pid, _)| *pid);
        found
    };
    let first = processes_in(namespaces);
    for (pid, _) in &first {
        signal(*pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !processes_in(namespaces).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Twice: a kubelet killed mid-way may just have forked a pod server.
    for _ in 0..2 {
        for (pid, _) in processes_in(namespaces) {
            signal(pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    first.len()
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a positive pid has no memory-safety concerns.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// The program's file name, for reports.
pub fn program_name(program: &Path) -> String {
    program
        .file_name()
        .map(OsStr::to_string_lossy)
        .unwrap_or_default()
        .into_owned()
}
