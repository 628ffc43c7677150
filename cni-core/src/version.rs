//! CNI specification versions and what each one allows.

use std::fmt;
use std::str::FromStr;

/// A CNI spec version this project speaks. Older (0.1.0/0.2.0) result formats are not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub const LATEST: Version = Version::V1_1_0;
    pub const ALL: [Version; 5] = [
        Version::V0_3_0,
        Version::V0_3_1,
        Version::V0_4_0,
        Version::V1_0_0,
        Version::V1_1_0,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    /// CHECK arrived in 0.4.0.
    pub fn supports_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS arrived in 1.1.0.
    pub fn supports_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results below 1.0.0 carry `ips[].version`.
    pub fn ip_entries_carry_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// Interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/`table`/`scope`.
    pub fn has_1_1_fields(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI version {0:?} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)")]
pub struct UnsupportedVersion(pub String);

impl FromStr for Version {
    type Err = UnsupportedVersion;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| UnsupportedVersion(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_version_and_rejects_others() {
        for v in Version::ALL {
            assert_eq!(v.as_str().parse::<Version>(), Ok(v));
        }
        assert!("0.2.0".parse::<Version>().is_err());
        assert!("1.2.0".parse::<Version>().is_err());
        assert!("".parse::<Version>().is_err());
    }

    #[test]
    fn verb_support_follows_the_spec() {
        assert!(!Version::V0_3_1.supports_check());
        assert!(Version::V0_4_0.supports_check());
        assert!(!Version::V1_0_0.supports_gc_and_status());
        assert!(Version::V1_1_0.supports_gc_and_status());
    }
}
