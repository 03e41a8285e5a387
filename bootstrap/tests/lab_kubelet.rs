//! Root tier: the lab kubelet against a real control plane (etcd,
//! kube-apiserver with Node + RBAC authorization and `NodeRestriction`,
//! kube-controller-manager watching node health), with tailroute-bridge as
//! the node's CNI plugin.
//!
//! It proves that, with nothing but a node's credentials, the kubelet
//! registers its Node and keeps it Ready with a Lease; holds pods Pending
//! while there is no network config and while the plugin refuses it, saying
//! why; runs them once a conflist appears, with an address from the plugin
//! and a server answering from inside the pod; tears them down through CNI
//! DEL when they are deleted; and, restarted, keeps the pods that still
//! exist and removes the rest.
//!
//! Each test starts its own control plane in a throwaway namespace
//! (`kubelet_support`). Needs root, the peers from `scripts/build-peers.sh`
//! and a release build of tailroute-bridge; it fails, never skips, without
//! them.

mod kubelet_support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use kubelet_support::{
    process_runs, wait_until, ControlPlane, Kubelet, NODE_NAME, POD_GATEWAY, POD_SUBNET,
};

/// How long any one state change may take.
const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_node_registers_stays_ready_and_runs_a_pod_through_its_cni_plugin() {
    let plane = ControlPlane::start('a');
    let kubelet = Kubelet::start(&plane);
    plane.block_on(|client| async move {
        // The Node, as a real kubelet registers it.
        let node = wait_for_ready_node(&client).await;
        let status = node.status.clone().expect("status");
        let addresses: Vec<(String, String)> = status
            .addresses
            .unwrap_or_default()
            .into_iter()
            .map(|a| (a.type_, a.address))
            .collect();
        assert_eq!(
            addresses,
            [
                ("InternalIP".into(), "100.64.0.1".into()),
                ("InternalIP".into(), "fd7a:115c:a1e0::1".into()),
                ("Hostname".into(), NODE_NAME.into()),
            ]
        );
        let capacity = status.capacity.expect("capacity");
        assert_eq!(capacity["pods"].0, "110");
        assert!(capacity.contains_key("cpu") && capacity.contains_key("memory"));
        assert_eq!(status.allocatable.expect("allocatable")["pods"].0, "110");
        let info = status.node_info.expect("nodeInfo");
        assert_eq!(info.operating_system, "linux");
        assert!(info.kubelet_version.starts_with("v1.35"), "{info:?}");

        // Its Lease, renewed.
        let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
        let lease = wait_until("the node Lease exists", WAIT, || {
            let leases = leases.clone();
            async move { leases.get(NODE_NAME).await.map_err(|e| e.to_string()) }
        })
        .await;
        let spec = lease.spec.clone().expect("lease spec");
        assert_eq!(spec.holder_identity.as_deref(), Some(NODE_NAME));
        assert_eq!(spec.lease_duration_seconds, Some(40));
        let owner = &lease.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Node", node.uid().unwrap().as_str())
        );
        let first_renewal = spec.renew_time.expect("renewTime").0;
        wait_until("the Lease is renewed", WAIT, || {
            let leases = leases.clone();
            async move {
                let renewed = leases.get(NODE_NAME).await.map_err(|e| e.to_string())?;
                let at = renewed.spec.and_then(|s| s.renew_time).map(|t| t.0);
                match at {
                    Some(at) if at > first_renewal => Ok(()),
                    other => Err(format!("renewTime {other:?}")),
                }
            }
        })
        .await;

        // No network config: Pending, saying so, with one Event.
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let pod = pods
            .create(&PostParams::default(), &pod_manifest("web"))
            .await
            .expect("create pod");
        let uid = pod.uid().expect("uid");
        let conf_dir = kubelet.conf_dir.display().to_string();
        let ready = wait_for_ready_reason(&pods, "web", "NetworkNotReady").await;
        let message = ready["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains(&format!(
                "cni config uninitialized: no network config in {conf_dir}"
            )),
            "{message}"
        );
        wait_for_events(&client, "web", "NetworkNotReady", 1).await;
        // Several resyncs later: still Pending, still one Event.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(phase(&pods, "web").await, "Pending");
        let events = events_of(&client, "web", "NetworkNotReady").await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert!(
            events[0].series.is_none(),
            "the Event was repeated: {events:?}"
        );
        assert_eq!(events[0].type_.as_deref(), Some("Warning"));

        // A conflist the plugin refuses: Pending with the plugin's message,
        // and nothing of the failed sandbox left.
        write_conflist(&kubelet, "05-typo.conflist", true);
        let ready = wait_for_ready_reason(&pods, "web", "FailedCreatePodSandBox").await;
        let message = ready["message"].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains("plugin type=\"tailroute-bridge\" name=\"tailroute\" failed (add)")
                && message.contains("unknown key \"hairpinMod\""),
            "{message}"
        );
        wait_for_events(&client, "web", "FailedCreatePodSandBox", 1).await;
        assert_eq!(pod_namespaces(&kubelet), Vec::<String>::new());
        assert_eq!(plugin_attachments(&kubelet), Vec::<Value>::new());

        // The right conflist: Running, with an address from the plugin.
        std::fs::remove_file(kubelet.conf_dir.join("05-typo.conflist")).expect("remove typo");
        write_conflist(&kubelet, "10-tailroute.conflist", false);
        let running = wait_for_phase(&pods, "web", "Running").await;
        let status = running.status.clone().expect("status");
        let pod_ip: IpAddr = status
            .pod_ip
            .as_deref()
            .expect("podIP")
            .parse()
            .expect("IP");
        assert!(in_subnet(pod_ip), "{pod_ip} is not in {POD_SUBNET}");
        let pod_ips: Vec<String> = status
            .pod_ips
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.ip)
            .collect();
        assert_eq!(pod_ips, [pod_ip.to_string()]);
        assert_eq!(status.host_ip.as_deref(), Some("100.64.0.1"));
        let host_ips: Vec<String> = status
            .host_ips
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.ip)
            .collect();
        assert_eq!(host_ips, ["100.64.0.1", "fd7a:115c:a1e0::1"]);
        for condition in status.conditions.unwrap_or_default() {
            assert_eq!(condition.status, "True", "{condition:?}");
        }
        let container = &status.container_statuses.expect("containerStatuses")[0];
        assert!(
            container.ready
                && container
                    .state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some())
        );
        assert_eq!(container.image, "lab/pod-server");
        let record = sandbox_record(&kubelet, &uid);
        let sandbox_id = record["sandboxId"].as_str().expect("sandbox id");
        assert_eq!(sandbox_id.len(), 64);
        assert_eq!(
            container.container_id.as_deref(),
            Some(format!("lab://{sandbox_id}").as_str())
        );

        // The pod's server answers from inside the pod, and sees the node.
        let (body, me) = http_get(SocketAddr::new(pod_ip, 8080)).await;
        assert_eq!(body, format!("pod=default/web client={me}\n"));
        assert_eq!(
            me.ip().to_string(),
            POD_GATEWAY,
            "not the node side of the bridge"
        );

        // What the sandbox is made of.
        let pod_netns = record["netns"].as_str().expect("netns").to_owned();
        assert!(pod_netns.starts_with(&kubelet.netns_prefix));
        assert_eq!(pod_namespaces(&kubelet), [pod_netns]);
        let (server_pid, server_start) = server_of(&record);
        assert!(process_runs(server_pid, server_start));
        let attachments = plugin_attachments(&kubelet);
        assert_eq!(attachments.len(), 1, "{attachments:?}");
        assert_eq!(attachments[0]["pod"]["uid"], uid.as_str());
        assert_eq!(attachments[0]["containerID"], sandbox_id);

        // Deleted: CNI DEL, no namespace, no server, no record, no pod.
        pods.delete("web", &DeleteParams::default())
            .await
            .expect("delete pod");
        wait_until("the pod object is gone", WAIT, || {
            let pods = pods.clone();
            async move {
                match pods.get_opt("web").await {
                    Ok(None) => Ok(()),
                    Ok(Some(p)) => {
                        Err(format!("still there: {:?}", p.status.and_then(|s| s.phase)))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .await;
        assert_eq!(
            plugin_attachments(&kubelet),
            Vec::<Value>::new(),
            "CNI DEL did not run"
        );
        assert_eq!(pod_namespaces(&kubelet), Vec::<String>::new());
        assert!(
            !process_runs(server_pid, server_start),
            "the pod server survived"
        );
        assert!(
            !record_path(&kubelet, &uid).exists(),
            "the sandbox record survived"
        );

        // All along, the node stayed Ready: the node lifecycle controller
        // (10 s grace) never saw a heartbeat missing.
        let nodes: Api<Node> = Api::all(client.clone());
        let node = nodes.get(NODE_NAME).await.expect("node");
        let ready = node_ready(&node).expect("Ready condition");
        assert_eq!(
            (ready.0.as_str(), ready.1.as_str()),
            ("True", "KubeletReady")
        );
        let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
        assert!(taints.is_empty(), "{taints:?}");
    });
}

#[test]
fn a_restarted_kubelet_keeps_live_pods_and_tears_down_deleted_ones() {
    let plane = ControlPlane::start('b');
    let mut kubelet = Kubelet::start(&plane);
    write_conflist(&kubelet, "10-tailroute.conflist", false);
    let (kept, gone) = plane.block_on(|client| async move {
        wait_for_ready_node(&client).await;
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let mut uids = Vec::new();
        for name in ["kept", "gone"] {
            let pod = pods
                .create(&PostParams::default(), &pod_manifest(name))
                .await
                .expect("create pod");
            uids.push(pod.uid().expect("uid"));
        }
        for name in ["kept", "gone"] {
            wait_for_phase(&pods, name, "Running").await;
        }
        (uids[0].clone(), uids[1].clone())
    });
    let kept_record = sandbox_record(&kubelet, &kept);
    let gone_record = sandbox_record(&kubelet, &gone);
    let (kept_pid, kept_start) = server_of(&kept_record);
    let (gone_pid, gone_start) = server_of(&gone_record);

    // Stopped, the kubelet exits at once and the pods keep running.
    let took = kubelet.stop();
    assert!(took < Duration::from_secs(3), "SIGTERM took {took:?}");
    assert!(process_runs(kept_pid, kept_start) && process_runs(gone_pid, gone_start));
    assert_eq!(pod_namespaces(&kubelet).len(), 2);

    // While it is down: one pod is force-deleted (gone from the API at
    // once) after half its teardown had happened (server and namespace
    // gone, but not the plugin's attachment nor the record), and the other
    // one's server dies.
    plane.block_on(|client| async move {
        let pods: Api<Pod> = Api::namespaced(client, "default");
        let now = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        pods.delete("gone", &now).await.expect("force delete");
        let kept_ip = pod_ip(&pods, "kept").await;
        let (body, _) = http_get(SocketAddr::new(kept_ip, 8080)).await;
        assert!(body.starts_with("pod=default/kept "), "{body}");
    });
    for (pid, start) in [(gone_pid, gone_start), (kept_pid, kept_start)] {
        assert!(process_runs(pid, start));
        // SAFETY: kill(2) on a pod server's pid, just seen running.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let gone_netns = gone_record["netns"].as_str().expect("netns");
    let deleted = std::process::Command::new("ip")
        .args(["netns", "del", gone_netns])
        .status()
        .expect("ip netns del");
    assert!(deleted.success());

    kubelet.restart();
    plane.block_on(|client| {
        let kubelet = &kubelet;
        let kept_record = &kept_record;
        let gone = &gone;
        async move {
            // The deleted pod's sandbox goes, through a CNI DEL that
            // finds its namespace already gone.
            wait_until(
                "the deleted pod's sandbox is torn down",
                WAIT,
                || async move {
                    if record_path(kubelet, gone).exists() {
                        return Err("its record is still there".to_owned());
                    }
                    Ok(())
                },
            )
            .await;
            let attachments = plugin_attachments(kubelet);
            assert!(
                attachments.iter().all(|a| a["pod"]["uid"] != gone.as_str()),
                "CNI DEL did not run: {attachments:?}"
            );
            assert!(!process_runs(gone_pid, gone_start));
            assert_eq!(
                pod_namespaces(kubelet),
                [kept_record["netns"].as_str().expect("netns").to_owned()]
            );

            // The live pod keeps its sandbox, and gets its server back.
            let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
            wait_until("the kept pod's server is restarted", WAIT, || {
                let pods = pods.clone();
                async move {
                    let pod = pods.get("kept").await.map_err(|e| e.to_string())?;
                    let restarts = pod
                        .status
                        .and_then(|s| s.container_statuses)
                        .and_then(|c| c.first().map(|c| c.restart_count));
                    match restarts {
                        Some(1) => Ok(()),
                        other => Err(format!("restartCount {other:?}")),
                    }
                }
            })
            .await;
            let record = sandbox_record(kubelet, &kept);
            assert_eq!(record["sandboxId"], kept_record["sandboxId"]);
            assert_eq!(record["serverStarts"], 2);
            let (pid, start) = server_of(&record);
            assert!(process_runs(pid, start) && pid != kept_pid);
            let kept_ip = pod_ip(&pods, "kept").await;
            let (body, _) = http_get(SocketAddr::new(kept_ip, 8080)).await;
            assert!(body.starts_with("pod=default/kept "), "{body}");
        }
    });
}

/// A pod bound to the lab node (no scheduler needed).
fn pod_manifest(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE_NAME,
            "containers": [{"name": "server", "image": "lab/pod-server"}],
        },
    }))
    .expect("pod manifest")
}

/// Writes a tailroute-bridge conflist into the conf dir atomically (as
/// tailroute-agent does); `typo` makes one the plugin refuses.
fn write_conflist(kubelet: &Kubelet, file: &str, typo: bool) {
    let mut plugin = json!({
        "type": "tailroute-bridge",
        "bridge": "trk0",
        "mtu": 1280,
        "ipam": {
            "ranges": [[{"subnet": POD_SUBNET}]],
            "dataDir": kubelet.bridge_data_dir,
        },
    });
    if typo {
        plugin["hairpinMod"] = json!(true);
    }
    let conflist = json!({"cniVersion": "1.1.0", "name": "tailroute", "plugins": [plugin]});
    let tmp = kubelet.conf_dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, conflist.to_string()).expect("write conflist");
    std::fs::rename(&tmp, kubelet.conf_dir.join(file)).expect("rename conflist");
}

async fn wait_for_ready_node(client: &Client) -> Node {
    let nodes: Api<Node> = Api::all(client.clone());
    wait_until("the Node is registered and Ready", WAIT, || {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get(NODE_NAME).await.map_err(|e| e.to_string())?;
            match node_ready(&node) {
                Some((status, reason)) if status == "True" && reason == "KubeletReady" => Ok(node),
                other => Err(format!("Ready condition {other:?}")),
            }
        }
    })
    .await
}

/// `(status, reason)` of the Node's Ready condition.
fn node_ready(node: &Node) -> Option<(String, String)> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

/// Waits until pod `name`'s Ready condition is False with `reason` and
/// returns the condition.
async fn wait_for_ready_reason(pods: &Api<Pod>, name: &str, reason: &str) -> Value {
    wait_until(
        &format!("{name} is not Ready because {reason}"),
        WAIT,
        || {
            let pods = pods.clone();
            async move {
                let pod = pods.get(name).await.map_err(|e| e.to_string())?;
                let status = pod.status.unwrap_or_default();
                let ready = status
                    .conditions
                    .unwrap_or_default()
                    .into_iter()
                    .find(|c| c.type_ == "Ready");
                match ready {
                    Some(c) if c.status == "False" && c.reason.as_deref() == Some(reason) => {
                        assert_eq!(status.phase.as_deref(), Some("Pending"));
                        Ok(serde_json::to_value(c).expect("condition"))
                    }
                    other => Err(format!("Ready condition {other:?}")),
                }
            }
        },
    )
    .await
}

async fn wait_for_phase(pods: &Api<Pod>, name: &str, wanted: &str) -> Pod {
    wait_until(&format!("{name} is {wanted}"), WAIT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get(name).await.map_err(|e| e.to_string())?;
            let status = pod.status.clone().unwrap_or_default();
            if status.phase.as_deref() == Some(wanted) {
                Ok(pod)
            } else {
                Err(format!(
                    "phase {:?}, conditions {:?}",
                    status.phase, status.conditions
                ))
            }
        }
    })
    .await
}

async fn phase(pods: &Api<Pod>, name: &str) -> String {
    let pod = pods.get(name).await.expect("get pod");
    pod.status.and_then(|s| s.phase).unwrap_or_default()
}

async fn pod_ip(pods: &Api<Pod>, name: &str) -> IpAddr {
    let pod = pods.get(name).await.expect("get pod");
    pod.status
        .and_then(|s| s.pod_ip)
        .expect("podIP")
        .parse()
        .expect("IP")
}

/// The Events (events.k8s.io) about pod `name` with `reason`.
async fn events_of(client: &Client, name: &str, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events
        .list(&ListParams::default())
        .await
        .expect("list events");
    list.items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

async fn wait_for_events(client: &Client, name: &str, reason: &str, at_least: usize) {
    wait_until(
        &format!("an Event {reason} about {name}"),
        WAIT,
        || async move {
            let found = events_of(client, name, reason).await.len();
            if found >= at_least {
                Ok(())
            } else {
                Err(format!("{found} found"))
            }
        },
    )
    .await;
}

/// Sends an HTTP request to a pod server from the node's namespace (the
/// caller's thread is there) and returns the response body and the local
/// address the connection came from.
async fn http_get(server: SocketAddr) -> (String, SocketAddr) {
    let start = Instant::now();
    let mut stream = loop {
        match tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::TcpStream::connect(server),
        )
        .await
        {
            Ok(Ok(stream)) => break stream,
            // The server may still be starting.
            other if start.elapsed() < Duration::from_secs(10) => {
                let _ = other;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("cannot connect to {server}: {other:?}"),
        }
    };
    let me = stream.local_addr().expect("local addr");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: pod\r\n\r\n")
        .await
        .expect("send");
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.0 200 OK"), "{head}");
    assert!(head.contains("Content-Type: text/plain"), "{head}");
    (body.to_owned(), me)
}

fn in_subnet(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [10, 244, 1])
}

fn record_path(kubelet: &Kubelet, uid: &str) -> std::path::PathBuf {
    kubelet
        .state_dir
        .join("sandboxes")
        .join(format!("{uid}.json"))
}

fn sandbox_record(kubelet: &Kubelet, uid: &str) -> Value {
    let path = record_path(kubelet, uid);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).expect("record JSON")
}

/// `(pid, start time)` of a record's pod server.
fn server_of(record: &Value) -> (i32, u64) {
    let server = &record["server"];
    (
        server["pid"].as_i64().expect("server pid") as i32,
        server["startTime"].as_u64().expect("server start time"),
    )
}

/// The pod namespaces of this kubelet that exist.
fn pod_namespaces(kubelet: &Kubelet) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .expect("/run/netns")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&kubelet.netns_prefix))
        .collect();
    names.sort();
    names
}

/// The attachments tailroute-bridge holds (its state file).
fn plugin_attachments(kubelet: &Kubelet) -> Vec<Value> {
    let path = Path::new(&kubelet.bridge_data_dir).join("tailroute/state.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let state: Value = serde_json::from_str(&text).expect("plugin state JSON");
            state["attachments"].as_array().cloned().unwrap_or_default()
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}
