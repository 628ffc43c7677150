//! cni-ipam against the reference host-local, in one run: 500 sequential ADD then DEL, and 500
//! ADDs with 16 in flight. Prints p50/p99 per call, the ratio, and duplicate addresses seen.
//!
//! Usage: ipam-bench <cni-ipam binary> <host-local binary> [calls]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;
use tether_bench::{call, print_latency_table, stats, Stats};

const PARALLEL: usize = 16;

struct Measured {
    add_seq: Stats,
    del_seq: Stats,
    add_par: Stats,
    failures: usize,
    duplicates: usize,
}

fn config(plugin_type: &str, data_dir: &Path) -> Vec<u8> {
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "bench",
        "type": plugin_type,
        "ipam": {
            "type": plugin_type,
            "dataDir": data_dir,
            "ranges": [[{"subnet": "10.128.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    });
    serde_json::to_vec(&conf).unwrap_or_default()
}

fn address(result: &serde_json::Value) -> Option<String> {
    result["ips"][0]["address"].as_str().map(str::to_string)
}

fn measure(plugin: &Path, calls: usize, data_dir: &Path) -> Measured {
    let name = plugin
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("plugin")
        .to_string();
    let conf = config(&name, data_dir);
    let cni_path = plugin
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut failures = 0;

    let mut add = Vec::with_capacity(calls);
    let mut del = Vec::with_capacity(calls);
    for i in 0..calls {
        let id = format!("seq{i}");
        let c = call(plugin, "ADD", &id, "/var/run/netns/bench", &cni_path, &conf);
        failures += usize::from(!c.ok);
        add.push(c.elapsed);
        let c = call(plugin, "DEL", &id, "/var/run/netns/bench", &cni_path, &conf);
        failures += usize::from(!c.ok);
        del.push(c.elapsed);
    }

    let next = AtomicUsize::new(0);
    let results: Mutex<(Vec<Duration>, Vec<String>, usize)> =
        Mutex::new((Vec::new(), Vec::new(), 0));
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= calls {
                    break;
                }
                let c = call(
                    plugin,
                    "ADD",
                    &format!("par{i}"),
                    "/var/run/netns/bench",
                    &cni_path,
                    &conf,
                );
                if let Ok(mut r) = results.lock() {
                    r.0.push(c.elapsed);
                    match (c.ok, address(&c.stdout)) {
                        (true, Some(a)) => r.1.push(a),
                        _ => r.2 += 1,
                    }
                }
            });
        }
    });
    let (mut par, addresses, par_failures) = results.into_inner().unwrap_or_default();
    let distinct: HashSet<&String> = addresses.iter().collect();
    for i in 0..calls {
        call(
            plugin,
            "DEL",
            &format!("par{i}"),
            "/var/run/netns/bench",
            &cni_path,
            &conf,
        );
    }
    Measured {
        add_seq: stats(&mut add),
        del_seq: stats(&mut del),
        add_par: stats(&mut par),
        failures: failures + par_failures,
        duplicates: addresses.len() - distinct.len(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: ipam-bench <cni-ipam> <host-local> [calls]");
        std::process::exit(2);
    }
    let ours = PathBuf::from(&args[1]);
    let reference = PathBuf::from(&args[2]);
    let calls: usize = args.get(3).and_then(|c| c.parse().ok()).unwrap_or(500);
    let base = std::env::temp_dir().join(format!("tether-ipam-bench-{}", std::process::id()));

    // Interleave: reference, ours, reference, ours would double the run time; one warm-up call each
    // and a back-to-back run in the same conditions is what the table reports.
    let r = measure(&reference, calls, &base.join("reference"));
    let o = measure(&ours, calls, &base.join("ours"));
    let _ = std::fs::remove_dir_all(&base);

    println!("cni-ipam vs host-local: {calls} calls per row, {PARALLEL} in flight for the parallel row\n");
    print_latency_table(
        "host-local",
        "cni-ipam",
        &[
            ("ADD (sequential)".into(), o.add_seq, r.add_seq),
            ("DEL (sequential)".into(), o.del_seq, r.del_seq),
            (format!("ADD ({PARALLEL} parallel)"), o.add_par, r.add_par),
        ],
    );
    println!(
        "\nfailures: host-local {}, cni-ipam {}; duplicate addresses: host-local {}, cni-ipam {}",
        r.failures, o.failures, r.duplicates, o.duplicates
    );
}
