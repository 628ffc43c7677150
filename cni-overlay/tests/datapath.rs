#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The datapath truth table: every traffic kind a Kubernetes node carries, through the chain as
//! the runtime runs the deployed conflist (cni-overlay -> cni-bridge -> cni-ipam, cni-portmap,
//! cni-bandwidth), with kube-proxy's Service rules written as kube-proxy writes them (iptables-nft
//! and nftables modes), on two dual-stack overlay nodes, in each br_netfilter setting a node can
//! have here (`bridge-nf-call-iptables` 1, as kubeadm requires, and 0; the module cannot be
//! absent on this kernel, where it is built in). Each row checks that the connection is answered
//! and which source address the backend saw. The policy tables add tether-netpol on both nodes
//! and check that a policy on the backend holds on every path to it.
//!
//! The rows mirror Kubernetes' conformance checks: sig-network "Networking Granular Checks" (pod
//! to pod on one node and across nodes, node to pod; TCP and UDP), "Services" (pod, node and
//! NodePort to a Service; a pod hairpinning back to itself through its Service) and "HostPort
//! validates that there is no conflict between pods with same hostPort but different hostIP and
//! protocol" (127.0.0.1 and the node's address, TCP and UDP, on one port).

mod harness;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use harness::{agent_logs, bin_dir, node_lists, pod_at, settle, start_agents, wait_for, Cluster};
use serde_json::{json, Value};
use test_support::apiserver::{NAMESPACES, NETWORK_POLICIES, PODS};
use test_support::chain::Attachment;
use test_support::kube_proxy::{self, Mode, Service};
use test_support::responder::{ask_all, Responder};
use test_support::{deployed_conflist, Netns};

const CLUSTER_CIDRS: [&str; 2] = ["10.244.0.0/16", "fd00:244::/56"];
const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/16", "fd00:96::/112"];
const NODE_CIDRS: [[&str; 2]; 2] = [
    ["10.244.5.0/24", "fd00:244:0:5::/64"],
    ["10.244.6.0/24", "fd00:244:0:6::/64"],
];
/// The underlay's IPv6 network (the overlay itself runs over IPv4).
const UNDERLAY6: &str = "fd77::";
const FAMILIES: [&str; 2] = ["IPv4", "IPv6"];

/// The ClusterIPs of the Services, per family.
const WEB_LOCAL: [&str; 2] = ["10.96.0.10", "fd00:96::10"];
const WEB_REMOTE: [&str; 2] = ["10.96.0.11", "fd00:96::11"];
const SELF_A: [&str; 2] = ["10.96.0.12", "fd00:96::12"];
const NODE_PORT: u16 = 30500;

/// How the two nodes (on one L2 segment) carry pod traffic to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peers {
    /// A plain route via the other node's underlay address (direct routing, the default).
    Direct,
    /// VXLAN (`--direct-routing=false`).
    Vxlan,
}

struct Pod {
    name: &'static str,
    node: usize,
    netns: Netns,
    ips: [String; 2],
    _servers: Vec<Responder>,
}

/// Where a probe starts.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum From {
    Pod(&'static str),
    Node(usize),
    /// A client beyond the nodes, on the underlay.
    Outside,
}

/// Where it goes.
#[derive(Clone, Copy)]
enum To {
    Pod(&'static str),
    NodeAddress(usize),
    /// The node's pod-subnet gateway address (on cni0).
    Gateway(usize),
    Loopback,
    ClusterIp(&'static [&'static str; 2]),
}

/// What the backend must see.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The client pod's own address: no NAT of the source.
    Client,
    /// One of that node's addresses (masqueraded on it).
    NodeAddress(usize),
    Blocked,
}

struct Row {
    what: &'static str,
    from: From,
    to: To,
    port: u16,
    proto: &'static str,
    expect: Expect,
    v4_only: bool,
}

const fn row(
    what: &'static str,
    from: From,
    to: To,
    port: u16,
    proto: &'static str,
    expect: Expect,
) -> Row {
    Row {
        what,
        from,
        to,
        port,
        proto,
        expect,
        v4_only: false,
    }
}

const fn row4(
    what: &'static str,
    from: From,
    to: To,
    port: u16,
    proto: &'static str,
    expect: Expect,
) -> Row {
    Row {
        v4_only: true,
        ..row(what, from, to, port, proto, expect)
    }
}

use Expect::{Blocked, Client};

/// Every path of the datapath rule, on node0 (pods a, b, d) and node1 (pods c, e); b serves on
/// node0, c on node1, a has its own hostPort and Service.
const PATHS: &[Row] = &[
    row(
        "pod -> pod, same node",
        From::Pod("a"),
        To::Pod("b"),
        8080,
        "tcp",
        Client,
    ),
    row(
        "pod -> pod, same node",
        From::Pod("a"),
        To::Pod("b"),
        8080,
        "udp",
        Client,
    ),
    row(
        "pod -> pod, other node",
        From::Pod("c"),
        To::Pod("b"),
        8080,
        "tcp",
        Client,
    ),
    row(
        "pod -> pod, other node",
        From::Pod("c"),
        To::Pod("b"),
        8080,
        "udp",
        Client,
    ),
    row(
        "node -> pod (kubelet probes)",
        From::Node(0),
        To::Pod("b"),
        8080,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "pod -> hostPort of a pod of its node, via the node's address",
        From::Pod("a"),
        To::NodeAddress(0),
        30080,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "pod -> hostPort of a pod of its node, via the node's address",
        From::Pod("a"),
        To::NodeAddress(0),
        30080,
        "udp",
        Expect::NodeAddress(0),
    ),
    row(
        "pod -> hostPort of a pod of its node, via the pod gateway",
        From::Pod("a"),
        To::Gateway(0),
        30080,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "pod -> hostPort on another node",
        From::Pod("c"),
        To::NodeAddress(0),
        30080,
        "tcp",
        Expect::NodeAddress(1),
    ),
    row(
        "pod -> its own hostPort (hairpin)",
        From::Pod("a"),
        To::NodeAddress(0),
        30081,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "node -> hostPort",
        From::Node(0),
        To::NodeAddress(0),
        30080,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "node -> hostPort",
        From::Node(0),
        To::NodeAddress(0),
        30080,
        "udp",
        Expect::NodeAddress(0),
    ),
    row4(
        "127.0.0.1 -> hostPort",
        From::Node(0),
        To::Loopback,
        30080,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "pod -> ClusterIP -> backend on its node",
        From::Pod("a"),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "tcp",
        Client,
    ),
    row(
        "pod -> ClusterIP -> backend on its node",
        From::Pod("a"),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "udp",
        Client,
    ),
    row(
        "pod -> ClusterIP -> backend on another node",
        From::Pod("a"),
        To::ClusterIp(&WEB_REMOTE),
        80,
        "tcp",
        Client,
    ),
    row(
        "pod -> ClusterIP -> backend on another node",
        From::Pod("a"),
        To::ClusterIp(&WEB_REMOTE),
        80,
        "udp",
        Client,
    ),
    row(
        "pod on node1 -> ClusterIP -> backend on node0",
        From::Pod("c"),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "tcp",
        Client,
    ),
    row(
        "pod -> its own Service (hairpin)",
        From::Pod("a"),
        To::ClusterIp(&SELF_A),
        80,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "node -> ClusterIP -> pod",
        From::Node(0),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "outside -> NodePort -> backend on that node",
        From::Outside,
        To::NodeAddress(0),
        NODE_PORT,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "outside -> NodePort -> backend on another node",
        From::Outside,
        To::NodeAddress(1),
        NODE_PORT,
        "tcp",
        Expect::NodeAddress(1),
    ),
    // The conformance HostPort check: one port, three pods, told apart by hostIP and protocol
    // (each maps to a container port only that pod serves).
    row4(
        "hostPort 54321/TCP on 127.0.0.1 -> pod a",
        From::Node(0),
        To::Loopback,
        54321,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row4(
        "hostPort 54321/TCP on the node's address -> pod b",
        From::Node(0),
        To::NodeAddress(0),
        54321,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row4(
        "hostPort 54321/UDP on the node's address -> pod d",
        From::Node(0),
        To::NodeAddress(0),
        54321,
        "udp",
        Expect::NodeAddress(0),
    ),
];

/// The same paths to b with a policy on b that admits pods labelled `role: allowed` (a on b's
/// node, c on the other) and no one else (d on b's node, e on the other).
const POLICED: &[Row] = &[
    row(
        "allowed pod -> pod, same node",
        From::Pod("a"),
        To::Pod("b"),
        8080,
        "tcp",
        Client,
    ),
    row(
        "allowed pod -> pod, same node",
        From::Pod("a"),
        To::Pod("b"),
        8080,
        "udp",
        Client,
    ),
    row(
        "denied pod -> pod, same node",
        From::Pod("d"),
        To::Pod("b"),
        8080,
        "tcp",
        Blocked,
    ),
    row(
        "denied pod -> pod, same node",
        From::Pod("d"),
        To::Pod("b"),
        8080,
        "udp",
        Blocked,
    ),
    row(
        "allowed pod -> pod, other node",
        From::Pod("c"),
        To::Pod("b"),
        8080,
        "tcp",
        Client,
    ),
    row(
        "denied pod -> pod, other node",
        From::Pod("e"),
        To::Pod("b"),
        8080,
        "tcp",
        Blocked,
    ),
    row(
        "allowed pod -> ClusterIP -> backend, same node",
        From::Pod("a"),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "tcp",
        Client,
    ),
    row(
        "denied pod -> ClusterIP -> backend, same node",
        From::Pod("d"),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "tcp",
        Blocked,
    ),
    row(
        "denied pod -> ClusterIP -> backend, same node",
        From::Pod("d"),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "udp",
        Blocked,
    ),
    row(
        "allowed pod -> ClusterIP -> backend, other node",
        From::Pod("c"),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "tcp",
        Client,
    ),
    row(
        "denied pod -> ClusterIP -> backend, other node",
        From::Pod("e"),
        To::ClusterIp(&WEB_LOCAL),
        80,
        "tcp",
        Blocked,
    ),
    row(
        "allowed pod -> hostPort, via the node's address",
        From::Pod("a"),
        To::NodeAddress(0),
        30080,
        "tcp",
        Expect::NodeAddress(0),
    ),
    row(
        "denied pod -> hostPort, via the node's address",
        From::Pod("d"),
        To::NodeAddress(0),
        30080,
        "tcp",
        Blocked,
    ),
    row(
        "denied pod -> hostPort, via the pod gateway",
        From::Pod("d"),
        To::Gateway(0),
        30080,
        "tcp",
        Blocked,
    ),
    // Leaving the pod network for node0's address, c is masqueraded by its node: the policy sees
    // node1's address, which no podSelector admits (an ipBlock would).
    row(
        "allowed pod of another node -> hostPort (arrives as its node)",
        From::Pod("c"),
        To::NodeAddress(0),
        30080,
        "tcp",
        Blocked,
    ),
    row(
        "denied pod -> a pod no policy selects",
        From::Pod("d"),
        To::Pod("a"),
        8080,
        "tcp",
        Client,
    ),
    row(
        "node -> policed pod (kubelet probes)",
        From::Node(0),
        To::Pod("b"),
        8080,
        "tcp",
        Expect::NodeAddress(0),
    ),
];

/// Pods: name, node, labels, hostPort mappings, extra (port, protocol) served.
type PodSpec = (
    &'static str,
    usize,
    &'static str,
    fn(&str) -> Value,
    &'static [(u16, &'static str)],
);

fn pod_specs() -> [PodSpec; 5] {
    [
        (
            "a",
            0,
            "allowed",
            |_| {
                json!([
                    {"hostPort": 30081, "containerPort": 8080, "protocol": "tcp"},
                    {"hostPort": 54321, "containerPort": 9001, "protocol": "tcp", "hostIP": "127.0.0.1"},
                ])
            },
            &[(9001, "tcp")],
        ),
        (
            "b",
            0,
            "backend",
            |node_ip| {
                json!([
                    {"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"},
                    {"hostPort": 30080, "containerPort": 8080, "protocol": "udp"},
                    {"hostPort": 54321, "containerPort": 9002, "protocol": "tcp", "hostIP": node_ip},
                ])
            },
            &[(9002, "tcp")],
        ),
        (
            "d",
            0,
            "denied",
            |node_ip| {
                json!([
                    {"hostPort": 54321, "containerPort": 9003, "protocol": "udp", "hostIP": node_ip},
                ])
            },
            &[(9003, "udp")],
        ),
        (
            "c",
            1,
            "allowed",
            |_| {
                json!([
                    {"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"},
                ])
            },
            &[],
        ),
        ("e", 1, "denied", |_| json!([]), &[]),
    ]
}

struct World {
    tag: String,
    pods: Vec<Pod>,
    labels: Vec<(&'static str, &'static str)>,
    cluster: Cluster,
}

fn underlay6(node: usize) -> String {
    format!("{UNDERLAY6}{:x}", 10 + node)
}

fn first_host(cidr: &str) -> String {
    let (net, _) = cidr.split_once('/').unwrap();
    match net.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => std::net::Ipv4Addr::from(u32::from(v4) + 1).to_string(),
        IpAddr::V6(v6) => std::net::Ipv6Addr::from(u128::from(v6) + 1).to_string(),
    }
}

impl World {
    /// Two dual-stack nodes whose br_netfilter says `bridge_nf`, peers over `peers`, the five
    /// pods through the deployed chain, servers in each, kube-proxy's rules in `mode` on both.
    fn new(tag: &str, bridge_nf: bool, mode: Mode, peers: Peers) -> World {
        let mut cluster = Cluster::with_kubernetes(tag, &[]);
        if peers == Peers::Vxlan {
            cluster.over_vxlan();
        }
        let api_args = [
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
        cluster.underlay.ip(&[
            "addr",
            "add",
            &format!("{UNDERLAY6}1/64"),
            "dev",
            "ul0",
            "nodad",
        ]);
        for (i, cidrs) in NODE_CIDRS.iter().enumerate() {
            cluster.add_node(tag, i, &api_args);
            cluster
                .api()
                .add_node_with_cidrs(&format!("node{i}"), cidrs);
            let node = &cluster.nodes[i];
            node.ns.ip(&[
                "addr",
                "add",
                &format!("{}/64", underlay6(i)),
                "dev",
                "eth0",
                "nodad",
            ]);
            node.ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("{UNDERLAY6}1"),
            ]);
            let value = if bridge_nf { "1" } else { "0" };
            for table in ["iptables", "ip6tables"] {
                node.ns.exec(&[
                    "sysctl",
                    "-qw",
                    &format!("net.bridge.bridge-nf-call-{table}={value}"),
                ]);
            }
        }
        for node in &mut cluster.nodes {
            node.start(&["--cluster-cidr", CLUSTER_CIDRS[1]]);
        }

        let installed: Value = serde_json::from_str(&deployed_conflist()).unwrap();
        let plugins = bin_dir();
        let lists = node_lists(&installed, &cluster, &plugins);
        let mut pods = Vec::new();
        let mut labels = Vec::new();
        for (name, node, role, mappings, extra) in pod_specs() {
            let netns = Netns::new(&format!("{tag}{name}"));
            let path = netns.path().display().to_string();
            let att = Attachment {
                id: name,
                netns: &path,
                ifname: "eth0",
                runtime: json!({"portMappings": mappings(&cluster.nodes[node].ip)}),
            };
            let result = lists[node]
                .add(&att)
                .unwrap_or_else(|e| panic!("ADD {name}: {}", e.stdout));
            let address = |v6: bool| {
                test_support::result_address(&result, v6)
                    .unwrap_or_else(|| panic!("{name} has no address of each family: {result}"))
            };
            let mut servers = vec![
                Responder::start(&netns, 8080, "tcp"),
                Responder::start(&netns, 8080, "udp"),
            ];
            for (port, proto) in extra {
                servers.push(Responder::start(&netns, *port, proto));
            }
            pods.push(Pod {
                name,
                node,
                ips: [address(false), address(true)],
                netns,
                _servers: servers,
            });
            labels.push((name, role));
        }
        drop(lists);
        let world = World {
            tag: tag.to_string(),
            pods,
            labels,
            cluster,
        };
        world.install_kube_proxy(mode);
        let (a, c) = (world.pod("a"), world.pod("c"));
        wait_for(
            "pods of both nodes reach each other",
            Duration::from_secs(20),
            || a.netns.ping(&c.ips[0]) && a.netns.ping(&c.ips[1]),
            || world.cluster.nodes[0].log(),
        );
        world
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods.iter().find(|p| p.name == name).unwrap()
    }

    fn services(&self, family: usize) -> Vec<Service> {
        let endpoint = |pod: &str| -> Vec<SocketAddr> {
            vec![SocketAddr::new(
                self.pod(pod).ips[family].parse().unwrap(),
                8080,
            )]
        };
        let mut services = Vec::new();
        for (name, ips, backend, protos, node_port) in [
            (
                "x/web-local:http",
                &WEB_LOCAL,
                "b",
                &["tcp", "udp"][..],
                Some(NODE_PORT),
            ),
            (
                "x/web-remote:http",
                &WEB_REMOTE,
                "c",
                &["tcp", "udp"][..],
                None,
            ),
            ("x/self-a:http", &SELF_A, "a", &["tcp"][..], None),
        ] {
            for proto in protos {
                services.push(Service {
                    name: name.to_string(),
                    cluster_ip: ips[family].parse().unwrap(),
                    port: 80,
                    protocol: proto,
                    node_port: node_port.filter(|_| *proto == "tcp"),
                    endpoints: endpoint(backend),
                });
            }
        }
        services
    }

    fn install_kube_proxy(&self, mode: Mode) {
        for (i, node) in self.cluster.nodes.iter().enumerate() {
            for family in 0..2 {
                let node_ip = if family == 0 {
                    node.ip.clone()
                } else {
                    underlay6(i)
                };
                let facts = kube_proxy::Node {
                    cluster_cidr: CLUSTER_CIDRS[family].to_string(),
                    service_cidr: SERVICE_CIDRS[family].to_string(),
                    node_ips: vec![node_ip.parse().unwrap()],
                };
                kube_proxy::install(&node.ns, mode, &facts, &self.services(family));
            }
        }
    }

    fn node_address(&self, node: usize, family: usize) -> String {
        if family == 0 {
            self.cluster.nodes[node].ip.clone()
        } else {
            underlay6(node)
        }
    }

    /// Every address of a node but loopback's.
    fn addresses_of(&self, node: usize) -> BTreeSet<String> {
        let links = self.cluster.nodes[node].ns.ip_json(&["addr"]);
        links
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["ifname"] != "lo")
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str().map(str::to_string))
            .collect()
    }

    fn target(&self, to: To, family: usize) -> String {
        match to {
            To::Pod(name) => self.pod(name).ips[family].clone(),
            To::NodeAddress(node) => self.node_address(node, family),
            To::Gateway(node) => first_host(NODE_CIDRS[node][family]),
            To::Loopback => ["127.0.0.1", "::1"][family].to_string(),
            To::ClusterIp(ips) => ips[family].to_string(),
        }
    }

    fn netns(&self, from: From) -> &Netns {
        match from {
            From::Pod(name) => &self.pod(name).netns,
            From::Node(node) => &self.cluster.nodes[node].ns,
            From::Outside => &self.cluster.underlay,
        }
    }

    /// Runs every row in both families (IPv4 only where marked); the table of outcomes and the
    /// rows that did not hold.
    fn probe(&self, rows: &[Row]) -> (String, Vec<String>) {
        let mut cells: Vec<[Option<String>; 2]> = vec![[None, None]; rows.len()];
        let froms: BTreeSet<From> = rows.iter().map(|r| r.from).collect();
        for from in froms {
            let mut index = Vec::new();
            let mut targets = Vec::new();
            for (i, r) in rows.iter().enumerate().filter(|(_, r)| r.from == from) {
                for family in 0..if r.v4_only { 1 } else { 2 } {
                    index.push((i, family));
                    targets.push((self.target(r.to, family), r.port, r.proto));
                }
            }
            for ((i, family), seen) in index.into_iter().zip(ask_all(self.netns(from), &targets)) {
                cells[i][family] = Some(seen.unwrap_or_else(|| "-".to_string()));
            }
        }
        let node_addresses = [self.addresses_of(0), self.addresses_of(1)];
        let mut table = String::from("| path | proto | IPv4 | IPv6 |\n|---|---|---|---|\n");
        let mut failures = Vec::new();
        for (r, seen) in rows.iter().zip(&cells) {
            let mut line = format!("| {} | {} |", r.what, r.proto);
            for family in 0..2 {
                let Some(seen) = &seen[family] else {
                    line.push_str(" n/a |");
                    continue;
                };
                let ok = match r.expect {
                    Expect::Blocked => seen == "-",
                    Expect::Client => match r.from {
                        From::Pod(name) => *seen == self.pod(name).ips[family],
                        _ => false,
                    },
                    Expect::NodeAddress(node) => node_addresses[node].contains(seen),
                };
                let shown = if seen == "-" { "no answer" } else { seen };
                line.push_str(&format!(" {} {shown} |", if ok { "ok" } else { "WRONG" }));
                if !ok {
                    failures.push(format!("{} ({}, {})", r.what, r.proto, FAMILIES[family]));
                }
            }
            table.push_str(&line);
            table.push('\n');
        }
        (table, failures)
    }

    /// Kernel state for a failure message.
    fn dump(&self) -> String {
        self.cluster
            .nodes
            .iter()
            .map(|n| {
                let ruleset = n.ns.try_exec(&["nft", "list", "ruleset"]);
                let routes = n.ns.try_exec(&["ip", "-d", "route"]);
                format!(
                    "{}:\n{}\n{}",
                    n.name,
                    String::from_utf8_lossy(&routes.stdout),
                    String::from_utf8_lossy(&ruleset.stdout)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn assert_table(&self, title: &str, rows: &[Row], extra: impl Fn() -> String) {
        let (table, failures) = self.probe(rows);
        println!("{} — {title}\n{table}", self.tag);
        assert!(
            failures.is_empty(),
            "{title}: {} row(s) failed: {failures:#?}\n{table}\n{}\n{}",
            failures.len(),
            extra(),
            self.dump()
        );
    }

    /// tether-netpol on both nodes, the pods in the API, and b's policy; waits until it holds.
    fn police(&self) -> (Vec<harness::Killed>, Vec<std::path::PathBuf>) {
        let api = self.cluster.api();
        api.put(
            NAMESPACES,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}}),
        );
        for (pod, (name, role)) in self.pods.iter().zip(&self.labels) {
            let ips: Vec<&str> = pod.ips.iter().map(String::as_str).collect();
            api.put(
                PODS,
                pod_at(
                    "x",
                    name,
                    &format!("node{}", pod.node),
                    &ips,
                    json!({"role": role}),
                ),
            );
        }
        let (agents, logs) = start_agents(&self.cluster);
        api.put(
            NETWORK_POLICIES,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "backend-from-allowed", "namespace": "x"},
                "spec": {"podSelector": {"matchLabels": {"role": "backend"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "allowed"}}}]}]}}),
        );
        let (d, b) = (self.pod("d"), self.pod("b"));
        settle(
            "b's policy shuts d out",
            || ask_all(&d.netns, &[(b.ips[0].clone(), 8080, "tcp")])[0].is_none(),
            || agent_logs(&logs),
        );
        for node in &self.cluster.nodes {
            let ready = node.ns.try_exec(&[
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
                "tether-netpol on {} is not ready: it sees a path it cannot police\n{}",
                node.name,
                agent_logs(&logs)
            );
        }
        (agents, logs)
    }
}

fn datapath(tag: &str, bridge_nf: bool, mode: Mode, peers: Peers) {
    let world = World::new(tag, bridge_nf, mode, peers);
    let setting = format!(
        "bridge-nf-call-iptables={}, kube-proxy {mode:?} mode, peers {peers:?}",
        u8::from(bridge_nf)
    );
    world.assert_table(&format!("every path ({setting})"), PATHS, String::new);
}

fn policed(tag: &str, bridge_nf: bool, mode: Mode, peers: Peers) {
    let world = World::new(tag, bridge_nf, mode, peers);
    let (_agents, logs) = world.police();
    let setting = format!(
        "bridge-nf-call-iptables={}, kube-proxy {mode:?} mode, peers {peers:?}, tether-netpol",
        u8::from(bridge_nf)
    );
    world.assert_table(&format!("a policy on b ({setting})"), POLICED, || {
        agent_logs(&logs)
    });
}

#[test]
fn every_path_with_br_netfilter_on_and_kube_proxy_iptables() {
    datapath("dpi1", true, Mode::Iptables, Peers::Direct);
}

#[test]
fn every_path_with_br_netfilter_off_and_kube_proxy_iptables() {
    datapath("dpi0", false, Mode::Iptables, Peers::Vxlan);
}

#[test]
fn every_path_with_br_netfilter_on_and_kube_proxy_nftables() {
    datapath("dpn1", true, Mode::Nftables, Peers::Vxlan);
}

#[test]
fn every_path_with_br_netfilter_off_and_kube_proxy_nftables() {
    datapath("dpn0", false, Mode::Nftables, Peers::Direct);
}

#[test]
fn policy_holds_on_every_path_with_br_netfilter_on() {
    policed("dpp1", true, Mode::Iptables, Peers::Direct);
}

#[test]
fn policy_holds_on_every_path_with_br_netfilter_off() {
    policed("dpp0", false, Mode::Nftables, Peers::Vxlan);
}
