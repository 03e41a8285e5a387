//! The reconcile pass against an exact script: tailscaled's LocalAPI (a
//! fake on a unix socket), the apiserver (a tower-test mock asserting
//! method, path and body of every call) and a recorded datapath.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::config::{AgentConfig, Args};
use crate::localapi::fake::{recorded, Exchange, FakeTailscaled, Reply};
use crate::node_network::NetworkError;
use crate::route_ledger::RouteLedger;
use crate::test_support::{tempdir, ApiCall, MockApiserver, TempDir};

/// The datapath, recorded.
#[derive(Clone, Default)]
struct RecordedNetwork {
    applied: Arc<Mutex<Vec<DatapathSpec>>>,
}

impl NodeNetwork for RecordedNetwork {
    async fn apply(&self, spec: &DatapathSpec) -> Result<Vec<String>, NetworkError> {
        let mut applied = self.applied.lock().expect("lock");
        let changed = applied.last() != Some(spec);
        applied.push(spec.clone());
        Ok(if changed {
            vec!["table inet tailroute".to_owned()]
        } else {
            Vec::new()
        })
    }
    async fn remove(&self) -> Result<(), NetworkError> {
        Ok(())
    }
    async fn mtu(&self, interface: &str) -> Result<u32, NetworkError> {
        assert_eq!(interface, "tailscale0");
        Ok(1280)
    }
    async fn route_interface(&self, _: IpAddr) -> Result<Option<String>, NetworkError> {
        Ok(Some("tailscale0".to_owned()))
    }
}

/// One approval asked for: the node key and the routes.
type ApprovalCall = (String, Vec<IpNet>);

/// An approver that approves and remembers the calls.
#[derive(Clone, Default)]
struct RecordedApprover {
    calls: Arc<Mutex<Vec<ApprovalCall>>>,
}

impl RouteApprover for RecordedApprover {
    async fn approve(
        &self,
        node_key: &str,
        _: &[IpAddr],
        routes: &[IpNet],
    ) -> Result<Vec<IpNet>, ApprovalFailure> {
        self.calls
            .lock()
            .expect("lock")
            .push((node_key.to_owned(), routes.to_vec()));
        Ok(routes.to_vec())
    }
}

struct Bed {
    _dir: TempDir,
    config: Arc<AgentConfig>,
}

fn bed() -> Bed {
    let dir = tempdir();
    let text = format!(
        "state_dir = \"{0}/state\"\n[cni]\nconf_dir = \"{0}/net.d\"\nbin_dir = \"{0}/bin\"\n\
         data_dir = \"{0}/bridge\"\n[cluster]\npod_cidrs = [\"10.244.0.0/16\"]\n",
        dir.path().display()
    );
    let args = Args {
        node_name: Some("n1".to_owned()),
        ..Args::default()
    };
    let config = AgentConfig::from_parts(&text, Path::new("test.toml"), &args).expect("config");
    Bed {
        _dir: dir,
        config: Arc::new(config),
    }
}

fn node(name: &str, cidr: &str, ip: &str, condition: Option<(&str, &str)>) -> Node {
    let conditions: Vec<Value> = condition
        .map(|(status, reason)| {
            json!({"type": "NetworkUnavailable", "status": status, "reason": reason,
                   "message": "m", "lastTransitionTime": "2026-11-21T10:00:00Z"})
        })
        .into_iter()
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        // What n1 sees of n2 (the fake status's peer) is already published.
        "metadata": {"name": name, "uid": format!("uid-{name}"),
                     "annotations": {"tailroute.dev/peer-routes-approved": "10.244.2.0/24"}},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}], "conditions": conditions},
    }))
    .expect("node")
}

/// `node` before its agent published what it sees.
fn unwitnessed(mut node: Node) -> Node {
    node.metadata.annotations = None;
    node
}

fn view(own: Node) -> ClusterView {
    let n2 = node("n2", "10.244.2.0/24", "100.64.0.2", None);
    ClusterView {
        nodes: vec![own.clone(), n2],
        own,
    }
}

/// tailscaled's status: running, with n2 as an online peer carrying its
/// pod route, and this node's own route approved or not.
fn status(approved: bool) -> String {
    let mut allowed = vec!["100.64.0.1/32"];
    if approved {
        allowed.push("10.244.1.0/24");
    }
    json!({
        "Version": "1.98.10", "BackendState": "Running",
        "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
        "Self": {"ID": "1", "PublicKey": "nodekey:11", "HostName": "n1",
                 "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"],
                 "AllowedIPs": allowed, "Online": true},
        "Peer": {"nodekey:22": {"ID": "2", "HostName": "n2", "Online": true,
                 "TailscaleIPs": ["100.64.0.2"], "AllowedIPs": ["100.64.0.2/32", "10.244.2.0/24"],
                 "CurAddr": "198.18.0.12:41641"}},
    })
    .to_string()
}

fn first_pass_tailscaled(approved: bool) -> Vec<Exchange> {
    vec![
        Exchange::new(
            "GET",
            "/localapi/v0/status",
            Reply::Json(200, status(approved)),
        ),
        Exchange::new(
            "GET",
            "/localapi/v0/prefs",
            Reply::Json(200, recorded("prefs-fresh.json")),
        ),
        Exchange::new(
            "PATCH",
            "/localapi/v0/prefs",
            Reply::Json(200, recorded("prefs-after-patch.json")),
        )
        .with_body(json!({
            "AdvertiseRoutes": ["10.244.1.0/24"], "AdvertiseRoutesSet": true,
            "RouteAll": true, "RouteAllSet": true,
            "NoSNAT": true, "NoSNATSet": true,
        })),
    ]
}

fn steady_tailscaled(approved: bool) -> Vec<Exchange> {
    vec![
        Exchange::new(
            "GET",
            "/localapi/v0/status",
            Reply::Json(200, status(approved)),
        ),
        Exchange::new(
            "GET",
            "/localapi/v0/prefs",
            Reply::Json(200, recorded("prefs-after-patch.json")),
        ),
    ]
}

const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";
const NODE_STATUS: &str = "/api/v1/nodes/n1/status";

fn event(reason: &'static str, kind: &'static str) -> ApiCall {
    ApiCall::new(
        "POST",
        EVENTS,
        json!({"metadata": {"name": "e"}, "eventTime": null}),
    )
    .body(move |b| {
        assert_eq!(b["reason"], reason);
        assert_eq!(b["type"], kind);
        assert_eq!(b["regarding"]["kind"], "Node");
        assert_eq!(b["regarding"]["name"], "n1");
    })
}

fn condition(status: &'static str, reason: &'static str, note: &'static str) -> ApiCall {
    ApiCall::new("PATCH", NODE_STATUS, json!({"metadata": {"name": "n1"}})).body(move |b| {
        let conditions = b["status"]["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 1, "only the agent's own condition: {b}");
        let c = &conditions[0];
        assert_eq!(c["type"], "NetworkUnavailable");
        assert_eq!(c["status"], status);
        assert_eq!(c["reason"], reason);
        assert!(c["message"].as_str().unwrap_or("").contains(note), "{c}");
    })
}

fn reconciler(
    bed: &Bed,
    fake: &FakeTailscaled,
    client: kube::Client,
    network: RecordedNetwork,
    approver: Option<RecordedApprover>,
) -> Reconciler<RecordedNetwork, RecordedApprover> {
    let localapi = LocalApiClient::new(fake.socket()).with_timeout(Duration::from_secs(5));
    let ledger = RouteLedger::open(&bed.config.state_dir).expect("ledger");
    Reconciler::new(
        bed.config.clone(),
        localapi.clone(),
        RouteAdvertiser::new(localapi, ledger),
        network,
        approver,
        NodeReporter::new(client, "n1"),
        Arc::new(Metrics::new()),
    )
}

#[tokio::test]
async fn an_unapproved_route_is_reported_with_the_policy_snippet_then_up_once_approved() {
    let bed = bed();
    let network = RecordedNetwork::default();

    // Pass 1: advertise, datapath, conflist; the route is not approved and
    // there is no credential: condition True with the remedy.
    let fake = FakeTailscaled::start(first_pass_tailscaled(false));
    let (client, api) = MockApiserver::start(vec![
        event("RouteAdvertised", "Normal"),
        event("CNIConfigWritten", "Normal"),
        ApiCall::new(
            "PATCH",
            "/api/v1/nodes/n1",
            json!({"metadata": {"name": "n1"}}),
        )
        .body(|b| {
            let expected = json!({"metadata": {"annotations": {
                "tailroute.dev/peer-routes-approved": "10.244.2.0/24"
            }}});
            assert_eq!(b, &expected);
        }),
        condition(
            "True",
            "RouteNotApproved",
            "\"autoApprovers\": {\"routes\": {\"10.244.0.0/16\": [\"tag:k8s-node\"]}}",
        ),
        event("RouteNotApproved", "Warning"),
    ]);
    let mut r = reconciler(&bed, &fake, client, network.clone(), None);
    let n1 = unwitnessed(node("n1", "10.244.1.0/24", "100.64.0.1", None));
    let report = r.reconcile(&view(n1)).await;
    api.finish();
    fake.finish();
    assert!(report.network_unavailable);
    assert_eq!(report.advertised, vec![net("10.244.1.0/24")]);
    assert!(report.approved.is_empty());
    assert!(report.conflist_written);
    let conflist = std::fs::read_to_string(bed.config.conflist_path()).expect("conflist");
    assert!(
        conflist.contains("\"mtu\": 1280") && conflist.contains("10.244.1.0/24"),
        "{conflist}"
    );
    let spec = network.applied.lock().expect("lock")[0].clone();
    assert_eq!(spec.node_pod_cidrs, vec![net("10.244.1.0/24")]);
    assert_eq!(
        spec.cluster_node_tailnet_ips,
        vec![
            "100.64.0.1".parse::<IpAddr>().expect("ip"),
            "100.64.0.2".parse().expect("ip")
        ]
    );

    // Pass 2: the netmap now shows the approval (autoApprovers, or an
    // operator): condition False/TailrouteIsUp; nothing else is written.
    let fake = FakeTailscaled::start(steady_tailscaled(true));
    let (client, api) = MockApiserver::start(vec![
        condition("False", "TailrouteIsUp", "advertised and approved"),
        event("TailrouteIsUp", "Normal"),
    ]);
    r.reporter = NodeReporter::new(client, "n1");
    r.localapi = LocalApiClient::new(fake.socket());
    r.advertiser = RouteAdvertiser::new(
        LocalApiClient::new(fake.socket()),
        RouteLedger::open(&bed.config.state_dir).expect("ledger"),
    );
    let n1 = node(
        "n1",
        "10.244.1.0/24",
        "100.64.0.1",
        Some(("True", "RouteNotApproved")),
    );
    let report = r.reconcile(&view(n1)).await;
    api.finish();
    fake.finish();
    assert!(!report.network_unavailable, "{report:?}");
    assert_eq!(report.peers.len(), 1);
    assert!(report.peers[0].reachable(), "{:?}", report.peers[0]);

    // Pass 3: steady state: two LocalAPI reads and no apiserver call.
    let fake = FakeTailscaled::start(steady_tailscaled(true));
    let (client, api) = MockApiserver::start(vec![]);
    r.reporter = NodeReporter::new(client, "n1");
    r.localapi = LocalApiClient::new(fake.socket());
    r.advertiser = RouteAdvertiser::new(
        LocalApiClient::new(fake.socket()),
        RouteLedger::open(&bed.config.state_dir).expect("ledger"),
    );
    let mut n1 = node("n1", "10.244.1.0/24", "100.64.0.1", None);
    let shown = NetworkCondition::up(report.message.clone());
    n1.status.as_mut().expect("status").conditions =
        Some(vec![k8s_openapi::api::core::v1::NodeCondition {
            type_: "NetworkUnavailable".to_owned(),
            status: "False".to_owned(),
            reason: Some(shown.reason),
            message: Some(shown.message),
            ..Default::default()
        }]);
    let report = r.reconcile(&view(n1)).await;
    api.finish();
    fake.finish();
    assert!(!report.network_unavailable);
}

#[tokio::test]
async fn with_a_credential_the_agent_approves_through_the_api() {
    let bed = bed();
    let approver = RecordedApprover::default();
    let fake = FakeTailscaled::start(first_pass_tailscaled(false));
    let (client, api) = MockApiserver::start(vec![
        event("RouteAdvertised", "Normal"),
        event("CNIConfigWritten", "Normal"),
        event("RouteApproved", "Normal"),
        condition(
            "False",
            "TailrouteIsUp",
            "10.244.1.0/24 advertised and approved",
        ),
        event("TailrouteIsUp", "Normal"),
    ]);
    let mut r = reconciler(
        &bed,
        &fake,
        client,
        RecordedNetwork::default(),
        Some(approver.clone()),
    );
    let report = r
        .reconcile(&view(node("n1", "10.244.1.0/24", "100.64.0.1", None)))
        .await;
    api.finish();
    fake.finish();
    assert!(!report.network_unavailable, "{report:?}");
    assert_eq!(
        approver.calls.lock().expect("lock").clone(),
        vec![("nodekey:11".to_owned(), vec![net("10.244.1.0/24")])]
    );
}

#[tokio::test]
async fn an_approved_route_makes_no_api_call() {
    let bed = bed();
    let approver = RecordedApprover::default();
    let fake = FakeTailscaled::start(first_pass_tailscaled(true));
    let (client, api) = MockApiserver::start(vec![
        event("RouteAdvertised", "Normal"),
        event("CNIConfigWritten", "Normal"),
        condition("False", "TailrouteIsUp", "approved"),
        event("TailrouteIsUp", "Normal"),
    ]);
    let mut r = reconciler(
        &bed,
        &fake,
        client,
        RecordedNetwork::default(),
        Some(approver.clone()),
    );
    let report = r
        .reconcile(&view(node("n1", "10.244.1.0/24", "100.64.0.1", None)))
        .await;
    api.finish();
    fake.finish();
    assert!(!report.network_unavailable);
    assert!(approver.calls.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn without_a_credential_a_route_another_node_witnessed_counts_as_approved() {
    let bed = bed();
    let fake = FakeTailscaled::start(first_pass_tailscaled(false));
    let (client, api) = MockApiserver::start(vec![
        event("RouteAdvertised", "Normal"),
        event("CNIConfigWritten", "Normal"),
        condition("False", "TailrouteIsUp", "approved"),
        event("TailrouteIsUp", "Normal"),
    ]);
    let mut r = reconciler(&bed, &fake, client, RecordedNetwork::default(), None);
    let n1 = node("n1", "10.244.1.0/24", "100.64.0.1", None);
    let mut n2 = node("n2", "10.244.2.0/24", "100.64.0.2", None);
    n2.metadata.annotations = Some(
        [(
            "tailroute.dev/peer-routes-approved".to_owned(),
            "10.244.1.0/24".to_owned(),
        )]
        .into(),
    );
    let cluster = ClusterView {
        own: n1.clone(),
        nodes: vec![n1, n2],
    };
    let report = r.reconcile(&cluster).await;
    api.finish();
    fake.finish();
    assert!(!report.network_unavailable, "{report:?}");
}

#[tokio::test]
async fn without_a_pod_cidr_nothing_is_touched_and_the_condition_says_why() {
    let bed = bed();
    let fake = FakeTailscaled::start(vec![]);
    let (client, api) = MockApiserver::start(vec![
        condition("True", "NoPodCIDR", "--allocate-node-cidrs"),
        event("NoPodCIDR", "Warning"),
    ]);
    let network = RecordedNetwork::default();
    let mut r = reconciler(&bed, &fake, client, network.clone(), None);
    let mut n1 = node("n1", "10.244.1.0/24", "100.64.0.1", None);
    n1.spec = None;
    let report = r.reconcile(&view(n1)).await;
    api.finish();
    fake.finish();
    assert!(report.network_unavailable);
    assert!(network.applied.lock().expect("lock").is_empty());
    assert!(!bed.config.conflist_path().exists());
}

#[tokio::test]
async fn a_stopped_tailscaled_keeps_the_conflist_away() {
    let bed = bed();
    let fake = FakeTailscaled::start(vec![Exchange::new(
        "GET",
        "/localapi/v0/status",
        Reply::Json(200, recorded("status-needs-login.json")),
    )]);
    let (client, api) = MockApiserver::start(vec![
        condition("True", "TailscaleNotRunning", "tailroute join"),
        event("TailscaleNotRunning", "Warning"),
    ]);
    let mut r = reconciler(&bed, &fake, client, RecordedNetwork::default(), None);
    let report = r
        .reconcile(&view(node("n1", "10.244.1.0/24", "100.64.0.1", None)))
        .await;
    api.finish();
    fake.finish();
    assert_eq!(report.reason, "TailscaleNotRunning");
    assert!(!bed.config.conflist_path().exists());
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}
