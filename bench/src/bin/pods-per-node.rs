//! Pods per node: cni-bridge + cni-ipam against the reference bridge + host-local in one run, on
//! one simulated node with a /23 pod range, ADD of N pods one after another (latency by how many
//! pods the node already has), then DEL of all of them (by how many are left). Rounds alternate
//! which implementation goes first; samples of all rounds are pooled. With a CSV directory, every
//! call is written to `pods-per-node.csv` there for plotting.
//!
//! Usage: pods-per-node <tether bin dir> <reference bin dir> [pods] [rounds] [csv dir]

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use tether_bench::{call_in, ms, print_table, ratio, stats, BenchNs, Implementation};

const BUCKET: usize = 100;

/// Samples per pod index: `add[i]` is the ADD of the node's (i+1)-th pod, `del[i]` the DEL that
/// leaves i pods on the node.
#[derive(Default)]
struct Samples {
    add: Vec<Vec<Duration>>,
    del: Vec<Vec<Duration>>,
    failures: usize,
}

fn round(imp: &Implementation, pods: &[BenchNs], data: &Path, into: &mut Samples) {
    let node_ns = BenchNs::new(format!("tb-ppn-{}-{}", imp.bridge, std::process::id()));
    node_ns.exec(&["ip", "link", "set", "lo", "up"]);
    let node = node_ns.open();
    let dir = data.join(imp.bridge);
    let _ = std::fs::remove_dir_all(&dir);
    let conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0",
        "name": "benchnet",
        "type": imp.bridge,
        "bridge": "cni0",
        "isGateway": true,
        "mtu": 1400,
        "ipam": {"type": imp.ipam, "dataDir": dir, "ranges": [[{"subnet": "10.91.0.0/23"}]]}
    }))
    .unwrap_or_default();
    let plugin = imp.dir.join(imp.bridge);
    let cni_path = imp.dir.display().to_string();
    into.add.resize(pods.len(), Vec::new());
    into.del.resize(pods.len(), Vec::new());
    for (i, pod) in pods.iter().enumerate() {
        let id = format!("pod{i}");
        let c = call_in(
            Some(&node),
            &plugin,
            "ADD",
            &id,
            &pod.path(),
            &cni_path,
            &conf,
        );
        into.add[i].push(c.elapsed);
        if !c.ok {
            into.failures += 1;
            eprintln!("{} ADD {id} failed: {}", imp.label, c.stdout);
        }
    }
    for (i, pod) in pods.iter().enumerate() {
        let id = format!("pod{i}");
        let c = call_in(
            Some(&node),
            &plugin,
            "DEL",
            &id,
            &pod.path(),
            &cni_path,
            &conf,
        );
        into.del[pods.len() - 1 - i].push(c.elapsed);
        if !c.ok {
            into.failures += 1;
            eprintln!("{} DEL {id} failed: {}", imp.label, c.stdout);
        }
    }
}

fn bucket(samples: &[Vec<Duration>], from: usize) -> Vec<Duration> {
    samples
        .iter()
        .skip(from)
        .take(BUCKET)
        .flatten()
        .copied()
        .collect()
}

fn write_csv(dir: &Path, ours: &Samples, reference: &Samples) {
    let mut text = String::from("implementation,command,pods_before,latency_ms\n");
    for (label, s) in [("tether", ours), ("reference", reference)] {
        for (command, per_pod) in [("ADD", &s.add), ("DEL", &s.del)] {
            for (i, samples) in per_pod.iter().enumerate() {
                for d in samples {
                    text.push_str(&format!("{label},{command},{i},{}\n", ms(*d)));
                }
            }
        }
    }
    let path = dir.join("pods-per-node.csv");
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("writing {}: {e}", path.display());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: pods-per-node <tether bin dir> <reference bin dir> [pods] [rounds] [csv dir]"
        );
        std::process::exit(2);
    }
    let pods_n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(500);
    let rounds: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let ours = Implementation::tether(&args[1]);
    let reference = Implementation::reference(&args[2]);
    let data = std::env::temp_dir().join(format!("tether-ppn-{}", std::process::id()));
    let pid = std::process::id();
    eprintln!("creating {pods_n} pod namespaces...");
    let pods: Vec<BenchNs> = (0..pods_n)
        .map(|i| BenchNs::new(format!("tb-ppn{i}-{pid}")))
        .collect();
    let (mut o, mut r) = (Samples::default(), Samples::default());
    for n in 0..rounds {
        let mut order = [(&reference, &mut r), (&ours, &mut o)];
        if n % 2 == 1 {
            order.reverse();
        }
        for (imp, into) in order {
            eprintln!("round {}/{rounds}: {} + {}...", n + 1, imp.bridge, imp.ipam);
            round(imp, &pods, &data, into);
        }
    }
    drop(pods);
    let _ = std::fs::remove_dir_all(&data);
    if let Some(dir) = args.get(5) {
        write_csv(Path::new(dir), &o, &r);
    }
    println!(
        "\n{pods_n} pods on one node (/23), one after another, {rounds} rounds; failures: tether {}, reference {}\n",
        o.failures, r.failures
    );
    let mut rows = Vec::new();
    for (command, ours_s, ref_s) in [("ADD", &o.add, &r.add), ("DEL", &o.del, &r.del)] {
        for from in (0..pods_n).step_by(BUCKET) {
            let (mut a, mut b) = (bucket(ours_s, from), bucket(ref_s, from));
            let (sa, sb) = (stats(&mut a), stats(&mut b));
            rows.push(vec![
                command.to_string(),
                format!("{}-{}", from, (from + BUCKET).min(pods_n) - 1),
                format!("{} / {}", ms(sa.p50), ms(sa.p99)),
                format!("{} / {}", ms(sb.p50), ms(sb.p99)),
                format!("{} / {}", ratio(sa.p50, sb.p50), ratio(sa.p99, sb.p99)),
            ]);
        }
    }
    print_table(
        &[
            "call",
            "pods already on the node",
            "tether p50 / p99 ms",
            "reference p50 / p99 ms",
            "ratio p50 / p99",
        ],
        &rows,
    );
}
