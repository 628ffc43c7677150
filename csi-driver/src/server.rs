//! The command line and the gRPC server on a unix socket.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tether_csi_proto::v1::{controller_server, identity_server, node_server};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::StreamExt;

use crate::controller::ControllerService;
use crate::driver::{Driver, Tuning};

use crate::grpc::{ControllerServer, IdentityService, NodeServer};
use crate::node::NodeService;
use crate::share::ids::{NfsVersion, ShareRef};
use crate::share::nfs::{ClientOptions, NfsPool};

/// How long requests in flight may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Identity + Controller (a Deployment; unprivileged).
    Controller,
    /// Identity + Node (a DaemonSet; privileged).
    Node,
    /// Everything in one process.
    All,
}

#[derive(Debug, Parser)]
#[command(
    name = "tether-csi",
    version,
    about = "Tether CSI driver for volumes on NFS shares"
)]
pub struct Args {
    #[arg(long, env = "TETHER_CSI_MODE", value_enum, default_value = "all")]
    pub mode: Mode,
    /// gRPC endpoint: unix:///path/to/csi.sock (or a plain path).
    #[arg(long, env = "CSI_ENDPOINT", default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's name (the Kubernetes node name).
    #[arg(long, env = "TETHER_CSI_NODE_ID", default_value = "")]
    pub node_id: String,
    /// Shares this instance serves: probed by Probe, listed by ListVolumes/ListSnapshots,
    /// counted by GetCapacity. SERVER:/EXPORT, optionally ?nfsvers=3. Repeatable or comma-separated.
    #[arg(long = "share", env = "TETHER_CSI_SHARES", value_delimiter = ',')]
    pub shares: Vec<String>,
    /// Seconds any NFS call, mount or unmount may take before it fails.
    #[arg(long, env = "TETHER_CSI_NFS_TIMEOUT", default_value_t = 10)]
    pub nfs_timeout: u64,
    /// AUTH_SYS identity for the controller's NFS calls.
    #[arg(long, env = "TETHER_CSI_NFS_UID", default_value_t = 0)]
    pub nfs_uid: u32,
    /// AUTH_SYS group for the controller's NFS calls.
    #[arg(long, env = "TETHER_CSI_NFS_GID", default_value_t = 0)]
    pub nfs_gid: u32,
    /// Use a privileged (< 1024) source port, for servers that export with `secure`; needs
    /// CAP_NET_BIND_SERVICE.
    #[arg(long, env = "TETHER_CSI_PRIVILEGED_PORT")]
    pub privileged_port: bool,
    /// Log lines as `text` or `json` (one object per line, for log collectors).
    #[arg(long, env = "TETHER_LOG_FORMAT", default_value = "text")]
    pub log_format: tether_observe::logging::LogFormat,
    /// Controller mode: snapshots and clones copied at once (more wait in a queue).
    #[arg(long, env = "TETHER_CSI_MAX_COPIES", default_value_t = 4)]
    pub max_copies: usize,
    /// Controller mode: seconds a CreateSnapshot/CreateVolume waits for its copy before it
    /// answers "in progress" (ready_to_use: false, or ABORTED) and lets the caller poll. Keep it
    /// below the sidecars' --timeout.
    #[arg(long, env = "TETHER_CSI_COPY_WAIT", default_value_t = 5)]
    pub copy_wait: u64,
    /// Controller mode: seconds between sweeps of the shares for what interrupted or abandoned
    /// requests left (trash, temporary files, half-made volumes, orphan name claims).
    #[arg(long, env = "TETHER_CSI_SWEEP_INTERVAL", default_value_t = 600)]
    pub sweep_interval: u64,
    /// Controller mode: seconds a leftover must be old before the sweep removes it.
    #[arg(long, env = "TETHER_CSI_LEFTOVER_AGE", default_value_t = 3600)]
    pub leftover_age: u64,
    /// Node mode: seconds between walks of a directory volume's tree to count its usage (in
    /// the background; NodeGetVolumeStats answers with the latest count).
    #[arg(long, env = "TETHER_CSI_USAGE_REFRESH", default_value_t = 60)]
    pub usage_refresh: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (and /healthz, /readyz), e.g.
    /// 0.0.0.0:9810; off when empty.
    #[arg(long, env = "TETHER_CSI_METRICS_ADDR", default_value = "")]
    pub metrics_addr: String,
    /// A directory with the certificates to reach tether-nfs-agents (`ca.crt` that signed the
    /// agents', and this client's `tls.crt` and `tls.key`: a TLS Secret). The controller needs
    /// it for StorageClasses that name an agent; on a node it lets NodeGetVolumeStats ask the
    /// agent for a quota-limited volume's usage instead of counting its tree.
    #[arg(long, env = "TETHER_CSI_AGENT_TLS_DIR")]
    pub agent_tls_dir: Option<PathBuf>,
    /// Node mode: where image volumes' directories are mounted privately.
    #[arg(
        long,
        env = "TETHER_CSI_STATE_DIR",
        default_value = "/var/lib/tether-csi"
    )]
    pub state_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--endpoint {0:?} is not a unix socket (unix:///path)")]
    Endpoint(String),
    #[error("--share {0:?}: {1}")]
    Share(String, String),
    #[error("--metrics-addr {0:?}: {1}")]
    Metrics(String, String),
    #[error("--node-id is required in node mode")]
    NodeId,
    #[error("--agent-tls-dir: {0}")]
    AgentTls(String),
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("installing the signal handler: {0}")]
    Signal(std::io::Error),
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// `unix:///a/b`, `unix:/a/b` or `/a/b` -> `/a/b`.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServeError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') {
        return Err(ServeError::Endpoint(endpoint.into()));
    }
    Ok(PathBuf::from(path))
}

/// `server:/export` with an optional `?nfsvers=3`.
pub fn parse_share(text: &str) -> Result<ShareRef, ServeError> {
    let bad = |why: String| ServeError::Share(text.into(), why);
    let (spec, query) = text.split_once('?').unwrap_or((text, ""));
    let version = match query.strip_prefix("nfsvers=") {
        None if query.is_empty() => NfsVersion::V41,
        Some(v) => {
            NfsVersion::parse(v).ok_or_else(|| bad(format!("NFS version {v} is not 3 or 4.1")))?
        }
        None => return Err(bad(format!("unknown option {query:?}"))),
    };
    let slash = spec
        .find(":/")
        .ok_or_else(|| bad("expected SERVER:/EXPORT".into()))?;
    ShareRef::new(&spec[..slash], &spec[slash + 1..], version).map_err(|e| bad(e.to_string()))
}

/// Starts the metrics endpoint in the background.
async fn serve_metrics(addr: &str) -> Result<(), ServeError> {
    let parsed: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| ServeError::Metrics(addr.into(), "not an address:port".into()))?;
    let listener = tether_observe::http::bind(parsed)
        .await
        .map_err(|e| ServeError::Metrics(addr.into(), e.to_string()))?;
    let endpoints = std::sync::Arc::new(tether_observe::http::Endpoints {
        registry: crate::metrics::metrics().registry(),
        healthz: Box::new(|| Ok(())),
        readyz: Box::new(|| Ok(())),
        queries: Vec::new(),
    });
    tracing::info!(%parsed, "serving metrics");
    tokio::spawn(tether_observe::http::serve(listener, endpoints));
    Ok(())
}

/// Removes a socket file left by an earlier run; refuses to remove anything else.
fn remove_stale_socket(path: &std::path::Path) -> Result<(), ServeError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|source| ServeError::Socket {
                path: path.into(),
                source,
            })
        }
        Ok(_) => Err(ServeError::Socket {
            path: path.into(),
            source: std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not removing it",
            ),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ServeError::Socket {
            path: path.into(),
            source,
        }),
    }
}

pub async fn serve(args: Args) -> Result<(), ServeError> {
    let socket = socket_path(&args.endpoint)?;
    let shares = args
        .shares
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| parse_share(s))
        .collect::<Result<Vec<_>, _>>()?;
    if args.mode != Mode::Controller && args.node_id.is_empty() {
        return Err(ServeError::NodeId);
    }
    let timeout = Duration::from_secs(args.nfs_timeout.max(1));
    let pool = NfsPool::new(ClientOptions {
        timeout,
        uid: args.nfs_uid,
        gid: args.nfs_gid,
        privileged_port: args.privileged_port,
    });
    let tuning = Tuning {
        max_copies: args.max_copies,
        copy_wait: Duration::from_secs(args.copy_wait),
        sweep_every: Duration::from_secs(args.sweep_interval.max(1)),
        leftover_age: Duration::from_secs(args.leftover_age),
    };
    let agents = match &args.agent_tls_dir {
        Some(dir) => crate::agent::Agents::from_dir(dir).map_err(ServeError::AgentTls)?,
        None => crate::agent::Agents::none(),
    };
    let driver = Driver::new(args.node_id.clone(), pool, shares, tuning, agents);

    if !args.metrics_addr.is_empty() {
        serve_metrics(&args.metrics_addr).await?;
    }
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServeError::Socket {
            path: dir.into(),
            source,
        })?;
    }
    remove_stale_socket(&socket)?;
    let listener = UnixListener::bind(&socket).map_err(|source| ServeError::Socket {
        path: socket.clone(),
        source,
    })?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Signal)?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(ServeError::Signal)?;
    let signalled = async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();

    let mut router = tonic::transport::Server::builder().add_service(
        identity_server::IdentityServer::new(IdentityService::new(driver.clone())),
    );
    if args.mode != Mode::Node {
        tokio::spawn(crate::controller::sweep::run(driver.clone()));
        router = router.add_service(controller_server::ControllerServer::new(ControllerServer(
            std::sync::Arc::new(ControllerService::new(driver.clone())),
        )));
    }
    if args.mode != Mode::Controller {
        let node = NodeService::new(
            driver.clone(),
            args.state_dir.clone(),
            timeout,
            Duration::from_secs(args.usage_refresh.max(1)),
        );
        router = router.add_service(node_server::NodeServer::new(NodeServer(
            std::sync::Arc::new(node),
        )));
    }
    tracing::info!(socket = %socket.display(), mode = ?args.mode, node = %args.node_id, "serving CSI");
    // Every client's requests, whatever their :authority (see `authority`).
    let incoming = UnixListenerStream::new(listener)
        .map(|connection| connection.map(crate::grpc::authority::AuthorityFix::new));
    let server = router.serve_with_incoming_shutdown(incoming, async {
        let _ = stopped.await;
    });
    tokio::pin!(server);
    // Requests in flight get a grace period; idle connections (kubelet keeps one open) do not
    // hold the process.
    let result = tokio::select! {
        result = &mut server => result,
        _ = signalled => {
            let _ = stop.send(());
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::info!(grace = ?SHUTDOWN_GRACE, "connections still open; exiting");
                    Ok(())
                }
            }
        }
    };
    let _ = std::fs::remove_file(&socket);
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_shares() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert!(socket_path("tcp://0.0.0.0:1").is_err());
        let s = parse_share("10.0.0.5:/srv/nfs?nfsvers=3").unwrap();
        assert_eq!(
            (s.server.as_str(), s.export.as_str(), s.version),
            ("10.0.0.5", "/srv/nfs", NfsVersion::V3)
        );
        assert_eq!(parse_share("[fd00::5]:/e").unwrap().server, "[fd00::5]");
        assert!(parse_share("10.0.0.5").is_err());
        assert!(parse_share("10.0.0.5:/e?nfsvers=2").is_err());
    }

    #[test]
    fn the_configuration_reference_is_what_the_arguments_say() {
        test_support::reference::check(&<Args as clap::CommandFactory>::command());
    }
}
