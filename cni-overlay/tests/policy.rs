#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! NetworkPolicies across nodes: two nodes of the overlay (Kubernetes datastore, the API
//! stand-in), pods made by the real chain, and tether-netpol on each node against the same API.
//! Ingress is enforced on the receiving node (traffic arrives from the VXLAN device and is routed
//! to cni0), egress on the sending one; neither needs br_netfilter.

mod harness;

use std::path::PathBuf;

use harness::{agent_logs, pod_at, settle, start_agents, Cluster, Killed};
use serde_json::json;
use test_support::apiserver::{ApiServer, NAMESPACES, NETWORK_POLICIES, PODS};
use test_support::policy_world::{
    egress_scenarios, ingress_scenarios, pod_object, put_namespaces, sctp_scenarios, PolicyPod,
    PolicyWorld, Who, NAMESPACE_NAMES, POD_NAMES,
};
use test_support::probe::{self, open};
use test_support::Netns;

/// The truth tables' world across two overlay nodes: the nine pods alternate between the nodes
/// (made by the real chain: cni-overlay, cni-bridge with isolated ports, cni-ipam), one agent per
/// node.
struct OverlayWorld {
    _agents: Vec<Killed>,
    logs: Vec<PathBuf>,
    pods: Vec<PolicyPod>,
    cluster: Cluster,
}

impl OverlayWorld {
    fn new(tag: &str) -> OverlayWorld {
        let mut cluster =
            Cluster::with_kubernetes(tag, &[Some("10.244.7.0/24"), Some("10.244.8.0/24")]);
        for node in &mut cluster.nodes {
            node.start(&[]);
        }
        let api = cluster.api();
        put_namespaces(api);
        let mut pods = Vec::new();
        for (i, ns) in NAMESPACE_NAMES.iter().enumerate() {
            for (j, name) in POD_NAMES.iter().enumerate() {
                let node = &cluster.nodes[(i * 3 + j) % 2];
                let (netns, ip) = node.pod(&format!("{tag}{ns}{name}"));
                let pod = PolicyPod {
                    who: Who { ns, pod: name },
                    servers: probe::serve(&netns, &[80, 81]),
                    ip,
                    ip6: None,
                    node: node.name.clone(),
                    netns,
                };
                api.put(PODS, pod_object(&pod, json!({"pod": name})));
                pods.push(pod);
            }
        }
        let (agents, logs) = start_agents(&cluster);
        OverlayWorld {
            _agents: agents,
            logs,
            pods,
            cluster,
        }
    }
}

impl PolicyWorld for OverlayWorld {
    fn api(&self) -> &ApiServer {
        self.cluster.api()
    }

    fn pods(&self) -> &[PolicyPod] {
        &self.pods
    }

    fn pod_cidr(&self) -> String {
        "10.244.0.0/16".into()
    }

    fn node_netns(&self, node: &str) -> &Netns {
        &self
            .cluster
            .nodes
            .iter()
            .find(|n| n.name == node)
            .expect("a node of the cluster")
            .ns
    }

    fn dump(&self) -> String {
        let tables: Vec<String> = self
            .cluster
            .nodes
            .iter()
            .map(|n| {
                let out =
                    n.ns.try_exec(&["nft", "list", "table", "inet", "tether-netpol"]);
                format!("{}:\n{}", n.name, String::from_utf8_lossy(&out.stdout))
            })
            .collect();
        format!(
            "{}\n\nagent logs:\n{}",
            tables.join("\n"),
            agent_logs(&self.logs)
        )
    }
}

/// Every scenario of the truth tables, with the whole matrix, across two overlay nodes: a pod's
/// peers are on its node or the other one, so ingress is enforced on receiving nodes, egress on
/// sending ones, and selectors name pods of both nodes.
#[test]
fn truth_tables_across_two_overlay_nodes() {
    let w = OverlayWorld::new("ovm");
    ingress_scenarios(&w);
    egress_scenarios(&w);
    sctp_scenarios(&w);
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
        pod_at("x", "a", "node0", &[&ipa], json!({"pod": "a"})),
    );
    api.put(
        PODS,
        pod_at("x", "b", "node1", &[&ipb], json!({"pod": "b"})),
    );
    api.put(
        PODS,
        pod_at("x", "c", "node1", &[&ipc], json!({"pod": "c"})),
    );
    let (_agents, logs) = start_agents(&cluster);
    let log = || agent_logs(&logs);
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
        pod_at("x", "a", "node0", &[&ipa], json!({"pod": "z"})),
    );
    settle("a no longer a peer", || !open(&pa, &to_b("tcp:80")), log);
    api.put(
        PODS,
        pod_at("x", "a", "node0", &[&ipa], json!({"pod": "a"})),
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
