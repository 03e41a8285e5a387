//! DEL: remove the veth, then release the addresses.
//!
//! The link goes first: releasing first and dying before the link is gone
//! would let the next ADD hand out an address that a live interface still
//! holds. DEL succeeds when things are already gone, when CNI_NETNS is empty
//! or the namespace has vanished: the host veth is found by its
//! deterministic name, not through the pod namespace.

use super::key_of;
use crate::attachment::host_veth_name;
use crate::config::NetConf;
use crate::env::Invocation;
use crate::error::CniError;
use crate::ipam::store::LockedStore;
use crate::netlink::Netlink;

/// Run DEL.
pub fn del(inv: &Invocation, conf: &NetConf) -> Result<(), CniError> {
    let key = key_of(inv);
    let host_veth = host_veth_name(&key);
    let mut host_nl = Netlink::new().map_err(|e| CniError::io("opening netlink", e))?;
    host_nl.delete_link(&host_veth).map_err(|e| {
        CniError::io(format!("deleting veth {host_veth}"), e)
            .details("the addresses stay reserved until the link is gone; the runtime retries DEL")
    })?;
    if let Some(mut store) = LockedStore::open_existing(&conf.state_dir())? {
        if store.state.remove(&key).is_some() {
            store.commit()?;
        }
    }
    Ok(())
}
