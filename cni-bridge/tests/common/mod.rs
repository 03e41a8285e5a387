//! A throwaway node for the root test tiers: its own network namespace (the
//! "host" the bridge lives in), its own IPAM data directory, and helpers to
//! call tailroute-bridge the way a runtime does. Everything is removed on
//! drop, also when a test fails.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};

use cni_testbed::{invoke, require_root, unique_suffix, Netns, PluginCall, PluginOutput};
use serde_json::{json, Value};

/// The plugin under test, built by cargo for this test run.
pub const PLUGIN: &str = env!("CARGO_BIN_EXE_tailroute-bridge");

/// The network name every test uses.
pub const NETWORK: &str = "it";

/// A node: namespace + data dir + bridge name.
pub struct Node {
    /// The node's network namespace.
    pub ns: Netns,
    /// The bridge name (unique per test, 15 bytes max).
    pub bridge: String,
    /// The IPAM data directory.
    pub data_dir: PathBuf,
}

impl Node {
    /// A fresh node; panics (fails the test) when not root.
    pub fn new(tag: &str) -> Node {
        require_root();
        // Namespaces of an earlier run that was killed outright (no Drop ran):
        // only those whose creating process is gone.
        let _ = cni_testbed::reap_stale();
        let ns = Netns::create(tag).expect("create node netns");
        let suffix = unique_suffix();
        let data_dir = std::env::temp_dir().join(format!("trb-it-{suffix}"));
        Node {
            ns,
            bridge: format!("trb{suffix}"),
            data_dir,
        }
    }

    /// A pod namespace.
    pub fn pod(&self) -> Netns {
        Netns::create("pod").expect("create pod netns")
    }

    /// The config for this node with the given `ipam.ranges`.
    pub fn conf(&self, version: &str, ranges: Value) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "tailroute-bridge",
            "bridge": self.bridge,
            "mtu": 1280,
            "ipam": {"ranges": ranges, "dataDir": self.data_dir},
        })
    }

    /// An IPv4 config at 1.1.0.
    pub fn v4(&self) -> Value {
        self.conf("1.1.0", json!([[{"subnet": "10.123.0.0/24"}]]))
    }

    /// Run a call of the plugin inside the node namespace.
    pub fn call(&self, call: &PluginCall) -> PluginOutput {
        invoke(Path::new(PLUGIN), &self.ns, call).expect("invoke tailroute-bridge")
    }

    /// ADD `id` into `pod` as `ifname`, asserting success; returns the result.
    pub fn add(&self, conf: &Value, id: &str, pod: &Netns, ifname: &str) -> Value {
        let out = self.call(&PluginCall::add(id, path(pod), ifname, conf.clone()));
        assert!(
            out.success(),
            "ADD {id} failed: {} {}",
            out.stdout,
            out.stderr
        );
        out.json().expect("ADD result is JSON")
    }

    /// DEL, asserting success.
    pub fn del(&self, conf: &Value, id: &str, netns: &str, ifname: &str) {
        let out = self.call(&PluginCall::del(id, netns, ifname, conf.clone()));
        assert!(
            out.success(),
            "DEL {id} failed: {} {}",
            out.stdout,
            out.stderr
        );
    }

    /// The state file as JSON (an empty state when absent).
    pub fn state(&self) -> Value {
        let path = self.data_dir.join(NETWORK).join("state.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).expect("state.json is JSON"),
            Err(_) => json!({"attachments": []}),
        }
    }

    /// Addresses reserved in the store.
    pub fn reserved(&self) -> Vec<String> {
        self.state()["attachments"]
            .as_array()
            .map(|a| {
                a.iter()
                    .flat_map(|r| r["ips"].as_array().cloned().unwrap_or_default())
                    .filter_map(|ip| ip.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Host veths this plugin created that exist in the node namespace.
    pub fn host_veths(&self) -> Vec<String> {
        self.ns
            .link_names()
            .expect("list links")
            .into_iter()
            .filter(|n| n.starts_with("trv"))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// A namespace's path as CNI_NETNS wants it.
pub fn path(ns: &Netns) -> &str {
    ns.path().to_str().expect("netns path is UTF-8")
}

/// The IPv4/IPv6 addresses (with prefix) on `ifname` in `ns`, link-local excluded.
pub fn addrs(ns: &Netns, ifname: &str) -> Vec<String> {
    let v = ns
        .ip_json(&["addr", "show", "dev", ifname])
        .unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

/// `ip -d link show dev NAME` in `ns`, first entry.
pub fn link_details(ns: &Netns, name: &str) -> Value {
    ns.ip_json(&["-d", "link", "show", "dev", name])
        .expect("ip link")[0]
        .clone()
}

/// A conf with a `prevResult`.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// Ping `dst` from `ns` once; true when answered.
pub fn ping(ns: &Netns, dst: &str) -> bool {
    let flag = if dst.contains(':') { "-6" } else { "-4" };
    ns.exec(&["ping", flag, "-c", "1", "-W", "2", dst])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// The bare address of `ips[i]` in a result.
pub fn result_ip(result: &Value, i: usize) -> String {
    let a = result["ips"][i]["address"].as_str().expect("address");
    a.split('/').next().unwrap_or(a).to_owned()
}

/// Wait up to 5 s for `cond`; DEL leaves the kernel's slow link deletion to
/// a detached process, so "the link is gone" is eventually true, not at once.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 5 s: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Node {
    /// Wait until no host veth of this plugin is left in the node.
    pub fn wait_no_host_veths(&self) {
        eventually("every host veth deleted", || self.host_veths().is_empty());
    }

    /// Host veths that are up (DEL must never leave one up). A veth that
    /// vanishes between the listing and the look (DEL hands the kernel's
    /// slow link deletion to a detached process) is not up.
    pub fn up_host_veths(&self) -> Vec<String> {
        self.host_veths()
            .into_iter()
            .filter(
                |v| match self.ns.ip_json(&["-d", "link", "show", "dev", v]) {
                    Ok(links) => links[0]["flags"]
                        .as_array()
                        .is_some_and(|f| f.contains(&json!("UP"))),
                    Err(e) => {
                        assert!(!self.host_veths().contains(v), "ip link {v}: {e}");
                        false
                    }
                },
            )
            .collect()
    }
}
