//! Root tier: the flat topology, every node directly on the underlay.

mod common;

use std::net::IpAddr;

use common::{assert_reaches, ip_json, route_get, sysctl_in, TestLab};
use tailroute::lab::{Cidr, TopologyMode};

fn addrs(cidrs: Vec<Cidr>) -> Vec<IpAddr> {
    cidrs.into_iter().map(|c| c.addr).collect()
}

/// Every node pings the control plane and every other node, in every
/// address family the lab has.
fn assert_full_mesh(lab: &TestLab) {
    let cp = addrs(lab.plan.control_plane.uplink.addresses());
    for node in &lab.plan.nodes {
        for &dst in &cp {
            assert_reaches(&node.host.namespace, dst);
        }
        for other in lab.plan.nodes.iter().filter(|o| o.index != node.index) {
            for dst in addrs(other.host.uplink.addresses()) {
                assert_reaches(&node.host.namespace, dst);
            }
        }
    }
}

/// The underlay is a closed world: it has no route out of the lab and does
/// not forward, so a default route into it leads nowhere.
fn assert_underlay_is_closed(lab: &TestLab) {
    let ul = &lab.plan.underlay.namespace;
    assert_eq!(sysctl_in(ul, "net.ipv4.ip_forward"), "0");
    assert!(
        route_get(ul, "192.0.2.1".parse().expect("address")).is_none(),
        "underlay has a way out"
    );
    if lab.plan.dual_stack {
        assert_eq!(sysctl_in(ul, "net.ipv6.conf.all.forwarding"), "0");
        assert!(route_get(ul, "2001:db8:ffff::1".parse().expect("address")).is_none());
    }
    // Only lo, the bridge and its ports: no uplink of any kind.
    let prefix = lab.prefix();
    for link in ip_json(Some(ul), &["link", "show"])
        .as_array()
        .expect("link list")
    {
        let name = link["ifname"].as_str().expect("ifname");
        assert!(
            name == "lo" || name.starts_with(&prefix),
            "unexpected {name} in underlay"
        );
    }
}

#[test]
fn flat_three_nodes_reach_every_node_and_the_control_plane() {
    let lab = TestLab::up('a', 3, TopologyMode::Flat, false);
    assert_full_mesh(&lab);
    assert_underlay_is_closed(&lab);
    // The nodes' default route goes to the underlay sink.
    let n1 = &lab.plan.nodes[0].host;
    let route =
        route_get(&n1.namespace, "192.0.2.1".parse().expect("address")).expect("default route");
    assert_eq!(route["gateway"], "198.18.0.1", "{route}");
}

#[test]
fn flat_dual_stack_nodes_reach_each_other_over_ipv4_and_ipv6() {
    let lab = TestLab::up('b', 3, TopologyMode::Flat, true);
    assert_full_mesh(&lab);
    assert_underlay_is_closed(&lab);
}
