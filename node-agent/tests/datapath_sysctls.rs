//! Forwarding and rp_filter sysctls in a throwaway namespace: read before
//! write, strict becomes loose, off stays off, and the calling thread ends
//! up back in its own namespace. The host's values are never touched.
//!
//! Needs root; without it the tests fail, they never skip.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use cni_testbed::Netns;
use ipnet::IpNet;
use tailroute_agent::datapath::{apply_sysctls, DatapathSpec, NetnsGuard, NetnsTarget};

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

/// Reads or writes sysctls inside `ns` from a thread of its own.
fn in_netns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path().to_owned();
    std::thread::spawn(move || {
        let _guard = NetnsGuard::enter(&path).expect("enter the namespace");
        f()
    })
    .join()
    .expect("the thread panicked")
}

fn get(ns: &Netns, key: &'static str) -> String {
    in_netns(ns, move || {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .to_owned()
    })
}

fn set(ns: &Netns, key: &'static str, value: &'static str) {
    in_netns(ns, move || {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        fs::write(&path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
    })
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a test prefix")
}

fn thread_netns_inode() -> u64 {
    fs::metadata("/proc/thread-self/ns/net")
        .expect("stat my namespace")
        .ino()
}

#[test]
fn strict_rp_filter_is_loosened_forwarding_is_on_and_off_stays_off() {
    cni_testbed::require_root();
    let host_forward = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("host value");
    let node = Netns::create("trdpsys").expect("netns");
    ip(&node, "link add tailscale0 type veth peer name tspeer");
    ip(&node, "link add tailroute0 type bridge");
    set(&node, "net.ipv4.conf.all.rp_filter", "1");
    set(&node, "net.ipv4.conf.tailscale0.rp_filter", "1");
    set(&node, "net.ipv4.conf.tailroute0.rp_filter", "0");
    assert_eq!(
        get(&node, "net.ipv4.ip_forward"),
        "0",
        "a fresh namespace forwards"
    );

    let mut spec = DatapathSpec::new();
    spec.node_pod_cidrs = vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")];
    let target = NetnsTarget::path(node.path());
    let before = thread_netns_inode();
    let outcome = apply_sysctls(&spec, &target).expect("apply");
    assert_eq!(
        thread_netns_inode(),
        before,
        "the thread was left in another namespace"
    );

    let changes: Vec<String> = outcome.changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        changes,
        [
            "net.ipv4.ip_forward: 0 -> 1",
            "net.ipv6.conf.all.forwarding: 0 -> 1",
            "net.ipv4.conf.all.rp_filter: 1 -> 2",
            "net.ipv4.conf.tailscale0.rp_filter: 1 -> 2",
        ]
    );
    assert!(outcome.absent_interfaces.is_empty());
    assert_eq!(get(&node, "net.ipv4.ip_forward"), "1");
    assert_eq!(get(&node, "net.ipv6.conf.all.forwarding"), "1");
    assert_eq!(get(&node, "net.ipv4.conf.all.rp_filter"), "2");
    assert_eq!(get(&node, "net.ipv4.conf.tailscale0.rp_filter"), "2");
    assert_eq!(
        get(&node, "net.ipv4.conf.tailroute0.rp_filter"),
        "0",
        "a 0 was raised"
    );

    let again = apply_sysctls(&spec, &target).expect("apply again");
    assert!(
        again.changes.is_empty(),
        "second apply wrote {:?}",
        again.changes
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("host value"),
        host_forward,
        "the host's ip_forward changed"
    );
}

#[test]
fn ipv4_only_node_leaves_ipv6_forwarding_and_reports_a_missing_bridge() {
    cni_testbed::require_root();
    let node = Netns::create("trdpsys4").expect("netns");
    ip(&node, "link add tailscale0 type veth peer name tspeer");
    let mut spec = DatapathSpec::new();
    spec.node_pod_cidrs = vec![net("10.244.1.0/24")];
    let outcome = apply_sysctls(&spec, &NetnsTarget::path(node.path())).expect("apply");
    let keys: Vec<&str> = outcome.changes.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["net.ipv4.ip_forward"], "{:?}", outcome.changes);
    assert_eq!(get(&node, "net.ipv6.conf.all.forwarding"), "0");
    assert_eq!(outcome.absent_interfaces, ["tailroute0"]);
}

#[test]
fn a_missing_namespace_is_a_netns_error() {
    cni_testbed::require_root();
    let mut spec = DatapathSpec::new();
    spec.node_pod_cidrs = vec![net("10.244.1.0/24")];
    let e = apply_sysctls(&spec, &NetnsTarget::path("/run/netns/trdp-does-not-exist"))
        .expect_err("no such namespace");
    assert_eq!(e.kind(), "netns");
}
