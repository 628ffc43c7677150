//! Everything cni-ipam can fail with, and the CNI code each one maps to.

use std::net::IpAddr;
use std::path::PathBuf;

use cni_core::codes::*;
use cni_core::{CniError, Code};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("invalid ipam configuration: {0}")]
    InvalidConfig(String),
    #[error("no free address left in range set {set} of network {network}")]
    RangeExhausted { network: String, set: String },
    #[error("container {container} already holds {ips} on interface {ifname} in network {network}; DEL it before adding it again")]
    AlreadyAllocated {
        network: String,
        container: String,
        ifname: String,
        ips: String,
    },
    #[error("requested address {ip} is already leased to {owner}")]
    AddressInUse { ip: IpAddr, owner: String },
    #[error("requested address {ip} is not in any configured range, or is a reserved address (network, broadcast, gateway)")]
    NotInRange { ip: IpAddr },
    #[error("requested addresses {first} and {second} fall in the same range set; one address per range set")]
    TwoRequestsForOneSet { first: IpAddr, second: IpAddr },
    #[error("container {container} holds no lease on interface {ifname} in network {network}")]
    UnknownContainer {
        network: String,
        container: String,
        ifname: String,
    },
    #[error("check failed: {0}")]
    CheckMismatch(String),
    #[error("{action} {path} failed")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading resolv.conf {path} failed")]
    ResolvConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cni-ipam cannot serve ADD: {0}")]
    NotAvailable(String),
}

impl IpamError {
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> IpamError {
        let path = path.into();
        move |source| IpamError::Io {
            action,
            path,
            source,
        }
    }
}

impl CniError for IpamError {
    fn code(&self) -> u32 {
        match self {
            IpamError::InvalidConfig(_) | IpamError::TwoRequestsForOneSet { .. } => {
                Code::InvalidConfig.into()
            }
            IpamError::RangeExhausted { .. } => IPAM_RANGE_EXHAUSTED,
            IpamError::AlreadyAllocated { .. } => IPAM_ALREADY_ALLOCATED,
            IpamError::AddressInUse { .. } => IPAM_ADDRESS_IN_USE,
            IpamError::NotInRange { .. } => IPAM_NOT_IN_RANGE,
            IpamError::CheckMismatch(_) => IPAM_CHECK_MISMATCH,
            IpamError::UnknownContainer { .. } => Code::UnknownContainer.into(),
            IpamError::Io { .. } | IpamError::ResolvConf { .. } => Code::Io.into(),
            IpamError::NotAvailable(_) => Code::NotAvailable.into(),
        }
    }
}
