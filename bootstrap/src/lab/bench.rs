//! The pieces of `lab-bench`, the node agent's benchmark: pods placed on
//! chosen nodes, reachability probes and `iperf3` runs inside lab
//! namespaces, a bare veth pair as a reference, the agent's process found
//! by its configuration, CPU and memory read from `/proc`, and the table.
//!
//! Every packet starts and ends inside a lab namespace: probes open their
//! socket on a short-lived thread that entered the namespace
//! ([`crate::lab::probe::connect_in`]), and `iperf3` runs under
//! `ip netns exec`. Nothing is sent from the host's own namespace.

use std::io::Read;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::command::HostCommand;
use crate::lab::cluster::{LabInfo, LabNode};
use crate::lab::daemon::{process_alive, DaemonSpec, Entry};
use crate::lab::kubelet::record::netns_name;
use crate::lab::probe::connect_in;
use crate::lab::resource::namespaces_with_prefix;

/// The port every lab pod's built-in server answers on.
pub const POD_SERVER_PORT: u16 = 8080;

/// A pod the benchmark placed on a node, once it runs.
#[derive(Debug, Clone)]
pub struct BenchPod {
    /// The Pod's name (namespace `default`).
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its network namespace (`/run/netns/<netns>`).
    pub netns: String,
    /// Its IPv4 address.
    pub ip: IpAddr,
}

/// Pods bound to nodes by `nodeName` (no scheduler in the way), labelled
/// `tailroute-bench=<set>` so a set is found again in one query.
pub fn pod_manifest(set: &str, pods: &[(String, String)]) -> String {
    pods.iter()
        .map(|(name, node)| {
            format!(
                "---\napiVersion: v1\nkind: Pod\n\
                 metadata: {{name: {name}, namespace: default, labels: {{tailroute-bench: {set}}}}}\n\
                 spec:\n  nodeName: {node}\n  containers: [{{name: web, image: lab/builtin-server}}]\n"
            )
        })
        .collect()
}

/// [`pod_manifest`] for pods that ask for a tailnet identity of their own.
pub fn identity_pod_manifest(set: &str, pods: &[(String, String)]) -> String {
    pod_manifest(set, pods).replace(
        "namespace: default, labels:",
        "namespace: default, annotations: {tailroute.dev/identity: \"true\"}, labels:",
    )
}

/// A process's proportional set size in KiB (`/proc/PID/smaps_rollup`):
/// shared pages (the program text of many instances of one binary) are
/// split between the processes sharing them, so a sum over them is honest.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Creates `pods` (`(name, node)`) as set `set` (a set named `identity...`
/// asks for identities). The manifest goes to a file
/// in the lab's state directory, which `lab down` removes with the rest.
pub fn create_pods(
    info: &LabInfo,
    state_dir: &Path,
    set: &str,
    pods: &[(String, String)],
) -> Result<(), String> {
    let file = state_dir.join(format!("bench-pods-{set}.yaml"));
    let manifest = if set.starts_with("identity") {
        identity_pod_manifest(set, pods)
    } else {
        pod_manifest(set, pods)
    };
    std::fs::write(&file, manifest).map_err(|e| format!("write {}: {e}", file.display()))?;
    info.kubectl(&["apply", "-f", &file.display().to_string()])
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Waits until `want` pods of set `set` are Running with an IPv4 address,
/// and returns them with their network namespaces.
pub fn wait_running(
    info: &LabInfo,
    set: &str,
    want: usize,
    timeout: Duration,
) -> Result<Vec<BenchPod>, String> {
    let deadline = Instant::now() + timeout;
    let selector = format!("tailroute-bench={set}");
    loop {
        let json = info
            .kubectl(&["get", "pods", "-l", &selector, "-o", "json"])
            .map_err(|e| e.to_string())?;
        let list: Value =
            serde_json::from_str(&json).map_err(|e| format!("kubectl get pods: {e}"))?;
        let running: Vec<BenchPod> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["status"]["phase"] == "Running")
            .filter_map(|p| running_pod(info, p))
            .collect();
        if running.len() >= want {
            return Ok(running);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} of {want} pods of set {set} run after {timeout:?} (kubectl get pods -l {selector})",
                running.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn running_pod(info: &LabInfo, pod: &Value) -> Option<BenchPod> {
    let node = info.node(pod["spec"]["nodeName"].as_str()?)?;
    let uid = pod["metadata"]["uid"].as_str()?;
    let ip = pod["status"]["podIPs"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["ip"].as_str()?.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4)?;
    Some(BenchPod {
        name: pod["metadata"]["name"].as_str()?.to_owned(),
        node: node.name.clone(),
        netns: netns_name(&node.pod_netns_prefix, uid),
        ip,
    })
}

/// One answer from the pod server at `dst`, asked from inside `netns`.
/// Only an answer counts: the server writes the client address it saw, so
/// a connection some middlebox accepts is not mistaken for the pod.
pub fn ask_pod_server(netns: &str, dst: IpAddr, timeout: Duration) -> Result<(), String> {
    let addr = SocketAddr::new(dst, POD_SERVER_PORT);
    let mut stream =
        connect_in(netns, addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    if text.contains("client=") {
        Ok(())
    } else {
        Err(format!("{addr} answered {text:.80?}"))
    }
}

/// A client pod and the server pod it must reach.
pub type PodPair = (BenchPod, BenchPod);

/// Polls every pair, each on its own thread, every `poll` until its pod
/// server answers; returns the time from `start` to the last pair's first
/// answer. A pair is tried with a connect timeout of `attempt`, so a route
/// that appears mid-attempt is seen at most `attempt + poll` late.
pub fn until_every_pair_answers(
    pairs: &[PodPair],
    start: Instant,
    poll: Duration,
    attempt: Duration,
    timeout: Duration,
) -> Result<Duration, String> {
    let deadline = start + timeout;
    let results: Vec<Result<Duration, String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = pairs
            .iter()
            .map(|(from, to)| {
                scope.spawn(move || loop {
                    match ask_pod_server(&from.netns, to.ip, attempt) {
                        Ok(()) => return Ok(start.elapsed()),
                        Err(e) if Instant::now() >= deadline => {
                            return Err(format!("{} -> {} ({}): {e}", from.name, to.name, to.ip))
                        }
                        Err(_) => std::thread::sleep(poll),
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a probe thread panicked".into()))
            })
            .collect()
    });
    let mut latest = Duration::ZERO;
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(d) => latest = latest.max(d),
            Err(e) => failures.push(e),
        }
    }
    if failures.is_empty() {
        Ok(latest)
    } else {
        Err(format!(
            "no answer within {timeout:?}: {}",
            failures.join("; ")
        ))
    }
}

/// Waits until no pair gets an answer in the same round (every probe with
/// `attempt` as its timeout); returns how long that took.
pub fn until_no_pair_answers(
    pairs: &[PodPair],
    attempt: Duration,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let answering: Vec<String> = std::thread::scope(|scope| {
            let threads: Vec<_> = pairs
                .iter()
                .map(|(from, to)| {
                    scope.spawn(move || {
                        ask_pod_server(&from.netns, to.ip, attempt)
                            .is_ok()
                            .then(|| format!("{} -> {}", from.name, to.name))
                    })
                })
                .collect();
            threads
                .into_iter()
                .filter_map(|t| t.join().unwrap_or(None))
                .collect()
        });
        if answering.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "still answering {timeout:?} after the route was withdrawn: {}",
                answering.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `iperf3 -s` inside a namespace, stopped when dropped.
#[derive(Debug)]
pub struct IperfServer {
    child: Child,
}

impl IperfServer {
    /// Starts `iperf3 -s -p <port>` inside `netns`.
    pub fn start(netns: &str, port: u16) -> Result<IperfServer, String> {
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-s", "-p"])
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start iperf3 -s in {netns}: {e}"))?;
        Ok(IperfServer { child })
    }
}

impl Drop for IperfServer {
    fn drop(&mut self) {
        // `ip netns exec` execs iperf3, so this pid is the server itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `iperf3 -c` run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfRun {
    /// What the receiver got, in Mbit/s.
    pub mbps: f64,
    /// Bytes the sender sent (for checking which link carried them).
    pub bytes_sent: u64,
}

/// `iperf3 -c <dst>` from inside `netns` for `seconds` (plus one omitted
/// second, so TCP slow start is not averaged in). Retried for up to 5 s
/// while the server is not listening yet.
pub fn iperf(netns: &str, dst: IpAddr, port: u16, seconds: u32) -> Result<IperfRun, String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new("ip")
            .args(["netns", "exec", netns, "iperf3", "-J", "-O", "1", "-t"])
            .arg(seconds.to_string())
            .arg("-p")
            .arg(port.to_string())
            .arg("-c")
            .arg(dst.to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run iperf3 -c in {netns}: {e} (is iperf3 installed?)"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match parse_iperf(&stdout) {
            Ok(run) => return Ok(run),
            Err(e) if e.contains("refused") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(format!(
                    "iperf3 {netns} -> {dst}: {e} {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
    }
}

/// The receiver's rate and the bytes sent, from `iperf3 -J` output, or the
/// error iperf3 reported in it.
pub fn parse_iperf(json: &str) -> Result<IperfRun, String> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("iperf3 printed no JSON ({e})"))?;
    if let Some(error) = value["error"].as_str() {
        return Err(error.to_owned());
    }
    let end = &value["end"];
    match (
        end["sum_received"]["bits_per_second"].as_f64(),
        end["sum_sent"]["bytes"].as_u64(),
    ) {
        (Some(bps), Some(bytes_sent)) => Ok(IperfRun {
            mbps: bps / 1e6,
            bytes_sent,
        }),
        _ => {
            Err("no end.sum_received.bits_per_second or end.sum_sent.bytes in iperf3's JSON".into())
        }
    }
}

/// Bytes sent so far on `dev` in namespace `netns`.
pub fn tx_bytes(netns: &str, dev: &str) -> Result<u64, String> {
    let json = HostCommand::ip_in(netns, &["-j", "-s", "link", "show", dev])
        .run()
        .map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&json).map_err(|e| format!("ip -j -s link: {e}"))?;
    value[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .ok_or_else(|| format!("no tx bytes for {dev} in {netns}: {json:.200}"))
}

/// Seconds from `start` (seconds since the epoch) to the first line of
/// `log` containing `message`, by the line's RFC 3339 UTC timestamp (the
/// agent's text log format). Only the time of day is read, so a run across
/// midnight still comes out right.
pub fn log_mark(log: &str, start: f64, message: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(message))?;
    let stamp = line.split_whitespace().next()?;
    let (_, time) = stamp.split_once('T')?;
    let time = time.trim_end_matches('Z');
    let mut parts = time.splitn(3, ':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    let of_day = h * 3600.0 + m * 60.0 + s;
    let delta = (of_day - start.rem_euclid(86_400.0)).rem_euclid(86_400.0);
    // A mark just before the start (clock granularity) is not a day late.
    Some(if delta > 43_200.0 {
        delta - 86_400.0
    } else {
        delta
    })
}

/// Two throwaway namespaces joined by a bare veth pair: the same-node
/// reference, the least any pod-to-pod path on one node can cost. Both
/// namespaces carry the lab's prefix, so `lab down` removes them even if
/// the benchmark is killed before its own `Drop`.
#[derive(Debug)]
pub struct VethPair {
    /// The client's namespace.
    pub client: String,
    /// The server's namespace.
    pub server: String,
    /// The server's address.
    pub server_ip: IpAddr,
}

impl VethPair {
    /// Creates `<prefix>bva` and `<prefix>bvb`, one veth between them
    /// (192.0.2.1/24 and .2) with `mtu`: the pods' MTU, so both paths
    /// carry the same segment size.
    pub fn create(prefix: &str, mtu: u32) -> Result<VethPair, String> {
        let pair = VethPair {
            client: format!("{prefix}bva"),
            server: format!("{prefix}bvb"),
            server_ip: IpAddr::from([192, 0, 2, 2]),
        };
        let mtu = mtu.to_string();
        let run = |cmd: HostCommand| cmd.run().map(drop).map_err(|e| e.to_string());
        // The pair exists from here: Drop removes whatever part was made.
        run(HostCommand::new("ip", &["netns", "add", &pair.client]))?;
        run(HostCommand::new("ip", &["netns", "add", &pair.server]))?;
        // Born with its peer inside the other namespace: nothing on the host.
        run(HostCommand::ip_in(
            &pair.client,
            &[
                "link",
                "add",
                "eth0",
                "mtu",
                &mtu,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pair.server,
            ],
        ))?;
        for (ns, addr) in [
            (&pair.client, "192.0.2.1/24"),
            (&pair.server, "192.0.2.2/24"),
        ] {
            run(HostCommand::ip_in(
                ns,
                &["link", "set", "eth0", "mtu", &mtu],
            ))?;
            run(HostCommand::ip_in(
                ns,
                &["addr", "add", addr, "dev", "eth0"],
            ))?;
            run(HostCommand::ip_in(ns, &["link", "set", "lo", "up"]))?;
            run(HostCommand::ip_in(ns, &["link", "set", "eth0", "up"]))?;
        }
        Ok(pair)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [&self.client, &self.server] {
            if Path::new("/run/netns").join(ns).exists() {
                if let Err(e) = HostCommand::new("ip", &["netns", "del", ns]).run() {
                    eprintln!(
                        "lab-bench: could not delete namespace {ns}: {e} (`lab down` retries)"
                    );
                }
            }
        }
    }
}

/// The MTU of `eth0` in namespace `netns`.
pub fn eth0_mtu(netns: &str) -> Result<u32, String> {
    let json = HostCommand::ip_in(netns, &["-j", "link", "show", "eth0"])
        .run()
        .map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_str(&json).map_err(|e| format!("ip -j link: {e}"))?;
    value[0]["mtu"]
        .as_u64()
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| format!("no mtu for eth0 in {netns}: {json}"))
}

/// The node agent of one lab node: its config file identifies it, since
/// every node's agent runs the same binary.
#[derive(Debug, Clone)]
pub struct NodeAgent {
    /// The node's namespace (where the agent runs).
    pub namespace: String,
    /// `<state>/nodes/<node>/agent/agent.toml`.
    pub config: PathBuf,
    /// `<state>/nodes/<node>/agent.log`.
    pub log: PathBuf,
}

impl NodeAgent {
    /// The agent of `node` in the lab whose state is in `state_dir`.
    pub fn of(state_dir: &Path, node: &LabNode) -> NodeAgent {
        let dir = state_dir.join("nodes").join(&node.name);
        NodeAgent {
            namespace: node.namespace.clone(),
            config: dir.join("agent/agent.toml"),
            log: dir.join("agent.log"),
        }
    }

    /// `--config=<path>`, as the lab passes it.
    fn config_arg(&self) -> String {
        format!("--config={}", self.config.display())
    }

    /// Pids of the running `tailroute-agent`s with this config (one,
    /// unless something is wrong).
    pub fn pids(&self) -> Vec<u32> {
        pids_running("tailroute-agent", &self.config_arg())
    }

    /// The one running pid and its program path, or why there is none.
    pub fn running(&self) -> Result<(u32, PathBuf), String> {
        match self.pids().as_slice() {
            [pid] => {
                let program = cmdline(*pid)
                    .and_then(|args| args.into_iter().next())
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("agent {pid} exited while being looked at"))?;
                Ok((*pid, program))
            }
            [] => Err(format!(
                "no tailroute-agent with {} runs (see {})",
                self.config_arg(),
                self.log.display()
            )),
            many => Err(format!(
                "{} tailroute-agents with {} run: {many:?}",
                many.len(),
                self.config_arg()
            )),
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; returns the program it ran, so
    /// [`NodeAgent::start`] restarts the very same binary.
    pub fn stop(&self) -> Result<PathBuf, String> {
        let (pid, program) = self.running()?;
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while process_alive(pid) {
            if Instant::now() >= deadline {
                signal(pid, libc::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(program)
    }

    /// Starts `program --config=<config>` exactly as `lab up` does: inside
    /// the node's namespace by setns, in a session of its own, output
    /// appended to the node's agent log. `lab down` stops it with every
    /// other process in the lab's namespaces.
    pub fn start(&self, program: &Path) -> Result<u32, String> {
        DaemonSpec {
            namespace: Some(&self.namespace),
            entry: Entry::Setns,
            program,
            args: vec![self.config_arg()],
            env: vec![],
            log: self.log.clone(),
        }
        .spawn()
        .map_err(|e| e.to_string())
    }
}

/// Withdraws `node`'s advertised routes the way an operator would:
/// `tailscale set --advertise-routes=` in the node's namespace.
pub fn withdraw_advertisement(info: &LabInfo, node: &LabNode) -> Result<(), String> {
    HostCommand::exec_in(
        &node.namespace,
        &info.tailscale.display().to_string(),
        &[
            format!("--socket={}", node.tailscaled_socket.display()),
            "set".into(),
            "--advertise-routes=".into(),
        ],
    )
    .run()
    .map(drop)
    .map_err(|e| e.to_string())
}

/// Removes every approval of `node`'s routes in Headscale
/// (`headscale nodes approve-routes -r ""`) and reads it back until the
/// node has none. Checked, because a change made while Headscale is still
/// processing the node's own route update was seen to be lost: the route
/// came back approved and the agent had nothing to do. Returns how many
/// attempts it took.
pub fn clear_approval(info: &LabInfo, headscale: &Path, node: &LabNode) -> Result<u32, String> {
    let config = info.headscale_config.display().to_string();
    let headscale = headscale.display().to_string();
    let list = || {
        HostCommand::new(&headscale, &["-c", &config, "nodes", "list", "-o", "json"])
            .run()
            .map_err(|e| e.to_string())
    };
    let id = headscale_node_id(&list()?, &node.name)?.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        HostCommand::new(
            &headscale,
            &[
                "-c",
                &config,
                "nodes",
                "approve-routes",
                "-i",
                &id,
                "-r",
                "",
            ],
        )
        .run()
        .map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(300));
        let approved = approved_routes(&list()?, &node.name)?;
        if approved.is_empty() {
            return Ok(attempts);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "Headscale still approves {approved:?} for {} after 10 s of clearing",
                node.name
            ));
        }
    }
}

/// The approved routes of the node named `name` in `headscale nodes list
/// -o json` (`null` when there are none).
pub fn approved_routes(json: &str, name: &str) -> Result<Vec<String>, String> {
    let list: Value =
        serde_json::from_str(json).map_err(|e| format!("headscale nodes list: {e}"))?;
    let node = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["given_name"] == name || n["name"] == name)
        .ok_or_else(|| format!("Headscale lists no node {name}"))?;
    Ok(node["approved_routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect())
}

/// The id of the node named `name` in `headscale nodes list -o json`.
pub fn headscale_node_id(json: &str, name: &str) -> Result<u64, String> {
    let list: Value =
        serde_json::from_str(json).map_err(|e| format!("headscale nodes list: {e}"))?;
    list.as_array()
        .into_iter()
        .flatten()
        .find(|n| n["given_name"] == name || n["name"] == name)
        .and_then(|n| n["id"].as_u64().or_else(|| n["id"].as_str()?.parse().ok()))
        .ok_or_else(|| format!("Headscale lists no node {name}: {json:.200}"))
}

/// Pids of live processes whose program's file name is `program` and
/// whose arguments include `arg`.
pub fn pids_running(program: &str, arg: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            cmdline(*pid).is_some_and(|args| {
                args.first()
                    .and_then(|a| Path::new(a).file_name())
                    .is_some_and(|name| name == program)
                    && args.iter().any(|a| a == arg)
            })
        })
        .filter(|pid| process_alive(*pid))
        .collect()
}

/// A process's arguments, program first.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) with a positive pid has no memory-safety concerns.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// CPU time `pid` has used (user + system), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The
/// command name (field 2) may hold spaces and parentheses, so fields are
/// counted from its closing parenthesis.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`CLK_TCK`), the unit of [`cpu_ticks`].
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// CPU use of each of `pids` over `window`, as percent of one core.
pub fn cpu_percent(pids: &[u32], window: Duration) -> Result<Vec<f64>, String> {
    let before: Vec<u64> = pids
        .iter()
        .map(|p| cpu_ticks(*p).ok_or_else(|| format!("process {p} is gone")))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    std::thread::sleep(window);
    let elapsed = start.elapsed().as_secs_f64();
    let hz = clock_ticks_per_second() as f64;
    pids.iter()
        .zip(before)
        .map(|(p, b)| {
            let after = cpu_ticks(*p).ok_or_else(|| format!("process {p} exited"))?;
            Ok(after.saturating_sub(b) as f64 / hz / elapsed * 100.0)
        })
        .collect()
}

/// The median of `values`; `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The machine's CPU pressure (`some` line of `/proc/pressure/cpu`): how
/// busy the two shared cores were, to say whether figures are disturbed.
pub fn cpu_pressure() -> String {
    std::fs::read_to_string("/proc/pressure/cpu")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "unavailable".into())
}

/// Tags of the other tailroute labs on this machine (their `trl<tag>-`
/// namespaces), test labs included.
pub fn other_labs(own_tag: &str) -> Vec<String> {
    let mut tags: Vec<String> = namespaces_with_prefix("trl")
        .unwrap_or_default()
        .iter()
        .filter_map(|ns| Some(ns.strip_prefix("trl")?.split_once('-')?.0.to_owned()))
        .filter(|t| t != own_tag)
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// One row of the table: a figure of the agent, its reference from the
/// same run, and how they compare.
#[derive(Debug, Clone)]
pub struct Figure {
    /// What was measured.
    pub what: String,
    /// tailroute's figure.
    pub value: String,
    /// The reference, measured in the same run.
    pub reference: String,
    /// value / reference, where that means something.
    pub ratio: String,
    /// The target and whether it was met.
    pub target: String,
}

/// The figures as a Markdown table (it reads on a terminal and pastes into
/// the docs as is).
pub fn render_table(figures: &[Figure]) -> String {
    let header = [
        "figure",
        "tailroute",
        "reference (same run)",
        "ratio",
        "target",
    ];
    let rows: Vec<[&str; 5]> = figures
        .iter()
        .map(|f| {
            [
                f.what.as_str(),
                f.value.as_str(),
                f.reference.as_str(),
                f.ratio.as_str(),
                f.target.as_str(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&format!("| {} |\n", rule.join(" | ")));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// `met` or `missed`, for the target column.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_rate_is_read_from_iperf3_json() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2.0e9,"bytes":1000},
                      "sum_received":{"bits_per_second":1.5e9}}}"#;
        assert_eq!(
            parse_iperf(json),
            Ok(IperfRun {
                mbps: 1500.0,
                bytes_sent: 1000
            })
        );
        let refused =
            r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#;
        assert_eq!(
            parse_iperf(refused),
            Err("unable to connect to server: Connection refused".into())
        );
        assert!(parse_iperf("").is_err());
    }

    #[test]
    fn log_marks_are_seconds_after_the_start() {
        let log = "2025-11-21T17:20:00.500000Z  INFO tailroute_agent: starting\n\
                   2025-11-21T17:20:02.250000Z  INFO reconcile: advertised pod route\n";
        // 17:20:00 UTC on some day, as seconds since the epoch.
        let start = 20_000.0 * 86_400.0 + 17.0 * 3600.0 + 20.0 * 60.0;
        let mark = log_mark(log, start, "advertised pod route").expect("a mark");
        assert!((mark - 2.25).abs() < 1e-6, "{mark}");
        assert_eq!(log_mark(log, start, "approved"), None);
        let just_before = log_mark(log, start + 0.6, "starting").expect("a mark");
        assert!((just_before + 0.1).abs() < 1e-6, "{just_before}");
    }

    #[test]
    fn cpu_ticks_are_counted_from_the_last_parenthesis() {
        let stat =
            "4242 (tail (route) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 4 0 123 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
        let own = cpu_ticks(std::process::id());
        assert!(own.is_some(), "this process's own stat parses");
    }

    #[test]
    fn the_median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn headscale_ids_are_found_by_node_name() {
        let json =
            r#"[{"id":1,"name":"n1","given_name":"n1"},{"id":"3","name":"x","given_name":"n3"}]"#;
        assert_eq!(headscale_node_id(json, "n1"), Ok(1));
        assert_eq!(headscale_node_id(json, "n3"), Ok(3));
        assert!(headscale_node_id(json, "n2").is_err());
        let json = r#"[{"id":1,"name":"n1","approved_routes":["10.244.0.0/24"]},{"id":3,"name":"n3","approved_routes":null}]"#;
        assert_eq!(
            approved_routes(json, "n1"),
            Ok(vec!["10.244.0.0/24".to_owned()])
        );
        assert_eq!(approved_routes(json, "n3"), Ok(vec![]));
    }

    #[test]
    fn a_manifest_binds_each_pod_to_its_node() {
        let yaml = pod_manifest(
            "probe",
            &[("a".into(), "n1".into()), ("b".into(), "n2".into())],
        );
        assert_eq!(yaml.matches("kind: Pod").count(), 2);
        assert!(yaml.contains("nodeName: n2"), "{yaml}");
        assert!(yaml.contains("tailroute-bench: probe"), "{yaml}");
    }

    #[test]
    fn the_table_lines_up() {
        let table = render_table(&[Figure {
            what: "x".into(),
            value: "1".into(),
            reference: "2".into(),
            ratio: "0.50".into(),
            target: ">= 0.9: MISSED".into(),
        }]);
        let widths: Vec<usize> = table.lines().map(|l| l.chars().count()).collect();
        assert_eq!(widths.len(), 3);
        assert!(widths.iter().all(|w| *w == widths[0]), "{table}");
    }

    #[test]
    fn this_test_finds_itself_by_program_and_argument() {
        let me = std::process::id();
        let args = cmdline(me).expect("own cmdline");
        let program = Path::new(&args[0])
            .file_name()
            .expect("a program name")
            .to_string_lossy()
            .into_owned();
        // Every process has its program as argv[0].
        assert!(pids_running(&program, &args[0]).contains(&me));
        assert!(pids_running("no-such-program", &args[0]).is_empty());
    }
}
