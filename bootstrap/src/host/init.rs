//! `tailroute init`: the first control plane.

use std::path::Path;

use crate::host::kubeadm::{InitConfig, NodeRegistration};
use crate::host::network::{join, ClusterNetwork};
use crate::host::plan::{Action, JoinCommandSpec, Plan};
use crate::host::{deferred, paths, plugin_step, write_step, Machine};
use crate::tailnet::TailnetIdentity;

/// What `tailroute init` was asked for (the tailnet part aside).
#[derive(Debug, Clone)]
pub struct InitRequest {
    /// The pod and service networks.
    pub network: ClusterNetwork,
    /// HA: the endpoint every control plane shares.
    pub control_plane_endpoint: Option<String>,
    /// HA: upload the certificates so other control planes can join.
    pub upload_certs: bool,
    /// The Kubernetes version; `None`: kubeadm's own.
    pub kubernetes_version: Option<String>,
    /// The CRI endpoint; `None`: kubeadm detects it.
    pub cri_socket: Option<String>,
    /// `--login-server`, repeated in the printed join command.
    pub login_server: Option<String>,
    /// The install manifest to apply (`None`: `--skip-agent`), and the
    /// same with secrets redacted, for printing.
    pub manifest: Option<(String, String)>,
}

/// The steps after the tailnet step.
pub fn plan(
    machine: &dyn Machine,
    request: &InitRequest,
    identity: Option<&TailnetIdentity>,
) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let initialized = machine.exists(Path::new(paths::ADMIN_CONF));
    let version = request
        .kubernetes_version
        .clone()
        .or_else(|| machine.kubeadm_version())
        .ok_or("cannot tell kubeadm's version (`kubeadm version -o short` failed); pass --kubernetes-version")?;
    let families = request.network.families();

    let (summary, action) = match identity {
        Some(identity) => {
            let config = InitConfig {
                node: NodeRegistration {
                    identity,
                    families: &families,
                    cri_socket: request.cri_socket.as_deref(),
                },
                network: &request.network,
                kubernetes_version: &version,
                control_plane_endpoint: request.control_plane_endpoint.as_deref(),
            }
            .render()?;
            write_step(machine, paths::INIT_CONFIG, config.clone(), 0o644, config)
        }
        None => deferred(format!("write {}", paths::INIT_CONFIG)),
    };
    plan.push(summary, action);

    if initialized {
        plan.push(
            format!(
                "kubeadm init: already done here ({} exists); not run again",
                paths::ADMIN_CONF
            ),
            Action::Nothing,
        );
    } else {
        let mut argv: Vec<String> = ["kubeadm", "init", "--config", paths::INIT_CONFIG]
            .map(str::to_owned)
            .into();
        if request.upload_certs {
            argv.push("--upload-certs".into());
        }
        plan.push(format!("run {}", argv.join(" ")), Action::Run(argv));
    }

    let (summary, action) = plugin_step(machine);
    plan.push(summary, action);

    match &request.manifest {
        Some((manifest, shown)) => plan.push(
            "install the node agent: kubectl apply the install manifest (namespace \
             tailroute-system)",
            Action::Apply {
                kubeconfig: paths::ADMIN_CONF.into(),
                manifest: manifest.clone(),
                shown: shown.clone(),
            },
        ),
        None => plan.push(
            "node agent: not installed (--skip-agent); apply deploy/tailroute.yaml yourself",
            Action::Nothing,
        ),
    }

    plan.push(
        format!(
            "create a bootstrap token; write the join arguments to {} and print the join command",
            paths::JOIN_COMMAND
        ),
        Action::JoinCommand(JoinCommandSpec {
            pod_network_cidr: join(&request.network.pods),
            upload_certs: request.upload_certs,
            login_server: request.login_server.clone(),
        }),
    );
    Ok(plan)
}
