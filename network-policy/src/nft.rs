//! The plan as one nftables table, `inet tether-netpol`, and keeping the kernel's copy of it in
//! step.
//!
//! Rules grow with policies, not with pods: every policy rule looks up named sets of addresses
//! (the node's pods its policy applies to, one set per policy; the pods it lets in or out to,
//! one set per distinct peer list; named ports resolved per pod, one per rule). A pod joining
//! or leaving is a set element added or deleted; a policy added or deleted is its own sets plus
//! the rules of its namespace's chain (sets are named after a hash of what decides their
//! members, never a rule's position). Everything changes in one
//! transaction (`nft -j -f`), so there is never a moment with half a change; a restart rewrites
//! the table in one transaction too, never flushing it first.
//!
//! The chains: `forward` (pod to pod, and anything routed to or from a pod) and `input` (a pod
//! to its own node) send replies of allowed connections through (`ct state established,related`)
//! and send new traffic of an egress-isolated pod, through the verdict map `eg-by-ns4/6`, to
//! its namespace's egress chain `eg-<hash>` (only that namespace's policies can select it),
//! which returns when a rule allows it and drops otherwise; then traffic to an
//! ingress-isolated pod, through `in-by-ns4/6`, to `in-<hash>`, which accepts when a rule
//! allows it and drops otherwise. A new connection walks its namespace's rules, not all.
//! Traffic from the node itself to its pods (kubelet's probes) leaves through `output` and is
//! never policed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use cni_core::firewall::build::{
    self, anonymous_set, concat, ct, eq, field, meta, ne, number, prefix, set_ref, text,
};
use cni_core::firewall::expr::{Expression, MetaKey, Range};
use cni_core::firewall::schema::{SetType, SetTypeValue};
use cni_core::firewall::stmt::{Operator, Statement};
use cni_core::firewall::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use cni_core::firewall::{elements, tables, Batch, FirewallError};
use ipnetwork::IpNetwork;

use crate::model::{Block, Direction, Plan, Protocol, Rule};

pub const TABLE: &str = "tether-netpol";
const FAMILY: NfFamily = NfFamily::INet;

/// What a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetKind {
    Addresses {
        v6: bool,
    },
    /// Address . protocol . port (named ports).
    Named {
        v6: bool,
    },
    /// A verdict map: address -> jump to a chain.
    Dispatch {
        v6: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Elem {
    Addr(IpAddr),
    Named(IpAddr, Protocol, u16),
    /// Address -> jump to the chain.
    Jump(IpAddr, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetDef {
    pub kind: SetKind,
    pub elements: BTreeSet<Elem>,
}

/// The whole table as it should be.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub sets: BTreeMap<String, SetDef>,
    /// Chain name -> its rules, in order.
    pub chains: BTreeMap<String, Vec<Vec<Statement<'static>>>>,
    /// Whether denied packets are logged (rate-limited).
    pub log_denied: bool,
    /// The names the sets of each peers key and each policy's targets got.
    pub names: SetIndex,
    /// The kernel's handle of each rule of a chain, in the order of `chains`, for the chains
    /// whose handles the agent learnt (read back from the kernel after the batch that wrote
    /// them): a changed policy chain then gets only its new rules inserted and its gone rules
    /// deleted.
    pub handles: RuleHandles,
}

/// Chain name -> the handle of each of its rules.
pub type RuleHandles = BTreeMap<String, Vec<u32>>;

/// The base name (before `-p4`, `-t6`, ...) of the sets each key got: what
/// [`crate::delta`] needs to move a pod's address without rendering the table again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SetIndex {
    /// Peers key ([`Rule::peers_key`]) -> base name.
    pub peers: HashMap<Arc<str>, Arc<str>>,
    /// Policy (`<namespace>/<name>`) -> base name of its targets sets.
    pub targets: HashMap<Arc<str>, Arc<str>>,
    /// Rule id ([`Rule::id`]) -> base name of its named-port sets; every rule of the plan.
    pub rules: HashMap<Arc<str>, Arc<str>>,
}

/// One member of one set, coming or going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub set: String,
    pub elem: Elem,
    pub add: bool,
}

impl Table {
    /// Rules in the table (what grows with policies).
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(Vec::len).sum()
    }

    pub fn element_count(&self) -> usize {
        self.sets.values().map(|s| s.elements.len()).sum()
    }

    /// The table once the kernel has taken `edits`.
    pub fn apply_edits(&mut self, edits: &[Edit]) {
        for edit in edits {
            if let Some(set) = self.sets.get_mut(&edit.set) {
                if edit.add {
                    set.elements.insert(edit.elem.clone());
                } else {
                    set.elements.remove(&edit.elem);
                }
            }
        }
    }
}

fn family_of(ip: &IpAddr) -> bool {
    ip.is_ipv6()
}

/// The address set `name` of the family (made once: a name stands for one key, so the rules
/// that share it share its members).
fn addr_set(
    table: &mut Table,
    name: String,
    v6: bool,
    ips: impl Iterator<Item = IpAddr>,
) -> String {
    if table.sets.contains_key(&name) {
        return name;
    }
    let elements = ips
        .filter(|ip| family_of(ip) == v6)
        .map(Elem::Addr)
        .collect();
    table.sets.insert(
        name.clone(),
        SetDef {
            kind: SetKind::Addresses { v6 },
            elements,
        },
    );
    name
}

fn addr_field(v6: bool, which: &str) -> Expression<'static> {
    field(build::ip_proto(v6), which)
}

fn verdict(direction: Direction) -> Statement<'static> {
    match direction {
        // Allowed out: on to the ingress check.
        Direction::Egress => Statement::Return(None),
        Direction::Ingress => Statement::Accept(None),
    }
}

fn port_range(first: u16, last: u16) -> Expression<'static> {
    if first == last {
        number(u32::from(first))
    } else {
        Expression::Range(Box::new(Range {
            range: [number(u32::from(first)), number(u32::from(last))],
        }))
    }
}

/// The port matches of a rule: one alternative per protocol with port ranges, one for the named
/// ports; empty inner lists mean "every port".
fn port_matches(rule: &Rule, v6: bool, named_set: Option<&str>) -> Vec<Vec<Statement<'static>>> {
    if rule.ports.all {
        return vec![Vec::new()];
    }
    let mut by_protocol: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    for (protocol, first, last) in &rule.ports.ranges {
        by_protocol
            .entry(*protocol)
            .or_default()
            .push((*first, *last));
    }
    let mut out: Vec<Vec<Statement<'static>>> = by_protocol
        .into_iter()
        .map(|(protocol, ranges)| {
            let l4 = eq(meta(MetaKey::L4proto), text(protocol.nft()));
            if ranges.iter().any(|(f, l)| *f == 1 && *l == u16::MAX) {
                return vec![l4];
            }
            let ports = anonymous_set(ranges.iter().map(|(f, l)| port_range(*f, *l)).collect());
            vec![l4, eq(field("th", "dport"), ports)]
        })
        .collect();
    if let Some(set) = named_set {
        // Named ports are the receiving pod's: the destination in both directions.
        let receiver = addr_field(v6, "daddr");
        out.push(vec![eq(
            concat(vec![receiver, meta(MetaKey::L4proto), field("th", "dport")]),
            set_ref(set),
        )]);
    }
    out
}

fn block_match(block: &Block, peer_field: Expression<'static>) -> Vec<Statement<'static>> {
    let mut m = vec![eq(peer_field.clone(), prefix(block.cidr))];
    let except: Vec<Expression<'static>> = block
        .except
        .iter()
        .filter(|e| e.is_ipv4() == block.cidr.is_ipv4())
        .map(|e| prefix(*e))
        .collect();
    if !except.is_empty() {
        m.push(ne(peer_field, anonymous_set(except)));
    }
    m
}

/// How the table is written, besides the plan.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Log denied packets (rate-limited).
    pub log_denied: bool,
    /// This node's pod subnets: an address in them that the agent does not know as a pod yet
    /// (its CNI ADD finished before the Pod's address reached the agent) is held, dropped both
    /// ways, until the agent knows it, whenever any policy exists.
    pub pod_subnets: Vec<IpNetwork>,
}

/// The table for `plan`.
pub fn render(plan: &Plan, options: &Options) -> Table {
    let log_denied = options.log_denied;
    let mut table = Table {
        log_denied,
        ..Table::default()
    };
    // Per namespace and direction, the chain of its policies' rules.
    let mut policy_chains: BTreeMap<String, Vec<Vec<Statement<'static>>>> = BTreeMap::new();
    let mut forward: Vec<Vec<Statement<'static>>> = vec![established()];
    let mut input: Vec<Vec<Statement<'static>>> = vec![established()];
    for v6 in [false, true] {
        if plan.policies_exist {
            hold_unknown(&mut table, plan, options, v6, &mut forward, &mut input);
        }
        let eg = dispatch_map(
            &mut table,
            &mut policy_chains,
            dispatch_name(Direction::Egress, v6),
            v6,
            Direction::Egress,
            plan,
        );
        let ing = dispatch_map(
            &mut table,
            &mut policy_chains,
            dispatch_name(Direction::Ingress, v6),
            v6,
            Direction::Ingress,
            plan,
        );
        for chain in [&mut forward, &mut input] {
            chain.push(vec![build::vmap(addr_field(v6, "saddr"), &eg)]);
        }
        forward.push(vec![build::vmap(addr_field(v6, "daddr"), &ing)]);
    }
    let mut names = SetNames::default();
    for rule in &plan.rules {
        let n = names.get("rule", &rule.id);
        let t = names.get("targets", &rule.targets_key);
        let p = names.get("peers", &rule.peers_key);
        table
            .names
            .targets
            .entry(rule.targets_key.clone())
            .or_insert_with(|| t.clone());
        table
            .names
            .peers
            .entry(rule.peers_key.clone())
            .or_insert_with(|| p.clone());
        table.names.rules.insert(rule.id.clone(), n.clone());
        let chain = policy_chains
            .entry(policy_chain(rule.direction, &rule.namespace))
            .or_default();
        render_rule(&mut table, rule, [&n, &t, &p], chain);
    }
    for chain in policy_chains.values_mut() {
        close_chain(chain, log_denied);
    }
    table.chains.insert("forward".into(), forward);
    table.chains.insert("input".into(), input);
    table.chains.extend(policy_chains);
    table
}

/// The sets `rule` uses (made once: a name stands for one key, so the rules that share it
/// share its members), and its rules, one per peer match and port match, pushed to `chain`.
/// `names`: the base names of its named-port, targets and peers sets.
fn render_rule(
    table: &mut Table,
    rule: &Rule,
    names: [&str; 3],
    chain: &mut Vec<Vec<Statement<'static>>>,
) {
    let [n, t, p] = names;
    for v6 in [false, true] {
        let f = if v6 { "6" } else { "4" };
        let (own, peer) = match rule.direction {
            Direction::Ingress => ("daddr", "saddr"),
            Direction::Egress => ("saddr", "daddr"),
        };
        let targets = addr_set(table, format!("{t}-t{f}"), v6, rule.targets.iter().copied());
        let mut peer_matches: Vec<Vec<Statement<'static>>> = Vec::new();
        if rule.peers.any {
            peer_matches.push(Vec::new());
        } else {
            if rule.peers.pods.iter().any(|ip| family_of(ip) == v6) {
                let set = addr_set(
                    table,
                    format!("{p}-p{f}"),
                    v6,
                    rule.peers.pods.iter().copied(),
                );
                peer_matches.push(vec![eq(addr_field(v6, peer), set_ref(&set))]);
            }
            for block in rule.peers.blocks.iter().filter(|b| b.cidr.is_ipv6() == v6) {
                peer_matches.push(block_match(block, addr_field(v6, peer)));
            }
        }
        let named: BTreeSet<Elem> = rule
            .ports
            .named
            .iter()
            .filter(|(ip, _, _)| family_of(ip) == v6)
            .map(|(ip, p, port)| Elem::Named(*ip, *p, *port))
            .collect();
        let named_set = (!named.is_empty()).then(|| {
            let name = format!("{n}-n{f}");
            table.sets.insert(
                name.clone(),
                SetDef {
                    kind: SetKind::Named { v6 },
                    elements: named,
                },
            );
            name
        });
        let ports = port_matches(rule, v6, named_set.as_deref());
        for peer_match in &peer_matches {
            for port_match in &ports {
                let mut statements = vec![eq(addr_field(v6, own), set_ref(&targets))];
                statements.extend(peer_match.iter().cloned());
                statements.extend(port_match.iter().cloned());
                statements.push(verdict(rule.direction));
                chain.push(statements);
            }
        }
    }
}

/// A policy chain's end: what no rule allowed is dropped (logged first, if asked).
fn close_chain(chain: &mut Vec<Vec<Statement<'static>>>, log_denied: bool) {
    if log_denied {
        chain.push(log_statement());
    }
    chain.push(vec![Statement::Drop(None)]);
}

/// The sets and chains a change can touch (the rest of the table stays as it is): what a
/// write compares, instead of the whole table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope {
    pub sets: BTreeSet<String>,
    pub chains: BTreeSet<String>,
}

/// A namespace's part of a plan after a change confined to its policies: what
/// [`render_namespace`] renders.
pub struct NamespaceView<'a> {
    pub namespace: &'a str,
    /// The namespace's rules after the change, in the plan's order.
    pub rules: Vec<&'a Rule>,
    /// The namespace's addresses isolated for ingress and for egress after it.
    pub ingress: BTreeSet<IpAddr>,
    pub egress: BTreeSet<IpAddr>,
}

/// Changes `table` (the table of `plan`) in place to the table after a change confined to one
/// namespace's policies (one of them created, changed or deleted: its rules were `old`; `view`
/// is the namespace after it): the namespace's chains rendered again from its rules, the sets
/// only the old rules held gone, the sets of the new rules made, the namespace's pods in the
/// verdict maps as isolated now. What a whole render of the plan after it gives (the delta's
/// test holds it to that). Returns the change's scope and that scope's part of the table as it
/// was (what the write compares); `None`, with `table` untouched, when a new set's name is
/// taken by another key (a hash collision: the whole render resolves it) or a verdict map is
/// missing.
pub fn render_namespace(
    table: &mut Table,
    plan: &Plan,
    view: &NamespaceView<'_>,
    old: &[Rule],
) -> Option<(Scope, Table)> {
    let namespace = view.namespace;
    let in_view = |f: &dyn Fn(&Rule) -> bool| {
        view.rules.iter().any(|r| f(r))
            || plan.rules.iter().any(|r| r.namespace != namespace && f(r))
    };
    // First every name and check, nothing changed yet.
    let mut scope = Scope::default();
    let scope_sets = |scope: &mut Scope, base: &str, kind: char| {
        for f in ['4', '6'] {
            scope.sets.insert(format!("{base}-{kind}{f}"));
        }
    };
    let mut gone_keys: Vec<(SetKey, Arc<str>)> = Vec::new();
    for rule in old {
        // Its targets and named-port sets are worked out again (the policy changed); its peer
        // sets stay while a rule has their peers.
        if let Some(t) = table.names.targets.get(&rule.targets_key) {
            scope_sets(&mut scope, t, 't');
            if !in_view(&|r| r.targets_key == rule.targets_key) {
                gone_keys.push((SetKey::Targets, rule.targets_key.clone()));
            }
        }
        if let Some(n) = table.names.rules.get(&rule.id) {
            scope_sets(&mut scope, n, 'n');
            if !in_view(&|r| r.id == rule.id) {
                gone_keys.push((SetKey::Rule, rule.id.clone()));
            }
        }
        if let Some(p) = table.names.peers.get(&rule.peers_key) {
            if !in_view(&|r| r.peers_key == rule.peers_key) {
                scope_sets(&mut scope, p, 'p');
                gone_keys.push((SetKey::Peers, rule.peers_key.clone()));
            }
        }
    }
    let mut fresh: Vec<(SetKey, Arc<str>, Arc<str>)> = Vec::new();
    let mut names: Vec<[Arc<str>; 3]> = Vec::with_capacity(view.rules.len());
    for rule in &view.rules {
        let mut three = Vec::with_capacity(3);
        for (which, key, kind) in [
            (SetKey::Rule, &rule.id, 'n'),
            (SetKey::Targets, &rule.targets_key, 't'),
            (SetKey::Peers, &rule.peers_key, 'p'),
        ] {
            let name = match table.names.map(which).get(key) {
                Some(name) => name.clone(),
                None => match fresh.iter().find(|(w, k, _)| {
                    std::mem::discriminant(w) == std::mem::discriminant(&which) && k == key
                }) {
                    Some((_, _, name)) => name.clone(),
                    None => {
                        let name = new_name(which, key);
                        if table.names.taken(&name) || fresh.iter().any(|(_, _, n)| *n == name) {
                            return None;
                        }
                        fresh.push((which, key.clone(), name.clone()));
                        name
                    }
                },
            };
            scope_sets(&mut scope, &name, kind);
            three.push(name);
        }
        let [n, t, p]: [Arc<str>; 3] = three.try_into().ok()?;
        names.push([n, t, p]);
    }
    let directions = [
        (Direction::Ingress, &view.ingress),
        (Direction::Egress, &view.egress),
    ];
    for (direction, _) in directions {
        scope.chains.insert(policy_chain(direction, namespace));
        for v6 in [false, true] {
            let map = dispatch_name(direction, v6);
            table.sets.get(&map)?;
            scope.sets.insert(map);
        }
    }
    // What the write compares: the scope as it was.
    let before = Table {
        sets: scope
            .sets
            .iter()
            .filter_map(|n| Some((n.clone(), table.sets.get(n)?.clone())))
            .collect(),
        chains: scope
            .chains
            .iter()
            .filter_map(|n| Some((n.clone(), table.chains.get(n)?.clone())))
            .collect(),
        handles: scope
            .chains
            .iter()
            .filter_map(|n| Some((n.clone(), table.handles.get(n)?.clone())))
            .collect(),
        log_denied: table.log_denied,
        names: SetIndex::default(),
    };
    // Then the change.
    for name in &scope.sets {
        if !name.contains("-by-ns") {
            table.sets.remove(name);
        }
    }
    for (which, key) in gone_keys {
        table.names.map_mut(which).remove(&key);
    }
    for (which, key, name) in fresh {
        table.names.map_mut(which).insert(key, name);
    }
    let mut chains: BTreeMap<String, Vec<Vec<Statement<'static>>>> = BTreeMap::new();
    for (direction, isolated) in directions {
        let name = policy_chain(direction, namespace);
        if !isolated.is_empty() {
            chains.insert(name.clone(), Vec::new());
        }
        for v6 in [false, true] {
            if let Some(set) = table.sets.get_mut(&dispatch_name(direction, v6)) {
                set.elements
                    .retain(|e| !matches!(e, Elem::Jump(_, chain) if *chain == name));
                set.elements.extend(
                    isolated
                        .iter()
                        .filter(|ip| family_of(ip) == v6)
                        .map(|ip| Elem::Jump(*ip, name.clone())),
                );
            }
        }
        table.chains.remove(&name);
    }
    for (rule, [n, t, p]) in view.rules.iter().zip(&names) {
        let chain = chains
            .entry(policy_chain(rule.direction, namespace))
            .or_default();
        render_rule(table, rule, [n, t, p], chain);
    }
    for chain in chains.values_mut() {
        close_chain(chain, table.log_denied);
    }
    table.chains.extend(chains);
    Some((scope, before))
}

/// Which of [`SetIndex`]'s maps a key is in.
#[derive(Clone, Copy)]
enum SetKey {
    Rule,
    Targets,
    Peers,
}

/// The base name a whole render gives `key` when no other key has it.
fn new_name(which: SetKey, key: &str) -> Arc<str> {
    let prefix = match which {
        SetKey::Rule => "rule",
        SetKey::Targets => "targets",
        SetKey::Peers => "peers",
    };
    Arc::from(format!("r{:016x}", fnv_parts(&[prefix, " ", key])))
}

impl SetIndex {
    fn map(&self, which: SetKey) -> &HashMap<Arc<str>, Arc<str>> {
        match which {
            SetKey::Rule => &self.rules,
            SetKey::Targets => &self.targets,
            SetKey::Peers => &self.peers,
        }
    }

    fn map_mut(&mut self, which: SetKey) -> &mut HashMap<Arc<str>, Arc<str>> {
        match which {
            SetKey::Rule => &mut self.rules,
            SetKey::Targets => &mut self.targets,
            SetKey::Peers => &mut self.peers,
        }
    }

    /// Whether some key has the base name `name`.
    fn taken(&self, name: &Arc<str>) -> bool {
        [&self.rules, &self.targets, &self.peers]
            .iter()
            .any(|m| m.values().any(|n| n == name))
    }
}

/// FNV-1a: short, stable names from longer keys.
fn fnv(key: &str) -> u64 {
    fnv_parts(&[key])
}

/// FNV-1a of the parts written one after the other.
fn fnv_parts(parts: &[&str]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.bytes())
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// The chain of the rules of `namespace`'s policies in `direction`: `in-<hash>` or
/// `eg-<hash>`. A pod is policed by its own namespace's policies only, so a verdict map from
/// the pod's address to this chain sends a new connection through those rules alone.
pub fn policy_chain(direction: Direction, namespace: &str) -> String {
    let prefix = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    format!("{prefix}-{:016x}", fnv(namespace))
}

/// The verdict map of `direction` for a family: `in-by-ns4`, `eg-by-ns6`, ...
pub fn dispatch_name(direction: Direction, v6: bool) -> String {
    let prefix = match direction {
        Direction::Ingress => "in",
        Direction::Egress => "eg",
    };
    format!("{prefix}-by-ns{}", if v6 { "6" } else { "4" })
}

/// The verdict map `name`: each pod of the family isolated in `direction` -> its namespace's
/// chain (created, empty, if no rule fills it: default deny).
fn dispatch_map(
    table: &mut Table,
    chains: &mut BTreeMap<String, Vec<Vec<Statement<'static>>>>,
    name: String,
    v6: bool,
    direction: Direction,
    plan: &Plan,
) -> String {
    let isolated = match direction {
        Direction::Ingress => &plan.ingress_isolated,
        Direction::Egress => &plan.egress_isolated,
    };
    let elements = isolated
        .iter()
        .filter(|ip| family_of(ip) == v6)
        .filter_map(|ip| {
            let chain = policy_chain(direction, plan.namespaces.get(ip)?);
            chains.entry(chain.clone()).or_default();
            Some(Elem::Jump(*ip, chain))
        })
        .collect();
    table.sets.insert(
        name.clone(),
        SetDef {
            kind: SetKind::Dispatch { v6 },
            elements,
        },
    );
    name
}

/// Set name prefixes by what decides a set's members, not by a rule's position: a rule's named
/// ports by its identity, targets by the policy, peer pods by the peers as written (so rules
/// with the same peers share one set, and a pod joining them is one element). Adding or
/// deleting a policy leaves every other set as it is (the write is that policy's sets and the
/// chains, not the whole table). `r` + FNV-1a of the key; a different key of this plan with the
/// same hash gets a suffix.
#[derive(Default)]
struct SetNames {
    /// FNV-1a of `<prefix> <key>` -> each (prefix, key) with that hash, and its name.
    by_hash: HashMap<u64, Vec<NamedKey>>,
    taken: HashSet<Arc<str>>,
}

/// A set's (prefix, key) and the name it got.
type NamedKey = (&'static str, String, Arc<str>);

impl SetNames {
    fn get(&mut self, prefix: &'static str, key: &str) -> Arc<str> {
        let hash = fnv_parts(&[prefix, " ", key]);
        let known = self.by_hash.entry(hash).or_default();
        if let Some((_, _, name)) = known.iter().find(|(p, k, _)| *p == prefix && k == key) {
            return name.clone();
        }
        let base = format!("r{hash:016x}");
        let mut name: Arc<str> = Arc::from(base.as_str());
        let mut n = 1;
        while !self.taken.insert(name.clone()) {
            name = Arc::from(format!("{base}x{n}"));
            n += 1;
        }
        known.push((prefix, key.to_string(), name.clone()));
        name
    }
}

/// Drops traffic of addresses in this node's pod subnets that are not known pods (nor the
/// subnet's network and gateway addresses).
fn hold_unknown(
    table: &mut Table,
    plan: &Plan,
    options: &Options,
    v6: bool,
    forward: &mut Vec<Vec<Statement<'static>>>,
    input: &mut Vec<Vec<Statement<'static>>>,
) {
    let subnets: Vec<IpNetwork> = options
        .pod_subnets
        .iter()
        .filter(|s| s.is_ipv6() == v6)
        .copied()
        .collect();
    if subnets.is_empty() {
        return;
    }
    let f = if v6 { "6" } else { "4" };
    let infrastructure = subnets.iter().flat_map(|s| {
        let network = s.network();
        let gateway = match network {
            IpAddr::V4(a) => IpAddr::V4(std::net::Ipv4Addr::from(u32::from(a).wrapping_add(1))),
            IpAddr::V6(a) => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(a).wrapping_add(1))),
        };
        [network, gateway]
    });
    let known = addr_set(
        table,
        format!("known{f}"),
        v6,
        plan.local_pods.iter().copied().chain(infrastructure),
    );
    let ranges = anonymous_set(subnets.iter().map(|s| prefix(*s)).collect());
    for which in ["saddr", "daddr"] {
        let rule = vec![
            eq(addr_field(v6, which), ranges.clone()),
            ne(addr_field(v6, which), set_ref(&known)),
            Statement::Drop(None),
        ];
        if which == "saddr" {
            input.push(rule.clone());
        }
        forward.push(rule);
    }
}

fn established() -> Vec<Statement<'static>> {
    vec![
        cni_core::firewall::build::is(
            ct("state"),
            Operator::IN,
            Expression::List(vec![text("established"), text("related")]),
        ),
        Statement::Accept(None),
    ]
}

fn log_statement() -> Vec<Statement<'static>> {
    build::rate_limited_log(10, 20, "tether-netpol denied: ")
}

fn set_type(kind: SetKind) -> SetTypeValue<'static> {
    let addr = |v6: bool| {
        if v6 {
            SetType::Ipv6Addr
        } else {
            SetType::Ipv4Addr
        }
    };
    match kind {
        SetKind::Addresses { v6 } | SetKind::Dispatch { v6 } => SetTypeValue::Single(addr(v6)),
        SetKind::Named { v6 } => SetTypeValue::Concatenated(
            vec![addr(v6), SetType::InetProto, SetType::InetService].into(),
        ),
    }
}

/// An element as added; deleting a map element names its key only.
fn elem_expr(elem: &Elem, delete: bool) -> Expression<'static> {
    match elem {
        Elem::Addr(ip) => build::address(*ip),
        Elem::Named(ip, protocol, port) => concat(vec![
            build::address(*ip),
            text(protocol.nft()),
            number(u32::from(*port)),
        ]),
        Elem::Jump(ip, _) if delete => build::address(*ip),
        Elem::Jump(ip, chain) => build::mapping(build::address(*ip), build::jump_to(chain)),
    }
}

fn elements(
    set: &str,
    elems: impl Iterator<Item = Elem>,
    delete: bool,
) -> Option<cni_core::firewall::schema::NfListObject<'static>> {
    let exprs: Vec<Expression<'static>> = elems.map(|e| elem_expr(&e, delete)).collect();
    (!exprs.is_empty()).then(|| build::elements(FAMILY, TABLE, set, exprs))
}

impl SetKind {
    fn is_map(self) -> bool {
        matches!(self, SetKind::Dispatch { .. })
    }
}

fn add_set(batch: &mut Batch, name: &str, kind: SetKind) {
    match kind {
        SetKind::Dispatch { v6 } => {
            let key = if v6 { "ipv6_addr" } else { "ipv4_addr" };
            batch.raw(build::verdict_map(FAMILY, TABLE, name, &[key]));
        }
        _ => {
            batch.add(build::set(FAMILY, TABLE, name, set_type(kind), &[]));
        }
    }
}

/// The base chains: the packet path's entries to the table.
const BASE_CHAINS: [(&str, NfHook); 2] = [("forward", NfHook::Forward), ("input", NfHook::Input)];

fn add_chain(batch: &mut Batch, name: &str) {
    match BASE_CHAINS.iter().find(|(base, _)| *base == name) {
        Some((_, hook)) => batch.add(build::base_chain(
            FAMILY,
            TABLE,
            name,
            NfChainType::Filter,
            *hook,
            0,
            NfChainPolicy::Accept,
        )),
        None => batch.add(build::chain(FAMILY, TABLE, name)),
    };
}

fn flush_chain(batch: &mut Batch, name: &str) {
    batch.flush(cni_core::firewall::schema::FlushObject::Chain(
        chain_object(name),
    ));
}

fn refill_chain(batch: &mut Batch, name: &str, rules: &[Vec<Statement<'static>>]) {
    flush_chain(batch, name);
    for statements in rules {
        batch.add(build::rule(FAMILY, TABLE, name, statements.clone(), None));
    }
}

/// How a change reaches the kernel.
pub struct Write {
    how: How,
    /// The rule handles of the chains after the write, per chain in the table's order: `None`
    /// for a rule the batch adds (read back from the kernel after it).
    handles: BTreeMap<String, Vec<Option<u32>>>,
    /// (chain, index) of each rule the batch adds or inserts, in the batch's order.
    added: Vec<(String, usize)>,
    /// The chains whose new rules are inserted (first in the chain), not appended.
    inserted: BTreeSet<String>,
}

enum How {
    /// Only set and map members change: element adds and deletes over netlink (no process).
    Elements(Vec<elements::Change>),
    /// Chains, rules or sets change: one `nft` transaction.
    Batch(Batch),
}

impl Write {
    /// How many commands (set changes, or batch commands) it holds.
    pub fn len(&self) -> usize {
        match &self.how {
            How::Elements(changes) => changes.len(),
            How::Batch(batch) => batch.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes it; the rule handles of the chains whose handles are known after it.
    pub fn apply(&self) -> Result<RuleHandles, FirewallError> {
        match &self.how {
            How::Elements(changes) => elements::apply(FAMILY, TABLE, changes)?,
            How::Batch(batch) => batch.apply()?,
        }
        let mut handles = self.handles.clone();
        let mut chains: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (chain, index) in &self.added {
            chains.entry(chain).or_default().push(*index);
        }
        for (chain, indexes) in chains {
            if let Some(slots) = handles.get_mut(chain) {
                if learn(chain, self.inserted.contains(chain), &indexes, slots).is_none() {
                    // Unknown: the chain is refilled the next time it changes.
                    slots.clear();
                }
            }
        }
        // A chain with a handle not learnt is one whose handles are unknown.
        Ok(handles
            .into_iter()
            .filter_map(|(chain, h)| {
                let h: Vec<u32> = h.into_iter().collect::<Option<Vec<u32>>>()?;
                (!h.is_empty()).then_some((chain, h))
            })
            .collect())
    }

    /// The kernel write of `edits`: members going first, then members coming, a set's
    /// members together.
    pub fn edits(edits: &[Edit]) -> Write {
        let mut changes = Vec::new();
        for delete in [true, false] {
            let mut by_set: BTreeMap<&str, Vec<elements::Element>> = BTreeMap::new();
            for edit in edits.iter().filter(|e| e.add != delete) {
                by_set
                    .entry(&edit.set)
                    .or_default()
                    .push(element(&edit.elem));
            }
            changes.extend(by_set.into_iter().map(|(set, elements)| elements::Change {
                set: set.to_string(),
                delete,
                elements,
            }));
        }
        Write {
            how: How::Elements(changes),
            handles: BTreeMap::new(),
            added: Vec::new(),
            inserted: BTreeSet::new(),
        }
    }

    /// The batch's document (`None` for element changes), to compare writes in tests.
    #[cfg(test)]
    pub fn to_json(&self) -> Option<String> {
        match &self.how {
            How::Batch(batch) => Some(batch.to_json()),
            How::Elements(_) => None,
        }
    }

    /// Chains changed by rules inserted and deleted by handle.
    pub fn patched(&self) -> usize {
        self.inserted.len()
    }

    pub fn path(&self) -> &'static str {
        match &self.how {
            How::Elements(_) => "netlink",
            How::Batch(batch) if batch.over_netlink() => "netlink (batch)",
            How::Batch(_) => "nft",
        }
    }
}

/// What brings the kernel from `before` (what was applied last) to `after`: element changes
/// over netlink when the chains and the sets themselves stay as they are (a pod's address joins
/// or leaves sets: the common change), else a batch for `nft`.
pub fn write(before: Option<&Table>, after: &Table) -> Result<Write, FirewallError> {
    match before {
        Some(before)
            if before.chains == after.chains
                && before.sets.keys().eq(after.sets.keys())
                && kinds_agree(before, after) =>
        {
            Ok(Write {
                how: How::Elements(element_changes(before, after)),
                handles: known(&before.handles),
                added: Vec::new(),
                inserted: BTreeSet::new(),
            })
        }
        Some(before) if kinds_agree(before, after) => {
            let (batch, handles, added, inserted) = difference(before, after, None);
            Ok(Write {
                how: How::Batch(batch),
                handles,
                added,
                inserted,
            })
        }
        _ => Ok(Write {
            how: How::Batch(whole(after)?),
            handles: BTreeMap::new(),
            added: Vec::new(),
            inserted: BTreeSet::new(),
        }),
    }
}

/// What brings the kernel from `before` to `after` when they differ only within `scope` (a
/// policy's change: [`render_namespace`]): the difference of those sets and chains alone.
/// `before` needs to hold the scope only; `after` is the whole table after the change (made
/// from the one in the kernel: the handles of the chains outside the scope are its).
pub fn write_scoped(before: &Table, after: &Table, scope: &Scope) -> Write {
    let (batch, handles, added, inserted) = difference(before, after, Some(scope));
    Write {
        how: How::Batch(batch),
        handles,
        added,
        inserted,
    }
}

fn known(handles: &RuleHandles) -> BTreeMap<String, Vec<Option<u32>>> {
    handles
        .iter()
        .map(|(chain, h)| (chain.clone(), h.iter().copied().map(Some).collect()))
        .collect()
}

/// Each set's members that go, then each set's members that come (a map key that changes its
/// chain goes before it comes back).
fn element_changes(before: &Table, after: &Table) -> Vec<elements::Change> {
    let mut changes = Vec::new();
    for delete in [true, false] {
        for (name, set) in &after.sets {
            let Some(old) = before.sets.get(name) else {
                continue;
            };
            let (from, to) = if delete {
                (&old.elements, &set.elements)
            } else {
                (&set.elements, &old.elements)
            };
            let members: Vec<elements::Element> = from.difference(to).map(element).collect();
            if !members.is_empty() {
                changes.push(elements::Change {
                    set: name.clone(),
                    delete,
                    elements: members,
                });
            }
        }
    }
    changes
}

fn element(elem: &Elem) -> elements::Element {
    match elem {
        Elem::Addr(ip) => elements::Element::address(*ip),
        Elem::Named(ip, protocol, port) => {
            elements::Element::address_protocol_port(*ip, protocol.number(), *port)
        }
        Elem::Jump(ip, chain) => elements::Element::jump(*ip, chain),
    }
}

/// A batch that brings the kernel from `before` (what was applied last; `None` after a start)
/// to `after`, in one transaction. From a known `before`: new chains, new sets with their
/// elements, element differences of the others, each changed chain emptied and refilled, then
/// the sets and chains nothing uses any more deleted; only set members changing means only
/// element adds and deletes. Without `before` (a start), the whole table.
pub fn batch(before: Option<&Table>, after: &Table) -> Result<Batch, FirewallError> {
    match before {
        Some(before) if kinds_agree(before, after) => Ok(difference(before, after, None).0),
        _ => whole(after),
    }
}

/// A set both tables have holds the same kind of elements in both.
fn kinds_agree(before: &Table, after: &Table) -> bool {
    after
        .sets
        .iter()
        .all(|(name, set)| before.sets.get(name).is_none_or(|old| old.kind == set.kind))
}

fn chain_object(name: &str) -> cni_core::firewall::schema::Chain<'static> {
    cni_core::firewall::schema::Chain {
        family: FAMILY,
        table: TABLE.into(),
        name: name.to_string().into(),
        ..Default::default()
    }
}

/// The batch, the handles of the chains' rules after it (see [`Write`]), the rules it adds, and
/// the chains it patches (inserting rules).
type Difference = (
    Batch,
    BTreeMap<String, Vec<Option<u32>>>,
    Vec<(String, usize)>,
    BTreeSet<String>,
);

fn difference(before: &Table, after: &Table, scope: Option<&Scope>) -> Difference {
    let mut batch = Batch::new();
    // Names the change can touch: the scope's, or every name of both tables.
    let (sets, chains): (BTreeSet<&String>, BTreeSet<&String>) = match scope {
        Some(scope) => (scope.sets.iter().collect(), scope.chains.iter().collect()),
        None => (
            before.sets.keys().chain(after.sets.keys()).collect(),
            before.chains.keys().chain(after.chains.keys()).collect(),
        ),
    };
    // Chains outside the scope keep their rules and handles (`after` was made from the table
    // in the kernel, handles included; `before` may hold the scope alone).
    let mut handles: BTreeMap<String, Vec<Option<u32>>> = known(&after.handles)
        .into_iter()
        .filter(|(name, _)| !chains.contains(name) && after.chains.contains_key(name))
        .collect();
    let mut added = Vec::new();
    let mut patched = BTreeSet::new();
    // Chains first: map elements and rules jump to them.
    for name in chains.iter().filter(|n| after.chains.contains_key(**n)) {
        if !before.chains.contains_key(*name) {
            add_chain(&mut batch, name);
        }
    }
    for (name, set) in sets.iter().filter_map(|n| Some((*n, after.sets.get(*n)?))) {
        match before.sets.get(name) {
            None => {
                add_set(&mut batch, name, set.kind);
                if let Some(elems) = elements(name, set.elements.iter().cloned(), false) {
                    batch.add(elems);
                }
            }
            Some(old) => {
                let old = &old.elements;
                if let Some(gone) = elements(name, old.difference(&set.elements).cloned(), true) {
                    batch.delete(gone);
                }
                if let Some(new) = elements(name, set.elements.difference(old).cloned(), false) {
                    batch.add(new);
                }
            }
        }
    }
    for (name, rules) in chains
        .iter()
        .filter_map(|n| Some((*n, after.chains.get(*n)?)))
    {
        let old = before.chains.get(name);
        let old_handles = before
            .handles
            .get(name)
            .filter(|h| Some(h.len()) == old.map(Vec::len));
        if old == Some(rules) {
            if let Some(h) = old_handles {
                handles.insert(name.clone(), h.iter().copied().map(Some).collect());
            }
            continue;
        }
        let patch = old
            .zip(old_handles)
            .and_then(|(old, old_handles)| patch_chain(name, old, old_handles, rules));
        let planned = match patch {
            Some(patch) => {
                patched.insert(name.clone());
                for handle in patch.gone {
                    batch.delete(build::rule_handle(FAMILY, TABLE, name, handle));
                }
                for index in patch.new {
                    batch.insert(build::rule(FAMILY, TABLE, name, rules[index].clone(), None));
                    added.push((name.clone(), index));
                }
                patch.handles
            }
            None => {
                refill_chain(&mut batch, name, rules);
                added.extend((0..rules.len()).map(|i| (name.clone(), i)));
                vec![None; rules.len()]
            }
        };
        handles.insert(name.clone(), planned);
    }
    // Chains that are gone are emptied first; then only rules of the chains just refilled or
    // emptied, and map elements just deleted, could have used these sets and chains.
    let gone_chains: Vec<&String> = chains
        .iter()
        .copied()
        .filter(|name| before.chains.contains_key(*name) && !after.chains.contains_key(*name))
        .collect();
    for name in &gone_chains {
        flush_chain(&mut batch, name);
    }
    for (name, old) in sets.iter().filter_map(|n| Some((*n, before.sets.get(*n)?))) {
        if !after.sets.contains_key(name) {
            batch.raw(build::set_command(
                "delete",
                FAMILY,
                TABLE,
                name,
                old.kind.is_map(),
            ));
        }
    }
    for name in gone_chains {
        batch.delete(build::chain(FAMILY, TABLE, name));
    }
    (batch, handles, added, patched)
}

/// The handles of the rules a batch added to `chain` (at `indexes` of its rules, in the
/// batch's order), read back from the kernel: the chain's handles that `slots` does not know
/// yet. Rules appended (a refilled chain) are in the batch's order; rules inserted (each one
/// first in the chain) in the reverse order. `None` when the count does not match.
fn learn(chain: &str, inserted: bool, indexes: &[usize], slots: &mut [Option<u32>]) -> Option<()> {
    let listed = cni_core::firewall::rules::handles(FAMILY, TABLE, chain)
        .ok()
        .flatten()?;
    let known: HashSet<u32> = slots.iter().flatten().copied().collect();
    let mut fresh: Vec<u32> = listed
        .into_iter()
        .filter_map(|h| u32::try_from(h).ok())
        .filter(|h| !known.contains(h))
        .collect();
    if inserted {
        fresh.reverse();
    }
    if fresh.len() != indexes.len() {
        return None;
    }
    for (index, handle) in indexes.iter().zip(fresh) {
        *slots.get_mut(*index)? = Some(handle);
    }
    Some(())
}

/// A policy chain's change as rules inserted and deleted by handle, instead of the chain
/// emptied and refilled (which the kernel makes slow: a namespace's 26 rules took 15-38 ms).
struct ChainPatch {
    /// Handles of the rules that go.
    gone: Vec<u32>,
    /// Indexes (in the new rules) of the rules that come.
    new: Vec<usize>,
    /// The handle of each new rule: kept rules keep theirs, new ones are learnt.
    handles: Vec<Option<u32>>,
}

/// A policy chain's rules allow (accept in `in-`, return in `eg-`) and end with the drop (after
/// the log): the allowing rules' order does not matter, so a rule that comes is inserted first
/// in the chain. `None` for other chains, a rule that comes and does not allow, and chains too
/// long to match rule by rule.
fn patch_chain(
    name: &str,
    old: &[Vec<Statement<'static>>],
    old_handles: &[u32],
    new: &[Vec<Statement<'static>>],
) -> Option<ChainPatch> {
    if !(name.starts_with("in-") || name.starts_with("eg-")) || old.len() * new.len() > 40_000 {
        return None;
    }
    let mut unused = vec![true; old.len()];
    let mut patch = ChainPatch {
        gone: Vec::new(),
        new: Vec::new(),
        handles: Vec::with_capacity(new.len()),
    };
    for (index, rule) in new.iter().enumerate() {
        match (0..old.len()).find(|&j| unused[j] && old[j] == *rule) {
            Some(j) => {
                unused[j] = false;
                patch.handles.push(Some(old_handles[j]));
            }
            None => {
                let allows = matches!(
                    rule.last(),
                    Some(Statement::Accept(_) | Statement::Return(_))
                );
                if !allows {
                    return None;
                }
                patch.new.push(index);
                patch.handles.push(None);
            }
        }
    }
    patch.gone = (0..old.len())
        .filter(|&j| unused[j])
        .map(|j| old_handles[j])
        .collect();
    Some(patch)
}

/// The whole table in one transaction: existing objects are emptied and refilled, so that
/// packets see either the old table or the new one; sets, maps and chains of the kernel's table
/// that `after` has not are deleted.
fn whole(after: &Table) -> Result<Batch, FirewallError> {
    let mut batch = Batch::new();
    batch.add(build::table(FAMILY, TABLE));
    for name in after.chains.keys() {
        add_chain(&mut batch, name);
    }
    for (name, set) in &after.sets {
        add_set(&mut batch, name, set.kind);
        batch.raw(build::set_command(
            "flush",
            FAMILY,
            TABLE,
            name,
            set.kind.is_map(),
        ));
        if let Some(elems) = elements(name, set.elements.iter().cloned(), false) {
            batch.add(elems);
        }
    }
    for (name, rules) in &after.chains {
        refill_chain(&mut batch, name, rules);
    }
    // What is gone: its chains emptied first, then nothing refers to those sets, maps and
    // chains (every other chain and map was refilled above).
    let listed = tables::names(FAMILY, TABLE)?.unwrap_or_default();
    let gone_chains: Vec<&str> = listed
        .chains
        .iter()
        .map(String::as_str)
        .filter(|name| !after.chains.contains_key(*name))
        .collect();
    for name in &gone_chains {
        flush_chain(&mut batch, name);
    }
    for (name, map) in &listed.sets {
        if !after.sets.contains_key(name) {
            batch.raw(build::set_command("delete", FAMILY, TABLE, name, *map));
        }
    }
    for name in gone_chains {
        batch.delete(build::chain(FAMILY, TABLE, name));
    }
    Ok(batch)
}

/// Removes the table (the agent is uninstalled); missing is fine.
pub fn remove() -> Result<(), FirewallError> {
    tables::delete(FAMILY, TABLE).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(port: u32) -> Vec<Statement<'static>> {
        vec![
            eq(field("th", "dport"), number(port)),
            Statement::Accept(None),
        ]
    }

    #[test]
    fn a_policy_chain_is_patched_by_handle_and_other_chains_are_refilled() {
        let drop = vec![Statement::Drop(None)];
        let old = vec![allow(80), allow(81), drop.clone()];
        let new = vec![allow(82), allow(80), drop.clone()];
        let patch = patch_chain("in-0123", &old, &[10, 11, 12], &new).unwrap();
        assert_eq!(patch.gone, vec![11]);
        assert_eq!(patch.new, vec![0]);
        assert_eq!(patch.handles, vec![None, Some(10), Some(12)]);
        // Rules written alike are matched one to one.
        let twice = vec![allow(80), allow(80), drop.clone()];
        let patch = patch_chain("eg-0123", &old, &[10, 11, 12], &twice).unwrap();
        assert_eq!(patch.gone, vec![11]);
        assert_eq!(patch.handles, vec![Some(10), None, Some(12)]);
        // The base chains' order matters; a rule that comes and does not allow (the drop of a
        // new chain) needs its place.
        assert!(patch_chain("forward", &old, &[10, 11, 12], &new).is_none());
        let without_drop = vec![allow(80)];
        assert!(patch_chain("in-0123", &without_drop, &[10], &old).is_none());
    }
}
