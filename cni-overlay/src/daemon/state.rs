//! What the kernel should hold for a set of peers: pure computation, no I/O.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// One node as the datastore knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    pub node: String,
    /// The node's IPv4 pod subnet.
    pub subnet: IpNetwork,
    /// Its IPv6 pod subnet, on dual-stack clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_v6: Option<IpNetwork>,
    pub vtep_mac: String,
    pub underlay_ip: IpAddr,
}

impl Peer {
    /// The node's pod subnets, IPv4 first, without host bits.
    pub fn subnets(&self) -> Vec<IpNetwork> {
        std::iter::once(self.subnet)
            .chain(self.subnet_v6)
            .filter_map(|s| IpNetwork::new(s.network(), s.prefix()).ok())
            .collect()
    }
}

/// What changed among the peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Anything: read them all again.
    All,
    /// These nodes, with what they are now (`None`: no longer a peer).
    Peers(Vec<(String, Option<Peer>)>),
}

/// What this node publishes about itself.
pub struct Vtep<'a> {
    pub node: &'a str,
    pub mac: &'a str,
    pub underlay_ip: IpAddr,
}

/// This node's pod subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSubnets {
    pub v4: IpNetwork,
    pub v6: Option<IpNetwork>,
}

impl NodeSubnets {
    pub fn all(&self) -> Vec<IpNetwork> {
        std::iter::once(self.v4).chain(self.v6).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteWant {
    pub gateway: IpAddr,
    /// Over the VXLAN device (onlink) or straight over the underlay (direct routing).
    pub via_vxlan: bool,
}

/// The kernel entries this node wants for its peers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Remote VTEP address (the remote subnet's network address) -> remote VTEP MAC.
    pub neighbours: BTreeMap<IpAddr, Vec<u8>>,
    /// Remote VTEP MAC -> remote underlay address.
    pub fdb: BTreeMap<Vec<u8>, IpAddr>,
    pub routes: BTreeMap<IpNetwork, RouteWant>,
    /// Peers (or their subnets) refused before the kernel saw them: node name and why.
    pub rejected: Vec<(String, String)>,
}

impl Desired {
    pub fn entries(&self) -> usize {
        self.neighbours.len() + self.fdb.len() + self.routes.len()
    }
}

/// Everything about this node that shapes the entries it wants for its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub me: String,
    /// The networks the underlay interface reaches without a router (its addresses' prefixes,
    /// as the kernel holds them): direct routing applies to peers inside them.
    pub on_link: Vec<IpNetwork>,
    pub direct_routing: bool,
    /// This node's own pod subnets: a peer subnet overlapping one is refused.
    pub own: Vec<IpNetwork>,
    /// The cluster CIDRs: a peer subnet outside them is refused (when given).
    pub clusters: Vec<IpNetwork>,
}

/// The entries one peer asks for, and why any of its subnets are refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PeerEntries {
    pub neighbours: Vec<(IpAddr, Vec<u8>)>,
    pub fdb: Vec<(Vec<u8>, IpAddr)>,
    pub routes: Vec<(IpNetwork, RouteWant)>,
    pub rejected: Vec<String>,
}

/// What `peer` asks of this node: a neighbour entry per pod subnet (the subnet's network
/// address -> the node's VTEP MAC), one FDB entry (VTEP MAC -> underlay address) and an onlink
/// route per pod subnet. With direct routing, a subnet of the underlay's family on a node this
/// node's underlay reaches without a router (the same L2 segment, as the kernel's connected
/// networks say) gets a plain route via that node's underlay address; nodes beyond a router keep
/// VXLAN. A subnet that overlaps
/// this node's own would take over its local pod route, and one outside the cluster CIDRs is not
/// the overlay's: both are refused.
pub fn peer_entries(peer: &Peer, scope: &Scope) -> PeerEntries {
    let mut out = PeerEntries::default();
    if peer.node == scope.me {
        return out;
    }
    let Some(mac) = cni_core::netlink::parse_mac(&peer.vtep_mac) else {
        tracing::warn!(node = %peer.node, mac = %peer.vtep_mac, "peer has an unreadable VTEP MAC; skipped");
        return out;
    };
    let overlaps = |a: &IpNetwork, b: &IpNetwork| {
        a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
    };
    for subnet in peer.subnets() {
        if let Some(mine) = scope.own.iter().find(|o| overlaps(o, &subnet)) {
            out.rejected.push(format!(
                "its pod subnet {subnet} overlaps this node's own {mine}"
            ));
            continue;
        }
        let mut family = scope
            .clusters
            .iter()
            .filter(|c| c.is_ipv4() == subnet.is_ipv4())
            .peekable();
        if family.peek().is_some()
            && !family.any(|c| c.contains(subnet.network()) && subnet.prefix() >= c.prefix())
        {
            out.rejected.push(format!(
                "its pod subnet {subnet} is outside the cluster CIDR"
            ));
            continue;
        }
        let direct = scope.direct_routing
            && scope.on_link.iter().any(|n| n.contains(peer.underlay_ip))
            && peer.underlay_ip.is_ipv4() == subnet.is_ipv4();
        if direct {
            let want = RouteWant {
                gateway: peer.underlay_ip,
                via_vxlan: false,
            };
            out.routes.push((subnet, want));
            continue;
        }
        let gateway = subnet.network();
        out.neighbours.push((gateway, mac.to_vec()));
        if !out.fdb.iter().any(|(m, _)| m[..] == mac[..]) {
            out.fdb.push((mac.to_vec(), peer.underlay_ip));
        }
        let want = RouteWant {
            gateway,
            via_vxlan: true,
        };
        out.routes.push((subnet, want));
    }
    // Kept for as long as the peer is: no room for growth (a vector's first push makes room
    // for four), which at thousands of peers is most of the daemon's memory.
    out.neighbours.shrink_to_fit();
    out.fdb.shrink_to_fit();
    out.routes.shrink_to_fit();
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Desired state for `me` and `peers` (see [`peer_entries`]), whole, as the daemon's wanted
    /// entries build it.
    pub fn desired(
        peers: &[Peer],
        me: &str,
        underlay_net: IpNetwork,
        direct_routing: bool,
    ) -> Desired {
        desired_within(peers, me, underlay_net, direct_routing, &[], &[])
    }

    /// [`desired`], refusing peer subnets that overlap `own` or lie outside `clusters` (when given).
    pub fn desired_within(
        peers: &[Peer],
        me: &str,
        underlay_net: IpNetwork,
        direct_routing: bool,
        own: &[IpNetwork],
        clusters: &[IpNetwork],
    ) -> Desired {
        let scope = Scope {
            me: me.to_string(),
            on_link: vec![underlay_net],
            direct_routing,
            own: own.to_vec(),
            clusters: clusters.to_vec(),
        };
        crate::daemon::wanted::Wanted::from_peers(scope, peers).desired()
    }

    pub(crate) fn peer(node: &str, subnet: &str, mac: &str, ip: &str) -> Peer {
        Peer {
            node: node.into(),
            subnet: subnet.parse().unwrap(),
            subnet_v6: None,
            vtep_mac: mac.into(),
            underlay_ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn dual_stack_peers_get_entries_for_both_families() {
        let mut b = peer("b", "10.244.1.0/24", "0a:00:00:00:00:0b", "192.0.2.11");
        b.subnet_v6 = Some("fd00:244:0:1::/64".parse().unwrap());
        let d = desired(&[b.clone()], "a", "192.0.2.0/24".parse().unwrap(), false);
        assert_eq!(d.neighbours.len(), 2);
        assert_eq!(d.fdb.len(), 1, "one VTEP, one FDB entry");
        assert_eq!(d.routes.len(), 2);
        let v6 = &d.routes[&"fd00:244:0:1::/64".parse().unwrap()];
        assert_eq!(v6.gateway, "fd00:244:0:1::".parse::<IpAddr>().unwrap());
        assert!(v6.via_vxlan);
        // Direct routing over an IPv4 underlay cannot carry the IPv6 subnet: that stays on VXLAN.
        let d = desired(&[b], "a", "192.0.2.0/24".parse().unwrap(), true);
        assert!(!d.routes[&"10.244.1.0/24".parse().unwrap()].via_vxlan);
        assert!(d.routes[&"fd00:244:0:1::/64".parse().unwrap()].via_vxlan);
        assert_eq!(d.neighbours.len(), 1);
    }

    #[test]
    fn registrations_without_an_ipv6_subnet_still_parse() {
        let old = r#"{"node":"b","subnet":"10.244.1.0/24","vtepMac":"0a:00:00:00:00:0b","underlayIp":"192.0.2.11"}"#;
        let peer: Peer = serde_json::from_str(old).unwrap();
        assert_eq!(peer.subnet_v6, None);
        assert!(!serde_json::to_string(&peer).unwrap().contains("subnetV6"));
    }

    #[test]
    fn three_entries_per_other_node() {
        let peers = [
            peer("a", "10.244.0.0/24", "0a:00:00:00:00:0a", "192.0.2.10"),
            peer("b", "10.244.1.0/24", "0a:00:00:00:00:0b", "192.0.2.11"),
            peer("c", "10.244.2.0/24", "0a:00:00:00:00:0c", "198.51.100.12"),
        ];
        let d = desired(&peers, "a", "192.0.2.0/24".parse().unwrap(), false);
        assert_eq!(d.entries(), 6);
        assert_eq!(
            d.neighbours[&"10.244.1.0".parse::<IpAddr>().unwrap()],
            [0x0a, 0, 0, 0, 0, 0x0b]
        );
        assert_eq!(
            d.fdb[&vec![0x0a, 0, 0, 0, 0, 0x0c]],
            "198.51.100.12".parse::<IpAddr>().unwrap()
        );
        let r = &d.routes[&"10.244.2.0/24".parse().unwrap()];
        assert_eq!(r.gateway, "10.244.2.0".parse::<IpAddr>().unwrap());
        assert!(r.via_vxlan);
    }

    #[test]
    fn direct_routing_only_on_the_same_segment() {
        let peers = [
            peer("b", "10.244.1.0/24", "0a:00:00:00:00:0b", "192.0.2.11"),
            peer("c", "10.244.2.0/24", "0a:00:00:00:00:0c", "198.51.100.12"),
        ];
        let d = desired(&peers, "a", "192.0.2.0/24".parse().unwrap(), true);
        let direct = &d.routes[&"10.244.1.0/24".parse().unwrap()];
        assert_eq!(direct.gateway, "192.0.2.11".parse::<IpAddr>().unwrap());
        assert!(!direct.via_vxlan);
        assert_eq!(
            d.neighbours.len(),
            1,
            "only the remote-segment node uses VXLAN"
        );
    }

    #[test]
    fn subnets_overlapping_our_own_or_outside_the_cluster_are_refused() {
        let peers = [
            peer("b", "10.244.1.0/24", "0a:00:00:00:00:0b", "192.0.2.11"),
            peer("dup", "10.244.0.0/24", "0a:00:00:00:00:0c", "192.0.2.12"),
            peer("far", "10.99.0.0/24", "0a:00:00:00:00:0d", "192.0.2.13"),
        ];
        let d = desired_within(
            &peers,
            "a",
            "192.0.2.0/24".parse().unwrap(),
            false,
            &["10.244.0.0/24".parse().unwrap()],
            &["10.244.0.0/16".parse().unwrap()],
        );
        assert_eq!(d.routes.len(), 1, "only b's subnet");
        let names: Vec<&str> = d.rejected.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["dup", "far"]);
    }

    #[test]
    fn bad_macs_are_skipped() {
        let d = desired(
            &[peer("b", "10.244.1.0/24", "nonsense", "192.0.2.11")],
            "a",
            "192.0.2.0/24".parse().unwrap(),
            false,
        );
        assert_eq!(d.entries(), 0);
    }
}
