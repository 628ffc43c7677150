#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! NetworkPolicy truth tables on the real kernel, on one node: a node namespace with the pods'
//! bridge, nine pods made by the real cni-bridge (`test_support::policy_world`: namespaces x, y,
//! z with pods a, b, c as in the upstream e2e tests, the scenarios and their expected matrices),
//! the agent binary against the API stand-in. The same scenarios run across two overlay nodes in
//! `cni-overlay/tests/policy.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::apiserver::{ApiServer, NAMESPACES, NETWORK_POLICIES, PODS};
use test_support::policy_world::{
    egress_scenarios, ingress_from_namespace, ingress_scenarios, namespace_object, pod_object,
    put_namespaces, sctp_80_from_y, sctp_scenarios, PolicyPod, PolicyWorld, Who, NAMESPACE_NAMES,
    POD_NAMES,
};
use test_support::{probe, require_root, Netns};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct World {
    pods: Vec<PolicyPod>,
    api: ApiServer,
    agent: std::cell::RefCell<Option<KillOnDrop>>,
    agent_args: Vec<String>,
    node: Netns,
    _dir: PathBuf,
    datapath: Datapath,
}

impl Drop for World {
    fn drop(&mut self) {
        self.pods.clear();
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                "nft",
                "delete",
                "table",
                "inet",
                "tether-netpol",
            ])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

/// Every pod is dual-stack: 10.77.0.N and fd77::N.
fn v6_of(ip: &str) -> String {
    format!("fd77::{}", ip.rsplit('.').next().unwrap())
}

/// How the node's pods reach each other, and so how the agent sees that traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Datapath {
    /// Bridged between plain ports, handed to the IP hooks by br_netfilter.
    BrNetfilter,
    /// Isolated ports (cni-bridge's `portIsolation`), routed by the node; br_netfilter off.
    Isolated,
}

/// A pod's namespace on the node's bridge, made by the real cni-bridge (and cni-ipam, with a
/// range of one address), with its servers running.
fn plug(
    node: &Netns,
    dir: &Path,
    datapath: Datapath,
    tag: &str,
    ip: &str,
) -> (Netns, probe::Servers) {
    let netns = Netns::new(tag);
    let bridge = test_support::workspace_binary(
        Path::new(env!("CARGO_BIN_EXE_tether-netpol")),
        "cni-bridge",
    );
    test_support::workspace_binary(&bridge, "cni-ipam");
    let v6 = v6_of(ip);
    let conf = json!({
        "cniVersion": "1.1.0", "name": "tnp", "type": "cni-bridge",
        "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
        "portIsolation": datapath == Datapath::Isolated,
        "ipam": {"type": "cni-ipam", "dataDir": dir.join("ipam"), "ranges": [
            [{"subnet": "10.77.0.0/24", "rangeStart": ip, "rangeEnd": ip, "gateway": "10.77.0.1"}],
            [{"subnet": "fd77::/64", "rangeStart": v6, "rangeEnd": v6, "gateway": "fd77::1"}]]},
    });
    let netns_path = netns.path().display().to_string();
    let cni_path = bridge.parent().unwrap().display().to_string();
    test_support::run_plugin_in(
        Some(node),
        &bridge,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", tag),
            ("CNI_NETNS", &netns_path),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", &cni_path),
        ],
        &conf,
    )
    .ok();
    let server = probe::serve(&netns, &[80, 81]);
    (netns, server)
}

fn probe_one(from: &Netns, target: &str) -> bool {
    probe::open(from, target)
}

impl World {
    fn new(tag: &str) -> World {
        World::with(tag, Datapath::BrNetfilter)
    }

    fn with(tag: &str, datapath: Datapath) -> World {
        World::start(tag, datapath, &[])
    }

    /// The node, its pods and the agent (with `agent_args` besides the usual ones).
    fn start(tag: &str, datapath: Datapath, agent_args: &[&str]) -> World {
        require_root();
        let node = Netns::new(&format!("{tag}n"));
        let br_netfilter = if datapath == Datapath::BrNetfilter {
            "1"
        } else {
            "0"
        };
        for family in ["iptables", "ip6tables"] {
            node.exec(&[
                "sysctl",
                "-qw",
                &format!("net.bridge.bridge-nf-call-{family}={br_netfilter}"),
            ]);
        }
        let api = ApiServer::start_in(&node, "127.0.0.1:0");
        let dir = std::env::temp_dir().join(format!("tnp-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        put_namespaces(&api);
        let mut pods = Vec::new();
        for (i, ns) in NAMESPACE_NAMES.iter().enumerate() {
            for (j, pod) in POD_NAMES.iter().enumerate() {
                let who = Who { ns, pod };
                let ip = format!("10.77.0.{}", 10 + i * 3 + j);
                let (netns, server) = plug(&node, &dir, datapath, &format!("{tag}{ns}{pod}"), &ip);
                let pod = PolicyPod {
                    who,
                    ip6: Some(v6_of(&ip)),
                    ip,
                    node: "node1".into(),
                    netns,
                    servers: server,
                };
                api.put(PODS, pod_object(&pod, json!({"pod": pod.who.pod})));
                pods.push(pod);
            }
        }
        let world = World {
            pods,
            api,
            agent: std::cell::RefCell::new(None),
            agent_args: agent_args.iter().map(|a| a.to_string()).collect(),
            node,
            _dir: dir,
            datapath,
        };
        world.start_agent();
        let started = Instant::now();
        while !world.has_table() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no table: {}",
                world.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        world
    }

    /// Starts the agent (its log appended to `agent.log`).
    fn start_agent(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.join("agent.log"))
            .unwrap();
        let agent = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node.name,
                env!("CARGO_BIN_EXE_tether-netpol"),
            ])
            .args([
                "--node-name",
                "node1",
                "--pod-cidrs",
                "10.77.0.0/24,fd77::/64",
                "--metrics-addr",
                "127.0.0.1:9403",
                "--kubeconfig",
            ])
            .arg(self._dir.join("kubeconfig"))
            .args(&self.agent_args)
            .stderr(log)
            .spawn()
            .unwrap();
        *self.agent.borrow_mut() = Some(KillOnDrop(agent));
    }

    /// SIGKILL, wherever the agent is.
    fn kill_agent(&self) {
        self.agent.borrow_mut().take();
    }

    fn has_table(&self) -> bool {
        self.node
            .try_exec(&["nft", "list", "table", "inet", "tether-netpol"])
            .status
            .success()
    }

    /// `path` of the agent's HTTP endpoint: status code and body.
    fn http(&self, path: &str) -> (String, String) {
        let out = self.node.try_exec(&[
            "curl",
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:9403{path}"),
        ]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_string(), body.to_string())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.join("agent.log")).unwrap_or_default()
    }
}

impl PolicyWorld for World {
    fn api(&self) -> &ApiServer {
        &self.api
    }

    fn pods(&self) -> &[PolicyPod] {
        &self.pods
    }

    fn pod_cidr(&self) -> String {
        "10.77.0.0/24".into()
    }

    fn node_netns(&self, _node: &str) -> &Netns {
        &self.node
    }

    fn dump(&self) -> String {
        let table = self
            .node
            .exec(&["nft", "list", "table", "inet", "tether-netpol"]);
        format!("table:\n{table}\n\nagent log:\n{}", self.log())
    }
}

#[test]
fn ingress_scenarios_of_the_upstream_e2e_tests() {
    ingress_scenarios(&World::new("tnpi"));
}

/// The same scenarios between pods on isolated ports with br_netfilter off: the node routes
/// their traffic, and the agent sees it in `forward` all the same.
#[test]
fn ingress_scenarios_between_isolated_ports_without_br_netfilter() {
    let w = World::with("tnpr", Datapath::Isolated);
    assert_eq!(
        w.http("/readyz").0,
        "200",
        "isolated ports need no br_netfilter"
    );
    ingress_scenarios(&w);
}

#[test]
fn egress_deny_with_one_port_allowed() {
    let w = World::new("tnpe");
    egress_scenarios(&w);
    // Metrics and readiness; readiness fails while bridged traffic skips the IP hooks.
    w.policy(
        "z",
        "from-x",
        ingress_from_namespace(json!({"matchLabels": {"pod": "b"}}), "x", None),
    );
    w.expect("z/b from x", |s, d, _, _| {
        !(d.ns == "z" && d.pod == "b") || s.ns == "x"
    });
    let (code, metrics) = w.http("/metrics");
    assert_eq!(code, "200");
    assert!(metrics.contains("tether_netpol_policies 1"), "{metrics}");
    assert!(metrics.contains("tether_netpol_rules "), "{metrics}");
    assert_eq!(w.http("/readyz").0, "200");
    w.node
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0"]);
    let (code, why) = w.http("/readyz");
    assert!(
        code == "503" && why.contains("bypasses NetworkPolicies"),
        "{code} {why}"
    );
    w.node
        .exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    assert_eq!(w.http("/readyz").0, "200");
}

#[test]
fn a_pod_the_agent_does_not_know_yet_is_held_while_policies_exist() {
    let w = World::new("tnph");
    // Its CNI ADD is done, its address not yet in the API: open while no policy exists at all.
    let (d_ns, server) = plug(&w.node, &w._dir, w.datapath, "tnphxd", "10.77.0.40");
    let d = PolicyPod {
        who: Who { ns: "x", pod: "d" },
        ip: "10.77.0.40".into(),
        ip6: Some(v6_of("10.77.0.40")),
        node: "node1".into(),
        netns: d_ns,
        servers: server,
    };
    let a = &w.pods[0].netns;
    let started = Instant::now();
    while !probe_one(a, "10.77.0.40:tcp:80") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new pod never answered"
        );
    }
    // Any policy anywhere: a pod the agent does not know could be one it selects, so it is held.
    w.policy(
        "z",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let started = Instant::now();
    while probe_one(a, "10.77.0.40:tcp:80")
        || probe_one(&d.netns, &format!("{}:tcp:80", w.pods[1].ip))
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the unknown pod stayed open"
        );
    }
    // Known, and selected by no policy: open.
    w.api.put(PODS, pod_object(&d, json!({"pod": "d"})));
    let started = Instant::now();
    while !probe_one(a, "10.77.0.40:tcp:80") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the known pod stayed held: {}",
            w.log()
        );
    }
    assert!(probe_one(&d.netns, &format!("{}:tcp:80", w.pods[1].ip)));
    w.api.delete(PODS, "x", "d");
    let started = Instant::now();
    while probe_one(a, "10.77.0.40:tcp:80") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a deleted pod's address stayed open"
        );
    }
}

/// The address sets of the kernel's table: name -> addresses (named-port sets as
/// `address proto port`).
fn kernel_sets(node: &Netns) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let out = node.exec(&["nft", "-j", "list", "table", "inet", "tether-netpol"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut sets = BTreeMap::new();
    for item in v["nftables"].as_array().unwrap() {
        let Some(set) = item.get("set").or_else(|| item.get("map")) else {
            continue;
        };
        let elems = set["elem"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                if let Some(parts) = e.get("concat") {
                    return parts
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p.to_string().trim_matches('"').to_string())
                        .collect::<Vec<_>>()
                        .join(" ");
                }
                if let Some([key, verdict]) = e.as_array().map(Vec::as_slice) {
                    // A verdict map's element: address and the chain it jumps to.
                    let chain = verdict["jump"]["target"].as_str().unwrap_or_default();
                    return format!("{} {chain}", key.as_str().unwrap_or_default());
                }
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string())
            })
            .collect();
        sets.insert(set["name"].as_str().unwrap().to_string(), elems);
    }
    sets
}

/// The rules of the kernel's table.
fn kernel_rules(node: &Netns) -> usize {
    let out = node.exec(&["nft", "-j", "list", "table", "inet", "tether-netpol"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| item.get("rule").is_some())
        .count()
}

/// The same sets computed afresh from what the API holds now.
fn fresh_sets(api: &ApiServer) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    fresh_table(api)
        .sets
        .into_iter()
        .map(|(name, set)| {
            let elems = set
                .elements
                .iter()
                .map(|e| match e {
                    tether_netpol::nft::Elem::Addr(ip) => ip.to_string(),
                    tether_netpol::nft::Elem::Named(ip, p, port) => {
                        format!("{ip} {} {port}", p.nft())
                    }
                    tether_netpol::nft::Elem::Jump(ip, chain) => format!("{ip} {chain}"),
                })
                .collect();
            (name, elems)
        })
        .collect()
}

/// The table computed afresh from what the API holds now.
fn fresh_table(api: &ApiServer) -> tether_netpol::nft::Table {
    use tether_netpol::model::{Cluster, PodInfo};
    use tether_netpol::nft::{render, Options};
    let mut cluster = Cluster::default();
    for pod in api.list(PODS) {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod).unwrap();
        if let Some(info) = PodInfo::from_pod(&pod) {
            cluster
                .pods
                .insert((info.namespace.clone(), info.name.clone()), info);
        }
    }
    for ns in api.list(NAMESPACES) {
        let labels = serde_json::from_value(ns["metadata"]["labels"].clone()).unwrap_or_default();
        cluster
            .namespaces
            .insert(ns["metadata"]["name"].as_str().unwrap().to_string(), labels);
    }
    for p in api.list(NETWORK_POLICIES) {
        let p: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(p).unwrap();
        let key = (
            p.metadata.namespace.clone().unwrap(),
            p.metadata.name.clone().unwrap(),
        );
        cluster.policies.insert(key, p.into());
    }
    let options = Options {
        log_denied: false,
        pod_subnets: vec![
            "10.77.0.0/24".parse().unwrap(),
            "fd77::/64".parse().unwrap(),
        ],
    };
    render(&cluster.plan("node1"), &options)
}

#[test]
fn chaos_of_policies_labels_and_pods_ends_in_the_fresh_computation() {
    let w = World::new("tnpc");
    let deleted = w.ip("z", "c");
    // Traffic flows all along: x/a keeps probing everyone.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prober = {
        let stop = stop.clone();
        let from = w.pods[0].netns.name.clone();
        let targets: Vec<String> = w.pods[1..]
            .iter()
            .map(|p| format!("{}:tcp:80", p.ip))
            .collect();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = Command::new("ip")
                    .args(["netns", "exec", &from, "python3", &probe::script(), "probe"])
                    .args(&targets)
                    .output();
            }
        })
    };
    let specs = [
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
        json!({"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "c"]}]},
               "policyTypes": ["Ingress", "Egress"], "egress": [{"to": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
    ];
    for step in 0..40usize {
        let ns = NAMESPACE_NAMES[step % 3];
        match step % 5 {
            0 | 1 => w.policy(ns, &format!("p{}", step % 4), specs[step % 4].clone()),
            2 => w.delete_policy(
                NAMESPACE_NAMES[(step / 5) % 3],
                &format!("p{}", (step / 5) % 4),
            ),
            3 => {
                let who = w.pods[step % 9].who;
                let label = POD_NAMES[(step / 3) % 3];
                w.relabel(who.ns, who.pod, json!({"pod": label}));
            }
            _ => {
                w.api.put(
                    NAMESPACES,
                    namespace_object(ns, json!({"ns": NAMESPACE_NAMES[(step / 2) % 3]})),
                );
            }
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    // A pod goes for good.
    w.api.delete(PODS, "z", "c");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    prober.join().unwrap();
    let started = Instant::now();
    loop {
        let (kernel, fresh) = (kernel_sets(&w.node), fresh_sets(&w.api));
        if kernel == fresh {
            assert!(
                kernel.values().map(|e| e.len()).sum::<usize>() >= 8,
                "{kernel:?}"
            );
            let stale: Vec<&String> = kernel
                .iter()
                .filter(|(_, elems)| {
                    elems
                        .iter()
                        .any(|e| e.split(' ').next() == Some(deleted.as_str()))
                })
                .map(|(name, _)| name)
                .collect();
            assert!(
                stale.is_empty(),
                "the deleted pod's address is still in {stale:?}"
            );
            // Relabels and the pod's deletion changed set members only: written as elements;
            // policy changes as batches, over netlink too (no nft process).
            let log = w.log();
            assert!(
                log.contains("path=\"netlink\"") || log.contains("path=\"netlink (pod)\""),
                "no element-only write:\n{log}"
            );
            assert!(
                log.contains("path=\"netlink (batch)\""),
                "no batch write:\n{log}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the kernel's sets differ from a fresh computation:\nkernel {kernel:?}\nfresh {fresh:?}\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod's change on its own is written as the set members it moves, worked out from the pod
/// alone (`netlink (pod)` in the log): a pod joining and leaving a rule's peers, joining a
/// policy's pods with a named port, going and coming back. The kernel ends where a whole plan
/// puts it, packets included.
#[test]
fn a_pod_change_alone_moves_set_members_as_a_whole_plan_would() {
    let w = World::new("tnpm");
    w.policy(
        "x",
        "to-a",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}],
                            "ports": [{"port": "serve-80-tcp"}]}]}),
    );
    // Only the clients of x reach x's pods labelled a, on TCP 80.
    let only = |clients: &'static [&'static str], targets: &'static [&'static str]| {
        move |s: Who, d: Who, p: &str, port: u16| {
            if d.ns == "x" && targets.contains(&d.pod) {
                s.ns == "x" && clients.contains(&s.pod) && p == "tcp" && port == 80
            } else {
                true
            }
        }
    };
    // The first client makes the rule's peer set: a whole plan.
    w.relabel("x", "b", json!({"pod": "b", "role": "client"}));
    w.expect("x/b is a client", only(&["b"], &["a"]));
    // Moved members: x/c joins the clients, then leaves them for the policy's own pods.
    w.relabel("x", "c", json!({"pod": "c", "role": "client"}));
    w.expect("x/b and x/c are clients", only(&["b", "c"], &["a"]));
    w.relabel("x", "c", json!({"pod": "a"}));
    w.expect("x/c is policed like x/a", only(&["b"], &["a", "c"]));
    // A pod going and coming back: its members leave and return (while it is unknown, its
    // address is held both ways).
    w.api.delete(PODS, "x", "c");
    let xc = w.pod("x", "c").who;
    w.expect("x/c is gone", |s, d, p, port| {
        s != xc && d != xc && only(&["b"], &["a"])(s, d, p, port)
    });
    w.relabel("x", "c", json!({"pod": "c"}));
    w.expect("x/c is back, unselected", only(&["b"], &["a"]));
    let started = Instant::now();
    while kernel_sets(&w.node) != fresh_sets(&w.api) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the kernel's sets differ from a fresh computation\n{}",
            w.dump()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let moved = w.log().matches("netlink (pod)").count();
    assert!(
        moved >= 4,
        "pod changes were not written as moved members:\n{}",
        w.log()
    );
}

/// Policies created and deleted in one namespace are worked out alone (`netlink (policy)` in
/// the log: the policy's rules, its namespace's chains and sets, no whole plan) and change its
/// chain by rules inserted and deleted by handle (`chains_patched`), not by emptying and
/// refilling it; packets follow, and every chain of the kernel holds as many rules as a whole
/// write of the table would.
#[test]
fn policy_changes_patch_their_namespace_chain_by_handle() {
    let w = World::new("tnph");
    let from = |ns: &str, port: u16| {
        json!({"podSelector": {}, "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {"ns": ns}}}],
            "ports": [{"protocol": "TCP", "port": port}]}]})
    };
    // The first policy of x makes its chain (learning the handles); the next ones patch it.
    w.policy(
        "x",
        "deny",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    w.policy("x", "from-y", from("y", 80));
    w.policy("x", "from-z", from("z", 81));
    w.expect("x lets y in on TCP 80 and z on TCP 81", |s, d, p, port| {
        d.ns != "x" || (p == "tcp" && ((s.ns == "y" && port == 80) || (s.ns == "z" && port == 81)))
    });
    w.delete_policy("x", "from-y");
    w.expect("x lets z in on TCP 81", |s, d, p, port| {
        d.ns != "x" || (p == "tcp" && s.ns == "z" && port == 81)
    });
    let log = w.log();
    assert!(
        log.contains("chains_patched=1") || log.contains("\"chains_patched\":1"),
        "no chain was patched:\n{log}"
    );
    assert!(
        log.contains("path=\"netlink (policy)\"") || log.contains("\"path\":\"netlink (policy)\""),
        "no policy was worked out alone:\n{log}"
    );
    let fresh = fresh_table(&w.api);
    for (chain, rules) in &fresh.chains {
        let out = w
            .node
            .exec(&["nft", "-j", "list", "chain", "inet", "tether-netpol", chain]);
        let listed: Value = serde_json::from_str(&out).unwrap();
        let in_kernel = listed["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count();
        assert_eq!(in_kernel, rules.len(), "chain {chain}\n{}", w.dump());
    }
}

#[test]
fn ipv6_is_policed_like_ipv4() {
    let w = World::new("tnp6");
    let (xa, ya, yb) = (
        v6_of(&w.ip("x", "a")),
        v6_of(&w.ip("y", "a")),
        v6_of(&w.ip("y", "b")),
    );
    let netns = |ns: &str, pod: &str| {
        &w.pods
            .iter()
            .find(|p| p.who.ns == ns && p.who.pod == pod)
            .unwrap()
            .netns
    };
    let target = |ip: &str, port: &str| format!("{ip}:{port}");
    let settle = |what: &str, check: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !check() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{what}: {}",
                w.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    settle("open over IPv6", &|| {
        probe_one(netns("y", "a"), &target(&xa, "tcp:80"))
    });
    // The ipBlock is IPv6 and excepts y/a: y/b gets in over IPv6, y/a does not, and nothing
    // gets in over IPv4 (the block names no IPv4 address).
    w.policy(
        "x",
        "v6-block",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "fd77::/64", "except": [format!("{ya}/128")]}}]}]}),
    );
    settle("y/a shut out over IPv6", &|| {
        !probe_one(netns("y", "a"), &target(&xa, "tcp:80"))
    });
    assert!(probe_one(netns("y", "b"), &target(&xa, "udp:81")));
    assert!(!probe_one(
        netns("y", "b"),
        &format!("{}:tcp:80", w.ip("x", "a"))
    ));
    // Pod selectors pick both of a pod's addresses.
    w.policy("x", "v6-block", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    settle("y/b by selector over both families", &|| {
        probe_one(netns("y", "b"), &target(&xa, "tcp:80"))
            && probe_one(netns("y", "b"), &format!("{}:tcp:80", w.ip("x", "a")))
    });
    assert!(!probe_one(netns("y", "a"), &target(&xa, "tcp:80")));
    assert!(
        probe_one(netns("x", "a"), &target(&yb, "tcp:80")),
        "egress not isolated"
    );
}

/// SCTP, and SCTP over IPv6.
#[test]
fn sctp_by_port_named_port_and_egress() {
    let w = World::with("tnps", Datapath::Isolated);
    sctp_scenarios(&w);
    // And over IPv6.
    w.policy("x", "sctp-80-from-y", sctp_80_from_y());
    let x_a = v6_of(&w.ip("x", "a"));
    let (y, z) = (&w.pod("y", "a").netns, &w.pod("z", "a").netns);
    let started = Instant::now();
    while probe_one(z, &format!("{x_a}:sctp:80")) {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", w.log());
    }
    assert!(probe_one(y, &format!("{x_a}:sctp:80")), "over IPv6");
    assert!(!probe_one(y, &format!("{x_a}:sctp:81")));
}

/// SIGKILL wherever the agent is, again and again in the middle of bursts of changes: the kernel
/// keeps a whole table each time (every write is one transaction; a restart writes nothing until
/// it has all three lists, and never flushes), so a standing policy never lapses, and the last
/// restart converges on a fresh computation.
#[test]
fn sigkill_during_writes_keeps_enforcing_and_the_restart_converges() {
    let w = World::with("tnpk", Datapath::Isolated);
    w.policy(
        "z",
        "standing",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    let (x_a, y_a) = (&w.pods[0].netns, &w.pods[3].netns);
    let z_a = format!("{}:tcp:80", w.ip("z", "a"));
    let started = Instant::now();
    while probe_one(x_a, &z_a) {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", w.log());
    }
    let mut seed = u64::from(std::process::id());
    for round in 0..8u64 {
        // A burst that reshapes the table (a full rewrite) and moves set members.
        for k in 0..12u64 {
            let ns = NAMESPACE_NAMES[((round + k) % 3) as usize];
            let pod = POD_NAMES[((round * k) % 3) as usize];
            w.policy(ns, &format!("churn{k}"), json!({
                "podSelector": {"matchLabels": {"pod": pod}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": POD_NAMES[(k % 3) as usize]}}}],
                             "ports": [{"protocol": "TCP", "port": 80 + (round % 2)}]}]}));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis((seed >> 33) % 300));
        w.kill_agent();
        assert!(
            w.has_table(),
            "round {round}: the table is gone after a kill"
        );
        assert!(
            !probe_one(x_a, &z_a),
            "round {round}: the standing policy lapsed after a kill"
        );
        assert!(
            probe_one(y_a, &z_a),
            "round {round}: the standing policy's peer was shut out"
        );
        w.start_agent();
    }
    let started = Instant::now();
    loop {
        let fresh = fresh_table(&w.api);
        if kernel_sets(&w.node) == fresh_sets(&w.api) && kernel_rules(&w.node) == fresh.rule_count()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the restarted agent did not converge:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!probe_one(x_a, &z_a) && probe_one(y_a, &z_a));
}

/// The agent installed on a node whose pods policies already select (a first install on a
/// cluster with policies, a node rebooted): its very first table holds the verdict maps' elements
/// and must be accepted whole. (A one-key verdict map was declared as a one-field concatenation,
/// which nft refuses to fill in the batch that creates it: the agent retried forever and
/// enforced nothing.)
#[test]
fn an_agent_starting_among_existing_policies_enforces_them_at_once() {
    let w = World::with("tnpe", Datapath::Isolated);
    w.policy(
        "z",
        "standing",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    w.kill_agent();
    w.node
        .exec(&["nft", "delete", "table", "inet", "tether-netpol"]);
    w.start_agent();
    let (x_a, y_a) = (&w.pods[0].netns, &w.pods[3].netns);
    let z_a = format!("{}:tcp:80", w.ip("z", "a"));
    let started = Instant::now();
    while probe_one(x_a, &z_a) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the standing policy is not enforced:\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(probe_one(y_a, &z_a), "its peer is shut out");
    assert!(
        !w.log().contains("writing the policy table failed"),
        "{}",
        w.log()
    );
}

/// `nf_log_all_netns` on (log lines from namespaces other than the host's reach the kernel
/// log) while alive; the previous value is put back on drop.
struct LogAllNetns(String);

const LOG_ALL_NETNS: &str = "/proc/sys/net/netfilter/nf_log_all_netns";

impl LogAllNetns {
    fn enable() -> LogAllNetns {
        let before = std::fs::read_to_string(LOG_ALL_NETNS).unwrap();
        std::fs::write(LOG_ALL_NETNS, "1").unwrap();
        LogAllNetns(before.trim().to_string())
    }
}

impl Drop for LogAllNetns {
    fn drop(&mut self) {
        let _ = std::fs::write(LOG_ALL_NETNS, &self.0);
    }
}

/// `--log-denied`: a denied packet is a kernel log line with the prefix and the addresses, at
/// most 10 a second after a burst of 20.
#[test]
fn denied_packets_are_logged_at_a_limited_rate() {
    let _log_all = LogAllNetns::enable();
    let w = World::start("tnpl", Datapath::BrNetfilter, &["--log-denied"]);
    w.policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let (x_a, y_a) = (w.ip("x", "a"), &w.pods[3]);
    let started = Instant::now();
    while probe_one(&y_a.netns, &format!("{x_a}:udp:80")) {
        assert!(started.elapsed() < Duration::from_secs(5), "{}", w.log());
    }
    let table = w
        .node
        .exec(&["nft", "list", "table", "inet", "tether-netpol"]);
    assert!(
        table.contains(
            "limit rate 10/second burst 20 packets log prefix \"tether-netpol denied: \"\n"
        ),
        "{table}"
    );
    // 60 denied datagrams at once, to ports nothing else here uses, picked afresh per run (the
    // kernel log keeps the lines of earlier runs).
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let first = 20000 + nanos % 40000;
    let targets: Vec<String> = (0..60)
        .map(|i| format!("{x_a}:udp:{}", first + i))
        .collect();
    let sent = Instant::now();
    probe::reach(&y_a.netns, &targets);
    let elapsed = sent.elapsed().as_secs_f64();
    let dmesg = test_support::sh("dmesg", &[]);
    let logged = dmesg
        .lines()
        .filter(|l| {
            l.contains("tether-netpol denied: ")
                && l.contains(&format!("SRC={} DST={x_a} ", y_a.ip))
        })
        .filter(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("DPT="))
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| (first..first + 60).contains(&p))
        })
        .count();
    let most = 20 + (10.0 * (elapsed + 1.0)) as usize;
    assert!(
        (1..=most).contains(&logged) && logged < 60,
        "{logged} of 60 denied packets logged in {elapsed:.1} s (at most {most} expected)"
    );
}

/// A Service address DNATed to a pod, as kube-proxy does in the node's prerouting: the policy
/// sees the pod it reaches, in both datapaths (replies un-NATed by the same connection).
#[test]
fn service_traffic_is_policed_as_the_pod_it_reaches() {
    for (tag, datapath) in [
        ("tnpvb", Datapath::BrNetfilter),
        ("tnpvi", Datapath::Isolated),
    ] {
        let w = World::with(tag, datapath);
        let x_a = w.ip("x", "a");
        w.node.exec(&["nft", "add", "table", "ip", "tnp-svc"]);
        w.node.exec(&[
            "nft",
            "add chain ip tnp-svc pre { type nat hook prerouting priority dstnat; }",
        ]);
        w.node.exec(&[
            "nft",
            &format!("add rule ip tnp-svc pre ip daddr 10.96.0.10 dnat to {x_a}"),
        ]);
        let service = "10.96.0.10:tcp:80";
        let from = |ns: &str| &w.pods.iter().find(|p| p.who.ns == ns).unwrap().netns;
        assert!(
            probe_one(from("z"), service),
            "{datapath:?}: the Service works"
        );
        w.policy(
            "x",
            "from-y",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
        );
        let started = Instant::now();
        while probe_one(from("z"), service) {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{datapath:?}: z still reaches x/a through the Service"
            );
        }
        assert!(
            probe_one(from("y"), service) && probe_one(from("y"), "10.96.0.10:udp:81"),
            "{datapath:?}: y reaches x/a through the Service"
        );
        w.node.exec(&["nft", "delete", "table", "ip", "tnp-svc"]);
    }
}

/// A restart finds chains and sets the agent no longer writes (a table of the previous layout:
/// one `ingress` chain reached through a set, `in-iso4`): the first write replaces them whole,
/// in one transaction, and enforcement is as before.
#[test]
fn a_table_of_the_previous_layout_is_replaced_whole() {
    let w = World::new("tnpu");
    w.policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    w.expect("default deny in x", |_, d, _, _| d.ns != "x");
    w.kill_agent();
    let nft = |command: &str| w.node.exec(&["nft", command]);
    nft("add chain inet tether-netpol ingress");
    nft("add rule inet tether-netpol ingress drop");
    nft("add set inet tether-netpol in-iso4 { type ipv4_addr; }");
    nft(&format!(
        "add element inet tether-netpol in-iso4 {{ {} }}",
        w.ip("y", "a")
    ));
    nft("add rule inet tether-netpol forward ip daddr @in-iso4 jump ingress");
    w.expect("the old layout's leftovers shut y/a too", |_, d, _, _| {
        d.ns != "x" && !(d.ns == "y" && d.pod == "a")
    });
    w.start_agent();
    let started = Instant::now();
    loop {
        let table = w
            .node
            .exec(&["nft", "list", "table", "inet", "tether-netpol"]);
        if !table.contains("chain ingress") && !table.contains("in-iso4") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "leftovers stay:\n{table}\n{}",
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    w.expect("default deny in x, nothing else", |_, d, _, _| d.ns != "x");
}
