//! Built-in IPAM: ranges from the node's podCIDR(s), a crash-safe store of
//! attachments, and the allocator that picks free addresses.

pub mod allocator;
pub mod range;
pub mod store;
