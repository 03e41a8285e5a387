//! `tailroute-agent`: the node agent's binary.
//!
//! Wiring only: configuration, preflight, the watches that wake the
//! reconcile loop (the Node list, tailscaled's IPN bus, a resync timer),
//! the loop itself, and the HTTP endpoints. Stopping the agent changes
//! nothing on the node, so a restart or upgrade never interrupts pod
//! traffic; only `--cleanup` undoes what the agent set up.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod};
use kube::api::ListParams;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use tokio::sync::Notify;

use tailroute_agent::advertiser::RouteAdvertiser;
use tailroute_agent::approval::control_plane;
use tailroute_agent::config::{AgentConfig, Args, LogFormat};
use tailroute_agent::control::ControlPlane;
use tailroute_agent::departed;
use tailroute_agent::endpoints::{self, AgentState};
use tailroute_agent::identity::launch::{PodExec, RUN_IN_POD};
use tailroute_agent::identity::manager::IdentityManager;
use tailroute_agent::leader::LeaderLease;
use tailroute_agent::localapi::{LocalApiClient, WatchMask};
use tailroute_agent::metrics::{KindLabel, Metrics};
use tailroute_agent::node_network::{KernelNetwork, NodeNetwork};
use tailroute_agent::node_report::{node_reference, NodeReporter};
use tailroute_agent::reconcile::{ClusterView, Reconciler};
use tailroute_agent::route_ledger::RouteLedger;

fn main() -> ExitCode {
    // The internal mode that starts an identity's tailscaled inside its pod
    // (identity/launch.rs): checked first, while the process has one thread.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == RUN_IN_POD) {
        return match PodExec::parse(&argv[2..]) {
            Ok(exec) => {
                eprintln!("tailroute-agent {RUN_IN_POD}: {}", exec.exec());
                ExitCode::from(127)
            }
            Err(usage) => {
                eprintln!("tailroute-agent {usage}");
                ExitCode::from(2)
            }
        };
    }
    let args = Args::parse();
    let config = match AgentConfig::load(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tailroute-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tailroute-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if config.cleanup {
        runtime.block_on(async { tailroute_agent::cleanup::undo(&config).await.map(drop) })
    } else {
        runtime.block_on(run(config))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: AgentConfig) -> Result<(), String> {
    let config = Arc::new(config);
    tracing::info!(
        node = %config.node_name,
        socket = %config.localapi_socket.display(),
        version = env!("CARGO_PKG_VERSION"),
        "starting"
    );

    // Preflight: refuse to start against a tailscaled that is not there or
    // a credential the control plane rejects, saying which and why.
    let localapi = LocalApiClient::new(&config.localapi_socket);
    localapi
        .status_without_peers()
        .await
        .map_err(|e| format!("tailscaled's LocalAPI is unreachable: {e}"))?;
    let approver = control_plane(&config.approval)
        .map_err(|e| format!("approval credential: {e}"))?
        .map(Arc::new);
    if let Some(control) = &approver {
        control
            .verify()
            .await
            .map_err(|e| format!("the control plane refused the agent's credential: {e}"))?;
        tracing::info!(control = control.target(), "approval credential accepted");
    } else {
        tracing::info!("no approval credential: route approval is detected and reported only");
    }
    let ledger = RouteLedger::open(&config.state_dir).map_err(|e| e.to_string())?;

    let kube = kube_client(&config).await?;
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AgentState::new(metrics.clone(), config.resync));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {} for /healthz and /metrics: {e}",
                config.listen
            )
        })?;
    tokio::spawn(endpoints::serve(listener, state.clone()));

    let wake = Arc::new(Notify::new());
    let (deleted_tx, deleted) = mpsc::unbounded_channel();
    let nodes = watch_nodes(kube.clone(), wake.clone(), deleted_tx);
    tokio::spawn(watch_tailscaled(localapi.clone(), wake.clone()));

    let reporter = NodeReporter::new(kube.clone(), &config.node_name);
    let departed = DepartedNodes {
        lease: LeaderLease::new(kube.clone(), &config.node_name, config.resync * 3),
        kube: kube.clone(),
        control: approver.clone(),
        reporter: reporter.clone(),
        metrics: metrics.clone(),
        deleted,
    };
    if let (Some(identity), Some(control)) = (&config.identity, &approver) {
        let identity_wake = Arc::new(Notify::new());
        let agent = std::env::current_exe()
            .map_err(|e| format!("cannot find the agent's own binary (for run-in-pod): {e}"))?;
        let manager = IdentityManager::new(
            &config,
            control.clone(),
            agent,
            kube.clone(),
            metrics.clone(),
            identity_wake.clone(),
        );
        if let Some(manager) = manager {
            tracing::info!(
                namespaces = ?identity.policy.namespaces.keys().collect::<Vec<_>>(),
                dir = %identity.state_dir.display(),
                "per-pod identities enabled"
            );
            tokio::spawn(identity_loop(
                Arc::new(manager),
                identity_wake,
                kube.clone(),
                config.clone(),
            ));
        }
    }
    let reconciler: Reconciler<KernelNetwork, Arc<ControlPlane>> = Reconciler::new(
        config.clone(),
        localapi.clone(),
        RouteAdvertiser::new(localapi, ledger),
        KernelNetwork::new(&config.tailnet_interface),
        approver,
        reporter,
        metrics,
    );
    tokio::select! {
        () = reconcile_loop(reconciler, departed, nodes, wake, state, config.clone()) => Ok(()),
        () = shutdown_signal() => {
            tracing::info!("stopping; the node's datapath, routes and CNI config stay in place");
            Ok(())
        }
    }
}

async fn kube_client(config: &AgentConfig) -> Result<Client, String> {
    let kube_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no Kubernetes credentials (not in a pod, and no --kubeconfig): {e}")
        })?,
    };
    Client::try_from(kube_config).map_err(|e| format!("Kubernetes client: {e}"))
}

/// A cache of every Node, waking the loop on each change; deleted Nodes
/// also go to `deleted`.
fn watch_nodes(
    client: Client,
    wake: Arc<Notify>,
    deleted: mpsc::UnboundedSender<Node>,
) -> Store<Node> {
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<Node>::all(client), watcher::Config::default()),
    )
    .default_backoff();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::Delete(node)) => {
                    let _ = deleted.send(node);
                    wake.notify_one();
                }
                Ok(_) => wake.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watching Nodes"),
            }
        }
    });
    store
}

/// Keeps this node's identity pods' identities: a pass on every change to
/// the node's pods, every second while one waits or failed, and at every
/// resync otherwise. Identities already running are adopted by the first
/// pass, untouched.
async fn identity_loop(
    manager: Arc<IdentityManager>,
    wake: Arc<Notify>,
    client: Client,
    config: Arc<AgentConfig>,
) {
    let (store, writer) = reflector::store::<Pod>();
    let selector = format!("spec.nodeName={}", config.node_name);
    let stream = reflector::reflector(
        writer,
        watcher(
            Api::<Pod>::all(client),
            watcher::Config::default().fields(&selector),
        ),
    )
    .default_backoff();
    let notify = wake.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => notify.notify_one(),
                Err(e) => tracing::warn!(error = %e, "watching this node's Pods"),
            }
        }
    });
    if store.wait_until_ready().await.is_err() {
        tracing::error!("the Pod cache never became ready: per-pod identities are not managed");
        return;
    }
    loop {
        let pods: Vec<Pod> = store.state().iter().map(|p| (**p).clone()).collect();
        let summary = manager.reconcile(&pods).await;
        let pause = if summary.pending + summary.failed > 0 {
            Duration::from_secs(1)
        } else {
            config.resync
        };
        let _ = tokio::time::timeout(pause, wake.notified()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the outcome of a departure goes: the object its Event is about,
/// the Event's reason when the device was removed and when it was left
/// behind, and the counter by outcome.
struct Told<'a> {
    about: ObjectReference,
    reasons: (&'static str, &'static str),
    counter: &'a Family<KindLabel, Counter>,
}

/// The leader's chore: the tailnet devices of deleted Nodes.
struct DepartedNodes {
    lease: LeaderLease,
    kube: kube::Client,
    control: Option<Arc<ControlPlane>>,
    reporter: NodeReporter,
    metrics: Arc<Metrics>,
    deleted: mpsc::UnboundedReceiver<Node>,
}

impl DepartedNodes {
    /// Renews or takes the Lease; as the leader, handles every Node deleted
    /// since the last call, with an Event on the deleted Node. Other agents
    /// drop them. Runs also when this agent's own Node is gone (it may be
    /// the one deleted, and still hold the Lease).
    async fn run(&mut self) {
        let leading = match self.lease.try_lead().await {
            Ok(leading) => leading,
            Err(e) => {
                self.metrics.error("kubernetes");
                tracing::warn!(error = %e, "cannot take or renew the leader Lease");
                false
            }
        };
        self.metrics.leader.set(i64::from(leading));
        while let Ok(node) = self.deleted.try_recv() {
            let name = node.metadata.name.clone().unwrap_or_default();
            if !leading {
                tracing::debug!(node = %name, "Node deleted; the leader cleans up");
                continue;
            }
            let outcome = departed::clean_up(self.control.as_deref(), &node).await;
            let note = outcome.note(&name, &departed::tailnet_addresses(&node));
            // The Event is about the deleted Node itself, so it is there
            // even when the leader is that Node's own agent.
            let tell = Told {
                about: node_reference(&node),
                reasons: ("TailnetDeviceRemoved", "TailnetDeviceLeftBehind"),
                counter: &self.metrics.departed_nodes,
            };
            self.tell(tell, &outcome, note).await;
            self.remove_identities_of(&name).await;
        }
    }

    /// Logs, counts and publishes what became of a departed device.
    async fn tell(&self, told: Told<'_>, outcome: &departed::Departure, note: String) {
        let left_behind = matches!(outcome, departed::Departure::LeftBehind(_));
        if left_behind {
            tracing::warn!("{note}");
        } else {
            tracing::info!("{note}");
        }
        told.counter
            .get_or_create(&KindLabel {
                kind: outcome.label().to_owned(),
            })
            .inc();
        let reason = if left_behind {
            told.reasons.1
        } else {
            told.reasons.0
        };
        if let Err(e) = self
            .reporter
            .event_on(&told.about, left_behind, reason, note)
            .await
        {
            tracing::warn!(error = %e, "cannot publish an Event");
        }
    }

    /// The tailnet identities of the pods that were on the deleted Node
    /// `node`, each removed with an Event on its pod. Pod garbage
    /// collection deletes those pods only after the Node, so they are
    /// still there to be read.
    async fn remove_identities_of(&self, node: &str) {
        let pods: Api<Pod> = Api::all(self.kube.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
        let pods = match pods.list(&on_node).await {
            Ok(list) => list.items,
            Err(e) => {
                self.metrics.error("kubernetes");
                tracing::warn!(node, error = %e, "cannot list the deleted Node's pods");
                return;
            }
        };
        for pod in pods {
            let addresses = departed::identity_addresses(&pod);
            if addresses.is_empty() {
                continue;
            }
            let outcome = departed::remove_identity(self.control.as_deref(), &pod).await;
            let who = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
            let tell = Told {
                about: pod.object_ref(&()),
                reasons: ("IdentityRemoved", "IdentityLeftBehind"),
                counter: &self.metrics.departed_identities,
            };
            let note = outcome.identity_note(node, &who, &addresses);
            self.tell(tell, &outcome, note).await;
        }
    }
}

/// Wakes the loop whenever tailscaled's state, prefs or netmap change, and
/// on every reconnect (a restarted tailscaled needs its prefs checked). The
/// netmap matters because a peer's route approval reaches this node only
/// through it: without it the peer report would wait for the resync timer.
async fn watch_tailscaled(localapi: LocalApiClient, wake: Arc<Notify>) {
    let mask = WatchMask::INITIAL_STATE | WatchMask::INITIAL_PREFS | WatchMask::RATE_LIMIT;
    loop {
        match localapi.watch_ipn_bus(mask).await {
            Ok(mut stream) => {
                while let Some(notify) = stream.next().await {
                    match notify {
                        Ok(n) if n.state.is_some() || n.prefs.is_some() || n.netmap => {
                            wake.notify_one()
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "IPN bus");
                            break;
                        }
                    }
                }
                tracing::info!("tailscaled closed the IPN bus watch; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot watch tailscaled's IPN bus"),
        }
        wake.notify_one();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn reconcile_loop<N: NodeNetwork, A: tailroute_agent::reconcile::RouteApprover>(
    mut reconciler: Reconciler<N, A>,
    mut departed: DepartedNodes,
    nodes: Store<Node>,
    wake: Arc<Notify>,
    state: Arc<AgentState>,
    config: Arc<AgentConfig>,
) {
    if nodes.wait_until_ready().await.is_err() {
        tracing::error!("the Node cache never became ready");
        return;
    }
    loop {
        let all: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
        let own = all
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&config.node_name));
        match own {
            Some(own) => {
                let view = ClusterView {
                    own: own.clone(),
                    nodes: all.clone(),
                };
                let report = reconciler.reconcile(&view).await;
                state.record(report);
            }
            None => tracing::warn!(
                node = %config.node_name,
                "no Node with this name: is NODE_NAME right, and has the kubelet registered?"
            ),
        }
        departed.run().await;
        // Whichever comes first; a burst of wake-ups (a Node list sync, a
        // flurry of IPN notifications) becomes one pass.
        let _ = tokio::time::timeout(config.resync, wake.notified()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
