//! A pod's label change as the set members it moves, without planning and rendering the whole
//! table again.
//!
//! Labels are what changes most (a rollout relabels pods, an operator labels one): a relabel
//! moves the pod's addresses into and out of the sets of the peer lists and policies that pick
//! it, and into or out of a verdict map when its isolation changes. Those moves are worked out
//! from the pod alone, against the table last written. Anything beyond moving members — a set
//! appearing or emptying (rules would change with it), a namespace chain appearing or going,
//! named ports (resolved per pod), an address two pods share, a pod changing more than its
//! labels — answers `None`, and the caller plans the whole table, which is always right.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::model::{Cluster, Direction, PodInfo, RuleView};
use crate::nft::{self, Edit, Elem, Table};

/// The edits that bring `table` (written for the cluster with `before`) to the table of
/// `cluster` (which holds `after` in its place), for this `node`; `None` when the change is
/// more than members moving.
pub fn relabel(
    cluster: &Cluster,
    node: &str,
    table: &Table,
    before: &PodInfo,
    after: &PodInfo,
) -> Option<Vec<Edit>> {
    let same_pod = before.namespace == after.namespace
        && before.name == after.name
        && before.node == after.node
        && before.ips == after.ips
        && before.host_network == after.host_network
        && before.ports == after.ports;
    if !same_pod {
        return None;
    }
    if before.labels == after.labels || !Cluster::is_live(after) {
        // The agent does not police nor count a pod without an address of its own.
        return Some(Vec::new());
    }
    if shares_an_address(cluster, after) {
        return None;
    }
    let mut edits = Vec::new();
    peers(cluster, table, before, after, &mut edits)?;
    if after.node == node {
        targets(cluster, node, table, before, after, &mut edits)?;
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

/// The peer sets the pod joins or leaves, and the named ports it receives on through egress
/// rules with those peers.
fn peers(
    cluster: &Cluster,
    table: &Table,
    before: &PodInfo,
    after: &PodInfo,
    edits: &mut Vec<Edit>,
) -> Option<()> {
    // Each peers key the table has sets for: its peers as written, its policy's namespace, and
    // the rules of the table with it.
    let mut keys: HashMap<&Arc<str>, (&str, Vec<RuleView<'_>>)> = HashMap::new();
    for ((namespace, _), policy) in &cluster.policies {
        for rule in policy.rules() {
            if table.names.peers.contains_key(rule.peers_key) {
                keys.entry(rule.peers_key)
                    .or_insert_with(|| (namespace, Vec::new()))
                    .1
                    .push(rule);
            }
        }
    }
    for (key, (namespace, rules)) in keys {
        let peers = rules.first().and_then(|r| r.peers);
        let picks = |pod: &PodInfo| {
            peers
                .into_iter()
                .flatten()
                .any(|peer| cluster.peer_picks(peer, namespace, pod))
        };
        let (was, is) = (picks(before), picks(after));
        if was == is {
            continue;
        }
        let base = table.names.peers.get(key)?;
        let addresses: Vec<Elem> = after.ips.iter().map(|ip| Elem::Addr(*ip)).collect();
        move_members(table, base, "p", &addresses, is, edits)?;
        // Egress rules resolve named ports on the peers they pick.
        for rule in rules.iter().filter(|r| r.direction == Direction::Egress) {
            named_ports(table, rule, after, is, edits)?;
        }
    }
    Some(())
}

/// The targets sets of the policies of its namespace that start or stop selecting the pod (one
/// of this node's), the named ports their ingress rules resolve on it, and its entries in the
/// verdict maps.
fn targets(
    cluster: &Cluster,
    node: &str,
    table: &Table,
    before: &PodInfo,
    after: &PodInfo,
    edits: &mut Vec<Edit>,
) -> Option<()> {
    let namespace = &after.namespace;
    let policies = cluster
        .policies
        .range((namespace.clone(), String::new())..)
        .take_while(|((ns, _), _)| ns == namespace)
        .map(|(_, policy)| policy);
    let mut isolated = [(false, false); 2];
    for policy in policies {
        let (was, is) = (policy.selects(before), policy.selects(after));
        for (i, direction) in [Direction::Ingress, Direction::Egress].iter().enumerate() {
            if policy.isolates(*direction) {
                isolated[i].0 |= was;
                isolated[i].1 |= is;
            }
        }
        if was == is {
            continue;
        }
        // A policy gaining its first pod of this node or losing its last gains or loses its
        // rules.
        let others = cluster.pods.values().any(|p| {
            Cluster::is_live(p) && p.node == node && p.name != after.name && policy.selects(p)
        });
        if !others {
            return None;
        }
        let Some(base) = table.names.targets.get(policy.key()) else {
            // No rules (only isolation): no targets set.
            continue;
        };
        let addresses: Vec<Elem> = after.ips.iter().map(|ip| Elem::Addr(*ip)).collect();
        move_members(table, base, "t", &addresses, is, edits)?;
        // Ingress rules resolve named ports on the policy's own pods.
        for rule in policy.rules() {
            if rule.direction == Direction::Ingress {
                named_ports(table, &rule, after, is, edits)?;
            }
        }
    }
    for (i, direction) in [Direction::Ingress, Direction::Egress]
        .into_iter()
        .enumerate()
    {
        let (was, is) = isolated[i];
        if was == is {
            continue;
        }
        let chain = nft::policy_chain(direction, namespace);
        if !table.chains.contains_key(&chain) {
            return None;
        }
        // The namespace's chain stays only while another pod is sent to it.
        let kept = [false, true].iter().any(|v6| {
            table
                .sets
                .get(&nft::dispatch_name(direction, *v6))
                .is_some_and(|map| {
                    map.elements.iter().any(|e| {
                        matches!(e, Elem::Jump(ip, c) if c == &chain && !after.ips.contains(ip))
                    })
                })
        });
        if !is && !kept {
            return None;
        }
        for v6 in [false, true] {
            let jumps: Vec<Elem> = after
                .ips
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| Elem::Jump(*ip, chain.clone()))
                .collect();
            move_set(table, nft::dispatch_name(direction, v6), &jumps, is, edits)?;
        }
    }
    Some(())
}

/// The pod's named ports of `rule` into or out of the rule's named-port sets (when the rule is
/// in the table).
fn named_ports(
    table: &Table,
    rule: &RuleView<'_>,
    pod: &PodInfo,
    add: bool,
    edits: &mut Vec<Edit>,
) -> Option<()> {
    let Some(base) = table.names.rules.get(rule.id) else {
        return Some(());
    };
    let named: Vec<Elem> = rule
        .named_ports_on(pod)
        .into_iter()
        .map(|(ip, protocol, port)| Elem::Named(ip, protocol, port))
        .collect();
    move_members(table, base, "n", &named, add, edits)
}

/// `members` into (`add`) or out of the sets `<base>-<kind>4` and `<base>-<kind>6`, each
/// family's to its own.
fn move_members(
    table: &Table,
    base: &str,
    kind: &str,
    members: &[Elem],
    add: bool,
    edits: &mut Vec<Edit>,
) -> Option<()> {
    for v6 in [false, true] {
        let ours: Vec<Elem> = members
            .iter()
            .filter(|e| family(e) == v6)
            .cloned()
            .collect();
        let set = format!("{base}-{kind}{}", if v6 { "6" } else { "4" });
        move_set(table, set, &ours, add, edits)?;
    }
    Some(())
}

/// `members` into or out of the set `set`. The set must exist, hold none of them to be joined
/// and all of them to be left, and keep a member after: a set that would appear or empty
/// changes rules with it (`None`).
fn move_set(
    table: &Table,
    set: String,
    members: &[Elem],
    add: bool,
    edits: &mut Vec<Edit>,
) -> Option<()> {
    // Two ports of a rule can name the same container port.
    let members: BTreeSet<&Elem> = members.iter().collect();
    if members.is_empty() {
        return Some(());
    }
    let held = &table.sets.get(&set)?.elements;
    let present = members.iter().filter(|m| held.contains(m)).count();
    let consistent = if add {
        present == 0
    } else {
        present == members.len() && held.len() > present
    };
    if !consistent {
        return None;
    }
    edits.extend(members.into_iter().map(|elem| Edit {
        set: set.clone(),
        elem: elem.clone(),
        add,
    }));
    Some(())
}

fn family(elem: &Elem) -> bool {
    match elem {
        Elem::Addr(ip) | Elem::Named(ip, _, _) | Elem::Jump(ip, _) => ip.is_ipv6(),
    }
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
                "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "a3"}}}], "ports": [{"port": "http"}]}]}),
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

    fn table(c: &Cluster) -> Table {
        let options = Options {
            log_denied: false,
            pod_subnets: vec!["10.1.0.0/24".parse().unwrap(), "fd00::/64".parse().unwrap()],
        };
        render(&c.plan(NODE), &options)
    }

    /// Relabels `rounds` random pods of a cluster of `pods`; every one the delta answers must
    /// give exactly the table of a whole plan. Returns (answered, left to the whole plan).
    fn relabels(pods: usize, rounds: usize) -> (usize, usize) {
        let mut c = cluster(pods);
        let mut applied = table(&c);
        let mut seed: u64 = 7;
        let mut next = |n: usize| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) % n as u64) as usize
        };
        let (mut answered, mut left) = (0, 0);
        for _ in 0..rounds {
            let key = c.pods.keys().nth(next(pods)).unwrap().clone();
            let before = c.pods[&key].clone();
            let mut after = before.clone();
            after.labels.insert("app".into(), format!("a{}", next(5)));
            if next(3) == 0 {
                let tier = if next(2) == 0 { "web" } else { "db" };
                after.labels.insert("tier".into(), tier.into());
            }
            c.pods.insert(key, after.clone());
            let whole = table(&c);
            match relabel(&c, NODE, &applied, &before, &after) {
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
    fn every_relabel_it_answers_gives_the_whole_plans_table() {
        // Most relabels are members moving; the rest are left to the whole plan.
        let (answered, left) = relabels(60, 400);
        assert!(answered > 250, "answered {answered}, left {left}");
        assert!(
            left > 0,
            "the whole plan was never needed: the cluster is too plain"
        );
        // Few pods: policies often gain their first pod or lose their last.
        let (answered, left) = relabels(10, 400);
        assert!(
            answered > 50 && left > 50,
            "answered {answered}, left {left}"
        );
    }

    #[test]
    fn more_than_labels_is_left_to_the_whole_plan() {
        let c = cluster(60);
        let applied = table(&c);
        let before = c.pods[&("ns0".to_string(), "p0".to_string())].clone();
        let mut moved = before.clone();
        moved.ips = vec!["10.1.0.200".parse().unwrap()];
        assert!(relabel(&c, NODE, &applied, &before, &moved).is_none());
        let mut ports = before.clone();
        ports.ports.clear();
        assert!(relabel(&c, NODE, &applied, &before, &ports).is_none());
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
        assert!(relabel(&shared, NODE, &applied, &before, &relabelled).is_none());
        assert_eq!(
            relabel(&c, NODE, &applied, &before, &before),
            Some(Vec::new())
        );
    }
}
