//! CHECK: is the attachment still what ADD made? Bridge, host veth, pod
//! interface, addresses and routes are compared with the record and `prevResult`.

use std::net::IpAddr;

use super::key_of;
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{CniError, ErrorCode};
use crate::ipam::store::read_state;
use crate::netlink::Netlink;
use crate::netns::open_netns;
use crate::result::PrevResult;

fn failed(msg: String) -> CniError {
    CniError::new(ErrorCode::CheckFailed, msg)
}

fn io(what: &str) -> impl Fn(std::io::Error) -> CniError + '_ {
    move |e| CniError::io(what, e)
}

/// Run CHECK.
pub fn check(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| {
            CniError::new(ErrorCode::InvalidNetworkConfig, "CHECK needs prevResult")
                .details("the runtime passes ADD's result as prevResult")
        })
        .and_then(PrevResult::parse)?;
    let key = key_of(inv);
    let state = read_state(&conf.state_dir())?;
    let record = state.find(&key).ok_or_else(|| {
        CniError::new(
            ErrorCode::UnknownContainer,
            format!(
                "no attachment {}/{} on network {}",
                key.container_id, key.ifname, conf.name
            ),
        )
    })?;

    let mut host_nl = Netlink::new().map_err(io("opening netlink"))?;
    let bridge = host_nl
        .link_by_name(&conf.bridge)
        .map_err(io("looking up the bridge"))?
        .ok_or_else(|| failed(format!("bridge {} is missing", conf.bridge)))?;
    let veth = host_nl
        .link_by_name(&record.host_veth)
        .map_err(io("looking up the host veth"))?
        .ok_or_else(|| failed(format!("host veth {} is missing", record.host_veth)))?;
    if veth.master != Some(bridge.index) {
        return Err(failed(format!(
            "host veth {} is not a port of {}",
            veth.name, conf.bridge
        )));
    }
    if !veth.up {
        return Err(failed(format!("host veth {} is down", veth.name)));
    }
    if veth.mtu != conf.mtu {
        return Err(failed(format!(
            "host veth {} has MTU {}, the config says {}",
            veth.name, veth.mtu, conf.mtu
        )));
    }
    if conf.hairpin && veth.hairpin != Some(true) {
        return Err(failed(format!("hairpin mode is off on {}", veth.name)));
    }

    let netns_path = inv.netns.as_deref().unwrap_or(std::path::Path::new(""));
    let netns = open_netns(netns_path).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("cannot open CNI_NETNS {}: {e}", netns_path.display()),
        )
    })?;
    let mut pod_nl = Netlink::in_netns(&netns).map_err(io("entering the pod namespace"))?;
    let pod_if = pod_nl
        .link_by_name(&inv.ifname)
        .map_err(io("looking up the pod interface"))?
        .ok_or_else(|| {
            failed(format!(
                "interface {} is missing from {}",
                inv.ifname,
                netns_path.display()
            ))
        })?;
    if !pod_if.up || pod_if.mtu != conf.mtu {
        return Err(failed(format!(
            "interface {} is down or its MTU {} differs from {}",
            inv.ifname, pod_if.mtu, conf.mtu
        )));
    }

    let have = pod_nl
        .addresses(pod_if.index)
        .map_err(io("listing pod addresses"))?;
    let sandbox_index = prev
        .interfaces
        .iter()
        .position(|i| i.name == inv.ifname && i.sandbox.is_some());
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none() || ip.interface == sandbox_index)
    {
        if !have.contains(&ip.address) {
            return Err(failed(format!(
                "address {} is missing from {}",
                ip.address, inv.ifname
            )));
        }
        if !record.ips.contains(&ip.address) {
            return Err(failed(format!(
                "address {} is not reserved for this attachment",
                ip.address
            )));
        }
    }
    for v6 in [false, true] {
        let wanted: Vec<_> = prev
            .routes
            .iter()
            .filter(|r| r.dst.addr().is_ipv6() == v6)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let routes = pod_nl.routes(v6).map_err(io("listing pod routes"))?;
        for r in wanted {
            let found = routes.iter().any(|have| {
                have.dst == r.dst.trunc()
                    && (r.gw.is_none() || have.gw == r.gw)
                    && have.oif == Some(pod_if.index)
            });
            if !found {
                let via =
                    r.gw.map_or_else(String::new, |g: IpAddr| format!(" via {g}"));
                return Err(failed(format!(
                    "route {}{via} is missing from {}",
                    r.dst, inv.ifname
                )));
            }
        }
    }
    Ok(())
}
