#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The overlay with the Kubernetes datastore. No real API server can run on this machine, so the
//! daemons talk to `test_support::apiserver::NodeApiServer`, a stand-in that speaks the API's wire
//! protocol for Nodes (get, list, watch, merge patch); the daemon's own `kube` client, its watch
//! handling and every kernel entry are real.

mod harness;

use std::process::Command;
use std::time::Duration;

use cni_overlay::daemon::kube::{UNDERLAY_IP, VTEP_MAC};
use harness::{bin_dir, node_lists, seen_source, wait_for, Cluster, Node, SteadyPing};
use serde_json::{json, Value};
use test_support::chain::Attachment;
use test_support::responder::{ask, Responder};
use test_support::{deployed_conflist, Netns};

fn annotation(cluster: &Cluster, node: &str, key: &str) -> Option<String> {
    cluster.api().node(node)?["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

fn vxlan_mac(node: &Node) -> String {
    node.ns.ip_json(&["link", "show", "tether.1"])[0]["address"]
        .as_str()
        .unwrap()
        .to_string()
}

fn has_route(node: &Node, subnet: &str) -> bool {
    node.ns
        .ip_json(&["route", "show", subnet])
        .as_array()
        .is_some_and(|r| !r.is_empty())
}

#[test]
fn pod_cidrs_annotations_and_the_node_watch_make_the_mesh() {
    let mut cluster = Cluster::with_kubernetes(
        "ovk",
        &[
            Some("10.244.5.0/24"),
            Some("10.244.9.0/24"),
            Some("10.244.7.0/24"),
        ],
    );
    cluster.over_vxlan();
    for node in &mut cluster.nodes {
        node.start(&[]);
    }

    // Each node's subnet is its podCIDR; each published its VTEP on its own Node.
    for (node, cidr) in
        cluster
            .nodes
            .iter()
            .zip(["10.244.5.0/24", "10.244.9.0/24", "10.244.7.0/24"])
    {
        assert_eq!(node.facts()["subnets"][0], cidr, "{}", node.name);
        assert_eq!(
            annotation(&cluster, &node.name, VTEP_MAC),
            Some(vxlan_mac(node))
        );
        assert_eq!(
            annotation(&cluster, &node.name, UNDERLAY_IP),
            Some(node.ip.clone())
        );
    }

    let (p0, ip0) = cluster.nodes[0].pod("ovk-a");
    let (p1, ip1) = cluster.nodes[1].pod("ovk-b");
    let (_p2, ip2) = cluster.nodes[2].pod("ovk-c");
    assert!(ip0.starts_with("10.244.5.") && ip1.starts_with("10.244.9."));
    wait_for(
        "cross-node reachability",
        Duration::from_secs(20),
        || p0.ping(&ip1) && p0.ping(&ip2) && p1.ping(&ip0),
        || cluster.nodes[0].log(),
    );
    assert_eq!(seen_source(&p1, &p0, &ip1), ip0, "no NAT between pods");
    for node in &cluster.nodes {
        wait_for(
            "six entries",
            Duration::from_secs(5),
            || node.metrics().contains("tether_overlay_entries 6"),
            || node.metrics(),
        );
    }

    // A node joins: the others learn it from the watch alone.
    let args = cluster.nodes[0].datastore_args.clone();
    cluster.add_node("ovk", 3, &args);
    cluster.api().add_node("node3", Some("10.244.8.0/24"));
    cluster.nodes[3].start(&[]);
    let (_p3, ip3) = cluster.nodes[3].pod("ovk-d");
    wait_for(
        "the joined node",
        Duration::from_secs(10),
        || p0.ping(&ip3),
        || cluster.nodes[0].log(),
    );

    // Someone strips node1's annotations: its daemon publishes them again.
    cluster.api().patch_node(
        "node1",
        &json!({"metadata": {"annotations": {VTEP_MAC: null, UNDERLAY_IP: null}}}),
    );
    wait_for(
        "annotations published again",
        Duration::from_secs(10),
        || annotation(&cluster, "node1", VTEP_MAC).is_some(),
        || cluster.nodes[1].log(),
    );
    wait_for(
        "reachability after re-annotation",
        Duration::from_secs(10),
        || p0.ping(&ip1),
        || cluster.nodes[0].log(),
    );

    // node2's Node object is deleted: every other node drops its entries.
    cluster.nodes[2].stop();
    cluster.api().delete_node("node2");
    for node in [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[3]] {
        wait_for(
            "departure",
            Duration::from_secs(10),
            || !has_route(node, "10.244.7.0/24"),
            || node.log(),
        );
        assert!(has_route(node, "10.244.8.0/24") || node.name == "node3");
    }

    // node3 leaves the overlay: its annotations go, and with them its entries elsewhere.
    cluster.nodes[3].stop();
    let node3 = &cluster.nodes[3];
    let mut leave = vec![
        bin_dir().join("tether-overlayd").display().to_string(),
        "--node-name".into(),
        "node3".into(),
        "--cluster-cidr".into(),
        harness::CLUSTER_CIDR.into(),
        "--run-dir".into(),
        node3.run_dir().display().to_string(),
        "--leave".into(),
    ];
    leave.extend(node3.datastore_args.iter().cloned());
    let leave: Vec<&str> = leave.iter().map(String::as_str).collect();
    let out = node3.ns.try_exec(&leave);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(annotation(&cluster, "node3", VTEP_MAC), None);
    wait_for(
        "node3's entries gone",
        Duration::from_secs(10),
        || !has_route(&cluster.nodes[0], "10.244.8.0/24"),
        || cluster.nodes[0].log(),
    );

    // Least privilege: get, list, watch and patch of Nodes is all the daemon ever asked for.
    let requests = cluster.api().requests();
    assert!(
        requests.iter().any(|r| r.contains("watch=true")),
        "{requests:?}"
    );
    assert!(
        requests.iter().any(|r| r.starts_with("PATCH ")),
        "{requests:?}"
    );
    for request in requests {
        assert!(
            request.starts_with("GET /api/v1/nodes") || request.starts_with("PATCH /api/v1/nodes/"),
            "{request}"
        );
    }
}

#[test]
fn waits_for_a_pod_cidr_rejects_a_foreign_one_and_rides_out_api_outages() {
    let mut cluster = Cluster::with_kubernetes("ovo", &[Some("10.244.1.0/24"), None]);
    cluster.over_vxlan();
    cluster.nodes[0].start(&[]);

    // node1 has no podCIDR yet: its daemon waits (no facts, so no pods) instead of guessing.
    cluster.nodes[1].spawn(&[]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!cluster.nodes[1].ready());
    assert!(
        cluster.nodes[1].log().contains("no IPv4 spec.podCIDR"),
        "{}",
        cluster.nodes[1].log()
    );
    cluster.api().patch_node(
        "node1",
        &json!({"spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}}),
    );
    cluster.nodes[1].wait_ready();
    let (p0, _) = cluster.nodes[0].pod("ovo-a");
    let (_p1, ip1) = cluster.nodes[1].pod("ovo-b");
    wait_for(
        "mesh",
        Duration::from_secs(20),
        || p0.ping(&ip1),
        || cluster.nodes[0].log(),
    );

    // The API server goes away; pods keep talking, a daemon restarted meanwhile changes nothing,
    // and the daemons catch up when the API is back.
    let ping = SteadyPing::start(&p0, &ip1, 200);
    cluster.api().set_down(true);
    cluster.nodes[0].stop();
    cluster.nodes[0].spawn(&[]);
    ping.assert_no_loss();
    cluster.api().set_down(false);
    cluster.nodes[0].wait_ready();
    assert!(cluster.nodes[0]
        .metrics()
        .contains("tether_overlay_entries 3"));
    assert!(p0.ping(&ip1));

    // A podCIDR outside the cluster CIDR is a configuration error, not something to retry.
    cluster.api().add_node("node9", Some("10.99.0.0/24"));
    let node = &cluster.nodes[0];
    let mut args = vec![
        bin_dir().join("tether-overlayd").display().to_string(),
        "--node-name".into(),
        "node9".into(),
        "--cluster-cidr".into(),
        harness::CLUSTER_CIDR.into(),
        "--run-dir".into(),
        node.root.path().join("node9").display().to_string(),
    ];
    args.extend(node.datastore_args.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = node.ns.try_exec(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("outside the cluster CIDR"), "{stderr}");
}

fn condition(cluster: &Cluster, node: &str, kind: &str) -> Option<String> {
    cluster.api().node(node)?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

/// The deployed conflist as each simulated node runs it: the nodes share one machine, so run
/// and data directories are per node.
#[test]
fn the_deployed_conflist_is_written_when_ready_and_its_chain_serves_pods() {
    let mut cluster = Cluster::with_kubernetes("ovd", &[Some("10.244.3.0/24"), None]);
    for name in ["node0", "node1"] {
        // Clouds start nodes with the network marked unavailable.
        cluster.api().patch_node(
            name,
            &json!({"status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}
            ]}}),
        );
    }
    // The DaemonSet's init step, as the manifest runs it: plugins only.
    let host = tempfile::tempdir().unwrap();
    let source = host.path().join("config/10-tether.conflist");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    std::fs::write(&source, deployed_conflist()).unwrap();
    let plugins = host.path().join("opt/cni/bin");
    let install = Command::new(bin_dir().join("tether-cni-install"))
        .arg("--from")
        .arg(bin_dir())
        .arg("--bin-dir")
        .arg(&plugins)
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );

    // The daemon writes the conflist once the node can serve pods, and not before.
    let conf_dirs: Vec<std::path::PathBuf> = cluster
        .nodes
        .iter()
        .map(|n| n.root.path().join("net.d"))
        .collect();
    let flags = |i: usize| {
        vec![
            "--cni-conflist".to_string(),
            source.display().to_string(),
            "--cni-conf-dir".to_string(),
            conf_dirs[i].display().to_string(),
        ]
    };
    let conflist_of = |i: usize| conf_dirs[i].join("10-tether.conflist");
    let f0 = flags(0);
    cluster.nodes[0].start(&f0.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(conflist_of(0).exists());
    wait_for(
        "NetworkUnavailable False on node0",
        Duration::from_secs(10),
        || condition(&cluster, "node0", "NetworkUnavailable").as_deref() == Some("False"),
        || cluster.nodes[0].log(),
    );
    let f1 = flags(1);
    cluster.nodes[1].spawn(&f1.iter().map(String::as_str).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !conflist_of(1).exists(),
        "conflist written before node1 has a podCIDR"
    );
    assert_eq!(
        condition(&cluster, "node1", "NetworkUnavailable").as_deref(),
        Some("True")
    );
    cluster.api().patch_node(
        "node1",
        &json!({"spec": {"podCIDR": "10.244.4.0/24", "podCIDRs": ["10.244.4.0/24"]}}),
    );
    cluster.nodes[1].wait_ready();
    wait_for(
        "node1's conflist and condition",
        Duration::from_secs(10),
        || {
            conflist_of(1).exists()
                && condition(&cluster, "node1", "NetworkUnavailable").as_deref() == Some("False")
        },
        || cluster.nodes[1].log(),
    );

    // The whole chain, as a runtime runs the installed conflist: a hostPort and a bandwidth
    // limit on a pod of each node.
    let installed: Value = serde_json::from_slice(&std::fs::read(conflist_of(0)).unwrap()).unwrap();
    assert_eq!(installed["cniVersions"], json!(["1.0.0", "1.1.0"]));
    let pods: Vec<Netns> = (0..2).map(|i| Netns::new(&format!("ovd-p{i}"))).collect();
    let paths: Vec<String> = pods
        .iter()
        .map(|p| p.path().display().to_string())
        .collect();
    let mut results = Vec::new();
    let lists = node_lists(&installed, &cluster, &plugins);
    let attachments: Vec<Attachment> = (0..2)
        .map(|i| Attachment {
            id: if i == 0 { "ovd-a" } else { "ovd-b" },
            netns: &paths[i],
            ifname: "eth0",
            runtime: json!({
                "portMappings": [{"hostPort": 8080 + i, "containerPort": 80, "protocol": "tcp"}],
                "bandwidth": {"egressRate": 50_000_000u64, "egressBurst": u32::MAX}
            }),
        })
        .collect();
    for (list, att) in lists.iter().zip(&attachments) {
        results.push(
            list.add(att)
                .unwrap_or_else(|e| panic!("ADD: {}", e.stdout)),
        );
    }
    let ip = |r: &Value| test_support::result_addresses(r).remove(0);
    let (ip0, ip1) = (ip(&results[0]), ip(&results[1]));
    assert!(
        ip0.starts_with("10.244.3.") && ip1.starts_with("10.244.4."),
        "{ip0} {ip1}"
    );
    wait_for(
        "pods across nodes through the deployed chain",
        Duration::from_secs(20),
        || pods[0].ping(&ip1) && pods[1].ping(&ip0),
        || cluster.nodes[0].log(),
    );
    let _server = Responder::start(&pods[1], 80, "tcp");
    // A pod reaching another node's address leaves the pod network: masqueraded to its node.
    assert_eq!(
        ask(&pods[0], &cluster.nodes[1].ip, 8081, "tcp", 0).as_deref(),
        Some(cluster.nodes[0].ip.as_str()),
        "node1's hostPort from node0's pod"
    );
    // From outside the cluster, the client's address arrives.
    assert_eq!(
        ask(&cluster.underlay, &cluster.nodes[1].ip, 8081, "tcp", 0).as_deref(),
        Some("192.168.77.1")
    );
    for (i, (list, att)) in lists.iter().zip(&attachments).enumerate() {
        list.check(att, &results[i])
            .unwrap_or_else(|e| panic!("CHECK: {}", e.stdout));
        assert!(
            cluster.nodes[i].ns.ip(&["-o", "link"]).contains("bwp"),
            "an ifb for the egress limit"
        );
    }
    // A rolling update of the DaemonSet (maxUnavailable 1, as deploy/ sets it): kubelet sends
    // the old daemon SIGTERM, and the new one takes over. The conflist stays in place and the
    // pods' traffic flows throughout.
    let ping = SteadyPing::start(&pods[0], &ip1, 150);
    std::thread::sleep(Duration::from_millis(300));
    drop(lists);
    cluster.nodes[1].terminate_cleanly();
    assert!(
        conflist_of(1).exists(),
        "a daemon stopping for an update removed the conflist"
    );
    std::thread::sleep(Duration::from_millis(500));
    let f1 = flags(1);
    cluster.nodes[1].start(&f1.iter().map(String::as_str).collect::<Vec<_>>());
    ping.assert_no_loss();
    assert!(conflist_of(1).exists());
    let lists = node_lists(&installed, &cluster, &plugins);
    let node1_list = lists[1].list.to_string();

    // Teardown as a runtime does after the sandbox is gone: nothing of the chain is left.
    drop(pods);
    for (i, (list, att)) in lists.iter().zip(&attachments).enumerate() {
        let gone = Attachment {
            id: att.id,
            netns: "",
            ifname: "eth0",
            runtime: att.runtime.clone(),
        };
        list.del(&gone, Some(&results[i]))
            .unwrap_or_else(|e| panic!("DEL: {}", e.stdout));
        let node = &cluster.nodes[i];
        assert!(!node.ns.ip(&["-o", "link"]).contains("bwp"));
        let tables = String::from_utf8_lossy(&node.ns.try_exec(&["nft", "list", "tables"]).stdout)
            .into_owned();
        assert!(
            !tables.contains("tether-hostports") && !tables.contains("tether-portmap"),
            "{tables}"
        );
        assert_eq!(node.leases(), 0);
    }

    // Uninstalling, as deploy/uninstall does on every node after `kubectl delete -k deploy/`:
    // `tether-overlayd --leave --purge` and `tether-cni-install --uninstall` leave the node as
    // it was before Tether: no conflist, plugins, bridge, VXLAN device, nftables table, lease or
    // state directory. (This node's conflist names its own directories, as above.)
    drop(lists);
    cluster.nodes[1].stop();
    let node = &cluster.nodes[1];
    let node_conflist = host.path().join("node1/10-tether.conflist");
    std::fs::create_dir_all(node_conflist.parent().unwrap()).unwrap();
    std::fs::write(&node_conflist, node1_list).unwrap();
    assert!(node.root.path().join("leases").exists() && node.root.path().join("state").exists());
    let mut leave = vec![
        bin_dir().join("tether-overlayd").display().to_string(),
        "--node-name".into(),
        "node1".into(),
        "--cluster-cidr".into(),
        harness::CLUSTER_CIDR.into(),
        "--leave".into(),
        "--purge".into(),
        "--run-dir".into(),
        node.run_dir().display().to_string(),
        "--cni-conflist".into(),
        node_conflist.display().to_string(),
        "--cni-conf-dir".into(),
        conf_dirs[1].display().to_string(),
    ];
    leave.extend(node.datastore_args.iter().cloned());
    let leave: Vec<&str> = leave.iter().map(String::as_str).collect();
    let out = node.ns.try_exec(&leave);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let uninstall = Command::new(bin_dir().join("tether-cni-install"))
        .arg("--uninstall")
        .arg("--bin-dir")
        .arg(&plugins)
        .output()
        .unwrap();
    assert!(
        uninstall.status.success(),
        "{}",
        String::from_utf8_lossy(&uninstall.stderr)
    );
    assert!(!conflist_of(1).exists());
    assert_eq!(
        std::fs::read_dir(&plugins).unwrap().count(),
        0,
        "plugins left"
    );
    let links = node.ns.ip(&["-o", "link"]);
    assert!(
        !links.contains("cni0") && !links.contains("tether"),
        "{links}"
    );
    let tables =
        String::from_utf8_lossy(&node.ns.try_exec(&["nft", "list", "tables"]).stdout).into_owned();
    assert!(!tables.contains("tether"), "{tables}");
    assert!(!node.root.path().join("leases").join("tether").exists());
    assert!(!node.root.path().join("state").exists());
    assert!(
        !node.run_dir().exists(),
        "the run directory is left: {:?}",
        std::fs::read_dir(node.run_dir()).map(|d| d.count())
    );
    let conf_left: Vec<String> = std::fs::read_dir(&conf_dirs[1])
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(conf_left.is_empty(), "left in the conf dir: {conf_left:?}");

    // The uninstall DaemonSet's last container idles in Tether's own image and stops at once
    // on SIGTERM (as PID 1 of its container would otherwise ignore it).
    let mut idle = Command::new(bin_dir().join("tether-cni-install"))
        .arg("--idle")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        idle.try_wait().unwrap().is_none(),
        "--idle exited by itself"
    );
    let _ = Command::new("kill").arg(idle.id().to_string()).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(status) = idle.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "--idle ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn one_bad_peer_never_blocks_the_others_and_is_reported() {
    let mut cluster = Cluster::with_kubernetes(
        "ovb",
        &[
            Some("10.244.5.0/24"),
            Some("10.244.6.0/24"),
            Some("10.244.7.0/24"),
        ],
    );
    cluster.over_vxlan();
    // node0 routes 10.244.77.0 locally (say, an address on some other device): a route via
    // that gateway is refused by its kernel.
    cluster.nodes[0]
        .ns
        .ip(&["addr", "add", "10.244.77.0/32", "dev", "lo"]);
    cluster.api().add_node("bad", Some("10.244.77.0/24"));
    cluster.api().patch_node(
        "bad",
        &json!({"metadata": {"annotations": {VTEP_MAC: "0e:00:00:00:00:77", UNDERLAY_IP: "192.168.77.77"}}}),
    );
    for node in &mut cluster.nodes {
        node.start(&[]);
    }
    let (p0, ip0) = cluster.nodes[0].pod("ovb-a");
    let (_p1, ip1) = cluster.nodes[1].pod("ovb-b");
    let (_p2, ip2) = cluster.nodes[2].pod("ovb-c");
    wait_for(
        "the good peers, despite the bad one",
        Duration::from_secs(20),
        || p0.ping(&ip1) && p0.ping(&ip2),
        || cluster.nodes[0].log(),
    );
    let node0 = &cluster.nodes[0];
    wait_for(
        "the refusal reported",
        Duration::from_secs(10),
        || node0.metrics().contains("tether_overlay_entry_errors 1"),
        || node0.metrics(),
    );
    assert!(
        node0.metrics().contains("tether_overlay_entries 8"),
        "{}",
        node0.metrics()
    );
    let ready = node0.readyz();
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("node bad"),
        "{ready}"
    );
    assert!(cluster.nodes[1].readyz().starts_with("HTTP/1.1 200"));
    wait_for(
        "a Warning Event on the bad peer's Node",
        Duration::from_secs(10),
        || {
            cluster
                .api()
                .list(test_support::apiserver::EVENTS)
                .iter()
                .any(|e| {
                    e["involvedObject"]["name"] == "bad"
                        && e["reason"] == "TetherOverlayEntryRefused"
                        && e["type"] == "Warning"
                        && e["message"].as_str().is_some_and(|m| m.contains("node0"))
                })
        },
        || node0.log(),
    );
    let _ = ip0;
    // The bad Node goes: node0 is whole again.
    cluster.api().delete_node("bad");
    wait_for(
        "readiness back",
        Duration::from_secs(10),
        || node0.readyz().starts_with("HTTP/1.1 200"),
        || node0.readyz(),
    );

    // Without br_netfilter's bridge hooks, node2's pod (routed, as the chain makes them) is
    // still routed through kube-proxy's hooks: ready. A plain port on cni0 (a pod made with
    // `"routed": false`) is not, and readiness names it.
    let node2 = &cluster.nodes[2];
    node2
        .ns
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        node2.readyz().starts_with("HTTP/1.1 200"),
        "routed pods need no br_netfilter: {}",
        node2.readyz()
    );
    node2.ns.ip(&[
        "link", "add", "ttplain", "type", "veth", "peer", "name", "ttplainp",
    ]);
    node2.ns.ip(&["link", "set", "ttplain", "master", "cni0"]);
    wait_for(
        "readiness naming br_netfilter and the plain port",
        Duration::from_secs(5),
        || {
            let r = node2.readyz();
            r.starts_with("HTTP/1.1 503")
                && r.contains("bridge-nf-call-iptables")
                && r.contains("ttplain")
        },
        || node2.readyz(),
    );
    // With br_netfilter on, an isolated port (a pod of the previous release's datapath) loses
    // same-node Service traffic: counted and warned of, without failing readiness.
    node2
        .ns
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    node2.ns.ip(&[
        "link",
        "set",
        "ttplain",
        "type",
        "bridge_slave",
        "isolated",
        "on",
    ]);
    wait_for(
        "the isolated port counted",
        Duration::from_secs(5),
        || {
            node2
                .metrics()
                .contains("tether_overlay_dnat_dropping_ports 1")
        },
        || node2.metrics(),
    );
    assert!(
        node2.readyz().starts_with("HTTP/1.1 200"),
        "{}",
        node2.readyz()
    );
    assert!(node2.log().contains("ttplain"), "{}", node2.log());
    node2.ns.ip(&["link", "del", "ttplain"]);
}

#[test]
fn dual_stack_nodes_from_their_pod_cidrs() {
    let mut cluster = Cluster::with_kubernetes("ovk6", &[]);
    let args = [
        "--datastore".to_string(),
        "kubernetes".to_string(),
        "--kubeconfig".to_string(),
        cluster
            ._etcd_dir
            .path()
            .join("kubeconfig")
            .display()
            .to_string(),
    ];
    for (i, cidrs) in [
        ["10.244.5.0/24", "fd00:244:0:5::/64"],
        ["10.244.6.0/24", "fd00:244:0:6::/64"],
    ]
    .iter()
    .enumerate()
    {
        cluster.add_node("ovk6", i, &args);
        cluster
            .api()
            .add_node_with_cidrs(&format!("node{i}"), cidrs);
    }
    for node in &mut cluster.nodes {
        node.start(&["--cluster-cidr", "fd00:244::/56"]);
    }
    assert_eq!(cluster.nodes[1].facts()["subnets"][1], "fd00:244:0:6::/64");
    let mut pods = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let pod = test_support::Netns::new(&format!("ovk6-p{i}"));
        let result = node.plugin("ADD", &format!("ovk6-p{i}"), Some(&pod)).ok();
        let v6 = test_support::result_address(&result, true).unwrap();
        pods.push((pod, v6));
    }
    assert!(pods[1].1.starts_with("fd00:244:0:6:"), "{}", pods[1].1);
    wait_for(
        "IPv6 between pods of dual-stack Nodes",
        Duration::from_secs(20),
        || {
            pods[0]
                .0
                .try_exec(&["ping", "-6", "-c", "1", "-W", "2", &pods[1].1])
                .status
                .success()
        },
        || cluster.nodes[0].log(),
    );
    for (i, (pod, _)) in pods.iter().enumerate() {
        cluster.nodes[i]
            .plugin("DEL", &format!("ovk6-p{i}"), Some(pod))
            .ok();
    }
}

/// kubelet's `--node-ip` may sit on another link than the default route: the underlay is the
/// Node's InternalIP (published as the VTEP address, peers route to it), not the default-route
/// interface's address.
#[test]
fn the_underlay_is_the_nodes_internal_ip() {
    let mut cluster =
        Cluster::with_kubernetes("ovip", &[Some("10.244.21.0/24"), Some("10.244.22.0/24")]);
    cluster
        .underlay
        .ip(&["link", "add", "ulx", "type", "bridge"]);
    cluster
        .underlay
        .ip(&["addr", "add", "192.168.99.1/24", "dev", "ulx"]);
    cluster.underlay.ip(&["link", "set", "ulx", "up"]);
    for i in 0..2 {
        let node = &cluster.nodes[i];
        let port = format!("ovipx{i}");
        cluster.underlay.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "netns",
            &node.ns.name,
        ]);
        cluster
            .underlay
            .ip(&["link", "set", &port, "master", "ulx", "up"]);
        node.ns.ip(&[
            "addr",
            "add",
            &format!("192.168.99.{}/24", 10 + i),
            "dev",
            "eth1",
        ]);
        node.ns.ip(&["link", "set", "eth1", "up"]);
        cluster.api().patch_node(
            &node.name,
            &json!({"status": {"addresses": [
                {"type": "InternalIP", "address": format!("192.168.99.{}", 10 + i)},
                {"type": "Hostname", "address": node.name}
            ]}}),
        );
    }
    for node in &mut cluster.nodes {
        node.start(&[]);
    }
    for (i, node) in cluster.nodes.iter().enumerate() {
        wait_for(
            "the InternalIP published as the underlay address",
            Duration::from_secs(10),
            || {
                annotation(&cluster, &node.name, UNDERLAY_IP).as_deref()
                    == Some(format!("192.168.99.{}", 10 + i).as_str())
            },
            || node.log(),
        );
        assert!(
            node.log().contains("the Node's InternalIP"),
            "{}",
            node.log()
        );
    }
    let (a, _) = cluster.nodes[0].pod("ovip-a");
    let (_b, ip_b) = cluster.nodes[1].pod("ovip-b");
    wait_for(
        "pods across nodes over the InternalIP link",
        Duration::from_secs(20),
        || a.ping(&ip_b),
        || cluster.nodes[0].log(),
    );
    let route = cluster.nodes[0].ns.ip(&["route", "show", "10.244.22.0/24"]);
    assert!(route.contains("via 192.168.99.11 dev eth1"), "{route}");
}
