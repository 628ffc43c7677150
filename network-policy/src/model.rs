//! What the NetworkPolicies of a cluster mean for the pods of one node: pure computation, no I/O.
//!
//! The semantics are those of `networking.k8s.io/v1`: a pod is isolated for a direction when a
//! policy that selects it has that direction in its `policyTypes` (Ingress implied, Egress implied
//! when the policy has egress rules); an isolated pod accepts what any of those policies' rules
//! allow (the union); a rule allows traffic from (to) any of its peers on any of its ports, a rule
//! without peers any address and one without ports every port. A peer is a pod selector (in the
//! policy's namespace), a namespace selector (every pod of the selected namespaces), both (the
//! selected pods of the selected namespaces) or an IP block with exceptions. Named ports are
//! resolved on the pod that receives the traffic. Host-network pods are neither policed nor
//! counted as pod peers (their address is the node's).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::selector::{matches, Labels};

/// The live pods by label, built once per plan: a selector that requires a label (`matchLabels`,
/// or `In` values) only has to look at the pods that carry it, not at every pod of the cluster.
struct LabelIndex<'a> {
    by_label: HashMap<(&'a str, &'a str), Vec<&'a PodInfo>>,
}

impl<'a> LabelIndex<'a> {
    fn new(pods: impl Iterator<Item = &'a PodInfo>) -> LabelIndex<'a> {
        let mut by_label: HashMap<(&str, &str), Vec<&PodInfo>> = HashMap::new();
        for pod in pods {
            for (k, v) in &pod.labels {
                by_label.entry((k, v)).or_default().push(pod);
            }
        }
        LabelIndex { by_label }
    }

    /// Every pod `selector` can pick (a superset: the selector still decides), or `None` when
    /// it requires no particular label value.
    fn candidates(&self, selector: &LabelSelector) -> Option<Vec<&'a PodInfo>> {
        if let Some((k, v)) = selector.match_labels.iter().flatten().next() {
            return Some(
                self.by_label
                    .get(&(k.as_str(), v.as_str()))
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        let expression = selector
            .match_expressions
            .iter()
            .flatten()
            .find(|e| e.operator == "In")?;
        Some(
            expression
                .values
                .iter()
                .flatten()
                .flat_map(|v| {
                    self.by_label
                        .get(&(expression.key.as_str(), v.as_str()))
                        .into_iter()
                        .flatten()
                        .copied()
                })
                .collect(),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(name: Option<&str>) -> Option<Protocol> {
        match name.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }
}

/// A container port a pod declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// What the agent keeps of a Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node: String,
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    pub ports: Vec<NamedPort>,
}

impl PodInfo {
    /// `None` for a pod that holds no address of its own (not scheduled yet, host network
    /// without pod IPs, finished).
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref()?;
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        let ips = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|ips| ips.iter().filter_map(|ip| ip.ip.parse().ok()).collect())
            .unwrap_or_default();
        let ports = spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone()?,
                    port: u16::try_from(p.container_port).ok()?,
                    protocol: Protocol::parse(p.protocol.as_deref())?,
                })
            })
            .collect();
        Some(PodInfo {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            labels: meta.labels.clone().unwrap_or_default(),
            node: spec.node_name.clone().unwrap_or_default(),
            ips,
            host_network: spec.host_network.unwrap_or(false),
            ports,
        })
    }

    fn port_named(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Everything the agent has seen of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// By (namespace, name).
    pub pods: BTreeMap<(String, String), PodInfo>,
    /// Namespace name -> its labels.
    pub namespaces: BTreeMap<String, Labels>,
    /// By (namespace, name).
    pub policies: BTreeMap<(String, String), Policy>,
}

/// A NetworkPolicy as plans use it: the object, and what every plan would otherwise work out
/// again from it (its directions, each rule's id and peers key), worked out once when it
/// arrives.
#[derive(Debug, Clone)]
pub struct Policy {
    pub object: NetworkPolicy,
    /// `<namespace>/<name>`.
    key: Arc<str>,
    /// Its directions, each with its rules' ids and peers keys, in order.
    directions: Vec<(Direction, Vec<RuleKeys>)>,
}

/// A rule's id (`<namespace>/<name> <direction> <index>`) and its peers key.
type RuleKeys = (Arc<str>, Arc<str>);

impl From<NetworkPolicy> for Policy {
    fn from(object: NetworkPolicy) -> Policy {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        let directions = policy_types(&object)
            .into_iter()
            .map(|direction| {
                let rules = rule_parts(&object, direction)
                    .into_iter()
                    .enumerate()
                    .map(|(index, (peers, _))| {
                        (
                            Arc::from(format!("{namespace}/{name} {direction:?} {index}")),
                            Arc::from(peers_key(peers, &namespace)),
                        )
                    })
                    .collect();
                (direction, rules)
            })
            .collect();
        Policy {
            key: Arc::from(format!("{namespace}/{name}")),
            object,
            directions,
        }
    }
}

impl Policy {
    /// `<namespace>/<name>`: what its targets set is named after.
    pub fn key(&self) -> &Arc<str> {
        &self.key
    }

    /// Whether it selects `pod`: a pod of its namespace that its pod selector matches.
    pub fn selects(&self, pod: &PodInfo) -> bool {
        let namespace = self
            .object
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        let selector = self
            .object
            .spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref());
        pod.namespace == namespace && selector.is_none_or(|s| matches(s, &pod.labels))
    }

    /// Whether the pods it selects are isolated for `direction`.
    pub fn isolates(&self, direction: Direction) -> bool {
        self.directions.iter().any(|(d, _)| *d == direction)
    }

    /// Each of its rules as written, with its id and peers key.
    pub fn rules(&self) -> Vec<RuleView<'_>> {
        self.directions
            .iter()
            .flat_map(|(direction, keys)| {
                rule_parts(&self.object, *direction)
                    .into_iter()
                    .zip(keys)
                    .map(move |((peers, ports), (id, peers_key))| RuleView {
                        id,
                        direction: *direction,
                        peers_key,
                        peers,
                        ports,
                    })
            })
            .collect()
    }
}

/// One rule of a policy as written.
pub struct RuleView<'a> {
    pub id: &'a Arc<str>,
    pub direction: Direction,
    pub peers_key: &'a Arc<str>,
    pub peers: Option<&'a Vec<NetworkPolicyPeer>>,
    pub ports: Option<&'a Vec<NetworkPolicyPort>>,
}

impl RuleView<'_> {
    /// What its named ports resolve to on `pod` (when `pod` receives its traffic).
    pub fn named_ports_on(&self, pod: &PodInfo) -> Vec<(IpAddr, Protocol, u16)> {
        let mut out = Vec::new();
        for port in self.ports.into_iter().flatten() {
            let (Some(IntOrString::String(name)), Some(protocol)) =
                (&port.port, Protocol::parse(port.protocol.as_deref()))
            else {
                continue;
            };
            if let Some(number) = pod.port_named(name, protocol) {
                out.extend(pod.ips.iter().map(|ip| (*ip, protocol, number)));
            }
        }
        out
    }
}

/// Whether a rule's ports name one (a container port's name instead of a number).
fn names_ports(ports: Option<&Vec<NetworkPolicyPort>>) -> bool {
    ports
        .into_iter()
        .flatten()
        .any(|p| matches!(p.port, Some(IntOrString::String(_))))
}

/// The peers and ports of each of `policy`'s rules for `direction`, in order.
fn rule_parts(policy: &NetworkPolicy, direction: Direction) -> Vec<RuleParts<'_>> {
    let spec = policy.spec.as_ref();
    match direction {
        Direction::Ingress => spec
            .and_then(|s| s.ingress.as_ref())
            .into_iter()
            .flatten()
            .map(|r| (r.from.as_ref(), r.ports.as_ref()))
            .collect(),
        Direction::Egress => spec
            .and_then(|s| s.egress.as_ref())
            .into_iter()
            .flatten()
            .map(|r: &NetworkPolicyEgressRule| (r.to.as_ref(), r.ports.as_ref()))
            .collect(),
    }
}

/// A rule's peers and ports, whichever direction it is for.
type RuleParts<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

/// An address block with the parts cut out of it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Block {
    pub cidr: IpNetwork,
    pub except: Vec<IpNetwork>,
}

/// Who a rule lets in (ingress) or out to (egress).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Peers {
    /// A rule without peers: any address.
    pub any: bool,
    /// Pod addresses selected by the rule's pod and namespace selectors (shared by the rules
    /// whose peers are written alike).
    pub pods: Arc<BTreeSet<IpAddr>>,
    pub blocks: Vec<Block>,
}

/// Ports a rule opens.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ports {
    /// A rule without ports: all of them (and every protocol).
    pub all: bool,
    /// Protocol and port range (first..=last); a port-less entry is the whole range.
    pub ranges: BTreeSet<(Protocol, u16, u16)>,
    /// Named ports, resolved per receiving pod: (that pod's address, protocol, port).
    pub named: BTreeSet<(IpAddr, Protocol, u16)>,
}

/// One rule of one policy, for the pods of this node it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Stable within a plan: `<namespace>/<policy> <direction> <index>`.
    pub id: Arc<str>,
    /// The policy's namespace (its targets are pods of that namespace only).
    pub namespace: String,
    pub direction: Direction,
    /// This node's pods the policy selects (shared by the policy's rules).
    pub targets: Arc<BTreeSet<IpAddr>>,
    /// Equal for rules whose `targets` are always equal: the policy (`<namespace>/<policy>`).
    pub targets_key: Arc<str>,
    pub peers: Peers,
    /// Equal for rules whose `peers.pods` are always equal: the peer list as written, plus the
    /// policy's namespace unless every peer names its namespaces.
    pub peers_key: Arc<str>,
    pub ports: Ports,
}

/// What this node's nftables table must express.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// This node's pods isolated for ingress (only what a rule allows reaches them).
    pub ingress_isolated: BTreeSet<IpAddr>,
    /// This node's pods isolated for egress.
    pub egress_isolated: BTreeSet<IpAddr>,
    /// The namespace of each isolated pod address.
    pub namespaces: BTreeMap<IpAddr, String>,
    pub rules: Vec<Rule>,
    /// Every pod address of this node the agent knows (host-network pods aside).
    pub local_pods: BTreeSet<IpAddr>,
    /// Whether any NetworkPolicy exists: only then can a pod the agent does not know yet be
    /// one a policy selects (and is held until it is known).
    pub policies_exist: bool,
    /// Policies (or parts) that could not be used, and why.
    pub problems: Vec<String>,
}

fn policy_types(policy: &NetworkPolicy) -> BTreeSet<Direction> {
    let spec = policy.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(types) => types
            .iter()
            .filter_map(|t| match t.as_str() {
                "Ingress" => Some(Direction::Ingress),
                "Egress" => Some(Direction::Egress),
                _ => None,
            })
            .collect(),
        None => {
            let mut types = BTreeSet::from([Direction::Ingress]);
            if spec.is_some_and(|s| s.egress.is_some()) {
                types.insert(Direction::Egress);
            }
            types
        }
    }
}

impl Cluster {
    fn live_pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values().filter(|p| Self::is_live(p))
    }

    /// The policies of one namespace (the map is ordered by namespace first).
    pub fn policies_in<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a Policy> + 'a {
        self.policies
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, policy)| policy)
    }

    /// The live pods of one namespace (the map is ordered by namespace first).
    fn in_namespace<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.pods
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, p)| p)
            .filter(|p| Self::is_live(p))
    }

    /// The pods of `local` (this node's live pods by namespace) that `policy` selects.
    fn selected<'a>(policy: &Policy, local: &HashMap<&str, Vec<&'a PodInfo>>) -> Vec<&'a PodInfo> {
        let namespace = policy
            .object
            .metadata
            .namespace
            .as_deref()
            .unwrap_or("default");
        local
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|p| policy.selects(p))
            .copied()
            .collect()
    }

    /// Whether `peer` (of a policy in `namespace`) picks the live pod `pod`: the one definition
    /// of a peer's pods, which [`Cluster::peer_pods`] finds faster through an index.
    pub fn peer_picks(&self, peer: &NetworkPolicyPeer, namespace: &str, pod: &PodInfo) -> bool {
        (peer.pod_selector.is_some() || peer.namespace_selector.is_some())
            && peer_picks_pod(peer, pod)
            && self.peer_picks_namespace(peer, namespace, pod)
    }

    /// A namespace the agent has no labels for is matched as one without labels.
    fn peer_picks_namespace(
        &self,
        peer: &NetworkPolicyPeer,
        namespace: &str,
        pod: &PodInfo,
    ) -> bool {
        match &peer.namespace_selector {
            None => pod.namespace == namespace,
            Some(selector) => matches(
                selector,
                self.namespaces
                    .get(&pod.namespace)
                    .unwrap_or(&Labels::new()),
            ),
        }
    }

    /// Whether a live pod is one the agent polices or counts as a pod peer.
    pub fn is_live(pod: &PodInfo) -> bool {
        !pod.host_network && !pod.ips.is_empty()
    }

    /// Pod addresses a peer's selectors pick (none for an ipBlock peer).
    fn peer_pods(
        &self,
        peer: &NetworkPolicyPeer,
        namespace: &str,
        index: Option<&LabelIndex<'_>>,
    ) -> BTreeSet<IpAddr> {
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return BTreeSet::new();
        }
        let by_pod = |p: &&PodInfo| peer_picks_pod(peer, p);
        let empty = Labels::new();
        let by_namespace = |p: &&PodInfo| self.peer_picks_namespace(peer, namespace, p);
        if let Some(candidates) = peer
            .pod_selector
            .as_ref()
            .zip(index)
            .and_then(|(s, index)| index.candidates(s))
        {
            return candidates
                .into_iter()
                .filter(by_namespace)
                .filter(by_pod)
                .flat_map(|p| p.ips.iter().copied())
                .collect();
        }
        let pods: Vec<&PodInfo> = match &peer.namespace_selector {
            None => self.in_namespace(namespace).filter(by_pod).collect(),
            // A selector that also picks a namespace the agent has no labels for: every pod.
            Some(selector) if matches(selector, &empty) => {
                // Pods come ordered by namespace: each namespace is matched once.
                let mut last: Option<(&str, bool)> = None;
                self.live_pods()
                    .filter(|p| match last {
                        Some((ns, picked)) if ns == p.namespace => picked,
                        _ => {
                            let labels = self.namespaces.get(&p.namespace).unwrap_or(&empty);
                            let picked = matches(selector, labels);
                            last = Some((&p.namespace, picked));
                            picked
                        }
                    })
                    .filter(by_pod)
                    .collect()
            }
            Some(selector) => self
                .namespaces
                .iter()
                .filter(|(_, labels)| matches(selector, labels))
                .flat_map(|(ns, _)| self.in_namespace(ns))
                .filter(by_pod)
                .collect(),
        };
        pods.into_iter()
            .flat_map(|p| p.ips.iter().copied())
            .collect()
    }

    fn peers(
        &self,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        namespace: &str,
        index: Option<&LabelIndex<'_>>,
        problems: &mut Vec<String>,
    ) -> Peers {
        let Some(peers) = peers.filter(|p| !p.is_empty()) else {
            return Peers {
                any: true,
                ..Peers::default()
            };
        };
        let mut out = Peers::default();
        let mut pods = BTreeSet::new();
        for peer in peers {
            pods.extend(self.peer_pods(peer, namespace, index));
            if let Some(block) = &peer.ip_block {
                match block.cidr.parse::<IpNetwork>() {
                    Ok(cidr) => out.blocks.push(Block {
                        cidr,
                        except: block
                            .except
                            .iter()
                            .flatten()
                            .filter_map(|e| e.parse().ok())
                            .collect(),
                    }),
                    Err(_) => problems.push(format!("ipBlock {:?} is not a CIDR", block.cidr)),
                }
            }
        }
        out.pods = Arc::new(pods);
        out
    }

    /// Ports of a rule; `receivers` are the pods that receive the traffic (for named ports).
    fn ports<'a>(
        &self,
        ports: Option<&Vec<NetworkPolicyPort>>,
        receivers: impl Iterator<Item = &'a PodInfo> + Clone,
        problems: &mut Vec<String>,
    ) -> Ports {
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            return Ports {
                all: true,
                ..Ports::default()
            };
        };
        let mut out = Ports::default();
        for port in ports {
            let Some(protocol) = Protocol::parse(port.protocol.as_deref()) else {
                problems.push(format!(
                    "protocol {:?} is not TCP, UDP or SCTP",
                    port.protocol
                ));
                continue;
            };
            match &port.port {
                None => {
                    out.ranges.insert((protocol, 1, u16::MAX));
                }
                Some(IntOrString::Int(n)) => {
                    let (Ok(first), last) = (u16::try_from(*n), port.end_port) else {
                        problems.push(format!("port {n} is out of range"));
                        continue;
                    };
                    let last = last.and_then(|l| u16::try_from(l).ok()).unwrap_or(first);
                    out.ranges.insert((protocol, first, last.max(first)));
                }
                Some(IntOrString::String(name)) => {
                    for pod in receivers.clone() {
                        if let Some(number) = pod.port_named(name, protocol) {
                            for ip in &pod.ips {
                                out.named.insert((*ip, protocol, number));
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// This node's live pods, by namespace.
    fn local_pods(&self, node: &str) -> HashMap<&str, Vec<&PodInfo>> {
        let mut local: HashMap<&str, Vec<&PodInfo>> = HashMap::new();
        for pod in self.live_pods().filter(|p| p.node == node) {
            local.entry(&pod.namespace).or_default().push(pod);
        }
        local
    }

    /// The plan for `node`'s pods.
    pub fn plan(&self, node: &str) -> Plan {
        let local = self.local_pods(node);
        let mut plan = Plan {
            local_pods: local
                .values()
                .flatten()
                .flat_map(|p| p.ips.iter().copied())
                .collect(),
            policies_exist: !self.policies.is_empty(),
            ..Plan::default()
        };
        let by_label = LabelIndex::new(self.live_pods());
        let mut known_peers = HashMap::new();
        for ((namespace, _), policy) in &self.policies {
            let targets = Self::selected(policy, &local);
            if targets.is_empty() {
                continue;
            }
            for ip in targets.iter().flat_map(|p| p.ips.iter()) {
                plan.namespaces.insert(*ip, namespace.clone());
                for (direction, _) in &policy.directions {
                    match direction {
                        Direction::Ingress => plan.ingress_isolated.insert(*ip),
                        Direction::Egress => plan.egress_isolated.insert(*ip),
                    };
                }
            }
            let rules = self.rules_of(
                policy,
                &targets,
                Some(&by_label),
                &mut known_peers,
                &mut plan.problems,
            );
            plan.rules.extend(rules);
        }
        plan
    }

    /// One policy's part of [`Cluster::plan`]: its rules for `node`'s pods (none when it selects
    /// none of them, or does not exist), and the problems they have.
    pub fn policy_rules(&self, node: &str, key: &(String, String)) -> (Vec<Rule>, Vec<String>) {
        let mut problems = Vec::new();
        let Some(policy) = self.policies.get(key) else {
            return (Vec::new(), problems);
        };
        let local: Vec<&PodInfo> = self
            .in_namespace(&key.0)
            .filter(|p| p.node == node)
            .collect();
        let targets: Vec<&PodInfo> = local.into_iter().filter(|p| policy.selects(p)).collect();
        if targets.is_empty() {
            return (Vec::new(), problems);
        }
        let rules = self.rules_of(policy, &targets, None, &mut HashMap::new(), &mut problems);
        (rules, problems)
    }

    /// This node's live pods of `namespace`.
    pub fn local_in<'a>(
        &'a self,
        namespace: &'a str,
        node: &'a str,
    ) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.in_namespace(namespace).filter(move |p| p.node == node)
    }

    /// Whether some policy of its namespace selects `pod`, and isolates it for ingress and for
    /// egress (what [`Cluster::plan`] puts in `namespaces` and the isolated sets).
    pub fn isolation(&self, pod: &PodInfo) -> (bool, bool, bool) {
        let mut out = (false, false, false);
        for policy in self.policies_in(&pod.namespace) {
            if policy.selects(pod) {
                out.0 = true;
                out.1 |= policy.isolates(Direction::Ingress);
                out.2 |= policy.isolates(Direction::Egress);
            }
        }
        out
    }

    /// The rules of `policy` for `targets` (this node's pods it selects, not none). Peers
    /// written alike (`known_peers`, by peers key) are worked out once.
    fn rules_of<'a>(
        &'a self,
        policy: &'a Policy,
        targets: &[&PodInfo],
        index: Option<&LabelIndex<'_>>,
        known_peers: &mut HashMap<&'a str, (Peers, Vec<String>)>,
        problems: &mut Vec<String>,
    ) -> Vec<Rule> {
        let namespace = policy.object.metadata.namespace.clone().unwrap_or_default();
        let target_ips: Arc<BTreeSet<IpAddr>> =
            Arc::new(targets.iter().flat_map(|p| p.ips.iter().copied()).collect());
        let mut out = Vec::new();
        for (direction, keys) in &policy.directions {
            let direction = *direction;
            let rules = rule_parts(&policy.object, direction);
            for ((peers, ports), (id, peers_key)) in rules.into_iter().zip(keys) {
                // The key decides the peers: rules written alike are worked out once.
                let (peers, peer_problems) = known_peers
                    .entry(peers_key)
                    .or_insert_with(|| {
                        let mut problems = Vec::new();
                        (
                            self.peers(peers, &namespace, index, &mut problems),
                            problems,
                        )
                    })
                    .clone();
                problems.extend(peer_problems);
                let ports = match direction {
                    // The policy's own pods receive.
                    Direction::Ingress => self.ports(ports, targets.iter().copied(), problems),
                    // The peers receive: named ports are resolved on every pod they pick.
                    Direction::Egress => {
                        let receivers: Vec<&PodInfo> = if !names_ports(ports) {
                            Vec::new()
                        } else if peers.any {
                            self.live_pods().collect()
                        } else {
                            self.live_pods()
                                .filter(|p| p.ips.iter().any(|ip| peers.pods.contains(ip)))
                                .collect()
                        };
                        self.ports(ports, receivers.into_iter(), problems)
                    }
                };
                out.push(Rule {
                    id: id.clone(),
                    namespace: namespace.clone(),
                    direction,
                    targets: target_ips.clone(),
                    targets_key: policy.key.clone(),
                    peers,
                    peers_key: peers_key.clone(),
                    ports,
                });
            }
        }
        out
    }
}

/// Whether `peer`'s pod selector (none: every pod) matches `pod`.
fn peer_picks_pod(peer: &NetworkPolicyPeer, pod: &PodInfo) -> bool {
    peer.pod_selector
        .as_ref()
        .is_none_or(|s| matches(s, &pod.labels))
}

/// See [`Rule::peers_key`].
fn peers_key(peers: Option<&Vec<NetworkPolicyPeer>>, namespace: &str) -> String {
    let peers = peers.map(Vec::as_slice).unwrap_or_default();
    let written = serde_json::to_string(peers).unwrap_or_default();
    if peers.iter().all(|p| p.namespace_selector.is_some()) {
        written
    } else {
        format!("{namespace} {written}")
    }
}

/// How one direction of a connection fares under a node's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// No policy isolates the pod for this direction: everything passes.
    NotIsolated,
    /// Isolated, and these rules (their [`Rule::id`]s) allow it.
    Allowed(Vec<String>),
    /// Isolated, and no rule allows it.
    Denied,
}

impl Judgement {
    pub fn passes(&self) -> bool {
        !matches!(self, Judgement::Denied)
    }
}

/// How `plan` (of the node of the pod that `direction` polices: the sender's for egress, the
/// receiver's for ingress) judges a new connection from `src` to `dst` on (`protocol`, `port`).
pub fn judge(
    plan: &Plan,
    direction: Direction,
    src: IpAddr,
    dst: IpAddr,
    protocol: Protocol,
    port: u16,
) -> Judgement {
    let (pod, peer, isolated) = match direction {
        Direction::Egress => (src, dst, &plan.egress_isolated),
        Direction::Ingress => (dst, src, &plan.ingress_isolated),
    };
    if !isolated.contains(&pod) {
        return Judgement::NotIsolated;
    }
    let rule_allows = |rule: &Rule| {
        let peer_ok = rule.peers.any
            || rule.peers.pods.contains(&peer)
            || rule
                .peers
                .blocks
                .iter()
                .any(|b| b.cidr.contains(peer) && !b.except.iter().any(|e| e.contains(peer)));
        // Named ports are resolved on the receiver, whichever direction is policed.
        let port_ok = rule.ports.all
            || rule
                .ports
                .ranges
                .iter()
                .any(|(p, first, last)| *p == protocol && (*first..=*last).contains(&port))
            || rule.ports.named.contains(&(dst, protocol, port));
        peer_ok && port_ok
    };
    let allowing: Vec<String> = plan
        .rules
        .iter()
        .filter(|r| r.direction == direction && r.targets.contains(&pod) && rule_allows(r))
        .map(|r| r.id.to_string())
        .collect();
    if allowing.is_empty() {
        Judgement::Denied
    } else {
        Judgement::Allowed(allowing)
    }
}

/// Whether `plan` lets a new connection from `src` to `dst` on (`protocol`, `port`) through, as
/// the nftables rules should: the reference the kernel's behaviour is tested against.
pub fn allows(plan: &Plan, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> bool {
    [Direction::Egress, Direction::Ingress]
        .into_iter()
        .all(|d| judge(plan, d, src, dst, protocol, port).passes())
}

impl Cluster {
    /// The policies (`<namespace>/<name>`) that isolate `pod` for `direction`.
    pub fn isolating(&self, pod: &PodInfo, direction: Direction) -> Vec<String> {
        if pod.host_network {
            return Vec::new();
        }
        self.policies
            .iter()
            .filter(|((namespace, _), _)| *namespace == pod.namespace)
            .filter(|(_, policy)| {
                let object = &policy.object;
                let selector = object.spec.as_ref().and_then(|s| s.pod_selector.as_ref());
                selector.is_none_or(|s| matches(s, &pod.labels))
                    && policy.directions.iter().any(|(d, _)| *d == direction)
            })
            .map(|((namespace, name), _)| format!("{namespace}/{name}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        ns: &str,
        name: &str,
        ip: &str,
        labels: serde_json::Value,
        port: Option<(&str, u16)>,
    ) -> Pod {
        let ports = port.map_or(
            json!([]),
            |(n, p)| json!([{"name": n, "containerPort": p, "protocol": "TCP"}]),
        );
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": ports}]},
            "status": {"phase": "Running", "podIPs": [{"ip": ip}]},
        }))
        .unwrap()
    }

    fn cluster(pods: &[Pod], policies: &[(&str, serde_json::Value)]) -> Cluster {
        let mut c = Cluster::default();
        for p in pods {
            let info = PodInfo::from_pod(p).unwrap();
            c.pods
                .insert((info.namespace.clone(), info.name.clone()), info);
        }
        c.namespaces
            .insert("x".into(), [("ns".to_string(), "x".to_string())].into());
        c.namespaces
            .insert("y".into(), [("ns".to_string(), "y".to_string())].into());
        for (i, (ns, spec)) in policies.iter().enumerate() {
            let policy: NetworkPolicy = serde_json::from_value(json!({
                "metadata": {"name": format!("p{i}"), "namespace": ns}, "spec": spec}))
            .unwrap();
            c.policies
                .insert((ns.to_string(), format!("p{i}")), policy.into());
        }
        c
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pods() -> Vec<Pod> {
        vec![
            pod(
                "x",
                "a",
                "10.0.0.1",
                json!({"app": "a"}),
                Some(("web", 8080)),
            ),
            pod(
                "x",
                "b",
                "10.0.0.2",
                json!({"app": "b"}),
                Some(("web", 9090)),
            ),
            pod("y", "c", "10.0.0.3", json!({"app": "c"}), None),
        ]
    }

    #[test]
    fn rules_with_the_same_peers_share_one_set() {
        let from_b = json!([{"podSelector": {"matchLabels": {"app": "b"}}}]);
        let from_x = json!([{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]);
        let c = cluster(
            &pods(),
            &[
                (
                    "x",
                    json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": from_b}]}),
                ),
                (
                    "x",
                    json!({"podSelector": {"matchLabels": {"app": "b"}}, "ingress": [{"from": from_b}]}),
                ),
                (
                    "x",
                    json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": from_x}]}),
                ),
                (
                    "y",
                    json!({"podSelector": {}, "ingress": [{"from": from_x}, {"from": from_x, "ports": [{"port": 80}]}]}),
                ),
            ],
        );
        let plan = c.plan("n1");
        assert_eq!(plan.rules.len(), 5);
        let table = crate::nft::render(&plan, &crate::nft::Options::default());
        let peer_sets: Vec<(&String, usize)> = table
            .sets
            .iter()
            .filter(|(name, _)| name.ends_with("-p4"))
            .map(|(name, set)| (name, set.elements.len()))
            .collect();
        // x's pods labelled app=b (two rules), every pod of namespace x (three rules, two
        // namespaces' policies).
        assert_eq!(peer_sets.len(), 2, "{peer_sets:?}");
        let mut sizes: Vec<usize> = peer_sets.iter().map(|(_, n)| *n).collect();
        sizes.sort();
        assert_eq!(sizes, [1, 2]);
        // The two rules of y's policy share its target set.
        let target_sets = table.sets.keys().filter(|n| n.ends_with("-t4")).count();
        assert_eq!(target_sets, 4, "{:?}", table.sets.keys());
    }

    #[test]
    fn peers_written_alike_are_worked_out_once_and_still_report_their_problems() {
        let mut all = pods();
        // A namespace the agent has no labels for: an empty namespaceSelector still picks it.
        all.push(pod("z", "d", "10.0.0.4", json!({"app": "b"}), None));
        let every_b = json!([{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "b"}}},
                             {"ipBlock": {"cidr": "not-a-cidr"}}]);
        let c = cluster(
            &all,
            &[
                (
                    "x",
                    json!({"podSelector": {}, "ingress": [{"from": every_b}]}),
                ),
                (
                    "x",
                    json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": every_b}]}),
                ),
            ],
        );
        let plan = c.plan("n1");
        assert_eq!(plan.rules.len(), 2);
        for rule in &plan.rules {
            assert_eq!(*rule.peers.pods, [ip("10.0.0.2"), ip("10.0.0.4")].into());
            assert!(rule.peers.blocks.is_empty());
        }
        assert_eq!(plan.problems.len(), 2, "{:?}", plan.problems);
    }

    #[test]
    fn isolation_union_and_unselected_pods() {
        let c = cluster(
            &pods(),
            &[
                (
                    "x",
                    json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}]}]}),
                ),
                (
                    "x",
                    json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}),
                ),
            ],
        );
        let plan = c.plan("n1");
        let (a, b, cc) = (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"));
        assert!(
            plan.egress_isolated.is_empty(),
            "no egress rules, no policyTypes: ingress only"
        );
        assert!(allows(&plan, b, a, Protocol::Tcp, 80), "first policy");
        assert!(
            allows(&plan, cc, a, Protocol::Udp, 53),
            "second policy: the union"
        );
        assert!(
            allows(&plan, a, b, Protocol::Tcp, 80),
            "b is selected by no policy: open"
        );
        assert!(!allows(&plan, ip("192.0.2.1"), a, Protocol::Tcp, 80));
    }

    #[test]
    fn egress_is_implied_by_egress_rules_and_named_ports_follow_the_receiver() {
        let c = cluster(
            &pods(),
            &[(
                "x",
                json!({"podSelector": {"matchLabels": {"app": "a"}}, "egress": [{"ports": [{"port": "web"}]}]}),
            )],
        );
        let plan = c.plan("n1");
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert!(plan.egress_isolated.contains(&a) && plan.ingress_isolated.contains(&a));
        assert!(
            allows(&plan, a, b, Protocol::Tcp, 9090),
            "b's port named web"
        );
        assert!(
            !allows(&plan, a, b, Protocol::Tcp, 8080),
            "a's own number is not b's"
        );
        assert!(
            !allows(&plan, b, a, Protocol::Tcp, 8080),
            "ingress isolated with no rule"
        );
    }

    #[test]
    fn and_or_blocks_and_ranges() {
        let c = cluster(
            &pods(),
            &[(
                "x",
                json!({"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [
                    {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}, "podSelector": {"matchLabels": {"app": "b"}}}]},
                    {"from": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}],
                     "ports": [{"protocol": "UDP", "port": 1000, "endPort": 1010}]},
                ]}),
            )],
        );
        let plan = c.plan("n1");
        let a = ip("10.0.0.1");
        assert!(
            !allows(&plan, ip("10.0.0.3"), a, Protocol::Tcp, 80),
            "y/c is not app=b: AND"
        );
        assert!(
            !allows(&plan, ip("10.0.0.2"), a, Protocol::Tcp, 80),
            "x/b is not in ns y: AND"
        );
        assert!(allows(&plan, ip("192.0.2.1"), a, Protocol::Udp, 1005));
        assert!(
            !allows(&plan, ip("192.0.2.1"), a, Protocol::Udp, 1011),
            "past endPort"
        );
        assert!(
            !allows(&plan, ip("192.0.2.1"), a, Protocol::Tcp, 1005),
            "UDP only"
        );
        assert!(
            !allows(&plan, ip("192.0.2.200"), a, Protocol::Udp, 1005),
            "except"
        );
    }

    #[test]
    fn host_network_and_finished_pods_are_neither_policed_nor_peers() {
        let mut host: Pod = pod("x", "h", "10.0.0.9", json!({"app": "a"}), None);
        host.spec.as_mut().unwrap().host_network = Some(true);
        let mut done = pod("x", "d", "10.0.0.8", json!({"app": "b"}), None);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(PodInfo::from_pod(&done).is_none());
        let c = cluster(
            &[host],
            &[("x", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))],
        );
        let plan = c.plan("n1");
        assert!(plan.ingress_isolated.is_empty());
        assert!(plan.local_pods.is_empty());
        assert!(plan.policies_exist);
    }
}
