//! cni-bench: tailroute-bridge vs the reference bridge + host-local, side by
//! side, in one run, on the same network configuration.
//!
//! Everything happens in throwaway network namespaces (one node per plugin,
//! N shared pods), all deleted on exit, on error and on Ctrl-C. Exits
//! non-zero on any failed call, duplicate IP or leftover; performance targets
//! are only reported (MET / MISSED).

mod args;
mod checks;
mod interrupt;
mod phase;
mod plugin;
mod report;
mod side;

use std::process::ExitCode;
use std::time::Instant;

use cni_testbed::{is_root, reap_stale, Netns};

use crate::args::Only;
use crate::plugin::{Plugin, MTU, SUBNET};

fn main() -> ExitCode {
    let args = match args::parse(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            println!("{}", args::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cni-bench: {e}\n\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    // All guards live inside `run`, so they are dropped before we exit.
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            eprintln!("cni-bench: interrupted; namespaces removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("cni-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn machine_facts() -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            Some(
                l.strip_prefix("model name")?
                    .trim_start_matches([' ', '\t', ':'])
                    .to_owned(),
            )
        })
        .unwrap_or_else(|| "unknown".into());
    format!("nproc={nproc}, kernel {}, cpu: {cpu}", kernel.trim())
}

/// Returns Ok(true) if every correctness check passed.
fn run(args: &args::Args) -> std::io::Result<bool> {
    if !is_root() {
        return Err(std::io::Error::other(
            "must run as root (creates network namespaces)",
        ));
    }
    interrupt::install();
    for name in reap_stale()? {
        eprintln!("removed stale namespace {name} from a dead run");
    }
    let mut plugins = [None, None];
    if args.only != Only::Tailroute {
        plugins[0] = Some(Plugin::reference(&args.reference_dir));
    }
    if args.only != Only::Reference {
        plugins[1] = Some(Plugin::tailroute(&args.plugin));
    }
    for p in plugins.iter().flatten() {
        for f in p.required_files() {
            if !f.is_file() {
                let hint = match p.kind {
                    plugin::Kind::Tailroute => {
                        " (build it: cargo build --release -p tailroute-bridge, or pass --only reference)"
                    }
                    plugin::Kind::Reference => " (apt install containernetworking-plugins)",
                };
                return Err(std::io::Error::other(format!(
                    "{} not found{hint}",
                    f.display()
                )));
            }
        }
    }

    println!("cni-bench: tailroute-bridge vs reference bridge + host-local");
    println!("machine: {}", machine_facts());
    println!(
        "params: N={} per phase, concurrency={}, IPv4 {SUBNET}, MTU {MTU}, hairpin on, gateway on bridge, CNI_IFNAME=eth0",
        args.n, args.concurrency
    );
    for p in plugins.iter().flatten() {
        println!(
            "  {}: {} (CNI_PATH={})",
            p.label(),
            p.binary.display(),
            p.cni_path
        );
    }
    println!(
        "phases per plugin: serial N ADD, N DEL; then C workers N ADD, N DEL (DEL gets prevResult)"
    );

    let t = Instant::now();
    let pods = (0..args.n)
        .map(|_| {
            if interrupt::interrupted() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Interrupted,
                    "interrupted",
                ));
            }
            Netns::create("pod")
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    eprintln!(
        "created {} pod namespaces in {:.1?} (not timed)",
        pods.len(),
        t.elapsed()
    );

    let mut reports = [None, None];
    for (slot, p) in plugins.iter().enumerate() {
        let Some(p) = p else { continue };
        eprintln!("running {} ...", p.label());
        let t = Instant::now();
        reports[slot] = Some(side::run(p, &pods, args.concurrency)?);
        eprintln!("{} done in {:.1?}", p.label(), t.elapsed());
    }
    let floor = rss_floor(&pods)?;
    drop(pods);

    println!();
    let (met, evaluated) =
        report::print([reports[0].as_ref(), reports[1].as_ref()], args.concurrency);
    println!();
    let mut clean = true;
    for (p, r) in plugins.iter().zip(&reports) {
        if let (Some(p), Some(r)) = (p, r) {
            report::print_problems(p.label(), r);
            clean &= r.failures == 0 && r.duplicates == 0 && r.leftovers.is_empty();
        }
    }
    if evaluated > 0 {
        println!("performance targets: {met}/{evaluated} MET");
    } else {
        println!("performance targets: n/a (needs both sides)");
    }
    println!(
        "peak RSS, own: each plugin under {} (floor: /bin/true measures {floor} KiB); \
         ru_maxrss in runs also counts the forked harness's pages until exec",
        side::RSS_LAUNCHER
    );
    println!("correctness: {}", if clean { "OK" } else { "FAILED" });
    Ok(clean)
}

/// What the launcher itself reports for a child that only execs /bin/true.
fn rss_floor(pods: &[cni_testbed::Netns]) -> std::io::Result<u64> {
    let node = pods
        .first()
        .ok_or_else(|| std::io::Error::other("no pod namespaces"))?;
    let out = node
        .command(side::RSS_LAUNCHER)?
        .args(["-f", "%M", "/bin/true"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr);
    Ok(text
        .trim()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0))
}
