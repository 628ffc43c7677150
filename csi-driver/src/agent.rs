//! tether-nfs-agent's client: the controller asks the agent on a share's server for what NFS
//! cannot do — copy-on-write clones (snapshots, restores, volume clones) and directory limits.
//! A StorageClass names the agent (`agent: HOST:PORT`); the certificates come from
//! `--agent-tls-dir` (`ca.crt` to check the agent, `tls.crt`/`tls.key` to be checked by it: a
//! Kubernetes TLS Secret mounted there). What the agent's filesystem can do is asked once per
//! agent and export.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tether_csi_proto::agent::agent_client::AgentClient;
use tether_csi_proto::agent::{
    CapabilitiesRequest, CapabilitiesResponse, CloneRequest, CloneResponse, QuotaKind,
    SetLimitRequest, UsageRequest, UsageResponse,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

use crate::grpc::error::AgentError;

/// How long a clone may take (a server-side copy of a large tree on a filesystem that cannot
/// clone is the long case; it runs in the background like the NFS copies).
const CLONE_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// How long any other call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Clients of the agents named by StorageClasses.
pub struct Agents {
    tls: Option<ClientTlsConfig>,
    channels: Mutex<HashMap<String, Channel>>,
    capabilities: Mutex<HashMap<(String, String), CapabilitiesResponse>>,
}

impl Agents {
    /// Without certificates: a StorageClass naming an agent is refused.
    pub fn none() -> Agents {
        Agents {
            tls: None,
            channels: Mutex::default(),
            capabilities: Mutex::default(),
        }
    }

    /// With the certificates in `dir` (`ca.crt`, `tls.crt`, `tls.key`); none when the
    /// directory holds none of them (an optional Secret that does not exist), an error when it
    /// holds some.
    pub fn from_dir(dir: &Path) -> Result<Agents, String> {
        let names = ["ca.crt", "tls.crt", "tls.key"];
        let present = names.iter().filter(|n| dir.join(n).exists()).count();
        if present == 0 {
            tracing::info!(dir = %dir.display(), "no certificates for tether-nfs-agents: StorageClasses naming one are refused");
            return Ok(Agents::none());
        }
        let read = |name: &str| {
            std::fs::read(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()))
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")?))
            .identity(Identity::from_pem(read("tls.crt")?, read("tls.key")?));
        Ok(Agents {
            tls: Some(tls),
            ..Agents::none()
        })
    }

    fn client(&self, address: &str) -> Result<AgentClient<Channel>, AgentError> {
        let tls = self
            .tls
            .clone()
            .ok_or_else(|| AgentError::NotConfigured(address.to_string()))?;
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(AgentClient::new(channel.clone()));
        }
        let unreachable = |reason: String| AgentError::Unreachable {
            address: address.to_string(),
            reason,
        };
        let host = address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .unwrap_or(address);
        let channel = Endpoint::from_shared(format!("https://{address}"))
            .map_err(|e| unreachable(e.to_string()))?
            .tls_config(tls.domain_name(host))
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(AgentClient::new(channel))
    }

    fn failed(address: &str, what: &str, status: tonic::Status) -> AgentError {
        match status.code() {
            Code::Unavailable | Code::Unknown => AgentError::Unreachable {
                address: address.to_string(),
                reason: status.message().to_string(),
            },
            Code::DeadlineExceeded | Code::Cancelled => AgentError::Timeout {
                address: address.to_string(),
                what: what.to_string(),
            },
            _ => AgentError::Failed {
                address: address.to_string(),
                what: what.to_string(),
                detail: status.message().to_string(),
            },
        }
    }

    fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        request
    }

    /// What the filesystem under `export` can do (asked once, then remembered).
    pub async fn capabilities(
        &self,
        address: &str,
        export: &str,
    ) -> Result<CapabilitiesResponse, AgentError> {
        let key = (address.to_string(), export.to_string());
        if let Some(known) = self
            .capabilities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(known.clone());
        }
        let answer = self
            .client(address)?
            .capabilities(Self::request(
                CapabilitiesRequest {
                    export: export.to_string(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(|s| Self::failed(address, "Capabilities", s))?
            .into_inner();
        tracing::info!(agent = %address, export, filesystem = %answer.filesystem, reflink = answer.reflink, quota = ?answer.quota(), "agent capabilities");
        self.capabilities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, answer.clone());
        Ok(answer)
    }

    /// Clones the tree `source` to `target` (both below `export`); `into_empty`: `target` may be
    /// an empty directory.
    pub async fn clone_tree(
        &self,
        address: &str,
        export: &str,
        source: &str,
        target: &str,
        into_empty: bool,
    ) -> Result<CloneResponse, AgentError> {
        let started = std::time::Instant::now();
        let answer = self
            .client(address)?
            .clone_tree(Self::request(
                CloneRequest {
                    export: export.to_string(),
                    source: source.to_string(),
                    target: target.to_string(),
                    into_empty,
                },
                CLONE_TIMEOUT,
            ))
            .await
            .map_err(|s| Self::failed(address, &format!("cloning {source} to {target}"), s))?
            .into_inner();
        crate::metrics::metrics().agent_clone(answer.method().as_str_name(), started.elapsed());
        Ok(answer)
    }

    /// Limits `path` to `bytes`, where the filesystem has project quotas; `Ok(false)` where it
    /// has none (the volume is then not limited).
    pub async fn set_limit(
        &self,
        address: &str,
        export: &str,
        path: &str,
        bytes: u64,
    ) -> Result<bool, AgentError> {
        if self.capabilities(address, export).await?.quota() != QuotaKind::Project {
            return Ok(false);
        }
        self.client(address)?
            .set_limit(Self::request(
                SetLimitRequest {
                    export: export.to_string(),
                    path: path.to_string(),
                    bytes,
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(|s| Self::failed(address, &format!("limiting {path}"), s))?;
        Ok(true)
    }

    /// What `path`'s project quota counts: bytes used, its limit, files (no tree walk).
    pub async fn usage(
        &self,
        address: &str,
        export: &str,
        path: &str,
    ) -> Result<UsageResponse, AgentError> {
        Ok(self
            .client(address)?
            .usage(Self::request(
                UsageRequest {
                    export: export.to_string(),
                    path: path.to_string(),
                },
                CALL_TIMEOUT,
            ))
            .await
            .map_err(|s| Self::failed(address, &format!("usage of {path}"), s))?
            .into_inner())
    }
}
