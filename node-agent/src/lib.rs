//! tailroute's node agent, as a library.
//!
//! The agent (see `docs/` and the DaemonSet) keeps the node's podCIDR
//! advertised, approved and working on the tailnet. So far this crate holds
//! its client for tailscaled's LocalAPI; the reconcile loop comes next.

// Every public item is documented; keep it that way.
#![warn(missing_docs)]

pub mod datapath;
pub mod localapi;
