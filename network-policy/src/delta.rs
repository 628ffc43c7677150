//! One pod's change (its labels, or the pod coming or going) as the set members it moves, and
//! one policy's change as its namespace's part of the table rendered again, without planning
//! and rendering the whole table again.
//!
//! What changes most in a cluster is pods: a rollout relabels, starts and stops them. A pod's
//! part of the table is members only: its addresses in the peer sets of the rules that pick it,
//! in the target sets of the policies that select it (a pod of this node), in the verdict maps
//! when it is isolated, in `known4/6` (a pod of this node), and its named ports in the sets of
//! the rules that resolve them on it. Those are worked out from the pod alone, before and after,
//! against the table last written; the difference is the write. Anything beyond members moving
//! answers `None`, and the caller plans the whole table, which is always right: a set that
//! would appear or empty (rules change with it), a policy gaining its first or losing its last
//! pod of this node, an address another live pod holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{Cluster, Direction, Plan, PodInfo, Rule, RuleView};
use crate::nft::{self, Edit, Elem, Scope, Table};

/// One policy's change (`key`: created, changed or deleted; nothing else changed since `plan`
/// and `table` were written), made to `plan` and `table` in place: the policy's rules are
/// worked out alone and take the place of its old ones; the isolation of its namespace's pods
/// on this node is worked out again from that namespace's policies; the namespace's chains,
/// verdict-map entries and the sets of its rules are rendered again
/// ([`nft::render_namespace`]). Returns the part of the table it touches and that part as it
/// was (what the write compares). `None`, with both untouched, when more could change (the
/// whole plan runs): the first policy of the cluster or its last one (pods of unknown addresses
/// are held only while policies exist), a plan with problems to report, an address of the
/// namespace's pods that the plan gives another namespace.
pub fn policy_change(
    cluster: &Cluster,
    node: &str,
    plan: &mut Plan,
    table: &mut Table,
    key: &(String, String),
) -> Option<(Scope, Table)> {
    if !plan.problems.is_empty() || plan.policies_exist == cluster.policies.is_empty() {
        return None;
    }
    let (namespace, name) = (key.0.as_str(), key.1.as_str());
    let (rules, problems) = cluster.policy_rules(node, key);
    if !problems.is_empty() {
        return None;
    }
    let of_policy = |r: &Rule| r.targets_key.split_once('/') == Some((namespace, name));
    // The new rules go where the whole plan has them: in the policies' order.
    let later = |r: &Rule| {
        let (ns, policy) = r.targets_key.split_once('/').unwrap_or_default();
        (ns, policy) > (namespace, name)
    };
    // Each address of the namespace's pods of this node: selected, isolated each way.
    let mut isolation: BTreeMap<IpAddr, (bool, bool, bool)> = BTreeMap::new();
    for pod in cluster.local_in(namespace, node) {
        let (selected, ingress, egress) = cluster.isolation(pod);
        for ip in &pod.ips {
            let e = isolation.entry(*ip).or_default();
            *e = (e.0 | selected, e.1 | ingress, e.2 | egress);
        }
    }
    let elsewhere = |ip: &IpAddr| {
        plan.namespaces
            .get(ip)
            .is_some_and(|ns| ns.as_str() != namespace)
    };
    if isolation.keys().any(elsewhere) {
        return None;
    }
    let old: Vec<Rule> = plan
        .rules
        .iter()
        .filter(|r| of_policy(r))
        .cloned()
        .collect();
    let (first, last): (Vec<&Rule>, Vec<&Rule>) = plan
        .rules
        .iter()
        .filter(|r| r.namespace == namespace && !of_policy(r))
        .partition(|r| !later(r));
    let view = nft::NamespaceView {
        namespace,
        rules: first.into_iter().chain(&rules).chain(last).collect(),
        ingress: isolation
            .iter()
            .filter(|(_, i)| i.1)
            .map(|(ip, _)| *ip)
            .collect(),
        egress: isolation
            .iter()
            .filter(|(_, i)| i.2)
            .map(|(ip, _)| *ip)
            .collect(),
    };
    let (scope, was) = nft::render_namespace(table, plan, &view, &old)?;
    drop(view);
    plan.rules.retain(|r| !of_policy(r));
    let at = plan
        .rules
        .iter()
        .position(later)
        .unwrap_or(plan.rules.len());
    plan.rules.splice(at..at, rules);
    for (ip, (selected, ingress, egress)) in isolation {
        let toggle = |set: &mut BTreeSet<IpAddr>, on: bool| {
            if on {
                set.insert(ip);
            } else {
                set.remove(&ip);
            }
        };
        toggle(&mut plan.ingress_isolated, ingress);
        toggle(&mut plan.egress_isolated, egress);
        if selected {
            plan.namespaces.insert(ip, namespace.to_string());
        } else {
            plan.namespaces.remove(&ip);
        }
    }
    Some((scope, was))
}

/// The edits that bring `table` (written for the cluster with `before` as the pod) to the table
/// of `cluster` (which holds `after` in its place; `None`: no such pod), for this `node`; `None`
/// when the change is more than members moving.
pub fn pod_change(
    cluster: &Cluster,
    node: &str,
    table: &Table,
    before: Option<&PodInfo>,
    after: Option<&PodInfo>,
) -> Option<Vec<Edit>> {
    // The agent does not police nor count a pod without an address of its own.
    let before = before.filter(|p| Cluster::is_live(p));
    let after = after.filter(|p| Cluster::is_live(p));
    if before == after {
        return Some(Vec::new());
    }
    if before
        .into_iter()
        .chain(after)
        .any(|p| shares_an_address(cluster, p))
    {
        return None;
    }
    keeps_policies(cluster, node, before, after)?;
    let gone = members(cluster, node, table, before);
    let come = members(cluster, node, table, after);
    let mut edits = Vec::new();
    let mut sizes: BTreeMap<&str, usize> = BTreeMap::new();
    for (members, other, add) in [(&gone, &come, false), (&come, &gone, true)] {
        for (set, elem) in members.difference(other) {
            let held = &table.sets.get(set)?.elements;
            if held.contains(elem) == add {
                return None;
            }
            // A pod sent to a namespace chain the table lacks: the chain comes with a plan.
            if let (true, Elem::Jump(_, chain)) = (add, elem) {
                table.chains.get(chain)?;
            }
            let size = sizes.entry(set).or_insert(held.len());
            *size = if add { *size + 1 } else { size.checked_sub(1)? };
            edits.push(Edit {
                set: set.clone(),
                elem: elem.clone(),
                add,
            });
        }
    }
    // A set left empty would go (peer and named-port sets), taking its rules' matches along.
    if sizes.values().any(|size| *size == 0) {
        return None;
    }
    Some(edits)
}

/// Another live pod holds one of `pod`'s addresses (a pod being replaced): which of them a set
/// keeps is the whole plan's to say.
fn shares_an_address(cluster: &Cluster, pod: &PodInfo) -> bool {
    cluster.pods.values().any(|other| {
        Cluster::is_live(other)
            && (other.namespace != pod.namespace || other.name != pod.name)
            && other.ips.iter().any(|ip| pod.ips.contains(ip))
    })
}

/// Whether this node's pod is selected by `policy`.
fn targeted(node: &str, pod: Option<&PodInfo>, policy: &crate::model::Policy) -> bool {
    pod.is_some_and(|p| p.node == node && policy.selects(p))
}

/// `Some` when every policy the change makes select or stop selecting the pod keeps another pod
/// of this node (a policy with no pod of the node has no rules: rules would come or go).
fn keeps_policies(
    cluster: &Cluster,
    node: &str,
    before: Option<&PodInfo>,
    after: Option<&PodInfo>,
) -> Option<()> {
    let pod = before.or(after)?;
    for policy in cluster.policies_in(&pod.namespace) {
        if targeted(node, before, policy) == targeted(node, after, policy) {
            continue;
        }
        let others = cluster.pods.values().any(|p| {
            Cluster::is_live(p) && p.node == node && p.name != pod.name && policy.selects(p)
        });
        if !others {
            return None;
        }
    }
    Some(())
}

/// Every (set, member) of `table` that `pod` (a live pod, or none) accounts for.
fn members(
    cluster: &Cluster,
    node: &str,
    table: &Table,
    pod: Option<&PodInfo>,
) -> BTreeSet<(String, Elem)> {
    let mut out = BTreeSet::new();
    let Some(pod) = pod else {
        return out;
    };
    let addresses = |out: &mut BTreeSet<(String, Elem)>, base: &str, kind: &str| {
        for ip in &pod.ips {
            out.insert((set_name(base, kind, ip.is_ipv6()), Elem::Addr(*ip)));
        }
    };
    let named = |out: &mut BTreeSet<(String, Elem)>, rule: &RuleView<'_>| {
        let Some(base) = table.names.rules.get(rule.id) else {
            return;
        };
        for (ip, protocol, port) in rule.named_ports_on(pod) {
            let set = set_name(base, "n", ip.is_ipv6());
            out.insert((set, Elem::Named(ip, protocol, port)));
        }
    };
    // As a peer: each peers key of the table's rules, worked out once.
    let mut keys: HashMap<&Arc<str>, bool> = HashMap::new();
    for ((namespace, _), policy) in &cluster.policies {
        for rule in policy.rules() {
            let Some(base) = table.names.peers.get(rule.peers_key) else {
                continue;
            };
            let peers = rule.peers.filter(|p| !p.is_empty());
            let picked = *keys.entry(rule.peers_key).or_insert_with(|| {
                peers
                    .into_iter()
                    .flatten()
                    .any(|peer| cluster.peer_picks(peer, namespace, pod))
            });
            if picked {
                addresses(&mut out, base, "p");
            }
            // Egress rules resolve named ports on the pods they let out to (every pod when
            // they name no peers).
            if rule.direction == Direction::Egress && (picked || peers.is_none()) {
                named(&mut out, &rule);
            }
        }
    }
    if pod.node != node {
        return out;
    }
    // As one of this node's pods: known, selected, isolated.
    for ip in &pod.ips {
        let known = if ip.is_ipv6() { "known6" } else { "known4" };
        if table.sets.contains_key(known) {
            out.insert((known.to_string(), Elem::Addr(*ip)));
        }
    }
    let mut isolated = BTreeSet::new();
    let policies = cluster
        .policies_in(&pod.namespace)
        .filter(|policy| policy.selects(pod));
    for policy in policies {
        for direction in [Direction::Ingress, Direction::Egress] {
            if policy.isolates(direction) {
                isolated.insert(direction);
            }
        }
        if let Some(base) = table.names.targets.get(policy.key()) {
            addresses(&mut out, base, "t");
        }
        for rule in policy.rules() {
            if rule.direction == Direction::Ingress {
                named(&mut out, &rule);
            }
        }
    }
    for direction in isolated {
        let chain = nft::policy_chain(direction, &pod.namespace);
        for ip in &pod.ips {
            let map = nft::dispatch_name(direction, ip.is_ipv6());
            out.insert((map, Elem::Jump(*ip, chain.clone())));
        }
    }
    out
}

fn set_name(base: &str, kind: &str, v6: bool) -> String {
    format!("{base}-{kind}{}", if v6 { "6" } else { "4" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NamedPort, Policy, Protocol};
    use crate::nft::{render, Options};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use serde_json::json;

    const NODE: &str = "n1";

    fn pod(i: usize) -> PodInfo {
        let mut ips = vec![format!("10.1.0.{}", i + 2).parse().unwrap()];
        if i.is_multiple_of(5) {
            ips.push(format!("fd00::{}", i + 2).parse().unwrap());
        }
        let mut ports = Vec::new();
        if i.is_multiple_of(2) {
            ports.push(NamedPort {
                name: "http".into(),
                port: 8080,
                protocol: Protocol::Tcp,
            });
        }
        if i.is_multiple_of(3) {
            ports.push(NamedPort {
                name: "dns".into(),
                port: 53,
                protocol: Protocol::Udp,
            });
        }
        PodInfo {
            namespace: format!("ns{}", i % 4),
            name: format!("p{i}"),
            labels: [
                ("app".to_string(), format!("a{}", i % 4)),
                (
                    "tier".to_string(),
                    if i.is_multiple_of(2) { "web" } else { "db" }.to_string(),
                ),
            ]
            .into(),
            node: if i % 3 == 2 { "n2" } else { NODE }.to_string(),
            ips,
            host_network: i == 7,
            ports,
        }
    }

    /// Every kind of rule: pod, namespace and combined peers, ipBlocks, rules without peers,
    /// named ports both ways, deny-alls, empty pod selectors.
    fn policy(k: usize) -> Policy {
        let selector = if k % 8 == 7 {
            json!({})
        } else {
            json!({"matchLabels": {"app": format!("a{}", k % 4)}})
        };
        let spec = match k % 6 {
            0 => json!({"podSelector": selector, "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}], "ports": [{"port": "http"}, {"port": "http"}]}]}),
            1 => json!({"podSelector": selector, "ingress": [
                {"from": [{"namespaceSelector": {"matchLabels": {"team": "t0"}}}], "ports": [{"port": 80}]}]}),
            2 => json!({"podSelector": selector, "policyTypes": ["Egress"], "egress": [
                {"to": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
                    {"key": "app", "operator": "In", "values": ["a1", "a2"]}]}}],
                 "ports": [{"protocol": "UDP", "port": "dns"}]}]}),
            3 => json!({"podSelector": selector, "policyTypes": ["Ingress"]}),
            4 => json!({"podSelector": selector, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/24"]}}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "a3"}}}], "ports": [{"port": "http"}]},
                           {"ports": [{"protocol": "UDP", "port": "dns"}]}]}),
            _ => json!({"podSelector": selector, "ingress": [{"ports": [{"port": "http"}]},
                {"from": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}}]}]}),
        };
        let object: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("np{k}"), "namespace": format!("ns{}", k % 4)},
            "spec": spec}))
        .unwrap();
        object.into()
    }

    fn cluster(pods: usize) -> Cluster {
        let mut c = Cluster::default();
        for i in 0..pods {
            let p = pod(i);
            c.pods.insert((p.namespace.clone(), p.name.clone()), p);
        }
        for n in 0..4 {
            c.namespaces.insert(
                format!("ns{n}"),
                [("team".to_string(), format!("t{}", n % 2))].into(),
            );
        }
        for k in 0..24 {
            c.policies
                .insert((format!("ns{}", k % 4), format!("np{k}")), policy(k));
        }
        c
    }

    /// Pseudo-random numbers below `n`, the same every run for a `seed`.
    fn numbers(mut seed: u64) -> impl FnMut(usize) -> usize {
        move |n| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % n as u64) as usize
        }
    }

    fn table(c: &Cluster) -> Table {
        let options = Options {
            log_denied: false,
            pod_subnets: vec!["10.1.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
        };
        render(&c.plan(NODE), &options)
    }

    /// Changes `rounds` random pods of a cluster of `pods` (relabels mostly; pods deleted,
    /// added and given a new address); every change the delta answers must give exactly the
    /// table of a whole plan. Returns (answered, left to the whole plan).
    fn changes(pods: usize, rounds: usize) -> (usize, usize) {
        let mut c = cluster(pods);
        let mut applied = table(&c);
        let mut next = numbers(7);
        let (mut answered, mut left) = (0, 0);
        for round in 0..rounds {
            let key = c.pods.keys().nth(next(c.pods.len())).unwrap().clone();
            let (key, before, after) = match next(10) {
                // A pod goes.
                7 => (key.clone(), c.pods.get(&key).cloned(), None),
                // A pod comes, anywhere, with an address of its own.
                8 => {
                    let mut p = pod(next(60));
                    p.name = format!("new{round}");
                    p.ips = vec![format!("10.1.1.{}", round % 250 + 2).parse().unwrap()];
                    if next(2) == 0 {
                        p.ips
                            .push(format!("fd00::1:{}", round + 2).parse().unwrap());
                    }
                    ((p.namespace.clone(), p.name.clone()), None, Some(p))
                }
                // A pod gets a new address.
                9 => {
                    let before = c.pods[&key].clone();
                    let mut after = before.clone();
                    after.ips = vec![format!("10.1.2.{}", round % 250 + 2).parse().unwrap()];
                    (key, Some(before), Some(after))
                }
                _ => {
                    let before = c.pods[&key].clone();
                    let mut after = before.clone();
                    after.labels.insert("app".into(), format!("a{}", next(5)));
                    if next(3) == 0 {
                        let tier = if next(2) == 0 { "web" } else { "db" };
                        after.labels.insert("tier".into(), tier.into());
                    }
                    (key, Some(before), Some(after))
                }
            };
            if c.pods.len() < 4 && after.is_none() {
                continue;
            }
            match &after {
                Some(p) => c.pods.insert(key.clone(), p.clone()),
                None => c.pods.remove(&key),
            };
            let whole = table(&c);
            match pod_change(&c, NODE, &applied, before.as_ref(), after.as_ref()) {
                Some(edits) => {
                    let mut moved = applied.clone();
                    moved.apply_edits(&edits);
                    assert_eq!(moved, whole, "{before:?} -> {after:?}: {edits:?}");
                    answered += 1;
                }
                None => left += 1,
            }
            applied = whole;
        }
        (answered, left)
    }

    #[test]
    fn every_change_it_answers_gives_the_whole_plans_table() {
        // Most changes are members moving; the rest are left to the whole plan.
        let (answered, left) = changes(60, 600);
        assert!(answered > 350, "answered {answered}, left {left}");
        assert!(
            left > 0,
            "the whole plan was never needed: the cluster is too plain"
        );
        // Few pods: policies often gain their first pod or lose their last.
        let (answered, left) = changes(10, 400);
        assert!(
            answered > 50 && left > 50,
            "answered {answered}, left {left}"
        );
    }

    #[test]
    fn an_address_two_pods_hold_is_left_to_the_whole_plan() {
        let c = cluster(60);
        let applied = table(&c);
        let before = c.pods[&("ns0".to_string(), "p0".to_string())].clone();
        let mut moved = before.clone();
        moved.ips = vec!["10.1.0.200".parse().unwrap()];
        // A new address nobody else holds is members moving.
        let mut renumbered = c.clone();
        renumbered
            .pods
            .insert((moved.namespace.clone(), moved.name.clone()), moved.clone());
        assert!(pod_change(&renumbered, NODE, &applied, Some(&before), Some(&moved)).is_some());
        // An address another live pod holds.
        let mut shared = c.clone();
        let mut twin = pod(4);
        twin.name = "twin".into();
        twin.ips = before.ips.clone();
        shared
            .pods
            .insert((twin.namespace.clone(), twin.name.clone()), twin);
        let mut relabelled = before.clone();
        relabelled.labels.insert("app".into(), "a9".into());
        assert!(pod_change(&shared, NODE, &applied, Some(&before), Some(&relabelled)).is_none());
        assert_eq!(
            pod_change(&c, NODE, &applied, Some(&before), Some(&before)),
            Some(Vec::new())
        );
    }

    /// Creates, changes and deletes `rounds` random policies of a cluster of `pods`; every
    /// change the policy delta answers must give exactly the plan and table of a whole plan,
    /// and its scoped write the batch of the whole difference. Returns (answered, left).
    fn policy_changes(pods: usize, rounds: usize, log_denied: bool) -> (usize, usize) {
        let mut c = cluster(pods);
        let options = Options {
            log_denied,
            pod_subnets: vec!["10.1.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
        };
        let mut plan = c.plan(NODE);
        let mut applied = render(&plan, &options);
        let mut next = numbers(11);
        let (mut answered, mut left) = (0, 0);
        for round in 0..rounds {
            let existing = c
                .policies
                .keys()
                .nth(next(c.policies.len().max(1)))
                .cloned();
            let key = match (next(3), existing) {
                // One goes.
                (0, Some(key)) => {
                    c.policies.remove(&key);
                    key
                }
                // One changes: another kind of rule, maybe another selector.
                (1, Some(key)) => {
                    let mut object = policy(next(48)).object;
                    object.metadata.namespace = Some(key.0.clone());
                    object.metadata.name = Some(key.1.clone());
                    c.policies.insert(key.clone(), object.into());
                    key
                }
                // One comes (in a namespace picked by its kind).
                _ => {
                    let mut object = policy(next(48)).object;
                    object.metadata.name = Some(format!("new{round}"));
                    let key = (
                        object.metadata.namespace.clone().unwrap_or_default(),
                        format!("new{round}"),
                    );
                    c.policies.insert(key.clone(), object.into());
                    key
                }
            };
            let whole_plan = c.plan(NODE);
            let whole = render(&whole_plan, &options);
            let (mut next_plan, mut table) = (plan.clone(), applied.clone());
            match policy_change(&c, NODE, &mut next_plan, &mut table, &key) {
                Some((scope, was)) => {
                    assert_eq!(next_plan, whole_plan, "plan after {key:?}");
                    assert_eq!(table, whole, "table after {key:?}");
                    let scoped = nft::write_scoped(&was, &table, &scope).to_json();
                    let full = nft::write(Some(&applied), &whole).unwrap().to_json();
                    assert_eq!(
                        scoped,
                        full.or(Some(r#"{"nftables":[]}"#.into())),
                        "{key:?}"
                    );
                    answered += 1;
                }
                None => {
                    assert!(next_plan == plan && table == applied, "{key:?} half made");
                    left += 1;
                }
            }
            plan = whole_plan;
            applied = whole;
        }
        (answered, left)
    }

    #[test]
    fn every_policy_change_it_answers_gives_the_whole_plans_table() {
        let (answered, left) = policy_changes(60, 300, false);
        assert!(answered > 250, "answered {answered}, left {left}");
        let (answered, left) = policy_changes(12, 200, true);
        assert!(answered > 100, "answered {answered}, left {left}");
        // From no policy at all: the first one is the whole plan's.
        let mut c = cluster(20);
        c.policies.clear();
        let mut plan = c.plan(NODE);
        let mut applied = table(&c);
        let key = ("ns0".to_string(), "np0".to_string());
        c.policies.insert(key.clone(), policy(0));
        assert!(policy_change(&c, NODE, &mut plan, &mut applied, &key).is_none());
    }
}
