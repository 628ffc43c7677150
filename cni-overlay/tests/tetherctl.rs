#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! `tetherctl status` as an operator runs it: from outside the nodes (the underlay namespace,
//! where the API stand-in runs), with only a kubeconfig, reading the agents through the API
//! server's node proxy. A healthy cluster, then deliberate faults, each named by the command
//! with a non-zero exit: a refused peer, a plain bridge port with br_netfilter off, an agent
//! that is gone.

mod harness;

use std::process::Output;
use std::time::{Duration, Instant};

use harness::{bin_dir, start_agents, Cluster};
use serde_json::{json, Value};
use test_support::apiserver::NAMESPACES;
use test_support::workspace_binary;

fn tetherctl(cluster: &Cluster, args: &[&str]) -> Output {
    let binary = workspace_binary(&bin_dir().join("cni-overlay"), "tetherctl");
    let kubeconfig = cluster._etcd_dir.path().join("kubeconfig");
    let mut full = vec![
        binary.display().to_string(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
    ];
    full.extend(args.iter().map(|a| a.to_string()));
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    cluster.underlay.try_exec(&full)
}

/// Runs `tetherctl args` until `ok` says its answer is the one wanted (20 s at most).
fn status_until(
    cluster: &Cluster,
    args: &[&str],
    what: &str,
    ok: impl Fn(&Output) -> bool,
) -> Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = tetherctl(cluster, args);
        if ok(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}:\n{}", text(&out));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn status_names_what_is_wrong_on_each_node() {
    let mut cluster =
        Cluster::with_kubernetes("ovtc", &[Some("10.244.31.0/24"), Some("10.244.32.0/24")]);
    for node in &cluster.nodes {
        cluster.api().patch_node(
            &node.name,
            &json!({"status": {"addresses": [{"type": "InternalIP", "address": node.ip}]}}),
        );
    }
    for node in &mut cluster.nodes {
        node.start(&[]);
    }
    cluster.api().put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    );
    let (_agents, _logs) = start_agents(&cluster);

    // Healthy: both nodes ready, a direct route each way, no problem, exit 0.
    let healthy = status_until(&cluster, &["status"], "tetherctl status healthy", |out| {
        out.status.success()
    });
    let table = text(&healthy);
    println!("healthy:\n{table}");
    assert!(table.contains("no problems found"), "{table}");
    for node in &cluster.nodes {
        let line = table
            .lines()
            .find(|l| l.starts_with(&node.name))
            .unwrap_or_else(|| panic!("{} missing:\n{table}", node.name));
        assert!(line.contains("ready") && line.contains(&node.ip), "{line}");
    }
    let json_out = tetherctl(&cluster, &["status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(status["healthy"], true);
    assert_eq!(status["nodes"][0]["directRoutes"], 1, "{status}");
    assert_eq!(status["nodes"][0]["overlay"]["state"], "ready", "{status}");

    // A peer whose pod subnet node0 cannot route: refused, named, exit 1.
    cluster.nodes[0]
        .ns
        .ip(&["addr", "add", "10.244.77.0/32", "dev", "lo"]);
    cluster.api().add_node("bad", Some("10.244.77.0/24"));
    cluster.api().patch_node(
        "bad",
        &json!({"metadata": {"annotations": {
            "overlay.tether.dev/vtep-mac": "0e:00:00:00:00:99",
            "overlay.tether.dev/underlay-ip": "192.0.2.99"}}}),
    );
    let faulty = status_until(
        &cluster,
        &["status", "node0"],
        "tetherctl status naming the refused peer",
        |out| out.status.code() == Some(1) && text(out).contains("refused"),
    );
    println!("refused peer:\n{}", text(&faulty));
    cluster.api().delete_node("bad");

    // node1: br_netfilter off and a plain port on cni0: pods there bypass the IP hooks.
    let node1 = &cluster.nodes[1];
    node1
        .ns
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    node1.ns.ip(&["link", "add", "cni0", "type", "bridge"]);
    node1.ns.ip(&[
        "link", "add", "ttplain", "type", "veth", "peer", "name", "ttplainp",
    ]);
    node1.ns.ip(&["link", "set", "ttplain", "master", "cni0"]);
    let faulty = status_until(
        &cluster,
        &["status", "node1"],
        "tetherctl status naming the plain port",
        |out| text(out).contains("ttplain"),
    );
    let report = text(&faulty);
    println!("plain port:\n{report}");
    assert!(report.contains("bridge-nf-call-iptables"), "{report}");
    node1.ns.ip(&["link", "del", "ttplain"]);
    node1
        .ns
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);

    // tether-overlayd stopped on node0: unreachable through the proxy, named.
    cluster.nodes[0].stop();
    let out = tetherctl(&cluster, &["status"]);
    let report = text(&out);
    println!("agent gone:\n{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("node0: tether-overlayd does not answer"),
        "{report}"
    );

    // An unknown node is an error of its own (exit 2).
    let out = tetherctl(&cluster, &["status", "nowhere"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
