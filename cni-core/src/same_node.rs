//! Whether traffic between two pods of one node's bridge reaches the node's IP hooks (where
//! kube-proxy's Service NAT and tether-netpol's policy table work).
//!
//! Between two ports of one bridge, a packet is bridged, and the `inet` hooks see it only when
//! br_netfilter hands bridged traffic to them (`bridge-nf-call-iptables`/`ip6tables` = 1). With
//! cni-bridge's `portIsolation` (cni-overlay's default) the pods' ports are isolated and the
//! pods route their subnet via the gateway, so that traffic is routed by the node and the IP
//! hooks see it without br_netfilter. (A `bridge` family table is no substitute for policies:
//! without nf_conntrack_bridge it has no connection tracking, so replies could not be told from
//! new connections.)

use std::fmt;
use std::path::Path;

const BRIDGE_NF: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// Pods whose traffic to each other skips the IP hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bypass {
    /// Why br_netfilter does not hand bridged traffic over.
    pub br_netfilter: String,
    pub bridge: String,
    /// The bridge's ports that are not isolated.
    pub open_ports: Vec<String>,
}

impl fmt::Display for Bypass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, and {} port(s) of {} are not isolated ({})",
            self.br_netfilter,
            self.open_ports.len(),
            self.bridge,
            self.open_ports.join(", ")
        )
    }
}

/// Ok when traffic between any two pods of `bridge` reaches the IP hooks: br_netfilter is on,
/// or every port of the bridge is isolated (a node without the bridge has no such traffic yet).
pub fn reaches_ip_hooks(bridge: &str) -> Result<(), Bypass> {
    let Err(br_netfilter) = br_netfilter() else {
        return Ok(());
    };
    let open_ports = open_ports(&Path::new("/sys/class/net").join(bridge).join("brif"));
    if open_ports.is_empty() {
        return Ok(());
    }
    Err(Bypass {
        br_netfilter,
        bridge: bridge.to_string(),
        open_ports,
    })
}

fn br_netfilter() -> Result<(), String> {
    for path in BRIDGE_NF {
        match crate::sysctl::get(path).as_deref() {
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
