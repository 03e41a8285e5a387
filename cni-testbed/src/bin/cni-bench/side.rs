//! One side of the comparison: all phases for one plugin on a fresh node.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cni_testbed::{set_lo_up, unique_suffix, Netns, PluginCall, PluginOutput};
use serde_json::Value;

use crate::checks;
use crate::interrupt::interrupted;
use crate::phase::{self, Batch};
use crate::plugin::Plugin;

/// Latencies of one phase (successful calls only, sorted) and throughput.
#[derive(Debug, Default)]
pub struct PhaseStats {
    /// Sorted per-call latencies.
    pub latencies: Vec<Duration>,
    /// Successful calls per second of wall time.
    pub per_sec: f64,
}

/// Everything measured and checked for one plugin.
#[derive(Debug, Default)]
pub struct SideReport {
    /// Serial ADD and DEL.
    pub serial_add: PhaseStats,
    /// Serial DEL.
    pub serial_del: PhaseStats,
    /// ADD with the configured number of workers.
    pub conc_add: PhaseStats,
    /// DEL with the configured number of workers.
    pub conc_del: PhaseStats,
    /// Max `ru_maxrss` over all timed invocations (KiB). Inflated by the
    /// harness: a forked child's pre-exec pages count (see `own_peak_rss_kib`).
    pub peak_rss_kib: u64,
    /// The plugin's own peak RSS (KiB): max over an untimed pass of ADDs and
    /// DELs each run under `/usr/bin/time`, a small launcher, so no pages of
    /// the harness are counted.
    pub own_peak_rss_kib: u64,
    /// Calls that did not succeed, or results/data path not as configured.
    pub failures: usize,
    /// The first few failure descriptions.
    pub failure_notes: Vec<String>,
    /// Addresses handed out twice among live attachments.
    pub duplicates: usize,
    /// Interfaces or reservations left after DEL.
    pub leftovers: Vec<String>,
    /// After the serial / concurrent DEL phase: ms until the node had no
    /// pod links left (tailroute-bridge deletes links in the background).
    pub teardown_ms: [f64; 2],
    /// (files, bytes) in dataDir at the end.
    pub data_dir_listing: (usize, u64),
}

const MAX_NOTES: usize = 3;

impl SideReport {
    fn fail(&mut self, note: String) {
        self.failures += 1;
        if self.failure_notes.len() < MAX_NOTES {
            self.failure_notes.push(note);
        }
    }
}

/// A fresh tmpfs for the IPAM state, unmounted and removed on drop.
///
/// Both sides get the same kind of dataDir: tmpfs, which is where
/// tailroute-bridge keeps its state by default (`/run`). The reference's
/// default (`/var/lib/cni`) is on disk, so this only ever helps the reference.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<TempDir> {
        let p = std::env::temp_dir().join(format!("trtb-bench-{}", unique_suffix()));
        std::fs::create_dir(&p)?;
        let dir = TempDir(p);
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs"])
            .arg(&dir.0)
            .status()?;
        if !mounted.success() {
            return Err(io::Error::other(format!(
                "mounting a tmpfs on {} failed",
                dir.0.display()
            )));
        }
        Ok(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What every call of one side shares.
struct Setup<'a> {
    plugin: &'a Plugin,
    node: Netns,
    bridge: String,
    config: Value,
    pods: &'a [Netns],
}

/// Runs serial then concurrent ADD/DEL phases of `plugin` against `pods`
/// (which must have no `eth0`), on a fresh node namespace with a fresh
/// bridge and IPAM directory, all removed before returning.
pub fn run(plugin: &Plugin, pods: &[Netns], concurrency: usize) -> io::Result<SideReport> {
    let node = Netns::create("node")?;
    set_lo_up(&node)?;
    let data_dir = TempDir::new()?;
    let bridge = format!("trb-{}", unique_suffix());
    let config = plugin.config(&bridge, &data_dir.0);
    plugin.warm_up(&node)?;
    let s = Setup {
        plugin,
        node,
        bridge,
        config,
        pods,
    };

    let mut rep = SideReport::default();
    for (label, workers) in [("serial", 1), ("concurrent", concurrency)] {
        let (add, results) = add_phase(&s, &mut rep, label, workers)?;
        let del = del_phase(&s, &mut rep, label, workers, &results)?;
        if label == "serial" {
            (rep.serial_add, rep.serial_del) = (add, del);
        } else {
            (rep.conc_add, rep.conc_del) = (add, del);
        }
    }
    rep.own_peak_rss_kib = own_peak_rss(&s)?;
    rep.data_dir_listing = checks::listing(&data_dir.0);
    Ok(rep)
}

/// Pods in the untimed peak-RSS pass.
const RSS_PASS: usize = 10;

/// ADD then DEL of a few pods, each under `/usr/bin/time -f %M`, which
/// waits for the plugin itself and so reports its own peak (plus whatever it
/// runs, such as host-local). Returns the largest, in KiB.
fn own_peak_rss(s: &Setup) -> io::Result<u64> {
    let out_file = std::env::temp_dir().join(format!("trtb-rss-{}", unique_suffix()));
    let mut peak = 0;
    let n = RSS_PASS.min(s.pods.len());
    for cmd in ["ADD", "DEL"] {
        for i in 0..n {
            let argv = [
                std::ffi::OsStr::new(RSS_LAUNCHER),
                "-f".as_ref(),
                "%M".as_ref(),
                "-o".as_ref(),
                out_file.as_os_str(),
                s.plugin.binary.as_os_str(),
            ];
            let out = cni_testbed::invoke_argv(&argv, &s.node, &call(s, cmd, i, s.config.clone()))?;
            let rss = std::fs::read_to_string(&out_file).unwrap_or_default();
            let _ = std::fs::remove_file(&out_file);
            if !out.success() {
                return Err(io::Error::other(format!(
                    "{cmd} under {RSS_LAUNCHER} failed: {}{}",
                    out.stdout, out.stderr
                )));
            }
            peak = peak.max(
                rss.trim()
                    .lines()
                    .last()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
            );
        }
    }
    // Let DEL's background link deletion finish before the node goes.
    let started = std::time::Instant::now();
    while !checks::node_leftovers(&s.node, &s.bridge)?.is_empty()
        && started.elapsed().as_secs() < 10
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(peak)
}

/// GNU time (Debian package `time`).
pub const RSS_LAUNCHER: &str = "/usr/bin/time";

fn pod_path(pod: &Netns) -> String {
    pod.path().to_string_lossy().into_owned()
}

/// CNI_ARGS as containerd and CRI-O pass them for a kubelet pod. The
/// leading `IgnoreUnknown=1` is theirs too: without it the reference plugins
/// reject the K8S_* keys ("ARGS: unknown args").
fn cni_args(i: usize) -> String {
    format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i};K8S_POD_UID=00000000-0000-4000-8000-{i:012x}")
}

fn call(s: &Setup, cmd: &str, i: usize, config: Value) -> PluginCall {
    PluginCall::attachment(
        cmd,
        &format!("bench-{i}"),
        &pod_path(&s.pods[i]),
        "eth0",
        config,
    )
    .args(&cni_args(i))
    .cni_path(&s.plugin.cni_path)
}

fn run_batch(s: &Setup, calls: &[PluginCall], workers: usize) -> io::Result<Batch> {
    let batch = phase::run(&s.plugin.binary, &s.node, calls, workers);
    if interrupted() {
        return Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"));
    }
    Ok(batch)
}

/// Records latencies, RSS and failures; returns each call's output if it
/// succeeded.
fn tally(
    rep: &mut SideReport,
    what: &str,
    batch: Batch,
) -> (PhaseStats, Vec<Option<PluginOutput>>) {
    let mut lat = Vec::new();
    let mut ok = Vec::new();
    for (i, r) in batch.results.into_iter().enumerate() {
        match r {
            Ok(out) if out.success() => {
                rep.peak_rss_kib = rep.peak_rss_kib.max(out.max_rss_kib);
                lat.push(out.elapsed);
                ok.push(Some(out));
            }
            Ok(out) => {
                rep.peak_rss_kib = rep.peak_rss_kib.max(out.max_rss_kib);
                rep.fail(format!(
                    "{what} bench-{i}: exit {}\n  stdout: {}\n  stderr: {}",
                    out.exit_code,
                    out.stdout.trim(),
                    out.stderr.trim()
                ));
                ok.push(None);
            }
            Err(e) => {
                rep.fail(format!("{what} bench-{i}: harness error: {e}"));
                ok.push(None);
            }
        }
    }
    let per_sec = lat.len() as f64 / batch.wall.as_secs_f64().max(f64::MIN_POSITIVE);
    lat.sort_unstable();
    let stats = PhaseStats {
        latencies: lat,
        per_sec,
    };
    (stats, ok)
}

fn add_phase(
    s: &Setup,
    rep: &mut SideReport,
    label: &str,
    workers: usize,
) -> io::Result<(PhaseStats, Vec<Option<Value>>)> {
    let calls: Vec<_> = (0..s.pods.len())
        .map(|i| call(s, "ADD", i, s.config.clone()))
        .collect();
    let batch = run_batch(s, &calls, workers)?;
    let (stats, outs) = tally(rep, &format!("{label} ADD"), batch);

    let mut results = Vec::with_capacity(outs.len());
    let mut all_ips = Vec::new();
    for (i, out) in outs.into_iter().enumerate() {
        let Some(out) = out else {
            results.push(None);
            continue;
        };
        let Some(json) = out.json() else {
            rep.fail(format!(
                "{label} ADD bench-{i}: result is not JSON: {}",
                out.stdout
            ));
            results.push(None);
            continue;
        };
        let ips = checks::result_ips(&json);
        if ips.is_empty() || !ips.iter().all(|ip| checks::in_subnet(ip)) {
            rep.fail(format!("{label} ADD bench-{i}: bad ips in result: {json}"));
        }
        all_ips.extend(ips);
        results.push(Some(json));
    }
    rep.duplicates += checks::duplicates(&all_ips);

    // Check one attachment's data path once per phase: not timed.
    let live = results.iter().filter(|r| r.is_some()).count();
    if let Some((i, json)) = results
        .iter()
        .enumerate()
        .find_map(|(i, r)| Some((i, r.as_ref()?)))
    {
        for p in checks::data_path(&s.node, &s.bridge, &s.pods[i], json, live) {
            rep.fail(format!("{label} ADD bench-{i}: {p}"));
        }
    }
    Ok((stats, results))
}

fn del_phase(
    s: &Setup,
    rep: &mut SideReport,
    label: &str,
    workers: usize,
    add_results: &[Option<Value>],
) -> io::Result<PhaseStats> {
    // Like libcni, pass the cached ADD result as prevResult when there is one.
    let calls: Vec<_> = (0..s.pods.len())
        .map(|i| {
            let mut conf = s.config.clone();
            if let (Some(prev), Some(obj)) = (&add_results[i], conf.as_object_mut()) {
                obj.insert("prevResult".into(), prev.clone());
            }
            call(s, "DEL", i, conf)
        })
        .collect();
    let batch = run_batch(s, &calls, workers)?;
    let (stats, _) = tally(rep, &format!("{label} DEL"), batch);

    // A link still up after DEL would be a pod still on the bridge.
    let up = checks::node_links_up(&s.node, &s.bridge)?;
    rep.leftovers.extend(
        up.into_iter()
            .map(|l| format!("after {label} DEL: {l} still up")),
    );
    // Links may be deleted after DEL returns: wait (bounded) and say how long.
    let started = std::time::Instant::now();
    while !checks::node_leftovers(&s.node, &s.bridge)?.is_empty()
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    rep.teardown_ms[usize::from(label != "serial")] = started.elapsed().as_secs_f64() * 1000.0;
    let data_dir = s.config["ipam"]["dataDir"].as_str().unwrap_or_default();
    let mut left = checks::node_leftovers(&s.node, &s.bridge)?;
    left.extend(checks::ipam_leftovers(s.plugin.kind, Path::new(data_dir)));
    rep.leftovers
        .extend(left.into_iter().map(|l| format!("after {label} DEL: {l}")));
    Ok(stats)
}
