//! Peer route checks and interface facts in a throwaway namespace set up
//! the way tailscaled sets up a node: routes in table 52, `ip rule` 5270.
//!
//! Needs root; without it the tests fail, they never skip.

use std::process::Command;

use cni_testbed::Netns;
use ipnet::IpNet;
use tailroute_agent::datapath::{
    interface_facts, verify_peer_routes, NetnsTarget, RouteVerdict, TAILSCALE_TABLE,
};

fn ip(ns: &Netns, args: &str) {
    let mut full = vec!["-n", ns.name()];
    full.extend(args.split_whitespace());
    let out = Command::new("ip").args(&full).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        full.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a test prefix")
}

/// A node with tailscale0 (MTU 1280) and eth0 holding the default route.
fn node() -> Netns {
    cni_testbed::require_root();
    let node = Netns::create("trdprt").expect("netns");
    ip(
        &node,
        "link add tailscale0 mtu 1280 type veth peer name tspeer",
    );
    ip(&node, "addr add 100.64.0.1/32 dev tailscale0");
    ip(&node, "addr add fd7a:115c:a1e0::1/128 dev tailscale0 nodad");
    ip(&node, "link set tailscale0 up");
    ip(&node, "link set tspeer up");
    ip(&node, "link add eth0 type veth peer name ethpeer");
    ip(&node, "addr add 192.0.2.1/24 dev eth0");
    ip(&node, "link set eth0 up");
    ip(&node, "link set ethpeer up");
    ip(&node, "route add default via 192.0.2.2");
    node
}

#[test]
fn peer_cidrs_are_checked_against_table_52_with_policy_routing() {
    let node = node();
    let target = NetnsTarget::path(node.path());
    ip(&node, "route add 10.244.2.0/24 dev tailscale0 table 52");
    ip(
        &node,
        "-6 route add fd00:10:244:2::/64 dev tailscale0 table 52",
    );
    let peers = [
        net("10.244.2.0/24"),
        net("10.244.3.0/24"),
        net("10.244.4.0/24"),
        net("fd00:10:244:2::/64"),
    ];
    // A static route in main through tailscale0: not tailscaled's.
    ip(&node, "route add 10.244.3.0/24 dev tailscale0");

    // No rule yet: table 52 is never consulted.
    let report = verify_peer_routes(&target, "tailscale0", &peers).expect("verify");
    assert_eq!((report.ipv4_rule, report.ipv6_rule), (None, None));
    assert_eq!(
        report.peers[0].verdict,
        RouteVerdict::OtherInterface {
            interface: "eth0".into(),
            table: 254
        }
    );
    assert!(
        matches!(report.peers[3].verdict, RouteVerdict::NoRoute { .. }),
        "{report:?}"
    );
    assert!(!report.all_via_tailnet());

    ip(&node, "rule add pref 5270 table 52");
    ip(&node, "-6 rule add pref 5270 table 52");
    let report = verify_peer_routes(&target, "tailscale0", &peers).expect("verify");
    assert_eq!(
        (report.ipv4_rule, report.ipv6_rule),
        (Some(5270), Some(5270))
    );
    let verdicts: Vec<&RouteVerdict> = report.peers.iter().map(|p| &p.verdict).collect();
    assert_eq!(
        verdicts,
        [
            &RouteVerdict::ViaTailnet,
            &RouteVerdict::TailnetOtherTable { table: 254 },
            &RouteVerdict::OtherInterface {
                interface: "eth0".into(),
                table: 254
            },
            &RouteVerdict::ViaTailnet,
        ]
    );
    assert_eq!(report.peers[0].probe.to_string(), "10.244.2.1");
    assert_eq!(report.peers[3].cidr, net("fd00:10:244:2::/64"));
    assert_eq!(TAILSCALE_TABLE, 52);

    // A rule in front of table 52 wins, as it would for real traffic.
    ip(&node, "rule add pref 100 to 10.244.2.0/24 table main");
    let report = verify_peer_routes(&target, "tailscale0", &peers[..1]).expect("verify");
    assert_eq!(report.peers[0].verdict.as_str(), "other_interface");
}

#[test]
fn interface_facts_give_mtu_and_addresses() {
    let node = node();
    let target = NetnsTarget::path(node.path());
    let facts = interface_facts(&target, "tailscale0").expect("facts");
    assert_eq!(facts.mtu, 1280);
    assert!(facts.up);
    // A veth, like tailscaled's tun, also has a kernel-made link-local address.
    let link_local = net("fe80::/10");
    let addresses: Vec<IpNet> = facts
        .addresses
        .iter()
        .filter(|a| !link_local.contains(&a.addr()))
        .copied()
        .collect();
    assert_eq!(
        addresses,
        [net("100.64.0.1/32"), net("fd7a:115c:a1e0::1/128")],
        "{facts:?}"
    );
    let e = interface_facts(&target, "tailscale9").expect_err("no such interface");
    assert_eq!(e.kind(), "interface_missing");
    assert!(e.to_string().contains("tailscaled"), "{e}");
}
