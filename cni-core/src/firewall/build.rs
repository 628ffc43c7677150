//! Short constructors for the `nftables` schema types, so that rule code reads like the rule.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use nftables::expr::{
    Elem, Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, Element, NfListObject, Rule, Set, SetFlag, SetTypeValue, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

fn s<'a>(text: impl Into<String>) -> Cow<'a, str> {
    Cow::Owned(text.into())
}

/// The word nft uses for a family on its command line.
pub fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

pub fn table(family: NfFamily, name: &str) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family,
        name: s(name),
        handle: None,
    })
}

/// A regular chain (a jump target).
pub fn chain(family: NfFamily, table: &str, name: &str) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: s(table),
        name: s(name),
        ..Chain::default()
    })
}

/// A base chain on `hook` at `priority`.
pub fn base_chain(
    family: NfFamily,
    table: &str,
    name: &str,
    kind: NfChainType,
    hook: NfHook,
    priority: i32,
    policy: NfChainPolicy,
) -> NfListObject<'static> {
    NfListObject::Chain(Chain {
        family,
        table: s(table),
        name: s(name),
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(priority),
        policy: Some(policy),
        ..Chain::default()
    })
}

/// A named set of `kind` elements (`ipv4_addr`, a concatenation, ...).
pub fn set(
    family: NfFamily,
    table: &str,
    name: &str,
    kind: SetTypeValue<'static>,
    flags: &[SetFlag],
) -> NfListObject<'static> {
    NfListObject::Set(Box::new(Set {
        family,
        table: s(table),
        name: s(name),
        set_type: kind,
        flags: (!flags.is_empty()).then(|| flags.iter().copied().collect::<HashSet<_>>()),
        ..Set::default()
    }))
}

/// Elements of a named set or map (for `add` and `delete`).
pub fn elements(
    family: NfFamily,
    table: &str,
    set: &str,
    elements: Vec<Expression<'static>>,
) -> NfListObject<'static> {
    NfListObject::Element(Element {
        family,
        table: s(table),
        name: s(set),
        elem: Cow::Owned(elements),
    })
}

/// A set element with a comment (the owner, so that DEL can find its own elements).
pub fn commented(value: Expression<'static>, comment: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Elem(Elem {
        val: Box::new(value),
        timeout: None,
        expires: None,
        comment: Some(s(comment)),
        counter: None,
    }))
}

/// A rule appended to `chain`.
pub fn rule(
    family: NfFamily,
    table: &str,
    chain: &str,
    statements: Vec<Statement<'static>>,
    comment: Option<&str>,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
        table: s(table),
        chain: s(chain),
        expr: Cow::Owned(statements),
        comment: comment.map(s),
        ..Rule::default()
    })
}

/// A rule named by its handle (for `delete`).
pub fn rule_handle(
    family: NfFamily,
    table: &str,
    chain: &str,
    handle: u32,
) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family,
        table: s(table),
        chain: s(chain),
        handle: Some(handle),
        ..Rule::default()
    })
}

/// A header field: `field("ip", "saddr")`, `field("tcp", "dport")`.
pub fn field(protocol: &str, name: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: s(protocol),
            field: s(name),
        },
    )))
}

pub fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// A conntrack key without direction: `ct("state")`, `ct("status")`.
pub fn ct(key: &str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: s(key),
        family: None,
        dir: None,
    }))
}

pub fn text(value: impl Into<String>) -> Expression<'static> {
    Expression::String(s(value))
}

pub fn number(value: u32) -> Expression<'static> {
    Expression::Number(value)
}

pub fn address(ip: IpAddr) -> Expression<'static> {
    text(ip.to_string())
}

/// A network as a prefix (host bits dropped).
pub fn prefix(net: IpNetwork) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(address(net.network())),
        len: u32::from(net.prefix()),
    }))
}

/// A reference to named set or map `name`.
pub fn set_ref(name: &str) -> Expression<'static> {
    text(format!("@{name}"))
}

/// An anonymous set: `{ a, b }`.
pub fn anonymous_set(items: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(
        items
            .into_iter()
            .map(nftables::expr::SetItem::Element)
            .collect(),
    ))
}

pub fn concat(parts: Vec<Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Concat(parts))
}

pub fn is(
    left: Expression<'static>,
    op: Operator,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

pub fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    is(left, Operator::EQ, right)
}

pub fn ne(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    is(left, Operator::NEQ, right)
}

/// The `ip`/`ip6` protocol word for an address family.
pub fn ip_proto(ipv6: bool) -> &'static str {
    if ipv6 {
        "ip6"
    } else {
        "ip"
    }
}

/// Whether `statement` mentions the string `needle` anywhere (a set reference, say).
pub fn mentions(statement: &Statement<'_>, needle: &str) -> bool {
    serde_json::to_value(statement)
        .map(|v| contains_string(&v, needle))
        .unwrap_or(false)
}

fn contains_string(value: &serde_json::Value, needle: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s == needle,
        serde_json::Value::Array(items) => items.iter().any(|v| contains_string(v, needle)),
        serde_json::Value::Object(map) => map.values().any(|v| contains_string(v, needle)),
        _ => false,
    }
}

/// The value and comment of each element of a listed set (`elem` as nft lists it).
pub fn listed_elements(
    elements: Option<&[Expression<'_>]>,
) -> Vec<(Expression<'static>, Option<String>)> {
    let owned = |e: &Expression<'_>| -> Expression<'static> {
        serde_json::to_value(e)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or(Expression::Boolean(false))
    };
    elements
        .into_iter()
        .flatten()
        .map(|e| match e {
            Expression::Named(NamedExpression::Elem(elem)) => (
                owned(&elem.val),
                elem.comment.as_ref().map(|c| c.to_string()),
            ),
            other => (owned(other), None),
        })
        .collect()
}

/// `fib daddr type local`: the packet is addressed to this node.
pub fn to_local_address() -> Statement<'static> {
    use nftables::expr::{Fib, FibFlag, FibResult};
    eq(
        Expression::Named(NamedExpression::Fib(Fib {
            result: FibResult::Type,
            flags: [FibFlag::Daddr].into_iter().collect(),
        })),
        text("local"),
    )
}

/// `<key> vmap @<map>`: jump to whatever verdict the map holds for the key.
pub fn vmap(key: Expression<'static>, map: &str) -> Statement<'static> {
    Statement::VerdictMap(nftables::stmt::VerdictMap {
        key,
        data: set_ref(map),
    })
}

/// A verdict that jumps to `chain` (a verdict map's value).
pub fn jump_to(chain: &str) -> Expression<'static> {
    Expression::Verdict(nftables::expr::Verdict::Jump(nftables::stmt::JumpTarget {
        target: s(chain),
    }))
}

/// `jump <chain>` as a statement.
pub fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(nftables::stmt::JumpTarget { target: s(chain) })
}

/// A map element: `key : value`.
pub fn mapping(key: Expression<'static>, value: Expression<'static>) -> Expression<'static> {
    Expression::List(vec![key, value])
}
/// `dnat ip to <key> map @<addresses> : <key> map @<ports>` (or `ip6`): the address and the
/// port looked up by one key in two maps; no element, no translation (the rule falls through).
pub fn dnat_by_maps(
    v6: bool,
    key: Expression<'static>,
    addresses: &str,
    ports: &str,
) -> Statement<'static> {
    use nftables::expr::Map;
    use nftables::stmt::{NATFamily, NAT};
    let lookup = |map: &str| {
        Expression::Named(NamedExpression::Map(Box::new(Map {
            key: key.clone(),
            data: set_ref(map),
        })))
    };
    Statement::DNAT(Some(NAT {
        addr: Some(lookup(addresses)),
        family: Some(if v6 { NATFamily::IP6 } else { NATFamily::IP }),
        port: Some(lookup(ports)),
        flags: None,
    }))
}

/// `dnat ip to <ip>:<port>` (`ip6` for an IPv6 address).
pub fn dnat(ip: IpAddr, port: u16) -> Statement<'static> {
    use nftables::stmt::{NATFamily, NAT};
    Statement::DNAT(Some(NAT {
        addr: Some(address(ip)),
        family: Some(if ip.is_ipv4() {
            NATFamily::IP
        } else {
            NATFamily::IP6
        }),
        port: Some(number(u32::from(port))),
        flags: None,
    }))
}

/// `meta mark set meta mark | <bits>`.
pub fn set_mark_bits(bits: u32) -> Statement<'static> {
    use nftables::expr::BinaryOperation;
    Statement::Mangle(nftables::stmt::Mangle {
        key: meta(MetaKey::Mark),
        value: Expression::BinaryOperation(Box::new(BinaryOperation::OR(vec![
            meta(MetaKey::Mark),
            number(bits),
        ]))),
    })
}

/// `meta mark & <bits> == <bits>`.
pub fn has_mark_bits(bits: u32) -> Statement<'static> {
    use nftables::expr::BinaryOperation;
    eq(
        Expression::BinaryOperation(Box::new(BinaryOperation::AND(
            meta(MetaKey::Mark),
            number(bits),
        ))),
        number(bits),
    )
}

/// `ct status <flag>` (a flag test, not an equality).
pub fn ct_status(flag: &str) -> Statement<'static> {
    is(ct("status"), Operator::IN, text(flag))
}

/// `verb` (`flush`, `delete`) of the named set, or with `map` the named map, as
/// libnftables-json(5) spells it (one spelling for both kinds of object).
pub fn set_command(
    verb: &str,
    family: NfFamily,
    table: &str,
    name: &str,
    map: bool,
) -> serde_json::Value {
    let object = if map { "map" } else { "set" };
    serde_json::json!({verb: {object: {
        "family": family_name(family), "table": table, "name": name}}})
}

/// The `add map` command of a verdict map keyed by `key_types` (the crate's schema has no
/// verdict value type, so this one is written as libnftables-json(5) spells it).
pub fn verdict_map(
    family: NfFamily,
    table: &str,
    name: &str,
    key_types: &[&str],
) -> serde_json::Value {
    value_map(family, table, name, key_types, "verdict")
}

/// The `add map` command of a map from `key_types` to one value type (`ipv4_addr`,
/// `inet_service`, `verdict`). nft 1.0.6 cannot read a concatenated value type from JSON (it
/// fails, or crashes), so a map has one value type: a key needing two values takes two maps.
pub fn value_map(
    family: NfFamily,
    table: &str,
    name: &str,
    key_types: &[&str],
    value_type: &str,
) -> serde_json::Value {
    // One key type is written alone: nft reads a list of one as a concatenation of one field,
    // and then refuses plain elements added in the same batch as the map.
    let key = match key_types {
        [single] => serde_json::json!(single),
        many => serde_json::json!(many),
    };
    serde_json::json!({"add": {"map": {
        "family": family_name(family),
        "table": table,
        "name": name,
        "type": key,
        "map": value_type,
    }}})
}

/// `limit rate <per_second>/second burst <burst> packets log prefix "<prefix>"`: a log that a
/// flood cannot turn into a flood of log lines.
pub fn rate_limited_log(per_second: u32, burst: u32, prefix: &str) -> Vec<Statement<'static>> {
    use nftables::stmt::{Limit, Log};
    vec![
        Statement::Limit(Limit {
            rate: per_second,
            rate_unit: None,
            per: Some(s("second")),
            burst: Some(burst),
            burst_unit: None,
            inv: None,
        }),
        Statement::Log(Some(Log {
            prefix: Some(s(prefix)),
            group: None,
            snaplen: None,
            queue_threshold: None,
            level: None,
            flags: None,
        })),
    ]
}
