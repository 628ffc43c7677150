#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! NetworkPolicies across nodes: two nodes of the overlay (Kubernetes datastore, the API
//! stand-in), pods made by the real chain, and tether-netpol on each node against the same API.
//! Ingress is enforced on the receiving node (traffic arrives from the VXLAN device and is routed
//! to cni0), egress on the sending one; neither needs br_netfilter.

mod harness;

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use harness::{bin_dir, Cluster};
use serde_json::json;
use test_support::apiserver::{NAMESPACES, NETWORK_POLICIES, PODS};
use test_support::probe::{self, open};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn settle(what: &str, check: impl Fn() -> bool, log: impl Fn() -> String) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn pod_object(
    ns: &str,
    name: &str,
    node: &str,
    ip: &str,
    labels: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

#[test]
fn policies_hold_across_nodes_over_the_overlay() {
    let mut cluster =
        Cluster::with_kubernetes("ovp", &[Some("10.244.5.0/24"), Some("10.244.6.0/24")]);
    for node in &mut cluster.nodes {
        node.start(&[]);
    }
    let (pa, ipa) = cluster.nodes[0].pod("ovp-a");
    let (pb, ipb) = cluster.nodes[1].pod("ovp-b");
    // c shares b's node, whose bridge hands nothing to the IP hooks (br_netfilter off): the
    // chain's isolated ports make the node route c's traffic to b, so b's policy holds for it.
    let (pc, ipc) = cluster.nodes[1].pod("ovp-c");
    for family in ["iptables", "ip6tables"] {
        cluster.nodes[1].ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.bridge.bridge-nf-call-{family}=0"),
        ]);
    }
    let _servers = [
        probe::serve(&pa, &[80, 81]),
        probe::serve(&pb, &[80, 81]),
        probe::serve(&pc, &[80, 81]),
    ];
    let api = cluster.api();
    api.put(NAMESPACES, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}}));
    api.put(
        PODS,
        pod_object("x", "a", "node0", &ipa, json!({"pod": "a"})),
    );
    api.put(
        PODS,
        pod_object("x", "b", "node1", &ipb, json!({"pod": "b"})),
    );
    api.put(
        PODS,
        pod_object("x", "c", "node1", &ipc, json!({"pod": "c"})),
    );
    let kubeconfig = cluster._etcd_dir.path().join("kubeconfig");
    let agent = test_support::workspace_binary(&bin_dir().join("cni-overlay"), "tether-netpol");
    let logs: Vec<_> = cluster
        .nodes
        .iter()
        .map(|n| n.root.path().join("netpol.log"))
        .collect();
    let _agents: Vec<Killed> = cluster
        .nodes
        .iter()
        .zip(&logs)
        .map(|(node, log)| {
            Killed(
                Command::new("ip")
                    .args(["netns", "exec", &node.ns.name])
                    .arg(&agent)
                    .args(["--node-name", &node.name, "--kubeconfig"])
                    .arg(&kubeconfig)
                    .arg("--facts")
                    .arg(node.run_dir().join("overlay.json"))
                    .args(["--metrics-addr", "127.0.0.1:9403"])
                    .stderr(std::fs::File::create(log).unwrap())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let log = || {
        logs.iter()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    let to_b = |port: &str| format!("{ipb}:{port}");
    settle(
        "b reachable across nodes",
        || open(&pa, &to_b("tcp:80")),
        log,
    );

    // Ingress on node1: b takes TCP 80 from a only.
    api.put(NETWORK_POLICIES, json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "b-from-a", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{
            "from": [{"podSelector": {"matchLabels": {"pod": "a"}}}], "ports": [{"protocol": "TCP", "port": 80}]}]}}));
    settle(
        "b's port 81 closed to a",
        || !open(&pa, &to_b("tcp:81")),
        log,
    );
    assert!(open(&pa, &to_b("tcp:80")), "port 80 from a stays open");
    assert!(
        !open(&pc, &to_b("tcp:80")),
        "c, on b's node but no peer, is shut out without br_netfilter"
    );
    assert!(open(&pb, &format!("{ipc}:tcp:80")), "c is not isolated");
    let ready = cluster.nodes[1].ns.try_exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://127.0.0.1:9403/readyz",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&ready.stdout),
        "200",
        "ready: every port of cni0 is isolated"
    );
    assert!(!open(&pa, &to_b("udp:80")), "UDP is not allowed");
    // a is relabelled: no longer a peer, so b's port 80 closes to it.
    api.put(
        PODS,
        pod_object("x", "a", "node0", &ipa, json!({"pod": "z"})),
    );
    settle("a no longer a peer", || !open(&pa, &to_b("tcp:80")), log);
    api.put(
        PODS,
        pod_object("x", "a", "node0", &ipa, json!({"pod": "a"})),
    );
    settle("a a peer again", || open(&pa, &to_b("tcp:80")), log);

    // Egress on node0: a may send nothing; b's ingress policy would allow it.
    api.put(
        NETWORK_POLICIES,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "a-no-egress", "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]}}),
    );
    settle(
        "a's egress denied on its own node",
        || !open(&pa, &to_b("tcp:80")),
        log,
    );
    assert!(
        open(&pb, &format!("{ipa}:tcp:80")),
        "a's ingress is not isolated"
    );
    api.delete(NETWORK_POLICIES, "x", "a-no-egress");
    api.delete(NETWORK_POLICIES, "x", "b-from-a");
    settle("everything open again", || open(&pa, &to_b("udp:81")), log);
    for node in &cluster.nodes {
        let _ = node
            .ns
            .try_exec(&["nft", "delete", "table", "inet", "tether-netpol"]);
    }
}
