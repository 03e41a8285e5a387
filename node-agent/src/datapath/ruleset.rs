//! The `inet tailroute` table as nftables text, rendered from a spec.
//!
//! What the table does (see `docs/agent-datapath.md`):
//! - postrouting, NAT: pod traffic (source in this node's pod CIDRs) is
//!   masqueraded unless it goes onto the bridge or to a cluster
//!   destination (pod CIDRs, Service CIDRs, cluster nodes' tailnet IPs).
//!   Out of the wan that picks the node's primary address; out of
//!   tailscale0 it picks the node's tailnet IP, so tailnet devices that do
//!   not accept routes can answer. Its priority is `srcnat + 10`: the
//!   kernel lets the first NAT chain that maps a connection decide, so
//!   tailscaled's `ts-postrouting` and kube-proxy's chains (at `srcnat`)
//!   go first and this table only masquerades what they left alone.
//! - forward, `mangle` priority: TCP SYNs forwarded out of or in through
//!   tailscale0 get their MSS clamped to the route MTU (tailscale0 is
//!   1280; pods may have 1500). The chain only rewrites; it accepts and
//!   drops nothing, so tailscaled's `ts-forward` and kube-proxy's filter
//!   chains see every packet as before.
//!
//! Sets hold the prefixes and node IPs, so the rules are the same for any
//! cluster and a change of the node list changes set elements only.

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;

use super::{DatapathError, DatapathSpec};

/// The table's family and name, as nft commands spell them.
pub const TABLE: &str = "inet tailroute";

/// What the table's comment begins with; the spec's hash follows.
const COMMENT_PREFIX: &str = "managed by tailroute-agent, do not edit; spec fnv1a64:";

/// The table definition for `spec` (a `table inet tailroute { ... }`
/// block): what [`transaction`] installs and what the unit tests check.
pub fn render_table(spec: &DatapathSpec) -> Result<String, DatapathError> {
    let spec = spec.canonical()?;
    let body = render_body(&spec);
    Ok(format!(
        "table {TABLE} {{\n\tcomment \"{COMMENT_PREFIX}{:016x}\"\n{body}}}\n",
        fnv1a64(body.as_bytes())
    ))
}

/// One `nft -f -` transaction that replaces the whole table with
/// `table_text` atomically: the kernel applies the batch at once, so there
/// is never a moment without rules, and `add` first makes `delete` safe
/// when the table does not exist yet. `flush table` would keep the sets
/// (and their old element types), hence delete and re-create.
pub fn transaction(table_text: &str) -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n{table_text}")
}

/// The transaction that removes the table, present or not.
pub fn removal() -> String {
    format!("add table {TABLE}\ndelete table {TABLE}\n")
}

/// The spec hash recorded in a listed table's comment, if any.
pub fn spec_hash(listing: &str) -> Option<&str> {
    let start = listing.find(COMMENT_PREFIX)? + COMMENT_PREFIX.len();
    listing.get(start..start + 16)
}

/// One address family's share of the spec.
struct Family {
    /// `4` or `6`: set name suffix.
    tag: u8,
    /// The payload keyword: `ip` or `ip6`.
    keyword: &'static str,
    /// Set element type.
    addr_type: &'static str,
    node_pods: Vec<IpNet>,
    cluster_pods: Vec<IpNet>,
    services: Vec<IpNet>,
    nodes: Vec<IpAddr>,
}

fn families(spec: &DatapathSpec) -> Vec<Family> {
    let v4 = |n: &IpNet| matches!(n, IpNet::V4(_));
    let pick = |nets: &[IpNet], want_v4: bool| -> Vec<IpNet> {
        nets.iter().filter(|n| v4(n) == want_v4).copied().collect()
    };
    let mut out = Vec::new();
    for (want_v4, tag, keyword, addr_type) in
        [(true, 4, "ip", "ipv4_addr"), (false, 6, "ip6", "ipv6_addr")]
    {
        let node_pods = pick(&spec.node_pod_cidrs, want_v4);
        // A family without pods on this node has no pod traffic to handle.
        if node_pods.is_empty() {
            continue;
        }
        out.push(Family {
            tag,
            keyword,
            addr_type,
            node_pods,
            cluster_pods: pick(&spec.cluster_pod_cidrs, want_v4),
            services: pick(&spec.service_cidrs, want_v4),
            nodes: spec
                .cluster_node_tailnet_ips
                .iter()
                .filter(|ip| ip.is_ipv4() == want_v4)
                .copied()
                .collect(),
        });
    }
    out
}

/// Everything inside the table block but its comment.
fn render_body(spec: &DatapathSpec) -> String {
    let families = families(spec);
    let mut out = String::new();
    for f in &families {
        set(
            &mut out,
            &format!("node_pods_v{}", f.tag),
            f.addr_type,
            true,
            &f.node_pods,
        );
        set(
            &mut out,
            &format!("cluster_pods_v{}", f.tag),
            f.addr_type,
            true,
            &f.cluster_pods,
        );
        set(
            &mut out,
            &format!("services_v{}", f.tag),
            f.addr_type,
            true,
            &f.services,
        );
        set(
            &mut out,
            &format!("cluster_nodes_v{}", f.tag),
            f.addr_type,
            false,
            &f.nodes,
        );
    }

    out.push_str("\tchain postrouting {\n");
    out.push_str("\t\ttype nat hook postrouting priority srcnat + 10; policy accept;\n");
    for f in &families {
        let _ = writeln!(
            out,
            "\t\t{} saddr @node_pods_v{} jump pod_egress_v{}",
            f.keyword, f.tag, f.tag
        );
    }
    out.push_str("\t}\n");

    for f in &families {
        let (kw, tag) = (f.keyword, f.tag);
        let _ = writeln!(out, "\tchain pod_egress_v{tag} {{");
        let _ = writeln!(
            out,
            "\t\toifname \"{}\" return comment \"pod to a pod on this node\"",
            spec.bridge
        );
        let _ = writeln!(
            out,
            "\t\t{kw} daddr @cluster_pods_v{tag} return comment \"pod to pod: keep the pod IP\""
        );
        let _ = writeln!(
            out,
            "\t\t{kw} daddr @services_v{tag} return comment \"pod to a Service\""
        );
        let _ = writeln!(
            out,
            "\t\t{kw} daddr @cluster_nodes_v{tag} return comment \"pod to a cluster node\""
        );
        let _ = writeln!(
            out,
            "\t\tmasquerade comment \"pod to the internet or the tailnet: masquerade to the outgoing interface address\""
        );
        out.push_str("\t}\n");
    }

    out.push_str("\tchain mss_clamp {\n");
    out.push_str("\t\ttype filter hook forward priority mangle; policy accept;\n");
    for dir in ["oifname", "iifname"] {
        let _ = writeln!(
            out,
            "\t\t{dir} \"{}\" tcp flags & (syn | rst) == syn tcp option maxseg size set rt mtu",
            spec.tailnet_iface
        );
    }
    out.push_str("\t}\n");
    out
}

fn set<T: ToString>(out: &mut String, name: &str, addr_type: &str, interval: bool, elements: &[T]) {
    let _ = writeln!(out, "\tset {name} {{");
    let _ = writeln!(out, "\t\ttype {addr_type}");
    if interval {
        out.push_str("\t\tflags interval\n");
    }
    // nft refuses `elements = { }`: an empty set simply has no line.
    if !elements.is_empty() {
        let list: Vec<String> = elements.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "\t\telements = {{ {} }}", list.join(", "));
    }
    out.push_str("\t}\n");
}

/// FNV-1a, 64 bits: a stable fingerprint of the rendered rules for the
/// table comment (std's hasher may change between Rust releases).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
