//! The etcd datastore: each node leases a subnet of the cluster CIDR with a transaction that only
//! succeeds if nobody holds it, attaches the key to an etcd lease it keeps alive, and stores its
//! VTEP next to it. Keys: `<prefix>/subnets/<a.b.c.d>-<len>` -> JSON [`Peer`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use ipnetwork::IpNetwork;

use super::config::{Args, ClusterCidrs};
use super::datastore::Datastore;
use super::error::DaemonError;
use super::state::{Changed, NodeSubnets, Peer, Vtep};

const TIMEOUT: Duration = Duration::from_secs(5);

pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    prefix: String,
    ttl: i64,
    lease: Option<i64>,
    keeper: Option<etcd_client::LeaseKeeper>,
    keep_stream: Option<etcd_client::LeaseKeepAliveStream>,
    watch: Option<WatchStream>,
    /// The registrations as of the last full read and the watch events after it: key -> peer.
    known: std::collections::BTreeMap<String, Peer>,
    /// The revision of the last full read; the watch resumes after it, and events at or before
    /// it (already in that read) are skipped.
    listed_at: Option<i64>,
}

fn ds(context: &str) -> impl FnOnce(etcd_client::Error) -> DaemonError {
    DaemonError::datastore_call(format!("etcd {context}"))
}

impl EtcdStore {
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        ttl: i64,
    ) -> Result<EtcdStore, DaemonError> {
        Ok(EtcdStore {
            client: new_client(endpoints).await?,
            endpoints: endpoints.to_vec(),
            prefix: prefix.trim_end_matches('/').to_string(),
            ttl,
            lease: None,
            keeper: None,
            keep_stream: None,
            watch: None,
            known: std::collections::BTreeMap::new(),
            listed_at: None,
        })
    }

    /// A fresh connection, after failures: an old one may be bound to an address the node no
    /// longer has. The registration must be made again afterwards.
    pub async fn reconnect(&mut self) -> Result<(), DaemonError> {
        self.client = new_client(&self.endpoints).await?;
        self.keeper = None;
        self.keep_stream = None;
        self.watch = None;
        Ok(())
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    fn key(&self, subnet: IpNetwork) -> String {
        format!(
            "{}{}-{}",
            self.subnets_prefix(),
            subnet.network(),
            subnet.prefix()
        )
    }

    /// Every registered node.
    pub async fn peers(&mut self) -> Result<Vec<Peer>, DaemonError> {
        let resp = self
            .client
            .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(ds("listing nodes"))?;
        let known = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                match serde_json::from_slice::<Peer>(kv.value()) {
                    Ok(peer) => Some((key, peer)),
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "ignoring unreadable registration");
                        None
                    }
                }
            })
            .collect();
        self.known = known;
        self.listed_at = resp.header().map(|h| h.revision());
        Ok(self.known.values().cloned().collect())
    }

    /// Leases a subnet for `node` and publishes its VTEP. Keeps the node's current subnet if it
    /// has one, else tries `hint` (the subnet it had before), else the first free one.
    #[allow(clippy::too_many_arguments)]
    pub async fn register(
        &mut self,
        node: &str,
        vtep_mac: &str,
        underlay_ip: IpAddr,
        clusters: ClusterCidrs,
        size: u8,
        size_v6: u8,
        hint: Option<IpNetwork>,
    ) -> Result<NodeSubnets, DaemonError> {
        let cluster = clusters.v4;
        // A node's IPv6 subnet follows from its IPv4 one, so one lease covers both.
        let with_v6 = |subnet: IpNetwork| NodeSubnets {
            v4: subnet,
            v6: clusters
                .v6
                .and_then(|c6| v6_subnet_for(subnet, cluster, c6, size_v6)),
        };
        let lease = self.grant_lease().await?;
        let (taken, mine) = self.leased_subnets(node).await?;
        let value = |subnet: IpNetwork| {
            serde_json::to_string(&Peer {
                node: node.to_string(),
                subnet,
                subnet_v6: with_v6(subnet).v6,
                vtep_mac: vtep_mac.to_string(),
                underlay_ip,
            })
            .unwrap_or_default()
        };
        let put = |key: &str, subnet: IpNetwork| {
            TxnOp::put(
                key,
                value(subnet),
                Some(PutOptions::new().with_lease(lease)),
            )
        };

        if let Some((subnet, revision)) = mine {
            let key = self.key(subnet);
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([put(&key, subnet)]);
            if self
                .client
                .txn(txn)
                .await
                .map_err(ds("renewing registration"))?
                .succeeded()
            {
                return Ok(with_v6(subnet));
            }
        }
        let candidates = hint
            .filter(|h| h.prefix() == size && cluster.contains(h.network()))
            .into_iter()
            .chain(subnets_of(cluster, size));
        for subnet in candidates {
            if taken.contains(&subnet) {
                continue;
            }
            let key = self.key(subnet);
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([put(&key, subnet)]);
            if self
                .client
                .txn(txn)
                .await
                .map_err(ds("leasing subnet"))?
                .succeeded()
            {
                return Ok(with_v6(subnet));
            }
        }
        Err(DaemonError::datastore(format!(
            "no free /{size} subnet left in cluster CIDR {cluster}"
        )))
    }

    /// A new lease, kept alive in the background, for this node's registration.
    async fn grant_lease(&mut self) -> Result<i64, DaemonError> {
        let lease = self
            .client
            .lease_grant(self.ttl, None)
            .await
            .map_err(ds("granting lease"))?
            .id();
        let (keeper, stream) = self
            .client
            .lease_keep_alive(lease)
            .await
            .map_err(ds("keeping lease alive"))?;
        self.lease = Some(lease);
        self.keeper = Some(keeper);
        self.keep_stream = Some(stream);
        Ok(lease)
    }

    /// Every leased subnet, and `node`'s own with its revision if it holds one.
    async fn leased_subnets(
        &mut self,
        node: &str,
    ) -> Result<(Vec<IpNetwork>, Option<(IpNetwork, i64)>), DaemonError> {
        let existing = self
            .client
            .get(self.subnets_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(ds("listing subnets"))?;
        let mut taken = Vec::new();
        let mut mine = None;
        for kv in existing.kvs() {
            if let Ok(peer) = serde_json::from_slice::<Peer>(kv.value()) {
                if peer.node == node {
                    mine = Some((peer.subnet, kv.mod_revision()));
                }
                taken.push(peer.subnet);
            }
        }
        Ok((taken, mine))
    }

    /// Renews the lease; an error means the registration is gone and must be made again.
    pub async fn keep_alive(&mut self) -> Result<(), DaemonError> {
        let (Some(keeper), Some(stream)) = (self.keeper.as_mut(), self.keep_stream.as_mut()) else {
            return Err(DaemonError::datastore("not registered"));
        };
        keeper.keep_alive().await.map_err(ds("keep-alive"))?;
        match tokio::time::timeout(TIMEOUT, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => Ok(()),
            Ok(Ok(_)) => Err(DaemonError::datastore("etcd lease expired")),
            Ok(Err(e)) => Err(ds("keep-alive")(e)),
            Err(_) => Err(DaemonError::datastore("etcd keep-alive timed out")),
        }
    }

    /// Waits for the next change under the prefix and names the nodes it changed, with what they
    /// are now. The watch resumes after the last full read, so nothing between the two is lost;
    /// a broken or compacted watch is an error (the caller then reads everything again), and the
    /// next call watches again.
    pub async fn changed(&mut self) -> Result<Changed, DaemonError> {
        loop {
            if self.watch.is_none() {
                let mut options = WatchOptions::new().with_prefix();
                if let Some(revision) = self.listed_at {
                    options = options.with_start_revision(revision + 1);
                }
                let stream = self
                    .client
                    .watch(self.subnets_prefix(), Some(options))
                    .await
                    .map_err(ds("watching"))?;
                self.watch = Some(stream);
            }
            let Some(stream) = self.watch.as_mut() else {
                return Err(DaemonError::datastore("etcd watch missing"));
            };
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => {
                    self.watch = None;
                    return Err(DaemonError::datastore("etcd closed the watch"));
                }
                Err(e) => {
                    self.watch = None;
                    return Err(ds("watch")(e));
                }
            };
            if response.canceled() {
                self.watch = None;
                return Err(DaemonError::datastore(format!(
                    "etcd cancelled the watch (compacted at revision {})",
                    response.compact_revision()
                )));
            }
            let touched = self.apply_events(response.events());
            if self.listed_at.is_none() {
                // Nothing read in full yet: only a full read can say what the cluster is.
                return Ok(Changed::All);
            }
            if !touched.is_empty() {
                let changes = touched
                    .into_iter()
                    .map(|node| {
                        let now = self.known.values().find(|p| p.node == node).cloned();
                        (node, now)
                    })
                    .collect();
                return Ok(Changed::Peers(changes));
            }
        }
    }

    /// Applies watch events newer than the last full read; the nodes they touched.
    fn apply_events(
        &mut self,
        events: &[etcd_client::Event],
    ) -> std::collections::BTreeSet<String> {
        let mut touched = std::collections::BTreeSet::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            if self.listed_at.is_some_and(|at| kv.mod_revision() <= at) {
                continue;
            }
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let now = match event.event_type() {
                etcd_client::EventType::Put => serde_json::from_slice::<Peer>(kv.value())
                    .map_err(
                        |e| tracing::warn!(%key, error = %e, "ignoring unreadable registration"),
                    )
                    .ok(),
                etcd_client::EventType::Delete => None,
            };
            let before = match now {
                Some(peer) => {
                    touched.insert(peer.node.clone());
                    self.known.insert(key, peer)
                }
                None => self.known.remove(&key),
            };
            if let Some(old) = before {
                touched.insert(old.node);
            }
        }
        touched
    }

    /// Deletes this node's registration (the node leaves the overlay).
    pub async fn leave(&mut self, node: &str) -> Result<(), DaemonError> {
        for peer in self.peers().await? {
            if peer.node == node {
                let key = self.key(peer.subnet);
                self.client
                    .delete(key, None)
                    .await
                    .map_err(ds("deleting registration"))?;
            }
        }
        Ok(())
    }
}

async fn new_client(endpoints: &[String]) -> Result<Client, DaemonError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(TIMEOUT)
        .with_timeout(TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), TIMEOUT);
    tokio::time::timeout(TIMEOUT, Client::connect(endpoints, Some(options)))
        .await
        .map_err(|_| {
            DaemonError::datastore(format!(
                "connecting to etcd {endpoints:?}: timed out after {TIMEOUT:?}"
            ))
        })?
        .map_err(ds("connect"))
}

impl Datastore for EtcdStore {
    async fn connect(args: &Args) -> Result<EtcdStore, DaemonError> {
        EtcdStore::connect(&args.etcd_endpoints, &args.etcd_prefix, args.lease_ttl).await
    }

    async fn register(
        &mut self,
        vtep: &Vtep<'_>,
        clusters: ClusterCidrs,
        sizes: (u8, u8),
        hint: Option<IpNetwork>,
    ) -> Result<NodeSubnets, DaemonError> {
        EtcdStore::register(
            self,
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

    /// A fresh connection: the old one may be bound to an address the node no longer has.
    async fn recover(&mut self) -> Result<(), DaemonError> {
        self.reconnect().await
    }

    async fn peers(&mut self) -> Result<Vec<Peer>, DaemonError> {
        EtcdStore::peers(self).await
    }

    async fn changed(&mut self) -> Result<Changed, DaemonError> {
        EtcdStore::changed(self).await
    }

    async fn keep_alive(&mut self) -> Result<(), DaemonError> {
        EtcdStore::keep_alive(self).await
    }

    async fn leave(&mut self, node: &str) -> Result<(), DaemonError> {
        EtcdStore::leave(self, node).await
    }
}

/// The IPv6 subnet paired with IPv4 subnet `v4`: the one with the same index in `cluster6`.
pub fn v6_subnet_for(
    v4: IpNetwork,
    cluster4: IpNetwork,
    cluster6: IpNetwork,
    size6: u8,
) -> Option<IpNetwork> {
    let (IpAddr::V4(net4), IpAddr::V4(base4), IpAddr::V6(base6)) =
        (v4.network(), cluster4.network(), cluster6.network())
    else {
        return None;
    };
    let index = u128::from((u32::from(net4) - u32::from(base4)) >> (32 - u32::from(v4.prefix())));
    if size6 > 128
        || size6 <= cluster6.prefix()
        || index >= 1u128 << (size6 - cluster6.prefix()).min(127)
    {
        return None;
    }
    let address = u128::from(base6) + (index << (128 - u32::from(size6)));
    IpNetwork::new(IpAddr::V6(Ipv6Addr::from(address)), size6).ok()
}

/// Every subnet of length `size` in `cluster`, in address order.
pub fn subnets_of(cluster: IpNetwork, size: u8) -> impl Iterator<Item = IpNetwork> {
    let base = match cluster.network() {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(_) => 0,
    };
    let count: u64 = if cluster.is_ipv4() && size >= cluster.prefix() && size <= 32 {
        1u64 << (size - cluster.prefix())
    } else {
        0
    };
    let step: u64 = 1u64 << (32 - u32::from(size.min(32)));
    (0..count).filter_map(move |i| {
        let addr = u64::from(base) + i * step;
        IpNetwork::new(IpAddr::V4(Ipv4Addr::from(addr as u32)), size).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enumerates_subnets() {
        let all: Vec<String> = subnets_of("10.244.0.0/22".parse().unwrap(), 24)
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            all,
            [
                "10.244.0.0/24",
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.3.0/24"
            ]
        );
        assert_eq!(subnets_of("10.0.0.0/8".parse().unwrap(), 24).count(), 65536);
    }

    #[test]
    fn ipv6_subnets_pair_with_ipv4_ones_by_index() {
        let c4: IpNetwork = "10.244.0.0/16".parse().unwrap();
        let c6: IpNetwork = "fd00:244::/56".parse().unwrap();
        let pair = |v4: &str| v6_subnet_for(v4.parse().unwrap(), c4, c6, 64).map(|s| s.to_string());
        assert_eq!(pair("10.244.0.0/24").as_deref(), Some("fd00:244::/64"));
        assert_eq!(pair("10.244.7.0/24").as_deref(), Some("fd00:244:0:7::/64"));
        assert_eq!(
            pair("10.244.255.0/24").as_deref(),
            Some("fd00:244:0:ff::/64")
        );
        // Not enough IPv6 subnets for this index.
        assert_eq!(
            v6_subnet_for(
                "10.244.9.0/24".parse().unwrap(),
                c4,
                "fd00:244::/62".parse().unwrap(),
                64
            ),
            None
        );
    }
}
