#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! containerd (Debian's 1.6, started here with private root, state and socket) runs two busybox
//! containers whose network comes from cni-bridge + cni-ipam through a conflist, and they reach
//! each other. `ctr run --cni` reads the fixed paths /etc/cni/net.d, /opt/cni/bin and /var/lib/cni,
//! so ctr runs inside a simulated node (its own netns, so cni0 is the node's) with overlay mounts
//! over those paths in a private mount namespace: the host's directories are never touched.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::{require_root, sh, try_sh, workspace_binary, Netns};

struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    namespace: String,
    node: Netns,
    run_containerd_existed: bool,
    containers: Vec<String>,
}

impl Containerd {
    fn start() -> Containerd {
        let run_containerd_existed = Path::new("/run/containerd").exists();
        let dir = tempfile::Builder::new()
            .prefix("tt-ctrd")
            .tempdir_in("/tmp")
            .unwrap();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{0}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{0}/debug.sock\"\n",
            d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("containerd is missing: run scripts/setup.sh");
        let ctrd = Containerd {
            namespace: format!("tt-e2e-{}", std::process::id()),
            node: Netns::new("ctrnode"),
            dir,
            daemon,
            run_containerd_existed,
            containers: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !ctrd.ctr_ok(&["version"]) {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up: {}",
                ctrd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ctrd
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

    fn ctr_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec![
            "-a".to_string(),
            self.socket(),
            "-n".into(),
            self.namespace.clone(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    fn ctr_ok(&self, args: &[&str]) -> bool {
        Command::new("ctr")
            .args(self.ctr_args(args))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn ctr(&self, args: &[&str]) -> String {
        let args = self.ctr_args(args);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("ctr", &refs)
    }

    /// Runs ctr inside the node, where /etc/cni/net.d, /opt/cni/bin and /var/lib/cni are ours.
    fn ctr_in_node(&self, args: &[&str]) -> std::process::Output {
        let mut full = vec![
            "netns".to_string(),
            "exec".into(),
            self.node.name.clone(),
            "bash".into(),
            self.dir.path().join("in-node.sh").display().to_string(),
            "ctr".into(),
        ];
        full.extend(self.ctr_args(args));
        Command::new("ip").args(&full).output().unwrap()
    }

    fn cni_dir(&self) -> PathBuf {
        self.dir.path().join("cni")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = Command::new("ctr")
                .args(self.ctr_args(&["task", "kill", "-s", "KILL", id]))
                .output();
            std::thread::sleep(Duration::from_millis(200));
            let _ = Command::new("ctr")
                .args(self.ctr_args(&["task", "rm", "-f", id]))
                .output();
            let _ = Command::new("ctr")
                .args(self.ctr_args(&["container", "rm", id]))
                .output();
        }
        let _ = Command::new("ctr")
            .args(self.ctr_args(&["images", "rm", "docker.io/tether/busybox:e2e"]))
            .output();
        let _ = Command::new("ctr")
            .args(self.ctr_args(&["namespaces", "rm", &self.namespace]))
            .output();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Shims keep their state under /run/containerd whatever the config says.
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        if !self.run_containerd_existed {
            let _ = std::fs::remove_dir_all("/run/containerd");
        }
        let _ = try_sh(
            "umount",
            &["-R", &self.dir.path().join("root").display().to_string()],
        );
    }
}

#[test]
fn containerd_runs_two_containers_that_reach_each_other() {
    require_root();
    let debug_dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let bridge = workspace_binary(&debug_dir.join("x"), "cni-bridge");
    let ipam = workspace_binary(&debug_dir.join("x"), "cni-ipam");
    let mut ctrd = Containerd::start();
    let d = ctrd.dir.path().to_path_buf();

    let image = d.join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/busybox-image.sh");
    sh(
        "bash",
        &[&script.display().to_string(), &image.display().to_string()],
    );
    ctrd.ctr(&["images", "import", &image.display().to_string()]);

    let cni = ctrd.cni_dir();
    std::fs::create_dir_all(cni.join("bin")).unwrap();
    std::fs::create_dir_all(cni.join("net.d")).unwrap();
    std::fs::copy(&bridge, cni.join("bin/cni-bridge")).unwrap();
    std::fs::copy(&ipam, cni.join("bin/cni-ipam")).unwrap();
    let leases = d.join("leases");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "tether-e2e",
        "plugins": [{
            "type": "cni-bridge", "bridge": "cni0", "isGateway": true, "isDefaultGateway": true,
            "ipam": {"type": "cni-ipam", "dataDir": leases, "ranges": [[{"subnet": "10.66.0.0/24"}]]}
        }]
    });
    std::fs::write(cni.join("net.d/10-tether.conflist"), conflist.to_string()).unwrap();
    let mut script = String::from("set -e\n");
    for (target, name) in [("/etc", "etc"), ("/opt", "opt"), ("/var/lib", "varlib")] {
        let (up, work) = (
            d.join(format!("ov/{name}/up")),
            d.join(format!("ov/{name}/work")),
        );
        std::fs::create_dir_all(&up).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        script.push_str(&format!(
            "mount -t overlay overlay -o lowerdir={target},upperdir={},workdir={} {target}\n",
            up.display(),
            work.display()
        ));
    }
    script.push_str(&format!(
        "mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/cni\n\
         mount --bind {0}/net.d /etc/cni/net.d\nmount --bind {0}/bin /opt/cni/bin\n\"$@\"\n",
        cni.display()
    ));
    std::fs::write(d.join("in-node.sh"), script).unwrap();

    ctrd.containers.push("c1".into());
    let out = ctrd.ctr_in_node(&[
        "run",
        "--cni",
        "-d",
        "docker.io/tether/busybox:e2e",
        "c1",
        "sleep",
        "600",
    ]);
    assert!(
        out.status.success(),
        "ctr run c1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // c1's address, from the lease cni-ipam wrote for it.
    let net_dir = leases.join("tether-e2e");
    let c1_id = format!("{}-c1", ctrd.namespace);
    let c1_ip = std::fs::read_dir(&net_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| {
            n.parse::<std::net::IpAddr>().is_ok()
                && std::fs::read_to_string(net_dir.join(n))
                    .unwrap()
                    .starts_with(&c1_id)
        })
        .expect("c1 holds a lease");

    ctrd.containers.push("c2".into());
    let out = ctrd.ctr_in_node(&[
        "run",
        "--cni",
        "--rm",
        "docker.io/tether/busybox:e2e",
        "c2",
        "sh",
        "-c",
        &format!("ip -4 addr show eth0 && ping -c 3 -W 2 {c1_ip}"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "c2 cannot reach c1 at {c1_ip}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("inet 10.66.0."),
        "c2 has an address from cni-ipam: {stdout}"
    );
    assert!(stdout.contains("3 packets received"), "{stdout}");

    // ctr never DELs detached containers (it DELs --rm ones itself): DEL c1 as the runtime would,
    // with an empty CNI_NETNS, and check that both leases are gone.
    ctrd.ctr(&["task", "kill", "-s", "KILL", "c1"]);
    let plugin_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "tether-e2e", "type": "cni-bridge", "bridge": "cni0",
        "isGateway": true, "isDefaultGateway": true,
        "ipam": {"type": "cni-ipam", "dataDir": leases, "ranges": [[{"subnet": "10.66.0.0/24"}]]}
    });
    let cni_path = cni.join("bin").display().to_string();
    test_support::run_plugin_in(
        Some(&ctrd.node),
        &cni.join("bin/cni-bridge"),
        &[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", &c1_id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
            ("CNI_PATH", &cni_path),
        ],
        &plugin_conf,
    )
    .ok();
    let left: Vec<String> = std::fs::read_dir(&net_dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    assert!(left.is_empty(), "leases left: {left:?}");
}
