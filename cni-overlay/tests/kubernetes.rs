#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The overlay with the Kubernetes datastore. No real API server can run on this machine, so the
//! daemons talk to `test_support::apiserver::NodeApiServer`, a stand-in that speaks the API's wire
//! protocol for Nodes (get, list, watch, merge patch); the daemon's own `kube` client, its watch
//! handling and every kernel entry are real.

mod harness;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cni_overlay::daemon::kube::{UNDERLAY_IP, VTEP_MAC};
use harness::{bin_dir, seen_source, wait_for, Cluster, Node, SteadyPing};
use serde_json::json;

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

/// The conflist in deploy/10-cni.yaml, as its block scalar holds it.
fn deployed_conflist() -> String {
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/10-cni.yaml"),
    )
    .unwrap();
    let mut lines = manifest
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("10-tether.conflist: |"));
    let header = lines.next().expect("the conflist in deploy/10-cni.yaml");
    let indent = header.len() - header.trim_start().len();
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .map(|l| l.get(indent + 2..).unwrap_or("").to_string() + "\n")
        .collect()
}

#[test]
fn the_deployed_conflist_is_installed_and_serves_pods() {
    let mut cluster =
        Cluster::with_kubernetes("ovd", &[Some("10.244.3.0/24"), Some("10.244.4.0/24")]);
    for node in &mut cluster.nodes {
        node.start(&[]);
    }
    // The DaemonSet's init step, as the manifest runs it, into this test's "host" directories.
    let host = tempfile::tempdir().unwrap();
    let source = host.path().join("config/10-tether.conflist");
    std::fs::create_dir_all(source.parent().unwrap()).unwrap();
    std::fs::write(&source, deployed_conflist()).unwrap();
    let install = Command::new(bin_dir().join("tether-cni-install"))
        .arg("--from")
        .arg(bin_dir())
        .arg("--bin-dir")
        .arg(host.path().join("opt/cni/bin"))
        .arg("--conf-dir")
        .arg(host.path().join("etc/cni/net.d"))
        .arg("--conflist")
        .arg(&source)
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let installed: serde_json::Value = serde_json::from_slice(
        &std::fs::read(host.path().join("etc/cni/net.d/10-tether.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(installed["plugins"][0]["type"], "cni-overlay");

    // A runtime turns the conflist's entry into the plugin's config; the simulated nodes share
    // one machine, so run and data directories move into each node's own directory.
    let plugins = host.path().join("opt/cni/bin");
    let mut ips = Vec::new();
    let mut pods = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let mut conf = installed["plugins"][0].clone();
        conf["cniVersion"] = installed["cniVersion"].clone();
        conf["name"] = installed["name"].clone();
        conf["runDir"] = json!(node.run_dir());
        conf["stateDir"] = json!(node.root.path().join("state"));
        conf["ipam"] = json!({"dataDir": node.root.path().join("leases")});
        let pod = test_support::Netns::new(&format!("ovd-p{i}"));
        let result = node
            .plugin_with(&plugins, &conf, "ADD", &format!("ovd-p{i}"), Some(&pod))
            .ok();
        ips.push(
            result["ips"][0]["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string(),
        );
        pods.push((pod, conf));
    }
    assert!(
        ips[0].starts_with("10.244.3.") && ips[1].starts_with("10.244.4."),
        "{ips:?}"
    );
    wait_for(
        "pods across nodes through the deployed conflist",
        Duration::from_secs(20),
        || pods[0].0.ping(&ips[1]) && pods[1].0.ping(&ips[0]),
        || cluster.nodes[0].log(),
    );
    for (i, (pod, conf)) in pods.iter().enumerate() {
        cluster.nodes[i]
            .plugin_with(&plugins, conf, "DEL", &format!("ovd-p{i}"), Some(pod))
            .ok();
    }
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
        let v6 = result["ips"][1]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
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
