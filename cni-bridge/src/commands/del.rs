//! DEL: isolate the pod, release its addresses, then remove the veth.
//!
//! Order matters. Releasing while the pod's interface could still reach the
//! bridge would let the next ADD hand out an address a live interface
//! holds, so the host end goes down first: from then on no frame crosses.
//! The link itself is deleted off the critical path (see [`crate::reaper`]).
//! DEL succeeds when things are already gone, when CNI_NETNS is empty or
//! the namespace has vanished: the host veth is found by its deterministic
//! name, not through the pod namespace.

use super::key_of;
use crate::attachment::host_veth_name;
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::CniError;
use crate::ipam::store::LockedStore;
use crate::netlink::{errno, Netlink};
use crate::reaper::delete_link_detached;

/// Run DEL.
pub fn del(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let key = key_of(inv);
    let host_veth = host_veth_name(&key);
    let mut host_nl = Netlink::new().map_err(|e| CniError::io("opening netlink", e))?;
    let link_exists =
        match host_nl.set_down_by_name(&host_veth) {
            Ok(()) => true,
            Err(e) if errno(&e) == libc::ENODEV => false,
            Err(e) => return Err(
                CniError::io(format!("isolating veth {host_veth}"), e).details(
                    "the addresses stay reserved until the pod is cut off; the runtime retries DEL",
                ),
            ),
        };
    if let Some(mut store) = LockedStore::open_existing(&conf.state_dir())? {
        if store.state.remove(&key).is_some() {
            store.commit()?;
        }
    }
    if link_exists && delete_link_detached(&host_veth).is_err() {
        host_nl
            .delete_link(&host_veth)
            .map_err(|e| CniError::io(format!("deleting veth {host_veth}"), e))?;
    }
    Ok(())
}
