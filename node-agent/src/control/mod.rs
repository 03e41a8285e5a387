//! Clients for the tailnet control plane's admin API: Headscale's REST API
//! and the Tailscale API v2.
//!
//! The agent uses them to make sure the node's pod route is approved (pain
//! point 1: a route advertised but never approved fails silently), and
//! later to remove the device of a deleted Kubernetes Node.
//!
//! Both control planes' approval calls *replace* a device's approved list.
//! [`ControlPlane::approve_routes`] and [`ControlPlane::withdraw_approval`]
//! therefore read the list, change only the routes they were given, and
//! write the result back only when it differs: an approval made by someone
//! else (an operator, autoApprovers, an exit node) is never dropped.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tailroute_agent::control::ControlError> {
//! use tailroute_agent::control::{ControlPlane, Credential, DeviceQuery, Secret};
//!
//! let key = Secret::from_file("/etc/tailroute/headscale-api-key")?;
//! let control = ControlPlane::new(Credential::headscale("http://198.18.0.2:8080", key))?;
//! control.verify().await?;
//! let query = DeviceQuery::by_node_key("nodekey:0123...");
//! if let Some(device) = control.find_device(&query).await? {
//!     let pod_cidr = "10.244.7.0/24".parse().expect("a prefix");
//!     let update = control.approve_routes(&device, &[pod_cidr]).await?;
//!     println!("approved: {:?} (changed: {})", update.approved, update.changed);
//! }
//! # Ok(()) }
//! ```

mod credential;
mod error;
mod headscale;
mod http;
mod tailscale;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

pub use credential::{Credential, Secret, SecretSource, TAILSCALE_API};
pub use error::{ControlError, ErrorKind};

use headscale::HeadscaleApi;
use tailscale::TailscaleApi;

/// A device (node) as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The control plane's id for it: Headscale's numeric node id, or the
    /// Tailscale `nodeId` (the preferred identifier).
    pub id: String,
    /// Its name on the tailnet: Headscale's given name, Tailscale's
    /// MagicDNS name.
    pub name: String,
    /// The hostname the device reported.
    pub hostname: String,
    /// Its node key, `nodekey:<hex>`, as tailscaled's status shows it.
    pub node_key: String,
    /// Its tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// Its tags, `tag:...`.
    pub tags: Vec<String>,
    /// The routes it advertises.
    pub advertised_routes: Vec<IpNet>,
    /// The routes the control plane approved for it (Tailscale calls them
    /// enabled).
    pub approved_routes: Vec<IpNet>,
    /// Whether it is connected to the control plane, when the control plane
    /// says (Headscale's `online`, Tailscale's `connectedToControl`).
    pub online: Option<bool>,
}

/// How to recognise this node's device: by node key first, else by one of
/// its tailnet addresses (a device re-keyed since the agent last read
/// tailscaled's status keeps its addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceQuery {
    /// `Self.PublicKey` from tailscaled's `/localapi/v0/status`.
    pub node_key: Option<String>,
    /// `Self.TailscaleIPs`.
    pub addresses: Vec<IpAddr>,
}

impl DeviceQuery {
    /// A query by node key.
    pub fn by_node_key(node_key: impl Into<String>) -> DeviceQuery {
        DeviceQuery {
            node_key: Some(node_key.into()),
            addresses: Vec::new(),
        }
    }

    /// Also accept a device holding one of `addresses`.
    pub fn or_address(mut self, addresses: impl IntoIterator<Item = IpAddr>) -> DeviceQuery {
        self.addresses.extend(addresses);
        self
    }

    /// The device among `devices` this query means: the one with the node
    /// key, else the first holding one of the addresses.
    pub fn pick<'a>(&self, devices: &'a [Device]) -> Option<&'a Device> {
        let by_key = self
            .node_key
            .as_deref()
            .and_then(|key| devices.iter().find(|d| d.node_key == key));
        by_key.or_else(|| {
            devices.iter().find(|d| {
                d.addresses
                    .iter()
                    .any(|address| self.addresses.contains(address))
            })
        })
    }
}

/// What a per-pod auth key ([`ControlPlane::mint_auth_key`]) is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthKeyRequest {
    /// The tags the device joins with (`tag:...`, at least one: a tagged
    /// key needs no user and its devices do not expire).
    pub tags: Vec<String>,
    /// Whether the device is removed by the control plane once it has been
    /// offline for a while (a lost node's identities then disappear).
    pub ephemeral: bool,
    /// How long the key can be used to join. The key is single-use; once
    /// the device joined, the device keeps its own node key.
    pub valid_for: Duration,
    /// Says who minted it and for what (Tailscale shows it on the key).
    pub description: String,
}

/// A freshly minted single-use auth key.
#[derive(Debug, Clone)]
pub struct AuthKey {
    /// The control plane's id for the key.
    pub id: String,
    /// The key itself (`hskey-auth-...`, `tskey-auth-...`).
    pub key: Secret,
}

/// A device's approved routes after [`ControlPlane::approve_routes`] or
/// [`ControlPlane::withdraw_approval`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteUpdate {
    /// The approved set, as the control plane holds it now.
    pub approved: Vec<IpNet>,
    /// Whether this call wrote it (false: nothing needed changing).
    pub changed: bool,
}

/// What a device's routes are, as one backend reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RouteState {
    pub(crate) advertised: Vec<IpNet>,
    pub(crate) approved: Vec<IpNet>,
}

/// The control plane's admin API, whichever it is.
#[derive(Debug)]
pub struct ControlPlane {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Headscale(HeadscaleApi),
    Tailscale(TailscaleApi),
}

impl ControlPlane {
    /// How long one call may take, connecting included.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

    /// A client for the control plane `credential` names, with
    /// [`DEFAULT_TIMEOUT`](Self::DEFAULT_TIMEOUT). Nothing is sent until
    /// the first call; a malformed URL is an error now.
    pub fn new(credential: Credential) -> Result<ControlPlane, ControlError> {
        ControlPlane::with_timeout(credential, ControlPlane::DEFAULT_TIMEOUT)
    }

    /// The same with another per-call timeout. (An OAuth token fetch is a
    /// call of its own, with its own timeout.)
    pub fn with_timeout(
        credential: Credential,
        timeout: Duration,
    ) -> Result<ControlPlane, ControlError> {
        let backend = match credential {
            Credential::Headscale { url, api_key } => {
                Backend::Headscale(HeadscaleApi::new(&url, api_key, timeout)?)
            }
            other => Backend::Tailscale(TailscaleApi::new(other, timeout)?),
        };
        Ok(ControlPlane { backend })
    }

    /// How messages name the control plane: `Headscale at http://...` or
    /// `the Tailscale API at https://...`.
    pub fn target(&self) -> &str {
        match &self.backend {
            Backend::Headscale(api) => api.target(),
            Backend::Tailscale(api) => api.target(),
        }
    }

    /// Proves the credential is accepted, with one cheap call (Headscale:
    /// `GET /api/v1/health`; Tailscale: a token for an OAuth client, then
    /// listing the tailnet's devices, which needs `devices:core`). The agent
    /// calls it at start and refuses to run on an error.
    pub async fn verify(&self) -> Result<(), ControlError> {
        match &self.backend {
            Backend::Headscale(api) => api.verify().await,
            Backend::Tailscale(api) => api.verify().await,
        }
    }

    /// Every device on the tailnet, with its routes.
    pub async fn list_devices(&self) -> Result<Vec<Device>, ControlError> {
        match &self.backend {
            Backend::Headscale(api) => api.list_devices().await,
            Backend::Tailscale(api) => api.list_devices().await,
        }
    }

    /// The device `query` means ([`DeviceQuery::pick`]), or `None` when the
    /// control plane has no such device (not joined yet, or deleted).
    pub async fn find_device(&self, query: &DeviceQuery) -> Result<Option<Device>, ControlError> {
        let devices = self.list_devices().await?;
        Ok(query.pick(&devices).cloned())
    }

    /// Adds `routes` to the device's approved routes: reads the current
    /// set, and writes the union only if something is missing. Approvals
    /// already there (anyone's) stay. Returns the set afterwards.
    pub async fn approve_routes(
        &self,
        device: &Device,
        routes: &[IpNet],
    ) -> Result<RouteUpdate, ControlError> {
        let current = self.routes(&device.id).await?;
        let mut wanted = current.approved.clone();
        for route in routes {
            if !wanted.contains(route) {
                wanted.push(*route);
            }
        }
        self.write_if_changed(&device.id, current.approved, wanted)
            .await
    }

    /// Removes only `routes` from the device's approved routes; every other
    /// approval stays. No write when none of them is approved.
    pub async fn withdraw_approval(
        &self,
        device: &Device,
        routes: &[IpNet],
    ) -> Result<RouteUpdate, ControlError> {
        let current = self.routes(&device.id).await?;
        let wanted: Vec<IpNet> = current
            .approved
            .iter()
            .filter(|route| !routes.contains(route))
            .copied()
            .collect();
        self.write_if_changed(&device.id, current.approved, wanted)
            .await
    }

    /// Removes the device from the tailnet. A device already gone (404) is
    /// not an error: the outcome is the one asked for.
    pub async fn delete_device(&self, device: &Device) -> Result<(), ControlError> {
        self.delete_device_by_id(&device.id).await
    }

    /// Mints a single-use, pre-authorized auth key carrying `request.tags`
    /// (Headscale: `POST /api/v1/preauthkey`; Tailscale: `POST
    /// /api/v2/tailnet/-/keys`, which needs the `auth_keys` scope and tags
    /// the OAuth client owns). Used keys are left to expire, never deleted:
    /// deleting one would make Headscale forget that its device is
    /// ephemeral.
    pub async fn mint_auth_key(&self, request: &AuthKeyRequest) -> Result<AuthKey, ControlError> {
        match &self.backend {
            Backend::Headscale(api) => api.mint_auth_key(request).await,
            Backend::Tailscale(api) => api.mint_auth_key(request).await,
        }
    }

    /// Removes a device by its control-plane id; already gone is success.
    pub async fn delete_device_by_id(&self, id: &str) -> Result<(), ControlError> {
        let result = match &self.backend {
            Backend::Headscale(api) => api.delete_device(id).await,
            Backend::Tailscale(api) => api.delete_device(id).await,
        };
        match result {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn routes(&self, id: &str) -> Result<RouteState, ControlError> {
        match &self.backend {
            Backend::Headscale(api) => api.routes(id).await,
            Backend::Tailscale(api) => api.routes(id).await,
        }
    }

    async fn write_if_changed(
        &self,
        id: &str,
        current: Vec<IpNet>,
        wanted: Vec<IpNet>,
    ) -> Result<RouteUpdate, ControlError> {
        if same_set(&current, &wanted) {
            return Ok(RouteUpdate {
                approved: current,
                changed: false,
            });
        }
        let after = match &self.backend {
            Backend::Headscale(api) => api.set_approved(id, &wanted).await?,
            Backend::Tailscale(api) => api.set_approved(id, &wanted).await?,
        };
        Ok(RouteUpdate {
            approved: after.approved,
            changed: true,
        })
    }
}

fn same_set(a: &[IpNet], b: &[IpNet]) -> bool {
    a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}
