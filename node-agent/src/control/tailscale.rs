//! The Tailscale API v2, with an API access token or an OAuth client.
//!
//! An OAuth client is traded for an access token at `POST
//! /api/v2/oauth/token` (client-credentials form; `access_token`,
//! `expires_in`, about an hour). The token is cached and renewed shortly
//! before it expires, and once more if the API rejects it early (revoked).
//! Every request carries `Authorization: Bearer <token or API key>`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use super::credential::{Credential, Secret};
use super::error::{ControlError, ErrorKind};
use super::http::{describe, segment, Body, Http};
use super::{AuthKey, AuthKeyRequest, Device, RouteState};

/// The scopes and tag the agent's OAuth client needs, as the remedies say.
const OAUTH_CLIENT_ADVICE: &str = "create one with scopes devices:core, devices:routes, \
     auth_keys and tag:k8s-node (see docs/agent-credentials.md)";

/// The Tailscale API for one tailnet.
#[derive(Debug)]
pub(crate) struct TailscaleApi {
    http: Http,
    auth: Auth,
    tailnet: String,
}

#[derive(Debug)]
enum Auth {
    ApiKey(Secret),
    OAuth {
        client_id: String,
        client_secret: Secret,
        scopes: String,
        token: Mutex<Option<Token>>,
    },
}

#[derive(Debug, Clone)]
struct Token {
    access: Secret,
    renew_at: Instant,
}

/// Which scope a request needs, for the remedy of a 403.
#[derive(Clone, Copy)]
enum Scope {
    Core,
    Routes,
    AuthKeys,
}

impl TailscaleApi {
    pub(crate) fn new(
        credential: Credential,
        timeout: Duration,
    ) -> Result<TailscaleApi, ControlError> {
        let (auth, tailnet, base_url) = match credential {
            Credential::TailscaleApiKey {
                key,
                tailnet,
                base_url,
            } => (Auth::ApiKey(key), tailnet, base_url),
            Credential::TailscaleOAuth {
                client_id,
                client_secret,
                scopes,
                tailnet,
                base_url,
            } => (
                Auth::OAuth {
                    client_id,
                    client_secret,
                    scopes: scopes.join(" "),
                    token: Mutex::new(None),
                },
                tailnet,
                base_url,
            ),
            Credential::Headscale { .. } => {
                return Err(ControlError::config(
                    "a Headscale credential given to the Tailscale API client".to_owned(),
                ))
            }
        };
        let tailnet = if tailnet.is_empty() {
            "-".to_owned()
        } else {
            tailnet
        };
        Ok(TailscaleApi {
            http: Http::new("the Tailscale API", &base_url, timeout)?,
            auth,
            tailnet,
        })
    }

    pub(crate) fn target(&self) -> &str {
        self.http.target()
    }

    /// A token (OAuth), then `GET /api/v2/tailnet/{tailnet}/devices`.
    pub(crate) async fn verify(&self) -> Result<(), ControlError> {
        let path = format!("/api/v2/tailnet/{}/devices", segment(&self.tailnet));
        let _: serde_json::Value = self.call(Method::GET, &path, None, Scope::Core).await?;
        Ok(())
    }

    /// `GET /api/v2/tailnet/{tailnet}/devices?fields=all` (routes are only
    /// in the full listing).
    pub(crate) async fn list_devices(&self) -> Result<Vec<Device>, ControlError> {
        #[derive(Deserialize)]
        struct Devices {
            #[serde(default)]
            devices: Vec<ApiDevice>,
        }
        let path = format!(
            "/api/v2/tailnet/{}/devices?fields=all",
            segment(&self.tailnet)
        );
        let request = describe(&Method::GET, &path);
        let answer: Devices = self.call(Method::GET, &path, None, Scope::Core).await?;
        answer
            .devices
            .into_iter()
            .map(|d| self.device(&request, d))
            .collect()
    }

    /// `GET /api/v2/device/{id}/routes`: needs only `devices:routes`.
    pub(crate) async fn routes(&self, id: &str) -> Result<RouteState, ControlError> {
        let path = format!("/api/v2/device/{}/routes", segment(id));
        let answer: Routes = self.call(Method::GET, &path, None, Scope::Routes).await?;
        self.route_state(&describe(&Method::GET, &path), &answer)
    }

    /// `POST /api/v2/device/{id}/routes` with `{"routes": [...]}`: replaces
    /// the enabled set; answers with the device's routes.
    pub(crate) async fn set_approved(
        &self,
        id: &str,
        routes: &[IpNet],
    ) -> Result<RouteState, ControlError> {
        let path = format!("/api/v2/device/{}/routes", segment(id));
        let body = json!({ "routes": routes.iter().map(|r| r.to_string()).collect::<Vec<_>>() });
        let answer: Routes = self
            .call(Method::POST, &path, Some(body), Scope::Routes)
            .await?;
        self.route_state(&describe(&Method::POST, &path), &answer)
    }

    /// `DELETE /api/v2/device/{id}`.
    pub(crate) async fn delete_device(&self, id: &str) -> Result<(), ControlError> {
        let path = format!("/api/v2/device/{}", segment(id));
        self.call_raw(Method::DELETE, &path, None, Scope::Core)
            .await
            .map(|_| ())
    }

    /// `POST /api/v2/tailnet/{tailnet}/keys`: a single-use, preauthorized
    /// key with tags (an OAuth client may only mint tagged keys, with tags
    /// it owns).
    pub(crate) async fn mint_auth_key(
        &self,
        request: &AuthKeyRequest,
    ) -> Result<AuthKey, ControlError> {
        #[derive(Deserialize)]
        struct Answer {
            id: String,
            key: String,
        }
        let path = format!("/api/v2/tailnet/{}/keys", segment(&self.tailnet));
        let body = json!({
            "capabilities": {"devices": {"create": {
                "reusable": false,
                "ephemeral": request.ephemeral,
                "preauthorized": true,
                "tags": request.tags,
            }}},
            "expirySeconds": request.valid_for.as_secs().max(1),
            "description": request.description,
        });
        let answer: Answer = self
            .call(Method::POST, &path, Some(body), Scope::AuthKeys)
            .await?;
        Ok(AuthKey {
            id: answer.id,
            key: Secret::new(answer.key),
        })
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        scope: Scope,
    ) -> Result<T, ControlError> {
        let request = describe(&method, path);
        let answer = self.call_raw(method, path, body, scope).await?;
        // Some calls answer 200 with no body; read that as `{}`.
        let body: &[u8] = if answer.is_empty() { b"{}" } else { &answer };
        self.http.decode(&request, body)
    }

    /// One authenticated call; a 401 on a cached OAuth token (revoked
    /// early) is retried once with a fresh token.
    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        scope: Scope,
    ) -> Result<Vec<u8>, ControlError> {
        let request = describe(&method, path);
        let mut fresh_token_tried = false;
        loop {
            let (bearer, fresh) = self.bearer().await?;
            let payload = match &body {
                Some(value) => Body::Json(value.clone()),
                None => Body::Empty,
            };
            let answer = self
                .http
                .send(method.clone(), path, Some(&bearer), payload)
                .await?;
            if (200..300).contains(&answer.status) {
                return Ok(answer.body);
            }
            if answer.status == 401 && !fresh && !fresh_token_tried {
                if let Auth::OAuth { token, .. } = &self.auth {
                    *token.lock().await = None;
                    fresh_token_tried = true;
                    continue;
                }
            }
            let remedy = self.remedy(answer.status, scope);
            return Err(self
                .http
                .status_error(&request, &answer, &self.secrets(&bearer), remedy));
        }
    }

    /// The bearer secret for the next request, and whether it was fetched
    /// just now.
    async fn bearer(&self) -> Result<(Secret, bool), ControlError> {
        match &self.auth {
            Auth::ApiKey(key) => Ok((key.clone(), false)),
            Auth::OAuth { token, .. } => {
                // Held across the fetch, so that concurrent calls wait for
                // one token instead of each fetching their own.
                let mut cached = token.lock().await;
                if let Some(t) = cached.as_ref() {
                    if Instant::now() < t.renew_at {
                        return Ok((t.access.clone(), false));
                    }
                }
                let fresh = self.fetch_token().await?;
                let access = fresh.access.clone();
                *cached = Some(fresh);
                Ok((access, true))
            }
        }
    }

    /// `POST /api/v2/oauth/token`, client-credentials grant.
    async fn fetch_token(&self) -> Result<Token, ControlError> {
        let Auth::OAuth {
            client_id,
            client_secret,
            scopes,
            ..
        } = &self.auth
        else {
            return Err(ControlError::config(
                "no OAuth client configured".to_owned(),
            ));
        };
        #[derive(Deserialize)]
        struct TokenAnswer {
            access_token: String,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let path = "/api/v2/oauth/token";
        let request = describe(&Method::POST, path);
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client_id.as_str()),
            ("client_secret", client_secret.expose()),
        ];
        if !scopes.is_empty() {
            form.push(("scope", scopes.as_str()));
        }
        let answer = self
            .http
            .send(Method::POST, path, None, Body::Form(&form))
            .await?;
        if !(200..300).contains(&answer.status) {
            let text = String::from_utf8_lossy(&answer.body);
            let invalid_scope = text.contains("invalid_scope");
            let remedy = if invalid_scope {
                format!(
                    "the OAuth client {client_id} may not have the scopes asked for ({scopes}): \
                     {OAUTH_CLIENT_ADVICE}"
                )
            } else if matches!(answer.status, 400 | 401) {
                format!(
                    "the OAuth client {client_id} was rejected (deleted, or the secret in {} \
                     is not its secret?): {OAUTH_CLIENT_ADVICE}",
                    client_secret.origin()
                )
            } else {
                self.remedy(answer.status, Scope::Core)
            };
            let err = self
                .http
                .status_error(&request, &answer, &[client_secret], remedy);
            // The token endpoint says "bad client" with 400 as often as 401.
            let kind = match (invalid_scope, answer.status) {
                (true, _) => Some(ErrorKind::Forbidden),
                (false, 400 | 401) => Some(ErrorKind::CredentialRejected),
                _ => None,
            };
            return Err(match kind {
                Some(kind) => err.with_kind(kind),
                None => err,
            });
        }
        let parsed: TokenAnswer = self.http.decode(&request, &answer.body).map_err(|_| {
            // The body holds a token; say nothing of it.
            ControlError::new(
                ErrorKind::Protocol,
                self.http.target(),
                &request,
                "the token answer has no access_token".to_owned(),
                "is the base URL the Tailscale API?".to_owned(),
            )
        })?;
        let lifetime = Duration::from_secs(parsed.expires_in.unwrap_or(3600));
        // Renew a minute early, or at three quarters of a short lifetime.
        let margin = Duration::from_secs(60).min(lifetime / 4);
        Ok(Token {
            access: Secret::new(parsed.access_token),
            renew_at: Instant::now() + lifetime - margin,
        })
    }

    fn secrets<'a>(&'a self, bearer: &'a Secret) -> Vec<&'a Secret> {
        match &self.auth {
            Auth::ApiKey(key) => vec![key],
            Auth::OAuth { client_secret, .. } => vec![client_secret, bearer],
        }
    }

    fn remedy(&self, status: u16, scope: Scope) -> String {
        let needed = match scope {
            Scope::Core => "devices:core",
            Scope::Routes => "devices:routes",
            Scope::AuthKeys => "auth_keys",
        };
        match (ErrorKind::from_status(status), &self.auth) {
            (ErrorKind::CredentialRejected, Auth::ApiKey(key)) => format!(
                "the Tailscale API access token was rejected (expired after its 1-90 days, or \
                 revoked?): put a new one in {}, or better use an OAuth client, which does not \
                 expire: {OAUTH_CLIENT_ADVICE}",
                key.origin()
            ),
            (ErrorKind::CredentialRejected, Auth::OAuth { client_id, .. }) => format!(
                "a fresh access token of the OAuth client {client_id} was rejected: \
                 is the client deleted? {OAUTH_CLIENT_ADVICE}"
            ),
            (ErrorKind::Forbidden, Auth::OAuth { .. }) => format!(
                "the OAuth client lacks the `{needed}` scope (or the device's tag is not \
                 one the client owns): {OAUTH_CLIENT_ADVICE}"
            ),
            (ErrorKind::Forbidden, Auth::ApiKey(_)) => format!(
                "the access token's user may not do this (it needs the Owner, Admin, IT admin \
                 or Network admin role); or use an OAuth client with `{needed}`: \
                 {OAUTH_CLIENT_ADVICE}"
            ),
            (ErrorKind::NotFound, _) => format!(
                "the device or the tailnet {:?} does not exist (deleted? a wrong tailnet \
                 name? `-` means the credential's own)",
                self.tailnet
            ),
            (ErrorKind::ServerError, _) => {
                "the Tailscale API failed; the agent retries (status.tailscale.com)".to_owned()
            }
            _ => String::new(),
        }
    }

    fn route_state(&self, request: &str, routes: &Routes) -> Result<RouteState, ControlError> {
        Ok(RouteState {
            advertised: self.prefixes(request, &routes.advertised)?,
            approved: self.prefixes(request, &routes.enabled)?,
        })
    }

    fn prefixes(&self, request: &str, list: &[String]) -> Result<Vec<IpNet>, ControlError> {
        list.iter()
            .map(|r| {
                r.parse::<IpNet>().map_err(|_| {
                    ControlError::new(
                        ErrorKind::Protocol,
                        self.http.target(),
                        request,
                        format!("the route {r:?} is not a prefix"),
                        String::new(),
                    )
                })
            })
            .collect()
    }

    fn device(&self, request: &str, d: ApiDevice) -> Result<Device, ControlError> {
        let addresses = d
            .addresses
            .iter()
            .map(|a| {
                a.parse::<IpAddr>().map_err(|_| {
                    ControlError::new(
                        ErrorKind::Protocol,
                        self.http.target(),
                        request,
                        format!(
                            "device {} has an address {a:?} that is not an IP",
                            d.node_id
                        ),
                        String::new(),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Device {
            id: if d.node_id.is_empty() {
                d.id.clone()
            } else {
                d.node_id.clone()
            },
            name: d.name.clone(),
            hostname: d.hostname.clone(),
            node_key: d.node_key.clone(),
            addresses,
            tags: d.tags.clone(),
            advertised_routes: self.prefixes(request, &d.advertised_routes)?,
            approved_routes: self.prefixes(request, &d.enabled_routes)?,
            online: d.connected_to_control,
        })
    }
}

/// `{"advertisedRoutes": [...], "enabledRoutes": [...]}`.
#[derive(Deserialize)]
struct Routes {
    #[serde(default, rename = "advertisedRoutes")]
    advertised: Vec<String>,
    #[serde(default, rename = "enabledRoutes")]
    enabled: Vec<String>,
}

/// A device in a listing, the fields the agent uses.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiDevice {
    #[serde(default)]
    id: String,
    #[serde(default)]
    node_id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    node_key: String,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    // The Go client spells it `AdvertisedRoutes` (Go's decoder ignores case).
    #[serde(default, alias = "AdvertisedRoutes")]
    advertised_routes: Vec<String>,
    #[serde(default)]
    enabled_routes: Vec<String>,
    #[serde(default)]
    connected_to_control: Option<bool>,
}
