//! The shape of cni-portmap's table, `inet tether-hostports`, and the one transaction that
//! creates it (the first mapping on a node; every mapping after it is elements only):
//!
//! ```text
//! map addr4    { type ipv4_addr . inet_proto . inet_service : ipv4_addr }     one IPv4 hostIP
//! map port4    { type ipv4_addr . inet_proto . inet_service : inet_service }
//! map anyaddr4 { type inet_proto . inet_service : ipv4_addr }                 "" or 0.0.0.0
//! map anyport4 { type inet_proto . inet_service : inet_service }
//! (addr6, port6, anyaddr6, anyport6 alike for IPv6; "" or :: for the last two)
//! set snat4    { type ipv4_addr . ipv4_addr; flags interval }   sources . container to masquerade
//! set snat6    { type ipv6_addr . ipv6_addr; flags interval }
//! chain prerouting  { nat hook prerouting  dstnat: jump hostports }
//! chain output      { nat hook output      dstnat: fib daddr type local jump hostports }
//! chain hostports   { ip daddr . meta l4proto . th dport @addr4 meta mark set mark | M
//!                     dnat ip to ip daddr . meta l4proto . th dport map @addr4 : ... map @port4
//!                     meta nfproto ipv4 fib daddr type local meta l4proto . th dport @anyaddr4
//!                         meta mark set mark | M
//!                     meta nfproto ipv4 fib daddr type local dnat ip to ... map @anyaddr4 : ...
//!                     (and IPv6) }
//! chain postrouting { nat hook postrouting srcnat:
//!                     mark & M == M ct status dnat ip saddr . ip daddr @snat4 masquerade
//!                     (and IPv6) }
//! ```
//!
//! A packet meets a lookup per map whatever the number of mappings. The address and the port
//! sit in two maps with one key because nft 1.0.6 cannot read a map with a concatenated value
//! from JSON; both are written in one transaction, so they never disagree.

use cni_core::firewall::build::{
    self, base_chain, concat, dnat_by_maps, eq, field, ip_proto, jump, meta, rule, set_ref, text,
};
use cni_core::firewall::expr::{Expression, MetaKey};
use cni_core::firewall::schema::{Chain, FlushObject, SetFlag, SetType, SetTypeValue};
use cni_core::firewall::stmt::Statement;
use cni_core::firewall::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use cni_core::firewall::{Batch, FirewallError};

pub const TABLE: &str = "tether-hostports";
pub const FAMILY: NfFamily = NfFamily::INet;
const DISPATCH: &str = "hostports";

/// Which maps a mapping lands in: its family, and whether it names one address of the node or
/// all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    pub v6: bool,
    pub any: bool,
}

impl Scope {
    pub const ALL: [Scope; 4] = [
        Scope {
            v6: false,
            any: false,
        },
        Scope {
            v6: true,
            any: false,
        },
        Scope {
            v6: false,
            any: true,
        },
        Scope {
            v6: true,
            any: true,
        },
    ];

    /// The map from the key to the container's address.
    pub fn addresses(self) -> &'static str {
        match (self.any, self.v6) {
            (false, false) => "addr4",
            (false, true) => "addr6",
            (true, false) => "anyaddr4",
            (true, true) => "anyaddr6",
        }
    }

    /// The map from the key to the container's port.
    pub fn ports(self) -> &'static str {
        match (self.any, self.v6) {
            (false, false) => "port4",
            (false, true) => "port6",
            (true, false) => "anyport4",
            (true, true) => "anyport6",
        }
    }
}

/// The set of (source range . container address) pairs whose connections are masqueraded.
pub fn snat_set(v6: bool) -> &'static str {
    if v6 {
        "snat6"
    } else {
        "snat4"
    }
}

/// Every set and map of the table.
pub fn all_sets() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Scope::ALL
        .iter()
        .flat_map(|s| [s.addresses(), s.ports()])
        .collect();
    out.extend([snat_set(false), snat_set(true)]);
    out
}

fn address_type(v6: bool) -> &'static str {
    if v6 {
        "ipv6_addr"
    } else {
        "ipv4_addr"
    }
}

/// The packet's key for the maps of `scope`.
fn key(scope: Scope) -> Expression<'static> {
    let mut parts = Vec::new();
    if !scope.any {
        parts.push(field(ip_proto(scope.v6), "daddr"));
    }
    parts.extend([meta(MetaKey::L4proto), field("th", "dport")]);
    concat(parts)
}

fn chain(name: &str) -> Chain<'static> {
    Chain {
        family: FAMILY,
        table: TABLE.to_string().into(),
        name: name.to_string().into(),
        ..Chain::default()
    }
}

/// Creates the table, its maps, sets and chains (again: a no-op for what exists; the chains'
/// rules are written afresh), in one transaction over netlink.
pub fn create(mark_bit: u32) -> Result<(), FirewallError> {
    batch(mark_bit).apply()
}

/// The commands that create the table (see [`create`]).
pub fn batch(mark_bit: u32) -> Batch {
    let mark = 1u32 << mark_bit;
    let mut batch = Batch::new();
    batch.add(build::table(FAMILY, TABLE));
    for scope in Scope::ALL {
        let mut key_types = Vec::new();
        if !scope.any {
            key_types.push(address_type(scope.v6));
        }
        key_types.extend(["inet_proto", "inet_service"]);
        batch.raw(build::value_map(
            FAMILY,
            TABLE,
            scope.addresses(),
            &key_types,
            address_type(scope.v6),
        ));
        batch.raw(build::value_map(
            FAMILY,
            TABLE,
            scope.ports(),
            &key_types,
            "inet_service",
        ));
    }
    for v6 in [false, true] {
        let kind = if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        };
        batch.add(build::set(
            FAMILY,
            TABLE,
            snat_set(v6),
            SetTypeValue::Concatenated(vec![kind, kind].into()),
            &[SetFlag::Interval],
        ));
    }
    let hooks = [
        ("prerouting", NfHook::Prerouting, -100),
        ("output", NfHook::Output, -100),
        ("postrouting", NfHook::Postrouting, 100),
    ];
    for (name, hook, priority) in hooks {
        batch.add(base_chain(
            FAMILY,
            TABLE,
            name,
            NfChainType::NAT,
            hook,
            priority,
            NfChainPolicy::Accept,
        ));
        batch.flush(FlushObject::Chain(chain(name)));
    }
    batch.add(build::chain(FAMILY, TABLE, DISPATCH));
    batch.flush(FlushObject::Chain(chain(DISPATCH)));
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
        ));
    for scope in Scope::ALL {
        // "" and 0.0.0.0 / :: take the node's own addresses only, of the packet's family.
        let guard: Vec<Statement<'static>> = if scope.any {
            vec![
                eq(
                    meta(MetaKey::Nfproto),
                    text(if scope.v6 { "ipv6" } else { "ipv4" }),
                ),
                build::to_local_address(),
            ]
        } else {
            Vec::new()
        };
        let mut marked = guard.clone();
        marked.push(eq(key(scope), set_ref(scope.addresses())));
        marked.push(build::set_mark_bits(mark));
        let mut translated = guard;
        translated.push(dnat_by_maps(
            scope.v6,
            key(scope),
            scope.addresses(),
            scope.ports(),
        ));
        batch
            .add(rule(FAMILY, TABLE, DISPATCH, marked, None))
            .add(rule(FAMILY, TABLE, DISPATCH, translated, None));
    }
    for v6 in [false, true] {
        let proto = ip_proto(v6);
        batch.add(rule(
            FAMILY,
            TABLE,
            "postrouting",
            vec![
                build::has_mark_bits(mark),
                build::ct_status("dnat"),
                eq(
                    concat(vec![field(proto, "saddr"), field(proto, "daddr")]),
                    set_ref(snat_set(v6)),
                ),
                Statement::Masquerade(None),
            ],
            Some("tether-portmap: localhost and hairpin"),
        ));
    }
    batch
}
