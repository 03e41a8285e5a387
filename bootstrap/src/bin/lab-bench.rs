//! `lab-bench`: the node agent's figures, each beside a reference measured
//! in the same run on the same lab.
//!
//! It brings up its own lab (flat, 3 nodes, route approval through
//! Headscale's API), measures pod-to-pod throughput against the tailnet
//! and a bare veth pair, route convergence after the agent restarts, and
//! the agent's memory and CPU at rest with 50 pods on its node, prints one
//! table, writes it to a file, and tears the lab down: on success, on
//! error, on a panic, and on SIGINT/SIGTERM/SIGHUP. docs/agent-benchmarks.md
//! explains each figure.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use tailroute::lab::bench::{self, BenchPod, Figure, IperfServer, NodeAgent, PodPair, VethPair};
use tailroute::lab::cluster::{self, LabInfo};
use tailroute::lab::daemon::{process_alive, rss_kib};
use tailroute::lab::peers::{cache_root, Peers};
use tailroute::lab::resource::namespaces_with_prefix;
use tailroute::lab::{LabTag, Ledger};

/// The node agent's benchmark: throughput, route convergence, memory and
/// CPU at rest, each beside its reference. Needs root; brings up and tears
/// down its own lab.
#[derive(Debug, Parser)]
#[command(name = "lab-bench", version)]
struct Args {
    /// The lab's name (`trl<name>-...` namespaces).
    #[arg(long, default_value = "bnch")]
    name: String,
    /// Seconds of each iperf3 run (one more second is run and omitted).
    #[arg(long, default_value_t = 5)]
    iperf_seconds: u32,
    /// iperf3 runs per path, alternating with its reference.
    #[arg(long, default_value_t = 2)]
    iperf_rounds: usize,
    /// Route convergence measurements.
    #[arg(long, default_value_t = 5)]
    convergence_runs: usize,
    /// Pods on n1 for the at-rest figures.
    #[arg(long, default_value_t = 50)]
    rest_pods: usize,
    /// Identity pods on n2 for the per-pod identity figures.
    #[arg(long, default_value_t = 20)]
    identity_pods: usize,
    /// Seconds to wait once they run, and the length of the CPU window.
    #[arg(long, default_value_t = 30)]
    rest_seconds: u64,
    /// Where the table goes too.
    #[arg(long, default_value = "target/tmp/agent-bench.txt")]
    out: PathBuf,
}

/// What must be undone, shared by the Drop guard and the signal thread.
struct Cleanup {
    /// The lab, once `lab up` may have created any of it.
    lab: Option<(LabTag, PathBuf)>,
    /// The running `tailroute lab up`, killed before the teardown so it
    /// cannot create anything after it.
    lab_up: Option<u32>,
    /// What the teardown said, for the report.
    outcome: Option<String>,
}

static CLEANUP: Mutex<Cleanup> = Mutex::new(Cleanup {
    lab: None,
    lab_up: None,
    outcome: None,
});

fn cleanup() -> std::sync::MutexGuard<'static, Cleanup> {
    // A thread that panicked while holding it left nothing half-written
    // that the teardown depends on.
    CLEANUP.lock().unwrap_or_else(|e| e.into_inner())
}

/// Tears the lab down once, whoever asks first, and checks that nothing of
/// it is left.
fn teardown() -> Option<String> {
    let mut state = cleanup();
    if let Some(pid) = state.lab_up.take() {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        while process_alive(pid) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (tag, state_dir) = state.lab.take()?;
    let outcome = match cluster::down(&tag, &state_dir) {
        Ok(report) => {
            let left = namespaces_with_prefix(&tag.name_prefix()).unwrap_or_default();
            let mut text = format!(
                "lab {tag} down: {} resources removed, {} pod namespaces, {} processes stopped",
                report.teardown.removed.len(),
                report.pod_namespaces,
                report.stray_processes
            );
            if !left.is_empty() {
                text.push_str(&format!("; LEFT namespaces: {}", left.join(" ")));
            }
            if state_dir.exists() {
                text.push_str(&format!("; LEFT {}", state_dir.display()));
            }
            if left.is_empty() && !state_dir.exists() {
                text.push_str("; nothing left");
            }
            text
        }
        Err(e) => format!("lab {tag} teardown FAILED: {e}; run `tailroute lab down --name {tag}`"),
    };
    eprintln!("lab-bench: {outcome}");
    state.outcome = Some(outcome.clone());
    Some(outcome)
}

/// Runs [`teardown`] when `main`'s work ends, by return or by panic.
struct LabGuard;

impl Drop for LabGuard {
    fn drop(&mut self) {
        teardown();
    }
}

/// SIGINT, SIGTERM and SIGHUP go to one thread that tears the lab down and
/// exits: blocked here, before any thread exists, so every later thread
/// inherits the block and none of them is interrupted half-way.
fn tear_down_on_signals() -> Result<(), String> {
    let mut set = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(signal);
    }
    set.thread_block()
        .map_err(|e| format!("block signals: {e}"))?;
    std::thread::spawn(move || {
        if let Ok(signal) = set.wait() {
            eprintln!("lab-bench: {signal}: tearing the lab down");
            teardown();
            std::process::exit(128 + signal as i32);
        }
    });
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = tear_down_on_signals() {
        eprintln!("lab-bench: {e}");
        return ExitCode::FAILURE;
    }
    let result = {
        let _guard = LabGuard;
        run(&args)
    };
    let outcome = cleanup()
        .outcome
        .clone()
        .unwrap_or_else(|| "no lab was started".into());
    match result {
        Ok(mut report) => {
            report.push_str(&format!("teardown: {outcome}\n"));
            println!("\n{report}");
            if let Some(dir) = args.out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(&args.out, &report) {
                eprintln!("lab-bench: write {}: {e}", args.out.display());
                return ExitCode::FAILURE;
            }
            eprintln!("lab-bench: written to {}", args.out.display());
            if outcome.contains("nothing left") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("lab-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn step(text: &str) {
    eprintln!("lab-bench: {text}");
}

fn run(args: &Args) -> Result<String, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root: it builds a lab of network namespaces".into());
    }
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map_err(|e| {
            format!(
                "iperf3: {e}: install it (apt-get install iperf3, or scripts/install-test-deps.sh)"
            )
        })?;
    let tag = LabTag::new(&args.name).map_err(|e| e.to_string())?;
    let state_dir = Ledger::default_dir(&args.name);
    if state_dir.exists()
        || !namespaces_with_prefix(&tag.name_prefix())
            .unwrap_or_default()
            .is_empty()
    {
        // Not ours to remove: it may be someone's lab that happens to
        // share the name.
        return Err(format!(
            "a lab named {} exists already: `tailroute lab down --name {}` first, or pass --name",
            args.name, args.name
        ));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let tailroute = exe.with_file_name("tailroute");
    let headscale = Peers::locate(&cache_root())
        .map_err(|e| e.to_string())?
        .headscale;

    let pressure_before = bench::cpu_pressure();
    let others_before = bench::other_labs(&args.name);
    let started = Instant::now();

    step("lab up: flat, 3 nodes, --approval api, a laptop");
    let child = {
        let mut state = cleanup();
        state.lab = Some((tag.clone(), state_dir.clone()));
        let child = Command::new(&tailroute)
            .args(["lab", "up", "--nodes", "3", "--topology", "flat"])
            .args(["--approval", "api", "--laptop", "--name", &args.name])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{}: {e}", tailroute.display()))?;
        state.lab_up = Some(child.id());
        child
    };
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    cleanup().lab_up = None;
    if !out.status.success() {
        return Err(format!(
            "lab up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let info = LabInfo::load(&state_dir).map_err(|e| e.to_string())?;
    let lab_up_secs = info.timings.last().map_or(0.0, |(_, s)| *s);
    step(&format!("lab up in {lab_up_secs:.1} s"));

    // Two pods per node: the throughput pairs and the convergence matrix.
    let probe_pods: Vec<(String, String)> = ["n1", "n2", "n3"]
        .iter()
        .flat_map(|n| ["a", "b"].map(|s| (format!("bench-{n}-{s}"), (*n).to_owned())))
        .collect();
    bench::create_pods(&info, &state_dir, "probe", &probe_pods)?;
    let pods = bench::wait_running(&info, "probe", probe_pods.len(), Duration::from_secs(90))?;
    let pod = |name: &str| {
        pods.iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| format!("pod {name} is not among the running pods"))
    };
    step("6 pods run, 2 per node");

    let mut figures = Vec::new();
    figures.extend(throughput(
        args,
        &info,
        &tag,
        &pod("bench-n1-a")?,
        &pod("bench-n1-b")?,
        &pod("bench-n2-a")?,
    )?);
    figures.push(convergence(args, &info, &state_dir, &headscale, &pods)?);
    figures.extend(identities(args, &info, &state_dir, &pod("bench-n2-a")?)?);
    figures.extend(at_rest(args, &info, &state_dir)?);

    let pressure_after = bench::cpu_pressure();
    let others_after = bench::other_labs(&args.name);
    let others = |tags: &[String]| {
        if tags.is_empty() {
            "none".to_owned()
        } else {
            tags.join(" ")
        }
    };
    Ok(format!(
        "tailroute-agent benchmark: lab {} (flat, 3 nodes, --approval api), up in {lab_up_secs:.1} s, whole run {:.0} s\n\n{}\n\
         cpu pressure before: {pressure_before}\n\
         cpu pressure after:  {pressure_after}\n\
         other labs on the machine: before: {}; after: {}\n",
        args.name,
        started.elapsed().as_secs_f64(),
        bench::render_table(&figures),
        others(&others_before),
        others(&others_after),
    ))
}

/// iperf3 rounds of `path` and `reference`, alternating so that a burst of
/// load from elsewhere hits both; Mbit/s of each round. With `via`
/// (namespace, device), every `path` run must have crossed that device:
/// the figure is worthless if the pods found another way.
fn iperf_pair(
    rounds: usize,
    seconds: u32,
    path: (&str, IpAddr),
    reference: (&str, IpAddr),
    via: Option<(&str, &str)>,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds.max(1) {
        let before = via.map(|(ns, dev)| bench::tx_bytes(ns, dev)).transpose()?;
        let run = bench::iperf(path.0, path.1, 5201, seconds)?;
        if let (Some((ns, dev)), Some(before)) = (via, before) {
            let crossed = bench::tx_bytes(ns, dev)?.saturating_sub(before);
            if crossed < run.bytes_sent {
                return Err(format!(
                    "{} -> {} sent {} bytes but {dev} in {ns} carried only {crossed}: the pods did not go over the tailnet",
                    path.0, path.1, run.bytes_sent
                ));
            }
        }
        a.push(run.mbps);
        b.push(bench::iperf(reference.0, reference.1, 5201, seconds)?.mbps);
    }
    Ok((a, b))
}

fn mbps_figure(
    what: &str,
    reference_name: &str,
    pod: &[f64],
    reference: &[f64],
    target: Option<f64>,
) -> Figure {
    let (p, r) = (
        bench::median(pod).unwrap_or(0.0),
        bench::median(reference).unwrap_or(0.0),
    );
    let ratio = if r > 0.0 { p / r } else { 0.0 };
    let runs = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join("/")
    };
    Figure {
        what: what.to_owned(),
        value: format!("{p:.0} Mbit/s ({})", runs(pod)),
        reference: format!("{reference_name}: {r:.0} Mbit/s ({})", runs(reference)),
        ratio: format!("{ratio:.2}"),
        target: match target {
            Some(t) => format!(">= {t}: {}", bench::verdict(ratio >= t)),
            None => "-".into(),
        },
    }
}

/// Figure 1: pod n1 -> pod n2 against n1 -> n2 over tailscale0, and pod ->
/// pod on n1 against a bare veth pair.
fn throughput(
    args: &Args,
    info: &LabInfo,
    tag: &LabTag,
    n1_a: &BenchPod,
    n1_b: &BenchPod,
    n2_a: &BenchPod,
) -> Result<Vec<Figure>, String> {
    let n1 = info.node("n1").ok_or("the lab has no n1")?;
    let n2 = info.node("n2").ok_or("the lab has no n2")?;
    let n2_tailnet = n2
        .tailnet_ips
        .iter()
        .copied()
        .find(IpAddr::is_ipv4)
        .ok_or("n2 has no tailnet IPv4")?;
    step(&format!(
        "throughput across nodes: pod {} -> pod {} vs n1 -> n2 over tailscale0, {} x {} s each",
        n1_a.ip, n2_a.ip, args.iperf_rounds, args.iperf_seconds
    ));
    let (across, tailnet) = {
        let _pod_server = IperfServer::start(&n2_a.netns, 5201)?;
        let _node_server = IperfServer::start(&n2.namespace, 5201)?;
        iperf_pair(
            args.iperf_rounds,
            args.iperf_seconds,
            (&n1_a.netns, n2_a.ip),
            (&n1.namespace, n2_tailnet),
            Some((&n1.namespace, "tailscale0")),
        )?
    };
    let mtu = bench::eth0_mtu(&n1_a.netns)?;
    step(&format!(
        "throughput on one node: pod -> pod on n1 vs a bare veth pair (MTU {mtu})"
    ));
    let (same_node, veth) = {
        let veth = {
            // Under the cleanup lock: a signal's teardown either runs
            // before (and this is never made) or after (and removes it).
            let _held = cleanup();
            VethPair::create(&tag.name_prefix(), mtu)?
        };
        let _pod_server = IperfServer::start(&n1_b.netns, 5201)?;
        let _veth_server = IperfServer::start(&veth.server, 5201)?;
        iperf_pair(
            args.iperf_rounds,
            args.iperf_seconds,
            (&n1_a.netns, n1_b.ip),
            (&veth.client, veth.server_ip),
            None,
        )?
    };
    Ok(vec![
        mbps_figure(
            "TCP pod n1 -> pod n2 (iperf3)",
            "n1 -> n2 over tailscale0",
            &across,
            &tailnet,
            Some(0.9),
        ),
        mbps_figure(
            "TCP pod -> pod on n1 (iperf3)",
            &format!("bare veth pair, MTU {mtu}"),
            &same_node,
            &veth,
            None,
        ),
    ])
}

/// Figure 2: from n3's agent starting (its route neither advertised nor
/// approved) until every pod on n1 and n2 gets an answer from every pod on
/// n3.
fn convergence(
    args: &Args,
    info: &LabInfo,
    state_dir: &Path,
    headscale: &Path,
    pods: &[BenchPod],
) -> Result<Figure, String> {
    let n3 = info.node("n3").ok_or("the lab has no n3")?;
    let agent = NodeAgent::of(state_dir, n3);
    let pairs: Vec<PodPair> = pods
        .iter()
        .filter(|from| from.node != "n3")
        .flat_map(|from| {
            pods.iter()
                .filter(|to| to.node == "n3")
                .map(move |to| (from.clone(), to.clone()))
        })
        .collect();
    // Every pair answers before the first run: the lab is converged.
    bench::until_every_pair_answers(
        &pairs,
        Instant::now(),
        Duration::from_millis(100),
        Duration::from_secs(1),
        Duration::from_secs(30),
    )?;
    let mut runs = Vec::new();
    let mut withdrawn = Vec::new();
    let (mut advertised_at, mut approved_at) = (Vec::new(), Vec::new());
    for run in 1..=args.convergence_runs {
        let program = agent.stop()?;
        let cut = Instant::now();
        bench::withdraw_advertisement(info, n3)?;
        bench::until_no_pair_answers(&pairs, Duration::from_millis(500), Duration::from_secs(30))?;
        withdrawn.push(cut.elapsed().as_secs_f64());
        // After the peers dropped the route, so Headscale has settled the
        // node's own update and the cleared approval stays cleared.
        let attempts = bench::clear_approval(info, headscale, n3)?;
        let log_from = std::fs::metadata(&agent.log).map_or(0, |m| m.len());
        let start = Instant::now();
        let start_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        agent.start(&program)?;
        let took = bench::until_every_pair_answers(
            &pairs,
            start,
            Duration::from_millis(100),
            Duration::from_millis(150),
            Duration::from_secs(90),
        )?;
        // Where the time went, from the agent's own log lines of this start.
        let log = std::fs::read(&agent.log)
            .map(|b| {
                String::from_utf8_lossy(b.get(log_from as usize..).unwrap_or_default()).into_owned()
            })
            .unwrap_or_default();
        let mark = |message: &str| bench::log_mark(&log, start_wall, message);
        let (advertised, approved) = (mark("advertised pod route"), mark("approved pod route"));
        if let Some(a) = advertised {
            advertised_at.push(a);
        }
        if let Some(a) = approved {
            approved_at.push(a);
        }
        let show = |m: Option<f64>| m.map_or("?".to_owned(), |s| format!("{s:.2} s"));
        step(&format!(
            "convergence {run}/{}: {:.2} s for {} pairs (agent log: advertised at {}, approved at {}; \
             the pods were unreachable {:.2} s after the withdrawal; approval cleared in {attempts} attempt(s))",
            args.convergence_runs,
            took.as_secs_f64(),
            pairs.len(),
            show(advertised),
            show(approved),
            withdrawn.last().copied().unwrap_or(0.0)
        ));
        runs.push(took.as_secs_f64());
        // Let the agent finish its first pass (Node status, events) so
        // the next stop does not cut a write half-way.
        std::thread::sleep(Duration::from_secs(2));
    }
    let median = bench::median(&runs).unwrap_or(0.0);
    Ok(Figure {
        what: format!(
            "route convergence, n3's agent restarted (median of {})",
            runs.len()
        ),
        value: format!("{median:.2} s"),
        reference: format!(
            "runs: {} s; agent log medians: advertised {}, API-approved {} ({} of {} runs)",
            runs.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
            bench::median(&advertised_at).map_or("?".into(), |s| format!("{s:.2} s")),
            bench::median(&approved_at).map_or("?".into(), |s| format!("{s:.2} s")),
            approved_at.len(),
            runs.len(),
        ),
        ratio: "-".into(),
        target: "-".into(),
    })
}

/// Figure 3: RSS and CPU of n1's agent with `rest_pods` pods on n1, beside
/// n1's tailscaled.
fn at_rest(args: &Args, info: &LabInfo, state_dir: &Path) -> Result<Vec<Figure>, String> {
    let n1 = info.node("n1").ok_or("the lab has no n1")?;
    let agent = NodeAgent::of(state_dir, n1);
    let (agent_pid, _) = agent.running()?;
    let tailscaled_pid = cluster::processes(state_dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|(what, _, rss)| what == "tailscaled n1" && rss.is_some())
        .map(|(_, pid, _)| pid)
        .ok_or("tailscaled of n1 does not run")?;
    let before = rss_kib(agent_pid).unwrap_or(0);
    // The 2 probe pods are on n1 already.
    let extra = args.rest_pods.saturating_sub(2);
    let rest: Vec<(String, String)> = (0..extra)
        .map(|i| (format!("bench-rest-{i}"), "n1".to_owned()))
        .collect();
    step(&format!(
        "{} pods on n1: starting {extra} more",
        args.rest_pods
    ));
    bench::create_pods(info, state_dir, "rest", &rest)?;
    bench::wait_running(info, "rest", extra, Duration::from_secs(300))?;
    step(&format!(
        "at rest: waiting {} s, then CPU over {} s",
        args.rest_seconds, args.rest_seconds
    ));
    std::thread::sleep(Duration::from_secs(args.rest_seconds));
    let rss = |pid: u32| rss_kib(pid).ok_or(format!("process {pid} is gone"));
    let (agent_rss, tailscaled_rss) = (rss(agent_pid)?, rss(tailscaled_pid)?);
    let cpu = bench::cpu_percent(
        &[agent_pid, tailscaled_pid],
        Duration::from_secs(args.rest_seconds),
    )?;
    let agent_rss_after = rss(agent_pid)?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let target_kib = 25_000_000 / 1024; // 25 MB
    Ok(vec![
        Figure {
            what: format!("agent RSS at rest, {} pods on n1", args.rest_pods),
            value: format!(
                "{:.1} MiB (6 pods: {:.1}; {} s later: {:.1})",
                mib(agent_rss),
                mib(before),
                args.rest_seconds,
                mib(agent_rss_after)
            ),
            reference: format!("tailscaled n1: {:.1} MiB", mib(tailscaled_rss)),
            ratio: format!("{:.2}", agent_rss as f64 / tailscaled_rss.max(1) as f64),
            target: format!(
                "<= 25 MB: {}",
                bench::verdict(agent_rss.max(agent_rss_after) <= target_kib)
            ),
        },
        Figure {
            what: format!("agent CPU at rest, {} s window", args.rest_seconds),
            value: format!("{:.2} % of a core", cpu[0]),
            reference: format!("tailscaled n1: {:.2} %", cpu[1]),
            ratio: if cpu[1] > 0.0 {
                format!("{:.2}", cpu[0] / cpu[1])
            } else {
                "-".into()
            },
            target: "-".into(),
        },
    ])
}

/// Per-pod identities: `--identity-pods` pods asking for one, created at
/// once on n2. Time to identity-ready (against the time to Running, the
/// same pods without the identity); PSS per identity tailscaled at rest
/// (against the node's own tailscaled); pod -> laptop throughput through
/// the pod's identity (against a plain pod on the same node through the
/// node's subnet route).
fn identities(
    args: &Args,
    info: &LabInfo,
    state_dir: &Path,
    plain: &BenchPod,
) -> Result<Vec<Figure>, String> {
    let n = args.identity_pods;
    let laptop = info.laptop.as_ref().ok_or("the lab has no laptop")?;
    let laptop_ip = *laptop
        .tailnet_ips
        .iter()
        .find(|ip| ip.is_ipv4())
        .ok_or("the laptop has no IPv4 tailnet address")?;
    let pods: Vec<(String, String)> = (0..n)
        .map(|i| (format!("bench-id-{i}"), "n2".to_owned()))
        .collect();
    step(&format!("{n} identity pods on n2"));
    let started = Instant::now();
    bench::create_pods(info, state_dir, "identity", &pods)?;
    let (mut running, mut ready) = (Vec::new(), Vec::new());
    let mut seen_running = std::collections::BTreeSet::new();
    let mut seen_ready = std::collections::BTreeSet::new();
    while seen_ready.len() < n {
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "{} of {n} identities ready after 300 s",
                seen_ready.len()
            ));
        }
        let json = info
            .kubectl(&[
                "get",
                "pods",
                "-l",
                "tailroute-bench=identity",
                "-o",
                "json",
            ])
            .map_err(|e| e.to_string())?;
        let list: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        let secs = started.elapsed().as_secs_f64();
        for pod in list["items"].as_array().into_iter().flatten() {
            let name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let conditions = pod["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let is_true = |kind: &str| {
                conditions
                    .iter()
                    .any(|c| c["type"] == kind && c["status"] == "True")
            };
            if pod["status"]["phase"] == "Running" && seen_running.insert(name.clone()) {
                running.push(secs);
            }
            if is_true("tailroute.dev/identity-ready") && seen_ready.insert(name) {
                ready.push(secs);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    step(&format!(
        "{n} identities ready; at rest for {} s",
        args.rest_seconds
    ));
    std::thread::sleep(Duration::from_secs(args.rest_seconds));
    let tailscaleds = tailroute::lab::daemon::tailscaleds_under(state_dir)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                String::from_utf8_lossy(&c).contains("nodes/n2/agent/state/identities/")
            })
        })
        .collect::<Vec<_>>();
    if tailscaleds.len() != n {
        return Err(format!(
            "{} identity tailscaleds on n2, expected {n}",
            tailscaleds.len()
        ));
    }
    let pss: Vec<f64> = tailscaleds
        .iter()
        .filter_map(|pid| bench::pss_kib(*pid))
        .map(|kib| kib as f64 / 1024.0)
        .collect();
    let node_tailscaled = cluster::processes(state_dir)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|(what, _, rss)| what == "tailscaled n2" && rss.is_some())
        .map(|(_, pid, _)| pid)
        .ok_or("tailscaled of n2 does not run")?;
    let node_pss = bench::pss_kib(node_tailscaled).unwrap_or(0) as f64 / 1024.0;
    let pss_median = bench::median(&pss).unwrap_or(0.0);
    let pss_total: f64 = pss.iter().sum();

    // Throughput to the laptop: through one identity, against a plain pod
    // on the same node through the node's subnet route (masqueraded to the
    // node's tailnet address). The identity's run must cross its own
    // tailscale0.
    let id_pod = bench::wait_running(info, "identity", n, Duration::from_secs(30))?
        .into_iter()
        .next()
        .ok_or("no identity pod")?;
    let _server = IperfServer::start(&laptop.namespace, 5201)?;
    let (through_identity, through_route) = iperf_pair(
        args.iperf_rounds,
        args.iperf_seconds,
        (&id_pod.netns, laptop_ip),
        (&plain.netns, laptop_ip),
        Some((&id_pod.netns, "tailscale0")),
    )?;
    let mut figures = vec![
        Figure {
            what: format!("identity ready, {n} pods created at once on n2"),
            value: format!(
                "median {:.1} s, last {:.1} s after kubectl apply",
                bench::median(&ready).unwrap_or(0.0),
                last(&ready)
            ),
            reference: format!(
                "Running: median {:.1} s, last {:.1} s",
                bench::median(&running).unwrap_or(0.0),
                last(&running)
            ),
            ratio: "-".into(),
            target: "-".into(),
        },
        Figure {
            what: format!("PSS per identity tailscaled, {n} on n2, at rest"),
            value: format!("median {pss_median:.1} MiB (all {n}: {pss_total:.0} MiB)"),
            reference: format!("tailscaled n2 (stock): {node_pss:.1} MiB"),
            ratio: format!("{:.2}", pss_median / node_pss.max(0.1)),
            target: format!(
                "<= 20 MB: {}",
                bench::verdict(pss_median * 1024.0 * 1024.0 <= 20e6)
            ),
        },
    ];
    figures.push(mbps_figure(
        "pod -> laptop through the pod's identity",
        "plain pod through the node's route",
        &through_identity,
        &through_route,
        None,
    ));
    Ok(figures)
}
