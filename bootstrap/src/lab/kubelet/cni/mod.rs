//! The node's side of CNI: finding the network config ([`config`]) and
//! running its plugins for a pod ([`plugin`]), both as containerd does.

pub mod config;
pub mod plugin;

pub use config::{NetworkConfig, NetworkNotReady};
pub use plugin::{result_ips, Attachment, PluginError};
