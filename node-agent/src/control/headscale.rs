//! Headscale's REST API (v0.29): grpc-gateway in front of its gRPC service,
//! under `/api/v1`, authenticated with `Authorization: Bearer <api key>`.
//!
//! The gateway writes the proto messages as protojson with the default
//! options: lowerCamelCase field names (`ipAddresses`, `approvedRoutes`,
//! `nodeKey`), 64-bit ids as strings (`"id": "1"`), unset fields present
//! with their zero value. Errors are `{"code": <grpc code>, "message": ...}`
//! with the matching HTTP status; an unknown or expired key is a bare 401
//! `Unauthorized` from Headscale's middleware.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use super::credential::Secret;
use super::error::{ControlError, ErrorKind};
use super::http::{describe, segment, Body, Http};
use super::{AuthKey, AuthKeyRequest, Device, RouteState};

/// A Headscale server's API.
#[derive(Debug)]
pub(crate) struct HeadscaleApi {
    http: Http,
    api_key: Secret,
}

impl HeadscaleApi {
    pub(crate) fn new(
        url: &str,
        api_key: Secret,
        timeout: Duration,
    ) -> Result<HeadscaleApi, ControlError> {
        Ok(HeadscaleApi {
            http: Http::new("Headscale", url, timeout)?,
            api_key,
        })
    }

    pub(crate) fn target(&self) -> &str {
        self.http.target()
    }

    /// `GET /api/v1/health`: behind the API-key middleware, so a 200 proves
    /// the key; the body says whether Headscale reaches its database.
    pub(crate) async fn verify(&self) -> Result<(), ControlError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Health {
            #[serde(default)]
            database_connectivity: bool,
        }
        let path = "/api/v1/health";
        let health: Health = self.call(Method::GET, path, Body::Empty).await?;
        if health.database_connectivity {
            Ok(())
        } else {
            Err(ControlError::new(
                ErrorKind::ServerError,
                self.http.target(),
                &describe(&Method::GET, path),
                "Headscale accepted the key but cannot reach its database".to_owned(),
                "check Headscale's log and its database".to_owned(),
            ))
        }
    }

    /// `GET /api/v1/node`: every node, of every user and tag.
    pub(crate) async fn list_devices(&self) -> Result<Vec<Device>, ControlError> {
        #[derive(Deserialize)]
        struct Nodes {
            #[serde(default)]
            nodes: Vec<Node>,
        }
        let path = "/api/v1/node";
        let nodes: Nodes = self.call(Method::GET, path, Body::Empty).await?;
        let request = describe(&Method::GET, path);
        nodes
            .nodes
            .into_iter()
            .map(|n| self.device(&request, n))
            .collect()
    }

    /// `GET /api/v1/node/{id}`: the node's routes as they are now.
    pub(crate) async fn routes(&self, id: &str) -> Result<RouteState, ControlError> {
        let path = format!("/api/v1/node/{}", segment(id));
        let answer: NodeAnswer = self.call(Method::GET, &path, Body::Empty).await?;
        let device = self.device(&describe(&Method::GET, &path), answer.node)?;
        Ok(RouteState {
            advertised: device.advertised_routes,
            approved: device.approved_routes,
        })
    }

    /// `POST /api/v1/node/{id}/approve_routes` with `{"routes": [...]}`:
    /// replaces the approved list; answers with the node.
    pub(crate) async fn set_approved(
        &self,
        id: &str,
        routes: &[IpNet],
    ) -> Result<RouteState, ControlError> {
        let path = format!("/api/v1/node/{}/approve_routes", segment(id));
        let body = json!({ "routes": routes.iter().map(|r| r.to_string()).collect::<Vec<_>>() });
        let answer: NodeAnswer = self.call(Method::POST, &path, Body::Json(body)).await?;
        let device = self.device(&describe(&Method::POST, &path), answer.node)?;
        Ok(RouteState {
            advertised: device.advertised_routes,
            approved: device.approved_routes,
        })
    }

    /// `DELETE /api/v1/node/{id}`.
    pub(crate) async fn delete_device(&self, id: &str) -> Result<(), ControlError> {
        let path = format!("/api/v1/node/{}", segment(id));
        let _: serde_json::Value = self.call(Method::DELETE, &path, Body::Empty).await?;
        Ok(())
    }

    /// `POST /api/v1/preauthkey`: a tagged key, owned by no user (tagged
    /// keys need none), single-use. The expiration is always sent: without
    /// one Headscale creates a key that is already expired.
    pub(crate) async fn mint_auth_key(
        &self,
        request: &AuthKeyRequest,
    ) -> Result<AuthKey, ControlError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Answer {
            pre_auth_key: PreAuthKey,
        }
        #[derive(Deserialize)]
        struct PreAuthKey {
            id: NodeId,
            key: String,
        }
        let path = "/api/v1/preauthkey";
        let expiration = rfc3339(std::time::SystemTime::now() + request.valid_for);
        let body = json!({
            "reusable": false,
            "ephemeral": request.ephemeral,
            "expiration": expiration,
            "aclTags": request.tags,
        });
        let answer: Answer = self.call(Method::POST, path, Body::Json(body)).await?;
        Ok(AuthKey {
            id: answer.pre_auth_key.id.0,
            key: Secret::new(answer.pre_auth_key.key),
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Body<'_>,
    ) -> Result<T, ControlError> {
        let request = describe(&method, path);
        let answer = self
            .http
            .send(method, path, Some(&self.api_key), body)
            .await?;
        if !(200..300).contains(&answer.status) {
            let remedy = self.remedy(answer.status);
            return Err(self
                .http
                .status_error(&request, &answer, &[&self.api_key], remedy));
        }
        self.http.decode(&request, &answer.body)
    }

    fn remedy(&self, status: u16) -> String {
        let origin = self.api_key.origin();
        match ErrorKind::from_status(status) {
            ErrorKind::CredentialRejected => format!(
                "the Headscale API key was rejected (expired or revoked?): create one with \
                 `headscale apikeys create --expiration 90d` and put it in {origin}"
            ),
            ErrorKind::Forbidden => "Headscale's API has no permissions of its own: a proxy in \
                 front of Headscale refused the request; let /api/v1 through"
                .to_owned(),
            ErrorKind::NotFound => "the node is not (or no longer) registered with Headscale; \
                 `headscale nodes list` shows the nodes it has"
                .to_owned(),
            ErrorKind::ServerError => "Headscale failed; check its log".to_owned(),
            _ => String::new(),
        }
    }

    fn device(&self, request: &str, node: Node) -> Result<Device, ControlError> {
        let bad = |what: String| {
            ControlError::new(
                ErrorKind::Protocol,
                self.http.target(),
                request,
                what,
                "is this Headscale version supported (v0.29)?".to_owned(),
            )
        };
        let routes = |list: &[String]| -> Result<Vec<IpNet>, ControlError> {
            list.iter()
                .map(|r| {
                    r.parse::<IpNet>().map_err(|_| {
                        bad(format!(
                            "node {} has a route {r:?} that is not a prefix",
                            node.id.0
                        ))
                    })
                })
                .collect()
        };
        let addresses = node
            .ip_addresses
            .iter()
            .map(|a| {
                a.parse::<IpAddr>().map_err(|_| {
                    bad(format!(
                        "node {} has an address {a:?} that is not an IP",
                        node.id.0
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Device {
            id: node.id.0.clone(),
            name: if node.given_name.is_empty() {
                node.name.clone()
            } else {
                node.given_name.clone()
            },
            hostname: node.name.clone(),
            node_key: node.node_key.clone(),
            addresses,
            tags: node.tags.clone(),
            advertised_routes: routes(&node.available_routes)?,
            approved_routes: routes(&node.approved_routes)?,
            online: Some(node.online),
        })
    }
}

#[derive(Deserialize)]
struct NodeAnswer {
    node: Node,
}

/// `headscale.v1.Node`, the fields the agent uses.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Node {
    id: NodeId,
    #[serde(default)]
    node_key: String,
    #[serde(default)]
    ip_addresses: Vec<String>,
    /// The hostname the node reported.
    #[serde(default)]
    name: String,
    /// The name Headscale gave it on the tailnet.
    #[serde(default)]
    given_name: String,
    #[serde(default)]
    online: bool,
    #[serde(default)]
    approved_routes: Vec<String>,
    /// What the node announces (advertised routes).
    #[serde(default)]
    available_routes: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
}

/// A uint64 id: protojson writes it as a string, but a number is accepted.
struct NodeId(String);

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(u64),
        }
        Ok(NodeId(match Raw::deserialize(d)? {
            Raw::Text(s) => s,
            Raw::Number(n) => n.to_string(),
        }))
    }
}

/// `t` as RFC 3339 in UTC with whole seconds (`2026-11-21T22:40:00Z`), the
/// form protojson's Timestamp accepts.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a (year, month, day) date in the proleptic
/// Gregorian calendar (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
