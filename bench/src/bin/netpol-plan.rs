//! tether-netpol's own work for one change, without a kernel or an API server: the cluster of
//! bench/netpol-scale.sh (LOCAL pods on this node, PODS pods in 20 namespaces, POLICIES
//! policies) built in memory, then a pod relabel and a policy creation each worked out as the
//! agent does (plan, render, the difference to write). Prints the time of each phase; a
//! profiler can be pointed at it (`perf record target/.../netpol-plan`).
//!
//! Usage: netpol-plan [LOCAL] [PODS] [POLICIES] [ROUNDS]   (defaults 250 2000 500 20)
//! NETPOL_PLAN_PAUSE_MS=100 pauses before each change as netpol-scale does (cold caches);
//! NETPOL_PLAN_DUMP=FILE writes the whole table's nft document to FILE.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use tether_bench::{ms, print_table, stats};
use tether_netpol::model::{Cluster, PodInfo};
use tether_netpol::{delta, nft};

const NAMESPACE_COUNT: usize = 20;
const NODE: &str = "node1";

fn pod(i: usize, local: bool, app: usize) -> PodInfo {
    let (node, ip) = if local {
        (
            NODE.to_string(),
            format!("10.80.{}.{}", i / 250, i % 250 + 2),
        )
    } else {
        (
            format!("node{}", 2 + i % 7),
            format!("10.80.{}.{}", 4 + i / 250, i % 250 + 2),
        )
    };
    let value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p{i}"), "namespace": format!("ns{}", i % NAMESPACE_COUNT),
                     "labels": {"app": format!("app{app}"), "tier": if i.is_multiple_of(2) { "web" } else { "db" }}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    });
    let pod: Pod = serde_json::from_value(value).expect("pod");
    PodInfo::from_pod(&pod).expect("a running pod")
}

fn policy(k: usize, name: &str, namespace: &str) -> NetworkPolicy {
    let from = match k % 4 {
        0 => json!([{"podSelector": {"matchLabels": {"tier": "web"}}}]),
        1 => json!([{"namespaceSelector": {"matchLabels": {"team": format!("t{}", k % 5)}}}]),
        2 => json!([{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
            {"key": "app", "operator": "In", "values": [format!("app{}", k % 50), format!("app{}", (k + 1) % 50)]}]}}]),
        _ => json!([{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.99.0.0/16"]}}]),
    };
    let ports = if k.is_multiple_of(3) {
        json!([{"port": "http"}])
    } else {
        json!([{"protocol": "TCP", "port": 80 + (k % 10) as i64, "endPort": 90 + (k % 10) as i64}])
    };
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", k % 50)}},
                 "ingress": [{"from": from, "ports": ports}]}}))
    .expect("policy")
}

/// Sleeps NETPOL_PLAN_PAUSE_MS (default 0).
fn pause() {
    let pause = std::env::var("NETPOL_PLAN_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(pause));
}

/// Plan, render and difference for the cluster as it is now, against `applied`.
fn work(
    cluster: &Cluster,
    options: &nft::Options,
    applied: &nft::Table,
) -> (nft::Table, [Duration; 3]) {
    // The agent sees changes apart (netpol-scale: 100 ms), its data no longer in the CPU's
    // caches: NETPOL_PLAN_PAUSE_MS=100 times that case, 0 (the default) a hot loop.
    pause();
    let t0 = Instant::now();
    let plan = cluster.plan(NODE);
    let t1 = Instant::now();
    let table = nft::render(&plan, options);
    let t2 = Instant::now();
    let write = nft::write(Some(applied), &table).expect("a difference");
    std::hint::black_box(write.len());
    let t3 = Instant::now();
    (table, [t1 - t0, t2 - t1, t3 - t2])
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let local = args.first().copied().unwrap_or(250);
    let total = args.get(1).copied().unwrap_or(2000);
    let policies = args.get(2).copied().unwrap_or(500);
    let rounds = args.get(3).copied().unwrap_or(20);

    let mut cluster = Cluster::default();
    for n in 0..NAMESPACE_COUNT {
        let labels = [("team".to_string(), format!("t{}", n % 5))].into();
        cluster.namespaces.insert(format!("ns{n}"), labels);
    }
    for i in 0..total {
        let p = pod(i, i < local, i % 50);
        cluster
            .pods
            .insert((p.namespace.clone(), p.name.clone()), p);
    }
    for k in 0..policies {
        let (name, ns) = (format!("np{k}"), format!("ns{}", k % NAMESPACE_COUNT));
        cluster
            .policies
            .insert((ns.clone(), name.clone()), policy(k, &name, &ns).into());
    }
    let options = nft::Options {
        log_denied: false,
        pod_subnets: vec!["10.80.0.0/22".parse().expect("subnet")],
    };
    let started = Instant::now();
    let mut applied = nft::render(&cluster.plan(NODE), &options);
    let full = started.elapsed();
    // What a start writes: the whole table as one nft document (not applied here).
    let started = Instant::now();
    let document = nft::batch(None, &applied)
        .map(|b| {
            let json = b.to_json();
            // NETPOL_PLAN_DUMP=FILE keeps the document (to load it into a namespace by hand).
            if let Ok(path) = std::env::var("NETPOL_PLAN_DUMP") {
                let _ = std::fs::write(path, &json);
            }
            json.len()
        })
        .unwrap_or_default();
    let whole = started.elapsed();

    let mut phases: [Vec<Duration>; 9] = Default::default();
    let mut planned = cluster.plan(NODE);
    let mut alone = 0;
    let (mut moved, mut wrong) = (0, 0);
    for c in 0..rounds {
        // A local pod joins app7's selection, then goes back (as netpol-scale relabels).
        let i = 10 + (c / 2) % (local - 10);
        let app = if c.is_multiple_of(2) { 7 } else { i % 50 };
        let p = pod(i, true, app);
        let key = (p.namespace.clone(), p.name.clone());
        let before = cluster.pods.insert(key, p.clone());
        // What the agent does first: the relabel as moved set members.
        pause();
        let started = Instant::now();
        let edits = before
            .as_ref()
            .and_then(|b| delta::pod_change(&cluster, NODE, &applied, Some(b), Some(&p)));
        phases[6].push(started.elapsed());
        let (table, took) = work(&cluster, &options, &applied);
        if let Some(edits) = edits {
            moved += 1;
            let mut check = applied.clone();
            check.apply_edits(&edits);
            wrong += usize::from(check != table);
        }
        for (k, d) in took.into_iter().enumerate() {
            phases[k].push(d);
        }
        applied = table;
    }
    for c in 0..rounds {
        // A policy created, then deleted (as netpol-scale does in ns7).
        let name = format!("extra{}", c / 2);
        if c.is_multiple_of(2) {
            let mut p = policy(0, &name, "ns7");
            if let Some(spec) = p.spec.as_mut() {
                spec.pod_selector = serde_json::from_value(json!({"matchLabels": {"app": "app7"}}))
                    .expect("selector");
            }
            cluster
                .policies
                .insert(("ns7".into(), name.clone()), p.into());
        } else {
            cluster.policies.remove(&("ns7".to_string(), name.clone()));
        }
        // What the agent does first: the policy worked out alone (on its own copies of the
        // plan and table, made before the clock starts), and its scoped write.
        let (mut plan, mut changed) = (planned.clone(), applied.clone());
        pause();
        let started = Instant::now();
        let key = ("ns7".to_string(), name);
        let change = delta::policy_change(&cluster, NODE, &mut plan, &mut changed, &key);
        let worked_out = started.elapsed();
        if let Some((scope, was)) = &change {
            std::hint::black_box(nft::write_scoped(was, &changed, scope).len());
            phases[7].push(worked_out);
            phases[8].push(started.elapsed() - worked_out);
        }
        let (table, took) = work(&cluster, &options, &applied);
        for (k, d) in took.into_iter().enumerate() {
            phases[3 + k].push(d);
        }
        if change.is_some() {
            alone += 1;
            wrong += usize::from(changed != table);
            planned = plan;
        } else {
            planned = cluster.plan(NODE);
        }
        applied = table;
    }
    println!(
        "{local} local pods, {total} pods, {policies} policies; first plan and render {} ms; \
         the whole table as one nft document {} ms ({} KiB); {} rules, {} elements",
        ms(full),
        ms(whole),
        document / 1024,
        applied.rule_count(),
        applied.element_count()
    );
    println!(
        "relabels answered as moved set members: {moved} of {rounds}, policies worked out alone: \
         {alone} of {rounds} ({wrong} unlike the whole plan)"
    );
    let names = [
        "relabel: plan",
        "relabel: render",
        "relabel: difference",
        "policy: plan",
        "policy: render",
        "policy: difference",
        "relabel: delta (moved members)",
        "policy: delta (worked out alone)",
        "policy: its scoped difference",
    ];
    let rows: Vec<Vec<String>> = names
        .iter()
        .zip(phases.iter_mut())
        .map(|(name, samples)| {
            let s = stats(samples);
            vec![name.to_string(), ms(s.p50), ms(s.p99)]
        })
        .collect();
    print_table(&["phase", "p50 ms", "p99 ms"], &rows);
}
