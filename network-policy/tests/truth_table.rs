#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! NetworkPolicy truth tables on the real kernel: one node namespace with a bridge (br_netfilter
//! on, as Kubernetes needs), nine pods in three namespaces labelled as in the upstream e2e
//! network policy tests (namespaces x, y, z; pods a, b, c), each serving TCP and UDP on ports 80
//! and 81; the agent binary against the API stand-in; for every scenario the whole reachability
//! matrix (every pod to every other pod, both protocols, both ports) compared with the expected
//! one, which each scenario states on its own (not through the agent's model).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::apiserver::{ApiServer, NAMESPACES, NETWORK_POLICIES, PODS};
use test_support::{probe, require_root, Netns};

const NAMESPACE_NAMES: [&str; 3] = ["x", "y", "z"];
const POD_NAMES: [&str; 3] = ["a", "b", "c"];
const PROBES: [(&str, u16); 4] = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Who {
    ns: &'static str,
    pod: &'static str,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

struct Pod {
    who: Who,
    ip: String,
    netns: Netns,
    _server: probe::Servers,
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct World {
    pods: Vec<Pod>,
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

fn probe_script() -> String {
    probe::script()
}

/// Every pod is dual-stack: 10.77.0.N and fd77::N.
fn v6_of(ip: &str) -> String {
    format!("fd77::{}", ip.rsplit('.').next().unwrap())
}

fn pod_object(who: Who, ip: &str, labels: Value) -> Value {
    let ip6 = v6_of(ip);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": who.pod, "namespace": who.ns, "labels": labels},
        "spec": {"nodeName": "node1", "containers": [{"name": "c", "image": "probe", "ports": [
            {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
            {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
            {"name": "serve-81-sctp", "containerPort": 81, "protocol": "SCTP"},
        ]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}, {"ip": ip6}]},
    })
}

fn namespace_object(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
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
        for ns in NAMESPACE_NAMES {
            api.put(
                NAMESPACES,
                namespace_object(ns, json!({"ns": ns, "kubernetes.io/metadata.name": ns})),
            );
        }
        let mut pods = Vec::new();
        for (i, ns) in NAMESPACE_NAMES.iter().enumerate() {
            for (j, pod) in POD_NAMES.iter().enumerate() {
                let who = Who { ns, pod };
                let ip = format!("10.77.0.{}", 10 + i * 3 + j);
                let (netns, server) = plug(&node, &dir, datapath, &format!("{tag}{ns}{pod}"), &ip);
                api.put(PODS, pod_object(who, &ip, json!({"pod": pod})));
                pods.push(Pod {
                    who,
                    ip,
                    netns,
                    _server: server,
                });
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

    /// Every pod to every other pod, on each probe.
    fn matrix(
        &self,
        probes: &[(&'static str, u16)],
    ) -> BTreeMap<(Who, Who, &'static str, u16), bool> {
        let children: Vec<(Who, Child)> = self
            .pods
            .iter()
            .map(|src| {
                let targets: Vec<String> = self
                    .pods
                    .iter()
                    .filter(|dst| dst.who != src.who)
                    .flat_map(|dst| {
                        probes
                            .iter()
                            .map(move |(p, port)| format!("{}:{p}:{port}", dst.ip))
                    })
                    .collect();
                let child = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &src.netns.name,
                        "python3",
                        &probe_script(),
                        "probe",
                    ])
                    .args(&targets)
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                (src.who, child)
            })
            .collect();
        let by_ip: BTreeMap<&str, Who> = self.pods.iter().map(|p| (p.ip.as_str(), p.who)).collect();
        let mut out = BTreeMap::new();
        for (src, child) in children {
            let output = child.wait_with_output().unwrap();
            let results: BTreeMap<String, bool> = serde_json::from_slice(&output.stdout).unwrap();
            for (target, ok) in results {
                let mut parts = target.split(':');
                let (ip, proto, port) = (
                    parts.next().unwrap(),
                    parts.next().unwrap(),
                    parts.next().unwrap(),
                );
                let proto = match proto {
                    "tcp" => "tcp",
                    "udp" => "udp",
                    _ => "sctp",
                };
                out.insert((src, by_ip[ip], proto, port.parse().unwrap()), ok);
            }
        }
        out
    }

    /// Waits (5 s at most) for the matrix `expect` describes; panics with the differences.
    fn expect(&self, scenario: &str, expect: impl Fn(Who, Who, &str, u16) -> bool) {
        self.expect_on(&PROBES, scenario, expect)
    }

    /// [`World::expect`] on other probes.
    fn expect_on(
        &self,
        probes: &[(&'static str, u16)],
        scenario: &str,
        expect: impl Fn(Who, Who, &str, u16) -> bool,
    ) {
        let started = Instant::now();
        loop {
            let seen = self.matrix(probes);
            let wrong: Vec<String> = seen
                .iter()
                .filter(|((s, d, p, port), ok)| expect(*s, *d, p, *port) != **ok)
                .map(|((s, d, p, port), ok)| {
                    format!(
                        "{s} -> {d} {p}/{port}: {}",
                        if *ok { "open" } else { "closed" }
                    )
                })
                .collect();
            if wrong.is_empty() {
                return;
            }
            if started.elapsed() > Duration::from_secs(5) {
                let table = self
                    .node
                    .exec(&["nft", "list", "table", "inet", "tether-netpol"]);
                panic!(
                    "{scenario}: {} of {} wrong:\n{}\n\ntable:\n{table}\n\nagent log:\n{}",
                    wrong.len(),
                    seen.len(),
                    wrong.join("\n"),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn policy(&self, ns: &str, name: &str, spec: Value) {
        self.api.put(
            NETWORK_POLICIES,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        );
    }

    fn delete_policy(&self, ns: &str, name: &str) {
        self.api.delete(NETWORK_POLICIES, ns, name);
    }

    fn ip(&self, ns: &str, pod: &str) -> String {
        self.pods
            .iter()
            .find(|p| p.who.ns == ns && p.who.pod == pod)
            .map(|p| p.ip.clone())
            .unwrap()
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

fn ingress_scenarios(w: &World) {
    w.expect("no policy: everything open", |_, _, _, _| true);

    w.policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    w.expect("default deny in x", |_, d, _, _| d.ns != "x");
    w.delete_policy("x", "deny-all");

    w.policy(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
    );
    w.expect("allow from namespace y", |s, d, _, _| {
        d.ns != "x" || s.ns == "y"
    });
    // The namespace z is relabelled into the selection.
    w.api.put(
        NAMESPACES,
        namespace_object("z", json!({"ns": "y", "kubernetes.io/metadata.name": "z"})),
    );
    w.expect("namespace z relabelled ns=y", |s, d, _, _| {
        d.ns != "x" || s.ns != "x"
    });
    w.api.put(
        NAMESPACES,
        namespace_object("z", json!({"ns": "z", "kubernetes.io/metadata.name": "z"})),
    );
    // The policy is updated to name z instead.
    w.policy(
        "x",
        "from-y",
        json!({"podSelector": {}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
    );
    w.expect("policy updated to namespace z", |s, d, _, _| {
        d.ns != "x" || s.ns == "z"
    });
    w.delete_policy("x", "from-y");
    w.expect("policy deleted", |_, _, _, _| true);

    // Pod b of namespace y: both selectors in one peer (AND).
    w.policy("x", "and", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    let x_a = |d: Who| d.ns == "x" && d.pod == "a";
    w.expect("AND: y/b only", |s, d, _, _| {
        !x_a(d) || (s.ns == "y" && s.pod == "b")
    });
    // y/c relabelled pod=b joins the selection.
    w.api.put(
        PODS,
        pod_object(
            Who { ns: "y", pod: "c" },
            &w.ip("y", "c"),
            json!({"pod": "b"}),
        ),
    );
    w.expect("AND after y/c relabelled", |s, d, _, _| {
        !x_a(d) || (s.ns == "y" && s.pod != "a")
    });
    w.api.put(
        PODS,
        pod_object(
            Who { ns: "y", pod: "c" },
            &w.ip("y", "c"),
            json!({"pod": "c"}),
        ),
    );
    w.delete_policy("x", "and");

    // Separate peers (OR): namespace y, or pod b of x itself.
    w.policy("x", "or", json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": {"matchLabels": {"pod": "b"}}}]}]}));
    w.expect("OR: namespace y or x/b", |s, d, _, _| {
        !x_a(d) || s.ns == "y" || (s.ns == "x" && s.pod == "b")
    });
    w.delete_policy("x", "or");

    // ipBlock with an exception.
    let y_a = w.ip("y", "a");
    w.policy(
        "x",
        "block",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"ipBlock": {"cidr": "10.77.0.0/24", "except": [format!("{y_a}/32")]}}]}]}),
    );
    w.expect("ipBlock except y/a", |s, d, _, _| {
        !(x_a(d) && s.ns == "y" && s.pod == "a")
    });
    w.delete_policy("x", "block");

    // A named port, then a port range of one protocol.
    w.policy(
        "x",
        "named",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
        "ports": [{"port": "serve-80-tcp"}]}]}),
    );
    w.expect("named port serve-80-tcp", |_, d, p, port| {
        !x_a(d) || (p == "tcp" && port == 80)
    });
    w.policy(
        "x",
        "named",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{
        "ports": [{"protocol": "UDP", "port": 80, "endPort": 81}]}]}),
    );
    w.expect("endPort UDP 80-81", |_, d, p, _| !x_a(d) || p == "udp");
    w.delete_policy("x", "named");
    w.expect("all open again", |_, _, _, _| true);
}

#[test]
fn egress_deny_with_one_port_allowed() {
    let w = World::new("tnpe");
    // x/a may send only UDP to port 81 (as a pod allowed only DNS), anything to namespace z.
    w.policy(
        "x",
        "egress",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"protocol": "UDP", "port": 81}]},
                   {"to": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}]}]}),
    );
    let from_x_a = |s: Who| s.ns == "x" && s.pod == "a";
    w.expect("egress of x/a", |s, d, p, port| {
        !from_x_a(s) || (p == "udp" && port == 81) || d.ns == "z"
    });
    // Ingress and egress together: z/b accepts only from x.
    w.policy(
        "z",
        "from-x",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
    );
    w.expect("egress of x/a and ingress of z/b", |s, d, p, port| {
        let egress = !from_x_a(s) || (p == "udp" && port == 81) || d.ns == "z";
        let ingress = !(d.ns == "z" && d.pod == "b") || s.ns == "x";
        egress && ingress
    });
    // Metrics and readiness; readiness fails while bridged traffic skips the IP hooks.
    let (code, metrics) = w.http("/metrics");
    assert_eq!(code, "200");
    assert!(metrics.contains("tether_netpol_policies 2"), "{metrics}");
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

    w.delete_policy("x", "egress");
    w.delete_policy("z", "from-x");
    w.expect("all open again", |_, _, _, _| true);
}

#[test]
fn a_pod_the_agent_does_not_know_yet_is_held_while_policies_exist() {
    let w = World::new("tnph");
    // Its CNI ADD is done, its address not yet in the API: open while no policy exists at all.
    let (d_ns, server) = plug(&w.node, &w._dir, w.datapath, "tnphxd", "10.77.0.40");
    let d = Pod {
        who: Who { ns: "x", pod: "d" },
        ip: "10.77.0.40".into(),
        netns: d_ns,
        _server: server,
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
    w.api
        .put(PODS, pod_object(d.who, &d.ip, json!({"pod": "d"})));
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
        let Some(set) = item.get("set") else { continue };
        let elems = set["elem"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| match e.get("concat") {
                Some(parts) => parts
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p.to_string().trim_matches('"').to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
                None => e
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string()),
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
        cluster.policies.insert(key, p);
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
                    .args(["netns", "exec", &from, "python3", &probe_script(), "probe"])
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
                w.api.put(
                    PODS,
                    pod_object(who, &w.ip(who.ns, who.pod), json!({"pod": label})),
                );
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

/// SCTP (the upstream SCTP connectivity scenarios), probed with a raw INIT answered by an INIT
/// ACK (the test kernel has no SCTP stack; the node's firewall and connection tracking see the
/// association's first two packets as they would on any kernel).
#[test]
fn sctp_by_port_named_port_and_egress() {
    const SCTP_PROBES: [(&str, u16); 3] = [("sctp", 80), ("sctp", 81), ("tcp", 80)];
    let w = World::with("tnps", Datapath::Isolated);
    w.expect_on(&SCTP_PROBES, "no policy: SCTP open", |_, _, _, _| true);
    w.policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    w.expect_on(&SCTP_PROBES, "default deny in x, SCTP too", |_, d, _, _| {
        d.ns != "x"
    });
    w.policy(
        "x",
        "sctp-80-from-y",
        json!({"podSelector": {}, "ingress": [{
        "from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
        "ports": [{"protocol": "SCTP", "port": 80}]}]}),
    );
    w.expect_on(&SCTP_PROBES, "SCTP 80 from y", |s, d, p, port| {
        d.ns != "x" || (s.ns == "y" && p == "sctp" && port == 80)
    });
    let x_a = v6_of(&w.ip("x", "a"));
    let from = |ns: &str| &w.pods.iter().find(|p| p.who.ns == ns).unwrap().netns;
    assert!(probe_one(from("y"), &format!("{x_a}:sctp:80")), "over IPv6");
    assert!(!probe_one(from("z"), &format!("{x_a}:sctp:80")));
    w.policy(
        "x",
        "sctp-80-from-y",
        json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": "serve-81-sctp"}]}]}),
    );
    w.expect_on(
        &SCTP_PROBES,
        "named SCTP port 81 from anywhere",
        |_, d, p, port| d.ns != "x" || (p == "sctp" && port == 81),
    );
    w.delete_policy("x", "sctp-80-from-y");
    w.delete_policy("x", "deny-all");
    w.policy(
        "y",
        "b-sends-sctp-81",
        json!({"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
        "egress": [{"ports": [{"protocol": "SCTP", "port": 81}]}]}),
    );
    w.expect_on(&SCTP_PROBES, "y/b sends only SCTP 81", |s, _, p, port| {
        !(s.ns == "y" && s.pod == "b") || (p == "sctp" && port == 81)
    });
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
