#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! `tetherctl status` and `tetherctl diagnose` as an operator runs them: from outside the nodes
//! (the underlay namespace, where the API stand-in runs), with only a kubeconfig, reading the
//! agents through the API server's node proxy. A healthy cluster, then deliberate faults, each
//! named by the command with a non-zero exit: a refused peer, a node without a podCIDR, a plain
//! bridge port with br_netfilter off, an agent that is gone; between two pods: a NetworkPolicy
//! that blocks the port (and the kernel agreeing), an underlay MTU below the pods', a missing
//! overlay route, a pod whose attachment is gone.

mod harness;

use std::process::Output;
use std::time::{Duration, Instant};

use harness::{bin_dir, pod_at, settle, start_agents, Cluster};
use serde_json::{json, Value};
use test_support::apiserver::{
    NAMESPACES, NETWORK_POLICIES, PERSISTENT_VOLUMES, PERSISTENT_VOLUME_CLAIMS, PODS, SERVICES,
};
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
    // A pod on node0 using a Tether volume: counted there.
    cluster.api().put(
        PERSISTENT_VOLUMES,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pvc-9"},
               "spec": {"claimRef": {"namespace": "default", "name": "data"},
                        "csi": {"driver": "nfs.tether.dev", "volumeHandle": "vd4#10.0.0.5#/srv#pvc-9"}},
               "status": {"phase": "Bound"}}),
    );
    cluster.api().put(
        PERSISTENT_VOLUME_CLAIMS,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
               "metadata": {"name": "data", "namespace": "default"},
               "spec": {"volumeName": "pvc-9"}, "status": {"phase": "Bound"}}),
    );
    let mut user = pod_at("default", "db", "node0", &["10.244.31.9"], json!({}));
    user["spec"]["volumes"] =
        json!([{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]);
    cluster.api().put(PODS, user);
    let json_out = tetherctl(&cluster, &["status", "-o", "json"]);
    let status: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(status["healthy"], true);
    assert_eq!(status["nodes"][0]["directRoutes"], 1, "{status}");
    assert_eq!(status["nodes"][0]["overlay"]["state"], "ready", "{status}");
    assert_eq!(status["nodes"][0]["volumes"], 1, "{status}");
    assert_eq!(status["nodes"][1]["volumes"], 0, "{status}");

    // node1's agent pod in a crash loop: its last words are in the status.
    cluster.api().put(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "tether-overlay-x7k2p", "namespace": "tether-system",
                            "labels": {"app.kubernetes.io/name": "tether-overlay"}},
               "spec": {"nodeName": "node1", "containers": [{"name": "tether-overlayd", "image": "i"}]},
               "status": {"phase": "Running", "containerStatuses": [{
                   "name": "tether-overlayd", "ready": false, "restartCount": 5, "image": "i", "imageID": "",
                   "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                   "lastState": {"terminated": {"exitCode": 1, "message":
                       "Error: Node node1 has podCIDR 10.9.0.0/24, which is outside the cluster CIDR 10.244.0.0/16\n"}}}]}}),
    );
    let out = tetherctl(&cluster, &["status"]);
    let report = text(&out);
    println!("crash loop:\n{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(report.contains("node1: container tether-overlayd of tether-overlay-x7k2p is CrashLoopBackOff (5 restarts): last exit: Error: Node node1 has podCIDR 10.9.0.0/24, which is outside the cluster CIDR"), "{report}");
    cluster
        .api()
        .delete(PODS, "tether-system", "tether-overlay-x7k2p");

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

    // A node the controller manager gave no podCIDR: named, with what to do.
    cluster.api().add_node("nocidr", None);
    let out = status_until(
        &cluster,
        &["status"],
        "tetherctl status naming the node without a podCIDR",
        |out| text(out).contains("nocidr: no podCIDR"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    println!("no podCIDR:\n{}", text(&out));
    cluster.api().delete_node("nocidr");

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

fn underlay_ip_of(cluster: &Cluster, node: &str) -> String {
    cluster.api().node(node).unwrap()["metadata"]["annotations"]["overlay.tether.dev/underlay-ip"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn diagnose_names_what_stands_between_two_pods() {
    let mut cluster =
        Cluster::with_kubernetes("ovtd", &[Some("10.244.41.0/24"), Some("10.244.42.0/24")]);
    // node2 is a router away: reached over VXLAN.
    let kubeconfig = cluster._etcd_dir.path().join("kubeconfig");
    let args = [
        "--datastore".to_string(),
        "kubernetes".to_string(),
        "--kubeconfig".to_string(),
        kubeconfig.display().to_string(),
    ];
    cluster.add_node_on("ovtd", 2, &args, 1);
    cluster.api().add_node("node2", Some("10.244.43.0/24"));
    for node in &cluster.nodes {
        cluster.api().patch_node(
            &node.name,
            &json!({"status": {"addresses": [{"type": "InternalIP", "address": node.ip}]}}),
        );
    }
    // node0 never resyncs on its own: a route removed by hand stays removed.
    cluster.nodes[0].start(&["--resync-seconds", "3600"]);
    cluster.nodes[1].start(&[]);
    cluster.nodes[2].start(&[]);
    cluster.api().put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
    );
    let (_agents, _logs) = start_agents(&cluster);
    let (pa, ipa) = cluster.nodes[0].pod("ttda");
    let (_pb, ipb) = cluster.nodes[1].pod("ttdb");
    let (_pc, ipc) = cluster.nodes[2].pod("ttdc");
    cluster.api().put(
        PODS,
        pod_at("default", "a", "node0", &[&ipa], json!({"app": "a"})),
    );
    let mut b = pod_at("default", "b", "node1", &[&ipb], json!({"app": "b"}));
    b["spec"]["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": 80, "protocol": "TCP", "hostPort": 8080}
    ]);
    cluster.api().put(PODS, b);
    cluster.api().put(
        PODS,
        pod_at("default", "c", "node2", &[&ipc], json!({"app": "c"})),
    );
    cluster.api().put(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"selector": {"app": "b"}, "clusterIP": "10.96.0.10",
                        "ports": [{"port": 80, "protocol": "TCP", "targetPort": "http"}]}}),
    );
    settle(
        "pods of three nodes reaching each other",
        || pa.ping(&ipb) && pa.ping(&ipc),
        || {
            cluster
                .nodes
                .iter()
                .map(|n| n.log())
                .collect::<Vec<_>>()
                .join("\n---\n")
        },
    );

    // Healthy: routed pods, a direct route to node1, VXLAN to node2, the Service and hostPort.
    let out = status_until(
        &cluster,
        &["diagnose", "default/a", "default/b", "--port", "80"],
        "tetherctl diagnose a b healthy",
        |out| out.status.success(),
    );
    let report = text(&out);
    println!("healthy a -> b:\n{report}");
    let node1_ip = underlay_ip_of(&cluster, "node1");
    for wanted in [
        "routed pod: host veth",
        &format!("direct route via {node1_ip}"),
        "Service default/web 10.96.0.10:80/TCP -> 80 (http)",
        &format!("hostPort {}:8080/TCP -> 80", cluster.nodes[1].ip),
        "tcp/80: egress not isolated: allowed; ingress not isolated: allowed",
        "no problems found",
    ] {
        assert!(report.contains(wanted), "{wanted:?} missing:\n{report}");
    }
    let out = tetherctl(&cluster, &["diagnose", "a", "c"]);
    let report = text(&out);
    println!("healthy a -> c:\n{report}");
    assert!(out.status.success(), "{report}");
    let node2_ip = underlay_ip_of(&cluster, "node2");
    assert!(
        report.contains(&format!("VXLAN via tether.1 to {node2_ip}")),
        "{report}"
    );
    let out = tetherctl(&cluster, &["diagnose", "default/a", "-o", "json"]);
    let one: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["path"][0]["kernel"]["Ok"]["via"], "pod", "{one}");

    // A policy that lets nothing into b: named with the port, and the kernel agrees.
    cluster.api().put(
        NETWORK_POLICIES,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "deny-b", "namespace": "default"},
               "spec": {"podSelector": {"matchLabels": {"app": "b"}}, "policyTypes": ["Ingress"]}}),
    );
    let out = tetherctl(&cluster, &["diagnose", "a", "b", "--port", "80"]);
    let report = text(&out);
    println!("policy:\n{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!(
            "ingress of default/b from {ipa} on tcp/80 is denied: isolated by default/deny-b"
        )),
        "{report}"
    );
    settle("the agent blocking a -> b", || !pa.ping(&ipb), String::new);
    cluster.api().delete(NETWORK_POLICIES, "default", "deny-b");
    settle("a -> b open again", || pa.ping(&ipb), String::new);

    // node0's underlay MTU below its pods' (the underlay's 1500, direct routing): packets
    // larger than the direct path are lost.
    cluster.nodes[0]
        .ns
        .ip(&["link", "set", "eth0", "mtu", "1400"]);
    let out = tetherctl(&cluster, &["diagnose", "a", "b"]);
    let report = text(&out);
    println!("mtu:\n{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("default/a's MTU is 1500 but the path to node1 carries at most 1400"),
        "{report}"
    );
    cluster.nodes[0]
        .ns
        .ip(&["link", "set", "eth0", "mtu", "1500"]);

    // node0 loses its route to node1's pods.
    cluster.nodes[0].ns.ip(&["route", "del", "10.244.42.0/24"]);
    let out = tetherctl(&cluster, &["diagnose", "a", "b"]);
    let report = text(&out);
    println!("no route:\n{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains(&format!("node0: no overlay route to {ipb}")),
        "{report}"
    );

    // a's attachment is gone from node0.
    cluster.nodes[0]
        .ns
        .ip(&["route", "del", &format!("{ipa}/32")]);
    let out = tetherctl(&cluster, &["diagnose", "a"]);
    let report = text(&out);
    println!("no attachment:\n{report}");
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("node0: no route to its own pod default/a"),
        "{report}"
    );

    // A pod that does not exist is an error of its own (exit 2).
    let out = tetherctl(&cluster, &["diagnose", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no pod default/nobody"),
        "{}",
        text(&out)
    );
}
