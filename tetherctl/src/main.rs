//! `tetherctl`: what is wrong on a Tether cluster, from wherever a kubeconfig works. Installed
//! on the PATH as `kubectl-tether` it is also `kubectl tether ...`.

mod cluster;
mod error;
mod prom;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use error::{CtlError, EXIT_ERROR, EXIT_UNHEALTHY};

#[derive(Debug, Parser)]
#[command(
    name = "tetherctl",
    version,
    about = "What is wrong on a Tether cluster"
)]
struct Args {
    /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, or the in-cluster account).
    #[arg(long, global = true, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every node (or one): the Node, tether-overlayd (readiness, peers, direct and VXLAN
    /// routes, refused entries, br_netfilter), tether-netpol, tether-csi; then the problems.
    /// Exits 1 when there is any.
    Status {
        /// Only this node.
        node: Option<String>,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

async fn run(args: Args) -> Result<bool, CtlError> {
    let cluster = cluster::Cluster::connect(args.kubeconfig.as_deref()).await?;
    match args.command {
        Command::Status { node, output } => {
            let status = status::collect(&cluster, node.as_deref()).await?;
            match output {
                Output::Table => print!("{}", status::render(&status)),
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
            }
            Ok(status.healthy)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tetherctl: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(EXIT_UNHEALTHY),
        Err(e) => {
            eprintln!("tetherctl: {e}");
            ExitCode::from(EXIT_ERROR)
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
