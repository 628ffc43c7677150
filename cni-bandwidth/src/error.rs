//! Everything cni-bandwidth can fail with, and the CNI code each one maps to.

use cni_core::error::most_severe;
use cni_core::netlink::{NlError, OpenError, UnlinkError};
use cni_core::netns::NetnsError;
use cni_core::{CniError, Code};

/// cni-bandwidth's own codes (150-159), documented in the README.
pub const CODE_KERNEL: u32 = 150;
pub const CODE_NO_HOST_VETH: u32 = 151;
pub const CODE_CHECK_MISMATCH: u32 = 152;

#[derive(Debug, thiserror::Error)]
pub enum BandwidthError {
    #[error("invalid bandwidth configuration: {0}")]
    InvalidConfig(String),
    #[error("the host end of {ifname} cannot be found: {why}")]
    NoHostVeth { ifname: String, why: String },
    /// CNI_NETNS cannot be opened, or is no network namespace.
    #[error(transparent)]
    NoNetns(NetnsError),
    #[error("kernel refused")]
    Kernel(#[from] NlError),
    #[error("opening netlink")]
    Open(#[from] OpenError),
    #[error("removing the ifb")]
    Unlink(#[from] UnlinkError),
    #[error("check failed: {0}")]
    CheckMismatch(String),
    /// DEL and GC keep going and report every failure together.
    #[error("{}", .0.iter().map(cni_core::error::chain).collect::<Vec<_>>().join("; "))]
    Several(Vec<BandwidthError>),
}

impl CniError for BandwidthError {
    fn code(&self) -> u32 {
        match self {
            BandwidthError::InvalidConfig(_) => Code::InvalidConfig.into(),
            BandwidthError::NoHostVeth { .. } => CODE_NO_HOST_VETH,
            BandwidthError::NoNetns(NetnsError::NotNetns { .. }) => Code::InvalidEnvironment.into(),
            BandwidthError::NoNetns(_) => Code::UnknownContainer.into(),
            BandwidthError::Kernel(_) | BandwidthError::Open(_) | BandwidthError::Unlink(_) => {
                CODE_KERNEL
            }
            BandwidthError::CheckMismatch(_) => CODE_CHECK_MISMATCH,
            BandwidthError::Several(errors) => {
                most_severe(errors.iter().map(CniError::code), CODE_KERNEL)
            }
        }
    }
}

pub type Failures = cni_core::teardown::Failures<BandwidthError>;
