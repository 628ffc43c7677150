#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! A cluster in namespaces: an underlay namespace holds a bridge (the "L2 segment"), a real etcd and
//! an external address; each node is a namespace cabled to that bridge, running its own
//! tether-overlayd; pods are namespaces added through the real cni-overlay -> cni-bridge ->
//! cni-ipam chain. Everything is torn down by guards, also on failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::{require_root, run_plugin_in, workspace_binary, Netns, PluginOut};

const EXTERNAL: &str = "203.0.113.1";
const ETCD: &str = "http://192.168.77.1:2379";

fn bin_dir() -> PathBuf {
    let overlay = PathBuf::from(env!("CARGO_BIN_EXE_cni-overlay"));
    workspace_binary(&overlay, "cni-bridge");
    workspace_binary(&overlay, "cni-ipam");
    overlay.parent().unwrap().to_path_buf()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first, as an orchestrator would, then make sure it is gone.
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Node {
    name: String,
    ns: Netns,
    ip: String,
    root: tempfile::TempDir,
    daemon: Option<Daemon>,
}

impl Node {
    fn run_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }

    fn start(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("daemon.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(bin_dir().join("tether-overlayd"))
            .args([
                "--node-name",
                &self.name,
                "--cluster-cidr",
                "10.244.0.0/16",
                "--datastore",
                "etcd",
            ])
            .args([
                "--etcd-endpoints",
                ETCD,
                "--lease-ttl",
                "4",
                "--resync-seconds",
                "1",
            ])
            .args(["--metrics-addr", "127.0.0.1:9402", "--run-dir"])
            .arg(self.run_dir())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(Daemon(child));
        // Ready means this very process has reconciled: the facts file of an earlier run may
        // still be there, so its presence proves nothing after a restart.
        let facts = self.run_dir().join("overlay.json");
        wait_for(
            &format!("{} ready", self.name),
            Duration::from_secs(20),
            || facts.exists() && self.http("/healthz").starts_with("HTTP/1.1 200"),
            || self.log(),
        );
    }

    fn stop(&mut self) {
        self.daemon = None;
    }

    /// SIGTERM, as a kubelet sends it: the daemon must exit cleanly and promptly whatever it is
    /// waiting for.
    fn terminate_cleanly(&mut self) {
        let mut daemon = self.daemon.take().expect("daemon running");
        let _ = Command::new("kill").arg(daemon.0.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(status) = daemon.0.try_wait().unwrap() {
                assert!(status.success(), "{status}\n{}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} ignored SIGTERM for 2 s\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default()
    }

    fn facts(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.run_dir().join("overlay.json")).unwrap())
            .unwrap()
    }

    fn plugin(&self, command: &str, id: &str, pod: Option<&Netns>) -> PluginOut {
        let conf = json!({
            "cniVersion": "1.1.0", "name": "overlay", "type": "cni-overlay",
            "runDir": self.run_dir(), "stateDir": self.root.path().join("state"),
            "ipam": {"dataDir": self.root.path().join("leases")}
        });
        let netns = pod
            .map(|p| p.path().display().to_string())
            .unwrap_or_default();
        let cni_path = bin_dir().display().to_string();
        run_plugin_in(
            Some(&self.ns),
            &bin_dir().join("cni-overlay"),
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &cni_path),
            ],
            &conf,
        )
    }

    /// Adds a pod and returns its namespace and address.
    fn pod(&self, tag: &str) -> (Netns, String) {
        let pod = Netns::new(tag);
        let result = self.plugin("ADD", tag, Some(&pod)).ok();
        let ip = result["ips"][0]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        (pod, ip)
    }

    fn http(&self, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/9402; printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
        );
        String::from_utf8_lossy(&self.ns.try_exec(&["bash", "-c", &script]).stdout).into_owned()
    }

    fn metrics(&self) -> String {
        self.http("/metrics")
    }

    fn leases(&self) -> usize {
        std::fs::read_dir(self.root.path().join("leases/overlay"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .count()
            })
            .unwrap_or(0)
    }
}

struct Cluster {
    nodes: Vec<Node>,
    etcd: Option<Daemon>,
    _etcd_dir: tempfile::TempDir,
    underlay: Netns,
}

impl Cluster {
    fn new(tag: &str, count: usize) -> Cluster {
        require_root();
        let underlay = Netns::new(&format!("{tag}ul"));
        underlay.ip(&["link", "add", "ul0", "type", "bridge"]);
        underlay.ip(&["addr", "add", "192.168.77.1/24", "dev", "ul0"]);
        underlay.ip(&["link", "set", "ul0", "up"]);
        underlay.ip(&["addr", "add", &format!("{EXTERNAL}/32"), "dev", "lo"]);
        let etcd_dir = tempfile::tempdir().unwrap();
        let mut cluster = Cluster {
            nodes: Vec::new(),
            etcd: None,
            _etcd_dir: etcd_dir,
            underlay,
        };
        cluster.start_etcd();
        for i in 0..count {
            cluster.add_node(tag, i);
        }
        for node in &mut cluster.nodes {
            node.start(&[]);
        }
        cluster
    }

    fn start_etcd(&mut self) {
        let data = self._etcd_dir.path().join("data");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.underlay.name,
                "etcd",
                "--name",
                "tt",
                "--data-dir",
            ])
            .arg(&data)
            .args([
                "--listen-client-urls",
                ETCD,
                "--advertise-client-urls",
                ETCD,
            ])
            .args([
                "--listen-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
            ])
            .args(["--initial-cluster", "tt=http://127.0.0.1:2380"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is missing: run scripts/setup.sh");
        self.etcd = Some(Daemon(child));
    }

    fn add_node(&mut self, tag: &str, i: usize) {
        let ns = Netns::new(&format!("{tag}n{i}"));
        let ip = format!("192.168.77.{}", 10 + i);
        let port = format!("{tag}p{i}");
        self.underlay.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.underlay
            .ip(&["link", "set", &port, "master", "ul0", "up"]);
        ns.ip(&["link", "set", "eth0", "mtu", "1500", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["route", "add", "default", "via", "192.168.77.1"]);
        self.nodes.push(Node {
            name: format!("node{i}"),
            ns,
            ip,
            root: tempfile::tempdir().unwrap(),
            daemon: None,
        });
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        self.etcd = None;
    }
}

fn wait_for(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// iperf3 from `client` to `server_ip`; returns the source address the server saw.
fn seen_source(server: &Netns, client: &Netns, server_ip: &str) -> String {
    let srv = Command::new("ip")
        .args(["netns", "exec", &server.name, "iperf3", "-s", "-1", "-J"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    client.exec(&["iperf3", "-c", server_ip, "-t", "1"]);
    let out = srv.wait_with_output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    report["start"]["accepted_connection"]["host"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn three_nodes_full_mesh_without_nat_between_pods() {
    let cluster = Cluster::new("ovm", 3);
    let [n0, n1, n2] = [&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]];
    let pods = [
        n0.pod("ovm-a"),
        n0.pod("ovm-b"),
        n1.pod("ovm-c"),
        n2.pod("ovm-d"),
    ];

    // Subnets are distinct and come from the cluster CIDR; the facts carry the VXLAN MTU.
    let subnets: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.facts()["subnets"][0].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        subnets
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "{subnets:?}"
    );
    assert!(subnets
        .iter()
        .all(|s| s.starts_with("10.244.") && s.ends_with("/24")));
    assert_eq!(n0.facts()["mtu"], 1450, "underlay 1500 - 50");
    assert_eq!(pods[0].0.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1450);

    wait_for(
        "cross-node reachability",
        Duration::from_secs(20),
        || pods[0].0.ping(&pods[3].1),
        || n0.log(),
    );
    for (a, (ns_a, _)) in pods.iter().enumerate() {
        for (b, (_, ip_b)) in pods.iter().enumerate() {
            if a != b {
                assert!(ns_a.ping(ip_b), "pod {a} cannot reach pod {b} ({ip_b})");
            }
        }
    }

    // Exactly three entries per other node, on every node.
    for node in &cluster.nodes {
        let neigh = node
            .ns
            .ip_json(&["neigh", "show", "dev", "tether.1", "nud", "permanent"]);
        assert_eq!(neigh.as_array().unwrap().len(), 2, "{}: {neigh}", node.name);
        let fdb = node.ns.exec(&["bridge", "fdb", "show", "dev", "tether.1"]);
        assert_eq!(
            fdb.lines()
                .filter(|l| l.contains("dst 192.168.77."))
                .count(),
            2,
            "{fdb}"
        );
        let routes = node.ns.ip_json(&["route", "show", "dev", "tether.1"]);
        assert_eq!(
            routes
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["flags"].to_string().contains("onlink"))
                .count(),
            2,
            "{routes}"
        );
        assert!(
            node.metrics().contains("tether_overlay_entries 6"),
            "{}",
            node.metrics()
        );
    }

    // The receiving pod sees the sender's own pod address: no NAT between pods.
    assert_eq!(seen_source(&pods[2].0, &pods[0].0, &pods[2].1), pods[0].1);
    // Traffic leaving the cluster is masqueraded: the external host has no route back to pod
    // subnets, so this ping only works if the source became node0's underlay address.
    assert!(pods[0].0.ping(EXTERNAL), "masqueraded egress");
    let rules = String::from_utf8_lossy(
        &n0.ns
            .try_exec(&["nft", "list", "table", "inet", "tether-overlay"])
            .stdout,
    )
    .into_owned();
    assert!(
        rules.contains("ip daddr != 10.244.0.0/16") && rules.contains("masquerade"),
        "{rules}"
    );

    // A 1450-byte don't-fragment packet crosses; one byte more does not.
    let df = |size: &str| {
        pods[0].0.try_exec(&[
            "ping", "-c", "1", "-W", "2", "-M", "do", "-s", size, &pods[3].1,
        ])
    };
    assert!(df("1422").status.success(), "1450-byte DF ping");
    let too_big = df("1423");
    assert!(!too_big.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&too_big.stdout),
        String::from_utf8_lossy(&too_big.stderr)
    );
    assert!(
        text.contains("too long") || text.contains("Frag needed"),
        "{text}"
    );

    for (i, (pod, _)) in pods.iter().enumerate() {
        let node = [n0, n0, n1, n2][i];
        node.plugin(
            "DEL",
            &pod.name
                .replace("tt-", "")
                .split('-')
                .take(2)
                .collect::<Vec<_>>()
                .join("-"),
            Some(pod),
        )
        .ok();
    }
}

#[test]
fn departed_nodes_and_moved_underlays_converge() {
    let mut cluster = Cluster::new("ovc", 3);
    let (p0, ip0) = cluster.nodes[0].pod("ovc-a");
    let (p1, ip1) = cluster.nodes[1].pod("ovc-b");
    let (_p2, ip2) = cluster.nodes[2].pod("ovc-c");
    wait_for(
        "mesh",
        Duration::from_secs(20),
        || p0.ping(&ip1) && p0.ping(&ip2),
        || cluster.nodes[0].log(),
    );
    let subnet2 = cluster.nodes[2].facts()["subnets"][0]
        .as_str()
        .unwrap()
        .to_string();

    // node2 leaves: its entries disappear from every other node.
    cluster.nodes[2].stop();
    let leave = cluster.nodes[2].ns.try_exec(&[
        &bin_dir().join("tether-overlayd").display().to_string(),
        "--node-name",
        "node2",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--datastore",
        "etcd",
        "--etcd-endpoints",
        ETCD,
        "--run-dir",
        &cluster.nodes[2].run_dir().display().to_string(),
        "--leave",
    ]);
    assert!(
        leave.status.success(),
        "{}",
        String::from_utf8_lossy(&leave.stderr)
    );
    assert!(!cluster.nodes[2].ns.has_link("tether.1"));
    for node in &cluster.nodes[..2] {
        wait_for(
            "departure",
            Duration::from_secs(10),
            || {
                node.ns
                    .ip_json(&["route", "show", &subnet2])
                    .as_array()
                    .is_none_or(|r| r.is_empty())
                    && node
                        .ns
                        .ip_json(&["neigh", "show", "dev", "tether.1", "nud", "permanent"])
                        .as_array()
                        .unwrap()
                        .len()
                        == 1
            },
            || node.log(),
        );
    }

    // node1's underlay address changes: node0 follows it.
    let n1 = &cluster.nodes[1];
    n1.ns
        .ip(&["addr", "del", &format!("{}/24", n1.ip), "dev", "eth0"]);
    n1.ns
        .ip(&["addr", "add", "192.168.77.21/24", "dev", "eth0"]);
    n1.ns
        .ip(&["route", "replace", "default", "via", "192.168.77.1"]);
    wait_for(
        "the new underlay address",
        Duration::from_secs(15),
        || {
            cluster.nodes[0]
                .ns
                .exec(&["bridge", "fdb", "show", "dev", "tether.1"])
                .contains("dst 192.168.77.21")
        },
        || cluster.nodes[1].log(),
    );
    wait_for(
        "reachability after the move",
        Duration::from_secs(10),
        || p0.ping(&ip1),
        || cluster.nodes[1].log(),
    );
    assert!(p1.ping(&ip0));
}

#[test]
fn daemon_restarts_and_datastore_outages_lose_no_packet() {
    let mut cluster = Cluster::new("ovr", 2);
    let (p0, _) = cluster.nodes[0].pod("ovr-a");
    let (_p1, ip1) = cluster.nodes[1].pod("ovr-b");
    wait_for(
        "mesh",
        Duration::from_secs(20),
        || p0.ping(&ip1),
        || cluster.nodes[0].log(),
    );

    let ping = Command::new("ip")
        .args([
            "netns", "exec", &p0.name, "ping", "-i", "0.02", "-c", "300", "-W", "1", &ip1,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..2 {
        cluster.nodes[i].stop();
        cluster.nodes[i].start(&[]);
    }
    // etcd goes away: working entries stay.
    cluster.etcd = None;
    let out = ping.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains(" 0% packet loss"), "{summary}");
    assert!(p0.ping(&ip1), "still up with etcd gone");
    let metrics = cluster.nodes[0].metrics();
    assert!(metrics.contains("tether_overlay_entries 3"), "{metrics}");

    // A daemon that (re)starts while etcd is away waits in its retry loop, keeps the kernel as
    // it is, and still stops at once on SIGTERM.
    cluster.nodes[1].stop();
    let node = &mut cluster.nodes[1];
    let started = Command::new("ip")
        .args(["netns", "exec", &node.ns.name])
        .arg(bin_dir().join("tether-overlayd"))
        .args(["--node-name", &node.name, "--cluster-cidr", "10.244.0.0/16"])
        .args(["--datastore", "etcd", "--etcd-endpoints", ETCD, "--run-dir"])
        .arg(node.run_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    node.daemon = Some(Daemon(started));
    std::thread::sleep(Duration::from_secs(1));
    node.terminate_cleanly();
    assert!(p0.ping(&ip1), "entries kept while the daemons were away");
    cluster.nodes[0].terminate_cleanly();
}

#[test]
fn plugin_without_the_daemon_and_del_after_it_is_gone() {
    let mut cluster = Cluster::new("ovp", 1);
    let node = &cluster.nodes[0];
    let (pod, _) = node.pod("ovp-a");
    assert_eq!(node.leases(), 1);
    node.plugin("STATUS", "", None).ok();
    let facts = node.run_dir().join("overlay.json");
    cluster.nodes[0].stop();
    std::fs::remove_file(&facts).unwrap();
    let node = &cluster.nodes[0];
    // The saved delegate configuration lets DEL release the address without the daemon.
    node.plugin("DEL", "ovp-a", Some(&pod)).ok();
    node.plugin("DEL", "ovp-a", Some(&pod)).ok();
    assert_eq!(node.leases(), 0);
    assert!(!pod.has_link("eth0"));
    // Without the daemon's facts: ADD says try again later, STATUS says not available.
    let other = Netns::new("ovp-b");
    node.plugin("ADD", "ovp-b", Some(&other)).err(11);
    node.plugin("STATUS", "", None).err(50);
    assert_eq!(node.leases(), 0);
}

#[test]
fn bad_configuration_exits_with_a_clear_error() {
    require_root();
    let ns = Netns::new("ovbad");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.ip(&["addr", "add", "192.0.2.5/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    let daemon = bin_dir().join("tether-overlayd").display().to_string();
    let base = ["--node-name", "n", "--etcd-endpoints", "http://127.0.0.1:1"];
    for (extra, needle) in [
        (
            vec![
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iface",
                "eth0",
                "--vni",
                "0",
            ],
            "--vni 0",
        ),
        (
            vec![
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iface",
                "eth0",
                "--vni",
                "16777216",
            ],
            "--vni 16777216",
        ),
        (
            vec!["--cluster-cidr", "10.244.0.5/16", "--iface", "eth0"],
            "host bits",
        ),
        (
            vec![
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iface",
                "eth0",
                "--subnet-size",
                "16",
            ],
            "--subnet-size",
        ),
        (
            vec!["--cluster-cidr", "10.244.0.0/16", "--iface", "nope0"],
            "nope0",
        ),
        (
            vec!["--cluster-cidr", "fd00::/48", "--iface", "eth0"],
            "IPv6",
        ),
        (
            vec![
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iface",
                "eth0",
                "--datastore",
                "kubernetes",
            ],
            "kubernetes",
        ),
    ] {
        let mut args = vec![daemon.as_str()];
        args.extend_from_slice(&base);
        args.extend(extra.iter().copied());
        if !extra.contains(&"--datastore") {
            args.extend(["--datastore", "etcd"]);
        }
        let out = ns.try_exec(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}
