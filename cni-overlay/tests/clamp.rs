#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The overlay's MSS clamp is written over netlink (no `nft` process): the kernel must then hold
//! the chain `nft` makes from the same commands, as `nft list` prints it, and writing it again
//! leaves one rule.

use cni_core::netns::NetNs;
use cni_overlay::daemon::clamp;
use test_support::{require_root, Netns};

fn listing(node: &Netns) -> String {
    node.exec(&["nft", "list", "table", "inet", clamp::TABLE])
}

#[test]
fn the_mss_clamp_over_netlink_is_the_chain_nft_makes() {
    require_root();
    let (a, b) = (Netns::new("clampa"), Netns::new("clampb"));
    let (nsa, nsb) = (
        NetNs::open(&a.path()).unwrap(),
        NetNs::open(&b.path()).unwrap(),
    );
    let batch = clamp::batch("tether.1");
    assert!(
        batch.over_netlink(),
        "every command of the clamp is encoded"
    );
    nsa.run(|| clamp::apply("tether.1")).unwrap().unwrap();
    nsb.run(|| batch.apply_by_process()).unwrap().unwrap();
    let (ta, tb) = (listing(&a), listing(&b));
    assert_eq!(ta, tb, "netlink:\n{ta}\nnft:\n{tb}");
    assert!(
        ta.contains(
            r#"oifname "tether.1" tcp flags syn / syn,rst tcp option maxseg size set rt mtu"#
        ),
        "{ta}"
    );
    nsa.run(|| clamp::apply("tether.1")).unwrap().unwrap();
    assert_eq!(listing(&a), ta, "written again, the chain is the same");
}
