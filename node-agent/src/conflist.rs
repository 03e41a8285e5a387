//! The CNI network configuration the agent writes for tailroute-bridge.
//!
//! The runtime (containerd, CRI-O, the lab kubelet) reports the node's
//! network as not ready until a conflist exists, so writing it is the
//! agent's "this node can take pods" signal: it is written only once the
//! node's podCIDR is known and its datapath is in place, through a
//! temporary file and a rename so the runtime never reads half of one, and
//! rewritten only when its content changes.

use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde_json::json;

use crate::route_ledger::write_atomically;

/// The CNI network name (and the IPAM store's key in tailroute-bridge).
pub const NETWORK_NAME: &str = "tailroute";
/// The CNI version the conflist declares.
pub const CNI_VERSION: &str = "1.1.0";

/// What goes into the conflist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflistSpec {
    /// The bridge pods attach to.
    pub bridge: String,
    /// The pod interfaces' MTU (tailscale0's, normally).
    pub mtu: u32,
    /// This node's podCIDR(s), one IPAM range set each (dual-stack: two).
    pub pod_cidrs: Vec<IpNet>,
    /// tailroute-bridge's data directory.
    pub data_dir: PathBuf,
    /// Whether to chain the reference `portmap` plugin (hostPort support).
    pub portmap: bool,
}

/// Renders the conflist, as the runtime will read it.
pub fn render(spec: &ConflistSpec) -> Vec<u8> {
    let ranges: Vec<_> = spec
        .pod_cidrs
        .iter()
        .map(|cidr| json!([{ "subnet": cidr.to_string() }]))
        .collect();
    let mut plugins = vec![json!({
        "type": "tailroute-bridge",
        "bridge": spec.bridge,
        "mtu": spec.mtu,
        "hairpinMode": true,
        "isDefaultGateway": true,
        "capabilities": { "ips": true },
        "ipam": {
            "ranges": ranges,
            "dataDir": spec.data_dir,
        },
    })];
    if spec.portmap {
        plugins.push(json!({
            "type": "portmap",
            "snat": true,
            "capabilities": { "portMappings": true },
        }));
    }
    let conflist = json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "plugins": plugins,
    });
    let mut bytes = serde_json::to_vec_pretty(&conflist).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Writes the conflist to `path` unless it already has exactly this
/// content. Returns whether the file changed.
pub fn write(path: &Path, spec: &ConflistSpec) -> std::io::Result<bool> {
    let body = render(spec);
    match std::fs::read(path) {
        Ok(existing) if existing == body => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    write_atomically(path, &body)?;
    Ok(true)
}

/// Removes the conflist. Returns whether there was one.
pub fn remove(path: &Path) -> std::io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tempdir;
    use serde_json::Value;

    fn spec(cidrs: &[&str]) -> ConflistSpec {
        ConflistSpec {
            bridge: "tailroute0".to_owned(),
            mtu: 1280,
            pod_cidrs: cidrs.iter().map(|c| c.parse().expect("cidr")).collect(),
            data_dir: "/run/tailroute/bridge".into(),
            portmap: false,
        }
    }

    /// The plugin's own parser accepts what the agent writes, with the
    /// fields the runtime injects into each plugin of a list.
    #[test]
    fn tailroute_bridge_accepts_the_rendered_config() {
        for cidrs in [
            &["10.244.1.0/24"][..],
            &["10.244.1.0/24", "fd00:10:244:1::/64"],
        ] {
            let conflist: Value = serde_json::from_slice(&render(&spec(cidrs))).expect("json");
            let mut plugin = conflist["plugins"][0].clone();
            plugin["cniVersion"] = conflist["cniVersion"].clone();
            plugin["name"] = conflist["name"].clone();
            let bytes = serde_json::to_vec(&plugin).expect("json");
            let conf = tailroute_bridge::config::NetConf::parse(&bytes)
                .unwrap_or_else(|e| panic!("tailroute-bridge refused the conflist: {e:?}"));
            assert_eq!(conf.mtu, 1280);
            assert_eq!(conf.bridge, "tailroute0");
            assert_eq!(conf.ipam.range_sets.len(), cidrs.len());
        }
    }

    #[test]
    fn portmap_is_chained_when_asked() {
        let mut s = spec(&["10.244.1.0/24"]);
        s.portmap = true;
        let conflist: Value = serde_json::from_slice(&render(&s)).expect("json");
        assert_eq!(conflist["plugins"][1]["type"], "portmap");
        assert_eq!(conflist["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn writes_only_on_change_and_leaves_no_temporary_file() {
        let dir = tempdir();
        let path = dir.path().join("net.d/10-tailroute.conflist");
        assert!(write(&path, &spec(&["10.244.1.0/24"])).expect("write"));
        assert!(!write(&path, &spec(&["10.244.1.0/24"])).expect("rewrite"));
        assert!(write(&path, &spec(&["10.244.2.0/24"])).expect("change"));
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("10.244.2.0/24"), "{text}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("net.d"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec!["10-tailroute.conflist"]);
        assert!(remove(&path).expect("remove"));
        assert!(!remove(&path).expect("remove again"));
    }
}
