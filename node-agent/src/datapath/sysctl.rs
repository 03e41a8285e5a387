//! Forwarding and reverse-path filtering sysctls.
//!
//! A node that routes pod traffic must forward, and reverse-path filtering
//! must not drop what arrives from tailscale0 for a pod (its source is a
//! tailnet address reached through tailscaled's policy routing, which a
//! strict check may judge differently) nor what the bridge forwards.
//! The kernel uses max(conf.all.rp_filter, conf.<if>.rp_filter), so the
//! two interfaces are made loose (2) and `all` is lowered from strict (1)
//! to loose as well; a 0 (off) anywhere is left alone, since that is
//! already at least as permissive. Every value is read first and only
//! written when it differs, and each write is reported.
//!
//! `/proc/sys/net` shows the namespace of the thread that opens the file,
//! so the work happens on the calling thread inside a [`NetnsGuard`]
//! (no `.await` in between).
//!
//! [`NetnsGuard`]: super::NetnsGuard

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{DatapathError, DatapathSpec, NetnsTarget};

/// One sysctl this module wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlChange {
    /// Dotted name, e.g. `net.ipv4.conf.all.rp_filter`.
    pub key: String,
    /// The value found.
    pub before: String,
    /// The value written.
    pub after: String,
}

impl fmt::Display for SysctlChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.before, self.after)
    }
}

/// What [`apply_sysctls`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysctlOutcome {
    /// The sysctls written, in the order written; empty when all were right.
    pub changes: Vec<SysctlChange>,
    /// Interfaces whose per-interface settings were skipped because they do
    /// not exist yet (the bridge appears with the first pod): apply again
    /// once they do.
    pub absent_interfaces: Vec<String>,
}

/// How a wanted value relates to the value found.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Exactly this value.
    Exactly(&'static str),
    /// Strict reverse-path filtering (1) becomes loose (2); 0 and 2 stay.
    LooseRpFilter,
}

impl Want {
    fn target(self, found: &str) -> Option<&'static str> {
        match self {
            Want::Exactly(v) => (found != v).then_some(v),
            Want::LooseRpFilter => (found == "1").then_some("2"),
        }
    }
}

/// Makes the namespace's forwarding and rp_filter sysctls right for `spec`
/// and returns what changed (for logs and Events).
///
/// `net.ipv4.ip_forward` is set to 1; `net.ipv6.conf.all.forwarding` only
/// when the node has IPv6 pod CIDRs (forwarding turns off accepting router
/// advertisements on interfaces with `accept_ra=1`, so it is not touched
/// on an IPv4-only node).
pub fn apply_sysctls(
    spec: &DatapathSpec,
    netns: &NetnsTarget,
) -> Result<SysctlOutcome, DatapathError> {
    let _guard = netns.enter()?;
    apply_here(spec, Path::new("/proc/sys"))
}

/// [`apply_sysctls`] against the tree at `root` (a `/proc/sys` or, in unit
/// tests, a directory shaped like one) in the calling thread's namespace.
fn apply_here(spec: &DatapathSpec, root: &Path) -> Result<SysctlOutcome, DatapathError> {
    let mut outcome = SysctlOutcome::default();
    let mut wanted: Vec<(String, Want)> =
        vec![("net.ipv4.ip_forward".to_owned(), Want::Exactly("1"))];
    if spec.has_ipv6_pods() {
        wanted.push((
            "net.ipv6.conf.all.forwarding".to_owned(),
            Want::Exactly("1"),
        ));
    }
    wanted.push((
        "net.ipv4.conf.all.rp_filter".to_owned(),
        Want::LooseRpFilter,
    ));
    for iface in [&spec.tailnet_iface, &spec.bridge] {
        if !root.join("net/ipv4/conf").join(iface).is_dir() {
            outcome.absent_interfaces.push(iface.clone());
            continue;
        }
        // sysctl(8) writes the dots of interface names (VLANs) as slashes.
        let key = format!("net.ipv4.conf.{}.rp_filter", iface.replace('.', "/"));
        wanted.push((key, Want::LooseRpFilter));
    }
    for (key, want) in wanted {
        let path = key_path(root, &key);
        let found = read(&key, &path)?;
        if let Some(value) = want.target(&found) {
            write(&key, &path, value)?;
            outcome.changes.push(SysctlChange {
                key,
                before: found,
                after: value.to_owned(),
            });
        }
    }
    Ok(outcome)
}

/// `net.ipv4.conf.eth0/100.rp_filter` -> `<root>/net/ipv4/conf/eth0.100/rp_filter`.
fn key_path(root: &Path, key: &str) -> PathBuf {
    let mut path = root.to_path_buf();
    for part in key.split('.') {
        path.push(part.replace('/', "."));
    }
    path
}

fn read(key: &str, path: &Path) -> Result<String, DatapathError> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| sysctl_error(key, "read", path, source))
}

fn write(key: &str, path: &Path, value: &str) -> Result<(), DatapathError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{value}\n").as_bytes()))
        .map_err(|source| sysctl_error(key, "write", path, source))
}

fn sysctl_error(key: &str, action: &'static str, path: &Path, source: io::Error) -> DatapathError {
    let hint = match source.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            "; /proc/sys is read-only or this process lacks CAP_NET_ADMIN: run the agent \
             as root in a privileged container"
        }
        _ => "",
    };
    DatapathError::Sysctl {
        key: key.to_owned(),
        action,
        path: path.to_owned(),
        source,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory shaped like the part of /proc/sys this module touches.
    struct FakeProcSys(PathBuf);

    impl FakeProcSys {
        fn new(values: &[(&str, &str)]) -> FakeProcSys {
            let dir = std::env::temp_dir().join(format!(
                "trdp-sysctl-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&dir);
            for (key, value) in values {
                let path = key_path(&dir, key);
                fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
                fs::write(&path, format!("{value}\n")).expect("write");
            }
            FakeProcSys(dir)
        }

        fn get(&self, key: &str) -> String {
            read(key, &key_path(&self.0, key)).expect("read")
        }
    }

    impl Drop for FakeProcSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn spec(v6: bool) -> DatapathSpec {
        let mut spec = DatapathSpec::new();
        spec.node_pod_cidrs = vec!["10.244.1.0/24".parse().expect("net")];
        if v6 {
            spec.node_pod_cidrs
                .push("fd00:10:244:1::/64".parse().expect("net"));
        }
        spec
    }

    #[test]
    fn strict_becomes_loose_and_off_stays_off() {
        let fake = FakeProcSys::new(&[
            ("net.ipv4.ip_forward", "0"),
            ("net.ipv6.conf.all.forwarding", "0"),
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.tailscale0.rp_filter", "0"),
        ]);
        let out = apply_here(&spec(false), &fake.0).expect("apply");
        let changed: Vec<String> = out.changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            changed,
            [
                "net.ipv4.ip_forward: 0 -> 1",
                "net.ipv4.conf.all.rp_filter: 1 -> 2"
            ]
        );
        assert_eq!(fake.get("net.ipv4.conf.tailscale0.rp_filter"), "0");
        // IPv4-only node: IPv6 forwarding is not touched.
        assert_eq!(fake.get("net.ipv6.conf.all.forwarding"), "0");
        assert_eq!(out.absent_interfaces, ["tailroute0"]);
        let again = apply_here(&spec(false), &fake.0).expect("apply");
        assert!(again.changes.is_empty(), "{again:?}");
    }

    #[test]
    fn dual_stack_turns_on_ipv6_forwarding() {
        let fake = FakeProcSys::new(&[
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "0"),
            ("net.ipv4.conf.all.rp_filter", "2"),
            ("net.ipv4.conf.tailscale0.rp_filter", "1"),
            ("net.ipv4.conf.tailroute0.rp_filter", "2"),
        ]);
        let out = apply_here(&spec(true), &fake.0).expect("apply");
        let changed: Vec<String> = out.changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            changed,
            [
                "net.ipv6.conf.all.forwarding: 0 -> 1",
                "net.ipv4.conf.tailscale0.rp_filter: 1 -> 2"
            ]
        );
        assert!(out.absent_interfaces.is_empty());
    }

    #[test]
    fn vlan_style_names_map_to_dotted_directories() {
        assert_eq!(
            key_path(Path::new("/p"), "net.ipv4.conf.eth0/100.rp_filter"),
            Path::new("/p/net/ipv4/conf/eth0.100/rp_filter")
        );
    }
}
