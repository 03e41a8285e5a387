//! Undoing what the agent set up on a node: `tailroute-agent --cleanup`
//! and `tailroute reset` both call [`undo`].
//!
//! Only the agent's own work is undone: the pod identities it runs (their
//! devices removed), the routes its ledger says it added (routes others
//! advertised, and tailscaled's other prefs, stay as they are), its
//! conflist and its nftables table.

use crate::advertiser::RouteAdvertiser;
use crate::config::AgentConfig;
use crate::conflist;
use crate::localapi::LocalApiClient;
use crate::node_network::{KernelNetwork, NodeNetwork};
use crate::route_ledger::RouteLedger;

/// Withdraws the agent's routes, removes its conflist and its nftables
/// table. Returns one line per thing done; on any failure, the error lists
/// every step that could not be done (the others are still attempted).
pub async fn undo(config: &AgentConfig) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut problems = Vec::new();
    let localapi = LocalApiClient::new(&config.localapi_socket);
    match RouteLedger::open(&config.state_dir) {
        Ok(ledger) => match RouteAdvertiser::new(localapi, ledger).withdraw_all().await {
            Ok(routes) if routes.is_empty() => {
                done.push("no routes of tailroute's were advertised".to_owned())
            }
            Ok(routes) => done.push(format!(
                "withdrew tailroute's routes {} (other advertised routes kept)",
                routes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => problems.push(format!("withdrawing routes: {e}")),
        },
        Err(e) => problems.push(e.to_string()),
    }
    // Identities first: their devices leave the tailnet, their tailscaleds
    // stop (each holds its pod's network namespace).
    let identities = config.state_dir.join("identities");
    match crate::identity::instance::Instance::list(&identities) {
        Ok((instances, broken)) => {
            let control = crate::approval::control_plane(&config.approval)
                .ok()
                .flatten();
            for instance in instances {
                let name = instance.record.hostname.clone();
                match crate::identity::manager::teardown(instance, control.as_ref()).await {
                    Ok(()) => done.push(format!("removed the pod identity {name}")),
                    Err(e) => problems.push(format!("pod identity {name}: {e}")),
                }
            }
            for dir in broken {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        Err(e) => problems.push(format!("reading {}: {e}", identities.display())),
    }
    let conflist = config.conflist_path();
    match conflist::remove(&conflist) {
        Ok(_) => done.push(format!("removed the CNI config {}", conflist.display())),
        Err(e) => problems.push(format!("removing {}: {e}", conflist.display())),
    }
    if config.manage_datapath {
        match KernelNetwork::new(&config.tailnet_interface).remove().await {
            Ok(()) => done.push("removed nftables table inet tailroute".to_owned()),
            Err(e) => problems.push(format!("removing the nftables table: {e}")),
        }
    }
    for line in &done {
        tracing::info!("{line}");
    }
    if problems.is_empty() {
        Ok(done)
    } else {
        Err(format!("cleanup incomplete: {}", problems.join("; ")))
    }
}
