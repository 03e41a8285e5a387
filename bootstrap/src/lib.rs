//! tailroute: Kubernetes pod networking over a tailnet.
//!
//! The `tailroute` command-line tool: bringing real machines into a
//! cluster ([`host`]: `init`, `join`, `reset`), the operator's view of it
//! ([`status`]), the install manifest ([`manifest`]), and the one-machine
//! lab ([`lab`]). [`tailnet`] is the one way a machine, real or lab, joins
//! the tailnet.

// Every public item is documented; keep it that way.
#![warn(missing_docs)]

pub mod command;
pub mod host;
pub mod http;
pub mod lab;
pub mod manifest;
pub mod status;
pub mod tailnet;
