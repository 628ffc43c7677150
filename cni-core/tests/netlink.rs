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
        host_group: 0,
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
            host_group: 0,
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
        source: None,
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

#[test]
fn vxlan_with_neighbour_fdb_and_onlink_route_carries_traffic() {
    require_root();
    let (a, b) = (Netns::new("vxa"), Netns::new("vxb"));
    a.ip(&[
        "link", "add", "under0", "type", "veth", "peer", "name", "under0", "netns", &b.name,
    ]);
    for (ns, ip) in [(&a, "192.0.2.1/24"), (&b, "192.0.2.2/24")] {
        ns.ip(&["addr", "add", ip, "dev", "under0"]);
        ns.ip(&["link", "set", "under0", "up"]);
    }
    let setup = |ns: &Netns, local: &str, own: &str| {
        let handle = NetNs::open(&ns.path()).unwrap();
        let mut nl = Netlink::open_in(&handle).unwrap();
        let under = nl.link("under0").unwrap().unwrap();
        let spec = cni_core::netlink::VxlanSpec {
            name: "vx0",
            vni: 7,
            port: 8472,
            local: local.parse().unwrap(),
            underlay: under.index,
            mtu: 1450,
            mac: None,
        };
        assert!(nl.create_vxlan(&spec).unwrap());
        assert!(
            !nl.create_vxlan(&spec).unwrap(),
            "existing device is left alone"
        );
        let vx = nl.link("vx0").unwrap().unwrap();
        let info = vx.vxlan.clone().unwrap();
        assert_eq!(
            (info.vni, info.port, info.learning),
            (Some(7), Some(8472), Some(false))
        );
        assert_eq!(info.local, Some(local.parse().unwrap()));
        nl.add_address(vx.index, own.parse().unwrap(), false)
            .unwrap();
        nl.set_up(vx.index).unwrap();
        (nl, vx)
    };
    let (mut nla, vxa) = setup(&a, "192.0.2.1", "10.1.1.0/32");
    let (mut nlb, vxb) = setup(&b, "192.0.2.2", "10.1.2.0/32");
    let (mac_a, mac_b) = (vxa.mac.clone().unwrap(), vxb.mac.clone().unwrap());
    for (nl, vx, gw, mac, underlay, subnet) in [
        (
            &mut nla,
            &vxa,
            "10.1.2.0",
            &mac_b,
            "192.0.2.2",
            "10.1.2.0/24",
        ),
        (
            &mut nlb,
            &vxb,
            "10.1.1.0",
            &mac_a,
            "192.0.2.1",
            "10.1.1.0/24",
        ),
    ] {
        let neighbour = cni_core::netlink::Neighbour {
            ip: gw.parse().unwrap(),
            mac: mac.clone(),
        };
        nl.set_neighbour(vx.index, &neighbour).unwrap();
        nl.set_neighbour(vx.index, &neighbour).unwrap();
        assert_eq!(nl.neighbours(vx.index).unwrap(), [neighbour]);
        let fdb = cni_core::netlink::FdbEntry {
            mac: mac.clone(),
            dst: Some(underlay.parse().unwrap()),
        };
        nl.set_fdb(vx.index, &fdb).unwrap();
        assert!(
            nl.fdb(vx.index).unwrap().contains(&fdb),
            "{:?}",
            nl.fdb(vx.index)
        );
        nl.replace_route(&RouteSpec {
            dst: subnet.parse().unwrap(),
            gateway: Some(gw.parse().unwrap()),
            oif: vx.index,
            mtu: None,
            priority: None,
            onlink: true,
            source: None,
        })
        .unwrap();
        let route = nl
            .routes(false)
            .unwrap()
            .into_iter()
            .find(|r| r.dst.to_string() == subnet)
            .unwrap();
        assert!(route.onlink && route.oif == Some(vx.index));
    }
    assert!(a.ping("10.1.2.0"), "traffic crosses the VXLAN overlay");

    nla.del_route("10.1.2.0/24".parse().unwrap()).unwrap();
    nla.del_route("10.1.2.0/24".parse().unwrap()).unwrap();
    nla.del_neighbour(vxa.index, "10.1.2.0".parse().unwrap())
        .unwrap();
    nla.del_neighbour(vxa.index, "10.1.2.0".parse().unwrap())
        .unwrap();
    let fdb = cni_core::netlink::FdbEntry {
        mac: mac_b.clone(),
        dst: Some("192.0.2.2".parse().unwrap()),
    };
    nla.del_fdb(vxa.index, &fdb).unwrap();
    nla.del_fdb(vxa.index, &fdb).unwrap();
    assert!(nla.neighbours(vxa.index).unwrap().is_empty());
    assert!(!nla.fdb(vxa.index).unwrap().contains(&fdb));
    assert!(!a.ping("10.1.2.0"));
}

#[test]
fn addresses_of_one_link_leave_out_every_other_link_and_later_dumps_still_work() {
    require_root();
    let host = Netns::new("nladdr");
    let host_ns = NetNs::open(&host.path()).unwrap();
    let mut nl = Netlink::open_in(&host_ns).unwrap();
    let mut indices = Vec::new();
    for i in 0..3u8 {
        let name = format!("br-a{i}");
        nl.create_bridge(&name, None, false).unwrap();
        let index = nl.link(&name).unwrap().unwrap().index;
        nl.set_up(index).unwrap();
        nl.add_address(index, format!("10.78.{i}.1/24").parse().unwrap(), false)
            .unwrap();
        nl.add_address(index, format!("fd00:78:{i}::1/64").parse().unwrap(), true)
            .unwrap();
        indices.push(index);
    }
    for (i, index) in indices.iter().enumerate() {
        // Up links also carry their own fe80:: address; what matters is no other link's.
        let mut addrs: Vec<ipnetwork::IpNetwork> = nl
            .addresses(*index)
            .unwrap()
            .into_iter()
            .filter(|a| !a.to_string().starts_with("fe80:"))
            .collect();
        addrs.sort();
        let mut want: Vec<ipnetwork::IpNetwork> = vec![
            format!("10.78.{i}.1/24").parse().unwrap(),
            format!("fd00:78:{i}::1/64").parse().unwrap(),
        ];
        want.sort();
        assert_eq!(addrs, want, "addresses of br-a{i}");
    }
    // The strict check is only for that one request: unfiltered dumps answer in full afterwards.
    let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
    for i in 0..3 {
        assert!(names.contains(&format!("br-a{i}")), "{names:?}");
    }
    assert_eq!(
        nl.routes(false).unwrap().len(),
        3,
        "one subnet route per bridge"
    );
    assert!(nl.addresses(9999).unwrap().is_empty());
}
