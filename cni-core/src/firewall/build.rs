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
