//! The datastore the daemon learns subnets and peers from: the Kubernetes API or etcd. Both give
//! the same four things: register this node (subnet + published VTEP), list peers, wait for a
//! change, and notice a lost registration.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::config::{Args, ClusterCidrs, DatastoreKind};
use super::error::DaemonError;
use super::etcd::EtcdStore;
use super::kube::KubeStore;
use super::state::{NodeSubnets, Peer};

/// What changed among the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Anything: read them all again.
    All,
    /// These nodes, with what they are now (`None`: no longer a peer).
    Peers(Vec<(String, Option<Peer>)>),
}

pub enum Datastore {
    Etcd(Box<EtcdStore>),
    Kube(Box<KubeStore>),
}

/// What this node publishes about itself.
pub struct Vtep<'a> {
    pub node: &'a str,
    pub mac: &'a str,
    pub underlay_ip: IpAddr,
}

impl Datastore {
    pub async fn connect(args: &Args) -> Result<Datastore, DaemonError> {
        Ok(match args.datastore {
            DatastoreKind::Etcd => Datastore::Etcd(Box::new(
                EtcdStore::connect(&args.etcd_endpoints, &args.etcd_prefix, args.lease_ttl).await?,
            )),
            DatastoreKind::Kubernetes => Datastore::Kube(Box::new(
                KubeStore::connect(args.kubeconfig.as_deref(), &args.node_name).await?,
            )),
        })
    }

    /// Registers the node and returns its subnet. With etcd the subnet is leased here (the
    /// node's current one, else `hint`, else the first free one of `size`); with Kubernetes it
    /// is the Node's podCIDR.
    pub async fn register(
        &mut self,
        vtep: &Vtep<'_>,
        clusters: ClusterCidrs,
        sizes: (u8, u8),
        hint: Option<IpNetwork>,
    ) -> Result<NodeSubnets, DaemonError> {
        match self {
            Datastore::Etcd(store) => {
                store
                    .register(
                        vtep.node,
                        vtep.mac,
                        vtep.underlay_ip,
                        clusters,
                        sizes.0,
                        sizes.1,
                        hint,
                    )
                    .await
            }
            Datastore::Kube(store) => store.register(vtep.mac, vtep.underlay_ip, clusters).await,
        }
    }

    /// After a failure: a fresh connection where that helps (etcd's may be bound to an address
    /// the node no longer has). The Kubernetes watcher recovers by itself.
    pub async fn recover(&mut self) -> Result<(), DaemonError> {
        match self {
            Datastore::Etcd(store) => store.reconnect().await,
            Datastore::Kube(_) => Ok(()),
        }
    }

    pub async fn peers(&mut self) -> Result<Vec<Peer>, DaemonError> {
        match self {
            Datastore::Etcd(store) => store.peers().await,
            Datastore::Kube(store) => store.peers(),
        }
    }

    /// Waits for the next change of the peers; an error means the watch broke.
    pub async fn changed(&mut self) -> Result<Changed, DaemonError> {
        match self {
            Datastore::Etcd(store) => store.changed().await,
            Datastore::Kube(store) => store.changed().await,
        }
    }

    /// Keeps the registration alive; an error means it is lost and must be made again.
    pub async fn keep_alive(&mut self) -> Result<(), DaemonError> {
        match self {
            Datastore::Etcd(store) => store.keep_alive().await,
            Datastore::Kube(store) => store.keep_alive(),
        }
    }

    /// The node's routes are in place (Kubernetes: its NetworkUnavailable condition is False).
    pub async fn network_ready(&mut self) -> Result<(), DaemonError> {
        match self {
            Datastore::Etcd(_) => Ok(()),
            Datastore::Kube(store) => store.set_network_available().await,
        }
    }

    /// Peers whose entries could not be applied (Kubernetes: an Event on each peer's Node).
    pub async fn report_refused(&mut self, refused: &[(String, String)]) {
        if let Datastore::Kube(store) = self {
            store.report_refused(refused).await;
        }
    }

    /// Withdraws this node from the overlay.
    pub async fn leave(&mut self, node: &str) -> Result<(), DaemonError> {
        match self {
            Datastore::Etcd(store) => store.leave(node).await,
            Datastore::Kube(store) => store.leave().await,
        }
    }
}
