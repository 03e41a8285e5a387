//! The lab's topology as data: every namespace, link and address, computed
//! from a handful of choices without touching the host.
//!
//! Address ranges are chosen so they cannot collide with anything real nor
//! with what tailroute itself uses (pods in 10.244.0.0/16, the tailnet in
//! 100.64.0.0/10):
//!
//! | what | IPv4 | IPv6 (dual-stack) |
//! | --- | --- | --- |
//! | underlay ("internet") | 198.18.0.0/24 (RFC 2544 benchmarking) | 2001:db8:18::/64 (documentation) |
//! | underlay sink gateway | .1 | ::1 |
//! | control plane | .2 | ::2 |
//! | flat node i | .(10+i) | ::(10+i) |
//! | hybrid router i, WAN | .(20+i) | ::(20+i) |
//! | hybrid LAN i | 192.168.(100+i).0/24, router .1, node .2 | fd00:18:i::/64, router ::1, node ::2 |
//!
//! IPv6 host parts and the LAN's third group are the IPv4 numbers written
//! in hex digits (198.18.0.21 pairs with 2001:db8:18::21), so the two
//! families of one host are easy to match by eye.
//!
//! Every name starts with `trl<tag>-` (interface names are at most 14
//! bytes, under Linux's 15), so several labs and parallel test runs never
//! collide and a leftover is recognisable at a glance.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Serialize;

/// Prefix of every name the lab gives to a namespace or interface.
pub const NAME_PREFIX: &str = "trl";

/// The longest [`LabTag`]: with it the longest interface name
/// (`trl<tag>-r16w`) is 14 bytes, inside Linux's 15-byte `IFNAMSIZ`.
pub const MAX_TAG_LEN: usize = 6;

/// The most nodes a lab can have: enough for any scenario the lab is for,
/// and it keeps every per-node number below 100 (see the address table).
pub const MAX_NODES: u8 = 16;

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The lab tag is empty, too long or has characters other than `[a-z0-9]`.
    #[error(
        "invalid lab tag {tag:?}: use 1 to {MAX_TAG_LEN} characters from a-z and 0-9 \
         (it goes into interface names, which Linux limits to 15 bytes)"
    )]
    InvalidTag {
        /// The rejected tag.
        tag: String,
    },
    /// The node count is outside `1..=MAX_NODES`.
    #[error("a lab has 1 to {MAX_NODES} nodes, not {count}")]
    NodeCount {
        /// The rejected count.
        count: usize,
    },
    /// The topology name is neither `flat` nor `hybrid`.
    #[error("unknown topology {name:?}: use `flat` or `hybrid`")]
    UnknownTopology {
        /// The rejected name.
        name: String,
    },
}

/// The short tag that makes one lab's names unique: `trl<tag>-...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct LabTag(String);

impl LabTag {
    /// Validates `tag`: 1 to [`MAX_TAG_LEN`] characters from `[a-z0-9]`.
    ///
    /// No `-`: it separates the tag from the role in every name, so tag
    /// `a` (`trla-...`) can never be mistaken for tag `ab` (`trlab-...`).
    pub fn new(tag: &str) -> Result<LabTag, PlanError> {
        let valid = !tag.is_empty()
            && tag.len() <= MAX_TAG_LEN
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(LabTag(tag.to_owned()))
        } else {
            Err(PlanError::InvalidTag {
                tag: tag.to_owned(),
            })
        }
    }

    /// The tag itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `trl<tag>-`: every namespace and interface of this lab starts with it,
    /// and nothing of another lab does.
    pub fn name_prefix(&self) -> String {
        format!("{NAME_PREFIX}{}-", self.0)
    }

    /// `trl<tag>-<role>`.
    fn name(&self, role: &str) -> String {
        format!("{}{role}", self.name_prefix())
    }
}

impl fmt::Display for LabTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How nodes are attached to the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TopologyMode {
    /// Every node directly on the underlay: nodes reach each other's
    /// addresses without the tailnet.
    Flat,
    /// Every node behind a NAT router of its own: the tailnet is the only
    /// path between nodes.
    Hybrid,
}

impl FromStr for TopologyMode {
    type Err = PlanError;

    fn from_str(name: &str) -> Result<TopologyMode, PlanError> {
        match name {
            "flat" => Ok(TopologyMode::Flat),
            "hybrid" => Ok(TopologyMode::Hybrid),
            _ => Err(PlanError::UnknownTopology {
                name: name.to_owned(),
            }),
        }
    }
}

impl fmt::Display for TopologyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopologyMode::Flat => "flat",
            TopologyMode::Hybrid => "hybrid",
        })
    }
}

/// An address with its prefix length, as `ip addr add` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length.
    pub prefix_len: u8,
}

impl Cidr {
    fn v4(addr: Ipv4Addr, prefix_len: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V4(addr),
            prefix_len,
        }
    }

    fn v6(addr: Ipv6Addr, prefix_len: u8) -> Cidr {
        Cidr {
            addr: IpAddr::V6(addr),
            prefix_len,
        }
    }

    /// True when `ip` is inside this prefix (of the same family).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The same prefix with the host bits cleared (`192.168.101.0/24`).
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Cidr {
            addr,
            prefix_len: self.prefix_len,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An interface with its addresses, in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// The namespace the interface lives in.
    pub namespace: String,
    /// The interface name (at most 14 bytes).
    pub name: String,
    /// Its IPv4 address.
    pub ipv4: Cidr,
    /// Its IPv6 address, in a dual-stack lab.
    pub ipv6: Option<Cidr>,
}

impl Interface {
    /// The interface's addresses, IPv4 first.
    pub fn addresses(&self) -> Vec<Cidr> {
        std::iter::once(self.ipv4).chain(self.ipv6).collect()
    }
}

/// The underlay: a bridge in a namespace of its own, playing the internet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Underlay {
    /// The underlay's namespace.
    pub namespace: String,
    /// The bridge every underlay host is plugged into. Its addresses are
    /// the lab's "gateway to the internet", a sink: default routes resolve
    /// to it, and the underlay namespace forwards nothing, so traffic for
    /// anywhere outside the lab dies there.
    pub bridge: Interface,
}

/// A namespace that is an endpoint: the control plane or a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// The host's namespace.
    pub namespace: String,
    /// Its only interface besides `lo`.
    pub uplink: Interface,
    /// IPv4 default gateway: the underlay sink, or the node's NAT router.
    pub gateway4: Ipv4Addr,
    /// IPv6 default gateway, in a dual-stack lab.
    pub gateway6: Option<Ipv6Addr>,
}

/// A node's NAT router (hybrid topology).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Router {
    /// The router's namespace.
    pub namespace: String,
    /// Its side on the underlay: the address the world sees for the node.
    pub wan: Interface,
    /// Its side on the node's private LAN: the node's gateway.
    pub lan: Interface,
    /// IPv4 default gateway: the underlay sink.
    pub gateway4: Ipv4Addr,
    /// IPv6 default gateway, in a dual-stack lab.
    pub gateway6: Option<Ipv6Addr>,
    /// The nftables table (family `inet`) that masquerades the LAN.
    pub nat_table: String,
}

/// One Kubernetes node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// 1-based node number, as in the names (`trl<tag>-n1`).
    pub index: u8,
    /// The node's own namespace.
    pub host: Host,
    /// Its NAT router, in the hybrid topology.
    pub router: Option<Router>,
}

/// One end of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkEnd {
    /// The namespace this end is created in.
    pub namespace: String,
    /// The interface name.
    pub name: String,
}

/// A veth pair, created with both ends directly in their namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Veth {
    /// The end `ip link add` is run for (a host's or router's interface).
    pub first: LinkEnd,
    /// The other end: an underlay bridge port or a router's LAN side.
    pub peer: LinkEnd,
    /// True when `peer` is a port of the underlay bridge.
    pub peer_on_bridge: bool,
}

/// Everything `lab up` builds, computed up front.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopologyPlan {
    /// The lab's tag.
    pub tag: LabTag,
    /// Flat or hybrid.
    pub mode: TopologyMode,
    /// True when every interface also gets an IPv6 address.
    pub dual_stack: bool,
    /// The underlay.
    pub underlay: Underlay,
    /// The control plane's namespace (Headscale, Kubernetes control plane).
    pub control_plane: Host,
    /// The nodes, `index` 1..=N.
    pub nodes: Vec<Node>,
    /// Every veth pair, in creation order.
    pub veths: Vec<Veth>,
}

/// 198.18.0.`last`: an underlay address.
fn underlay4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, last)
}

/// 2001:db8:18::`last` with `last` written in hex digits (see the module docs).
fn underlay6(last: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, decimal_digits_as_hex(last))
}

/// fd00:18:`lan`::`host`, both written in hex digits.
fn lan6(lan: u8, host: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd00,
        0x18,
        decimal_digits_as_hex(lan),
        0,
        0,
        0,
        0,
        decimal_digits_as_hex(host),
    )
}

/// 21 -> 0x21: so the IPv6 address reads like its IPv4 twin.
fn decimal_digits_as_hex(mut n: u8) -> u16 {
    let (mut out, mut place) = (0u16, 1u16);
    while n > 0 {
        out += u16::from(n % 10) * place;
        place *= 16;
        n /= 10;
    }
    out
}

impl TopologyPlan {
    /// Plans a lab of `nodes` nodes (1..=[`MAX_NODES`]).
    pub fn new(
        tag: LabTag,
        nodes: usize,
        mode: TopologyMode,
        dual_stack: bool,
    ) -> Result<TopologyPlan, PlanError> {
        let count = u8::try_from(nodes)
            .ok()
            .filter(|n| (1..=MAX_NODES).contains(n))
            .ok_or(PlanError::NodeCount { count: nodes })?;
        let v6 = |addr: Ipv6Addr, len: u8| dual_stack.then(|| Cidr::v6(addr, len));
        let gw6 = |addr: Ipv6Addr| dual_stack.then_some(addr);

        let underlay_ns = tag.name("ul");
        let underlay = Underlay {
            namespace: underlay_ns.clone(),
            bridge: Interface {
                namespace: underlay_ns.clone(),
                name: tag.name("br"),
                ipv4: Cidr::v4(underlay4(1), 24),
                ipv6: v6(underlay6(1), 64),
            },
        };
        let mut veths = Vec::new();
        // A veth from `host` (namespace, interface) to a new underlay port.
        let mut on_underlay = |namespace: &str, name: String, port: String| {
            veths.push(Veth {
                first: LinkEnd {
                    namespace: namespace.to_owned(),
                    name,
                },
                peer: LinkEnd {
                    namespace: underlay_ns.clone(),
                    name: port,
                },
                peer_on_bridge: true,
            });
        };

        let cp_ns = tag.name("cp");
        on_underlay(&cp_ns, tag.name("cp"), tag.name("ucp"));
        let control_plane = Host {
            uplink: Interface {
                namespace: cp_ns.clone(),
                name: tag.name("cp"),
                ipv4: Cidr::v4(underlay4(2), 24),
                ipv6: v6(underlay6(2), 64),
            },
            namespace: cp_ns,
            gateway4: underlay4(1),
            gateway6: gw6(underlay6(1)),
        };

        let mut planned = Vec::new();
        for index in 1..=count {
            let node_ns = tag.name(&format!("n{index}"));
            let uplink_name = tag.name(&format!("n{index}"));
            let node = match mode {
                TopologyMode::Flat => {
                    on_underlay(
                        &node_ns,
                        uplink_name.clone(),
                        tag.name(&format!("un{index}")),
                    );
                    Node {
                        index,
                        host: Host {
                            uplink: Interface {
                                namespace: node_ns.clone(),
                                name: uplink_name,
                                ipv4: Cidr::v4(underlay4(10 + index), 24),
                                ipv6: v6(underlay6(10 + index), 64),
                            },
                            namespace: node_ns,
                            gateway4: underlay4(1),
                            gateway6: gw6(underlay6(1)),
                        },
                        router: None,
                    }
                }
                TopologyMode::Hybrid => {
                    let router_ns = tag.name(&format!("r{index}"));
                    let wan_name = tag.name(&format!("r{index}w"));
                    let lan_name = tag.name(&format!("r{index}l"));
                    on_underlay(
                        &router_ns,
                        wan_name.clone(),
                        tag.name(&format!("ur{index}")),
                    );
                    let lan_octet = 100 + index;
                    let router = Router {
                        wan: Interface {
                            namespace: router_ns.clone(),
                            name: wan_name,
                            ipv4: Cidr::v4(underlay4(20 + index), 24),
                            ipv6: v6(underlay6(20 + index), 64),
                        },
                        lan: Interface {
                            namespace: router_ns.clone(),
                            name: lan_name.clone(),
                            ipv4: Cidr::v4(Ipv4Addr::new(192, 168, lan_octet, 1), 24),
                            ipv6: v6(lan6(index, 1), 64),
                        },
                        gateway4: underlay4(1),
                        gateway6: gw6(underlay6(1)),
                        nat_table: format!("{NAME_PREFIX}{}_nat", tag.as_str()),
                        namespace: router_ns.clone(),
                    };
                    let host = Host {
                        uplink: Interface {
                            namespace: node_ns.clone(),
                            name: uplink_name.clone(),
                            ipv4: Cidr::v4(Ipv4Addr::new(192, 168, lan_octet, 2), 24),
                            ipv6: v6(lan6(index, 2), 64),
                        },
                        namespace: node_ns.clone(),
                        gateway4: Ipv4Addr::new(192, 168, lan_octet, 1),
                        gateway6: gw6(lan6(index, 1)),
                    };
                    Node {
                        index,
                        host,
                        router: Some(router),
                    }
                }
            };
            planned.push(node);
        }
        // The LAN veths go after every underlay one so the list reads
        // "underlay first, then private LANs", matching the creation order.
        for node in &planned {
            if let Some(router) = &node.router {
                veths.push(Veth {
                    first: LinkEnd {
                        namespace: router.namespace.clone(),
                        name: router.lan.name.clone(),
                    },
                    peer: LinkEnd {
                        namespace: node.host.namespace.clone(),
                        name: node.host.uplink.name.clone(),
                    },
                    peer_on_bridge: false,
                });
            }
        }
        Ok(TopologyPlan {
            tag,
            mode,
            dual_stack,
            underlay,
            control_plane,
            nodes: planned,
            veths,
        })
    }

    /// Every namespace, in creation order: underlay, control plane, then
    /// each node's router (hybrid) and node.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut names = vec![
            self.underlay.namespace.as_str(),
            self.control_plane.namespace.as_str(),
        ];
        for node in &self.nodes {
            if let Some(router) = &node.router {
                names.push(&router.namespace);
            }
            names.push(&node.host.namespace);
        }
        names
    }

    /// Every addressed interface: the underlay bridge, the control plane,
    /// then per node its router's WAN and LAN sides and its own uplink.
    pub fn interfaces(&self) -> Vec<&Interface> {
        let mut all = vec![&self.underlay.bridge, &self.control_plane.uplink];
        for node in &self.nodes {
            if let Some(router) = &node.router {
                all.push(&router.wan);
                all.push(&router.lan);
            }
            all.push(&node.host.uplink);
        }
        all
    }

    /// Every router, in node order (empty in the flat topology).
    pub fn routers(&self) -> impl Iterator<Item = &Router> {
        self.nodes.iter().filter_map(|n| n.router.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn every_plan() -> Vec<TopologyPlan> {
        let mut plans = Vec::new();
        for tag in ["a", "zz9999"] {
            for n in 1..=usize::from(MAX_NODES) {
                for mode in [TopologyMode::Flat, TopologyMode::Hybrid] {
                    for dual in [false, true] {
                        plans.push(
                            TopologyPlan::new(LabTag::new(tag).unwrap(), n, mode, dual).unwrap(),
                        );
                    }
                }
            }
        }
        plans
    }

    fn all_link_names(plan: &TopologyPlan) -> Vec<(String, String)> {
        let mut names = vec![(
            plan.underlay.namespace.clone(),
            plan.underlay.bridge.name.clone(),
        )];
        for v in &plan.veths {
            names.push((v.first.namespace.clone(), v.first.name.clone()));
            names.push((v.peer.namespace.clone(), v.peer.name.clone()));
        }
        names
    }

    #[test]
    fn every_name_fits_ifnamsiz_and_carries_the_lab_prefix() {
        for plan in every_plan() {
            let prefix = plan.tag.name_prefix();
            for (ns, link) in all_link_names(&plan) {
                assert!(link.len() <= 15, "{link} is {} bytes", link.len());
                assert!(link.starts_with(&prefix), "{link}");
                assert!(ns.starts_with(&prefix), "{ns}");
            }
            for ns in plan.namespaces() {
                assert!(ns.starts_with(&prefix) && ns.len() <= 15, "{ns}");
            }
            for router in plan.routers() {
                // nft identifiers: a letter, then letters, digits and `_`.
                let t = &router.nat_table;
                assert!(t.starts_with(NAME_PREFIX), "{t}");
                assert!(
                    t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn names_are_unique_namespaces_globally_and_links_per_namespace() {
        for plan in every_plan() {
            let namespaces = plan.namespaces();
            let unique: HashSet<_> = namespaces.iter().collect();
            assert_eq!(unique.len(), namespaces.len(), "{namespaces:?}");
            let links = all_link_names(&plan);
            let unique: HashSet<_> = links.iter().collect();
            assert_eq!(unique.len(), links.len(), "{links:?}");
            // Also globally: a name alone identifies a link in the lab.
            let bare: HashSet<_> = links.iter().map(|(_, l)| l).collect();
            assert_eq!(bare.len(), links.len(), "{links:?}");
            for (ns, _) in &links {
                assert!(namespaces.contains(&ns.as_str()), "{ns} is not planned");
            }
        }
    }

    #[test]
    fn no_address_is_used_twice() {
        for plan in every_plan() {
            let mut seen = HashSet::new();
            for iface in plan.interfaces() {
                for cidr in iface.addresses() {
                    assert!(
                        seen.insert(cidr.addr),
                        "{} used twice in {:?}",
                        cidr.addr,
                        plan.tag
                    );
                }
            }
        }
    }

    #[test]
    fn address_families_follow_dual_stack() {
        for plan in every_plan() {
            for iface in plan.interfaces() {
                assert!(iface.ipv4.addr.is_ipv4());
                assert_eq!(iface.ipv6.is_some(), plan.dual_stack, "{iface:?}");
                assert!(iface.ipv6.is_none_or(|c| c.addr.is_ipv6()));
            }
        }
    }

    #[test]
    fn nothing_overlaps_pods_tailnet_or_real_networks() {
        let pods = Cidr::v4(Ipv4Addr::new(10, 244, 0, 0), 16);
        let tailnet = Cidr::v4(Ipv4Addr::new(100, 64, 0, 0), 10);
        let benchmarking = Cidr::v4(Ipv4Addr::new(198, 18, 0, 0), 15);
        let private = Cidr::v4(Ipv4Addr::new(192, 168, 0, 0), 16);
        let doc6 = Cidr::v6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32);
        let ula = Cidr::v6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0), 8);
        for plan in every_plan() {
            for iface in plan.interfaces() {
                for c in iface.addresses() {
                    assert!(!pods.contains(c.addr) && !tailnet.contains(c.addr), "{c}");
                    assert!(
                        [benchmarking, private, doc6, ula]
                            .iter()
                            .any(|r| r.contains(c.addr)),
                        "{c} is outside the lab's test ranges"
                    );
                }
            }
        }
    }

    #[test]
    fn every_gateway_is_on_link_and_is_the_right_box() {
        for plan in every_plan() {
            let sink = &plan.underlay.bridge;
            let hosts =
                std::iter::once(&plan.control_plane).chain(plan.nodes.iter().map(|n| &n.host));
            for host in hosts {
                assert!(host.uplink.ipv4.contains(host.gateway4.into()), "{host:?}");
                if let (Some(net), Some(gw)) = (host.uplink.ipv6, host.gateway6) {
                    assert!(net.contains(gw.into()), "{host:?}");
                }
            }
            for node in &plan.nodes {
                match (&node.router, plan.mode) {
                    (None, TopologyMode::Flat) => {
                        assert_eq!(IpAddr::from(node.host.gateway4), sink.ipv4.addr);
                        assert!(sink.ipv4.contains(node.host.uplink.ipv4.addr));
                    }
                    (Some(r), TopologyMode::Hybrid) => {
                        assert_eq!(IpAddr::from(node.host.gateway4), r.lan.ipv4.addr);
                        assert_eq!(
                            node.host.gateway6.map(IpAddr::from),
                            r.lan.ipv6.map(|c| c.addr)
                        );
                        assert_eq!(IpAddr::from(r.gateway4), sink.ipv4.addr);
                        assert!(sink.ipv4.contains(r.wan.ipv4.addr));
                        // The node's own address is private, not on the underlay.
                        assert!(!sink.ipv4.contains(node.host.uplink.ipv4.addr));
                    }
                    other => panic!("mode and router disagree: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn hybrid_lans_are_distinct_and_disjoint_from_the_underlay() {
        for plan in every_plan()
            .into_iter()
            .filter(|p| p.mode == TopologyMode::Hybrid)
        {
            let mut lans: HashMap<Cidr, u8> = HashMap::new();
            for node in &plan.nodes {
                let lan = &node.router.as_ref().unwrap().lan;
                for net in lan.addresses().iter().map(Cidr::network) {
                    assert!(lans.insert(net, node.index).is_none(), "LAN {net} shared");
                    assert!(!plan
                        .underlay
                        .bridge
                        .addresses()
                        .iter()
                        .any(|u| u.network() == net));
                    // No other node's address falls into this LAN.
                    for other in plan.nodes.iter().filter(|o| o.index != node.index) {
                        for a in other.host.uplink.addresses() {
                            assert!(!net.contains(a.addr), "{a} inside LAN {net}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_documented_addresses_are_the_planned_ones() {
        let tag = LabTag::new("t1").unwrap();
        let flat = TopologyPlan::new(tag.clone(), 2, TopologyMode::Flat, true).unwrap();
        assert_eq!(flat.control_plane.uplink.ipv4.to_string(), "198.18.0.2/24");
        assert_eq!(flat.nodes[1].host.uplink.ipv4.to_string(), "198.18.0.12/24");
        assert_eq!(
            flat.nodes[1].host.uplink.ipv6.unwrap().to_string(),
            "2001:db8:18::12/64"
        );
        assert_eq!(
            flat.namespaces(),
            ["trlt1-ul", "trlt1-cp", "trlt1-n1", "trlt1-n2"]
        );
        assert!(flat.routers().next().is_none());

        let hybrid = TopologyPlan::new(tag, 16, TopologyMode::Hybrid, true).unwrap();
        let last = &hybrid.nodes[15];
        let router = last.router.as_ref().unwrap();
        assert_eq!(router.wan.ipv4.to_string(), "198.18.0.36/24");
        assert_eq!(router.wan.ipv6.unwrap().to_string(), "2001:db8:18::36/64");
        assert_eq!(last.host.uplink.ipv4.to_string(), "192.168.116.2/24");
        assert_eq!(
            last.host.uplink.ipv6.unwrap().to_string(),
            "fd00:18:16::2/64"
        );
        assert_eq!(router.wan.name, "trlt1-r16w");
        assert_eq!(router.nat_table, "trlt1_nat");
    }

    #[test]
    fn a_short_tag_never_prefixes_a_longer_one() {
        let a =
            TopologyPlan::new(LabTag::new("a").unwrap(), 3, TopologyMode::Hybrid, false).unwrap();
        let ab =
            TopologyPlan::new(LabTag::new("ab").unwrap(), 3, TopologyMode::Hybrid, false).unwrap();
        for ns in ab.namespaces() {
            assert!(!ns.starts_with(&a.tag.name_prefix()), "{ns}");
        }
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        for bad in ["", "ABC", "a-b", "toolong", "é"] {
            let err = LabTag::new(bad).unwrap_err();
            assert!(err.to_string().contains("a-z and 0-9"), "{err}");
        }
        let tag = LabTag::new("x").unwrap();
        for n in [0, 17, 300] {
            let err = TopologyPlan::new(tag.clone(), n, TopologyMode::Flat, false).unwrap_err();
            assert_eq!(err, PlanError::NodeCount { count: n });
        }
        assert_eq!("hybrid".parse::<TopologyMode>(), Ok(TopologyMode::Hybrid));
        assert!("mesh"
            .parse::<TopologyMode>()
            .unwrap_err()
            .to_string()
            .contains("flat"));
    }

    #[test]
    fn cidr_arithmetic() {
        let lan = Cidr::v4(Ipv4Addr::new(192, 168, 101, 1), 24);
        assert_eq!(lan.network().to_string(), "192.168.101.0/24");
        assert!(lan.contains("192.168.101.200".parse().unwrap()));
        assert!(!lan.contains("192.168.102.1".parse().unwrap()));
        assert!(!lan.contains("fd00::1".parse().unwrap()));
        let v6 = Cidr::v6(lan6(3, 1), 64);
        assert_eq!(v6.network().to_string(), "fd00:18:3::/64");
        assert_eq!(decimal_digits_as_hex(255), 0x255);
        assert_eq!(decimal_digits_as_hex(0), 0);
    }
}
