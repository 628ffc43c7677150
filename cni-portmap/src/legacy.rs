//! The table of cni-portmap's earlier layout, `inet tether-portmap` (a verdict map per kind of
//! hostIP jumping to a chain per attachment, written by an `nft` process). A node upgraded with
//! pods running keeps it: their hostPorts keep working, and DEL and GC remove their mappings
//! from it (and the table once it is empty), so nothing of it outlives the pods that made it.
//! Nothing new is written to it.

use std::net::IpAddr;

use cni_core::firewall::build::{self, elements};
use cni_core::firewall::expr::{Expression, NamedExpression};
use cni_core::firewall::schema::{Chain, FlushObject};
use cni_core::firewall::types::NfFamily;
use cni_core::firewall::{list_table, Batch};

use crate::config::Protocol;
use crate::error::PortmapError;
use crate::rules::{Select, UdpPorts};

pub const TABLE: &str = "tether-portmap";
const FAMILY: NfFamily = NfFamily::INet;
const MAPS: [&str; 5] = ["ports", "portsany4", "portsany6", "ports4", "ports6"];
const CHAIN_PREFIX: &str = "pm_";

/// The attachment chain's name for `owner`, as the earlier layout named it.
fn chain_of(owner: &str) -> String {
    let network = owner.split('/').next().unwrap_or_default();
    format!(
        "{}{:016x}",
        network_prefix(network),
        cni_core::names::hash64(owner.bytes())
    )
}

fn network_prefix(network: &str) -> String {
    format!(
        "{CHAIN_PREFIX}{:08x}_",
        cni_core::names::hash32(network.bytes())
    )
}

fn takes_chain(select: &Select<'_>, name: &str) -> bool {
    match select {
        Select::Owner(o) => name == chain_of(o),
        Select::AllBut { network, valid } => {
            name.starts_with(&network_prefix(network)) && !valid.iter().any(|v| chain_of(v) == name)
        }
    }
}

fn chain(name: &str) -> Chain<'static> {
    Chain {
        family: FAMILY,
        table: TABLE.to_string().into(),
        name: name.to_string().into(),
        ..Chain::default()
    }
}

/// A UDP mapping's port and address out of a listed key, if it is one.
fn udp_port(map: &str, key: &Expression<'static>) -> Option<(u16, Option<IpAddr>)> {
    let Expression::Named(NamedExpression::Concat(parts)) = key else {
        return None;
    };
    let (host_ip, rest) = match map {
        "ports" | "portsany4" | "portsany6" => (None, &parts[..]),
        _ => match parts.first()? {
            Expression::String(ip) => (ip.parse().ok(), &parts[1..]),
            _ => return None,
        },
    };
    let udp =
        matches!(rest.first()?, Expression::String(p) if Protocol::parse(p) == Some(Protocol::Udp));
    match rest.get(1)? {
        Expression::Number(n) if udp => Some((u16::try_from(*n).ok()?, host_ip)),
        _ => None,
    }
}

/// Removes every mapping `select` takes, and the table once no attachment is left. Returns the
/// UDP ports that were mapped.
pub fn remove(select: &Select<'_>) -> Result<UdpPorts, PortmapError> {
    let listing = list_table(FAMILY, TABLE)?;
    if !listing.exists {
        return Ok(Vec::new());
    }
    let mut batch = Batch::new();
    let mut udp = Vec::new();
    let mut left = false;
    for name in MAPS {
        let Some(map) = listing.map(name) else {
            continue;
        };
        let mut keys = Vec::new();
        for (key, comment, _) in map.elements() {
            if !comment.as_deref().is_some_and(|c| select.owner(c)) {
                left = true;
                continue;
            }
            udp.extend(udp_port(name, &key));
            keys.push(key);
        }
        if !keys.is_empty() {
            batch.delete(elements(FAMILY, TABLE, name, keys));
        }
    }
    for c in listing
        .chains
        .iter()
        .filter(|c| c.name.starts_with(CHAIN_PREFIX))
    {
        if takes_chain(select, &c.name) {
            batch.flush(FlushObject::Chain(chain(&c.name)));
            batch.delete(build::chain(FAMILY, TABLE, &c.name));
        } else {
            left = true;
        }
    }
    if !left {
        batch = Batch::new();
        batch.delete(build::table(FAMILY, TABLE));
    }
    batch.apply()?;
    Ok(udp)
}
