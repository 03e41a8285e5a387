//! Correctness checks: addresses handed out, the data path plugged as
//! configured, and nothing left behind after DEL.

use std::collections::HashSet;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use cni_testbed::Netns;
use serde_json::Value;

use crate::plugin::{Kind, MTU, NETWORK};

/// The IPv4 addresses (without prefix length) in a CNI result's `ips`.
pub fn result_ips(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|ip| ip["address"].as_str())
                .map(|a| a.split('/').next().unwrap_or(a).to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// True if `ip` lies in the bench subnet 10.99.0.0/16.
pub fn in_subnet(ip: &str) -> bool {
    ip.parse::<Ipv4Addr>()
        .is_ok_and(|a| a.octets()[..2] == [10, 99])
}

/// How many addresses in `ips` repeat an earlier one (all are live
/// attachments at the same time, so any repeat is a double allocation).
pub fn duplicates<'a>(ips: impl IntoIterator<Item = &'a String>) -> usize {
    let mut seen = HashSet::new();
    ips.into_iter().filter(|ip| !seen.insert(*ip)).count()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// Checks one live attachment (`result` is its ADD result) like a reviewer
/// would by hand: the pod's `eth0` has the result's first address and MTU
/// 1280, the result's gateway is an address on the bridge, and the bridge
/// has MTU 1280 and exactly `live_ports` ports, all in hairpin mode.
/// Returns the problems found.
pub fn data_path(
    node: &Netns,
    bridge: &str,
    pod: &Netns,
    result: &Value,
    live_ports: usize,
) -> Vec<String> {
    let ip = result_ips(result).into_iter().next().unwrap_or_default();
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let q = |ns: &Netns, args: &[&str]| ns.ip_json(args).unwrap_or(Value::Null);

    let eth0 = q(pod, &["addr", "show", "dev", "eth0"]);
    let eth0 = &eth0[0];
    check(
        eth0["mtu"] == MTU,
        format!("pod eth0 mtu {} != {MTU}", eth0["mtu"]),
    );
    let has_ip = eth0["addr_info"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| str_field(x, "local") == ip));
    check(
        has_ip,
        format!("pod eth0 lacks {ip}: {}", eth0["addr_info"]),
    );

    let br = q(node, &["addr", "show", "dev", bridge]);
    let br = &br[0];
    check(
        br["mtu"] == MTU,
        format!("bridge mtu {} != {MTU}", br["mtu"]),
    );
    let gw: Vec<&str> = br["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| str_field(x, "family") == "inet")
                .map(|x| str_field(x, "local"))
                .collect()
        })
        .unwrap_or_default();
    check(
        gw.iter().any(|g| in_subnet(g)),
        format!("bridge has no gateway address in the subnet: {gw:?}"),
    );
    // The config asks for no routes, so the pod has no default route; the
    // result's gateway must still be the address on the bridge.
    let gateways: Vec<&str> = result["ips"]
        .as_array()
        .map(|a| a.iter().map(|x| str_field(x, "gateway")).collect())
        .unwrap_or_default();
    check(
        !gateways.is_empty() && gateways.iter().all(|g| gw.contains(g)),
        format!("result gateways {gateways:?}, bridge has {gw:?}"),
    );

    let ports = q(node, &["-d", "link", "show", "master", bridge]);
    let ports = ports.as_array().cloned().unwrap_or_default();
    check(
        ports.len() == live_ports,
        format!("bridge has {} ports, expected {live_ports}", ports.len()),
    );
    let no_hairpin = ports
        .iter()
        .filter(|p| p["linkinfo"]["info_slave_data"]["hairpin"] != true)
        .count();
    check(
        no_hairpin == 0,
        format!("{no_hairpin} bridge ports without hairpin"),
    );
    problems
}

/// Interfaces in the node other than `lo` and the bridge: after every DEL
/// there must be none (a leftover is typically a host-side veth).
pub fn node_leftovers(node: &Netns, bridge: &str) -> io::Result<Vec<String>> {
    Ok(node
        .link_names()?
        .into_iter()
        .filter(|n| n != "lo" && n != bridge)
        .map(|n| format!("interface {n} in node"))
        .collect())
}

/// Pod links in the node that are still administratively up.
pub fn node_links_up(node: &Netns, bridge: &str) -> io::Result<Vec<String>> {
    let links = node.ip_json(&["link", "show"])?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            let name = l["ifname"].as_str().unwrap_or_default();
            name != "lo"
                && name != bridge
                && l["flags"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == "UP"))
        })
        .map(|l| format!("interface {}", l["ifname"].as_str().unwrap_or_default()))
        .collect())
}

/// Addresses still reserved in `data_dir` after every DEL.
///
/// host-local: one file per reserved IP under `<dataDir>/<network>/` (its
/// `lock` and `last_reserved_ip.*` files are bookkeeping, not leaks).
/// tailroute: `<dataDir>/<network>/state.json` with an `attachments` array;
/// clean if the file is absent or the array empty.
pub fn ipam_leftovers(kind: Kind, data_dir: &Path) -> Vec<String> {
    let dir = data_dir.join(NETWORK);
    match kind {
        Kind::Reference => std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.parse::<std::net::IpAddr>().is_ok())
                    .map(|ip| format!("host-local still reserves {ip}"))
                    .collect()
            })
            .unwrap_or_default(),
        Kind::Tailroute => {
            let path = dir.join("state.json");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
                Err(e) => return vec![format!("{}: {e}", path.display())],
            };
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => match v["attachments"].as_array() {
                    Some(a) => a.iter().map(|x| format!("still attached: {x}")).collect(),
                    None => vec![format!("{}: no attachments array", path.display())],
                },
                Err(e) => vec![format!("{}: unparsable ({e})", path.display())],
            }
        }
    }
}

/// Files and bytes under `dir`, recursively: informational, to see how
/// much state each IPAM keeps.
pub fn listing(dir: &Path) -> (usize, u64) {
    let mut acc = (0, 0);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(Result::ok) {
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    let (f, b) = listing(&e.path());
                    acc = (acc.0 + f, acc.1 + b);
                }
                Ok(_) => {
                    let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                    acc = (acc.0 + 1, acc.1 + len);
                }
                Err(_) => {}
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ips_and_duplicates() {
        let r = json!({"ips": [{"address": "10.99.0.2/16"}, {"address": "10.99.0.3/16"}]});
        let ips = result_ips(&r);
        assert_eq!(ips, ["10.99.0.2", "10.99.0.3"]);
        assert!(ips.iter().all(|i| in_subnet(i)));
        assert!(!in_subnet("10.98.0.1"));
        let all = vec!["a".to_string(), "b".into(), "a".into(), "a".into()];
        assert_eq!(duplicates(&all), 2);
        assert!(result_ips(&json!({})).is_empty());
    }

    /// A scratch dataDir, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let p = std::env::temp_dir().join(format!("trtb-chk-{}", cni_testbed::unique_suffix()));
            std::fs::create_dir_all(p.join(NETWORK)).expect("create scratch dir");
            Scratch(p)
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.0.join(NETWORK).join(name), text).expect("write scratch file");
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn host_local_bookkeeping_is_not_a_leak() {
        let d = Scratch::new();
        d.write("lock", "");
        d.write("last_reserved_ip.0", "10.99.0.9");
        assert!(ipam_leftovers(Kind::Reference, &d.0).is_empty());
        d.write("10.99.0.5", "bench-1\neth0");
        assert_eq!(ipam_leftovers(Kind::Reference, &d.0).len(), 1);
        assert_eq!(listing(&d.0).0, 3);
    }

    #[test]
    fn tailroute_state_file() {
        let d = Scratch::new();
        assert!(
            ipam_leftovers(Kind::Tailroute, &d.0).is_empty(),
            "absent is clean"
        );
        d.write("state.json", r#"{"attachments": []}"#);
        assert!(ipam_leftovers(Kind::Tailroute, &d.0).is_empty());
        d.write("state.json", r#"{"attachments": [{"ip": "10.99.0.2"}]}"#);
        assert_eq!(ipam_leftovers(Kind::Tailroute, &d.0).len(), 1);
        d.write("state.json", "{garbage");
        assert_eq!(ipam_leftovers(Kind::Tailroute, &d.0).len(), 1);
    }
}
