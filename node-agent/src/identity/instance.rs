//! One identity on the node: its directory, its record, and its tailscaled.
//!
//! Each identity pod has a directory `<state_dir>/identities/<id>/`, where
//! `<id>` is the first 16 hex digits of the pod's UID (short, so the
//! LocalAPI socket path stays under the kernel's 108 bytes). It holds:
//!
//! | file | what |
//! | --- | --- |
//! | `identity.json` | the [`IdentityRecord`]: the pod, its grant, the process, the device |
//! | `tailscaled.state` | tailscaled's keys: the same device and addresses after a restart |
//! | `ts.sock` | the LocalAPI socket |
//! | `tailscaled.log` | tailscaled's output (a file, never a pipe the agent holds) |
//! | `resolv.conf` | what tailscaled sees as `/etc/resolv.conf` ([`super::launch`]) |
//!
//! A tailscaled is recognised by its pid, its start time (so a reused pid
//! is not mistaken for it) and its `--statedir` argument. That is how an
//! agent that restarts finds the identities it started, and leaves them
//! running.

use std::ffi::OsString;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::launch::PodExec;

/// The record's file name.
const RECORD: &str = "identity.json";

/// What the agent remembers about one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityRecord {
    /// The pod's UID.
    pub pod_uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The device name it was granted.
    pub hostname: String,
    /// The tags it was granted.
    pub tags: Vec<String>,
    /// The pod's network namespace file tailscaled runs in.
    pub netns: PathBuf,
    /// tailscaled's pid, once started.
    #[serde(default)]
    pub pid: Option<u32>,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22).
    #[serde(default)]
    pub pid_start: Option<u64>,
    /// The device's id on the control plane (tailscaled's `Self.ID`), once
    /// joined: what pod deletion removes.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Its tailnet addresses, once joined.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// Its MagicDNS name (without the final dot), once joined.
    #[serde(default)]
    pub dns_name: String,
}

/// The directory name for a pod UID.
pub fn dir_name(pod_uid: &str) -> String {
    pod_uid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// One identity's directory and record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Its directory.
    pub dir: PathBuf,
    /// Its record, as last saved.
    pub record: IdentityRecord,
}

/// How to start an identity's tailscaled.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The agent binary (`run-in-pod`).
    pub agent: PathBuf,
    /// The tailscaled binary.
    pub tailscaled: PathBuf,
    /// The node's `/etc/resolv.conf` text and systemd-resolved's upstream
    /// one, read once ([`super::launch::pod_resolv_conf`]).
    pub resolv_conf: String,
    /// `GOMEMLIMIT` for tailscaled, if any.
    pub go_memory_limit: Option<String>,
    /// The MTU of the pods' own interface (the conflist's).
    pub pod_mtu: u32,
}

/// WireGuard's overhead over IPv6: IP 40, UDP 8, WireGuard 32 bytes.
pub const WIREGUARD_OVERHEAD: u32 = 80;

impl Launcher {
    /// The MTU an identity pod's interface and its veth get: the pods' MTU
    /// plus WireGuard's overhead. The identity's `tailscale0` keeps the
    /// pods' MTU (1280 is also IPv6's minimum: below it the kernel drops
    /// the v6 address), so its WireGuard packets are larger by the
    /// overhead, and they leave through the pod's interface whole
    /// (tailscaled sends them with UDP segmentation offload, which never
    /// fragments: with the pod's plain MTU every bulk transfer stalled,
    /// measured 147 retransmissions and 223 kbit/s in 3 s). The pod's other
    /// traffic is unaffected: its TCP to other nodes is MSS-clamped on the
    /// node's tailscale0, as before.
    pub fn identity_link_mtu(&self) -> u32 {
        self.pod_mtu + WIREGUARD_OVERHEAD
    }
}

impl Instance {
    /// A new identity's directory under `root`, created (mode 0700) with
    /// its record saved.
    pub fn create(root: &Path, record: IdentityRecord) -> io::Result<Instance> {
        let dir = root.join(dir_name(&record.pod_uid));
        std::fs::create_dir_all(root)?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        set_mode(&dir, 0o700)?;
        let instance = Instance { dir, record };
        instance.save()?;
        Ok(instance)
    }

    /// Every identity directory under `root`: the readable ones, and the
    /// paths of those without a readable record (left by a crash between
    /// creating the directory and saving it; safe to remove).
    pub fn list(root: &Path) -> io::Result<(Vec<Instance>, Vec<PathBuf>)> {
        let mut found = Vec::new();
        let mut broken = Vec::new();
        let entries = match std::fs::read_dir(root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((found, broken)),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let dir = entry?.path();
            if !dir.is_dir() {
                continue;
            }
            match std::fs::read(dir.join(RECORD))
                .ok()
                .and_then(|b| serde_json::from_slice::<IdentityRecord>(&b).ok())
            {
                Some(record) => found.push(Instance { dir, record }),
                None => broken.push(dir),
            }
        }
        found.sort_by(|a, b| a.dir.cmp(&b.dir));
        Ok((found, broken))
    }

    /// Writes the record atomically (a temporary file renamed over it).
    pub fn save(&self) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(&self.record).map_err(io::Error::other)?;
        let tmp = self.dir.join(format!("{RECORD}.tmp"));
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, self.dir.join(RECORD))
    }

    /// The LocalAPI socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("ts.sock")
    }

    /// tailscaled's log.
    pub fn log(&self) -> PathBuf {
        self.dir.join("tailscaled.log")
    }

    /// Whether its tailscaled runs: the recorded pid is alive, is not a
    /// zombie, started when recorded, and runs with this `--statedir`.
    pub fn is_running(&self) -> bool {
        let (Some(pid), Some(start)) = (self.record.pid, self.record.pid_start) else {
            return false;
        };
        process_start(pid).is_some_and(|(s, zombie)| s == start && !zombie)
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| contains(&c, self.statedir_arg().as_bytes()))
    }

    fn statedir_arg(&self) -> String {
        format!("--statedir={}", self.dir.display())
    }

    /// The tailscaled command line (after `run-in-pod ... --`).
    fn tailscaled_args(&self, launcher: &Launcher) -> Vec<OsString> {
        vec![
            launcher.tailscaled.clone().into(),
            self.statedir_arg().into(),
            format!("--socket={}", self.socket().display()).into(),
            // Ports are per network namespace: the standard one is free.
            "--port=41641".into(),
            "--tun=tailscale0".into(),
            "--no-logs-no-support".into(),
        ]
    }

    /// Starts its tailscaled in the pod and records the process. The
    /// process is not the agent's to wait for: tokio reaps it if it exits
    /// while the agent runs, and it is adopted by init when the agent
    /// exits.
    pub fn start(&mut self, launcher: &Launcher) -> io::Result<()> {
        let resolv = self.dir.join("resolv.conf");
        std::fs::write(&resolv, &launcher.resolv_conf)?;
        let exec = PodExec {
            netns: self.record.netns.clone(),
            resolv_conf: resolv,
            program: self.tailscaled_args(launcher),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())?;
        let mut command = tokio::process::Command::new(&launcher.agent);
        if let Some(limit) = &launcher.go_memory_limit {
            command.env("GOMEMLIMIT", limit);
        }

        let child = command
            .args(exec.to_args())
            // Keeps its log configuration here: without it, even with
            // --no-logs-no-support, tailscaled writes /var/lib/tailscale.
            .env("TS_LOGS_DIR", &self.dir)
            // Nothing to map or list from inside a pod.
            .env("TS_DISABLE_PORTMAPPER", "1")
            .env("TS_DEBUG_DISABLE_PORTLIST", "1")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("tailscaled exited at once"))?;
        drop(child);
        self.record.pid = Some(pid);
        self.record.pid_start = process_start(pid).map(|(start, _)| start);
        self.save()
    }

    /// Raises the MTU of the pod's interface and of the host end of its
    /// veth to [`Launcher::identity_link_mtu`] (`link`: the pod's interface
    /// name, the host veth's name). The host end first, so no frame the
    /// pod sends is larger than what the host end accepts.
    pub async fn widen_link(&self, launcher: &Launcher, link: &(String, String)) -> io::Result<()> {
        let mtu = launcher.identity_link_mtu().to_string();
        let (ifname, host_veth) = link;
        let run = |mut command: tokio::process::Command| async move {
            let out = command.output().await?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                ))
            }
        };
        let mut host = tokio::process::Command::new("ip");
        host.args(["link", "set", "dev", host_veth, "mtu", &mtu]);
        run(host).await?;
        let resolv = self.dir.join("resolv.conf");
        std::fs::write(&resolv, &launcher.resolv_conf)?;
        let exec = PodExec {
            netns: self.record.netns.clone(),
            resolv_conf: resolv,
            program: [
                "ip",
                "link",
                "set",
                "dev",
                ifname.as_str(),
                "mtu",
                mtu.as_str(),
            ]
            .iter()
            .map(Into::into)
            .collect(),
        };
        let mut pod = tokio::process::Command::new(&launcher.agent);
        pod.args(exec.to_args());
        run(pod).await
    }

    /// Stops its tailscaled: SIGTERM (it removes its routes and rules from
    /// the pod), then SIGKILL after `grace`. Does nothing when it is not
    /// running.
    pub async fn stop(&mut self, grace: Duration) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if !self.is_running() {
            return;
        }
        let Some(pid) = self.record.pid.and_then(|p| i32::try_from(p).ok()) else {
            return;
        };
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while self.is_running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.is_running() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            while self.is_running() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Removes its directory (after [`Instance::stop`]).
    pub fn remove(self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A process's start time (clock ticks since boot) and whether it is a
/// zombie, from `/proc/PID/stat`; `None` when there is no such process.
fn process_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); field 22 is starttime.
    let zombie = fields.first().is_some_and(|s| *s == "Z" || *s == "X");
    Some((fields.get(19)?.parse().ok()?, zombie))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str) -> IdentityRecord {
        IdentityRecord {
            pod_uid: uid.to_owned(),
            namespace: "default".into(),
            name: "web".into(),
            hostname: "lab-default-web".into(),
            tags: vec!["tag:k8s-pod".into()],
            netns: "/run/netns/x".into(),
            pid: None,
            pid_start: None,
            device_id: None,
            ips: vec![],
            dns_name: String::new(),
        }
    }

    #[test]
    fn directory_names_are_short_and_stable() {
        assert_eq!(
            dir_name("3F2504E0-4F89-11D3-9A0C-0305E82C3301"),
            "3f2504e04f8911d3"
        );
    }

    #[test]
    fn records_survive_a_reload_and_broken_directories_are_listed_apart() {
        let root = std::env::temp_dir().join(format!("tra-identity-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut instance =
            Instance::create(&root, record("aaaaaaaa-0000-0000-0000-000000000001")).expect("made");
        instance.record.device_id = Some("7".into());
        instance.save().expect("saved");
        std::fs::create_dir_all(root.join("bbbbbbbb00000000")).expect("a crash leftover");
        let (found, broken) = Instance::list(&root).expect("listed");
        assert_eq!(found, vec![instance.clone()]);
        assert_eq!(broken, vec![root.join("bbbbbbbb00000000")]);
        // Not started: not running, and stopping it does nothing.
        assert!(!instance.is_running());
        instance.remove().expect("removed");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_process_is_recognised_by_start_time_and_statedir() {
        let me = std::process::id();
        let (start, zombie) = process_start(me).expect("this process");
        assert!(!zombie);
        let mut instance = Instance {
            dir: "/nonexistent/identity".into(),
            record: record("x"),
        };
        instance.record.pid = Some(me);
        instance.record.pid_start = Some(start);
        // This test binary has no --statedir=/nonexistent/identity argument.
        assert!(!instance.is_running());
        assert_eq!(process_start(u32::MAX), None);
    }
}
