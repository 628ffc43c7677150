//! Everything cni-bridge can fail with, and the CNI code each one maps to.

use cni_core::delegate::DelegateError;
use cni_core::netlink::{NlError, OpenError};
use cni_core::netns::NetnsError;
use cni_core::unlink::UnlinkError;
use cni_core::{CniError, Code};

/// Plugin-specific codes (100+), documented in the README.
pub const CODE_INTERFACE_EXISTS: u32 = 100;
pub const CODE_BRIDGE_CONFLICT: u32 = 101;
pub const CODE_KERNEL: u32 = 102;
pub const CODE_CHECK_MISMATCH: u32 = 103;
pub const CODE_NFTABLES: u32 = 104;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("invalid bridge configuration: {0}")]
    InvalidConfig(String),
    #[error("{0} is not supported by this kernel")]
    Unsupported(String),
    #[error("the container's network namespace is gone")]
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
    #[error("writing sysctl {path}")]
    Sysctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the IPAM plugin failed")]
    Ipam(#[from] DelegateError),
    #[error("IPAM returned no address for the gateway")]
    NoGateway,
    #[error("check failed: {0}")]
    CheckMismatch(String),
    #[error("nftables: {0}")]
    Nftables(String),
    #[error("cni-bridge cannot serve ADD: {0}")]
    NotAvailable(String),
    /// Teardown keeps going and reports every failure together.
    #[error("{}", .0.iter().map(error_chain).collect::<Vec<_>>().join("; "))]
    Several(Vec<BridgeError>),
}

/// The error and all its causes on one line.
pub fn error_chain(e: &BridgeError) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl CniError for BridgeError {
    fn code(&self) -> u32 {
        match self {
            BridgeError::InvalidConfig(_) => Code::InvalidConfig.into(),
            BridgeError::Unsupported(_) => Code::UnsupportedField.into(),
            BridgeError::NoNetns(_) => Code::UnknownContainer.into(),
            BridgeError::InterfaceExists { .. } => CODE_INTERFACE_EXISTS,
            BridgeError::BridgeConflict(_) => CODE_BRIDGE_CONFLICT,
            BridgeError::Open(_)
            | BridgeError::Netns(_)
            | BridgeError::Kernel(_)
            | BridgeError::Unlink(_) => CODE_KERNEL,
            BridgeError::Sysctl { .. } => Code::Io.into(),
            BridgeError::Ipam(e) => e.code(),
            BridgeError::NoGateway => Code::InvalidConfig.into(),
            BridgeError::CheckMismatch(_) => CODE_CHECK_MISMATCH,
            BridgeError::Nftables(_) => CODE_NFTABLES,
            BridgeError::NotAvailable(_) => Code::NotAvailable.into(),
            BridgeError::Several(errors) => errors.first().map_or(CODE_KERNEL, CniError::code),
        }
    }
}

/// Collects failures of a teardown that keeps going.
#[derive(Default)]
pub struct Failures(Vec<BridgeError>);

impl Failures {
    pub fn note<T>(&mut self, result: Result<T, impl Into<BridgeError>>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let e = e.into();
                tracing::warn!(error = %error_chain(&e), "teardown step failed, continuing");
                self.0.push(e);
                None
            }
        }
    }

    pub fn finish(mut self) -> Result<(), BridgeError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(BridgeError::Several(self.0)),
        }
    }
}
