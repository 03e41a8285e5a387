//! ADD: reserve addresses, then create the veth with its peer in the pod.
//!
//! Order matters for crash safety: the attachment record is committed
//! *before* any link exists, so whatever instant the plugin dies at, the
//! DEL that follows (or GC) finds the record and the deterministic host veth
//! name, and releases both.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use super::key_of;
use crate::attachment::{host_veth_name, Attachment, AttachmentKey, PodRef, HOST_VETH_PREFIX};
use crate::bridge::ensure_bridge;
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::{CniError, ErrorCode};
use crate::ipam::allocator::{allocate, Allocation};
use crate::ipam::store::{read_state, LockedStore};
use crate::mac::{format_mac, host_veth_mac, pod_mac};
use crate::netlink::{errno, Link, Netlink};
use crate::netns::open_netns;
use crate::result::{CniResult, Interface, IpConfig, Route};

/// Run ADD.
pub fn add(inv: &Invocation, conf: &NetConf) -> Result<CniResult, CniError> {
    let key = key_of(inv);
    let netns_path = inv
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set"))?;
    let netns = open_pod_netns(netns_path)?;
    let mut pod_nl = Netlink::in_netns(&netns).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_NETNS {} is not a network namespace: {e}",
                netns_path.display()
            ),
        )
    })?;
    let mut host_nl = Netlink::new().map_err(|e| CniError::io("opening netlink", e))?;
    let host_veth = host_veth_name(&key);
    // Refuse before reserving anything, so a refused ADD leaves no state.
    if let Some(existing) = pod_interface(&mut pod_nl, inv)? {
        if !finish_pending_del(&mut host_nl, conf, &existing)? {
            return Err(interface_exists(inv, netns_path));
        }
    }

    let allocations = reserve(inv, conf, &key, &host_veth)?;
    match attach(
        inv,
        conf,
        &key,
        &netns,
        &mut host_nl,
        &mut pod_nl,
        &host_veth,
        &allocations,
    ) {
        Ok(result) => Ok(result),
        Err(err) => {
            // Undo now rather than wait for the runtime's DEL; errors here are
            // secondary to the one being returned, and DEL/GC retry them.
            let _ = host_nl.delete_link(&host_veth);
            if let Ok(Some(mut store)) = LockedStore::open_existing(&conf.state_dir()) {
                if store.state.remove(&key).is_some() {
                    let _ = store.commit();
                }
            }
            Err(err)
        }
    }
}

fn open_pod_netns(path: &Path) -> Result<File, CniError> {
    open_netns(path).map_err(|e| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("cannot open CNI_NETNS {}: {e}", path.display()),
        )
        .details("the pod's network namespace must exist while ADD runs")
    })
}

fn pod_interface(pod_nl: &mut Netlink, inv: &Invocation) -> Result<Option<Link>, CniError> {
    pod_nl
        .link_by_name(&inv.ifname)
        .map_err(|e| CniError::io("looking up the pod interface", e))
}

/// The pod already has an interface by this name. If it is the far end of
/// one of this plugin's bridge ports that a DEL has cut off (down, held by
/// no record) and is still reaping, delete it now and return true: a
/// runtime may ADD into the same namespace right after DEL. Anything else
/// is left alone (false).
fn finish_pending_del(
    host_nl: &mut Netlink,
    conf: &NetConf,
    existing: &Link,
) -> Result<bool, CniError> {
    let Some(peer_index) = existing.peer_index else {
        return Ok(false);
    };
    let lookup = |e| CniError::io("looking up the pod interface's peer", e);
    let Some(peer) = host_nl.link_by_index(peer_index).map_err(lookup)? else {
        return Ok(false);
    };
    let ours = peer.name.starts_with(HOST_VETH_PREFIX) && peer.kind.as_deref() == Some("veth");
    if !ours || peer.up {
        return Ok(false);
    }
    let state = read_state(&conf.state_dir())?;
    if state.attachments.iter().any(|a| a.host_veth == peer.name) {
        return Ok(false);
    }
    host_nl
        .delete_link(&peer.name)
        .map_err(|e| CniError::io(format!("removing {} left by a DEL", peer.name), e))?;
    Ok(true)
}

fn interface_exists(inv: &Invocation, netns: &Path) -> CniError {
    CniError::new(
        ErrorCode::InterfaceExists,
        format!(
            "interface {} already exists in {}",
            inv.ifname,
            netns.display()
        ),
    )
    .details("ADD creates the interface; DEL the attachment first or use another CNI_IFNAME")
}

/// Take addresses and commit the attachment record, under the store lock.
fn reserve(
    inv: &Invocation,
    conf: &NetConf,
    key: &AttachmentKey,
    host_veth: &str,
) -> Result<Vec<Allocation>, CniError> {
    let mut store = LockedStore::open(&conf.state_dir())?;
    let mut requested: Vec<IpAddr> = conf.requested_ips.clone();
    requested.extend(&inv.args.ips);
    let sets = &conf.ipam.range_sets;
    let exclude = &conf.ipam.exclude;
    let allocations = if requested.is_empty() {
        // An ADD repeated after a crash keeps the addresses it already had.
        let previous: Vec<IpAddr> = store
            .state
            .find(key)
            .map(|a| a.addrs().collect())
            .unwrap_or_default();
        let kept = (!previous.is_empty())
            .then(|| allocate(&mut store.state, sets, exclude, key, &previous).ok())
            .flatten();
        match kept {
            Some(a) => a,
            None => allocate(&mut store.state, sets, exclude, key, &[])?,
        }
    } else {
        allocate(&mut store.state, sets, exclude, key, &requested)?
    };
    store.state.remove(key);
    let pod = (inv.args.pod_namespace.is_some()
        || inv.args.pod_name.is_some()
        || inv.args.pod_uid.is_some())
    .then(|| PodRef {
        namespace: inv.args.pod_namespace.clone(),
        name: inv.args.pod_name.clone(),
        uid: inv.args.pod_uid.clone(),
    });
    store.state.attachments.push(Attachment {
        container_id: key.container_id.clone(),
        ifname: key.ifname.clone(),
        netns: inv.netns.clone(),
        host_veth: host_veth.to_owned(),
        ips: allocations.iter().map(|a| a.address).collect(),
        pod,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    store.commit()?;
    Ok(allocations)
}

#[allow(clippy::too_many_arguments)]
fn attach(
    inv: &Invocation,
    conf: &NetConf,
    key: &AttachmentKey,
    netns: &File,
    host_nl: &mut Netlink,
    pod_nl: &mut Netlink,
    host_veth: &str,
    allocations: &[Allocation],
) -> Result<CniResult, CniError> {
    let netns_path = inv.netns.as_deref().unwrap_or(Path::new(""));
    let bridge = ensure_bridge(host_nl, conf)?;
    let host_mac = host_veth_mac(key);
    let addrs: Vec<IpAddr> = allocations.iter().map(|a| a.address.addr()).collect();
    let pod_mac = pod_mac(&addrs);
    let create = |nl: &mut Netlink| {
        nl.create_veth(
            host_veth,
            host_mac,
            &inv.ifname,
            pod_mac,
            conf.mtu,
            bridge.index,
            netns.as_fd(),
        )
    };
    if let Err(e) = create(host_nl) {
        if errno(&e) != libc::EEXIST {
            return Err(CniError::io(
                format!("creating veth {host_veth} / {}", inv.ifname),
                e,
            ));
        }
        if pod_nl.link_by_name(&inv.ifname).ok().flatten().is_some() {
            return Err(interface_exists(inv, netns_path));
        }
        // A host veth of this attachment survived an ADD that died without
        // its DEL; it is ours by name, so replace it.
        host_nl
            .delete_link(host_veth)
            .map_err(|e| CniError::io(format!("removing stale {host_veth}"), e))?;
        create(host_nl)
            .map_err(|e| CniError::io(format!("creating veth {host_veth} / {}", inv.ifname), e))?;
    }
    host_nl
        .configure_bridge_port(host_veth, conf.hairpin)
        .map_err(|e| CniError::io(format!("configuring bridge port {host_veth}"), e))?;
    host_nl
        .set_up_by_name(host_veth)
        .map_err(|e| CniError::io(format!("bringing up {host_veth}"), e))?;

    let pod_if = pod_nl
        .link_by_name(&inv.ifname)
        .map_err(|e| CniError::io("looking up the pod interface", e))?
        .ok_or_else(|| {
            CniError::io(
                format!("{} in {}", inv.ifname, netns_path.display()),
                "missing right after creation",
            )
        })?;
    pod_nl
        .set_up_with_mtu(pod_if.index, conf.mtu)
        .map_err(|e| CniError::io(format!("bringing up {}", inv.ifname), e))?;
    for a in allocations {
        pod_nl
            .add_address(pod_if.index, a.address)
            .map_err(|e| CniError::io(format!("adding {} to {}", a.address, inv.ifname), e))?;
    }
    let routes = pod_routes(conf, allocations);
    for r in &routes {
        pod_nl.add_route(r.dst, r.gw, pod_if.index).map_err(|e| {
            let via = r.gw.map_or("link".to_owned(), |g| g.to_string());
            let err = CniError::io(format!("adding route {} via {via} in the pod", r.dst), &e);
            if errno(&e) == libc::EEXIST {
                err.details("the pod already has this route, probably from another interface; set \"isDefaultGateway\": false on the second network")
            } else {
                err
            }
        })?;
    }

    let bridge_mac = bridge.mac.map(|m| format_mac(&m)).unwrap_or_default();
    Ok(CniResult {
        interfaces: vec![
            Interface {
                name: conf.bridge.clone(),
                mac: bridge_mac,
                mtu: conf.mtu,
                sandbox: None,
            },
            Interface {
                name: host_veth.to_owned(),
                mac: format_mac(&host_mac),
                mtu: conf.mtu,
                sandbox: None,
            },
            Interface {
                name: inv.ifname.clone(),
                mac: format_mac(&pod_mac),
                mtu: conf.mtu,
                sandbox: Some(netns_path.display().to_string()),
            },
        ],
        ips: allocations
            .iter()
            .map(|a| IpConfig {
                address: a.address,
                gateway: a.gateway,
                interface: 2,
            })
            .collect(),
        routes,
        dns: conf.dns.clone(),
    })
}

/// The pod's routes: a default route per family through its gateway (unless
/// `isDefaultGateway` is false), then the configured extra routes.
pub fn pod_routes(conf: &NetConf, allocations: &[Allocation]) -> Vec<Route> {
    let gateway_for = |v6: bool| {
        allocations
            .iter()
            .find(|a| a.gateway.is_ipv6() == v6)
            .map(|a| a.gateway)
    };
    let mut routes = Vec::new();
    if conf.default_route {
        for a in allocations {
            let any = if a.gateway.is_ipv6() {
                IpNet::V6(Default::default())
            } else {
                IpNet::V4(Default::default())
            };
            routes.push(Route {
                dst: any,
                gw: Some(a.gateway),
            });
        }
    }
    for r in &conf.ipam.routes {
        let gw = r.gw.or_else(|| gateway_for(r.dst.addr().is_ipv6()));
        let route = Route {
            dst: r.dst.trunc(),
            gw,
        };
        if !routes.contains(&route) {
            routes.push(route);
        }
    }
    routes
}
