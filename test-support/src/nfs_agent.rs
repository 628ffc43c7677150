//! tether-nfs-agent started as its binary for a test (on the host, or in a namespace such as an
//! NFS server's), killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tls::Certs;
use crate::Netns;

pub struct AgentProcess {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Serves `exports` (EXPORT=DIR) on 127.0.0.1:`port` (0: a free one of the host), inside
    /// `netns` if given, with `certs`' server certificate, accepting clients of its CA.
    pub fn start(
        binary: &Path,
        certs: &Certs,
        exports: &[String],
        netns: Option<&Netns>,
        port: u16,
    ) -> AgentProcess {
        let port = if port == 0 {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        } else {
            port
        };
        let log = certs.path(&format!("agent-{port}.log"));
        let mut command = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
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
        let agent = AgentProcess { child, port, log };
        let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = match netns {
                Some(ns) => ns.try_exec(&["bash", "-c", &probe]).status.success(),
                None => std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            };
            if up {
                return agent;
            }
            assert!(
                Instant::now() < deadline,
                "the agent never listened:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it now (a test of an agent that is gone).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
