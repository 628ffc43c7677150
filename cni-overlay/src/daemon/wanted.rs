//! The entries this node wants, kept per peer, so that one peer changing is worked out (and
//! applied) from that peer alone: the cost of a change does not grow with the cluster.
//!
//! Each entry key (a neighbour address, a VTEP MAC, a route destination) remembers which peers
//! ask for it; when two misconfigured peers ask for the same key, the one with the greatest node
//! name wins, and the other's value comes back when that one goes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;

use super::kernel::Entry;
use super::state::{peer_entries, Desired, Peer, PeerEntries, RouteWant, Scope};

/// Values per key, per node asking for them. The askers of a key are a list sorted by node name
/// (almost always one, so made with room for one): a map per key would allocate a whole tree
/// node (about a kilobyte) for each of the cluster's keys. A node's name is one allocation
/// shared by all its keys.
#[derive(Debug)]
struct Owned<K, V>(BTreeMap<K, Vec<(Arc<str>, V)>>);

impl<K: Ord + Clone, V: Clone> Owned<K, V> {
    fn new() -> Self {
        Owned(BTreeMap::new())
    }

    fn value(&self, key: &K) -> Option<&V> {
        self.0.get(key)?.last().map(|(_, v)| v)
    }

    fn owner(&self, key: &K) -> Option<&str> {
        self.0.get(key)?.last().map(|(node, _)| &**node)
    }

    fn view(&self) -> BTreeMap<K, V> {
        self.0
            .iter()
            .filter_map(|(k, owners)| Some((k.clone(), owners.last()?.1.clone())))
            .collect()
    }

    /// Replaces `node`'s claims `old` with `new`; records the winning values of every key
    /// touched, before and after.
    fn swap(
        &mut self,
        node: &Arc<str>,
        old: &[(K, V)],
        new: &[(K, V)],
        before: &mut BTreeMap<K, V>,
        after: &mut BTreeMap<K, V>,
    ) {
        let keys: BTreeSet<&K> = old.iter().chain(new).map(|(k, _)| k).collect();
        for key in &keys {
            if let Some(v) = self.value(key) {
                before.insert((*key).clone(), v.clone());
            }
        }
        for (key, _) in old {
            if let Some(owners) = self.0.get_mut(key) {
                owners.retain(|(n, _)| n != node);
                owners.shrink_to_fit();
                if owners.is_empty() {
                    self.0.remove(key);
                }
            }
        }
        for (key, value) in new {
            let owners = self
                .0
                .entry(key.clone())
                .or_insert_with(|| Vec::with_capacity(1));
            match owners.binary_search_by(|(n, _)| n.cmp(node)) {
                Ok(at) => owners[at].1 = value.clone(),
                Err(at) => owners.insert(at, (node.clone(), value.clone())),
            }
        }
        for key in keys {
            if let Some(v) = self.value(key) {
                after.insert(key.clone(), v.clone());
            }
        }
    }
}

/// What this node wants for every peer it knows.
#[derive(Debug)]
pub struct Wanted {
    scope: Scope,
    peers: BTreeMap<String, PeerEntries>,
    neighbours: Owned<IpAddr, Vec<u8>>,
    fdb: Owned<Vec<u8>, IpAddr>,
    routes: Owned<IpNetwork, RouteWant>,
}

impl Wanted {
    pub fn new(scope: Scope) -> Wanted {
        Wanted {
            scope,
            peers: BTreeMap::new(),
            neighbours: Owned::new(),
            fdb: Owned::new(),
            routes: Owned::new(),
        }
    }

    pub fn from_peers(scope: Scope, peers: &[Peer]) -> Wanted {
        let mut wanted = Wanted::new(scope);
        for peer in peers {
            wanted.replace(&peer.node, Some(peer));
        }
        wanted
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// Sets `node`'s entries from `peer` (`None`: the node is gone). Returns the winning
    /// entries of every key this touched, before and after: their difference is what the
    /// kernel must be told.
    pub fn replace(&mut self, node: &str, peer: Option<&Peer>) -> (Desired, Desired) {
        let old = self.peers.remove(node).unwrap_or_default();
        let new = match peer {
            Some(p) if p.node != self.scope.me => Some(peer_entries(p, &self.scope)),
            _ => None,
        };
        let empty = PeerEntries::default();
        let entries = new.as_ref().unwrap_or(&empty);
        let name: Arc<str> = Arc::from(node);
        let node = &name;
        let (mut before, mut after) = (Desired::default(), Desired::default());
        self.neighbours.swap(
            node,
            &old.neighbours,
            &entries.neighbours,
            &mut before.neighbours,
            &mut after.neighbours,
        );
        self.fdb.swap(
            node,
            &old.fdb,
            &entries.fdb,
            &mut before.fdb,
            &mut after.fdb,
        );
        self.routes.swap(
            node,
            &old.routes,
            &entries.routes,
            &mut before.routes,
            &mut after.routes,
        );
        if let Some(new) = new {
            self.peers.insert(node.to_string(), new);
        }
        (before, after)
    }

    /// Everything wanted, as one desired state.
    pub fn desired(&self) -> Desired {
        Desired {
            neighbours: self.neighbours.view(),
            fdb: self.fdb.view(),
            routes: self.routes.view(),
            rejected: self.rejected().collect(),
        }
    }

    /// Kernel entries wanted.
    pub fn entries(&self) -> usize {
        self.neighbours.0.len() + self.fdb.0.len() + self.routes.0.len()
    }

    /// Routes to peer subnets wanted: (direct, over VXLAN).
    pub fn route_kinds(&self) -> (usize, usize) {
        let routes = self.peers.values().flat_map(|e| e.routes.iter());
        routes.fold((0, 0), |(direct, vxlan), (_, want)| {
            if want.via_vxlan {
                (direct, vxlan + 1)
            } else {
                (direct + 1, vxlan)
            }
        })
    }

    /// Other nodes known.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Peer subnets refused before the kernel saw them: node and why.
    pub fn rejected(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.peers
            .iter()
            .flat_map(|(node, e)| e.rejected.iter().map(|why| (node.clone(), why.clone())))
    }

    /// The peer a kernel entry is for, for reports.
    pub fn owner_of(&self, entry: &Entry) -> Option<&str> {
        match entry {
            Entry::Neighbour(ip) => self.neighbours.owner(ip),
            Entry::Fdb(mac) => self.fdb.owner(mac),
            Entry::Route(dst) => self.routes.owner(dst),
            Entry::Listing(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::tests::peer;
    use super::*;

    fn scope() -> Scope {
        Scope {
            me: "a".into(),
            on_link: vec!["192.0.2.0/24".parse().unwrap()],
            direct_routing: false,
            own: vec!["10.244.0.0/24".parse().unwrap()],
            clusters: vec!["10.244.0.0/16".parse().unwrap()],
        }
    }

    #[test]
    fn one_change_touches_only_that_peers_entries() {
        let peers: Vec<Peer> = (1..50)
            .map(|i| {
                peer(
                    &format!("n{i:02}"),
                    &format!("10.244.{i}.0/24"),
                    &format!("0a:00:00:00:00:{i:02x}"),
                    &format!("192.0.2.{i}"),
                )
            })
            .collect();
        let mut wanted = Wanted::from_peers(scope(), &peers);
        assert_eq!(wanted.entries(), 49 * 3);
        let mut moved = peers[9].clone();
        moved.underlay_ip = "192.0.2.200".parse().unwrap();
        let (before, after) = wanted.replace(&moved.node, Some(&moved));
        assert_eq!(before.entries(), 3, "{before:?}");
        assert_eq!(after.entries(), 3);
        assert_eq!(before.neighbours, after.neighbours);
        assert_eq!(before.routes, after.routes);
        assert_ne!(before.fdb, after.fdb);
        let (before, after) = wanted.replace("n20", None);
        assert_eq!((before.entries(), after.entries()), (3, 0));
        assert_eq!(wanted.entries(), 48 * 3);
        assert_eq!(wanted.peers(), 48);
        // The whole view equals a fresh computation from the same peers.
        let mut now: Vec<Peer> = peers.iter().filter(|p| p.node != "n20").cloned().collect();
        now[9] = moved;
        assert_eq!(
            wanted.desired(),
            Wanted::from_peers(scope(), &now).desired()
        );
    }

    #[test]
    fn a_shared_key_comes_back_to_the_other_peer_when_the_winner_goes() {
        let b = peer("b", "10.244.1.0/24", "0a:00:00:00:00:0b", "192.0.2.11");
        let c = peer("c", "10.244.1.0/24", "0a:00:00:00:00:0c", "192.0.2.12");
        let mut wanted = Wanted::from_peers(scope(), &[b.clone(), c]);
        let route: IpNetwork = "10.244.1.0/24".parse().unwrap();
        assert_eq!(wanted.owner_of(&Entry::Route(route)), Some("c"));
        let (_, after) = wanted.replace("c", None);
        assert_eq!(
            after.neighbours[&"10.244.1.0".parse::<IpAddr>().unwrap()],
            [0x0a, 0, 0, 0, 0, 0x0b]
        );
        assert!(after.routes.contains_key(&route), "b still wants the route");
        assert_eq!(
            wanted.desired(),
            Wanted::from_peers(scope(), &[b]).desired()
        );
    }

    #[test]
    fn refusals_are_kept_per_peer() {
        let dup = peer("dup", "10.244.0.0/24", "0a:00:00:00:00:0c", "192.0.2.12");
        let mut wanted = Wanted::from_peers(scope(), &[dup]);
        assert_eq!(wanted.rejected().count(), 1);
        wanted.replace("dup", None);
        assert_eq!(wanted.rejected().count(), 0);
        assert_eq!(wanted.peers(), 0);
    }
}
