//! Whether traffic between two pods of this node reaches the `inet` table at all.
//!
//! Between two ports of one bridge, a packet is bridged, and the `inet` hooks see it only when
//! br_netfilter hands bridged traffic to them (`bridge-nf-call-iptables`/`ip6tables` = 1). With
//! cni-bridge's `portIsolation` (cni-overlay's default) the pods' ports are isolated and the
//! pods route their subnet via the gateway, so that traffic is routed by the node and the
//! `forward` hook sees it without br_netfilter. A `bridge` family table is no substitute: without
//! nf_conntrack_bridge it has no connection tracking, so replies could not be told from new
//! connections.

use std::path::Path;

const BRIDGE_NF: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// Ok when every pod of `bridge` is policed: br_netfilter is on, or every port of the bridge is
/// isolated (a node without the bridge has no same-node traffic yet).
pub fn policed(bridge: &str) -> Result<(), String> {
    let br_netfilter = br_netfilter();
    if br_netfilter.is_ok() {
        return Ok(());
    }
    let open = open_ports(
        Path::new("/sys/class/net")
            .join(bridge)
            .join("brif")
            .as_path(),
    );
    if open.is_empty() {
        return Ok(());
    }
    let why = br_netfilter.err().unwrap_or_default();
    Err(format!(
        "{why}, and {} port(s) of {bridge} are not isolated ({}): traffic between those pods bypasses NetworkPolicies; use cni-bridge's portIsolation or br_netfilter",
        open.len(),
        open.join(", ")
    ))
}

fn br_netfilter() -> Result<(), String> {
    for path in BRIDGE_NF {
        match cni_core::sysctl::get(path).as_deref() {
            Some("1") => {}
            Some(value) => return Err(format!("{path} is {value}")),
            None => return Err(format!("br_netfilter is not loaded ({path} is missing)")),
        }
    }
    Ok(())
}

/// Ports under `brif` (the bridge's sysfs directory of ports) that are not isolated.
fn open_ports(brif: &Path) -> Vec<String> {
    let Ok(ports) = std::fs::read_dir(brif) else {
        return Vec::new();
    };
    let mut open: Vec<String> = ports
        .filter_map(Result::ok)
        .filter(|port| {
            std::fs::read_to_string(port.path().join("isolated"))
                .map(|v| v.trim() != "1")
                .unwrap_or(true)
        })
        .map(|port| port.file_name().to_string_lossy().into_owned())
        .collect();
    open.sort();
    open
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_without_isolation_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (port, isolated) in [("veth1", "1\n"), ("veth2", "0\n")] {
            std::fs::create_dir(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("isolated"), isolated).unwrap();
        }
        std::fs::create_dir(dir.path().join("old-kernel")).unwrap();
        assert_eq!(open_ports(dir.path()), ["old-kernel", "veth2"]);
        assert!(open_ports(&dir.path().join("missing")).is_empty());
    }
}
