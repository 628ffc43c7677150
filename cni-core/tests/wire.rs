#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! Batches written over netlink (no `nft` process) against the same batches written by `nft`:
//! in two namespaces, the kernel must hold the same table, as `nft list` prints it, for every
//! kind of statement Tether's writers use (base and regular chains, sets, verdict maps,
//! concatenations, anonymous sets of prefixes and port ranges, ct state, limit and log,
//! inserts, deletes by handle, flushes). The NAT statements (fib, ct status, mark bits, dnat
//! through maps, masquerade) are compared in cni-portmap's `table` test, on its real table.

use cni_core::firewall::build::{
    self, anonymous_set, commented, concat, ct, elements, eq, field, is, meta, ne, number, prefix,
    rule, set, set_ref, text,
};
use cni_core::firewall::expr::{Expression, MetaKey, Range};
use cni_core::firewall::schema::{NfListObject, SetType, SetTypeValue};
use cni_core::firewall::stmt::{Operator, Statement};
use cni_core::firewall::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use cni_core::firewall::{rules, Batch};
use cni_core::netns::NetNs;
use test_support::{require_root, Netns};

const T: &str = "tether-wire";
const F: NfFamily = NfFamily::INet;

fn range(a: u32, b: u32) -> Expression<'static> {
    Expression::Range(Box::new(Range {
        range: [number(a), number(b)],
    }))
}

fn net(text: &str) -> Expression<'static> {
    prefix(text.parse().unwrap())
}

fn r(chain: &str, statements: Vec<Statement<'static>>) -> NfListObject<'static> {
    rule(F, T, chain, statements, None)
}

/// The first batch: every object and statement kind.
fn first() -> Batch {
    let mut b = Batch::new();
    b.add(build::table(F, T));
    for (name, hook) in [("forward", NfHook::Forward), ("input", NfHook::Input)] {
        b.add(build::base_chain(
            F,
            T,
            name,
            NfChainType::Filter,
            hook,
            0,
            NfChainPolicy::Accept,
        ));
    }
    for name in ["c", "d", "gone"] {
        b.add(build::chain(F, T, name));
    }
    let single = |t| SetTypeValue::Single(t);
    let named =
        |a| SetTypeValue::Concatenated(vec![a, SetType::InetProto, SetType::InetService].into());
    b.add(set(F, T, "s4", single(SetType::Ipv4Addr), &[]))
        .add(set(F, T, "s6", single(SetType::Ipv6Addr), &[]))
        .add(set(F, T, "n4", named(SetType::Ipv4Addr), &[]))
        .add(set(F, T, "n6", named(SetType::Ipv6Addr), &[]))
        .add(set(F, T, "spare", single(SetType::Ipv4Addr), &[]))
        .raw(build::verdict_map(F, T, "m4", &["ipv4_addr"]))
        .raw(build::verdict_map(F, T, "m6", &["ipv6_addr"]));
    b.add(elements(
        F,
        T,
        "s4",
        vec![text("10.0.0.1"), commented(text("10.0.0.2"), "pod b")],
    ))
    .add(elements(F, T, "s6", vec![text("fd00::1")]))
    .add(elements(
        F,
        T,
        "n4",
        vec![concat(vec![text("10.0.0.1"), text("tcp"), number(8080)])],
    ))
    .add(elements(
        F,
        T,
        "n6",
        vec![concat(vec![text("fd00::1"), text("udp"), number(53)])],
    ))
    .add(elements(
        F,
        T,
        "m4",
        vec![build::mapping(text("10.0.0.1"), build::jump_to("c"))],
    ))
    .add(elements(
        F,
        T,
        "spare",
        vec![text("10.7.0.1"), text("10.7.0.2")],
    ));
    let l4 = |p: &str| eq(meta(MetaKey::L4proto), text(p));
    let dport = || field("th", "dport");
    b.add(r(
        "forward",
        vec![
            is(
                ct("state"),
                Operator::IN,
                Expression::List(vec![text("established"), text("related")]),
            ),
            Statement::Accept(None),
        ],
    ))
    .add(r(
        "forward",
        vec![
            eq(
                field("ip", "saddr"),
                anonymous_set(vec![net("10.1.0.0/16"), net("10.2.0.0/16")]),
            ),
            ne(field("ip", "saddr"), set_ref("s4")),
            Statement::Drop(None),
        ],
    ))
    .add(r("forward", vec![build::vmap(field("ip", "saddr"), "m4")]))
    .add(r("forward", vec![build::vmap(field("ip6", "daddr"), "m6")]))
    .add(r("input", vec![build::vmap(field("ip", "saddr"), "m4")]))
    .add(r(
        "c",
        vec![
            eq(field("ip", "daddr"), set_ref("s4")),
            eq(field("ip", "saddr"), net("10.0.0.0/8")),
            ne(
                field("ip", "saddr"),
                anonymous_set(vec![net("10.99.0.0/16"), net("10.98.0.0/16")]),
            ),
            l4("tcp"),
            eq(dport(), anonymous_set(vec![range(80, 90), number(7000)])),
            Statement::Accept(None),
        ],
    ))
    .add(r(
        "c",
        vec![
            eq(
                concat(vec![field("ip", "daddr"), meta(MetaKey::L4proto), dport()]),
                set_ref("n4"),
            ),
            Statement::Return(None),
        ],
    ))
    .add(r(
        "c",
        vec![
            eq(
                concat(vec![field("ip6", "daddr"), meta(MetaKey::L4proto), dport()]),
                set_ref("n6"),
            ),
            Statement::Return(None),
        ],
    ))
    .add(r(
        "c",
        vec![
            l4("tcp"),
            eq(dport(), range(80, 90)),
            Statement::Accept(None),
        ],
    ))
    .add(r(
        "c",
        vec![
            l4("udp"),
            eq(dport(), anonymous_set(vec![number(53)])),
            Statement::Accept(None),
        ],
    ))
    .add(r(
        "c",
        vec![ne(dport(), range(1, 1024)), Statement::Return(None)],
    ))
    .add(r(
        "c",
        vec![
            eq(field("ip6", "saddr"), net("fd00::/64")),
            eq(field("ip6", "daddr"), set_ref("s6")),
            eq(
                field("ip6", "saddr"),
                anonymous_set(vec![net("fd00::/64"), net("fd01::/48")]),
            ),
            Statement::Accept(None),
        ],
    ))
    .add(r(
        "c",
        vec![
            eq(field("tcp", "dport"), number(22)),
            eq(meta(MetaKey::Iifname), text("eth0")),
            eq(meta(MetaKey::Mark), number(5)),
            Statement::Jump(cni_core::firewall::stmt::JumpTarget { target: "d".into() }),
        ],
    ))
    .add(rule(
        F,
        T,
        "c",
        build::rate_limited_log(10, 20, "tether-wire denied: ")
            .into_iter()
            .chain([Statement::Drop(None)])
            .collect(),
        Some("the end"),
    ))
    .insert(r(
        "c",
        vec![
            eq(field("ip", "saddr"), text("10.5.5.5")),
            Statement::Accept(None),
        ],
    ))
    .add(r("d", vec![Statement::Accept(None)]))
    .add(r("gone", vec![Statement::Drop(None)]));
    b
}

/// The second batch: rules deleted by handle and inserted, elements deleted, a chain flushed,
/// a set flushed, then a set and a chain deleted.
fn second(handles_of_c: &[u64]) -> Batch {
    let mut b = Batch::new();
    b.delete(build::rule_handle(F, T, "c", handles_of_c[1] as u32))
        .delete(build::rule_handle(F, T, "c", handles_of_c[3] as u32))
        .insert(r(
            "c",
            vec![
                eq(field("ip", "daddr"), set_ref("s4")),
                Statement::Return(None),
            ],
        ))
        .delete(elements(F, T, "s4", vec![text("10.0.0.1")]))
        .delete(elements(F, T, "m4", vec![text("10.0.0.1")]))
        .add(elements(
            F,
            T,
            "m4",
            vec![build::mapping(text("10.0.0.9"), build::jump_to("d"))],
        ))
        .raw(build::set_command("flush", F, T, "s6", false))
        .raw(build::set_command("delete", F, T, "spare", false))
        .flush(cni_core::firewall::schema::FlushObject::Chain(
            cni_core::firewall::schema::Chain {
                family: F,
                table: T.into(),
                name: "gone".into(),
                ..Default::default()
            },
        ))
        .delete(build::chain(F, T, "gone"));
    b
}

fn listing(node: &Netns) -> String {
    node.exec(&["nft", "list", "table", "inet", T])
}

#[test]
fn a_batch_over_netlink_leaves_the_table_nft_would() {
    require_root();
    let (a, b) = (Netns::new("wirea"), Netns::new("wireb"));
    let (nsa, nsb) = (
        NetNs::open(&a.path()).unwrap(),
        NetNs::open(&b.path()).unwrap(),
    );
    let batch = first();
    assert!(
        batch.over_netlink(),
        "every command of the first batch is encoded"
    );
    nsa.run(|| batch.apply()).unwrap().unwrap();
    nsb.run(|| batch.apply_by_process()).unwrap().unwrap();
    let (ta, tb) = (listing(&a), listing(&b));
    assert_eq!(ta, tb, "netlink:\n{ta}\nnft:\n{tb}");
    assert!(ta.contains("ip saddr != { 10.98.0.0/15 }"), "{ta}");
    // The table's names, by netlink: chains, named sets and maps (anonymous sets left out).
    let names = nsa
        .run(|| cni_core::firewall::tables::names(F, T))
        .unwrap()
        .unwrap()
        .unwrap();
    let mut chains = names.chains.clone();
    chains.sort();
    assert_eq!(chains, ["c", "d", "forward", "gone", "input"]);
    let mut sets = names.sets.clone();
    sets.sort();
    let expected: Vec<(String, bool)> = [
        ("m4", true),
        ("m6", true),
        ("n4", false),
        ("n6", false),
        ("s4", false),
        ("s6", false),
        ("spare", false),
    ]
    .iter()
    .map(|(n, m)| (n.to_string(), *m))
    .collect();
    assert_eq!(sets, expected);
    assert_eq!(
        nsa.run(|| cni_core::firewall::tables::names(F, "absent"))
            .unwrap()
            .unwrap(),
        None
    );
    assert!(ta.contains("tcp dport { 80-90, 7000 }"), "{ta}");

    // Handles differ between the namespaces only if the kernel numbered them differently; the
    // second batch uses each namespace's own.
    let handles = |ns: &NetNs| {
        ns.run(|| rules::handles(F, T, "c"))
            .unwrap()
            .unwrap()
            .unwrap()
    };
    let (ha, hb) = (handles(&nsa), handles(&nsb));
    let (second_a, second_b) = (second(&ha), second(&hb));
    assert!(second_a.over_netlink());
    nsa.run(|| second_a.apply()).unwrap().unwrap();
    nsb.run(|| second_b.apply_by_process()).unwrap().unwrap();
    let (ta, tb) = (listing(&a), listing(&b));
    assert_eq!(ta, tb, "netlink:\n{ta}\nnft:\n{tb}");
    assert!(!ta.contains("chain gone"), "{ta}");
    assert!(!ta.contains("spare"), "{ta}");

    // A refused batch changes nothing and names the command the kernel refused.
    let mut bad = Batch::new();
    bad.add(elements(F, T, "s4", vec![text("10.0.0.77")]))
        .delete(build::rule_handle(F, T, "c", 999_999));
    assert!(bad.over_netlink());
    let err = nsa.run(|| bad.apply()).unwrap().unwrap_err().to_string();
    assert!(err.contains("delete rule 999999 of chain c"), "{err}");
    assert_eq!(listing(&a), ta, "half a refused batch landed");

    // A statement the encoder does not know sends the whole batch through nft.
    let mut other = Batch::new();
    other.add(r("d", vec![Statement::Redirect(None)]));
    assert!(!other.over_netlink());
}
