#![allow(dead_code)] // Each test file uses part of this.

//! The agent started as its binary, and a client of it, for the agent's tests (filesystems and
//! certificates come from test_support).

use std::path::Path;

use test_support::nfs_agent::AgentProcess;
use test_support::tls::Certs;
use tether_csi_proto::agent::agent_client::AgentClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub use test_support::run_ok as run;
pub use test_support::storage::LoopFs;

/// The agent serving `exports` (EXPORT=DIR) on a free port of 127.0.0.1.
pub struct Agent(pub AgentProcess);

impl Agent {
    pub fn start(certs: &Certs, exports: &[String]) -> Agent {
        Agent(AgentProcess::start(
            Path::new(env!("CARGO_BIN_EXE_tether-nfs-agent")),
            certs,
            exports,
            None,
            0,
        ))
    }

    pub fn log(&self) -> String {
        self.0.log()
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
        let channel = Channel::from_shared(format!("https://127.0.0.1:{}", self.0.port))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(AgentClient::new(channel))
    }
}

pub fn write(path: &Path, data: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}
