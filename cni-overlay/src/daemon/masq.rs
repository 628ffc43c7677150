//! Masquerade for traffic leaving the cluster: from this node's pod subnet to anything outside
//! the cluster CIDR. Never between pods, never between nodes' pod subnets.

use super::config::ClusterCidrs;
use super::state::NodeSubnets;
use super::DaemonError;

const TABLE: &str = "tether-overlay";

/// Replaces the node's masquerade rules in one atomic batch (idempotent): one rule per family.
pub fn apply(own: NodeSubnets, clusters: ClusterCidrs) -> Result<(), DaemonError> {
    let mut batch = format!(
        "add table inet {TABLE}\n\
         add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {TABLE} postrouting\n\
         add rule inet {TABLE} postrouting ip saddr {} ip daddr != {} ip daddr != 224.0.0.0/4 masquerade comment \"tether-overlay egress\"\n",
        own.v4, clusters.v4
    );
    if let (Some(subnet), Some(cluster)) = (own.v6, clusters.v6) {
        batch.push_str(&format!(
            "add rule inet {TABLE} postrouting ip6 saddr {subnet} ip6 daddr != {cluster} ip6 daddr != ff00::/8 masquerade comment \"tether-overlay egress\"\n"
        ));
    }
    cni_core::nft::apply(&batch).map_err(|e| DaemonError::Kernel(e.to_string()))
}

pub fn remove() -> Result<(), DaemonError> {
    if cni_core::nft::list_table("inet", TABLE)
        .map_err(|e| DaemonError::Kernel(e.to_string()))?
        .is_empty()
    {
        return Ok(());
    }
    cni_core::nft::apply(&format!("delete table inet {TABLE}\n"))
        .map_err(|e| DaemonError::Kernel(e.to_string()))
}
