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
