//! The ADD result, and its encoding in each CNI version.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::Dns;
use crate::error::{CniError, ErrorCode};
use crate::version::CniVersion;

/// An interface in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Link name.
    pub name: String,
    /// MAC address, lower-case hex with colons.
    pub mac: String,
    /// MTU (reported from 1.1.0 on).
    pub mtu: u32,
    /// The pod namespace path, for the pod's own interface.
    pub sandbox: Option<String>,
}

/// An address in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix length.
    pub address: IpNet,
    /// The gateway for this address.
    pub gateway: IpAddr,
    /// Index into `interfaces` of the interface holding the address.
    pub interface: usize,
}

/// A route in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gw: Option<IpAddr>,
}

/// What ADD made: the bridge, the host veth, the pod interface, addresses and routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniResult {
    /// `[bridge, host veth, pod interface]`, as the reference bridge orders them.
    pub interfaces: Vec<Interface>,
    /// The pod's addresses.
    pub ips: Vec<IpConfig>,
    /// Routes installed in the pod.
    pub routes: Vec<Route>,
    /// DNS settings from the config.
    pub dns: Option<Dns>,
}

impl CniResult {
    /// Encode in `version`: `ips[].version` before 1.0.0, interface `mtu` from 1.1.0.
    pub fn to_json(&self, version: CniVersion) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                o.insert("mac".into(), json!(i.mac));
                if version >= CniVersion::V1_1_0 {
                    o.insert("mtu".into(), json!(i.mtu));
                }
                if let Some(s) = &i.sandbox {
                    o.insert("sandbox".into(), json!(s));
                }
                Value::Object(o)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version.ips_carry_version() {
                    o.insert(
                        "version".into(),
                        json!(if ip.address.addr().is_ipv6() {
                            "6"
                        } else {
                            "4"
                        }),
                    );
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                o.insert("gateway".into(), json!(ip.gateway.to_string()));
                o.insert("interface".into(), json!(ip.interface));
                Value::Object(o)
            })
            .collect();
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        out.insert("interfaces".into(), Value::Array(interfaces));
        out.insert("ips".into(), Value::Array(ips));
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| match r.gw {
                    Some(gw) => json!({"dst": r.dst.to_string(), "gw": gw.to_string()}),
                    None => json!({"dst": r.dst.to_string()}),
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        if let Some(dns) = &self.dns {
            out.insert(
                "dns".into(),
                serde_json::to_value(dns).unwrap_or(Value::Null),
            );
        }
        Value::Object(out)
    }
}

/// The parts of a `prevResult` CHECK compares against, from any version's shape.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrevResult {
    /// Interfaces as ADD reported them.
    #[serde(default)]
    pub interfaces: Vec<PrevInterface>,
    /// Addresses as ADD reported them.
    #[serde(default)]
    pub ips: Vec<PrevIp>,
    /// Routes as ADD reported them.
    #[serde(default)]
    pub routes: Vec<PrevRoute>,
}

/// An interface of a `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrevInterface {
    /// Link name.
    pub name: String,
    /// Namespace path, for pod interfaces.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// An address of a `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrevIp {
    /// Address with prefix length.
    pub address: IpNet,
    /// Gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default)]
    pub interface: Option<usize>,
}

/// A route of a `prevResult`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PrevRoute {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

impl PrevResult {
    /// Decode a `prevResult` value.
    pub fn parse(v: &Value) -> Result<Self, CniError> {
        serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(
                ErrorCode::Decoding,
                format!("prevResult is not a CNI result: {e}"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::SUPPORTED;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "tailroute0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: 1280,
                    sandbox: None,
                },
                Interface {
                    name: "trv0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    mtu: 1280,
                    sandbox: None,
                },
                Interface {
                    name: "eth0".into(),
                    mac: "0a:58:0a:00:00:02".into(),
                    mtu: 1280,
                    sandbox: Some("/run/netns/p".into()),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.0.0.2/24".parse().expect("cidr"),
                    gateway: "10.0.0.1".parse().expect("ip"),
                    interface: 2,
                },
                IpConfig {
                    address: "fd00::2/64".parse().expect("cidr"),
                    gateway: "fd00::1".parse().expect("ip"),
                    interface: 2,
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("cidr"),
                gw: Some("10.0.0.1".parse().expect("ip")),
            }],
            dns: None,
        }
    }

    #[test]
    fn pre_1_0_results_carry_ip_versions() {
        let v = sample().to_json(CniVersion::V0_3_1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn one_dot_zero_drops_ip_versions_and_one_dot_one_adds_mtu() {
        let v10 = sample().to_json(CniVersion::V1_0_0);
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][2].get("mtu").is_none());
        let v11 = sample().to_json(CniVersion::V1_1_0);
        assert_eq!(v11["interfaces"][2]["mtu"], 1280);
        assert_eq!(v11["interfaces"][2]["sandbox"], "/run/netns/p");
    }

    #[test]
    fn every_version_encodes_and_parses_back_as_prev_result() {
        for version in SUPPORTED {
            let prev = PrevResult::parse(&sample().to_json(version)).expect("parse");
            assert_eq!(prev.ips.len(), 2, "{version}");
            assert_eq!(prev.ips[0].interface, Some(2));
            assert_eq!(prev.interfaces[2].name, "eth0");
            assert_eq!(prev.routes.len(), 1);
        }
    }
}
