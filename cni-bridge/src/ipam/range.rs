//! Address ranges (`ipam.ranges`): a subnet, the part of it pods may use and
//! the gateway that sits on the bridge.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// One range: pods get addresses in `[start, end]` of `subnet`, never the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet; pod addresses carry its prefix length.
    pub subnet: IpNet,
    /// First address handed out.
    pub start: IpAddr,
    /// Last address handed out.
    pub end: IpAddr,
    /// The gateway address, placed on the bridge.
    pub gateway: IpAddr,
}

impl Range {
    /// Build a range, filling host-local's defaults: start after the network
    /// address, end before the v4 broadcast address, gateway = first address.
    pub fn new(
        subnet: IpNet,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Self, String> {
        let v6 = subnet.addr().is_ipv6();
        let max_prefix = if v6 { 126 } else { 30 };
        if subnet.prefix_len() > max_prefix {
            return Err(format!(
                "subnet {subnet} is too small: it needs room for a gateway and pods (at most /{max_prefix})"
            ));
        }
        let net = to_u128(subnet.network());
        let last = to_u128(subnet.broadcast());
        let first_usable = net + 1;
        let last_usable = if v6 { last } else { last - 1 };
        let check = |what: &str, ip: IpAddr| -> Result<u128, String> {
            let n = to_u128(ip);
            if ip.is_ipv6() != v6 || n < first_usable || n > last_usable {
                Err(format!("{what} {ip} is not a usable address of {subnet}"))
            } else {
                Ok(n)
            }
        };
        let gateway_n = match gateway {
            Some(g) => check("gateway", g)?,
            None => first_usable,
        };
        let start_n = match start {
            Some(s) => check("rangeStart", s)?,
            None => first_usable,
        };
        let end_n = match end {
            Some(e) => check("rangeEnd", e)?,
            None => last_usable,
        };
        if start_n > end_n {
            return Err(format!(
                "rangeStart {} is after rangeEnd {}",
                from_u128(start_n, v6),
                from_u128(end_n, v6)
            ));
        }
        if start_n == end_n && start_n == gateway_n {
            return Err("the range holds only the gateway address".to_owned());
        }
        Ok(Range {
            subnet,
            start: from_u128(start_n, v6),
            end: from_u128(end_n, v6),
            gateway: from_u128(gateway_n, v6),
        })
    }

    /// Whether `ip` may be handed out from this range (ignoring what is in use).
    pub fn can_hold(&self, ip: IpAddr) -> bool {
        let n = to_u128(ip);
        ip.is_ipv6() == self.is_ipv6()
            && n >= to_u128(self.start)
            && n <= to_u128(self.end)
            && ip != self.gateway
    }

    /// Whether this is an IPv6 range.
    pub fn is_ipv6(&self) -> bool {
        self.subnet.addr().is_ipv6()
    }

    /// Addresses in `[start, end]`, gateway included (saturating for huge v6 ranges).
    pub fn size(&self) -> u128 {
        (to_u128(self.end) - to_u128(self.start)).saturating_add(1)
    }
}

/// The ranges one pod address may come from: all of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(Vec<Range>);

impl RangeSet {
    /// A set of one family whose ranges do not overlap.
    pub fn new(ranges: Vec<Range>) -> Result<Self, String> {
        let Some(first) = ranges.first() else {
            return Err("a range set needs at least one range".to_owned());
        };
        let v6 = first.is_ipv6();
        if ranges.iter().any(|r| r.is_ipv6() != v6) {
            return Err("a range set mixes IPv4 and IPv6; give each family its own set".to_owned());
        }
        Ok(RangeSet(ranges))
    }

    /// The ranges, in configured order.
    pub fn ranges(&self) -> &[Range] {
        &self.0
    }

    /// Whether this set is IPv6.
    pub fn is_ipv6(&self) -> bool {
        self.0.first().is_some_and(Range::is_ipv6)
    }

    /// The range that may hand out `ip`, if any.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.0.iter().find(|r| r.can_hold(ip))
    }

    /// A stable key for this set in the store (its first subnet).
    pub fn key(&self) -> String {
        self.0
            .first()
            .map(|r| r.subnet.to_string())
            .unwrap_or_default()
    }
}

/// An address as a number, for range arithmetic.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// A number back to an address of the given family.
pub fn from_u128(n: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(n))
    } else {
        // Only ever called with numbers that came from IPv4 addresses.
        IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn v4_defaults_follow_host_local() {
        let r = Range::new(net("10.244.1.0/24"), None, None, None).expect("valid");
        assert_eq!(r.gateway, ip("10.244.1.1"));
        assert_eq!(r.start, ip("10.244.1.1"));
        assert_eq!(r.end, ip("10.244.1.254"));
        assert!(!r.can_hold(ip("10.244.1.1")), "gateway is never handed out");
        assert!(r.can_hold(ip("10.244.1.2")));
        assert!(!r.can_hold(ip("10.244.1.255")), "broadcast");
        assert!(!r.can_hold(ip("10.244.2.5")));
    }

    #[test]
    fn v6_defaults_use_the_whole_subnet_but_the_network_address() {
        let r = Range::new(net("fd00:10:244:1::/64"), None, None, None).expect("valid");
        assert_eq!(r.gateway, ip("fd00:10:244:1::1"));
        assert_eq!(r.end, ip("fd00:10:244:1:ffff:ffff:ffff:ffff"));
        assert!(r.can_hold(ip("fd00:10:244:1::2")));
        assert!(!r.can_hold(ip("10.244.1.2")));
    }

    #[test]
    fn invalid_ranges_say_why() {
        assert!(Range::new(net("10.0.0.0/31"), None, None, None)
            .unwrap_err()
            .contains("too small"));
        assert!(
            Range::new(net("10.0.0.0/24"), Some(ip("10.0.1.5")), None, None)
                .unwrap_err()
                .contains("rangeStart")
        );
        assert!(Range::new(
            net("10.0.0.0/24"),
            Some(ip("10.0.0.9")),
            Some(ip("10.0.0.5")),
            None
        )
        .unwrap_err()
        .contains("after"));
        assert!(
            Range::new(net("10.0.0.0/24"), None, None, Some(ip("10.0.0.255")))
                .unwrap_err()
                .contains("gateway")
        );
        assert!(Range::new(net("10.0.0.0/24"), None, None, Some(ip("fd00::1"))).is_err());
    }

    #[test]
    fn sets_refuse_mixed_families() {
        let a = Range::new(net("10.0.0.0/24"), None, None, None).expect("v4");
        let b = Range::new(net("fd00::/64"), None, None, None).expect("v6");
        assert!(RangeSet::new(vec![a, b]).is_err());
        assert!(RangeSet::new(vec![]).is_err());
    }
}
