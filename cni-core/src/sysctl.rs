//! Kernel settings under /proc/sys, written only when they differ (writes there are not free, and
//! some take locks the whole node shares).

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("writing sysctl {path}")]
pub struct SysctlError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Sets `path` to `value`; returns whether it had to be written.
pub fn set(path: impl AsRef<Path>, value: &str) -> Result<bool, SysctlError> {
    let path = path.as_ref();
    if std::fs::read_to_string(path).is_ok_and(|v| v.trim() == value) {
        return Ok(false);
    }
    std::fs::write(path, value).map_err(|source| SysctlError {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(true)
}

/// The value of `path`, trimmed; None if it cannot be read (the setting does not exist).
pub fn get(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|v| v.trim().to_string())
}

pub const IPV4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
pub const IPV6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Turns on forwarding for one family.
pub fn enable_forwarding(ipv6: bool) -> Result<bool, SysctlError> {
    set(if ipv6 { IPV6_FORWARD } else { IPV4_FORWARD }, "1")
}
