//! tether-netpol: enforces Kubernetes NetworkPolicies for the pods of one node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// This node's name (the Downward API's spec.nodeName).
    #[arg(long, env = "TETHER_NODE_NAME", required_unless_present = "remove")]
    node_name: Option<String>,
    /// A kubeconfig; in a pod, the service account is used.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Log denied packets (nftables `log`, at most 10 a second).
    #[arg(long, env = "TETHER_NETPOL_LOG_DENIED")]
    log_denied: bool,
    /// Remove the table and exit (uninstall).
    #[arg(long)]
    remove: bool,
    #[arg(long, env = "TETHER_LOG_FORMAT", default_value = "text")]
    log_format: tether_observe::logging::LogFormat,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tether_observe::logging::init(
        args.log_format,
        tracing_subscriber::filter::LevelFilter::INFO,
    );
    let result = if args.remove {
        tether_netpol::nft::remove().map_err(tether_netpol::agent::AgentError::from)
    } else {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("tether-netpol: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(tether_netpol::agent::run(tether_netpol::agent::Settings {
            node_name: args.node_name.unwrap_or_default(),
            kubeconfig: args.kubeconfig,
            log_denied: args.log_denied,
        }))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %cni_core::error::chain(&e), "tether-netpol failed");
            ExitCode::FAILURE
        }
    }
}
