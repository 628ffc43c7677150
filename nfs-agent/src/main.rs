//! `tether-nfs-agent`: see the library's documentation and docs/storage.md.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tether_csi_proto::agent::agent_server::AgentServer;
use tether_nfs_agent::paths::Root;
use tether_nfs_agent::service::Service;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

#[derive(Debug, Parser)]
#[command(
    name = "tether-nfs-agent",
    version,
    about = "Copy-on-write clones and directory quotas for tether-csi, beside an NFS server's exported filesystem"
)]
struct Args {
    /// An export this agent serves: EXPORT=DIRECTORY (the path NFS clients mount, and where it
    /// is on this host), or EXPORT when both are the same. Repeatable or comma-separated.
    #[arg(
        long = "export",
        env = "TETHER_AGENT_EXPORTS",
        value_delimiter = ',',
        required = true
    )]
    exports: Vec<String>,
    /// Where to listen for tether-csi's controller.
    #[arg(long, env = "TETHER_AGENT_LISTEN", default_value = "0.0.0.0:9820")]
    listen: SocketAddr,
    /// This agent's certificate (PEM), which the controller checks against its CA.
    #[arg(long, env = "TETHER_AGENT_TLS_CERT")]
    tls_cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(long, env = "TETHER_AGENT_TLS_KEY")]
    tls_key: PathBuf,
    /// The CA (PEM) whose certificates clients must present: only they are served.
    #[arg(long, env = "TETHER_AGENT_CLIENT_CA")]
    client_ca: PathBuf,
    /// Log lines as `text` or `json` (one object per line, for log collectors).
    #[arg(long, env = "TETHER_LOG_FORMAT", default_value = "text")]
    log_format: tether_observe::logging::LogFormat,
}

fn roots(exports: &[String]) -> Result<Vec<Root>, String> {
    exports
        .iter()
        .map(|spec| {
            let (export, dir) = spec.split_once('=').unwrap_or((spec, spec));
            if !export.starts_with('/') || !dir.starts_with('/') {
                return Err(format!(
                    "--export {spec}: EXPORT and DIRECTORY must be absolute"
                ));
            }
            Root::open(export, &PathBuf::from(dir))
                .map_err(|e| format!("--export {spec}: cannot open {dir}: {e}"))
        })
        .collect()
}

async fn serve(args: Args) -> Result<(), String> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))
    };
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&args.tls_cert)?,
            read(&args.tls_key)?,
        ))
        .client_ca_root(Certificate::from_pem(read(&args.client_ca)?));
    let roots = roots(&args.exports)?;
    for root in &roots {
        tracing::info!(export = %root.export, directory = %root.dir.display(), "serving");
    }
    tracing::info!(listen = %args.listen, "listening (mutual TLS)");
    Server::builder()
        .tls_config(tls)
        .map_err(|e| format!("TLS: {e}"))?
        .add_service(AgentServer::new(Service::new(roots)))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("serving on {}: {e}", args.listen))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tether_observe::logging::init(
        args.log_format,
        tracing_subscriber::filter::LevelFilter::INFO,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tether-nfs-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "stopped");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_is_what_the_arguments_say() {
        test_support::reference::check(&<Args as clap::CommandFactory>::command());
    }
}
