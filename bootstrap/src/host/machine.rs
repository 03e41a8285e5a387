//! What `tailroute init/join/reset` read from the machine they run on,
//! behind a trait so their plans can be tested against made-up machines.

use std::path::{Path, PathBuf};

use crate::command::HostCommand;
use crate::tailnet::{TailnetStatus, TailscaleCli};

/// Where tailscaled's LocalAPI socket is on a packaged install.
pub const TAILSCALED_SOCKET: &str = "/var/run/tailscale/tailscaled.sock";

/// The facts about a machine the plans depend on. Nothing here changes
/// the machine.
pub trait Machine {
    /// Whether this process runs as root.
    fn is_root(&self) -> bool;
    /// A file's text, `None` when it cannot be read.
    fn read(&self, path: &Path) -> Option<String>;
    /// A file's bytes, `None` when it cannot be read.
    fn bytes(&self, path: &Path) -> Option<Vec<u8>>;
    /// Whether a path exists.
    fn exists(&self, path: &Path) -> bool;
    /// A program on `PATH`.
    fn program(&self, name: &str) -> Option<PathBuf>;
    /// The machine's hostname.
    fn hostname(&self) -> String;
    /// `tailscale status --json` from the machine's tailscaled; the error
    /// says why tailscaled could not be asked.
    fn tailnet_status(&self) -> Result<TailnetStatus, String>;
    /// `kubeadm version -o short`.
    fn kubeadm_version(&self) -> Option<String>;
    /// Whether an environment variable is set and not empty.
    fn has_env(&self, name: &str) -> bool;
    /// The CNI plugin shipped next to the `tailroute` binary.
    fn bundled_plugin(&self) -> Option<PathBuf>;
}

/// The machine this process runs on.
#[derive(Debug, Clone)]
pub struct RealMachine {
    /// The `tailscale` CLI for the machine's tailscaled.
    pub tailscale: TailscaleCli,
}

impl RealMachine {
    /// The machine, talking to tailscaled at `socket`.
    pub fn new(socket: &Path) -> RealMachine {
        RealMachine {
            tailscale: TailscaleCli {
                program: find_on_path("tailscale").unwrap_or_else(|| "tailscale".into()),
                socket: socket.to_owned(),
                namespace: None,
            },
        }
    }
}

impl Machine for RealMachine {
    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn read(&self, path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    fn bytes(&self, path: &Path) -> Option<Vec<u8>> {
        std::fs::read(path).ok()
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn program(&self, name: &str) -> Option<PathBuf> {
        find_on_path(name)
    }

    fn hostname(&self) -> String {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default()
    }

    fn tailnet_status(&self) -> Result<TailnetStatus, String> {
        self.tailscale.status().map_err(|e| e.to_string())
    }

    fn kubeadm_version(&self) -> Option<String> {
        let program = find_on_path("kubeadm")?;
        let out = HostCommand::new(&program.display().to_string(), &["version", "-o", "short"])
            .run()
            .ok()?;
        Some(out.trim().to_owned()).filter(|v| !v.is_empty())
    }

    fn has_env(&self, name: &str) -> bool {
        std::env::var_os(name).is_some_and(|v| !v.is_empty())
    }

    fn bundled_plugin(&self) -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.join("tailroute-bridge")).filter(|p| p.is_file())
    }
}

/// `name` on `PATH`, as the shell would find it.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
