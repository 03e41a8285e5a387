//! The network configuration on stdin: parsed, checked for typos and
//! unsupported options, and validated into a [`NetConf`].

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::attachment::AttachmentKey;
use crate::env::validate_ifname;
use crate::error::{CniError, ErrorCode};
use crate::ipam::range::{Range, RangeSet};
use crate::version::CniVersion;

/// The bridge tailroute-bridge creates when the config names none.
pub const DEFAULT_BRIDGE: &str = "tailroute0";
/// Tailscale's MTU; the agent writes the real value read from tailscale0.
pub const DEFAULT_MTU: u32 = 1280;
/// On tmpfs, so a reboot cannot strand reservations.
pub const DEFAULT_DATA_DIR: &str = "/run/tailroute/bridge";

/// Tailscale's CGNAT range for device addresses (v4).
pub const TAILNET_V4: &str = "100.64.0.0/10";
/// Tailscale's ULA range for device addresses (v6).
pub const TAILNET_V6: &str = "fd7a:115c:a1e0::/48";

/// A validated tailroute-bridge network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// The version to answer in.
    pub cni_version: CniVersion,
    /// The network name; keys the IPAM store.
    pub name: String,
    /// The Linux bridge pods attach to.
    pub bridge: String,
    /// MTU of the bridge and of both veth ends.
    pub mtu: u32,
    /// Whether bridge ports reflect frames back (pods reach their own Service VIPs).
    pub hairpin: bool,
    /// Whether pods get a default route through the bridge gateway.
    pub default_route: bool,
    /// Built-in IPAM settings.
    pub ipam: IpamConf,
    /// DNS settings passed through to the result.
    pub dns: Option<Dns>,
    /// Addresses asked for by the runtime (`runtimeConfig.ips`, `args.cni.ips`).
    pub requested_ips: Vec<IpAddr>,
    /// The previous result (CHECK, DEL), still as raw JSON.
    pub prev_result: Option<Value>,
    /// GC's list of attachments to keep; `None` when the runtime sent none.
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

/// Built-in IPAM settings (`ipam` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct IpamConf {
    /// One range set per address family: each pod gets one address from each.
    pub range_sets: Vec<RangeSet>,
    /// Extra routes for pods, beyond the default route.
    pub routes: Vec<RouteConf>,
    /// Where the state file lives (one sub-directory per network).
    pub data_dir: PathBuf,
    /// Addresses or prefixes never handed out.
    pub exclude: Vec<IpNet>,
}

/// A route installed in the pod (`ipam.routes[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConf {
    /// Destination prefix.
    pub dst: IpNet,
    /// Next hop; the family's gateway when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings (`dns` in the config), returned unchanged in the result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

// Keys every CNI plugin config may carry, set by the user or injected by the runtime.
const STANDARD_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "args",
    "runtimeConfig",
    "prevResult",
    "capabilities",
    "ipam",
    "dns",
    "disableCheck",
    "disableGC",
];
const BRIDGE_KEYS: &[&str] = &[
    "bridge",
    "mtu",
    "hairpinMode",
    "isGateway",
    "isDefaultGateway",
    "ipMasq",
];
const IPAM_KEYS: &[&str] = &["type", "ranges", "routes", "dataDir", "exclude"];
const RANGE_KEYS: &[&str] = &["subnet", "rangeStart", "rangeEnd", "gateway"];

/// Options of the reference bridge/host-local that tailroute-bridge does not
/// implement, with where that job is done instead. Refused with code 2 when
/// they ask for behaviour (a value other than their default).
const NOT_IMPLEMENTED: &[(&str, &str)] = &[
    ("promiscMode", "pods are isolated by the bridge's normal forwarding; promiscuous mode is not offered"),
    ("vlan", "tailroute-bridge does not tag VLANs; the tailnet is the fabric between nodes"),
    ("vlanTrunk", "tailroute-bridge does not tag VLANs; the tailnet is the fabric between nodes"),
    ("preserveDefaultVlan", "tailroute-bridge does not tag VLANs"),
    ("macspoofchk", "MAC spoof checking is not implemented; addresses are pinned per pod instead"),
    ("enabledad", "IPv6 duplicate address detection is skipped on purpose: the built-in IPAM never hands out an address twice"),
    ("forceAddress", "the bridge always carries every range's gateway address"),
    ("disableContainerInterface", "the pod interface is always brought up"),
    ("portIsolation", "port isolation is not implemented"),
];

impl NetConf {
    /// Parse and validate the config bytes from stdin.
    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(
                ErrorCode::Decoding,
                format!("network config is not valid JSON: {e}"),
            )
            .details("tailroute-bridge reads one plugin config object on stdin")
        })?;
        let Value::Object(obj) = value else {
            return Err(CniError::new(
                ErrorCode::Decoding,
                "network config is not a JSON object",
            ));
        };
        Self::from_object(obj)
    }

    /// Only the version, for answering errors in the requested version even
    /// when the rest of the config is broken.
    pub fn peek_version(bytes: &[u8]) -> Option<CniVersion> {
        #[derive(Deserialize)]
        struct V {
            #[serde(rename = "cniVersion")]
            cni_version: String,
        }
        let v: V = serde_json::from_slice(bytes).ok()?;
        CniVersion::parse(&v.cni_version).ok()
    }

    fn from_object(obj: Map<String, Value>) -> Result<Self, CniError> {
        let cni_version = match obj.get("cniVersion") {
            Some(Value::String(s)) => CniVersion::parse(s)?,
            Some(_) => return Err(invalid("cniVersion must be a string such as \"1.1.0\"")),
            None => {
                return Err(invalid("cniVersion is missing")
                    .details("add \"cniVersion\": \"1.1.0\" (or the version your runtime speaks)"))
            }
        };
        check_keys("the plugin config", &obj, &[STANDARD_KEYS, BRIDGE_KEYS])?;
        refuse_unimplemented(&obj)?;

        let name = string_field(&obj, "name")?.ok_or_else(|| invalid("name is missing"))?;
        validate_network_name(&name)?;
        if string_field(&obj, "type")?.is_none() {
            return Err(invalid("type is missing").details("set \"type\": \"tailroute-bridge\""));
        }

        let bridge = string_field(&obj, "bridge")?.unwrap_or_else(|| DEFAULT_BRIDGE.to_owned());
        validate_ifname(&bridge).map_err(|e| {
            invalid(format!(
                "bridge name {bridge:?} is not a valid interface name"
            ))
            .details(e.details)
        })?;
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => DEFAULT_MTU,
            Some(v) => v
                .as_u64()
                .filter(|m| (68..=65535).contains(m))
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| invalid(format!("mtu {v} is not an MTU between 68 and 65535")))?,
        };
        let hairpin = bool_field(&obj, "hairpinMode")?.unwrap_or(true);
        let default_route = bool_field(&obj, "isDefaultGateway")?.unwrap_or(true);
        if bool_field(&obj, "isGateway")? == Some(false) {
            return Err(unsupported(
                "isGateway=false is not supported",
                "tailroute routes pod traffic through the node, so the gateway is always on the bridge; remove isGateway",
            ));
        }
        if bool_field(&obj, "ipMasq")? == Some(true) {
            return Err(unsupported(
                "ipMasq is not done by tailroute-bridge",
                "masquerading is done once per node by tailroute-agent's nftables table (pod traffic to the internet and to non-node tailnet devices); remove ipMasq",
            ));
        }

        let ipam = parse_ipam(obj.get("ipam"))?;
        if mtu < 1280 && ipam.range_sets.iter().any(|s| s.is_ipv6()) {
            return Err(invalid(format!(
                "mtu {mtu} is below IPv6's minimum of 1280"
            )));
        }
        let dns = match obj.get("dns") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<Dns>(v.clone())
                    .map_err(|e| invalid(format!("dns is not valid: {e}")))?,
            ),
        };

        let mut requested_ips = ips_at(&obj, &["runtimeConfig", "ips"])?;
        requested_ips.extend(ips_at(&obj, &["args", "cni", "ips"])?);

        let valid_attachments = match obj
            .get("cni.dev/valid-attachments")
            .or(obj.get("cni.dev/attachments"))
        {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value::<Vec<AttachmentKey>>(v.clone()).map_err(|e| {
                    invalid(format!(
                        "cni.dev/valid-attachments is not a list of {{containerID, ifname}}: {e}"
                    ))
                })?,
            ),
        };

        Ok(NetConf {
            cni_version,
            name,
            bridge,
            mtu,
            hairpin,
            default_route,
            ipam,
            dns,
            requested_ips,
            prev_result: obj.get("prevResult").filter(|v| !v.is_null()).cloned(),
            valid_attachments,
        })
    }

    /// The state directory of this network.
    pub fn state_dir(&self) -> PathBuf {
        self.ipam.data_dir.join(&self.name)
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

fn unsupported(msg: &str, remedy: &str) -> CniError {
    CniError::new(ErrorCode::UnsupportedField, msg).details(remedy)
}

fn string_field(obj: &Map<String, Value>, key: &str) -> Result<Option<String>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(invalid(format!("{key} is empty"))),
        Some(other) => Err(invalid(format!("{key} must be a string, not {other}"))),
    }
}

fn bool_field(obj: &Map<String, Value>, key: &str) -> Result<Option<bool>, CniError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(invalid(format!("{key} must be true or false, not {other}"))),
    }
}

/// Refuse keys nobody knows, suggesting the one that was probably meant.
/// Domain-scoped keys (`cni.dev/...`, `example.com/...`) are extension points
/// runtimes may inject, so they pass.
fn check_keys(where_: &str, obj: &Map<String, Value>, known: &[&[&str]]) -> Result<(), CniError> {
    let all = || known.iter().flat_map(|k| k.iter().copied());
    let not_implemented = |k: &str| NOT_IMPLEMENTED.iter().any(|(n, _)| *n == k);
    for key in obj.keys() {
        if key.contains('/') || all().any(|k| k == key) || not_implemented(key) {
            continue;
        }
        let hint = all()
            .filter(|k| edit_distance(&k.to_ascii_lowercase(), &key.to_ascii_lowercase()) <= 2)
            .min_by_key(|k| edit_distance(k, key))
            .map(|k| format!("did you mean {k:?}? "))
            .unwrap_or_default();
        let known_list = all().collect::<Vec<_>>().join(", ");
        return Err(invalid(format!("unknown key {key:?} in {where_}"))
            .details(format!("{hint}known keys: {known_list}")));
    }
    Ok(())
}

fn refuse_unimplemented(obj: &Map<String, Value>) -> Result<(), CniError> {
    for (key, why) in NOT_IMPLEMENTED {
        let asks_for_it = match obj.get(*key) {
            None | Some(Value::Null) | Some(Value::Bool(false)) => false,
            Some(Value::Number(n)) => n.as_u64() != Some(0),
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if asks_for_it {
            return Err(unsupported(
                &format!("{key} is not supported by tailroute-bridge"),
                why,
            ));
        }
    }
    Ok(())
}

fn validate_network_name(name: &str) -> Result<(), CniError> {
    // The name becomes a directory name, so it follows the container-id rule.
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 128;
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("network name {name:?} is not valid"))
            .details("use letters, digits, '_', '.', '-', starting with a letter or digit"))
    }
}

fn ips_at(obj: &Map<String, Value>, path: &[&str]) -> Result<Vec<IpAddr>, CniError> {
    let mut cur = obj.get(path[0]);
    for key in &path[1..] {
        cur = cur.and_then(|v| v.get(key));
    }
    let Some(v) = cur.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let where_ = path.join(".");
    let list = v
        .as_array()
        .ok_or_else(|| invalid(format!("{where_} must be a list of IP addresses")))?;
    list.iter()
        .map(|item| {
            let s = item.as_str().unwrap_or_default();
            // Conventions allow "10.1.2.3" and "10.1.2.3/24".
            let addr = s.split_once('/').map_or(s, |(a, _)| a);
            addr.parse::<IpAddr>()
                .map_err(|_| invalid(format!("{where_} entry {item} is not an IP address")))
        })
        .collect()
}

#[derive(Deserialize)]
struct RawRange {
    subnet: String,
    #[serde(rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<String>,
    gateway: Option<String>,
}

fn parse_ipam(v: Option<&Value>) -> Result<IpamConf, CniError> {
    let Some(Value::Object(ipam)) = v else {
        return Err(invalid("ipam is missing")
            .details("add \"ipam\": {\"ranges\": [[{\"subnet\": \"<this node's podCIDR>\"}]]}"));
    };
    if ipam.contains_key("subnet") {
        return Err(invalid("ipam.subnet is not supported; use ranges")
            .details("write \"ranges\": [[{\"subnet\": \"10.244.1.0/24\"}]]"));
    }
    check_keys("ipam", ipam, &[IPAM_KEYS])?;
    match ipam.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "tailroute-bridge" => {}
        Some(t) => {
            return Err(unsupported(
                &format!("ipam.type {t} is not supported"),
                "tailroute-bridge has built-in IPAM with host-local's field names; remove ipam.type and keep ranges",
            ))
        }
    }
    let raw_sets = match ipam.get("ranges") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        _ => {
            return Err(invalid("ipam.ranges is missing or empty")
                .details("list one range set per address family: [[{\"subnet\": \"10.244.1.0/24\"}], [{\"subnet\": \"fd00:10:244:1::/64\"}]]"))
        }
    };
    let mut range_sets: Vec<RangeSet> = Vec::new();
    for (i, raw_set) in raw_sets.iter().enumerate() {
        let items = raw_set
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| {
                invalid(format!(
                    "ipam.ranges[{i}] must be a non-empty list of ranges"
                ))
            })?;
        let mut ranges = Vec::new();
        for (j, item) in items.iter().enumerate() {
            let where_ = format!("ipam.ranges[{i}][{j}]");
            let obj = item
                .as_object()
                .ok_or_else(|| invalid(format!("{where_} must be an object")))?;
            check_keys(&where_, obj, &[RANGE_KEYS])?;
            let raw: RawRange = serde_json::from_value(item.clone())
                .map_err(|e| invalid(format!("{where_} is not valid: {e}")))?;
            ranges.push(parse_range(&where_, &raw)?);
        }
        let set = RangeSet::new(ranges).map_err(|m| invalid(format!("ipam.ranges[{i}]: {m}")))?;
        if range_sets.iter().any(|s| s.is_ipv6() == set.is_ipv6()) {
            return Err(invalid(format!(
                "ipam.ranges[{i}] is a second IPv{} range set",
                if set.is_ipv6() { 6 } else { 4 }
            ))
            .details("a pod gets one address per family: list at most one IPv4 and one IPv6 range set; put several subnets of one family in the same set"));
        }
        range_sets.push(set);
    }
    let all: Vec<&Range> = range_sets.iter().flat_map(|s| s.ranges()).collect();
    for (a_i, a) in all.iter().enumerate() {
        for b in &all[a_i + 1..] {
            if a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network()) {
                return Err(invalid(format!(
                    "ranges {} and {} overlap",
                    a.subnet, b.subnet
                )));
            }
        }
    }

    let routes = match ipam.get("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value::<Vec<RouteConf>>(v.clone()).map_err(|e| {
            invalid(format!("ipam.routes is not valid: {e}"))
                .details("each route is {\"dst\": \"CIDR\"} with an optional \"gw\"")
        })?,
    };
    for r in &routes {
        let v6 = r.dst.addr().is_ipv6();
        if !range_sets.iter().any(|s| s.is_ipv6() == v6) {
            return Err(invalid(format!(
                "route to {} has no IPv{} range to route from",
                r.dst,
                if v6 { 6 } else { 4 }
            )));
        }
        if r.gw.is_some_and(|gw| gw.is_ipv6() != v6) {
            return Err(invalid(format!(
                "route to {} has a gateway of the other family",
                r.dst
            )));
        }
    }

    let data_dir = match ipam.get("dataDir") {
        None | Some(Value::Null) => PathBuf::from(DEFAULT_DATA_DIR),
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(other) => {
            return Err(invalid(format!(
                "ipam.dataDir {other} must be an absolute path"
            )))
        }
    };
    let exclude = match ipam.get("exclude") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|e| {
                let s = e.as_str().unwrap_or_default();
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| invalid(format!("ipam.exclude entry {e} is not an IP or CIDR")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("ipam.exclude must be a list of IPs or CIDRs")),
    };
    Ok(IpamConf {
        range_sets,
        routes,
        data_dir,
        exclude,
    })
}

fn parse_range(where_: &str, raw: &RawRange) -> Result<Range, CniError> {
    let subnet: IpNet = raw
        .subnet
        .parse()
        .map_err(|_| invalid(format!("{where_}.subnet {:?} is not a CIDR", raw.subnet)))?;
    if subnet.network() != subnet.addr() {
        return Err(
            invalid(format!("{where_}.subnet {subnet} has host bits set"))
                .details(format!("did you mean {}?", subnet.trunc())),
        );
    }
    for tailnet in [TAILNET_V4, TAILNET_V6] {
        let tailnet: IpNet = tailnet
            .parse()
            .map_err(|_| invalid("internal: tailnet range"))?;
        if tailnet.contains(&subnet.network()) || subnet.contains(&tailnet.network()) {
            return Err(invalid(format!("{where_}.subnet {subnet} overlaps the tailnet range {tailnet}"))
                .details("tailscaled routes these addresses to tailnet devices; pick a pod network CIDR outside 100.64.0.0/10 and fd7a:115c:a1e0::/48 (kubeadm --pod-network-cidr)"));
        }
    }
    let addr = |field: &str, s: &Option<String>| -> Result<Option<IpAddr>, CniError> {
        s.as_deref()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| invalid(format!("{where_}.{field} {s:?} is not an IP address")))
            })
            .transpose()
    };
    let start = addr("rangeStart", &raw.range_start)?;
    let end = addr("rangeEnd", &raw.range_end)?;
    let gateway = addr("gateway", &raw.gateway)?;
    Range::new(subnet, start, end, gateway).map_err(|m| invalid(format!("{where_}: {m}")))
}

/// Levenshtein distance, for "did you mean" on mistyped keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests;
