//! Routes in the main table.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::Netlink;

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub gw: Option<IpAddr>,
    /// Outgoing interface index.
    pub oif: Option<u32>,
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

fn family(v6: bool) -> AddressFamily {
    if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

impl Netlink {
    /// Add a route through interface `oif`, via `gw` when given.
    pub fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(dst.addr().is_ipv6());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(route_address(dst.network())));
        }
        if let Some(gw) = gw {
            msg.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// The main table's routes of one family.
    pub fn routes(&mut self, v6: bool) -> io::Result<Vec<RouteEntry>> {
        let mut req = RouteMessage::default();
        req.header.address_family = family(v6);
        let replies = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewRoute(msg) = reply else {
                continue;
            };
            let mut table = u32::from(msg.header.table);
            let mut dst_ip: Option<IpAddr> = None;
            let mut gw = None;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Table(t) => table = *t,
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                        dst_ip = Some((*a).into())
                    }
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                        dst_ip = Some((*a).into())
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => gw = Some((*a).into()),
                    RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gw = Some((*a).into()),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let unspecified: IpAddr = if v6 {
                IpAddr::V6(0.into())
            } else {
                IpAddr::V4(0.into())
            };
            if let Ok(dst) = IpNet::new(
                dst_ip.unwrap_or(unspecified),
                msg.header.destination_prefix_length,
            ) {
                out.push(RouteEntry { dst, gw, oif });
            }
        }
        Ok(out)
    }
}
