//! A plan: the steps `tailroute init`, `join` or `reset` will take, as
//! data. `--dry-run` prints it; a real run carries it out step by step and
//! stops at the first step that fails, naming it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::command::HostCommand;
use crate::host::kubeadm::{check_certificate_key, Discovery};
use crate::host::paths;

/// One step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What it does, in a line.
    pub summary: String,
    /// How.
    pub action: Action,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing: already done (the summary says so).
    Nothing,
    /// Decided once the machine's tailnet addresses are known; only ever
    /// printed by a dry run.
    Deferred,
    /// Writes a file atomically (temp file, then rename) with `mode`;
    /// `shown` is what `--dry-run` prints (secrets redacted).
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Its contents.
        contents: String,
        /// Its permissions.
        mode: u32,
        /// The contents as printed.
        shown: String,
    },
    /// Runs a program, its output going to the terminal.
    Run(Vec<String>),
    /// `kubectl apply` of a manifest on stdin.
    Apply {
        /// The kubeconfig.
        kubeconfig: PathBuf,
        /// The manifest.
        manifest: String,
        /// The manifest as printed (secrets redacted).
        shown: String,
    },
    /// Copies an executable into place atomically.
    Install {
        /// The source.
        from: PathBuf,
        /// The destination.
        to: PathBuf,
    },
    /// Removes a file or a directory tree (nothing when absent).
    Remove(PathBuf),
    /// Deletes a network interface (nothing when absent).
    DeleteLink(String),
    /// Undoes the node agent's work on this node (its routes only, its
    /// conflist, its nftables table): the code of `tailroute-agent
    /// --cleanup`.
    AgentCleanup {
        /// The node's name.
        node: String,
        /// tailscaled's socket.
        socket: PathBuf,
    },
    /// Makes a bootstrap token and writes the join command for the other
    /// machines.
    JoinCommand(JoinCommandSpec),
}

/// How `tailroute init` writes the join command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinCommandSpec {
    /// `--pod-network-cidr` for the other nodes (their node-ip families).
    pub pod_network_cidr: String,
    /// Whether to upload the control-plane certificates for HA joins.
    pub upload_certs: bool,
    /// `--login-server` for the other nodes, when Headscale.
    pub login_server: Option<String>,
}

/// The steps, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// The steps.
    pub steps: Vec<Step>,
}

impl Plan {
    /// Adds a step.
    pub fn push(&mut self, summary: impl Into<String>, action: Action) {
        self.steps.push(Step {
            summary: summary.into(),
            action,
        });
    }

    /// The plan as `--dry-run` prints it, numbered from `first`.
    pub fn render(&self, first: usize) -> String {
        let mut out = String::new();
        for (i, step) in self.steps.iter().enumerate() {
            let _ = writeln!(out, "{:>3}. {}", first + i, step.summary);
            let detail = match &step.action {
                Action::WriteFile { shown, .. } | Action::Apply { shown, .. } => Some(shown),
                _ => None,
            };
            for line in detail.iter().flat_map(|d| d.lines()) {
                let _ = writeln!(out, "       | {line}");
            }
        }
        out
    }

    /// Carries the steps out in order, printing each; stops at the first
    /// failure. Steps are numbered from `first`.
    pub fn execute(&self, first: usize) -> Result<(), String> {
        for (i, step) in self.steps.iter().enumerate() {
            println!("[{}] {}", first + i, step.summary);
            step.action
                .execute()
                .map_err(|e| format!("step {} ({}) failed: {e}", first + i, step.summary))?;
        }
        Ok(())
    }
}

impl Action {
    fn execute(&self) -> Result<(), String> {
        match self {
            Action::Nothing => Ok(()),
            Action::Deferred => Err("a step planned without the tailnet addresses".into()),
            Action::WriteFile {
                path,
                contents,
                mode,
                ..
            } => write_atomically(path, contents.as_bytes(), *mode),
            Action::Run(argv) => run_visible(argv),
            Action::Apply {
                kubeconfig,
                manifest,
                ..
            } => {
                let out = HostCommand::new(
                    "kubectl",
                    &[
                        "--kubeconfig",
                        &kubeconfig.display().to_string(),
                        "apply",
                        "-f",
                        "-",
                    ],
                )
                .with_stdin(manifest.clone())
                .run()
                .map_err(|e| e.to_string())?;
                print!("{out}");
                Ok(())
            }
            Action::Install { from, to } => {
                let bytes =
                    std::fs::read(from).map_err(|e| format!("reading {}: {e}", from.display()))?;
                write_atomically(to, &bytes, 0o755)
            }
            Action::Remove(path) => remove(path),
            Action::DeleteLink(name) => {
                if !Path::new("/sys/class/net").join(name).exists() {
                    return Ok(());
                }
                HostCommand::new("ip", &["link", "delete", name.as_str()])
                    .run()
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Action::AgentCleanup { node, socket } => agent_cleanup(node, socket),
            Action::JoinCommand(spec) => write_join_command(spec),
        }
    }
}

fn run_visible(argv: &[String]) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("an empty command")?;
    let status = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` exited with {status}", argv.join(" ")))
    }
}

fn agent_cleanup(node: &str, socket: &Path) -> Result<(), String> {
    use tailroute_agent::config::{AgentConfig, Args};
    let args = Args {
        node_name: Some(node.to_owned()),
        localapi_socket: Some(socket.to_owned()),
        cleanup: true,
        ..Args::default()
    };
    let config = AgentConfig::load(&args).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let done = runtime.block_on(tailroute_agent::cleanup::undo(&config))?;
    for line in done {
        println!("      {line}");
    }
    Ok(())
}

/// Parses `kubeadm token create --print-join-command`'s line.
pub fn parse_kubeadm_join(line: &str) -> Result<Discovery, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let value = |flag: &str| {
        words
            .iter()
            .position(|w| *w == flag)
            .and_then(|i| words.get(i + 1))
            .map(|s| (*s).to_owned())
            .ok_or_else(|| format!("no {flag} in kubeadm's join command {line:?}"))
    };
    let api_endpoint = words
        .iter()
        .position(|w| *w == "join")
        .and_then(|i| words.get(i + 1))
        .map(|s| (*s).to_owned())
        .ok_or_else(|| format!("no endpoint in kubeadm's join command {line:?}"))?;
    Ok(Discovery {
        api_endpoint,
        token: value("--token")?,
        ca_cert_hash: value("--discovery-token-ca-cert-hash")?,
    })
}

fn write_join_command(spec: &JoinCommandSpec) -> Result<(), String> {
    let line = HostCommand::new(
        "kubeadm",
        &[
            "token",
            "create",
            "--print-join-command",
            "--kubeconfig",
            paths::ADMIN_CONF,
        ],
    )
    .run()
    .map_err(|e| e.to_string())?;
    let d = parse_kubeadm_join(line.trim())?;
    let args = format!(
        "{} --token {} --discovery-token-ca-cert-hash {} --pod-network-cidr {}",
        d.api_endpoint, d.token, d.ca_cert_hash, spec.pod_network_cidr
    );
    write_atomically(
        Path::new(paths::JOIN_COMMAND),
        format!("{args}\n").as_bytes(),
        0o600,
    )?;
    let server = spec
        .login_server
        .as_ref()
        .map(|s| format!(" --login-server {s}"))
        .unwrap_or_default();
    println!("\nJoin each other machine to this cluster (as root, with its own auth key):\n");
    println!("  tailroute join {args}{server} --auth-key-file KEY_FILE\n");
    if spec.upload_certs {
        let out = HostCommand::new(
            "kubeadm",
            &[
                "init",
                "phase",
                "upload-certs",
                "--upload-certs",
                "--config",
                paths::INIT_CONFIG,
            ],
        )
        .run()
        .map_err(|e| e.to_string())?;
        let key = out
            .lines()
            .map(str::trim)
            .rfind(|l| check_certificate_key(l).is_ok())
            .ok_or_else(|| format!("no certificate key in kubeadm's output: {out}"))?;
        write_atomically(
            Path::new(paths::CERTIFICATE_KEY),
            format!("{key}\n").as_bytes(),
            0o600,
        )?;
        println!("Join another control plane (the certificate key expires in 2 hours):\n");
        println!(
            "  tailroute join {args}{server} --control-plane --certificate-key {key} --auth-key-file KEY_FILE\n"
        );
    }
    println!(
        "The arguments are kept in {} (readable by root only; the token expires in 24 hours).",
        paths::JOIN_COMMAND
    );
    Ok(())
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over
/// `path`: a reader sees the old file or the new one, never a part.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let dir = path.parent().ok_or("a path without a directory")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let name = path.file_name().ok_or("a path without a file name")?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

fn remove(path: &Path) -> Result<(), String> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    result.map_err(|e| format!("removing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadms_join_line_is_read() {
        let d = parse_kubeadm_join(
            "kubeadm join 100.64.0.1:6443 --token abcdef.0123456789abcdef \
             --discovery-token-ca-cert-hash sha256:00ff ",
        )
        .unwrap();
        assert_eq!(d.api_endpoint, "100.64.0.1:6443");
        assert_eq!(d.token, "abcdef.0123456789abcdef");
        assert_eq!(d.ca_cert_hash, "sha256:00ff");
        assert!(parse_kubeadm_join("kubeadm join 1.2.3.4:6443").is_err());
    }

    #[test]
    fn files_are_replaced_whole_with_their_mode() {
        let dir = std::env::temp_dir().join(format!("trl-plan-{}", std::process::id()));
        let path = dir.join("f");
        write_atomically(&path, b"one", 0o600).unwrap();
        write_atomically(&path, b"two", 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let text = std::fs::read_to_string(&path).unwrap();
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        remove(&dir).unwrap();
        assert_eq!((text.as_str(), mode, leftovers), ("two", 0o600, 1));
        assert!(!dir.exists());
    }
}
