//! `lab up`, `lab down` and `lab status` for the whole lab: the topology,
//! the control plane (Headscale + Kubernetes), and every node's tailscaled
//! and lab kubelet.
//!
//! Everything `up` starts is recorded in the lab's [`Ledger`]. Processes
//! the lab kubelets start later (pod servers) and the pod namespaces they
//! create are not; `down` finds those by namespace: it stops every process
//! living in any of the lab's namespaces and deletes every namespace with
//! the lab's prefix, then tears the ledger down.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::command::HostCommand;
use crate::lab::agent::{self, AgentFiles, AgentSetup, Approval};
use crate::lab::daemon::{self, wait_ready, DaemonSpec, Entry};
use crate::lab::headscale::{self, Headscale};
use crate::lab::kubernetes::{self, ClusterNetwork, TokenUser};
use crate::lab::ledger::{Ledger, Teardown, TeardownError};
use crate::lab::peers::Peers;
use crate::lab::plan::{LabTag, TopologyPlan};
use crate::lab::resource::{namespaces_with_prefix, Resource};
use crate::lab::{api_proxy, pki, topology};
use crate::tailnet::{JoinOptions, TailnetStatus, TailscaleCli};

/// The lab's description, written to `<state dir>/lab.json` by `up`.
pub const LAB_FILE: &str = "lab.json";

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// The topology.
    pub plan: TopologyPlan,
    /// The state directory (ledger, configs, logs, tailscaled state).
    pub state_dir: PathBuf,
    /// The peer programs.
    pub peers: Peers,
    /// The `tailroute` binary (the lab kubelet and API proxy are subcommands).
    pub exe: PathBuf,
    /// The CNI plugin installed into every node's `/opt/cni/bin` equivalent.
    pub cni_plugin: PathBuf,
    /// The node agent on every node, or none (the conflist is then the
    /// caller's business).
    pub agent: Option<AgentSetup>,
    /// Whether the plan's last node is a "laptop": a tailnet device of the
    /// lab user that accepts routes and is not a cluster node.
    pub laptop: bool,
}

/// The lab's laptop: on the tailnet, not in the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabLaptop {
    /// Its network namespace.
    pub namespace: String,
    /// Its tailnet addresses, IPv4 first.
    pub tailnet_ips: Vec<IpAddr>,
    /// Its tailscaled socket.
    pub tailscaled_socket: PathBuf,
}

/// One node of a running lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// Kubernetes Node name and tailnet hostname.
    pub name: String,
    /// Its network namespace.
    pub namespace: String,
    /// Its underlay (or, in hybrid, private LAN) addresses, IPv4 first.
    pub addresses: Vec<IpAddr>,
    /// Its tailnet addresses, IPv4 first.
    pub tailnet_ips: Vec<IpAddr>,
    /// tailscaled's socket.
    pub tailscaled_socket: PathBuf,
    /// The node's `/etc/cni/net.d`.
    pub cni_conf_dir: PathBuf,
    /// The node's `/opt/cni/bin`.
    pub cni_bin_dir: PathBuf,
    /// Pod namespaces of this node are `<prefix><hash>`.
    pub pod_netns_prefix: String,
    /// The node's kubeconfig (its `system:node:<name>` identity).
    pub kubeconfig: PathBuf,
}

/// A running lab, as `lab.json` describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabInfo {
    /// The lab's tag.
    pub tag: String,
    /// `flat` or `hybrid`.
    pub topology: String,
    /// Dual-stack addresses and pod CIDRs.
    pub dual_stack: bool,
    /// The control plane's namespace.
    pub control_plane_namespace: String,
    /// The admin kubeconfig for the host (through the API proxy).
    pub kubeconfig: PathBuf,
    /// The API server URL inside the lab.
    pub apiserver: String,
    /// Headscale's URL inside the lab.
    pub headscale: String,
    /// Headscale's configuration (for `headscale -c`).
    pub headscale_config: PathBuf,
    /// The `tailscale` CLI.
    pub tailscale: PathBuf,
    /// The `kubectl` the lab was built with.
    pub kubectl: PathBuf,
    /// The cluster CIDRs.
    pub pod_cidrs: Vec<String>,
    /// How pod routes get approved, when agents run (`api`,
    /// `auto-approvers`, `none`); `None` without agents.
    #[serde(default)]
    pub agents: Option<String>,
    /// The nodes.
    pub nodes: Vec<LabNode>,
    /// The laptop, when asked for.
    #[serde(default)]
    pub laptop: Option<LabLaptop>,
    /// Wall-clock seconds per phase of `up`, in order.
    pub timings: Vec<(String, f64)>,
}

impl LabInfo {
    /// Reads `lab.json` from `state_dir`.
    pub fn load(state_dir: &Path) -> Result<LabInfo, LabError> {
        let path = state_dir.join(LAB_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(match Ledger::open(state_dir) {
                    Ok(Some(ledger)) => LabError::Setup(format!(
                        "the lab in {} is only half built ({} things recorded, no {LAB_FILE}): \
                         its `up` failed or was interrupted; `tailroute lab down` removes it",
                        state_dir.display(),
                        ledger.resources().len()
                    )),
                    _ => LabError::NotRunning(format!("nothing in {}", state_dir.display())),
                })
            }
            Err(e) => return Err(LabError::Setup(format!("{}: {e}", path.display()))),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| LabError::Setup(format!("{}: {e}", path.display())))
    }

    /// The node named `name` (`n1`), if any.
    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The `tailscale` CLI of `node`.
    pub fn tailscale_cli(&self, node: &LabNode) -> TailscaleCli {
        TailscaleCli {
            program: self.tailscale.clone(),
            socket: node.tailscaled_socket.clone(),
            namespace: Some(node.namespace.clone()),
        }
    }

    /// `kubectl --kubeconfig <admin> args...`, run on the host.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec![format!("--kubeconfig={}", self.kubeconfig.display())];
        full.extend(args.iter().map(|a| (*a).to_owned()));
        HostCommand::new(&self.kubectl.display().to_string(), &full)
            .run()
            .map_err(|e| LabError::Setup(e.to_string()))
    }
}

/// Why a lab command failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A step of `up` failed; what exists is in the ledger.
    #[error("{0}\nwhat was created so far is recorded; `tailroute lab down` removes it")]
    Up(String),
    /// Setup or reading state failed.
    #[error("{0}")]
    Setup(String),
    /// There is no running lab.
    #[error("no lab is running here ({0}); start one with `tailroute lab up`")]
    NotRunning(String),
}

/// The prefix of node `index`'s pod namespaces.
fn pod_netns_prefix(plan: &TopologyPlan, index: u8) -> String {
    format!("{}n{index}p-", plan.tag.name_prefix())
}

/// Builds and starts the whole lab. `progress` gets one line per phase.
pub fn up(spec: &LabSpec, progress: &mut dyn FnMut(&str)) -> Result<LabInfo, LabError> {
    let started = Instant::now();
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut phase_start = Instant::now();
    let mut phase = |name: &str, progress: &mut dyn FnMut(&str)| {
        let secs = phase_start.elapsed().as_secs_f64();
        progress(&format!("{name:<40} {secs:6.2} s"));
        timings.push((name.to_owned(), secs));
        phase_start = Instant::now();
    };
    if !spec.cni_plugin.is_file() {
        return Err(LabError::Setup(format!(
            "the CNI plugin {} does not exist: build it with `make plugin`, or pass --cni-plugin",
            spec.cni_plugin.display()
        )));
    }
    let plan = &spec.plan;
    let kube_nodes = &plan.nodes[..plan.nodes.len().saturating_sub(usize::from(spec.laptop))];
    let ledger = Ledger::create(&spec.state_dir).map_err(|e| LabError::Setup(e.to_string()))?;
    let ledger = Mutex::new(ledger);
    let up_err = |e: &dyn std::fmt::Display| LabError::Up(e.to_string());
    let record = |pid: u32, what: &str| -> Result<(), String> {
        let resource = Resource::process(pid, what).map_err(|e| e.to_string())?;
        ledger
            .lock()
            .map_err(|_| "ledger lock poisoned".to_owned())?
            .record(resource)
            .map_err(|e| e.to_string())
    };

    {
        let mut guard = ledger
            .lock()
            .map_err(|_| LabError::Setup("ledger lock poisoned".into()))?;
        topology::up(plan, &mut guard).map_err(|e| up_err(&e))?;
    }
    phase("topology (namespaces, links, NAT)", progress);

    let cp_ns = plan.control_plane.namespace.clone();
    let cp_dir = spec.state_dir.join("cp");
    let cp_v4 = plan.control_plane.uplink.ipv4.addr;
    let mut rec = |pid: u32, what: &str| record(pid, what);
    let network = ClusterNetwork::lab_default(plan.dual_stack);
    let approval = spec.agent.as_ref().map(|a| a.approval);
    let auto_approve: &[String] = match approval {
        Some(Approval::AutoApprovers) => &network.pod_cidrs,
        _ => &[],
    };
    let headscale = headscale::start(
        &spec.peers.headscale,
        &cp_ns,
        &cp_dir.join("headscale"),
        cp_v4,
        auto_approve,
        &mut rec,
    )
    .map_err(|e| up_err(&e))?;
    let api_key_file = cp_dir.join("headscale/agent-api-key");
    if approval == Some(Approval::Api) {
        headscale.api_key(&api_key_file).map_err(|e| up_err(&e))?;
    }
    phase("headscale", progress);

    let mut advertise = vec![cp_v4];
    if let Some(v6) = &plan.control_plane.uplink.ipv6 {
        advertise.push(v6.addr);
    }
    let node_users: Vec<(String, TokenUser)> = kube_nodes
        .iter()
        .map(|n| {
            let name = format!("n{}", n.index);
            let token = pki::random_token().map_err(|e| up_err(&e))?;
            Ok((
                name.clone(),
                TokenUser {
                    token,
                    user: format!("system:node:{name}"),
                    groups: vec!["system:nodes".into()],
                },
            ))
        })
        .collect::<Result<_, LabError>>()?;
    let agent_users: Vec<(String, TokenUser)> = match &spec.agent {
        None => Vec::new(),
        Some(_) => node_users
            .iter()
            .map(|(name, _)| {
                let token = pki::random_token().map_err(|e| up_err(&e))?;
                Ok((name.clone(), agent::token_user(name, token)))
            })
            .collect::<Result<_, LabError>>()?,
    };
    let users: Vec<TokenUser> = node_users
        .iter()
        .chain(&agent_users)
        .map(|(_, u)| u.clone())
        .collect();
    let k8s = kubernetes::start(
        &spec.peers,
        &cp_ns,
        &cp_dir.join("kubernetes"),
        &advertise,
        &network,
        &users,
        &mut rec,
    )
    .map_err(|e| up_err(&e))?;

    let proxy_log = cp_dir.join("api-proxy.log");
    let target = SocketAddr::new(
        "127.0.0.1".parse().expect("literal"),
        kubernetes::APISERVER_PORT,
    );
    let (proxy_pid, port) =
        api_proxy::spawn(&spec.exe, &cp_ns, target, &proxy_log).map_err(|e| up_err(&e))?;
    record(proxy_pid, "api-proxy").map_err(|e| up_err(&e))?;
    let kubeconfig = spec.state_dir.join("admin.kubeconfig");
    kubernetes::write_kubeconfig(
        &kubeconfig,
        &format!("https://127.0.0.1:{port}"),
        &k8s.ca_cert,
        "tailroute-lab-admin",
        &k8s.admin_token,
    )
    .map_err(|e| up_err(&e))?;
    let mut info = LabInfo {
        tag: plan.tag.to_string(),
        topology: plan.mode.to_string(),
        dual_stack: plan.dual_stack,
        control_plane_namespace: cp_ns.clone(),
        kubeconfig,
        apiserver: k8s.server.clone(),
        headscale: headscale.url.clone(),
        headscale_config: headscale.config.clone(),
        tailscale: spec.peers.tailscale.clone(),
        kubectl: spec.peers.kubectl.clone(),
        pod_cidrs: network.pod_cidrs.clone(),
        agents: approval.map(|a| {
            clap::ValueEnum::to_possible_value(&a)
                .map(|v| v.get_name().to_owned())
                .unwrap_or_default()
        }),
        nodes: Vec::new(),
        laptop: None,
        timings: Vec::new(),
    };
    wait_ready(
        "kube-apiserver /readyz",
        None,
        &cp_dir.join("kubernetes/logs/kube-apiserver.log"),
        Duration::from_secs(90),
        || {
            info.kubectl(&["get", "--raw=/readyz"])
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .map_err(|e| up_err(&e))?;
    if spec.agent.is_some() {
        let rbac = cp_dir.join("kubernetes/tailroute-agent-rbac.yaml");
        std::fs::write(
            &rbac,
            format!("{}---\n{}", agent::CLUSTER_ROLE, agent::BINDING),
        )
        .map_err(|e| up_err(&e))?;
        info.kubectl(&["apply", "-f", &rbac.display().to_string()])
            .map_err(|e| up_err(&e))?;
    }
    phase("kubernetes control plane (ready)", progress);

    let key_file = cp_dir.join("headscale/node.key");
    headscale
        .node_key(&key_file, Duration::from_secs(3600))
        .map_err(|e| up_err(&e))?;

    // Nodes join in parallel: each `tailscale up` is a few seconds of
    // waiting on the control server.
    let joined: Vec<Result<LabNode, LabError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = kube_nodes
            .iter()
            .map(|node| {
                let (name, user) = node_users
                    .iter()
                    .find(|(n, _)| *n == format!("n{}", node.index))
                    .expect("a token per node")
                    .clone();
                let record = &record;
                let agent_user = agent_users.iter().find(|(n, _)| *n == name).map(|(_, u)| u);
                let api = (approval == Some(Approval::Api))
                    .then_some((headscale.url.as_str(), api_key_file.as_path()));
                let node_agent = agent_user.map(|user| NodeAgent {
                    user,
                    network: &network,
                    api,
                });
                let (spec, headscale, key_file, k8s) = (spec, &headscale, &key_file, &k8s);
                scope.spawn(move || -> Result<LabNode, LabError> {
                    start_node(
                        spec, node, &name, &user, headscale, key_file, k8s, node_agent, record,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LabError::Up("a node thread panicked".into())))
            })
            .collect()
    });
    for node in joined {
        info.nodes.push(node?);
    }
    if let Some(node) = plan.nodes.last().filter(|_| spec.laptop) {
        let key = cp_dir.join("headscale/laptop.key");
        headscale
            .user_key(&key, Duration::from_secs(3600))
            .map_err(|e| up_err(&e))?;
        let dir = spec.state_dir.join("laptop");
        let ns = &node.host.namespace;
        let (socket, tailnet_ips) =
            join_tailnet(spec, ns, &dir, "laptop", &headscale.url, &key, &record)?;
        info.laptop = Some(LabLaptop {
            namespace: ns.clone(),
            tailnet_ips,
            tailscaled_socket: socket,
        });
    }
    phase("nodes: tailscaled joined, kubelets started", progress);

    wait_for_nodes(
        &info,
        &spec.state_dir.join("nodes"),
        Duration::from_secs(60),
    )
    .map_err(|e| up_err(&e))?;
    phase("nodes Ready with podCIDRs", progress);
    wait_for_tailnet_mesh(
        &info,
        &spec.state_dir.join("nodes"),
        Duration::from_secs(30),
    )
    .map_err(|e| up_err(&e))?;
    phase("tailnet: every node sees every other", progress);
    wait_for_tailnet_paths(&info, Duration::from_secs(30)).map_err(|e| up_err(&e))?;
    phase("tailnet: every node pings every other", progress);
    if approval.is_some_and(|a| a != Approval::None) {
        wait_for_agents(
            &info,
            &spec.state_dir.join("nodes"),
            Duration::from_secs(60),
        )
        .map_err(|e| up_err(&e))?;
        phase("agents: every node's pod network up", progress);
    }

    info.timings = timings;
    info.timings
        .push(("total".into(), started.elapsed().as_secs_f64()));
    let json = serde_json::to_vec_pretty(&info).map_err(|e| up_err(&e))?;
    std::fs::write(spec.state_dir.join(LAB_FILE), json).map_err(|e| up_err(&e))?;
    Ok(info)
}

/// Starts tailscaled in `ns` (state under `dir/tailscale`) and brings it
/// onto the lab's tailnet as `name` with the key in `key_file`, through
/// the same join code as `tailroute join`. Returns its socket and tailnet
/// addresses.
fn join_tailnet(
    spec: &LabSpec,
    ns: &str,
    dir: &Path,
    name: &str,
    login_server: &str,
    key_file: &Path,
    record: &(dyn Fn(u32, &str) -> Result<(), String> + Sync),
) -> Result<(PathBuf, Vec<IpAddr>), LabError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| LabError::Up(format!("{name}: {what}: {e}"));
    let ts_dir = dir.join("tailscale");
    std::fs::create_dir_all(&ts_dir).map_err(|e| fail("create directories", &e))?;
    let socket = crate::tailnet::socket_in(&ts_dir);
    let ts_log = dir.join("tailscaled.log");
    let pid = DaemonSpec {
        namespace: Some(ns),
        entry: Entry::IpNetnsExec,
        program: &spec.peers.tailscaled,
        args: vec![
            format!("--statedir={}", ts_dir.display()),
            format!("--socket={}", socket.display()),
            "--port=41641".into(),
            "--tun=tailscale0".into(),
            "--no-logs-no-support".into(),
        ],
        // Headscale's embedded DERP speaks plain http in the lab; without
        // this tailscaled insists on TLS and the relay is unusable. Without
        // TS_LOGS_DIR, tailscaled writes its log config into the host's
        // /var/lib/tailscale even with --no-logs-no-support.
        env: vec![
            ("TS_DEBUG_USE_DERP_HTTP".into(), "1".into()),
            ("TS_LOGS_DIR".into(), ts_dir.display().to_string()),
        ],
        log: ts_log.clone(),
    }
    .spawn()
    .map_err(|e| fail("start tailscaled", &e))?;
    record(pid, &format!("tailscaled {name}")).map_err(|e| fail("record tailscaled", &e))?;
    wait_ready(
        &format!("tailscaled {name}"),
        Some(pid),
        &ts_log,
        Duration::from_secs(20),
        || {
            if socket.exists() {
                Ok(())
            } else {
                Err(format!("no socket at {}", socket.display()))
            }
        },
    )
    .map_err(|e| fail("tailscaled", &e))?;

    let cli = TailscaleCli {
        program: spec.peers.tailscale.clone(),
        socket: socket.clone(),
        namespace: Some(ns.to_owned()),
    };
    // The same step as `tailroute join` on a real machine.
    let joined = cli
        .ensure_joined(&JoinOptions {
            login_server: Some(login_server.to_owned()),
            auth_key_file: key_file.to_owned(),
            hostname: name.to_owned(),
            advertise_tags: vec![],
            timeout: Duration::from_secs(60),
        })
        .map_err(|e| {
            fail(
                "join the tailnet",
                &format!("{e} (tailscaled's log: {})", ts_log.display()),
            )
        })?;
    let tailnet_ips = joined.identity().ips.clone();

    Ok((socket, tailnet_ips))
}

/// What a node's agent needs from `up`.
struct NodeAgent<'a> {
    user: &'a TokenUser,
    network: &'a ClusterNetwork,
    api: Option<(&'a str, &'a Path)>,
}

/// Starts one node: tailscaled, the tailnet join, the lab kubelet, and the
/// agent.
#[allow(clippy::too_many_arguments)]
fn start_node(
    spec: &LabSpec,
    node: &crate::lab::plan::Node,
    name: &str,
    user: &TokenUser,
    headscale: &Headscale,
    key_file: &Path,
    k8s: &kubernetes::KubernetesEndpoints,
    node_agent: Option<NodeAgent<'_>>,
    record: &(dyn Fn(u32, &str) -> Result<(), String> + Sync),
) -> Result<LabNode, LabError> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| LabError::Up(format!("node {name}: {what}: {e}"));
    let ns = node.host.namespace.clone();
    let dir = spec.state_dir.join("nodes").join(name);
    let ts_dir = dir.join("tailscale");
    let cni_conf_dir = dir.join("etc/cni/net.d");
    let cni_bin_dir = dir.join("opt/cni/bin");
    for d in [&ts_dir, &cni_conf_dir, &cni_bin_dir, &dir.join("kubelet")] {
        std::fs::create_dir_all(d).map_err(|e| fail("create directories", &e))?;
    }
    let (socket, tailnet_ips) =
        join_tailnet(spec, &ns, &dir, name, &headscale.url, key_file, record)
            .map_err(|e| fail("tailnet", &e))?;

    let plugin_dest = cni_bin_dir.join("tailroute-bridge");
    std::fs::copy(&spec.cni_plugin, &plugin_dest)
        .map_err(|e| fail("install the CNI plugin", &e))?;
    let kubeconfig = dir.join("kubelet.kubeconfig");
    kubernetes::write_kubeconfig(
        &kubeconfig,
        &k8s.server,
        &k8s.ca_cert,
        &user.user,
        &user.token,
    )
    .map_err(|e| fail("write the kubelet's kubeconfig", &e))?;
    let pod_netns_prefix = pod_netns_prefix(&spec.plan, node.index);
    let mut args = vec![
        "lab".to_owned(),
        "kubelet".into(),
        format!("--node-name={name}"),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--cni-conf-dir={}", cni_conf_dir.display()),
        format!("--cni-bin-dir={}", cni_bin_dir.display()),
        format!("--state-dir={}", dir.join("kubelet").display()),
        format!("--pod-netns-prefix={pod_netns_prefix}"),
    ];
    // The kubelet's node-ip is the tailnet IP of every family the cluster
    // has: a single-stack cluster's Nodes carry no IPv6 address.
    let dual_stack = spec.plan.dual_stack;
    args.extend(
        tailnet_ips
            .iter()
            .filter(|ip| ip.is_ipv4() || dual_stack)
            .map(|ip| format!("--node-ip={ip}")),
    );
    let kubelet_log = dir.join("kubelet.log");
    let kubelet = DaemonSpec {
        namespace: Some(&ns),
        entry: Entry::Setns,
        program: &spec.exe,
        args,
        env: vec![],
        log: kubelet_log,
    }
    .spawn()
    .map_err(|e| fail("start the lab kubelet", &e))?;
    record(kubelet, &format!("kubelet {name}")).map_err(|e| fail("record the kubelet", &e))?;

    if let (Some(setup), Some(node_agent)) = (&spec.agent, node_agent) {
        let agent_dir = dir.join("agent");
        std::fs::create_dir_all(&agent_dir)
            .map_err(|e| fail("create the agent's directory", &e))?;
        let agent_kubeconfig = agent_dir.join("kubeconfig");
        kubernetes::write_kubeconfig(
            &agent_kubeconfig,
            &k8s.server,
            &k8s.ca_cert,
            &node_agent.user.user,
            &node_agent.user.token,
        )
        .map_err(|e| fail("write the agent's kubeconfig", &e))?;
        let config = agent::write_config(&AgentFiles {
            node: name,
            dir: &agent_dir,
            kubeconfig: &agent_kubeconfig,
            socket: &socket,
            cni_conf_dir: &cni_conf_dir,
            cni_bin_dir: &cni_bin_dir,
            network: node_agent.network,
            api: node_agent.api,
            identity: node_agent.api.map(|_| {
                (
                    spec.peers.tailscaled.as_path(),
                    spec.peers.tailscale.as_path(),
                )
            }),
        })
        .map_err(|e| fail("write the agent's configuration", &e))?;
        let pid = DaemonSpec {
            namespace: Some(&ns),
            entry: Entry::Setns,
            program: &setup.program,
            args: vec![format!("--config={}", config.display())],
            // Inherited by the identities' tailscaleds: the lab's DERP is
            // plain http (docs/lab-peers.md).
            env: vec![("TS_DEBUG_USE_DERP_HTTP".into(), "1".into())],
            log: dir.join("agent.log"),
        }
        .spawn()
        .map_err(|e| fail("start tailroute-agent", &e))?;
        record(pid, &format!("agent {name}")).map_err(|e| fail("record the agent", &e))?;
    }
    Ok(LabNode {
        name: name.to_owned(),
        namespace: ns,
        addresses: node
            .host
            .uplink
            .addresses()
            .iter()
            .map(|c| c.addr)
            .collect(),
        tailnet_ips,
        tailscaled_socket: socket,
        cni_conf_dir,
        cni_bin_dir,
        pod_netns_prefix,
        kubeconfig,
    })
}

/// Waits until every node's agent reports `NetworkUnavailable=False`.
fn wait_for_agents(
    info: &LabInfo,
    logs: &Path,
    timeout: Duration,
) -> Result<(), daemon::DaemonError> {
    wait_ready(
        "every agent reporting TailrouteIsUp",
        None,
        logs,
        timeout,
        || {
            let json = info
                .kubectl(&["get", "nodes", "-o", "json"])
                .map_err(|e| e.to_string())?;
            let list: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
            for item in list["items"].as_array().into_iter().flatten() {
                let name = item["metadata"]["name"].as_str().unwrap_or("?");
                let condition = item["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == "NetworkUnavailable");
                match condition {
                    Some(c) if c["status"] == "False" => {}
                    Some(c) => {
                        return Err(format!(
                            "Node {name}: NetworkUnavailable {} ({}): {}",
                            c["status"], c["reason"], c["message"]
                        ))
                    }
                    None => {
                        return Err(format!("Node {name}: no NetworkUnavailable condition yet"))
                    }
                }
            }
            Ok(())
        },
    )
}

/// Waits until every lab node is registered, Ready, and has its podCIDRs.
fn wait_for_nodes(
    info: &LabInfo,
    logs: &Path,
    timeout: Duration,
) -> Result<(), daemon::DaemonError> {
    let families = info.pod_cidrs.len();
    wait_ready(
        "every Node Ready with podCIDRs",
        None,
        logs,
        timeout,
        || {
            let json = info
                .kubectl(&["get", "nodes", "-o", "json"])
                .map_err(|e| e.to_string())?;
            let list: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
            for node in &info.nodes {
                let found = list["items"]
                    .as_array()
                    .and_then(|items| {
                        items
                            .iter()
                            .find(|i| i["metadata"]["name"] == node.name.as_str())
                    })
                    .ok_or_else(|| format!("Node {} not registered yet", node.name))?;
                let cidrs = found["spec"]["podCIDRs"].as_array().map_or(0, Vec::len);
                if cidrs < families {
                    return Err(format!(
                        "Node {} has {cidrs} of {families} podCIDRs",
                        node.name
                    ));
                }
                let ready = found["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                if !ready {
                    return Err(format!("Node {} not Ready", node.name));
                }
            }
            Ok(())
        },
    )
}

/// Waits until every node's tailscaled is Running and lists every other
/// node as an online peer.
fn wait_for_tailnet_mesh(
    info: &LabInfo,
    logs: &Path,
    timeout: Duration,
) -> Result<(), daemon::DaemonError> {
    wait_ready("the tailnet mesh", None, logs, timeout, || {
        for node in &info.nodes {
            let status = info
                .tailscale_cli(node)
                .status()
                .map_err(|e| e.to_string())?;
            if status.backend_state != "Running" {
                return Err(format!(
                    "{}: BackendState {}",
                    node.name, status.backend_state
                ));
            }
            for other in info.nodes.iter().filter(|o| o.name != node.name) {
                let seen = status
                    .peers()
                    .iter()
                    .any(|p| p.host_name == other.name && p.online);
                if !seen {
                    return Err(format!("{} does not see {} online", node.name, other.name));
                }
            }
        }
        Ok(())
    })
}

/// Pings `ip` from `namespace` out of `tailscale0`, one probe at a time,
/// until it answers (true) or `deadline` passes (false).
pub fn pings_over_tailnet(namespace: &str, ip: IpAddr, deadline: Instant) -> bool {
    let ip = ip.to_string();
    let ping = HostCommand::exec_in(
        namespace,
        "ping",
        &["-n", "-q", "-c", "1", "-W", "1", "-I", "tailscale0", &ip],
    );
    while Instant::now() < deadline {
        if ping.run().is_ok() {
            return true;
        }
        // A ping that fails at once (no route yet) must not spin.
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Waits until every node gets an answer from every other node's tailnet
/// IPv4 over tailscale0. The first packets between freshly joined peers
/// take about 5 s (docs/lab-peers.md); `up` returns a lab whose tailnet
/// already carries traffic.
fn wait_for_tailnet_paths(info: &LabInfo, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let failures: Vec<String> = std::thread::scope(|scope| {
        let mut probes = Vec::new();
        for from in &info.nodes {
            for to in info.nodes.iter().filter(|n| n.name != from.name) {
                let Some(ip) = to.tailnet_ips.iter().find(|ip| ip.is_ipv4()).copied() else {
                    continue;
                };
                probes.push(scope.spawn(move || {
                    if pings_over_tailnet(&from.namespace, ip, deadline) {
                        return None;
                    }
                    Some(format!("{} -> {} ({ip})", from.name, to.name))
                }));
            }
        }
        probes
            .into_iter()
            .filter_map(|p| {
                p.join()
                    .unwrap_or_else(|_| Some("a ping thread panicked".into()))
            })
            .collect()
    });
    if failures.is_empty() {
        Ok(())
    } else {
        Err(LabError::Up(format!(
            "no answer over tailscale0 within {timeout:?}: {}; see the nodes' tailscaled.log",
            failures.join(", ")
        )))
    }
}

/// What `down` did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Processes stopped because they lived in a lab namespace.
    pub stray_processes: usize,
    /// Pod namespaces deleted.
    pub pod_namespaces: usize,
    /// What the ledger teardown removed.
    pub teardown: Teardown,
}

/// Removes lab `tag` whose state is in `state_dir`: every process in its
/// namespaces, every namespace with its prefix, then the ledger.
pub fn down(tag: &LabTag, state_dir: &Path) -> Result<DownReport, LabError> {
    let prefix = tag.name_prefix();
    let list = || {
        namespaces_with_prefix(&prefix)
            .map_err(|e| LabError::Setup(format!("list namespaces: {e}")))
    };
    let mut report = DownReport {
        stray_processes: daemon::stop_processes_in(&list()?, state_dir, Duration::from_secs(3)),
        ..DownReport::default()
    };
    let ledger = Ledger::open(state_dir).map_err(|e| LabError::Setup(e.to_string()))?;
    let recorded: Vec<String> = ledger
        .iter()
        .flat_map(|l| l.resources())
        .filter_map(|r| match r {
            Resource::Namespace { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    for ns in list()?.into_iter().filter(|ns| !recorded.contains(ns)) {
        Resource::Namespace { name: ns }
            .remove()
            .map_err(|e| LabError::Setup(e.to_string()))?;
        report.pod_namespaces += 1;
    }
    if let Some(ledger) = ledger {
        report.teardown =
            topology::down(ledger).map_err(|e: TeardownError| LabError::Setup(e.to_string()))?;
    }
    Ok(report)
}

/// One node's tailnet view, for `lab status`.
#[derive(Debug, Serialize)]
pub struct NodeTailnet {
    /// The node.
    pub node: String,
    /// BackendState, or the error reading it.
    pub state: String,
    /// `(peer, online, path)`: path is `direct <addr>`, `relay <region>` or `idle`.
    pub peers: Vec<(String, bool, String)>,
}

/// Every node's tailnet state.
pub fn tailnet_view(info: &LabInfo) -> Vec<NodeTailnet> {
    info.nodes
        .iter()
        .map(|node| match info.tailscale_cli(node).status() {
            Ok(status) => NodeTailnet {
                node: node.name.clone(),
                state: status.backend_state.clone(),
                peers: peer_paths(&status),
            },
            Err(e) => NodeTailnet {
                node: node.name.clone(),
                state: format!("unreachable: {e}"),
                peers: vec![],
            },
        })
        .collect()
}

fn peer_paths(status: &TailnetStatus) -> Vec<(String, bool, String)> {
    status
        .peers()
        .into_iter()
        .map(|p| {
            let path = if !p.cur_addr.is_empty() {
                format!("direct {}", p.cur_addr)
            } else if !p.relay.is_empty() {
                format!("relay {}", p.relay)
            } else {
                "idle".into()
            };
            (p.host_name.clone(), p.online, path)
        })
        .collect()
}

/// Every process the ledger lists, with whether it runs and its RSS in KiB.
pub fn processes(state_dir: &Path) -> Result<Vec<(String, u32, Option<u64>)>, LabError> {
    let ledger = Ledger::open(state_dir)
        .map_err(|e| LabError::Setup(e.to_string()))?
        .ok_or_else(|| LabError::NotRunning(state_dir.display().to_string()))?;
    Ok(ledger
        .resources()
        .iter()
        .filter_map(|r| match r {
            Resource::Process { pid, what, .. } => {
                let rss = r
                    .exists()
                    .ok()
                    .filter(|e| *e)
                    .and_then(|_| daemon::rss_kib(*pid));
                Some((what.clone(), *pid, rss))
            }
            _ => None,
        })
        .collect())
}

/// The lab's pod namespaces that exist now.
pub fn pod_namespaces(info: &LabInfo) -> Vec<String> {
    let prefix = format!("trl{}-", info.tag);
    namespaces_with_prefix(&prefix)
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| {
            info.nodes
                .iter()
                .any(|n| ns.starts_with(&n.pod_netns_prefix))
        })
        .collect()
}
