//! GC: release every attachment the runtime did not list as valid, and
//! delete stray host veths on the bridge that no record accounts for.

use std::collections::HashSet;

use crate::attachment::{AttachmentKey, HOST_VETH_PREFIX};
use crate::config::NetConf;
use crate::error::{CniError, ErrorCode};
use crate::ipam::store::LockedStore;
use crate::netlink::Netlink;

/// Run GC. Keeps going past errors and reports all of them; a record whose
/// link could not be deleted stays reserved so its address is not reused.
pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: HashSet<AttachmentKey> = conf
        .valid_attachments
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut nl = Netlink::new().map_err(|e| CniError::io("opening netlink", e))?;
    let mut errors = Vec::new();
    let mut kept_veths = HashSet::new();

    // GC runs with no ADD or DEL in flight, so holding the lock throughout is fine.
    let store = LockedStore::open_existing(&conf.state_dir())?;
    if let Some(mut store) = store {
        let before = store.state.attachments.len();
        let mut keep = Vec::with_capacity(before);
        for a in std::mem::take(&mut store.state.attachments) {
            if valid.contains(&a.key()) {
                keep.push(a);
                continue;
            }
            match nl.delete_link(&a.host_veth) {
                Ok(_) => {}
                Err(e) => {
                    errors.push(format!("{}: {e}", a.host_veth));
                    keep.push(a);
                }
            }
        }
        kept_veths.extend(keep.iter().map(|a| a.host_veth.clone()));
        store.state.attachments = keep;
        if store.state.attachments.len() != before {
            store.commit()?;
        }
    }

    if let Some(bridge) = nl
        .link_by_name(&conf.bridge)
        .map_err(|e| CniError::io("looking up the bridge", e))?
    {
        let links = nl.links().map_err(|e| CniError::io("listing links", e))?;
        for link in links {
            let stray = link.master == Some(bridge.index)
                && link.name.starts_with(HOST_VETH_PREFIX)
                && !kept_veths.contains(&link.name);
            if stray {
                if let Err(e) = nl.delete_link(&link.name) {
                    errors.push(format!("{}: {e}", link.name));
                }
            }
        }
    }

    if errors.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::Io,
            format!("GC could not delete {} link(s)", errors.len()),
        )
        .details(errors.join("; ")))
    }
}
