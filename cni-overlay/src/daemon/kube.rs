//! The Kubernetes datastore: the node's subnet is `Node.spec.podCIDR(s)` (allocated by the
//! controller manager), the VTEP is published as two annotations on the daemon's own Node, and
//! every other node is learned from a watch of all Nodes. It needs get, list, watch and patch on
//! nodes, nothing else.
//!
//! The watch feeds a [`PeerCache`] that keeps only what the overlay needs (name, subnet, VTEP),
//! never whole Node objects, so memory stays flat on large clusters.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node};
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Config};

use super::config::{Args, ClusterCidrs};
use super::datastore::Datastore;
use super::error::DaemonError;
use super::state::{Changed, NodeSubnets, Peer, Vtep};

/// Annotation holding a node's VTEP MAC address.
pub const VTEP_MAC: &str = "overlay.tether.dev/vtep-mac";
/// Annotation holding a node's underlay (VTEP) IP address.
pub const UNDERLAY_IP: &str = "overlay.tether.dev/underlay-ip";

const TIMEOUT: Duration = Duration::from_secs(10);

type NodeEvents = Pin<Box<dyn Stream<Item = Result<Event<Node>, watcher::Error>> + Send>>;

pub struct KubeStore {
    api: Api<Node>,
    events: Api<CoreEvent>,
    /// What was last reported about each peer, so that a persisting fault is one Event.
    reported: BTreeMap<String, String>,
    node: String,
    cache: PeerCache,
    node_events: NodeEvents,
    /// What this daemon last published on its own Node: (VTEP MAC, underlay IP).
    published: Option<(String, IpAddr)>,
}

impl KubeStore {
    /// A client from `kubeconfig`, or else from `KUBECONFIG`/`~/.kube/config`/the in-cluster
    /// service account, in that order. A configuration that cannot be loaded is fatal.
    pub async fn connect(kubeconfig: Option<&Path>, node: &str) -> Result<KubeStore, DaemonError> {
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    DaemonError::Config(format!("reading kubeconfig {}: {e}", path.display()))
                })?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| {
                        DaemonError::Config(format!("kubeconfig {}: {e}", path.display()))
                    })?
            }
            None => Config::infer().await.map_err(|e| {
                DaemonError::Config(format!(
                    "no Kubernetes configuration (give --kubeconfig, or run in a pod): {e}"
                ))
            })?,
        };
        let client = Client::try_from(config)
            .map_err(|e| DaemonError::Config(format!("Kubernetes client: {e}")))?;
        let api: Api<Node> = Api::all(client.clone());
        let watch = watch_nodes(api.clone());
        Ok(KubeStore {
            api,
            // Node events live in the default namespace, as kubelet's do.
            events: Api::namespaced(client, "default"),
            reported: BTreeMap::new(),
            node: node.to_string(),
            cache: PeerCache::default(),
            node_events: watch,
            published: None,
        })
    }

    /// The node's subnet from its `spec.podCIDR(s)`, after publishing the VTEP annotations.
    /// A node without a podCIDR yet is a datastore error (retried); a podCIDR outside the
    /// cluster CIDR is a configuration error.
    pub async fn register(
        &mut self,
        vtep_mac: &str,
        underlay_ip: IpAddr,
        clusters: ClusterCidrs,
    ) -> Result<NodeSubnets, DaemonError> {
        let cluster = clusters.v4;
        let node = timed("reading the Node", self.api.get(&self.node)).await?;
        let subnet = pod_subnet(&node).ok_or_else(|| {
            DaemonError::datastore(format!(
                "Node {} has no IPv4 spec.podCIDR yet (the controller manager assigns them with \
                 --allocate-node-cidrs)",
                self.node
            ))
        })?;
        if !contains(cluster, subnet) {
            return Err(DaemonError::Config(format!(
                "Node {} has podCIDR {subnet}, which is outside the cluster CIDR {cluster}",
                self.node
            )));
        }
        let subnet_v6 = match (clusters.v6, pod_subnet_v6(&node)) {
            (Some(c6), Some(s6)) if contains(c6, s6) => Some(s6),
            (Some(c6), Some(s6)) => {
                return Err(DaemonError::Config(format!(
                    "Node {} has podCIDR {s6}, which is outside the cluster CIDR {c6}",
                    self.node
                )))
            }
            (Some(c6), None) => {
                tracing::warn!(node = %self.node, cluster = %c6, "the Node has no IPv6 podCIDR: its pods get IPv4 only");
                None
            }
            (None, _) => None,
        };
        let wanted = (vtep_mac.to_string(), underlay_ip);
        if published_vtep(&node).as_ref() != Some(&wanted) {
            let patch = serde_json::json!({
                "metadata": {"annotations": {VTEP_MAC: vtep_mac, UNDERLAY_IP: underlay_ip.to_string()}}
            });
            timed(
                "annotating the Node",
                self.api
                    .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
        }
        self.published = Some(wanted);
        Ok(NodeSubnets {
            v4: subnet,
            v6: subnet_v6,
        })
    }

    /// Every node with a subnet and a published VTEP, once the first full list has arrived.
    /// Before that the answer is an error, so the kernel is never reconciled against a partial
    /// view (which would remove entries of nodes not listed yet).
    pub fn peers(&self) -> Result<Vec<Peer>, DaemonError> {
        self.cache
            .peers()
            .ok_or_else(|| DaemonError::datastore("the list of Nodes has not been received yet"))
    }

    /// Waits for the next change that matters to the overlay.
    pub async fn changed(&mut self) -> Result<Changed, DaemonError> {
        loop {
            match self.node_events.next().await {
                Some(Ok(event)) => {
                    if let Some(changed) = self.cache.apply(event) {
                        return Ok(changed);
                    }
                }
                Some(Err(e)) => return Err(DaemonError::datastore_call("watching Nodes")(e)),
                None => self.node_events = watch_nodes(self.api.clone()),
            }
        }
    }

    /// Fails when the own Node no longer carries what this daemon published (someone removed
    /// or changed the annotations), so that the caller publishes again.
    pub fn keep_alive(&self) -> Result<(), DaemonError> {
        let Some((mac, ip)) = &self.published else {
            return Err(DaemonError::datastore("not registered"));
        };
        match self.cache.get(&self.node) {
            Some(me) if &me.vtep_mac != mac || &me.underlay_ip != ip => Err(
                DaemonError::datastore("the Node's VTEP annotations changed"),
            ),
            Some(_) => Ok(()),
            // Not synced yet, or the annotations are gone.
            None if self.cache.peers().is_none() => Ok(()),
            None => Err(DaemonError::datastore(
                "the Node's VTEP annotations are missing",
            )),
        }
    }

    /// Sets the own Node's `NetworkUnavailable` condition to False: its routes are in place.
    /// Clouds (and the node lifecycle controller on some) start nodes with it True, and nothing
    /// is scheduled on a node until it is False.
    pub async fn set_network_available(&self) -> Result<(), DaemonError> {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = serde_json::json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "TetherOverlayReady",
            "message": "tether-overlayd set up the node's overlay routes",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        timed(
            "setting the Node's NetworkUnavailable condition",
            self.api.patch_status(
                &self.node,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            ),
        )
        .await
        .map(drop)
    }

    /// Reports peers whose entries the kernel (or the daemon) refused, as a Warning Event on
    /// each peer's Node; the same fault is reported once, a cleared one forgotten.
    pub async fn report_refused(&mut self, refused: &[(String, String)]) {
        let now: BTreeMap<String, String> = refused.iter().cloned().collect();
        self.reported.retain(|peer, _| now.contains_key(peer));
        for (peer, why) in now {
            if self.reported.get(&peer) == Some(&why) {
                continue;
            }
            let stamp = k8s_openapi::jiff::Timestamp::now().to_string();
            let event: CoreEvent = match serde_json::from_value(serde_json::json!({
                "metadata": {"generateName": format!("{peer}.tether-overlay-")},
                "involvedObject": {"kind": "Node", "name": peer, "apiVersion": "v1"},
                "reason": "TetherOverlayEntryRefused",
                "message": format!("node {}: {why}", self.node),
                "type": "Warning",
                "source": {"component": "tether-overlayd", "host": self.node},
                "reportingComponent": "tether-overlayd",
                "reportingInstance": self.node,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            })) {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "building an Event");
                    continue;
                }
            };
            match timed(
                "reporting a refused peer",
                self.events
                    .create(&kube::api::PostParams::default(), &event),
            )
            .await
            {
                Ok(_) => {
                    self.reported.insert(peer, why);
                }
                Err(e) => {
                    tracing::warn!(error = %cni_core::error::chain(&e), "cannot post an Event")
                }
            }
        }
    }

    /// Removes the VTEP annotations: the other nodes drop their entries for this one.
    pub async fn leave(&mut self) -> Result<(), DaemonError> {
        let patch = serde_json::json!({
            "metadata": {"annotations": {VTEP_MAC: null, UNDERLAY_IP: null}}
        });
        timed(
            "removing the Node's VTEP annotations",
            self.api
                .patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await?;
        self.published = None;
        Ok(())
    }
}

fn watch_nodes(api: Api<Node>) -> NodeEvents {
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed()
}

async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, DaemonError> {
    match tokio::time::timeout(TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(DaemonError::datastore_call(what)(e)),
        Err(_) => Err(DaemonError::datastore(format!(
            "{what}: no answer from the Kubernetes API within {TIMEOUT:?}"
        ))),
    }
}

fn contains(outer: IpNetwork, inner: IpNetwork) -> bool {
    outer.is_ipv4() == inner.is_ipv4()
        && inner.prefix() >= outer.prefix()
        && outer.contains(inner.network())
}

impl Datastore for KubeStore {
    async fn connect(args: &Args) -> Result<KubeStore, DaemonError> {
        KubeStore::connect(args.kubeconfig.as_deref(), &args.node_name).await
    }

    /// The Node's InternalIP (IPv4 first, as the underlay prefers it), as Calico's
    /// `kubernetes-internal-ip` method does. Unknown when the Node cannot be read yet.
    async fn node_ip(&mut self) -> Option<IpAddr> {
        let node = self.api.get_opt(&self.node).await.ok().flatten()?;
        internal_ip(&node)
    }

    /// The subnets are the Node's podCIDRs: nothing is leased, `sizes` and `hint` do not apply.
    async fn register(
        &mut self,
        vtep: &Vtep<'_>,
        clusters: ClusterCidrs,
        _sizes: (u8, u8),
        _hint: Option<IpNetwork>,
    ) -> Result<NodeSubnets, DaemonError> {
        KubeStore::register(self, vtep.mac, vtep.underlay_ip, clusters).await
    }

    async fn peers(&mut self) -> Result<Vec<Peer>, DaemonError> {
        KubeStore::peers(self)
    }

    /// The watcher recovers by itself; see [`Datastore::recover`].
    async fn changed(&mut self) -> Result<Changed, DaemonError> {
        KubeStore::changed(self).await
    }

    async fn keep_alive(&mut self) -> Result<(), DaemonError> {
        KubeStore::keep_alive(self)
    }

    /// The Node's NetworkUnavailable condition goes False.
    async fn network_ready(&mut self) -> Result<(), DaemonError> {
        self.set_network_available().await
    }

    /// An Event on each refused peer's Node.
    async fn report_refused(&mut self, refused: &[(String, String)]) {
        KubeStore::report_refused(self, refused).await
    }

    async fn leave(&mut self, _node: &str) -> Result<(), DaemonError> {
        KubeStore::leave(self).await
    }
}

/// The node's IPv4 pod subnet: the first IPv4 entry of `spec.podCIDRs`, else `spec.podCIDR`.
/// A Node's InternalIP: its first IPv4 one, else its first one.
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    let internal: Vec<IpAddr> = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    internal
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(internal.first())
        .copied()
}

pub fn pod_subnet(node: &Node) -> Option<IpNetwork> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .filter_map(|c| c.parse::<IpNetwork>().ok())
        .find(IpNetwork::is_ipv4)
        .and_then(|c| IpNetwork::new(c.network(), c.prefix()).ok())
}

/// The node's IPv6 pod subnet, if it has one.
pub fn pod_subnet_v6(node: &Node) -> Option<IpNetwork> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .filter_map(|c| c.parse::<IpNetwork>().ok())
        .find(IpNetwork::is_ipv6)
        .and_then(|c| IpNetwork::new(c.network(), c.prefix()).ok())
}

/// The VTEP a node published, if both annotations are there and readable.
pub fn published_vtep(node: &Node) -> Option<(String, IpAddr)> {
    let annotations = node.metadata.annotations.as_ref()?;
    let mac = annotations.get(VTEP_MAC)?;
    cni_core::netlink::parse_mac(mac)?;
    let ip = annotations.get(UNDERLAY_IP)?.parse().ok()?;
    Some((mac.clone(), ip))
}

/// The overlay's view of a Node: `None` until it has both a subnet and a VTEP.
pub fn peer_of(node: &Node) -> Option<Peer> {
    let name = node.metadata.name.clone()?;
    let subnet = pod_subnet(node)?;
    let (vtep_mac, underlay_ip) = published_vtep(node)?;
    Some(Peer {
        node: name,
        subnet,
        subnet_v6: pod_subnet_v6(node),
        vtep_mac,
        underlay_ip,
    })
}

/// The peers seen through the Node watch. Only what the overlay uses is kept. A (re)list is
/// buffered and swapped in whole at its end, so a relist never shows a partial cluster.
#[derive(Debug, Default)]
pub struct PeerCache {
    peers: BTreeMap<String, Peer>,
    relisting: Option<BTreeMap<String, Peer>>,
    synced: bool,
}

impl PeerCache {
    /// Applies one watch event; what changed among the peers, if anything.
    pub fn apply(&mut self, event: Event<Node>) -> Option<Changed> {
        match event {
            Event::Init => {
                self.relisting = Some(BTreeMap::new());
                None
            }
            Event::InitApply(node) => {
                if let (Some(list), Some(peer)) = (self.relisting.as_mut(), peer_of(&node)) {
                    list.insert(peer.node.clone(), peer);
                }
                None
            }
            Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.peers, listed);
                if !self.synced {
                    self.synced = true;
                    return Some(Changed::All);
                }
                // A relist (after 410 Gone) names only the nodes that differ from the old view.
                let differ: Vec<(String, Option<Peer>)> = old
                    .keys()
                    .chain(self.peers.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .filter(|name| old.get(*name) != self.peers.get(*name))
                    .map(|name| (name.clone(), self.peers.get(name).cloned()))
                    .collect();
                (!differ.is_empty()).then_some(Changed::Peers(differ))
            }
            Event::Apply(node) => {
                let name = node.metadata.name.clone()?;
                let changed = match peer_of(&node) {
                    Some(peer) => self.peers.insert(name.clone(), peer.clone()) != Some(peer),
                    // A node without subnet or VTEP (yet, or any more) is not a peer.
                    None => self.peers.remove(&name).is_some(),
                };
                changed.then(|| {
                    let now = self.peers.get(&name).cloned();
                    Changed::Peers(vec![(name, now)])
                })
            }
            Event::Delete(node) => {
                let name = node.metadata.name?;
                self.peers
                    .remove(&name)
                    .map(|_| Changed::Peers(vec![(name, None)]))
            }
        }
    }

    /// All peers, or `None` before the first complete list.
    pub fn peers(&self) -> Option<Vec<Peer>> {
        self.synced.then(|| self.peers.values().cloned().collect())
    }

    fn get(&self, node: &str) -> Option<&Peer> {
        self.peers.get(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, cidrs: &[&str], vtep: Option<(&str, &str)>) -> Node {
        let mut value = serde_json::json!({
            "metadata": {"name": name},
            "spec": {"podCIDRs": cidrs},
        });
        if let Some(first) = cidrs.first() {
            value["spec"]["podCIDR"] = (*first).into();
        }
        if let Some((mac, ip)) = vtep {
            value["metadata"]["annotations"] = serde_json::json!({VTEP_MAC: mac, UNDERLAY_IP: ip});
        }
        serde_json::from_value(value).unwrap()
    }

    fn names(cache: &PeerCache) -> Vec<String> {
        cache.peers().unwrap().into_iter().map(|p| p.node).collect()
    }

    #[test]
    fn subnet_is_the_first_ipv4_pod_cidr_without_host_bits() {
        let dual = node("a", &["fd00:10::/64", "10.244.3.0/24"], None);
        assert_eq!(pod_subnet(&dual), Some("10.244.3.0/24".parse().unwrap()));
        assert_eq!(pod_subnet_v6(&dual), Some("fd00:10::/64".parse().unwrap()));
        let sloppy = node("b", &["10.244.4.7/24"], None);
        assert_eq!(pod_subnet(&sloppy), Some("10.244.4.0/24".parse().unwrap()));
        assert_eq!(pod_subnet(&node("c", &["fd00:10::/64"], None)), None);
        assert_eq!(pod_subnet(&node("d", &[], None)), None);
    }

    #[test]
    fn a_node_is_a_peer_only_with_subnet_and_a_readable_vtep() {
        let vtep = Some(("0e:00:00:00:00:01", "192.0.2.7"));
        let peer = peer_of(&node("a", &["10.244.1.0/24"], vtep)).unwrap();
        assert_eq!(peer.subnet, "10.244.1.0/24".parse().unwrap());
        assert_eq!(peer.vtep_mac, "0e:00:00:00:00:01");
        assert_eq!(peer.underlay_ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert!(peer_of(&node("b", &[], vtep)).is_none(), "no podCIDR");
        assert!(
            peer_of(&node("c", &["10.244.2.0/24"], None)).is_none(),
            "no VTEP"
        );
        let bad_mac = Some(("not-a-mac", "192.0.2.7"));
        assert!(peer_of(&node("d", &["10.244.2.0/24"], bad_mac)).is_none());
        let bad_ip = Some(("0e:00:00:00:00:01", "nowhere"));
        assert!(peer_of(&node("e", &["10.244.2.0/24"], bad_ip)).is_none());
    }

    #[test]
    fn cache_is_unusable_until_the_first_list_completes() {
        let mut cache = PeerCache::default();
        assert!(cache.peers().is_none());
        assert!(cache.apply(Event::Init).is_none());
        let a = node(
            "a",
            &["10.244.1.0/24"],
            Some(("0e:00:00:00:00:01", "192.0.2.1")),
        );
        assert!(cache.apply(Event::InitApply(a)).is_none());
        assert!(cache.peers().is_none(), "a partial list must not be used");
        assert!(cache.apply(Event::InitDone).is_some());
        assert_eq!(names(&cache), ["a"]);
    }

    #[test]
    fn watch_events_add_update_and_remove_peers() {
        let mut cache = PeerCache::default();
        cache.apply(Event::Init);
        cache.apply(Event::InitDone);
        let vtep = ("0e:00:00:00:00:02", "192.0.2.2");
        // A node joins before it has a VTEP: not a peer yet.
        assert!(cache
            .apply(Event::Apply(node("b", &["10.244.2.0/24"], None)))
            .is_none());
        assert!(cache
            .apply(Event::Apply(node("b", &["10.244.2.0/24"], Some(vtep))))
            .is_some());
        // The same object again (e.g. a status heartbeat) changes nothing.
        assert!(cache
            .apply(Event::Apply(node("b", &["10.244.2.0/24"], Some(vtep))))
            .is_none());
        // Its underlay moves.
        let moved = ("0e:00:00:00:00:02", "192.0.2.99");
        assert!(cache
            .apply(Event::Apply(node("b", &["10.244.2.0/24"], Some(moved))))
            .is_some());
        assert_eq!(
            cache.get("b").unwrap().underlay_ip,
            "192.0.2.99".parse::<IpAddr>().unwrap()
        );
        // Its annotations are removed (it left the overlay), then it is deleted.
        assert!(cache
            .apply(Event::Apply(node("b", &["10.244.2.0/24"], None)))
            .is_some());
        assert!(names(&cache).is_empty());
        assert!(cache
            .apply(Event::Delete(node("b", &["10.244.2.0/24"], None)))
            .is_none());
        cache.apply(Event::Apply(node("c", &["10.244.3.0/24"], Some(vtep))));
        assert!(cache.apply(Event::Delete(node("c", &[], None))).is_some());
        assert!(names(&cache).is_empty());
    }

    #[test]
    fn a_relist_replaces_the_cache_at_its_end_and_drops_nodes_it_no_longer_lists() {
        let mut cache = PeerCache::default();
        let vtep = |n: u8| (format!("0e:00:00:00:00:0{n}"), format!("192.0.2.{n}"));
        let (ma, ia) = vtep(1);
        let (mb, ib) = vtep(2);
        let a = node("a", &["10.244.1.0/24"], Some((&ma, &ia)));
        let b = node("b", &["10.244.2.0/24"], Some((&mb, &ib)));
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(a.clone()));
        cache.apply(Event::InitApply(b));
        cache.apply(Event::InitDone);
        assert_eq!(names(&cache), ["a", "b"]);
        // The watch broke and its resource version expired: a relist in which b is gone.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(a.clone()));
        assert_eq!(names(&cache), ["a", "b"], "old view kept during the relist");
        assert!(cache.apply(Event::InitDone).is_some());
        assert_eq!(names(&cache), ["a"]);
        // A relist that finds the same cluster is not a change.
        cache.apply(Event::Init);
        cache.apply(Event::InitApply(a));
        assert!(cache.apply(Event::InitDone).is_none());
    }

    #[test]
    fn pod_cidrs_must_lie_inside_the_cluster_cidr() {
        let cluster: IpNetwork = "10.244.0.0/16".parse().unwrap();
        assert!(contains(cluster, "10.244.7.0/24".parse().unwrap()));
        assert!(!contains(cluster, "10.245.0.0/24".parse().unwrap()));
        assert!(!contains(cluster, "10.0.0.0/8".parse().unwrap()));
    }
}
