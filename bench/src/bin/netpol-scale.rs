//! tether-netpol at scale: one node with LOCAL pods (two of them real namespaces on a bridge),
//! PODS pods cluster-wide in 20 namespaces, POLICIES policies (pod selectors, namespace
//! selectors, ports, named ports, ipBlocks), all in the API stand-in. Measures the agent's start
//! to a complete table, the nftables objects, its RSS, the time from a Pod relabel (joining or
//! leaving a policy's selection) to the set element in the kernel (`nft monitor`), and iperf3
//! between the two real pods with the policies against none.
//!
//! Usage: netpol-scale AGENT LOCAL PODS POLICIES [iperf seconds]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::apiserver::{ApiServer, NAMESPACES, NETWORK_POLICIES, PODS};
use test_support::Netns;
use tether_bench::{ms, print_table, stats, status_kib};

const NAMESPACE_COUNT: usize = 20;
const CHANGES: usize = 60;
/// iperf3 runs per datapath and table state.
const ROUNDS: usize = 11;
/// The local index of the serving real pod: its namespace (ns9) sorts last, so the rules of
/// the policies that let connections in come last in the ingress chain: a new connection walks
/// every other rule first.
const SERVER: usize = 9;
/// TCP port of the connection-rate server (allowed, like iperf's 5201, by one more policy).
const CONNECT_PORT: u16 = 5202;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn pod_ip(i: usize) -> String {
    // The node's pods in 10.80.0.0/22 (the first LOCAL), the others elsewhere in 10.80.0.0/16.
    format!("10.80.{}.{}", 4 + i / 250, i % 250 + 2)
}

fn local_ip(i: usize) -> String {
    format!("10.80.{}.{}", i / 250, i % 250 + 2)
}

fn pod(i: usize, local: Option<usize>, app: usize) -> Value {
    let ns = format!("ns{}", i % NAMESPACE_COUNT);
    let (node, ip) = match local {
        Some(l) => ("node1".to_string(), local_ip(l)),
        None => (format!("node{}", 2 + i % 7), pod_ip(i)),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p{i}"), "namespace": ns,
                     "labels": {"app": format!("app{app}"), "tier": if i.is_multiple_of(2) { "web" } else { "db" }}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

fn policy(k: usize) -> Value {
    let ns = format!("ns{}", k % NAMESPACE_COUNT);
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
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": format!("np{k}"), "namespace": ns},
           "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", k % 50)}},
                    "ingress": [{"from": from, "ports": ports}]}})
}

fn nft_counts(node: &Netns) -> (usize, usize, usize) {
    let out = node.try_exec(&["nft", "-j", "list", "table", "inet", "tether-netpol"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let rules = items.iter().filter(|i| i.get("rule").is_some()).count();
    let sets: Vec<&Value> = items.iter().filter_map(|i| i.get("set")).collect();
    let elements = sets
        .iter()
        .map(|s| s["elem"].as_array().map_or(0, Vec::len))
        .sum();
    (rules, sets.len(), elements)
}

fn iperf(server: &Netns, client: &Netns, ip: &str, seconds: u32) -> f64 {
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.name,
            "iperf3",
            "-s",
            "-1",
            "-A",
            "1",
            "-B",
            ip,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    // Client and server on a core each, so that runs differ less.
    let out = client.exec(&[
        "iperf3",
        "-c",
        ip,
        "-A",
        "0",
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    let _ = srv.wait();
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// The two real pods' datapath: isolated bridge ports with the subnet routed via the gateway and
/// br_netfilter off (cni-bridge's `portIsolation`), or plain bridging with br_netfilter on.
fn isolate(node: &Netns, pods: &[Netns], on: bool) {
    for (i, pod) in pods.iter().enumerate() {
        let flag = if on { "on" } else { "off" };
        node.exec(&[
            "bridge",
            "link",
            "set",
            "dev",
            &format!("vtbnp{i}"),
            "isolated",
            flag,
        ]);
        pod.exec(&["sysctl", "-qw", "net.ipv4.conf.all.accept_redirects=0"]);
        pod.exec(&["sysctl", "-qw", "net.ipv4.conf.eth0.accept_redirects=0"]);
        pod.ip(&["neigh", "flush", "dev", "eth0"]);
        if on {
            pod.ip(&[
                "route",
                "replace",
                "10.80.0.0/22",
                "via",
                "10.80.0.1",
                "dev",
                "eth0",
                "onlink",
            ]);
        } else {
            pod.ip(&[
                "route",
                "replace",
                "10.80.0.0/22",
                "dev",
                "eth0",
                "proto",
                "kernel",
                "scope",
                "link",
            ]);
        }
    }
    // Routed pod to pod needs forwarding (cni-bridge's isGateway turns it on).
    node.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let br_netfilter = if on { "0" } else { "1" };
    node.exec(&[
        "sysctl",
        "-qw",
        &format!("net.bridge.bridge-nf-call-iptables={br_netfilter}"),
    ]);
}

/// `f` on a new thread inside `ns`.
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = ns.path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// New TCP connections per second from `client` to a listener in `server` (accepted and
/// closed at once), over `seconds`: each one's first packet walks the policy rules.
fn connect_rate(server: &Netns, client: &Netns, ip: &str, seconds: f64) -> f64 {
    let addr: std::net::SocketAddr = format!("{ip}:{CONNECT_PORT}").parse().expect("address");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_server = stop.clone();
    let listener = in_netns(server, move || {
        let l = std::net::TcpListener::bind(addr).expect("listen");
        let _ = ready_tx.send(());
        while !stop_server.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = l.accept();
        }
    });
    let _ = ready_rx.recv();
    let counter = in_netns(client, move || {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                n += 1;
            }
        }
        n as f64 / started.elapsed().as_secs_f64()
    });
    let rate = counter.join().unwrap_or(0.0);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // One more connection wakes the listener up to see the stop.
    let _ = in_netns(client, move || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
    })
    .join();
    let _ = listener.join();
    rate
}

fn start_agent(
    node: &Netns,
    agent: &str,
    kubeconfig: &std::path::Path,
    log: &std::path::Path,
) -> Killed {
    let log = std::fs::File::create(log).expect("agent log");
    Killed(
        Command::new("ip")
            .args(["netns", "exec", &node.name, agent, "--node-name", "node1"])
            .args(["--pod-cidrs", "10.80.0.0/22", "--log-format", "json"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stderr(log)
            .spawn()
            .expect("starting tether-netpol"),
    )
}

/// Medians over the agent's writes after its first (the changes timed above), from its JSON log:
/// the `fields` (phases in ms) of the writes that took `path` ("netlink (pod)": a pod's moved
/// members; "netlink (policy)": a policy worked out alone; "netlink": members from a whole
/// plan; "netlink (batch)": chains too, from a whole plan).
/// The first write of the agent (its start): plan, table, difference and `nft` write in ms.
fn start_phases(log: &std::path::Path) -> [f64; 4] {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let first = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "policies applied")
        .unwrap_or_default();
    ["plan_ms", "render_ms", "diff_ms", "write_ms"].map(|f| first[f].as_f64().unwrap_or(0.0))
}

fn write_phases<const N: usize>(
    log: &std::path::Path,
    path: &str,
    fields: [&str; N],
) -> (usize, [f64; N]) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let writes: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "policies applied")
        .skip(1)
        .filter(|v| v["path"] == path)
        .collect();
    let medians =
        fields.map(|field| quartile(writes.iter().filter_map(|w| w[field].as_f64()).collect(), 2));
    (writes.len(), medians)
}

/// The `q`-th quartile of `values` (2: the median); 0 when there are none.
fn quartile(mut values: Vec<f64>, q: usize) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() * q / 4).copied().unwrap_or(0.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: netpol-scale AGENT LOCAL PODS POLICIES [iperf seconds]");
        std::process::exit(2);
    }
    let agent_bin = &args[1];
    let local: usize = args[2].parse().expect("LOCAL");
    let total: usize = args[3].parse().expect("PODS");
    let policies: usize = args[4].parse().expect("POLICIES");
    let seconds: u32 = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(2);

    let node = Netns::new("tbnpn");
    node.ip(&["link", "add", "cni0", "type", "bridge"]);
    node.ip(&["addr", "add", "10.80.0.1/22", "dev", "cni0"]);
    node.ip(&["link", "set", "cni0", "up"]);
    node.exec(&["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1"]);
    let real: Vec<Netns> = [0, SERVER]
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let ns = Netns::new(&format!("tbnpp{k}"));
            // Many short connections from one client: reuse TIME_WAIT ports.
            ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"]);
            let host = format!("vtbnp{k}");
            node.cable(
                &host,
                "169.254.1.1/32",
                &ns,
                "eth0",
                &format!("{}/22", local_ip(i)),
            );
            node.ip(&["addr", "flush", "dev", &host]);
            node.ip(&["link", "set", &host, "master", "cni0"]);
            ns
        })
        .collect();
    let api = ApiServer::start_in(&node, "127.0.0.1:0");
    let dir = std::env::temp_dir().join(format!("tb-netpol-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("work directory");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    for n in 0..NAMESPACE_COUNT {
        api.put(
            NAMESPACES,
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{}", n % 5)}}}),
        );
    }
    for i in 0..total {
        let l = (i < local).then_some(i);
        api.put(PODS, pod(i, l, i % 50));
    }

    // The agent's table with no policy (its chains and connection tracking, no policy rules),
    // saved for the throughput runs below.
    let agent = start_agent(&node, agent_bin, &kubeconfig, &dir.join("agent0.log"));
    let started = Instant::now();
    while nft_counts(&node).0 == 0 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(agent);
    let no_policy_table = dir.join("no-policy.nft");
    std::fs::write(
        &no_policy_table,
        node.exec(&["nft", "list", "table", "inet", "tether-netpol"]),
    )
    .expect("saving the table");

    for k in 0..policies {
        api.put(NETWORK_POLICIES, policy(k));
    }
    // The two real pods: p9 (app9, ns9) is selected by policies (k % 100 == 9); p0 is tier
    // web, allowed by the podSelector peers; iperf's port 5201 and the connection-rate port
    // are opened by one more policy.
    api.put(
        NETWORK_POLICIES,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "zz-bench", "namespace": format!("ns{}", SERVER % NAMESPACE_COUNT)},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app{}", SERVER % 50)}},
                 "ingress": [{"ports": [{"protocol": "TCP", "port": 5201},
                                        {"protocol": "TCP", "port": CONNECT_PORT}]}]}}),
    );

    let started = Instant::now();
    let agent = start_agent(&node, agent_bin, &kubeconfig, &dir.join("agent2.log"));
    let pid = agent.0.id();
    // Complete: the server's namespace has its ingress chain with rules (the table is written
    // in one transaction), seen by a netlink dump of that chain every 2 ms; an nft listing of
    // the whole table would itself take ~50 ms.
    let chain = tether_netpol::nft::policy_chain(
        tether_netpol::model::Direction::Ingress,
        &format!("ns{}", SERVER % NAMESPACE_COUNT),
    );
    let full_sync = in_netns(&node, move || {
        use cni_core::firewall::{rules, types::NfFamily};
        while started.elapsed() < Duration::from_secs(120) {
            let written = rules::handles(NfFamily::INet, tether_netpol::nft::TABLE, &chain);
            if written.is_ok_and(|h| h.is_some_and(|h| !h.is_empty())) {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        started.elapsed()
    })
    .join()
    .expect("waiting for the table");
    let counts = nft_counts(&node);

    // Relabels: a local pod joins (and then leaves) app7's selection; timed to the kernel.
    let monitor_lines: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut monitor = Command::new("ip")
        .args(["netns", "exec", &node.name, "nft", "monitor"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("nft monitor");
    let out = monitor.stdout.take().expect("monitor stdout");
    let lines = monitor_lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(mut l) = lines.lock() {
                l.push((Instant::now(), line));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    // The first monitor line after `from` that `matches`, within 5 s.
    let seen_after = |from: usize, t0: Instant, matches: &dyn Fn(&str) -> bool| {
        let deadline = t0 + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(at) = monitor_lines.lock().ok().and_then(|l| {
                l.iter()
                    .skip(from)
                    .find(|(_, s)| matches(s))
                    .map(|(at, _)| *at)
            }) {
                return Some(at - t0);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        None
    };
    let lines_now = || monitor_lines.lock().map(|l| l.len()).unwrap_or(0);
    // Until the monitor has printed nothing for 200 ms (a whole-table write prints for seconds).
    let quiet = || {
        let mut last = lines_now();
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = lines_now();
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let mut latencies = Vec::new();
    let mut missed = 0;
    for c in 0..CHANGES {
        // Pairs: a pod joins app7's selection, then goes back to its own app.
        let i = 10 + (c / 2) % (local - 10);
        let app = if c.is_multiple_of(2) { 7 } else { i % 50 };
        let from = lines_now();
        let t0 = Instant::now();
        api.put(PODS, pod(i, Some(i), app));
        let ip = local_ip(i);
        match seen_after(from, t0, &|s| s.contains(&ip)) {
            Some(took) => latencies.push(took),
            None => missed += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Policies created and deleted among the 500: each selects app7's pods of this node (in
    // ns7) and lets tier web in; timed to the first change of the table in the kernel.
    let mut policy_latencies = Vec::new();
    let mut policy_missed = 0;
    for c in 0..CHANGES {
        let name = format!("extra{}", c / 2);
        let from = quiet();
        let t0 = Instant::now();
        if c.is_multiple_of(2) {
            api.put(
                NETWORK_POLICIES,
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": name, "namespace": "ns7"},
                "spec": {"podSelector": {"matchLabels": {"app": "app7"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"tier": "web"}}}],
                                      "ports": [{"protocol": "TCP", "port": 7000 + c}]}]}}),
            );
        } else {
            api.delete(NETWORK_POLICIES, "ns7", &name);
        }
        match seen_after(from, t0, &|s| s.contains("tether-netpol")) {
            Some(took) => policy_latencies.push(took),
            None => policy_missed += 1,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = monitor.kill();
    let _ = monitor.wait();
    let peak = status_kib(pid, "VmHWM:");
    let whole = ["plan_ms", "render_ms", "diff_ms", "write_ms"];
    let log = dir.join("agent2.log");
    let (moved, relabel_phases) = write_phases(&log, "netlink (pod)", ["delta_ms", "write_ms"]);
    let (replanned, replanned_phases) = write_phases(&log, "netlink", whole);
    let (alone, policy_phases) = write_phases(&log, "netlink (policy)", ["delta_ms", "write_ms"]);
    let (batches, batch_phases) = write_phases(&log, "netlink (batch)", whole);
    let start = start_phases(&log);
    // Throughput: the agent stops (its table stays in force), the table is saved, and iperf3
    // runs alternate, ROUNDS times, between with and without the table (deleted and restored)
    // on both datapaths: plain bridge ports with br_netfilter, isolated ports routed by the node
    // with br_netfilter off. Medians, since single runs on this VM vary by about 10%.
    drop(agent);
    // Saved as text: nft's JSON listing puts maps before the chains their elements jump to,
    // and `nft -j -f` refuses that order.
    let full_table = dir.join("table.nft");
    std::fs::write(
        &full_table,
        node.exec(&["nft", "list", "table", "inet", "tether-netpol"]),
    )
    .expect("saving the table");
    let server_ip = local_ip(SERVER);
    // (isolated, table) -> Gbit/s of each round; table 0: none (no connection tracking either),
    // 1: the agent's with no policy, 2: with the policies.
    let mut runs: std::collections::BTreeMap<(bool, usize), Vec<f64>> = Default::default();
    let mut connects: std::collections::BTreeMap<(bool, usize), Vec<f64>> = Default::default();
    for _ in 0..ROUNDS {
        for isolated in [false, true] {
            isolate(&node, &real, isolated);
            for table in 0..3 {
                let _ = node.try_exec(&["nft", "delete", "table", "inet", "tether-netpol"]);
                if table > 0 {
                    let file = if table == 1 {
                        &no_policy_table
                    } else {
                        &full_table
                    };
                    node.exec(&["nft", "-f", &file.display().to_string()]);
                }
                runs.entry((isolated, table))
                    .or_default()
                    .push(iperf(&real[1], &real[0], &server_ip, seconds));
                connects
                    .entry((isolated, table))
                    .or_default()
                    .push(connect_rate(&real[1], &real[0], &server_ip, 1.0));
            }
        }
    }
    isolate(&node, &real, false);
    let median_of = |runs: &std::collections::BTreeMap<(bool, usize), Vec<f64>>, key| {
        quartile(runs.get(&key).cloned().unwrap_or_default(), 2)
    };
    let median = |key: (bool, usize)| median_of(&runs, key);
    // Rounds run the states back to back, so per-round ratios cancel the machine's slower
    // drifts: their median and middle half (p25-p75), with 500 policies against no policy.
    let paired = |runs: &std::collections::BTreeMap<(bool, usize), Vec<f64>>, isolated| {
        let (empty, full) = (
            runs.get(&(isolated, 1)).cloned().unwrap_or_default(),
            runs.get(&(isolated, 2)).cloned().unwrap_or_default(),
        );
        let ratios: Vec<f64> = full
            .iter()
            .zip(&empty)
            .map(|(f, e)| f / e.max(1e-9))
            .collect();
        let at = |q: usize| quartile(ratios.clone(), q);
        format!(
            "per round {:.2}x, middle half {:.2}-{:.2}x",
            at(2),
            at(1),
            at(3)
        )
    };
    let connect_row = |isolated: bool, what: &str| {
        let (none, empty, full) = (
            median_of(&connects, (isolated, 0)),
            median_of(&connects, (isolated, 1)),
            median_of(&connects, (isolated, 2)),
        );
        vec![
            format!("new TCP connections/s, median of {ROUNDS} x 1 s, {what}: no table / no policy / {policies} policies"),
            format!(
                "{none:.0} / {empty:.0} / {full:.0} ({:.2}x of no policy; {})",
                full / empty.max(1e-9),
                paired(&connects, isolated)
            ),
        ]
    };
    let row = |isolated: bool, what: &str| {
        let (none, empty, full) = (
            median((isolated, 0)),
            median((isolated, 1)),
            median((isolated, 2)),
        );
        vec![
            format!("iperf3 pod to pod, median of {ROUNDS} x {seconds} s, {what}: no table / no policy / {policies} policies"),
            format!(
                "{none:.1} / {empty:.1} / {full:.1} Gbit/s ({:.2}x of no policy, {:.2}x of no table; {})",
                full / empty.max(1e-9),
                full / none.max(1e-9),
                paired(&runs, isolated)
            ),
        ]
    };
    let bridged_row = row(false, "bridged + br_netfilter");
    let isolated_row = row(true, "isolated ports (routed, no br_netfilter)");
    let bridged_connects = connect_row(false, "bridged + br_netfilter");
    let isolated_connects = connect_row(true, "isolated ports");
    let (bridged_none, isolated_none) = (median((false, 0)), median((true, 0)));
    let _ = std::fs::remove_dir_all(&dir);

    let s = stats(&mut latencies);
    let ps = stats(&mut policy_latencies);
    println!("\n{local} pods on the node, {total} cluster-wide in {NAMESPACE_COUNT} namespaces, {policies} policies\n");
    print_table(
        &["measure", "value"],
        &[
            vec![
                "agent start to complete table".into(),
                format!("{} ms", ms(full_sync)),
            ],
            vec![
                "the start's write: plan / table / difference / kernel write".into(),
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} ms",
                    start[0], start[1], start[2], start[3]
                ),
            ],
            vec![
                "nftables rules / sets / elements".into(),
                format!("{} / {} / {}", counts.0, counts.1, counts.2),
            ],
            vec![
                format!("relabel to set element, {CHANGES} changes: p50 / p99"),
                format!("{} / {} ms ({missed} missed)", ms(s.p50), ms(s.p99)),
            ],
            vec![
                format!("policy created / deleted to the table, {CHANGES} changes: p50 / p99"),
                format!(
                    "{} / {} ms ({policy_missed} missed)",
                    ms(ps.p50),
                    ms(ps.p99)
                ),
            ],
            vec![
                "a relabel's write as moved members (netlink), median: delta / kernel write"
                    .into(),
                format!(
                    "{:.2} / {:.1} ms ({moved} writes)",
                    relabel_phases[0], relabel_phases[1]
                ),
            ],
            vec![
                "a write of members from a whole plan (netlink), median: plan / table / difference / kernel write"
                    .into(),
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} ms ({replanned} writes)",
                    replanned_phases[0], replanned_phases[1], replanned_phases[2], replanned_phases[3]
                ),
            ],
            vec![
                "a policy's write worked out alone (netlink), median: delta / kernel write".into(),
                format!(
                    "{:.2} / {:.1} ms ({alone} writes)",
                    policy_phases[0], policy_phases[1]
                ),
            ],
            vec![
                "a write of chains from a whole plan (netlink batch), median: plan / table / difference / kernel write".into(),
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1} ms ({batches} writes)",
                    batch_phases[0], batch_phases[1], batch_phases[2], batch_phases[3]
                ),
            ],
            vec![
                "agent peak RSS".into(),
                format!("{:.1} MiB", peak as f64 / 1024.0),
            ],
            bridged_row,
            isolated_row,
            bridged_connects,
            isolated_connects,
            vec![
                "iperf3, no table: plain bridge / isolated ports".into(),
                format!(
                    "{bridged_none:.1} / {isolated_none:.1} Gbit/s ({:.2}x)",
                    isolated_none / bridged_none.max(1e-9)
                ),
            ],
        ],
    );
}
