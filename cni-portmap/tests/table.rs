#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The hostPort table is made over netlink (no `nft` process): the kernel must then hold the
//! table `nft` makes from the same commands, as `nft list` prints it (value maps, interval sets
//! of address pairs, NAT base chains, `fib daddr type local`, mark bits set and tested, `ct
//! status dnat`, dnat through two maps for one and any address of both families, masquerade).

use cni_core::netns::NetNs;
use cni_portmap::table;
use test_support::{require_root, Netns};

#[test]
fn the_hostport_table_over_netlink_is_the_one_nft_makes() {
    require_root();
    let batch = table::batch(13);
    assert!(
        batch.over_netlink(),
        "every command of the table is encoded"
    );
    let (a, b) = (Netns::new("pmwirea"), Netns::new("pmwireb"));
    let (nsa, nsb) = (
        NetNs::open(&a.path()).unwrap(),
        NetNs::open(&b.path()).unwrap(),
    );
    nsa.run(|| batch.apply()).unwrap().unwrap();
    nsb.run(|| batch.apply_by_process()).unwrap().unwrap();
    let listing = |n: &Netns| n.exec(&["nft", "list", "table", "inet", table::TABLE]);
    let (ta, tb) = (listing(&a), listing(&b));
    assert_eq!(ta, tb, "netlink:\n{ta}\nnft:\n{tb}");
    assert!(ta.contains("dnat ip6 to"), "{ta}");
    assert!(ta.contains("meta mark set meta mark | 0x00002000"), "{ta}");
    // Made again over what exists: nothing doubles.
    nsa.run(|| batch.apply()).unwrap().unwrap();
    assert_eq!(listing(&a), ta);
}
