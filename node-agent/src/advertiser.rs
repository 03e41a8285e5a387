//! Keeps tailscaled's prefs right for a subnet router of pod routes: the
//! node's podCIDR(s) in AdvertiseRoutes (merged, never replacing what
//! others advertised), routes from other nodes accepted, SNAT off and
//! stateful filtering off (since 1.66 a subnet router with SNAT off drops
//! site-to-site traffic otherwise).
//!
//! Every call reads the prefs first and sends a PATCH only for what is
//! wrong, so a steady state costs one GET; after `tailscale up --reset` or a
//! tailscaled that lost its state, the next call puts everything back.

use ipnet::IpNet;

use crate::localapi::{LocalApiClient, LocalApiError, MaskedPrefs, Prefs};
use crate::route_ledger::{LedgerError, RouteLedger};

/// What one [`RouteAdvertiser::ensure`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdvertiseOutcome {
    /// Routes added to AdvertiseRoutes.
    pub added: Vec<IpNet>,
    /// The agent's old routes withdrawn.
    pub withdrawn: Vec<IpNet>,
    /// Other prefs put back, by name (`RouteAll`, `NoSNAT`, ...).
    pub fixed: Vec<&'static str>,
    /// The prefs as they are now.
    pub advertised: Vec<IpNet>,
}

impl AdvertiseOutcome {
    /// Whether anything was changed.
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.withdrawn.is_empty() || !self.fixed.is_empty()
    }
}

/// Why the prefs could not be put right.
#[derive(Debug, thiserror::Error)]
pub enum AdvertiseError {
    /// tailscaled did not take the call.
    #[error(transparent)]
    LocalApi(#[from] LocalApiError),
    /// The ledger of the agent's routes could not be kept.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Puts this node's pod routes into tailscaled's prefs and keeps them there.
#[derive(Debug)]
pub struct RouteAdvertiser {
    localapi: LocalApiClient,
    ledger: RouteLedger,
}

impl RouteAdvertiser {
    /// An advertiser driving `localapi` and remembering its routes in `ledger`.
    pub fn new(localapi: LocalApiClient, ledger: RouteLedger) -> RouteAdvertiser {
        RouteAdvertiser { localapi, ledger }
    }

    /// The routes the agent added and still owns.
    pub fn owned(&self) -> Vec<IpNet> {
        self.ledger.routes().iter().copied().collect()
    }

    /// Makes the prefs advertise exactly `pod_cidrs` among the agent's own
    /// routes, with the subnet-router settings on.
    pub async fn ensure(
        &mut self,
        pod_cidrs: &[IpNet],
    ) -> Result<AdvertiseOutcome, AdvertiseError> {
        let prefs = self.localapi.prefs().await?;
        let plan = self.ledger.plan(&prefs.advertise_routes, pod_cidrs);
        let mut edit = MaskedPrefs::new();
        let fixed = subnet_router_fixes(&prefs);
        for name in &fixed {
            edit = match *name {
                "RouteAll" => edit.route_all(true),
                "NoSNAT" => edit.no_snat(true),
                _ => edit.no_stateful_filtering(true),
            };
        }
        if plan.changes_prefs() {
            edit = edit.advertise_routes(plan.advertise.clone());
            self.ledger.claim(&plan)?;
        }
        let advertised = if edit.is_empty() {
            prefs.advertise_routes
        } else {
            self.localapi.patch_prefs(&edit).await?.advertise_routes
        };
        self.ledger.settle(&plan)?;
        Ok(AdvertiseOutcome {
            added: plan.added,
            withdrawn: plan.withdrawn,
            fixed,
            advertised,
        })
    }

    /// Withdraws every route the agent added (uninstall) and forgets them.
    /// Routes others advertised and the other prefs are left as they are.
    pub async fn withdraw_all(&mut self) -> Result<Vec<IpNet>, AdvertiseError> {
        let prefs = self.localapi.prefs().await?;
        let plan = self.ledger.plan(&prefs.advertise_routes, &[]);
        if plan.changes_prefs() {
            self.localapi
                .patch_prefs(&MaskedPrefs::new().advertise_routes(plan.advertise.clone()))
                .await?;
        }
        self.ledger.clear()?;
        Ok(plan.withdrawn)
    }
}

/// The subnet-router prefs that are off and must be on.
fn subnet_router_fixes(prefs: &Prefs) -> Vec<&'static str> {
    let mut fixes = Vec::new();
    if !prefs.route_all {
        fixes.push("RouteAll");
    }
    if !prefs.no_snat {
        fixes.push("NoSNAT");
    }
    if prefs.no_stateful_filtering != Some(true) {
        fixes.push("NoStatefulFiltering");
    }
    fixes
}
