#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! Deleting a veth pair without waiting for the kernel to free it, against the real kernel.

use std::time::Duration;

use cni_core::netlink::delete_link_detached;
use cni_core::netlink::{Netlink, VethSpec};
use cni_core::netns::NetNs;
use test_support::{helpers, require_root, Netns};

/// Zombie children of this process (the helper must never leave one behind).
fn zombie_children() -> Vec<String> {
    helpers::children()
        .into_iter()
        .filter(|(_, state)| *state == 'Z')
        .map(|(pid, _)| pid)
        .collect()
}

#[test]
fn the_pair_is_gone_when_the_call_returns_and_the_name_is_free() {
    require_root();
    let host = Netns::new("ulhost");
    let pod = Netns::new("ulpod");
    let host_ns = NetNs::open(&host.path()).unwrap();
    let pod_ns = NetNs::open(&pod.path()).unwrap();
    let mut nl = Netlink::open_in(&host_ns).unwrap();
    let mut pod_nl = Netlink::open_in(&pod_ns).unwrap();
    let veth = |nl: &mut Netlink, peer: &str| {
        nl.create_veth(&VethSpec {
            host_name: "vethul0",
            host_group: 0,
            host_alias: None,
            host_master: None,
            peer_name: peer,
            peer_mac: None,
            peer_netns: &pod_ns,
            mtu: 1400,
        })
        .unwrap();
    };

    for round in 0..10 {
        let peer = format!("eth{round}");
        veth(&mut nl, &peer);
        let index = nl.link("vethul0").unwrap().unwrap().index;
        nl.set_up(index).unwrap();
        assert!(pod_nl.link(&peer).unwrap().is_some());

        let deleted = host_ns.run(|| delete_link_detached("vethul0")).unwrap();
        assert!(deleted.unwrap(), "round {round}: the link existed");
        assert!(
            nl.link("vethul0").unwrap().is_none(),
            "round {round}: host end still listed"
        );
        assert!(nl.link_by_index(index).unwrap().is_none());
        assert!(
            pod_nl.link(&peer).unwrap().is_none(),
            "round {round}: pod end still listed"
        );
    }
    // The name is free at once: a new pair with it can be made right after the call.
    veth(&mut nl, "eth0");
    assert!(host_ns
        .run(|| delete_link_detached("vethul0"))
        .unwrap()
        .unwrap());

    // Deleting what does not exist is success, reported as nothing deleted.
    assert!(!host_ns
        .run(|| delete_link_detached("vethul0"))
        .unwrap()
        .unwrap());
    assert!(!host_ns
        .run(|| delete_link_detached("nosuchlink"))
        .unwrap()
        .unwrap());
    assert_eq!(
        zombie_children(),
        Vec::<String>::new(),
        "helpers left zombies"
    );
}

#[test]
fn the_helper_finishes_the_deletion_and_exits() {
    require_root();
    helpers::adopt_orphans();
    let host = Netns::new("ulreap");
    let host_ns = NetNs::open(&host.path()).unwrap();
    let mut nl = Netlink::open_in(&host_ns).unwrap();
    nl.create_veth(&VethSpec {
        host_name: "vethrp0",
        host_group: 0,
        host_alias: None,
        host_master: None,
        peer_name: "vethrp1",
        peer_mac: None,
        peer_netns: &host_ns,
        mtu: 1400,
    })
    .unwrap();
    assert!(host_ns
        .run(|| delete_link_detached("vethrp0"))
        .unwrap()
        .unwrap());
    assert!(nl.link("vethrp1").unwrap().is_none());

    let reaped = helpers::reap_all(Duration::from_secs(20));
    assert_eq!(reaped, 1, "exactly one helper process");
}
