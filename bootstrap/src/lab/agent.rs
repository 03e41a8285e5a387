//! The node agent in the lab: one `tailroute-agent` per node, inside the
//! node's namespace, exactly as the DaemonSet runs it on a real node (host
//! network, the node's tailscaled socket, its CNI directories), with the
//! least-privilege ClusterRole of the install manifest `deploy/tailroute.yaml`
//! (only that document: the lab runs the agents itself, not the DaemonSet).
//!
//! How routes get approved is the lab's choice, so every path can be shown:
//! through Headscale's API with a key the lab mints ([`Approval::Api`]), by
//! an autoApprovers policy with no credential at all
//! ([`Approval::AutoApprovers`]), or not at all ([`Approval::None`]: every
//! node reports `RouteNotApproved` with the remedy).

use std::path::{Path, PathBuf};

use crate::lab::kubernetes::{write_private, ClusterNetwork, TokenUser};

/// The agent's ClusterRole: the `kind: ClusterRole` document of the install
/// manifest, so the lab's agents run with exactly a real cluster's RBAC.
pub const CLUSTER_ROLE: &str = crate::manifest::CLUSTER_ROLE;

/// The group every lab agent's token belongs to.
pub const GROUP: &str = "tailroute:agents";

/// The binding of [`CLUSTER_ROLE`] to [`GROUP`].
pub const BINDING: &str = "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: tailroute-agent-lab
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: tailroute-agent
subjects:
  - apiGroup: rbac.authorization.k8s.io
    kind: Group
    name: tailroute:agents
";

/// How the lab's pod routes get approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Approval {
    /// The agents approve through Headscale's API with a key the lab mints
    /// (and, with it, give pods in `default` that ask a tailnet identity).
    Api,
    /// Headscale's policy auto-approves the cluster's pod CIDRs for
    /// `tag:k8s-node`; the agents only detect it.
    AutoApprovers,
    /// Nobody approves: the agents report what to do.
    None,
}

/// The agents to run.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// The `tailroute-agent` binary.
    pub program: PathBuf,
    /// How routes get approved.
    pub approval: Approval,
}

/// The Kubernetes identity of node `name`'s agent (one token per agent,
/// one group for the binding).
pub fn token_user(name: &str, token: String) -> TokenUser {
    TokenUser {
        token,
        user: format!("tailroute-agent:{name}"),
        groups: vec![GROUP.to_owned()],
    }
}

/// What one node's agent is told.
pub struct AgentFiles<'a> {
    /// The node's name.
    pub node: &'a str,
    /// The agent's directory (`<node>/agent`).
    pub dir: &'a Path,
    /// Its kubeconfig.
    pub kubeconfig: &'a Path,
    /// The node's tailscaled socket.
    pub socket: &'a Path,
    /// The node's `/etc/cni/net.d`.
    pub cni_conf_dir: &'a Path,
    /// The node's `/opt/cni/bin`.
    pub cni_bin_dir: &'a Path,
    /// The cluster's CIDRs.
    pub network: &'a ClusterNetwork,
    /// Headscale's URL and the API key file, when approving through the API.
    pub api: Option<(&'a str, &'a Path)>,
    /// The tailscaled and tailscale binaries for per-pod identities, which
    /// the lab enables whenever the agent has an API key to mint keys with.
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// The identity policy of every lab: pods in `default` may have an
/// identity, tagged [`POD_TAG`] unless they ask for [`WEB_TAG`] too.
pub const POD_TAG: &str = "tag:k8s-pod";
/// The other tag `default`'s pods may ask for.
pub const WEB_TAG: &str = "tag:web";

/// Writes `agent.toml` for one node and returns its path.
pub fn write_config(files: &AgentFiles<'_>) -> std::io::Result<PathBuf> {
    let quote = |items: &[String]| {
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut toml = format!(
        "# Written by `tailroute lab up` for node {node}.\n\
         node_name = \"{node}\"\n\
         kubeconfig = \"{kubeconfig}\"\n\
         state_dir = \"{state}\"\n\
         listen = \"0.0.0.0:9740\"\n\
         resync_seconds = 10\n\n\
         [tailscale]\nsocket = \"{socket}\"\n\n\
         [cni]\nconf_dir = \"{conf}\"\nbin_dir = \"{bin}\"\n\
         # Every lab node shares the host's /run: a directory per node.\n\
         data_dir = \"{bridge}\"\n\n\
         [cluster]\npod_cidrs = [{pods}]\nservice_cidrs = [{services}]\n",
        node = files.node,
        kubeconfig = files.kubeconfig.display(),
        state = files.dir.join("state").display(),
        socket = files.socket.display(),
        conf = files.cni_conf_dir.display(),
        bin = files.cni_bin_dir.display(),
        bridge = files.dir.join("bridge-state").display(),
        pods = quote(&files.network.pod_cidrs),
        services = quote(&files.network.service_cidrs),
    );
    if let Some((url, key_file)) = files.api {
        toml.push_str(&format!(
            "\n[approval]\ncontrol = \"headscale\"\nurl = \"{url}\"\napi_key_file = \"{}\"\n",
            key_file.display()
        ));
    }
    if let Some((tailscaled, tailscale)) = files.identity {
        toml.push_str(&format!(
            "\n[identity]\nenabled = true\ncluster_name = \"lab\"\n\
             tailscaled = \"{}\"\ntailscale = \"{}\"\n\n\
             [identity.namespaces.default]\ntags = [\"{POD_TAG}\", \"{WEB_TAG}\"]\n\
             default_tags = [\"{POD_TAG}\"]\n",
            tailscaled.display(),
            tailscale.display()
        ));
    }
    let path = files.dir.join("agent.toml");
    std::fs::create_dir_all(files.dir)?;
    write_private(&path, &toml)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_one_the_agent_accepts_in_shape() {
        let dir = std::env::temp_dir().join(format!("trl-agent-cfg-{}", std::process::id()));
        let network = ClusterNetwork::lab_default(true);
        let path = write_config(&AgentFiles {
            node: "n1",
            dir: &dir,
            kubeconfig: Path::new("/k"),
            socket: Path::new("/s"),
            cni_conf_dir: Path::new("/c"),
            cni_bin_dir: Path::new("/b"),
            network: &network,
            api: Some(("http://198.18.0.2:8080", Path::new("/key"))),
            identity: Some((Path::new("/ts/tailscaled"), Path::new("/ts/tailscale"))),
        })
        .expect("write");
        let text = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            text.contains("pod_cidrs = [\"10.244.0.0/16\", \"fd00:10:244::/56\"]"),
            "{text}"
        );
        assert!(text.contains("control = \"headscale\""), "{text}");
        assert!(text.contains("[identity.namespaces.default]"), "{text}");
        assert!(CLUSTER_ROLE.contains("nodes/status"));
    }
}
