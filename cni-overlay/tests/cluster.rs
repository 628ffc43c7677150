#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The overlay with the etcd datastore, in a cluster of namespaces (see `harness`).

mod harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{bin_dir, seen_source, wait_for, Cluster, Daemon, SteadyPing, ETCD, EXTERNAL};
use test_support::{require_root, Netns};

#[test]
fn three_nodes_full_mesh_without_nat_between_pods() {
    let cluster = Cluster::new_over_vxlan("ovm", 3);
    let [n0, n1, n2] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let pods = [
        n0.pod("ovm-a"),
        n0.pod("ovm-b"),
        n1.pod("ovm-c"),
        n2.pod("ovm-d"),
    ];

    // Subnets are distinct and come from the cluster CIDR; the facts carry the pod MTU.
    let subnets: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.facts()["subnets"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        subnets
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "{subnets:?}"
    );
    assert!(subnets
        .iter()
        .all(|s| s.starts_with("10.244.") && s.ends_with("/24")));
    // Every peer over VXLAN: pods take the tunnel's MTU, 1500 - 50.
    assert_eq!(n0.facts()["mtu"], 1450);
    assert_eq!(pods[0].0.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1450);
    assert_eq!(n0.ns.ip_json(&["link", "show", "tether.1"])[0]["mtu"], 1450);

    wait_for(
        "cross-node reachability",
        Duration::from_secs(20),
        || pods[0].0.ping(&pods[3].1),
        || n0.log(),
    );
    for (a, (ns_a, _)) in pods.iter().enumerate() {
        for (b, (_, ip_b)) in pods.iter().enumerate() {
            if a != b {
                assert!(ns_a.ping(ip_b), "pod {a} cannot reach pod {b} ({ip_b})");
            }
        }
    }

    // Exactly three entries per other node, on every node.
    for node in &cluster.nodes {
        let neigh = node
            .ns
            .ip_json(&["neigh", "show", "dev", "tether.1", "nud", "permanent"]);
        assert_eq!(neigh.as_array().unwrap().len(), 2, "{}: {neigh}", node.name);
        let fdb = node.ns.exec(&["bridge", "fdb", "show", "dev", "tether.1"]);
        assert_eq!(
            fdb.lines()
                .filter(|l| l.contains("dst 192.168.77."))
                .count(),
            2,
            "{fdb}"
        );
        let routes = node.ns.ip_json(&["route", "show", "dev", "tether.1"]);
        assert_eq!(
            routes
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["flags"].to_string().contains("onlink"))
                .count(),
            2,
            "{routes}"
        );
        assert!(
            node.metrics().contains("tether_overlay_entries 6"),
            "{}",
            node.metrics()
        );
    }

    // The receiving pod sees the sender's own pod address: no NAT between pods.
    assert_eq!(seen_source(&pods[2].0, &pods[0].0, &pods[2].1), pods[0].1);
    // Traffic leaving the cluster is masqueraded: the external host has no route back to pod
    // subnets, so this ping only works if the source became node0's underlay address.
    assert!(pods[0].0.ping(EXTERNAL), "masqueraded egress");
    let rules = String::from_utf8_lossy(
        &n0.ns
            .try_exec(&["nft", "list", "table", "inet", "tether-overlay"])
            .stdout,
    )
    .into_owned();
    assert!(
        rules.contains("ip daddr != 10.244.0.0/16") && rules.contains("masquerade"),
        "{rules}"
    );

    // A 1450-byte don't-fragment packet crosses; one byte more does not.
    let df = |size: &str| {
        pods[0].0.try_exec(&[
            "ping", "-c", "1", "-W", "2", "-M", "do", "-s", size, &pods[3].1,
        ])
    };
    assert!(df("1422").status.success(), "1450-byte DF ping");
    let too_big = df("1423");
    assert!(!too_big.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&too_big.stdout),
        String::from_utf8_lossy(&too_big.stderr)
    );
    assert!(
        text.contains("too long") || text.contains("Frag needed"),
        "{text}"
    );

    for (i, (pod, _)) in pods.iter().enumerate() {
        let node = [n0, n0, n1, n2][i];
        node.plugin(
            "DEL",
            &pod.name
                .replace("tt-", "")
                .split('-')
                .take(2)
                .collect::<Vec<_>>()
                .join("-"),
            Some(pod),
        )
        .ok();
    }
}

#[test]
fn departed_nodes_and_moved_underlays_converge() {
    let mut cluster = Cluster::new_over_vxlan("ovc", 3);
    let (p0, ip0) = cluster.nodes[0].pod("ovc-a");
    let (p1, ip1) = cluster.nodes[1].pod("ovc-b");
    let (_p2, ip2) = cluster.nodes[2].pod("ovc-c");
    wait_for(
        "mesh",
        Duration::from_secs(20),
        || p0.ping(&ip1) && p0.ping(&ip2),
        || cluster.nodes[0].log(),
    );
    // Someone deletes node0's VXLAN device: the next reconciliation recreates it, with the same
    // MAC (peers' entries stay right) and every entry.
    let mac_before =
        cluster.nodes[0].ns.ip_json(&["link", "show", "tether.1"])[0]["address"].clone();
    cluster.nodes[0].ns.ip(&["link", "del", "tether.1"]);
    wait_for(
        "the VXLAN device recreated and the mesh back",
        Duration::from_secs(15),
        || cluster.nodes[0].ns.has_link("tether.1") && p0.ping(&ip1) && p0.ping(&ip2),
        || cluster.nodes[0].log(),
    );
    assert_eq!(
        cluster.nodes[0].ns.ip_json(&["link", "show", "tether.1"])[0]["address"],
        mac_before
    );

    // Someone deletes node0's route to node1's pods: changes are applied without reading the
    // kernel, so it is the resync timer's full reconciliation that puts it back.
    let subnet1 = cluster.nodes[1].facts()["subnets"][0]
        .as_str()
        .unwrap()
        .to_string();
    cluster.nodes[0].ns.ip(&["route", "del", &subnet1]);
    wait_for(
        "the deleted route restored by the resync",
        Duration::from_secs(15),
        || p0.ping(&ip1),
        || cluster.nodes[0].log(),
    );

    let subnet2 = cluster.nodes[2].facts()["subnets"][0]
        .as_str()
        .unwrap()
        .to_string();

    // node2 leaves: its entries disappear from every other node.
    cluster.nodes[2].stop();
    let leave = cluster.nodes[2].ns.try_exec(&[
        &bin_dir().join("tether-overlayd").display().to_string(),
        "--node-name",
        "node2",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--datastore",
        "etcd",
        "--etcd-endpoints",
        ETCD,
        "--run-dir",
        &cluster.nodes[2].run_dir().display().to_string(),
        "--leave",
    ]);
    assert!(
        leave.status.success(),
        "{}",
        String::from_utf8_lossy(&leave.stderr)
    );
    assert!(!cluster.nodes[2].ns.has_link("tether.1"));
    for node in &cluster.nodes[..2] {
        wait_for(
            "departure",
            Duration::from_secs(10),
            || {
                node.ns
                    .ip_json(&["route", "show", &subnet2])
                    .as_array()
                    .is_none_or(|r| r.is_empty())
                    && node
                        .ns
                        .ip_json(&["neigh", "show", "dev", "tether.1", "nud", "permanent"])
                        .as_array()
                        .unwrap()
                        .len()
                        == 1
            },
            || node.log(),
        );
    }

    // node1's underlay address changes: node0 follows it.
    let n1 = &cluster.nodes[1];
    n1.ns
        .ip(&["addr", "del", &format!("{}/24", n1.ip), "dev", "eth0"]);
    n1.ns
        .ip(&["addr", "add", "192.168.77.21/24", "dev", "eth0"]);
    n1.ns
        .ip(&["route", "replace", "default", "via", "192.168.77.1"]);
    wait_for(
        "the new underlay address",
        Duration::from_secs(15),
        || {
            cluster.nodes[0]
                .ns
                .exec(&["bridge", "fdb", "show", "dev", "tether.1"])
                .contains("dst 192.168.77.21")
        },
        || cluster.nodes[1].log(),
    );
    wait_for(
        "reachability after the move",
        Duration::from_secs(10),
        || p0.ping(&ip1),
        || cluster.nodes[1].log(),
    );
    assert!(p1.ping(&ip0));
}

#[test]
fn daemon_restarts_and_datastore_outages_lose_no_packet() {
    let mut cluster = Cluster::new_over_vxlan("ovr", 2);
    let (p0, _) = cluster.nodes[0].pod("ovr-a");
    let (_p1, ip1) = cluster.nodes[1].pod("ovr-b");
    wait_for(
        "mesh",
        Duration::from_secs(20),
        || p0.ping(&ip1),
        || cluster.nodes[0].log(),
    );

    let ping = SteadyPing::start(&p0, &ip1, 300);
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        cluster.nodes[i].stop();
        cluster.nodes[i].start(&[]);
    }
    // etcd goes away: working entries stay.
    cluster.etcd = None;
    ping.assert_no_loss();
    assert!(p0.ping(&ip1), "still up with etcd gone");
    let metrics = cluster.nodes[0].metrics();
    assert!(metrics.contains("tether_overlay_entries 3"), "{metrics}");

    // A daemon that (re)starts while etcd is away waits in its retry loop, keeps the kernel as
    // it is, and still stops at once on SIGTERM.
    cluster.nodes[1].stop();
    let node = &mut cluster.nodes[1];
    let started = Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(bin_dir().join("tether-overlayd"))
        .args(["--node-name", &node.name, "--cluster-cidr", "10.244.0.0/16"])
        .args(["--datastore", "etcd", "--etcd-endpoints", ETCD, "--run-dir"])
        .arg(node.run_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    node.daemon = Some(Daemon(started));
    std::thread::sleep(Duration::from_secs(1));
    node.terminate_cleanly();
    assert!(p0.ping(&ip1), "entries kept while the daemons were away");
    cluster.nodes[0].terminate_cleanly();
}

#[test]
fn plugin_without_the_daemon_and_del_after_it_is_gone() {
    let mut cluster = Cluster::new("ovp", 1);
    let node = &cluster.nodes[0];
    let (pod, _) = node.pod("ovp-a");
    assert_eq!(node.leases(), 1);
    node.plugin("STATUS", "", None).ok();
    let facts = node.run_dir().join("overlay.json");
    cluster.nodes[0].stop();
    std::fs::remove_file(&facts).unwrap();
    let node = &cluster.nodes[0];
    // The saved delegate configuration lets DEL release the address without the daemon.
    node.plugin("DEL", "ovp-a", Some(&pod)).ok();
    node.plugin("DEL", "ovp-a", Some(&pod)).ok();
    assert_eq!(node.leases(), 0);
    assert!(!pod.has_link("eth0"));
    // Without the daemon's facts: ADD says try again later, STATUS says not available.
    let other = Netns::new("ovp-b");
    node.plugin("ADD", "ovp-b", Some(&other)).err(11);
    node.plugin("STATUS", "", None).err(50);
    assert_eq!(node.leases(), 0);
}

#[test]
fn bad_configuration_exits_with_a_clear_error() {
    require_root();
    let ns = Netns::new("ovbad");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.ip(&["addr", "add", "192.0.2.5/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let daemon = bin_dir().join("tether-overlayd").display().to_string();
    let base = ["--node-name", "n", "--etcd-endpoints", "http://127.0.0.1:1"];
    for (extra, needle) in [
        (
            vec![
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iface",
                "eth0",
                "--vni",
                "0",
            ],
            "--vni 0",
        ),
        (
            vec![
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iface",
                "eth0",
                "--vni",
                "16777216",
            ],
            "--vni 16777216",
        ),
        (
            vec!["--cluster-cidr", "10.244.0.5/16", "--iface", "eth0"],
            "host bits",
        ),
        (
            vec![
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iface",
                "eth0",
                "--subnet-size",
                "16",
            ],
            "--subnet-size",
        ),
        (
            vec!["--cluster-cidr", "10.244.0.0/16", "--iface", "nope0"],
            "nope0",
        ),
        (
            vec!["--cluster-cidr", "fd00::/48", "--iface", "eth0"],
            "IPv6",
        ),
        (
            vec![
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iface",
                "eth0",
                "--datastore",
                "kubernetes",
                "--kubeconfig",
                "/nonexistent/kubeconfig",
            ],
            "reading kubeconfig /nonexistent/kubeconfig",
        ),
    ] {
        let mut args = vec![daemon.as_str()];
        args.extend_from_slice(&base);
        args.extend(extra.iter().copied());
        if !extra.contains(&"--datastore") {
            args.extend(["--datastore", "etcd"]);
        }
        let out = ns.try_exec(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}

#[test]
fn dual_stack_pods_talk_over_both_families_without_nat() {
    let mut cluster = Cluster::new_stopped("ovs", 2);
    cluster.over_vxlan();
    for node in &mut cluster.nodes {
        node.start(&["--cluster-cidr", "fd00:244::/56", "--subnet-size-v6", "64"]);
    }
    let facts = cluster.nodes[0].facts();
    assert_eq!(facts["subnets"].as_array().unwrap().len(), 2, "{facts}");
    assert!(
        facts["subnets"][1]
            .as_str()
            .unwrap()
            .starts_with("fd00:244:"),
        "{facts}"
    );
    assert_eq!(facts["clusterCidrs"][1], "fd00:244::/56");

    let mut pods = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let pod = Netns::new(&format!("ovs-p{i}"));
        let result = node.plugin("ADD", &format!("ovs-p{i}"), Some(&pod)).ok();
        let ips = test_support::result_addresses(&result);
        assert_eq!(ips.len(), 2, "one address per family: {result}");
        assert!(ips[1].starts_with("fd00:244:"), "{ips:?}");
        pods.push((pod, ips));
    }
    wait_for(
        "IPv6 across nodes",
        Duration::from_secs(20),
        || {
            pods[0]
                .0
                .try_exec(&["ping", "-6", "-c", "1", "-W", "2", &pods[1].1[1]])
                .status
                .success()
        },
        || cluster.nodes[0].log(),
    );
    assert!(pods[1].0.ping(&pods[0].1[0]), "IPv4 across nodes");
    // The receiver sees the sender's own IPv6 address.
    assert_eq!(
        seen_source(&pods[1].0, &pods[0].0, &pods[1].1[1]),
        pods[0].1[1]
    );

    // Per peer: a neighbour entry and an onlink route per family, one FDB entry.
    let node = &cluster.nodes[0];
    let neigh6 = node
        .ns
        .ip_json(&["-6", "neigh", "show", "dev", "tether.1", "nud", "permanent"]);
    assert_eq!(neigh6.as_array().unwrap().len(), 1, "{neigh6}");
    let routes6 = node.ns.ip_json(&["-6", "route", "show", "dev", "tether.1"]);
    assert!(
        routes6.as_array().unwrap().iter().any(|r| r["dst"]
            .as_str()
            .is_some_and(|d| d.starts_with("fd00:244:"))
            && r["flags"].to_string().contains("onlink")),
        "{routes6}"
    );
    assert!(
        node.metrics().contains("tether_overlay_entries 5"),
        "{}",
        node.metrics()
    );
    let rules = String::from_utf8_lossy(
        &node
            .ns
            .try_exec(&["nft", "list", "table", "inet", "tether-overlay"])
            .stdout,
    )
    .into_owned();
    assert!(
        rules.contains("ip6 saddr fd00:244:") && rules.contains("ip6 daddr != fd00:244::/56"),
        "{rules}"
    );
    for (i, (pod, _)) in pods.iter().enumerate() {
        cluster.nodes[i]
            .plugin("DEL", &format!("ovs-p{i}"), Some(pod))
            .ok();
    }
}

#[test]
fn vxlan_runs_over_an_ipv6_underlay() {
    let mut cluster = Cluster::new_stopped("ov6", 2);
    cluster
        .underlay
        .ip(&["-6", "addr", "add", "fd00:77::1/64", "dev", "ul0", "nodad"]);
    for (i, node) in cluster.nodes.iter_mut().enumerate() {
        let address = format!("fd00:77::{}", 10 + i);
        node.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{address}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        node.start(&["--underlay-address", &address]);
    }
    // VXLAN over IPv6 costs 70 bytes: 1500 - 70 for the tunnel (the pods take 1500).
    assert_eq!(
        cluster.nodes[0].ns.ip_json(&["link", "show", "tether.1"])[0]["mtu"],
        1430
    );
    let link = cluster.nodes[0]
        .ns
        .ip_json(&["-d", "link", "show", "tether.1"]);
    assert_eq!(
        link[0]["linkinfo"]["info_data"]["local6"], "fd00:77::10",
        "{link}"
    );
    let (p0, _) = cluster.nodes[0].pod("ov6-a");
    let (_p1, ip1) = cluster.nodes[1].pod("ov6-b");
    wait_for(
        "pods across an IPv6 underlay",
        Duration::from_secs(20),
        || p0.ping(&ip1),
        || cluster.nodes[0].log(),
    );
    let fdb = cluster.nodes[0]
        .ns
        .exec(&["bridge", "fdb", "show", "dev", "tether.1"]);
    assert!(fdb.contains("dst fd00:77::11"), "{fdb}");
    // A full-size packet of the pod MTU crosses.
    let df = p0.try_exec(&["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1402", &ip1]);
    assert!(
        df.status.success(),
        "{}",
        String::from_utf8_lossy(&df.stdout)
    );
}

/// Direct routing, the default: peers the underlay reaches without a router get a plain route
/// via their underlay address (no VXLAN entries), peers beyond a router keep VXLAN; the choice
/// follows a node whose address moves across the router. Pods reach each other both ways with
/// their own addresses.
#[test]
fn direct_routes_on_one_segment_and_vxlan_across_a_router() {
    let mut cluster = Cluster::new_stopped("ovdr", 2);
    let args = cluster.nodes[0].datastore_args.clone();
    cluster.add_node_on("ovdr", 2, &args, 1);
    for node in &mut cluster.nodes {
        node.start(&[]);
    }
    let [n0, n1, n2] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let pods = [n0.pod("ovdr-a"), n1.pod("ovdr-b"), n2.pod("ovdr-c")];
    let subnet_of = |n: &harness::Node| n.facts()["subnets"][0].as_str().unwrap().to_string();
    let route_to =
        |from: &harness::Node, subnet: &str| from.ns.ip_json(&["route", "show", subnet])[0].clone();
    wait_for(
        "node1 routed directly and node2 over VXLAN from node0",
        Duration::from_secs(20),
        || {
            let direct = route_to(n0, &subnet_of(n1));
            let vxlan = route_to(n0, &subnet_of(n2));
            direct["gateway"] == n1.ip.as_str()
                && direct["dev"] == "eth0"
                && vxlan["dev"] == "tether.1"
                && vxlan["flags"].to_string().contains("onlink")
        },
        || format!("{}\n{}", n0.ns.ip(&["route"]), n0.log()),
    );
    // VXLAN entries for the peer beyond the router only.
    let fdb = n0.ns.exec(&["bridge", "fdb", "show", "dev", "tether.1"]);
    assert!(
        fdb.contains(&format!("dst {}", n2.ip)) && !fdb.contains(&format!("dst {}", n1.ip)),
        "{fdb}"
    );
    for (a, (ns_a, _)) in pods.iter().enumerate() {
        for (b, (_, ip_b)) in pods.iter().enumerate() {
            if a != b {
                wait_for(
                    &format!("pod {a} -> pod {b}"),
                    Duration::from_secs(10),
                    || ns_a.ping(ip_b),
                    || n0.log(),
                );
            }
        }
    }
    assert_eq!(
        seen_source(&pods[1].0, &pods[0].0, &pods[1].1),
        pods[0].1,
        "direct, no NAT"
    );
    assert_eq!(
        seen_source(&pods[2].0, &pods[0].0, &pods[2].1),
        pods[0].1,
        "VXLAN, no NAT"
    );

    // Pods take the underlay's MTU (direct peers talk full size); TCP into the tunnel has its
    // MSS clamped to the tunnel's MTU on both nodes, and a DF packet too big for it is answered
    // with "fragmentation needed", which the pod learns as the path's MTU.
    assert_eq!(n0.facts()["mtu"], 1500);
    assert_eq!(pods[0].0.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1500);
    let direct_mss = tcp_mss(&pods[0].0, &pods[1].0, &pods[1].1);
    let tunnel_mss = tcp_mss(&pods[0].0, &pods[2].0, &pods[2].1);
    let back_mss = tcp_mss(&pods[2].0, &pods[0].0, &pods[0].1);
    assert!(direct_mss > 1410, "direct MSS {direct_mss}");
    assert!(
        tunnel_mss <= 1410 && back_mss <= 1410,
        "through VXLAN (1450): MSS {tunnel_mss} there, {back_mss} back"
    );
    let too_big = pods[0].0.try_exec(&[
        "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1472", &pods[2].1,
    ]);
    assert!(!too_big.status.success());
    let learned = pods[0].0.ip(&["-4", "route", "get", &pods[2].1]);
    assert!(learned.contains("mtu 1450"), "{learned}");
    assert!(pods[0]
        .0
        .try_exec(&["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", &pods[2].1])
        .status
        .success());

    // node1 moves behind the router: node0 switches it to VXLAN once node1 re-registers.
    let n1 = &cluster.nodes[1];
    cluster.underlay.ip(&["link", "set", "ovdrp1", "nomaster"]);
    cluster
        .underlay
        .ip(&["link", "set", "ovdrp1", "master", "ul1"]);
    n1.ns.ip(&["addr", "flush", "dev", "eth0"]);
    n1.ns
        .ip(&["addr", "add", "192.168.78.21/24", "dev", "eth0"]);
    n1.ns
        .ip(&["route", "replace", "default", "via", "192.168.78.1"]);
    let n0 = &cluster.nodes[0];
    wait_for(
        "node1 over VXLAN after its move",
        Duration::from_secs(20),
        || {
            let r = route_to(n0, &subnet_of(n1));
            r["dev"] == "tether.1"
                && n0
                    .ns
                    .exec(&["bridge", "fdb", "show", "dev", "tether.1"])
                    .contains("dst 192.168.78.21")
        },
        || format!("{}\n{}", n0.ns.ip(&["route"]), n1.log()),
    );
    wait_for(
        "pods across the moved node",
        Duration::from_secs(10),
        || pods[0].0.ping(&pods[1].1),
        || n0.log(),
    );
}

/// The MSS a TCP connection from `from` to `ip` (in `to`) settles on, as iperf3 reports it
/// after sending a megabyte (its control connection's MSS, `start.tcp_mss_default`; iperf3 leaves
/// it out when it could not read it, and then the run is repeated).
fn tcp_mss(from: &Netns, to: &Netns, ip: &str) -> u64 {
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut last = String::new();
    for _ in 0..5 {
        let _server = Server(
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &to.name, "iperf3", "-s", "-1", "-p", "5299",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        for _ in 0..50 {
            let out = from.try_exec(&["iperf3", "-c", ip, "-p", "5299", "-n", "1M", "-J"]);
            last = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() {
                let report: serde_json::Value = serde_json::from_str(&last).unwrap();
                match report["start"]["tcp_mss_default"].as_u64() {
                    Some(mss) => return mss,
                    None => break,
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("iperf3 to {ip} reported no MSS: {last}");
}
