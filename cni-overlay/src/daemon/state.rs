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
    pub subnet: IpNetwork,
    pub vtep_mac: String,
    pub underlay_ip: IpAddr,
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
}

impl Desired {
    pub fn entries(&self) -> usize {
        self.neighbours.len() + self.fdb.len() + self.routes.len()
    }
}

/// Desired state for `me`: three entries per other node, or one route with direct routing to a
/// node on the same L2 segment (`underlay_net`).
pub fn desired(peers: &[Peer], me: &str, underlay_net: IpNetwork, direct_routing: bool) -> Desired {
    let mut out = Desired::default();
    for peer in peers.iter().filter(|p| p.node != me) {
        let Some(mac) = cni_core::netlink::parse_mac(&peer.vtep_mac) else {
            tracing::warn!(node = %peer.node, mac = %peer.vtep_mac, "peer has an unreadable VTEP MAC; skipped");
            continue;
        };
        let subnet =
            IpNetwork::new(peer.subnet.network(), peer.subnet.prefix()).unwrap_or(peer.subnet);
        if direct_routing && underlay_net.contains(peer.underlay_ip) {
            out.routes.insert(
                subnet,
                RouteWant {
                    gateway: peer.underlay_ip,
                    via_vxlan: false,
                },
            );
            continue;
        }
        let gateway = subnet.network();
        out.neighbours.insert(gateway, mac.to_vec());
        out.fdb.insert(mac.to_vec(), peer.underlay_ip);
        out.routes.insert(
            subnet,
            RouteWant {
                gateway,
                via_vxlan: true,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, subnet: &str, mac: &str, ip: &str) -> Peer {
        Peer {
            node: node.into(),
            subnet: subnet.parse().unwrap(),
            vtep_mac: mac.into(),
            underlay_ip: ip.parse().unwrap(),
        }
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
