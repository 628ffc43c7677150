#![allow(dead_code)] // Each test file uses part of this.

//! Filesystems in loop-mounted images, certificates made with openssl, and the agent started as
//! its binary, for the agent's tests. Everything is removed when dropped, also on failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tether_csi_proto::agent::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem of `kind` in a sparse image, mounted at `mnt`.
pub struct LoopFs {
    pub mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    pub fn new(kind: &str, megabytes: u64, options: &str) -> LoopFs {
        test_support::require_root();
        let dir = tempfile::Builder::new()
            .prefix("tt-agent-")
            .tempdir()
            .unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(megabytes << 20)
            .unwrap();
        let image_s = image.to_str().unwrap();
        match kind {
            "xfs" => run("mkfs.xfs", &["-q", "-f", "-m", "reflink=1", image_s]),
            "btrfs" => run("mkfs.btrfs", &["-q", "-f", image_s]),
            "ext4" => run("mkfs.ext4", &["-q", "-F", image_s]),
            other => panic!("no mkfs for {other}"),
        }
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let opts = if options.is_empty() {
            "loop".to_string()
        } else {
            format!("loop,{options}")
        };
        run("mount", &["-o", &opts, image_s, mnt.to_str().unwrap()]);
        LoopFs { mnt, _dir: dir }
    }

    /// Free bytes on the filesystem.
    pub fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.mnt.to_str().unwrap()).unwrap();
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap().to_string();
        if Command::new("umount")
            .arg(&mnt)
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            let _ = Command::new("umount").args(["-l", &mnt]).status();
        }
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it signed; and a client
/// certificate of another CA.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = |name: &str| d.join(name).to_str().unwrap().to_string();
        for ca in ["ca", "other-ca"] {
            run(
                "openssl",
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=tether test {ca}"),
                    "-keyout",
                    &p(&format!("{ca}.key")),
                    "-out",
                    &p(&format!("{ca}.crt")),
                ],
            );
        }
        // X.509 v3 (rustls accepts nothing older): the extensions make it so.
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("stranger", "other-ca", "client.ext"),
        ] {
            run(
                "openssl",
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &p(&format!("{name}.key")),
                    "-out",
                    &p(&format!("{name}.csr")),
                ],
            );
            let mut args = vec![
                "x509".to_string(),
                "-req".into(),
                "-days".into(),
                "2".into(),
                "-in".into(),
                p(&format!("{name}.csr")),
                "-CA".into(),
                p(&format!("{ca}.crt")),
                "-CAkey".into(),
                p(&format!("{ca}.key")),
                "-CAcreateserial".into(),
                "-out".into(),
                p(&format!("{name}.crt")),
            ];
            args.extend(["-extfile".into(), p(ext)]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run("openssl", &args);
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

/// The agent, started as its binary.
pub struct Agent {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Agent {
    /// Serves `exports` (EXPORT=DIR).
    pub fn start(certs: &Certs, exports: &[String]) -> Agent {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let log = certs.path(&format!("agent-{port}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_tether-nfs-agent"))
            .arg("--export")
            .arg(exports.join(","))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(certs.path("server.crt"))
            .arg("--tls-key")
            .arg(certs.path("server.key"))
            .arg("--client-ca")
            .arg(certs.path("ca.crt"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the agent never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, port, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client presenting `identity` (`client`, `stranger`, or none).
    pub async fn client(
        &self,
        certs: &Certs,
        identity: Option<&str>,
    ) -> Result<AgentClient<Channel>, tonic::transport::Error> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(certs.read("ca.crt")))
            .domain_name("localhost");
        if let Some(name) = identity {
            tls = tls.identity(Identity::from_pem(
                certs.read(&format!("{name}.crt")),
                certs.read(&format!("{name}.key")),
            ));
        }
        let channel = Channel::from_shared(format!("https://127.0.0.1:{}", self.port))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(AgentClient::new(channel))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}
