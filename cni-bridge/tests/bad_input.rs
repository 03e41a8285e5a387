//! Root tier: malformed configs and environments. Each gets the error code
//! the spec (or docs/cni-bridge.md) names, a JSON error object on stdout in
//! the requested version, a line on stderr, and leaves nothing behind: no
//! reservation, no link in the node, no interface in the pod.

mod common;

use cni_testbed::{PluginCall, Stdin};
use common::{path, Node};
use serde_json::{json, Value};

/// One bad invocation and the code it must get.
struct Case {
    what: &'static str,
    code: u64,
    call: PluginCall,
}

/// A plain file to pass as CNI_NETNS; removed on drop, also when the test fails.
struct PlainFile(std::path::PathBuf);

impl PlainFile {
    fn new() -> Self {
        let p =
            std::env::temp_dir().join(format!("trb-not-netns-{}", cni_testbed::unique_suffix()));
        std::fs::write(&p, b"").expect("plain file");
        PlainFile(p)
    }
}

impl Drop for PlainFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn set(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn set_ipam(mut v: Value, key: &str, value: Value) -> Value {
    v["ipam"][key] = value;
    v
}

fn remove(mut v: Value, key: &str) -> Value {
    v.as_object_mut().expect("object").remove(key);
    v
}

fn ranges(v: Value, r: Value) -> Value {
    set_ipam(v, "ranges", r)
}

#[test]
fn malformed_configs_and_environments_get_the_right_code_and_leave_nothing() {
    let node = Node::new("bad");
    let pod = node.pod();
    let netns = path(&pod).to_owned();
    let good = node.v4();
    let add = |conf: Value| PluginCall::add("bad1", &netns, "eth0", conf);
    let not_a_netns = PlainFile::new();
    let plain_file = not_a_netns.0.to_str().expect("utf-8").to_owned();

    let cases = vec![
        Case {
            what: "stdin is not JSON",
            code: 6,
            call: add(Value::Null).raw_stdin("{\"cniVersion\": \"1.1.0\", "),
        },
        Case {
            what: "stdin is empty",
            code: 6,
            call: add(Value::Null).raw_stdin(""),
        },
        Case {
            what: "stdin is a JSON array",
            code: 6,
            call: add(json!([1, 2])),
        },
        Case {
            what: "unknown cniVersion",
            code: 1,
            call: add(set(good.clone(), "cniVersion", json!("0.2.0"))),
        },
        Case {
            what: "future cniVersion",
            code: 1,
            call: add(set(good.clone(), "cniVersion", json!("2.0.0"))),
        },
        Case {
            what: "cniVersion missing",
            code: 7,
            call: add(remove(good.clone(), "cniVersion")),
        },
        Case {
            what: "cniVersion is a number",
            code: 7,
            call: add(set(good.clone(), "cniVersion", json!(1.1))),
        },
        Case {
            what: "name missing",
            code: 7,
            call: add(remove(good.clone(), "name")),
        },
        Case {
            what: "name is a path",
            code: 7,
            call: add(set(good.clone(), "name", json!("../../etc"))),
        },
        Case {
            what: "type missing",
            code: 7,
            call: add(remove(good.clone(), "type")),
        },
        Case {
            what: "ipam missing",
            code: 7,
            call: add(remove(good.clone(), "ipam")),
        },
        Case {
            what: "ipam.ranges empty",
            code: 7,
            call: add(ranges(good.clone(), json!([]))),
        },
        Case {
            what: "subnet is not a CIDR",
            code: 7,
            call: add(ranges(good.clone(), json!([[{"subnet": "10.123.0/24"}]]))),
        },
        Case {
            what: "subnet has host bits",
            code: 7,
            call: add(ranges(good.clone(), json!([[{"subnet": "10.123.0.9/24"}]]))),
        },
        Case {
            what: "overlapping ranges",
            code: 7,
            call: add(ranges(
                good.clone(),
                json!([[{"subnet": "10.123.0.0/24"}, {"subnet": "10.123.0.128/25"}]]),
            )),
        },
        Case {
            what: "podCIDR inside the tailnet's 100.64.0.0/10",
            code: 7,
            call: add(ranges(
                good.clone(),
                json!([[{"subnet": "100.100.1.0/24"}]]),
            )),
        },
        Case {
            what: "podCIDR inside the tailnet's fd7a:115c:a1e0::/48",
            code: 7,
            call: add(ranges(
                good.clone(),
                json!([[{"subnet": "fd7a:115c:a1e0:ab::/64"}]]),
            )),
        },
        Case {
            what: "rangeStart outside the subnet",
            code: 7,
            call: add(ranges(
                good.clone(),
                json!([[{"subnet": "10.123.0.0/24", "rangeStart": "10.124.0.5"}]]),
            )),
        },
        Case {
            what: "gateway is the broadcast address",
            code: 7,
            call: add(ranges(
                good.clone(),
                json!([[{"subnet": "10.123.0.0/24", "gateway": "10.123.0.255"}]]),
            )),
        },
        Case {
            what: "two IPv4 range sets",
            code: 7,
            call: add(ranges(
                good.clone(),
                json!([[{"subnet": "10.123.0.0/24"}], [{"subnet": "10.124.0.0/24"}]]),
            )),
        },
        Case {
            what: "mtu too small",
            code: 7,
            call: add(set(good.clone(), "mtu", json!(20))),
        },
        Case {
            what: "bridge name too long",
            code: 7,
            call: add(set(good.clone(), "bridge", json!("a-much-too-long-bridge"))),
        },
        Case {
            what: "mistyped key",
            code: 7,
            call: add(set(good.clone(), "hairpinMod", json!(true))),
        },
        Case {
            what: "mistyped ipam key",
            code: 7,
            call: add(set_ipam(good.clone(), "datadir", json!("/run/x"))),
        },
        Case {
            what: "relative dataDir",
            code: 7,
            call: add(set_ipam(good.clone(), "dataDir", json!("run/x"))),
        },
        Case {
            what: "runtimeConfig.ips not addresses",
            code: 7,
            call: add(set(good.clone(), "runtimeConfig", json!({"ips": ["ten"]}))),
        },
        Case {
            what: "ipMasq asked for",
            code: 2,
            call: add(set(good.clone(), "ipMasq", json!(true))),
        },
        Case {
            what: "host-local IPAM type",
            code: 2,
            call: add(set_ipam(good.clone(), "type", json!("host-local"))),
        },
        Case {
            what: "VLAN asked for",
            code: 2,
            call: add(set(good.clone(), "vlan", json!(42))),
        },
        Case {
            what: "isGateway false",
            code: 2,
            call: add(set(good.clone(), "isGateway", json!(false))),
        },
        Case {
            what: "CNI_COMMAND missing",
            code: 4,
            call: PluginCall {
                command: String::new(),
                ..add(good.clone())
            },
        },
        Case {
            what: "CNI_COMMAND unknown",
            code: 4,
            call: PluginCall {
                command: "ATTACH".into(),
                ..add(good.clone())
            },
        },
        Case {
            what: "CNI_CONTAINERID missing",
            code: 4,
            call: PluginCall {
                container_id: None,
                ..add(good.clone())
            },
        },
        Case {
            what: "CNI_CONTAINERID with a slash",
            code: 4,
            call: add(good.clone()).container_id("../../etc/passwd"),
        },
        Case {
            what: "CNI_IFNAME too long",
            code: 4,
            call: add(good.clone()).ifname("eth0-far-too-long"),
        },
        Case {
            what: "CNI_NETNS missing on ADD",
            code: 4,
            call: PluginCall {
                netns: None,
                ..add(good.clone())
            },
        },
        Case {
            what: "CNI_NETNS does not exist",
            code: 4,
            call: add(good.clone()).netns("/run/netns/does-not-exist-trb"),
        },
        Case {
            what: "CNI_NETNS is not a namespace",
            code: 4,
            call: add(good.clone()).netns(&plain_file),
        },
        Case {
            what: "CNI_ARGS pair without '='",
            code: 4,
            call: add(good.clone()).args("K8S_POD_NAME"),
        },
        Case {
            what: "CNI_ARGS unknown key",
            code: 2,
            call: add(good.clone()).args("COLOUR=blue"),
        },
        Case {
            what: "CNI_ARGS IP not an address",
            code: 4,
            call: add(good.clone()).args("IP=10.123.0.300"),
        },
        Case {
            what: "requested IP outside the range",
            code: 101,
            call: add(good.clone()).args("IP=10.99.0.5"),
        },
        Case {
            what: "requested IP is the gateway",
            code: 101,
            call: add(good.clone()).args("IP=10.123.0.1"),
        },
        Case {
            what: "CHECK without prevResult",
            code: 7,
            call: PluginCall::check("bad1", &netns, "eth0", good.clone()),
        },
        Case {
            what: "CHECK at 0.3.1",
            code: 1,
            call: PluginCall::check(
                "bad1",
                &netns,
                "eth0",
                set(good.clone(), "cniVersion", json!("0.3.1")),
            ),
        },
        Case {
            what: "STATUS at 1.0.0",
            code: 1,
            call: PluginCall::new("STATUS", set(good.clone(), "cniVersion", json!("1.0.0"))),
        },
        Case {
            what: "GC with a malformed attachment list",
            code: 7,
            call: PluginCall::new(
                "GC",
                set(good.clone(), "cni.dev/valid-attachments", json!("all")),
            ),
        },
    ];
    assert!(cases.len() >= 30, "the issue asks for at least 30 cases");

    let mut failures = Vec::new();
    for case in &cases {
        let out = node.call(&case.call);
        let err = out.json().unwrap_or(Value::Null);
        let requested = match &case.call.stdin {
            Stdin::Json(v) => v["cniVersion"]
                .as_str()
                .filter(|v| ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"].contains(v)),
            Stdin::Raw(_) => None,
        };
        let problems: Vec<String> = [
            (out.exit_code == 0).then(|| "exit code 0".to_owned()),
            (err["code"].as_u64() != Some(case.code))
                .then(|| format!("code {} (want {})", err["code"], case.code)),
            err["msg"]
                .as_str()
                .is_none_or(str::is_empty)
                .then(|| "no msg".to_owned()),
            requested
                .filter(|v| err["cniVersion"] != *v)
                .map(|v| format!("answered in {} not {v}", err["cniVersion"])),
            out.stderr
                .is_empty()
                .then(|| "nothing on stderr".to_owned()),
            (!node.reserved().is_empty()).then(|| "left a reservation".to_owned()),
            (!node.host_veths().is_empty()).then(|| "left a host veth".to_owned()),
            (!common::addrs(&pod, "eth0").is_empty()).then(|| "left a pod interface".to_owned()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {} (stdout {})",
                case.what,
                problems.join(", "),
                out.stdout.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "bad input: {} cases, each refused with its code and nothing left behind",
        cases.len()
    );
}
