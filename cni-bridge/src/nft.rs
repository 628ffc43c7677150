//! Masquerade and MAC-spoof rules in nftables, in Tether's own tables.
//!
//! Masquerade is per network subnet: one base chain per (network, subnet) with one rule, matching
//! source addresses in the network's set. Each attachment is an element of that set, commented with
//! `<containerID>/<ifname>`, so DEL can remove exactly its own state even without the netns or a
//! prevResult; when the set empties, the chains and set go too. Every change is one `nft -f` batch,
//! which the kernel applies atomically, and changes are serialized by a lock file.

use std::collections::HashSet;
use std::path::Path;

use cni_core::fsutil::FileLock;
use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::error::BridgeError;

const INET_TABLE: &str = "tether";
const LOCK_DIR: &str = "/run/tether";
fn apply(batch: &str) -> Result<(), BridgeError> {
    cni_core::nft::apply(batch).map_err(|e| BridgeError::Nftables(e.to_string()))
}

fn list_table(family: &str, table: &str) -> Result<Vec<Value>, BridgeError> {
    cni_core::nft::list_table(family, table).map_err(|e| BridgeError::Nftables(e.to_string()))
}

fn lock() -> Result<FileLock, BridgeError> {
    std::fs::create_dir_all(LOCK_DIR)
        .map_err(|e| BridgeError::Nftables(format!("creating {LOCK_DIR}: {e}")))?;
    let path = Path::new(LOCK_DIR).join("cni-bridge-nft.lock");
    FileLock::exclusive(&path)
        .map_err(|e| BridgeError::Nftables(format!("locking {}: {e}", path.display())))
}

/// nft identifiers allow only letters, digits and `_` here; a short hash of the exact name keeps
/// networks whose names differ only in punctuation apart.
fn identifier(text: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let clean: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("{clean}_{hash:08x}")
}

fn set_name(network: &str, v4: bool) -> String {
    format!("masq{}_{}", if v4 { 4 } else { 6 }, identifier(network))
}

fn chain_name(network: &str, subnet: &IpNetwork) -> String {
    format!("masq_{}", identifier(&format!("{network} {subnet}")))
}

pub fn owner(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// Masquerades traffic from `addresses` (pod addresses with their subnet prefix) to anything
/// outside their subnet.
pub fn add_masquerade(
    network: &str,
    owner: &str,
    addresses: &[IpNetwork],
) -> Result<(), BridgeError> {
    if addresses.is_empty() {
        return Ok(());
    }
    let mut batch = format!("add table inet {INET_TABLE}\n");
    for addr in addresses {
        let v4 = addr.is_ipv4();
        let set = set_name(network, v4);
        let subnet = IpNetwork::new(addr.network(), addr.prefix()).unwrap_or(*addr);
        let chain = chain_name(network, &subnet);
        let (fam, addr_type, multicast) = if v4 {
            ("ip", "ipv4_addr", "224.0.0.0/4")
        } else {
            ("ip6", "ipv6_addr", "ff00::/8")
        };
        batch.push_str(&format!(
            "add set inet {INET_TABLE} {set} {{ type {addr_type}; }}\n\
             add element inet {INET_TABLE} {set} {{ {ip} comment \"{owner}\" }}\n\
             add chain inet {INET_TABLE} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
             flush chain inet {INET_TABLE} {chain}\n\
             add rule inet {INET_TABLE} {chain} {fam} saddr {subnet} {fam} saddr @{set} {fam} daddr != {subnet} {fam} daddr != {multicast} masquerade comment \"tether-bridge {network}\"\n",
            ip = addr.ip(),
        ));
    }
    let _lock = lock()?;
    apply(&batch)
}

/// Removes the attachments' elements that `remove` selects; drops chains and sets of the network
/// that are left empty.
fn prune_masquerade(network: &str, remove: impl Fn(&str) -> bool) -> Result<(), BridgeError> {
    let _lock = lock()?;
    let objects = list_table("inet", INET_TABLE)?;
    let mut batch = String::new();
    for v4 in [true, false] {
        let set = set_name(network, v4);
        let Some(found) = objects
            .iter()
            .find_map(|o| o.get("set").filter(|s| s["name"] == set.as_str()))
        else {
            continue;
        };
        let elements: Vec<(String, Option<String>)> = found["elem"]
            .as_array()
            .map(|elems| elems.iter().filter_map(element).collect())
            .unwrap_or_default();
        let doomed: Vec<&String> = elements
            .iter()
            .filter(|(_, comment)| comment.as_deref().is_none_or(&remove))
            .map(|(value, _)| value)
            .collect();
        if doomed.len() == elements.len() {
            // Nothing of this family is left: the chains whose rule uses the set go with it.
            let reference = format!("\"@{set}\"");
            let mut chains: Vec<&str> = objects
                .iter()
                .filter_map(|o| o.get("rule"))
                .filter(|r| r.to_string().contains(&reference))
                .filter_map(|r| r["chain"].as_str())
                .collect();
            chains.dedup();
            for chain in chains {
                batch.push_str(&format!("delete chain inet {INET_TABLE} {chain}\n"));
            }
            batch.push_str(&format!("delete set inet {INET_TABLE} {set}\n"));
        } else if !doomed.is_empty() {
            let list: Vec<&str> = doomed.iter().map(|s| s.as_str()).collect();
            batch.push_str(&format!(
                "delete element inet {INET_TABLE} {set} {{ {} }}\n",
                list.join(", ")
            ));
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    apply(&batch)
}

fn element(value: &Value) -> Option<(String, Option<String>)> {
    match value {
        Value::String(s) => Some((s.clone(), None)),
        Value::Object(obj) => {
            let inner = obj.get("elem")?;
            Some((
                inner["val"].as_str()?.to_string(),
                inner["comment"].as_str().map(str::to_string),
            ))
        }
        _ => None,
    }
}

pub fn remove_masquerade(network: &str, owner: &str) -> Result<(), BridgeError> {
    prune_masquerade(network, |comment| comment == owner)
}

pub fn gc_masquerade(network: &str, valid: &HashSet<String>) -> Result<(), BridgeError> {
    prune_masquerade(network, |comment| !valid.contains(comment))
}

// ---- MAC spoof check ----

const BRIDGE_TABLE: &str = "tether";
const SPOOF_CHAIN: &str = "spoofcheck";

fn spoof_comment(network: &str, owner: &str) -> String {
    format!("tether-bridge {network} {owner}")
}

/// Drops frames entering the bridge from `host_veth` with a source MAC other than the pod's.
pub fn add_spoofcheck(
    network: &str,
    owner: &str,
    host_veth: &str,
    mac: &str,
) -> Result<(), BridgeError> {
    let _lock = lock()?;
    remove_spoof_rules(|comment| comment == spoof_comment(network, owner))?;
    apply(&format!(
        "add table bridge {BRIDGE_TABLE}\n\
         add chain bridge {BRIDGE_TABLE} {SPOOF_CHAIN} {{ type filter hook prerouting priority -200; policy accept; }}\n\
         add rule bridge {BRIDGE_TABLE} {SPOOF_CHAIN} iifname \"{host_veth}\" ether saddr != {mac} drop comment \"{}\"\n",
        spoof_comment(network, owner)
    ))
}

fn remove_spoof_rules(remove: impl Fn(&str) -> bool) -> Result<(), BridgeError> {
    let objects = list_table("bridge", BRIDGE_TABLE)?;
    let batch: String = objects
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["comment"].as_str().is_some_and(&remove))
        .filter_map(|r| r["handle"].as_u64())
        .map(|handle| format!("delete rule bridge {BRIDGE_TABLE} {SPOOF_CHAIN} handle {handle}\n"))
        .collect();
    if batch.is_empty() {
        return Ok(());
    }
    apply(&batch)
}

pub fn remove_spoofcheck(network: &str, owner: &str) -> Result<(), BridgeError> {
    let _lock = lock()?;
    let comment = spoof_comment(network, owner);
    remove_spoof_rules(|c| c == comment)
}

pub fn gc_spoofcheck(network: &str, valid: &HashSet<String>) -> Result<(), BridgeError> {
    let _lock = lock()?;
    let prefix = format!("tether-bridge {network} ");
    remove_spoof_rules(|c| c.strip_prefix(&prefix).is_some_and(|o| !valid.contains(o)))
}
