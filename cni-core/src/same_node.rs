//! What the node's br_netfilter setting and the ports of its pod bridge mean for traffic between
//! two pods of the node: whether it reaches the node's IP hooks (where kube-proxy's Service NAT
//! and tether-netpol's policy table work), and whether a DNAT back into the bridge survives.
//!
//! Routed pods (cni-bridge's `routed`, cni-overlay's default) are no bridge ports: all of their
//! traffic is routed by the node, and nothing here concerns them. Bridge ports are another
//! matter:
//! - a plain port with br_netfilter off (`bridge-nf-call-iptables`/`ip6tables` = 0, or the module
//!   absent): traffic between two such pods is bridged past the IP hooks, so policies and
//!   Services do not see it;
//! - an isolated port (cni-bridge's `portIsolation`) with br_netfilter on: a DNAT whose new
//!   destination is another pod of the bridge (a Service backend or hostPort of the same node,
//!   hairpin included) is forwarded by br_netfilter as a bridged frame between two isolated
//!   ports, which the bridge drops.
//!
//! (A `bridge` family table is no substitute for policies: without nf_conntrack_bridge it has no
//! connection tracking, so replies could not be told from new connections.)

use std::fmt;
use std::path::Path;

const BRIDGE_NF: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// Some ports of a bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports {
    pub bridge: String,
    pub names: Vec<String>,
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} port(s) of {} ({})",
            self.names.len(),
            self.bridge,
            self.names.join(", ")
        )
    }
}

/// Pods whose traffic to each other skips the IP hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bypass {
    /// Why br_netfilter does not hand bridged traffic over.
    pub br_netfilter: String,
    /// The bridge's ports that are not isolated.
    pub open_ports: Ports,
}

impl fmt::Display for Bypass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, and {} are not isolated",
            self.br_netfilter, self.open_ports
        )
    }
}

/// Pods whose DNATed traffic to another pod of the node is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnatDropped {
    pub isolated_ports: Ports,
}

impl fmt::Display for DnatDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "br_netfilter hands bridged traffic to the IP hooks and {} are isolated: a Service or \
             hostPort connection from one of those pods to a pod of this node is dropped; \
             recreate them as routed pods (cni-overlay's default)",
            self.isolated_ports
        )
    }
}

/// Ok when traffic between any two pods of `bridge` reaches the IP hooks: br_netfilter is on,
/// or no port of the bridge is a plain one (a node without the bridge has no such traffic yet).
pub fn reaches_ip_hooks(bridge: &str) -> Result<(), Bypass> {
    let Err(br_netfilter) = br_netfilter() else {
        return Ok(());
    };
    let (open, _) = ports(bridge);
    if open.names.is_empty() {
        return Ok(());
    }
    Err(Bypass {
        br_netfilter,
        open_ports: open,
    })
}

/// Ok unless br_netfilter is on and some ports of `bridge` are isolated.
pub fn dnat_survives(bridge: &str) -> Result<(), DnatDropped> {
    if br_netfilter().is_err() {
        return Ok(());
    }
    let (_, isolated) = ports(bridge);
    if isolated.names.is_empty() {
        return Ok(());
    }
    Err(DnatDropped {
        isolated_ports: isolated,
    })
}

/// The plain and the isolated ports of `bridge`.
fn ports(bridge: &str) -> (Ports, Ports) {
    let (open, isolated) = split_ports(&Path::new("/sys/class/net").join(bridge).join("brif"));
    let named = |names| Ports {
        bridge: bridge.to_string(),
        names,
    };
    (named(open), named(isolated))
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

/// Ports under `brif` (the bridge's sysfs directory of ports): the plain ones and the isolated
/// ones, each sorted.
fn split_ports(brif: &Path) -> (Vec<String>, Vec<String>) {
    let Ok(ports) = std::fs::read_dir(brif) else {
        return (Vec::new(), Vec::new());
    };
    let mut open = Vec::new();
    let mut isolated = Vec::new();
    for port in ports.filter_map(Result::ok) {
        let name = port.file_name().to_string_lossy().into_owned();
        match std::fs::read_to_string(port.path().join("isolated")) {
            Ok(flag) if flag.trim() == "1" => isolated.push(name),
            _ => open.push(name),
        }
    }
    open.sort();
    isolated.sort();
    (open, isolated)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_are_told_apart_by_their_isolation_flag() {
        let dir = tempfile::tempdir().unwrap();
        for (port, isolated) in [("veth1", "1\n"), ("veth2", "0\n")] {
            std::fs::create_dir(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("isolated"), isolated).unwrap();
        }
        std::fs::create_dir(dir.path().join("old-kernel")).unwrap();
        let (open, isolated) = split_ports(dir.path());
        assert_eq!(open, ["old-kernel", "veth2"]);
        assert_eq!(isolated, ["veth1"]);
        assert_eq!(split_ports(&dir.path().join("missing")), (vec![], vec![]));
    }
}
