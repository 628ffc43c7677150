//! Everything cni-bandwidth can fail with, and the CNI code each one maps to.

use cni_core::codes::*;
use cni_core::error::most_severe;
use cni_core::netlink::{NlError, OpenError, UnlinkError};
use cni_core::netns::NetnsError;
use cni_core::{CniError, Code};

#[derive(Debug, thiserror::Error)]
pub enum BandwidthError {
    #[error("invalid bandwidth configuration: {0}")]
    InvalidConfig(String),
    #[error("the host end of {ifname} cannot be found: {why}")]
    NoHostVeth { ifname: String, why: String },
    /// CNI_NETNS cannot be opened, or is no network namespace (the message names the variable,
    /// as the spec asks of code 4).
    #[error("CNI_NETNS: {0}")]
    NoNetns(#[source] NetnsError),
    #[error("kernel refused")]
    Kernel(#[from] NlError),
    #[error("opening netlink")]
    Open(#[from] OpenError),
    #[error("removing the ifb")]
    Unlink(#[from] UnlinkError),
    #[error("check failed: {0}")]
    CheckMismatch(String),
    /// A link carries the name of this attachment's ifb but was not made for it: it is neither
    /// used nor deleted.
    #[error(
        "a link named {name} exists and is not this attachment's ifb ({what}); rename or remove it"
    )]
    NotOurs { name: String, what: String },
    /// DEL and GC keep going and report every failure together.
    #[error("{}", .0.iter().map(cni_core::error::chain).collect::<Vec<_>>().join("; "))]
    Several(Vec<BandwidthError>),
}

impl CniError for BandwidthError {
    fn code(&self) -> u32 {
        match self {
            BandwidthError::InvalidConfig(_) => Code::InvalidConfig.into(),
            BandwidthError::NoHostVeth { .. } => BANDWIDTH_NO_HOST_VETH,
            BandwidthError::NoNetns(NetnsError::NotNetns { .. }) => Code::InvalidEnvironment.into(),
            BandwidthError::NoNetns(_) => Code::UnknownContainer.into(),
            BandwidthError::Kernel(_) | BandwidthError::Open(_) | BandwidthError::Unlink(_) => {
                BANDWIDTH_KERNEL
            }
            BandwidthError::CheckMismatch(_) => BANDWIDTH_CHECK_MISMATCH,
            BandwidthError::NotOurs { .. } => BANDWIDTH_NOT_OURS,
            BandwidthError::Several(errors) => {
                most_severe(errors.iter().map(CniError::code), BANDWIDTH_KERNEL)
            }
        }
    }
}

pub type Failures = cni_core::teardown::Failures<BandwidthError>;
