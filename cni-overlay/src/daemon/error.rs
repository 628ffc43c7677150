//! Everything tether-overlayd can fail with. Only [`DaemonError::is_fatal`] errors end the
//! daemon; every other one is retried (datastore) or reported and retried on the next
//! reconciliation (kernel, nftables), never stopping the entries that work.

use std::net::SocketAddr;

use cni_core::firewall::FirewallError;
use cni_core::netlink::{NlError, OpenError};
use cni_core::sysctl::SysctlError;

use crate::facts::FactsError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The operator must change something: flags, kubeconfig, the Node's podCIDR.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Kernel(#[from] NlError),
    #[error("opening netlink")]
    Netlink(#[from] OpenError),
    /// The kernel state is not what a call just made it (a device vanished, an ioctl failed).
    #[error("kernel: {0}")]
    KernelState(String),
    #[error("nftables")]
    Nft(#[from] FirewallError),
    #[error(transparent)]
    Sysctl(#[from] SysctlError),
    #[error("datastore: {what}")]
    Datastore {
        what: String,
        #[source]
        source: Option<BoxError>,
    },
    #[error(transparent)]
    Facts(#[from] FactsError),
    #[error(transparent)]
    Conflist(#[from] crate::cniconf::ConflistError),
    #[error("metrics endpoint {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Several steps of a keep-going operation (leaving the overlay) failed.
    #[error("{}", .0.iter().map(cni_core::error::chain).collect::<Vec<_>>().join("; "))]
    Several(Vec<DaemonError>),
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl DaemonError {
    /// Errors no retry can cure: the daemon exits with status 2 and the message.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            DaemonError::Config(_) | DaemonError::Metrics { .. } | DaemonError::Signal { .. }
        )
    }

    /// A datastore condition with no underlying error (a missing podCIDR, an expired lease).
    pub fn datastore(what: impl Into<String>) -> DaemonError {
        DaemonError::Datastore {
            what: what.into(),
            source: None,
        }
    }

    /// A datastore call that failed with `source`.
    pub fn datastore_call<E>(what: impl Into<String>) -> impl FnOnce(E) -> DaemonError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let what = what.into();
        move |source| DaemonError::Datastore {
            what,
            source: Some(Box::new(source)),
        }
    }
}
