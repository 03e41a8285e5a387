//! Per-pod tailnet identities on a lab whose agents hold a Headscale API
//! key (the lab then allows identities in `default`, tags `tag:k8s-pod`
//! and `tag:web`).

use super::*;

/// An identity pod as the test follows it.
struct IdentityPod {
    name: &'static str,
    netns: String,
    ips: Vec<IpAddr>,
}

const PODS: &str = r#"---
apiVersion: v1
kind: Pod
metadata:
  name: id-web
  namespace: default
  annotations: {tailroute.dev/identity: "true", tailroute.dev/identity-tags: "tag:web,tag:k8s-pod"}
spec:
  nodeName: n1
  readinessGates: [{conditionType: tailroute.dev/identity-ready}]
  containers: [{name: web, image: lab/builtin-server}]
---
apiVersion: v1
kind: Pod
metadata:
  name: id-plain
  namespace: default
  annotations: {tailroute.dev/identity: "true"}
spec:
  nodeName: n2
  readinessGates: [{conditionType: tailroute.dev/identity-ready}]
  containers: [{name: web, image: lab/builtin-server}]
---
apiVersion: v1
kind: Pod
metadata:
  name: id-node-tag
  namespace: default
  annotations: {tailroute.dev/identity: "true", tailroute.dev/identity-tags: "tag:k8s-node"}
spec:
  nodeName: n1
  containers: [{name: web, image: lab/builtin-server}]
---
apiVersion: v1
kind: Pod
metadata:
  name: id-db
  namespace: default
  annotations: {tailroute.dev/identity: "true", tailroute.dev/identity-tags: "tag:db"}
spec:
  nodeName: n2
  containers: [{name: web, image: lab/builtin-server}]
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Pod
metadata:
  name: id-other
  namespace: other
  annotations: {tailroute.dev/identity: "true"}
spec:
  nodeName: n1
  containers: [{name: web, image: lab/builtin-server}]
"#;

/// Every check of the identity issue, on one lab.
pub(super) fn identity_pods_are_tailnet_devices_of_their_own(lab: &CliLab) {
    let applied = Instant::now();
    lab.kubectl(&["apply", "-f", "-"], Some(PODS));
    let web = wait_identity_ready(lab, "id-web", applied);
    let plain = wait_identity_ready(lab, "id-plain", applied);

    a_taken_name_is_waited_for(lab);

    requested_tags_are_applied_and_others_refused(lab);
    the_laptop_and_the_identity_reach_each_other(lab, &web);
    an_identity_pod_streams_to_a_pod_on_another_node(lab, &web, &plain);
    an_agent_restart_leaves_identities_up_and_adds_no_device(lab, &web);
    deleting_the_pod_removes_its_device_within_10_s(lab, &web);
    the_name_goes_to_the_waiting_pod_once_free(lab);
    deleting_the_pod_removes_its_device_within_10_s(lab, &plain);
    let survivor = a_deleted_nodes_identities_leave_the_tailnet(lab);
    the_agents_cleanup_removes_identities(lab, &survivor);
}

/// Creates pod `name` in `default` on `node`, asking for an identity, with
/// `more` annotations (`, key: value` each).
fn apply_identity_pod(lab: &CliLab, name: &str, node: &str, more: &str) {
    lab.kubectl(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, \
             annotations: {{tailroute.dev/identity: \"true\"{more}}}}}\nspec:\n  \
             nodeName: {node}\n  containers: [{{name: web, image: lab/builtin-server}}]\n"
        )),
    );
}

/// A pod on n2 asks for the name id-web's device holds: it waits, saying
/// which device holds it, and gets no device (no `-1` suffix).
fn a_taken_name_is_waited_for(lab: &CliLab) {
    apply_identity_pod(
        lab,
        "id-twin",
        "n2",
        ", tailroute.dev/identity-hostname: lab-default-id-web",
    );
    let pod = wait_pod(lab, "id-twin", "to say its name is taken", |pod| {
        condition(pod, "tailroute.dev/identity-ready")["reason"] == "IdentityHostnameTaken"
    });
    let ready = condition(&pod, "tailroute.dev/identity-ready");
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("already has a device named lab-default-id-web (100.64."),
        "{message}"
    );
    let names: Vec<String> = headscale_devices(lab).into_iter().map(|(n, _)| n).collect();
    assert!(
        !names.iter().any(|n| n.starts_with("lab-default-id-web-")),
        "{names:?}"
    );
}

/// Polls pod `name` for up to 30 s until `done` holds; returns it.
fn wait_pod(lab: &CliLab, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pod: Value =
            serde_json::from_str(&lab.kubectl(&["get", "pod", name, "-o", "json"], None))
                .unwrap_or(Value::Null);
        if done(&pod) {
            return pod;
        }
        assert!(
            Instant::now() < deadline,
            "{name} waited 30 s {what}: {} {}",
            pod["status"],
            lab_agent_logs(lab)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Once id-web's device is gone, the waiting pod gets the name; then it is
/// deleted, and its device with it.
fn the_name_goes_to_the_waiting_pod_once_free(lab: &CliLab) {
    let freed = Instant::now();
    let pod = wait_pod(lab, "id-twin", "to join once the name is free", |pod| {
        condition(pod, "tailroute.dev/identity-ready")["status"] == "True"
    });
    assert_eq!(
        pod["metadata"]["annotations"]["tailroute.dev/identity-name"],
        "lab-default-id-web"
    );
    record_figure(&format!(
        "identity: a pod waiting for a taken name joined {:.1} s after it was freed",
        freed.elapsed().as_secs_f64()
    ));
    let running = identity_tailscaleds(lab).len();
    lab.kubectl(&["delete", "pod", "id-twin", "--wait=false"], None);
    let deadline = Instant::now() + Duration::from_secs(15);
    while headscale_devices(lab)
        .iter()
        .any(|(n, _)| n == "lab-default-id-web")
        || identity_tailscaleds(lab).len() + 1 != running
    {
        assert!(
            Instant::now() < deadline,
            "id-twin's device or tailscaled is still there: {:?} {}",
            identity_tailscaleds(lab),
            lab_agent_logs(lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node lost for good: its agent is gone (stopped here), its identity's
/// tailscaled still holds the device online (as on a machine cut off from
/// the cluster but not from the tailnet), and the Node is deleted. The
/// leader removes the identity's device within 10 s, with an Event on the
/// pod. The lost node is the one not leading; returns the other.
fn a_deleted_nodes_identities_leave_the_tailnet(lab: &CliLab) -> String {
    let lease: Value = serde_json::from_str(&lab.kubectl(
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "tailroute-agent-leader",
            "-o",
            "json",
        ],
        None,
    ))
    .expect("the leader Lease");
    let leader = lease["spec"]["holderIdentity"]
        .as_str()
        .expect("a holder")
        .to_owned();
    let lost = if leader == "n1" { "n2" } else { "n1" };
    let applied = Instant::now();
    apply_identity_pod(lab, "id-lost", lost, "");
    wait_identity_ready(lab, "id-lost", applied);
    let device = "lab-default-id-lost";
    stop_agent(lab, lost);
    assert!(headscale_devices(lab).iter().any(|(n, _)| n == device));
    let started = Instant::now();
    lab.kubectl(&["delete", "node", lost, "--wait=false"], None);
    while headscale_devices(lab).iter().any(|(n, _)| n == device) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{device} is still on the tailnet 10 s after Node {lost} was deleted: {}",
            lab_agent_logs(lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = started.elapsed();
    wait_event(
        lab,
        "reason=IdentityRemoved,involvedObject.name=id-lost",
        &format!(
            "Node {lost} was deleted: removed pod default/id-lost's tailnet identity {device}"
        ),
    );
    record_figure(&format!(
        "identity: {device} gone from Headscale {:.1} s after kubectl delete node {lost} \
         (its agent stopped, its tailscaled still online)",
        gone.as_secs_f64()
    ));
    leader
}

/// Stops `node`'s agent, wherever it was (re)started from: found by its
/// configuration, not the lab's record.
fn stop_agent(lab: &CliLab, node: &str) -> Vec<String> {
    let config = format!(
        "--config={}",
        lab.state_dir
            .join(format!("nodes/{node}/agent/agent.toml"))
            .display()
    );
    let agent = tailroute::lab::bench::pids_running("tailroute-agent", &config)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{node}'s agent runs"));
    let argv = std::fs::read(format!("/proc/{agent}/cmdline")).expect("cmdline");
    let argv: Vec<String> = argv
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let id = tailroute::lab::process::ProcessId::of(i32::try_from(agent).expect("pid"))
        .expect("running");
    tailroute::lab::process::stop(&id, Duration::from_secs(10)).expect("stop the agent");
    argv
}

/// `tailroute-agent --cleanup` (what `tailroute reset` runs) removes the
/// node's identities: devices, processes, directories.
fn the_agents_cleanup_removes_identities(lab: &CliLab, node: &str) {
    let applied = Instant::now();
    apply_identity_pod(lab, "id-last", node, "");
    wait_identity_ready(lab, "id-last", applied);
    let status = lab.status();
    let ns = status["lab"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node)
        .and_then(|n| n["namespace"].as_str())
        .expect("the node's namespace")
        .to_owned();
    // Restarted by the test above: found by its configuration.
    let argv = stop_agent(lab, node);
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .args(&argv)
        .arg("--cleanup")
        .output()
        .expect("run --cleanup");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("removed the pod identity lab-default-id-last"),
        "{said}"
    );
    assert!(
        !headscale_devices(lab)
            .iter()
            .any(|(n, _)| n == "lab-default-id-last"),
        "{:?}",
        headscale_devices(lab)
    );
    // The lost node's identity, logged out by the leader, is no longer
    // anybody's to stop.
    let mine = format!("/nodes/{node}/");
    let left: Vec<_> = identity_tailscaleds(lab)
        .into_iter()
        .filter(|(_, dir)| dir.contains(&mine))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Waits for the pod's `tailroute.dev/identity-ready` condition, then
/// checks the annotations and that Ready followed the readiness gate.
fn wait_identity_ready(lab: &CliLab, name: &'static str, applied: Instant) -> IdentityPod {
    let deadline = applied + Duration::from_secs(60);
    let pod = loop {
        let pod: Value = serde_json::from_str(&lab.kubectl(
            &["get", "pod", name, "-o", "json", "--ignore-not-found"],
            None,
        ))
        .unwrap_or(Value::Null);
        let ready = condition(&pod, "tailroute.dev/identity-ready");
        if ready["status"] == "True" && condition(&pod, "Ready")["status"] == "True" {
            break pod;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no identity after 60 s: {ready} {}",
            lab_agent_logs(lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = applied.elapsed().as_secs_f64();
    let ips: Vec<IpAddr> = pod["metadata"]["annotations"]["tailroute.dev/identity-ips"]
        .as_str()
        .expect("identity-ips annotation")
        .split(',')
        .map(|ip| ip.parse().expect("an address"))
        .collect();
    assert!(
        ips.iter().any(|ip| ip.to_string().starts_with("100.64."))
            && ips
                .iter()
                .any(|ip| ip.to_string().starts_with("fd7a:115c:a1e0:")),
        "{name}: a v4 and a v6 tailnet address: {ips:?}"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["tailroute.dev/identity-name"],
        format!("lab-default-{name}")
    );
    let status = lab.status();
    let node = pod["spec"]["nodeName"].as_str().expect("node");
    let prefix = status["lab"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["name"] == node)
        .and_then(|n| n["pod_netns_prefix"].as_str())
        .expect("pod netns prefix")
        .to_owned();
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    record_figure(&format!(
        "identity: {name} ready (Ready, gate included) {seconds:.1} s after kubectl apply"
    ));
    IdentityPod {
        name,
        netns: tailroute::lab::kubelet::record::netns_name(&prefix, uid),
        ips,
    }
}

fn condition(pod: &Value, kind: &str) -> Value {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .cloned()
        .unwrap_or(Value::Null)
}

fn lab_agent_logs(lab: &CliLab) -> String {
    ["n1", "n2"]
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(lab.state_dir.join(format!("nodes/{n}/agent.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            format!(
                "--- agent {n}:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The tags asked for are the device's; a tag outside the namespace's
/// allowance, the node tag, and a namespace without an allowance are
/// refused, with the reason on the pod's condition and in an Event.
fn requested_tags_are_applied_and_others_refused(lab: &CliLab) {
    let devices = headscale_devices(lab);
    let tags_of = |name: &str| {
        devices
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| panic!("no device {name}: {devices:?}"))
    };
    assert_eq!(tags_of("lab-default-id-web"), ["tag:k8s-pod", "tag:web"]);
    assert_eq!(tags_of("lab-default-id-plain"), ["tag:k8s-pod"]);
    for (namespace, pod, reason, says) in [
        (
            "default",
            "id-node-tag",
            "IdentityTagNotAllowed",
            "nodes' tag",
        ),
        (
            "default",
            "id-db",
            "IdentityTagNotAllowed",
            "may not use tag:db",
        ),
        (
            "other",
            "id-other",
            "IdentityNamespaceNotAllowed",
            "namespace other",
        ),
    ] {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let events: Value = serde_json::from_str(&lab.kubectl(
                &[
                    "get",
                    "events",
                    "-n",
                    namespace,
                    "-o",
                    "json",
                    &format!("--field-selector=involvedObject.name={pod},reason={reason}"),
                ],
                None,
            ))
            .expect("events");
            let pod_json: Value = serde_json::from_str(
                &lab.kubectl(&["get", "pod", "-n", namespace, pod, "-o", "json"], None),
            )
            .expect("pod");
            let refused = condition(&pod_json, "tailroute.dev/identity-ready");
            let noted = events["items"].as_array().is_some_and(|e| {
                e.iter().any(|e| {
                    e["note"]
                        .as_str()
                        .or(e["message"].as_str())
                        .is_some_and(|m| m.contains(says))
                })
            });
            if refused["status"] == "False" && refused["reason"] == reason && noted {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{namespace}/{pod}: no {reason} refusal saying {says:?}: {refused} {events}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            !devices.iter().any(|(n, _)| n.contains(pod)),
            "a refused pod got a device: {devices:?}"
        );
    }
}

/// The laptop reaches the pod at the pod's own addresses and the pod sees
/// the laptop's; the pod reaches the laptop from its own addresses. Both
/// families.
fn the_laptop_and_the_identity_reach_each_other(lab: &CliLab, pod: &IdentityPod) {
    let status = lab.status();
    let laptop = &status["lab"]["laptop"];
    let laptop_ns = laptop["namespace"].as_str().expect("laptop namespace");
    let laptop_ips: Vec<IpAddr> = laptop["tailnet_ips"]
        .as_array()
        .expect("laptop IPs")
        .iter()
        .filter_map(|ip| ip.as_str()?.parse().ok())
        .collect();
    for pod_ip in &pod.ips {
        let laptop_ip = *laptop_ips
            .iter()
            .find(|ip| ip.is_ipv4() == pod_ip.is_ipv4())
            .expect("the laptop has this family");
        let seen = common::tcp_source_seen_by(&pod.netns, *pod_ip, laptop_ns);
        assert_eq!(
            seen.to_canonical(),
            laptop_ip,
            "laptop -> {} at {pod_ip}",
            pod.name
        );
        let seen = common::tcp_source_seen_by(laptop_ns, laptop_ip, &pod.netns);
        assert_eq!(
            seen.to_canonical(),
            *pod_ip,
            "{} -> laptop at {laptop_ip}",
            pod.name
        );
        println!(
            "identity: laptop {laptop_ip} <-> {} {pod_ip}, each seeing the other's tailnet address",
            pod.name
        );
        let took = bulk_stream(&pod.netns, laptop_ns, laptop_ip);
        println!(
            "identity: 8 MiB pod -> laptop {laptop_ip} through the identity in {:.2} s",
            took.as_secs_f64()
        );
    }
}

/// An identity pod's larger interface (the pods' MTU + 80) must not hurt
/// its plain pod traffic: 8 MiB from id-web on n1 to id-plain's pod
/// address on n2, through the nodes' routes and tailscale0 (1280), per
/// family. The node's MSS clamp is what keeps the segments small enough.
fn an_identity_pod_streams_to_a_pod_on_another_node(
    lab: &CliLab,
    from: &IdentityPod,
    to: &IdentityPod,
) {
    let pod: Value =
        serde_json::from_str(&lab.kubectl(&["get", "pod", to.name, "-o", "json"], None))
            .expect("pod JSON");
    let pod_ips: Vec<IpAddr> = pod["status"]["podIPs"]
        .as_array()
        .expect("podIPs")
        .iter()
        .filter_map(|ip| ip["ip"].as_str()?.parse().ok())
        .collect();
    assert_eq!(pod_ips.len(), 2, "dual-stack: {pod_ips:?}");
    for ip in pod_ips {
        let took = bulk_stream(&from.netns, &to.netns, ip);
        record_figure(&format!(
            "identity: 8 MiB {} (n1) -> {} pod address {ip} (n2) in {:.2} s",
            from.name,
            to.name,
            took.as_secs_f64()
        ));
    }
}

/// 8 MiB from namespace `pod_ns` to a listener at `laptop_ip` in
/// `laptop_ns` within 20 s; returns how long it took. Through an identity,
/// its WireGuard packets must fit in the pod's interface (an identity
/// tailscale0 as large as the pod's MTU stalls every bulk transfer while
/// small messages still pass).
fn bulk_stream(pod_ns: &str, laptop_ns: &str, laptop_ip: IpAddr) -> Duration {
    use std::io::{Read, Write};
    const SIZE: usize = 8 << 20;
    let listener = common::in_netns(laptop_ns, || {
        std::net::TcpListener::bind((laptop_ip, 0)).expect("bind")
    });
    let target = listener.local_addr().expect("address");
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut got = 0usize;
        let mut buf = vec![0u8; 64 << 10];
        while got < SIZE {
            match conn.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => panic!("the bulk stream stalled after {got} bytes: {e}"),
            }
        }
        got
    });
    let started = Instant::now();
    let mut stream = common::in_netns(pod_ns, || {
        std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("connect")
    });
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream.write_all(&vec![5u8; SIZE]).expect("send 8 MiB");
    drop(stream);
    assert_eq!(reader.join().expect("reader"), SIZE);
    started.elapsed()
}

/// Killing and restarting both agents while the laptop talks to the pod
/// over the pod's identity: no echo takes a second, the pod's tailscaled
/// is the same process, and Headscale has no new device.
fn an_agent_restart_leaves_identities_up_and_adds_no_device(lab: &CliLab, pod: &IdentityPod) {
    let status = lab.status();
    let laptop_ns = status["lab"]["laptop"]["namespace"]
        .as_str()
        .expect("laptop namespace")
        .to_owned();
    let devices_before = headscale_devices(lab);
    let tailscaled_before = identity_tailscaleds(lab);
    let dst = *pod.ips.first().expect("an address");
    let (sent, worst) = echoes_across(&pod.netns, dst, 5203, &laptop_ns, || {
        restart_agents(lab, &status, &["n1", "n2"]);
        // Long enough for the new agents' first identity pass (they adopt).
        std::thread::sleep(Duration::from_secs(6));
    });
    assert!(sent > 50, "only {sent} echoes");
    assert_eq!(
        identity_tailscaleds(lab),
        tailscaled_before,
        "the identities' tailscaleds were restarted"
    );
    assert_eq!(
        headscale_devices(lab),
        devices_before,
        "the agent restart changed Headscale's devices"
    );
    record_figure(&format!(
        "identity: agent restart on both nodes: {sent} echoes laptop <-> {} over its identity, slowest {:.0} ms, no new device",
        pod.name,
        worst.as_secs_f64() * 1000.0
    ));
}

/// This lab's identity tailscaleds: (pid, state dir).
fn identity_tailscaleds(lab: &CliLab) -> BTreeSet<(u32, String)> {
    tailroute::lab::daemon::tailscaleds_under(&lab.state_dir)
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let dir = text
                .split(' ')
                .find_map(|a| a.strip_prefix("--statedir="))
                .filter(|d| d.contains("/agent/state/identities/"))?;
            Some((pid, dir.to_owned()))
        })
        .collect()
}

/// `kubectl delete pod` removes the pod's device from Headscale within
/// 10 s, stops its tailscaled and removes its directory.
fn deleting_the_pod_removes_its_device_within_10_s(lab: &CliLab, pod: &IdentityPod) {
    let device = format!("lab-default-{}", pod.name);
    assert!(headscale_devices(lab).iter().any(|(n, _)| *n == device));
    let running = identity_tailscaleds(lab).len();
    let started = Instant::now();
    lab.kubectl(&["delete", "pod", pod.name, "--wait=false"], None);
    loop {
        if !headscale_devices(lab).iter().any(|(n, _)| *n == device) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{device} is still on the tailnet 10 s after its pod was deleted: {}",
            lab_agent_logs(lab)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Its tailscaled stopped and its directory went; the others stay.
    loop {
        let now = identity_tailscaleds(lab);
        if now.len() + 1 == running
            && now
                .iter()
                .all(|(_, dir)| Path::new(dir).join("identity.json").exists())
        {
            break;
        }
        assert!(Instant::now() < deadline, "{running} before: {now:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    record_figure(&format!(
        "identity: {device} gone from Headscale {:.1} s after kubectl delete pod",
        gone.as_secs_f64()
    ));
}
