//! Root tier: a real caller. cnitool (libcni, built from the Go module
//! proxy by scripts/install-test-deps.sh) drives ADD, CHECK, DEL, GC and
//! STATUS through a conflist naming tailroute-bridge, and the ADD result has
//! the shape the reference bridge + host-local return for the same network.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use cni_testbed::Netns;
use common::{addrs, path, Node, PLUGIN};
use serde_json::{json, Value};

/// cnitool, from TAILROUTE_CNITOOL (set by `make test`).
fn cnitool() -> PathBuf {
    let p = std::env::var_os("TAILROUTE_CNITOOL")
        .map(PathBuf::from)
        .expect(
            "TAILROUTE_CNITOOL is not set: run `make test`, which builds cnitool and sets it \
         (or point it at a cnitool v1.3.0 binary)",
        );
    assert!(
        p.is_file(),
        "TAILROUTE_CNITOOL={} does not exist; run scripts/install-test-deps.sh",
        p.display()
    );
    p
}

/// libcni caches results in /var/lib/cni; take back what this test put there.
struct CacheGuard {
    existed: bool,
}

const CACHE: &str = "/var/lib/cni";

impl CacheGuard {
    fn new() -> Self {
        CacheGuard {
            existed: Path::new(CACHE).exists(),
        }
    }
}

impl Drop for CacheGuard {
    fn drop(&mut self) {
        if !self.existed {
            let _ = std::fs::remove_dir_all(CACHE);
            return;
        }
        for sub in ["results"] {
            if let Ok(entries) = std::fs::read_dir(Path::new(CACHE).join(sub)) {
                for e in entries.flatten() {
                    if e.file_name().to_string_lossy().starts_with("trbct") {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}

struct Cnitool<'a> {
    node: &'a Node,
    netconf_dir: PathBuf,
}

impl Cnitool<'_> {
    fn run(&self, command: &str, network: &str, pod: &Netns) -> Output {
        let plugin_dir = Path::new(PLUGIN).parent().expect("plugin dir");
        let mut cmd = self.node.ns.command(cnitool()).expect("cnitool in node");
        cmd.args([command, network, path(pod)])
            .env("NETCONFPATH", &self.netconf_dir)
            .env("CNI_PATH", format!("{}:/usr/lib/cni", plugin_dir.display()))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=0000-1111");
        cmd.output().expect("run cnitool")
    }

    fn ok(&self, command: &str, network: &str, pod: &Netns) -> String {
        let out = self.run(command, network, pod);
        assert!(
            out.status.success(),
            "cnitool {command} {network}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The structure of a result: keys and value types, array lengths, and the
/// facts a runtime relies on (which interface holds the addresses and which
/// one is in the sandbox), with addresses, MACs and names blanked out.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(o) => {
            let m: BTreeMap<String, Value> = o
                .iter()
                .map(|(k, v)| {
                    let kept = matches!(k.as_str(), "interface" | "cniVersion");
                    (k.clone(), if kept { v.clone() } else { shape(v) })
                })
                .collect();
            json!(m)
        }
        Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
        Value::String(_) => json!("string"),
        Value::Number(_) => json!("number"),
        other => other.clone(),
    }
}

fn write_conflist(dir: &Path, file: &str, list: Value) {
    std::fs::write(
        dir.join(file),
        serde_json::to_vec_pretty(&list).expect("json"),
    )
    .expect("write conflist");
}

#[test]
fn cnitool_drives_every_command_and_the_result_matches_the_reference_shape() {
    let _cache = CacheGuard::new();
    let node = Node::new("cnitool");
    let netconf_dir = node.data_dir.join("net.d");
    std::fs::create_dir_all(&netconf_dir).expect("net.d");
    let ranges_a = json!([[{"subnet": "10.124.0.0/24"}], [{"subnet": "fd00:124::/64"}]]);
    let ranges_b = json!([[{"subnet": "10.125.0.0/24"}], [{"subnet": "fd00:125::/64"}]]);
    let ranges_c = json!([[{"subnet": "10.126.0.0/24"}], [{"subnet": "fd00:126::/64"}]]);

    // tailroute-bridge at 1.1.0 (GC and STATUS) and at 1.0.0, and Debian's
    // reference plugins, which speak at most 1.0.0.
    let ours = |name: &str, version: &str, ranges: &Value, bridge: String| {
        json!({"cniVersion": version, "name": name, "plugins": [{
            "type": "tailroute-bridge", "bridge": bridge, "mtu": 1280,
            "ipam": {"ranges": ranges, "dataDir": node.data_dir.join("ipam")}
        }]})
    };
    write_conflist(
        &netconf_dir,
        "10-ours.conflist",
        ours(
            "trbct-ours",
            "1.1.0",
            &ranges_a,
            format!("{}a", node.bridge),
        ),
    );
    write_conflist(
        &netconf_dir,
        "20-ours10.conflist",
        ours(
            "trbct-ours10",
            "1.0.0",
            &ranges_b,
            format!("{}b", node.bridge),
        ),
    );
    write_conflist(
        &netconf_dir,
        "30-ref.conflist",
        json!({"cniVersion": "1.0.0", "name": "trbct-ref", "plugins": [{
            "type": "bridge", "bridge": format!("{}c", node.bridge), "isGateway": true, "isDefaultGateway": true,
            "ipMasq": false, "hairpinMode": true, "mtu": 1280,
            "ipam": {"type": "host-local", "ranges": ranges_c, "dataDir": node.data_dir.join("host-local")}
        }]}),
    );
    let tool = Cnitool {
        node: &node,
        netconf_dir,
    };

    // Every command, through libcni, at 1.1.0.
    let pod = node.pod();
    let added: Value =
        serde_json::from_str(&tool.ok("add", "trbct-ours", &pod)).expect("ADD result");
    assert_eq!(added["cniVersion"], "1.1.0");
    assert_eq!(addrs(&pod, "eth0"), ["10.124.0.2/24", "fd00:124::2/64"]);
    tool.ok("check", "trbct-ours", &pod);
    tool.ok("status", "trbct-ours", &pod);
    let record = &node_state(&node, "trbct-ours")["attachments"][0];
    assert_eq!(
        record["pod"],
        json!({"namespace": "default", "name": "web-0", "uid": "0000-1111"})
    );
    // cnitool's GC lists no valid attachment: it DELs the cached one and
    // then asks the plugin to GC everything.
    tool.ok("gc", "trbct-ours", &pod);
    assert_eq!(node_state(&node, "trbct-ours")["attachments"], json!([]));
    common::eventually("GC'd pod interface removed", || {
        addrs(&pod, "eth0").is_empty()
    });
    tool.ok("add", "trbct-ours", &pod);
    tool.ok("del", "trbct-ours", &pod);
    assert_eq!(node_state(&node, "trbct-ours")["attachments"], json!([]));
    node.wait_no_host_veths();

    // The result's shape against the reference's, same network, same version.
    let (p1, p2) = (node.pod(), node.pod());
    let ours10: Value = serde_json::from_str(&tool.ok("add", "trbct-ours10", &p1)).expect("ours");
    let reference: Value =
        serde_json::from_str(&tool.ok("add", "trbct-ref", &p2)).expect("reference");
    assert_eq!(
        shape(&ours10),
        shape(&reference),
        "\nours:      {ours10}\nreference: {reference}"
    );
    tool.ok("check", "trbct-ours10", &p1);
    tool.ok("del", "trbct-ours10", &p1);
    tool.ok("del", "trbct-ref", &p2);
    node.wait_no_host_veths();
}

fn node_state(node: &Node, network: &str) -> Value {
    let p = node.data_dir.join("ipam").join(network).join("state.json");
    serde_json::from_slice(&std::fs::read(p).unwrap_or_default())
        .unwrap_or(json!({"attachments": []}))
}
