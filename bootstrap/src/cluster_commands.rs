//! `tailroute init`, `join`, `reset` and `status`: their flags, and the
//! glue from flags to the library's plans.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use tailroute::host::init::{self, InitRequest};
use tailroute::host::join::{self, JoinRequest};
use tailroute::host::kubeadm::{self, Discovery};
use tailroute::host::machine::TAILSCALED_SOCKET;
use tailroute::host::network::ClusterNetwork;
use tailroute::host::preflight::{self, Role};
use tailroute::host::reset::{self, ResetRequest};
use tailroute::host::tailnet_step::{Credential, TailnetPlan, TailnetRequest, AUTH_KEY_ENV};
use tailroute::host::{paths, Machine, Prepared, RealMachine};
use tailroute::manifest::{self, ApprovalSettings, InstallSettings};
use tailroute::status::{self, StatusSources};

type Error = Box<dyn std::error::Error>;

/// How this machine gets onto the tailnet (init and join).
#[derive(Debug, Clone, Args)]
pub struct TailnetArgs {
    /// Headscale's URL (omit for Tailscale's own control plane).
    #[arg(long, value_name = "URL")]
    login_server: Option<String>,
    /// A file holding an auth key (Tailscale) or pre-auth key (Headscale).
    /// Or set TAILROUTE_AUTH_KEY.
    #[arg(long, value_name = "FILE", conflicts_with = "oauth_client_secret_file")]
    auth_key_file: Option<PathBuf>,
    /// A file holding a Tailscale OAuth client secret (scope auth_keys):
    /// the device is created tagged and not ephemeral.
    #[arg(long, value_name = "FILE")]
    oauth_client_secret_file: Option<PathBuf>,
    /// Tags to request, comma-separated [default: tag:k8s-node on Tailscale;
    /// the pre-auth key's tags on Headscale].
    #[arg(long, value_name = "TAGS", value_delimiter = ',')]
    advertise_tags: Vec<String>,
    /// The device and Kubernetes node name [default: the hostname].
    #[arg(long)]
    hostname: Option<String>,
    /// tailscaled's LocalAPI socket.
    #[arg(long, value_name = "PATH", default_value = TAILSCALED_SOCKET)]
    tailscale_socket: PathBuf,
}

impl TailnetArgs {
    fn request(&self) -> TailnetRequest {
        let credential = match (&self.auth_key_file, &self.oauth_client_secret_file) {
            (Some(file), _) => Credential::AuthKeyFile(file.clone()),
            (None, Some(file)) => Credential::OAuthClientSecretFile(file.clone()),
            (None, None) if std::env::var_os(AUTH_KEY_ENV).is_some() => Credential::AuthKeyEnv,
            (None, None) => Credential::None,
        };
        TailnetRequest {
            login_server: self.login_server.clone(),
            credential,
            advertise_tags: self.advertise_tags.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

/// How the agents get their pod routes approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApprovalControl {
    /// Nobody: the tailnet policy's autoApprovers approve them.
    None,
    /// The agents, through Headscale's API.
    Headscale,
    /// The agents, through Tailscale's API.
    Tailscale,
}

/// `tailroute init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The pod network (kubeadm's podSubnet): one CIDR, or an IPv4 and an
    /// IPv6 one comma-separated for dual-stack.
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pod_network_cidr: String,
    /// The Service network [default: 10.96.0.0/12, plus fd00:10:96::/112
    /// when dual-stack].
    #[arg(long, value_name = "CIDR[,CIDR]")]
    service_cidr: Option<String>,
    /// HA: the `host[:port]` every control plane shares [default: this
    /// node's tailnet address].
    #[arg(long, value_name = "HOST[:PORT]")]
    control_plane_endpoint: Option<String>,
    /// HA: upload the control-plane certificates so other control planes
    /// can join (the key is printed and kept in /etc/tailroute/certificate-key).
    #[arg(long)]
    upload_certs: bool,
    /// The Kubernetes version [default: kubeadm's own].
    #[arg(long, value_name = "VERSION")]
    kubernetes_version: Option<String>,
    /// The CRI endpoint [default: detected by kubeadm].
    #[arg(long, value_name = "URL")]
    cri_socket: Option<String>,
    #[command(flatten)]
    tailnet: TailnetArgs,
    /// How the agents approve pod routes.
    #[arg(long, value_enum, default_value = "none")]
    approval: ApprovalControl,
    /// Headscale's URL for --approval headscale [default: --login-server].
    #[arg(long, value_name = "URL")]
    approval_url: Option<String>,
    /// A file with the Headscale API key or Tailscale API access token,
    /// stored as the Secret tailroute-system/tailroute-agent-credentials.
    #[arg(long, value_name = "FILE")]
    approval_api_key_file: Option<PathBuf>,
    /// The Tailscale OAuth client id (scopes devices:core and routes).
    #[arg(long, value_name = "ID")]
    approval_oauth_client_id: Option<String>,
    /// A file with that OAuth client's secret.
    #[arg(long, value_name = "FILE")]
    approval_oauth_client_secret_file: Option<PathBuf>,
    /// The tailnet's name for Tailscale's API [default: the credential's own].
    #[arg(long, value_name = "NAME", default_value = "-")]
    approval_tailnet: String,
    /// The agent's image.
    #[arg(long, default_value = manifest::DEFAULT_IMAGE)]
    image: String,
    /// Do not install the agent.
    #[arg(long)]
    skip_agent: bool,
    /// Print every step and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `tailroute join`.
#[derive(Debug, Clone, Args)]
pub struct JoinArgs {
    /// The control plane's `address:port` on the tailnet, as `tailroute
    /// init` printed it.
    #[arg(value_name = "API_ENDPOINT")]
    api_endpoint: String,
    /// The bootstrap token.
    #[arg(long)]
    token: String,
    /// `sha256:<hex>` of the cluster CA.
    #[arg(long, value_name = "sha256:HASH")]
    discovery_token_ca_cert_hash: String,
    /// The cluster's pod network as init printed it: the node gets a
    /// node-ip of each of its families [default: IPv4 only].
    #[arg(long, value_name = "CIDR[,CIDR]")]
    pod_network_cidr: Option<String>,
    /// Join as another control plane (HA).
    #[arg(long, requires = "certificate_key")]
    control_plane: bool,
    /// The key from `--upload-certs` on the first control plane.
    #[arg(long, value_name = "KEY", requires = "control_plane")]
    certificate_key: Option<String>,
    /// The CRI endpoint [default: detected by kubeadm].
    #[arg(long, value_name = "URL")]
    cri_socket: Option<String>,
    #[command(flatten)]
    tailnet: TailnetArgs,
    /// Print every step and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `tailroute reset`.
#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// Also leave the tailnet (`tailscale logout`).
    #[arg(long)]
    logout: bool,
    /// tailscaled's LocalAPI socket.
    #[arg(long, value_name = "PATH", default_value = TAILSCALED_SOCKET)]
    tailscale_socket: PathBuf,
    /// The CRI endpoint [default: detected by kubeadm].
    #[arg(long, value_name = "URL")]
    cri_socket: Option<String>,
    /// Print every step and change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// `tailroute status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    /// The kubeconfig [default: $KUBECONFIG, else /etc/kubernetes/admin.conf
    /// when readable, else ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// This node's agent.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9740")]
    agent: SocketAddr,
    /// This node's name [default: the hostname].
    #[arg(long)]
    node: Option<String>,
}

/// `tailroute init`.
pub fn init(args: InitArgs) -> Result<ExitCode, Error> {
    let network = ClusterNetwork::parse(&args.pod_network_cidr, args.service_cidr.as_deref())?;
    let machine = RealMachine::new(&args.tailnet.tailscale_socket);
    let tailnet = TailnetPlan::new(&machine, &args.tailnet.request());
    let preflight = preflight::check(
        &machine,
        Role::Init,
        Some(&network),
        &tailnet,
        args.cri_socket.as_deref(),
    );
    let manifest = if args.skip_agent {
        None
    } else {
        let settings = InstallSettings {
            pod_cidrs: network.pods.iter().map(ToString::to_string).collect(),
            service_cidrs: network.services.iter().map(ToString::to_string).collect(),
            image: args.image.clone(),
            approval: approval_settings(&args)?,
        };
        Some((settings.render(), settings.render_redacted()))
    };
    let request = InitRequest {
        network,
        control_plane_endpoint: args.control_plane_endpoint.clone(),
        upload_certs: args.upload_certs,
        kubernetes_version: args.kubernetes_version.clone(),
        cri_socket: args.cri_socket.clone(),
        login_server: args.tailnet.login_server.clone(),
        manifest,
    };
    let prepared = Prepared {
        command: "init",
        preflight,
        tailnet,
        then: |identity: Option<&_>| init::plan(&machine, &request, identity),
    };
    finish(&prepared, &machine, args.dry_run)?;
    if !args.dry_run {
        println!(
            "\nThis machine is the cluster's first control plane. kubectl here: export \
             KUBECONFIG={}\nCheck the network any time with `tailroute status`.",
            paths::ADMIN_CONF
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `tailroute join`.
pub fn join(args: JoinArgs) -> Result<ExitCode, Error> {
    kubeadm::check_token(&args.token)?;
    kubeadm::check_ca_cert_hash(&args.discovery_token_ca_cert_hash)?;
    if let Some(key) = &args.certificate_key {
        kubeadm::check_certificate_key(key)?;
    }
    let network = args
        .pod_network_cidr
        .as_deref()
        .map(|p| ClusterNetwork::parse(p, None))
        .transpose()?;
    let machine = RealMachine::new(&args.tailnet.tailscale_socket);
    let tailnet = TailnetPlan::new(&machine, &args.tailnet.request());
    let preflight = preflight::check(
        &machine,
        Role::Join,
        network.as_ref(),
        &tailnet,
        args.cri_socket.as_deref(),
    );
    let request = JoinRequest {
        discovery: Discovery {
            api_endpoint: args.api_endpoint.clone(),
            token: args.token.clone(),
            ca_cert_hash: args.discovery_token_ca_cert_hash.clone(),
        },
        certificate_key: args.certificate_key.clone(),
        network,
        cri_socket: args.cri_socket.clone(),
    };
    let prepared = Prepared {
        command: "join",
        preflight,
        tailnet,
        then: |identity: Option<&_>| join::plan(&machine, &request, identity),
    };
    finish(&prepared, &machine, args.dry_run)?;
    Ok(ExitCode::SUCCESS)
}

fn finish<F>(prepared: &Prepared<F>, machine: &RealMachine, dry_run: bool) -> Result<(), Error>
where
    F: Fn(
        Option<&tailroute::tailnet::TailnetIdentity>,
    ) -> Result<tailroute::host::plan::Plan, String>,
{
    if dry_run {
        prepared.dry_run()?;
    } else {
        prepared.run(&machine.tailscale)?;
    }
    Ok(())
}

/// `tailroute reset`.
pub fn reset(args: ResetArgs) -> Result<ExitCode, Error> {
    let machine = RealMachine::new(&args.tailscale_socket);
    let plan = reset::plan(
        &machine,
        &ResetRequest {
            logout: args.logout,
            socket: args.tailscale_socket.clone(),
            cri_socket: args.cri_socket.clone(),
        },
    );
    if args.dry_run {
        print!(
            "tailroute reset --dry-run: nothing is changed.\n\nplan:\n{}",
            plan.render(1)
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !machine.is_root() {
        return Err("tailroute reset changes the machine: run it as root".into());
    }
    plan.execute(1)?;
    println!("\nreset done: this machine is out of the cluster and tailroute left nothing behind.");
    Ok(ExitCode::SUCCESS)
}

/// `tailroute status`. Exits 1 when there are problems, so scripts can
/// check it.
pub fn status(args: StatusArgs) -> Result<ExitCode, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(async {
        let config = kube_config(args.kubeconfig.as_deref()).await?;
        let client = kube::Client::try_from(config)?;
        let this_node = args.node.clone().or_else(|| {
            Some(RealMachine::new(Path::new(TAILSCALED_SOCKET)).hostname())
                .filter(|h| !h.is_empty())
        });
        let sources = StatusSources {
            client,
            this_node,
            local_agent: args.agent,
        };
        status::gather(&sources).await.map_err(Error::from)
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(if status.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn kube_config(explicit: Option<&Path>) -> Result<kube::Config, Error> {
    let path = explicit.map(Path::to_path_buf).or_else(|| {
        (std::env::var_os("KUBECONFIG").is_none() && std::fs::File::open(paths::ADMIN_CONF).is_ok())
            .then(|| PathBuf::from(paths::ADMIN_CONF))
    });
    Ok(match path {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no kubeconfig: {e}; pass --kubeconfig or set KUBECONFIG"))?,
    })
}

fn approval_settings(args: &InitArgs) -> Result<ApprovalSettings, Error> {
    let read = |file: &Path| -> Result<manifest::Credential, Error> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("reading {}: {e}", file.display()))?;
        if text.trim().is_empty() {
            return Err(format!("{} is empty", file.display()).into());
        }
        Ok(manifest::Credential::new(&text))
    };
    Ok(match args.approval {
        ApprovalControl::None => ApprovalSettings::None,
        ApprovalControl::Headscale => {
            let url = args
                .approval_url
                .clone()
                .or_else(|| args.tailnet.login_server.clone())
                .ok_or(
                    "--approval headscale needs Headscale's URL: --approval-url or --login-server",
                )?;
            let key = args
                .approval_api_key_file
                .as_deref()
                .ok_or("--approval headscale needs --approval-api-key-file (make one with `headscale apikeys create`)")?;
            ApprovalSettings::Headscale {
                url,
                api_key: Some(read(key)?),
            }
        }
        ApprovalControl::Tailscale => {
            let secret = match (
                &args.approval_oauth_client_id,
                &args.approval_oauth_client_secret_file,
                &args.approval_api_key_file,
            ) {
                (Some(_), Some(file), None) => read(file)?,
                (None, None, Some(file)) => read(file)?,
                _ => {
                    return Err(
                        "--approval tailscale needs either --approval-oauth-client-id \
                                with --approval-oauth-client-secret-file (scopes devices:core \
                                and routes), or --approval-api-key-file"
                            .into(),
                    )
                }
            };
            ApprovalSettings::Tailscale {
                tailnet: args.approval_tailnet.clone(),
                oauth_client_id: args.approval_oauth_client_id.clone(),
                secret: Some(secret),
            }
        }
    })
}
