#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The netlink layer against the real kernel, inside namespaces the test creates.

use cni_core::netlink::{parse_mac, Netlink, RouteSpec, VethSpec};
use cni_core::netns::NetNs;
use test_support::{require_root, Netns};

#[test]
fn bridge_veth_addresses_routes_in_namespaces() {
    require_root();
    let host = Netns::new("nlhost");
    let pod = Netns::new("nlpod");
    let host_ns = NetNs::open(&host.path()).unwrap();
    let pod_ns = NetNs::open(&pod.path()).unwrap();
    let mut nl = Netlink::open_in(&host_ns).unwrap();
    let mut pod_nl = Netlink::open_in(&pod_ns).unwrap();

    assert!(nl.create_bridge("br-test", Some(1400), false).unwrap());
    assert!(
        !nl.create_bridge("br-test", Some(1400), false).unwrap(),
        "second create is a no-op"
    );
    let br = nl.link("br-test").unwrap().unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(br.mtu, 1400);
    nl.set_up(br.index).unwrap();

    nl.create_veth(&VethSpec {
        host_name: "vethtest0",
        host_alias: Some("tether:test"),
        host_master: Some(br.index),
        peer_name: "eth0",
        peer_mac: parse_mac("0a:58:0a:00:00:05"),
        peer_netns: &pod_ns,
        mtu: 1400,
    })
    .unwrap();
    let veth = nl.link("vethtest0").unwrap().unwrap();
    assert_eq!(veth.master, Some(br.index));
    assert!(veth.up);
    assert_eq!(veth.alias.as_deref(), Some("tether:test"));
    assert!(
        nl.link("eth0").unwrap().is_none(),
        "peer is not in the host namespace"
    );
    let eth0 = pod_nl.link("eth0").unwrap().unwrap();
    assert_eq!(eth0.mac_string().as_deref(), Some("0a:58:0a:00:00:05"));
    assert_eq!(eth0.mtu, 1400);
    let err = nl
        .create_veth(&VethSpec {
            host_name: "vethtest0",
            host_alias: None,
            host_master: None,
            peer_name: "eth1",
            peer_mac: None,
            peer_netns: &pod_ns,
            mtu: 1400,
        })
        .unwrap_err();
    assert!(err.is_exists());
    assert!(err.to_string().contains("vethtest0"), "{err}");

    nl.set_hairpin(veth.index, true).unwrap();
    assert_eq!(nl.link("vethtest0").unwrap().unwrap().hairpin, Some(true));

    assert!(nl
        .add_address(br.index, "10.77.0.1/24".parse().unwrap(), false)
        .unwrap());
    assert!(!nl
        .add_address(br.index, "10.77.0.1/24".parse().unwrap(), false)
        .unwrap());
    assert!(nl
        .add_address(br.index, "fd00:77::1/64".parse().unwrap(), true)
        .unwrap());
    let addrs = nl.addresses(br.index).unwrap();
    assert!(addrs.contains(&"10.77.0.1/24".parse().unwrap()));
    assert!(addrs.contains(&"fd00:77::1/64".parse().unwrap()));

    pod_nl.set_up(eth0.index).unwrap();
    pod_nl
        .add_address(eth0.index, "10.77.0.5/24".parse().unwrap(), false)
        .unwrap();
    let route = RouteSpec {
        dst: "0.0.0.0/0".parse().unwrap(),
        gateway: Some("10.77.0.1".parse().unwrap()),
        oif: eth0.index,
        mtu: None,
        priority: None,
        onlink: false,
    };
    assert!(pod_nl.add_route(&route).unwrap());
    assert!(!pod_nl.add_route(&route).unwrap());
    let routes = pod_nl.routes(false).unwrap();
    assert!(routes
        .iter()
        .any(|r| r.dst.prefix() == 0 && r.gateway == route.gateway));
    assert!(pod.ping("10.77.0.1"), "pod reaches the bridge address");

    nl.del_address(br.index, "10.77.0.1/24".parse().unwrap())
        .unwrap();
    nl.del_address(br.index, "10.77.0.1/24".parse().unwrap())
        .unwrap();

    // Kernels built without CONFIG_BRIDGE_VLAN_FILTERING (like this project's VM) refuse it.
    match nl.set_vlan_filtering(br.index, true) {
        Err(e) if e.errno() == Some(libc::EOPNOTSUPP) => {}
        Err(e) => panic!("{e}"),
        Ok(()) => {
            nl.bridge_vlan(veth.index, 1, false, false, false).unwrap();
            nl.bridge_vlan(veth.index, 42, true, false, true).unwrap();
            let vlans = test_support::sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &host.name,
                    "bridge",
                    "-j",
                    "vlan",
                    "show",
                    "dev",
                    "vethtest0",
                ],
            );
            assert!(vlans.contains("\"vlan\":42"), "{vlans}");
        }
    }

    assert!(nl.delete_link("vethtest0").unwrap());
    assert!(
        !nl.delete_link("vethtest0").unwrap(),
        "deleting twice is fine"
    );
    assert!(
        pod_nl.link("eth0").unwrap().is_none(),
        "the peer went with it"
    );
}
