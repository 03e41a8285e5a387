//! Root tier: tailroute-bridge in throwaway namespaces, command by command.
//! Every test builds its own node namespace, bridge, pods and data dir.

mod common;

use std::collections::HashSet;

use cni_testbed::{Netns, PluginCall};
use common::{addrs, eventually, link_details, path, ping, result_ip, with_prev, Node};
use serde_json::{json, Value};

fn lifecycle(ranges: Value, expect: &[&str]) {
    let node = Node::new("life");
    let conf = node.conf("1.1.0", ranges);
    let pod = node.pod();
    let result = node.add(&conf, "c1", &pod, "eth0");

    // The result: [bridge, host veth, pod eth0], one address per family.
    let ifaces = result["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifaces.len(), 3);
    assert_eq!(ifaces[0]["name"], node.bridge.as_str());
    assert_eq!(ifaces[2]["sandbox"], path(&pod));
    let got: Vec<String> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| i["address"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(got, expect);
    assert_eq!(
        addrs(&pod, "eth0"),
        expect,
        "pod addresses match the result"
    );
    assert_eq!(node.reserved(), expect, "addresses reserved in the store");

    let record = &node.state()["attachments"][0];
    assert_eq!(record["netns"], path(&pod));
    assert_eq!(record["hostVeth"], ifaces[1]["name"]);

    let check = node.call(&PluginCall::check(
        "c1",
        path(&pod),
        "eth0",
        with_prev(&conf, &result),
    ));
    assert!(check.success(), "CHECK: {}", check.stdout);
    let status = node.call(&PluginCall::new("STATUS", conf.clone()));
    assert!(status.success(), "STATUS: {}", status.stdout);

    let mut keep = conf.clone();
    keep["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    assert!(node.call(&PluginCall::new("GC", keep)).success());
    assert_eq!(node.reserved(), expect, "GC kept the listed attachment");

    node.del(&conf, "c1", path(&pod), "eth0");
    assert!(node.reserved().is_empty());
    assert!(
        node.up_host_veths().is_empty(),
        "DEL cuts the pod off before it returns"
    );
    node.wait_no_host_veths();
    eventually("pod interface removed", || addrs(&pod, "eth0").is_empty());
    node.del(&conf, "c1", path(&pod), "eth0");
}

#[test]
fn add_check_status_gc_del_ipv4() {
    lifecycle(json!([[{"subnet": "10.123.0.0/24"}]]), &["10.123.0.2/24"]);
}

#[test]
fn add_check_status_gc_del_ipv6() {
    lifecycle(json!([[{"subnet": "fd00:123::/64"}]]), &["fd00:123::2/64"]);
}

#[test]
fn add_check_status_gc_del_dual_stack() {
    lifecycle(
        json!([[{"subnet": "10.123.0.0/24"}], [{"subnet": "fd00:123::/64"}]]),
        &["10.123.0.2/24", "fd00:123::2/64"],
    );
}

#[test]
fn del_twice_and_del_with_an_empty_netns_release_the_ip() {
    let node = Node::new("delempty");
    let conf = node.v4();
    let pod = node.pod();
    node.add(&conf, "c1", &pod, "eth0");
    node.del(&conf, "c1", "", "eth0");
    assert!(node.reserved().is_empty());
    assert!(node.up_host_veths().is_empty(), "cut off without the netns");
    node.wait_no_host_veths();
    eventually("its peer went with it", || addrs(&pod, "eth0").is_empty());
    node.del(&conf, "c1", "", "eth0");
    node.del(&conf, "c1", path(&pod), "eth0");
}

#[test]
fn del_after_the_netns_vanished_releases_the_ip() {
    let node = Node::new("delgone");
    let conf = node.v4();
    let pod = node.pod();
    let netns = path(&pod).to_owned();
    node.add(&conf, "c1", &pod, "eth0");
    drop(pod);
    node.del(&conf, "c1", &netns, "eth0");
    assert!(node.reserved().is_empty());
    node.wait_no_host_veths();
}

#[test]
fn add_right_after_del_of_the_same_attachment_succeeds() {
    // A runtime retrying: ADD, DEL, ADD again with the same key and netns,
    // while the first link may still be being reaped.
    let node = Node::new("readd");
    let conf = node.v4();
    let pod = node.pod();
    for _ in 0..5 {
        node.add(&conf, "c1", &pod, "eth0");
        node.del(&conf, "c1", path(&pod), "eth0");
    }
    assert!(node.reserved().is_empty());
    node.wait_no_host_veths();
}

#[test]
fn add_into_a_netns_whose_previous_link_is_still_being_reaped_succeeds() {
    // What a DEL leaves until its background deletion finishes: a host port
    // of ours, down, held by no record, whose peer is eth0 in the pod.
    let node = Node::new("pending");
    let conf = node.v4();
    let pod = node.pod();
    node.add(&conf, "first", &pod, "eth0"); // creates the bridge
    node.del(&conf, "first", path(&pod), "eth0");
    node.wait_no_host_veths();
    let made = node
        .ns
        .exec(&[
            "ip",
            "link",
            "add",
            "trv0123456789ab",
            "master",
            &node.bridge,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.name(),
        ])
        .expect("ip");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let r = node.add(&conf, "second", &pod, "eth0");
    assert_eq!(
        node.host_veths(),
        [r["interfaces"][1]["name"].as_str().expect("veth")]
    );

    // An interface that is not such a leftover is never touched.
    let live = node.pod();
    node.add(&conf, "live", &live, "eth0");
    let again = node.call(&PluginCall::add("other", path(&live), "eth0", conf.clone()));
    assert_eq!(
        again.json().expect("error")["code"],
        102,
        "a live pod's interface is refused, not replaced"
    );
}

#[test]
fn add_onto_an_existing_interface_fails_and_reserves_nothing() {
    let node = Node::new("exists");
    let conf = node.v4();
    let pod = node.pod();
    let out = pod
        .exec(&[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
        ])
        .expect("ip");
    assert!(out.status.success());
    let add = node.call(&PluginCall::add("c1", path(&pod), "eth0", conf.clone()));
    assert_eq!(
        add.json().expect("error JSON")["code"],
        102,
        "{}",
        add.stdout
    );
    assert!(node.reserved().is_empty());
    assert!(node.host_veths().is_empty());

    // And an ADD repeated for a live attachment fails the same way.
    let pod2 = node.pod();
    node.add(&conf, "c2", &pod2, "eth0");
    let again = node.call(&PluginCall::add("c2", path(&pod2), "eth0", conf.clone()));
    assert_eq!(again.json().expect("error JSON")["code"], 102);
    assert_eq!(
        node.reserved().len(),
        1,
        "the first ADD's reservation is untouched"
    );
    node.del(&conf, "c2", path(&pod2), "eth0");
}

#[test]
fn check_notices_a_removed_address() {
    let node = Node::new("chkaddr");
    let conf = node.v4();
    let pod = node.pod();
    let result = node.add(&conf, "c1", &pod, "eth0");
    let addr = result["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_owned();
    assert!(pod
        .exec(&["ip", "addr", "del", &addr, "dev", "eth0"])
        .expect("ip")
        .status
        .success());
    let check = node.call(&PluginCall::check(
        "c1",
        path(&pod),
        "eth0",
        with_prev(&conf, &result),
    ));
    let err = check.json().expect("error JSON");
    assert_eq!(err["code"], 103);
    assert!(err["msg"].as_str().unwrap_or("").contains(&addr), "{err}");
    node.del(&conf, "c1", path(&pod), "eth0");
}

#[test]
fn check_notices_a_removed_route() {
    let node = Node::new("chkroute");
    let conf = node.conf(
        "1.1.0",
        json!([[{"subnet": "10.123.0.0/24"}], [{"subnet": "fd00:123::/64"}]]),
    );
    let pod = node.pod();
    let result = node.add(&conf, "c1", &pod, "eth0");
    assert!(pod
        .exec(&["ip", "-6", "route", "del", "default"])
        .expect("ip")
        .status
        .success());
    let check = node.call(&PluginCall::check(
        "c1",
        path(&pod),
        "eth0",
        with_prev(&conf, &result),
    ));
    let err = check.json().expect("error JSON");
    assert_eq!(err["code"], 103);
    assert!(
        err["msg"].as_str().unwrap_or("").contains("route ::/0"),
        "{err}"
    );
    node.del(&conf, "c1", path(&pod), "eth0");
}

#[test]
fn check_notices_a_missing_host_veth_and_an_unknown_container() {
    let node = Node::new("chkveth");
    let conf = node.v4();
    let pod = node.pod();
    let result = node.add(&conf, "c1", &pod, "eth0");
    let unknown = node.call(&PluginCall::check(
        "nope",
        path(&pod),
        "eth0",
        with_prev(&conf, &result),
    ));
    assert_eq!(unknown.json().expect("error JSON")["code"], 3);
    let veth = result["interfaces"][1]["name"]
        .as_str()
        .expect("veth")
        .to_owned();
    assert!(node
        .ns
        .exec(&["ip", "link", "del", &veth])
        .expect("ip")
        .status
        .success());
    let check = node.call(&PluginCall::check(
        "c1",
        path(&pod),
        "eth0",
        with_prev(&conf, &result),
    ));
    assert_eq!(check.json().expect("error JSON")["code"], 103);
    node.del(&conf, "c1", path(&pod), "eth0");
    assert!(node.reserved().is_empty());
}

#[test]
fn gc_releases_exactly_what_is_not_listed_and_sweeps_strays() {
    let node = Node::new("gc");
    let conf = node.v4();
    let pods: Vec<Netns> = (0..4).map(|_| node.pod()).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| node.add(&conf, &format!("c{i}"), p, "eth0"))
        .collect();
    // A stray veth on the bridge that no record accounts for.
    let stray = node
        .ns
        .exec(&[
            "ip",
            "link",
            "add",
            "trv000000000000",
            "master",
            &node.bridge,
            "type",
            "veth",
            "peer",
            "name",
            "strayp",
        ])
        .expect("ip");
    assert!(
        stray.status.success(),
        "{}",
        String::from_utf8_lossy(&stray.stderr)
    );

    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": "c0", "ifname": "eth0"}, {"containerID": "c2", "ifname": "eth0"}]);
    let out = node.call(&PluginCall::new("GC", gc));
    assert!(out.success(), "GC: {} {}", out.stdout, out.stderr);

    let kept: HashSet<String> = node.reserved().into_iter().collect();
    let want: HashSet<String> = [0, 2]
        .iter()
        .map(|&i| {
            results[i]["ips"][0]["address"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(kept, want);
    let veths: HashSet<String> = node.host_veths().into_iter().collect();
    let want_veths: HashSet<String> = [0, 2]
        .iter()
        .map(|&i| {
            results[i]["interfaces"][1]["name"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        veths, want_veths,
        "unlisted and stray veths deleted, listed ones kept"
    );
    assert!(addrs(&pods[1], "eth0").is_empty() && addrs(&pods[3], "eth0").is_empty());
    assert!(
        ping(&pods[0], &result_ip(&results[2], 0)),
        "kept pods still talk"
    );

    // GC with no list at all (what cnitool sends) releases everything.
    assert!(node.call(&PluginCall::new("GC", conf.clone())).success());
    assert!(node.reserved().is_empty());
    assert!(node.up_host_veths().is_empty());
    node.wait_no_host_veths();
}

#[test]
fn two_pods_ping_each_other_and_the_gateway_over_v4_and_v6() {
    let node = Node::new("ping");
    let conf = node.conf(
        "1.1.0",
        json!([[{"subnet": "10.123.0.0/24"}], [{"subnet": "fd00:123::/64"}]]),
    );
    let (a, b) = (node.pod(), node.pod());
    let ra = node.add(&conf, "a", &a, "eth0");
    let rb = node.add(&conf, "b", &b, "eth0");
    for (from, to) in [(&a, &rb), (&b, &ra)] {
        assert!(ping(from, &result_ip(to, 0)), "v4 pod to pod");
        assert!(ping(from, &result_ip(to, 1)), "v6 pod to pod");
    }
    assert!(ping(&a, "10.123.0.1"), "v4 gateway");
    assert!(ping(&a, "fd00:123::1"), "v6 gateway");
    node.del(&conf, "a", path(&a), "eth0");
    node.del(&conf, "b", path(&b), "eth0");
}

#[test]
fn hairpin_mtu_and_a_pinned_bridge_mac_are_set_on_the_links() {
    let node = Node::new("links");
    let mut conf = node.v4();
    conf["mtu"] = json!(1400);
    let pods: Vec<Netns> = (0..3).map(|_| node.pod()).collect();
    let first = node.add(&conf, "c0", &pods[0], "eth0");
    let bridge_mac = first["interfaces"][0]["mac"]
        .as_str()
        .expect("mac")
        .to_owned();
    for (i, p) in pods.iter().enumerate().skip(1) {
        node.add(&conf, &format!("c{i}"), p, "eth0");
    }
    node.del(&conf, "c0", path(&pods[0]), "eth0");
    eventually("c0's veth reaped", || node.host_veths().len() == 2);

    let bridge = link_details(&node.ns, &node.bridge);
    assert_eq!(bridge["mtu"], 1400);
    assert_eq!(
        bridge["address"],
        bridge_mac.as_str(),
        "bridge MAC unchanged as ports come and go"
    );
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge");
    for veth in node.host_veths() {
        let d = link_details(&node.ns, &veth);
        assert_eq!(d["mtu"], 1400, "{veth}");
        assert_eq!(
            d["linkinfo"]["info_slave_data"]["hairpin"], true,
            "{veth} hairpin"
        );
        assert_eq!(d["master"], node.bridge.as_str());
        let v6 = node
            .ns
            .ip_json(&["-6", "addr", "show", "dev", &veth])
            .expect("ip");
        assert!(
            v6[0]["addr_info"].as_array().is_none_or(Vec::is_empty),
            "{veth}: a bridge port has no IPv6 address"
        );
    }
    for p in &pods[1..] {
        let d = link_details(p, "eth0");
        assert_eq!(d["mtu"], 1400);
        assert!(d["flags"]
            .as_array()
            .is_some_and(|f| f.contains(&json!("UP"))));
    }

    let mut no_hairpin = node.v4();
    no_hairpin["hairpinMode"] = json!(false);
    let pod = node.pod();
    let r = node.add(&no_hairpin, "nh", &pod, "eth0");
    let veth = r["interfaces"][1]["name"]
        .as_str()
        .expect("veth")
        .to_owned();
    assert_eq!(
        link_details(&node.ns, &veth)["linkinfo"]["info_slave_data"]["hairpin"],
        false
    );
}

#[test]
fn results_and_errors_follow_the_requested_version() {
    let node = Node::new("versions");
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let conf = node.conf(version, json!([[{"subnet": "10.123.0.0/24"}]]));
        let pod = node.pod();
        let r = node.add(&conf, &format!("v{i}"), &pod, "eth0");
        assert_eq!(r["cniVersion"], *version);
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            version.starts_with("0."),
            "{version}"
        );
        assert_eq!(
            r["interfaces"][2].get("mtu").is_some(),
            *version == "1.1.0",
            "{version}"
        );
        let check = node.call(&PluginCall::check(
            &format!("v{i}"),
            path(&pod),
            "eth0",
            with_prev(&conf, &r),
        ));
        if version.starts_with("0.3") {
            assert_eq!(
                check.json().expect("error")["code"],
                1,
                "CHECK before 0.4.0"
            );
            assert_eq!(check.json().expect("error")["cniVersion"], *version);
        } else {
            assert!(check.success(), "{version}: {}", check.stdout);
        }
        node.del(&conf, &format!("v{i}"), path(&pod), "eth0");
    }
    let old = node.conf("1.0.0", json!([[{"subnet": "10.123.0.0/24"}]]));
    assert_eq!(
        node.call(&PluginCall::new("STATUS", old.clone()))
            .json()
            .expect("error")["code"],
        1
    );
    assert_eq!(
        node.call(&PluginCall::new("GC", old))
            .json()
            .expect("error")["code"],
        1
    );
    let version = node.call(&PluginCall::new("VERSION", json!({"cniVersion": "1.0.0"})));
    assert_eq!(
        version.json().expect("version")["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn requested_ips_from_runtime_config_and_cni_args_are_honoured() {
    let node = Node::new("reqip");
    let mut conf = node.v4();
    conf["runtimeConfig"] = json!({"ips": ["10.123.0.50/24"]});
    let a = node.pod();
    let ra = node.add(&conf, "a", &a, "eth0");
    assert_eq!(ra["ips"][0]["address"], "10.123.0.50/24");

    let b = node.pod();
    let rb = node.call(&PluginCall::add("b", path(&b), "eth0", node.v4()).args("IP=10.123.0.60"));
    assert_eq!(
        rb.json().expect("result")["ips"][0]["address"],
        "10.123.0.60/24"
    );

    let c = node.pod();
    let taken =
        node.call(&PluginCall::add("c", path(&c), "eth0", node.v4()).args("IP=10.123.0.50"));
    assert_eq!(taken.json().expect("error")["code"], 101);
    assert_eq!(
        node.reserved().len(),
        2,
        "a refused request reserves nothing"
    );
    assert!(node.host_veths().len() == 2);
}

#[test]
fn status_reports_an_exhausted_range_with_code_50() {
    let node = Node::new("full");
    let conf = node.conf("1.1.0", json!([[{"subnet": "10.123.0.0/30"}]]));
    assert!(node
        .call(&PluginCall::new("STATUS", conf.clone()))
        .success());
    let pod = node.pod();
    node.add(&conf, "only", &pod, "eth0");
    let status = node.call(&PluginCall::new("STATUS", conf.clone()));
    assert_eq!(
        status.json().expect("error")["code"],
        50,
        "{}",
        status.stdout
    );
    let other = node.pod();
    let add = node.call(&PluginCall::add(
        "second",
        path(&other),
        "eth0",
        conf.clone(),
    ));
    assert_eq!(add.json().expect("error")["code"], 100);
    assert!(addrs(&other, "eth0").is_empty());
    node.del(&conf, "only", path(&pod), "eth0");
    assert!(node.call(&PluginCall::new("STATUS", conf)).success());
}

#[test]
fn concurrent_adds_never_share_an_address() {
    let node = Node::new("conc");
    let conf = node.conf(
        "1.1.0",
        json!([[{"subnet": "10.123.0.0/24"}], [{"subnet": "fd00:123::/64"}]]),
    );
    let pods: Vec<Netns> = (0..24).map(|_| node.pod()).collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || node.add(conf, &format!("c{i}"), p, "eth0"))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut seen = HashSet::new();
    for r in &results {
        for ip in r["ips"].as_array().expect("ips") {
            assert!(
                seen.insert(ip["address"].as_str().unwrap_or("").to_owned()),
                "duplicate {ip}"
            );
        }
    }
    assert_eq!(node.reserved().len(), 48);
    std::thread::scope(|s| {
        for (i, p) in pods.iter().enumerate() {
            let (node, conf) = (&node, &conf);
            s.spawn(move || node.del(conf, &format!("c{i}"), path(p), "eth0"));
        }
    });
    assert!(node.reserved().is_empty());
    assert!(node.up_host_veths().is_empty());
    node.wait_no_host_veths();
}
