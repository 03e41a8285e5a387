//! Starting a program inside a pod: its network namespace, a private view
//! of `/etc/resolv.conf`, and a session of its own.
//!
//! The agent is multi-threaded, and `unshare(CLONE_NEWNS)` refuses a
//! process whose threads share its filesystem context. So the agent runs
//! its own binary again as `tailroute-agent run-in-pod --netns P
//! --resolv-conf F -- PROGRAM ARGS...`; that fresh, single-threaded process
//! does the namespace work below and then `exec`s the program, which is
//! how `ip netns exec` works too.
//!
//! Why each step:
//! - **network namespace**: the pod's tailscaled must create `tailscale0`,
//!   its routes and its rules in the pod, so the pod's processes own the
//!   tailnet address.
//! - **mount namespace, slave propagation**: tailscaled reads and may
//!   rewrite `/etc/resolv.conf` (its DNS manager cleans up at every start,
//!   even with `--accept-dns=false`). In a mount namespace of its own, the
//!   file it sees is a per-pod copy bind-mounted over the node's, so the
//!   node's DNS is never touched. `MS_SLAVE` (not `MS_PRIVATE`) keeps
//!   receiving unmounts from the node: a private copy would pin every other
//!   pod's `/run/netns` file, and with it that pod's namespace and veth,
//!   for as long as this tailscaled runs.
//! - **a session of its own**: signals to the agent's process group (a
//!   Ctrl-C, a supervisor killing the group) do not reach it, so the
//!   identity outlives an agent restart.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

/// The hidden first argument that selects this mode in `tailroute-agent`.
pub const RUN_IN_POD: &str = "run-in-pod";

/// What `run-in-pod` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodExec {
    /// The pod's network namespace file (`/run/netns/cni-...`, or
    /// `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The file to show the program as `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// The program and its arguments.
    pub program: Vec<OsString>,
}

impl PodExec {
    /// The arguments that come after the agent binary's path.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            RUN_IN_POD.into(),
            "--netns".into(),
            self.netns.clone().into(),
            "--resolv-conf".into(),
            self.resolv_conf.clone().into(),
            "--".into(),
        ];
        args.extend(self.program.iter().cloned());
        args
    }

    /// Parses what [`PodExec::to_args`] wrote (the arguments after
    /// `run-in-pod`).
    pub fn parse(args: &[OsString]) -> Result<PodExec, String> {
        let mut netns = None;
        let mut resolv_conf = None;
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match arg.to_str() {
                Some("--netns") => netns = rest.next().map(PathBuf::from),
                Some("--resolv-conf") => resolv_conf = rest.next().map(PathBuf::from),
                Some("--") => break,
                _ => return Err(format!("{RUN_IN_POD}: unexpected argument {arg:?}")),
            }
        }
        let program: Vec<OsString> = rest.cloned().collect();
        match (netns, resolv_conf, program.is_empty()) {
            (Some(netns), Some(resolv_conf), false) => Ok(PodExec {
                netns,
                resolv_conf,
                program,
            }),
            _ => Err(format!(
                "usage: tailroute-agent {RUN_IN_POD} --netns FILE --resolv-conf FILE -- PROGRAM [ARGS...] \
                 (an internal mode: the agent starts identity tailscaleds this way)"
            )),
        }
    }

    /// Enters the pod and `exec`s the program: returns only on failure.
    /// Must run in a single-threaded process.
    pub fn exec(&self) -> io::Error {
        match self.enter() {
            Ok(()) => {
                let mut command = Command::new(&self.program[0]);
                command.args(&self.program[1..]);
                let e = command.exec();
                io::Error::new(e.kind(), format!("cannot run {:?}: {e}", self.program[0]))
            }
            Err(e) => e,
        }
    }

    fn enter(&self) -> io::Result<()> {
        let context = |what: String| move |e: nix::Error| io::Error::other(format!("{what}: {e}"));
        let netns = File::open(&self.netns).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the pod's network namespace {}: {e}", self.netns.display()),
            )
        })?;
        setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(context(format!("setns {}", self.netns.display())))?;
        unshare(CloneFlags::CLONE_NEWNS).map_err(context("unshare(CLONE_NEWNS)".to_owned()))?;
        mount(
            None::<&Path>,
            "/",
            None::<&Path>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&Path>,
        )
        .map_err(context("making / a slave mount".to_owned()))?;
        mount(
            Some(self.resolv_conf.as_path()),
            "/etc/resolv.conf",
            None::<&Path>,
            MsFlags::MS_BIND,
            None::<&Path>,
        )
        .map_err(context(format!(
            "bind-mounting {} over /etc/resolv.conf",
            self.resolv_conf.display()
        )))?;
        nix::unistd::setsid().map_err(context("setsid".to_owned()))?;
        Ok(())
    }
}

/// The resolver configuration for a pod's tailscaled, from the node's.
///
/// tailscaled resolves its control server's name with it. Inside the pod's
/// network namespace a loopback resolver of the node (systemd-resolved's
/// 127.0.0.53) does not exist, so loopback servers are dropped, and the
/// servers systemd-resolved forwards to are used when the node has them
/// (what the kubelet's `--resolv-conf` does). Comments are dropped too:
/// tailscaled picks its DNS manager from them, and a plain file keeps it in
/// its simplest mode, which touches nothing but this file.
pub fn pod_resolv_conf(node_resolv_conf: &str, resolved_upstream: Option<&str>) -> String {
    let keep = |text: &str| -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
            .filter(|l| {
                let mut words = l.split_whitespace();
                match (words.next(), words.next()) {
                    (Some("nameserver"), Some(server)) => server
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| !ip.is_loopback()),
                    _ => true,
                }
            })
            .map(str::to_owned)
            .collect()
    };
    let has_server = |lines: &[String]| lines.iter().any(|l| l.starts_with("nameserver"));
    let mut lines = keep(node_resolv_conf);
    if !has_server(&lines) {
        if let Some(upstream) = resolved_upstream {
            lines = keep(upstream);
        }
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let exec = PodExec {
            netns: "/run/netns/cni-1".into(),
            resolv_conf: "/var/lib/tailroute/identities/ab/resolv.conf".into(),
            program: vec!["tailscaled".into(), "--port=41641".into()],
        };
        let args = exec.to_args();
        assert_eq!(args[0], RUN_IN_POD);
        assert_eq!(PodExec::parse(&args[1..]), Ok(exec));
        let err = PodExec::parse(&["--netns".into(), "/x".into()]).expect_err("no program");
        assert!(err.contains("usage"), "{err}");
    }

    #[test]
    fn the_pods_resolver_skips_loopback_and_comments() {
        let node =
            "# This is /run/systemd/resolve/stub-resolv.conf managed by man:systemd-resolved(8).\n\
                    nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        let upstream = "# upstream\nnameserver 192.168.1.1\nnameserver fe80::1\nsearch lan\n";
        assert_eq!(
            pod_resolv_conf(node, Some(upstream)),
            "nameserver 192.168.1.1\nnameserver fe80::1\nsearch lan\n"
        );
        let plain = "nameserver 10.0.0.2\nsearch example.internal\n";
        assert_eq!(pod_resolv_conf(plain, Some(upstream)), plain);
        // Nothing usable: an empty file (tailscaled then uses its built-in
        // bootstrap resolvers for the control server).
        assert_eq!(pod_resolv_conf("nameserver 127.0.0.1\n", None), "\n");
    }
}
