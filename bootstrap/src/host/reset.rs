//! `tailroute reset`: takes the machine out of the cluster and removes
//! what tailroute put on it, and nothing else. Only the routes tailroute
//! advertised are withdrawn (other subnet routes stay); the tailnet
//! membership stays unless `--logout`.
//!
//! The order protects state: the agent's route ledger is removed only
//! after the routes it lists were withdrawn, so a failed withdrawal (say,
//! tailscaled is down) stops the reset with the ledger intact, and a rerun
//! finishes the job.

use std::path::{Path, PathBuf};

use tailroute_bridge::config::{DEFAULT_BRIDGE, DEFAULT_DATA_DIR};

use crate::host::plan::{Action, Plan};
use crate::host::{paths, Machine};

/// What `tailroute reset` was asked for.
#[derive(Debug, Clone)]
pub struct ResetRequest {
    /// Also leave the tailnet.
    pub logout: bool,
    /// tailscaled's socket.
    pub socket: PathBuf,
    /// The CRI endpoint for kubeadm reset; `None`: detected.
    pub cri_socket: Option<String>,
}

/// Every step of the reset.
pub fn plan(machine: &dyn Machine, request: &ResetRequest) -> Plan {
    let mut plan = Plan::default();
    let in_cluster = [
        paths::KUBELET_CONF,
        paths::ADMIN_CONF,
        "/etc/kubernetes/manifests",
    ]
    .iter()
    .any(|p| machine.exists(Path::new(p)));
    if in_cluster && machine.program("kubeadm").is_some() {
        let mut argv: Vec<String> = ["kubeadm", "reset", "--force"].map(str::to_owned).into();
        if let Some(cri) = &request.cri_socket {
            argv.extend(["--cri-socket".to_owned(), cri.clone()]);
        }
        plan.push(format!("run {}", argv.join(" ")), Action::Run(argv));
    } else {
        plan.push(
            "kubeadm reset: this machine is in no cluster",
            Action::Nothing,
        );
    }

    plan.push(
        "withdraw the routes tailroute advertised (its ledger in /var/lib/tailroute; other \
         routes stay), remove its CNI config and its nftables table inet tailroute",
        Action::AgentCleanup {
            // Only a valid name is needed: the cleanup works from the ledger.
            node: machine.hostname().to_lowercase(),
            socket: request.socket.clone(),
        },
    );

    let bridge = Path::new("/sys/class/net").join(DEFAULT_BRIDGE);
    if machine.exists(&bridge) {
        plan.push(
            format!("delete the pod bridge {DEFAULT_BRIDGE}"),
            Action::DeleteLink(DEFAULT_BRIDGE.to_owned()),
        );
    } else {
        plan.push(
            format!("pod bridge {DEFAULT_BRIDGE}: not present"),
            Action::Nothing,
        );
    }

    for (dir, what) in [
        (DEFAULT_DATA_DIR, "the plugin's address records"),
        (paths::RUN_DIR, "tailroute's runtime files"),
        (paths::STATE_DIR, "the agent's state"),
        (paths::ETC_DIR, "kubeadm configs and the join command"),
    ] {
        if machine.exists(Path::new(dir)) {
            plan.push(format!("remove {dir} ({what})"), Action::Remove(dir.into()));
        } else {
            plan.push(format!("{dir}: not present"), Action::Nothing);
        }
    }

    if request.logout {
        let argv = vec![
            "tailscale".to_owned(),
            format!("--socket={}", request.socket.display()),
            "logout".to_owned(),
        ];
        plan.push(
            "leave the tailnet: tailscale logout (the device is removed from the tailnet)",
            Action::Run(argv),
        );
    } else {
        plan.push(
            "tailnet: stays joined (pass --logout to leave it)",
            Action::Nothing,
        );
    }
    plan
}
