//! The NetworkPolicy truth tables, independent of how the pods are wired: namespaces x, y, z
//! with pods a, b, c labelled as in the upstream e2e network policy tests, each serving TCP, UDP
//! and SCTP on 80 and 81; the reachability matrix (every pod to every other pod, on each probe)
//! and the scenarios, each with the expected matrix written out on its own (not through the
//! agent's model). A world (one node's bridge in `network-policy/tests/truth_table.rs`, two
//! overlay nodes in `cni-overlay/tests/policy.rs`) makes the pods and runs the agents.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::apiserver::{ApiServer, NAMESPACES, NETWORK_POLICIES, PODS};
use crate::{probe, Netns};

pub const NAMESPACE_NAMES: [&str; 3] = ["x", "y", "z"];
pub const POD_NAMES: [&str; 3] = ["a", "b", "c"];
pub const PROBES: [(&str, u16); 4] = [("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81)];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Who {
    pub ns: &'static str,
    pub pod: &'static str,
}

impl std::fmt::Display for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.pod)
    }
}

/// One pod of a world: its namespace, addresses, node and servers.
pub struct PolicyPod {
    pub who: Who,
    pub ip: String,
    pub ip6: Option<String>,
    pub node: String,
    pub netns: Netns,
    pub servers: probe::Servers,
}

/// The Pod object of `pod` with `labels`: its addresses, node, and named container ports
/// (`serve-80-tcp`, `serve-81-udp`, `serve-81-sctp`).
pub fn pod_object(pod: &PolicyPod, labels: Value) -> Value {
    let mut ips = vec![json!({"ip": pod.ip})];
    ips.extend(pod.ip6.iter().map(|ip| json!({"ip": ip})));
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.who.pod, "namespace": pod.who.ns, "labels": labels},
        "spec": {"nodeName": pod.node, "containers": [{"name": "c", "image": "probe", "ports": [
            {"name": "serve-80-tcp", "containerPort": 80, "protocol": "TCP"},
            {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"},
            {"name": "serve-81-sctp", "containerPort": 81, "protocol": "SCTP"},
        ]}]},
        "status": {"phase": "Running", "podIP": pod.ip, "podIPs": ips},
    })
}

pub fn namespace_object(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// The namespaces x, y, z, labelled `ns=<name>` (and the automatic name label).
pub fn put_namespaces(api: &ApiServer) {
    for ns in NAMESPACE_NAMES {
        api.put(
            NAMESPACES,
            namespace_object(ns, json!({"ns": ns, "kubernetes.io/metadata.name": ns})),
        );
    }
}

/// A world the scenarios run in.
pub trait PolicyWorld {
    fn api(&self) -> &ApiServer;
    fn pods(&self) -> &[PolicyPod];
    /// A CIDR holding every pod's IPv4 address.
    fn pod_cidr(&self) -> String;
    /// What to show when a scenario fails: the agents' tables and logs.
    fn dump(&self) -> String;
    /// The namespace of the node called `node`.
    fn node_netns(&self, node: &str) -> &Netns;

    fn pod(&self, ns: &str, pod: &str) -> &PolicyPod {
        self.pods()
            .iter()
            .find(|p| p.who.ns == ns && p.who.pod == pod)
            .unwrap()
    }

    fn ip(&self, ns: &str, pod: &str) -> String {
        self.pod(ns, pod).ip.clone()
    }

    fn relabel(&self, ns: &str, pod: &str, labels: Value) {
        self.api().put(PODS, pod_object(self.pod(ns, pod), labels));
    }

    fn policy(&self, ns: &str, name: &str, spec: Value) {
        self.api().put(
            NETWORK_POLICIES,
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": name, "namespace": ns}, "spec": spec}),
        );
    }

    fn delete_policy(&self, ns: &str, name: &str) {
        self.api().delete(NETWORK_POLICIES, ns, name);
    }

    /// Every pod to every other pod, on each probe (IPv4 addresses).
    fn matrix(
        &self,
        probes: &[(&'static str, u16)],
    ) -> BTreeMap<(Who, Who, &'static str, u16), bool> {
        let pods = self.pods();
        let children: Vec<(Who, Child)> = pods
            .iter()
            .map(|src| {
                let targets: Vec<String> = pods
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
                        &probe::script(),
                        "probe",
                    ])
                    .args(&targets)
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                (src.who, child)
            })
            .collect();
        let by_ip: BTreeMap<&str, Who> = pods.iter().map(|p| (p.ip.as_str(), p.who)).collect();
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

    /// Waits (5 s at most) for the matrix `expect` describes, on TCP and UDP 80 and 81; panics
    /// with the differences.
    fn expect(&self, scenario: &str, expect: impl Fn(Who, Who, &str, u16) -> bool) {
        self.expect_on(&PROBES, scenario, expect)
    }

    /// [`PolicyWorld::expect`] on other probes.
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
                panic!(
                    "{scenario}: {} of {} wrong:\n{}\n\n{}",
                    wrong.len(),
                    seen.len(),
                    wrong.join("\n"),
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A policy spec: the pods `selector` picks accept only namespace `from` (labelled `ns=<from>`),
/// on `ports` (every port when `None`).
pub fn ingress_from_namespace(selector: Value, from: &str, ports: Option<Value>) -> Value {
    let mut rule = json!({"from": [{"namespaceSelector": {"matchLabels": {"ns": from}}}]});
    if let Some(ports) = ports {
        rule["ports"] = ports;
    }
    json!({"podSelector": selector, "ingress": [rule]})
}

/// Every pod of the namespace takes SCTP on port 80 from namespace y.
pub fn sctp_80_from_y() -> Value {
    ingress_from_namespace(
        json!({}),
        "y",
        Some(json!([{"protocol": "SCTP", "port": 80}])),
    )
}

/// Every pod of `ns` answers its own node (kubelet's probes), whatever the policies say.
fn node_reaches_its_pods(w: &impl PolicyWorld, ns: &str, scenario: &str) {
    for pod in w.pods().iter().filter(|p| p.who.ns == ns) {
        let target = format!("{}:tcp:80", pod.ip);
        assert!(
            probe::open(w.node_netns(&pod.node), &target),
            "{scenario}: {} does not answer its node {}\n{}",
            pod.who,
            pod.node,
            w.dump()
        );
    }
}

/// The ingress scenarios of the upstream e2e tests: default deny, from a namespace, namespace
/// relabelled, policy updated and deleted, AND and OR peers, pod relabelled, ipBlock with
/// except, named port, endPort.
pub fn ingress_scenarios(w: &impl PolicyWorld) {
    w.expect("no policy: everything open", |_, _, _, _| true);

    w.policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    w.expect("default deny in x", |_, d, _, _| d.ns != "x");
    node_reaches_its_pods(w, "x", "default deny");
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
    w.api().put(
        NAMESPACES,
        namespace_object("z", json!({"ns": "y", "kubernetes.io/metadata.name": "z"})),
    );
    w.expect("namespace z relabelled ns=y", |s, d, _, _| {
        d.ns != "x" || s.ns != "x"
    });
    w.api().put(
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
    w.relabel("y", "c", json!({"pod": "b"}));
    w.expect("AND after y/c relabelled", |s, d, _, _| {
        !x_a(d) || (s.ns == "y" && s.pod != "a")
    });
    w.relabel("y", "c", json!({"pod": "c"}));
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
        {"ipBlock": {"cidr": w.pod_cidr(), "except": [format!("{y_a}/32")]}}]}]}),
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

/// Egress: x/a may send only UDP 81 (as a pod allowed only DNS) and anything to namespace z;
/// then with an ingress policy of z/b as well; then both deleted.
pub fn egress_scenarios(w: &impl PolicyWorld) {
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
    node_reaches_its_pods(w, "x", "egress isolation");
    // Ingress and egress together: z/b accepts only from x.
    w.policy(
        "z",
        "from-x",
        ingress_from_namespace(json!({"matchLabels": {"pod": "b"}}), "x", None),
    );
    w.expect("egress of x/a and ingress of z/b", |s, d, p, port| {
        let egress = !from_x_a(s) || (p == "udp" && port == 81) || d.ns == "z";
        let ingress = !(d.ns == "z" && d.pod == "b") || s.ns == "x";
        egress && ingress
    });
    w.delete_policy("x", "egress");
    w.delete_policy("z", "from-x");
    w.expect("all open again", |_, _, _, _| true);
}

/// SCTP (the upstream SCTP connectivity scenarios), probed with a raw INIT answered by an INIT
/// ACK (see `probe.py`: the test kernel has no SCTP stack; the nodes' firewalls and connection
/// tracking see an association's first two packets as on any kernel): default deny, a port from
/// a namespace, a named SCTP port, egress to one SCTP port.
pub fn sctp_scenarios(w: &impl PolicyWorld) {
    const SCTP_PROBES: [(&str, u16); 3] = [("sctp", 80), ("sctp", 81), ("tcp", 80)];
    w.expect_on(&SCTP_PROBES, "no policy: SCTP open", |_, _, _, _| true);
    w.policy(
        "x",
        "deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    w.expect_on(&SCTP_PROBES, "default deny in x, SCTP too", |_, d, _, _| {
        d.ns != "x"
    });
    w.policy("x", "sctp-80-from-y", sctp_80_from_y());
    w.expect_on(&SCTP_PROBES, "SCTP 80 from y", |s, d, p, port| {
        d.ns != "x" || (s.ns == "y" && p == "sctp" && port == 80)
    });
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
