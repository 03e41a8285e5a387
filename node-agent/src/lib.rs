//! tailroute's node agent, as a library.
//!
//! The agent keeps this node's podCIDR advertised, approved and working on
//! the tailnet: it writes the CNI conflist, drives tailscaled through its
//! LocalAPI, gets the route approved, owns the node's datapath and reports
//! what is wrong on the Node, in metrics and in its log.

// Every public item is documented; keep it that way.
#![warn(missing_docs)]

pub mod advertiser;
pub mod approval;
pub mod cleanup;
pub mod config;
pub mod conflist;
pub mod control;
pub mod datapath;
pub mod departed;
pub mod endpoints;
pub mod identity;
pub mod leader;
pub mod localapi;
pub mod metrics;
pub mod node_network;
pub mod node_report;
pub mod peers;
pub mod reconcile;
pub mod route_ledger;

#[cfg(test)]
mod test_support;
