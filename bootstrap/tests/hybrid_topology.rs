//! Root tier: the hybrid topology, every node behind a NAT router of its
//! own, so the nodes cannot reach each other's private addresses.

mod common;

use std::net::IpAddr;

use common::{
    assert_none_reach, assert_reaches, route_destinations, route_get, sysctl_in,
    tcp_source_seen_by, TestLab,
};
use tailroute::lab::{Cidr, TopologyMode};

fn addrs(cidrs: Vec<Cidr>) -> Vec<IpAddr> {
    cidrs.into_iter().map(|c| c.addr).collect()
}

/// Every node reaches the control plane, and the control plane sees the
/// node's router WAN address as the source, never the private one.
fn assert_nodes_reach_control_plane_through_nat(lab: &TestLab) {
    let cp = &lab.plan.control_plane;
    for node in &lab.plan.nodes {
        let router = node.router.as_ref().expect("hybrid node has a router");
        for (dst, wan) in addrs(cp.uplink.addresses())
            .into_iter()
            .zip(addrs(router.wan.addresses()))
        {
            assert_reaches(&node.host.namespace, dst);
            let seen = tcp_source_seen_by(&cp.namespace, dst, &node.host.namespace);
            assert_eq!(
                seen, wan,
                "control plane saw {seen} from node {}",
                node.index
            );
        }
    }
}

/// No node reaches another node's private address, and the reason is the
/// topology: only a node's own router has a route to its LAN, the other
/// routers send it to the underlay sink, and the underlay does not forward.
fn assert_lans_are_isolated(lab: &TestLab) {
    let ul = &lab.plan.underlay.namespace;
    let sink = addrs(lab.plan.underlay.bridge.addresses());
    let mut forbidden = Vec::new();
    for node in &lab.plan.nodes {
        let router = node.router.as_ref().expect("hybrid node has a router");
        let lan_nets: Vec<String> = router
            .lan
            .addresses()
            .iter()
            .map(|c| c.network().to_string())
            .collect();
        for other in lab.plan.nodes.iter().filter(|o| o.index != node.index) {
            let other_router = other.router.as_ref().expect("hybrid node has a router");
            for (i, dst) in addrs(node.host.uplink.addresses()).into_iter().enumerate() {
                forbidden.push((other.host.namespace.clone(), dst));
                // The other node's router would hand it to the sink...
                let route =
                    route_get(&other_router.namespace, dst).expect("router has a default route");
                assert_eq!(route["gateway"], sink[i].to_string(), "{route}");
                assert_eq!(route["dev"], other_router.wan.name.as_str(), "{route}");
            }
            // ...and no other namespace has a route to this LAN at all.
            for ns in [
                &other.host.namespace,
                &other_router.namespace,
                &lab.plan.control_plane.namespace,
            ] {
                let dsts = route_destinations(ns);
                for net in &lan_nets {
                    assert!(!dsts.contains(net), "{ns} has a route to {net}: {dsts:?}");
                }
            }
        }
        for dst in addrs(node.host.uplink.addresses()) {
            assert!(
                route_get(ul, dst).is_none(),
                "underlay has a route to {dst}"
            );
        }
    }
    assert_eq!(sysctl_in(ul, "net.ipv4.ip_forward"), "0");
    if lab.plan.dual_stack {
        assert_eq!(sysctl_in(ul, "net.ipv6.conf.all.forwarding"), "0");
    }
    assert!(!forbidden.is_empty());
    assert_none_reach(&forbidden);
}

#[test]
fn hybrid_nodes_reach_the_control_plane_from_their_router_wan_address() {
    let lab = TestLab::up('c', 3, TopologyMode::Hybrid, false);
    assert_nodes_reach_control_plane_through_nat(&lab);
    for router in lab.plan.routers() {
        assert_eq!(sysctl_in(&router.namespace, "net.ipv4.ip_forward"), "1");
    }
}

#[test]
fn hybrid_nodes_cannot_reach_each_others_private_lan() {
    let lab = TestLab::up('d', 3, TopologyMode::Hybrid, false);
    assert_lans_are_isolated(&lab);
}

#[test]
fn hybrid_dual_stack_masquerades_and_isolates_both_families() {
    let lab = TestLab::up('e', 2, TopologyMode::Hybrid, true);
    assert_nodes_reach_control_plane_through_nat(&lab);
    assert_lans_are_isolated(&lab);
}
