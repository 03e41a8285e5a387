//! Checks before `tailroute init` or `join` changes anything: each one
//! either passes (saying what it found) or names the problem and the
//! command that fixes it. Every check runs, so one run lists every
//! problem.

use std::fmt;
use std::path::Path;

use crate::host::network::ClusterNetwork;
use crate::host::paths;
use crate::host::tailnet_step::TailnetPlan;
use crate::host::Machine;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (`swap`, `kubeadm`, ...).
    pub check: &'static str,
    /// What was found.
    pub outcome: Outcome,
}

/// Passed or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Fine; what was found.
    Ok(String),
    /// Not fine: what is wrong, and the fix.
    Problem {
        /// What is wrong.
        what: String,
        /// What to do.
        remedy: String,
    },
}

/// Which command the checks are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `tailroute init`: the first control plane (needs kubectl too).
    Init,
    /// `tailroute join`.
    Join,
}

/// Every finding of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    /// In the order checked.
    pub findings: Vec<Finding>,
}

impl Preflight {
    /// The problems only.
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| matches!(f.outcome, Outcome::Problem { .. }))
    }

    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.problems().next().is_none()
    }
}

impl fmt::Display for Preflight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            match &finding.outcome {
                Outcome::Ok(found) => writeln!(f, "  ok       {:<18} {found}", finding.check)?,
                Outcome::Problem { what, remedy } => {
                    writeln!(f, "  PROBLEM  {:<18} {what}", finding.check)?;
                    writeln!(f, "  {:<27}fix: {remedy}", "")?;
                }
            }
        }
        Ok(())
    }
}

/// Runs every check for `role`.
pub fn check(
    machine: &dyn Machine,
    role: Role,
    network: Option<&ClusterNetwork>,
    tailnet: &TailnetPlan,
    cri_socket: Option<&str>,
) -> Preflight {
    let mut findings = Vec::new();
    let mut add = |check: &'static str, outcome: Outcome| findings.push(Finding { check, outcome });

    add(
        "root",
        if machine.is_root() {
            Outcome::Ok("running as root".into())
        } else {
            problem(
                "tailroute changes the machine's network, kubelet and tailscaled",
                "run it as root (sudo tailroute ...)",
            )
        },
    );

    let missing: Vec<&str> = ["overlay", "br_netfilter"]
        .into_iter()
        .filter(|m| !machine.exists(&Path::new("/sys/module").join(m)))
        .collect();
    add(
        "kernel modules",
        if missing.is_empty() {
            Outcome::Ok("overlay and br_netfilter loaded".into())
        } else {
            problem(
                &format!("not loaded: {}", missing.join(", ")),
                &format!(
                    "modprobe {m} && printf '%s\\n' {m} > /etc/modules-load.d/kubernetes.conf",
                    m = missing.join(" ")
                ),
            )
        },
    );

    let mut sysctls = vec![("net/ipv4/ip_forward", "1")];
    if machine.exists(Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables")) {
        sysctls.push(("net/bridge/bridge-nf-call-iptables", "1"));
    }
    if network.is_some_and(|n| n.has_family(true)) {
        sysctls.push(("net/ipv6/conf/all/forwarding", "1"));
    }
    let wrong: Vec<String> = sysctls
        .iter()
        .filter(|(key, want)| {
            machine
                .read(&Path::new("/proc/sys").join(key))
                .is_none_or(|v| v.trim() != *want)
        })
        .map(|(key, want)| format!("{}={want}", key.replace('/', ".")))
        .collect();
    add(
        "sysctls",
        if wrong.is_empty() {
            Outcome::Ok(format!(
                "{} set",
                sysctls
                    .iter()
                    .map(|(k, v)| format!("{}={v}", k.replace('/', ".")))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        } else {
            problem(
                &format!("not set: {}", wrong.join(", ")),
                &format!(
                    "printf '%s\\n' {} > /etc/sysctl.d/90-kubernetes.conf && sysctl --system",
                    wrong.join(" ")
                ),
            )
        },
    );

    let swaps = machine
        .read(Path::new("/proc/swaps"))
        .map(|s| s.lines().skip(1).filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0);
    add(
        "swap",
        if swaps == 0 {
            Outcome::Ok("off".into())
        } else {
            problem(
                &format!("{swaps} swap device(s) on; the kubelet refuses to start with swap"),
                "swapoff -a, and remove the swap lines from /etc/fstab",
            )
        },
    );

    for program in ["tailscale", "tailscaled"] {
        if machine.program(program).is_none() {
            add(
                "tailscale",
                problem(
                    &format!("{program} is not installed"),
                    "install Tailscale (https://tailscale.com/download/linux, or the \
                     ansible/ role `tailscale`)",
                ),
            );
        }
    }
    add("tailnet", tailnet.finding());

    let mut k8s = vec!["kubeadm", "kubelet"];
    if role == Role::Init {
        k8s.push("kubectl");
    }
    let missing: Vec<&str> = k8s
        .iter()
        .copied()
        .filter(|p| machine.program(p).is_none())
        .collect();
    add(
        "kubernetes",
        if missing.is_empty() {
            Outcome::Ok(format!(
                "{} found{}",
                k8s.join(", "),
                machine
                    .kubeadm_version()
                    .map(|v| format!(" (kubeadm {v})"))
                    .unwrap_or_default()
            ))
        } else {
            problem(
                &format!("not installed: {}", missing.join(", ")),
                "install them from pkgs.k8s.io (https://kubernetes.io/docs/setup/production-environment/tools/kubeadm/install-kubeadm/, or the ansible/ role `node_prerequisites`)",
            )
        },
    );

    let runtime = match cri_socket {
        Some(socket) => machine
            .exists(Path::new(socket.trim_start_matches("unix://")))
            .then(|| socket.to_owned()),
        None => paths::CRI_SOCKETS
            .iter()
            .find(|s| machine.exists(Path::new(s)))
            .map(|s| (*s).to_owned()),
    };
    add(
        "container runtime",
        match runtime {
            Some(socket) => Outcome::Ok(format!("CRI socket {socket}")),
            None => problem(
                &match cri_socket {
                    Some(s) => format!("no CRI socket at {s}"),
                    None => format!("no CRI socket at {}", paths::CRI_SOCKETS.join(" or ")),
                },
                "install and start containerd (with SystemdCgroup = true) or CRI-O, or pass \
                 --cri-socket",
            ),
        },
    );

    let plugin = machine.bundled_plugin();
    let installed = Path::new(paths::CNI_BIN_DIR).join(paths::PLUGIN);
    add(
        "cni plugin",
        match plugin {
            Some(p) => Outcome::Ok(format!("{} will be installed", p.display())),
            None if machine.exists(&installed) => {
                Outcome::Ok(format!("{} installed", installed.display()))
            }
            None => problem(
                "tailroute-bridge is neither next to this tailroute binary nor in /opt/cni/bin",
                "install the tailroute release (tailroute, tailroute-agent, tailroute-bridge) \
                 into one directory, for example /usr/local/bin",
            ),
        },
    );

    Preflight { findings }
}

/// A problem outcome.
pub fn problem(what: &str, remedy: &str) -> Outcome {
    Outcome::Problem {
        what: what.to_owned(),
        remedy: remedy.to_owned(),
    }
}
