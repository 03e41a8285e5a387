//! Where tailroute and kubeadm keep things on a node.

/// tailroute's configuration directory (kubeadm configs, the join command).
pub const ETC_DIR: &str = "/etc/tailroute";
/// `tailroute init`'s kubeadm configuration.
pub const INIT_CONFIG: &str = "/etc/tailroute/kubeadm-init.yaml";
/// `tailroute join`'s kubeadm configuration (holds the token: mode 0600).
pub const JOIN_CONFIG: &str = "/etc/tailroute/kubeadm-join.yaml";
/// The arguments of `tailroute join` for other machines (0600: a token).
pub const JOIN_COMMAND: &str = "/etc/tailroute/join-command";
/// The key other control planes decrypt the uploaded certificates with.
pub const CERTIFICATE_KEY: &str = "/etc/tailroute/certificate-key";
/// Short-lived files (the auth key handed to `tailscale up`).
pub const RUN_DIR: &str = "/run/tailroute";
/// The agent's state (its route ledger).
pub const STATE_DIR: &str = "/var/lib/tailroute";
/// kubeadm's admin kubeconfig: present once `kubeadm init` ran.
pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
/// The kubelet's kubeconfig: present once the machine joined a cluster.
pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
/// Where the container runtime looks for CNI plugins.
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
/// The plugin's file name.
pub const PLUGIN: &str = "tailroute-bridge";
/// The CRI sockets kubeadm detects, in its order.
pub const CRI_SOCKETS: [&str; 2] = ["/run/containerd/containerd.sock", "/var/run/crio/crio.sock"];
