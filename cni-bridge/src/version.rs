//! CNI spec versions: which ones tailroute-bridge speaks and what each allows.

use std::fmt;

use crate::error::{CniError, ErrorCode};

/// A CNI specification version this plugin can answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CniVersion {
    /// 0.3.0: the first version with the interfaces/ips/routes result.
    V0_3_0,
    /// 0.3.1: same result shape as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and prevResult on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds STATUS, GC and new interface/route fields.
    V1_1_0,
}

/// Every version this plugin speaks, oldest first (the VERSION command's list).
pub const SUPPORTED: [CniVersion; 5] = [
    CniVersion::V0_3_0,
    CniVersion::V0_3_1,
    CniVersion::V0_4_0,
    CniVersion::V1_0_0,
    CniVersion::V1_1_0,
];

impl CniVersion {
    /// The newest version; used when a request carries no version at all.
    pub const LATEST: CniVersion = CniVersion::V1_1_0;

    /// Parse a version string, refusing those this plugin does not speak.
    pub fn parse(s: &str) -> Result<Self, CniError> {
        SUPPORTED
            .iter()
            .copied()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!("incompatible CNI version {s:?}"),
                )
                .details(format!(
                    "tailroute-bridge speaks {}; set cniVersion to one of them",
                    supported_list()
                ))
            })
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V0_3_0 => "0.3.0",
            CniVersion::V0_3_1 => "0.3.1",
            CniVersion::V0_4_0 => "0.4.0",
            CniVersion::V1_0_0 => "1.0.0",
            CniVersion::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= CniVersion::V0_4_0
    }

    /// STATUS and GC exist from 1.1.0 on.
    pub fn has_status_and_gc(self) -> bool {
        self >= CniVersion::V1_1_0
    }

    /// Results before 1.0.0 carry `ips[].version`.
    pub fn ips_carry_version(self) -> bool {
        self < CniVersion::V1_0_0
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The VERSION command's answer.
pub fn version_report(requested: CniVersion) -> String {
    let versions: Vec<&str> = SUPPORTED.iter().map(|v| v.as_str()).collect();
    serde_json::json!({ "cniVersion": requested.as_str(), "supportedVersions": versions })
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_round_trips() {
        for v in SUPPORTED {
            assert_eq!(CniVersion::parse(v.as_str()), Ok(v));
        }
    }

    #[test]
    fn unknown_versions_are_refused_with_code_1_and_the_list() {
        for bad in ["0.2.0", "1.2.0", "", "1.0", "v1.0.0", "1.1.0 "] {
            let err = CniVersion::parse(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::IncompatibleVersion);
            assert!(err.details.contains("0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"));
        }
    }

    #[test]
    fn capabilities_follow_the_spec() {
        assert!(!CniVersion::V0_3_1.has_check());
        assert!(CniVersion::V0_4_0.has_check());
        assert!(!CniVersion::V1_0_0.has_status_and_gc());
        assert!(CniVersion::V1_1_0.has_status_and_gc());
        assert!(CniVersion::V0_4_0.ips_carry_version());
        assert!(!CniVersion::V1_0_0.ips_carry_version());
    }

    #[test]
    fn version_report_lists_all_versions() {
        let v: serde_json::Value =
            serde_json::from_str(&version_report(CniVersion::V1_0_0)).expect("json");
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(5));
    }
}
