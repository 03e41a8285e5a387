//! Deterministic MAC addresses: locally administered, unicast, derived from
//! stable inputs so nothing has to be read back from the kernel.

use std::net::IpAddr;

use crate::attachment::AttachmentKey;

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn local_unicast(hash: u64) -> [u8; 6] {
    let b = hash.to_be_bytes();
    // 0x02: locally administered, not multicast.
    [0x02, b[3], b[4], b[5], b[6], b[7]]
}

/// The bridge's MAC, pinned at creation so it never changes as ports come and go.
pub fn bridge_mac(bridge: &str) -> [u8; 6] {
    local_unicast(fnv1a(&[b"bridge", bridge.as_bytes()]))
}

/// The host end of an attachment's veth.
pub fn host_veth_mac(key: &AttachmentKey) -> [u8; 6] {
    local_unicast(fnv1a(&[
        b"host",
        key.container_id.as_bytes(),
        key.ifname.as_bytes(),
    ]))
}

/// The pod interface's MAC: `0a:58` + the pod's IPv4 address (or the last
/// four bytes of its IPv6 one), the convention kubenet-style plugins use. A
/// reused IP keeps its MAC, so neighbours' caches stay valid.
pub fn pod_mac(addrs: &[IpAddr]) -> [u8; 6] {
    let tail = addrs
        .iter()
        .find_map(|a| match a {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        })
        .or_else(|| {
            addrs.iter().find_map(|a| match a {
                IpAddr::V6(v6) => {
                    let o = v6.octets();
                    Some([o[12], o[13], o[14], o[15]])
                }
                IpAddr::V4(_) => None,
            })
        })
        .unwrap_or([0, 0, 0, 0]);
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_local_unicast() {
        let key = AttachmentKey {
            container_id: "c".into(),
            ifname: "eth0".into(),
        };
        for mac in [
            bridge_mac("tailroute0"),
            host_veth_mac(&key),
            pod_mac(&["10.0.0.2".parse().expect("ip")]),
        ] {
            assert_eq!(mac[0] & 0x01, 0, "unicast");
            assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
        }
    }

    #[test]
    fn pod_macs_follow_the_ipv4_address_then_ipv6() {
        let v4: IpAddr = "10.244.1.5".parse().expect("ip");
        let v6: IpAddr = "fd00::a:b".parse().expect("ip");
        assert_eq!(format_mac(&pod_mac(&[v6, v4])), "0a:58:0a:f4:01:05");
        assert_eq!(format_mac(&pod_mac(&[v6])), "0a:58:00:0a:00:0b");
    }
}
