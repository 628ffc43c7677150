//! Routed pods (`routed`): each pod's host veth is a link of its own, not a bridge port.
//!
//! ```text
//! pod:  10.244.1.5/24 noprefixroute   default via 10.244.1.1 onlink   neigh 10.244.1.1 -> host veth MAC
//! node: 10.244.1.5/32 dev vethX src 10.244.1.1                        neigh 10.244.1.5 -> pod MAC
//!       cni0 (no ports) holds the gateway addresses 10.244.1.1/24, fd00:..::1/64
//! ```
//!
//! Every packet a pod sends enters the node's IP stack on its host veth and every packet to a pod
//! leaves it there, so netfilter sees all of it once, as routed traffic: Service and hostPort
//! DNAT to a pod of the same node (even the sender itself), NetworkPolicy and masquerade work
//! alike whether br_netfilter is loaded and whatever `bridge-nf-call-iptables` says. (With pods on
//! bridge ports and br_netfilter on, a DNAT back into the bridge is forwarded as a bridged frame,
//! which isolated ports drop and plain ports let bypass routing.) Neighbours are static on both
//! ends, so no ARP or neighbour discovery runs on these links and the host end needs no address;
//! the host end checks sources strictly (`rp_filter` 1), so a pod cannot send as another.

use std::net::IpAddr;

use cni_core::netlink::{Link, Neighbour, Netlink, RouteSpec};
use cni_core::{sysctl, CniResult, IpConfig};
use ipnetwork::IpNetwork;

use crate::error::BridgeError;

/// The route that takes the node's packets for one pod address to its host veth.
fn host_route(ip: &IpConfig, host_veth: u32) -> RouteSpec {
    let address = ip.address.ip();
    RouteSpec {
        dst: IpNetwork::from(address),
        gateway: None,
        oif: host_veth,
        mtu: None,
        priority: None,
        onlink: false,
        // The node's own packets to the pod (kubelet's probes) come from the gateway address,
        // as they would through the bridge.
        source: ip.gateway.filter(|gw| gw.is_ipv4() == address.is_ipv4()),
    }
}

/// Connects both ends once the pod's link has its addresses: the node's route and neighbour
/// entry per pod address, the pod's neighbour entry per gateway, strict source checks.
pub fn connect(
    host_nl: &mut Netlink,
    host_link: &Link,
    pod_nl: &mut Netlink,
    pod_link: &Link,
    ipam: &CniResult,
) -> Result<(), BridgeError> {
    let (Some(pod_mac), Some(host_mac)) = (&pod_link.mac, &host_link.mac) else {
        return Err(BridgeError::BridgeConflict(format!(
            "veth pair {} / {} has no MAC address",
            host_link.name, pod_link.name
        )));
    };
    if ipam.ips.iter().any(|ip| ip.address.is_ipv4()) {
        sysctl::set(
            format!("/proc/sys/net/ipv4/conf/{}/rp_filter", host_link.name),
            "1",
        )?;
    }
    for ip in &ipam.ips {
        host_nl.set_neighbour(
            host_link.index,
            &Neighbour {
                ip: ip.address.ip(),
                mac: pod_mac.clone(),
            },
        )?;
        host_nl.add_route(&host_route(ip, host_link.index))?;
        if let Some(gateway) = ip.gateway {
            pod_nl.set_neighbour(
                pod_link.index,
                &Neighbour {
                    ip: gateway,
                    mac: host_mac.clone(),
                },
            )?;
        }
    }
    Ok(())
}

/// CHECK: the host veth is no bridge port, and the node routes each of the pod's addresses to it.
pub fn check(
    host_nl: &mut Netlink,
    host_link: &Link,
    pod_addresses: &[IpAddr],
) -> Result<(), BridgeError> {
    if let Some(master) = host_link.master {
        return Err(BridgeError::CheckMismatch(format!(
            "host veth {} of a routed pod is a port of link #{master}",
            host_link.name
        )));
    }
    for address in pod_addresses {
        if host_nl.route_to(*address)? != Some(host_link.index) {
            return Err(BridgeError::CheckMismatch(format!(
                "the node does not route {address} to host veth {}",
                host_link.name
            )));
        }
    }
    Ok(())
}
