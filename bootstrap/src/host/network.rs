//! The cluster's address plan as `tailroute init` takes it: the pod
//! network (kubeadm's `--pod-network-cidr`) and the service network, one
//! CIDR per address family, checked before anything on the machine changes.

use std::fmt;

use ipnet::IpNet;
use tailroute_agent::config::{overlaps, tailnet_ranges};

/// Service network used when none is given, per family (kubeadm's own
/// IPv4 default, and a ULA /112 for IPv6).
const DEFAULT_SERVICE_V4: &str = "10.96.0.0/12";
const DEFAULT_SERVICE_V6: &str = "fd00:10:96::/112";

/// The pod and service networks of a cluster, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNetwork {
    /// One or two pod CIDRs (one per family), primary family first.
    pub pods: Vec<IpNet>,
    /// The service CIDRs, in the same family order as `pods`.
    pub services: Vec<IpNet>,
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

/// A CIDR argument that cannot be used, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NetworkError(String);

impl ClusterNetwork {
    /// Parses `--pod-network-cidr` and `--service-cidr` (comma-separated,
    /// as kubeadm takes them). Without service CIDRs, the defaults for the
    /// pod network's families are used.
    pub fn parse(pods: &str, services: Option<&str>) -> Result<Self, NetworkError> {
        let pods = parse_list("--pod-network-cidr", pods)?;
        let services = match services {
            Some(list) => parse_list("--service-cidr", list)?,
            None => pods
                .iter()
                .map(|p| {
                    let default = match p {
                        IpNet::V4(_) => DEFAULT_SERVICE_V4,
                        IpNet::V6(_) => DEFAULT_SERVICE_V6,
                    };
                    default.parse().expect("the default service CIDRs parse")
                })
                .collect(),
        };
        let network = ClusterNetwork { pods, services };
        network.check()?;
        Ok(network)
    }

    /// Whether the cluster has both IPv4 and IPv6.
    pub fn dual_stack(&self) -> bool {
        self.pods.len() == 2
    }

    /// Whether the primary family (the first pod CIDR's) is IPv6.
    pub fn primary_is_v6(&self) -> bool {
        matches!(self.pods.first(), Some(IpNet::V6(_)))
    }

    /// Whether the cluster has IPv4 / IPv6 addresses at all.
    pub fn has_family(&self, v6: bool) -> bool {
        self.pods.iter().any(|p| matches!(p, IpNet::V6(_)) == v6)
    }

    /// The cluster's address families, primary first.
    pub fn families(&self) -> Vec<Family> {
        self.pods
            .iter()
            .map(|p| match p {
                IpNet::V4(_) => Family::V4,
                IpNet::V6(_) => Family::V6,
            })
            .collect()
    }

    fn check(&self) -> Result<(), NetworkError> {
        let family = |list: &[IpNet]| list.iter().map(is_v6).collect::<Vec<_>>();
        if family(&self.pods) != family(&self.services) {
            return Err(NetworkError(format!(
                "--service-cidr {} does not match --pod-network-cidr {}: give one service \
                 CIDR per pod CIDR, in the same address-family order",
                join(&self.services),
                join(&self.pods)
            )));
        }
        for service in &self.services {
            // kube-apiserver refuses larger ranges (its bitmap allocator).
            let (max, family) = if is_v6(service) {
                (108, "IPv6")
            } else {
                (12, "IPv4")
            };
            if service.prefix_len() < max {
                return Err(NetworkError(format!(
                    "--service-cidr {service} is too large: kube-apiserver accepts an {family} \
                     service range of /{max} or smaller; use for example {}",
                    if is_v6(service) {
                        DEFAULT_SERVICE_V6
                    } else {
                        DEFAULT_SERVICE_V4
                    }
                )));
            }
        }
        for pod in &self.pods {
            for service in &self.services {
                if overlaps(pod, service) {
                    return Err(NetworkError(format!(
                        "--pod-network-cidr {pod} overlaps --service-cidr {service}: pods and \
                         services need separate ranges"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for ClusterNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pods {}, services {}",
            join(&self.pods),
            join(&self.services)
        )
    }
}

/// The CIDRs comma-joined, as kubeadm writes them.
pub fn join(cidrs: &[IpNet]) -> String {
    cidrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn is_v6(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(_))
}

fn parse_list(flag: &str, list: &str) -> Result<Vec<IpNet>, NetworkError> {
    let mut cidrs = Vec::new();
    for item in list.split(',').map(str::trim) {
        let cidr: IpNet = item.parse().map_err(|_| {
            NetworkError(format!(
                "{flag}: {item:?} is not a CIDR; write it like 10.244.0.0/16 (or \
                 10.244.0.0/16,fd00:10:244::/56 for dual-stack)"
            ))
        })?;
        if cidr.network() != cidr.addr() {
            return Err(NetworkError(format!(
                "{flag}: {cidr} has host bits set; did you mean {}?",
                cidr.trunc()
            )));
        }
        for tailnet in tailnet_ranges() {
            if overlaps(&cidr, &tailnet) {
                return Err(NetworkError(format!(
                    "{flag}: {cidr} overlaps the tailnet's address range {tailnet}, which \
                     tailnet devices use; pick a range outside it (for example 10.244.0.0/16 \
                     for pods, 10.96.0.0/12 for services)"
                )));
            }
        }
        cidrs.push(cidr);
    }
    match cidrs.as_slice() {
        [_] => Ok(cidrs),
        [a, b] if is_v6(a) != is_v6(b) => Ok(cidrs),
        [_, _] => Err(NetworkError(format!(
            "{flag}: {list} names two CIDRs of one family; dual-stack takes one IPv4 and one \
             IPv6 CIDR"
        ))),
        _ => Err(NetworkError(format!(
            "{flag}: {list} names {} CIDRs; give one, or one IPv4 and one IPv6",
            cidrs.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_dual_stack_get_default_services_per_family() {
        let v4 = ClusterNetwork::parse("10.244.0.0/16", None).unwrap();
        assert_eq!(join(&v4.services), "10.96.0.0/12");
        assert!(!v4.dual_stack());
        let dual = ClusterNetwork::parse("10.244.0.0/16,fd00:10:244::/56", None).unwrap();
        assert_eq!(join(&dual.services), "10.96.0.0/12,fd00:10:96::/112");
        assert!(dual.dual_stack() && !dual.primary_is_v6());
    }

    #[test]
    fn bad_networks_are_refused_with_the_fix() {
        let cases = [
            ("100.100.0.0/16", None, "overlaps the tailnet"),
            ("fd7a:115c:a1e0:ab::/64", None, "overlaps the tailnet"),
            ("10.244.0.1/16", None, "did you mean 10.244.0.0/16"),
            ("10.244.0.0/16,10.245.0.0/16", None, "one IPv4 and one IPv6"),
            ("10.244.0.0", None, "is not a CIDR"),
            (
                "10.0.0.0/8",
                Some("10.96.0.0/12"),
                "overlaps --service-cidr",
            ),
            ("10.244.0.0/16", Some("12.0.0.0/8"), "too large"),
            (
                "10.244.0.0/16,fd00:10:244::/56",
                Some("10.96.0.0/12"),
                "one service CIDR per pod CIDR",
            ),
        ];
        for (pods, services, expected) in cases {
            let err = ClusterNetwork::parse(pods, services)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{pods} {services:?}: {err}");
        }
    }
}
