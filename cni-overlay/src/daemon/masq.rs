//! Masquerade for traffic leaving the cluster: from this node's pod subnet to anything outside
//! the cluster CIDR. Never between pods, never between nodes' pod subnets.

use cni_core::firewall::build::{self, base_chain, field, ip_proto, prefix, rule};
use cni_core::firewall::schema::{Chain, FlushObject};
use cni_core::firewall::stmt::Statement;
use cni_core::firewall::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use cni_core::firewall::{list_table, Batch};
use ipnetwork::IpNetwork;

use super::config::ClusterCidrs;
use super::error::DaemonError;
use super::state::NodeSubnets;

pub const TABLE: &str = "tether-overlay";
const CHAIN: &str = "postrouting";
const SRCNAT: i32 = 100;

/// Replaces the node's masquerade rules in one atomic batch (idempotent): one rule per family.
pub fn apply(own: NodeSubnets, clusters: ClusterCidrs) -> Result<(), DaemonError> {
    let fam = NfFamily::INet;
    let mut batch = Batch::new();
    batch
        .add(build::table(fam, TABLE))
        .add(base_chain(
            fam,
            TABLE,
            CHAIN,
            NfChainType::NAT,
            NfHook::Postrouting,
            SRCNAT,
            NfChainPolicy::Accept,
        ))
        .flush(FlushObject::Chain(Chain {
            family: fam,
            table: TABLE.into(),
            name: CHAIN.into(),
            ..Chain::default()
        }));
    let mut families = vec![(own.v4, clusters.v4, "224.0.0.0/4")];
    if let (Some(subnet), Some(cluster)) = (own.v6, clusters.v6) {
        families.push((subnet, cluster, "ff00::/8"));
    }
    for (subnet, cluster, multicast) in families {
        let proto = ip_proto(subnet.is_ipv6());
        let multicast: IpNetwork = multicast.parse().unwrap_or(cluster);
        batch.add(rule(
            fam,
            TABLE,
            CHAIN,
            vec![
                build::eq(field(proto, "saddr"), prefix(subnet)),
                build::ne(field(proto, "daddr"), prefix(cluster)),
                build::ne(field(proto, "daddr"), prefix(multicast)),
                Statement::Masquerade(None),
            ],
            Some("tether-overlay egress"),
        ));
    }
    Ok(batch.apply()?)
}

pub fn remove() -> Result<(), DaemonError> {
    if !list_table(NfFamily::INet, TABLE)?.exists {
        return Ok(());
    }
    let mut batch = Batch::new();
    batch.delete(build::table(NfFamily::INet, TABLE));
    Ok(batch.apply()?)
}
