//! Masquerade for traffic leaving the cluster: from this node's pod subnet to anything outside
//! the cluster CIDR. Never between pods, never between nodes' pod subnets.

use ipnetwork::IpNetwork;

use super::DaemonError;

const TABLE: &str = "tether-overlay";

/// Replaces the node's masquerade rules in one atomic batch (idempotent).
pub fn apply(own_subnet: IpNetwork, cluster: IpNetwork) -> Result<(), DaemonError> {
    cni_core::nft::apply(&format!(
        "add table inet {TABLE}\n\
         add chain inet {TABLE} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
         flush chain inet {TABLE} postrouting\n\
         add rule inet {TABLE} postrouting ip saddr {own_subnet} ip daddr != {cluster} ip daddr != 224.0.0.0/4 masquerade comment \"tether-overlay egress\"\n"
    ))
    .map_err(|e| DaemonError::Kernel(e.to_string()))
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
