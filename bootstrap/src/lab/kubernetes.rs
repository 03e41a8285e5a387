//! The lab's Kubernetes control plane: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, in the control-plane
//! namespace, configured the way kubeadm configures a real cluster where it
//! matters to tailroute:
//!
//! - kube-controller-manager allocates every Node's podCIDR(s) from the
//!   cluster CIDR (`--allocate-node-cidrs --cluster-cidr`), exactly what
//!   `kubeadm init --pod-network-cidr` sets up, dual-stack when asked;
//! - the API server authorizes with `Node,RBAC` and admits with
//!   `NodeRestriction`, so a lab kubelet can do only what a real one may.
//!
//! Where the lab differs, it is for a one-machine bed: plain-http etcd on
//! the namespace's loopback, and static tokens instead of client
//! certificates.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab::daemon::{wait_ready, DaemonError, DaemonSpec, Entry};
use crate::lab::peers::Peers;
use crate::lab::pki;
use crate::lab::probe;

/// The API server's port.
pub const APISERVER_PORT: u16 = 6443;

/// The cluster CIDRs, as given to `kubeadm init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNetwork {
    /// `--pod-network-cidr`, one per family.
    pub pod_cidrs: Vec<String>,
    /// Per-node podCIDR prefix lengths, one per family (`/24`, `/64`).
    pub node_mask_sizes: Vec<u8>,
    /// `--service-cidr`, one per family.
    pub service_cidrs: Vec<String>,
}

impl ClusterNetwork {
    /// kubeadm's defaults for pods in 10.244.0.0/16 (flannel's customary
    /// range), plus IPv6 ranges when `dual_stack`.
    pub fn lab_default(dual_stack: bool) -> ClusterNetwork {
        let mut net = ClusterNetwork {
            pod_cidrs: vec!["10.244.0.0/16".into()],
            node_mask_sizes: vec![24],
            service_cidrs: vec!["10.96.0.0/12".into()],
        };
        if dual_stack {
            net.pod_cidrs.push("fd00:10:244::/56".into());
            net.node_mask_sizes.push(64);
            net.service_cidrs.push("fd00:10:96::/112".into());
        }
        net
    }
}

/// A credential in the API server's static token file.
#[derive(Debug, Clone)]
pub struct TokenUser {
    /// The bearer token.
    pub token: String,
    /// The user name.
    pub user: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// What the rest of the lab needs to reach the control plane.
#[derive(Debug, Clone)]
pub struct KubernetesEndpoints {
    /// `https://<control-plane underlay address>:6443`, reachable from every
    /// lab namespace.
    pub server: String,
    /// The CA certificate that signed the API server's certificate.
    pub ca_cert: PathBuf,
    /// An administrator (`system:masters`) token.
    pub admin_token: String,
}

/// Writes a kubeconfig with a bearer token.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_cert: &Path,
    user: &str,
    token: &str,
) -> std::io::Result<()> {
    let content = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: tailroute-lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n\
         - name: {user}\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: tailroute-lab\n  context:\n    cluster: tailroute-lab\n    user: {user}\n\
         current-context: tailroute-lab\n",
        ca = ca_cert.display(),
    );
    write_private(path, &content)
}

/// Writes `content` to `path`, readable by the owner only (it holds secrets).
pub fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content.as_bytes())
}

/// One process of the control plane, started and ready.
#[derive(Debug, Clone)]
pub struct Started {
    /// What it is (`kube-apiserver`).
    pub what: String,
    /// Its pid.
    pub pid: u32,
}

/// Starts the control plane in `namespace`; `record` is called with every
/// process right after it is spawned, before waiting for it.
///
/// `advertise` are the control plane's underlay addresses (the first one
/// is advertised); `users` are the static-token users besides the admin.
#[allow(clippy::too_many_arguments)]
pub fn start(
    peers: &Peers,
    namespace: &str,
    dir: &Path,
    advertise: &[IpAddr],
    network: &ClusterNetwork,
    users: &[TokenUser],
    record: &mut dyn FnMut(u32, &str) -> Result<(), String>,
) -> Result<KubernetesEndpoints, StartError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| StartError::Setup(format!("{what}: {e}"))
    };
    for sub in ["etcd", "pki", "flex", "logs"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(io("create the control plane's directories"))?;
    }
    let mut sans: Vec<IpAddr> = advertise.to_vec();
    sans.push("127.0.0.1".parse().expect("literal"));
    sans.extend(
        network
            .service_cidrs
            .iter()
            .filter_map(|c| first_service_ip(c)),
    );
    let pki =
        pki::generate(&dir.join("pki"), &sans).map_err(|e| StartError::Setup(e.to_string()))?;

    let admin_token = pki::random_token().map_err(io("make a token"))?;
    let mut tokens =
        format!("{admin_token},tailroute-lab-admin,tailroute-lab-admin,\"system:masters\"\n");
    for u in users {
        tokens.push_str(&format!(
            "{},{},{},\"{}\"\n",
            u.token,
            u.user,
            u.user,
            u.groups.join(",")
        ));
    }
    let token_file = dir.join("tokens.csv");
    write_private(&token_file, &tokens).map_err(io("write the token file"))?;
    let advertise_ip = advertise
        .first()
        .copied()
        .ok_or_else(|| StartError::Setup("no control-plane address".into()))?;
    let server = format!("https://{}", SocketAddr::new(advertise_ip, APISERVER_PORT));
    // The control plane's own components talk to the API server over the
    // namespace's loopback, like kubeadm's static pods do.
    let local = format!("https://127.0.0.1:{APISERVER_PORT}");
    let component_kubeconfig = dir.join("components.kubeconfig");
    write_kubeconfig(
        &component_kubeconfig,
        &local,
        &pki.ca_cert,
        "tailroute-lab-admin",
        &admin_token,
    )
    .map_err(io("write the components' kubeconfig"))?;

    let log = |name: &str| dir.join("logs").join(format!("{name}.log"));
    let s = |p: &Path| p.display().to_string();
    let mut spawn = |what: &str, program: &Path, args: Vec<String>| -> Result<u32, StartError> {
        let pid = DaemonSpec {
            namespace: Some(namespace),
            entry: Entry::Setns,
            program,
            args,
            env: vec![],
            log: log(what),
        }
        .spawn()?;
        record(pid, what).map_err(StartError::Setup)?;
        Ok(pid)
    };

    let etcd = spawn(
        "etcd",
        &peers.etcd,
        [
            "--name=lab".to_owned(),
            format!("--data-dir={}", s(&dir.join("etcd"))),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=lab=http://127.0.0.1:2380".into(),
            "--listen-metrics-urls=".into(),
            // A lab's etcd is small: 64 MiB of quota and an aggressive
            // snapshot count keep its memory down.
            "--quota-backend-bytes=67108864".into(),
            "--snapshot-count=5000".into(),
        ]
        .to_vec(),
    )?;
    let etcd_addr: SocketAddr = "127.0.0.1:2379".parse().expect("literal");
    wait_ready(
        "etcd",
        Some(etcd),
        &log("etcd"),
        Duration::from_secs(30),
        || match probe::http_get_in(namespace, etcd_addr, "/health")? {
            (200, body) if body.contains("\"health\":\"true\"") => Ok(()),
            (code, body) => Err(format!("/health answered {code}: {body}")),
        },
    )?;

    let apiserver = spawn(
        "kube-apiserver",
        &peers.kube_apiserver,
        vec![
            "--etcd-servers=http://127.0.0.1:2379".into(),
            "--bind-address=::".into(),
            format!("--advertise-address={advertise_ip}"),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--tls-cert-file={}", s(&pki.apiserver_cert)),
            format!("--tls-private-key-file={}", s(&pki.apiserver_key)),
            format!(
                "--service-cluster-ip-range={}",
                network.service_cidrs.join(",")
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", s(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", s(&pki.sa_key)),
            format!("--token-auth-file={}", s(&token_file)),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ],
    )?;
    // /readyz is open to anonymous clients (system:public-info-viewer); a
    // TCP accept is enough to move on, the caller waits for /readyz
    // through the API proxy with a real TLS client.
    let api_addr = SocketAddr::new("127.0.0.1".parse().expect("literal"), APISERVER_PORT);
    wait_ready(
        "kube-apiserver",
        Some(apiserver),
        &log("kube-apiserver"),
        Duration::from_secs(60),
        || probe::listening_in(namespace, api_addr),
    )?;

    let mut kcm_args = vec![
        format!("--kubeconfig={}", s(&component_kubeconfig)),
        "--bind-address=127.0.0.1".into(),
        "--leader-elect=false".into(),
        format!("--controllers={}", CONTROLLERS.join(",")),
        "--allocate-node-cidrs=true".into(),
        format!("--cluster-cidr={}", network.pod_cidrs.join(",")),
        format!(
            "--service-cluster-ip-range={}",
            network.service_cidrs.join(",")
        ),
        format!("--service-account-private-key-file={}", s(&pki.sa_key)),
        format!("--root-ca-file={}", s(&pki.ca_cert)),
        "--use-service-account-credentials=false".into(),
        // Without it kcm creates /usr/libexec/kubernetes/... on the host.
        format!("--flex-volume-plugin-dir={}", s(&dir.join("flex"))),
        "--profiling=false".into(),
    ];
    for (cidr, size) in network.pod_cidrs.iter().zip(&network.node_mask_sizes) {
        let family = if cidr.contains(':') { "ipv6" } else { "ipv4" };
        kcm_args.push(format!("--node-cidr-mask-size-{family}={size}"));
    }
    spawn(
        "kube-controller-manager",
        &peers.kube_controller_manager,
        kcm_args,
    )?;
    spawn(
        "kube-scheduler",
        &peers.kube_scheduler,
        vec![
            format!("--kubeconfig={}", s(&component_kubeconfig)),
            "--bind-address=127.0.0.1".into(),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
        ],
    )?;
    Ok(KubernetesEndpoints {
        server,
        ca_cert: pki.ca_cert,
        admin_token,
    })
}

/// The controllers a lab cluster needs: podCIDR allocation and node
/// lifecycle (taints), workloads (Deployments, DaemonSets for the agent),
/// service accounts, garbage collection and namespaces.
const CONTROLLERS: &[&str] = &[
    "node-ipam-controller",
    "node-lifecycle-controller",
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "endpointslice-controller",
    "pod-garbage-collector-controller",
    "clusterrole-aggregation-controller",
];

/// The first usable address of a service CIDR (the `kubernetes` Service's
/// ClusterIP, which must be in the serving certificate).
fn first_service_ip(cidr: &str) -> Option<IpAddr> {
    let (addr, _) = cidr.split_once('/')?;
    match addr.parse().ok()? {
        IpAddr::V4(v4) => Some(IpAddr::V4((u32::from(v4) + 1).into())),
        IpAddr::V6(v6) => Some(IpAddr::V6((u128::from(v6) + 1).into())),
    }
}

/// Why the control plane did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Files, keys or the ledger.
    #[error("control plane setup failed: {0}")]
    Setup(String),
    /// A process failed to start or become ready.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubernetes_service_ip_is_the_first_of_the_range() {
        assert_eq!(
            first_service_ip("10.96.0.0/12"),
            Some("10.96.0.1".parse().unwrap())
        );
        assert_eq!(
            first_service_ip("fd00:10:96::/112"),
            Some("fd00:10:96::1".parse().unwrap())
        );
    }

    #[test]
    fn dual_stack_adds_a_v6_range_per_family() {
        let net = ClusterNetwork::lab_default(true);
        assert_eq!(net.pod_cidrs, ["10.244.0.0/16", "fd00:10:244::/56"]);
        assert_eq!(net.node_mask_sizes, [24, 64]);
        assert_eq!(net.service_cidrs.len(), 2);
    }
}
