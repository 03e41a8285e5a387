//! STATUS: can this plugin serve an ADD right now?

use std::path::Path;

use crate::attachment::AttachmentKey;
use crate::config::NetConf;
use crate::error::{CniError, ErrorCode};
use crate::ipam::allocator::allocate;
use crate::ipam::store::read_state;

/// Run STATUS: fails with code 50 when the store is unusable or a range set
/// has no free address. Creates nothing.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable =
        |msg: String, details: &str| CniError::new(ErrorCode::NotAvailable, msg).details(details);
    let dir = conf.state_dir();
    if !writable_or_creatable(&dir) {
        return Err(unavailable(
            format!("IPAM store {} cannot be written", dir.display()),
            "tailroute-bridge runs as root and needs ipam.dataDir on a writable file system (tmpfs /run by default)",
        ));
    }
    let mut state = read_state(&dir).map_err(|e| unavailable(e.msg, &e.details))?;
    // A trial allocation answers "is there a free address" exactly as ADD would.
    let probe = AttachmentKey {
        container_id: "tailroute-status-probe".into(),
        ifname: "probe".into(),
    };
    allocate(
        &mut state,
        &conf.ipam.range_sets,
        &conf.ipam.exclude,
        &probe,
        &[],
    )
    .map_err(|e| unavailable(e.msg, &e.details))?;
    Ok(())
}

fn writable_or_creatable(dir: &Path) -> bool {
    let mut cur = Some(dir);
    while let Some(p) = cur {
        if p.exists() {
            return nix::unistd::access(p, nix::unistd::AccessFlags::W_OK).is_ok();
        }
        cur = p.parent();
    }
    false
}
