//! The invocation: what the runtime put in the `CNI_*` environment variables.

use std::path::PathBuf;

use crate::args::CniArgs;
use crate::error::{CniError, ErrorCode};

/// The operation the runtime asked for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach and release everything ADD took.
    Del,
    /// Verify an attachment is still as ADD made it.
    Check,
    /// Report whether the plugin can serve ADD.
    Status,
    /// Release every attachment that is not listed as valid.
    Gc,
    /// Report the supported versions.
    Version,
}

impl Command {
    fn parse(raw: &str) -> Result<Self, CniError> {
        Ok(match raw {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("unknown CNI_COMMAND {other:?}"),
                )
                .details("CNI_COMMAND must be ADD, DEL, CHECK, STATUS, GC or VERSION"))
            }
        })
    }
}

/// Everything the runtime passed through the environment, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS`; DEL may come without one.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
}

impl Invocation {
    /// Read and validate the environment through `get` (so tests need not
    /// touch the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let command = match get("CNI_COMMAND") {
            Some(raw) => Command::parse(&raw)?,
            None => {
                return Err(
                    CniError::new(ErrorCode::InvalidEnvironment, "CNI_COMMAND is not set").details(
                        "tailroute-bridge is a CNI plugin: it is run by a container runtime \
                              (containerd, CRI-O, cnitool) with CNI_COMMAND and a config on stdin",
                    ),
                )
            }
        };
        let per_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let netns = get("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let mut invocation = Invocation {
            command,
            container_id: String::new(),
            netns,
            ifname: String::new(),
            args: CniArgs::default(),
        };
        if !per_attachment {
            return Ok(invocation);
        }
        invocation.container_id = required(&get, "CNI_CONTAINERID")?;
        validate_container_id(&invocation.container_id)?;
        invocation.ifname = required(&get, "CNI_IFNAME")?;
        validate_ifname(&invocation.ifname)?;
        invocation.args = CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?;
        if matches!(command, Command::Add | Command::Check) && invocation.netns.is_none() {
            return Err(
                CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set")
                    .details("ADD and CHECK need the path of the pod's network namespace"),
            );
        }
        Ok(invocation)
    }
}

fn required(get: &impl Fn(&str) -> Option<String>, key: &str) -> Result<String, CniError> {
    get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
        CniError::new(ErrorCode::InvalidEnvironment, format!("{key} is not set"))
            .details("ADD, DEL and CHECK need CNI_CONTAINERID and CNI_IFNAME")
    })
}

/// The spec's rule: non-empty, alphanumerics, `_`, `.` and `-`, starting with an
/// alphanumeric. It keeps ids safe in file names and logs.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok && id.len() <= 256 {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("invalid CNI_CONTAINERID {id:?}"),
        )
        .details("a container id is 1-256 characters of letters, digits, '_', '.', '-', starting with a letter or digit"))
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("invalid CNI_IFNAME {name:?}"),
        )
        .details("an interface name is 1-15 bytes without '/', ':' or spaces, e.g. eth0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn a_complete_add_environment_is_accepted() {
        let inv = Invocation::from_lookup(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=p"),
        ]))
        .expect("valid");
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.args.pod_name.as_deref(), Some("p"));
    }

    #[test]
    fn del_without_netns_is_fine_add_without_netns_is_not() {
        let del = Invocation::from_lookup(env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .expect("DEL without netns");
        assert_eq!(del.netns, None);
        let add = Invocation::from_lookup(env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]));
        assert_eq!(
            add.expect_err("no netns").code,
            ErrorCode::InvalidEnvironment
        );
    }

    #[test]
    fn status_and_gc_need_no_container() {
        for cmd in ["STATUS", "GC", "VERSION"] {
            assert!(
                Invocation::from_lookup(env(&[("CNI_COMMAND", cmd)])).is_ok(),
                "{cmd}"
            );
        }
    }

    #[test]
    fn bad_environments_are_code_4() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("CNI_COMMAND", "ATTACH")],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "../etc"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/x"),
            ],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "averyverylongname0"),
                ("CNI_NETNS", "/x"),
            ],
            &[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth/0"),
                ("CNI_NETNS", "/x"),
            ],
        ];
        for case in cases {
            let err = Invocation::from_lookup(env(case)).expect_err("invalid");
            assert_eq!(err.code, ErrorCode::InvalidEnvironment, "{case:?}");
        }
    }

    proptest! {
        #[test]
        fn container_ids_of_allowed_chars_are_accepted(id in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,100}") {
            prop_assert!(validate_container_id(&id).is_ok());
        }

        #[test]
        fn container_ids_with_a_slash_are_refused(a in "[a-z0-9]{1,10}", b in "[a-z0-9]{0,10}") {
            let id = format!("{a}/{b}");
            prop_assert!(validate_container_id(&id).is_err());
        }

        #[test]
        fn ifname_validation_never_panics(name in ".{0,30}") {
            let _ = validate_ifname(&name);
        }
    }
}
