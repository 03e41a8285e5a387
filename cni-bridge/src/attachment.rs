//! The attachment record: what ADD made for one (container id, ifname), kept
//! in the IPAM store so DEL, GC and the node agent can find it again.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Identifies an attachment, as in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttachmentKey {
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

/// The Kubernetes pod an attachment belongs to, from `CNI_ARGS`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// `K8S_POD_NAMESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `K8S_POD_UID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One pod interface on the bridge: its addresses, its namespace and its pod.
///
/// The record is written *before* any link is created, so a plugin killed at
/// any moment leaves a record that DEL or GC can use to undo what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME`: the interface name inside the pod.
    pub ifname: String,
    /// `CNI_NETNS` at ADD time: how the agent finds the pod's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    /// The host end of the veth, on the bridge.
    pub host_veth: String,
    /// The pod's addresses, with their subnet's prefix length.
    pub ips: Vec<IpNet>,
    /// The pod, when the runtime said which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// When ADD reserved the addresses (seconds since the epoch).
    pub created_unix: u64,
}

impl Attachment {
    /// The key GC matches against.
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// Whether this record is for `key`.
    pub fn is(&self, key: &AttachmentKey) -> bool {
        self.container_id == key.container_id && self.ifname == key.ifname
    }

    /// The bare addresses.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ips.iter().map(IpNet::addr)
    }
}

/// Prefix of every host-side veth this plugin creates; GC uses it to find
/// strays on the bridge.
pub const HOST_VETH_PREFIX: &str = "trv";

/// The host veth name for an attachment: derived from its key, so DEL and GC
/// can find the link even when the record was never written or was lost.
/// `trv` + 12 hex digits of a 64-bit FNV-1a hash = 15 bytes, the kernel's limit.
pub fn host_veth_name(key: &AttachmentKey) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key
        .container_id
        .bytes()
        .chain([0])
        .chain(key.ifname.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{HOST_VETH_PREFIX}{:012x}", hash >> 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str, i: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: c.into(),
            ifname: i.into(),
        }
    }

    #[test]
    fn host_veth_names_fit_the_kernel_limit_and_are_stable() {
        let a = host_veth_name(&key("abc", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(a.starts_with(HOST_VETH_PREFIX));
        assert_eq!(a, host_veth_name(&key("abc", "eth0")));
        assert_ne!(a, host_veth_name(&key("abc", "eth1")));
        // The separator keeps ("ab","ceth0") apart from ("abc","eth0").
        assert_ne!(host_veth_name(&key("ab", "ceth0")), a);
    }

    #[test]
    fn records_use_the_documented_field_names() {
        let rec = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: Some("/run/netns/p".into()),
            host_veth: "trv0".into(),
            ips: vec!["10.244.1.2/24".parse().expect("cidr")],
            pod: Some(PodRef {
                namespace: Some("default".into()),
                name: Some("web".into()),
                uid: None,
            }),
            created_unix: 1,
        };
        let v = serde_json::to_value(&rec).expect("json");
        for field in [
            "containerID",
            "ifname",
            "netns",
            "hostVeth",
            "ips",
            "pod",
            "createdUnix",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
    }
}
