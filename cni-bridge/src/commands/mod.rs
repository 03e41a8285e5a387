//! One module per CNI command.

pub mod add;
pub mod check;
pub mod del;
pub mod gc;
pub mod status;

use crate::attachment::AttachmentKey;
use crate::env::Invocation;

/// The attachment an ADD, DEL or CHECK is about.
pub fn key_of(inv: &Invocation) -> AttachmentKey {
    AttachmentKey {
        container_id: inv.container_id.clone(),
        ifname: inv.ifname.clone(),
    }
}
