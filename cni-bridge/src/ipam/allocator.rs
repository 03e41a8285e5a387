//! Picking addresses: one per range set, the requested one when asked,
//! otherwise the next free one after the last handed out.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::range::{from_u128, to_u128, RangeSet};
use super::store::State;
use crate::attachment::AttachmentKey;
use crate::error::{CniError, ErrorCode};

/// An address handed to a pod, with its range's prefix length and gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    /// The pod address with its subnet's prefix length.
    pub address: IpNet,
    /// The range's gateway (on the bridge).
    pub gateway: IpAddr,
}

/// Allocate one address from each range set for `key`, skipping addresses
/// held by other attachments and the `exclude` list. `requested` addresses
/// are honoured per family or refused; they are never silently replaced.
pub fn allocate(
    state: &mut State,
    sets: &[RangeSet],
    exclude: &[IpNet],
    key: &AttachmentKey,
    requested: &[IpAddr],
) -> Result<Vec<Allocation>, CniError> {
    let in_use: HashSet<IpAddr> = state
        .attachments
        .iter()
        .filter(|a| !a.is(key))
        .flat_map(|a| a.addrs())
        .collect();
    for ip in requested {
        if !sets.iter().any(|s| s.is_ipv6() == ip.is_ipv6()) {
            return Err(CniError::new(
                ErrorCode::RequestedIpUnavailable,
                format!("requested IP {ip} has no range of its family"),
            ));
        }
    }
    let mut out = Vec::with_capacity(sets.len());
    for set in sets {
        let wanted: Vec<&IpAddr> = requested
            .iter()
            .filter(|ip| ip.is_ipv6() == set.is_ipv6())
            .collect();
        let alloc = match wanted.as_slice() {
            [] => next_free(state, set, exclude, &in_use)?,
            [ip] => take_requested(set, exclude, &in_use, **ip)?,
            _ => {
                return Err(CniError::new(
                    ErrorCode::RequestedIpUnavailable,
                    format!(
                        "{} IPv{} addresses requested; a pod gets one per family",
                        wanted.len(),
                        if set.is_ipv6() { 6 } else { 4 }
                    ),
                ))
            }
        };
        state.last_reserved.insert(set.key(), alloc.address.addr());
        out.push(alloc);
    }
    Ok(out)
}

fn take_requested(
    set: &RangeSet,
    exclude: &[IpNet],
    in_use: &HashSet<IpAddr>,
    ip: IpAddr,
) -> Result<Allocation, CniError> {
    let unavailable = |why: &str| {
        CniError::new(
            ErrorCode::RequestedIpUnavailable,
            format!("requested IP {ip} {why}"),
        )
    };
    let range = set
        .range_for(ip)
        .ok_or_else(|| unavailable("is outside the configured ranges or is a gateway"))?;
    if exclude.iter().any(|e| e.contains(&ip)) {
        return Err(unavailable("is excluded by ipam.exclude"));
    }
    if in_use.contains(&ip) {
        return Err(unavailable("is already in use by another attachment"));
    }
    Ok(Allocation {
        address: IpNet::new(ip, range.subnet.prefix_len())
            .map_err(|e| CniError::io("prefix", e))?,
        gateway: range.gateway,
    })
}

fn next_free(
    state: &State,
    set: &RangeSet,
    exclude: &[IpNet],
    in_use: &HashSet<IpAddr>,
) -> Result<Allocation, CniError> {
    let ranges = set.ranges();
    let v6 = set.is_ipv6();
    // Resume after the last address handed out, cycling through the ranges.
    let (mut ri, mut cur) = state
        .last_reserved
        .get(&set.key())
        .and_then(|last| {
            let i = ranges
                .iter()
                .position(|r| r.can_hold(*last) || r.gateway == *last)?;
            Some((i, to_u128(*last).saturating_add(1)))
        })
        .unwrap_or((0, to_u128(ranges[0].start)));
    let total: u128 = ranges
        .iter()
        .map(|r| r.size())
        .fold(0, u128::saturating_add);
    let mut visited: u128 = 0;
    // One extra lap's worth of slack covers resuming in the middle of a range.
    while visited <= total.saturating_add(1) {
        let range = &ranges[ri];
        if cur < to_u128(range.start) || cur > to_u128(range.end) {
            ri = (ri + 1) % ranges.len();
            cur = to_u128(ranges[ri].start);
            continue;
        }
        let ip = from_u128(cur, v6);
        if let Some(ex) = exclude.iter().find(|e| e.contains(&ip)) {
            // Jump over the whole excluded prefix at once.
            let past = to_u128(ex.broadcast()).saturating_add(1);
            visited = visited.saturating_add(past - cur);
            cur = past;
            continue;
        }
        if ip != range.gateway && !in_use.contains(&ip) {
            return Ok(Allocation {
                address: IpNet::new(ip, range.subnet.prefix_len())
                    .map_err(|e| CniError::io("prefix", e))?,
                gateway: range.gateway,
            });
        }
        cur += 1;
        visited += 1;
    }
    let subnets: Vec<String> = ranges.iter().map(|r| r.subnet.to_string()).collect();
    Err(CniError::new(
        ErrorCode::RangeExhausted,
        format!("no free address in {} ({} attachments hold addresses)", subnets.join(", "), in_use.len()),
    )
    .details("this node has more pods than its podCIDR holds: lower the pod count, or release stale attachments with a CNI GC"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attachment::Attachment;
    use crate::ipam::range::Range;
    use proptest::prelude::*;

    fn set(cidr: &str) -> RangeSet {
        RangeSet::new(vec![Range::new(
            cidr.parse().expect("cidr"),
            None,
            None,
            None,
        )
        .expect("range")])
        .expect("set")
    }

    fn key(id: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn hold(state: &mut State, id: &str, allocs: &[Allocation]) {
        state.attachments.push(Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: None,
            host_veth: String::new(),
            ips: allocs.iter().map(|a| a.address).collect(),
            pod: None,
            created_unix: 0,
        });
    }

    #[test]
    fn first_allocation_skips_the_gateway() {
        let mut state = State::default();
        let a = allocate(&mut state, &[set("10.0.0.0/24")], &[], &key("a"), &[]).expect("alloc");
        assert_eq!(a[0].address.to_string(), "10.0.0.2/24");
        assert_eq!(a[0].gateway.to_string(), "10.0.0.1");
    }

    #[test]
    fn a_slash_29_hands_out_five_then_is_exhausted_with_code_100() {
        let sets = [set("10.0.0.0/29")];
        let mut state = State::default();
        let mut seen = HashSet::new();
        for i in 0..5 {
            let id = format!("c{i}");
            let a = allocate(&mut state, &sets, &[], &key(&id), &[]).expect("alloc");
            assert!(seen.insert(a[0].address.addr()));
            hold(&mut state, &id, &a);
        }
        let err = allocate(&mut state, &sets, &[], &key("c5"), &[]).expect_err("full");
        assert_eq!(err.code, ErrorCode::RangeExhausted);
        assert!(err.msg.contains("10.0.0.0/29"));
    }

    #[test]
    fn freed_addresses_are_reused_only_after_the_rest() {
        let sets = [set("10.0.0.0/29")];
        let mut state = State::default();
        let a = allocate(&mut state, &sets, &[], &key("a"), &[]).expect("a");
        // "a" goes away without being held: the next pod does not get .2 again.
        let b = allocate(&mut state, &sets, &[], &key("b"), &[]).expect("b");
        assert_ne!(a[0].address, b[0].address);
    }

    #[test]
    fn dual_stack_gives_one_address_per_family() {
        let mut state = State::default();
        let a = allocate(
            &mut state,
            &[set("10.0.0.0/24"), set("fd00::/64")],
            &[],
            &key("a"),
            &[],
        )
        .expect("alloc");
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].address.to_string(), "fd00::2/64");
    }

    #[test]
    fn requested_addresses_are_honoured_or_refused() {
        let sets = [set("10.0.0.0/24")];
        let mut state = State::default();
        let want: IpAddr = "10.0.0.77".parse().expect("ip");
        let a = allocate(&mut state, &sets, &[], &key("a"), &[want]).expect("alloc");
        assert_eq!(a[0].address.addr(), want);
        hold(&mut state, "a", &a);
        for (ip, why) in [
            ("10.0.0.77", "in use"),
            ("10.0.0.1", "gateway"),
            ("10.0.1.5", "outside"),
            ("fd00::5", "family"),
        ] {
            let err = allocate(
                &mut state,
                &sets,
                &[],
                &key("b"),
                &[ip.parse().expect("ip")],
            )
            .expect_err(why);
            assert_eq!(err.code, ErrorCode::RequestedIpUnavailable, "{why}");
        }
    }

    #[test]
    fn excluded_prefixes_are_skipped() {
        let mut state = State::default();
        let exclude = ["10.0.0.0/28".parse().expect("cidr")];
        let a =
            allocate(&mut state, &[set("10.0.0.0/24")], &exclude, &key("a"), &[]).expect("alloc");
        assert_eq!(a[0].address.to_string(), "10.0.0.16/24");
    }

    proptest! {
        // Whatever the order of ADDs and DELs, no address is ever held twice
        // and no gateway is ever handed out.
        #[test]
        fn never_a_duplicate(ops in proptest::collection::vec((any::<bool>(), 0u8..12), 1..80)) {
            let sets = [set("10.0.0.0/28")];
            let mut state = State::default();
            for (add, n) in ops {
                let id = format!("c{n}");
                if add {
                    if state.find(&key(&id)).is_some() { continue; }
                    match allocate(&mut state, &sets, &[], &key(&id), &[]) {
                        Ok(a) => hold(&mut state, &id, &a),
                        Err(e) => prop_assert_eq!(e.code, ErrorCode::RangeExhausted),
                    }
                } else {
                    state.remove(&key(&id));
                }
                let mut seen = HashSet::new();
                for ip in state.attachments.iter().flat_map(|a| a.addrs()) {
                    prop_assert!(seen.insert(ip), "duplicate {}", ip);
                    prop_assert_ne!(ip.to_string(), "10.0.0.1");
                }
            }
        }
    }
}
