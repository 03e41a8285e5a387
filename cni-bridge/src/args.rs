//! `CNI_ARGS`: the `K=V;K=V` string runtimes pass, and the keys this plugin reads.

use std::net::IpAddr;

use crate::error::{CniError, ErrorCode};

/// The parsed `CNI_ARGS`.
///
/// Like the reference plugins, an unknown key is refused unless the caller
/// also passes `IgnoreUnknown=1`, which containerd and CRI-O always do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CniArgs {
    /// `K8S_POD_NAMESPACE`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub pod_name: Option<String>,
    /// `K8S_POD_UID`.
    pub pod_uid: Option<String>,
    /// `IP=`: addresses the caller asks for (comma separated).
    pub ips: Vec<IpAddr>,
}

const KNOWN_KEYS: &str =
    "IgnoreUnknown, K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID, K8S_POD_INFRA_CONTAINER_ID, IP";

impl CniArgs {
    /// Parse `CNI_ARGS`; an empty string means no arguments.
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let mut args = CniArgs::default();
        let mut unknown = Vec::new();
        let mut ignore_unknown = false;
        for pair in raw.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
                )
                .details("CNI_ARGS must be KEY=VALUE pairs separated by ';'")
            })?;
            if key.is_empty() {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("CNI_ARGS entry {pair:?} has an empty key"),
                ));
            }
            match key {
                "IgnoreUnknown" => ignore_unknown = parse_bool(value)?,
                "K8S_POD_NAMESPACE" => args.pod_namespace = non_empty(value),
                "K8S_POD_NAME" => args.pod_name = non_empty(value),
                "K8S_POD_UID" => args.pod_uid = non_empty(value),
                "K8S_POD_INFRA_CONTAINER_ID" => {}
                "IP" => args.ips = parse_ips(value)?,
                other => unknown.push(other.to_owned()),
            }
        }
        if !unknown.is_empty() && !ignore_unknown {
            return Err(CniError::new(
                ErrorCode::UnsupportedField,
                format!("unknown CNI_ARGS key(s): {}", unknown.join(", ")),
            )
            .details(format!(
                "tailroute-bridge reads {KNOWN_KEYS}; add IgnoreUnknown=1 to pass other keys"
            )));
        }
        Ok(args)
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn parse_bool(value: &str) -> Result<bool, CniError> {
    // The reference plugins accept Go's strconv.ParseBool spellings.
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_ARGS IgnoreUnknown={value:?} is not a boolean"),
        )
        .details("use IgnoreUnknown=1 or IgnoreUnknown=true")),
    }
}

fn parse_ips(value: &str) -> Result<Vec<IpAddr>, CniError> {
    value
        .split(',')
        .map(|s| {
            // Accept "10.0.0.5" and, as host-local does, "10.0.0.5/24".
            let addr = s.split_once('/').map_or(s, |(a, _)| a);
            addr.parse::<IpAddr>().map_err(|_| {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("CNI_ARGS IP={s:?} is not an IP address"),
                )
                .details("use IP=10.244.1.5 or IP=10.244.1.5,fd00:10:244:1::5")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn containerd_style_args_parse() {
        let args = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=1234-5678",
        )
        .expect("valid");
        assert_eq!(args.pod_namespace.as_deref(), Some("default"));
        assert_eq!(args.pod_name.as_deref(), Some("web-0"));
        assert_eq!(args.pod_uid.as_deref(), Some("1234-5678"));
        assert!(args.ips.is_empty());
    }

    #[test]
    fn requested_ips_parse_with_and_without_prefix() {
        let args = CniArgs::parse("IP=10.244.1.5,fd00::5/64").expect("valid");
        assert_eq!(args.ips.len(), 2);
        assert_eq!(args.ips[1].to_string(), "fd00::5");
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        let err = CniArgs::parse("FOO=bar").expect_err("unknown");
        assert_eq!(err.code, ErrorCode::UnsupportedField);
        assert!(err.msg.contains("FOO"));
        assert!(CniArgs::parse("FOO=bar;IgnoreUnknown=true").is_ok());
        assert!(CniArgs::parse("IgnoreUnknown=1;FOO=bar").is_ok());
    }

    #[test]
    fn malformed_pairs_are_invalid_environment() {
        for bad in ["K8S_POD_NAME", "=x", "IP=notanip", "IgnoreUnknown=yes"] {
            let err = CniArgs::parse(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidEnvironment, "{bad}");
        }
    }

    #[test]
    fn empty_and_trailing_separators_are_fine() {
        assert_eq!(CniArgs::parse(""), Ok(CniArgs::default()));
        assert!(CniArgs::parse("K8S_POD_NAME=a;;").is_ok());
    }

    proptest! {
        #[test]
        fn parser_never_panics(raw in ".{0,200}") {
            let _ = CniArgs::parse(&raw);
        }

        #[test]
        fn known_values_round_trip(
            ns in "[a-z0-9-]{1,20}",
            name in "[a-z0-9.-]{1,40}",
            uid in "[a-f0-9-]{1,36}",
        ) {
            let raw = format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}");
            let args = CniArgs::parse(&raw).expect("valid");
            prop_assert_eq!(args.pod_namespace, Some(ns));
            prop_assert_eq!(args.pod_name, Some(name));
            prop_assert_eq!(args.pod_uid, Some(uid));
        }

        #[test]
        fn any_v4_address_round_trips(a: [u8; 4]) {
            let ip = std::net::Ipv4Addr::from(a);
            let args = CniArgs::parse(&format!("IP={ip}")).expect("valid");
            prop_assert_eq!(args.ips, vec![IpAddr::V4(ip)]);
        }
    }
}
