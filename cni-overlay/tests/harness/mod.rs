//! A cluster in namespaces: an underlay namespace holds a bridge (the "L2 segment"), the
//! datastore (a real etcd, or the Node API stand-in for the Kubernetes datastore) and an external
//! address; each node is a namespace cabled to that bridge, running its own tether-overlayd; pods
//! are namespaces added through the real cni-overlay -> cni-bridge -> cni-ipam chain. Everything
//! is torn down by guards, also on failure.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::apiserver::NodeApiServer;
use test_support::chain::Conflist;
use test_support::{require_root, run_plugin_in, workspace_binary, Netns, PluginOut};

pub const EXTERNAL: &str = "203.0.113.1";
pub const ETCD: &str = "http://192.168.77.1:2379";
pub const API: &str = "192.168.77.1:6443";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

pub fn bin_dir() -> PathBuf {
    let overlay = PathBuf::from(env!("CARGO_BIN_EXE_cni-overlay"));
    for plugin in ["cni-bridge", "cni-ipam", "cni-portmap", "cni-bandwidth"] {
        workspace_binary(&overlay, plugin);
    }
    overlay.parent().unwrap().to_path_buf()
}

pub struct Daemon(pub Child);

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

pub struct Node {
    pub name: String,
    pub ns: Netns,
    pub ip: String,
    pub root: tempfile::TempDir,
    pub daemon: Option<Daemon>,
    /// The datastore flags this node's daemon runs with.
    pub datastore_args: Vec<String>,
}

impl Node {
    pub fn run_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }

    /// Starts the daemon and waits until it is ready.
    pub fn start(&mut self, extra: &[&str]) {
        self.spawn(extra);
        self.wait_ready();
    }

    /// Starts the daemon without waiting for it.
    pub fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join("daemon.log"))
            .unwrap();
        // A resync every second unless the test asks for another interval.
        let resync: &[&str] = if extra.contains(&"--resync-seconds") {
            &[]
        } else {
            &["--resync-seconds", "1"]
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(bin_dir().join("tether-overlayd"))
            .args(["--node-name", &self.name, "--cluster-cidr", CLUSTER_CIDR])
            .args(&self.datastore_args)
            .args(["--lease-ttl", "4"])
            .args(resync)
            .args(["--metrics-addr", "0.0.0.0:9402", "--run-dir"])
            .arg(self.run_dir())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(Daemon(child));
    }

    pub fn ready(&self) -> bool {
        self.run_dir().join("overlay.json").exists()
            && self.http("/healthz").starts_with("HTTP/1.1 200")
    }

    pub fn wait_ready(&self) {
        // Ready means this very process has reconciled: the facts file of an earlier run may
        // still be there, so its presence proves nothing after a restart.
        wait_for(
            &format!("{} ready", self.name),
            Duration::from_secs(20),
            || self.ready(),
            || self.log(),
        );
    }

    pub fn stop(&mut self) {
        self.daemon = None;
    }

    /// SIGTERM, as a kubelet sends it: the daemon must exit cleanly and promptly whatever it is
    /// waiting for.
    pub fn terminate_cleanly(&mut self) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn facts(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.run_dir().join("overlay.json")).unwrap())
            .unwrap()
    }

    pub fn plugin(&self, command: &str, id: &str, pod: Option<&Netns>) -> PluginOut {
        let conf = json!({
            "cniVersion": "1.1.0", "name": "overlay", "type": "cni-overlay",
            "runDir": self.run_dir(), "stateDir": self.root.path().join("state"),
            "ipam": {"dataDir": self.root.path().join("leases")}
        });
        self.plugin_with(&bin_dir(), &conf, command, id, pod)
    }

    /// Runs `<plugins>/cni-overlay` with `conf`, as a runtime on this node would.
    pub fn plugin_with(
        &self,
        plugins: &std::path::Path,
        conf: &Value,
        command: &str,
        id: &str,
        pod: Option<&Netns>,
    ) -> PluginOut {
        let netns = pod
            .map(|p| p.path().display().to_string())
            .unwrap_or_default();
        let cni_path = plugins.display().to_string();
        run_plugin_in(
            Some(&self.ns),
            &plugins.join("cni-overlay"),
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", &netns),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", &cni_path),
            ],
            conf,
        )
    }

    /// Adds a pod and returns its namespace and address.
    pub fn pod(&self, tag: &str) -> (Netns, String) {
        let pod = Netns::new(tag);
        let result = self.plugin("ADD", tag, Some(&pod)).ok();
        let ip = test_support::result_addresses(&result).remove(0);
        (pod, ip)
    }

    pub fn http(&self, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/9402; printf 'GET {path} HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3; cat <&3"
        );
        String::from_utf8_lossy(&self.ns.try_exec(&["bash", "-c", &script]).stdout).into_owned()
    }

    pub fn metrics(&self) -> String {
        self.http("/metrics")
    }

    /// The readiness probe's status line and body.
    pub fn readyz(&self) -> String {
        self.http("/readyz")
    }

    pub fn leases(&self) -> usize {
        std::fs::read_dir(self.root.path().join("leases/overlay"))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .count()
            })
            .unwrap_or(0)
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Nodes get `--direct-routing=false` (see [`Cluster::over_vxlan`]).
    pub vxlan_only: bool,
    pub etcd: Option<Daemon>,
    pub api: Option<NodeApiServer>,
    pub _etcd_dir: tempfile::TempDir,
    pub underlay: Netns,
}

impl Cluster {
    fn underlay(tag: &str) -> Cluster {
        require_root();
        let underlay = Netns::new(&format!("{tag}ul"));
        underlay.ip(&["link", "add", "ul0", "type", "bridge"]);
        underlay.ip(&["addr", "add", "192.168.77.1/24", "dev", "ul0"]);
        underlay.ip(&["link", "set", "ul0", "up"]);
        underlay.ip(&["addr", "add", &format!("{EXTERNAL}/32"), "dev", "lo"]);
        Cluster {
            nodes: Vec::new(),
            vxlan_only: false,
            etcd: None,
            api: None,
            _etcd_dir: tempfile::tempdir().unwrap(),
            underlay,
        }
    }

    /// `count` nodes whose daemons lease subnets from a real etcd.
    pub fn new(tag: &str, count: usize) -> Cluster {
        let mut cluster = Cluster::new_stopped(tag, count);
        for node in &mut cluster.nodes {
            node.start(&[]);
        }
        cluster
    }

    /// Like [`Cluster::new`], with the daemons not started yet.
    pub fn new_stopped(tag: &str, count: usize) -> Cluster {
        let mut cluster = Cluster::underlay(tag);
        cluster.start_etcd();
        let args = ["--datastore", "etcd", "--etcd-endpoints", ETCD].map(String::from);
        for i in 0..count {
            cluster.add_node(tag, i, &args);
        }
        cluster
    }

    /// Nodes registered with the Node API stand-in, one per entry of `pod_cidrs` (as a
    /// controller manager would have assigned them); their daemons are not started.
    pub fn with_kubernetes(tag: &str, pod_cidrs: &[Option<&str>]) -> Cluster {
        let mut cluster = Cluster::underlay(tag);
        let api = NodeApiServer::start_in(&cluster.underlay, API);
        let kubeconfig = cluster._etcd_dir.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let args = [
            "--datastore".to_string(),
            "kubernetes".to_string(),
            "--kubeconfig".to_string(),
            kubeconfig.display().to_string(),
        ];
        for (i, cidr) in pod_cidrs.iter().enumerate() {
            cluster.add_node(tag, i, &args);
            api.add_node(&format!("node{i}"), *cidr);
        }
        cluster.api = Some(api);
        cluster
    }

    pub fn api(&self) -> &NodeApiServer {
        self.api.as_ref().expect("a Kubernetes cluster")
    }

    pub fn start_etcd(&mut self) {
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

    pub fn add_node(&mut self, tag: &str, i: usize, datastore_args: &[String]) {
        self.add_node_on(tag, i, datastore_args, 0);
    }

    /// A node on underlay segment `segment`: 0 is 192.168.77.0/24 (with the datastore), each
    /// other one 192.168.(77 + segment).0/24 on a bridge of its own, the underlay namespace
    /// routing between them (nodes of two segments are a router apart).
    pub fn add_node_on(&mut self, tag: &str, i: usize, datastore_args: &[String], segment: u8) {
        let bridge = format!("ul{segment}");
        let net = 77 + u16::from(segment);
        if segment != 0 && !self.underlay.has_link(&bridge) {
            self.underlay
                .ip(&["link", "add", &bridge, "type", "bridge"]);
            self.underlay.ip(&[
                "addr",
                "add",
                &format!("192.168.{net}.1/24"),
                "dev",
                &bridge,
            ]);
            self.underlay.ip(&["link", "set", &bridge, "up"]);
            self.underlay
                .exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        let ns = Netns::new(&format!("{tag}n{i}"));
        let ip = format!("192.168.{net}.{}", 10 + i);
        let port = format!("{tag}p{i}");
        self.underlay.ip(&[
            "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        self.underlay
            .ip(&["link", "set", &port, "master", &bridge, "up"]);
        ns.ip(&["link", "set", "eth0", "mtu", "1500", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &format!("192.168.{net}.1"),
        ]);
        let mut datastore_args = datastore_args.to_vec();
        if self.vxlan_only && !datastore_args.iter().any(|a| a == "--direct-routing=false") {
            datastore_args.push("--direct-routing=false".into());
        }
        self.nodes.push(Node {
            name: format!("node{i}"),
            ns,
            ip,
            root: tempfile::tempdir().unwrap(),
            daemon: None,
            datastore_args,
        });
    }

    /// Every node's peers over VXLAN, also on one segment (`--direct-routing=false`): for tests
    /// of the VXLAN entries themselves. Applies to nodes added before and after.
    pub fn over_vxlan(&mut self) -> &mut Cluster {
        self.vxlan_only = true;
        for node in &mut self.nodes {
            node.datastore_args.push("--direct-routing=false".into());
        }
        self
    }

    /// [`Cluster::new`] with every peer over VXLAN (see [`Cluster::over_vxlan`]).
    pub fn new_over_vxlan(tag: &str, count: usize) -> Cluster {
        let mut cluster = Cluster::new_stopped(tag, count);
        cluster.over_vxlan();
        for node in &mut cluster.nodes {
            node.start(&[]);
        }
        cluster
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
        self.etcd = None;
        self.api = None;
    }
}

pub fn wait_for(
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

/// A ping from `pod` to `ip` every 20 ms running in the background, for checking that something
/// done meanwhile loses no packet.
pub struct SteadyPing(Child);

impl SteadyPing {
    pub fn start(pod: &Netns, ip: &str, count: u32) -> SteadyPing {
        let count = count.to_string();
        let child = Command::new("ip")
            .args([
                "netns", "exec", &pod.name, "ping", "-i", "0.02", "-c", &count, "-W", "1", ip,
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        SteadyPing(child)
    }

    /// Waits for the last ping and asserts that every one was answered.
    pub fn assert_no_loss(self) {
        let out = self.0.wait_with_output().unwrap();
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(summary.contains(" 0% packet loss"), "{summary}");
    }
}

/// iperf3 from `client` to `server_ip`; returns the source address the server saw.
pub fn seen_source(server: &Netns, client: &Netns, server_ip: &str) -> String {
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

/// A child process killed (SIGKILL) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to 10 s for `check`; fails with `log()` otherwise.
pub fn settle(what: &str, check: impl Fn() -> bool, log: impl Fn() -> String) {
    wait_for(what, Duration::from_secs(10), check, log);
}

/// A running Pod object on `node` with its addresses (first one the primary), as kubelet
/// reports it.
pub fn pod_at(ns: &str, name: &str, node: &str, ips: &[&str], labels: Value) -> Value {
    let pod_ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": pod_ips},
    })
}

/// tether-netpol on every node of `cluster` (metrics on 127.0.0.1:9403 of each node), and
/// where each logs.
pub fn start_agents(cluster: &Cluster) -> (Vec<Killed>, Vec<PathBuf>) {
    let kubeconfig = cluster._etcd_dir.path().join("kubeconfig");
    let agent = workspace_binary(&bin_dir().join("cni-overlay"), "tether-netpol");
    let logs: Vec<PathBuf> = cluster
        .nodes
        .iter()
        .map(|n| n.root.path().join("netpol.log"))
        .collect();
    let agents = cluster
        .nodes
        .iter()
        .zip(&logs)
        .map(|(node, log)| {
            Killed(
                Command::new("ip")
                    .args(["netns", "exec", &node.ns.name])
                    .arg(&agent)
                    .args(["--node-name", &node.name, "--kubeconfig"])
                    .arg(&kubeconfig)
                    .arg("--facts")
                    .arg(node.run_dir().join("overlay.json"))
                    .args(["--metrics-addr", "0.0.0.0:9403"])
                    .stderr(std::fs::File::create(log).unwrap())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    (agents, logs)
}

pub fn agent_logs(logs: &[PathBuf]) -> String {
    logs.iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// The conflist `installed` as each node's runtime runs it: the node's own run, state and
/// lease directories, plugins from `plugins`.
pub fn node_lists<'a>(
    installed: &Value,
    cluster: &'a Cluster,
    plugins: &Path,
) -> Vec<Conflist<'a>> {
    cluster
        .nodes
        .iter()
        .map(|node| {
            let mut list = installed.clone();
            list["plugins"][0]["runDir"] = json!(node.run_dir());
            list["plugins"][0]["stateDir"] = json!(node.root.path().join("state"));
            list["plugins"][0]["ipam"] = json!({"dataDir": node.root.path().join("leases")});
            Conflist {
                list,
                bin_dirs: vec![plugins.to_path_buf()],
                node: Some(&node.ns),
            }
        })
        .collect()
}
