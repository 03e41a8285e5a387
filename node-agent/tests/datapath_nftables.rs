//! The `inet tailroute` table against real traffic, in throwaway namespaces.
//!
//! A "node" namespace holds the bridge `tailroute0` with one pod behind it,
//! a fake `tailscale0` (a veth, MTU 1280, tailnet addresses, routes in
//! table 52 with the `ip rule` tailscaled adds) to a "tailnet" namespace,
//! and a `wan0` veth to an "internet" namespace. The tailnet namespace
//! plays a remote node's pod (10.244.2.2), a cluster node (100.64.0.2)
//! and a laptop (100.64.0.9); each destination namespace runs a small TCP
//! server that answers with the source address it saw and the MSS of the
//! accepted socket. Nothing runs in, or changes, the host's namespace.
//!
//! Needs root; without it the tests fail, they never skip.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use cni_testbed::Netns;
use ipnet::IpNet;
use tailroute_agent::datapath::{
    apply_sysctls, ApplyReason, DatapathSpec, DatapathTable, NetnsGuard, NetnsTarget,
};

const PORT: u16 = 7000;

/// Answers every connection with "<peer address> <TCP_MAXSEG>\n".
const SERVER: &str = r#"
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 7000))
s.listen(16)
print("ready", flush=True)
while True:
    c, addr = s.accept()
    peer = addr[0]
    if peer.startswith("::ffff:"):
        peer = peer[7:]
    mss = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    try:
        c.sendall(("%s %d\n" % (peer, mss)).encode())
    finally:
        c.close()
"#;

/// A server process in a namespace, killed (by pid) and reaped on drop.
struct Server(Child);

impl Server {
    fn start(ns: &Netns) -> Server {
        let mut child = cni_testbed::command_in(ns.path(), "python3")
            .expect("open the namespace")
            .args(["-c", SERVER])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn python3");
        let stdout = child.stdout.take().expect("piped stdout");
        let server = Server(child);
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the server's first line");
        assert_eq!(
            line.trim(),
            "ready",
            "the server in {} did not start",
            ns.name()
        );
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Node, pod, tailnet and internet namespaces wired as the module doc says.
/// Fields drop in order: servers first, then the namespaces (which takes
/// their interfaces with them).
struct Lab {
    _servers: Vec<Server>,
    node: Netns,
    pod: Netns,
    _tailnet: Netns,
    _internet: Netns,
}

fn ip(ns: &Netns, args: &str) {
    let mut full = vec!["-n", ns.name()];
    full.extend(args.split_whitespace());
    let out = std::process::Command::new("ip")
        .args(&full)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        full.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn build() -> Lab {
        cni_testbed::require_root();
        let node = Netns::create("trdpnode").expect("netns");
        let pod = Netns::create("trdppod").expect("netns");
        let tailnet = Netns::create("trdptnet").expect("netns");
        let internet = Netns::create("trdpwan").expect("netns");
        for ns in [&node, &pod, &tailnet, &internet] {
            cni_testbed::set_lo_up(ns).expect("lo up");
        }

        // The bridge and one pod on it.
        ip(&node, "link add tailroute0 type bridge");
        ip(&node, "addr add 10.244.1.1/24 dev tailroute0");
        ip(&node, "addr add fd00:10:244:1::1/64 dev tailroute0 nodad");
        ip(&node, "link set tailroute0 up");
        ip(
            &node,
            &format!(
                "link add vpod0 type veth peer name eth0 netns {}",
                pod.name()
            ),
        );
        ip(&node, "link set vpod0 master tailroute0 up");
        ip(&pod, "addr add 10.244.1.2/24 dev eth0");
        ip(&pod, "addr add fd00:10:244:1::2/64 dev eth0 nodad");
        ip(&pod, "link set eth0 up");
        ip(&pod, "route add default via 10.244.1.1");
        ip(&pod, "-6 route add default via fd00:10:244:1::1");

        // tailscale0: MTU 1280 on the node, 1500 on the far side, so only
        // the clamp keeps the MSS small.
        ip(
            &node,
            &format!(
                "link add tailscale0 mtu 1280 type veth peer name tn0 mtu 1500 netns {}",
                tailnet.name()
            ),
        );
        ip(&node, "addr add 100.64.0.1/32 dev tailscale0");
        ip(&node, "addr add fd7a:115c:a1e0::1/128 dev tailscale0 nodad");
        ip(&node, "link set tailscale0 up");
        for addr in ["100.64.0.2/32", "100.64.0.9/32", "10.244.2.2/24"] {
            ip(&tailnet, &format!("addr add {addr} dev tn0"));
        }
        for addr in [
            "fd7a:115c:a1e0::2/128",
            "fd7a:115c:a1e0::9/128",
            "fd00:10:244:2::2/64",
        ] {
            ip(&tailnet, &format!("addr add {addr} dev tn0 nodad"));
        }
        ip(&tailnet, "link set tn0 up");
        ip(&tailnet, "route add 100.64.0.1/32 dev tn0");
        ip(
            &tailnet,
            "route add 10.244.1.0/24 via 100.64.0.1 dev tn0 onlink",
        );
        ip(&tailnet, "-6 route add fd7a:115c:a1e0::1/128 dev tn0");
        ip(
            &tailnet,
            "-6 route add fd00:10:244:1::/64 via fd7a:115c:a1e0::1 dev tn0 onlink",
        );
        // tailscaled's way: routes in table 52, one rule to look there.
        for dst in ["10.244.2.0/24", "100.64.0.2/32", "100.64.0.9/32"] {
            ip(&node, &format!("route add {dst} dev tailscale0 table 52"));
        }
        for dst in [
            "fd00:10:244:2::/64",
            "fd7a:115c:a1e0::2/128",
            "fd7a:115c:a1e0::9/128",
        ] {
            ip(
                &node,
                &format!("-6 route add {dst} dev tailscale0 table 52"),
            );
        }
        ip(&node, "rule add pref 5270 table 52");
        ip(&node, "-6 rule add pref 5270 table 52");

        // The wan and the internet behind it.
        ip(
            &node,
            &format!(
                "link add wan0 type veth peer name inet0 netns {}",
                internet.name()
            ),
        );
        ip(&node, "addr add 192.0.2.1/24 dev wan0");
        ip(&node, "addr add 2001:db8::1/64 dev wan0 nodad");
        ip(&node, "link set wan0 up");
        ip(&internet, "addr add 192.0.2.2/24 dev inet0");
        ip(&internet, "addr add 2001:db8::2/64 dev inet0 nodad");
        ip(&internet, "link set inet0 up");
        ip(&node, "route add default via 192.0.2.2");
        ip(&node, "-6 route add default via 2001:db8::2");

        let servers = vec![Server::start(&tailnet), Server::start(&internet)];
        Lab {
            _servers: servers,
            node,
            pod,
            _tailnet: tailnet,
            _internet: internet,
        }
    }

    fn target(&self) -> NetnsTarget {
        NetnsTarget::path(self.node.path())
    }

    /// Connects from the pod to `dst` and returns (source address the
    /// server saw, the server socket's MSS), or why it failed.
    fn ask_from_pod(&self, dst: &str) -> Result<(String, u32), String> {
        let path = self.pod.path().to_owned();
        let addr = SocketAddr::new(dst.parse::<IpAddr>().map_err(|e| e.to_string())?, PORT);
        // A thread of its own: it enters the pod's namespace and the guard
        // takes it back out whatever happens.
        std::thread::spawn(move || {
            let _guard = NetnsGuard::enter(&path).map_err(|e| e.to_string())?;
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .map_err(|e| e.to_string())?;
            let mut answer = String::new();
            stream
                .read_to_string(&mut answer)
                .map_err(|e| format!("read from {addr}: {e}"))?;
            let (peer, mss) = answer
                .trim()
                .split_once(' ')
                .ok_or_else(|| format!("odd answer {answer:?}"))?;
            let mss = mss.parse().map_err(|e| format!("odd MSS {mss:?}: {e}"))?;
            Ok((peer.to_owned(), mss))
        })
        .join()
        .map_err(|_| "the client thread panicked".to_owned())?
    }

    /// The source address the server at `dst` saw.
    fn seen_from_pod(&self, dst: &str) -> String {
        match self.ask_from_pod(dst) {
            Ok((peer, _)) => peer,
            Err(e) => panic!("pod -> {dst}: {e}"),
        }
    }
}

/// nft wraps long element lists; compare with single spaces.
fn flat(listing: &str) -> String {
    listing.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("a test prefix")
}

fn dual_stack_spec() -> DatapathSpec {
    let mut spec = DatapathSpec::new();
    spec.node_pod_cidrs = vec![net("10.244.1.0/24"), net("fd00:10:244:1::/64")];
    spec.cluster_pod_cidrs = vec![net("10.244.0.0/16"), net("fd00:10:244::/56")];
    spec.service_cidrs = vec![net("10.96.0.0/12"), net("fd00:10:96::/112")];
    spec.cluster_node_tailnet_ips = [
        "100.64.0.1",
        "100.64.0.2",
        "fd7a:115c:a1e0::1",
        "fd7a:115c:a1e0::2",
    ]
    .iter()
    .map(|s| s.parse().expect("an address"))
    .collect();
    spec
}

#[tokio::test]
async fn pod_ips_stay_inside_the_cluster_and_the_rest_is_masqueraded() {
    let lab = Lab::build();
    let spec = dual_stack_spec();
    apply_sysctls(&spec, &lab.target()).expect("sysctls");

    // Without the table: the route MTU is not applied to the MSS.
    let (_, unclamped) = lab
        .ask_from_pod("10.244.2.2")
        .expect("pod -> remote pod, no table");
    assert!(
        unclamped > 1240,
        "MSS {unclamped} without the table: the test proves nothing"
    );

    let mut table = DatapathTable::new(lab.target());
    let outcome = table.apply(&spec).await.expect("apply");
    assert!(outcome.changed);
    assert_eq!(outcome.reason, ApplyReason::Created);

    // Inside the cluster, pod IPs are kept.
    assert_eq!(
        lab.seen_from_pod("10.244.2.2"),
        "10.244.1.2",
        "pod -> remote pod"
    );
    assert_eq!(
        lab.seen_from_pod("100.64.0.2"),
        "10.244.1.2",
        "pod -> cluster node"
    );
    assert_eq!(
        lab.seen_from_pod("fd00:10:244:2::2"),
        "fd00:10:244:1::2",
        "v6 pod -> remote pod"
    );
    assert_eq!(
        lab.seen_from_pod("fd7a:115c:a1e0::2"),
        "fd00:10:244:1::2",
        "v6 pod -> cluster node"
    );
    // The rest of the tailnet sees the node's tailnet address.
    assert_eq!(
        lab.seen_from_pod("100.64.0.9"),
        "100.64.0.1",
        "pod -> laptop"
    );
    assert_eq!(
        lab.seen_from_pod("fd7a:115c:a1e0::9"),
        "fd7a:115c:a1e0::1",
        "v6 pod -> laptop"
    );
    // The internet sees the node's wan address.
    assert_eq!(
        lab.seen_from_pod("192.0.2.2"),
        "192.0.2.1",
        "pod -> internet"
    );
    assert_eq!(
        lab.seen_from_pod("2001:db8::2"),
        "2001:db8::1",
        "v6 pod -> internet"
    );

    // Across tailscale0 the MSS is clamped to its 1280 MTU (1240, less
    // TCP options on the established socket), both families.
    let (_, mss) = lab.ask_from_pod("10.244.2.2").expect("pod -> remote pod");
    assert!(
        mss <= 1240,
        "MSS {mss} across tailscale0 (was {unclamped} without the table)"
    );
    let (_, mss6) = lab
        .ask_from_pod("fd00:10:244:2::2")
        .expect("v6 pod -> remote pod");
    assert!(mss6 <= 1220, "IPv6 MSS {mss6} across tailscale0");
    // The wan is not clamped.
    let (_, wan_mss) = lab.ask_from_pod("192.0.2.2").expect("pod -> internet");
    assert!(wan_mss > 1240, "MSS {wan_mss} on the wan was clamped");

    // Removing the table removes the masquerade: the internet cannot answer.
    assert!(table.remove().await.expect("remove"), "the table was there");
    assert!(
        lab.ask_from_pod("192.0.2.2").is_err(),
        "masqueraded without the table"
    );
    let (_, after) = lab.ask_from_pod("10.244.2.2").expect("pod -> remote pod");
    assert_eq!(after, unclamped, "the clamp outlived the table");
}

#[tokio::test]
async fn applying_twice_changes_nothing_and_remove_is_idempotent() {
    cni_testbed::require_root();
    let node = Netns::create("trdpnft").expect("netns");
    let target = NetnsTarget::path(node.path());
    let spec = dual_stack_spec();

    let mut table = DatapathTable::new(target.clone());
    assert_eq!(table.listing().await.expect("list"), None);
    let first = table.apply(&spec).await.expect("apply");
    assert_eq!((first.changed, first.reason), (true, ApplyReason::Created));
    let installed = table.listing().await.expect("list").expect("a table");
    assert!(
        flat(&installed).contains("elements = { 100.64.0.1, 100.64.0.2 }"),
        "{installed}"
    );

    let second = table.apply(&spec).await.expect("apply again");
    assert_eq!(
        (second.changed, second.reason),
        (false, ApplyReason::Unchanged)
    );
    assert_eq!(
        table.listing().await.expect("list").as_deref(),
        Some(installed.as_str())
    );

    // A restarted agent re-asserts the same rules: nothing changes.
    let mut restarted = DatapathTable::new(target.clone());
    let third = restarted.apply(&spec).await.expect("apply after restart");
    assert_eq!(
        (third.changed, third.reason),
        (false, ApplyReason::Reasserted)
    );
    assert_eq!(
        restarted.listing().await.expect("list").as_deref(),
        Some(installed.as_str())
    );

    // A new node: one set's elements change.
    let mut grown = spec.clone();
    grown
        .cluster_node_tailnet_ips
        .push("100.64.0.3".parse().expect("ip"));
    let fourth = restarted
        .apply(&grown)
        .await
        .expect("apply a new node list");
    assert_eq!(
        (fourth.changed, fourth.reason),
        (true, ApplyReason::Updated)
    );
    let listed = restarted.listing().await.expect("list").expect("a table");
    assert!(
        flat(&listed).contains("elements = { 100.64.0.1, 100.64.0.2, 100.64.0.3 }"),
        "{listed}"
    );

    // Someone flushes a chain by hand: the next apply repairs it.
    let out = node
        .exec(&[
            "nft",
            "flush",
            "chain",
            "inet",
            "tailroute",
            "pod_egress_v4",
        ])
        .expect("run nft");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fifth = restarted.apply(&grown).await.expect("repair");
    assert_eq!((fifth.changed, fifth.reason), (true, ApplyReason::Updated));
    assert_eq!(restarted.listing().await.expect("list"), Some(listed));

    assert!(restarted.remove().await.expect("remove"));
    assert_eq!(restarted.listing().await.expect("list"), None);
    assert!(
        !restarted.remove().await.expect("remove again"),
        "absent is fine"
    );
    assert!(!table.remove().await.expect("remove with the other value"));
}
