//! hostPort mappings in nftables, in one table of their own, `inet tether-portmap`:
//!
//! ```text
//! map ports      { type inet_proto . inet_service : verdict }              hostIP "" (any address)
//! map portsany4  { type inet_proto . inet_service : verdict }              hostIP 0.0.0.0
//! map portsany6  { type inet_proto . inet_service : verdict }              hostIP ::
//! map ports4     { type ipv4_addr . inet_proto . inet_service : verdict }  a specific IPv4 hostIP
//! map ports6     { type ipv6_addr . inet_proto . inet_service : verdict }  a specific IPv6 hostIP
//! chain prerouting  { nat hook prerouting  dstnat: jump hostports }
//! chain output      { nat hook output      dstnat: fib daddr type local jump hostports }
//! chain hostports   { ip daddr . meta l4proto . th dport vmap @ports4
//!                     ip6 daddr . meta l4proto . th dport vmap @ports6
//!                     fib daddr type local meta l4proto . th dport vmap @ports
//!                     meta nfproto ipv4 fib daddr type local ... vmap @portsany4
//!                     meta nfproto ipv6 fib daddr type local ... vmap @portsany6 }
//! chain postrouting { nat hook postrouting srcnat: mark & 0x2000 ct status dnat masquerade }
//! chain pm_<hash>   { per attachment: mark what needs SNAT, then dnat to the container }
//! ```
//!
//! A mapping is one map element (commented with its owner, `<network>/<containerID>/<ifname>`)
//! jumping to the attachment's chain, so the rules grow with attachments, not with the packets'
//! path: a lookup per packet whatever the number of mappings. Every change is one atomic batch
//! under a lock; DEL and GC need neither the netns nor prevResult; the last one out removes the
//! table.
//!
//! Which mappings exclude each other follows Kubernetes (a hostPort is the triple hostIP,
//! protocol, port): two mappings of one protocol and port conflict when their addresses meet.
//! `""` covers every address of the node, `0.0.0.0` every IPv4 one, `::` every IPv6 one, and a
//! specific address only itself: so 8080 on every address refuses 8080 on one address (and the
//! other way round), while 8080 on `0.0.0.0` and 8080 on `::` live side by side. ADD reads the
//! table under the lock to decide, so a refusal names the attachment that holds the port.

use std::collections::HashSet;
use std::net::IpAddr;

use cni_core::firewall::build::{
    self, anonymous_set, base_chain, concat, dnat, elements, field, ip_proto, jump, jump_to,
    mapping, meta, number, prefix, rule, text, vmap,
};
use cni_core::firewall::expr::{Expression, MetaKey};
use cni_core::firewall::schema::{Chain, FlushObject};
use cni_core::firewall::stmt::Statement;
use cni_core::firewall::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use cni_core::firewall::{list_table, Batch, Listing, Lock};

use crate::config::{Mapping, PortmapConf, Protocol, Target};
use crate::error::PortmapError;

pub const TABLE: &str = "tether-portmap";
const FAMILY: NfFamily = NfFamily::INet;
const LOCK: &str = "cni-portmap-nft";
const PORTS: &str = "ports";
const PORTS_ANY4: &str = "portsany4";
const PORTS_ANY6: &str = "portsany6";
const PORTS4: &str = "ports4";
const PORTS6: &str = "ports6";
const MAPS: [&str; 5] = [PORTS, PORTS_ANY4, PORTS_ANY6, PORTS4, PORTS6];
const DISPATCH: &str = "hostports";
const CHAIN_PREFIX: &str = "pm_";

/// Who owns a mapping: the comment of its elements.
/// At most 128 bytes: what nftables keeps of a comment.
pub fn owner(network: &str, container_id: &str, ifname: &str) -> String {
    cni_core::config::fit(&format!("{network}/{container_id}/{ifname}"), 128)
}

/// The attachment's chain: a stable name from its network and owner.
pub fn chain_of(owner: &str) -> String {
    let network = owner.split('/').next().unwrap_or_default();
    format!(
        "{}{:016x}",
        network_prefix(network),
        cni_core::names::hash64(owner.bytes())
    )
}

/// The start of the names of a network's attachment chains.
fn network_prefix(network: &str) -> String {
    format!(
        "{CHAIN_PREFIX}{:08x}_",
        cni_core::names::hash32(network.bytes())
    )
}

/// What a removal takes: one attachment (DEL), or every attachment of a network but the valid
/// ones (GC).
pub enum Select<'a> {
    Owner(&'a str),
    AllBut {
        network: &'a str,
        valid: &'a HashSet<String>,
    },
}

impl Select<'_> {
    fn owner(&self, owner: &str) -> bool {
        match self {
            Select::Owner(o) => owner == *o,
            Select::AllBut { network, valid } => {
                owner.starts_with(&format!("{network}/")) && !valid.contains(owner)
            }
        }
    }

    fn chain(&self, name: &str) -> bool {
        match self {
            Select::Owner(o) => name == chain_of(o),
            Select::AllBut { network, valid } => {
                name.starts_with(&network_prefix(network))
                    && !valid.iter().any(|v| chain_of(v) == name)
            }
        }
    }
}

/// One element a mapping puts in a map: which map, and the key.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    map: &'static str,
    key: Expression<'static>,
    /// For messages, conntrack and conflicts: port, protocol, address, family (None: both).
    port: u16,
    protocol: Protocol,
    host_ip: Option<IpAddr>,
    v6: Option<bool>,
}

impl Key {
    /// Whether the addresses, protocol and port of two mappings meet.
    fn overlaps(&self, other: &Key) -> bool {
        self.protocol == other.protocol
            && self.port == other.port
            && (self.v6.is_none() || other.v6.is_none() || self.v6 == other.v6)
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// The addresses, as a message says them.
    fn scope(&self) -> String {
        match (self.host_ip, self.v6) {
            (Some(ip), _) => format!(" on {ip}"),
            (None, Some(false)) => " on 0.0.0.0".into(),
            (None, Some(true)) => " on ::".into(),
            (None, None) => String::new(),
        }
    }
}

fn key_of(m: &Mapping) -> Key {
    let proto = text(m.protocol.as_str());
    let port = number(u32::from(m.host_port));
    let (map, key) = match (m.host_ip, m.family) {
        (None, None) => (PORTS, concat(vec![proto, port])),
        (None, Some(false)) => (PORTS_ANY4, concat(vec![proto, port])),
        (None, Some(true)) => (PORTS_ANY6, concat(vec![proto, port])),
        (Some(ip @ IpAddr::V4(_)), _) => (PORTS4, concat(vec![build::address(ip), proto, port])),
        (Some(ip @ IpAddr::V6(_)), _) => (PORTS6, concat(vec![build::address(ip), proto, port])),
    };
    Key {
        map,
        key,
        port: m.host_port,
        protocol: m.protocol,
        host_ip: m.host_ip,
        v6: m.host_ip.map(|ip| ip.is_ipv6()).or(m.family),
    }
}

/// The tables, maps and base chains every attachment shares (adding them again is a no-op).
fn skeleton(batch: &mut Batch, mark_bit: u32) {
    batch.add(build::table(FAMILY, TABLE));
    for name in [PORTS, PORTS_ANY4, PORTS_ANY6] {
        batch.raw(build::verdict_map(
            FAMILY,
            TABLE,
            name,
            &["inet_proto", "inet_service"],
        ));
    }
    batch.raw(build::verdict_map(
        FAMILY,
        TABLE,
        PORTS4,
        &["ipv4_addr", "inet_proto", "inet_service"],
    ));
    batch.raw(build::verdict_map(
        FAMILY,
        TABLE,
        PORTS6,
        &["ipv6_addr", "inet_proto", "inet_service"],
    ));
    let hooks = [
        ("prerouting", NfChainType::NAT, NfHook::Prerouting, -100),
        ("output", NfChainType::NAT, NfHook::Output, -100),
        ("postrouting", NfChainType::NAT, NfHook::Postrouting, 100),
    ];
    for (name, kind, hook, priority) in hooks {
        batch.add(base_chain(
            FAMILY,
            TABLE,
            name,
            kind,
            hook,
            priority,
            NfChainPolicy::Accept,
        ));
        batch.flush(FlushObject::Chain(chain(name)));
    }
    batch.add(build::chain(FAMILY, TABLE, DISPATCH));
    batch.flush(FlushObject::Chain(chain(DISPATCH)));
    let ports_of = |protos: Vec<Expression<'static>>| {
        concat(
            protos
                .into_iter()
                .chain([meta(MetaKey::L4proto), field("th", "dport")])
                .collect(),
        )
    };
    batch
        .add(rule(
            FAMILY,
            TABLE,
            "prerouting",
            vec![jump(DISPATCH)],
            None,
        ))
        .add(rule(
            FAMILY,
            TABLE,
            "output",
            vec![build::to_local_address(), jump(DISPATCH)],
            None,
        ))
        .add(rule(
            FAMILY,
            TABLE,
            DISPATCH,
            vec![vmap(ports_of(vec![field("ip", "daddr")]), PORTS4)],
            None,
        ))
        .add(rule(
            FAMILY,
            TABLE,
            DISPATCH,
            vec![vmap(ports_of(vec![field("ip6", "daddr")]), PORTS6)],
            None,
        ))
        .add(rule(
            FAMILY,
            TABLE,
            DISPATCH,
            vec![build::to_local_address(), vmap(ports_of(vec![]), PORTS)],
            None,
        ))
        .add(rule(
            FAMILY,
            TABLE,
            DISPATCH,
            vec![
                build::eq(meta(MetaKey::Nfproto), text("ipv4")),
                build::to_local_address(),
                vmap(ports_of(vec![]), PORTS_ANY4),
            ],
            None,
        ))
        .add(rule(
            FAMILY,
            TABLE,
            DISPATCH,
            vec![
                build::eq(meta(MetaKey::Nfproto), text("ipv6")),
                build::to_local_address(),
                vmap(ports_of(vec![]), PORTS_ANY6),
            ],
            None,
        ))
        .add(rule(
            FAMILY,
            TABLE,
            "postrouting",
            vec![
                build::has_mark_bits(1 << mark_bit),
                build::ct_status("dnat"),
                Statement::Masquerade(None),
            ],
            Some("tether-portmap: localhost and hairpin"),
        ));
}

fn chain(name: &str) -> Chain<'static> {
    Chain {
        family: FAMILY,
        table: TABLE.to_string().into(),
        name: name.to_string().into(),
        ..Chain::default()
    }
}

/// The rules of one attachment's chain.
fn attachment_rules(
    conf: &PortmapConf,
    targets: (Option<Target>, Option<Target>),
) -> Vec<Vec<Statement<'static>>> {
    let mut rules = Vec::new();
    for m in &conf.mappings {
        for target in [targets.0, targets.1].into_iter().flatten() {
            let v6 = target.ip().is_ipv6();
            if m.family.is_some_and(|f| f != v6) {
                continue;
            }
            let proto = ip_proto(v6);
            let mut matches = vec![build::eq(
                meta(MetaKey::Nfproto),
                text(if v6 { "ipv6" } else { "ipv4" }),
            )];
            if let Some(ip) = m.host_ip {
                matches.push(build::eq(field(proto, "daddr"), build::address(ip)));
            }
            matches.push(build::eq(meta(MetaKey::L4proto), text(m.protocol.as_str())));
            matches.push(build::eq(
                field("th", "dport"),
                number(u32::from(m.host_port)),
            ));
            if conf.snat {
                // Connections that need the node's address as their source to work: from the
                // node's loopback (IPv4 only: ::1 cannot be routed) and from pods on the same
                // bridge, the container itself included (hairpin).
                let mut sources = vec![prefix(target.subnet())];
                if !v6 {
                    if let Ok(loopback) = "127.0.0.0/8".parse() {
                        sources.push(prefix(loopback));
                    }
                }
                let mut mark = matches.clone();
                mark.push(build::eq(field(proto, "saddr"), anonymous_set(sources)));
                mark.push(build::set_mark_bits(1 << conf.mark_bit));
                rules.push(mark);
            }
            let mut to = matches;
            to.push(dnat(target.ip(), m.container_port));
            rules.push(to);
        }
    }
    rules
}

/// The deletions of every element and chain `select` takes; also whether anything of any
/// attachment is left afterwards.
fn removals(listing: &Listing, select: &Select<'_>, batch: &mut Batch) -> (Vec<Key>, bool) {
    let mut removed = Vec::new();
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
            if let Some(k) = parse_key(name, &key) {
                removed.push(k);
            }
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
        if select.chain(&c.name) {
            batch.flush(FlushObject::Chain(chain(&c.name)));
            batch.delete(build::chain(FAMILY, TABLE, &c.name));
        } else {
            left = true;
        }
    }
    (removed, left)
}

/// Port, protocol and address back out of a listed key.
fn parse_key(map: &'static str, key: &Expression<'static>) -> Option<Key> {
    let Expression::Named(cni_core::firewall::expr::NamedExpression::Concat(parts)) = key else {
        return None;
    };
    let (host_ip, rest) = match map {
        PORTS | PORTS_ANY4 | PORTS_ANY6 => (None, &parts[..]),
        _ => match parts.first()? {
            Expression::String(ip) => (ip.parse().ok(), &parts[1..]),
            _ => return None,
        },
    };
    let protocol = match rest.first()? {
        Expression::String(p) => Protocol::parse(p)?,
        _ => return None,
    };
    let port = match rest.get(1)? {
        Expression::Number(n) => u16::try_from(*n).ok()?,
        _ => return None,
    };
    let v6 = match map {
        PORTS_ANY4 | PORTS4 => Some(false),
        PORTS_ANY6 | PORTS6 => Some(true),
        // Also what 0.0.0.0 and :: mapped to before they had maps of their own: taken as both.
        _ => None,
    };
    Some(Key {
        map,
        key: key.clone(),
        port,
        protocol,
        host_ip,
        v6,
    })
}

/// Who else holds an address, protocol and port one of `keys` covers, if anyone.
fn conflict(listing: &Listing, keys: &[Key], owner: &str) -> Option<PortmapError> {
    for name in MAPS {
        let Some(map) = listing.map(name) else {
            continue;
        };
        for (key, comment, _) in map.elements() {
            if comment.as_deref() == Some(owner) {
                continue;
            }
            let Some(held) = parse_key(name, &key) else {
                continue;
            };
            if let Some(wanted) = keys.iter().find(|k| k.overlaps(&held)) {
                return Some(PortmapError::PortTaken {
                    port: wanted.port,
                    protocol: wanted.protocol.as_str().into(),
                    on: wanted.scope(),
                    owner: format!(
                        "{}{}",
                        comment.unwrap_or_else(|| "another attachment".into()),
                        held.scope()
                    ),
                });
            }
        }
    }
    None
}

/// The commands that put one attachment in place: its chain with its rules, and its elements.
fn attachment_batch(
    owner: &str,
    conf: &PortmapConf,
    targets: (Option<Target>, Option<Target>),
    keys: &[Key],
    batch: &mut Batch,
) {
    let chain_name = chain_of(owner);
    batch.add(build::chain(FAMILY, TABLE, &chain_name));
    batch.flush(FlushObject::Chain(chain(&chain_name)));
    for statements in attachment_rules(conf, targets) {
        batch.add(rule(FAMILY, TABLE, &chain_name, statements, Some(owner)));
    }
    let mut unique: Vec<&Key> = Vec::new();
    for k in keys {
        if !unique.iter().any(|u| u.map == k.map && u.key == k.key) {
            unique.push(k);
        }
    }
    for name in MAPS {
        let these: Vec<Expression<'static>> = unique
            .iter()
            .filter(|k| k.map == name)
            .map(|k| mapping(build::commented(k.key.clone(), owner), jump_to(&chain_name)))
            .collect();
        if !these.is_empty() {
            batch.add(elements(FAMILY, TABLE, name, these));
        }
    }
}

/// Puts the attachment's mappings in place, replacing what it had. Returns the UDP ports
/// mapped (their stale conntrack entries must go).
///
/// Under the lock: the table is read, a mapping another attachment's overlaps is refused (naming
/// it), and one batch writes the shared skeleton when the table is missing or of an earlier
/// layout, removes what this attachment had (a retried ADD) and adds its chain and elements.
pub fn add(
    owner: &str,
    conf: &PortmapConf,
    targets: (Option<Target>, Option<Target>),
) -> Result<Vec<(u16, Option<IpAddr>)>, PortmapError> {
    let keys: Vec<Key> = conf.mappings.iter().map(key_of).collect();
    let _lock = Lock::take(LOCK)?;
    let listing = list_table(FAMILY, TABLE)?;
    if let Some(taken) = conflict(&listing, &keys, owner) {
        return Err(taken);
    }
    let mut batch = Batch::new();
    let current = MAPS.iter().all(|name| listing.map(name).is_some());
    if !current {
        skeleton(&mut batch, conf.mark_bit);
    }
    removals(&listing, &Select::Owner(owner), &mut batch);
    attachment_batch(owner, conf, targets, &keys, &mut batch);
    batch.apply()?;
    Ok(udp_ports(&keys))
}

/// DEL of one attachment. With the mappings the runtime passes again on DEL, its elements and
/// chain go in one nft run, and the table goes when no attachment is left; without them (or
/// when that batch is refused: DEL twice), the table is read and everything of the attachment
/// goes.
pub fn remove_owner(
    owner: &str,
    mappings: &[Mapping],
) -> Result<Vec<(u16, Option<IpAddr>)>, PortmapError> {
    if !mappings.is_empty() {
        let _lock = Lock::take(LOCK)?;
        let keys: Vec<Key> = mappings.iter().map(key_of).collect();
        let chain_name = chain_of(owner);
        let mut batch = Batch::new();
        for name in MAPS {
            let these: Vec<Expression<'static>> = keys
                .iter()
                .filter(|k| k.map == name)
                .map(|k| k.key.clone())
                .collect();
            if !these.is_empty() {
                batch.delete(elements(FAMILY, TABLE, name, these));
            }
        }
        batch.flush(FlushObject::Chain(chain(&chain_name)));
        batch.delete(build::chain(FAMILY, TABLE, &chain_name));
        if batch.apply().is_ok() {
            let others = cni_core::firewall::list_chains(FAMILY, TABLE)?
                .iter()
                .any(|c| c.starts_with(CHAIN_PREFIX));
            if !others {
                let mut drop = Batch::new();
                drop.delete(build::table(FAMILY, TABLE));
                drop.apply()?;
            }
            return Ok(udp_ports(&keys));
        }
    }
    remove(&Select::Owner(owner))
}

fn udp_ports(keys: &[Key]) -> Vec<(u16, Option<IpAddr>)> {
    keys.iter()
        .filter(|k| k.protocol == Protocol::Udp)
        .map(|k| (k.port, k.host_ip))
        .collect()
}

/// Removes every mapping `select` takes, and the table once no attachment is left. Returns
/// the UDP ports that were mapped.
pub fn remove(select: &Select<'_>) -> Result<Vec<(u16, Option<IpAddr>)>, PortmapError> {
    let _lock = Lock::take(LOCK)?;
    let listing = list_table(FAMILY, TABLE)?;
    if !listing.exists {
        return Ok(Vec::new());
    }
    let mut batch = Batch::new();
    let (removed, left) = removals(&listing, select, &mut batch);
    if !left {
        batch = Batch::new();
        batch.delete(build::table(FAMILY, TABLE));
    }
    batch.apply()?;
    Ok(udp_ports(&removed))
}

/// CHECK: every mapping's element jumps to the attachment's chain, which holds its rules.
pub fn check(
    owner: &str,
    conf: &PortmapConf,
    targets: (Option<Target>, Option<Target>),
) -> Result<(), PortmapError> {
    let listing = list_table(FAMILY, TABLE)?;
    let chain_name = chain_of(owner);
    let mismatch = |m: String| Err(PortmapError::CheckMismatch(m));
    if conf.mappings.is_empty() {
        return Ok(());
    }
    if listing.chain(&chain_name).is_none() {
        return mismatch(format!(
            "chain {chain_name} of {owner} is missing from table inet {TABLE}"
        ));
    }
    for m in &conf.mappings {
        let k = key_of(m);
        let found = listing.map(k.map).is_some_and(|map| {
            map.elements().iter().any(|(key, comment, value)| {
                *key == k.key && comment.as_deref() == Some(owner) && *value == jump_to(&chain_name)
            })
        });
        if !found {
            return mismatch(format!(
                "hostPort {}/{} is not mapped to {owner}",
                m.host_port,
                m.protocol.as_str()
            ));
        }
    }
    let expected = attachment_rules(conf, targets).len();
    let present = listing.rules_in(&chain_name).count();
    if present != expected {
        return mismatch(format!(
            "chain {chain_name} holds {present} rules, expected {expected}"
        ));
    }
    Ok(())
}
