//! The datastore the daemon learns subnets and peers from, as one trait: the Kubernetes API
//! (`kube.rs`) and etcd (`etcd.rs`) implement it, and a third store is one more file. Each gives
//! the same things: register this node (subnet + published VTEP), list peers, wait for a change,
//! notice a lost registration, leave. The shared types are in `state.rs`.

use ipnetwork::IpNetwork;

use super::config::{Args, ClusterCidrs};
use super::error::DaemonError;
use super::state::{Changed, NodeSubnets, Peer, Vtep};

// The daemon drives its store from one task and awaits each call in place: no caller needs the
// futures to be Send, which is what the lint warns about for public traits.
#[allow(async_fn_in_trait)]
pub trait Datastore: Sized {
    /// A connection, from the daemon's arguments. A configuration that cannot work is fatal
    /// ([`DaemonError::is_fatal`]); anything else is retried.
    async fn connect(args: &Args) -> Result<Self, DaemonError>;

    /// The address the cluster knows this node by, if the store has one (Kubernetes: the Node's
    /// InternalIP, kubelet's `--node-ip`): the underlay address unless one is configured.
    async fn node_ip(&mut self) -> Option<std::net::IpAddr> {
        None
    }

    /// Registers the node and returns its subnets. With etcd the subnet is leased here (the
    /// node's current one, else `hint`, else the first free one of `sizes`); with Kubernetes it
    /// is the Node's podCIDR.
    async fn register(
        &mut self,
        vtep: &Vtep<'_>,
        clusters: ClusterCidrs,
        sizes: (u8, u8),
        hint: Option<IpNetwork>,
    ) -> Result<NodeSubnets, DaemonError>;

    /// After a failure: a fresh connection where that helps. Nothing by default.
    async fn recover(&mut self) -> Result<(), DaemonError> {
        Ok(())
    }

    async fn peers(&mut self) -> Result<Vec<Peer>, DaemonError>;

    /// Waits for the next change of the peers; an error means the watch broke.
    async fn changed(&mut self) -> Result<Changed, DaemonError>;

    /// Keeps the registration alive; an error means it is lost and must be made again.
    async fn keep_alive(&mut self) -> Result<(), DaemonError>;

    /// The node's routes are in place. Nothing to say by default.
    async fn network_ready(&mut self) -> Result<(), DaemonError> {
        Ok(())
    }

    /// Peers whose entries could not be applied. Not reported by default.
    async fn report_refused(&mut self, _refused: &[(String, String)]) {}

    /// Withdraws this node from the overlay.
    async fn leave(&mut self, node: &str) -> Result<(), DaemonError>;
}
