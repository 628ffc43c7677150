//! tether-overlayd's control plane at cluster scale: one real daemon in a namespace, a simulated
//! cluster of N Nodes (one of them a peer whose route the kernel refuses) in the Kubernetes API
//! stand-in, which speaks the real wire protocol (list, watch, resourceVersion, `410 Gone`).
//!
//! Per cluster size it measures, from the kernel's side (netlink monitors in the daemon's
//! namespace): start-up to the first complete reconcile, the entries applied, RSS, the API
//! requests made at steady state, the time from a Node change (join, leave, underlay move) to its
//! kernel entry while nodes churn, CPU per change, and what an API server restart and a compaction
//! (`410 Gone`, relist) cost in kernel writes.
//!
//! Usage: `overlay-scale DAEMON CSV_DIR SIZE... [etcd SIZE...]` (bench/overlay-scale.sh runs it;
//! sizes after `etcd` keep the cluster's registrations in a real etcd instead).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use test_support::apiserver::{ApiServer, NODES};
use test_support::Netns;
use tether_bench::{ms, print_table, stats, status_kib};

const VTEP_MAC: &str = "overlay.tether.dev/vtep-mac";
const UNDERLAY_IP: &str = "overlay.tether.dev/underlay-ip";
const VXLAN: &str = "tether.1";
/// Changes made while measuring, one every `CHANGE_EVERY` (at 5,000 nodes, 5% a minute is one
/// every 240 ms; smaller clusters churn faster than that here).
const CHANGES: usize = 90;
const CHANGE_EVERY: Duration = Duration::from_millis(240);
const IDLE: Duration = Duration::from_secs(20);

/// Lines a netlink monitor printed, with when they arrived.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Instant, String)>>>);

impl Seen {
    fn len(&self) -> usize {
        self.0.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Waits for a line (from index `from` on) that `matches`; when it arrived.
    fn wait(
        &self,
        from: usize,
        within: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<Instant> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(lines) = self.0.lock() {
                if let Some((at, _)) = lines.iter().skip(from).find(|(_, l)| matches(l)) {
                    return Some(*at);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    fn since(&self, from: usize) -> Vec<String> {
        self.0
            .lock()
            .map(|l| l.iter().skip(from).map(|(_, s)| s.clone()).collect())
            .unwrap_or_default()
    }
}

struct Monitor(Child);

impl Monitor {
    fn start(ns: &Netns, args: &[&str], seen: &Seen) -> Monitor {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a netlink monitor");
        let out = child.stdout.take().expect("monitor stdout");
        let seen = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let at = Instant::now();
                if let Ok(mut l) = seen.0.lock() {
                    l.push((at, line));
                }
            }
        });
        Monitor(child)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM, as kubelet stops it.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn subnet(i: usize) -> String {
    format!("10.{}.{}.0", i >> 8, i & 255)
}

fn mac(i: usize) -> String {
    format!("0e:00:00:{:02x}:{:02x}:01", i >> 8, i & 255)
}

fn underlay(i: usize) -> String {
    format!("172.{}.{}.{}", 16 + (i >> 16), (i >> 8) & 255, i & 255)
}

fn node_object(name: &str, i: usize) -> serde_json::Value {
    let cidr = format!("{}/24", subnet(i));
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"kubernetes.io/hostname": name},
            "annotations": {VTEP_MAC: mac(i), UNDERLAY_IP: underlay(i)},
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    })
}

/// Where the simulated cluster lives: Node objects in the API stand-in, or registrations in a
/// real etcd (written by this process from inside the etcd's namespace).
enum Backend<'a> {
    Kube(&'a ApiServer),
    Etcd {
        rt: tokio::runtime::Runtime,
        client: Box<etcd_client::Client>,
    },
}

const ETCD_PREFIX: &str = "/tether/overlay/subnets/";

fn registration(name: &str, i: usize, underlay_ip: &str) -> (String, String) {
    let key = format!("{ETCD_PREFIX}{}-24", subnet(i));
    let value = json!({"node": name, "subnet": format!("{}/24", subnet(i)),
                       "vtepMac": mac(i), "underlayIp": underlay_ip});
    (key, value.to_string())
}

impl Backend<'_> {
    fn join(&mut self, name: &str, i: usize) {
        match self {
            Backend::Kube(api) => {
                api.put(NODES, node_object(name, i));
            }
            Backend::Etcd { rt, client } => {
                let (k, v) = registration(name, i, &underlay(i));
                rt.block_on(client.put(k, v, None)).expect("etcd put");
            }
        }
    }

    fn leave(&mut self, name: &str, i: usize) {
        match self {
            Backend::Kube(api) => api.delete_node(name),
            Backend::Etcd { rt, client } => {
                let (k, _) = registration(name, i, "");
                rt.block_on(client.delete(k, None)).expect("etcd delete");
            }
        }
    }

    fn move_to(&mut self, name: &str, i: usize, to: &str) {
        match self {
            Backend::Kube(api) => api.patch_node(
                name,
                &json!({"metadata": {"annotations": {UNDERLAY_IP: to}}}),
            ),
            Backend::Etcd { rt, client } => {
                let (k, v) = registration(name, i, to);
                rt.block_on(client.put(k, v, None)).expect("etcd put");
            }
        }
    }
}

/// A real etcd in `ns` on 192.168.90.1:2379, and a client to it made from inside `ns` (this
/// thread moves there: every later command it runs names its namespace explicitly).
fn start_etcd(ns: &Netns, dir: &Path) -> (Daemon, tokio::runtime::Runtime, etcd_client::Client) {
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "etcd",
            "--name",
            "bench",
            "--data-dir",
        ])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", "http://192.168.90.1:2379"])
        .args(["--advertise-client-urls", "http://192.168.90.1:2379"])
        .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
        .args(["--initial-cluster", "bench=http://127.0.0.1:2380"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd");
    let file = std::fs::File::open(ns.path()).expect("netns");
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let client = loop {
        if let Ok(mut c) = rt.block_on(etcd_client::Client::connect(
            ["http://192.168.90.1:2379"],
            None,
        )) {
            if rt.block_on(c.status()).is_ok() {
                break c;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "etcd did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    (Daemon(child), rt, client)
}

/// Nanoseconds the process has run on any CPU (all threads).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn count(ns: &Netns, args: &[&str], needle: &str) -> usize {
    ns.exec(args).lines().filter(|l| l.contains(needle)).count()
}

fn api_calls(api: &ApiServer, from: usize) -> (usize, usize) {
    let requests = api.requests();
    let new = &requests[from.min(requests.len())..];
    let watches = new.iter().filter(|r| r.contains("watch=")).count();
    (new.len() - watches, watches)
}

#[derive(Default)]
struct Change {
    kind: &'static str,
    latency: Option<Duration>,
}

struct Outages {
    restart_relists: usize,
    restart_kernel_writes: usize,
    gone_relists: usize,
    gone_kernel_writes: usize,
    relist_after: Option<Duration>,
    after_gone: Option<Duration>,
}

struct Measured {
    datastore: &'static str,
    nodes: usize,
    first_reconcile: Duration,
    entries: (usize, usize, usize),
    rss_synced: u64,
    peak_rss: u64,
    changes: Vec<Change>,
    cpu_per_change: Duration,
    idle_cpu_per_min: Duration,
    idle_requests_per_min: f64,
    /// API server restarts (the Kubernetes datastore only).
    outages: Option<Outages>,
}

fn run(daemon_bin: &Path, csv_dir: &Path, nodes: usize, etcd: bool) -> Measured {
    let api_ns = Netns::new("tbosa");
    let node_ns = Netns::new("tbosn");
    api_ns.cable(
        "ul0",
        "192.168.90.1/24",
        &node_ns,
        "eth0",
        "192.168.90.10/24",
    );
    node_ns.ip(&["route", "add", "default", "via", "192.168.90.1"]);
    // The bad peer's gateway is an address of this node: the kernel refuses a route via it.
    let bad = nodes - 1;
    node_ns.ip(&["addr", "add", &format!("{}/32", subnet(bad)), "dev", "lo"]);
    let api = ApiServer::start_in(&api_ns, "192.168.90.1:6443");
    let dir = tempfile_dir();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let (_etcd, mut backend) = if etcd {
        let (child, rt, client) = start_etcd(&api_ns, &dir);
        (
            Some(child),
            Backend::Etcd {
                rt,
                client: Box::new(client),
            },
        )
    } else {
        api.add_node("me", Some("10.0.0.0/24"));
        (None, Backend::Kube(&api))
    };
    for i in 1..nodes {
        let name = if i == bad {
            "bad".to_string()
        } else {
            format!("n{i}")
        };
        backend.join(&name, i);
    }
    let good_peers = nodes - 2;
    let datastore: Vec<String> = if etcd {
        [
            "--datastore",
            "etcd",
            "--etcd-endpoints",
            "http://192.168.90.1:2379",
        ]
        .map(String::from)
        .to_vec()
    } else {
        vec![
            "--datastore".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ]
    };

    let routes = Seen::default();
    let fdb = Seen::default();
    let _route_monitor = Monitor::start(&node_ns, &["ip", "-o", "monitor", "route"], &routes);
    let _fdb_monitor = Monitor::start(&node_ns, &["bridge", "monitor", "fdb"], &fdb);
    std::thread::sleep(Duration::from_millis(300));

    let started = Instant::now();
    let log = std::fs::File::create(dir.join("daemon.log")).expect("daemon log");
    let child = Command::new("ip")
        .args(["netns", "exec", &node_ns.name])
        .arg(daemon_bin)
        .args(["--node-name", "me", "--cluster-cidr", "10.0.0.0/8"])
        .args(&datastore)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .args(["--resync-seconds", "10"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting tether-overlayd");
    let pid = child.id();
    let daemon = Daemon(child);
    let is_route_add = |l: &str| l.contains(&format!("dev {VXLAN}")) && !l.starts_with("Deleted");
    let mut last = started;
    let mut seen = 0;
    let deadline = started + Duration::from_secs(180);
    while seen < good_peers && Instant::now() < deadline {
        let lines = routes.0.lock().map(|l| l.clone()).unwrap_or_default();
        let adds: Vec<_> = lines.iter().filter(|(_, l)| is_route_add(l)).collect();
        seen = adds.len();
        if let Some((at, _)) = adds.last() {
            last = *at;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let first_reconcile = last - started;
    std::thread::sleep(Duration::from_secs(2));
    let entries = (
        count(&node_ns, &["ip", "neigh", "show", "dev", VXLAN], "lladdr"),
        count(&node_ns, &["bridge", "fdb", "show", "dev", VXLAN], " dst "),
        count(&node_ns, &["ip", "route", "show", "dev", VXLAN], "via"),
    );
    let rss_synced = status_kib(pid, "VmRSS:");

    // Steady state: what the daemon asks the API server and burns when nothing changes.
    let requests_before = api.requests().len();
    let cpu_before = cpu_ns(pid);
    std::thread::sleep(IDLE);
    let idle_cpu = Duration::from_nanos(cpu_ns(pid) - cpu_before);
    let (idle_requests, _) = api_calls(&api, requests_before);
    let per_min = 60.0 / IDLE.as_secs_f64();

    // Churn: moves, leaves and joins, each timed from the API write to its kernel entry.
    let mut changes = Vec::new();
    let cpu_before = cpu_ns(pid);
    let churn_started = Instant::now();
    let mut left: Vec<usize> = Vec::new();
    for c in 0..CHANGES {
        let slot = churn_started + CHANGE_EVERY * c as u32;
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let i = 1 + (c * 7919) % (bad - 1);
        let (route_from, fdb_from) = (routes.len(), fdb.len());
        let t0 = Instant::now();
        let change = match c % 3 {
            0 => {
                // An address no node had before.
                let to = format!("172.28.{}.{}", c / 250, c % 250 + 1);
                backend.move_to(&format!("n{i}"), i, &to);
                let want = format!("{} dev {VXLAN} dst {to} ", mac(i));
                let at = fdb.wait(fdb_from, Duration::from_secs(5), |l| {
                    !l.starts_with("Deleted") && l.contains(&want)
                });
                Change {
                    kind: "move",
                    latency: at.map(|at| at - t0),
                }
            }
            1 => {
                backend.leave(&format!("n{i}"), i);
                left.push(i);
                let want = format!("Deleted {}/24 ", subnet(i));
                let at = routes.wait(route_from, Duration::from_secs(5), |l| l.starts_with(&want));
                Change {
                    kind: "leave",
                    latency: at.map(|at| at - t0),
                }
            }
            _ => {
                let j = left.pop().unwrap_or(i);
                backend.join(&format!("n{j}"), j);
                let want = format!("{}/24 via", subnet(j));
                let at = routes.wait(route_from, Duration::from_secs(5), |l| l.starts_with(&want));
                Change {
                    kind: "join",
                    latency: at.map(|at| at - t0),
                }
            }
        };
        changes.push(change);
    }
    let churn = churn_started.elapsed();
    let churn_cpu = Duration::from_nanos(cpu_ns(pid) - cpu_before);
    let idle_share = idle_cpu.mul_f64(churn.as_secs_f64() / IDLE.as_secs_f64());
    let cpu_per_change = churn_cpu.saturating_sub(idle_share) / CHANGES as u32;
    let tag = if etcd { "etcd-" } else { "" };
    write_csv(
        &csv_dir.join(format!("overlay-scale-{tag}{nodes}.csv")),
        &changes,
    );

    let outages = (!etcd).then(|| {
        // An API server restart: the watch resumes from its resourceVersion.
        std::thread::sleep(Duration::from_secs(1));
        let (restart_relists, restart_kernel_writes, _) = outage(&api, &routes, &fdb, false);
        // A restart after a compaction: the resumed watch gets 410 Gone and the daemon relists.
        let (gone_relists, gone_kernel_writes, relist_after) = outage(&api, &routes, &fdb, true);
        let i = 1 + (CHANGES * 7919) % (bad - 1);
        let fdb_from = fdb.len();
        let t0 = Instant::now();
        api.patch_node(
            &format!("n{i}"),
            &json!({"metadata": {"annotations": {UNDERLAY_IP: "172.31.1.1"}}}),
        );
        let after_gone = fdb
            .wait(fdb_from, Duration::from_secs(10), |l| {
                l.contains(&format!("{} dev {VXLAN} dst 172.31.1.1 ", mac(i)))
            })
            .map(|at| at - t0);
        Outages {
            restart_relists,
            restart_kernel_writes,
            gone_relists,
            gone_kernel_writes,
            relist_after,
            after_gone,
        }
    });
    let peak_rss = status_kib(pid, "VmHWM:");
    drop(daemon);
    Measured {
        nodes,
        first_reconcile,
        entries,
        rss_synced,
        peak_rss,
        changes,
        cpu_per_change,
        idle_cpu_per_min: idle_cpu.mul_f64(per_min),
        idle_requests_per_min: idle_requests as f64 * per_min,
        outages,
        datastore: if etcd { "etcd" } else { "kubernetes" },
    }
}

/// Takes the API server down for a second, then counts the daemon's full LISTs of Nodes and the
/// kernel writes after it (and how long after the API server was back the relist came). With `compact`, Nodes change in ways the overlay does not
/// care about (a label) during the outage and the history is compacted, so that the resumed
/// watch gets `410 Gone` and the daemon relists a cluster that is, for it, the same.
fn outage(
    api: &ApiServer,
    routes: &Seen,
    fdb: &Seen,
    compact: bool,
) -> (usize, usize, Option<Duration>) {
    let (route_from, fdb_from) = (routes.len(), fdb.len());
    let requests_from = api.requests().len();
    api.set_down(true);
    if compact {
        for i in 1..20 {
            api.patch_node(
                &format!("n{i}"),
                &json!({"metadata": {"labels": {"bench.tether.dev/touched": "yes"}}}),
            );
        }
        api.compact();
    }
    std::thread::sleep(Duration::from_secs(1));
    api.set_down(false);
    let up = Instant::now();
    let is_list = |r: &String| r.starts_with("GET /api/v1/nodes") && !r.contains("watch=");
    // The relist comes when the watcher's backoff lets it: wait for it (40 s at most), then a
    // few seconds for whatever it would write.
    let mut relisted = None;
    while up.elapsed() < Duration::from_secs(if compact { 40 } else { 12 }) {
        if relisted.is_none() && api.requests()[requests_from..].iter().any(is_list) {
            relisted = Some(up.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(5));
    let lists = api.requests()[requests_from..]
        .iter()
        .filter(|r| is_list(r))
        .count();
    let writes = routes.since(route_from).len() + fdb.since(fdb_from).len();
    (lists, writes, relisted)
}

fn write_csv(path: &Path, changes: &[Change]) {
    let mut text = String::from("change,kind,latency_ms\n");
    for (n, c) in changes.iter().enumerate() {
        let latency = c.latency.map(ms).unwrap_or_else(|| "timeout".into());
        text.push_str(&format!("{n},{},{latency}\n", c.kind));
    }
    if let Err(e) = std::fs::write(path, text) {
        eprintln!("writing {}: {e}", path.display());
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tb-ovs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("work directory");
    dir
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: overlay-scale DAEMON CSV_DIR SIZE...");
        std::process::exit(2);
    }
    let daemon = PathBuf::from(&args[1]);
    let csv_dir = PathBuf::from(&args[2]);
    let mut rows = Vec::new();
    let mut outages = Vec::new();
    // Sizes after the word `etcd` use the etcd datastore.
    let mut etcd = false;
    for size in &args[3..] {
        if size == "etcd" {
            etcd = true;
            continue;
        }
        let nodes: usize = size.parse().expect("a cluster size");
        eprintln!("cluster of {nodes} nodes");
        let mut r = run(&daemon, &csv_dir, nodes, etcd);
        let mut all: Vec<Duration> = r.changes.iter().filter_map(|c| c.latency).collect();
        let missed = r.changes.len() - all.len();
        let s = stats(&mut all);
        let per_kind = |kind: &str| {
            let mut l: Vec<Duration> = r
                .changes
                .iter()
                .filter(|c| c.kind == kind)
                .filter_map(|c| c.latency)
                .collect();
            ms(stats(&mut l).p50)
        };
        rows.push(vec![
            r.datastore.to_string(),
            r.nodes.to_string(),
            format!("{:.2}", r.first_reconcile.as_secs_f64()),
            format!("{} / {} / {}", r.entries.0, r.entries.1, r.entries.2),
            format!(
                "{:.1} / {:.1}",
                r.rss_synced as f64 / 1024.0,
                r.peak_rss as f64 / 1024.0
            ),
            format!("{} / {}", ms(s.p50), ms(s.p99)),
            format!(
                "{} / {} / {}",
                per_kind("join"),
                per_kind("leave"),
                per_kind("move")
            ),
            missed.to_string(),
            ms(r.cpu_per_change),
            ms(r.idle_cpu_per_min),
            format!("{:.0}", r.idle_requests_per_min),
        ]);
        if let Some(o) = &r.outages {
            outages.push(vec![
                r.nodes.to_string(),
                format!("{} / {}", o.restart_relists, o.restart_kernel_writes),
                format!("{} / {}", o.gone_relists, o.gone_kernel_writes),
                o.relist_after
                    .map(|d| format!("{:.1}", d.as_secs_f64()))
                    .unwrap_or_else(|| "none in 40 s".into()),
                o.after_gone.map(ms).unwrap_or_else(|| "not applied".into()),
            ]);
        }
        r.changes.clear();
    }
    println!(
        "\n{CHANGES} changes (join, leave, underlay move in turn), one every {} ms; latency from the API write to the kernel entry (netlink monitor); entries are neighbours / FDB / routes on {VXLAN}, one peer of the cluster refused by the kernel\n",
        CHANGE_EVERY.as_millis()
    );
    print_table(
        &[
            "datastore",
            "nodes",
            "first reconcile s",
            "entries",
            "RSS / peak MiB",
            "change p50 / p99 ms",
            "p50 join / leave / move ms",
            "missed",
            "CPU ms per change",
            "idle CPU ms/min",
            "idle API requests/min",
        ],
        &rows,
    );
    println!();
    print_table(
        &[
            "nodes",
            "API restart: LISTs / kernel writes",
            "410 Gone: LISTs / kernel writes",
            "relist s after the API is back",
            "next change after 410 ms",
        ],
        &outages,
    );
}
