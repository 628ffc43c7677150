#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! The real caller of the CNI plugins: Debian's containerd with its CRI plugin, driven over the
//! CRI (`runtime.v1`) as kubelet drives it. containerd runs inside a simulated node (a network
//! namespace) with private root, state and socket, and its CRI `cni.bin_dir` / `cni.conf_dir`
//! pointing at directories that hold what the CNI DaemonSet installs: the plugins (by
//! tether-cni-install) and the conflist of deploy/base/10-cni.yaml. A pod with a hostPort and
//! bandwidth annotations gets its network from the whole chain; its port is reached from
//! another namespace, from the node and from 127.0.0.1; stopping and removing the sandbox
//! leaves no lease, veth, nftables element, ifb or conntrack entry behind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use test_support::kube_proxy;
use test_support::{require_root, sh, try_sh, workspace_binary, Netns};
use tether_csi_proto::cri::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, *,
};

fn bin_dir() -> PathBuf {
    let me = std::env::current_exe().unwrap();
    let dir = test_support::chain::bin_dir_of(&me);
    for b in [
        "cni-overlay",
        "cni-bridge",
        "cni-ipam",
        "cni-portmap",
        "cni-bandwidth",
        "tether-cni-install",
    ] {
        workspace_binary(&dir.join("placeholder"), b);
    }
    dir
}

fn deployed_conflist() -> Value {
    serde_json::from_str(&test_support::deployed_conflist()).unwrap()
}

/// containerd with its CRI plugin inside `node`; stopped, and its sandboxes removed, on drop.
struct Runtime {
    dir: tempfile::TempDir,
    daemon: Child,
    node: Netns,
    sandboxes: Vec<String>,
    /// The sandbox namespaces (`cni-*`) that existed before: only later ones are this test's.
    netns_before: Vec<String>,
}

fn sandbox_netns() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni-"))
                .collect()
        })
        .unwrap_or_default()
}

impl Runtime {
    fn start(node: Netns) -> Runtime {
        let dir = tempfile::Builder::new()
            .prefix("tt-cri")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{0}/root"
state = "{0}/state"
[grpc]
  address = "{0}/containerd.sock"
[ttrpc]
  address = "{0}/containerd.sock.ttrpc"
[debug]
  address = "{0}/debug.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "tether.local/pause:test"
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{0}/cni/bin"
    conf_dir = "{0}/cni/net.d"
"#,
            d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        // nsenter, not `ip netns exec`: that one also remounts /sys in a new mount namespace,
        // which hides the cgroup mounts runc needs.
        let daemon = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["containerd", "--config"])
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd is missing: run scripts/setup.sh");
        let rt = Runtime {
            dir,
            daemon,
            node,
            sandboxes: Vec::new(),
            netns_before: sandbox_netns(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !rt.ctr_ok(&["version"]) {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                rt.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        rt
    }

    fn socket(&self) -> String {
        self.dir
            .path()
            .join("containerd.sock")
            .display()
            .to_string()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    fn ctr_ok(&self, args: &[&str]) -> bool {
        Command::new("ctr")
            .args(["-a", &self.socket(), "-n", "k8s.io"])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn import(&self, archive: &Path) {
        let archive = archive.display().to_string();
        let socket = self.socket();
        sh(
            "ctr",
            &["-a", &socket, "-n", "k8s.io", "images", "import", &archive],
        );
    }

    async fn clients(
        &self,
    ) -> (
        RuntimeServiceClient<tonic::transport::Channel>,
        ImageServiceClient<tonic::transport::Channel>,
    ) {
        let channel = tether_csi::client::channel(&self.socket()).await.unwrap();
        (
            RuntimeServiceClient::new(channel.clone()),
            ImageServiceClient::new(channel),
        )
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if !self.sandboxes.is_empty() {
            let socket = self.socket();
            let ids = self.sandboxes.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(channel) = tether_csi::client::channel(&socket).await {
                    let mut cri = RuntimeServiceClient::new(channel);
                    for id in ids {
                        let _ = cri
                            .stop_pod_sandbox(StopPodSandboxRequest {
                                pod_sandbox_id: id.clone(),
                            })
                            .await;
                        let _ = cri
                            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                            .await;
                    }
                }
            });
        }
        let _ = Command::new("kill")
            .arg(self.daemon.id().to_string())
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        let _ = try_sh(
            "umount",
            &["-R", &self.dir.path().join("root").display().to_string()],
        );
        // A sandbox whose setup failed half-way may leave its namespace: ours go.
        for name in sandbox_netns() {
            if !self.netns_before.contains(&name) {
                let _ = try_sh("ip", &["netns", "del", &name]);
            }
        }
        for dir in [
            "/run/containerd/runc/k8s.io",
            "/run/containerd/runc",
            "/run/containerd/s",
            "/run/containerd",
        ] {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Connects from the network namespace `ns` (a name under /var/run/netns) to `host:port` and
/// returns what the server wrote (busybox nc), if anything within 3 s.
fn fetch(ns: &str, host: &str, port: u16) -> Option<String> {
    let out = try_sh(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "timeout",
            "3",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{host}/{port} && head -c 64 <&3"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// The sandbox network namespace (made by containerd) that holds `ip`.
fn sandbox_netns_of(ip: &str) -> String {
    sandbox_netns()
        .into_iter()
        .find(|ns| {
            String::from_utf8_lossy(&try_sh("ip", &["-n", ns, "-o", "addr"]).stdout)
                .contains(&format!(" {ip}/"))
        })
        .unwrap_or_else(|| panic!("no sandbox namespace holds {ip}"))
}

/// A node namespace cabled to `outside` (node 192.0.2.1, outside 192.0.2.2), containerd with its
/// CRI inside it, and what the CNI DaemonSet puts on a node: the plugins, the node facts
/// tether-overlayd would write, and the deployed conflist (run and data directories moved under
/// the test); the busybox and pause images imported.
fn node_with_tether(tag: &str) -> (Runtime, Netns) {
    require_root();
    let bins = bin_dir();
    let node = Netns::new(&format!("{tag}n"));
    let outside = Netns::new(&format!("{tag}o"));
    node.cable("up0", "192.0.2.1/24", &outside, "o0", "192.0.2.2/24");
    node.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    let rt = Runtime::start(node);
    let d = rt.dir.path().to_path_buf();
    let install = Command::new(bins.join("tether-cni-install"))
        .arg("--from")
        .arg(&bins)
        .arg("--bin-dir")
        .arg(d.join("cni/bin"))
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    // containerd also runs the standard `loopback` plugin for every sandbox; nodes have it from
    // the distribution's CNI plugins (kubeadm's kubernetes-cni, k3s, RKE2 ship it).
    std::fs::copy("/usr/lib/cni/loopback", d.join("cni/bin/loopback")).unwrap();
    std::fs::create_dir_all(d.join("run")).unwrap();
    std::fs::write(
        d.join("run/overlay.json"),
        json!({"nodeName": "crin", "subnets": ["10.94.0.0/24"], "clusterCidrs": ["10.94.0.0/16"],
               "mtu": 1400, "vxlanDevice": "tether.1"})
        .to_string(),
    )
    .unwrap();
    let mut conflist = deployed_conflist();
    conflist["plugins"][0]["runDir"] = json!(d.join("run"));
    conflist["plugins"][0]["stateDir"] = json!(d.join("state-cni"));
    conflist["plugins"][0]["ipam"] = json!({"dataDir": d.join("leases")});
    std::fs::create_dir_all(d.join("cni/net.d")).unwrap();
    std::fs::write(d.join("cni/net.d/10-tether.conflist"), conflist.to_string()).unwrap();

    // Images without a registry: busybox, and busybox sleeping as the pause image.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/busybox-image.sh");
    for (archive, name, cmd) in [
        ("busybox.tar", "tether.local/busybox:test", r#"["/bin/sh"]"#),
        (
            "pause.tar",
            "tether.local/pause:test",
            r#"["/bin/sleep","2147483647"]"#,
        ),
    ] {
        let out = d.join(archive);
        sh(
            "bash",
            &[
                &script.display().to_string(),
                &out.display().to_string(),
                name,
                cmd,
            ],
        );
        rt.import(&out);
    }
    std::fs::create_dir_all(d.join("logs")).unwrap();
    (rt, outside)
}

type Cri = RuntimeServiceClient<tonic::transport::Channel>;

/// The sandbox config kubelet sends for pod `name` with `port_mappings`.
fn sandbox_config(rt: &Runtime, name: &str, port_mappings: Vec<PortMapping>) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: rt.dir.path().join("logs").display().to_string(),
        port_mappings,
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption::default()),
                privileged: false,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// RunPodSandbox; the sandbox id and the pod's address.
fn run_sandbox(
    runtime: &tokio::runtime::Runtime,
    cri: &mut Cri,
    rt: &mut Runtime,
    config: &PodSandboxConfig,
) -> (String, String) {
    let sandbox = runtime
        .block_on(cri.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", rt.log()))
        .into_inner()
        .pod_sandbox_id;
    rt.sandboxes.push(sandbox.clone());
    let status = runtime
        .block_on(cri.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox.clone(),
            verbose: false,
        }))
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    (sandbox, status.network.unwrap().ip)
}

/// A busybox container in `sandbox` answering `hello` on port 80; its id.
fn start_server(
    runtime: &tokio::runtime::Runtime,
    cri: &mut Cri,
    rt: &Runtime,
    sandbox: &str,
    config: &PodSandboxConfig,
) -> String {
    let container = runtime
        .block_on(cri.create_container(CreateContainerRequest {
            pod_sandbox_id: sandbox.to_string(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "server".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: "tether.local/busybox:test".into(),
                    ..Default::default()
                }),
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "while true; do echo hello | nc -l -p 80; done".into(),
                ],
                log_path: "server.log".into(),
                ..Default::default()
            }),
            sandbox_config: Some(config.clone()),
        }))
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", rt.log()))
        .into_inner()
        .container_id;
    runtime
        .block_on(cri.start_container(StartContainerRequest {
            container_id: container.clone(),
        }))
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", rt.log()));
    container
}

fn block_on_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn a_pod_through_the_cri_gets_host_ports_and_bandwidth_and_leaves_nothing() {
    let (mut rt, outside) = node_with_tether("cri");
    let d = rt.dir.path().to_path_buf();
    let runtime = block_on_runtime();
    let (mut cri, mut images) = runtime.block_on(rt.clients());
    let version = runtime
        .block_on(cri.version(VersionRequest {
            version: "v1".into(),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(version.runtime_name, "containerd");
    assert!(runtime
        .block_on(images.image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: "tether.local/busybox:test".into(),
                ..Default::default()
            }),
            verbose: false,
        }))
        .unwrap()
        .into_inner()
        .image
        .is_some());

    // RunPodSandbox as kubelet sends it for a pod with a hostPort and bandwidth annotations.
    let mut config = sandbox_config(
        &rt,
        "web",
        vec![
            PortMapping {
                protocol: Protocol::Tcp as i32,
                container_port: 80,
                host_port: 8080,
                host_ip: String::new(),
            },
            PortMapping {
                protocol: Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: String::new(),
            },
        ],
    );
    config.annotations = HashMap::from([
        ("kubernetes.io/ingress-bandwidth".into(), "10M".into()),
        ("kubernetes.io/egress-bandwidth".into(), "10M".into()),
    ]);
    let (sandbox, pod_ip) = run_sandbox(&runtime, &mut cri, &mut rt, &config);
    assert!(pod_ip.starts_with("10.94.0."), "{pod_ip}");
    let container = start_server(&runtime, &mut cri, &rt, &sandbox, &config);

    let node = &rt.node;
    let deadline = Instant::now() + Duration::from_secs(15);
    while fetch(&outside.name, "192.0.2.1", 8080).is_none() {
        assert!(
            Instant::now() < deadline,
            "hostPort never answered\n{}",
            rt.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // From another namespace, from the node, and from the node's 127.0.0.1.
    assert_eq!(
        fetch(&outside.name, "192.0.2.1", 8080).as_deref(),
        Some("hello")
    );
    assert_eq!(
        fetch(&node.name, "192.0.2.1", 8080).as_deref(),
        Some("hello")
    );
    assert_eq!(
        fetch(&node.name, "127.0.0.1", 8080).as_deref(),
        Some("hello")
    );
    // Bandwidth annotations became shaping: a root qdisc on the host veth, an ifb for egress.
    let links = node.ip(&["-o", "link"]);
    assert!(links.contains("bwp"), "{links}");
    // A UDP flow to the mapped port leaves a conntrack entry for the DEL to flush.
    let _ = outside.try_exec(&["bash", "-c", "echo hi > /dev/udp/192.0.2.1/5353"]);

    // StopPodSandbox and RemovePodSandbox as kubelet calls them (twice, as it may).
    runtime
        .block_on(cri.stop_container(StopContainerRequest {
            container_id: container.clone(),
            timeout: 0,
        }))
        .unwrap();
    runtime
        .block_on(cri.remove_container(RemoveContainerRequest {
            container_id: container,
        }))
        .unwrap();
    for _ in 0..2 {
        runtime
            .block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            }))
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", rt.log()));
    }
    runtime
        .block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        }))
        .unwrap();
    rt.sandboxes.clear();

    let leases: Vec<String> = std::fs::read_dir(d.join("leases/tether"))
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(leases.is_empty(), "leases left: {leases:?}");
    let veths = node.ip_json(&["link", "show", "type", "veth"]);
    let veths: Vec<&str> = veths
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "up0")
        .collect();
    assert!(veths.is_empty(), "veths left: {veths:?}");
    assert!(!node.ip(&["-o", "link"]).contains("bwp"), "ifb left");
    let tables =
        String::from_utf8_lossy(&node.try_exec(&["nft", "list", "tables"]).stdout).into_owned();
    assert!(
        !tables.contains("tether-hostports") && !tables.contains("tether-portmap"),
        "{tables}"
    );
    let conntrack =
        String::from_utf8_lossy(&node.try_exec(&["cat", "/proc/net/nf_conntrack"]).stdout)
            .into_owned();
    assert!(!conntrack.contains("dport=5353"), "{conntrack}");
    assert_eq!(fetch(&outside.name, "192.0.2.1", 8080), None);
}

/// Two pods of one node through containerd's CRI with br_netfilter's `bridge-nf-call-iptables`
/// at 1 (kubeadm's setting): one serves behind a hostPort and behind a Service (kube-proxy's
/// iptables-mode rules, written as kube-proxy writes them), and the other reaches it both ways;
/// the server reaches itself both ways too (hairpin).
#[test]
fn pods_of_one_node_reach_each_other_through_host_ports_and_services() {
    let (mut rt, _outside) = node_with_tether("cris");
    for table in ["iptables", "ip6tables"] {
        rt.node.exec(&[
            "sysctl",
            "-qw",
            &format!("net.bridge.bridge-nf-call-{table}=1"),
        ]);
    }
    let runtime = block_on_runtime();
    let (mut cri, _images) = runtime.block_on(rt.clients());
    let server_config = sandbox_config(
        &rt,
        "server",
        vec![PortMapping {
            protocol: Protocol::Tcp as i32,
            container_port: 80,
            host_port: 8080,
            host_ip: String::new(),
        }],
    );
    let (server, server_ip) = run_sandbox(&runtime, &mut cri, &mut rt, &server_config);
    start_server(&runtime, &mut cri, &rt, &server, &server_config);
    let client_config = sandbox_config(&rt, "client", Vec::new());
    let (client, client_ip) = run_sandbox(&runtime, &mut cri, &mut rt, &client_config);
    kube_proxy::install(
        &rt.node,
        kube_proxy::Mode::Iptables,
        &kube_proxy::Node {
            cluster_cidr: "10.94.0.0/16".into(),
            service_cidr: "10.96.0.0/16".into(),
            node_ips: vec!["192.0.2.1".parse().unwrap()],
        },
        &[kube_proxy::Service {
            name: "default/server:http".into(),
            cluster_ip: "10.96.0.10".parse().unwrap(),
            port: 80,
            protocol: "tcp",
            node_port: None,
            endpoints: vec![format!("{server_ip}:80").parse().unwrap()],
        }],
    );
    let (server_ns, client_ns) = (sandbox_netns_of(&server_ip), sandbox_netns_of(&client_ip));
    let deadline = Instant::now() + Duration::from_secs(15);
    while fetch(&client_ns, &server_ip, 80).is_none() {
        assert!(
            Instant::now() < deadline,
            "the server pod never answered\n{}",
            rt.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (from, what, host, port) in [
        (
            &client_ns,
            "pod -> hostPort via the node's address",
            "192.0.2.1",
            8080,
        ),
        (
            &client_ns,
            "pod -> ClusterIP -> pod of its node",
            "10.96.0.10",
            80,
        ),
        (&server_ns, "pod -> its own hostPort", "192.0.2.1", 8080),
        (&server_ns, "pod -> its own Service", "10.96.0.10", 80),
    ] {
        // busybox nc serves one connection at a time: between two, the port is closed briefly.
        let answer = (0..10).find_map(|_| {
            fetch(from, host, port).or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        });
        assert_eq!(
            answer.as_deref(),
            Some("hello"),
            "{what} with bridge-nf-call-iptables=1\n{}",
            rt.log()
        );
    }
    for sandbox in [server, client] {
        runtime
            .block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: sandbox.clone(),
            }))
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", rt.log()));
        runtime
            .block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: sandbox,
            }))
            .unwrap();
    }
    rt.sandboxes.clear();
    let routes = rt.node.ip(&["route", "show", "10.94.0.0/16"]);
    assert!(
        !routes.contains(&server_ip) && !routes.contains(&client_ip),
        "pod routes left: {routes}"
    );
}
