//! Host commands the CLI runs: the lab's `ip`, `nft`, `sysctl`, `kill`,
//! and `tailroute init/join/reset`'s `kubeadm`, `kubectl` and `tailscale`.
//!
//! The lab shells out to iproute2 and nftables instead of speaking netlink
//! itself. It is a developer tool that runs a few dozen commands once per
//! `up`, so the milliseconds per exec do not matter, while the commands are
//! exactly what an operator would type to inspect or repair a lab by hand,
//! errors come with the tools' own well-known messages, and the crate stays
//! free of a netlink stack (it must compile fast on a 2-core lab machine).

use std::fmt;
use std::io::Write;
use std::process::{Command, ExitStatus, Stdio};

/// One command line, with optional standard input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    argv: Vec<String>,
    stdin: Option<String>,
}

/// Why a [`HostCommand`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started at all (usually: not installed).
    #[error("could not run `{command}`: {source}; is `{program}` installed? (Debian package: {package})")]
    Spawn {
        /// The full command line.
        command: String,
        /// The program that could not be started.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
        /// The error from `exec`.
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The full command line.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// Its standard error, trimmed.
        stderr: String,
    },
}

impl HostCommand {
    /// `program args...`, run in the host's namespaces.
    pub fn new<S: AsRef<str>>(program: &str, args: &[S]) -> HostCommand {
        let mut argv = vec![program.to_owned()];
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        HostCommand { argv, stdin: None }
    }

    /// `ip -n <namespace> args...`: iproute2 acting inside a namespace.
    pub fn ip_in<S: AsRef<str>>(namespace: &str, args: &[S]) -> HostCommand {
        let mut argv = vec!["ip".to_owned(), "-n".to_owned(), namespace.to_owned()];
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        HostCommand { argv, stdin: None }
    }

    /// `ip netns exec <namespace> program args...`: any program inside a
    /// namespace (for those without a `-n` of their own: `nft`, `sysctl`).
    pub fn exec_in<S: AsRef<str>>(namespace: &str, program: &str, args: &[S]) -> HostCommand {
        let mut argv = ["ip", "netns", "exec", namespace, program]
            .map(str::to_owned)
            .to_vec();
        argv.extend(args.iter().map(|a| a.as_ref().to_owned()));
        HostCommand { argv, stdin: None }
    }

    /// The same command with `input` fed to its standard input.
    pub fn with_stdin(mut self, input: impl Into<String>) -> HostCommand {
        self.stdin = Some(input.into());
        self
    }

    /// The command line, program first.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// What the command reads on standard input, if anything.
    pub fn stdin(&self) -> Option<&str> {
        self.stdin.as_deref()
    }

    /// The program that actually does the work (`nft` for
    /// `ip netns exec ns nft ...`): the one to name when it is missing.
    fn effective_program(&self) -> &str {
        match self.argv.as_slice() {
            [ip, netns, exec, _ns, program, ..]
                if ip == "ip" && netns == "netns" && exec == "exec" =>
            {
                program
            }
            [program, ..] => program,
            [] => "",
        }
    }

    /// Runs the command, waits for it, and returns its standard output.
    ///
    /// A non-zero exit is an error carrying standard error, so the caller
    /// can show the tool's own explanation.
    pub fn run(&self) -> Result<String, CommandError> {
        let spawn_error = |source| CommandError::Spawn {
            command: self.to_string(),
            program: self.effective_program().to_owned(),
            package: debian_package(self.effective_program()),
            source,
        };
        let (program, args) = self
            .argv
            .split_first()
            .ok_or_else(|| spawn_error(std::io::Error::other("empty command line")))?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let (Some(input), Some(mut pipe)) = (&self.stdin, child.stdin.take()) {
            // A write error (the program exited early) shows up as its exit
            // status and stderr below, which explain it better.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_error)?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(CommandError::Failed {
                command: self.to_string(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }
}

impl fmt::Display for HostCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.argv.join(" "))?;
        if self.stdin.is_some() {
            f.write_str(" <<(input)")?;
        }
        Ok(())
    }
}

/// The Debian package that ships `program`, for "is it installed?" hints.
fn debian_package(program: &str) -> &'static str {
    match program {
        "ip" => "iproute2",
        "nft" => "nftables",
        "sysctl" | "kill" => "procps",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_put_the_namespace_where_the_tools_expect_it() {
        let ip = HostCommand::ip_in("trlx-n1", &["link", "set", "lo", "up"]);
        assert_eq!(
            ip.argv(),
            ["ip", "-n", "trlx-n1", "link", "set", "lo", "up"]
        );
        let nft = HostCommand::exec_in("trlx-r1", "nft", &["-f", "-"]).with_stdin("x");
        assert_eq!(
            nft.argv(),
            ["ip", "netns", "exec", "trlx-r1", "nft", "-f", "-"]
        );
        assert_eq!(nft.effective_program(), "nft");
        assert_eq!(nft.stdin(), Some("x"));
    }

    #[test]
    fn a_missing_program_names_its_package() {
        let err = HostCommand::new("nft-does-not-exist", &["x"])
            .run()
            .unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }), "{err}");
        let err = HostCommand::exec_in("x", "nft", &["list"]);
        assert_eq!(debian_package(err.effective_program()), "nftables");
    }

    #[test]
    fn a_failing_command_reports_its_stderr() {
        let err = HostCommand::new("sh", &["-c", "echo boom >&2; exit 3"])
            .run()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("boom") && text.contains("sh -c"), "{text}");
    }

    #[test]
    fn stdin_reaches_the_program() {
        let out = HostCommand::new("cat", &[] as &[&str])
            .with_stdin("hello")
            .run()
            .unwrap();
        assert_eq!(out, "hello");
    }
}
