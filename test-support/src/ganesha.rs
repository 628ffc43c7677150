//! A real NFS server for tests: nfs-ganesha (user space, Debian packages nfs-ganesha and
//! nfs-ganesha-vfs) with its own config, export directory, pid, log and recovery directory, in a
//! network namespace of its own so that NFSv3's rpcbind (which always listens on every address)
//! never touches the host. NFSv3 and NFSv4.1 are both served; the export's NFSv4 pseudo path is
//! its real path, so one share name works for both versions.
//!
//! The namespace holds a veth pair (ganesha needs a non-loopback address) with the server on
//! `10.251.0.1`; whatever talks to it runs in the namespace too ([`NfsServer::exec_args`]).
//! Everything is removed on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{sh, try_sh, Netns};

pub struct NfsServer {
    pub ns: Netns,
    pub address: String,
    export: PathBuf,
    dir: tempfile::TempDir,
    process: Option<Child>,
}

fn config(dir: &Path, export: &Path, address: &str) -> String {
    let recovery = dir.join("recovery");
    format!(
        r#"NFS_CORE_PARAM {{
    Protocols = 3, 4;
    NFS_Port = 2049;
    MNT_Port = 20048;
    Bind_addr = {address};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
}}
NFSV4 {{
    Only_Numeric_Owners = true;
    Graceless = true;
    Minor_Versions = 1, 2;
    RecoveryBackend = fs;
    RecoveryRoot = {recovery};
}}
EXPORT {{
    Export_Id = 1;
    Path = {export};
    Pseudo = {export};
    Access_Type = RW;
    Squash = None;
    Protocols = 3, 4;
    SecType = sys;
    # Tests change the exported files behind the server's back: no cached attributes.
    Attr_Expiration_Time = 0;
    FSAL {{ Name = VFS; }}
}}
LOG {{ Default_Log_Level = WARN; }}
"#,
        recovery = recovery.display(),
        export = export.display()
    )
}

impl NfsServer {
    /// Starts ganesha (and rpcbind) in a new namespace and waits until NFS answers.
    pub fn start(tag: &str) -> NfsServer {
        Self::serve(tag, None)
    }

    /// Like [`NfsServer::start`], exporting `export` (say, a filesystem the test mounted).
    pub fn start_exporting(tag: &str, export: &Path) -> NfsServer {
        Self::serve(tag, Some(export))
    }

    fn serve(tag: &str, export: Option<&Path>) -> NfsServer {
        crate::require_root();
        assert!(
            Path::new("/usr/bin/ganesha.nfsd").exists(),
            "nfs-ganesha is missing: run scripts/setup.sh"
        );
        let ns = Netns::new(&format!("{tag}nfs"));
        // The namespace is the server's alone, so the address never collides.
        let address = "10.251.0.1".to_string();
        ns.ip(&[
            "link", "add", "nfs0", "type", "veth", "peer", "name", "nfs1",
        ]);
        ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "nfs0"]);
        ns.ip(&["link", "set", "nfs0", "up"]);
        ns.ip(&["link", "set", "nfs1", "up"]);
        let dir = tempfile::Builder::new()
            .prefix(&format!("tt-nfs-{tag}-"))
            .tempdir()
            .unwrap();
        for sub in ["export", "recovery"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let export = export.map_or_else(|| dir.path().join("export"), Path::to_path_buf);
        std::fs::write(
            dir.path().join("ganesha.conf"),
            config(dir.path(), &export, &address),
        )
        .unwrap();
        let mut server = NfsServer {
            ns,
            address,
            export,
            dir,
            process: None,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let dir = self.dir.path();
        // rpcbind's socket and lock live in /run: a private tmpfs there keeps them off the host.
        // ganesha registers its programs once, at start: it waits (5 s at most) for rpcbind's
        // socket, else under load it can come first and never serve MOUNT ("Cannot register").
        // The shell stays as the parent of both and is what we stop.
        let script = format!(
            "mount -t tmpfs none /run || exit 1; rpcbind -f -w & rp=$!; \
             for i in $(seq 100); do [ -S /run/rpcbind.sock ] && break; sleep 0.05; done; \
             ganesha.nfsd -F -f {conf} -L {log} -p {pid} & gp=$!; \
             trap 'kill -TERM $gp; wait $gp; kill -TERM $rp; wait $rp' TERM; wait $gp",
            conf = dir.join("ganesha.conf").display(),
            log = dir.join("ganesha.log").display(),
            pid = dir.join("ganesha.pid").display(),
        );
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "unshare",
                "-m",
                "--propagation",
                "private",
            ])
            .args(["sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.process = Some(child);
        self.wait_until_serving(Duration::from_secs(30));
    }

    fn wait_until_serving(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let probe = format!("exec 3<>/dev/tcp/{}/2049", self.address);
            if self.ns.try_exec(&["bash", "-c", &probe]).status.success()
                && self
                    .ns
                    .try_exec(&["rpcinfo", "-p", "127.0.0.1"])
                    .stdout
                    .windows(b"mountd".len())
                    .any(|w| w == b"mountd")
            {
                // ganesha accepts connections a moment before its exports are loaded.
                std::thread::sleep(Duration::from_millis(300));
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nfs-ganesha did not come up within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exported directory on the host (what the server's clients see).
    pub fn export(&self) -> PathBuf {
        self.export.clone()
    }

    /// The share as `tether-csi --share` and StorageClasses name it.
    pub fn share(&self) -> String {
        self.export().display().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ganesha.log")).unwrap_or_default()
    }

    fn ganesha_pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("ganesha.pid"))
            .ok()
            .map(|p| p.trim().to_string())
    }

    /// Freezes the server (SIGSTOP): connections hang, as with a dead server on the network.
    pub fn freeze(&self) {
        if let Some(pid) = self.ganesha_pid() {
            let _ = try_sh("kill", &["-STOP", &pid]);
        }
    }

    pub fn thaw(&self) {
        if let Some(pid) = self.ganesha_pid() {
            let _ = try_sh("kill", &["-CONT", &pid]);
        }
    }

    /// Stops the server: connections are refused until [`NfsServer::restart`].
    pub fn stop(&mut self) {
        self.thaw();
        if let Some(mut child) = self.process.take() {
            let _ = try_sh("kill", &["-TERM", &child.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if child.try_wait().ok().flatten().is_none() {
                // Whatever is left in the namespace belongs to this server alone.
                for pid in sh("ip", &["netns", "pids", &self.ns.name]).split_whitespace() {
                    let _ = try_sh("kill", &["-KILL", pid]);
                }
                let _ = child.wait();
            }
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// `ip netns exec <ns>` + `program`: runs a client inside the server's namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns.name]).arg(program);
        command
    }
}

impl Drop for NfsServer {
    fn drop(&mut self) {
        self.stop();
        // Anything else a test started in the namespace.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.ns.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = try_sh("kill", &["-KILL", pid]);
            }
        }
    }
}
