//! What the LocalAPI says, typed: status, prefs and the edits tailroute makes.
//!
//! Only the fields tailroute reads are here; serde ignores the rest, so a
//! newer tailscaled that adds fields still decodes. Go writes a nil slice or
//! map as `null`, so every collection accepts `null` as empty.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, Deserializer};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// tailscaled's backend state (`ipn.State`).
///
/// `/status` spells it as a string (`"NeedsLogin"`), the IPN bus as a number
/// (`2`); both decode to this type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendState {
    /// Just started, nothing known yet.
    NoState,
    /// Another local user owns tailscaled (desktop platforms only).
    InUseOtherUser,
    /// No valid node key: the node must log in (`tailscale up`).
    NeedsLogin,
    /// Logged in, but an admin must approve the machine.
    NeedsMachineAuth,
    /// Logged in, but WantRunning is false (`tailscale down`).
    Stopped,
    /// Connecting to the tailnet.
    Starting,
    /// On the tailnet.
    Running,
    /// A state this client does not know, as tailscaled sent it.
    Other(String),
}

impl BackendState {
    /// The state's name as `/status` spells it.
    pub fn as_str(&self) -> &str {
        match self {
            BackendState::NoState => "NoState",
            BackendState::InUseOtherUser => "InUseOtherUser",
            BackendState::NeedsLogin => "NeedsLogin",
            BackendState::NeedsMachineAuth => "NeedsMachineAuth",
            BackendState::Stopped => "Stopped",
            BackendState::Starting => "Starting",
            BackendState::Running => "Running",
            BackendState::Other(name) => name,
        }
    }

    fn from_name(name: &str) -> BackendState {
        match name {
            "NoState" => BackendState::NoState,
            "InUseOtherUser" => BackendState::InUseOtherUser,
            "NeedsLogin" => BackendState::NeedsLogin,
            "NeedsMachineAuth" => BackendState::NeedsMachineAuth,
            "Stopped" => BackendState::Stopped,
            "Starting" => BackendState::Starting,
            "Running" => BackendState::Running,
            other => BackendState::Other(other.to_owned()),
        }
    }

    // The numbering is ipn.State's (ipn/backend.go), which the IPN bus sends.
    fn from_number(n: u64) -> BackendState {
        match n {
            0 => BackendState::NoState,
            1 => BackendState::InUseOtherUser,
            2 => BackendState::NeedsLogin,
            3 => BackendState::NeedsMachineAuth,
            4 => BackendState::Stopped,
            5 => BackendState::Starting,
            6 => BackendState::Running,
            other => BackendState::Other(other.to_string()),
        }
    }
}

impl fmt::Display for BackendState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BackendState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = BackendState;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a backend state name or number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendState, E> {
                Ok(BackendState::from_name(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<BackendState, E> {
                Ok(BackendState::from_number(v))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `GET /localapi/v0/status` (`ipnstate.Status`), the parts tailroute reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Status {
    /// tailscaled's version, e.g. `1.98.10`.
    #[serde(rename = "Version", default)]
    pub version: String,
    /// Where the backend is: only `Running` carries traffic.
    #[serde(rename = "BackendState")]
    pub backend_state: BackendState,
    /// A login URL while an interactive login is pending, else empty.
    #[serde(rename = "AuthURL", default)]
    pub auth_url: String,
    /// This node's tailnet addresses (empty before login).
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "null_as_empty")]
    pub tailscale_ips: Vec<IpAddr>,
    /// This node as the tailnet sees it.
    #[serde(rename = "Self", default)]
    pub self_node: Option<PeerStatus>,
    /// Human-readable health warnings ("Tailscale is stopped.", ...).
    #[serde(rename = "Health", default, deserialize_with = "null_as_empty")]
    pub health: Vec<String>,
    /// The tailnet this node is on, `None` before login.
    #[serde(rename = "CurrentTailnet", default)]
    pub current_tailnet: Option<TailnetStatus>,
    /// The other nodes, keyed by node key (`nodekey:...`). Empty when asked
    /// without peers.
    #[serde(rename = "Peer", default, deserialize_with = "null_as_empty")]
    pub peers: BTreeMap<String, PeerStatus>,
}

/// One node in `/status` (`ipnstate.PeerStatus`): `Self` or a peer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PeerStatus {
    /// Stable node ID, as the control server knows it (empty before login).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// Node key, `nodekey:...`.
    #[serde(rename = "PublicKey", default)]
    pub public_key: String,
    /// The host name the node reported (not necessarily unique).
    #[serde(rename = "HostName", default)]
    pub host_name: String,
    /// MagicDNS name, with a trailing dot.
    #[serde(rename = "DNSName", default)]
    pub dns_name: String,
    /// The node's tailnet addresses.
    #[serde(rename = "TailscaleIPs", default, deserialize_with = "null_as_empty")]
    pub tailscale_ips: Vec<IpAddr>,
    /// Every prefix routed to this node: its addresses plus its approved
    /// subnet routes.
    #[serde(rename = "AllowedIPs", default, deserialize_with = "null_as_empty")]
    pub allowed_ips: Vec<IpNet>,
    /// Subnet routes this node is the primary router for: advertised,
    /// approved, and chosen.
    #[serde(rename = "PrimaryRoutes", default, deserialize_with = "null_as_empty")]
    pub primary_routes: Vec<IpNet>,
    /// ACL tags the node carries.
    #[serde(rename = "Tags", default, deserialize_with = "null_as_empty")]
    pub tags: Vec<String>,
    /// Connected to the control server.
    #[serde(rename = "Online", default)]
    pub online: bool,
    /// Traffic flowed recently.
    #[serde(rename = "Active", default)]
    pub active: bool,
    /// The direct `ip:port` in use, empty when relayed or idle.
    #[serde(rename = "CurAddr", default)]
    pub cur_addr: String,
    /// The DERP region used to reach the node.
    #[serde(rename = "Relay", default)]
    pub relay: String,
}

/// The tailnet this node is on (`ipnstate.TailnetStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TailnetStatus {
    /// The tailnet's name.
    #[serde(rename = "Name", default)]
    pub name: String,
    /// MagicDNS suffix, without dots around it.
    #[serde(rename = "MagicDNSSuffix", default)]
    pub magic_dns_suffix: String,
    /// Whether MagicDNS is on for the tailnet.
    #[serde(rename = "MagicDNSEnabled", default)]
    pub magic_dns_enabled: bool,
}

/// tailscaled's preferences (`ipn.Prefs`), the parts tailroute reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Prefs {
    /// The control server; empty until the daemon first starts a login.
    #[serde(rename = "ControlURL", default)]
    pub control_url: String,
    /// Accept other nodes' subnet routes (`--accept-routes`).
    #[serde(rename = "RouteAll", default)]
    pub route_all: bool,
    /// Networking should be up (`tailscale up` / `down`).
    #[serde(rename = "WantRunning", default)]
    pub want_running: bool,
    /// The user logged out on purpose.
    #[serde(rename = "LoggedOut", default)]
    pub logged_out: bool,
    /// Use the tailnet's DNS settings (`--accept-dns`).
    #[serde(rename = "CorpDNS", default)]
    pub corp_dns: bool,
    /// The host name to register; empty means the OS host name.
    #[serde(rename = "Hostname", default)]
    pub hostname: String,
    /// Tags requested for this node.
    #[serde(rename = "AdvertiseTags", default, deserialize_with = "null_as_empty")]
    pub advertise_tags: Vec<String>,
    /// Subnet routes this node offers (the whole list: it may hold routes
    /// that tailroute did not add).
    #[serde(
        rename = "AdvertiseRoutes",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub advertise_routes: Vec<IpNet>,
    /// Do not source-NAT traffic to advertised routes.
    #[serde(rename = "NoSNAT", default)]
    pub no_snat: bool,
    /// Stateful filtering off for advertised routes. Go's `opt.Bool`: `None`
    /// when unset (the JSON is `null` or absent).
    #[serde(rename = "NoStatefulFiltering", default)]
    pub no_stateful_filtering: Option<bool>,
}

/// An edit of tailscaled's prefs: `PATCH /localapi/v0/prefs` (`ipn.MaskedPrefs`).
///
/// A field that is `Some` is changed, and only that field: its value goes
/// on the wire together with its `<Field>Set: true` mask bit, so a value
/// and its mask can never disagree. Every list is replaced whole.
///
/// ```
/// use tailroute_agent::localapi::MaskedPrefs;
///
/// let edit = MaskedPrefs::new()
///     .advertise_routes(vec!["10.244.1.0/24".parse().unwrap()])
///     .no_snat(true);
/// assert_eq!(
///     serde_json::to_value(&edit).unwrap(),
///     serde_json::json!({
///         "AdvertiseRoutes": ["10.244.1.0/24"], "AdvertiseRoutesSet": true,
///         "NoSNAT": true, "NoSNATSet": true,
///     })
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskedPrefs {
    /// New AdvertiseRoutes: the complete list, not an addition.
    pub advertise_routes: Option<Vec<IpNet>>,
    /// New RouteAll (accept routes).
    pub route_all: Option<bool>,
    /// New NoSNAT.
    pub no_snat: Option<bool>,
    /// New NoStatefulFiltering.
    pub no_stateful_filtering: Option<bool>,
}

impl MaskedPrefs {
    /// An edit that changes nothing.
    pub fn new() -> MaskedPrefs {
        MaskedPrefs::default()
    }

    /// Sets AdvertiseRoutes to exactly `routes`.
    pub fn advertise_routes(mut self, routes: Vec<IpNet>) -> MaskedPrefs {
        self.advertise_routes = Some(routes);
        self
    }

    /// Sets RouteAll (accept other nodes' subnet routes).
    pub fn route_all(mut self, on: bool) -> MaskedPrefs {
        self.route_all = Some(on);
        self
    }

    /// Sets NoSNAT.
    pub fn no_snat(mut self, on: bool) -> MaskedPrefs {
        self.no_snat = Some(on);
        self
    }

    /// Sets NoStatefulFiltering.
    pub fn no_stateful_filtering(mut self, on: bool) -> MaskedPrefs {
        self.no_stateful_filtering = Some(on);
        self
    }

    /// True if the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == MaskedPrefs::default()
    }
}

impl Serialize for MaskedPrefs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fn field<M: SerializeMap, T: Serialize>(
            map: &mut M,
            name: &'static str,
            mask: &'static str,
            value: &Option<T>,
        ) -> Result<(), M::Error> {
            if let Some(value) = value {
                map.serialize_entry(name, value)?;
                map.serialize_entry(mask, &true)?;
            }
            Ok(())
        }
        let mut map = serializer.serialize_map(None)?;
        field(
            &mut map,
            "AdvertiseRoutes",
            "AdvertiseRoutesSet",
            &self.advertise_routes,
        )?;
        field(&mut map, "RouteAll", "RouteAllSet", &self.route_all)?;
        field(&mut map, "NoSNAT", "NoSNATSet", &self.no_snat)?;
        field(
            &mut map,
            "NoStatefulFiltering",
            "NoStatefulFilteringSet",
            &self.no_stateful_filtering,
        )?;
        map.end()
    }
}

/// Go writes a nil slice or map as `null`; read that as empty.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(name: &str) -> String {
        let path = format!(
            "{}/testdata/localapi/v1.98.10/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    #[test]
    fn status_of_a_fresh_daemon_decodes_with_its_nulls() {
        let status: Status =
            serde_json::from_str(&recorded("status-needs-login.json")).expect("decodes");
        assert_eq!(status.backend_state, BackendState::NeedsLogin);
        assert_eq!(status.version, "1.98.10");
        assert!(status.tailscale_ips.is_empty());
        assert!(status.peers.is_empty());
        assert_eq!(status.current_tailnet, None);
        assert_eq!(status.health, vec!["Tailscale is stopped.".to_owned()]);
        let me = status.self_node.expect("Self is present");
        assert_eq!(me.host_name, "vm");
        assert!(me.primary_routes.is_empty() && !me.online);
    }

    #[test]
    fn status_of_a_subnet_router_has_routes_and_peers() {
        let status: Status =
            serde_json::from_str(&recorded("status-running-synthesized.json")).expect("decodes");
        assert_eq!(status.backend_state, BackendState::Running);
        let me = status.self_node.expect("Self");
        assert_eq!(me.primary_routes, vec![net("10.244.1.0/24")]);
        assert_eq!(me.tags, vec!["tag:k8s-node".to_owned()]);
        let tailnet = status.current_tailnet.expect("tailnet");
        assert_eq!(tailnet.name, "lab");
        let peer = status
            .peers
            .get("nodekey:2222222222222222222222222222222222222222222222222222222222222222")
            .expect("peer n2");
        assert_eq!(peer.host_name, "n2");
        assert!(peer.online && peer.active);
        assert!(peer.allowed_ips.contains(&net("10.244.2.0/24")));
        assert_eq!(
            peer.tailscale_ips[0],
            "100.64.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(peer.cur_addr, "198.18.0.12:41641");
    }

    #[test]
    fn prefs_decode_before_and_after_a_patch() {
        let fresh: Prefs = serde_json::from_str(&recorded("prefs-fresh.json")).expect("decodes");
        assert!(fresh.advertise_routes.is_empty() && !fresh.no_snat && !fresh.route_all);
        // 1.98 turns stateful filtering off by default (docs/lab-peers.md).
        assert_eq!(fresh.no_stateful_filtering, Some(true));

        let patched: Prefs =
            serde_json::from_str(&recorded("prefs-after-patch.json")).expect("decodes");
        assert_eq!(patched.advertise_routes, vec![net("10.244.1.0/24")]);
        assert!(patched.no_snat && patched.route_all);
    }

    #[test]
    fn unset_opt_bool_is_none() {
        let prefs: Prefs = serde_json::from_str(r#"{"NoStatefulFiltering": null}"#).expect("ok");
        assert_eq!(prefs.no_stateful_filtering, None);
    }

    #[test]
    fn backend_state_reads_names_and_numbers() {
        let from = |j: &str| serde_json::from_str::<BackendState>(j).expect("decodes");
        assert_eq!(from(r#""Running""#), BackendState::Running);
        assert_eq!(from("6"), BackendState::Running);
        assert_eq!(from("2"), BackendState::NeedsLogin);
        assert_eq!(
            from(r#""Dreaming""#),
            BackendState::Other("Dreaming".into())
        );
        assert_eq!(from("42").to_string(), "42");
    }

    #[test]
    fn masked_prefs_send_each_set_field_with_its_mask_and_nothing_else() {
        assert_eq!(
            serde_json::to_value(MaskedPrefs::new()).expect("ok"),
            serde_json::json!({})
        );
        assert!(MaskedPrefs::new().is_empty());
        let all = MaskedPrefs::new()
            .advertise_routes(vec![])
            .route_all(true)
            .no_snat(false)
            .no_stateful_filtering(true);
        assert_eq!(
            serde_json::to_value(&all).expect("ok"),
            serde_json::json!({
                "AdvertiseRoutes": [], "AdvertiseRoutesSet": true,
                "RouteAll": true, "RouteAllSet": true,
                "NoSNAT": false, "NoSNATSet": true,
                "NoStatefulFiltering": true, "NoStatefulFilteringSet": true,
            })
        );
    }
}
