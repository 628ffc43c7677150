//! Masquerade and MAC-spoof rules in nftables, in Tether's own tables.
//!
//! Masquerade is per network subnet: one base chain per (network, subnet) with one rule, matching
//! source addresses in the network's set. Each attachment is an element of that set, commented with
//! `<containerID>/<ifname>`, so DEL can remove exactly its own state even without the netns or a
//! prevResult; when the set empties, its chains and the set go too, and the table with them once
//! nothing is left in it. Every change is one atomic batch, and changes are serialized by a lock.

use std::collections::HashSet;

use cni_core::firewall::build::{
    self, base_chain, commented, elements, field, prefix, rule, rule_handle, set, set_ref, text,
};
use cni_core::firewall::expr::MetaKey;
use cni_core::firewall::schema::{SetType, SetTypeValue};
use cni_core::firewall::stmt::Statement;
use cni_core::firewall::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use cni_core::firewall::{list_table, Batch, Lock};
use cni_core::names::identifier;
use ipnetwork::IpNetwork;

use crate::error::BridgeError;

const INET_TABLE: &str = "tether";
const LOCK: &str = "cni-bridge-nft";
/// `srcnat`.
const SRCNAT: i32 = 100;

fn set_name(network: &str, v4: bool) -> String {
    format!("masq{}_{}", if v4 { 4 } else { 6 }, identifier(network))
}

fn chain_name(network: &str, subnet: &IpNetwork) -> String {
    format!("masq_{}", identifier(&format!("{network} {subnet}")))
}

/// An attachment's name in comments, at most 128 bytes (what nftables keeps of a comment).
pub fn owner(container_id: &str, ifname: &str) -> String {
    cni_core::config::fit(&format!("{container_id}/{ifname}"), COMMENT_MAX)
}

const COMMENT_MAX: usize = 128;

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
    let fam = NfFamily::INet;
    let mut batch = Batch::new();
    batch.add(build::table(fam, INET_TABLE));
    for addr in addresses {
        let v4 = addr.is_ipv4();
        let set_name = set_name(network, v4);
        let subnet = IpNetwork::new(addr.network(), addr.prefix()).unwrap_or(*addr);
        let chain = chain_name(network, &subnet);
        let (proto, kind, multicast) = if v4 {
            ("ip", SetType::Ipv4Addr, "224.0.0.0/4")
        } else {
            ("ip6", SetType::Ipv6Addr, "ff00::/8")
        };
        let multicast: IpNetwork = multicast.parse().unwrap_or(subnet);
        batch
            .add(set(
                fam,
                INET_TABLE,
                &set_name,
                SetTypeValue::Single(kind),
                &[],
            ))
            // The element takes this attachment's name even when it is already there: an
            // earlier owner of the address whose DEL was cut short left it behind, and its
            // retried DEL (or a GC) removes the elements carrying its name. Adding first makes
            // the delete valid whether or not the element existed; the batch is atomic.
            .add(elements(
                fam,
                INET_TABLE,
                &set_name,
                vec![text(addr.ip().to_string())],
            ))
            .delete(elements(
                fam,
                INET_TABLE,
                &set_name,
                vec![text(addr.ip().to_string())],
            ))
            .add(elements(
                fam,
                INET_TABLE,
                &set_name,
                vec![commented(text(addr.ip().to_string()), owner)],
            ))
            .add(base_chain(
                fam,
                INET_TABLE,
                &chain,
                NfChainType::NAT,
                NfHook::Postrouting,
                SRCNAT,
                NfChainPolicy::Accept,
            ))
            .flush(cni_core::firewall::schema::FlushObject::Chain(
                chain_object(fam, &chain),
            ))
            .add(rule(
                fam,
                INET_TABLE,
                &chain,
                vec![
                    build::eq(field(proto, "saddr"), prefix(subnet)),
                    build::eq(field(proto, "saddr"), set_ref(&set_name)),
                    build::ne(field(proto, "daddr"), prefix(subnet)),
                    build::ne(field(proto, "daddr"), prefix(multicast)),
                    Statement::Masquerade(None),
                ],
                Some(&cni_core::config::fit(
                    &format!("tether-bridge {network}"),
                    COMMENT_MAX,
                )),
            ));
    }
    let _lock = lock()?;
    batch.apply().map_err(BridgeError::Nftables)
}

fn chain_object(fam: NfFamily, name: &str) -> cni_core::firewall::schema::Chain<'static> {
    cni_core::firewall::schema::Chain {
        family: fam,
        table: INET_TABLE.to_string().into(),
        name: name.to_string().into(),
        ..Default::default()
    }
}

fn lock() -> Result<Lock, BridgeError> {
    Lock::take(LOCK).map_err(BridgeError::Nftables)
}

/// Removes the attachments' elements that `remove` selects; drops chains and sets of the network
/// that are left empty, and the table when nothing at all is left in it.
fn prune_masquerade(network: &str, remove: impl Fn(&str) -> bool) -> Result<(), BridgeError> {
    let fam = NfFamily::INet;
    let _lock = lock()?;
    let listing = list_table(fam, INET_TABLE).map_err(BridgeError::Nftables)?;
    let mut batch = Batch::new();
    let mut dropped_sets = HashSet::new();
    let mut dropped_chains = HashSet::new();
    for v4 in [true, false] {
        let set_name = set_name(network, v4);
        let Some(found) = listing.set(&set_name) else {
            continue;
        };
        let listed = build::listed_elements(found.elem.as_deref());
        let doomed: Vec<_> = listed
            .iter()
            .filter(|(_, comment)| comment.as_deref().is_none_or(&remove))
            .map(|(value, _)| value.clone())
            .collect();
        if doomed.len() == listed.len() {
            // Nothing of this family is left: the chains whose rule uses the set go with it.
            for chain in listing.chains_using(&set_name) {
                batch.delete(build::chain(fam, INET_TABLE, &chain));
                dropped_chains.insert(chain);
            }
            batch.delete(build::set(
                fam,
                INET_TABLE,
                &set_name,
                found.set_type.clone(),
                &[],
            ));
            dropped_sets.insert(set_name);
        } else if !doomed.is_empty() {
            batch.delete(elements(fam, INET_TABLE, &set_name, doomed));
        }
    }
    let empty_after = listing.exists
        && listing
            .sets
            .iter()
            .all(|s| dropped_sets.contains(s.name.as_ref()))
        && listing.maps.is_empty()
        && listing
            .chains
            .iter()
            .all(|c| dropped_chains.contains(c.name.as_ref()));
    if empty_after {
        batch = Batch::new();
        batch.delete(build::table(fam, INET_TABLE));
    }
    batch.apply().map_err(BridgeError::Nftables)
}

pub fn remove_masquerade(network: &str, owner: &str) -> Result<(), BridgeError> {
    prune_masquerade(network, |comment| comment == owner)
}

pub fn gc_masquerade(network: &str, valid: &HashSet<String>) -> Result<(), BridgeError> {
    prune_masquerade(network, |comment| !valid.contains(comment))
}

/// CHECK: each address is in its family's masquerade set under this attachment's name, and the
/// chain of its subnet uses that set.
pub fn check_masquerade(
    network: &str,
    owner: &str,
    addresses: &[IpNetwork],
) -> Result<(), BridgeError> {
    let listing = list_table(NfFamily::INet, INET_TABLE).map_err(BridgeError::Nftables)?;
    for addr in addresses {
        let set_name = set_name(network, addr.is_ipv4());
        let ip = text(addr.ip().to_string());
        let listed = listing
            .set(&set_name)
            .map(|found| build::listed_elements(found.elem.as_deref()))
            .unwrap_or_default();
        if !listed
            .iter()
            .any(|(value, comment)| *value == ip && comment.as_deref() == Some(owner))
        {
            return Err(BridgeError::CheckMismatch(format!(
                "{} is not in nftables set inet {INET_TABLE} {set_name} under {owner} (masquerade)",
                addr.ip()
            )));
        }
        let subnet = IpNetwork::new(addr.network(), addr.prefix()).unwrap_or(*addr);
        let chain = chain_name(network, &subnet);
        if !listing.chains_using(&set_name).contains(&chain) {
            return Err(BridgeError::CheckMismatch(format!(
                "the masquerade rule for {subnet} (chain inet {INET_TABLE} {chain}) is missing"
            )));
        }
    }
    Ok(())
}

// ---- MAC spoof check ----

const BRIDGE_TABLE: &str = "tether";
const SPOOF_CHAIN: &str = "spoofcheck";

fn spoof_comment(network: &str, owner: &str) -> String {
    cni_core::config::fit(&format!("tether-bridge {network} {owner}"), COMMENT_MAX)
}

/// Drops frames entering the bridge from `host_veth` with a source MAC other than the pod's.
pub fn add_spoofcheck(
    network: &str,
    owner: &str,
    host_veth: &str,
    mac: &str,
) -> Result<(), BridgeError> {
    let fam = NfFamily::Bridge;
    let _lock = lock()?;
    let comment = spoof_comment(network, owner);
    let mut batch = spoof_removals(|c| c == comment, false)?;
    batch
        .add(build::table(fam, BRIDGE_TABLE))
        .add(base_chain(
            fam,
            BRIDGE_TABLE,
            SPOOF_CHAIN,
            NfChainType::Filter,
            NfHook::Prerouting,
            -200,
            NfChainPolicy::Accept,
        ))
        .add(rule(
            fam,
            BRIDGE_TABLE,
            SPOOF_CHAIN,
            vec![
                build::eq(build::meta(MetaKey::Iifname), text(host_veth)),
                build::ne(field("ether", "saddr"), text(mac)),
                Statement::Drop(None),
            ],
            Some(&comment),
        ));
    batch.apply().map_err(BridgeError::Nftables)
}

/// The deletions of every spoof-check rule whose comment `remove` selects; with `drop_table`,
/// the deletion of the whole table instead when no rule would be left in it.
fn spoof_removals(remove: impl Fn(&str) -> bool, drop_table: bool) -> Result<Batch, BridgeError> {
    let fam = NfFamily::Bridge;
    let listing = list_table(fam, BRIDGE_TABLE).map_err(BridgeError::Nftables)?;
    let mut batch = Batch::new();
    let (doomed, kept): (Vec<_>, Vec<_>) = listing
        .rules_in(SPOOF_CHAIN)
        .partition(|r| r.comment.as_deref().is_some_and(&remove));
    if drop_table && listing.exists && kept.is_empty() && !doomed.is_empty() {
        batch.delete(build::table(fam, BRIDGE_TABLE));
        return Ok(batch);
    }
    for r in &doomed {
        if let Some(handle) = r.handle {
            batch.delete(rule_handle(fam, BRIDGE_TABLE, SPOOF_CHAIN, handle));
        }
    }
    Ok(batch)
}

pub fn remove_spoofcheck(network: &str, owner: &str) -> Result<(), BridgeError> {
    let _lock = lock()?;
    let comment = spoof_comment(network, owner);
    spoof_removals(|c| c == comment, true)?
        .apply()
        .map_err(BridgeError::Nftables)
}

pub fn gc_spoofcheck(network: &str, valid: &HashSet<String>) -> Result<(), BridgeError> {
    let _lock = lock()?;
    let prefix = format!("tether-bridge {network} ");
    let keep: HashSet<String> = valid.iter().map(|o| spoof_comment(network, o)).collect();
    spoof_removals(|c| c.starts_with(&prefix) && !keep.contains(c), true)?
        .apply()
        .map_err(BridgeError::Nftables)
}

/// CHECK: the attachment's spoof-check rule is in place.
pub fn check_spoofcheck(network: &str, owner: &str) -> Result<(), BridgeError> {
    let listing = list_table(NfFamily::Bridge, BRIDGE_TABLE).map_err(BridgeError::Nftables)?;
    let comment = spoof_comment(network, owner);
    if listing
        .rules_in(SPOOF_CHAIN)
        .any(|r| r.comment.as_deref() == Some(comment.as_str()))
    {
        Ok(())
    } else {
        Err(BridgeError::CheckMismatch(format!(
            "the MAC spoof-check rule \"{comment}\" is missing from bridge {BRIDGE_TABLE} {SPOOF_CHAIN}"
        )))
    }
}
