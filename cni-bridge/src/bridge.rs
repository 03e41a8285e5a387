//! The node's bridge: created on first use, gateway addresses on it.

use ipnet::IpNet;

use crate::config::NetConf;
use crate::error::{CniError, ErrorCode};
use crate::mac::bridge_mac;
use crate::netlink::{errno, Link, Netlink};

/// Make sure the bridge exists, is a bridge, is up with the configured MTU,
/// and carries every range's gateway address. Safe under concurrent ADDs.
pub fn ensure_bridge(nl: &mut Netlink, conf: &NetConf) -> Result<Link, CniError> {
    let io =
        |what: &str, e: std::io::Error| CniError::io(format!("{what} bridge {}", conf.bridge), e);
    let link = match nl
        .link_by_name(&conf.bridge)
        .map_err(|e| io("looking up", e))?
    {
        Some(link) => link,
        None => {
            match nl.create_bridge(&conf.bridge, conf.mtu, bridge_mac(&conf.bridge)) {
                Ok(()) => {}
                // Another ADD created it a moment ago.
                Err(e) if errno(&e) == libc::EEXIST => {}
                Err(e) => return Err(io("creating", e)),
            }
            nl.link_by_name(&conf.bridge)
                .map_err(|e| io("looking up", e))?
                .ok_or_else(|| {
                    CniError::new(
                        ErrorCode::TryAgainLater,
                        format!("bridge {} vanished while being created", conf.bridge),
                    )
                })?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(CniError::new(
            ErrorCode::BridgeConflict,
            format!(
                "{} exists but is a {} link, not a bridge",
                conf.bridge,
                link.kind.as_deref().unwrap_or("unknown")
            ),
        )
        .details("set \"bridge\" in the config to a free name, or remove that link"));
    }
    if !link.up || link.mtu != conf.mtu {
        nl.set_up_with_mtu(link.index, conf.mtu)
            .map_err(|e| io("bringing up", e))?;
    }
    for range in conf.ipam.range_sets.iter().flat_map(|s| s.ranges()) {
        let gw = IpNet::new(range.gateway, range.subnet.prefix_len())
            .map_err(|e| CniError::io("gateway prefix", e))?;
        nl.add_address(link.index, gw)
            .map_err(|e| io(&format!("adding gateway {gw} to"), e))?;
    }
    Ok(link)
}
