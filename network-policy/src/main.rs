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
    /// This node's pod subnets (comma-separated). A pod address in them the agent does not know
    /// yet is held until it does. Default: the subnets in tether-overlayd's facts file.
    #[arg(long, env = "TETHER_POD_CIDRS", value_delimiter = ',')]
    pod_cidrs: Vec<ipnetwork::IpNetwork>,
    /// tether-overlayd's facts file (for the node's pod subnets).
    #[arg(long, env = "TETHER_FACTS", default_value = "/run/tether/overlay.json")]
    facts: PathBuf,
    /// The node's pod bridge: ready only when traffic between its pods is policed (routed pods,
    /// isolated ports or br_netfilter; see cni_core::same_node).
    #[arg(long, env = "TETHER_NETPOL_BRIDGE", default_value = "cni0")]
    bridge: String,
    /// Serve /metrics, /healthz and /readyz here (for example 0.0.0.0:9403).
    #[arg(long, env = "TETHER_NETPOL_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Remove the table and exit (uninstall).
    #[arg(long)]
    remove: bool,
    /// Log lines as `text` or `json` (one object per line, for log collectors).
    #[arg(long, env = "TETHER_LOG_FORMAT", default_value = "text")]
    log_format: tether_observe::logging::LogFormat,
}

/// The node's pod subnets as tether-overlayd wrote them (`subnets` of its facts file).
fn facts_subnets(path: &std::path::Path) -> Vec<ipnetwork::IpNetwork> {
    std::fs::read(path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|facts| {
            facts["subnets"].as_array().map(|subnets| {
                subnets
                    .iter()
                    .filter_map(|s| s.as_str()?.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
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
        let pod_subnets = if args.pod_cidrs.is_empty() {
            facts_subnets(&args.facts)
        } else {
            args.pod_cidrs
        };
        if pod_subnets.is_empty() {
            tracing::warn!(facts = %args.facts.display(), "no pod subnets known: a pod whose address the agent has not seen yet is not held back");
        }
        runtime.block_on(tether_netpol::agent::run(tether_netpol::agent::Settings {
            node_name: args.node_name.unwrap_or_default(),
            kubeconfig: args.kubeconfig,
            metrics_addr: args.metrics_addr,
            bridge: args.bridge,
            table: tether_netpol::nft::Options {
                log_denied: args.log_denied,
                pod_subnets,
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_is_what_the_arguments_say() {
        test_support::reference::check(&<Args as clap::CommandFactory>::command());
    }
}
