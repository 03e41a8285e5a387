//! The node datapath the agent owns: forwarding and reverse-path sysctls,
//! one nftables table (`inet tailroute`) for masquerade and MSS clamping,
//! and read-only checks that other nodes' pod CIDRs are routed through
//! tailscale0 by tailscaled's table 52.
//!
//! Everything works on one network namespace, named by [`NetnsTarget`]:
//! the agent's own (the host's) in production, a throwaway one in tests.
//! Sysctls and netlink calls are synchronous and run on the calling thread
//! (briefly inside the target namespace); the nftables table is driven by
//! `nft`, asynchronously. See `docs/agent-datapath.md` for what the rules
//! do and why.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tailroute_agent::datapath::DatapathError> {
//! use tailroute_agent::datapath::{
//!     apply_sysctls, interface_facts, verify_peer_routes, DatapathSpec, DatapathTable,
//!     NetnsTarget,
//! };
//!
//! let host = NetnsTarget::Current;
//! let mut spec = DatapathSpec::new();
//! spec.node_pod_cidrs = vec!["10.244.1.0/24".parse().expect("a prefix")];
//! spec.cluster_pod_cidrs = vec!["10.244.0.0/16".parse().expect("a prefix")];
//! spec.cluster_node_tailnet_ips = vec!["100.64.0.2".parse().expect("an address")];
//!
//! for change in apply_sysctls(&spec, &host)?.changes {
//!     println!("sysctl {change}");
//! }
//! let mut table = DatapathTable::new(host.clone());
//! let outcome = table.apply(&spec).await?;
//! println!("nftables changed: {}", outcome.changed);
//!
//! let mtu = interface_facts(&host, "tailscale0")?.mtu;
//! let report = verify_peer_routes(&host, "tailscale0", &["10.244.2.0/24".parse().expect("a prefix")])?;
//! println!("tailscale0 MTU {mtu}, all peers via the tailnet: {}", report.all_via_tailnet());
//! # Ok(()) }
//! ```

mod error;
mod netns;
mod routes;
mod ruleset;
mod spec;
mod sysctl;
mod table;

pub use error::DatapathError;
pub use netns::{NetnsGuard, NetnsTarget};
pub use routes::{
    interface_facts, verify_peer_routes, InterfaceFacts, PeerRoute, RouteReport, RouteVerdict,
    TAILSCALE_TABLE,
};
pub use ruleset::{render_table, TABLE};
pub use spec::DatapathSpec;
pub use sysctl::{apply_sysctls, SysctlChange, SysctlOutcome};
pub use table::{ApplyOutcome, ApplyReason, DatapathTable};
