//! CNI errors: the spec's error codes and the JSON error object printed on stdout.

use std::fmt;

use serde::Serialize;

use crate::version::CniVersion;

/// The error codes a CNI plugin may return (CNI spec 1.1, "Error").
///
/// Codes 1-99 are the spec's; 100 and above are tailroute-bridge's own and are
/// listed in `docs/cni-bridge.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the requested CNI version is not one this plugin speaks.
    IncompatibleVersion,
    /// 2: a configuration field, CNI_ARGS key or option this plugin does not support.
    UnsupportedField,
    /// 3: the container (attachment) is unknown or does not exist.
    UnknownContainer,
    /// 4: a required CNI_* environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: an I/O failure (files, netlink).
    Io,
    /// 6: the configuration could not be decoded.
    Decoding,
    /// 7: the configuration decoded but is not valid.
    InvalidNetworkConfig,
    /// 11: transient failure; the runtime should retry.
    TryAgainLater,
    /// 50: STATUS: the plugin cannot serve ADD now.
    NotAvailable,
    /// 100: every address in a range set is taken.
    RangeExhausted,
    /// 101: a requested IP is outside the ranges, reserved or already in use.
    RequestedIpUnavailable,
    /// 102: ADD found the interface already present in the pod namespace.
    InterfaceExists,
    /// 103: CHECK found the attachment different from what ADD created.
    CheckFailed,
    /// 104: the bridge name is taken by a link that is not a bridge.
    BridgeConflict,
}

impl ErrorCode {
    /// The numeric code written in the error object.
    pub fn as_u32(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::Io => 5,
            ErrorCode::Decoding => 6,
            ErrorCode::InvalidNetworkConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::RangeExhausted => 100,
            ErrorCode::RequestedIpUnavailable => 101,
            ErrorCode::InterfaceExists => 102,
            ErrorCode::CheckFailed => 103,
            ErrorCode::BridgeConflict => 104,
        }
    }
}

/// An error as the CNI spec returns it: a code, a short message and details
/// that tell the operator what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The spec or plugin code.
    pub code: ErrorCode,
    /// What went wrong, in one line.
    pub msg: String,
    /// Context and the remedy; may be empty.
    pub details: String,
}

impl CniError {
    /// An error with a code and a message; add the remedy with [`CniError::details`].
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Attach details (context, remedy).
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// An I/O failure with what was being done.
    pub fn io(what: impl fmt::Display, err: impl fmt::Display) -> Self {
        CniError::new(ErrorCode::Io, format!("{what}: {err}"))
    }

    /// The error object for stdout, in the requested version (the object's
    /// shape has not changed since 0.3.0; only `cniVersion` follows the request).
    pub fn to_json(&self, version: CniVersion) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        let wire = Wire {
            cni_version: version.as_str(),
            code: self.code.as_u32(),
            msg: &self.msg,
            details: &self.details,
        };
        serde_json::to_string(&wire).unwrap_or_else(|_| {
            format!(
                r#"{{"cniVersion":"{}","code":5,"msg":"cannot encode error"}}"#,
                version.as_str()
            )
        })
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "code {}: {}", self.code.as_u32(), self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// Shorthand for results whose error is a [`CniError`].
pub type CniResultOf<T> = Result<T, CniError>;
