//! Everything cni-bridge can fail with, and the CNI code each one maps to.

use cni_core::codes::*;
use cni_core::delegate::DelegateError;
use cni_core::error::most_severe;
use cni_core::firewall::FirewallError;
use cni_core::netlink::{NlError, OpenError, UnlinkError};
use cni_core::netns::NetnsError;
use cni_core::sysctl::SysctlError;
use cni_core::{CniError, Code};

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid bridge configuration: {0}")]
    InvalidConfig(String),
    #[error("{0} is not supported by this kernel")]
    Unsupported(String),
    /// CNI_NETNS cannot be opened, or is no network namespace (the message names the variable,
    /// as the spec asks of code 4).
    #[error("CNI_NETNS: {0}")]
    NoNetns(#[source] NetnsError),
    #[error("interface {ifname} already exists in {netns}")]
    InterfaceExists { ifname: String, netns: String },
    #[error("{0}")]
    BridgeConflict(String),
    #[error("opening netlink")]
    Open(#[from] OpenError),
    #[error(transparent)]
    Netns(NetnsError),
    #[error("kernel refused")]
    Kernel(#[from] NlError),
    #[error("removing the veth pair")]
    Unlink(#[from] UnlinkError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    /// IPAM's own error: its code, its message with the plugin named, its details.
    #[error(transparent)]
    Ipam(#[from] DelegateError),
    #[error("IPAM returned no address for the gateway")]
    NoGateway,
    #[error("check failed: {0}")]
    CheckMismatch(String),
    #[error("nftables")]
    Nftables(#[source] FirewallError),
    #[error("cni-bridge cannot serve ADD: {0}")]
    NotAvailable(String),
    /// Teardown keeps going and reports every failure together.
    #[error("{}", .0.iter().map(cni_core::error::chain).collect::<Vec<_>>().join("; "))]
    Several(Vec<BridgeError>),
}

impl CniError for BridgeError {
    fn code(&self) -> u32 {
        match self {
            BridgeError::InvalidConfig(_) => Code::InvalidConfig.into(),
            BridgeError::Unsupported(_) => Code::UnsupportedField.into(),
            BridgeError::NoNetns(NetnsError::NotNetns { .. }) => Code::InvalidEnvironment.into(),
            BridgeError::NoNetns(_) => Code::UnknownContainer.into(),
            BridgeError::InterfaceExists { .. } => BRIDGE_INTERFACE_EXISTS,
            BridgeError::BridgeConflict(_) => BRIDGE_CONFLICT,
            BridgeError::Open(_)
            | BridgeError::Netns(_)
            | BridgeError::Kernel(_)
            | BridgeError::Unlink(_) => BRIDGE_KERNEL,
            BridgeError::Sysctl(_) => Code::Io.into(),
            BridgeError::Ipam(e) => e.code(),
            BridgeError::NoGateway => Code::InvalidConfig.into(),
            BridgeError::CheckMismatch(_) => BRIDGE_CHECK_MISMATCH,
            BridgeError::Nftables(_) => BRIDGE_NFTABLES,
            BridgeError::NotAvailable(_) => Code::NotAvailable.into(),
            BridgeError::Several(errors) => {
                most_severe(errors.iter().map(CniError::code), BRIDGE_KERNEL)
            }
        }
    }
}

/// The failures of a teardown that keeps going.
pub type Failures = cni_core::teardown::Failures<BridgeError>;

/// Ok, the one failure, or all of them.
pub fn finish(failures: Failures) -> Result<(), BridgeError> {
    failures.finish_with(BridgeError::Several)
}
