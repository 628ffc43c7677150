//! An attachment's hostPort mappings as elements of the maps of [`crate::table`], written and
//! read over netlink: no `nft` process on ADD, DEL, CHECK or GC once the table exists.
//!
//! A mapping is, per container address it applies to, one element in an address map and one
//! in a port map (same key), commented with its owner `<network>/<containerID>/<ifname>`; with
//! `snat`, the container's address also gets the source ranges whose connections must be
//! masqueraded to work (its own subnet, hairpin and same-bridge pods; `127.0.0.0/8` for IPv4
//! localhost). Every change is one transaction under a lock; DEL and GC need neither the netns
//! nor prevResult; the last one out removes the table.
//!
//! Which mappings exclude each other follows Kubernetes (a hostPort is the triple hostIP,
//! protocol, port): two mappings of one protocol, port and family conflict when their addresses
//! meet. `""` covers every address of the node in each family the container has, `0.0.0.0`
//! every IPv4 one, `::` every IPv6 one, and a specific address only itself: so 8080 on every
//! address refuses 8080 on one address (and the other way round), while 8080 on `0.0.0.0` and
//! 8080 on `::` live side by side. ADD reads the maps under the lock to decide, so a refusal
//! names the attachment that holds the port.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use cni_core::firewall::elements::{self, layout, Change, Data, Element};
use cni_core::firewall::{tables, Lock};
use ipnetwork::IpNetwork;

use crate::config::{PortmapConf, Protocol, Target};
use crate::error::PortmapError;
use crate::legacy;
use crate::table::{self, snat_set, Scope, FAMILY, TABLE};

const LOCK: &str = "cni-portmap-nft";

/// UDP hostPorts (with their hostIP) whose conntrack entries must go.
pub type UdpPorts = Vec<(u16, Option<IpAddr>)>;

/// Who owns a mapping: the comment of its elements.
/// At most 128 bytes: what nftables shows of a comment.
pub fn owner(network: &str, container_id: &str, ifname: &str) -> String {
    cni_core::config::fit(&format!("{network}/{container_id}/{ifname}"), 128)
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
    pub fn owner(&self, owner: &str) -> bool {
        match self {
            Select::Owner(o) => owner == *o,
            Select::AllBut { network, valid } => {
                owner.starts_with(&format!("{network}/")) && !valid.contains(owner)
            }
        }
    }
}

/// A hostPort as the maps key it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    scope: Scope,
    host_ip: Option<IpAddr>,
    protocol: Protocol,
    port: u16,
}

impl Claim {
    fn key(&self) -> Vec<u8> {
        let mut fields = Vec::new();
        if let Some(ip) = self.host_ip {
            fields.push(layout::address(ip));
        }
        fields.push(layout::protocol(self.protocol.number()));
        fields.push(layout::port(self.port));
        layout::concat(&fields)
    }

    /// A key of one of `scope`'s maps read back.
    fn parse(scope: Scope, key: &[u8]) -> Option<Claim> {
        let (host_ip, rest) = if scope.any {
            (None, key)
        } else if scope.v6 {
            let octets: [u8; 16] = key.get(..16)?.try_into().ok()?;
            (Some(IpAddr::from(octets)), &key[16..])
        } else {
            let octets: [u8; 4] = key.get(..4)?.try_into().ok()?;
            (Some(IpAddr::from(octets)), &key[4..])
        };
        Some(Claim {
            scope,
            host_ip,
            protocol: Protocol::from_number(*rest.first()?)?,
            port: u16::from_be_bytes([*rest.get(4)?, *rest.get(5)?]),
        })
    }

    /// Whether two claims take some of the same packets.
    fn meets(&self, other: &Claim) -> bool {
        self.scope.v6 == other.scope.v6
            && self.protocol == other.protocol
            && self.port == other.port
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// The addresses, as a message says them.
    fn scope_text(&self) -> String {
        match (self.host_ip, self.scope.v6) {
            (Some(ip), _) => format!(" on {ip}"),
            (None, false) => " on every IPv4 address".into(),
            (None, true) => " on every IPv6 address".into(),
        }
    }
}

/// One element this attachment wants, with what it is for (for CHECK's message).
struct Wanted {
    set: &'static str,
    element: Element,
    about: String,
}

/// The claims of the attachment: each mapping, in each family it has a container address of.
fn claims(
    conf: &PortmapConf,
    targets: (Option<Target>, Option<Target>),
) -> Vec<(Claim, Target, u16)> {
    let mut out = Vec::new();
    for m in &conf.mappings {
        for target in [targets.0, targets.1].into_iter().flatten() {
            let v6 = target.ip().is_ipv6();
            let applies = match m.host_ip {
                Some(ip) => ip.is_ipv6() == v6,
                None => m.family.is_none_or(|f| f == v6),
            };
            if !applies {
                continue;
            }
            let claim = Claim {
                scope: Scope {
                    v6,
                    any: m.host_ip.is_none(),
                },
                host_ip: m.host_ip,
                protocol: m.protocol,
                port: m.host_port,
            };
            if !out.iter().any(|(c, _, _)| *c == claim) {
                out.push((claim, target, m.container_port));
            }
        }
    }
    out
}

/// Every element the attachment puts in the table.
fn wanted(
    owner: &str,
    conf: &PortmapConf,
    targets: (Option<Target>, Option<Target>),
) -> Vec<Wanted> {
    let mut out = Vec::new();
    for (claim, target, container_port) in claims(conf, targets) {
        let about = format!(
            "hostPort {}/{}{}",
            claim.port,
            claim.protocol.as_str(),
            claim.scope_text()
        );
        out.push(Wanted {
            set: claim.scope.addresses(),
            element: Element::key(claim.key())
                .with_value(layout::address(target.ip()))
                .with_comment(owner),
            about: about.clone(),
        });
        out.push(Wanted {
            set: claim.scope.ports(),
            element: Element::key(claim.key())
                .with_value(layout::lone_port(container_port))
                .with_comment(owner),
            about,
        });
    }
    if conf.snat {
        for target in [targets.0, targets.1].into_iter().flatten() {
            let v6 = target.ip().is_ipv6();
            // Connections that need the node's address as their source to work: from pods on
            // the same bridge, the container itself included (hairpin), and from the node's
            // loopback (IPv4 only: ::1 cannot be routed).
            let mut sources = vec![target.subnet()];
            if !v6 {
                sources.extend("127.0.0.0/8".parse::<IpNetwork>().ok());
            }
            for source in sources {
                let to = layout::address(target.ip());
                out.push(Wanted {
                    set: snat_set(v6),
                    element: Element::key(layout::concat(&[
                        layout::address(source.network()),
                        to.clone(),
                    ]))
                    .with_end(layout::concat(&[layout::address(last(source)), to]))
                    .with_comment(owner),
                    about: format!("the masquerade of {source} to {}", target.ip()),
                });
            }
        }
    }
    out
}

/// The last address of a network.
fn last(net: IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            let mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
            IpAddr::V6((u128::from(n.network()) | mask).into())
        }
    }
}

/// The table's elements as the kernel holds them.
struct Held {
    exists: bool,
    sets: HashMap<&'static str, Vec<Element>>,
}

impl Held {
    /// Every set of the table; `exists` is false when the table (or one of its sets: an
    /// interrupted creation) is missing.
    fn read() -> Result<Held, PortmapError> {
        let mut sets = HashMap::new();
        for name in table::all_sets() {
            match elements::list(FAMILY, TABLE, name)? {
                Some(members) => {
                    sets.insert(name, members);
                }
                None => {
                    return Ok(Held {
                        exists: false,
                        sets,
                    })
                }
            }
        }
        Ok(Held { exists: true, sets })
    }

    fn of(&self, set: &str) -> &[Element] {
        self.sets.get(set).map(Vec::as_slice).unwrap_or_default()
    }

    fn holds(&self, set: &str, element: &Element) -> bool {
        self.of(set).contains(element)
    }

    /// Who else holds what one of `claims` wants, if anyone.
    fn conflict(&self, claims: &[Claim], owner: &str) -> Option<PortmapError> {
        for scope in Scope::ALL {
            for held_element in self.of(scope.addresses()) {
                if held_element.comment.as_deref() == Some(owner) {
                    continue;
                }
                let Some(held) = Claim::parse(scope, &held_element.key) else {
                    continue;
                };
                if let Some(wanted) = claims.iter().find(|c| c.meets(&held)) {
                    return Some(PortmapError::PortTaken {
                        port: wanted.port,
                        protocol: wanted.protocol.as_str().into(),
                        on: wanted.scope_text(),
                        owner: format!(
                            "{}{}",
                            held_element
                                .comment
                                .clone()
                                .unwrap_or_else(|| "another attachment".into()),
                            held.scope_text()
                        ),
                    });
                }
            }
        }
        None
    }

    /// The deletions of every element whose owner `select` takes; the UDP ports they mapped;
    /// whether any element is left afterwards.
    fn removals(&self, select: &Select<'_>) -> (Vec<Change>, UdpPorts, bool) {
        let mut changes = Vec::new();
        let mut udp = Vec::new();
        let mut left = false;
        for name in table::all_sets() {
            let (gone, kept): (Vec<&Element>, Vec<&Element>) = self
                .of(name)
                .iter()
                .partition(|e| e.comment.as_deref().is_some_and(|c| select.owner(c)));
            left |= !kept.is_empty();
            if let Some(scope) = Scope::ALL.into_iter().find(|s| s.addresses() == name) {
                udp.extend(
                    gone.iter()
                        .filter_map(|e| Claim::parse(scope, &e.key))
                        .filter(|c| c.protocol == Protocol::Udp)
                        .map(|c| (c.port, c.host_ip)),
                );
            }
            changes.push(Change {
                set: name.to_string(),
                delete: true,
                elements: gone.into_iter().cloned().collect(),
            });
        }
        (changes, dedup(udp), left)
    }
}

fn dedup(mut ports: UdpPorts) -> UdpPorts {
    ports.sort();
    ports.dedup();
    ports
}

fn udp_ports(claims: &[Claim]) -> UdpPorts {
    dedup(
        claims
            .iter()
            .filter(|c| c.protocol == Protocol::Udp)
            .map(|c| (c.port, c.host_ip))
            .collect(),
    )
}

/// Puts the attachment's mappings in place, replacing what it had. Returns the UDP ports
/// mapped (their stale conntrack entries must go).
///
/// Under the lock: the maps are read (the table made first when missing), a mapping that
/// meets another attachment's is refused (naming it), and one transaction removes what this
/// attachment had that it no longer wants, takes over a masquerade pair an earlier owner of the
/// address left behind, and adds the rest.
pub fn add(
    owner: &str,
    conf: &PortmapConf,
    targets: (Option<Target>, Option<Target>),
) -> Result<UdpPorts, PortmapError> {
    let claims: Vec<Claim> = claims(conf, targets)
        .into_iter()
        .map(|(c, _, _)| c)
        .collect();
    let wanted = wanted(owner, conf, targets);
    let _lock = Lock::take(LOCK)?;
    let mut held = Held::read()?;
    if !held.exists {
        table::create(conf.mark_bit)?;
        held = Held::read()?;
    }
    if let Some(taken) = held.conflict(&claims, owner) {
        return Err(taken);
    }
    let mut deletions = Vec::new();
    for name in table::all_sets() {
        let stale: Vec<Element> = held
            .of(name)
            .iter()
            .filter(|e| {
                let ours = e.comment.as_deref() == Some(owner);
                let wanted_same = wanted
                    .iter()
                    .any(|w| w.set == name && w.element.same_member(e));
                let identical = wanted.iter().any(|w| w.set == name && w.element == **e);
                (ours && !identical) || (!ours && wanted_same)
            })
            .cloned()
            .collect();
        deletions.push(Change {
            set: name.to_string(),
            delete: true,
            elements: stale,
        });
    }
    let mut additions: Vec<Change> = Vec::new();
    for w in &wanted {
        if held.holds(w.set, &w.element) {
            continue;
        }
        match additions.iter_mut().find(|c| c.set == w.set) {
            Some(change) => change.elements.push(w.element.clone()),
            None => additions.push(Change {
                set: w.set.to_string(),
                delete: false,
                elements: vec![w.element.clone()],
            }),
        }
    }
    deletions.extend(additions);
    elements::apply(FAMILY, TABLE, &deletions)?;
    Ok(udp_ports(&claims))
}

/// Removes every mapping `select` takes (in this table and in the table of an earlier
/// layout), and the table once no attachment is left. Returns the UDP ports that were mapped.
pub fn remove(select: &Select<'_>) -> Result<UdpPorts, PortmapError> {
    let _lock = Lock::take(LOCK)?;
    let held = Held::read()?;
    let mut udp = Vec::new();
    if held.exists {
        let (changes, ports, left) = held.removals(select);
        if left {
            elements::apply(FAMILY, TABLE, &changes)?;
        } else {
            tables::delete(FAMILY, TABLE)?;
        }
        udp.extend(ports);
    } else if tables::exists(FAMILY, TABLE)? {
        // A table whose creation was cut short holds no mapping.
        tables::delete(FAMILY, TABLE)?;
    }
    if tables::exists(FAMILY, legacy::TABLE)? {
        udp.extend(legacy::remove(select)?);
    }
    Ok(dedup(udp))
}

/// CHECK: every element the attachment wants is in place, with its owner and value.
pub fn check(
    owner: &str,
    conf: &PortmapConf,
    targets: (Option<Target>, Option<Target>),
) -> Result<(), PortmapError> {
    let wanted = wanted(owner, conf, targets);
    if wanted.is_empty() {
        return Ok(());
    }
    let held = Held::read()?;
    if !held.exists {
        return Err(PortmapError::CheckMismatch(format!(
            "table inet {TABLE} is missing"
        )));
    }
    for w in &wanted {
        if !held.holds(w.set, &w.element) {
            let now = held
                .of(w.set)
                .iter()
                .find(|e| e.same_member(&w.element))
                .map(|e| match (&e.comment, &e.data) {
                    (Some(c), _) if c != owner => format!("held by {c}"),
                    (_, Data::Value(_)) => "mapped elsewhere".to_string(),
                    _ => "changed".to_string(),
                })
                .unwrap_or_else(|| "missing".into());
            return Err(PortmapError::CheckMismatch(format!(
                "{} of {owner}: {now} in map {} of table inet {TABLE}",
                w.about, w.set
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_as_the_claims_they_were() {
        for claim in [
            Claim {
                scope: Scope {
                    v6: false,
                    any: false,
                },
                host_ip: Some("192.0.2.1".parse().unwrap()),
                protocol: Protocol::Udp,
                port: 53,
            },
            Claim {
                scope: Scope {
                    v6: true,
                    any: false,
                },
                host_ip: Some("2001:db8::1".parse().unwrap()),
                protocol: Protocol::Sctp,
                port: 65535,
            },
            Claim {
                scope: Scope {
                    v6: true,
                    any: true,
                },
                host_ip: None,
                protocol: Protocol::Tcp,
                port: 8080,
            },
        ] {
            assert_eq!(Claim::parse(claim.scope, &claim.key()), Some(claim));
        }
    }

    #[test]
    fn the_last_address_of_a_network() {
        let last_of = |s: &str| last(s.parse().unwrap()).to_string();
        assert_eq!(last_of("10.1.0.0/24"), "10.1.0.255");
        assert_eq!(last_of("127.0.0.0/8"), "127.255.255.255");
        assert_eq!(last_of("fd90::/64"), "fd90::ffff:ffff:ffff:ffff");
        assert_eq!(last_of("fd90::5/128"), "fd90::5");
        assert_eq!(last_of("::/0"), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }
}
