//! kubeadm configuration with the tailnet as the only fabric: the
//! apiserver advertises this machine's tailnet address, its certificate
//! names every tailnet address and the MagicDNS name, and the kubelet's
//! node-ip is the tailnet address of each cluster family. Nothing on the
//! machine's other interfaces appears, so no node ever talks to another
//! over a LAN or cloud network by accident.
//!
//! The YAML is written by hand (kubeadm's v1beta4 API): strings are JSON
//! quoted, which is valid YAML and keeps every value a string.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::host::network::{join, ClusterNetwork, Family};
use crate::tailnet::TailnetIdentity;

/// kubeadm's API version for these documents.
const KUBEADM_API: &str = "kubeadm.k8s.io/v1beta4";
/// kube-apiserver's port.
pub const API_PORT: u16 = 6443;

/// What a node is called and where it lives: common to init and join.
#[derive(Debug, Clone)]
pub struct NodeRegistration<'a> {
    /// The node's tailnet identity (its addresses, its MagicDNS name).
    pub identity: &'a TailnetIdentity,
    /// The cluster's address families, primary first: the node-ip has an
    /// address of each.
    pub families: &'a [Family],
    /// The CRI endpoint, when kubeadm should not detect it.
    pub cri_socket: Option<&'a str>,
}

/// The node addresses for the cluster's families, primary family first;
/// an error names the family the tailnet did not give this machine.
pub fn node_ips(identity: &TailnetIdentity, families: &[Family]) -> Result<Vec<IpAddr>, String> {
    families
        .iter()
        .map(|family| {
            let v6 = *family == Family::V6;
            identity
                .ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv6() == v6)
                .ok_or_else(|| {
                    format!(
                        "the cluster needs an {} node address but the tailnet gave {} ({}) none; \
                         {}",
                        if v6 { "IPv6" } else { "IPv4" },
                        identity.hostname,
                        identity
                            .ips
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        if v6 {
                            "enable IPv6 on the tailnet (Headscale: prefixes.v6) or use an IPv4-only pod network"
                        } else {
                            "enable IPv4 on the tailnet (Headscale: prefixes.v4) or use an IPv6-only pod network"
                        }
                    )
                })
        })
        .collect()
}

impl NodeRegistration<'_> {
    fn write(&self, out: &mut String) -> Result<(), String> {
        let ips = node_ips(self.identity, self.families)?;
        let ips = ips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        out.push_str("nodeRegistration:\n");
        // Kubernetes node names are lowercase; tailnet device names need not be.
        let _ = writeln!(
            out,
            "  name: {}",
            quote(&self.identity.hostname.to_lowercase())
        );
        if let Some(cri) = self.cri_socket {
            let _ = writeln!(out, "  criSocket: {}", quote(cri));
        }
        out.push_str("  kubeletExtraArgs:\n");
        let _ = writeln!(out, "    - name: node-ip\n      value: {}", quote(&ips));
        Ok(())
    }

    /// The address the apiserver advertises: the primary family's.
    fn advertise_address(&self) -> Result<IpAddr, String> {
        Ok(node_ips(self.identity, self.families)?[0])
    }
}

/// `tailroute init`'s kubeadm configuration.
#[derive(Debug, Clone)]
pub struct InitConfig<'a> {
    /// This node.
    pub node: NodeRegistration<'a>,
    /// The cluster's pod and service networks.
    pub network: &'a ClusterNetwork,
    /// The Kubernetes version (`kubeadm version -o short` by default, so
    /// kubeadm does not look it up on the internet).
    pub kubernetes_version: &'a str,
    /// `host[:port]` shared by every control plane (HA); `None`: this
    /// node's tailnet address.
    pub control_plane_endpoint: Option<&'a str>,
}

impl InitConfig<'_> {
    /// The control-plane endpoint: the given one (port 6443 added when
    /// missing) or this node's advertise address.
    pub fn endpoint(&self) -> Result<String, String> {
        match self.control_plane_endpoint {
            Some(e) => Ok(with_port(e)),
            None => Ok(host_port(self.node.advertise_address()?)),
        }
    }

    /// InitConfiguration + ClusterConfiguration + KubeletConfiguration.
    pub fn render(&self) -> Result<String, String> {
        let mut out = String::from(
            "# Written by `tailroute init`. Every address is a tailnet address: the\n\
             # tailnet is the only path between this cluster's nodes.\n",
        );
        let _ = writeln!(out, "apiVersion: {KUBEADM_API}\nkind: InitConfiguration");
        let _ = writeln!(
            out,
            "localAPIEndpoint:\n  advertiseAddress: {}\n  bindPort: {API_PORT}",
            quote(&self.node.advertise_address()?.to_string())
        );
        self.node.write(&mut out)?;

        let _ = writeln!(
            out,
            "---\napiVersion: {KUBEADM_API}\nkind: ClusterConfiguration"
        );
        let _ = writeln!(out, "kubernetesVersion: {}", quote(self.kubernetes_version));
        let _ = writeln!(out, "controlPlaneEndpoint: {}", quote(&self.endpoint()?));
        let _ = writeln!(
            out,
            "networking:\n  podSubnet: {}\n  serviceSubnet: {}",
            quote(&join(&self.network.pods)),
            quote(&join(&self.network.services))
        );
        out.push_str("apiServer:\n  certSANs:\n");
        for san in self.cert_sans() {
            let _ = writeln!(out, "    - {}", quote(&san));
        }

        out.push_str(
            "---\napiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
             # containerd and CRI-O as packaged use the systemd cgroup driver.\n\
             cgroupDriver: systemd\n",
        );
        Ok(out)
    }

    /// Every name the apiserver's certificate must carry beyond kubeadm's
    /// own: all tailnet addresses, the MagicDNS name and short name, and
    /// the shared endpoint's host.
    fn cert_sans(&self) -> Vec<String> {
        let identity = self.node.identity;
        let mut sans: Vec<String> = identity.ips.iter().map(ToString::to_string).collect();
        sans.extend(identity.dns_name.iter().cloned());
        sans.push(identity.hostname.clone());
        if let Some(endpoint) = self.control_plane_endpoint {
            sans.push(host_of(endpoint).to_owned());
        }
        let mut seen = std::collections::BTreeSet::new();
        sans.retain(|s| seen.insert(s.clone()));
        sans
    }
}

/// What `kubeadm join` needs from the control plane, as `tailroute init`
/// prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// `host:port` of the control plane (its tailnet address).
    pub api_endpoint: String,
    /// The bootstrap token (`abcdef.0123456789abcdef`).
    pub token: String,
    /// `sha256:<hex>` of the cluster CA's public key.
    pub ca_cert_hash: String,
}

/// `tailroute join`'s kubeadm configuration.
#[derive(Debug, Clone)]
pub struct JoinConfig<'a> {
    /// This node.
    pub node: NodeRegistration<'a>,
    /// Where and how to join.
    pub discovery: &'a Discovery,
    /// For another control plane: the key decrypting the uploaded certs.
    pub certificate_key: Option<&'a str>,
}

impl JoinConfig<'_> {
    /// The JoinConfiguration; with `redact`, the token and certificate key
    /// are replaced (for `--dry-run` output).
    pub fn render(&self, redact: bool) -> Result<String, String> {
        let secret = |s: &str| {
            if redact {
                "<redacted>".to_owned()
            } else {
                s.to_owned()
            }
        };
        let mut out = String::from(
            "# Written by `tailroute join`. The node's address is its tailnet address:\n\
             # the tailnet is the only path between this cluster's nodes.\n",
        );
        let _ = writeln!(out, "apiVersion: {KUBEADM_API}\nkind: JoinConfiguration");
        let _ = writeln!(
            out,
            "discovery:\n  bootstrapToken:\n    apiServerEndpoint: {}\n    token: {}\n    \
             caCertHashes:\n      - {}",
            quote(&with_port(&self.discovery.api_endpoint)),
            quote(&secret(&self.discovery.token)),
            quote(&self.discovery.ca_cert_hash)
        );
        self.node.write(&mut out)?;
        if let Some(key) = self.certificate_key {
            let _ = writeln!(
                out,
                "controlPlane:\n  localAPIEndpoint:\n    advertiseAddress: {}\n    bindPort: \
                 {API_PORT}\n  certificateKey: {}",
                quote(&self.node.advertise_address()?.to_string()),
                quote(&secret(key))
            );
        }
        Ok(out)
    }
}

/// Checks a bootstrap token's shape (`[a-z0-9]{6}.[a-z0-9]{16}`).
pub fn check_token(token: &str) -> Result<(), String> {
    let ok = token.split_once('.').is_some_and(|(id, secret)| {
        id.len() == 6
            && secret.len() == 16
            && (id.chars().chain(secret.chars()))
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(
            "--token is not a kubeadm bootstrap token (6 and 16 characters of a-z, 0-9 \
             joined by a dot); copy it from the command `tailroute init` printed, or make a \
             new one on the control plane with `kubeadm token create`"
                .into(),
        )
    }
}

/// Checks `sha256:<64 hex>`.
pub fn check_ca_cert_hash(hash: &str) -> Result<(), String> {
    let ok = hash
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(
            "--discovery-token-ca-cert-hash must be sha256: followed by 64 hex digits; copy \
             it from the command `tailroute init` printed"
                .into(),
        )
    }
}

/// Checks a certificate key (64 hex digits, from `--upload-certs`).
pub fn check_certificate_key(key: &str) -> Result<(), String> {
    if key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(
            "--certificate-key must be 64 hex digits; on the first control plane run \
             `kubeadm init phase upload-certs --upload-certs` and use the key it prints"
                .into(),
        )
    }
}

/// `ip:6443`, with IPv6 in brackets.
fn host_port(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{API_PORT}"),
        IpAddr::V6(v6) => format!("[{v6}]:{API_PORT}"),
    }
}

/// `endpoint` with `:6443` added when it has no port.
fn with_port(endpoint: &str) -> String {
    if let Ok(ip @ IpAddr::V6(_)) = endpoint.parse::<IpAddr>() {
        return host_port(ip);
    }
    if endpoint.ends_with(']') || !endpoint.contains(':') {
        format!("{endpoint}:{API_PORT}")
    } else {
        endpoint.to_owned()
    }
}

/// The host part of `host[:port]` (brackets removed).
fn host_of(endpoint: &str) -> &str {
    if let Some(rest) = endpoint.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if endpoint.matches(':').count() > 1 {
        return endpoint; // a bare IPv6 address
    }
    endpoint.split(':').next().unwrap_or(endpoint)
}

/// A YAML double-quoted scalar (JSON string syntax is a subset of it).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_a_port_and_sans_get_the_host() {
        assert_eq!(with_port("k8s.example.ts.net"), "k8s.example.ts.net:6443");
        assert_eq!(with_port("100.64.0.1:7443"), "100.64.0.1:7443");
        assert_eq!(with_port("fd7a:115c:a1e0::1"), "[fd7a:115c:a1e0::1]:6443");
        assert_eq!(with_port("[fd7a:115c:a1e0::1]"), "[fd7a:115c:a1e0::1]:6443");
        assert_eq!(host_of("[fd7a:115c:a1e0::1]:6443"), "fd7a:115c:a1e0::1");
        assert_eq!(host_of("cp.example.ts.net:6443"), "cp.example.ts.net");
    }

    #[test]
    fn join_inputs_are_checked_with_where_to_find_them() {
        assert!(check_token("abcdef.0123456789abcdef").is_ok());
        assert!(check_token("ABCDEF.0123456789abcdef").is_err());
        assert!(check_ca_cert_hash(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_ca_cert_hash("deadbeef")
            .unwrap_err()
            .contains("tailroute init"));
        assert!(check_certificate_key(&"0".repeat(64)).is_ok());
        assert!(check_certificate_key("xyz").is_err());
    }

    #[test]
    fn a_missing_family_on_the_tailnet_is_named() {
        let identity = TailnetIdentity {
            hostname: "n1".into(),
            ips: vec!["100.64.0.1".parse().unwrap()],
            dns_name: None,
        };
        let network = ClusterNetwork::parse("10.244.0.0/16,fd00:10:244::/56", None).unwrap();
        let err = node_ips(&identity, &network.families()).unwrap_err();
        assert!(err.contains("IPv6") && err.contains("prefixes.v6"), "{err}");
    }
}
