//! The whole lab, end to end, through the `tailroute lab` CLI: real
//! Headscale, tailscaled, etcd and Kubernetes control plane, and the lab
//! kubelets.
//!
//! Needs root and the peers built by `scripts/build-peers.sh` (the README's
//! test command builds them); fails, never skips, without them. Labs run
//! one at a time (two full control planes on two cores would measure each
//! other), and every lab is torn down by `lab down`, whose completeness is
//! itself asserted.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tailroute::lab::LabTag;

/// One lab at a time in this binary.
#[path = "lab_cluster/identity.rs"]
mod identity;

static ONE_LAB: Mutex<()> = Mutex::new(());

/// State directories of these tests: `<tmp>/<STATE_PREFIX><tag>`.
const STATE_PREFIX: &str = "tailroute-lab-e2e-";

fn tailroute() -> &'static str {
    env!("CARGO_BIN_EXE_tailroute")
}

/// The plugin built next to the `tailroute` binary (same profile).
fn cni_plugin() -> PathBuf {
    let path = Path::new(tailroute()).with_file_name("tailroute-bridge");
    assert!(
        path.is_file(),
        "{} is missing: build the workspace (`cargo test --workspace` builds it)",
        path.display()
    );
    path
}

/// A lab started through the CLI, downed (and checked) on drop.
struct CliLab {
    tag: LabTag,
    state_dir: PathBuf,
    downed: bool,
    /// Whether the host had /var/lib/tailscale before the lab (a lab must
    /// not create it: every tailscaled keeps its files in the state dir).
    host_tailscale_dir: bool,
}

impl CliLab {
    fn new(letter: char) -> CliLab {
        cni_testbed::require_root();
        reap_stale();
        let tag = common::unique_tag(letter);
        let state_dir = std::env::temp_dir().join(format!("{STATE_PREFIX}{tag}"));
        CliLab {
            tag,
            state_dir,
            downed: false,
            host_tailscale_dir: Path::new(HOST_TAILSCALE_DIR).exists(),
        }
    }

    fn args(&self, sub: &str) -> Vec<String> {
        vec![
            "lab".into(),
            sub.into(),
            format!("--name={}", self.tag),
            format!("--state-dir={}", self.state_dir.display()),
        ]
    }

    fn command(&self, sub: &str) -> Command {
        let mut c = Command::new(tailroute());
        c.args(self.args(sub));
        c
    }

    /// `lab up` without agents (the lab's own mechanics), asserting
    /// success; returns its output.
    fn up(&self, nodes: usize, topology: &str, dual_stack: bool) -> String {
        self.up_with(nodes, topology, dual_stack, &["--no-agent"])
    }

    /// `lab up` with `extra` flags, asserting success; returns its output.
    fn up_with(&self, nodes: usize, topology: &str, dual_stack: bool, extra: &[&str]) -> String {
        let out = self
            .command("up")
            .args([format!("--nodes={nodes}"), format!("--topology={topology}")])
            .args(extra)
            .args(dual_stack.then_some("--dual-stack"))
            .arg(format!("--cni-plugin={}", cni_plugin().display()))
            .output()
            .expect("run tailroute lab up");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "lab up failed:\n{text}");
        text
    }

    /// `lab up` in the background (for the kill test).
    fn spawn_up(&self, nodes: usize) -> Child {
        self.command("up")
            .arg(format!("--nodes={nodes}"))
            .arg(format!("--cni-plugin={}", cni_plugin().display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tailroute lab up")
    }

    fn status(&self) -> Value {
        let out = self
            .command("status")
            .arg("--json")
            .output()
            .expect("lab status");
        assert!(
            out.status.success(),
            "lab status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn kubeconfig(&self) -> PathBuf {
        let out = self.command("kubeconfig").output().expect("lab kubeconfig");
        assert!(out.status.success());
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    }

    /// kubectl on the host, with the lab's admin kubeconfig.
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        let status = self.status();
        let kubectl = status["lab"]["kubectl"]
            .as_str()
            .expect("kubectl path")
            .to_owned();
        let mut child = Command::new(kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig().display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl output");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every pid that belongs to the lab right now: recorded daemons and
    /// anything living in one of its namespaces.
    fn pids(&self) -> BTreeSet<u32> {
        let prefix = self.tag.name_prefix();
        let namespaces =
            tailroute::lab::resource::namespaces_with_prefix(&prefix).unwrap_or_default();
        let mut pids: BTreeSet<u32> = tailroute::lab::daemon::processes_in(&namespaces)
            .into_iter()
            .map(|(pid, _)| pid)
            .collect();
        if let Ok(procs) = tailroute::lab::cluster::processes(&self.state_dir) {
            pids.extend(
                procs
                    .into_iter()
                    .filter(|(_, _, rss)| rss.is_some())
                    .map(|(_, pid, _)| pid),
            );
        }
        pids
    }

    /// `lab down`, then asserts that nothing of the lab is left.
    fn down_and_check(&mut self) {
        let before = self.pids();
        let out = self.command("down").output().expect("lab down");
        self.downed = true;
        assert!(
            out.status.success(),
            "lab down: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_nothing_left(&self.tag, &self.state_dir, &before);
        assert!(
            self.host_tailscale_dir || !Path::new(HOST_TAILSCALE_DIR).exists(),
            "the lab created the host's {HOST_TAILSCALE_DIR}: a tailscaled wrote outside its \
             state directory (TS_LOGS_DIR unset?)"
        );
    }
}

/// Where a packaged tailscaled keeps its state, on the host.
const HOST_TAILSCALE_DIR: &str = "/var/lib/tailscale";

impl Drop for CliLab {
    fn drop(&mut self) {
        if !self.downed {
            // During a panic: clean up, report, never panic again.
            if let Err(e) = self.command("down").output() {
                eprintln!("cleanup of lab {}: {e}", self.tag);
            }
        }
    }
}

/// Downs labs of earlier test runs that were killed outright.
fn reap_stale() {
    for (tag, dir) in common::stale_state_dirs(STATE_PREFIX) {
        let _ = Command::new(tailroute())
            .args(["lab", "down", &format!("--name={tag}")])
            .arg(format!("--state-dir={}", dir.display()))
            .output();
    }
}

/// Nothing of lab `tag` exists: namespaces, mounts, host links, processes
/// (`before`, and any whose command line names the state directory), files.
fn assert_nothing_left(tag: &LabTag, state_dir: &Path, before: &BTreeSet<u32>) {
    let prefix = tag.name_prefix();
    let namespaces =
        tailroute::lab::resource::namespaces_with_prefix(&prefix).expect("list namespaces");
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let left: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&prefix) || l.contains(&*state_dir.to_string_lossy()))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:?}");
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains(&prefix), "host links left: {links}");
    let alive: Vec<u32> = before
        .iter()
        .copied()
        .filter(|p| tailroute::lab::daemon::process_alive(*p))
        .collect();
    assert!(alive.is_empty(), "lab processes still running: {alive:?}");
    let dir = state_dir.to_string_lossy().into_owned();
    let mut naming_dir = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(&dir)
                && entry.file_name() != *std::process::id().to_string()
            {
                naming_dir.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        naming_dir.is_empty(),
        "processes naming {dir} still running: {naming_dir:?}"
    );
    assert!(
        !state_dir.exists(),
        "state directory {} left",
        state_dir.display()
    );
}

/// The `(name, namespace, tailnet IPs)` of every node.
fn nodes(status: &Value) -> Vec<(String, String, Vec<IpAddr>)> {
    status["lab"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            let ips = n["tailnet_ips"]
                .as_array()
                .expect("ips")
                .iter()
                .map(|ip| ip.as_str().expect("ip").parse().expect("parse ip"))
                .collect();
            (
                n["name"].as_str().expect("name").to_owned(),
                n["namespace"].as_str().expect("namespace").to_owned(),
                ips,
            )
        })
        .collect()
}

/// The checks both topologies share: tailnet, podCIDRs, scheduling.
fn check_running_lab(lab: &CliLab, nodes_wanted: usize, dual_stack: bool) {
    let status = lab.status();
    let nodes = nodes(&status);
    assert_eq!(nodes.len(), nodes_wanted);

    // Every tailscaled Running and seeing every other node online.
    for view in status["tailnet"].as_array().expect("tailnet") {
        let name = view["node"].as_str().expect("node");
        assert_eq!(view["state"], "Running", "{name}: {view}");
        let peers: BTreeSet<&str> = view["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .filter(|p| p[1] == true)
            .filter_map(|p| p[0].as_str())
            .collect();
        for (other, _, _) in nodes.iter().filter(|(n, _, _)| n != name) {
            assert!(
                peers.contains(other.as_str()),
                "{name} does not see {other}: {view}"
            );
        }
    }

    // Every node pings every other node's tailnet IPs over tailscale0.
    std::thread::scope(|scope| {
        for (name, ns, _) in &nodes {
            for (other, _, ips) in nodes.iter().filter(|(o, _, _)| o != name) {
                for ip in ips {
                    scope.spawn(move || {
                        assert!(
                            tailroute::lab::cluster::pings_over_tailnet(
                                ns,
                                *ip,
                                Instant::now() + Duration::from_secs(20)
                            ),
                            "{name} cannot ping {other} at {ip} over tailscale0"
                        );
                    });
                }
            }
        }
    });

    // Every Node has a podCIDR from the cluster CIDR per family, all
    // distinct, and its tailnet IP per family as InternalIP.
    let list: Value = serde_json::from_str(&lab.kubectl(&["get", "nodes", "-o", "json"], None))
        .expect("nodes JSON");
    let mut cidrs = BTreeSet::new();
    for node in list["items"].as_array().expect("items") {
        let pod_cidrs: Vec<&str> = node["spec"]["podCIDRs"]
            .as_array()
            .unwrap_or_else(|| panic!("no podCIDRs: {node}"))
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        let want: &[&str] = if dual_stack {
            &["10.244.", "fd00:10:244:"]
        } else {
            &["10.244."]
        };
        assert_eq!(pod_cidrs.len(), want.len(), "{pod_cidrs:?}");
        for (cidr, prefix) in pod_cidrs.iter().zip(want) {
            assert!(
                cidr.starts_with(prefix),
                "podCIDR {cidr} is not from the cluster CIDR"
            );
            assert!(cidrs.insert(cidr.to_string()), "podCIDR {cidr} given twice");
        }
        let addresses: Vec<IpAddr> = node["status"]["addresses"]
            .as_array()
            .expect("addresses")
            .iter()
            .filter(|a| a["type"] == "InternalIP")
            .filter_map(|a| a["address"].as_str()?.parse().ok())
            .collect();
        assert_eq!(addresses.len(), want.len(), "InternalIPs {addresses:?}");
        for ip in &addresses {
            let tailnet = match ip {
                IpAddr::V4(v4) => v4.octets()[0] == 100 && (64..128).contains(&v4.octets()[1]),
                IpAddr::V6(v6) => v6.segments()[..3] == [0xfd7a, 0x115c, 0xa1e0],
            };
            assert!(tailnet, "InternalIP {ip} is not a tailnet IP");
        }
    }
    assert_eq!(cidrs.len(), nodes_wanted * if dual_stack { 2 } else { 1 });

    // A Deployment of 6 is scheduled onto lab nodes by kube-scheduler, and
    // its Pods stay Pending (no CNI config on the nodes yet) with a reason.
    lab.kubectl(&["apply", "-f", "-"], Some(DEPLOYMENT));
    let names: BTreeSet<String> = nodes.iter().map(|(n, _, _)| n.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods: Value = serde_json::from_str(
            &lab.kubectl(&["get", "pods", "-l", "app=web", "-o", "json"], None),
        )
        .expect("pods");
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let settled = items.len() == 6
            && items.iter().all(|p| {
                let on_lab_node = p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| names.contains(n));
                let pending = p["status"]["phase"] == "Pending";
                let why = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c["status"] == "False"
                            && c["message"].as_str().is_some_and(|m| m.contains("cni"))
                    });
                on_lab_node && pending && why
            });
        if settled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods not scheduled and pending with a reason: {pods}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until every node's path to every other is `direct`, pinging
/// meanwhile (a path is only upgraded while it carries traffic).
fn every_path_goes_direct(lab: &CliLab, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = lab.status();
        let nodes = nodes(&status);
        let relayed: Vec<String> = status["tailnet"]
            .as_array()
            .expect("tailnet")
            .iter()
            .flat_map(|view| {
                let from = view["node"].as_str().unwrap_or("?").to_owned();
                view["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| !p[2].as_str().is_some_and(|path| path.starts_with("direct")))
                    .map(move |p| format!("{from} -> {}: {}", p[0], p[2]))
            })
            .collect();
        if relayed.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "paths not direct through the NATs: {relayed:?}"
        );
        for (from, ns, _) in &nodes {
            for (_, _, ips) in nodes.iter().filter(|(to, _, _)| to != from) {
                // One probe: a deadline just ahead lets the loop run once.
                let once = Instant::now() + Duration::from_millis(1);
                tailroute::lab::cluster::pings_over_tailnet(ns, ips[0], once);
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Writes a conflist for tailroute-bridge on n1, as the node agent will:
/// n1's pods of the Deployment then run, with an address from n1's
/// podCIDR, `lab exec` reaches into one, and its server answers from n1.
fn pods_run_once_a_node_has_a_cni_config(lab: &CliLab) {
    let status = lab.status();
    let n1 = &status["lab"]["nodes"][0];
    assert_eq!(n1["name"], "n1");
    let node_ns = n1["namespace"].as_str().expect("namespace").to_owned();
    let node: Value =
        serde_json::from_str(&lab.kubectl(&["get", "node", "n1", "-o", "json"], None))
            .expect("node JSON");
    let pod_cidr = node["spec"]["podCIDR"]
        .as_str()
        .expect("podCIDR")
        .to_owned();
    let conf_dir = PathBuf::from(n1["cni_conf_dir"].as_str().expect("conf dir"));
    // The plugin's state is per node: every lab node shares this host's /run.
    let node_dir = conf_dir.ancestors().nth(3).expect("<state>/nodes/n1");
    let data_dir = node_dir.join("bridge-state");
    let conflist = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "tailroute",
        "plugins": [{
            "type": "tailroute-bridge",
            "ipam": {"ranges": [[{"subnet": pod_cidr}]], "dataDir": data_dir},
        }],
    });
    let tmp = conf_dir.join(".10-tailroute.conflist.tmp");
    std::fs::write(&tmp, conflist.to_string()).expect("write conflist");
    std::fs::rename(&tmp, conf_dir.join("10-tailroute.conflist")).expect("rename conflist");

    let deadline = Instant::now() + Duration::from_secs(30);
    let (name, ip) = loop {
        let pods: Value = serde_json::from_str(&lab.kubectl(
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "--field-selector=spec.nodeName=n1",
                "-o",
                "json",
            ],
            None,
        ))
        .expect("pods");
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let running: Vec<(String, IpAddr)> = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_owned(),
                    p["status"]["podIP"].as_str()?.parse().ok()?,
                ))
            })
            .collect();
        if !items.is_empty() && running.len() == items.len() {
            break running[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "n1's pods do not run with a CNI config: {pods}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let prefix = pod_cidr.rsplit_once('.').expect("cidr").0.to_owned();
    assert!(
        ip.to_string().starts_with(&prefix),
        "pod IP {ip} is not from {pod_cidr}"
    );

    let exec = lab
        .command("exec")
        .args([
            format!("default/{name}"),
            "--".into(),
            "ip".into(),
            "-o".into(),
            "-4".into(),
        ])
        .args(["addr", "show", "eth0"])
        .output()
        .expect("lab exec");
    let shown = String::from_utf8_lossy(&exec.stdout);
    assert!(
        exec.status.success(),
        "lab exec: {}",
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(
        shown.contains(&format!("inet {ip}/")),
        "eth0 in the pod: {shown}"
    );

    let answer = common::in_netns(&node_ns, || {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(ip, 8080),
            Duration::from_secs(3),
        )
        .expect("connect to the pod server");
        // Saying nothing more, so the server answers at once.
        stream
            .shutdown(std::net::Shutdown::Write)
            .expect("shutdown");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        text
    });
    assert!(
        answer.contains(&format!("pod=default/{name} client=")),
        "{answer}"
    );
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: lab/builtin-server, ports: [{containerPort: 8080}]}]
"#;

/// Prints a figure and keeps it in `target/tmp/lab-figures.txt`, which
/// `make test` prints at the end.
fn record_figure(line: &str) {
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lab-figures.txt");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open figures file");
    std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes()).expect("write figures");
}

/// Reports the figures the lab issue asks for: `lab up` time per phase and
/// memory of every lab process at rest (after a few quiet seconds). They
/// go to stdout and to `target/tmp/lab-figures.txt`, which `make test`
/// prints at the end.
fn report_figures(lab: &CliLab, label: &str) {
    std::thread::sleep(Duration::from_secs(5));
    let status = lab.status();
    let mut lines = Vec::new();
    for (phase, secs) in status["lab"]["timings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t[0].as_str()?, t[1].as_f64()?)))
    {
        lines.push(format!("lab [{label}] up: {phase:<40} {secs:6.2} s"));
    }
    let mut total = 0.0;
    for p in status["processes"].as_array().into_iter().flatten() {
        let mib = p["rssKiB"].as_f64().unwrap_or(0.0) / 1024.0;
        total += mib;
        let what = p["what"].as_str().unwrap_or("?");
        lines.push(format!(
            "lab [{label}] rss at rest: {what:<28} {mib:7.1} MiB"
        ));
    }
    lines.push(format!(
        "lab [{label}] rss at rest: {:<28} {total:7.1} MiB",
        "total"
    ));
    record_figure(&lines.join("\n"));
}

#[test]
fn a_three_node_flat_lab_comes_up_meshes_schedules_and_goes_away() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = CliLab::new('f');
    let out = lab.up(3, "flat", false);
    println!("{out}");
    check_running_lab(&lab, 3, false);
    pods_run_once_a_node_has_a_cni_config(&lab);
    report_figures(&lab, "flat, 3 nodes");
    lab.down_and_check();
}

#[test]
fn a_three_node_dual_stack_hybrid_lab_has_only_the_tailnet_between_nodes() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = CliLab::new('h');
    let out = lab.up(3, "hybrid", true);
    println!("{out}");
    check_running_lab(&lab, 3, true);
    // Each node's own address is private behind its NAT router: no other
    // node reaches it directly.
    let status = lab.status();
    let addresses: Vec<(String, IpAddr)> = status["lab"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .flat_map(|n| {
            let ns = n["namespace"].as_str().expect("ns").to_owned();
            n["addresses"]
                .as_array()
                .expect("addresses")
                .iter()
                .map(move |a| {
                    (
                        ns.clone(),
                        a.as_str().expect("address").parse().expect("ip"),
                    )
                })
        })
        .collect();
    assert_eq!(
        addresses.len(),
        6,
        "an IPv4 and an IPv6 address per node: {addresses:?}"
    );
    let namespaces: BTreeSet<&String> = addresses.iter().map(|(ns, _)| ns).collect();
    let mut pairs = Vec::new();
    for ns in namespaces {
        for (other_ns, addr) in &addresses {
            if other_ns != ns {
                pairs.push((ns.to_string(), *addr));
            }
        }
    }
    common::assert_none_reach(&pairs);
    // ... and yet the nodes talk directly, through both NATs (UDP hole
    // punching), not through the DERP relay.
    every_path_goes_direct(&lab, Duration::from_secs(30));
    report_figures(&lab, "hybrid, dual-stack, 3 nodes");
    lab.down_and_check();
}

#[test]
fn lab_down_after_an_up_killed_half_way_leaves_nothing() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = CliLab::new('k');
    let mut up = lab.spawn_up(2);
    // Kill it once it is starting node daemons: the control plane runs,
    // tailscaled processes exist, the lab is half built.
    let ledger = lab.state_dir.join("ledger.json");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let text = std::fs::read_to_string(&ledger).unwrap_or_default();
        if text.contains("tailscaled") {
            break;
        }
        assert!(
            up.try_wait().expect("try_wait").is_none(),
            "lab up ended before the kill point"
        );
        assert!(
            Instant::now() < deadline,
            "lab up never reached the nodes: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    up.kill().expect("kill lab up");
    let _ = up.wait();
    assert!(!lab.pids().is_empty(), "the half-built lab has processes");
    lab.down_and_check();
}

/// A pod of the agent tests, placed on a node by name.
#[derive(Debug, Clone)]
struct LabPod {
    name: String,
    node: String,
    netns: String,
    ips: Vec<IpAddr>,
}

/// Creates `per_node` pods on every node (bound by `nodeName`, so every
/// node has some) and waits until all run; returns them.
fn pods_on_every_node(lab: &CliLab, per_node: usize) -> Vec<LabPod> {
    let status = lab.status();
    let nodes: Vec<(String, String)> = status["lab"]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["name"].as_str().expect("name").to_owned(),
                n["pod_netns_prefix"].as_str().expect("prefix").to_owned(),
            )
        })
        .collect();
    let mut manifest = String::new();
    for (node, _) in &nodes {
        for i in 0..per_node {
            manifest.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{node}-{i}, namespace: default, labels: {{app: matrix}}}}\n\
                 spec:\n  nodeName: {node}\n  containers: [{{name: web, image: lab/builtin-server}}]\n"
            ));
        }
    }
    lab.kubectl(&["apply", "-f", "-"], Some(&manifest));
    let want = nodes.len() * per_node;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pods: Value = serde_json::from_str(
            &lab.kubectl(&["get", "pods", "-l", "app=matrix", "-o", "json"], None),
        )
        .expect("pods");
        let items = pods["items"].as_array().cloned().unwrap_or_default();
        let running: Vec<LabPod> = items
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| {
                let node = p["spec"]["nodeName"].as_str()?.to_owned();
                let prefix = &nodes.iter().find(|(n, _)| *n == node)?.1;
                let uid = p["metadata"]["uid"].as_str()?;
                Some(LabPod {
                    name: p["metadata"]["name"].as_str()?.to_owned(),
                    netns: tailroute::lab::kubelet::record::netns_name(prefix, uid),
                    node,
                    ips: p["status"]["podIPs"]
                        .as_array()?
                        .iter()
                        .filter_map(|ip| ip["ip"].as_str()?.parse().ok())
                        .collect(),
                })
            })
            .collect();
        if running.len() == want {
            return running;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} matrix pods run after 60 s: {pods}",
            running.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// One request to the pod server at `dst` from inside `netns`.
fn ask_pod_server(netns: &str, dst: IpAddr) -> Result<String, String> {
    common::in_netns(netns, || {
        use std::io::Read;
        let mut stream = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(dst, 8080),
            Duration::from_secs(2),
        )
        .map_err(|e| format!("connect {dst}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        stream
            .shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .map_err(|e| format!("read from {dst}: {e}"))?;
        Ok(text)
    })
}

/// Every pod asks every other pod's server, over each family in `pods`'
/// addresses, and the server must see the asking pod's own address: the
/// path works and nothing on it rewrites the source. Retried for `within`
/// (routes converge), then every failing pair is reported at once.
fn pod_matrix(pods: &[LabPod], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let mut failures = Vec::new();
        let mut pairs = 0;
        for src in pods {
            for dst in pods.iter().filter(|d| d.name != src.name) {
                for dst_ip in &dst.ips {
                    let Some(src_ip) = src.ips.iter().find(|ip| ip.is_ipv4() == dst_ip.is_ipv4())
                    else {
                        continue;
                    };
                    pairs += 1;
                    let seen = match src_ip {
                        IpAddr::V4(ip) => format!("client={ip}:"),
                        IpAddr::V6(ip) => format!("client=[{ip}]:"),
                    };
                    match ask_pod_server(&src.netns, *dst_ip) {
                        Ok(answer) if answer.contains(&seen) => {}
                        Ok(answer) => failures.push(format!(
                            "{} -> {} ({dst_ip}): server saw {answer:?}, expected {seen}",
                            src.name, dst.name
                        )),
                        Err(e) => failures.push(format!("{} -> {}: {e}", src.name, dst.name)),
                    }
                }
            }
        }
        if failures.is_empty() {
            return pairs;
        }
        assert!(
            Instant::now() < deadline,
            "pod matrix: {} of {pairs} pairs fail after {within:?}:\n{}",
            failures.len(),
            failures.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every Node shows `NetworkUnavailable=False` with reason `TailrouteIsUp`.
fn every_node_is_up(lab: &CliLab) {
    let nodes: Value =
        serde_json::from_str(&lab.kubectl(&["get", "nodes", "-o", "json"], None)).expect("nodes");
    for node in nodes["items"].as_array().expect("items") {
        let condition = node["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "NetworkUnavailable"))
            .unwrap_or_else(|| panic!("no NetworkUnavailable on {}", node["metadata"]["name"]));
        assert_eq!(condition["status"], "False", "{condition}");
        assert_eq!(condition["reason"], "TailrouteIsUp", "{condition}");
    }
}

/// The agent's metrics on `node_ns`, as text.
fn agent_metrics(node_ns: &str) -> String {
    let addr = std::net::SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 9740);
    match tailroute::lab::probe::http_get_in(node_ns, addr, "/metrics") {
        Ok((200, body)) => body,
        other => panic!("agent metrics in {node_ns}: {other:?}"),
    }
}

/// A metric's value (summed over its label sets), 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `tailroute status` inside a lab node (as an operator runs it on a node),
/// with the node agent's kubeconfig: its exit code and output.
fn tailroute_status_on(lab: &CliLab, node: &str, json: bool) -> (Option<i32>, String) {
    let kubeconfig = lab.state_dir.join(format!("nodes/{node}/agent/kubeconfig"));
    let out = lab
        .command("exec")
        .args([node, "--"])
        .arg(tailroute())
        .args(["status", "--node", node, "--kubeconfig"])
        .arg(&kubeconfig)
        .args(json.then_some("--json"))
        .output()
        .expect("run tailroute status");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `tailroute status` on n1: every node's route advertised and approved,
/// every other node reachable from n1, the MTU known, no problems; and the
/// screen says so. The agents' reports follow their netmaps, which follow
/// the approvals by up to a few seconds (netmap updates are rate-limited),
/// so this waits for the first clean report and prints how long it took.
fn tailroute_status_on_a_node_shows_every_node_up(lab: &CliLab) {
    let started = Instant::now();
    let (code, report) = loop {
        let (code, report) = tailroute_status_on(lab, "n1", true);
        if code == Some(0) || started.elapsed() > Duration::from_secs(20) {
            break (code, report);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(code, Some(0), "{report}");
    println!(
        "tailroute status on n1 clean after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let report: Value = serde_json::from_str(&report).expect("status JSON");
    let nodes = report["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{report:#}");
    for node in nodes {
        assert_eq!(node["advertised"], true, "{node:#}");
        assert_eq!(node["approved"], true, "{node:#}");
        assert_eq!(node["reason"], "TailrouteIsUp", "{node:#}");
        assert!(node["mtu"].as_u64().is_some_and(|m| m >= 1280), "{node:#}");
        if node["name"] != "n1" {
            assert_eq!(node["reachableFromHere"], true, "{node:#}");
        }
    }
    assert_eq!(report["problems"], serde_json::json!([]), "{report:#}");
    let (code, screen) = tailroute_status_on(lab, "n1", false);
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("n1 (here)") && screen.contains("no problems found"),
        "{screen}"
    );
    println!("tailroute status on n1:\n{screen}");
}

/// The pods' interface MTU is tailscale0's, and data of every size crosses
/// between nodes: a 16 MiB stream and 200 echoed 1400-byte messages.
fn no_mtu_black_hole(lab: &CliLab, pods: &[LabPod]) {
    let status = lab.status();
    let n1_ns = status["lab"]["nodes"][0]["namespace"]
        .as_str()
        .expect("ns")
        .to_owned();
    let tailnet_mtu = common::ip_json(Some(&n1_ns), &["link", "show", "tailscale0"])[0]["mtu"]
        .as_u64()
        .expect("tailscale0 mtu");
    for pod in pods {
        let eth0 = common::ip_json(Some(&pod.netns), &["link", "show", "eth0"]);
        assert_eq!(
            eth0[0]["mtu"].as_u64(),
            Some(tailnet_mtu),
            "{}: {eth0}",
            pod.name
        );
    }
    let server = pods.iter().find(|p| p.node == "n2").expect("a pod on n2");
    let client = pods.iter().find(|p| p.node == "n1").expect("a pod on n1");
    for dst in &server.ips {
        let listener = common::in_netns(&server.netns, || {
            std::net::TcpListener::bind(std::net::SocketAddr::new(*dst, 5201)).expect("bind")
        });
        let echo = std::thread::spawn(move || {
            use std::io::{Read, Write};
            // First connection: a bulk stream, counted. Second: echo.
            let (mut bulk, _) = listener.accept().expect("accept bulk");
            let mut sink = Vec::new();
            bulk.read_to_end(&mut sink).expect("read bulk");
            let (mut conn, _) = listener.accept().expect("accept echo");
            let mut buf = [0u8; 1400];
            loop {
                match conn.read_exact(&mut buf) {
                    Ok(()) => conn.write_all(&buf).expect("echo"),
                    Err(_) => break sink.len(),
                }
            }
        });
        let dst = *dst;
        let started = Instant::now();
        common::in_netns(&client.netns, || {
            use std::io::{Read, Write};
            let addr = std::net::SocketAddr::new(dst, 5201);
            let mut bulk = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .expect("connect");
            bulk.set_write_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            let chunk = vec![0x5au8; 64 * 1024];
            for _ in 0..256 {
                bulk.write_all(&chunk)
                    .expect("bulk write (an MTU black hole stalls here)");
            }
            drop(bulk);
            let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let message = [0xa5u8; 1400];
            let mut back = [0u8; 1400];
            for _ in 0..200 {
                conn.write_all(&message).expect("write a 1400-byte message");
                conn.read_exact(&mut back)
                    .expect("its echo (an MTU black hole stalls here)");
                assert_eq!(back, message);
            }
        });
        let received = echo.join().expect("echo thread");
        assert_eq!(received, 16 << 20, "bulk bytes received over {dst}");
        println!(
            "pod n1 -> pod n2 over {dst}: 16 MiB + 200 x 1400-byte round trips in {:.2} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// A route advertised by hand on n1 stays through the agent's repairs:
/// someone turns accept-routes off; the agent turns it back on within 15 s
/// and both its pod route and the hand-made route are still advertised.
fn a_hand_made_route_survives_the_agent(lab: &CliLab) {
    let status = lab.status();
    let tailscale = status["lab"]["tailscale"]
        .as_str()
        .expect("tailscale")
        .to_owned();
    let n1 = &status["lab"]["nodes"][0];
    let ns = n1["namespace"].as_str().expect("ns").to_owned();
    let socket = n1["tailscaled_socket"].as_str().expect("socket").to_owned();
    let node: Value =
        serde_json::from_str(&lab.kubectl(&["get", "node", "n1", "-o", "json"], None))
            .expect("node");
    let pod_cidrs: Vec<String> = node["spec"]["podCIDRs"]
        .as_array()
        .expect("podCIDRs")
        .iter()
        .map(|c| c.as_str().expect("cidr").to_owned())
        .collect();
    let ts = |args: &[&str]| {
        let mut cmd = cni_testbed::command_in(&Path::new("/run/netns").join(&ns), &tailscale)
            .expect("node namespace");
        cmd.arg(format!("--socket={socket}")).args(args);
        let out = cmd.output().expect("tailscale");
        assert!(
            out.status.success(),
            "tailscale {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut routes = pod_cidrs.clone();
    routes.push("192.168.77.0/24".to_owned());
    ts(&["set", &format!("--advertise-routes={}", routes.join(","))]);
    ts(&["set", "--accept-routes=false"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let prefs: Value = serde_json::from_str(&ts(&["debug", "prefs"])).expect("prefs JSON");
        let advertised: Vec<&str> = prefs["AdvertiseRoutes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let all_there = routes.iter().all(|r| advertised.contains(&r.as_str()));
        assert!(
            all_there,
            "a route was dropped: {advertised:?}, expected {routes:?}"
        );
        if prefs["RouteAll"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not restore accept-routes: {prefs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pods_that_ask_get_a_tailnet_identity_of_their_own() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = CliLab::new('i');
    let out = lab.up_with(2, "flat", true, &["--approval=api", "--laptop"]);
    println!("{out}");
    identity::identity_pods_are_tailnet_devices_of_their_own(&lab);
    lab.down_and_check();
}

#[test]
fn agents_connect_every_pod_to_every_other_without_snat_on_a_flat_lab() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = CliLab::new('a');
    let out = lab.up_with(3, "flat", false, &["--approval=api", "--laptop"]);
    println!("{out}");
    every_node_is_up(&lab);
    // No autoApprovers in this lab: each agent approved its own route
    // through Headscale's API.
    let status = lab.status();
    for node in status["lab"]["nodes"].as_array().expect("nodes") {
        let text = agent_metrics(node["namespace"].as_str().expect("ns"));
        assert!(
            metric(&text, "tailroute_approval_api_calls_total") >= 1.0,
            "{text}"
        );
        assert_eq!(metric(&text, "tailroute_routes_approved"), 1.0, "{text}");
        assert_eq!(
            metric(&text, "tailroute_network_unavailable"),
            0.0,
            "{text}"
        );
    }
    let pods = pods_on_every_node(&lab, 2);
    let pairs = pod_matrix(&pods, Duration::from_secs(20));
    assert_eq!(pairs, 30);
    tailroute_status_on_a_node_shows_every_node_up(&lab);
    no_mtu_black_hole(&lab, &pods);
    a_hand_made_route_survives_the_agent(&lab);
    a_laptop_and_the_pods_reach_each_other(&lab, &pods);
    an_agent_restart_does_not_interrupt_pod_traffic(&lab, &pods);
    a_tailscaled_restart_heals_within_15_s(&lab, &pods);
    a_deleted_node_leaves_no_ghost_device(&lab);
    lab.down_and_check();
}

#[test]
fn agents_on_a_dual_stack_hybrid_lab_use_auto_approvers_and_no_credential() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = CliLab::new('b');
    let out = lab.up_with(3, "hybrid", true, &["--approval=auto-approvers"]);
    println!("{out}");
    every_node_is_up(&lab);
    let status = lab.status();
    for node in status["lab"]["nodes"].as_array().expect("nodes") {
        let text = agent_metrics(node["namespace"].as_str().expect("ns"));
        assert_eq!(
            metric(&text, "tailroute_approval_api_calls_total"),
            0.0,
            "{text}"
        );
        assert_eq!(metric(&text, "tailroute_routes_approved"), 2.0, "{text}");
    }
    let pods = pods_on_every_node(&lab, 2);
    let pairs = pod_matrix(&pods, Duration::from_secs(30));
    assert_eq!(pairs, 60, "30 ordered pairs, IPv4 and IPv6");
    no_mtu_black_hole(&lab, &pods);
    lab.down_and_check();
}

#[test]
fn without_approval_every_agent_says_what_to_do() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = CliLab::new('n');
    lab.up_with(2, "flat", false, &["--approval=none"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let nodes: Value =
            serde_json::from_str(&lab.kubectl(&["get", "nodes", "-o", "json"], None))
                .expect("nodes");
        let reasons: Vec<(String, String)> = nodes["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|n| {
                let c = n["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "NetworkUnavailable")?;
                Some((
                    c["reason"].as_str()?.to_owned(),
                    c["message"].as_str()?.to_owned(),
                ))
            })
            .collect();
        if reasons.len() == 2 && reasons.iter().all(|(r, _)| r == "RouteNotApproved") {
            for (_, message) in &reasons {
                assert!(
                    message.contains(
                        "\"autoApprovers\": {\"routes\": {\"10.244.0.0/16\": [\"tag:k8s-node\"]}}"
                    ),
                    "{message}"
                );
            }
            break;
        }
        assert!(Instant::now() < deadline, "conditions: {reasons:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, report) = tailroute_status_on(&lab, "n1", true);
    assert_eq!(code, Some(1), "status exits 1 with problems: {report}");
    let report: Value = serde_json::from_str(&report).expect("status JSON");
    let problems = report["problems"].as_array().expect("problems");
    for node in ["n1", "n2"] {
        assert!(
            problems.iter().any(|p| p
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("{node}: RouteNotApproved: ")))),
            "{report:#}"
        );
    }
    assert!(
        report["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["approved"] == false && n["advertised"] == true),
        "{report:#}"
    );
    let events = lab.kubectl(
        &[
            "get",
            "events",
            "--field-selector=reason=RouteNotApproved",
            "-o",
            "json",
        ],
        None,
    );
    let events: Value = serde_json::from_str(&events).expect("events");
    let warnings = events["items"]
        .as_array()
        .map(|items| items.iter().filter(|e| e["type"] == "Warning").count())
        .unwrap_or(0);
    assert!(warnings >= 2, "a Warning Event per node: {events}");
    lab.down_and_check();
}

/// The pid of the lab process named `what` (`agent n1`, `tailscaled n2`).
fn lab_process(lab: &CliLab, what: &str) -> u32 {
    let status = lab.status();
    status["processes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["what"] == what && p["running"] == true)
        .and_then(|p| p["pid"].as_u64())
        .and_then(|pid| u32::try_from(pid).ok())
        .unwrap_or_else(|| panic!("no process {what:?} in {}", status["processes"]))
}

/// Stops `pid` (SIGTERM, then waits) and starts the same program with the
/// same arguments and environment in node `ns`, as the lab started it.
/// Returns the new pid.
fn restart_in(ns: &str, pid: u32, log: &Path, entry: tailroute::lab::daemon::Entry) -> u32 {
    let read = |what: &str| std::fs::read(format!("/proc/{pid}/{what}")).expect(what);
    let split = |bytes: Vec<u8>| -> Vec<String> {
        bytes
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect()
    };
    let argv = split(read("cmdline"));
    let env: Vec<(String, String)> = split(read("environ"))
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .filter(|(k, _)| k.starts_with("TS_"))
        .collect();
    let program = PathBuf::from(&argv[0]);
    let id =
        tailroute::lab::process::ProcessId::of(i32::try_from(pid).expect("pid")).expect("running");
    tailroute::lab::process::stop(&id, Duration::from_secs(10)).expect("stop");
    tailroute::lab::daemon::DaemonSpec {
        namespace: Some(ns),
        entry,
        program: &program,
        args: argv[1..].to_vec(),
        env,
        log: log.to_path_buf(),
    }
    .spawn()
    .expect("restart")
}

/// Restarting the agents keeps an established pod-to-pod TCP stream
/// across nodes going: a message every 50 ms, each echoed within 1 s.
fn an_agent_restart_does_not_interrupt_pod_traffic(lab: &CliLab, pods: &[LabPod]) {
    let status = lab.status();
    let server = pods.iter().find(|p| p.node == "n2").expect("a pod on n2");
    let client = pods.iter().find(|p| p.node == "n1").expect("a pod on n1");
    let dst = *server.ips.first().expect("ip");
    let (sent, worst) = echoes_across(&server.netns, dst, 5202, &client.netns, || {
        restart_agents(lab, &status, &["n1", "n2"]);
        // The restarted agents find everything in place and change nothing.
        std::thread::sleep(Duration::from_secs(4));
    });
    println!("agent restart: {sent} echoes across the restart, slowest {worst:?}");
    assert!(sent > 50, "{sent}");
    every_node_is_up(lab);
}

/// Echoes 64-byte messages every 50 ms over one TCP connection from
/// `client_ns` to `dst:port` (served in `server_ns`) while `during` runs;
/// each echo must come back within 1 s. Returns how many came back and
/// the slowest.
fn echoes_across(
    server_ns: &str,
    dst: IpAddr,
    port: u16,
    client_ns: &str,
    during: impl FnOnce(),
) -> (u32, Duration) {
    let listener = common::in_netns(server_ns, || {
        std::net::TcpListener::bind(std::net::SocketAddr::new(dst, port)).expect("bind")
    });
    let echo = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        while conn.read_exact(&mut buf).is_ok() {
            if conn.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut stream = common::in_netns(client_ns, || {
        std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(dst, port),
            Duration::from_secs(5),
        )
        .expect("connect")
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut sent, mut worst) = (0u32, Duration::ZERO);
            let mut back = [0u8; 64];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                stream.write_all(&[7u8; 64]).expect("the stream broke");
                stream
                    .read_exact(&mut back)
                    .expect("no echo within 1 s: the stream stalled");
                worst = worst.max(started.elapsed());
                sent += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (sent, worst)
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    during();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let result = talker.join().expect("the stream was interrupted");
    drop(echo);
    result
}

/// Stops and starts the agents of `nodes` as the lab started them.
fn restart_agents(lab: &CliLab, status: &Value, nodes: &[&str]) {
    for node in nodes {
        let ns = status["lab"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["name"] == *node)
            .and_then(|n| n["namespace"].as_str())
            .expect("the node's namespace");
        let pid = lab_process(lab, &format!("agent {node}"));
        let log = lab.state_dir.join(format!("nodes/{node}/agent.log"));
        restart_in(ns, pid, &log, tailroute::lab::daemon::Entry::Setns);
    }
}

/// Restarting tailscaled on n2: every pod reaches every other again
/// within 15 s.
fn a_tailscaled_restart_heals_within_15_s(lab: &CliLab, pods: &[LabPod]) {
    let status = lab.status();
    let ns = status["lab"]["nodes"][1]["namespace"]
        .as_str()
        .expect("ns")
        .to_owned();
    let pid = lab_process(lab, "tailscaled n2");
    let log = lab.state_dir.join("nodes/n2/tailscaled.log");
    let started = Instant::now();
    restart_in(&ns, pid, &log, tailroute::lab::daemon::Entry::IpNetnsExec);
    pod_matrix(
        pods,
        Duration::from_secs(15).saturating_sub(started.elapsed()),
    );
    println!(
        "tailscaled restart on n2: matrix green after {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A laptop on the tailnet (accept-routes on, not a cluster node) reaches
/// pods at their own IPs and they see its tailnet address; a pod reaches
/// the laptop's 100.x address, masqueraded to its node's tailnet address
/// (so a device that does not accept routes can answer too).
fn a_laptop_and_the_pods_reach_each_other(lab: &CliLab, pods: &[LabPod]) {
    let status = lab.status();
    let laptop = &status["lab"]["laptop"];
    let laptop_ns = laptop["namespace"]
        .as_str()
        .expect("laptop namespace")
        .to_owned();
    let laptop_ip: IpAddr = laptop["tailnet_ips"][0]
        .as_str()
        .expect("ip")
        .parse()
        .expect("ip");
    let deadline = Instant::now() + Duration::from_secs(20);
    for pod in pods {
        let dst = *pod.ips.iter().find(|ip| ip.is_ipv4()).expect("v4");
        loop {
            match ask_pod_server(&laptop_ns, dst) {
                Ok(answer) if answer.contains(&format!("client={laptop_ip}:")) => break,
                other => assert!(
                    Instant::now() < deadline,
                    "laptop -> {} ({dst}): {other:?}",
                    pod.name
                ),
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    let nodes = status["lab"]["nodes"].as_array().expect("nodes");
    for pod in pods {
        let node_ip: IpAddr = nodes
            .iter()
            .find(|n| n["name"] == pod.node.as_str())
            .and_then(|n| n["tailnet_ips"][0].as_str())
            .expect("node tailnet ip")
            .parse()
            .expect("ip");
        let seen = common::tcp_source_seen_by(&laptop_ns, laptop_ip, &pod.netns);
        assert_eq!(
            seen, node_ip,
            "{} -> laptop is masqueraded to its node's tailnet IP",
            pod.name
        );
    }
}

/// Headscale's devices: (name, tags).
fn headscale_devices(lab: &CliLab) -> Vec<(String, Vec<String>)> {
    let status = lab.status();
    let config = status["lab"]["headscale_config"]
        .as_str()
        .expect("config")
        .to_owned();
    let peers =
        tailroute::lab::peers::Peers::locate(&tailroute::lab::peers::cache_root()).expect("peers");
    let out = Command::new(&peers.headscale)
        .args(["-c", &config, "nodes", "list", "-o", "json"])
        .output()
        .expect("headscale nodes list");
    let list: Value = serde_json::from_slice(&out.stdout).expect("headscale's JSON");
    list.as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let name = n["name"].as_str().unwrap_or_default().to_owned();
            let mut tags: Vec<String> = n["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect();
            tags.sort();
            (name, tags)
        })
        .collect()
}

/// Waits up to 10 s for an Event matching the field `selector` whose JSON
/// contains `text`.
fn wait_event(lab: &CliLab, selector: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let events = lab.kubectl(
            &[
                "get",
                "events",
                &format!("--field-selector={selector}"),
                "-o",
                "json",
            ],
            None,
        );
        if events.contains(text) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no Event {selector} saying {text:?}: {events}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Deleting Node n3 from the cluster removes its tailnet device from
/// Headscale within 10 s: the leader agent does it through the API.
fn a_deleted_node_leaves_no_ghost_device(lab: &CliLab) {
    let devices = || -> Vec<String> {
        headscale_devices(lab)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    };
    assert!(devices().contains(&"n3".to_owned()), "{:?}", devices());
    let started = Instant::now();
    lab.kubectl(&["delete", "node", "n3", "--wait=false"], None);
    loop {
        if !devices().contains(&"n3".to_owned()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "n3's device is still on the tailnet: {:?}",
            devices()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "deleted Node n3: its tailnet device was gone after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // The leader publishes its Event right after the deletion went through.
    wait_event(
        lab,
        "reason=TailnetDeviceRemoved",
        "Node n3 was deleted: removed its tailnet device",
    );
}
