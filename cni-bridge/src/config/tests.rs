use super::*;
use serde_json::json;

fn base() -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "tailroute",
        "type": "tailroute-bridge",
        "ipam": {"ranges": [[{"subnet": "10.244.1.0/24"}]]}
    })
}

fn parse(v: &Value) -> Result<NetConf, CniError> {
    NetConf::parse(v.to_string().as_bytes())
}

fn with(mut v: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut v;
    for key in &path[..path.len() - 1] {
        cur = cur.get_mut(*key).expect("path");
    }
    cur[path[path.len() - 1]] = value;
    v
}

fn code_of(v: &Value) -> ErrorCode {
    parse(v).expect_err("should be refused").code
}

#[test]
fn the_minimal_config_gets_the_documented_defaults() {
    let conf = parse(&base()).expect("valid");
    assert_eq!(conf.bridge, DEFAULT_BRIDGE);
    assert_eq!(conf.mtu, DEFAULT_MTU);
    assert!(conf.hairpin);
    assert!(conf.default_route);
    assert_eq!(conf.ipam.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(
        conf.state_dir(),
        PathBuf::from("/run/tailroute/bridge/tailroute")
    );
    assert_eq!(conf.ipam.range_sets.len(), 1);
    assert_eq!(
        conf.ipam.range_sets[0].ranges()[0].gateway.to_string(),
        "10.244.1.1"
    );
}

#[test]
fn the_documented_example_parses() {
    let conf = parse(&json!({
        "cniVersion": "1.1.0",
        "name": "tailroute",
        "type": "tailroute-bridge",
        "bridge": "tailroute0",
        "mtu": 1280,
        "hairpinMode": true,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": false,
        "capabilities": {"ips": true},
        "ipam": {
            "ranges": [
                [{"subnet": "10.244.1.0/24", "gateway": "10.244.1.1"}],
                [{"subnet": "fd00:10:244:1::/64", "rangeStart": "fd00:10:244:1::10", "rangeEnd": "fd00:10:244:1::ffff"}]
            ],
            "routes": [{"dst": "10.96.0.0/12"}],
            "exclude": ["10.244.1.250/31"],
            "dataDir": "/run/tailroute/bridge"
        },
        "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}
    }))
    .expect("valid");
    assert_eq!(conf.ipam.range_sets.len(), 2);
    assert!(conf.ipam.range_sets[1].is_ipv6());
    assert_eq!(conf.ipam.routes.len(), 1);
    assert_eq!(conf.ipam.exclude.len(), 1);
    assert_eq!(conf.dns.as_ref().map(|d| d.nameservers.len()), Some(1));
}

#[test]
fn runtime_injected_fields_are_read() {
    let v = with(
        base(),
        &["runtimeConfig"],
        json!({"ips": ["10.244.1.9/24"], "portMappings": []}),
    );
    let v = with(v, &["args"], json!({"cni": {"ips": ["10.244.1.10"]}}));
    let v = with(
        v,
        &["cni.dev/valid-attachments"],
        json!([{"containerID": "a", "ifname": "eth0"}]),
    );
    let v = with(
        v,
        &["prevResult"],
        json!({"cniVersion": "1.1.0", "ips": []}),
    );
    let conf = parse(&v).expect("valid");
    assert_eq!(conf.requested_ips.len(), 2);
    assert_eq!(conf.valid_attachments.as_ref().map(Vec::len), Some(1));
    assert!(conf.prev_result.is_some());
}

#[test]
fn the_spec_typo_attachments_key_is_accepted_too() {
    let conf = parse(&with(
        base(),
        &["cni.dev/attachments"],
        json!([{"containerID": "a", "ifname": "eth0"}]),
    ))
    .expect("valid");
    assert_eq!(conf.valid_attachments.map(|v| v.len()), Some(1));
}

#[test]
fn a_mistyped_key_is_refused_with_a_suggestion() {
    let err = parse(&with(base(), &["hairpinMod"], json!(true))).expect_err("typo");
    assert_eq!(err.code, ErrorCode::InvalidNetworkConfig);
    assert!(
        err.details.contains("did you mean \"hairpinMode\""),
        "{}",
        err.details
    );
    let err = parse(&with(base(), &["ipam", "rangess"], json!([]))).expect_err("typo");
    assert!(
        err.details.contains("did you mean \"ranges\""),
        "{}",
        err.details
    );
    let err = parse(&with(
        base(),
        &["ipam", "ranges"],
        json!([[{"subnet": "10.244.1.0/24", "gatway": "10.244.1.1"}]]),
    ))
    .expect_err("typo");
    assert!(
        err.details.contains("did you mean \"gateway\""),
        "{}",
        err.details
    );
}

#[test]
fn ipmasq_is_refused_with_code_2_and_names_the_agent() {
    let err = parse(&with(base(), &["ipMasq"], json!(true))).expect_err("ipMasq");
    assert_eq!(err.code, ErrorCode::UnsupportedField);
    assert!(err.details.contains("tailroute-agent"), "{}", err.details);
    assert!(parse(&with(base(), &["ipMasq"], json!(false))).is_ok());
}

#[test]
fn unimplemented_reference_options_are_refused_only_when_asked_for() {
    for (key, on) in [
        ("vlan", json!(100)),
        ("promiscMode", json!(true)),
        ("macspoofchk", json!(true)),
        ("vlanTrunk", json!([{"id": 1}])),
    ] {
        assert_eq!(
            code_of(&with(base(), &[key], on)),
            ErrorCode::UnsupportedField,
            "{key}"
        );
    }
    assert!(parse(&with(base(), &["vlan"], json!(0))).is_ok());
    assert!(parse(&with(base(), &["promiscMode"], json!(false))).is_ok());
    assert_eq!(
        code_of(&with(base(), &["isGateway"], json!(false))),
        ErrorCode::UnsupportedField
    );
    assert_eq!(
        code_of(&with(base(), &["ipam", "type"], json!("host-local"))),
        ErrorCode::UnsupportedField
    );
}

#[test]
fn pod_cidrs_inside_the_tailnet_ranges_are_refused() {
    for subnet in [
        "100.64.1.0/24",
        "100.100.0.0/16",
        "fd7a:115c:a1e0:1::/64",
        "100.0.0.0/8",
    ] {
        let err = parse(&with(
            base(),
            &["ipam", "ranges"],
            json!([[{"subnet": subnet}]]),
        ))
        .expect_err(subnet);
        assert_eq!(err.code, ErrorCode::InvalidNetworkConfig);
        assert!(
            err.msg.contains("overlaps the tailnet range"),
            "{}",
            err.msg
        );
    }
}

#[test]
fn invalid_ranges_are_refused_with_code_7() {
    let cases = [
        json!([]),
        json!([[]]),
        json!([[{"subnet": "10.244.1.5/24"}]]),
        json!([[{"subnet": "10.244.1.0/33"}]]),
        json!([[{"subnet": "not-a-cidr"}]]),
        json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "10.244.0.0/16"}]]),
        json!([[{"subnet": "10.244.1.0/24"}, {"subnet": "fd00::/64"}]]),
        json!([[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.2.1"}]]),
        json!([[{"subnet": "10.244.1.0/24", "gateway": "10.244.1.0"}]]),
        json!([[{"subnet": "10.244.1.0/31"}]]),
        json!("10.244.1.0/24"),
    ];
    for ranges in cases {
        assert_eq!(
            code_of(&with(base(), &["ipam", "ranges"], ranges.clone())),
            ErrorCode::InvalidNetworkConfig,
            "{ranges}"
        );
    }
}

#[test]
fn the_host_bits_error_suggests_the_network() {
    let err = parse(&with(
        base(),
        &["ipam", "ranges"],
        json!([[{"subnet": "10.244.1.5/24"}]]),
    ))
    .expect_err("host bits");
    assert!(err.details.contains("10.244.1.0/24"));
}

#[test]
fn other_invalid_fields_are_refused() {
    let cases = [
        with(base(), &["mtu"], json!(10)),
        with(base(), &["mtu"], json!("1280")),
        with(base(), &["bridge"], json!("a-bridge-name-too-long")),
        with(base(), &["name"], json!("../etc")),
        with(base(), &["hairpinMode"], json!("yes")),
        with(base(), &["ipam", "dataDir"], json!("relative/dir")),
        with(base(), &["ipam", "routes"], json!([{"dst": "fd00::/8"}])),
        with(base(), &["ipam", "exclude"], json!(["nope"])),
        with(base(), &["dns"], json!({"nameserver": ["1.1.1.1"]})),
        with(base(), &["runtimeConfig"], json!({"ips": ["x"]})),
        with(base(), &["cni.dev/valid-attachments"], json!([{"id": "a"}])),
        with(
            with(
                base(),
                &["ipam", "ranges"],
                json!([[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00::/64"}]]),
            ),
            &["mtu"],
            json!(1000),
        ),
    ];
    for v in cases {
        assert_eq!(code_of(&v), ErrorCode::InvalidNetworkConfig, "{v}");
    }
}

#[test]
fn missing_fields_name_what_is_missing() {
    for key in ["cniVersion", "name", "type", "ipam"] {
        let mut v = base();
        v.as_object_mut().expect("object").remove(key);
        let err = parse(&v).expect_err(key);
        assert!(err.msg.contains(key), "{key}: {}", err.msg);
    }
}

#[test]
fn broken_json_is_a_decoding_error_and_versions_are_checked() {
    assert_eq!(
        NetConf::parse(b"{\"cniVersion\": ").expect_err("json").code,
        ErrorCode::Decoding
    );
    assert_eq!(
        NetConf::parse(b"[]").expect_err("array").code,
        ErrorCode::Decoding
    );
    assert_eq!(
        code_of(&with(base(), &["cniVersion"], json!("0.2.0"))),
        ErrorCode::IncompatibleVersion
    );
    assert_eq!(
        NetConf::peek_version(br#"{"cniVersion":"0.4.0"}"#),
        Some(CniVersion::V0_4_0)
    );
    assert_eq!(NetConf::peek_version(b"nonsense"), None);
}

#[test]
fn domain_scoped_keys_pass_for_runtimes_that_inject_them() {
    assert!(parse(&with(base(), &["example.com/annotation"], json!({"x": 1}))).is_ok());
}

#[test]
fn edit_distance_is_levenshtein() {
    assert_eq!(edit_distance("ranges", "ranges"), 0);
    assert_eq!(edit_distance("gatway", "gateway"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = NetConf::parse(&bytes);
        }

        #[test]
        fn any_v4_slash_24_outside_the_tailnet_parses(a in 1u8..=223, b: u8, c: u8) {
            prop_assume!(!(a == 100 && (64..128).contains(&b)));
            let v = with(base(), &["ipam", "ranges"], json!([[{"subnet": format!("{a}.{b}.{c}.0/24")}]]));
            let conf = parse(&v).expect("valid");
            prop_assert_eq!(conf.ipam.range_sets[0].ranges()[0].gateway.to_string(), format!("{a}.{b}.{c}.1"));
        }

        #[test]
        fn arbitrary_json_values_in_known_fields_never_panic(mtu in any::<i64>(), hairpin in any::<Option<bool>>(), name in "\\PC{0,20}") {
            let v = with(with(with(base(), &["mtu"], json!(mtu)), &["hairpinMode"], json!(hairpin)), &["name"], json!(name));
            let _ = parse(&v);
        }
    }
}
