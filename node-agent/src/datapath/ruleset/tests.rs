use super::*;

fn net(s: &str) -> IpNet {
    s.parse().expect("a test prefix")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("a test address")
}

fn v4_spec() -> DatapathSpec {
    let mut spec = DatapathSpec::new();
    spec.node_pod_cidrs = vec![net("10.244.1.0/24")];
    spec.cluster_pod_cidrs = vec![net("10.244.0.0/16")];
    spec.service_cidrs = vec![net("10.96.0.0/12")];
    spec.cluster_node_tailnet_ips = vec![ip("100.64.0.3"), ip("100.64.0.2")];
    spec
}

fn dual_spec() -> DatapathSpec {
    let mut spec = v4_spec();
    spec.node_pod_cidrs.push(net("fd00:10:244:1::/64"));
    spec.cluster_pod_cidrs.push(net("fd00:10:244::/56"));
    spec.service_cidrs.push(net("fd00:10:96::/112"));
    spec.cluster_node_tailnet_ips
        .extend([ip("fd7a:115c:a1e0::2"), ip("fd7a:115c:a1e0::3")]);
    spec
}

/// The v4-only table, whole, but for the hash in the comment.
const V4_BODY: &str = r#"	set node_pods_v4 {
		type ipv4_addr
		flags interval
		elements = { 10.244.1.0/24 }
	}
	set cluster_pods_v4 {
		type ipv4_addr
		flags interval
		elements = { 10.244.0.0/16 }
	}
	set services_v4 {
		type ipv4_addr
		flags interval
		elements = { 10.96.0.0/12 }
	}
	set cluster_nodes_v4 {
		type ipv4_addr
		elements = { 100.64.0.2, 100.64.0.3 }
	}
	chain postrouting {
		type nat hook postrouting priority srcnat + 10; policy accept;
		ip saddr @node_pods_v4 jump pod_egress_v4
	}
	chain pod_egress_v4 {
		oifname "tailroute0" return comment "pod to a pod on this node"
		ip daddr @cluster_pods_v4 return comment "pod to pod: keep the pod IP"
		ip daddr @services_v4 return comment "pod to a Service"
		ip daddr @cluster_nodes_v4 return comment "pod to a cluster node"
		masquerade comment "pod to the internet or the tailnet: masquerade to the outgoing interface address"
	}
	chain mss_clamp {
		type filter hook forward priority mangle; policy accept;
		oifname "tailscale0" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu
		iifname "tailscale0" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu
	}
}
"#;

#[test]
fn v4_only_table_is_exactly_this() {
    let text = render_table(&v4_spec()).expect("render");
    let (head, body) = text.split_once("\"\n").expect("a comment line");
    assert!(
        head.starts_with("table inet tailroute {\n\tcomment \"managed by tailroute-agent"),
        "{head}"
    );
    assert_eq!(body, V4_BODY);
    assert!(
        !text.contains("ip6"),
        "IPv6 rules on a v4-only node:\n{text}"
    );
}

#[test]
fn dual_stack_has_both_families_with_their_own_sets() {
    let text = render_table(&dual_spec()).expect("render");
    for needle in [
        "\tset node_pods_v6 {\n\t\ttype ipv6_addr\n\t\tflags interval\n\t\telements = { fd00:10:244:1::/64 }\n",
        "elements = { fd00:10:244::/56 }",
        "elements = { fd00:10:96::/112 }",
        "\tset cluster_nodes_v6 {\n\t\ttype ipv6_addr\n\t\telements = { fd7a:115c:a1e0::2, fd7a:115c:a1e0::3 }\n",
        "\t\tip saddr @node_pods_v4 jump pod_egress_v4\n\t\tip6 saddr @node_pods_v6 jump pod_egress_v6\n",
        "\t\tip6 daddr @cluster_pods_v6 return",
        "\t\tip6 daddr @cluster_nodes_v6 return",
        "\t\toifname \"tailscale0\" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    // The v4 part is the v4-only table's: one family never leaks into the other.
    assert!(text.contains("elements = { 100.64.0.2, 100.64.0.3 }"));
    assert_eq!(text.matches("\t\tmasquerade comment").count(), 2, "{text}");
}

#[test]
fn v6_only_node_renders_no_v4_rules() {
    let mut spec = dual_spec();
    spec.node_pod_cidrs.retain(|n| matches!(n, IpNet::V6(_)));
    let text = render_table(&spec).expect("render");
    assert!(!text.contains("_v4"), "{text}");
    assert!(text.contains("pod_egress_v6"), "{text}");
}

#[test]
fn order_and_duplicates_do_not_change_the_text() {
    let mut shuffled = dual_spec();
    shuffled.cluster_node_tailnet_ips.reverse();
    shuffled.cluster_node_tailnet_ips.push(ip("100.64.0.2"));
    shuffled.cluster_pod_cidrs.reverse();
    assert_eq!(
        render_table(&shuffled).expect("render"),
        render_table(&dual_spec()).expect("render")
    );
}

#[test]
fn a_node_list_change_changes_elements_and_the_hash_only() {
    let before = render_table(&v4_spec()).expect("render");
    let mut spec = v4_spec();
    spec.cluster_node_tailnet_ips.push(ip("100.64.0.4"));
    let after = render_table(&spec).expect("render");
    let differing: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(differing.len(), 2, "{differing:?}");
    assert!(differing[0].0.contains("comment"));
    assert_eq!(
        differing[1].1,
        "\t\telements = { 100.64.0.2, 100.64.0.3, 100.64.0.4 }"
    );
    assert_ne!(spec_hash(&before), spec_hash(&after));
}

#[test]
fn empty_sets_have_no_elements_line() {
    let mut spec = v4_spec();
    spec.service_cidrs.clear();
    spec.cluster_node_tailnet_ips.clear();
    let text = render_table(&spec).expect("render");
    assert!(text.contains("\tset services_v4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}\n"));
    assert!(!text.contains("elements = {  }"), "{text}");
}

#[test]
fn transaction_replaces_the_table_atomically() {
    let table = render_table(&v4_spec()).expect("render");
    let tx = transaction(&table);
    assert!(tx.starts_with(
        "add table inet tailroute\ndelete table inet tailroute\ntable inet tailroute {\n"
    ));
    assert_eq!(
        removal(),
        "add table inet tailroute\ndelete table inet tailroute\n"
    );
}

#[test]
fn spec_hash_is_read_back_from_a_listing() {
    let table = render_table(&v4_spec()).expect("render");
    let hash = spec_hash(&table).expect("a hash");
    assert_eq!(hash.len(), 16);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(spec_hash("table inet tailroute {\n}"), None);
}
