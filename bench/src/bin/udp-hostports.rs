//! UDP hostPorts on a node with a full connection-tracking table: cni-portmap against the
//! reference portmap, side by side, each mapping N UDP ports of one pod (ADD) and removing them
//! (DEL) while the node's conntrack table holds about 100,000 UDP entries (both plugins remove
//! the entries of the ports they map, so that a client already sending reaches the new target).
//!
//! Usage: udp-hostports <tether bin dir> <reference bin dir> [ports] [rounds]

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tether_bench::{call_in, print_table, BenchNs};

/// About 100,000 UDP flows through the node's conntrack: one socket sending to every port of
/// two loopback addresses (each destination a flow of its own; unanswered entries live 30 s).
const FILL: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for dst in ("127.0.0.2", "127.0.0.3"):
    for port in range(1, 50001):
        try:
            s.sendto(b"x", (dst, port))
        except OSError:
            pass
"#;

fn entries(node: &BenchNs) -> usize {
    node.exec(&["cat", "/proc/net/nf_conntrack"])
        .lines()
        .count()
}

fn conf(network: &str, plugin: &str, prev: &Value, ports: u16) -> Vec<u8> {
    let mappings: Vec<Value> = (0..ports)
        .map(|i| json!({"hostPort": 40000 + i, "containerPort": 5000 + i, "protocol": "udp"}))
        .collect();
    serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": network, "type": plugin,
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": prev,
    }))
    .unwrap_or_default()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: udp-hostports <tether bin dir> <reference bin dir> [ports] [rounds]");
        std::process::exit(2);
    }
    let ports: u16 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200);
    let rounds: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(3);
    let (ours, reference) = (Path::new(&args[1]), Path::new(&args[2]));
    let pid = std::process::id();
    let node_ns = BenchNs::new(format!("tb-udpnode-{pid}"));
    let node = node_ns.open();
    node_ns.exec(&["ip", "link", "set", "lo", "up"]);
    let pod = BenchNs::new(format!("tb-udppod-{pid}"));
    let data = std::env::temp_dir().join(format!("tether-udp-bench-{pid}"));
    let bridge_conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0", "name": "udpnet", "type": "cni-bridge", "isGateway": true,
        "ipam": {"type": "cni-ipam", "dataDir": data, "ranges": [[{"subnet": "10.96.0.0/24"}]]}
    }))
    .unwrap_or_default();
    let cni_path = format!("{}:{}", ours.display(), reference.display());
    let made = call_in(
        Some(&node),
        &ours.join("cni-bridge"),
        "ADD",
        "udp-pod",
        &pod.path(),
        &cni_path,
        &bridge_conf,
    );
    assert!(made.ok, "the pod's ADD failed: {}", made.stdout);
    let mut rows: Vec<(String, Vec<Duration>, Vec<Duration>, usize)> = vec![
        (
            "reference portmap (1.1.1)".into(),
            Vec::new(),
            Vec::new(),
            0,
        ),
        ("cni-portmap".into(), Vec::new(), Vec::new(), 0),
    ];
    for round in 0..rounds {
        for (i, (binary, network)) in [
            (reference.join("portmap"), "udpref"),
            (ours.join("cni-portmap"), "udpnet"),
        ]
        .iter()
        .enumerate()
        {
            eprintln!("round {}/{rounds}: {}...", round + 1, rows[i].0);
            node_ns.exec(&["python3", "-c", FILL]);
            rows[i].3 = rows[i].3.max(entries(&node_ns));
            let plugin = binary.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let c = conf(network, plugin, &made.stdout, ports);
            for (command, into) in [("ADD", 1), ("DEL", 2)] {
                let call = call_in(
                    Some(&node),
                    binary,
                    command,
                    "udp-pod",
                    &pod.path(),
                    &cni_path,
                    &c,
                );
                assert!(call.ok, "{plugin} {command} failed: {}", call.stdout);
                if into == 1 {
                    rows[i].1.push(call.elapsed);
                } else {
                    rows[i].2.push(call.elapsed);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&data);
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    let table: Vec<Vec<String>> = rows
        .iter_mut()
        .map(|(name, add, del, seen)| {
            vec![
                name.clone(),
                seen.to_string(),
                format!("{:.3}", median(add).as_secs_f64()),
                format!("{:.3}", median(del).as_secs_f64()),
            ]
        })
        .collect();
    println!(
        "{ports} UDP hostPorts of one pod, ADD then DEL, {rounds} rounds (medians), the node's conntrack table filled before each\n"
    );
    print_table(&["plugin", "conntrack entries", "ADD s", "DEL s"], &table);
}
