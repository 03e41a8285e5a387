//! The one-machine lab: a whole tailroute cluster's network, built from
//! network namespaces on one host.
//!
//! The lab is a closed world. An "underlay" namespace holds a bridge that
//! plays the internet, with no uplink and nothing that forwards out of it.
//! A control-plane namespace and one namespace per node hang off it; in the
//! [`TopologyMode::Hybrid`] topology every node sits behind a NAT router
//! namespace of its own, so nodes cannot reach each other's private
//! addresses at all and (later) the tailnet is the only path between them.
//!
//! Building is split in three concepts:
//!
//! - [`plan`]: every name and address, computed without touching the host;
//! - [`ledger`]: what may exist, written to disk *before* it is created, so
//!   a teardown after a killed `up` still finds everything;
//! - [`topology`]: running the plan (`up`), tearing it down (`down`) and
//!   reporting what exists (`status`).
//!
//! Nothing is ever created in the host's own network namespace: veth pairs
//! are made with both ends directly inside lab namespaces, so a killed `up`
//! cannot leak an interface onto the host.

pub mod agent;
pub mod api_proxy;
pub mod bench;
pub mod cluster;
pub mod daemon;
pub mod headscale;
pub mod kubelet;
pub mod kubernetes;
pub mod ledger;
pub mod peers;
pub mod pki;
pub mod plan;
pub mod podserver;
pub mod probe;
pub mod process;
pub mod resource;
pub mod topology;

pub use crate::command::{CommandError, HostCommand};
pub use ledger::{Ledger, LedgerError, Teardown, TeardownError};
pub use plan::{
    Cidr, Host, Interface, LabTag, LinkEnd, Node, PlanError, Router, TopologyMode, TopologyPlan,
    Underlay, Veth,
};
pub use resource::{Removal, RemovalError, Resource};
pub use topology::{down, script, status, up, up_with_fault, LabStatus, Step, UpError};
