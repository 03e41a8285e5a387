//! What can go wrong owning the node datapath, each case with what to do.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// A failed datapath operation. The message names the object (sysctl,
/// table, interface, namespace) and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The spec cannot be turned into a ruleset (bad interface name, a
    /// node pod CIDR outside the cluster pod CIDRs, ...).
    #[error("invalid datapath spec: {reason}")]
    InvalidSpec {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The network namespace to work in cannot be opened or entered.
    #[error("cannot enter the network namespace {path}: {source} (the agent needs CAP_SYS_ADMIN for this)")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// A sysctl could not be read or written.
    #[error("sysctl {key}: cannot {action} {path}: {source}{hint}")]
    Sysctl {
        /// The sysctl's dotted name, e.g. `net.ipv4.ip_forward`.
        key: String,
        /// `read` or `write`.
        action: &'static str,
        /// The `/proc/sys` file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
        /// What to do, with a leading separator (may be empty).
        hint: &'static str,
    },
    /// The `nft` program is not installed.
    #[error("the nft program ({program}) is not installed: install the nftables package (Debian/Ubuntu: apt-get install nftables)")]
    NftMissing {
        /// The program looked for.
        program: PathBuf,
    },
    /// `nft` ran and failed.
    #[error("nft {action} failed ({status}): {stderr}{hint}")]
    NftFailed {
        /// What was being done, e.g. `apply table inet tailroute`.
        action: String,
        /// nft's exit status, as text.
        status: String,
        /// nft's stderr, trimmed.
        stderr: String,
        /// What to do, with a leading separator (may be empty).
        hint: &'static str,
    },
    /// `nft` could not be run or talked to (other than not installed).
    #[error("cannot run nft for {action}: {source}")]
    NftSpawn {
        /// What was being done.
        action: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// `nft` did not finish in time.
    #[error("nft {action} took longer than {timeout:?}: the kernel's nftables lock is busy or nft is stuck; it was killed")]
    NftTimeout {
        /// What was being done.
        action: String,
        /// The limit that was exceeded.
        timeout: Duration,
    },
    /// A netlink request to the kernel failed.
    #[error("netlink {request} failed: {source}")]
    Netlink {
        /// What was asked, e.g. `route get 10.244.2.1`.
        request: String,
        /// The kernel's error (errno) or a decoding error.
        source: io::Error,
    },
    /// The named interface does not exist in the namespace.
    #[error("interface {name} does not exist{hint}")]
    InterfaceMissing {
        /// The interface name.
        name: String,
        /// What to do, with a leading separator (may be empty).
        hint: &'static str,
    },
}

impl DatapathError {
    /// A short, stable name for the kind of failure: a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            DatapathError::InvalidSpec { .. } => "invalid_spec",
            DatapathError::Netns { .. } => "netns",
            DatapathError::Sysctl { .. } => "sysctl",
            DatapathError::NftMissing { .. } => "nft_missing",
            DatapathError::NftFailed { .. } => "nft_failed",
            DatapathError::NftSpawn { .. } => "nft_spawn",
            DatapathError::NftTimeout { .. } => "nft_timeout",
            DatapathError::Netlink { .. } => "netlink",
            DatapathError::InterfaceMissing { .. } => "interface_missing",
        }
    }

    pub(crate) fn invalid_spec(reason: impl Into<String>) -> DatapathError {
        DatapathError::InvalidSpec {
            reason: reason.into(),
        }
    }

    pub(crate) fn netlink(request: impl Into<String>, source: io::Error) -> DatapathError {
        DatapathError::Netlink {
            request: request.into(),
            source,
        }
    }

    /// A failed nft run, with a hint picked from what nft said.
    pub(crate) fn nft_failed(action: &str, status: String, stderr: &[u8]) -> DatapathError {
        let stderr = String::from_utf8_lossy(stderr).trim().to_owned();
        let hint = if stderr.contains("Operation not permitted") {
            "; run tailroute-agent as root (it needs CAP_NET_ADMIN)"
        } else if stderr.contains("Protocol not supported")
            || stderr.contains("No such file or directory")
                && stderr.contains("Could not process rule")
        {
            "; the kernel lacks an nftables feature the table needs (nf_tables, nft_nat, \
             nft_masq, nft_chain_nat, nft_exthdr, nft_rt): load the modules or use a newer kernel"
        } else {
            ""
        };
        DatapathError::NftFailed {
            action: action.to_owned(),
            status,
            stderr,
            hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_missing_says_what_to_install() {
        let e = DatapathError::NftMissing {
            program: PathBuf::from("nft"),
        };
        assert_eq!(e.kind(), "nft_missing");
        assert!(
            e.to_string().contains("install the nftables package"),
            "{e}"
        );
    }

    #[test]
    fn nft_failure_carries_stderr_and_a_hint() {
        let e = DatapathError::nft_failed(
            "apply table inet tailroute",
            "exit status: 1".into(),
            b"Error: Could not process rule: Operation not permitted\n",
        );
        let text = e.to_string();
        assert!(text.contains("Operation not permitted"), "{text}");
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
        assert_eq!(e.kind(), "nft_failed");
    }
}
