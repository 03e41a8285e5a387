//! The two contestants and the network configuration each one gets.

use std::io;
use std::path::{Path, PathBuf};

use cni_testbed::{invoke, Netns, PluginCall};
use serde_json::{json, Value};

/// Network name in the configs; also the state sub-directory of dataDir.
pub const NETWORK: &str = "bench";
/// The pod network: big enough for any allowed N.
pub const SUBNET: &str = "10.99.0.0/16";
/// Interface MTU both plugins must configure.
pub const MTU: u64 = 1280;

/// Which implementation a [`Plugin`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Debian's reference `bridge`, delegating to `host-local` IPAM.
    Reference,
    /// tailroute-bridge with built-in IPAM.
    Tailroute,
}

/// One side of the comparison.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// Which implementation.
    pub kind: Kind,
    /// The binary exec'd for every call.
    pub binary: PathBuf,
    /// `CNI_PATH` given to it (where the reference finds `host-local`).
    pub cni_path: String,
}

impl Plugin {
    /// The reference bridge from `dir`, which must also hold host-local.
    pub fn reference(dir: &Path) -> Plugin {
        Plugin {
            kind: Kind::Reference,
            binary: dir.join("bridge"),
            cni_path: dir.to_string_lossy().into_owned(),
        }
    }

    /// tailroute-bridge at `binary`; `CNI_PATH` is its directory, as a
    /// runtime that found it by `type` would have it.
    pub fn tailroute(binary: &Path) -> Plugin {
        let dir = binary.parent().unwrap_or(Path::new("."));
        Plugin {
            kind: Kind::Tailroute,
            binary: binary.to_owned(),
            cni_path: dir.to_string_lossy().into_owned(),
        }
    }

    /// Short column label.
    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::Reference => "reference",
            Kind::Tailroute => "tailroute",
        }
    }

    /// Binaries that must exist for this side to run.
    pub fn required_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.binary.clone()];
        if self.kind == Kind::Reference {
            v.push(Path::new(&self.cni_path).join("host-local"));
        }
        v
    }

    /// The plugin's stdin config: the same network for both sides (bridge,
    /// MTU, hairpin, gateway on the bridge, IPv4 /16, state in `data_dir`).
    pub fn config(&self, bridge: &str, data_dir: &Path) -> Value {
        let data_dir = data_dir.to_string_lossy();
        match self.kind {
            Kind::Reference => json!({
                "cniVersion": "1.0.0", "name": NETWORK, "type": "bridge",
                "bridge": bridge, "isGateway": true, "ipMasq": false,
                "hairpinMode": true, "mtu": MTU,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET}]],
                         "dataDir": data_dir},
            }),
            Kind::Tailroute => json!({
                "cniVersion": "1.0.0", "name": NETWORK, "type": "tailroute-bridge",
                "bridge": bridge, "mtu": MTU, "hairpinMode": true,
                "ipam": {"ranges": [[{"subnet": SUBNET}]], "dataDir": data_dir},
            }),
        }
    }

    /// Runs VERSION on every binary involved, untimed, so the first measured
    /// ADD does not pay for cold page cache. Fails if any of them fails.
    pub fn warm_up(&self, node: &Netns) -> io::Result<()> {
        let call =
            PluginCall::new("VERSION", json!({"cniVersion": "1.0.0"})).cni_path(&self.cni_path);
        for bin in self.required_files() {
            let out = invoke(&bin, node, &call)?;
            if !out.success() {
                return Err(io::Error::other(format!(
                    "{} VERSION failed ({}): {}{}",
                    bin.display(),
                    out.exit_code,
                    out.stdout,
                    out.stderr
                )));
            }
        }
        Ok(())
    }
}
