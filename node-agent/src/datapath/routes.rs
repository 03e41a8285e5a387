//! Read-only checks of the kernel's routing: do other nodes' pod CIDRs go
//! out through tailscale0 by tailscaled's table 52, and what are an
//! interface's MTU and addresses.
//!
//! Each pod CIDR is checked with a route lookup for one address inside it
//! (RTM_GETROUTE with a destination, as `ip route get` does), so the
//! answer honours policy routing: tailscaled's rules, anything an operator
//! added in front of them, a more specific route elsewhere. Lookups are
//! made as locally originated traffic without a firewall mark, which is
//! how tailscaled's own rules (the one to table 52 has no selector) treat
//! forwarded pod traffic too.
//!
//! Synchronous netlink on the calling thread: every call is a few
//! round-trips to the local kernel, well under a millisecond, and a
//! namespace switch must not span an `.await` anyway.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteMessage};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use super::{DatapathError, NetnsTarget};

/// The routing table tailscaled puts its routes in (`ip route show table 52`).
pub const TAILSCALE_TABLE: u32 = 52;

/// Where the kernel sends traffic for one peer's pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteVerdict {
    /// Out of the tailnet interface, by a route in table 52: tailscaled has
    /// the peer's route (it was advertised, approved and accepted).
    ViaTailnet,
    /// Out of the tailnet interface, but by a route in another table (a
    /// static route someone added; tailscaled does not manage it).
    TailnetOtherTable {
        /// The table the route came from.
        table: u32,
    },
    /// Out of another interface: table 52 has no route for the CIDR
    /// (route not approved, or this node does not accept routes), and
    /// e.g. the default route caught it.
    OtherInterface {
        /// The interface the traffic would leave by.
        interface: String,
        /// The table the route came from.
        table: u32,
    },
    /// No usable route: the lookup failed (unreachable, prohibited, ...).
    NoRoute {
        /// The kernel's answer, e.g. "Network is unreachable (os error 101)".
        error: String,
    },
}

impl RouteVerdict {
    /// True when the peer's pods are reached the intended way.
    pub fn is_via_tailnet(&self) -> bool {
        matches!(self, RouteVerdict::ViaTailnet)
    }

    /// A short, stable name: a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteVerdict::ViaTailnet => "via_tailnet",
            RouteVerdict::TailnetOtherTable { .. } => "tailnet_other_table",
            RouteVerdict::OtherInterface { .. } => "other_interface",
            RouteVerdict::NoRoute { .. } => "no_route",
        }
    }
}

impl fmt::Display for RouteVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteVerdict::ViaTailnet => write!(f, "via the tailnet (table {TAILSCALE_TABLE})"),
            RouteVerdict::TailnetOtherTable { table } => write!(
                f,
                "via the tailnet interface but by table {table}, not tailscaled's table {TAILSCALE_TABLE}"
            ),
            RouteVerdict::OtherInterface { interface, table } => write!(
                f,
                "via {interface} (table {table}): tailscaled has no route for it; is the peer's \
                 route approved, and does this node accept routes?"
            ),
            RouteVerdict::NoRoute { error } => write!(f, "no route: {error}"),
        }
    }
}

/// The check of one peer pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRoute {
    /// The pod CIDR checked.
    pub cidr: IpNet,
    /// The address looked up: the first host address inside the CIDR.
    pub probe: IpAddr,
    /// Where the kernel sends it.
    pub verdict: RouteVerdict,
}

/// The result of [`verify_peer_routes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteReport {
    /// The preference of the IPv4 `ip rule` that looks up table 52, if
    /// there is one (tailscaled uses 5270).
    pub ipv4_rule: Option<u32>,
    /// The same for IPv6.
    pub ipv6_rule: Option<u32>,
    /// One entry per pod CIDR asked about, in the order asked.
    pub peers: Vec<PeerRoute>,
}

impl RouteReport {
    /// True if every CIDR goes through the tailnet by table 52.
    pub fn all_via_tailnet(&self) -> bool {
        self.peers.iter().all(|p| p.verdict.is_via_tailnet())
    }
}

/// What the agent needs to know about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceFacts {
    /// The interface name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its MTU (tailscale0: what pods' interfaces should use).
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Its addresses with their prefix lengths, IPv4 first, in the
    /// kernel's order.
    pub addresses: Vec<IpNet>,
}

/// For each of `peer_pod_cidrs`, where the kernel of `netns` sends traffic
/// for it, and whether the `ip rule` to table 52 exists.
pub fn verify_peer_routes(
    netns: &NetnsTarget,
    tailnet_iface: &str,
    peer_pod_cidrs: &[IpNet],
) -> Result<RouteReport, DatapathError> {
    let mut socket = RouteSocket::open(netns)?;
    let names: HashMap<u32, String> = socket
        .links()?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    let ipv4_rule = socket.rule_to_table(AddressFamily::Inet, TAILSCALE_TABLE)?;
    let ipv6_rule = socket.rule_to_table(AddressFamily::Inet6, TAILSCALE_TABLE)?;
    let mut peers = Vec::with_capacity(peer_pod_cidrs.len());
    for cidr in peer_pod_cidrs {
        let probe = probe_address(cidr);
        let verdict = match socket.route_get(probe)? {
            Err(e) => RouteVerdict::NoRoute {
                error: e.to_string(),
            },
            Ok((table, oif)) => {
                let interface = oif
                    .and_then(|i| names.get(&i).cloned())
                    .unwrap_or_else(|| format!("ifindex {}", oif.unwrap_or(0)));
                if interface != tailnet_iface {
                    RouteVerdict::OtherInterface { interface, table }
                } else if table == TAILSCALE_TABLE {
                    RouteVerdict::ViaTailnet
                } else {
                    RouteVerdict::TailnetOtherTable { table }
                }
            }
        };
        peers.push(PeerRoute {
            cidr: *cidr,
            probe,
            verdict,
        });
    }
    Ok(RouteReport {
        ipv4_rule,
        ipv6_rule,
        peers,
    })
}

/// MTU, state and addresses of the interface `name` in `netns`.
pub fn interface_facts(netns: &NetnsTarget, name: &str) -> Result<InterfaceFacts, DatapathError> {
    let mut socket = RouteSocket::open(netns)?;
    let Some(link) = socket.links()?.into_iter().find(|l| l.name == name) else {
        return Err(DatapathError::InterfaceMissing {
            name: name.to_owned(),
            hint: if name.starts_with("tailscale") {
                "; is tailscaled running (with --tun=tailscale0, not userspace networking)?"
            } else {
                ""
            },
        });
    };
    let mut addresses = socket.addresses(link.index)?;
    addresses.sort_by_key(|a| a.addr().is_ipv6());
    Ok(InterfaceFacts {
        name: link.name,
        index: link.index,
        mtu: link.mtu,
        up: link.up,
        addresses,
    })
}

/// The address looked up for a CIDR: the first one after the network
/// address (a node's pods start there), or the address itself for a /32,
/// /128 or /31.
fn probe_address(cidr: &IpNet) -> IpAddr {
    match cidr {
        IpNet::V4(n) if n.prefix_len() < 31 => {
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_add(1)))
        }
        IpNet::V6(n) if n.prefix_len() < 127 => {
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(1)))
        }
        other => other.network(),
    }
}

struct Link {
    index: u32,
    name: String,
    mtu: u32,
    up: bool,
}

/// A route-netlink socket bound in one namespace: the namespace is entered
/// only to create it, and the socket keeps working there afterwards.
struct RouteSocket {
    socket: Socket,
    seq: u32,
}

impl RouteSocket {
    fn open(netns: &NetnsTarget) -> Result<RouteSocket, DatapathError> {
        let _guard = netns.enter()?;
        let open = || -> io::Result<Socket> {
            let mut socket = Socket::new(NETLINK_ROUTE)?;
            socket.bind_auto()?;
            socket.connect(&SocketAddr::new(0, 0))?;
            Ok(socket)
        };
        let socket = open().map_err(|e| DatapathError::netlink("open socket", e))?;
        Ok(RouteSocket { socket, seq: 0 })
    }

    /// Sends one request and collects the replies (until the ACK, or DONE
    /// for a dump). The outer error is a broken exchange; the inner one is
    /// the kernel's refusal (an errno), which for a route lookup is an answer.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> io::Result<Result<Vec<RouteNetlinkMessage>, io::Error>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut buf = vec![0; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.socket.send(&buf, 0)?;

        let mut replies = Vec::new();
        let mut rbuf = Vec::with_capacity(64 * 1024);
        loop {
            rbuf.clear();
            let n = self.socket.recv(&mut rbuf, 0)?;
            let mut offset = 0;
            while offset < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rbuf[offset..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Ok(Err(e.to_io())),
                    NetlinkPayload::Error(_) | NetlinkPayload::Done(_) => return Ok(Ok(replies)),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A request whose refusal is an error too.
    fn request_ok(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, DatapathError> {
        self.request(msg, dump)
            .and_then(|r| r)
            .map_err(|e| DatapathError::netlink(what, e))
    }

    fn links(&mut self) -> Result<Vec<Link>, DatapathError> {
        let replies = self.request_ok(
            "link dump",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            true,
        )?;
        let mut links = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewLink(msg) = reply else {
                continue;
            };
            let mut link = Link {
                index: msg.header.index,
                name: String::new(),
                mtu: 0,
                up: msg.header.flags.contains(LinkFlags::Up),
            };
            for attr in msg.attributes {
                match attr {
                    LinkAttribute::IfName(n) => link.name = n,
                    LinkAttribute::Mtu(m) => link.mtu = m,
                    _ => {}
                }
            }
            links.push(link);
        }
        Ok(links)
    }

    fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, DatapathError> {
        let replies = self.request_ok(
            "address dump",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            true,
        )?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(msg) = reply else {
                continue;
            };
            if msg.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address on point-to-point
            // links (where IFA_ADDRESS is the peer); prefer it.
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(net) = addr.and_then(|ip| IpNet::new(ip, msg.header.prefix_len).ok()) {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// The preference of the first rule of `family` that looks up `table`.
    fn rule_to_table(
        &mut self,
        family: AddressFamily,
        table: u32,
    ) -> Result<Option<u32>, DatapathError> {
        let mut req = RuleMessage::default();
        req.header.family = family;
        let replies = self.request_ok("rule dump", RouteNetlinkMessage::GetRule(req), true)?;
        let mut found = None;
        for reply in replies {
            let RouteNetlinkMessage::NewRule(msg) = reply else {
                continue;
            };
            if msg.header.action != RuleAction::ToTable {
                continue;
            }
            let mut rule_table = u32::from(msg.header.table);
            let mut priority = 0;
            for attr in &msg.attributes {
                match attr {
                    RuleAttribute::Table(t) => rule_table = *t,
                    RuleAttribute::Priority(p) => priority = *p,
                    _ => {}
                }
            }
            if rule_table == table {
                found = Some(found.map_or(priority, |f: u32| f.min(priority)));
            }
        }
        Ok(found)
    }

    /// `ip route get <dst>`: the table and output interface of the route
    /// the kernel picks, or its refusal.
    fn route_get(
        &mut self,
        dst: IpAddr,
    ) -> Result<Result<(u32, Option<u32>), io::Error>, DatapathError> {
        let mut req = RouteMessage::default();
        let (family, len, address) = match dst {
            IpAddr::V4(a) => (AddressFamily::Inet, 32, RouteAddress::Inet(a)),
            IpAddr::V6(a) => (AddressFamily::Inet6, 128, RouteAddress::Inet6(a)),
        };
        req.header.address_family = family;
        req.header.destination_prefix_length = len;
        // Without this flag older kernels report "main" for IPv4 whatever
        // table the route came from.
        req.header.flags = RouteFlags::LookupTable;
        req.attributes.push(RouteAttribute::Destination(address));
        let what = format!("route get {dst}");
        let replies = match self
            .request(RouteNetlinkMessage::GetRoute(req), false)
            .map_err(|e| DatapathError::netlink(&what, e))?
        {
            Ok(replies) => replies,
            Err(refused) => return Ok(Err(refused)),
        };
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else {
                continue;
            };
            let mut table = u32::from(msg.header.table);
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            return Ok(Ok((table, oif)));
        }
        Err(DatapathError::netlink(
            what,
            io::Error::new(io::ErrorKind::InvalidData, "the kernel sent no route"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("a test prefix")
    }

    #[test]
    fn probes_are_inside_the_cidr() {
        assert_eq!(
            probe_address(&net("10.244.2.0/24")).to_string(),
            "10.244.2.1"
        );
        assert_eq!(
            probe_address(&net("10.244.2.9/32")).to_string(),
            "10.244.2.9"
        );
        assert_eq!(
            probe_address(&net("fd00:10:244:2::/64")).to_string(),
            "fd00:10:244:2::1"
        );
        for cidr in ["10.0.0.0/8", "192.168.7.0/31", "fd00::/128"] {
            let cidr = net(cidr);
            assert!(cidr.contains(&probe_address(&cidr)), "{cidr}");
        }
    }

    #[test]
    fn verdicts_say_what_to_check() {
        let v = RouteVerdict::OtherInterface {
            interface: "eth0".into(),
            table: 254,
        };
        assert_eq!(v.as_str(), "other_interface");
        assert!(v.to_string().contains("approved"), "{v}");
        assert!(RouteVerdict::ViaTailnet.is_via_tailnet());
    }
}
