//! `tailroute`: the command-line tool.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod cluster_commands;
use cluster_commands::{InitArgs, JoinArgs, ResetArgs, StatusArgs};
use tailroute::lab::agent::{AgentSetup, Approval};
use tailroute::lab::api_proxy::ApiProxyArgs;
use tailroute::lab::cluster::{self, LabInfo, LabSpec};
use tailroute::lab::kubelet::KubeletArgs;
use tailroute::lab::ledger::Ledger;
use tailroute::lab::peers::{cache_root, Peers};
use tailroute::lab::podserver::PodServerArgs;
use tailroute::lab::{LabTag, TopologyMode, TopologyPlan};

type Error = Box<dyn std::error::Error>;

/// Kubernetes pod networking over a tailnet.
#[derive(Debug, Parser)]
#[command(name = "tailroute", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make this machine the cluster's first control plane: join the
    /// tailnet, kubeadm init with tailnet addresses, install the agent,
    /// print the join command.
    Init(Box<InitArgs>),
    /// Join this machine to the cluster over the tailnet.
    Join(Box<JoinArgs>),
    /// Take this machine out of the cluster and remove what tailroute put
    /// on it (only tailroute's routes are withdrawn).
    Reset(ResetArgs),
    /// Every node's pod route, approval, reachability and MTU, and every
    /// problem with its fix. Exits 1 when there are problems.
    Status(StatusArgs),
    /// The one-machine lab: a whole cluster's networking in network namespaces.
    #[command(subcommand)]
    Lab(LabCommand),
}

/// Which lab: its name and where its state lives.
#[derive(Debug, Clone, Args)]
struct LabSelect {
    /// The lab's name (1-6 of a-z, 0-9); every namespace is `trl<name>-...`.
    #[arg(long, default_value = "lab", env = "TAILROUTE_LAB")]
    name: String,
    /// Its state directory [default: /run/tailroute-lab/<name>].
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl LabSelect {
    fn tag(&self) -> Result<LabTag, Error> {
        Ok(LabTag::new(&self.name)?)
    }

    fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| Ledger::default_dir(&self.name))
    }

    fn info(&self) -> Result<LabInfo, Error> {
        Ok(LabInfo::load(&self.state_dir())?)
    }
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build the lab and start everything in it.
    Up {
        #[command(flatten)]
        lab: LabSelect,
        /// Number of Kubernetes nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// `flat` (every node on the underlay) or `hybrid` (every node
        /// behind its own NAT router: the tailnet is the only path).
        #[arg(long, default_value = "flat")]
        topology: TopologyMode,
        /// IPv6 too: underlay, pod CIDRs and service CIDRs.
        #[arg(long)]
        dual_stack: bool,
        /// The CNI plugin to install on every node [default: tailroute-bridge
        /// next to this binary].
        #[arg(long)]
        cni_plugin: Option<PathBuf>,
        /// Run no node agent: nodes get no CNI config until one is written
        /// by hand.
        #[arg(long)]
        no_agent: bool,
        /// How pod routes get approved: the agents through Headscale's API,
        /// Headscale's autoApprovers policy, or nobody (the agents report
        /// RouteNotApproved with the remedy).
        #[arg(long, value_enum, default_value = "api")]
        approval: Approval,
        /// The node agent [default: tailroute-agent next to this binary].
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Add a "laptop": a tailnet device (accepting routes) that is not
        /// a cluster node, to reach pods from outside the cluster.
        #[arg(long)]
        laptop: bool,
    },
    /// Stop and remove everything the lab made.
    Down {
        #[command(flatten)]
        lab: LabSelect,
    },
    /// What runs, where, its addresses and tailnet state.
    Status {
        #[command(flatten)]
        lab: LabSelect,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a node (`n1`), the control plane (`cp`) or a
    /// pod (`NAMESPACE/NAME`).
    Exec {
        #[command(flatten)]
        lab: LabSelect,
        /// `n1`, `cp`, or `namespace/pod`.
        target: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the path of the lab's admin kubeconfig (usable with kubectl
    /// from the host).
    Kubeconfig {
        #[command(flatten)]
        lab: LabSelect,
    },
    /// (internal) The lab kubelet of one node; `lab up` starts it.
    #[command(hide = true)]
    Kubelet(KubeletArgs),
    /// (internal) The built-in server of one lab pod; the lab kubelet starts it.
    #[command(hide = true)]
    PodServer(PodServerArgs),
    /// (internal) The host-loopback door to the API server; `lab up` starts it.
    #[command(hide = true)]
    ApiProxy(ApiProxyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let internal = matches!(
        cli.command,
        Command::Lab(LabCommand::Kubelet(_) | LabCommand::PodServer(_) | LabCommand::ApiProxy(_))
    );
    if !internal {
        // A user's `tailroute lab status | head` ends quietly, as a shell
        // tool should. (The daemons keep Rust's default: a client that goes
        // away must not kill them.)
        // SAFETY: called before any thread exists.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Lab(command) => lab(command),
        Command::Init(args) => cluster_commands::init(*args),
        Command::Join(args) => cluster_commands::join(*args),
        Command::Reset(args) => cluster_commands::reset(args),
        Command::Status(args) => cluster_commands::status(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tailroute: {e}");
            ExitCode::FAILURE
        }
    }
}

fn lab(command: LabCommand) -> Result<ExitCode, Error> {
    match command {
        LabCommand::Up {
            lab,
            nodes,
            topology,
            dual_stack,
            cni_plugin,
            no_agent,
            approval,
            agent,
            laptop,
        } => {
            let agent = (!no_agent).then_some((agent, approval));
            lab_up(&lab, nodes, topology, dual_stack, cni_plugin, agent, laptop)?
        }
        LabCommand::Down { lab } => {
            let report = cluster::down(&lab.tag()?, &lab.state_dir())?;
            println!(
                "lab {:?} is down: {} resources removed ({} already gone), {} pod namespaces, {} processes stopped",
                lab.name,
                report.teardown.removed.len(),
                report.teardown.already_gone.len(),
                report.pod_namespaces,
                report.stray_processes,
            );
        }
        LabCommand::Status { lab, json } => lab_status(&lab, json)?,
        LabCommand::Exec {
            lab,
            target,
            command,
        } => return lab_exec(&lab, &target, &command),
        LabCommand::Kubeconfig { lab } => println!("{}", lab.info()?.kubeconfig.display()),
        LabCommand::Kubelet(args) => tailroute::lab::kubelet::run(args)?,
        LabCommand::PodServer(args) => tailroute::lab::podserver::run(args)?,
        LabCommand::ApiProxy(args) => tailroute::lab::api_proxy::run(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn lab_up(
    lab: &LabSelect,
    nodes: usize,
    topology: TopologyMode,
    dual_stack: bool,
    cni_plugin: Option<PathBuf>,
    agent: Option<(Option<PathBuf>, Approval)>,
    laptop: bool,
) -> Result<(), Error> {
    require_root()?;
    let hosts = nodes + usize::from(laptop);
    let plan = TopologyPlan::new(lab.tag()?, hosts, topology, dual_stack)?;
    let exe = std::env::current_exe()?;
    let cni_plugin = cni_plugin.unwrap_or_else(|| exe.with_file_name("tailroute-bridge"));
    let agent = match agent {
        None => None,
        Some((program, approval)) => {
            let program = program.unwrap_or_else(|| exe.with_file_name("tailroute-agent"));
            if !program.is_file() {
                return Err(format!(
                    "the node agent {} does not exist: build it with `cargo build --release \
                     -p tailroute-agent`, pass --agent, or run the lab with --no-agent",
                    program.display()
                )
                .into());
            }
            Some(AgentSetup { program, approval })
        }
    };
    let spec = LabSpec {
        plan,
        state_dir: lab.state_dir(),
        peers: Peers::locate(&cache_root())?,
        exe,
        cni_plugin,
        agent,
        laptop,
    };
    println!(
        "lab {:?}: {nodes} nodes, {topology}{}",
        lab.name,
        if dual_stack { ", dual-stack" } else { "" }
    );
    let info = cluster::up(&spec, &mut |line| println!("  {line}"))?;
    let total = info.timings.last().map_or(0.0, |(_, s)| *s);
    println!("lab {:?} is up in {total:.1} s", lab.name);
    print_status(&info, &spec.state_dir)?;
    println!(
        "\nkubectl: export KUBECONFIG={}\n(tear down: tailroute lab down{})",
        info.kubeconfig.display(),
        name_flag(lab)
    );
    Ok(())
}

fn name_flag(lab: &LabSelect) -> String {
    if lab.name == "lab" {
        String::new()
    } else {
        format!(" --name {}", lab.name)
    }
}

fn lab_status(lab: &LabSelect, json: bool) -> Result<(), Error> {
    let info = lab.info()?;
    if json {
        let processes: Vec<serde_json::Value> = cluster::processes(&lab.state_dir())?
            .into_iter()
            .map(|(what, pid, rss)| serde_json::json!({"what": what, "pid": pid, "running": rss.is_some(), "rssKiB": rss}))
            .collect();
        let out = serde_json::json!({
            "lab": info,
            "processes": processes,
            "tailnet": cluster::tailnet_view(&info),
            "podNamespaces": cluster::pod_namespaces(&info),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    print_status(&info, &lab.state_dir())
}

fn print_status(info: &LabInfo, state_dir: &Path) -> Result<(), Error> {
    println!(
        "\nlab {:?}: {}, {} nodes{}; state in {}",
        info.tag,
        info.topology,
        info.nodes.len(),
        if info.dual_stack { ", dual-stack" } else { "" },
        state_dir.display()
    );
    println!(
        "control plane (namespace {}): headscale {}, kube-apiserver {}",
        info.control_plane_namespace, info.headscale, info.apiserver
    );
    let pod_cidrs = node_pod_cidrs(info);
    println!(
        "\n{:<5} {:<14} {:<16} {:<34} {:<28} TAILNET",
        "NODE", "NAMESPACE", "ADDRESS", "TAILNET IPS", "PODCIDRS"
    );
    let tailnet = cluster::tailnet_view(info);
    for node in &info.nodes {
        let ips: Vec<String> = node.tailnet_ips.iter().map(ToString::to_string).collect();
        let view = tailnet.iter().find(|t| t.node == node.name);
        let peers = view.map_or(String::new(), |v| {
            v.peers
                .iter()
                .map(|(name, online, path)| {
                    format!(
                        "{name}:{}:{path}",
                        if *online { "online" } else { "offline" }
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        });
        println!(
            "{:<5} {:<14} {:<16} {:<34} {:<28} {} {}",
            node.name,
            node.namespace,
            node.addresses
                .first()
                .map_or("-".into(), ToString::to_string),
            ips.join(","),
            pod_cidrs
                .iter()
                .find(|(n, _)| *n == node.name)
                .map_or("-".into(), |(_, c)| c.clone()),
            view.map_or("?", |v| v.state.as_str()),
            peers
        );
    }
    if let Some(laptop) = &info.laptop {
        let ips: Vec<String> = laptop.tailnet_ips.iter().map(ToString::to_string).collect();
        println!(
            "laptop (a tailnet device, not a node) in {}: {}",
            laptop.namespace,
            ips.join(",")
        );
    }
    println!("\n{:<28} {:>8} {:>10}", "PROCESS", "PID", "RSS");
    let mut total = 0;
    for (what, pid, rss) in cluster::processes(state_dir)? {
        total += rss.unwrap_or(0);
        let rss = rss.map_or("not running".into(), |kib| {
            format!("{:.1} MiB", kib as f64 / 1024.0)
        });
        println!("{what:<28} {pid:>8} {rss:>10}");
    }
    println!(
        "{:<28} {:>8} {:>6.1} MiB",
        "total",
        "",
        total as f64 / 1024.0
    );
    let pods = cluster::pod_namespaces(info);
    if !pods.is_empty() {
        println!("\npod namespaces: {}", pods.join(" "));
    }
    Ok(())
}

/// `(node, "cidr,cidr")` from the API server, empty when it cannot be read.
fn node_pod_cidrs(info: &LabInfo) -> Vec<(String, String)> {
    let Ok(json) = info.kubectl(&["get", "nodes", "-o", "json"]) else {
        return vec![];
    };
    let Ok(list) = serde_json::from_str::<serde_json::Value>(&json) else {
        return vec![];
    };
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let cidrs: Vec<&str> = n["spec"]["podCIDRs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str())
                .collect();
            (
                n["metadata"]["name"].as_str().unwrap_or("").to_owned(),
                cidrs.join(","),
            )
        })
        .collect()
}

fn lab_exec(lab: &LabSelect, target: &str, command: &[String]) -> Result<ExitCode, Error> {
    let info = lab.info()?;
    let namespace = if target == "cp" {
        info.control_plane_namespace.clone()
    } else if let Some(node) = info.node(target) {
        node.namespace.clone()
    } else if let Some((namespace, pod)) = target.split_once('/') {
        pod_namespace(&info, namespace, pod)?
    } else {
        let nodes: Vec<&str> = info.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(format!(
            "no such lab target {target:?}: use a node ({}), `cp`, or NAMESPACE/POD",
            nodes.join(", ")
        )
        .into());
    };
    // exec: the command's exit status and terminal are the caller's.
    let error = std::process::Command::new("ip")
        .args(["netns", "exec", &namespace])
        .args(command)
        .exec();
    Err(format!("could not run `ip netns exec {namespace}`: {error}").into())
}

/// The network namespace of pod `namespace/name`.
fn pod_namespace(info: &LabInfo, namespace: &str, name: &str) -> Result<String, Error> {
    let json = info.kubectl(&["get", "pod", "-n", namespace, name, "-o", "json"])?;
    let pod: serde_json::Value = serde_json::from_str(&json)?;
    let node = pod["spec"]["nodeName"]
        .as_str()
        .and_then(|n| info.node(n))
        .ok_or_else(|| format!("pod {namespace}/{name} is not bound to a lab node yet"))?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let netns = tailroute::lab::kubelet::record::netns_name(&node.pod_netns_prefix, uid);
    if !Path::new("/run/netns").join(&netns).exists() {
        return Err(format!(
            "pod {namespace}/{name} has no network namespace ({netns}) yet: is it Running? (kubectl describe pod -n {namespace} {name})"
        )
        .into());
    }
    Ok(netns)
}

fn require_root() -> Result<(), Error> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the lab creates network namespaces and must run as root".into());
    }
    Ok(())
}
