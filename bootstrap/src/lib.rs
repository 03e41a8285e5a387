//! tailroute: Kubernetes pod networking over a tailnet.
//!
//! This crate will hold the `tailroute` command-line tool. For now it holds
//! the one-machine lab's network topology ([`lab`]): an underlay, a
//! control-plane namespace and node namespaces, optionally each node behind
//! its own NAT router.

// Every public item is documented; keep it that way.
#![warn(missing_docs)]

pub mod lab;
pub mod tailnet;
