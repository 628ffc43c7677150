#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The typed nftables layer against the real kernel, inside a namespace the test creates.

use cni_core::firewall::build::{
    self, commented, elements, field, prefix, rule, set, set_ref, text,
};
use cni_core::firewall::schema::{SetType, SetTypeValue};
use cni_core::firewall::stmt::Statement;
use cni_core::firewall::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use cni_core::firewall::{list_table, parse_listing, Batch};
use cni_core::netns::NetNs;
use test_support::{require_root, Netns};

const T: &str = "tether-fwtest";

#[test]
fn batches_apply_atomically_and_listings_parse_back() {
    require_root();
    let node = Netns::new("fw");
    let ns = NetNs::open(&node.path()).unwrap();
    ns.run(|| {
        let fam = NfFamily::INet;
        let mut batch = Batch::new();
        batch
            .add(build::table(fam, T))
            .add(set(
                fam,
                T,
                "pods4",
                SetTypeValue::Single(SetType::Ipv4Addr),
                &[],
            ))
            .add(elements(
                fam,
                T,
                "pods4",
                vec![
                    commented(text("10.1.0.2"), "c1/eth0"),
                    commented(text("10.1.0.3"), "c2/eth0"),
                ],
            ))
            .add(build::base_chain(
                fam,
                T,
                "post",
                NfChainType::NAT,
                NfHook::Postrouting,
                100,
                NfChainPolicy::Accept,
            ))
            .add(rule(
                fam,
                T,
                "post",
                vec![
                    build::eq(field("ip", "saddr"), set_ref("pods4")),
                    build::ne(field("ip", "daddr"), prefix("10.1.0.0/16".parse().unwrap())),
                    Statement::Masquerade(None),
                ],
                Some("test rule"),
            ));
        batch.apply().unwrap();

        let listing = list_table(fam, T).unwrap();
        assert!(listing.exists);
        assert_eq!(listing.chains_using("pods4"), ["post"]);
        let elems = build::listed_elements(listing.set("pods4").unwrap().elem.as_deref());
        let comments: Vec<_> = elems.iter().filter_map(|(_, c)| c.clone()).collect();
        assert_eq!(comments, ["c1/eth0", "c2/eth0"]);
        let rule = listing.rules_in("post").next().unwrap();
        assert_eq!(rule.comment.as_deref(), Some("test rule"));
        assert!(rule.handle.is_some());

        // A batch with one bad command changes nothing at all.
        let mut bad = Batch::new();
        bad.delete(elements(fam, T, "pods4", vec![text("10.1.0.2")]))
            .delete(elements(fam, T, "pods4", vec![text("10.9.9.9")]));
        let err = bad.apply().unwrap_err();
        assert!(err.to_string().contains("nft"), "{err}");
        let again = list_table(fam, T).unwrap();
        assert_eq!(
            build::listed_elements(again.set("pods4").unwrap().elem.as_deref()).len(),
            2
        );

        let mut drop_all = Batch::new();
        drop_all.delete(build::table(fam, T));
        drop_all.apply().unwrap();
        let gone = list_table(fam, T).unwrap();
        assert!(!gone.exists && gone.rules.is_empty());
    })
    .unwrap();
}

#[test]
fn unknown_objects_in_a_listing_are_skipped_not_fatal() {
    let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "x", "handle": 1}},
        {"flowtable": {"weird": true}},
        {"chain": {"family": "inet", "table": "x", "name": "c", "handle": 2}}]}"#;
    let listing = parse_listing(text).unwrap();
    assert!(listing.exists);
    assert_eq!(listing.chains.len(), 1);
}

/// Element changes over netlink, as the kernel sees them: address sets, an address . protocol
/// . port set and a verdict map (IPv4 and IPv6), in one transaction that is all or nothing.
#[test]
fn element_changes_over_netlink_land_in_one_transaction() {
    use cni_core::firewall::elements::{apply, Change, Element};
    require_root();
    let node = Netns::new("fwnl");
    node.exec(&[
        "nft",
        "add table inet tnl; \
         add set inet tnl a4 { type ipv4_addr; }; \
         add set inet tnl a6 { type ipv6_addr; }; \
         add set inet tnl n4 { type ipv4_addr . inet_proto . inet_service; }; \
         add set inet tnl n6 { type ipv6_addr . inet_proto . inet_service; }; \
         add chain inet tnl pod-a; add chain inet tnl pod-b; \
         add map inet tnl d4 { type ipv4_addr : verdict; }",
    ]);
    let ns = NetNs::open(&node.path()).unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let change = |set: &str, delete: bool, elements: Vec<Element>| Change {
        set: set.into(),
        delete,
        elements,
    };
    let listing = || node.exec(&["nft", "list", "table", "inet", "tnl"]);
    ns.run(|| {
        apply(
            NfFamily::INet,
            "tnl",
            &[
                change(
                    "a4",
                    false,
                    (1..=600u16)
                        .map(|i| Element::address(ip(&format!("10.9.{}.{}", i / 200, i % 200))))
                        .collect(),
                ),
                change("a6", false, vec![Element::address(ip("fd00::7"))]),
                change(
                    "n4",
                    false,
                    vec![Element::address_protocol_port(ip("10.9.0.1"), 6, 8080)],
                ),
                change(
                    "n6",
                    false,
                    vec![Element::address_protocol_port(ip("fd00::7"), 17, 53)],
                ),
                change("d4", false, vec![Element::jump(ip("10.9.0.1"), "pod-a")]),
            ],
        )
    })
    .unwrap()
    .unwrap();
    let text = listing();
    for expected in [
        "10.9.2.199",
        "fd00::7",
        "10.9.0.1 . tcp . 8080",
        "fd00::7 . udp . 53",
        "10.9.0.1 : jump pod-a",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    // A map key changing its chain: deleted, then added in the same transaction.
    ns.run(|| {
        apply(
            NfFamily::INet,
            "tnl",
            &[
                change("d4", true, vec![Element::jump(ip("10.9.0.1"), "pod-a")]),
                change("d4", false, vec![Element::jump(ip("10.9.0.1"), "pod-b")]),
                change("a4", true, vec![Element::address(ip("10.9.2.199"))]),
            ],
        )
    })
    .unwrap()
    .unwrap();
    let text = listing();
    assert!(text.contains("10.9.0.1 : jump pod-b"), "{text}");
    assert!(!text.contains("10.9.2.199"), "{text}");
    // All or nothing: deleting an element that is not there refuses the whole batch, naming
    // the set; the add before it did not happen.
    let err = ns
        .run(|| {
            apply(
                NfFamily::INet,
                "tnl",
                &[
                    change("a6", false, vec![Element::address(ip("fd00::8"))]),
                    change("a4", true, vec![Element::address(ip("10.99.0.1"))]),
                ],
            )
        })
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("a4"), "{err}");
    assert!(!listing().contains("fd00::8"), "half a transaction landed");
    // A set that does not exist.
    let err = ns
        .run(|| {
            apply(
                NfFamily::INet,
                "tnl",
                &[change(
                    "nope",
                    false,
                    vec![Element::address(ip("10.0.0.1"))],
                )],
            )
        })
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}

/// Elements with values, ranges of concatenations and comments, written over netlink and read
/// back both ways (by `nft` and by the netlink listing), and a table deleted over netlink.
#[test]
fn element_values_ranges_and_comments_round_trip_over_netlink() {
    use cni_core::firewall::elements::{apply, layout, list, Change, Data, Element};
    use cni_core::firewall::tables;
    require_root();
    let node = Netns::new("fwnv");
    node.exec(&[
        "nft",
        "add table inet tnv; \
         add map inet tnv port4 { type ipv4_addr . inet_proto . inet_service : inet_service; }; \
         add map inet tnv addr6 { type inet_proto . inet_service : ipv6_addr; }; \
         add set inet tnv pair4 { type ipv4_addr . ipv4_addr; flags interval; }; \
         add element inet tnv port4 { 10.0.0.1 . tcp . 80 comment \"by nft\" : 8080 }",
    ]);
    let ns = NetNs::open(&node.path()).unwrap();
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let v4 = |s: &str| layout::address(ip(s));
    let key = |addr: &str, proto: u8, port: u16| {
        layout::concat(&[v4(addr), layout::protocol(proto), layout::port(port)])
    };
    let port_element = Element::key(key("10.0.0.2", 17, 53))
        .with_value(layout::lone_port(5353))
        .with_comment("net/ctr/eth0");
    let addr_element = Element::key(layout::concat(&[layout::protocol(6), layout::port(443)]))
        .with_value(layout::address(ip("fd00::5")))
        .with_comment("net/ctr/eth0");
    let range = Element::key(layout::concat(&[v4("10.1.0.0"), v4("10.1.0.5")]))
        .with_end(layout::concat(&[v4("10.1.0.255"), v4("10.1.0.5")]))
        .with_comment("net/ctr/eth0");
    let change = |set: &str, delete: bool, elements: Vec<Element>| Change {
        set: set.into(),
        delete,
        elements,
    };
    ns.run(|| {
        apply(
            NfFamily::INet,
            "tnv",
            &[
                change("port4", false, vec![port_element.clone()]),
                change("addr6", false, vec![addr_element.clone()]),
                change("pair4", false, vec![range.clone()]),
            ],
        )
    })
    .unwrap()
    .unwrap();
    let text = node.exec(&["nft", "list", "table", "inet", "tnv"]);
    for expected in [
        "10.0.0.2 . udp . 53 comment \"net/ctr/eth0\" : 5353",
        "tcp . 443 comment \"net/ctr/eth0\" : fd00::5",
        "10.1.0.0/24 . 10.1.0.5 comment \"net/ctr/eth0\"",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    let (ports, pairs, missing, none) = ns
        .run(|| {
            (
                list(NfFamily::INet, "tnv", "port4").unwrap().unwrap(),
                list(NfFamily::INet, "tnv", "pair4").unwrap().unwrap(),
                list(NfFamily::INet, "tnv", "nope").unwrap(),
                list(NfFamily::INet, "absent", "port4").unwrap(),
            )
        })
        .unwrap();
    assert_eq!(missing, None);
    assert_eq!(none, None);
    let by_nft = ports
        .iter()
        .find(|e| e.key == key("10.0.0.1", 6, 80))
        .unwrap();
    assert_eq!(by_nft.comment.as_deref(), Some("by nft"));
    assert_eq!(by_nft.data, Data::Value(layout::lone_port(8080)));
    assert!(ports.contains(&port_element), "{ports:?}");
    assert!(
        pairs
            .iter()
            .any(|e| e.same_member(&range) && e.comment == range.comment),
        "{pairs:?}"
    );
    // A range is deleted by its key and end.
    ns.run(|| {
        apply(
            NfFamily::INet,
            "tnv",
            &[change("pair4", true, vec![range.clone()])],
        )
    })
    .unwrap()
    .unwrap();
    assert!(!node
        .exec(&["nft", "list", "table", "inet", "tnv"])
        .contains("10.1.0.5"));
    let (before, deleted, again, after) = ns
        .run(|| {
            (
                tables::exists(NfFamily::INet, "tnv").unwrap(),
                tables::delete(NfFamily::INet, "tnv").unwrap(),
                tables::delete(NfFamily::INet, "tnv").unwrap(),
                tables::exists(NfFamily::INet, "tnv").unwrap(),
            )
        })
        .unwrap();
    assert_eq!((before, deleted, again, after), (true, true, false, false));
}
