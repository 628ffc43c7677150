//! A private containerd for end-to-end tests: its own config, root, state and socket under a
//! temporary directory, its own containerd namespace, and a simulated node (network namespace)
//! for containers with networking. Everything is removed on drop.

#![allow(dead_code)] // Each test binary uses a different part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_support::{sh, try_sh, Netns};

pub struct Containerd {
    pub images: Vec<String>,
    pub dir: tempfile::TempDir,
    daemon: Child,
    pub namespace: String,
    pub node: Netns,
    pub containers: Vec<String>,
}

impl Containerd {
    pub fn start() -> Containerd {
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
            images: Vec::new(),
            namespace: format!("tt-e2e-{}", std::process::id()),
            node: Netns::new("ctrnode"),
            dir,
            daemon,
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

    pub fn socket(&self) -> String {
        self.dir
            .path()
            .join("containerd.sock")
            .display()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    pub fn ctr_args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec![
            "-a".to_string(),
            self.socket(),
            "-n".into(),
            self.namespace.clone(),
        ];
        all.extend(args.iter().map(|a| a.to_string()));
        all
    }

    pub fn ctr_ok(&self, args: &[&str]) -> bool {
        Command::new("ctr")
            .args(self.ctr_args(args))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    pub fn ctr(&self, args: &[&str]) -> String {
        let args = self.ctr_args(args);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        sh("ctr", &refs)
    }

    /// Runs ctr inside the node, where /etc/cni/net.d, /opt/cni/bin and /var/lib/cni are ours.
    pub fn ctr_in_node(&self, args: &[&str]) -> std::process::Output {
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

    pub fn cni_dir(&self) -> PathBuf {
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
        for image in &self.images {
            let _ = Command::new("ctr")
                .args(self.ctr_args(&["images", "rm", image]))
                .output();
        }
        let _ = Command::new("ctr")
            .args(self.ctr_args(&["namespaces", "rm", &self.namespace]))
            .output();
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Shims keep their state under /run/containerd whatever the config says. Other tests may
        // run containerd at the same time: only empty directories go.
        let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&self.namespace));
        for dir in [
            "/run/containerd/runc",
            "/run/containerd/s",
            "/run/containerd",
        ] {
            let _ = std::fs::remove_dir(dir);
        }
        let _ = try_sh(
            "umount",
            &["-R", &self.dir.path().join("root").display().to_string()],
        );
    }
}
