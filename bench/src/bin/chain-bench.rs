//! The deployed CNI chain against the reference chain, in one run: ADD and DEL of a pod with a
//! hostPort and a bandwidth limit, through every plugin of the list as a runtime runs it (each
//! plugin a process, prevResult handed on, DEL in reverse order), sequentially and with 8 pods
//! in flight, inside a simulated node.
//!
//!   Tether:    the deployed conflist: cni-overlay, which runs cni-bridge (-> cni-ipam),
//!              cni-portmap and cni-bandwidth in its own process
//!   reference: bridge (-> host-local), portmap, bandwidth   (containernetworking-plugins)
//!
//! Rounds alternate between the two (and which goes first), and their samples are pooled.
//!
//! Usage: chain-bench <tether bin dir> <reference bin dir> [pods] [rounds]

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tether_bench::{call_in, print_latency_table, stats, BenchNs};

const PARALLEL: usize = 8;

/// Time per plugin and verb, to see where a chain spends it.
static BREAKDOWN: Mutex<std::collections::BTreeMap<String, Vec<Duration>>> =
    Mutex::new(std::collections::BTreeMap::new());

struct Chain {
    label: &'static str,
    dir: PathBuf,
    list: Value,
}

impl Chain {
    fn plugin_conf(&self, entry: &Value, runtime: &Value, prev: Option<&Value>) -> Vec<u8> {
        let mut conf: Map<String, Value> = entry.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), self.list["name"].clone());
        conf.insert("cniVersion".into(), self.list["cniVersion"].clone());
        let mut rc = Map::new();
        if let Some(caps) = entry["capabilities"].as_object() {
            for cap in caps.keys() {
                if let Some(v) = runtime.get(cap) {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
        conf.remove("capabilities");
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
    }

    /// One verb through the list; the time of all plugin processes, and the final result.
    fn run(
        &self,
        node: &std::fs::File,
        command: &str,
        id: &str,
        netns: &str,
        runtime: &Value,
        cached: Option<&Value>,
    ) -> (Duration, bool, Value, Vec<(String, Duration)>) {
        let mut entries: Vec<Value> = self.list["plugins"].as_array().cloned().unwrap_or_default();
        if command == "DEL" {
            entries.reverse();
        }
        let cni_path = self.dir.display().to_string();
        let mut total = Duration::ZERO;
        let mut prev = cached.cloned();
        let mut ok = true;
        let mut each = Vec::new();
        for entry in &entries {
            let plugin = self.dir.join(entry["type"].as_str().unwrap_or_default());
            let conf = self.plugin_conf(entry, runtime, prev.as_ref());
            let call = call_in(Some(node), &plugin, command, id, netns, &cni_path, &conf);
            total += call.elapsed;
            each.push((
                entry["type"].as_str().unwrap_or_default().to_string(),
                call.elapsed,
            ));
            ok &= call.ok;
            if command == "ADD" {
                if !call.ok {
                    break;
                }
                prev = Some(call.stdout);
            }
        }
        (total, ok, prev.unwrap_or(Value::Null), each)
    }
}

#[derive(Default)]
struct Samples {
    add_seq: Vec<Duration>,
    del_seq: Vec<Duration>,
    add_par: Vec<Duration>,
    del_par: Vec<Duration>,
    failures: usize,
}

fn runtime_of(i: usize) -> Value {
    json!({
        "portMappings": [{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 50_000_000u64, "ingressBurst": u32::MAX,
                      "egressRate": 50_000_000u64, "egressBurst": u32::MAX}
    })
}

/// `CHAIN_BENCH_TRACE=<file>`: every call's latency, in the order the calls ended (`label verb
/// mode pod ms`), to find where the tails are.
static TRACE: std::sync::LazyLock<Option<Mutex<std::fs::File>>> = std::sync::LazyLock::new(|| {
    let path = std::env::var_os("CHAIN_BENCH_TRACE")?;
    std::fs::File::create(path).ok().map(Mutex::new)
});

fn round(chain: &Chain, node: &std::fs::File, pods: &[BenchNs], threads: usize, out: &mut Samples) {
    let results: Mutex<Vec<Option<Value>>> = Mutex::new(vec![None; pods.len()]);
    for command in ["ADD", "DEL"] {
        let next = AtomicUsize::new(0);
        let times = Mutex::new((Vec::new(), 0usize));
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= pods.len() {
                        break;
                    }
                    let id = format!("chain-{}-{i}", chain.label);
                    let cached = results.lock().ok().and_then(|r| r[i].clone());
                    let (took, ok, result, each) = chain.run(
                        node,
                        command,
                        &id,
                        &pods[i].path(),
                        &runtime_of(i),
                        cached.as_ref(),
                    );
                    let mode = if threads == 1 {
                        "sequential"
                    } else {
                        "parallel"
                    };
                    if let Ok(mut b) = BREAKDOWN.lock() {
                        for (plugin, elapsed) in each {
                            let key = format!("{} {command} {plugin} ({mode})", chain.label);
                            b.entry(key).or_default().push(elapsed);
                        }
                    }
                    if command == "ADD" {
                        if let Ok(mut r) = results.lock() {
                            r[i] = Some(result);
                        }
                    }
                    if let Some(trace) = TRACE.as_ref() {
                        if let Ok(mut f) = trace.lock() {
                            let _ = writeln!(
                                f,
                                "{} {command} {mode} {i} {:.3}",
                                chain.label,
                                took.as_secs_f64() * 1000.0
                            );
                        }
                    }
                    if let Ok(mut t) = times.lock() {
                        t.0.push(took);
                        if !ok {
                            t.1 += 1;
                        }
                    }
                });
            }
        });
        let (samples, failed) = times.into_inner().unwrap_or_default();
        out.failures += failed;
        match (command, threads) {
            ("ADD", 1) => out.add_seq.extend(samples),
            ("DEL", 1) => out.del_seq.extend(samples),
            ("ADD", _) => out.add_par.extend(samples),
            _ => out.del_par.extend(samples),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ours_dir = PathBuf::from(args.get(1).expect("tether bin dir"));
    let ref_dir = PathBuf::from(args.get(2).expect("reference bin dir"));
    let pods_n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(100);
    let rounds: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(2);

    let node = BenchNs::new(format!("tb-chain-{}", std::process::id()));
    node.exec(&["ip", "link", "set", "lo", "up"]);
    let work = std::env::temp_dir().join(format!("chain-bench-{}", std::process::id()));
    std::fs::create_dir_all(work.join("run")).expect("work dir");
    std::fs::write(
        work.join("run/overlay.json"),
        json!({"nodeName": "bench", "subnets": ["10.96.0.0/22"], "clusterCidrs": ["10.96.0.0/16"],
               "mtu": 1400, "vxlanDevice": "tether.1"})
        .to_string(),
    )
    .expect("facts");
    // The deployed one-entry conflist, its state under `tag`.
    let tether_list = |name: &str, tag: &str| {
        json!({"cniVersion": "1.0.0", "name": name, "plugins": [
            {"type": "cni-overlay", "runDir": work.join("run"), "stateDir": work.join(format!("{tag}state")),
             "bridge": "cni0", "ipam": {"dataDir": work.join(format!("{tag}leases"))},
             "portmap": {}, "bandwidth": {},
             "capabilities": {"portMappings": true, "bandwidth": true}}
        ]})
    };
    let ours = Chain {
        label: "tether",
        dir: ours_dir,
        list: tether_list("bench-tether", ""),
    };
    // A second build of Tether in the reference's place (its directory holds cni-overlay)
    // compares two builds in one run, the VM's drift between runs taken out.
    let other_build = ref_dir.join("cni-overlay").exists();
    let reference = Chain {
        label: "reference",
        list: if other_build {
            tether_list("bench-other", "other-")
        } else {
            json!({"cniVersion": "1.0.0", "name": "bench-ref", "plugins": [
                {"type": "bridge", "bridge": "cni1", "isGateway": true, "isDefaultGateway": true,
                 "hairpinMode": true, "mtu": 1400,
                 "ipam": {"type": "host-local", "dataDir": work.join("ref-leases"),
                          "ranges": [[{"subnet": "10.97.0.0/22"}]], "routes": [{"dst": "10.97.0.0/16"}]}},
                {"type": "portmap", "capabilities": {"portMappings": true}},
                {"type": "bandwidth", "capabilities": {"bandwidth": true}}
            ]})
        },
        dir: ref_dir,
    };
    let pods: Vec<BenchNs> = (0..pods_n)
        .map(|i| BenchNs::new(format!("tb-chp-{}-{i}", std::process::id())))
        .collect();
    let node_fd = node.open();
    let mut samples = [Samples::default(), Samples::default()];
    for r in 0..rounds {
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let chain = if which == 0 { &ours } else { &reference };
            round(chain, &node_fd, &pods, 1, &mut samples[which]);
            round(chain, &node_fd, &pods, PARALLEL, &mut samples[which]);
        }
    }
    // Everything made is removed before anything is printed: a reader that stops reading (a
    // pipe into `head`) ends the process at its next line, and release builds abort on panic,
    // so no destructor would run.
    drop(node_fd);
    drop(pods);
    drop(node);
    let _ = std::fs::remove_dir_all(&work);
    let [mut o, mut f] = samples;
    println!(
        "{pods_n} pods x {rounds} rounds; failures: tether {}, reference {}",
        o.failures, f.failures
    );
    print_latency_table(
        "reference",
        "tether",
        &[
            (
                "ADD (sequential)".into(),
                stats(&mut o.add_seq),
                stats(&mut f.add_seq),
            ),
            (
                "DEL (sequential)".into(),
                stats(&mut o.del_seq),
                stats(&mut f.del_seq),
            ),
            (
                format!("ADD ({PARALLEL} parallel)"),
                stats(&mut o.add_par),
                stats(&mut f.add_par),
            ),
            (
                format!("DEL ({PARALLEL} parallel)"),
                stats(&mut o.del_par),
                stats(&mut f.del_par),
            ),
        ],
    );
    println!();
    println!("| plugin and verb | calls | mean ms | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|");
    if let Ok(mut b) = BREAKDOWN.lock() {
        for (key, samples) in b.iter_mut() {
            let total: Duration = samples.iter().sum();
            let n = samples.len().max(1) as f64;
            let s = stats(samples);
            println!(
                "| {key} | {} | {:.2} | {} | {} |",
                samples.len(),
                total.as_secs_f64() * 1000.0 / n,
                tether_bench::ms(s.p50),
                tether_bench::ms(s.p99)
            );
        }
    }
}
