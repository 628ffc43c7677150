//! cni-bridge + cni-ipam against the reference bridge + host-local, in one run: ADD and DEL latency
//! over N pods sequentially and with 16 in flight, inside a simulated node; then iperf3 TCP
//! throughput between two pods of one node on each Tether datapath (routed pods, isolated bridge
//! ports, plain bridge ports) against a bridge made by hand and two namespaces joined by a bare
//! veth pair.
//! The latency rounds alternate between the two implementations (and which goes first), so that
//! a machine whose speed drifts during the run treats both alike; samples of all rounds are pooled.
//!
//! Usage: bridge-bench <tether bin dir> <reference bin dir> [pods] [iperf seconds] [rounds]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tether_bench::{call_in, print_latency_table, print_table, stats, BenchNs, Implementation};

const PARALLEL: usize = 16;
/// Short runs, many of them, in rotating order: this VM's throughput drifts by 20% from one
/// second to the next, so each repetition's configurations are compared with each other (the
/// median of those paired ratios) as well as by their own medians.
const IPERF_REPS: usize = 15;
/// Both iperf3 ends run on this CPU: with client and server free to move between the two cores,
/// single runs varied by 40%; on one core they vary by a few percent.
const IPERF_CPU: &str = "0";

/// Samples of every round, per operation.
#[derive(Default)]
struct Latency {
    add_seq: Vec<Duration>,
    del_seq: Vec<Duration>,
    add_par: Vec<Duration>,
    del_par: Vec<Duration>,
    failures: usize,
}

/// With BRIDGE_BENCH_TRACE=<file>, every call's latency is appended there as
/// `<implementation> <command> <threads> <pod index> <microseconds>`, to study the tails.
fn trace() -> Option<&'static std::fs::File> {
    static TRACE: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    TRACE
        .get_or_init(|| {
            let path = std::env::var_os("BRIDGE_BENCH_TRACE")?;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        })
        .as_ref()
}

fn timed_round(
    imp: &Implementation,
    node: &std::fs::File,
    pods: &[BenchNs],
    conf: &[u8],
    command: &str,
    threads: usize,
) -> (Vec<Duration>, usize) {
    let plugin = imp.dir.join(imp.bridge);
    let cni_path = imp.dir.display().to_string();
    let next = AtomicUsize::new(0);
    let out = Mutex::new((Vec::new(), 0usize));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pods.len() {
                    break;
                }
                let c = call_in(
                    Some(node),
                    &plugin,
                    command,
                    &format!("pod{i}"),
                    &pods[i].path(),
                    &cni_path,
                    conf,
                );
                if let Some(t) = trace() {
                    // One write per line, so lines of parallel calls do not interleave.
                    let line = format!(
                        "{} {command} {threads} {i} {}\n",
                        imp.label,
                        c.elapsed.as_micros()
                    );
                    let _ = (&*t).write_all(line.as_bytes());
                }
                if let Ok(mut o) = out.lock() {
                    o.0.push(c.elapsed);
                    o.1 += usize::from(!c.ok);
                    if !c.ok && o.1 <= 3 {
                        eprintln!("{} {command} failed: {}", imp.label, c.stdout);
                    }
                }
            });
        }
    });
    out.into_inner().unwrap_or_default()
}

/// One round: ADD then DEL of every pod sequentially, then with PARALLEL in flight.
fn latency_round(imp: &Implementation, pods: &[BenchNs], data: &Path, into: &mut Latency) {
    let node_ns = BenchNs::new(format!("tb-node-{}-{}", imp.bridge, std::process::id()));
    node_ns.exec(&["ip", "link", "set", "lo", "up"]);
    let node = node_ns.open();
    let conf = serde_json::to_vec(&json!({
        "cniVersion": "1.0.0",
        "name": "benchnet",
        "type": imp.bridge,
        "bridge": "cni0",
        "isGateway": true,
        "mtu": 1400,
        "ipam": {
            "type": imp.ipam,
            "dataDir": data.join(imp.bridge),
            "ranges": [[{"subnet": "10.90.0.0/16"}]]
        }
    }))
    .unwrap_or_default();
    for (samples, command, threads) in [
        (&mut into.add_seq, "ADD", 1),
        (&mut into.del_seq, "DEL", 1),
        (&mut into.add_par, "ADD", PARALLEL),
        (&mut into.del_par, "DEL", PARALLEL),
    ] {
        let (taken, failed) = timed_round(imp, &node, pods, &conf, command, threads);
        samples.extend(taken);
        into.failures += failed;
    }
}

/// iperf3 from `client` to `server_ip` (served in `server`) with congestion control `cc`, in
/// Gbit/s.
fn iperf(server: &BenchNs, client: &BenchNs, server_ip: &str, seconds: u32, cc: &str) -> f64 {
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.name,
            "taskset",
            "-c",
            IPERF_CPU,
            "iperf3",
            "-s",
            "-1",
            "-B",
            server_ip,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("iperf3 server: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let out = client.exec(&[
        "taskset",
        "-c",
        IPERF_CPU,
        "iperf3",
        "-c",
        server_ip,
        "-t",
        &seconds.to_string(),
        "-C",
        cc,
        "-J",
    ]);
    let _ = srv.wait();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// Gbit/s per repetition: two pods on a Tether bridge; two namespaces on a bridge made by hand
/// (the kernel's own cost of a bridge hop), with bridge-nf-call-iptables on (as Kubernetes needs)
/// and off (what br_netfilter costs); two namespaces joined by one bare veth pair (the limit).
/// The datapaths whose pod-to-pod throughput is measured, in the order printed.
const PATHS: [&str; 6] = [
    "two routed pods (cni-bridge routed, the default)",
    "two pods on isolated ports (the previous default)",
    "two pods on plain Tether bridge ports",
    "two namespaces on a bridge made by hand",
    "the same, bridge-nf-call-iptables=0 (kube-proxy needs 1)",
    "two namespaces, bare veth pair (limit)",
];
const BY_HAND: usize = 3;
const BARE: usize = 5;

/// Throughput samples per path of [`PATHS`].
struct Throughput(Vec<Vec<f64>>);

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Median over repetitions of a[i] / b[i]: both were measured within seconds of each other.
fn paired(a: &[f64], b: &[f64]) -> f64 {
    let ratios: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(a, b)| a / b.max(f64::MIN_POSITIVE))
        .collect();
    median(&ratios)
}

/// The congestion controls to measure with: cubic (Linux's default) always, and BBR when the
/// kernel has it. They load the path differently: BBR paces its sending, and on this VM paced
/// runs are limited by the pacing as much as by the CPU, which hides part of a hop's cost; cubic
/// sends as fast as the CPU allows, so every per-packet cost shows.
fn congestion_controls() -> Vec<&'static str> {
    let available = || {
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .unwrap_or_default()
    };
    if !available().split_whitespace().any(|c| c == "bbr") {
        let _ = Command::new("modprobe")
            .args(["-q", "tcp_bbr"])
            .stderr(Stdio::null())
            .status();
    }
    let bbr = available().split_whitespace().any(|c| c == "bbr");
    if bbr {
        vec!["cubic", "bbr"]
    } else {
        vec!["cubic"]
    }
}

/// Throughput per congestion control, in the order given.
fn throughput(
    ours: &Implementation,
    data: &Path,
    seconds: u32,
    reps: usize,
    controls: &[&str],
) -> Vec<Throughput> {
    let pid = std::process::id();
    // Two pods per Tether datapath, each datapath in a node namespace of its own; the pods'
    // servers are x.x.x.3 (the second address IPAM hands out).
    let mut tether: Vec<(BenchNs, [BenchNs; 2], String)> = Vec::new();
    for (i, extra) in [
        json!({"routed": true, "isDefaultGateway": true}),
        json!({"portIsolation": true, "isDefaultGateway": true}),
        json!({}),
    ]
    .into_iter()
    .enumerate()
    {
        let node_ns = BenchNs::new(format!("tb-tpnode{i}-{pid}"));
        let node = node_ns.open();
        let pods = [
            BenchNs::new(format!("tb-tp{i}a-{pid}")),
            BenchNs::new(format!("tb-tp{i}b-{pid}")),
        ];
        let mut conf = json!({
            "cniVersion": "1.1.0", "name": format!("tpnet{i}"), "type": "cni-bridge", "bridge": "cni0",
            "isGateway": true, "mtu": 1500,
            "ipam": {"type": "cni-ipam", "dataDir": data.join(format!("tp{i}")),
                     "ranges": [[{"subnet": format!("10.9{}.0.0/24", 4 + i)}]]}
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            conf[k] = v.clone();
        }
        let conf = serde_json::to_vec(&conf).unwrap_or_default();
        for (j, pod) in pods.iter().enumerate() {
            let c = call_in(
                Some(&node),
                &ours.dir.join("cni-bridge"),
                "ADD",
                &format!("tp{i}{j}"),
                &pod.path(),
                &ours.dir.display().to_string(),
                &conf,
            );
            assert!(c.ok, "tether ADD for throughput failed: {}", c.stdout);
        }
        tether.push((node_ns, pods, format!("10.9{}.0.3", 4 + i)));
    }
    // The limit: two namespaces joined by a bare veth pair.
    let (va, vb) = (
        BenchNs::new(format!("tb-vea-{pid}")),
        BenchNs::new(format!("tb-veb-{pid}")),
    );
    va.exec(&[
        "ip", "link", "add", "eth0", "mtu", "1500", "type", "veth", "peer", "name", "eth0",
        "netns", &vb.name,
    ]);
    va.exec(&["ip", "addr", "add", "10.92.0.1/24", "dev", "eth0"]);
    vb.exec(&["ip", "addr", "add", "10.92.0.2/24", "dev", "eth0"]);
    va.exec(&["ip", "link", "set", "eth0", "up"]);
    vb.exec(&["ip", "link", "set", "eth0", "up"]);
    // A bridge made by hand: br0 in its own node namespace, one veth pair per namespace.
    let hand_node = BenchNs::new(format!("tb-hnode-{pid}"));
    let (ha, hb) = (
        BenchNs::new(format!("tb-hpa-{pid}")),
        BenchNs::new(format!("tb-hpb-{pid}")),
    );
    hand_node.exec(&["ip", "link", "add", "br0", "mtu", "1500", "type", "bridge"]);
    hand_node.exec(&["ip", "link", "set", "br0", "up"]);
    for (i, ns) in [&ha, &hb].into_iter().enumerate() {
        let host = format!("hv{i}");
        hand_node.exec(&[
            "ip", "link", "add", &host, "mtu", "1500", "type", "veth", "peer", "name", "eth0",
            "netns", &ns.name,
        ]);
        hand_node.exec(&["ip", "link", "set", &host, "master", "br0", "up"]);
        ns.exec(&[
            "ip",
            "addr",
            "add",
            &format!("10.93.0.{}/24", i + 1),
            "dev",
            "eth0",
        ]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
    }
    for ns in [&va, &vb, &ha, &hb]
        .into_iter()
        .chain(tether.iter().flat_map(|(_, pods, _)| pods))
    {
        ns.exec(&["ip", "link", "set", "lo", "up"]);
    }
    let nf_call = |on: bool| {
        let v = if on { "1" } else { "0" };
        hand_node.exec(&[
            "sysctl",
            "-qw",
            &format!("net.bridge.bridge-nf-call-iptables={v}"),
        ]);
    };
    // Interleaved repetitions, the order rotating so that no configuration always goes first.
    let mut all = Vec::new();
    for cc in controls {
        eprintln!("throughput with {cc}...");
        let mut tp = Throughput(vec![Vec::new(); PATHS.len()]);
        for rep in 0..reps {
            for k in 0..PATHS.len() {
                let path = (rep + k) % PATHS.len();
                let sample = match path {
                    0..=2 => {
                        let (_, pods, server) = &tether[path];
                        iperf(&pods[1], &pods[0], server, seconds, cc)
                    }
                    3 | 4 => {
                        nf_call(path == BY_HAND);
                        iperf(&hb, &ha, "10.93.0.2", seconds, cc)
                    }
                    _ => iperf(&vb, &va, "10.92.0.2", seconds, cc),
                };
                tp.0[path].push(sample);
            }
        }
        all.push(tp);
    }
    all
}

fn print_latency(pods_n: usize, rounds: usize, o: &mut Latency, r: &mut Latency) {
    println!("cni-bridge + cni-ipam vs bridge + host-local: {pods_n} pods x {rounds} alternating rounds, {PARALLEL} in flight for the parallel rows\n");
    let row =
        |what: String, o: &mut Vec<Duration>, r: &mut Vec<Duration>| (what, stats(o), stats(r));
    let rows = [
        row("ADD (sequential)".into(), &mut o.add_seq, &mut r.add_seq),
        row("DEL (sequential)".into(), &mut o.del_seq, &mut r.del_seq),
        row(
            format!("ADD ({PARALLEL} parallel)"),
            &mut o.add_par,
            &mut r.add_par,
        ),
        row(
            format!("DEL ({PARALLEL} parallel)"),
            &mut o.del_par,
            &mut r.del_par,
        ),
    ];
    print_latency_table("reference", "tether", &rows);
    println!(
        "\nfailures: reference {}, tether {}\n",
        r.failures, o.failures
    );
}

fn print_throughput(cc: &str, seconds: u32, tp: &Throughput) {
    println!();
    let pct = |r: f64| format!("{:.0}%", 100.0 * r);
    print_table(
        &[
            &format!(
                "iperf3 TCP ({cc}), both ends on one CPU, {IPERF_REPS} x {seconds} s, rotating order"
            ),
            "median Gbit/s",
            "vs bare veth",
            "vs bridge by hand",
        ],
        &PATHS
            .iter()
            .zip(&tp.0)
            .map(|(what, v)| {
                vec![
                    what.to_string(),
                    format!("{:.1}", median(v)),
                    pct(paired(v, &tp.0[BARE])),
                    pct(paired(v, &tp.0[BY_HAND])),
                ]
            })
            .collect::<Vec<_>>(),
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: bridge-bench <tether bin dir> <reference bin dir> [pods] [iperf seconds] [rounds]"
        );
        std::process::exit(2);
    }
    let pods_n: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(200);
    let seconds: u32 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(2);
    let rounds: usize = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(3).max(1);
    let ours = Implementation::tether(&args[1]);
    let reference = Implementation::reference(&args[2]);
    let data = std::env::temp_dir().join(format!("tether-bridge-bench-{}", std::process::id()));
    let pid = std::process::id();
    eprintln!("creating {pods_n} pod namespaces...");
    let pods: Vec<BenchNs> = (0..pods_n)
        .map(|i| BenchNs::new(format!("tb-pod{i}-{pid}")))
        .collect();

    let (mut r, mut o) = (Latency::default(), Latency::default());
    for round in 0..rounds {
        let mut order = [(&reference, &mut r), (&ours, &mut o)];
        if round % 2 == 1 {
            order.reverse();
        }
        for (imp, into) in order {
            eprintln!(
                "round {}/{rounds}: {} + {}...",
                round + 1,
                imp.bridge,
                imp.ipam
            );
            latency_round(imp, &pods, &data, into);
        }
    }
    let controls = congestion_controls();
    eprintln!("throughput ({seconds} s per run, {IPERF_REPS} interleaved runs each)...");
    let tps = throughput(&ours, &data, seconds, IPERF_REPS, &controls);
    drop(pods);
    let _ = std::fs::remove_dir_all(&data);

    if pods_n > 0 {
        print_latency(pods_n, rounds, &mut o, &mut r);
    }
    for (cc, tp) in controls.iter().zip(&tps) {
        print_throughput(cc, seconds, tp);
    }
    println!(
        "\nratios are medians of per-repetition ratios (configurations measured seconds apart)"
    );
}
