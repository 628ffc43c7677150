//! Everything cni-portmap can fail with, and the CNI code each one maps to.

use cni_core::codes::*;
use cni_core::conntrack::ConntrackError;
use cni_core::error::most_severe;
use cni_core::firewall::FirewallError;
use cni_core::netlink::{NlError, OpenError};
use cni_core::sysctl::SysctlError;
use cni_core::{CniError, Code};

#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    #[error("invalid portmap configuration: {0}")]
    InvalidConfig(String),
    #[error("hostPort {port}/{protocol}{on} is already mapped to {owner}")]
    PortTaken {
        port: u16,
        protocol: String,
        on: String,
        owner: String,
    },
    #[error("nftables")]
    Nftables(#[from] FirewallError),
    #[error("flushing UDP conntrack entries")]
    Conntrack(#[from] ConntrackError),
    #[error("kernel refused")]
    Kernel(#[from] NlError),
    #[error("opening netlink")]
    Open(#[from] OpenError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("check failed: {0}")]
    CheckMismatch(String),
    #[error("cni-portmap cannot serve ADD: {0}")]
    NotAvailable(String),
    /// DEL and GC keep going and report every failure together.
    #[error("{}", .0.iter().map(cni_core::error::chain).collect::<Vec<_>>().join("; "))]
    Several(Vec<PortmapError>),
}

impl CniError for PortmapError {
    fn code(&self) -> u32 {
        match self {
            PortmapError::InvalidConfig(_) => Code::InvalidConfig.into(),
            PortmapError::PortTaken { .. } => PORTMAP_PORT_TAKEN,
            PortmapError::Nftables(_) => PORTMAP_NFTABLES,
            PortmapError::Conntrack(_) => PORTMAP_CONNTRACK,
            PortmapError::Kernel(_) | PortmapError::Open(_) => PORTMAP_KERNEL,
            PortmapError::Sysctl(_) => Code::Io.into(),
            PortmapError::CheckMismatch(_) => PORTMAP_CHECK_MISMATCH,
            PortmapError::NotAvailable(_) => Code::NotAvailable.into(),
            PortmapError::Several(errors) => {
                most_severe(errors.iter().map(CniError::code), PORTMAP_NFTABLES)
            }
        }
    }
}

pub type Failures = cni_core::teardown::Failures<PortmapError>;
