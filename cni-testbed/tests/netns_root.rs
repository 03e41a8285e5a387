//! Root-only tests of the namespace and invocation machinery.
//!
//! They fail (never skip) when not run as root: see `require_root`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cni_testbed::{invoke, require_root, set_lo_up, unique_suffix, Netns, PluginCall};
use serde_json::json;

/// A temp dir removed on drop, for fake plugins.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("trtb-test-{}", unique_suffix()));
        fs::create_dir(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn listed(name: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn netns_is_created_isolated_and_removed_on_drop() {
    require_root();
    let ns = Netns::create("t").expect("create netns");
    let (name, path) = (ns.name().to_owned(), ns.path().to_owned());
    assert!(path.exists(), "{} missing", path.display());
    assert!(listed(&name), "{name} not in ip netns list");

    // Spawned via setns: only the namespace's own loopback is visible.
    let out = ns
        .command("ip")
        .expect("open netns")
        .args(["-j", "link", "show"])
        .output()
        .expect("run ip link inside netns");
    assert!(out.status.success(), "{out:?}");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip JSON");
    let names: Vec<&str> = links
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert_eq!(names, ["lo"]);
    assert_eq!(ns.link_names().expect("link names"), ["lo"]);

    set_lo_up(&ns).expect("lo up");
    let ping = ns
        .exec(&["ping", "-c1", "-W1", "127.0.0.1"])
        .expect("run ping");
    assert!(ping.status.success(), "{ping:?}");
    let addrs = ns
        .ip_json(&["addr", "show", "dev", "lo"])
        .expect("addr json");
    assert_eq!(addrs[0]["addr_info"][0]["local"], "127.0.0.1");
    assert!(ns.ip_json(&["addr", "show", "dev", "eth0"]).is_err());

    drop(ns);
    assert!(!path.exists(), "{} still exists", path.display());
    assert!(!listed(&name), "{name} still listed");
}

#[test]
fn panic_still_removes_netns() {
    require_root();
    let mut path = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::create("panic").expect("create netns");
        path = Some(ns.path().to_owned());
        panic!("deliberate");
    }));
    assert!(r.is_err());
    let path = path.expect("netns was created");
    assert!(!path.exists(), "{} leaked", path.display());
}

/// A fake plugin: echoes its environment and stdin, and what it sees of the
/// network, then exits with the code given in stdin's first line.
const FAKE: &str = r#"#!/bin/sh
read -r code
env | sort >&2
echo "{\"links\": $(ip -j link show), \"code\": $code}"
exit "$code"
"#;

fn fake_plugin(dir: &Path) -> PathBuf {
    let p = dir.join("fake");
    fs::write(&p, FAKE).expect("write fake plugin");
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

#[test]
fn invoke_runs_in_node_with_clean_env_and_measures() {
    require_root();
    let dir = TempDir::new();
    let plugin = fake_plugin(&dir.0);
    let node = Netns::create("node").expect("create node");
    // A marker interface that only exists in the node namespace.
    let added = std::process::Command::new("ip")
        .args([
            "-n",
            node.name(),
            "link",
            "add",
            "marker0",
            "type",
            "bridge",
        ])
        .status()
        .expect("run ip link add");
    assert!(added.success(), "ip link add marker0 failed");

    let call = PluginCall::add("c1", "/run/netns/x", "eth0", json!(null))
        .args("A=1")
        .env("EXTRA", "yes")
        .raw_stdin("3\n");
    let out = invoke(&plugin, &node, &call).expect("invoke");
    assert_eq!(out.exit_code, 3, "{out:?}");
    assert!(!out.success());
    let result = out.json().expect("stdout is JSON");
    let links: Vec<&str> = result["links"]
        .as_array()
        .expect("links")
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert_eq!(links, ["lo", "marker0"], "plugin did not run in the node");
    for want in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=c1",
        "CNI_NETNS=/run/netns/x",
        "CNI_IFNAME=eth0",
        "CNI_ARGS=A=1",
        "CNI_PATH=/usr/lib/cni",
        "EXTRA=yes",
    ] {
        assert!(out.stderr.lines().any(|l| l == want), "{want} missing");
    }
    assert!(
        !out.stderr.contains("HOME="),
        "environment leaked: {}",
        out.stderr
    );
    assert!(out.max_rss_kib > 0);
    assert!(out.elapsed.as_nanos() > 0);
}

#[test]
fn invoke_reference_version_and_large_stdin() {
    require_root();
    let node = Netns::create("node").expect("create node");
    let bridge = Path::new("/usr/lib/cni/bridge");
    assert!(
        bridge.exists(),
        "Debian's containernetworking-plugins missing"
    );
    let out = invoke(
        bridge,
        &node,
        &PluginCall::new("VERSION", json!({"cniVersion": "1.0.0"})),
    )
    .expect("invoke VERSION");
    assert!(out.success(), "{out:?}");
    let v = out.json().expect("VERSION JSON");
    assert!(v["supportedVersions"].as_array().is_some(), "{v}");

    // Bigger than a pipe buffer, for a plugin that never reads it: must not
    // deadlock.
    let big = "x".repeat(1 << 20);
    let out = invoke(
        Path::new("/bin/true"),
        &node,
        &PluginCall::new("VERSION", json!(null)).raw_stdin(&big),
    )
    .expect("invoke true");
    assert!(out.success());
    // And a plugin that echoes it back fully.
    let out = invoke(
        Path::new("/bin/cat"),
        &node,
        &PluginCall::new("VERSION", json!(null)).raw_stdin(&big),
    )
    .expect("invoke cat");
    assert_eq!(out.stdout.len(), big.len());
}

#[test]
fn hung_plugin_times_out_and_is_killed() {
    require_root();
    let node = Netns::create("node").expect("create node");
    let start = std::time::Instant::now();
    // The shell's child holds the pipes too: both must be killed.
    let marker = format!("trtb-hang-{}", unique_suffix());
    let script = format!("exec -a {marker} sleep 30 & wait\n");
    let err = invoke(
        Path::new("/bin/bash"),
        &node,
        &PluginCall::new("VERSION", json!(null))
            .raw_stdin(&script)
            .timeout(std::time::Duration::from_millis(300)),
    )
    .expect_err("must time out");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let survivors = std::process::Command::new("pgrep")
        .args(["-f", &marker])
        .output()
        .expect("run pgrep");
    assert!(
        survivors.stdout.is_empty(),
        "helper survived: {}",
        String::from_utf8_lossy(&survivors.stdout)
    );
}
