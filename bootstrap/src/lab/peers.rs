//! Where the real peer programs are: the versioned cache that
//! `scripts/build-peers.sh` fills.
//!
//! The versions are read from `scripts/peers.env`, compiled in, so the lab
//! and the build script can never disagree about which build to run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The pinned versions, as the build script reads them.
const PEERS_ENV: &str = include_str!("../../../scripts/peers.env");

/// A peer binary is missing from the cache.
#[derive(Debug, thiserror::Error)]
#[error(
    "{program} {version} is not built: {} does not exist; run `scripts/build-peers.sh` \
     (needs Go >= 1.26.5 and the Go module proxy; about 16 minutes cold, seconds warm), \
     or set TAILROUTE_CACHE to the cache it built into",
    path.display()
)]
pub struct MissingPeer {
    /// The program (`tailscaled`).
    pub program: &'static str,
    /// Its pinned version.
    pub version: String,
    /// Where it was looked for.
    pub path: PathBuf,
}

/// Every program the lab runs, with its pinned version.
#[derive(Debug, Clone)]
pub struct Peers {
    /// `tailscaled`.
    pub tailscaled: PathBuf,
    /// The `tailscale` CLI.
    pub tailscale: PathBuf,
    /// The trimmed `tailscaled` identity pods run (build-peers.sh's
    /// `tailscale-identity`).
    pub tailscaled_identity: PathBuf,
    /// `headscale` (server and CLI).
    pub headscale: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`.
    pub kube_controller_manager: PathBuf,
    /// `kube-scheduler`.
    pub kube_scheduler: PathBuf,
    /// `kubectl`.
    pub kubectl: PathBuf,
    /// `kubeadm` (not run by the lab; the CLI's tests validate the kubeadm
    /// configuration `tailroute init/join` write with it).
    pub kubeadm: PathBuf,
    /// `version of each peer, for reports: (name, version)`.
    pub versions: Vec<(&'static str, String)>,
}

/// The peer cache root: `$TAILROUTE_CACHE`, else `$XDG_CACHE_HOME/tailroute`,
/// else `~/.cache/tailroute` (the same rule as the build script).
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("TAILROUTE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Path::new(&dir).join("tailroute");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    Path::new(&home).join(".cache/tailroute")
}

/// `KEY=VALUE` lines of `peers.env` (comments and blank lines skipped).
fn pinned_versions() -> HashMap<&'static str, &'static str> {
    PEERS_ENV
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect()
}

impl Peers {
    /// Finds every peer in the cache under `root`, or says which is missing
    /// and how to build it.
    pub fn locate(root: &Path) -> Result<Peers, MissingPeer> {
        let pinned = pinned_versions();
        let version = |key: &str| pinned.get(key).copied().unwrap_or("unknown").to_owned();
        let find = |peer: &str, key: &str, program: &'static str| {
            let version = version(key);
            let path = root
                .join("peers")
                .join(format!("{peer}-{version}"))
                .join(program);
            if path.is_file() {
                Ok(path)
            } else {
                Err(MissingPeer {
                    program,
                    version,
                    path,
                })
            }
        };
        let ts = "TAILSCALE_VERSION";
        let k8s = "KUBERNETES_VERSION";
        // The stock tailscale first: a cache without it lacks everything,
        // and that is the first thing to say.
        let tailscaled = find("tailscale", ts, "tailscaled")?;
        let tailscale = find("tailscale", ts, "tailscale")?;
        let identity_version = format!(
            "{}-r{}",
            version(ts),
            version("TAILSCALE_IDENTITY_REVISION")
        );
        let identity = root
            .join("peers")
            .join(format!("tailscale-identity-{identity_version}"))
            .join("tailscaled");
        if !identity.is_file() {
            return Err(MissingPeer {
                program: "tailscaled (tailscale-identity)",
                version: identity_version,
                path: identity,
            });
        }
        Ok(Peers {
            tailscaled,
            tailscale,
            tailscaled_identity: identity,
            headscale: find("headscale", "HEADSCALE_VERSION", "headscale")?,
            etcd: find("etcd", "ETCD_VERSION", "etcd")?,
            kube_apiserver: find("kubernetes", k8s, "kube-apiserver")?,
            kube_controller_manager: find("kubernetes", k8s, "kube-controller-manager")?,
            kube_scheduler: find("kubernetes", k8s, "kube-scheduler")?,
            kubectl: find("kubernetes", k8s, "kubectl")?,
            kubeadm: find("kubernetes", k8s, "kubeadm")?,
            versions: vec![
                ("tailscale", version(ts)),
                ("headscale", version("HEADSCALE_VERSION")),
                ("kubernetes", version(k8s)),
                ("etcd", version("ETCD_VERSION")),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_versions_are_read_from_peers_env() {
        let pinned = pinned_versions();
        for key in [
            "TAILSCALE_VERSION",
            "HEADSCALE_VERSION",
            "KUBERNETES_VERSION",
            "ETCD_VERSION",
        ] {
            let v = pinned.get(key).unwrap_or_else(|| panic!("{key} missing"));
            assert!(v.starts_with('v'), "{key}={v}");
        }
    }

    #[test]
    fn a_missing_peer_names_the_path_and_the_build_script() {
        let err = Peers::locate(Path::new("/nonexistent-cache")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/nonexistent-cache/peers/tailscale-v"),
            "{text}"
        );
        assert!(text.contains("scripts/build-peers.sh"), "{text}");
    }
}
