//! Links: find, create bridges and veth pairs, set state, delete.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoKind, InfoPortData,
    InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::{errno, Netlink};

/// What the plugin needs to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU.
    pub mtu: u32,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// Administratively up.
    pub up: bool,
    /// Index of the bridge this link is a port of.
    pub master: Option<u32>,
    /// Link kind, e.g. "bridge" or "veth".
    pub kind: Option<String>,
    /// For bridge ports: hairpin mode.
    pub hairpin: Option<bool>,
    /// For veths: the peer's index (in the peer's namespace).
    pub peer_index: Option<u32>,
}

impl Link {
    fn from_message(msg: LinkMessage) -> Self {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            master: None,
            kind: None,
            hairpin: None,
            peer_index: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&a);
                    link.mac = Some(mac);
                }
                LinkAttribute::Controller(m) => link.master = Some(m),
                LinkAttribute::Link(i) => link.peer_index = Some(i),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                            LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                                for p in port {
                                    if let InfoBridgePort::HairpinMode(h) = p {
                                        link.hairpin = Some(h);
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }
}

/// The links among netlink replies.
fn links_in(replies: Vec<RouteNetlinkMessage>) -> impl Iterator<Item = Link> {
    replies.into_iter().filter_map(|m| match m {
        RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
        _ => None,
    })
}

fn up_header(msg: &mut LinkMessage) {
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
}

impl Netlink {
    /// The link called `name`, if it exists.
    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(msg)
    }

    /// The link with index `index`, if it exists.
    pub fn link_by_index(&mut self, index: u32) -> io::Result<Option<Link>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg)
    }

    /// One RTM_GETLINK; ENODEV means there is no such link.
    fn get_link(&mut self, msg: LinkMessage) -> io::Result<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(links_in(replies).next()),
            Err(e) if errno(&e) == libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link in the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(links_in(replies).collect())
    }

    /// Create a bridge that is up, with a fixed MAC: an address set explicitly
    /// is never replaced by the kernel as ports come and go, so neighbours'
    /// ARP caches stay right.
    pub fn create_bridge(&mut self, name: &str, mtu: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        up_header(&mut msg);
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Create a veth pair in one message: the host end enslaved to `master`,
    /// the peer created directly inside the pod namespace `peer_ns`. No
    /// interface is ever moved between namespaces. Both ends are left down:
    /// the host end is configured by [`Netlink::configure_bridge_port`]
    /// first, and asking for the peer up in this message fails with ENOTCONN
    /// (it would open before its partner is registered).
    #[allow(clippy::too_many_arguments)]
    pub fn create_veth(
        &mut self,
        host: &str,
        host_mac: [u8; 6],
        peer: &str,
        peer_mac: [u8; 6],
        mtu: u32,
        master: u32,
        peer_ns: BorrowedFd<'_>,
    ) -> io::Result<()> {
        let mut peer_msg = LinkMessage::default();
        peer_msg
            .attributes
            .push(LinkAttribute::IfName(peer.to_owned()));
        peer_msg.attributes.push(LinkAttribute::Mtu(mtu));
        peer_msg
            .attributes
            .push(LinkAttribute::Address(peer_mac.to_vec()));
        peer_msg
            .attributes
            .push(LinkAttribute::NetNsFd(peer_ns.as_raw_fd()));

        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(host.to_owned()));
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        msg.attributes
            .push(LinkAttribute::Address(host_mac.to_vec()));
        msg.attributes.push(LinkAttribute::Controller(master));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// Configure a new bridge port before it comes up: no IPv6 address
    /// generation (a port needs none, and its DAD and MLD multicasts would be
    /// flooded to every other pod on the bridge) and, when asked, hairpin
    /// mode so a pod can reach itself through a Service VIP. The kernel
    /// refuses the address mode in the creating message, and applies it
    /// after the up flag in a combined one, hence a message of its own.
    pub fn configure_bridge_port(&mut self, name: &str, hairpin: bool) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        msg.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
            )]));
        if hairpin {
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
                    true,
                )])),
            ]));
        }
        self.request(RouteNetlinkMessage::NewLink(msg), 0).map(drop)
    }

    /// Bring the link called `name` up.
    pub fn set_up_by_name(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        up_header(&mut msg);
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Bring a link up and set its MTU.
    pub fn set_up_with_mtu(&mut self, index: u32, mtu: u32) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        up_header(&mut msg);
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Take the link called `name` down (ENODEV when it does not exist).
    pub fn set_down_by_name(&mut self, name: &str) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0).map(drop)
    }

    /// Delete the link called `name`; `Ok(false)` when it did not exist.
    pub fn delete_link(&mut self, name: &str) -> io::Result<bool> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self.request(RouteNetlinkMessage::DelLink(msg), 0) {
            Ok(_) => Ok(true),
            Err(e) if errno(&e) == libc::ENODEV => Ok(false),
            Err(e) => Err(e),
        }
    }
}
